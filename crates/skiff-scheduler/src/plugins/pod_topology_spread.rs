//! PodTopologySpread: `topologySpreadConstraints`. DoNotSchedule constraints filter nodes whose
//! domain would exceed maxSkew over the least-loaded eligible domain; ScheduleAnyway constraints
//! score emptier domains higher. Eligible nodes honour the pod's node affinity (nodeAffinityPolicy
//! Honor, the default) and, with nodeTaintsPolicy Honor, its tolerations.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use super::node_affinity::required_match;
use super::taint_toleration::tolerates;
use crate::framework::{CycleState, MAX_NODE_SCORE, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};
use crate::selector;

pub const NAME: &str = "PodTopologySpread";
pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

pub struct PodTopologySpread;

struct Counted {
    constraint: TopologySpreadConstraint,
    /// Matching pods per domain value, over eligible nodes (domains with 0 included).
    counts: HashMap<String, i64>,
    self_match: i64,
}

impl Counted {
    fn min(&self) -> i64 {
        if (self.counts.len() as i32) < self.constraint.min_domains.unwrap_or(1) {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

#[derive(Default)]
struct SpreadState {
    hard: Vec<Counted>,
    soft: Vec<Counted>,
}

fn constraints(pod: &PodInfo) -> &[TopologySpreadConstraint] {
    pod.pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_deref()).unwrap_or_default()
}

fn validate(cs: &[TopologySpreadConstraint]) -> Result<(), String> {
    for (i, c) in cs.iter().enumerate() {
        let p = format!("spec.topologySpreadConstraints[{i}]");
        if c.max_skew <= 0 {
            return Err(format!("{p}.maxSkew: Invalid value: {}: must be greater than zero", c.max_skew));
        }
        if c.topology_key.is_empty() {
            return Err(format!("{p}.topologyKey: Required value: can not be empty"));
        }
        if !matches!(c.when_unsatisfiable.as_str(), "DoNotSchedule" | "ScheduleAnyway") {
            return Err(format!("{p}.whenUnsatisfiable: Unsupported value: {:?}", c.when_unsatisfiable));
        }
        if let Some(s) = &c.label_selector {
            selector::validate(s, &format!("{p}.labelSelector"))?;
        }
    }
    Ok(())
}

fn eligible(pod: &PodInfo, c: &TopologySpreadConstraint, node: &NodeInfo) -> bool {
    if c.node_affinity_policy.as_deref().unwrap_or("Honor") == "Honor" && !required_match(pod, node) {
        return false;
    }
    if c.node_taints_policy.as_deref() == Some("Honor") {
        let tols = pod.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
        let blocked = node
            .taints()
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .any(|t| !tols.iter().any(|tol| tolerates(tol, t)));
        if blocked {
            return false;
        }
    }
    true
}

fn count(pod: &PodInfo, c: &TopologySpreadConstraint, nodes: &[NodeInfo], keys: &[&str]) -> Counted {
    let ns = pod.namespace();
    let sel = c.label_selector.as_ref();
    let mut counts: HashMap<String, i64> = HashMap::new();
    for node in nodes {
        // A node counts only when it carries every key the pod's constraints use.
        if !keys.iter().all(|k| node.labels().contains_key(*k)) || !eligible(pod, c, node) {
            continue;
        }
        let v = &node.labels()[&c.topology_key];
        let n = sel.map_or(0, |s| {
            node.pods
                .iter()
                .filter(|p| p.namespace() == ns && p.pod.metadata.deletion_timestamp.is_none() && selector::matches(s, p.labels()))
                .count() as i64
        });
        *counts.entry(v.clone()).or_default() += n;
    }
    let self_match = sel.is_some_and(|s| selector::matches(s, pod.labels())) as i64;
    Counted { constraint: c.clone(), counts, self_match }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, nodes: &[NodeInfo]) -> Status {
        let cs = constraints(pod);
        if cs.is_empty() {
            return Status::success();
        }
        if let Err(e) = validate(cs) {
            return Status::unresolvable(NAME, e);
        }
        let hard_keys: Vec<&str> = cs.iter().filter(|c| c.when_unsatisfiable == "DoNotSchedule").map(|c| c.topology_key.as_str()).collect();
        let soft_keys: Vec<&str> = cs.iter().filter(|c| c.when_unsatisfiable != "DoNotSchedule").map(|c| c.topology_key.as_str()).collect();
        let mut st = SpreadState::default();
        for c in cs {
            if c.when_unsatisfiable == "DoNotSchedule" {
                st.hard.push(count(pod, c, nodes, &hard_keys));
            } else {
                st.soft.push(count(pod, c, nodes, &soft_keys));
            }
        }
        state.write(NAME, st);
        Status::success()
    }

    fn filter(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<SpreadState>(NAME) else { return Status::success() };
        for c in &st.hard {
            let Some(v) = node.labels().get(&c.constraint.topology_key) else {
                return Status::unresolvable(NAME, REASON_MISSING_LABEL);
            };
            let skew = c.counts.get(v).copied().unwrap_or(0) + c.self_match - c.min();
            if skew > c.constraint.max_skew as i64 {
                return Status::unschedulable(NAME, REASON);
            }
        }
        Status::success()
    }

    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.read::<SpreadState>(NAME) else { return 0 };
        let mut total = 0.0;
        for c in &st.soft {
            let Some(v) = node.labels().get(&c.constraint.topology_key) else { continue };
            // Upstream weighs each constraint by log(domains + 2) so wide topologies do not dominate.
            let weight = ((c.counts.len() + 2) as f64).ln();
            total += c.counts.get(v).copied().unwrap_or(0) as f64 * weight + (c.constraint.max_skew - 1) as f64;
        }
        total.round() as i64
    }

    fn normalize(&self, state: &CycleState, scores: &mut [i64]) {
        if state.read::<SpreadState>(NAME).is_none_or(|s| s.soft.is_empty()) {
            return;
        }
        let (min, max) = (scores.iter().copied().min().unwrap_or(0), scores.iter().copied().max().unwrap_or(0));
        for s in scores.iter_mut() {
            *s = if max == 0 { MAX_NODE_SCORE } else { MAX_NODE_SCORE * (max + min - *s) / max };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn zoned(name: &str, zone: Option<&str>) -> NodeInfo {
        let labels = match zone {
            Some(z) => json!({"zone": z}),
            None => json!({}),
        };
        node(name, labels, json!({}), json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))
    }

    fn web(name: &str, spread: Value) -> PodInfo {
        let mut p = pod(name, json!({"topologySpreadConstraints": spread}));
        Arc::get_mut(&mut p.pod).unwrap().metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        PodInfo::new(p.pod.clone())
    }

    fn spread(when: &str, max_skew: i32) -> Value {
        json!([{"maxSkew": max_skew, "topologyKey": "zone", "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}}])
    }

    fn filter_all(p: &PodInfo, nodes: &[NodeInfo]) -> Vec<Status> {
        let mut state = CycleState::default();
        let pre = PodTopologySpread.pre_filter(&mut state, p, nodes);
        if !pre.is_success() {
            return vec![pre];
        }
        nodes.iter().map(|n| PodTopologySpread.filter(&state, p, n)).collect()
    }

    #[test]
    fn do_not_schedule_keeps_skew_within_max() {
        let mut nodes = vec![zoned("a", Some("z1")), zoned("b", Some("z2")), zoned("c", Some("z3")), zoned("d", None)];
        nodes[0].add_pod(Arc::new(web("w0", json!([]))));
        nodes[0].add_pod(Arc::new(web("w1", json!([]))));
        nodes[1].add_pod(Arc::new(web("w2", json!([]))));
        let st = filter_all(&web("new", spread("DoNotSchedule", 1)), &nodes);
        let oks: Vec<bool> = st.iter().map(Status::is_success).collect();
        assert_eq!(oks, vec![false, false, true, false]); // z3 is empty (min 0): only it keeps skew ≤ 1
        assert_eq!(st[0].reasons, vec![REASON]);
        assert_eq!(st[3].reasons, vec![REASON_MISSING_LABEL]);
        let st = filter_all(&web("new", spread("DoNotSchedule", 2)), &nodes);
        assert_eq!(st.iter().map(Status::is_success).collect::<Vec<_>>(), vec![false, true, true, false]);
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        let mut nodes = vec![zoned("a", Some("z1")), zoned("b", Some("z2"))];
        nodes[0].add_pod(Arc::new(web("w0", json!([]))));
        nodes[0].add_pod(Arc::new(web("w1", json!([]))));
        let scores = run_score(&PodTopologySpread, &web("new", spread("ScheduleAnyway", 1)), &nodes);
        assert!(scores[1] > scores[0], "{scores:?}");
        assert!(filter_all(&web("new", spread("ScheduleAnyway", 1)), &nodes).iter().all(Status::is_success));
    }

    #[test]
    fn invalid_constraints_are_reported() {
        let nodes = vec![zoned("a", Some("z1"))];
        let st = filter_all(&web("new", spread("Sometimes", 1)), &nodes);
        assert!(st[0].reasons[0].contains("whenUnsatisfiable"), "{st:?}");
        let st = filter_all(&web("new", spread("DoNotSchedule", 0)), &nodes);
        assert!(st[0].reasons[0].contains("maxSkew"), "{st:?}");
    }
}
