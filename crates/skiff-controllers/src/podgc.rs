//! The pod garbage collector, as upstream's `pkg/controller/podgc`. Every `period` (upstream's
//! gcCheckPeriod, 20 s) it force-deletes (grace period 0):
//!
//! - terminated pods (Succeeded/Failed) beyond `--terminated-pod-gc-threshold`, evicted ones and
//!   then the oldest first (0 disables this);
//! - pods bound to a node that no longer exists; a node missing from the cache is quarantined
//!   for `quarantine` (40 s) and then confirmed gone with a live read before its pods go, so a
//!   node the watch has not shown yet does not lose its pods;
//! - terminating pods on a node that is not Ready and carries the
//!   `node.kubernetes.io/out-of-service` taint (the administrator's word that it is down for good;
//!   a merely NotReady node may come back and finish its pods' shutdown itself);
//! - terminating pods that were never scheduled.
//!
//! A pod that has not finished is first marked Failed (with a `DisruptionTarget` condition for an
//! orphan), as no kubelet will ever report on it; Job controllers count it from that.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::metrics::{ControllerMetrics, Metrics};

pub const COMPONENT: &str = "pod-garbage-collector";
const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

#[derive(Clone, Debug)]
pub struct PodGcOptions {
    /// Terminated pods kept before the oldest are deleted; 0 keeps them all.
    pub terminated_pod_gc_threshold: usize,
    pub period: Duration,
    pub quarantine: Duration,
}

impl Default for PodGcOptions {
    fn default() -> Self {
        PodGcOptions { terminated_pod_gc_threshold: 12500, period: Duration::from_secs(20), quarantine: Duration::from_secs(40) }
    }
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn node_name(p: &Pod) -> &str {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("")
}

/// Upstream's isPodTerminated: any phase but Pending, Running and Unknown (an empty phase too).
fn is_terminated(p: &Pod) -> bool {
    !matches!(phase(p), "Pending" | "Running" | "Unknown")
}

fn is_evicted(p: &Pod) -> bool {
    phase(p) == "Failed" && p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
}

/// Evicted first, then oldest, then by name.
fn sort_for_deletion(pods: &mut [Arc<Pod>]) {
    pods.sort_by_cached_key(|p| (!is_evicted(p), p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.name_any()));
}

/// The terminated pods beyond `threshold`, in deletion order.
pub fn terminated_to_delete(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    if threshold == 0 {
        return vec![];
    }
    let mut terminated: Vec<Arc<Pod>> = pods.iter().filter(|p| is_terminated(p)).cloned().collect();
    let n = terminated.len().saturating_sub(threshold);
    if n == 0 {
        return vec![];
    }
    sort_for_deletion(&mut terminated);
    terminated.truncate(n);
    terminated
}

/// Node names pods are bound to that the node cache does not have.
pub fn missing_nodes(pods: &[Arc<Pod>], nodes: &HashSet<String>) -> HashSet<String> {
    pods.iter().map(|p| node_name(p)).filter(|n| !n.is_empty() && !nodes.contains(*n)).map(str::to_string).collect()
}

fn is_node_ready(n: &Node) -> bool {
    n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Terminating pods on a NotReady node tainted out-of-service.
pub fn terminating_out_of_service(pods: &[Arc<Pod>], nodes: &Store<Node>) -> Vec<Arc<Pod>> {
    let mut out: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !node_name(p).is_empty())
        .filter(|p| {
            nodes.get(&kube::runtime::reflector::ObjectRef::new(node_name(p))).is_some_and(|n| {
                !is_node_ready(&n)
                    && n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE))
            })
        })
        .cloned()
        .collect();
    sort_for_deletion(&mut out);
    out
}

pub fn unscheduled_terminating(pods: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
    pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some() && node_name(p).is_empty()).cloned().collect()
}

/// Nodes missing from the cache, since when (upstream's delaying node queue).
#[derive(Default)]
pub struct Quarantine(HashMap<String, Instant>);

impl Quarantine {
    /// Records this round's missing nodes and returns those missing for at least `period`;
    /// nodes that reappeared (or lost all their pods) leave the quarantine.
    pub fn due(&mut self, missing: &HashSet<String>, now: Instant, period: Duration) -> Vec<String> {
        self.0.retain(|n, _| missing.contains(n));
        for n in missing {
            self.0.entry(n.clone()).or_insert(now);
        }
        let due: Vec<String> = self.0.iter().filter(|(_, since)| now.duration_since(**since) >= period).map(|(n, _)| n.clone()).collect();
        // Checked now; if still needed they come back with a fresh quarantine, as upstream's
        // queue items do after Done.
        for n in &due {
            self.0.remove(n);
        }
        due
    }
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    metrics: Arc<ControllerMetrics>,
    opts: PodGcOptions,
}

pub async fn run(client: Client, metrics: &Metrics, pods: Store<Pod>, nodes: Store<Node>, opts: PodGcOptions) {
    let ctx = Ctx { client, pods, nodes, metrics: metrics.controller(COMPONENT), opts };
    crate::informer::ready(&ctx.pods).await;
    crate::informer::ready(&ctx.nodes).await;
    let mut quarantine = Quarantine::default();
    let mut tick = tokio::time::interval(ctx.opts.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _timer = ctx.metrics.reconcile_timer();
        gc(&ctx, &mut quarantine).await;
    }
}

async fn gc(ctx: &Ctx, quarantine: &mut Quarantine) {
    let pods = ctx.pods.state();
    let terminated = terminated_to_delete(&pods, ctx.opts.terminated_pod_gc_threshold);
    if !terminated.is_empty() {
        tracing::info!(pods = terminated.len(), "garbage collecting terminated pods");
    }
    delete_all(ctx, &terminated, None).await;
    delete_all(ctx, &terminating_out_of_service(&pods, &ctx.nodes), None).await;

    let existing: HashSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    let due = quarantine.due(&missing_nodes(&pods, &existing), Instant::now(), ctx.opts.quarantine);
    let mut gone = HashSet::new();
    let api: Api<Node> = Api::all(ctx.client.clone());
    for n in due {
        match api.get_opt(&n).await {
            Ok(None) => {
                gone.insert(n);
            }
            Ok(Some(_)) => {}
            // Checked again after another quarantine.
            Err(e) => tracing::debug!(node = %n, error = %e, "{COMPONENT}: checking node"),
        }
    }
    let orphaned: Vec<Arc<Pod>> = pods.iter().filter(|p| gone.contains(node_name(p))).cloned().collect();
    let cond =
        json!({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"});
    delete_all(ctx, &orphaned, Some(cond)).await;
    delete_all(ctx, &unscheduled_terminating(&pods), None).await;
}

async fn delete_all(ctx: &Ctx, pods: &[Arc<Pod>], condition: Option<serde_json::Value>) {
    let results = join_all(pods.iter().map(|p| mark_failed_and_delete(ctx, p, condition.clone()))).await;
    for (p, r) in pods.iter().zip(results) {
        match r {
            Ok(()) => tracing::info!(pod = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), "PodGC force-deleted pod"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                ctx.metrics.error();
                tracing::warn!(pod = %p.name_any(), error = %e, "{COMPONENT}: deleting pod");
            }
        }
    }
}

/// Marks an unfinished pod Failed (nobody else ever will), then deletes it with grace period 0.
async fn mark_failed_and_delete(ctx: &Ctx, pod: &Pod, condition: Option<serde_json::Value>) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    if !matches!(phase(pod), "Succeeded" | "Failed") {
        let mut status = json!({"phase": "Failed"});
        if let Some(mut c) = condition {
            c["lastTransitionTime"] = json!(Timestamp::now().to_string());
            status["conditions"] = json!([c]);
        }
        // Conditions merge by type; the uid keeps a same-named successor untouched.
        let patch = json!({"metadata": {"uid": pod.metadata.uid}, "status": status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await?;
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    api.delete(&name, &dp).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::podutil::testing::{pod, with_phase};

    fn at(mut p: Pod, secs: i64) -> Pod {
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
        p
    }

    fn on(mut p: Pod, node: &str) -> Pod {
        p.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        p
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn terminated_beyond_threshold_evicted_then_oldest() {
        let mut evicted = with_phase(at(pod("evicted"), 500), "Failed");
        evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
        let pods: Vec<Arc<Pod>> = vec![
            Arc::new(with_phase(at(pod("new-ok"), 300), "Succeeded")),
            Arc::new(with_phase(at(pod("old-failed"), 100), "Failed")),
            Arc::new(with_phase(at(pod("running"), 1), "Running")),
            Arc::new(with_phase(at(pod("pending"), 1), "Pending")),
            Arc::new(with_phase(at(pod("mid-ok"), 200), "Succeeded")),
            Arc::new(evicted),
        ];
        assert_eq!(names(&terminated_to_delete(&pods, 2)), ["evicted", "old-failed"]);
        assert!(terminated_to_delete(&pods, 4).is_empty());
        assert!(terminated_to_delete(&pods, 0).is_empty(), "0 disables");
        assert_eq!(terminated_to_delete(&pods, 1).len(), 3);
    }

    #[test]
    fn orphans_wait_out_the_quarantine() {
        let pods: Vec<Arc<Pod>> = vec![Arc::new(on(pod("a"), "gone")), Arc::new(on(pod("b"), "here")), Arc::new(pod("unscheduled"))];
        let existing: HashSet<String> = ["here".to_string()].into();
        let missing = missing_nodes(&pods, &existing);
        assert_eq!(missing, HashSet::from(["gone".to_string()]));
        let mut q = Quarantine::default();
        let t0 = Instant::now();
        let period = Duration::from_secs(40);
        assert!(q.due(&missing, t0, period).is_empty());
        assert!(q.due(&missing, t0 + Duration::from_secs(20), period).is_empty());
        assert_eq!(q.due(&missing, t0 + Duration::from_secs(40), period), ["gone"]);
        // A node that shows up again leaves the quarantine.
        assert!(q.due(&missing, t0 + Duration::from_secs(60), period).is_empty());
        assert!(q.due(&HashSet::new(), t0 + Duration::from_secs(61), period).is_empty());
        assert!(q.due(&missing, t0 + Duration::from_secs(101), period).is_empty(), "its clock restarted");
    }

    #[test]
    fn terminating_pods_go_only_from_out_of_service_not_ready_nodes() {
        let (store, mut writer) = reflector::store::<Node>();
        let node = |name: &str, ready: bool, oos: bool| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"taints": if oos { json!([{"key": OUT_OF_SERVICE, "effect": "NoExecute"}]) } else { json!([]) }},
                "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap()
        };
        for n in [node("down", false, true), node("notready", false, false), node("ready-oos", true, true)] {
            writer.apply_watcher_event(&Event::Apply(n));
        }
        let deleting = |p: Pod| {
            let mut p = p;
            p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
            Arc::new(p)
        };
        let pods: Vec<Arc<Pod>> = vec![
            deleting(on(pod("on-down"), "down")),
            deleting(on(pod("on-notready"), "notready")),
            deleting(on(pod("on-ready-oos"), "ready-oos")),
            Arc::new(on(pod("running-on-down"), "down")),
            deleting(pod("never-scheduled")),
        ];
        assert_eq!(names(&terminating_out_of_service(&pods, &store)), ["on-down"]);
        assert_eq!(names(&unscheduled_terminating(&pods)), ["never-scheduled"]);
    }
}
