//! Node lifecycle, as upstream's node lifecycle controller and taint-eviction controller:
//!
//! - a node whose kubelet stopped renewing its Lease (and posting status) for the grace period
//!   gets its conditions set to Unknown (`NodeStatusUnknown`), its pods marked not Ready, and an
//!   event;
//! - node conditions become taints: `NoSchedule` ones for the scheduler (not-ready, unreachable,
//!   memory/disk/pid pressure, network-unavailable, unschedulable) and `NoExecute` not-ready /
//!   unreachable ones, which are added at a rate limited per zone and not at all in a zone where
//!   every node is down (upstream's full-disruption rule: evicting there would only make it worse);
//! - pods on a node with a `NoExecute` taint they do not tolerate are deleted, at once or after
//!   their `tolerationSeconds`, so their controllers replace them elsewhere.
//!
//! Health is judged on a timer from the shared Node and Pod caches plus a Lease watch, so this is
//! a periodic loop over the caches rather than a per-object `Controller` (a node that goes silent
//! sends no event to react to).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::events::{Recorder, reference};
use crate::informer::Informer;
use crate::metrics::{ControllerMetrics, Metrics};
use crate::podutil::tolerates;

const COMPONENT: &str = "node-controller";
const EVICTION_COMPONENT: &str = "taint-eviction-controller";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Condition-derived NoSchedule taints (upstream's TaintNodesByCondition), by condition type and
/// the status that sets them.
const CONDITION_TAINTS: &[(&str, &str, &str)] = &[
    ("Ready", "False", NOT_READY),
    ("Ready", "Unknown", UNREACHABLE),
    ("MemoryPressure", "True", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    ("NetworkUnavailable", "True", "node.kubernetes.io/network-unavailable"),
];
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

#[derive(Clone, Debug)]
pub struct NodeLifecycleOptions {
    /// How often node health is evaluated (upstream's --node-monitor-period, 5 s).
    pub monitor_period: Duration,
    /// Silence after which a node is Unknown (--node-monitor-grace-period, 40 s).
    pub grace_period: Duration,
    /// NoExecute taints added per second in a healthy zone (--node-eviction-rate, 0.1).
    pub eviction_rate: f64,
    /// The same in a partially disrupted large zone (--secondary-node-eviction-rate, 0.01).
    pub secondary_eviction_rate: f64,
    /// Zones up to this size stop evicting when partially disrupted (--large-cluster-size-threshold).
    pub large_cluster_threshold: usize,
    /// Share of not-ready nodes that makes a zone partially disrupted (--unhealthy-zone-threshold).
    pub unhealthy_zone_threshold: f64,
}

impl Default for NodeLifecycleOptions {
    fn default() -> Self {
        NodeLifecycleOptions {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            large_cluster_threshold: 50,
            unhealthy_zone_threshold: 0.55,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// A zone's state from (nodes, not-ready nodes), as upstream's ComputeZoneState.
pub fn zone_state(total: usize, not_ready: usize, threshold: f64) -> ZoneState {
    if total > 0 && not_ready == total {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / total as f64 >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// When a pod must leave a node with these NoExecute taints: `Some(now-or-earlier)` for an
/// untolerated taint, the earliest tolerationSeconds expiry otherwise, `None` to stay forever.
pub fn eviction_time(tolerations: &[Toleration], taints: &[Taint], now: Timestamp) -> Option<Timestamp> {
    let mut at: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // A toleration without seconds tolerates forever; with several, the shortest wins.
        let Some(secs) = matching.iter().filter_map(|t| t.toleration_seconds).min() else { continue };
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let t = added + SignedDuration::from_secs(secs.max(0));
        at = Some(at.map_or(t, |a| a.min(t)));
    }
    at
}

fn condition_status<'a>(node: &'a Node, type_: &str) -> Option<&'a str> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

/// The taints this controller manages that `node` should carry, by its conditions.
pub fn wanted_taints(node: &Node) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for (cond, status, key) in CONDITION_TAINTS {
        if condition_status(node, cond) == Some(*status) {
            out.push((key.to_string(), "NoSchedule"));
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
        out.push((UNSCHEDULABLE.to_string(), "NoSchedule"));
    }
    match condition_status(node, "Ready") {
        Some("False") => out.push((NOT_READY.to_string(), "NoExecute")),
        Some("Unknown") => out.push((UNREACHABLE.to_string(), "NoExecute")),
        _ => {}
    }
    out
}

fn managed(key: &str) -> bool {
    CONDITION_TAINTS.iter().any(|(_, _, k)| *k == key) || key == UNSCHEDULABLE
}

/// A token bucket per zone for adding NoExecute taints.
struct Bucket {
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn take(&mut self, rate: f64) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(1.0);
        self.last = now;
        if rate > 0.0 && self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

struct Ctl {
    client: Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    leases: Store<Lease>,
    opts: NodeLifecycleOptions,
    events: Recorder,
    eviction_events: Recorder,
    metrics: Arc<ControllerMetrics>,
    /// When we first saw a node that never reported anything (upstream's probe timestamp).
    first_seen: HashMap<String, Timestamp>,
    buckets: HashMap<String, Bucket>,
    /// Pods we already asked to delete, so a slow graceful deletion is not re-requested each tick.
    evicted: HashSet<String>,
}

pub async fn run(client: Client, metrics: &Metrics, nodes: Store<Node>, pods: Store<Pod>, opts: NodeLifecycleOptions) {
    let leases = Informer::new(Api::<Lease>::namespaced(client.clone(), "kube-node-lease"));
    let ctl = Ctl {
        client: client.clone(),
        nodes,
        pods,
        leases: leases.store(),
        opts,
        events: Recorder::new(client.clone(), COMPONENT),
        eviction_events: Recorder::new(client, EVICTION_COMPONENT),
        metrics: metrics.controller(COMPONENT),
        first_seen: HashMap::new(),
        buckets: HashMap::new(),
        evicted: HashSet::new(),
    };
    tokio::join!(leases.run(), ctl.run());
}

impl Ctl {
    async fn run(mut self) {
        crate::informer::ready(&self.nodes).await;
        crate::informer::ready(&self.pods).await;
        crate::informer::ready(&self.leases).await;
        // Evictions are checked every second (tolerationSeconds are in seconds); health every period.
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(self.opts.monitor_period));
        let mut last_monitor: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            let _t = self.metrics.reconcile_timer();
            if last_monitor.is_none_or(|t| t.elapsed() >= self.opts.monitor_period) {
                last_monitor = Some(tokio::time::Instant::now());
                if let Err(e) = self.monitor().await {
                    self.metrics.error();
                    tracing::debug!("{COMPONENT}: {e}");
                }
            }
            if let Err(e) = self.evict().await {
                self.metrics.error();
                tracing::debug!("{EVICTION_COMPONENT}: {e}");
            }
        }
    }

    /// Last sign of life: the Lease renewal or the Ready heartbeat, whichever is later.
    fn last_heard(&mut self, node: &Node, now: Timestamp) -> Timestamp {
        let name = node.name_any();
        let lease = self.leases.get(&ObjectRef::new(&name).within("kube-node-lease"));
        let renewed = lease.as_ref().and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let heartbeat = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
        match renewed.into_iter().chain(heartbeat).max() {
            Some(t) => t,
            None => *self.first_seen.entry(name).or_insert(now),
        }
    }

    async fn monitor(&mut self) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let grace = SignedDuration::try_from(self.opts.grace_period).unwrap_or(SignedDuration::from_secs(40));
        let nodes = self.nodes.state();
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        self.first_seen.retain(|n, _| names.contains(n));

        // Zone health decides whether NoExecute taints may be added, and how fast.
        let mut zones: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for n in &nodes {
            let z = n.labels().get(ZONE).cloned().unwrap_or_default();
            let e = zones.entry(z).or_default();
            e.0 += 1;
            if condition_status(n, "Ready") != Some("True") {
                e.1 += 1;
            }
        }

        for node in nodes {
            let mut node = (*node).clone();
            let heard = self.last_heard(&node, now);
            if heard + grace < now && condition_status(&node, "Ready") != Some("Unknown") {
                node = match self.mark_unknown(&node, now).await? {
                    Some(n) => n,
                    None => continue,
                };
            }
            let zone = node.labels().get(ZONE).cloned().unwrap_or_default();
            let (total, not_ready) = zones.get(&zone).copied().unwrap_or((1, 0));
            let rate = match zone_state(total, not_ready, self.opts.unhealthy_zone_threshold) {
                ZoneState::Normal => self.opts.eviction_rate,
                ZoneState::PartialDisruption if total > self.opts.large_cluster_threshold => self.opts.secondary_eviction_rate,
                _ => 0.0,
            };
            self.reconcile_taints(&node, &zone, rate, now).await?;
        }
        Ok(())
    }

    /// Sets the kubelet-owned conditions to Unknown, marks the node's pods not Ready.
    async fn mark_unknown(&self, node: &Node, now: Timestamp) -> Result<Option<Node>, kube::Error> {
        let name = node.name_any();
        let existing = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let mut conds = Vec::new();
        for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let cur = existing.iter().find(|c| c.type_ == type_);
            let (reason, message) = match cur {
                Some(_) => ("NodeStatusUnknown", "Kubelet stopped posting node status."),
                None => ("NodeStatusNeverUpdated", "Kubelet never posted node status."),
            };
            if cur.is_some_and(|c| c.status == "Unknown") {
                continue;
            }
            conds.push(json!({
                "type": type_, "status": "Unknown", "reason": reason, "message": message,
                "lastTransitionTime": now.to_string(),
                "lastHeartbeatTime": cur.and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| t.0.to_string()),
            }));
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": conds}});
        let updated = match api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
            Ok(n) => n,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        };
        tracing::info!(node = %name, "node stopped posting status; marking it Unknown");
        self.events.normal(reference(node), "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
        // Pods there can no longer be trusted to serve: Endpoints drop them now, not at eviction.
        for pod in self.pods.state().iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())) {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if !ready {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now.to_string()}]}});
            if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
                tracing::debug!(pod = %pod.name_any(), error = %e, "marking pod not ready");
            }
        }
        Ok(Some(updated))
    }

    /// Brings the managed taints in line with the conditions; NoExecute additions wait for the
    /// zone's rate limiter.
    async fn reconcile_taints(&mut self, node: &Node, zone: &str, rate: f64, now: Timestamp) -> Result<(), kube::Error> {
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let wanted = wanted_taints(node);
        let has = |key: &str, effect: &str| current.iter().any(|t| t.key == key && t.effect == effect);
        let mut next: Vec<Taint> =
            current.iter().filter(|t| !managed(&t.key) || wanted.iter().any(|(k, e)| *k == t.key && *e == t.effect)).cloned().collect();
        for (key, effect) in &wanted {
            if has(key, effect) {
                continue;
            }
            if *effect == "NoExecute" {
                let bucket = self.buckets.entry(zone.to_string()).or_insert(Bucket { tokens: 1.0, last: tokio::time::Instant::now() });
                if !bucket.take(rate) {
                    continue;
                }
            }
            next.push(Taint {
                key: key.clone(),
                effect: effect.to_string(),
                value: None,
                time_added: (*effect == "NoExecute").then_some(Time(now)),
            });
        }
        if next == current {
            return Ok(());
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": next}});
        match api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => Ok(()),
            // Changed meanwhile: the next period sees the new version.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes pods that may no longer stay on their tainted node.
    async fn evict(&mut self) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let tainted: HashMap<String, Vec<Taint>> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let t: Vec<Taint> = n.spec.as_ref()?.taints.clone()?.into_iter().filter(|t| t.effect == "NoExecute").collect();
                (!t.is_empty()).then(|| (n.name_any(), t))
            })
            .collect();
        let live: HashSet<String> = self.pods.state().iter().filter_map(|p| p.metadata.uid.clone()).collect();
        self.evicted.retain(|u| live.contains(u));
        if tainted.is_empty() {
            return Ok(());
        }
        for pod in self.pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            let Some(taints) = tainted.get(node) else { continue };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() || self.evicted.contains(&uid) {
                continue;
            }
            let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
            if eviction_time(&tolerations, taints, now).is_none_or(|at| at > now) {
                continue;
            }
            self.evicted.insert(uid.clone());
            let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let cond = json!({"status": {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": now.to_string()}]}});
            let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(cond)).await;
            let dp = DeleteParams { preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }), ..Default::default() };
            match api.delete(&name, &dp).await {
                Ok(_) => self.eviction_events.normal(
                    reference(pod.as_ref()),
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {ns}/{name}"),
                ),
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn taint(key: &str, added: i64) -> Taint {
        Taint { key: key.into(), effect: "NoExecute".into(), value: None, time_added: Some(Time(Timestamp::from_second(added).unwrap())) }
    }

    fn tol(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn toleration_matching_follows_upstream() {
        let t = taint(UNREACHABLE, 0);
        assert!(tolerates(&tol(json!({"operator": "Exists"})), &t));
        assert!(tolerates(&tol(json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"})), &t));
        assert!(!tolerates(&tol(json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"})), &t));
        assert!(tolerates(&tol(json!({"key": UNREACHABLE})), &t), "Equal with empty values");
        assert!(!tolerates(&tol(json!({"key": UNREACHABLE, "value": "x"})), &t));
        assert!(!tolerates(&tol(json!({"key": NOT_READY, "operator": "Exists"})), &t));
    }

    #[test]
    fn eviction_waits_for_the_shortest_toleration() {
        let now = Timestamp::from_second(1_000).unwrap();
        let taints = [taint(UNREACHABLE, 900)];
        assert_eq!(eviction_time(&[], &taints, now), Some(now), "untolerated: now");
        let five = tol(json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        let one = tol(json!({"operator": "Exists", "tolerationSeconds": 60}));
        assert_eq!(eviction_time(&[five.clone(), one], &taints, now), Some(Timestamp::from_second(960).unwrap()));
        assert_eq!(eviction_time(std::slice::from_ref(&five), &taints, now), Some(Timestamp::from_second(1_200).unwrap()));
        let forever = tol(json!({"key": UNREACHABLE, "operator": "Exists"}));
        assert_eq!(eviction_time(&[forever], &taints, now), None);
    }

    #[test]
    fn zone_states() {
        assert_eq!(zone_state(3, 1, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(3, 3, 0.55), ZoneState::FullDisruption);
        assert_eq!(zone_state(10, 6, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(4, 2, 0.55), ZoneState::Normal, "two or fewer not-ready nodes are never a disruption");
    }

    #[test]
    fn taints_follow_conditions() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}, {"type": "DiskPressure", "status": "True"}]}
        }))
        .unwrap();
        let w = wanted_taints(&node);
        assert!(w.contains(&(UNREACHABLE.to_string(), "NoSchedule")));
        assert!(w.contains(&(UNREACHABLE.to_string(), "NoExecute")));
        assert!(w.contains(&("node.kubernetes.io/disk-pressure".to_string(), "NoSchedule")));
        assert!(w.contains(&(UNSCHEDULABLE.to_string(), "NoSchedule")));
        assert!(!w.iter().any(|(k, _)| k == NOT_READY));
    }
}
