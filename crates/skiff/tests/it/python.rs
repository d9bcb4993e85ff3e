//! The official Python client (Debian's python3-kubernetes, installed by scripts/install-deps.sh)
//! creates, patches, lists and watches a Deployment; the script prints what it saw and this
//! asserts on it and on the server's state.

use std::process::Command;

use crate::harness::{KUBECTL_133, Server};

fn steps(out: &str) -> Vec<serde_json::Value> {
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn the_python_client_creates_patches_lists_and_watches_a_deployment() {
    let s = Server::start_with(&["--disable-controller-manager"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/python/deployment.py");
    let out = Command::new("/usr/bin/python3").arg(script).arg(&s.kubeconfig).arg("py").output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let st = steps(&stdout);
    let step = |name: &str| st.iter().find(|v| v["step"] == name).unwrap_or_else(|| panic!("no {name} in {stdout}")).clone();

    let created = step("created");
    assert_eq!(created["strategy"], "RollingUpdate", "defaulted as upstream: {created}");
    assert_eq!(created["revision_history"], 10);
    let patched = step("patched");
    assert_eq!(patched["replicas"], 3);
    assert_ne!(patched["rv"], created["rv"]);
    let smp = step("strategic");
    assert_eq!(smp["replicas"], 4);
    assert_eq!(smp["containers"], serde_json::json!(["web"]), "merged by name, not replaced: {smp}");
    assert_eq!(smp["image"], "registry.local/web:1");
    assert_eq!(smp["env"], serde_json::json!([["MODE", "fast"]]));
    let bad = step("bad-patch");
    assert!(bad["status"] == 422 || bad["status"] == 400, "a JSON patch to a missing path is refused: {bad}");
    let listed = step("listed");
    assert_eq!(listed["names"], serde_json::json!(["web"]));
    assert_eq!(listed["replicas"], serde_json::json!([2]), "the scale subresource's change shows in the list");
    assert_eq!(listed["kind"], "DeploymentList");
    assert_eq!(step("missing")["status"], 404);
    assert_eq!(step("missing")["reason"], "NotFound");

    let events: Vec<(String, String, i64)> = step("watched")["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_str().unwrap().to_string(), e[2].as_i64().unwrap()))
        .collect();
    assert_eq!(events.first(), Some(&("ADDED".to_string(), "web".to_string(), 1)), "{events:?}");
    assert!(events.iter().any(|e| e.0 == "MODIFIED" && e.2 == 3), "{events:?}");
    assert!(events.iter().any(|e| e.0 == "MODIFIED" && e.2 == 2), "{events:?}");
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("DELETED"), "{events:?}");
    assert!(events.iter().any(|e| e.0 == "MODIFIED" && e.2 == 4), "{events:?}");

    // The server agrees, and kept serving.
    let left = s.ok(KUBECTL_133, &["-n", "py", "get", "deployments", "-o", "name"]);
    assert_eq!(left.trim(), "");
}
