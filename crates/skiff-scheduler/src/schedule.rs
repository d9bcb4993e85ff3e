//! One scheduling cycle for one pod: PreFilter, Filter over (a sample of) the nodes, Score the
//! feasible ones, pick the best (ties broken at random). Failures become a [`FitError`] whose text
//! is upstream's FailedScheduling message.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::Profile;
use crate::framework::{CycleState, Status};
use crate::node_info::{NodeInfo, PodInfo};

/// Below this many nodes every node is checked (upstream's minFeasibleNodesToFind).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

#[derive(Debug)]
pub struct FitError {
    pub num_nodes: usize,
    /// Set when a PreFilter rejected the pod for every node.
    pub pre_filter: Option<String>,
    /// (node index, filter status) of every node that did not fit.
    pub failed: Vec<(usize, Status)>,
    /// PostFilter's (preemption's) explanation, appended as upstream does.
    pub post_filter: Option<String>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes are available:", self.num_nodes)?;
        if let Some(msg) = &self.pre_filter {
            write!(f, " {msg}.")?;
        } else {
            let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
            for r in self.failed.iter().flat_map(|(_, st)| &st.reasons) {
                *hist.entry(r).or_default() += 1;
            }
            // Upstream sorts the "N reason" strings themselves.
            let mut parts: Vec<String> = hist.into_iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
            if !parts.is_empty() {
                write!(f, " {}.", parts.join(", "))?;
            }
        }
        if let Some(msg) = &self.post_filter {
            write!(f, " {msg}.")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum ScheduleError {
    NoNodes,
    Fit(FitError),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::NoNodes => write!(f, "no nodes available to schedule pods"),
            ScheduleError::Fit(e) => e.fmt(f),
        }
    }
}

/// How many feasible nodes to look for before stopping (upstream's numFeasibleNodesToFind).
pub fn nodes_to_find(total: usize, percentage: i32) -> usize {
    if total < MIN_FEASIBLE_NODES_TO_FIND || percentage >= 100 {
        return total;
    }
    let pct = if percentage <= 0 {
        // Adaptive: 50% at 0 nodes, falling by 1% per 125 nodes, never below 5%.
        (50usize.saturating_sub(total / 125)).max(MIN_FEASIBLE_NODES_PERCENTAGE)
    } else {
        percentage as usize
    };
    (total * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Walks the nodes from `start` (rotating between cycles, as upstream, so a sample does not always
/// favour the same nodes). Returns the chosen node's index and how many nodes were examined.
pub fn schedule(profile: &Profile, pod: &PodInfo, nodes: &[NodeInfo], start: usize) -> Result<(usize, usize), ScheduleError> {
    if nodes.is_empty() {
        return Err(ScheduleError::NoNodes);
    }
    let mut state = CycleState::default();
    for p in &profile.filters {
        let st = p.pre_filter(&mut state, pod, nodes);
        if !st.is_success() {
            let failed = (0..nodes.len()).map(|i| (i, st.clone())).collect();
            return Err(ScheduleError::Fit(FitError {
                num_nodes: nodes.len(),
                pre_filter: Some(st.reasons.join(", ")),
                failed,
                post_filter: None,
            }));
        }
    }
    let want = nodes_to_find(nodes.len(), profile.percentage_of_nodes_to_score);
    let mut feasible: Vec<usize> = Vec::with_capacity(want.min(nodes.len()));
    let mut failed: Vec<(usize, Status)> = Vec::new();
    let mut examined = 0;
    for k in 0..nodes.len() {
        if feasible.len() >= want {
            break;
        }
        let i = (start + k) % nodes.len();
        examined += 1;
        match run_filters(profile, &state, pod, &nodes[i]) {
            None => feasible.push(i),
            Some(st) => failed.push((i, st)),
        }
    }
    if feasible.is_empty() {
        return Err(ScheduleError::Fit(FitError { num_nodes: nodes.len(), pre_filter: None, failed, post_filter: None }));
    }
    if feasible.len() == 1 || profile.scorers.is_empty() {
        return Ok((feasible[0], examined));
    }
    let refs: Vec<&NodeInfo> = feasible.iter().map(|i| &nodes[*i]).collect();
    let mut totals = vec![0i64; feasible.len()];
    let mut scores = vec![0i64; feasible.len()];
    for (p, weight) in &profile.scorers {
        p.pre_score(&mut state, pod, &refs);
        for (s, n) in scores.iter_mut().zip(&refs) {
            *s = p.score(&state, pod, n);
        }
        p.normalize(&state, &mut scores);
        for (t, s) in totals.iter_mut().zip(&scores) {
            *t += s * weight;
        }
    }
    Ok((feasible[select_host(&totals)], examined))
}

fn run_filters(profile: &Profile, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Option<Status> {
    for p in &profile.filters {
        let st = p.filter(state, pod, node);
        if !st.is_success() {
            return Some(st);
        }
    }
    None
}

/// The index of the highest score; ties broken uniformly at random (reservoir sampling).
fn select_host(totals: &[i64]) -> usize {
    let mut best = 0;
    let mut ties = 1u32;
    for (i, s) in totals.iter().enumerate().skip(1) {
        if *s > totals[best] {
            best = i;
            ties = 1;
        } else if *s == totals[best] {
            ties += 1;
            if rand::random::<u32>().is_multiple_of(ties) {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn message_shape_is_upstreams() {
        let alloc = json!({"cpu": "1", "memory": "1Gi", "pods": "10"});
        let nodes = vec![
            node("a", json!({}), json!({}), alloc.clone()),
            node("b", json!({}), json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}), alloc.clone()),
            node("c", json!({}), json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}), alloc),
        ];
        let err = schedule(&Profile::default_profile(), &pod_requesting("p", "2", "1Mi"), &nodes, 0).unwrap_err();
        assert_eq!(err.to_string(), "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}.");
        let bad = pod(
            "q",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Bogus"}]}]}}}}),
        );
        let err = schedule(&Profile::default_profile(), &bad, &nodes, 0).unwrap_err().to_string();
        assert!(err.starts_with("0/3 nodes are available: spec.affinity.nodeAffinity"), "{err}");
        assert_eq!(schedule(&Profile::default_profile(), &bad, &[], 0).unwrap_err().to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn picks_the_least_allocated_feasible_node() {
        let mut busy = simple_node("busy");
        busy.add_pod(std::sync::Arc::new(pod_requesting("x", "3", "6Gi")));
        let nodes =
            vec![busy, simple_node("idle"), node("small", json!({}), json!({}), json!({"cpu": "100m", "memory": "1Gi", "pods": "10"}))];
        for start in 0..3 {
            let (i, _) = schedule(&Profile::default_profile(), &pod_requesting("p", "500m", "1Gi"), &nodes, start).unwrap();
            assert_eq!(nodes[i].name, "idle");
        }
    }

    #[test]
    fn sampling_follows_upstreams_formula() {
        assert_eq!(nodes_to_find(50, 0), 50);
        assert_eq!(nodes_to_find(5000, 0), 500); // 50 - 40 = 10%
        assert_eq!(nodes_to_find(100_000, 0), 5000); // floor of 5%
        assert_eq!(nodes_to_find(5000, 100), 5000);
        assert_eq!(nodes_to_find(1000, 1), 100);
    }
}
