//! `skiff server --datastore-endpoint`: the cluster state lives in etcd (a member the test starts
//! on loopback), under upstream's `/registry/...` keys, with resourceVersions that are etcd's
//! revisions, and survives the API server's crash.

use std::process::Command;
use std::time::Duration;

use skiff_store::etcd::testing::LocalCluster;

use crate::harness::{KUBECTL_133 as K, Server, free_port, wait_for};

fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl").env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoint}")).args(args).output().expect("etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_server_on_etcd_keeps_the_cluster_state_there() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalCluster::start(dir.path(), 1);
    let ep = etcd.clients[0].clone();
    wait_for("etcd healthy", Duration::from_secs(30), || {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args(["endpoint", "health"])
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    });
    let data = dir.path().join("skiff");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let args = ["--datastore-endpoint", ep.as_str(), "--disable-scheduler", "--disable-controller-manager"];
    let mut s = Server::spawn(&data, port, &args);

    s.ok(K, &["create", "configmap", "c1", "--from-literal=a=b"]);
    let rv: i64 = s.ok(K, &["get", "configmap", "c1", "-o", "jsonpath={.metadata.resourceVersion}"]).parse().unwrap();
    let keys = etcdctl(&ep, &["get", "--prefix", "/registry/configmaps/default/", "--keys-only"]);
    assert!(keys.lines().any(|l| l == "/registry/configmaps/default/c1"), "{keys}");
    let kv: serde_json::Value = serde_json::from_str(&etcdctl(&ep, &["get", "/registry/configmaps/default/c1", "-w", "json"])).unwrap();
    assert_eq!(kv["kvs"][0]["mod_revision"].as_i64(), Some(rv), "resourceVersion is etcd's revision: {kv}");
    assert!(!data.join("db").exists(), "nothing in the embedded store");

    // The API server crashes; a new one on the same etcd serves the same objects and versions.
    s.kill();
    let s = Server::spawn(&data, port, &args);
    assert_eq!(s.ok(K, &["get", "configmap", "c1", "-o", "jsonpath={.metadata.resourceVersion} {.data.a}"]), format!("{rv} b"));
    s.ok(K, &["create", "configmap", "c2", "--from-literal=x=y"]);
    let rv2: i64 = s.ok(K, &["get", "configmap", "c2", "-o", "jsonpath={.metadata.resourceVersion}"]).parse().unwrap();
    assert!(rv2 > rv, "{rv2} after {rv}");
    let listed = s.ok(K, &["get", "configmaps", "-o", "name"]);
    assert!(listed.contains("configmap/c1") && listed.contains("configmap/c2"), "{listed}");
    // A watch resumes from a resourceVersion this server has seen (older ones are 410 Gone, as
    // upstream's watch cache answers).
    s.ok(K, &["create", "configmap", "c3", "--from-literal=x=z"]);
    let url = format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv2}&timeoutSeconds=2");
    let events: Vec<serde_json::Value> = s.ok(K, &["get", "--raw", &url]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(&str, &str)> =
        events.iter().map(|e| (e["type"].as_str().unwrap(), e["object"]["metadata"]["name"].as_str().unwrap())).collect();
    assert_eq!(seen, [("ADDED", "c3")]);
}
