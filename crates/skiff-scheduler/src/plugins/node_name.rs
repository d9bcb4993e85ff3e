//! NodeName: a pod that names its node fits only there.

use crate::framework::{CycleState, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeName";
pub const REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() && n != node.name => Status::unresolvable(NAME, REASON),
            _ => Status::success(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn table() {
        let n = simple_node("a");
        for (spec, ok) in [(json!({}), true), (json!({"nodeName": "a"}), true), (json!({"nodeName": "b"}), false)] {
            assert_eq!(run_filter(&NodeName, &pod("p", spec.clone()), &n).is_success(), ok, "{spec}");
        }
    }
}
