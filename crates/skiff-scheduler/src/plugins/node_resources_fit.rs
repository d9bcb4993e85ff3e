//! NodeResourcesFit: the pod's requests must fit in what the node has left (pods count, cpu,
//! memory, ephemeral storage, extended resources); scoring by LeastAllocated (default),
//! MostAllocated or RequestedToCapacityRatio over weighted resources.

use serde::Deserialize;

use crate::framework::{CycleState, MAX_NODE_SCORE, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};
use crate::resources::Resources;

pub const NAME: &str = "NodeResourcesFit";

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ResourceWeight {
    pub name: String,
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

/// A point of RequestedToCapacityRatio's utilization → score curve (score 0..=10, as upstream).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ShapePoint {
    pub utilization: i64,
    pub score: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    LeastAllocated,
    MostAllocated,
    RequestedToCapacityRatio(Vec<ShapePoint>),
}

#[derive(Clone, Debug)]
pub struct NodeResourcesFit {
    pub strategy: Strategy,
    pub resources: Vec<ResourceWeight>,
}

impl Default for NodeResourcesFit {
    fn default() -> Self {
        NodeResourcesFit {
            strategy: Strategy::LeastAllocated,
            resources: vec![ResourceWeight { name: "cpu".into(), weight: 1 }, ResourceWeight { name: "memory".into(), weight: 1 }],
        }
    }
}

/// (allocatable, requested-after-placing-the-pod) of one resource on one node.
pub fn alloc_and_requested(name: &str, node: &NodeInfo, pod: &PodInfo, non_zero: bool) -> (i64, i64) {
    let (node_req, pod_req) = if non_zero { (&node.non_zero_requested, &pod.non_zero) } else { (&node.requested, &pod.requests) };
    let get = |r: &Resources| match name {
        "cpu" => r.milli_cpu,
        "memory" => r.memory,
        "ephemeral-storage" => r.ephemeral_storage,
        other => r.scalar(other),
    };
    (get(&node.allocatable), get(node_req) + get(pod_req))
}

fn insufficient(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        reasons.push("Too many pods".to_string());
    }
    let want = &pod.requests;
    let (a, r) = (&node.allocatable, &node.requested);
    if want.milli_cpu > 0 && a.milli_cpu < want.milli_cpu + r.milli_cpu {
        reasons.push("Insufficient cpu".into());
    }
    if want.memory > 0 && a.memory < want.memory + r.memory {
        reasons.push("Insufficient memory".into());
    }
    if want.ephemeral_storage > 0 && a.ephemeral_storage < want.ephemeral_storage + r.ephemeral_storage {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, q) in &want.scalar {
        if *q > 0 && a.scalar(name) < q + r.scalar(name) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

fn interpolate(shape: &[ShapePoint], utilization: i64) -> i64 {
    // Shape scores are 0..=10 upstream; scaled to 0..=MAX_NODE_SCORE.
    let scaled = |s: i64| s * MAX_NODE_SCORE / 10;
    let Some(first) = shape.first() else { return 0 };
    if utilization <= first.utilization {
        return scaled(first.score);
    }
    for w in shape.windows(2) {
        let (p0, p1) = (&w[0], &w[1]);
        if utilization <= p1.utilization {
            let (s0, s1) = (scaled(p0.score), scaled(p1.score));
            return s0 + (s1 - s0) * (utilization - p0.utilization) / (p1.utilization - p0.utilization).max(1);
        }
    }
    scaled(shape.last().map_or(0, |p| p.score))
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let reasons = insufficient(pod, node);
        if reasons.is_empty() { Status::success() } else { Status { code: crate::framework::Code::Unschedulable, reasons, plugin: NAME } }
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (mut total, mut weights) = (0i64, 0i64);
        for rw in &self.resources {
            let (alloc, req) = alloc_and_requested(&rw.name, node, pod, true);
            if alloc == 0 {
                continue;
            }
            let s = match &self.strategy {
                Strategy::LeastAllocated => {
                    if req > alloc {
                        0
                    } else {
                        (alloc - req) * MAX_NODE_SCORE / alloc
                    }
                }
                Strategy::MostAllocated => req.min(alloc) * MAX_NODE_SCORE / alloc,
                Strategy::RequestedToCapacityRatio(shape) => interpolate(shape, req.min(alloc) * 100 / alloc),
            };
            total += s * rw.weight;
            weights += rw.weight;
        }
        if weights == 0 { 0 } else { total / weights }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;
    use std::sync::Arc;

    fn small_node(name: &str, pods: &str) -> NodeInfo {
        node(name, json!({}), json!({}), json!({"cpu": "1", "memory": "1Gi", "pods": pods, "example.com/gpu": "1"}))
    }

    #[test]
    fn filter_table() {
        let mut n = small_node("a", "2");
        n.add_pod(Arc::new(pod_requesting("existing", "500m", "512Mi")));
        let cases = [
            (pod_requesting("fits", "500m", "512Mi"), vec![]),
            (pod_requesting("cpu", "600m", "1Mi"), vec!["Insufficient cpu"]),
            (pod_requesting("both", "2", "2Gi"), vec!["Insufficient cpu", "Insufficient memory"]),
            (
                pod("gpu", json!({"containers": [{"name": "c", "resources": {"limits": {"example.com/gpu": "2"}}}]})),
                vec!["Insufficient example.com/gpu"],
            ),
            (pod("nothing", json!({})), vec![]),
        ];
        for (p, want) in cases {
            assert_eq!(run_filter(&NodeResourcesFit::default(), &p, &n).reasons, want, "{}", p.key);
        }
        n.add_pod(Arc::new(pod("second", json!({}))));
        assert_eq!(run_filter(&NodeResourcesFit::default(), &pod("third", json!({})), &n).reasons, vec!["Too many pods"]);
    }

    #[test]
    fn scoring_strategies() {
        let mut busy = small_node("busy", "10");
        busy.add_pod(Arc::new(pod_requesting("x", "500m", "512Mi")));
        let idle = small_node("idle", "10");
        let nodes = [busy, idle];
        let p = pod_requesting("p", "250m", "256Mi");
        // Least: busy has 25% left, idle 75%.
        assert_eq!(run_score(&NodeResourcesFit::default(), &p, &nodes), vec![25, 75]);
        let most = NodeResourcesFit { strategy: Strategy::MostAllocated, ..Default::default() };
        assert_eq!(run_score(&most, &p, &nodes), vec![75, 25]);
        let shape = vec![ShapePoint { utilization: 0, score: 0 }, ShapePoint { utilization: 100, score: 10 }];
        let ratio = NodeResourcesFit { strategy: Strategy::RequestedToCapacityRatio(shape), ..Default::default() };
        assert_eq!(run_score(&ratio, &p, &nodes), vec![75, 25]);
    }
}
