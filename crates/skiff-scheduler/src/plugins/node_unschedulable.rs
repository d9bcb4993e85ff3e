//! NodeUnschedulable: cordoned nodes (`spec.unschedulable`) take only pods that tolerate the
//! `node.kubernetes.io/unschedulable:NoSchedule` taint.

use k8s_openapi::api::core::v1::Taint;

use super::taint_toleration::tolerates;
use crate::framework::{CycleState, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeUnschedulable";
pub const REASON: &str = "node(s) were unschedulable";
pub const TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable() {
            return Status::success();
        }
        let taint = Taint { key: TAINT_KEY.into(), effect: "NoSchedule".into(), ..Default::default() };
        let tolerations = pod.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
        if tolerations.iter().any(|t| tolerates(t, &taint)) { Status::success() } else { Status::unresolvable(NAME, REASON) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn table() {
        let alloc = json!({"cpu": "1", "memory": "1Gi", "pods": "10"});
        let cordoned = node("a", json!({}), json!({"unschedulable": true}), alloc.clone());
        let open = node("b", json!({}), json!({}), alloc);
        let tolerating = json!({"tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]});
        assert!(run_filter(&NodeUnschedulable, &pod("p", json!({})), &open).is_success());
        assert_eq!(run_filter(&NodeUnschedulable, &pod("p", json!({})), &cordoned).reasons, vec![REASON.to_string()]);
        assert!(run_filter(&NodeUnschedulable, &pod("p", tolerating), &cordoned).is_success());
    }
}
