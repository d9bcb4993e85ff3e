//! The StatefulSet controller, as upstream's `pkg/controller/statefulset`: pods with stable names
//! `<set>-<ordinal>` (from `spec.ordinals.start`), each with its own PersistentVolumeClaims
//! `<claim>-<set>-<ordinal>` created before the pod, a hostname and the governing Service as
//! subdomain.
//!
//! One sync: claim pods and ControllerRevisions, find the current and update revisions (a new
//! template gets a new revision; going back to an old template renumbers that revision, which is
//! how `kubectl rollout undo` works), then [`plan`] the next steps the way upstream's
//! `updateStatefulSet` walks the replicas, run them, trim the history and write status.
//!
//! OrderedReady (`monotonic`) stops at the first step that must wait: a pod is created only when
//! every lower ordinal is Running and Ready (and available for minReadySeconds), and scale-down
//! removes the highest ordinal first, one at a time. Parallel does everything in one go.
//! RollingUpdate replaces pods from the highest ordinal down to `partition`; with
//! `rollingUpdate.maxUnavailable` set, up to that many at a time (upstream's
//! MaxUnavailableStatefulSet behaviour), otherwise one, each waiting for the higher ones to be
//! healthy. OnDelete leaves replacing to whoever deletes pods.
//!
//! Upstream writes without expectations and relies on "already exists" errors; here creations and
//! deletions are also registered in the shared [`Expectations`], so a sync triggered before the
//! pod watch shows our last writes (e.g. by our own status write) waits instead of failing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::claim::{Claimer, api_error_message};
use crate::deployment::util::scaled;
use crate::events::{Recorder, reference};
use crate::expectations::Expectations;
use crate::history::{self, HASH_LABEL, REVISION_LABEL};
use crate::metrics::{ControllerMetrics, Metrics};
use crate::podutil::{self, PodSelector, controller_ref, is_available, is_ready, owner_ref, pod_from_template};

const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct Ctx {
    client: Client,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    revisions: Store<ControllerRevision>,
    exp: Arc<Expectations>,
    events: Recorder,
    metrics: Arc<ControllerMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Retry(String),
    #[error("{0}")]
    Failed(String),
}

type Events<K> = (Store<K>, std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>);

/// The shared informers the controller reads: pods (whose tap feeds `exp`), claims, revisions.
pub struct Inputs {
    pub pods: Events<Pod>,
    pub claims: Events<PersistentVolumeClaim>,
    pub revisions: Events<ControllerRevision>,
    pub exp: Arc<Expectations>,
}

impl Inputs {
    pub fn new(
        pods: (Store<Pod>, impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static),
        claims: (Store<PersistentVolumeClaim>, impl Stream<Item = Result<PersistentVolumeClaim, watcher::Error>> + Send + 'static),
        revisions: (Store<ControllerRevision>, impl Stream<Item = Result<ControllerRevision, watcher::Error>> + Send + 'static),
        exp: Arc<Expectations>,
    ) -> Inputs {
        Inputs {
            pods: (pods.0, Box::pin(pods.1)),
            claims: (claims.0, Box::pin(claims.1)),
            revisions: (revisions.0, Box::pin(revisions.1)),
            exp,
        }
    }
}

pub async fn run(client: Client, metrics: &Metrics, inputs: Inputs) {
    let Inputs { pods: (pods, pod_events), claims: (claims, claim_events), revisions: (revisions, revision_events), exp } = inputs;
    let ctrl = Controller::new(Api::<StatefulSet>::all(client.clone()), watcher::Config::default());
    let sets = ctrl.store();
    let (sets_p, sets_r) = (sets.clone(), sets);
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        claims,
        revisions,
        exp,
        events: Recorder::new(client, COMPONENT),
        metrics: metrics.controller(COMPONENT),
    });
    crate::drain(
        ctrl.watches_stream(pod_events, move |p: Pod| pod_owners(&sets_p, &p))
            .watches_stream(revision_events, move |r: ControllerRevision| revision_owners(&sets_r, &r))
            .watches_stream(claim_events, |c: PersistentVolumeClaim| claim_owners(&c))
            .run(reconcile, error_policy, ctx),
        COMPONENT,
    )
    .await;
}

/// A pod's StatefulSet, or for an orphan every set in its namespace that could adopt it.
fn pod_owners(sets: &Store<StatefulSet>, pod: &Pod) -> Vec<ObjectRef<StatefulSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_ref(&pod.metadata) {
        return if r.kind == "StatefulSet" { vec![ObjectRef::new(&r.name).within(&ns)] } else { vec![] };
    }
    let Some((parent, _)) = parent_and_ordinal(pod.metadata.name.as_deref().unwrap_or_default()) else { return vec![] };
    sets.get(&ObjectRef::new(parent).within(&ns))
        .filter(|s| PodSelector::new(s.spec.as_ref().map(|s| &s.selector)).matches(podutil::labels(&pod.metadata)))
        .map(|s| vec![ObjectRef::from_obj(s.as_ref())])
        .unwrap_or_default()
}

fn revision_owners(sets: &Store<StatefulSet>, r: &ControllerRevision) -> Vec<ObjectRef<StatefulSet>> {
    let ns = r.namespace().unwrap_or_default();
    if let Some(o) = controller_ref(&r.metadata) {
        return if o.kind == "StatefulSet" { vec![ObjectRef::new(&o.name).within(&ns)] } else { vec![] };
    }
    let labels = podutil::labels(&r.metadata);
    sets.state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|s| PodSelector::new(s.spec.as_ref().map(|s| &s.selector)).matches(labels))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// Claims point at their set or pod by the retention policy's owner references; a claim going away
/// can unblock a pod waiting for its stale claim to be deleted.
fn claim_owners(c: &PersistentVolumeClaim) -> Vec<ObjectRef<StatefulSet>> {
    let ns = c.namespace().unwrap_or_default();
    c.metadata
        .owner_references
        .iter()
        .flatten()
        .filter_map(|r| match r.kind.as_str() {
            "StatefulSet" => Some(r.name.clone()),
            "Pod" => parent_and_ordinal(&r.name).map(|(p, _)| p.to_string()),
            _ => None,
        })
        .map(|n| ObjectRef::new(&n).within(&ns))
        .collect()
}

fn error_policy(_s: Arc<StatefulSet>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    match err {
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Action::requeue(Duration::from_millis(200)),
        Error::Retry(_) => Action::requeue(Duration::from_millis(200)),
        e => {
            tracing::warn!("{COMPONENT}: {e}");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

// ---- names and identity ------------------------------------------------------------------------

/// (set name, ordinal) of `<set>-<ordinal>`. Only the canonical spelling counts (`web-01` is not
/// ordinal 1), so a pod can never occupy another's slot.
pub fn parent_and_ordinal(name: &str) -> Option<(&str, i32)> {
    let (parent, ord) = name.rsplit_once('-')?;
    if ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) || (ord.len() > 1 && ord.starts_with('0')) {
        return None;
    }
    ord.parse::<i32>().ok().map(|o| (parent, o))
}

pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

fn ordinal_of(pod: &Pod) -> Option<i32> {
    parent_and_ordinal(pod.metadata.name.as_deref().unwrap_or_default()).map(|(_, o)| o)
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// Upstream's isCreated: the API server gave it a phase. Pods this sync is about to create have none.
fn is_created(p: &Pod) -> bool {
    !phase(p).is_empty()
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && is_ready(p)
}

fn running_and_available(p: &Pod, min_ready: i32, now: Timestamp) -> bool {
    phase(p) == "Running" && is_available(p, min_ready, now)
}

fn is_healthy(p: &Pod) -> bool {
    running_and_ready(p) && !is_terminating(p)
}

pub fn pod_revision(p: &Pod) -> Option<&str> {
    podutil::labels(&p.metadata).get(REVISION_LABEL).map(String::as_str)
}

// ---- the set, as the planner sees it -----------------------------------------------------------

/// `persistentVolumeClaimRetentionPolicy`: does a claim go with the set (whenDeleted) or with a
/// pod scaled away (whenScaled)?
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub delete_when_deleted: bool,
    pub delete_when_scaled: bool,
}

pub struct SetView {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub start: i32,
    pub replicas: i32,
    pub min_ready: i32,
    pub parallel: bool,
    pub deleting: bool,
    pub on_delete: bool,
    pub rolling: Option<RollingUpdateStatefulSetStrategy>,
    /// status.currentReplicas: without a rollingUpdate block, new pods below it get the current
    /// revision.
    pub current_replicas: i32,
    pub service_name: Option<String>,
    pub claim_templates: Vec<PersistentVolumeClaim>,
    pub match_labels: BTreeMap<String, String>,
    pub retention: Retention,
    /// The controller reference on pods.
    pub owner: OwnerReference,
}

impl SetView {
    pub fn new(set: &StatefulSet) -> SetView {
        let spec = set.spec.clone().unwrap_or_default();
        let us = spec.update_strategy.clone().unwrap_or_default();
        let policy = spec.persistent_volume_claim_retention_policy.clone().unwrap_or_default();
        SetView {
            name: set.name_any(),
            namespace: set.namespace().unwrap_or_default(),
            uid: set.metadata.uid.clone().unwrap_or_default(),
            start: spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0).max(0),
            replicas: spec.replicas.unwrap_or(1).max(0),
            min_ready: spec.min_ready_seconds.unwrap_or(0),
            parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
            deleting: set.metadata.deletion_timestamp.is_some(),
            on_delete: us.type_.as_deref() == Some("OnDelete"),
            rolling: us.rolling_update,
            current_replicas: set.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0),
            service_name: spec.service_name.filter(|s| !s.is_empty()),
            claim_templates: spec.volume_claim_templates.unwrap_or_default(),
            match_labels: spec.selector.match_labels.unwrap_or_default(),
            retention: Retention {
                delete_when_deleted: policy.when_deleted.as_deref() == Some("Delete"),
                delete_when_scaled: policy.when_scaled.as_deref() == Some("Delete"),
            },
            owner: owner_ref("apps/v1", "StatefulSet", &set.metadata),
        }
    }

    fn end(&self) -> i32 {
        self.start + self.replicas - 1
    }

    fn in_range(&self, ordinal: i32) -> bool {
        self.start <= ordinal && ordinal <= self.end()
    }

    fn partition(&self) -> i32 {
        self.rolling.as_ref().and_then(|r| r.partition).unwrap_or(0)
    }

    /// The claims a pod of this ordinal mounts, named and labelled as upstream's
    /// getPersistentVolumeClaims: the template's labels plus the set's matchLabels.
    pub fn claims_for(&self, ordinal: i32) -> Vec<PersistentVolumeClaim> {
        self.claim_templates
            .iter()
            .map(|t| {
                let tname = t.metadata.name.clone().unwrap_or_default();
                let mut labels = t.metadata.labels.clone().unwrap_or_default();
                labels.extend(self.match_labels.clone());
                PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(claim_name(&tname, &self.name, ordinal)),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(labels),
                        annotations: t.metadata.annotations.clone(),
                        finalizers: t.metadata.finalizers.clone(),
                        ..Default::default()
                    },
                    spec: t.spec.clone(),
                    status: None,
                }
            })
            .collect()
    }

    /// A new pod for `ordinal` from `template` at `revision` (upstream's newStatefulSetPod).
    pub fn new_pod(&self, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
        let mut pod = pod_from_template(template, &self.name, &self.namespace, self.owner.clone());
        let name = pod_name(&self.name, ordinal);
        pod.metadata.name = Some(name.clone());
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        labels.insert(REVISION_LABEL.into(), revision.into());
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.hostname = Some(name);
        spec.subdomain = self.service_name.clone();
        // Claim volumes first, in template order, replacing template volumes of the same name.
        let mut volumes: Vec<Volume> = self
            .claim_templates
            .iter()
            .map(|t| {
                let tname = t.metadata.name.clone().unwrap_or_default();
                Volume {
                    name: tname.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim_name(&tname, &self.name, ordinal),
                        read_only: None,
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let claimed: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
        volumes.extend(spec.volumes.take().unwrap_or_default().into_iter().filter(|v| !claimed.contains(&v.name)));
        spec.volumes = (!volumes.is_empty()).then_some(volumes);
        pod
    }

    /// Upstream's newVersionedStatefulSetPod: below the partition a recreated pod keeps the
    /// current revision, at or above it gets the update revision.
    fn new_versioned_pod(&self, cur: &Rev, upd: &Rev, ordinal: i32) -> Pod {
        let rolling = !self.on_delete;
        let keep_current = (rolling && self.rolling.is_none() && ordinal < self.start + self.current_replicas)
            || (self.rolling.is_some() && ordinal < self.start + self.partition());
        if keep_current { self.new_pod(&cur.template, &cur.name, ordinal) } else { self.new_pod(&upd.template, &upd.name, ordinal) }
    }

    pub fn identity_matches(&self, pod: &Pod) -> bool {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let Some((parent, ord)) = parent_and_ordinal(name) else { return false };
        let labels = podutil::labels(&pod.metadata);
        parent == self.name
            && pod.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && labels.get(POD_NAME_LABEL).map(String::as_str) == Some(name)
            && labels.get(POD_INDEX_LABEL) == Some(&ord.to_string())
    }

    pub fn storage_matches(&self, pod: &Pod) -> bool {
        let Some(ord) = ordinal_of(pod) else { return false };
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        self.claim_templates.iter().all(|t| {
            let tname = t.metadata.name.as_deref().unwrap_or_default();
            volumes.iter().any(|v| {
                v.name == tname && v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == claim_name(tname, &self.name, ord))
            })
        })
    }

    /// The owner references `claim` should have for `pod` under the retention policy, if they
    /// differ from what it has (upstream's updateClaimOwnerRefForSetAndPod).
    pub fn claim_refs(&self, claim: &PersistentVolumeClaim, pod: &Pod) -> Option<Vec<OwnerReference>> {
        let old = claim.metadata.owner_references.clone().unwrap_or_default();
        let mut refs = old.clone();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let set_ref = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: None,
            block_owner_deletion: None,
        };
        let pod_ref = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod_name,
            uid: pod_uid,
            controller: None,
            block_owner_deletion: None,
        };
        let same = |a: &OwnerReference, b: &OwnerReference| {
            a.api_version == b.api_version && a.kind == b.kind && a.name == b.name && a.uid == b.uid
        };
        let set = |r: &OwnerReference, refs: &mut Vec<OwnerReference>| {
            if !refs.iter().any(|x| same(x, r)) {
                refs.push(r.clone());
            }
        };
        let remove = |r: &OwnerReference, refs: &mut Vec<OwnerReference>| refs.retain(|x| !same(x, r));
        let scaled_down = ordinal_of(pod).is_none_or(|o| !self.in_range(o));
        match (self.retention.delete_when_scaled, self.retention.delete_when_deleted) {
            (false, false) => {
                remove(&set_ref, &mut refs);
                remove(&pod_ref, &mut refs);
            }
            (false, true) => {
                set(&set_ref, &mut refs);
                remove(&pod_ref, &mut refs);
            }
            (true, false) => {
                remove(&set_ref, &mut refs);
                if scaled_down { set(&pod_ref, &mut refs) } else { remove(&pod_ref, &mut refs) }
            }
            (true, true) => {
                if scaled_down {
                    remove(&set_ref, &mut refs);
                    set(&pod_ref, &mut refs);
                } else {
                    set(&set_ref, &mut refs);
                    remove(&pod_ref, &mut refs);
                }
            }
        }
        (refs != old).then_some(refs)
    }

    /// Claims of `pod` whose owner references the policy wants changed.
    fn claims_out_of_policy(&self, pod: &Pod, claims: &dyn Fn(&str) -> Option<Arc<PersistentVolumeClaim>>) -> bool {
        let Some(ord) = ordinal_of(pod) else { return false };
        self.claims_for(ord)
            .iter()
            .any(|c| claims(c.metadata.name.as_deref().unwrap_or_default()).is_some_and(|c| self.claim_refs(&c, pod).is_some()))
    }

    /// A claim left over from an earlier pod of this ordinal that is to be deleted with that pod:
    /// the new pod must wait for it to go (upstream's PodClaimIsStale).
    fn claim_is_stale(&self, pod: &Pod, claims: &dyn Fn(&str) -> Option<Arc<PersistentVolumeClaim>>) -> bool {
        if !self.retention.delete_when_scaled {
            return false;
        }
        let Some(ord) = ordinal_of(pod) else { return false };
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        self.claims_for(ord)
            .iter()
            .filter_map(|c| claims(c.metadata.name.as_deref().unwrap_or_default()))
            .any(|c| c.metadata.owner_references.iter().flatten().any(|r| r.kind == "Pod" && r.name == name && r.uid != uid))
    }

    fn claims_missing(&self, pod: &Pod, claims: &dyn Fn(&str) -> Option<Arc<PersistentVolumeClaim>>) -> bool {
        let Some(ord) = ordinal_of(pod) else { return false };
        self.claims_for(ord).iter().any(|c| claims(c.metadata.name.as_deref().unwrap_or_default()).is_none())
    }
}

/// A revision as the planner needs it.
pub struct Rev {
    pub name: String,
    pub template: PodTemplateSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Failed,
    Succeeded,
    ScaleDown,
    Update,
}

#[derive(Debug)]
pub enum Step {
    /// Create the pod's claims, then the pod.
    Create(Box<Pod>),
    /// Create the missing claims of a pending pod.
    Claims(Arc<Pod>),
    Delete(Arc<Pod>, Why),
    /// Restore the pod's identity labels, claims and the claims' owner references.
    Update(Arc<Pod>),
    /// Owner references of a condemned pod's claims, before it goes.
    FixClaims(Arc<Pod>),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub current: i32,
    pub updated: i32,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub counts: Counts,
}

/// Upstream's computeReplicaStatus over some pods.
fn count(pods: &[Arc<Pod>], min_ready: i32, now: Timestamp, cur: &str, upd: &str) -> Counts {
    let mut c = Counts::default();
    for p in pods {
        if is_created(p) {
            c.replicas += 1;
        }
        if running_and_ready(p) {
            c.ready += 1;
            if running_and_available(p, min_ready, now) {
                c.available += 1;
            }
        }
        if is_created(p) && !is_terminating(p) {
            let rev = pod_revision(p).unwrap_or_default();
            c.current += i32::from(rev == cur);
            c.updated += i32::from(rev == upd);
        }
    }
    c
}

/// The next steps for the set, as upstream's updateStatefulSet: replicas in ordinal order, then
/// condemned pods (beyond the replica range) from the highest ordinal, then one update step. In
/// OrderedReady mode the plan ends at the first step that has to wait for the cluster. `claims`
/// looks claims up by name in the cache.
pub fn plan(
    v: &SetView,
    cur: &Rev,
    upd: &Rev,
    pods: &[Arc<Pod>],
    claims: &dyn Fn(&str) -> Option<Arc<PersistentVolumeClaim>>,
    now: Timestamp,
) -> Plan {
    let n = v.replicas as usize;
    let mut replicas: Vec<Option<Arc<Pod>>> = vec![None; n];
    let mut condemned: Vec<Arc<Pod>> = Vec::new();
    for p in pods {
        let Some(ord) = ordinal_of(p) else { continue };
        if v.in_range(ord) {
            replicas[(ord - v.start) as usize] = Some(p.clone());
        } else {
            condemned.push(p.clone());
        }
    }
    let replicas: Vec<Arc<Pod>> = replicas
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.unwrap_or_else(|| Arc::new(v.new_versioned_pod(cur, upd, v.start + i as i32))))
        .collect();
    condemned.sort_by_key(|p| std::cmp::Reverse(ordinal_of(p)));
    let first_unhealthy = replicas.iter().chain(condemned.iter().rev()).find(|p| !is_healthy(p)).and_then(|p| p.metadata.name.clone());

    let mut plan = Plan::default();
    let counts = |replicas: &[Arc<Pod>], condemned: &[Arc<Pod>]| {
        let (a, b) = (count(replicas, v.min_ready, now, &cur.name, &upd.name), count(condemned, v.min_ready, now, &cur.name, &upd.name));
        Counts {
            replicas: a.replicas + b.replicas,
            ready: a.ready + b.ready,
            available: a.available + b.available,
            current: a.current + b.current,
            updated: a.updated + b.updated,
        }
    };
    if v.deleting {
        plan.counts = counts(&replicas, &condemned);
        return plan;
    }
    let monotonic = !v.parallel;

    // Replicas.
    let mut blocked = false;
    for pod in &replicas {
        let pod = pod.clone();
        if matches!(phase(&pod), "Failed" | "Succeeded") {
            // Upstream deletes and immediately recreates; the name is taken until the old pod is
            // gone, so the new one is created by the sync that sees it gone.
            if !is_terminating(&pod) {
                let why = if phase(&pod) == "Failed" { Why::Failed } else { Why::Succeeded };
                plan.steps.push(Step::Delete(pod.clone(), why));
            }
            if monotonic {
                blocked = true;
                break;
            }
            continue;
        }
        if !is_created(&pod) {
            if v.claim_is_stale(&pod, claims) {
                if monotonic {
                    blocked = true;
                    break;
                }
                continue;
            }
            plan.steps.push(Step::Create(Box::new((*pod).clone())));
            if monotonic {
                blocked = true;
                break;
            }
            continue;
        }
        if phase(&pod) == "Pending" && v.claims_missing(&pod, claims) {
            plan.steps.push(Step::Claims(pod.clone()));
        }
        if monotonic && !running_and_available(&pod, v.min_ready, now) {
            blocked = true;
            break;
        }
        if !v.identity_matches(&pod) || !v.storage_matches(&pod) || v.claims_out_of_policy(&pod, claims) {
            plan.steps.push(Step::Update(pod.clone()));
        }
    }

    if !blocked {
        // Claims of condemned pods get their scale-down owner references before the pods go.
        for c in &condemned {
            if v.claims_out_of_policy(c, claims) {
                plan.steps.push(Step::FixClaims(c.clone()));
            }
        }
        // Condemned pods, highest ordinal first.
        for c in &condemned {
            if is_terminating(c) {
                if monotonic {
                    blocked = true;
                    break;
                }
                continue;
            }
            let first = first_unhealthy.as_deref() == c.metadata.name.as_deref();
            if monotonic && !first && !running_and_available(c, v.min_ready, now) {
                blocked = true;
                break;
            }
            plan.steps.push(Step::Delete(c.clone(), Why::ScaleDown));
            if monotonic {
                blocked = true;
                break;
            }
        }
    }

    let mut c = counts(&replicas, &condemned);
    if !blocked && !v.on_delete {
        let update_min = v.partition().max(0) as usize;
        let stale = |p: &Pod| pod_revision(p) != Some(upd.name.as_str()) && !is_terminating(p);
        match v.rolling.as_ref().and_then(|r| r.max_unavailable.as_ref()) {
            None => {
                // Replace the highest stale pod once everything above it is healthy.
                for target in (update_min..n).rev() {
                    if stale(&replicas[target]) {
                        plan.steps.push(Step::Delete(replicas[target].clone(), Why::Update));
                        c.current -= 1;
                        break;
                    }
                    if !is_healthy(&replicas[target]) {
                        break;
                    }
                }
            }
            Some(mu) => {
                let max_unavailable = scaled(Some(mu), v.replicas, false, "1").max(1);
                let unavailable = replicas.iter().filter(|p| !is_healthy(p)).count() as i32;
                let mut budget = (max_unavailable - unavailable).max(0);
                for target in (update_min..n).rev() {
                    if budget == 0 {
                        break;
                    }
                    if stale(&replicas[target]) {
                        plan.steps.push(Step::Delete(replicas[target].clone(), Why::Update));
                        c.current -= 1;
                        budget -= 1;
                    }
                }
            }
        }
    }
    plan.counts = c;
    plan
}

// ---- the sync ----------------------------------------------------------------------------------

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    crate::informer::ready(&ctx.pods).await;
    crate::informer::ready(&ctx.claims).await;
    crate::informer::ready(&ctx.revisions).await;
    let Some(spec) = set.spec.as_ref() else { return Ok(Action::await_change()) };
    let v = SetView::new(&set);
    let selector = PodSelector::new(Some(&spec.selector));
    let claimer = Claimer { uid: &v.uid, namespace: &v.namespace, owner_ref: v.owner.clone(), selector: &selector, deleting: v.deleting };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &v.namespace);
    // Expectations before the cache: once they are met, a cache read after that holds our writes.
    let satisfied = ctx.exp.satisfied(&v.uid, &ctx.pods);
    let pods = claimer
        .claim(&pods_api, ctx.pods.state(), |p: &Pod| {
            parent_and_ordinal(p.metadata.name.as_deref().unwrap_or_default()).is_some_and(|(s, _)| s == v.name)
        })
        .await?;
    let cr_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let mut revisions: Vec<ControllerRevision> =
        claimer.claim(&cr_api, ctx.revisions.state(), |_| true).await?.into_iter().map(|r| (*r).clone()).collect();
    revisions.sort_by(history::by_revision);

    // Our last creates and deletes are not all in the cache yet: their watch events will bring
    // us back.
    if !satisfied {
        return Ok(Action::await_change());
    }

    let (cur, upd, collision) = get_revisions(&set, &cr_api, &revisions).await?;
    let cur_rev = Rev { name: cur.name_any(), template: history::template_of(&cur).unwrap_or_else(|| spec.template.clone()) };
    let upd_rev = Rev { name: upd.name_any(), template: history::template_of(&upd).unwrap_or_else(|| spec.template.clone()) };
    let now = Timestamp::now();
    let claims = |name: &str| ctx.claims.get(&ObjectRef::new(name).within(&v.namespace));
    let plan = plan(&v, &cur_rev, &upd_rev, &pods, &claims, now);
    let result = execute(&ctx, &set, &v, plan.steps).await;

    let c = plan.counts;
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: c.replicas,
        ready_replicas: Some(c.ready),
        available_replicas: Some(c.available),
        current_replicas: Some(c.current),
        updated_replicas: Some(c.updated),
        current_revision: Some(cur_rev.name.clone()),
        update_revision: Some(upd_rev.name.clone()),
        collision_count: Some(collision),
        conditions: None,
    };
    // A finished rolling update makes the update revision current.
    if !v.on_delete && c.updated == c.replicas && c.ready == c.replicas {
        status.current_replicas = status.updated_replicas;
        status.current_revision = status.update_revision.clone();
    }
    let status_result = write_status(&ctx, &set, &status).await;
    truncate_history(&set, &cr_api, &revisions, &pods, &[cur_rev.name.as_str(), upd_rev.name.as_str()]).await?;
    result?;
    status_result?;
    // Ready pods become available after minReadySeconds with no event to tell us.
    let later = pods.iter().filter_map(|p| podutil::until_available(p, v.min_ready, now)).min();
    Ok(later.map(|d| Action::requeue(d + Duration::from_millis(50))).unwrap_or_else(Action::await_change))
}

/// (current revision, update revision, collisionCount), as upstream's getStatefulSetRevisions:
/// the update revision records the current template — the newest revision if it already does, an
/// older one renumbered to the top (a rollback), or a new one.
async fn get_revisions(
    set: &StatefulSet,
    api: &Api<ControllerRevision>,
    revisions: &[ControllerRevision],
) -> Result<(ControllerRevision, ControllerRevision, i32), Error> {
    let spec = set.spec.as_ref().expect("checked by the caller");
    let mut collision = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let next = revisions.last().map(|r| r.revision + 1).unwrap_or(1);
    let equal: Vec<&ControllerRevision> = revisions.iter().filter(|r| history::records(r, &spec.template)).collect();
    let upd = match (equal.last(), revisions.last()) {
        (Some(eq), Some(last)) if eq.metadata.name == last.metadata.name => (*eq).clone(),
        (Some(eq), _) => history::set_revision(api, eq, next).await?,
        (None, _) => create_revision(set, api, next, &mut collision).await?,
    };
    let current_name = set.status.as_ref().and_then(|s| s.current_revision.as_deref());
    let cur = revisions.iter().find(|r| r.metadata.name.as_deref() == current_name).cloned().unwrap_or_else(|| upd.clone());
    Ok((cur, upd, collision))
}

/// Creates a revision of the set's template named `<set>-<hash of data and collisionCount>`; a
/// name taken by other data bumps the collision count and tries the next name (upstream's
/// CreateControllerRevision).
async fn create_revision(
    set: &StatefulSet,
    api: &Api<ControllerRevision>,
    revision: i64,
    collision: &mut i32,
) -> Result<ControllerRevision, Error> {
    let spec = set.spec.as_ref().expect("checked by the caller");
    let data = history::template_patch(&spec.template);
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    let owner = owner_ref("apps/v1", "StatefulSet", &set.metadata);
    for _ in 0..100 {
        let hash = history::data_hash(&data, Some(*collision));
        let name = history::revision_name(&set.name_any(), &hash);
        let cr = history::new_revision(
            name.clone(),
            &set.namespace().unwrap_or_default(),
            labels,
            &[(HASH_LABEL, &hash)],
            set.metadata.annotations.as_ref(),
            owner.clone(),
            data.clone(),
            revision,
        );
        match api.create(&PostParams::default(), &cr).await {
            Ok(c) => return Ok(c),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = api.get(&name).await?;
                if history::records(&existing, &spec.template) {
                    return Ok(existing);
                }
                *collision += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Failed(format!("no free ControllerRevision name for StatefulSet {} after 100 collisions", set.name_any())))
}

/// Deletes the oldest revisions beyond revisionHistoryLimit that are neither current, update, nor
/// carried by a pod (upstream's truncateHistory).
async fn truncate_history(
    set: &StatefulSet,
    api: &Api<ControllerRevision>,
    revisions: &[ControllerRevision],
    pods: &[Arc<Pod>],
    live: &[&str],
) -> Result<(), Error> {
    let limit = set.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
    let history: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| {
            let name = r.metadata.name.as_deref().unwrap_or_default();
            !live.contains(&name) && !pods.iter().any(|p| pod_revision(p) == Some(name))
        })
        .collect();
    for r in history.iter().take(history.len().saturating_sub(limit)) {
        history::delete(api, r).await?;
    }
    Ok(())
}

/// Writes status when any of it changed (upstream's inconsistentStatus, plus collisionCount).
async fn write_status(ctx: &Ctx, set: &StatefulSet, st: &StatefulSetStatus) -> Result<(), Error> {
    let old = set.status.clone().unwrap_or_default();
    let z = |v: Option<i32>| v.unwrap_or(0);
    let same = old.observed_generation.unwrap_or(0) >= st.observed_generation.unwrap_or(0)
        && old.replicas == st.replicas
        && z(old.current_replicas) == z(st.current_replicas)
        && z(old.ready_replicas) == z(st.ready_replicas)
        && z(old.updated_replicas) == z(st.updated_replicas)
        && z(old.available_replicas) == z(st.available_replicas)
        && old.current_revision == st.current_revision
        && old.update_revision == st.update_revision
        && z(old.collision_count) == z(st.collision_count);
    if same {
        return Ok(());
    }
    let body = json!({"status": {
        "observedGeneration": st.observed_generation,
        "replicas": st.replicas,
        "readyReplicas": z(st.ready_replicas),
        "availableReplicas": z(st.available_replicas),
        "currentReplicas": z(st.current_replicas),
        "updatedReplicas": z(st.updated_replicas),
        "currentRevision": st.current_revision,
        "updateRevision": st.update_revision,
        "collisionCount": z(st.collision_count),
    }});
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    match api.patch_status(&set.name_any(), &PatchParams::default(), &Patch::Merge(body)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Runs the plan: one step at a time for OrderedReady (the plan already ends where it must
/// wait), in slow-start batches (1, 2, 4, ...) for Parallel; stops at the first failure.
async fn execute(ctx: &Ctx, set: &StatefulSet, v: &SetView, steps: Vec<Step>) -> Result<(), Error> {
    if !v.parallel {
        for s in steps {
            run_step(ctx, set, v, s).await?;
        }
        return Ok(());
    }
    let mut steps = steps.into_iter().peekable();
    let mut batch = 1;
    while steps.peek().is_some() {
        let chunk: Vec<Step> = steps.by_ref().take(batch).collect();
        let results = join_all(chunk.into_iter().map(|s| run_step(ctx, set, v, s))).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        batch *= 2;
    }
    Ok(())
}

async fn run_step(ctx: &Ctx, set: &StatefulSet, v: &SetView, step: Step) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &v.namespace);
    match step {
        Step::Create(pod) => {
            let name = pod.name_any();
            if let Err(e) = create_claims(ctx, set, v, &pod).await {
                ctx.events.warning(
                    reference(set),
                    "FailedCreate",
                    format!("create Pod {name} in StatefulSet {} failed error: {e}", v.name),
                );
                return Err(e);
            }
            ctx.exp.expect_creations(&v.uid, 1);
            match pods.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    ctx.events.normal(
                        reference(set),
                        "SuccessfulCreate",
                        format!("create Pod {name} in StatefulSet {} successful", v.name),
                    );
                    fix_claims(ctx, v, &created).await
                }
                Err(e) => {
                    ctx.exp.creation_observed(&v.uid);
                    // A pod of that name that is not ours (or not in our cache yet): nothing we
                    // can fix by retrying at once, and upstream reports nothing either.
                    if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                        let msg = format!("create Pod {name} in StatefulSet {} failed error: {}", v.name, api_error_message(&e));
                        ctx.events.warning(reference(set), "FailedCreate", msg);
                    }
                    Err(Error::Failed(format!("creating pod {name}: {e}")))
                }
            }
        }
        Step::Claims(pod) => create_claims(ctx, set, v, &pod).await,
        Step::Delete(pod, why) => {
            let name = pod.name_any();
            match why {
                Why::Failed => ctx.events.warning(
                    reference(set),
                    "RecreatingFailedPod",
                    format!("StatefulSet {}/{} is recreating failed Pod {name}", v.namespace, v.name),
                ),
                Why::Succeeded => ctx.events.normal(
                    reference(set),
                    "RecreatingTerminatedPod",
                    format!("StatefulSet {}/{} is recreating terminated Pod {name}", v.namespace, v.name),
                ),
                Why::ScaleDown | Why::Update => {}
            }
            ctx.exp.expect_deletions(&v.uid, &[pod.as_ref()]);
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                ..Default::default()
            };
            match pods.delete(&name, &dp).await {
                Ok(_) => {
                    ctx.events.normal(
                        reference(set),
                        "SuccessfulDelete",
                        format!("delete Pod {name} in StatefulSet {} successful", v.name),
                    );
                    Ok(())
                }
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(()),
                Err(e) => {
                    ctx.exp.deletion_observed(&v.uid, pod.metadata.uid.as_deref().unwrap_or_default());
                    let msg = format!("delete Pod {name} in StatefulSet {} failed error: {}", v.name, api_error_message(&e));
                    ctx.events.warning(reference(set), "FailedDelete", msg);
                    Err(e.into())
                }
            }
        }
        Step::Update(pod) => {
            let name = pod.name_any();
            let r = update_pod(ctx, set, v, &pods, &pod).await;
            match &r {
                Ok(true) => {
                    ctx.events.normal(reference(set), "SuccessfulUpdate", format!("update Pod {name} in StatefulSet {} successful", v.name))
                }
                Ok(false) => {}
                Err(e) => ctx.events.warning(
                    reference(set),
                    "FailedUpdate",
                    format!("update Pod {name} in StatefulSet {} failed error: {e}", v.name),
                ),
            }
            r.map(|_| ())
        }
        Step::FixClaims(pod) => fix_claims(ctx, v, &pod).await,
    }
}

/// Identity labels (patched), missing claims (created; a running pod's volumes cannot change),
/// and the claims' owner references. True when the pod itself was written.
async fn update_pod(ctx: &Ctx, set: &StatefulSet, v: &SetView, pods: &Api<Pod>, pod: &Pod) -> Result<bool, Error> {
    let mut wrote = false;
    if !v.identity_matches(pod) {
        let name = pod.name_any();
        let ord = ordinal_of(pod).unwrap_or_default();
        let patch = json!({"metadata": {
            "labels": {POD_NAME_LABEL: name, POD_INDEX_LABEL: ord.to_string()},
            "resourceVersion": pod.metadata.resource_version,
        }});
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        wrote = true;
    }
    if !v.storage_matches(pod) {
        create_claims(ctx, set, v, pod).await?;
    }
    fix_claims(ctx, v, pod).await?;
    Ok(wrote)
}

/// Creates the pod's claims that do not exist yet (upstream's createPersistentVolumeClaims). A
/// claim being deleted blocks the pod until it is gone.
async fn create_claims(ctx: &Ctx, set: &StatefulSet, v: &SetView, pod: &Pod) -> Result<(), Error> {
    let Some(ord) = ordinal_of(pod) else { return Ok(()) };
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let pod_name = pod.name_any();
    for claim in v.claims_for(ord) {
        let name = claim.name_any();
        if let Some(existing) = ctx.claims.get(&ObjectRef::new(&name).within(&v.namespace)) {
            if existing.metadata.deletion_timestamp.is_some() {
                return Err(Error::Failed(format!("pvc {name} is being deleted")));
            }
            continue;
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => ctx.events.normal(
                reference(set),
                "SuccessfulCreate",
                format!("create Claim {name} Pod {pod_name} in StatefulSet {} success", v.name),
            ),
            // Created by an earlier sync whose result the claim cache has not shown yet.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let msg =
                    format!("create Claim {name} for Pod {pod_name} in StatefulSet {} failed error: {}", v.name, api_error_message(&e));
                ctx.events.warning(reference(set), "FailedCreate", msg);
                return Err(Error::Failed(format!("failed to create PVC {name}: {e}")));
            }
        }
    }
    Ok(())
}

/// Brings the owner references of the pod's (cached) claims in line with the retention policy;
/// the garbage collector then deletes a claim with its set or scaled-down pod.
async fn fix_claims(ctx: &Ctx, v: &SetView, pod: &Pod) -> Result<(), Error> {
    let Some(ord) = ordinal_of(pod) else { return Ok(()) };
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &v.namespace);
    for claim in v.claims_for(ord) {
        let Some(existing) = ctx.claims.get(&ObjectRef::new(&claim.name_any()).within(&v.namespace)) else { continue };
        let Some(refs) = v.claim_refs(&existing, pod) else { continue };
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": existing.metadata.resource_version}});
        match api.patch(&existing.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::Value;

    use super::*;

    fn set(extra: Value) -> StatefulSet {
        let mut spec = json!({
            "replicas": 3,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}},
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        });
        merge(&mut spec, extra);
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default", "uid": "set-uid", "generation": 1}, "spec": spec}),
        )
        .unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn revs(s: &StatefulSet) -> (Rev, Rev) {
        let t = s.spec.as_ref().unwrap().template.clone();
        (Rev { name: "web-1".into(), template: t.clone() }, Rev { name: "web-2".into(), template: t })
    }

    /// A pod of `v` at `revision` in `phase`, Ready when `ready`.
    fn pod(v: &SetView, ord: i32, revision: &str, phase: &str, ready: bool) -> Arc<Pod> {
        let t = Rev { name: revision.into(), template: PodTemplateSpec::default() };
        let mut p = v.new_pod(&t.template, revision, ord);
        p.metadata.uid = Some(format!("uid-{ord}"));
        let conditions = ready.then(|| {
            vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }]
        });
        p.status = Some(PodStatus { phase: Some(phase.into()), conditions, ..Default::default() });
        // Claims mount as templates say.
        Arc::new(p)
    }

    fn no_claims(_: &str) -> Option<Arc<PersistentVolumeClaim>> {
        None
    }

    fn all_claims(name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        Some(Arc::new(PersistentVolumeClaim {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        }))
    }

    fn describe(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Create(p) => format!("create {}", p.name_any()),
                Step::Claims(p) => format!("claims {}", p.name_any()),
                Step::Delete(p, why) => format!("delete {} {why:?}", p.name_any()),
                Step::Update(p) => format!("update {}", p.name_any()),
                Step::FixClaims(p) => format!("fix {}", p.name_any()),
            })
            .collect()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000).unwrap()
    }

    #[test]
    fn names_and_ordinals() {
        assert_eq!(parent_and_ordinal("web-0"), Some(("web", 0)));
        assert_eq!(parent_and_ordinal("my-web-12"), Some(("my-web", 12)));
        assert_eq!(parent_and_ordinal("web-01"), None);
        assert_eq!(parent_and_ordinal("web-"), None);
        assert_eq!(parent_and_ordinal("web"), None);
        assert_eq!(parent_and_ordinal("web-x1"), None);
        assert_eq!(claim_name("www", "web", 2), "www-web-2");
    }

    #[test]
    fn new_pods_have_stable_identity_and_claims() {
        let s = set(json!({"template": {"spec": {"volumes": [{"name": "www", "emptyDir": {}}, {"name": "cfg", "emptyDir": {}}]}}}));
        let v = SetView::new(&s);
        let p = v.new_pod(&s.spec.as_ref().unwrap().template, "web-abc", 1);
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"), "as upstream's GetPodFromTemplate");
        let labels = p.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "web-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[REVISION_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!((spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("web-1"), Some("web")));
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(vols.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["www", "cfg"], "the claim replaces the template's www");
        assert_eq!(vols[0].persistent_volume_claim.as_ref().unwrap().claim_name, "www-web-1");
        assert_eq!(p.metadata.owner_references.as_ref().unwrap()[0].kind, "StatefulSet");
        assert!(v.identity_matches(&p) && v.storage_matches(&p));
        let c = &v.claims_for(1)[0];
        assert_eq!(c.metadata.name.as_deref(), Some("www-web-1"));
        assert_eq!(c.metadata.labels.as_ref().unwrap()["app"], "web", "selector labels on the claim");
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_in_order() {
        let s = set(json!({}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let p = plan(&v, &cur, &upd, &[], &no_claims, now());
        assert_eq!(describe(&p.steps), ["create web-0"]);
        // web-0 pending: wait.
        let pods = vec![pod(&v, 0, "web-2", "Pending", false)];
        let p = plan(&v, &cur, &upd, &pods, &all_claims, now());
        assert!(p.steps.is_empty(), "{:?}", describe(&p.steps));
        // web-0 Running but not Ready: still wait.
        let pods = vec![pod(&v, 0, "web-2", "Running", false)];
        assert!(plan(&v, &cur, &upd, &pods, &all_claims, now()).steps.is_empty());
        // web-0 Ready: web-1 next.
        let pods = vec![pod(&v, 0, "web-2", "Running", true)];
        let p = plan(&v, &cur, &upd, &pods, &all_claims, now());
        assert_eq!(describe(&p.steps), ["create web-1"]);
        assert_eq!(p.counts, Counts { replicas: 1, ready: 1, available: 1, current: 0, updated: 1 });
    }

    #[test]
    fn parallel_creates_all_and_pending_pods_get_missing_claims() {
        let s = set(json!({"podManagementPolicy": "Parallel"}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let pods = vec![pod(&v, 1, "web-2", "Pending", false)];
        let p = plan(&v, &cur, &upd, &pods, &no_claims, now());
        assert_eq!(describe(&p.steps), ["create web-0", "claims web-1", "create web-2"]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_and_waits() {
        let s = set(json!({"replicas": 1}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let pods: Vec<Arc<Pod>> = (0..3).map(|i| pod(&v, i, "web-2", "Running", true)).collect();
        let p = plan(&v, &cur, &upd, &pods, &all_claims, now());
        assert_eq!(describe(&p.steps), ["delete web-2 ScaleDown"]);
        // web-2 terminating: wait for it before touching web-1.
        let mut gone = (*pods[2]).clone();
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let p = plan(&v, &cur, &upd, &[pods[0].clone(), pods[1].clone(), Arc::new(gone)], &all_claims, now());
        assert!(p.steps.is_empty());
        // Parallel deletes all condemned at once.
        let s = set(json!({"replicas": 1, "podManagementPolicy": "Parallel"}));
        let v = SetView::new(&s);
        let p = plan(&v, &cur, &upd, &pods, &all_claims, now());
        assert_eq!(describe(&p.steps), ["delete web-2 ScaleDown", "delete web-1 ScaleDown"]);
    }

    #[test]
    fn scale_down_waits_for_unhealthy_lower_pods_unless_it_is_the_first_unhealthy() {
        let s = set(json!({"replicas": 1}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        // web-2 is the only unhealthy pod: it may go.
        let pods = vec![pod(&v, 0, "web-2", "Running", true), pod(&v, 1, "web-2", "Running", true), pod(&v, 2, "web-2", "Running", false)];
        assert_eq!(describe(&plan(&v, &cur, &upd, &pods, &all_claims, now()).steps), ["delete web-2 ScaleDown"]);
        // web-1 is unhealthy and first: healthy web-2 still goes first; unhealthy web-2 behind an
        // unhealthy web-1 waits.
        let pods = vec![pod(&v, 0, "web-2", "Running", true), pod(&v, 1, "web-2", "Running", false), pod(&v, 2, "web-2", "Running", false)];
        assert!(plan(&v, &cur, &upd, &pods, &all_claims, now()).steps.is_empty());
    }

    #[test]
    fn rolling_update_goes_from_the_highest_ordinal_down_to_the_partition() {
        let s = set(json!({}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let old: Vec<Arc<Pod>> = (0..3).map(|i| pod(&v, i, "web-1", "Running", true)).collect();
        let p = plan(&v, &cur, &upd, &old, &all_claims, now());
        assert_eq!(describe(&p.steps), ["delete web-2 Update"]);
        assert_eq!(p.counts.current, 2, "the deleted pod no longer counts as current");
        // web-2 replaced but not ready yet: wait.
        let pods = vec![old[0].clone(), old[1].clone(), pod(&v, 2, "web-2", "Running", false)];
        assert!(plan(&v, &cur, &upd, &pods, &all_claims, now()).steps.is_empty());
        // web-2 ready: web-1 next.
        let pods = vec![old[0].clone(), old[1].clone(), pod(&v, 2, "web-2", "Running", true)];
        assert_eq!(describe(&plan(&v, &cur, &upd, &pods, &all_claims, now()).steps), ["delete web-1 Update"]);
        // A recreated pod at or above the partition gets the update revision, below it the current.
        let s = set(json!({"updateStrategy": {"rollingUpdate": {"partition": 2}}}));
        let v = SetView::new(&s);
        let p = plan(&v, &cur, &upd, &[], &no_claims, now());
        let Step::Create(web0) = &p.steps[0] else { panic!() };
        assert_eq!(pod_revision(web0), Some("web-1"));
        assert_eq!(pod_revision(&v.new_versioned_pod(&cur, &upd, 2)), Some("web-2"));
        // With partition 2, only web-2 is updated.
        let pods = vec![old[0].clone(), old[1].clone(), pod(&v, 2, "web-2", "Running", true)];
        assert!(plan(&v, &cur, &upd, &pods, &all_claims, now()).steps.is_empty());
    }

    #[test]
    fn max_unavailable_replaces_several_at_once() {
        let s = set(json!({"replicas": 5, "updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let old: Vec<Arc<Pod>> = (0..5).map(|i| pod(&v, i, "web-1", "Running", true)).collect();
        assert_eq!(describe(&plan(&v, &cur, &upd, &old, &all_claims, now()).steps), ["delete web-4 Update", "delete web-3 Update"]);
        // An updated pod that is not ready yet uses up one of the two. (OrderedReady would not get
        // this far: it waits for web-4 to be ready first, as upstream.)
        let mut pods = old.clone();
        pods[4] = pod(&v, 4, "web-2", "Running", false);
        assert!(plan(&v, &cur, &upd, &pods, &all_claims, now()).steps.is_empty());
        let s = set(json!({"replicas": 5, "podManagementPolicy": "Parallel", "updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}));
        let v = SetView::new(&s);
        assert_eq!(describe(&plan(&v, &cur, &upd, &pods, &all_claims, now()).steps), ["delete web-3 Update"]);
        // 40% of 5 rounds down to 2; 10% rounds down to 0 and becomes 1.
        let s = set(json!({"replicas": 5, "updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}}}));
        let v = SetView::new(&s);
        assert_eq!(plan(&v, &cur, &upd, &old, &all_claims, now()).steps.len(), 1);
        assert!(matches!(v.rolling.as_ref().unwrap().max_unavailable, Some(IntOrString::String(_))));
    }

    #[test]
    fn on_delete_only_recreates() {
        let s = set(json!({"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let pods = vec![pod(&v, 0, "web-1", "Running", true), pod(&v, 1, "web-1", "Running", true)];
        let p = plan(&v, &cur, &upd, &pods, &all_claims, now());
        assert_eq!(describe(&p.steps), ["create web-2"]);
        let Step::Create(web2) = &p.steps[0] else { panic!() };
        assert_eq!(pod_revision(web2), Some("web-2"), "a recreated pod gets the new template");
    }

    #[test]
    fn failed_pods_are_deleted_then_recreated() {
        let s = set(json!({}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let pods = vec![pod(&v, 0, "web-2", "Failed", false)];
        assert_eq!(describe(&plan(&v, &cur, &upd, &pods, &all_claims, now()).steps), ["delete web-0 Failed"]);
        assert_eq!(describe(&plan(&v, &cur, &upd, &[], &all_claims, now()).steps), ["create web-0"]);
    }

    #[test]
    fn start_ordinal_shifts_names() {
        let s = set(json!({"replicas": 2, "ordinals": {"start": 5}}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let p = plan(&v, &cur, &upd, &[pod(&v, 0, "web-2", "Running", true)], &all_claims, now());
        assert_eq!(describe(&p.steps), ["create web-5"], "web-0 waits: OrderedReady creates before it deletes");
        let pods = vec![pod(&v, 5, "web-2", "Running", true), pod(&v, 6, "web-2", "Running", true), pod(&v, 0, "web-2", "Running", true)];
        assert_eq!(describe(&plan(&v, &cur, &upd, &pods, &all_claims, now()).steps), ["delete web-0 ScaleDown"]);
    }

    #[test]
    fn identity_is_restored() {
        let s = set(json!({}));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let mut p0 = (*pod(&v, 0, "web-2", "Running", true)).clone();
        p0.metadata.labels.as_mut().unwrap().remove(POD_INDEX_LABEL);
        let pods = vec![Arc::new(p0), pod(&v, 1, "web-2", "Running", true), pod(&v, 2, "web-2", "Running", true)];
        assert_eq!(describe(&plan(&v, &cur, &upd, &pods, &all_claims, now()).steps), ["update web-0"]);
    }

    #[test]
    fn retention_policy_owner_references() {
        let claim = PersistentVolumeClaim::default();
        let mk = |deleted: &str, scaled: &str, replicas: i32| {
            SetView::new(&set(
                json!({"replicas": replicas, "persistentVolumeClaimRetentionPolicy": {"whenDeleted": deleted, "whenScaled": scaled}}),
            ))
        };
        let kinds = |refs: Option<Vec<OwnerReference>>| refs.map(|r| r.into_iter().map(|r| r.kind).collect::<Vec<_>>());
        let v = mk("Retain", "Retain", 3);
        let p = pod(&v, 2, "web-2", "Running", true);
        assert_eq!(kinds(v.claim_refs(&claim, &p)), None, "nothing to change");
        assert_eq!(kinds(mk("Delete", "Retain", 3).claim_refs(&claim, &p)), Some(vec!["StatefulSet".to_string()]));
        assert_eq!(kinds(mk("Retain", "Delete", 3).claim_refs(&claim, &p)), None, "in range: no pod ref");
        assert_eq!(kinds(mk("Retain", "Delete", 2).claim_refs(&claim, &p)), Some(vec!["Pod".to_string()]), "scaled down");
        assert_eq!(kinds(mk("Delete", "Delete", 2).claim_refs(&claim, &p)), Some(vec!["Pod".to_string()]));
        // Retain/Retain removes refs an earlier policy added.
        let v = mk("Delete", "Retain", 3);
        let owned = PersistentVolumeClaim {
            metadata: ObjectMeta { owner_references: v.claim_refs(&claim, &p), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(v.claim_refs(&owned, &p), None);
        assert_eq!(kinds(mk("Retain", "Retain", 3).claim_refs(&owned, &p)), Some(vec![]));
        // A claim still owned by an earlier web-2 is stale for the new one.
        let v = mk("Retain", "Delete", 3);
        let stale = Arc::new(PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("www-web-2".into()),
                owner_references: Some(vec![OwnerReference {
                    kind: "Pod".into(),
                    name: "web-2".into(),
                    uid: "old".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        });
        let fresh = v.new_pod(&PodTemplateSpec::default(), "web-2", 2);
        assert!(v.claim_is_stale(&fresh, &|_| Some(stale.clone())));
        let (cur, upd) = revs(&set(json!({})));
        let pods = [pod(&v, 0, "web-2", "Running", true), pod(&v, 1, "web-2", "Running", true)];
        let p = plan(&v, &cur, &upd, &pods, &|_| Some(stale.clone()), now());
        assert!(p.steps.iter().all(|s| !matches!(s, Step::Create(_))), "{:?}", describe(&p.steps));
    }

    #[test]
    fn deleting_sets_only_count() {
        let mut s = set(json!({}));
        s.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let v = SetView::new(&s);
        let (cur, upd) = revs(&s);
        let p = plan(&v, &cur, &upd, &[pod(&v, 0, "web-1", "Running", true)], &all_claims, now());
        assert!(p.steps.is_empty());
        assert_eq!(p.counts, Counts { replicas: 1, ready: 1, available: 1, current: 1, updated: 0 });
    }
}
