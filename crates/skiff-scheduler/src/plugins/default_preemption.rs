//! DefaultPreemption (PostFilter): when no node fits, find the node where evicting the fewest and
//! least important lower-priority pods makes the pod fit; the scheduler then nominates that node
//! and deletes the victims. Otherwise explain, in upstream's words, why preemption cannot help.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Profile;
use crate::framework::{Code, CycleState, Status};
use crate::node_info::{NodeInfo, PodInfo};

pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

fn fits(profile: &Profile, pod: &PodInfo, node: &NodeInfo) -> bool {
    let mut state = CycleState::default();
    let nodes = std::slice::from_ref(node);
    if profile.filters.iter().any(|p| !p.pre_filter(&mut state, pod, nodes).is_success()) {
        return false;
    }
    profile.filters.iter().all(|p| p.filter(&state, pod, node).is_success())
}

/// The smallest set of lower-priority pods on `node` whose removal lets `pod` fit, chosen as
/// upstream: remove every lower-priority pod, then add back the most important ones while the pod
/// still fits.
fn victims_on(profile: &Profile, pod: &PodInfo, node: &NodeInfo) -> Option<Vec<Arc<PodInfo>>> {
    let mut lower: Vec<Arc<PodInfo>> = node.pods.iter().filter(|p| p.priority < pod.priority).cloned().collect();
    if lower.is_empty() {
        return None;
    }
    let mut sim = node.clone();
    for v in &lower {
        sim.remove_pod(&v.uid);
    }
    if !fits(profile, pod, &sim) {
        return None;
    }
    lower.sort_by_key(|p| std::cmp::Reverse(p.priority));
    let mut victims = Vec::new();
    for v in lower {
        sim.add_pod(v.clone());
        if !fits(profile, pod, &sim) {
            sim.remove_pod(&v.uid);
            victims.push(v);
        }
    }
    Some(victims)
}

/// Picks a node to preempt on, or returns the `preemption: ...` explanation for the event.
/// `failed` holds (node index, filter status) for every node that did not fit.
pub fn post_filter(profile: &Profile, pod: &PodInfo, nodes: &[NodeInfo], failed: &[(usize, Status)]) -> Result<Candidate, String> {
    if pod.pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("preemption: not eligible due to preemptionPolicy=Never".into());
    }
    let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<(i32, i64, usize, Candidate)> = None;
    for (i, st) in failed {
        if st.code == Code::UnschedulableAndUnresolvable {
            *hist.entry(NOT_HELPFUL).or_default() += 1;
            continue;
        }
        let node = &nodes[*i];
        match victims_on(profile, pod, node) {
            None => *hist.entry(NO_VICTIMS).or_default() += 1,
            Some(victims) => {
                let highest = victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
                let sum: i64 = victims.iter().map(|v| v.priority as i64).sum();
                let key = (highest, sum, victims.len());
                if best.as_ref().is_none_or(|(h, s, n, _)| key < (*h, *s, *n)) {
                    best = Some((key.0, key.1, key.2, Candidate { node: node.name.clone(), victims }));
                }
            }
        }
    }
    if let Some((_, _, _, c)) = best {
        return Ok(c);
    }
    let mut parts: Vec<String> = hist.into_iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    Err(format!("preemption: 0/{} nodes are available: {}", nodes.len(), parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn prio_pod(name: &str, cpu: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(pod(name, json!({"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]})))
    }

    fn failed(profile: &Profile, p: &PodInfo, nodes: &[NodeInfo]) -> Vec<(usize, Status)> {
        let mut state = CycleState::default();
        for f in &profile.filters {
            let _ = f.pre_filter(&mut state, p, nodes);
        }
        nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| profile.filters.iter().map(|f| f.filter(&state, p, n)).find(|s| !s.is_success()).map(|s| (i, s)))
            .collect()
    }

    #[test]
    fn picks_the_node_with_the_least_important_victims() {
        let profile = Profile::default_profile();
        let mut a = simple_node("a"); // 4 cpu
        a.add_pod(prio_pod("a-low", "2", 10));
        a.add_pod(prio_pod("a-mid", "2", 50));
        let mut b = simple_node("b");
        b.add_pod(prio_pod("b-low1", "2", 5));
        b.add_pod(prio_pod("b-low2", "2", 5));
        let nodes = vec![a, b];
        let p = prio_pod("high", "2", 100);
        let c = post_filter(&profile, &p, &nodes, &failed(&profile, &p, &nodes)).unwrap();
        // Both nodes need one victim; b's is the least important.
        assert_eq!(c.node, "b");
        assert_eq!(c.victims.len(), 1);
        assert_eq!(c.victims[0].priority, 5);
    }

    #[test]
    fn explains_when_preemption_cannot_help() {
        let profile = Profile::default_profile();
        let mut a = simple_node("a");
        a.add_pod(prio_pod("same", "4", 100));
        let tainted = node(
            "t",
            json!({}),
            json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
            json!({"cpu": "4", "memory": "8Gi", "pods": "110"}),
        );
        let nodes = vec![a, tainted];
        let p = prio_pod("p", "2", 100);
        let err = post_filter(&profile, &p, &nodes, &failed(&profile, &p, &nodes)).unwrap_err();
        assert_eq!(
            err,
            "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling"
        );
        let never = Arc::new(pod(
            "n",
            json!({"priority": 1000, "preemptionPolicy": "Never", "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
        ));
        assert_eq!(
            post_filter(&profile, &never, &nodes, &failed(&profile, &never, &nodes)).unwrap_err(),
            "preemption: not eligible due to preemptionPolicy=Never"
        );
    }
}
