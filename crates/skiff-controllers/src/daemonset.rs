//! The DaemonSet controller, as upstream's `pkg/controller/daemon`: one pod on every node the
//! DaemonSet's template may run on, replaced by the update strategy when the template changes.
//!
//! A node is eligible when its labels satisfy the template's nodeSelector and required node
//! affinity and it has no NoSchedule/NoExecute taint the pod does not tolerate; the pod gets
//! upstream's default DaemonSet tolerations first (not-ready and unreachable NoExecute, the
//! pressure and unschedulable NoSchedule taints, network-unavailable for hostNetwork pods). A node
//! that only has untolerated NoSchedule taints keeps a pod it already runs (upstream's
//! "shouldContinueRunning"). Pods are not bound here: each carries required node affinity
//! `metadata.name In [node]` and the scheduler binds it (upstream's ScheduleDaemonSetPods).
//!
//! One sync: claim pods and ControllerRevisions, find (or snapshot) the revision of the current
//! template, then, once the pod watch has shown our last writes ([`Expectations`]), create pods
//! on nodes missing one and delete pods on nodes that should not have one (`manage`), then take
//! one RollingUpdate step (`rolling_plan`), trim the history, and write status.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, PodTemplateSpec, Toleration,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::claim::{Claimer, api_error_message};
use crate::deployment::util::{scaled, template_hash};
use crate::events::{Recorder, reference};
use crate::expectations::Expectations;
use crate::history::{self, REVISION_LABEL};
use crate::metrics::{ControllerMetrics, Metrics};
use crate::podutil::{self, PodSelector, controller_ref, is_available, is_ready, owner_ref, pod_from_template, tolerates};

const COMPONENT: &str = "daemonset-controller";
/// Upstream's BurstReplicas for DaemonSets: at most this many creates (and deletes) per sync.
const BURST: usize = 250;
/// The label upstream's pods of an older era were matched by; still written when the DaemonSet
/// carries the annotation it comes from.
const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// Upstream's failedPodsBackoff: 1 s doubling to 15 min between deletions of failed pods on a node.
const FAILED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

pub struct Ctx {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    exp: Arc<Expectations>,
    events: Recorder,
    metrics: Arc<ControllerMetrics>,
    /// `<ds uid>/<node>` → (last failed-pod deletion, current delay).
    failed_backoff: Mutex<HashMap<String, (Instant, Duration)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Retry(String),
    #[error("{0}")]
    Writes(String),
}

type Events<K> = (Store<K>, std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>);

/// The shared informers the controller reads: pods (whose tap feeds `exp`), nodes, revisions.
pub struct Inputs {
    pub pods: Events<Pod>,
    pub nodes: Events<Node>,
    pub revisions: Events<ControllerRevision>,
    pub exp: Arc<Expectations>,
}

impl Inputs {
    pub fn new(
        pods: (Store<Pod>, impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static),
        nodes: (Store<Node>, impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static),
        revisions: (Store<ControllerRevision>, impl Stream<Item = Result<ControllerRevision, watcher::Error>> + Send + 'static),
        exp: Arc<Expectations>,
    ) -> Inputs {
        Inputs {
            pods: (pods.0, Box::pin(pods.1)),
            nodes: (nodes.0, Box::pin(nodes.1)),
            revisions: (revisions.0, Box::pin(revisions.1)),
            exp,
        }
    }
}

pub async fn run(client: Client, metrics: &Metrics, inputs: Inputs) {
    let Inputs { pods: (pods, pod_events), nodes: (nodes, node_events), revisions: (revisions, revision_events), exp } = inputs;
    let ctrl = Controller::new(Api::<DaemonSet>::all(client.clone()), watcher::Config::default());
    let sets = ctrl.store();
    let (sets_p, sets_n, sets_r) = (sets.clone(), sets.clone(), sets);
    let node_watch = NodeWatch { nodes: nodes.clone(), seen: Mutex::default() };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods,
        nodes,
        revisions,
        exp,
        events: Recorder::new(client, COMPONENT),
        metrics: metrics.controller(COMPONENT),
        failed_backoff: Mutex::default(),
    });
    crate::drain(
        ctrl.watches_stream(pod_events, move |p: Pod| {
            owners_of(&sets_p, p.metadata.namespace.as_deref(), &p.metadata, podutil::is_active(&p))
        })
        .watches_stream(node_events, move |n: Node| if node_watch.changed(&n) { all(&sets_n) } else { Vec::new() })
        .watches_stream(revision_events, move |r: ControllerRevision| {
            owners_of(&sets_r, r.metadata.namespace.as_deref(), &r.metadata, true)
        })
        .run(reconcile, error_policy, ctx),
        COMPONENT,
    )
    .await;
}

/// The DaemonSet a pod or revision belongs to or, for an orphan, every DaemonSet in its namespace
/// whose selector matches (one of them may adopt it).
fn owners_of(
    sets: &Store<DaemonSet>,
    ns: Option<&str>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    adoptable: bool,
) -> Vec<ObjectRef<DaemonSet>> {
    let ns = ns.unwrap_or_default();
    if let Some(r) = controller_ref(meta) {
        return if r.kind == "DaemonSet" { vec![ObjectRef::new(&r.name).within(ns)] } else { vec![] };
    }
    if !adoptable {
        return vec![];
    }
    let labels = podutil::labels(meta);
    sets.state()
        .iter()
        .filter(|d| d.metadata.namespace.as_deref() == Some(ns))
        .filter(|d| PodSelector::new(d.spec.as_ref().map(|s| &s.selector)).matches(labels))
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

fn all(sets: &Store<DaemonSet>) -> Vec<ObjectRef<DaemonSet>> {
    sets.state().iter().map(|d| ObjectRef::from_obj(d.as_ref())).collect()
}

/// Tells which node events can change where DaemonSets run: a node added or removed, or its
/// labels or taints changed. Heartbeat status writes are the bulk of node events and change
/// neither, so they do not resync every DaemonSet (upstream's shouldIgnoreNodeUpdate).
struct NodeWatch {
    nodes: Store<Node>,
    seen: Mutex<HashMap<String, u64>>,
}

impl NodeWatch {
    fn changed(&self, node: &Node) -> bool {
        let name = node.name_any();
        let mut seen = self.seen.lock().unwrap();
        // The informer applies an event to the store before it reaches us, so a node missing
        // from the store was deleted.
        let Some(current) = self.nodes.get(&ObjectRef::new(&name)) else {
            return seen.remove(&name).is_some();
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        current.metadata.labels.hash(&mut h);
        serde_json::to_string(&current.spec.as_ref().and_then(|s| s.taints.as_ref())).unwrap_or_default().hash(&mut h);
        let fp = h.finish();
        seen.insert(name, fp) != Some(fp)
    }
}

fn error_policy(_ds: Arc<DaemonSet>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    match err {
        // Our cache was behind (a conflict) or a revision is being renamed: the watch event that
        // brings the cache up to date is on its way.
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Action::requeue(Duration::from_millis(200)),
        Error::Retry(_) => Action::requeue(Duration::from_millis(200)),
        e => {
            tracing::warn!("{COMPONENT}: {e}");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    // Never decide from partial caches: at start-up that would create pods that exist.
    crate::informer::ready(&ctx.pods).await;
    crate::informer::ready(&ctx.nodes).await;
    crate::informer::ready(&ctx.revisions).await;
    // A DaemonSet being deleted is the garbage collector's; upstream does nothing more with it.
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(spec) = ds.spec.as_ref() else { return Ok(Action::await_change()) };
    let (ns, uid) = (ds.namespace().unwrap_or_default(), ds.metadata.uid.clone().unwrap_or_default());
    let selector = PodSelector::new(Some(&spec.selector));
    let claimer = Claimer { uid: &uid, namespace: &ns, owner_ref: owner(&ds), selector: &selector, deleting: false };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // Expectations before the cache: once they are met, a cache read after that holds our writes.
    let satisfied = ctx.exp.satisfied(&uid, &ctx.pods);
    let pods = claimer.claim(&pods_api, ctx.pods.state(), |_| true).await?;

    let (cur, old) = construct_history(&ctx, &ds, &claimer, &pods).await?;
    let hash = cur.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).cloned().unwrap_or_default();
    let nodes = ctx.nodes.state();
    let el = Eligibility::new(&spec.template);
    let generation = template_generation(&ds);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    if !satisfied {
        // Only status, and not observedGeneration: this generation has not been acted on.
        write_status(
            &ctx,
            &ds,
            compute_status(&nodes, &nodes_to_pods(&pods, false), &el, &hash, generation, min_ready, Timestamp::now()),
            false,
        )
        .await?;
        return Ok(Action::await_change());
    }

    let mut failures = Vec::new();
    let now = Timestamp::now();
    let by_node = nodes_to_pods(&pods, false);
    let key = |node: &str| format!("{uid}/{node}");
    let plan = manage_plan(&nodes, &by_node, &el, allows_surge(&ds), &hash, generation, min_ready, now, &mut |node| {
        backoff_check(&ctx.failed_backoff, &key(node))
    });
    for (pod, node) in &plan.failed {
        let msg = format!("Found failed daemon pod {ns}/{} on node {node}, will try to kill it", pod.name_any());
        ctx.events.warning(reference(ds.as_ref()), "FailedDaemonPod", msg);
    }
    for (pod, node) in &plan.succeeded {
        let msg = format!("Found succeeded daemon pod {ns}/{} on node {node}, will try to delete it", pod.name_any());
        ctx.events.normal(reference(ds.as_ref()), "SucceededDaemonPod", msg);
    }
    let mut next = plan.retry_after;
    failures.extend(sync_nodes(&ctx, &ds, &plan.delete, &plan.create, &hash).await.err());

    // One rolling step, once manage's writes are in the cache (upstream checks expectations again).
    if is_rolling(&ds) && ctx.exp.satisfied(&uid, &ctx.pods) {
        // Manage's writes may be in the cache by now: plan from it, not from the snapshot taken
        // before them (which would delete the same old pod twice).
        let mut by_node = nodes_to_pods(&owned_pods(&ctx, &uid, &ns, &selector), false);
        let (max_surge, max_unavailable, desired) = desired_counts(&ds, &nodes, &el, &mut by_node);
        let by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n.as_ref())).collect();
        let should_run = |name: &str| by_name.get(name).is_some_and(|n| el.check(n).0);
        let (delete, create) = rolling_plan(&by_node, &should_run, &hash, generation, max_surge, max_unavailable, desired, min_ready, now);
        failures.extend(sync_nodes(&ctx, &ds, &delete, &create, &hash).await.err());
    }

    let pods = owned_pods(&ctx, &uid, &ns, &selector);
    cleanup_history(&ctx, &ds, &old, &pods).await?;
    let status = compute_status(&nodes, &nodes_to_pods(&pods, false), &el, &hash, generation, min_ready, now);
    write_status(&ctx, &ds, status, true).await?;
    if let Some(f) = failures.into_iter().next() {
        return Err(f);
    }
    // Ready pods become available after minReadySeconds with no event to tell us.
    let later = pods.iter().filter_map(|p| podutil::until_available(p, min_ready, now)).min().map(|d| d + Duration::from_millis(50));
    next = min_opt(next, later);
    Ok(next.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// The pods the cache says we control (claimed earlier in this sync), read afresh.
fn owned_pods(ctx: &Ctx, uid: &str, ns: &str, selector: &PodSelector) -> Vec<Arc<Pod>> {
    ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns)
            && controller_ref(&p.metadata).is_some_and(|r| r.uid == uid)
            && selector.matches(podutil::labels(&p.metadata))
    })
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn owner(ds: &DaemonSet) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    owner_ref("apps/v1", "DaemonSet", &ds.metadata)
}

fn is_rolling(ds: &DaemonSet) -> bool {
    update_type(ds) == "RollingUpdate"
}

fn update_type(ds: &DaemonSet) -> &str {
    ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.type_.as_deref()).unwrap_or("RollingUpdate")
}

/// `deprecated.daemonset.template.generation`, when the DaemonSet carries it.
fn template_generation(ds: &DaemonSet) -> Option<i64> {
    ds.metadata.annotations.as_ref()?.get(TEMPLATE_GENERATION_ANNOTATION)?.parse().ok()
}

/// Upstream's failedPodsBackoff for one key: `None` lets a failed pod be deleted now (and starts
/// or doubles the delay), `Some(delay)` means wait that long.
fn backoff_check(map: &Mutex<HashMap<String, (Instant, Duration)>>, key: &str) -> Option<Duration> {
    let mut map = map.lock().unwrap();
    let now = Instant::now();
    // Entries idle for twice the longest delay start over anyway (upstream's backoff GC).
    if map.len() > 1024 {
        map.retain(|_, (last, _)| now.duration_since(*last) < 2 * FAILED_BACKOFF_MAX);
    }
    match map.get(key).copied() {
        Some((last, delay)) if now.duration_since(last) < delay => Some(delay - now.duration_since(last)),
        Some((last, delay)) if now.duration_since(last) < 2 * FAILED_BACKOFF_MAX => {
            map.insert(key.to_string(), (now, (delay * 2).min(FAILED_BACKOFF_MAX)));
            None
        }
        _ => {
            map.insert(key.to_string(), (now, FAILED_BACKOFF_INITIAL));
            None
        }
    }
}

// ---- eligibility -------------------------------------------------------------------------------

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// Upstream's AddOrUpdateDaemonPodTolerations: DaemonSet pods survive node problems and run on
/// cordoned nodes.
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut wanted = vec![
        exists(TAINT_NOT_READY, "NoExecute"),
        exists(TAINT_UNREACHABLE, "NoExecute"),
        exists(TAINT_DISK_PRESSURE, "NoSchedule"),
        exists(TAINT_MEMORY_PRESSURE, "NoSchedule"),
        exists(TAINT_PID_PRESSURE, "NoSchedule"),
        exists(TAINT_UNSCHEDULABLE, "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(exists(TAINT_NETWORK_UNAVAILABLE, "NoSchedule"));
    }
    for t in wanted {
        add_or_update_toleration(spec, t);
    }
}

/// Upstream's AddOrUpdateTolerationInPodSpec: a toleration with the same key, operator, value and
/// effect is replaced (so a user's `tolerationSeconds` on not-ready gives way to "forever").
fn add_or_update_toleration(spec: &mut PodSpec, t: Toleration) {
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    let norm = |s: &Option<String>| s.clone().unwrap_or_default();
    let same = |o: &Toleration| {
        norm(&o.key) == norm(&t.key)
            && norm(&o.effect) == norm(&t.effect)
            && norm(&o.operator) == norm(&t.operator)
            && norm(&o.value) == norm(&t.value)
    };
    match tols.iter_mut().find(|o| same(o)) {
        Some(o) => *o = t,
        None => tols.push(t),
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// A node selector term: all expressions on labels and all fields (only `metadata.name`) hold;
/// an empty term matches nothing.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && matches!(r.operator.as_str(), "In" | "NotIn") && requirement_matches(r, Some(node_name)))
}

/// Where a DaemonSet's pods may run, computed once per sync from the template (with the default
/// tolerations added), as upstream's NodeShouldRunDaemonPod sees a fresh pod.
pub struct Eligibility {
    node_name: Option<String>,
    node_selector: BTreeMap<String, String>,
    terms: Option<Vec<NodeSelectorTerm>>,
    tolerations: Vec<Toleration>,
}

impl Eligibility {
    pub fn new(template: &PodTemplateSpec) -> Eligibility {
        let mut spec = template.spec.clone().unwrap_or_default();
        add_default_tolerations(&mut spec);
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
            .map(|s| s.node_selector_terms.clone());
        Eligibility {
            node_name: spec.node_name.filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.unwrap_or_default(),
            terms,
            tolerations: spec.tolerations.unwrap_or_default(),
        }
    }

    /// (should run: a pod belongs there; should continue running: an existing pod may stay).
    pub fn check(&self, node: &Node) -> (bool, bool) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if self.node_name.as_deref().is_some_and(|n| n != name) {
            return (false, false);
        }
        let labels = podutil::labels(&node.metadata);
        let selector_ok = self.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        let affinity_ok = self.terms.as_ref().is_none_or(|terms| terms.iter().any(|t| term_matches(t, labels, name)));
        if !selector_ok || !affinity_ok {
            return (false, false);
        }
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
        let untolerated = |effects: &[&str]| {
            taints.iter().any(|taint| effects.contains(&taint.effect.as_str()) && !self.tolerations.iter().any(|t| tolerates(t, taint)))
        };
        if untolerated(&["NoSchedule", "NoExecute"]) {
            // Already-running pods stay unless a NoExecute taint would evict them anyway.
            return (false, !untolerated(&["NoExecute"]));
        }
        (true, true)
    }
}

// ---- pods per node -----------------------------------------------------------------------------

/// The node a daemon pod is for: where it is bound or, before binding, the node its
/// `metadata.name` affinity names (upstream's GetTargetNodeName).
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms =
        &spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find(|r| r.key == "metadata.name" && r.operator == "In").and_then(|r| {
        let v = r.values.as_deref().unwrap_or_default();
        (v.len() == 1).then(|| v[0].as_str())
    })
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn is_bound(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
}

/// Claimed pods by target node. Pods that are finished *and* being deleted are dropped unless
/// asked for: nothing is left to do with them.
pub fn nodes_to_pods(pods: &[Arc<Pod>], include_deleted_terminal: bool) -> BTreeMap<String, Vec<Arc<Pod>>> {
    let mut out: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in pods {
        if !include_deleted_terminal && is_terminal(p) && p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(n) = target_node(p) {
            out.entry(n.to_string()).or_default().push(p.clone());
        }
    }
    out
}

/// Oldest first, bound before unbound (upstream's podByCreationTimestampAndPhase).
fn sort_oldest_first(pods: &mut [Arc<Pod>]) {
    pods.sort_by(|a, b| {
        let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        is_bound(b).cmp(&is_bound(a)).then_with(|| t(a).cmp(&t(b))).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// The pod carries the current revision (hash) or, for old-style DaemonSets, template generation.
pub fn is_updated(pod: &Pod, hash: &str, generation: Option<i64>) -> bool {
    let labels = podutil::labels(&pod.metadata);
    let by_hash = !hash.is_empty() && labels.get(REVISION_LABEL).map(String::as_str) == Some(hash);
    let by_gen = generation.is_some_and(|g| labels.get(TEMPLATE_GENERATION_LABEL) == Some(&g.to_string()));
    by_hash || by_gen
}

#[derive(Default)]
pub struct ManagePlan {
    /// Nodes that need a pod.
    pub create: Vec<String>,
    pub delete: Vec<Arc<Pod>>,
    /// Failed and succeeded pods being deleted, with their node, for the events upstream writes.
    pub failed: Vec<(Arc<Pod>, String)>,
    pub succeeded: Vec<(Arc<Pod>, String)>,
    /// A failed pod waits out its backoff; look again then.
    pub retry_after: Option<Duration>,
}

/// Upstream's manage + podsShouldBeOnNode: which nodes need a pod and which pods must go.
/// `backoff(node)` is asked before a failed pod on `node` is deleted (None: go ahead).
#[allow(clippy::too_many_arguments)]
pub fn manage_plan(
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    el: &Eligibility,
    surge: bool,
    hash: &str,
    generation: Option<i64>,
    min_ready: i32,
    now: Timestamp,
    backoff: &mut dyn FnMut(&str) -> Option<Duration>,
) -> ManagePlan {
    let mut plan = ManagePlan::default();
    for node in nodes {
        let name = node.name_any();
        let (should_run, should_continue) = el.check(node);
        let pods = by_node.get(&name);
        match pods {
            None if should_run => plan.create.push(name),
            Some(pods) if should_continue => {
                let mut running = Vec::new();
                for p in pods {
                    if p.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    match phase(p) {
                        // kubelets that reject a pod fight the controller; back off per node.
                        "Failed" => match backoff(&name) {
                            Some(delay) => plan.retry_after = min_opt(plan.retry_after, Some(delay)),
                            None => {
                                plan.failed.push((p.clone(), name.clone()));
                                plan.delete.push(p.clone());
                            }
                        },
                        "Succeeded" => {
                            plan.succeeded.push((p.clone(), name.clone()));
                            plan.delete.push(p.clone());
                        }
                        _ => running.push(p.clone()),
                    }
                }
                if !surge {
                    // One pod per node: keep the oldest.
                    sort_oldest_first(&mut running);
                    plan.delete.extend(running.into_iter().skip(1));
                    continue;
                }
                if running.len() <= 1 {
                    if running.is_empty() && should_run {
                        plan.create.push(name);
                    }
                    continue;
                }
                // Surging: keep the oldest new pod and, while it is not yet available, the oldest
                // old pod that is still ready; everything else goes.
                sort_oldest_first(&mut running);
                let (mut oldest_new, mut oldest_old) = (None, None);
                for p in running {
                    let slot = if is_updated(&p, hash, generation) { &mut oldest_new } else { &mut oldest_old };
                    if slot.is_none() {
                        *slot = Some(p);
                    } else {
                        plan.delete.push(p);
                    }
                }
                if let (Some(new), Some(old)) = (oldest_new, oldest_old)
                    && (!is_ready(&old) || is_available(&new, min_ready, now))
                {
                    plan.delete.push(old);
                }
            }
            Some(pods) if !should_continue => {
                plan.delete.extend(pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).cloned());
            }
            _ => {}
        }
    }
    // Unbound pods for nodes that no longer exist will never be scheduled; bound ones on a
    // vanished node are the pod garbage collector's.
    let present: std::collections::HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    for (node, pods) in by_node {
        if !present.contains(node) {
            plan.delete.extend(pods.iter().filter(|p| !is_bound(p)).cloned());
        }
    }
    plan
}

/// maxSurge as a number of nodes (0 unless RollingUpdate), as upstream's SurgeCount.
fn surge_count(ds: &DaemonSet, desired: i32) -> i32 {
    if !is_rolling(ds) {
        return 0;
    }
    let ru = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.rolling_update.as_ref());
    match ru.and_then(|r| r.max_surge.as_ref()) {
        None => 0,
        Some(v) => scaled(Some(v), desired, true, "0"),
    }
}

/// maxUnavailable as a number of nodes, rounded up, as upstream's UnavailableCount.
fn unavailable_count(ds: &DaemonSet, desired: i32) -> i32 {
    if !is_rolling(ds) {
        return 0;
    }
    let ru = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.rolling_update.as_ref());
    // The API server defaults maxUnavailable to 1; `scaled` falls back to its default string.
    scaled(ru.and_then(|r| r.max_unavailable.as_ref()), desired, true, "1")
}

pub fn allows_surge(ds: &DaemonSet) -> bool {
    surge_count(ds, 1) != 0
}

/// (maxSurge, maxUnavailable, desiredNumberScheduled) for a rolling step, adding an empty entry
/// for every eligible node without pods (upstream's updatedDesiredNodeCounts).
pub fn desired_counts(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    el: &Eligibility,
    by_node: &mut BTreeMap<String, Vec<Arc<Pod>>>,
) -> (i32, i32, i32) {
    let mut desired = 0;
    for n in nodes {
        if el.check(n).0 {
            desired += 1;
            by_node.entry(n.name_any()).or_default();
        }
    }
    let (surge, mut unavailable) = (surge_count(ds, desired), unavailable_count(ds, desired));
    // Zero for both could never progress; upstream falls back to one unavailable.
    if desired > 0 && surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable, desired)
}

/// (the new pod, the old pod) on a node, either possibly missing.
type NewAndOld<'a> = (Option<&'a Arc<Pod>>, Option<&'a Arc<Pod>>);

/// At most one new and one old live pod on the node, or None when there are more (manage prunes
/// them first).
fn updated_pods_on_node<'a>(pods: &'a [Arc<Pod>], hash: &str, generation: Option<i64>) -> Option<NewAndOld<'a>> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let slot = if is_updated(p, hash, generation) { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(p);
    }
    Some((new, old))
}

/// One RollingUpdate step, as upstream's rollingUpdate: (old pods to delete, nodes to surge a new
/// pod onto). Without surge, old pods are deleted while fewer than maxUnavailable nodes are
/// unavailable and manage recreates them; with surge, new pods start next to available old ones
/// (at most maxSurge at a time) and the old one goes once the new one is available.
#[allow(clippy::too_many_arguments)]
pub fn rolling_plan(
    by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    should_run: &dyn Fn(&str) -> bool,
    hash: &str,
    generation: Option<i64>,
    max_surge: i32,
    max_unavailable: i32,
    desired: i32,
    min_ready: i32,
    now: Timestamp,
) -> (Vec<Arc<Pod>>, Vec<String>) {
    let available = |p: &Pod| is_available(p, min_ready, now);
    if max_surge == 0 {
        let mut unavailable = 0;
        let (mut replace, mut candidates) = (Vec::new(), Vec::new());
        for pods in by_node.values() {
            let Some((new, old)) = updated_pods_on_node(pods, hash, generation) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => unavailable += i32::from(!available(new)),
                (None, Some(old)) if !available(old) => {
                    // Not serving anyway: replacing it costs nothing.
                    replace.push(old.clone());
                    unavailable += 1;
                }
                (None, Some(_)) if unavailable >= max_unavailable => {}
                (None, Some(old)) => candidates.push(old.clone()),
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        replace.extend(candidates.into_iter().take(room));
        return (replace, Vec::new());
    }

    let (mut delete, mut should_not_run) = (Vec::new(), Vec::new());
    let (mut allowed_nodes, mut candidate_nodes) = (Vec::new(), Vec::new());
    let (mut surging, mut available_count) = (0, 0);
    for (node, pods) in by_node {
        let Some((new, old)) = updated_pods_on_node(pods, hash, generation) else {
            surging += 1;
            continue;
        };
        if let Some(p) = old.or(new)
            && available(p)
        {
            available_count += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) if !available(old) => {
                if should_run(node) {
                    allowed_nodes.push(node.clone());
                } else {
                    delete.push(old.clone());
                }
            }
            (None, Some(old)) => {
                if !should_run(node) {
                    should_not_run.push(old.clone());
                } else if surging < max_surge {
                    candidate_nodes.push(node.clone());
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    delete.push(old.clone());
                } else {
                    surging += 1;
                }
            }
        }
    }
    // With surge the owner expects no loss of availability: pods on nodes that should not run
    // them go only as far as pods elsewhere are available.
    let deletable = (available_count - desired).clamp(0, should_not_run.len() as i32) as usize;
    delete.extend(should_not_run.into_iter().take(deletable));
    let room = (max_surge - surging).clamp(0, candidate_nodes.len() as i32) as usize;
    allowed_nodes.extend(candidate_nodes.into_iter().take(room));
    (delete, allowed_nodes)
}

/// Upstream's updateDaemonSetStatus counts (observedGeneration and collisionCount are set by the
/// writer).
pub fn compute_status(
    nodes: &[Arc<Node>],
    by_node: &BTreeMap<String, Vec<Arc<Pod>>>,
    el: &Eligibility,
    hash: &str,
    generation: Option<i64>,
    min_ready: i32,
    now: Timestamp,
) -> DaemonSetStatus {
    let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) = (0, 0, 0, 0, 0, 0);
    for node in nodes {
        let (should_run, _) = el.check(node);
        let pods = by_node.get(&node.name_any()).filter(|p| !p.is_empty());
        match (should_run, pods) {
            (true, None) => desired += 1,
            (true, Some(pods)) => {
                desired += 1;
                current += 1;
                let mut pods = pods.clone();
                sort_oldest_first(&mut pods);
                let pod = &pods[0];
                if is_ready(pod) {
                    ready += 1;
                    if is_available(pod, min_ready, now) {
                        available += 1;
                    }
                }
                if is_updated(pod, hash, generation) {
                    updated += 1;
                }
            }
            (false, Some(_)) => misscheduled += 1,
            (false, None) => {}
        }
    }
    DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        updated_number_scheduled: Some(updated),
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        ..Default::default()
    }
}

/// Writes the counts (and, when this sync acted on the DaemonSet's generation, observedGeneration)
/// if they changed.
async fn write_status(ctx: &Ctx, ds: &DaemonSet, st: DaemonSetStatus, observed: bool) -> Result<(), Error> {
    let old = ds.status.clone().unwrap_or_default();
    let generation = if observed { ds.metadata.generation } else { old.observed_generation };
    let z = |v: Option<i32>| v.unwrap_or(0);
    let same = old.desired_number_scheduled == st.desired_number_scheduled
        && old.current_number_scheduled == st.current_number_scheduled
        && old.number_misscheduled == st.number_misscheduled
        && old.number_ready == st.number_ready
        && z(old.updated_number_scheduled) == z(st.updated_number_scheduled)
        && z(old.number_available) == z(st.number_available)
        && z(old.number_unavailable) == z(st.number_unavailable)
        && old.observed_generation.unwrap_or(0) >= generation.unwrap_or(0);
    if same {
        return Ok(());
    }
    let body = json!({"status": {
        "desiredNumberScheduled": st.desired_number_scheduled,
        "currentNumberScheduled": st.current_number_scheduled,
        "numberMisscheduled": st.number_misscheduled,
        "numberReady": st.number_ready,
        "updatedNumberScheduled": z(st.updated_number_scheduled),
        "numberAvailable": z(st.number_available),
        "numberUnavailable": z(st.number_unavailable),
        "observedGeneration": generation,
    }});
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    match api.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(body)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

// ---- pod writes --------------------------------------------------------------------------------

/// Upstream's CreatePodTemplate: default tolerations, and the revision (and generation) labels.
pub fn daemon_pod_template(template: &PodTemplateSpec, generation: Option<i64>, hash: &str) -> PodTemplateSpec {
    let mut t = template.clone();
    add_default_tolerations(t.spec.get_or_insert_with(Default::default));
    let labels = t.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
    if let Some(g) = generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), g.to_string());
    }
    if !hash.is_empty() {
        labels.insert(REVISION_LABEL.into(), hash.into());
    }
    t
}

/// Upstream's ReplaceDaemonSetPodNodeNameNodeAffinity: the pod's required node affinity becomes
/// exactly `metadata.name In [node]` (the controller already checked the template's own terms),
/// so the scheduler can only bind it there. Preferred terms and pod (anti-)affinity stay.
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let mut a = affinity.unwrap_or_default();
    let na = a.node_affinity.get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    a
}

/// Creates pods for `create` and deletes `delete`, each capped at the burst size, registering
/// expectations first (upstream's syncNodes). Creations go in slow-start batches (1, 2, 4, ...)
/// and stop at the first failing batch.
async fn sync_nodes(ctx: &Ctx, ds: &DaemonSet, delete: &[Arc<Pod>], create: &[String], hash: &str) -> Result<(), Error> {
    let create = &create[..create.len().min(BURST)];
    let delete = &delete[..delete.len().min(BURST)];
    if create.is_empty() && delete.is_empty() {
        return Ok(());
    }
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if !create.is_empty() {
        ctx.exp.expect_creations(&uid, create.len());
    }
    if !delete.is_empty() {
        ctx.exp.expect_deletions(&uid, &delete.iter().map(|p| p.as_ref()).collect::<Vec<_>>());
    }
    let mut errors = Vec::new();
    let template = ds.spec.as_ref().map(|s| daemon_pod_template(&s.template, template_generation(ds), hash)).unwrap_or_default();
    let (mut done, mut batch) = (0, 1);
    while done < create.len() {
        let size = batch.min(create.len() - done);
        let results = join_all(create[done..done + size].iter().map(|node| {
            let mut pod = pod_from_template(&template, &ds.name_any(), &ns, owner(ds));
            let spec = pod.spec.get_or_insert_with(Default::default);
            spec.affinity = Some(pin_to_node(spec.affinity.take(), node));
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod).await }
        }))
        .await;
        let mut failed = false;
        for r in results {
            match r {
                Ok(p) => ctx.events.normal(reference(ds), "SuccessfulCreate", format!("Created pod: {}", p.name_any())),
                Err(e) => {
                    ctx.exp.creation_observed(&uid);
                    // A terminating namespace refuses new pods; nothing to report.
                    if !is_namespace_terminating(&e) {
                        let msg = format!("Error creating: {}", api_error_message(&e));
                        ctx.events.warning(reference(ds), "FailedCreate", msg.clone());
                        errors.push(msg);
                    }
                    failed = true;
                }
            }
        }
        done += size;
        if failed {
            for _ in done..create.len() {
                ctx.exp.creation_observed(&uid);
            }
            break;
        }
        batch *= 2;
    }
    let results = join_all(delete.iter().map(|p| {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: p.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        let (api, name) = (api.clone(), p.name_any());
        async move { (name.clone(), api.delete(&name, &dp).await) }
    }))
    .await;
    for ((name, r), p) in results.into_iter().zip(delete) {
        match r {
            Ok(_) => ctx.events.normal(reference(ds), "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {}
            Err(e) => {
                ctx.exp.deletion_observed(&uid, p.metadata.uid.as_deref().unwrap_or_default());
                let msg = format!("Error deleting: {}", api_error_message(&e));
                ctx.events.warning(reference(ds), "FailedDelete", msg.clone());
                errors.push(msg);
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(Error::Writes(errors.join("; "))) }
}

fn is_namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("because it is being terminated"))
}

// ---- history -----------------------------------------------------------------------------------

/// The current revision (created if the template is new) and the older ones, as upstream's
/// constructHistory: revisions whose data records the current template are current; among
/// duplicates the newest wins; the current one is renumbered above every older one (a rollback).
async fn construct_history(
    ctx: &Ctx,
    ds: &DaemonSet,
    claimer: &Claimer<'_>,
    pods: &[Arc<Pod>],
) -> Result<(ControllerRevision, Vec<ControllerRevision>), Error> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut current = Vec::new();
    let mut old = Vec::new();
    for h in claimer.claim(&api, ctx.revisions.state(), |_| true).await? {
        let mut h = (*h).clone();
        // Revisions from before the label existed are labelled with their name, not re-hashed,
        // so a hash collision cannot make two revisions look alike.
        if h.metadata.labels.as_ref().is_none_or(|l| !l.contains_key(REVISION_LABEL)) {
            let patch = json!({"metadata": {"labels": {REVISION_LABEL: h.name_any()}, "resourceVersion": h.metadata.resource_version}});
            h = api.patch(&h.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        if history::records(&h, &template) { current.push(h) } else { old.push(h) }
    }
    let next = history::max_revision(&old) + 1;
    let cur = if current.is_empty() {
        snapshot(ctx, ds, &api, &template, next).await?
    } else {
        let keep = dedup(ctx, ds, &api, current, pods).await?;
        if keep.revision < next { history::set_revision(&api, &keep, next).await? } else { keep }
    };
    Ok((cur, old))
}

/// Keeps the newest of several revisions that record the same template, moving pods labelled with
/// the others over to it. (Upstream relabels every pod whose hash differs, old revisions' too;
/// only the duplicates' pods are moved here, so old pods keep counting as old.)
async fn dedup(
    ctx: &Ctx,
    ds: &DaemonSet,
    api: &Api<ControllerRevision>,
    mut current: Vec<ControllerRevision>,
    pods: &[Arc<Pod>],
) -> Result<ControllerRevision, Error> {
    current.sort_by(history::by_revision);
    let keep = current.pop().expect("at least one current revision");
    let hash_of = |r: &ControllerRevision| r.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).cloned().unwrap_or_default();
    let keep_hash = hash_of(&keep);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    for dup in current {
        let dup_hash = hash_of(&dup);
        for p in pods.iter().filter(|p| podutil::labels(&p.metadata).get(REVISION_LABEL) == Some(&dup_hash)) {
            let patch = json!({"metadata": {"labels": {REVISION_LABEL: keep_hash}}});
            match pods_api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        history::delete(api, &dup).await?;
    }
    Ok(keep)
}

/// Creates the revision for the current template, named `<ds>-<hash>`. A name already taken by a
/// revision of another template is a hash collision: collisionCount goes up (on the freshest
/// DaemonSet, so two syncs do not both bump it) and the next sync tries the next name.
async fn snapshot(
    ctx: &Ctx,
    ds: &DaemonSet,
    api: &Api<ControllerRevision>,
    template: &PodTemplateSpec,
    revision: i64,
) -> Result<ControllerRevision, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let collision = ds.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(template, collision);
    let name = history::revision_name(&ds.name_any(), &hash);
    let cr = history::new_revision(
        name.clone(),
        &ns,
        template.metadata.as_ref().and_then(|m| m.labels.as_ref()),
        &[(REVISION_LABEL, &hash)],
        ds.metadata.annotations.as_ref(),
        owner(ds),
        history::template_patch(template),
        revision,
    );
    match api.create(&PostParams::default(), &cr).await {
        Ok(c) => Ok(c),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(&name).await?;
            if history::records(&existing, template) {
                return Ok(existing);
            }
            let sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
            let mut fresh = sets.get(&ds.name_any()).await?;
            let fresh_count = fresh.status.as_ref().and_then(|s| s.collision_count);
            if fresh_count != collision {
                return Err(Error::Retry(format!("stale collisionCount of DaemonSet {}; retrying", ds.name_any())));
            }
            fresh.status.get_or_insert_with(Default::default).collision_count = Some(collision.unwrap_or(0) + 1);
            sets.replace_status(&ds.name_any(), &PostParams::default(), &fresh).await?;
            Err(Error::Retry(format!("hash collision on ControllerRevision {name}; collisionCount bumped")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the oldest revisions beyond revisionHistoryLimit that no pod (even a finished one)
/// still carries (upstream's cleanupHistory).
async fn cleanup_history(ctx: &Ctx, ds: &DaemonSet, old: &[ControllerRevision], pods: &[Arc<Pod>]) -> Result<(), Error> {
    let limit = ds.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
    let mut to_kill = old.len().saturating_sub(limit);
    if to_kill == 0 {
        return Ok(());
    }
    let live: std::collections::HashSet<&String> = pods.iter().filter_map(|p| podutil::labels(&p.metadata).get(REVISION_LABEL)).collect();
    let mut old: Vec<&ControllerRevision> = old.iter().collect();
    old.sort_by(|a, b| history::by_revision(a, b));
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    for h in old {
        if to_kill == 0 {
            break;
        }
        if h.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).is_some_and(|hash| live.contains(hash)) {
            continue;
        }
        history::delete(&api, h).await?;
        to_kill -= 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::Value;

    use super::*;
    use crate::podutil::testing::{pod, ready_at, with_phase};

    fn node(name: &str, labels: Value, taints: Value) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})).unwrap())
    }

    fn template(spec: Value) -> PodTemplateSpec {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
        serde_json::from_value(json!({"metadata": {"labels": {"app": "d"}}, "spec": spec})).unwrap()
    }

    fn ds(surge: i32, unavailable: IntOrString) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta { name: Some("d".into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(DaemonSetSpec {
                template: template(json!({})),
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_surge: Some(IntOrString::Int(surge)),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// A ready daemon pod on `node` at revision `hash`, created at `created` (seconds).
    fn dpod(name: &str, node: &str, hash: &str, created: i64) -> Arc<Pod> {
        let mut p = ready_at(pod(name), Timestamp::from_second(created).unwrap());
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p.metadata.labels = Some([(REVISION_LABEL.to_string(), hash.to_string())].into());
        p.spec = Some(PodSpec { node_name: Some(node.into()), ..Default::default() });
        Arc::new(p)
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        let mut v: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        v.sort();
        v
    }

    #[test]
    fn eligibility_follows_selector_affinity_and_taints() {
        let el = Eligibility::new(&template(json!({"nodeSelector": {"disk": "ssd"}})));
        assert_eq!(el.check(&node("a", json!({"disk": "ssd"}), json!([]))), (true, true));
        assert_eq!(el.check(&node("b", json!({"disk": "hdd"}), json!([]))), (false, false));

        let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1", "z2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}
        ]}}}});
        let el = Eligibility::new(&template(affinity));
        assert!(el.check(&node("a", json!({"zone": "z2"}), json!([]))).0);
        assert!(!el.check(&node("a", json!({"zone": "z3"}), json!([]))).0);
        assert!(el.check(&node("special", json!({}), json!([]))).0, "matchFields on metadata.name");
        let gt = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}, {"key": "gpu", "operator": "DoesNotExist"}]}
        ]}}}});
        let el = Eligibility::new(&template(gt));
        assert!(el.check(&node("a", json!({"cores": "8"}), json!([]))).0);
        assert!(!el.check(&node("a", json!({"cores": "2"}), json!([]))).0);
        assert!(!el.check(&node("a", json!({"cores": "8", "gpu": "1"}), json!([]))).0);

        // Taints: NoSchedule keeps running pods, NoExecute evicts them, PreferNoSchedule is ignored.
        let el = Eligibility::new(&template(json!({})));
        assert_eq!(el.check(&node("a", json!({}), json!([{"key": "x", "value": "y", "effect": "NoSchedule"}]))), (false, true));
        assert_eq!(el.check(&node("a", json!({}), json!([{"key": "x", "effect": "NoExecute"}]))), (false, false));
        assert_eq!(el.check(&node("a", json!({}), json!([{"key": "x", "effect": "PreferNoSchedule"}]))), (true, true));
        let tolerant =
            Eligibility::new(&template(json!({"tolerations": [{"key": "x", "operator": "Equal", "value": "y", "effect": "NoSchedule"}]})));
        assert_eq!(tolerant.check(&node("a", json!({}), json!([{"key": "x", "value": "y", "effect": "NoSchedule"}]))), (true, true));
        assert_eq!(tolerant.check(&node("a", json!({}), json!([{"key": "x", "value": "z", "effect": "NoSchedule"}]))), (false, true));

        // The default DaemonSet tolerations: node problems and cordons do not keep daemons off.
        for (key, effect) in [
            (TAINT_NOT_READY, "NoExecute"),
            (TAINT_UNREACHABLE, "NoExecute"),
            (TAINT_DISK_PRESSURE, "NoSchedule"),
            (TAINT_MEMORY_PRESSURE, "NoSchedule"),
            (TAINT_PID_PRESSURE, "NoSchedule"),
            (TAINT_UNSCHEDULABLE, "NoSchedule"),
        ] {
            assert_eq!(el.check(&node("a", json!({}), json!([{"key": key, "effect": effect}]))), (true, true), "{key}");
        }
        let unavailable = json!([{"key": TAINT_NETWORK_UNAVAILABLE, "effect": "NoSchedule"}]);
        assert!(!el.check(&node("a", json!({}), unavailable.clone())).0);
        assert!(Eligibility::new(&template(json!({"hostNetwork": true}))).check(&node("a", json!({}), unavailable)).0);

        // A template naming a node runs there only.
        let pinned = Eligibility::new(&template(json!({"nodeName": "b"})));
        assert!(!pinned.check(&node("a", json!({}), json!([]))).0);
        assert!(pinned.check(&node("b", json!({}), json!([]))).0);
    }

    #[test]
    fn default_tolerations_replace_matching_ones() {
        let mut spec: PodSpec = serde_json::from_value(json!({"containers": [], "tolerations": [
            {"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "mine", "operator": "Exists"}
        ]}))
        .unwrap();
        add_default_tolerations(&mut spec);
        let tols = spec.tolerations.unwrap();
        assert_eq!(tols.len(), 7, "{tols:?}");
        assert_eq!(tols[0].key.as_deref(), Some(TAINT_NOT_READY));
        assert_eq!(tols[0].toleration_seconds, None, "not-ready is tolerated forever");
        assert_eq!(tols[1].key.as_deref(), Some("mine"));
    }

    #[test]
    fn pods_are_pinned_by_node_affinity_and_found_again() {
        let preferred = json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Exists"}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [{"key": "b", "operator": "Exists"}]}}]
        }});
        let a = pin_to_node(Some(serde_json::from_value(preferred).unwrap()), "n1");
        let na = a.node_affinity.as_ref().unwrap();
        assert_eq!(na.preferred_during_scheduling_ignored_during_execution.as_ref().unwrap().len(), 1);
        let terms = &na.required_during_scheduling_ignored_during_execution.as_ref().unwrap().node_selector_terms;
        assert_eq!(
            serde_json::to_value(terms).unwrap(),
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])
        );
        let mut p = pod("p");
        p.spec = Some(PodSpec { affinity: Some(a), ..Default::default() });
        assert_eq!(target_node(&p), Some("n1"));
        p.spec.as_mut().unwrap().node_name = Some("n2".into());
        assert_eq!(target_node(&p), Some("n2"), "binding wins");

        let t = daemon_pod_template(&template(json!({})), Some(4), "h1");
        let labels = t.metadata.unwrap().labels.unwrap();
        assert_eq!((labels[REVISION_LABEL].as_str(), labels[TEMPLATE_GENERATION_LABEL].as_str(), labels["app"].as_str()), ("h1", "4", "d"));
    }

    #[test]
    fn manage_creates_on_missing_nodes_and_prunes() {
        let now = Timestamp::from_second(10_000).unwrap();
        let nodes = vec![
            node("a", json!({}), json!([])),
            node("b", json!({}), json!([])),
            node("c", json!({}), json!([{"key": "x", "effect": "NoExecute"}])),
            node("d", json!({}), json!([{"key": "x", "effect": "NoSchedule"}])),
        ];
        let el = Eligibility::new(&template(json!({})));
        let mut failed = with_phase(pod("failed"), "Failed");
        failed.spec = Some(PodSpec { node_name: Some("b".into()), ..Default::default() });
        let mut orphan_unbound = pod("unbound-gone");
        orphan_unbound.spec = Some(PodSpec { affinity: Some(pin_to_node(None, "gone")), ..Default::default() });
        let pods = vec![
            dpod("a-old", "a", "h1", 100),
            dpod("a-new", "a", "h1", 200),
            Arc::new(failed),
            dpod("c-evicted", "c", "h1", 100),
            dpod("d-stays", "d", "h1", 100),
            dpod("bound-gone", "gone", "h1", 100),
            Arc::new(orphan_unbound),
        ];
        let by_node = nodes_to_pods(&pods, false);
        let plan = manage_plan(&nodes, &by_node, &el, false, "h1", None, 0, now, &mut |_| None);
        // b's only pod failed: it is deleted, and b gets a new pod once it is gone.
        assert!(plan.create.is_empty(), "{:?}", plan.create);
        assert_eq!(names(&plan.delete), ["a-new", "c-evicted", "failed", "unbound-gone"]);
        assert_eq!(plan.failed.len(), 1);

        let by_node = nodes_to_pods(&pods[..1], false);
        let plan = manage_plan(&nodes, &by_node, &el, false, "h1", None, 0, now, &mut |_| None);
        assert_eq!(plan.create, ["b"], "d only tolerates existing pods; c evicts");

        // A failed pod inside its backoff waits.
        let by_node = nodes_to_pods(&pods[2..3], false);
        let plan = manage_plan(&nodes, &by_node, &el, false, "h1", None, 0, now, &mut |_| Some(Duration::from_secs(4)));
        assert!(plan.delete.is_empty());
        assert_eq!(plan.retry_after, Some(Duration::from_secs(4)));
    }

    #[test]
    fn manage_with_surge_keeps_new_and_ready_old_until_new_is_available() {
        let now = Timestamp::from_second(10_000).unwrap();
        let nodes = vec![node("a", json!({}), json!([]))];
        let el = Eligibility::new(&template(json!({})));
        let mut not_ready_new = pod("new");
        not_ready_new.metadata.labels = Some([(REVISION_LABEL.to_string(), "h2".to_string())].into());
        not_ready_new.spec = Some(PodSpec { node_name: Some("a".into()), ..Default::default() });
        let pods = vec![dpod("old", "a", "h1", 100), Arc::new(not_ready_new)];
        let plan = manage_plan(&nodes, &nodes_to_pods(&pods, false), &el, true, "h2", None, 0, now, &mut |_| None);
        assert!(plan.delete.is_empty(), "old serves until new is available");
        let pods = vec![dpod("old", "a", "h1", 100), dpod("new", "a", "h2", 200), dpod("new2", "a", "h2", 300)];
        let plan = manage_plan(&nodes, &nodes_to_pods(&pods, false), &el, true, "h2", None, 0, now, &mut |_| None);
        assert_eq!(names(&plan.delete), ["new2", "old"]);
    }

    #[test]
    fn rolling_without_surge_respects_max_unavailable() {
        let now = Timestamp::from_second(10_000).unwrap();
        let nodes: Vec<Arc<Node>> = (0..5).map(|i| node(&format!("n{i}"), json!({}), json!([]))).collect();
        let el = Eligibility::new(&template(json!({})));
        let d = ds(0, IntOrString::String("40%".into()));
        let pods: Vec<Arc<Pod>> = (0..5).map(|i| dpod(&format!("p{i}"), &format!("n{i}"), "h1", 100)).collect();
        let mut by_node = nodes_to_pods(&pods, false);
        let (surge, unavailable, desired) = desired_counts(&d, &nodes, &el, &mut by_node);
        assert_eq!((surge, unavailable, desired), (0, 2, 5), "40% of 5 rounds up to 2");
        let (delete, create) = rolling_plan(&by_node, &|_| true, "h2", None, surge, unavailable, desired, 0, now);
        assert_eq!((delete.len(), create.len()), (2, 0));

        // One node is already down (no pod): only one more may go.
        let mut by_node = nodes_to_pods(&pods[1..], false);
        desired_counts(&d, &nodes, &el, &mut by_node);
        let (delete, _) = rolling_plan(&by_node, &|_| true, "h2", None, 0, 2, 5, 0, now);
        assert_eq!(delete.len(), 1);

        // Unavailable old pods are replaced regardless of the budget.
        let mut pods2 = pods.clone();
        let mut broken = (*pods2[4]).clone();
        broken.status = None;
        pods2[4] = Arc::new(broken);
        let by_node = nodes_to_pods(&pods2, false);
        let (delete, _) = rolling_plan(&by_node, &|_| true, "h2", None, 0, 1, 5, 0, now);
        assert_eq!(names(&delete), ["p4"]);

        // An updated but not yet available pod uses up the budget.
        let mut fresh = (*dpod("p0", "n0", "h2", 100)).clone();
        fresh.status = None;
        let mut pods3 = pods.clone();
        pods3[0] = Arc::new(fresh);
        let (delete, _) = rolling_plan(&nodes_to_pods(&pods3, false), &|_| true, "h2", None, 0, 1, 5, 0, now);
        assert!(delete.is_empty());

        // Zero surge and zero unavailable fall back to one.
        let d = ds(0, IntOrString::Int(0));
        let mut by_node = nodes_to_pods(&pods, false);
        assert_eq!(desired_counts(&d, &nodes, &el, &mut by_node), (0, 1, 5));
    }

    #[test]
    fn rolling_with_surge_starts_new_pods_beside_old_ones() {
        let now = Timestamp::from_second(10_000).unwrap();
        let pods: Vec<Arc<Pod>> = (0..4).map(|i| dpod(&format!("p{i}"), &format!("n{i}"), "h1", 100)).collect();
        let by_node = nodes_to_pods(&pods, false);
        let (delete, create) = rolling_plan(&by_node, &|_| true, "h2", None, 2, 0, 4, 0, now);
        assert!(delete.is_empty());
        assert_eq!(create, ["n0", "n1"]);

        // n0's new pod is available: its old one goes; n1's is still starting and counts as surge.
        let mut all = pods.clone();
        all.push(dpod("p0-new", "n0", "h2", 200));
        let mut starting = (*dpod("p1-new", "n1", "h2", 200)).clone();
        starting.status = None;
        all.push(Arc::new(starting));
        let (delete, create) = rolling_plan(&nodes_to_pods(&all, false), &|_| true, "h2", None, 2, 0, 4, 0, now);
        assert_eq!(names(&delete), ["p0"]);
        assert_eq!(create, ["n2"], "one surge slot left");
    }

    #[test]
    fn status_counts_desired_current_misscheduled_and_updated() {
        let now = Timestamp::from_second(10_000).unwrap();
        let nodes = vec![
            node("a", json!({"role": "x"}), json!([])),
            node("b", json!({"role": "x"}), json!([])),
            node("c", json!({"role": "x"}), json!([])),
            node("d", json!({"role": "y"}), json!([])),
        ];
        let el = Eligibility::new(&template(json!({"nodeSelector": {"role": "x"}})));
        let mut not_ready = (*dpod("b1", "b", "h1", 100)).clone();
        not_ready.status = None;
        let pods = vec![dpod("a1", "a", "h2", 100), Arc::new(not_ready), dpod("d1", "d", "h2", 100)];
        let st = compute_status(&nodes, &nodes_to_pods(&pods, false), &el, "h2", None, 0, now);
        assert_eq!((st.desired_number_scheduled, st.current_number_scheduled, st.number_misscheduled, st.number_ready), (3, 2, 1, 1));
        assert_eq!((st.updated_number_scheduled, st.number_available, st.number_unavailable), (Some(1), Some(1), Some(2)));
        // minReadySeconds: ready for 9900s counts as available for 60 but not for 20000.
        let st = compute_status(&nodes, &nodes_to_pods(&pods, false), &el, "h2", None, 20_000, now);
        assert_eq!((st.number_ready, st.number_available), (1, Some(0)));
    }

    #[test]
    fn failed_pod_backoff_doubles() {
        let map = Mutex::default();
        assert_eq!(backoff_check(&map, "k"), None);
        assert!(backoff_check(&map, "k").is_some(), "second failure within a second waits");
        map.lock().unwrap().insert("k".to_string(), (Instant::now() - Duration::from_secs(2), Duration::from_secs(1)));
        assert_eq!(backoff_check(&map, "k"), None);
        assert_eq!(map.lock().unwrap()["k"].1, Duration::from_secs(2));
    }

    #[test]
    fn surge_and_unavailable_only_for_rolling_updates() {
        let mut d = ds(1, IntOrString::Int(1));
        assert!(allows_surge(&d));
        d.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy { type_: Some("OnDelete".into()), rolling_update: None });
        assert!(!allows_surge(&d));
        assert_eq!(unavailable_count(&d, 10), 0);
        let d = ds(0, IntOrString::String("10%".into()));
        assert_eq!(unavailable_count(&d, 3), 1, "rounds up");
        let d = ds(0, IntOrString::String("10%".into()));
        assert_eq!(surge_count(&d, 3), 0);
    }
}
