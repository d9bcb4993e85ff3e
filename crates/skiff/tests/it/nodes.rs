//! Node lifecycle end to end: a simulated node that stops renewing its Lease becomes Ready=Unknown
//! with upstream's taints, its pods are evicted after their (defaulted) tolerationSeconds, and the
//! Deployment's ReplicaSet replaces them on the nodes still alive.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{KUBECTL_133, Server, SkiffProc, wait_for};

const K: &str = KUBECTL_133;

fn sim(s: &Server, prefix: &str, nodes: &str, log: &str) -> SkiffProc {
    let kc = s.kubeconfig.to_string_lossy().into_owned();
    let args = ["sim", "--kubeconfig", &kc, "--nodes", nodes, "--name-prefix", prefix, "--zones", "1", "--lease-interval-seconds", "1"];
    SkiffProc::start(s, &args, log)
}

fn pods(s: &Server) -> Vec<Value> {
    let v: Value = serde_json::from_str(&s.ok(K, &["get", "pods", "-l", "app=web", "-o", "json"])).unwrap();
    v["items"].as_array().unwrap().clone()
}

fn live_running(pods: &[Value]) -> Vec<String> {
    pods.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn pods_leave_a_node_that_stopped_reporting() {
    let s = Server::start_with(&[
        "--node-monitor-period=1s",
        "--node-monitor-grace-period=5s",
        "--node-eviction-rate=10",
        "--default-not-ready-toleration-seconds=2",
        "--default-unreachable-toleration-seconds=2",
    ]);
    let _live = sim(&s, "live-", "2", "sim-live.log");
    let mut dead = sim(&s, "dead-", "1", "sim-dead.log");
    wait_for("3 Ready nodes", Duration::from_secs(30), || {
        let out = s.ok(K, &["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"]);
        (out.split_whitespace().filter(|x| *x == "True").count() == 3).then_some(())
    });
    // Ready is not enough under load: the lifecycle controller lifts the not-ready taint a
    // moment later, and until then the scheduler rightly avoids the node.
    wait_for("no node tainted", Duration::from_secs(30), || {
        s.ok(K, &["get", "nodes", "-o", "jsonpath={.items[*].spec.taints}"]).trim().is_empty().then_some(())
    });
    s.ok(K, &["create", "deployment", "web", "--image=busybox", "--replicas=6"]);
    s.ok(K, &["rollout", "status", "deployment/web", "--timeout=60s"]);
    let on_dead = live_running(&pods(&s)).iter().filter(|n| n.as_str() == "dead-0").count();
    assert!(on_dead > 0, "the scheduler spreads pods over all three nodes");
    // Admission gave every pod the (shortened) default tolerations for the node taints.
    let tol = s.ok(
        K,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].spec.tolerations[?(@.key==\"node.kubernetes.io/unreachable\")].tolerationSeconds}",
        ],
    );
    assert_eq!(tol, "2");

    // The node goes silent.
    let _ = dead.0.kill();
    let _ = dead.0.wait();
    wait_for("dead-0 Unknown and tainted", Duration::from_secs(30), || {
        let node: Value = serde_json::from_str(&s.ok(K, &["get", "node", "dead-0", "-o", "json"])).ok()?;
        let ready = node["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        let taints: Vec<(String, String)> = node["spec"]["taints"]
            .as_array()?
            .iter()
            .map(|t| (t["key"].as_str().unwrap_or("").to_string(), t["effect"].as_str().unwrap_or("").to_string()))
            .collect();
        let want = [
            ("node.kubernetes.io/unreachable".to_string(), "NoExecute".to_string()),
            ("node.kubernetes.io/unreachable".to_string(), "NoSchedule".to_string()),
        ];
        (ready["status"] == "Unknown" && ready["reason"] == "NodeStatusUnknown" && want.iter().all(|w| taints.contains(w))).then_some(())
    });
    // Its pods are evicted and replaced on the live nodes.
    wait_for("6 pods running on live nodes", Duration::from_secs(60), || {
        let nodes = live_running(&pods(&s));
        (nodes.len() == 6 && nodes.iter().all(|n| n.starts_with("live-"))).then_some(())
    });
    let ev = s.ok(K, &["get", "events", "--field-selector", "reason=TaintManagerEviction", "-o", "jsonpath={.items[*].message}"]);
    assert!(ev.contains("Marking for deletion Pod default/web-"), "{ev}");
    let evicted = pods(&s).into_iter().filter(|p| p["spec"]["nodeName"] == "dead-0").collect::<Vec<_>>();
    assert!(evicted.iter().all(|p| !p["metadata"]["deletionTimestamp"].is_null()), "pods on the dead node are being deleted");
}
