//! NodePorts: a pod's hostPorts must be free on the node.

use crate::framework::{CycleState, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodePorts";
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let clash = pod.host_ports.iter().any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
        if clash { Status::unschedulable(NAME, REASON) } else { Status::success() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;
    use std::sync::Arc;

    fn with_port(name: &str, port: i32, ip: Option<&str>, proto: &str) -> PodInfo {
        let mut p = json!({"containerPort": 80, "hostPort": port, "protocol": proto});
        if let Some(ip) = ip {
            p["hostIP"] = json!(ip);
        }
        pod(name, json!({"containers": [{"name": "c", "image": "i", "ports": [p]}]}))
    }

    #[test]
    fn table() {
        let mut n = simple_node("a");
        n.add_pod(Arc::new(with_port("held", 8080, Some("10.0.0.1"), "TCP")));
        let cases = [
            (with_port("same", 8080, Some("10.0.0.1"), "TCP"), false),
            (with_port("any-ip", 8080, None, "TCP"), false),
            (with_port("other-ip", 8080, Some("10.0.0.2"), "TCP"), true),
            (with_port("udp", 8080, Some("10.0.0.1"), "UDP"), true),
            (with_port("other-port", 8081, None, "TCP"), true),
            (pod("none", json!({})), true),
        ];
        for (p, ok) in cases {
            assert_eq!(run_filter(&NodePorts, &p, &n).is_success(), ok, "{}", p.key);
        }
        assert!(n.remove_pod("uid-held"));
        assert!(run_filter(&NodePorts, &with_port("same", 8080, Some("10.0.0.1"), "TCP"), &n).is_success());
    }
}
