//! Builders for plugin tests: nodes and pods from JSON fragments.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use crate::framework::{CycleState, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};

pub fn node(name: &str, labels: Value, spec: Value, alloc: Value) -> NodeInfo {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"allocatable": alloc},
    }))
    .unwrap();
    NodeInfo::new(Arc::new(n))
}

pub fn simple_node(name: &str) -> NodeInfo {
    node(name, json!({}), json!({}), json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))
}

pub fn pod(name: &str, spec: Value) -> PodInfo {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "i"}]);
    }
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": name}},
        "spec": spec,
    }))
    .unwrap();
    PodInfo::new(Arc::new(p))
}

pub fn pod_requesting(name: &str, cpu: &str, memory: &str) -> PodInfo {
    pod(name, json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}))
}

/// Runs pre_filter then filter, as the scheduler does.
pub fn run_filter(p: &dyn Plugin, pod: &PodInfo, node: &NodeInfo) -> Status {
    let mut state = CycleState::default();
    let pre = p.pre_filter(&mut state, pod, std::slice::from_ref(node));
    if !pre.is_success() {
        return pre;
    }
    p.filter(&state, pod, node)
}

/// Runs pre_score, score and normalize over `nodes`.
pub fn run_score(p: &dyn Plugin, pod: &PodInfo, nodes: &[NodeInfo]) -> Vec<i64> {
    let mut state = CycleState::default();
    let _ = p.pre_filter(&mut state, pod, nodes);
    let refs: Vec<&NodeInfo> = nodes.iter().collect();
    p.pre_score(&mut state, pod, &refs);
    let mut scores: Vec<i64> = nodes.iter().map(|n| p.score(&state, pod, n)).collect();
    p.normalize(&state, &mut scores);
    scores
}
