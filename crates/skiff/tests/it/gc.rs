//! The garbage collector with the real kubectl: `kubectl delete --cascade=background|foreground|
//! orphan` of a Deployment leaves exactly what upstream leaves, and objects with dangling owner
//! references are collected (or, with a live owner left, just lose the dangling reference).

use std::time::Duration;

use crate::harness::{KUBECTL_133, Server, wait_for};

const K: &str = KUBECTL_133;

fn names(s: &Server, what: &str, selector: &str) -> Vec<String> {
    let out = s.ok(K, &["get", what, "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"]);
    out.split_whitespace().map(str::to_string).collect()
}

fn deployment_with_pods(s: &Server, name: &str) -> String {
    s.ok(K, &["create", "deployment", name, "--image=busybox", "--replicas=2"]);
    let sel = format!("app={name}");
    wait_for("2 pods", Duration::from_secs(20), || (names(s, "pods", &sel).len() == 2).then_some(()));
    sel
}

#[test]
fn cascading_deletion_modes_leave_what_upstream_leaves() {
    // No scheduler: the pods stay unscheduled, which the API server deletes at once (no kubelet
    // has to confirm), so the test is about ownership only.
    let s = Server::start_with(&["--disable-scheduler"]);

    let bg = deployment_with_pods(&s, "bg");
    s.ok(K, &["delete", "deployment", "bg", "--cascade=background"]);
    wait_for("background cascade", Duration::from_secs(20), || {
        (names(&s, "rs", &bg).is_empty() && names(&s, "pods", &bg).is_empty()).then_some(())
    });

    let fg = deployment_with_pods(&s, "fg");
    // kubectl waits for the Deployment itself to go, which foreground deletion holds back until
    // the ReplicaSet (and through it the pods) are gone.
    s.ok(K, &["delete", "deployment", "fg", "--cascade=foreground", "--timeout=30s"]);
    assert!(names(&s, "rs", &fg).is_empty(), "the ReplicaSet went before its Deployment");
    assert!(names(&s, "pods", &fg).is_empty(), "the pods went before their ReplicaSet");

    let or = deployment_with_pods(&s, "or");
    s.ok(K, &["delete", "deployment", "or", "--cascade=orphan"]);
    wait_for("deployment gone", Duration::from_secs(20), || (!s.kubectl(K, &["get", "deployment", "or"]).status.success()).then_some(()));
    let rs = names(&s, "rs", &or);
    assert_eq!(rs.len(), 1, "the ReplicaSet stays");
    let refs = s.ok(K, &["get", "rs", &rs[0], "-o", "jsonpath={.metadata.ownerReferences}"]);
    assert!(refs.is_empty() || refs == "[]", "the orphaned ReplicaSet has no owner: {refs}");
    let finalizers = s.ok(K, &["get", "rs", &rs[0], "-o", "jsonpath={.metadata.finalizers}"]);
    assert!(finalizers.is_empty() || finalizers == "[]", "{finalizers}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(names(&s, "pods", &or).len(), 2, "its pods stay, still owned by it");
}

#[test]
fn dangling_owner_references_are_collected() {
    let s = Server::start_with(&["--disable-scheduler"]);
    s.ok(K, &["create", "configmap", "owner"]);
    let uid = s.ok(K, &["get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"]);
    let cm = |name: &str, refs: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {{gc: test}}\n  ownerReferences: [{refs}]\n")
    };
    let ghost = "{apiVersion: v1, kind: ConfigMap, name: ghost, uid: 00000000-0000-0000-0000-000000000001}";
    let live = format!("{{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}");
    let docs = [cm("garbage", ghost), cm("kept", &format!("{ghost}, {live}")), cm("child", &live)].join("---\n");
    let out = s.kubectl_stdin(K, &["create", "-f", "-"], Some(&docs));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    wait_for("garbage collected", Duration::from_secs(20), || {
        (!names(&s, "configmaps", "gc=test").contains(&"garbage".to_string())).then_some(())
    });
    wait_for("dangling reference dropped", Duration::from_secs(20), || {
        let owners = s.ok(K, &["get", "configmap", "kept", "-o", "jsonpath={.metadata.ownerReferences[*].name}"]);
        (owners == "owner").then_some(())
    });
    // Deleting the live owner (background) takes its dependents along.
    s.ok(K, &["delete", "configmap", "owner"]);
    wait_for("dependents collected", Duration::from_secs(20), || names(&s, "configmaps", "gc=test").is_empty().then_some(()));
}
