//! The ReplicaSet controller (and ReplicationController, which upstream runs through the same
//! code): keep `spec.replicas` active pods matching the selector, adopting matching orphans and
//! releasing pods that stopped matching, and report what it sees in `status`.
//!
//! Never over-creates under watch lag: every create and delete is registered in
//! [`Expectations`] first, and an owner is not scaled again until the pod watch has shown those
//! writes. Pods are deleted in upstream's order (see [`deletion_order`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::events::{Recorder, reference};
use crate::expectations::Expectations;
use crate::metrics::{ControllerMetrics, Metrics};
use crate::podutil::{self, PodSelector, controller_ref, is_active, is_available, is_ready, owner_ref, pod_from_template};

/// Upstream's burstReplicas: at most this many creates or deletes per sync.
const BURST: usize = 500;

/// What the controller needs of a ReplicaSet or ReplicationController.
pub struct View {
    pub replicas: i32,
    pub selector: Option<LabelSelector>,
    pub template: Option<PodTemplateSpec>,
    pub min_ready_seconds: i32,
}

pub trait Replicated:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const COMPONENT: &'static str;
    fn view(&self) -> View;
    fn status_json(&self) -> Value;
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn view(&self) -> View {
        let spec = self.spec.clone().unwrap_or_default();
        View {
            replicas: spec.replicas.unwrap_or(1),
            selector: Some(spec.selector),
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        }
    }
    fn status_json(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn view(&self) -> View {
        let spec = self.spec.clone().unwrap_or_default();
        // An RC's selector is a plain map; admission defaults it from the template labels.
        let selector = spec.selector.map(|m| LabelSelector { match_labels: Some(m), ..Default::default() });
        View {
            replicas: spec.replicas.unwrap_or(1),
            selector,
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        }
    }
    fn status_json(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

pub struct Ctx<K: Replicated> {
    client: Client,
    pods: Store<Pod>,
    exp: Arc<Expectations>,
    events: Recorder,
    metrics: Arc<ControllerMetrics>,
    _k: std::marker::PhantomData<K>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the controller for `K` until dropped. `ctrl` watches the owners (its own watch, or a
/// shared informer's stream); `pods` and `pod_events` come from the shared pod informer, whose tap
/// feeds `exp`.
pub async fn run<K: Replicated>(
    client: Client,
    metrics: &Metrics,
    ctrl: Controller<K>,
    pods: Store<Pod>,
    pod_events: impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    exp: Arc<Expectations>,
) {
    let owners = ctrl.store();
    let ctx = Arc::new(Ctx::<K> {
        client: client.clone(),
        pods,
        exp,
        events: Recorder::new(client, K::COMPONENT),
        metrics: metrics.controller(K::COMPONENT),
        _k: std::marker::PhantomData,
    });
    crate::drain(
        ctrl.watches_stream(pod_events, move |pod: Pod| owners_of(&owners, &pod)).run(reconcile::<K>, error_policy::<K>, ctx),
        K::COMPONENT,
    )
    .await;
}

/// Which owners a pod event concerns: its controller, or, for an orphan, every owner in its
/// namespace whose selector matches (one of them may adopt it).
fn owners_of<K: Replicated>(owners: &Store<K>, pod: &Pod) -> Vec<ObjectRef<K>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_ref(&pod.metadata) {
        return if r.kind == K::kind(&()) { vec![ObjectRef::new(&r.name).within(&ns)] } else { vec![] };
    }
    if !is_active(pod) {
        return vec![];
    }
    let labels = podutil::labels(&pod.metadata);
    owners
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns.as_str()) && PodSelector::new(o.view().selector.as_ref()).matches(labels))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

fn error_policy<K: Replicated>(_o: Arc<K>, err: &Error, ctx: Arc<Ctx<K>>) -> Action {
    ctx.metrics.error();
    tracing::warn!("{}: {err}", K::COMPONENT);
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile<K: Replicated>(owner: Arc<K>, ctx: Arc<Ctx<K>>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    // Never decide from a partial pod cache: at start-up that would re-create every pod.
    crate::informer::ready(&ctx.pods).await;
    let meta = owner.meta();
    let (ns, name, uid) = (owner.namespace().unwrap_or_default(), owner.name_any(), meta.uid.clone().unwrap_or_default());
    let view = owner.view();
    let sel = PodSelector::new(view.selector.as_ref());
    let deleting = meta.deletion_timestamp.is_some();
    let api_version = K::api_version(&()).into_owned();
    let kind = K::kind(&()).into_owned();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in ctx.pods.state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str()) || !is_active(&pod) {
            continue;
        }
        let matches = sel.matches(podutil::labels(&pod.metadata));
        match controller_ref(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(pod);
                } else if !deleting {
                    release(&pods_api, &pod, &uid).await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting => {
                owned.extend(adopt(&pods_api, &pod, owner_ref(&api_version, &kind, meta)).await?.then_some(pod))
            }
            None => {}
        }
    }

    let mut failure: Option<(&'static str, String)> = None;
    if !deleting && ctx.exp.satisfied(&uid, &ctx.pods) {
        let diff = owned.len() as i64 - view.replicas.max(0) as i64;
        if diff < 0 {
            let n = ((-diff) as usize).min(BURST);
            if let Some(template) = &view.template {
                failure = create_pods(&ctx, &owner, template, n).await.err().map(|m| ("FailedCreate", m));
            }
        } else if diff > 0 {
            let n = (diff as usize).min(BURST);
            let now = Timestamp::now();
            let victims = deletion_order(&owned, now);
            let victims: Vec<&Pod> = victims.into_iter().take(n).map(|i| owned[i].as_ref()).collect();
            failure = delete_pods(&ctx, &owner, &victims).await.err().map(|m| ("FailedDelete", m));
        }
    }

    let now = Timestamp::now();
    let status = compute_status(owner.as_ref(), &view, &owned, failure.as_ref(), now);
    if status != normalized(owner.status_json()) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        let mut body = json!({ "status": status });
        // A merge patch only removes what it names as null.
        if owner.status_json().get("conditions").is_some() && status.get("conditions").is_none() {
            body["status"]["conditions"] = Value::Null;
        }
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(body)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if failure.is_some() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    // Pods that are ready but not yet available for minReadySeconds become available with no
    // event to tell us; look again then.
    let next = owned.iter().filter_map(|p| podutil::until_available(p, view.min_ready_seconds, now)).min();
    Ok(match next {
        Some(d) => Action::requeue(d + Duration::from_millis(50)),
        None => Action::await_change(),
    })
}

/// Creates `n` pods in upstream's slow-start batches (1, 2, 4, ...), stopping at the first batch
/// with a failure so a broken template costs one error, not `n`.
async fn create_pods<K: Replicated>(ctx: &Ctx<K>, owner: &K, template: &PodTemplateSpec, n: usize) -> Result<(), String> {
    let meta = owner.meta();
    let ns = owner.namespace().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let oref = owner_ref(&K::api_version(&()), &K::kind(&()), meta);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = pod_from_template(template, &owner.name_any(), &ns, oref);
    ctx.exp.expect_creations(&uid, n);
    let (mut done, mut batch) = (0, 1);
    while done < n {
        let size = batch.min(n - done);
        let results = join_all((0..size).map(|_| {
            let (api, pod) = (api.clone(), pod.clone());
            async move { api.create(&PostParams::default(), &pod).await }
        }))
        .await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => ctx.events.normal(reference(owner), "SuccessfulCreate", format!("Created pod: {}", p.name_any())),
                Err(e) => {
                    ctx.exp.creation_observed(&uid);
                    first_err.get_or_insert(e);
                }
            }
        }
        done += size;
        if let Some(e) = first_err {
            for _ in done..n {
                ctx.exp.creation_observed(&uid);
            }
            let msg = format!("Error creating: {}", api_error_message(&e));
            ctx.events.warning(reference(owner), "FailedCreate", msg.clone());
            return Err(msg);
        }
        batch *= 2;
    }
    Ok(())
}

async fn delete_pods<K: Replicated>(ctx: &Ctx<K>, owner: &K, victims: &[&Pod]) -> Result<(), String> {
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    ctx.exp.expect_deletions(&uid, victims);
    let results = join_all(victims.iter().map(|p| {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: p.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        let name = p.name_any();
        let api = api.clone();
        async move { (name.clone(), api.delete(&name, &dp).await) }
    }))
    .await;
    let mut err = None;
    for ((name, r), p) in results.into_iter().zip(victims) {
        match r {
            Ok(_) => ctx.events.normal(reference(owner), "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                ctx.exp.deletion_observed(&uid, p.metadata.uid.as_deref().unwrap_or_default());
                let msg = format!("Error deleting: {}", api_error_message(&e));
                ctx.events.warning(reference(owner), "FailedDelete", msg.clone());
                err.get_or_insert(msg);
            }
        }
    }
    err.map_or(Ok(()), Err)
}

fn api_error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Takes an orphan: a strategic merge patch adds our controller reference (merged by uid), and the
/// pod's uid in the patch makes it fail if the pod was replaced meanwhile.
async fn adopt(api: &Api<Pod>, pod: &Pod, oref: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference) -> Result<bool, Error> {
    let patch = json!({ "metadata": { "ownerReferences": [oref], "uid": pod.metadata.uid } });
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> Result<(), Error> {
    let patch = json!({ "metadata": { "ownerReferences": [{ "$patch": "delete", "uid": owner_uid }], "uid": pod.metadata.uid } });
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Indexes into `owned`, first to delete first, by upstream's ActivePodsWithRanks: unassigned
/// before assigned; Pending, Unknown, Running; not ready before ready; lower
/// `controller.kubernetes.io/pod-deletion-cost`; more of our pods on the same node first; ready
/// for less time; more container restarts; newer.
pub fn deletion_order(owned: &[Arc<Pod>], now: Timestamp) -> Vec<usize> {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for p in owned {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let key = |p: &Pod| {
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty());
        let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Pending") => 0,
            Some("Running") => 2,
            _ => 1,
        };
        let cost: i64 = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let colocated = node.map(|n| per_node.get(n).copied().unwrap_or(0)).unwrap_or(0);
        let ready_for = podutil::ready_since(p).map(|t| now.duration_since(t).as_secs()).unwrap_or(i64::MIN);
        let restarts: i32 =
            p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().map(|c| c.restart_count).sum()).unwrap_or(0);
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(i64::MAX);
        (
            node.is_some(),
            phase,
            is_ready(p),
            cost,
            std::cmp::Reverse(colocated),
            ready_for,
            std::cmp::Reverse(restarts),
            std::cmp::Reverse(created),
        )
    };
    let mut idx: Vec<usize> = (0..owned.len()).collect();
    idx.sort_by_cached_key(|&i| key(&owned[i]));
    idx
}

/// The stored status with zero counts dropped, as [`compute_status`] writes them, so a status the
/// API server echoes back with explicit zeros does not look changed (which would loop forever).
fn normalized(mut status: Value) -> Value {
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| k == "replicas" || k == "conditions" || k == "observedGeneration" || *v != 0);
        if m.get("conditions").is_some_and(|c| c.as_array().is_some_and(|a| a.is_empty())) {
            m.remove("conditions");
        }
    }
    status
}

/// The status upstream reports, as JSON in the shape both ReplicaSetStatus and
/// ReplicationControllerStatus share.
fn compute_status<K: Replicated>(owner: &K, view: &View, owned: &[Arc<Pod>], failure: Option<&(&str, String)>, now: Timestamp) -> Value {
    let tlabels = view.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let fully = owned.iter().filter(|p| tlabels.iter().all(|(k, v)| podutil::labels(&p.metadata).get(k) == Some(v))).count();
    let ready = owned.iter().filter(|p| is_ready(p)).count();
    let available = owned.iter().filter(|p| is_available(p, view.min_ready_seconds, now)).count();
    let mut status = json!({
        "replicas": owned.len(),
        "fullyLabeledReplicas": fully,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": owner.meta().generation.unwrap_or(0),
    });
    // Zero counts are omitted on the wire, as Go's omitempty does (replicas is always written).
    for k in ["fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
        if status[k] == 0 {
            status.as_object_mut().unwrap().remove(k);
        }
    }
    let old = owner.status_json();
    let old_failure =
        old.get("conditions").and_then(Value::as_array).and_then(|c| c.iter().find(|c| c["type"] == "ReplicaFailure")).cloned();
    if let Some((reason, message)) = failure {
        let same = old_failure.as_ref().is_some_and(|c| c["reason"] == *reason && c["message"] == *message);
        let cond = if same {
            old_failure.unwrap()
        } else {
            json!({"type": "ReplicaFailure", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now.to_string()})
        };
        status["conditions"] = json!([cond]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podutil::testing::*;

    fn on(mut p: Pod, node: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        p
    }

    fn created(mut p: Pod, s: i64) -> Pod {
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::from_second(s).unwrap()));
        p
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_not_ready_then_newer() {
        let now = Timestamp::from_second(10_000).unwrap();
        let pods: Vec<Arc<Pod>> = vec![
            Arc::new(ready_at(on(created(pod("old-ready"), 100), "n1"), Timestamp::from_second(200).unwrap())),
            Arc::new(ready_at(on(created(pod("new-ready"), 500), "n2"), Timestamp::from_second(600).unwrap())),
            Arc::new(with_phase(on(pod("running-not-ready"), "n3"), "Running")),
            Arc::new(with_phase(on(pod("pending"), "n4"), "Pending")),
            Arc::new(pod("unscheduled")),
        ];
        let order: Vec<String> = deletion_order(&pods, now).into_iter().map(|i| pods[i].name_any()).collect();
        assert_eq!(order, ["unscheduled", "pending", "running-not-ready", "new-ready", "old-ready"]);
    }

    #[test]
    fn deletion_prefers_doubled_up_nodes_and_low_cost() {
        let now = Timestamp::from_second(10_000).unwrap();
        let t = Timestamp::from_second(100).unwrap();
        let mut cheap = ready_at(on(pod("cheap"), "n3"), t);
        cheap.metadata.annotations = Some([("controller.kubernetes.io/pod-deletion-cost".to_string(), "-5".to_string())].into());
        let pods: Vec<Arc<Pod>> = vec![
            Arc::new(ready_at(on(pod("alone"), "n1"), t)),
            Arc::new(ready_at(on(pod("twin-a"), "n2"), t)),
            Arc::new(ready_at(on(pod("twin-b"), "n2"), t)),
            Arc::new(cheap),
        ];
        let order: Vec<String> = deletion_order(&pods, now).into_iter().map(|i| pods[i].name_any()).collect();
        assert_eq!(order[0], "cheap");
        assert!(order[1].starts_with("twin") && order[2].starts_with("twin"));
        assert_eq!(order[3], "alone");
    }

    #[test]
    fn status_counts_ready_available_and_labels() {
        let now = Timestamp::from_second(1_000).unwrap();
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "default", "generation": 3},
            "spec": {"replicas": 3, "minReadySeconds": 10, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x", "tier": "web"}}}}
        }))
        .unwrap();
        let mut full = ready_at(pod("a"), Timestamp::from_second(900).unwrap());
        full.metadata.labels = Some([("app".to_string(), "x".to_string()), ("tier".to_string(), "web".to_string())].into());
        let fresh = ready_at(pod("b"), Timestamp::from_second(995).unwrap());
        let owned = vec![Arc::new(full), Arc::new(fresh), Arc::new(pod("c"))];
        let st = compute_status(&rs, &rs.view(), &owned, None, now);
        assert_eq!(
            st,
            json!({"replicas": 3, "fullyLabeledReplicas": 1, "readyReplicas": 2, "availableReplicas": 1, "observedGeneration": 3})
        );
        let failed = compute_status(&rs, &rs.view(), &owned, Some(&("FailedCreate", "quota".into())), now);
        assert_eq!(failed["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(failed["conditions"][0]["reason"], "FailedCreate");
    }
}
