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

#[test]
fn deleting_a_namespace_with_500_mixed_objects_leaves_nothing() {
    let s = Server::start_with(&["--disable-scheduler"]);
    s.ok(K, &["create", "namespace", "big"]);
    let mut docs = Vec::new();
    for i in 0..200 {
        docs.push(format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{k: v}}\n"));
    }
    for i in 0..100 {
        docs.push(format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s-{i}}}\nstringData: {{k: v}}\n"));
    }
    for i in 0..50 {
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{selector: {{app: d-{i}}}, ports: [{{port: 80}}]}}\n"
        ));
        docs.push(format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: sa-{i}}}\n"));
        docs.push(format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: l-{i}}}\nspec: {{holderIdentity: x}}\n"));
        docs.push(format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d-{i}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: d-{i}}}}}\n  \
             template:\n    metadata: {{labels: {{app: d-{i}}}}}\n    spec: {{containers: [{{name: c, image: busybox}}]}}\n"
        ));
    }
    assert_eq!(docs.len(), 500);
    let out = s.kubectl_stdin(K, &["create", "-n", "big", "-f", "-"], Some(&docs.join("---\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The controllers add more: ReplicaSets, pods, Endpoints, EndpointSlices, the default account.
    wait_for("50 pods", Duration::from_secs(60), || {
        (s.ok(K, &["get", "pods", "-n", "big", "-o", "name"]).lines().count() == 50).then_some(())
    });

    s.ok(K, &["delete", "namespace", "big", "--timeout=120s"]);
    assert!(!s.kubectl(K, &["get", "namespace", "big"]).status.success(), "the namespace is gone");
    let kinds = s.ok(K, &["api-resources", "--namespaced", "--verbs=list", "-o", "name"]);
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.is_empty()).collect();
    assert!(kinds.len() > 10, "{kinds:?}");
    let left = s.ok(K, &["get", &kinds.join(","), "-n", "big", "-o", "name", "--ignore-not-found"]);
    assert!(left.trim().is_empty(), "left behind in a deleted namespace:\n{left}");
}
