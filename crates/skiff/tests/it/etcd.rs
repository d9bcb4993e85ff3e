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

/// The member etcd reports as leader (index into `clients`).
fn leader(etcd: &LocalCluster) -> usize {
    let status: serde_json::Value = serde_json::from_str(&etcdctl(&etcd.clients.join(","), &["endpoint", "status", "-w", "json"])).unwrap();
    let rows = status.as_array().unwrap();
    let leader = rows[0]["Status"]["leader"].as_u64().unwrap();
    let ep = rows.iter().find(|r| r["Status"]["header"]["member_id"].as_u64() == Some(leader)).unwrap()["Endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    etcd.clients.iter().position(|c| *c == ep).unwrap()
}

/// Three etcd members under one API server: creates keep succeeding through the loss of the
/// etcd leader (after a short gap, the client retrying), nothing acknowledged is lost; with two
/// of three members down writes fail with a Status instead of hanging, and recover when a
/// member returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_the_etcd_leader_and_fail_cleanly_without_quorum() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let mut etcd = LocalCluster::start(dir.path(), 3);
    let all = etcd.clients.join(",");
    wait_for("etcd healthy", Duration::from_secs(30), || {
        let ok =
            Command::new("etcdctl").env("ETCDCTL_API", "3").arg(format!("--endpoints={all}")).args(["endpoint", "health"]).output().ok()?;
        ok.status.success().then_some(())
    });
    let data = dir.path().join("skiff");
    std::fs::create_dir_all(&data).unwrap();
    let s = Server::spawn(&data, free_port(), &["--datastore-endpoint", &all, "--disable-scheduler", "--disable-controller-manager"]);
    let cms: Api<ConfigMap> = Api::namespaced(s.kube_client().await, "default");
    let cm = |i: usize| {
        serde_json::from_value::<ConfigMap>(serde_json::json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}}))
            .unwrap()
    };

    // A stream of creates; the leader dies a moment in.
    let (mut acknowledged, mut longest_gap, mut retries) = (Vec::new(), Duration::ZERO, 0);
    let mut last_ok = Instant::now();
    let mut killed = None;
    for i in 0..60 {
        if i == 20 {
            let l = leader(&etcd);
            etcd.kill(l);
            killed = Some(l);
            last_ok = Instant::now();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout(Duration::from_secs(1), cms.create(&PostParams::default(), &cm(i))).await {
                Ok(Ok(created)) => {
                    acknowledged.push(created.metadata.name.unwrap());
                    break;
                }
                // A create that failed may still have landed (the reply was lost): it exists.
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                    acknowledged.push(format!("cm-{i}"));
                    break;
                }
                other => {
                    eprintln!("create cm-{i} at {:?}: {other:?}", last_ok.elapsed());
                    retries += 1;
                    assert!(Instant::now() < deadline, "create cm-{i} kept failing for 20 s");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        longest_gap = longest_gap.max(last_ok.elapsed());
        last_ok = Instant::now();
    }
    eprintln!("etcd leader {killed:?} killed: longest gap between creates {longest_gap:?}, {retries} retries");
    assert!(longest_gap < Duration::from_secs(3), "writes resumed within 3 s: {longest_gap:?}");
    let names: Vec<String> = cms.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
    for n in &acknowledged {
        assert!(names.contains(n), "{n} acknowledged but lost");
    }
    assert_eq!(acknowledged.len(), 60);

    // Two of three down: no quorum. A write fails with a Status in bounded time.
    let second = (0..3).find(|i| Some(*i) != killed).unwrap();
    etcd.kill(second);
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(30), cms.create(&PostParams::default(), &cm(100))).await {
        Ok(Err(kube::Error::Api(e))) => assert!(e.code >= 500, "a server error without quorum: {e:?}"),
        other => panic!("expected a 5xx Status without quorum within 30 s, got {other:?} after {:?}", t.elapsed()),
    }
    eprintln!("write without quorum failed after {:?}", t.elapsed());
    // A member returns: writes work again.
    etcd.restart(second);
    wait_for("writes recover with quorum back", Duration::from_secs(30), || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(cms.create(&PostParams::default(), &cm(101)))).ok().map(|_| ())
    });
}

/// etcd over TLS with client-certificate authentication (`--datastore-cafile/-certfile/-keyfile`):
/// the server works through it, and without a client certificate it does not start, saying why.
#[test]
fn a_server_reaches_etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = skiff_pki::ClusterPki::load_or_create(
        &dir.path().join("etcd-pki"),
        &skiff_pki::PkiOptions { tls_sans: vec!["127.0.0.1".into()], service_ip: None },
    )
    .unwrap();
    let (cert, key) = pki.issue_client_cert("skiff-apiserver", &[], Duration::from_secs(3600)).unwrap();
    let (client_crt, client_key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::write(&client_crt, cert).unwrap();
    std::fs::write(&client_key, key).unwrap();
    let tls = skiff_store::etcd::testing::Tls { ca: pki.ca_cert_path(), cert: pki.serving_cert_path(), key: pki.serving_key_path() };
    let etcd = LocalCluster::start_with(dir.path(), 1, Some(&tls));
    let ep = etcd.clients[0].clone();
    assert!(ep.starts_with("https://"));
    let paths = |p: &std::path::Path| p.display().to_string();
    let (ca, crt, key) = (paths(&tls.ca), paths(&client_crt), paths(&client_key));
    wait_for("etcd healthy over TLS", Duration::from_secs(30), || {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([format!("--endpoints={ep}"), format!("--cacert={ca}"), format!("--cert={crt}"), format!("--key={key}")])
            .args(["endpoint", "health"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });

    // Without a client certificate etcd refuses the connection: the server exits naming etcd.
    let data = dir.path().join("skiff");
    std::fs::create_dir_all(&data).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--data-dir"])
        .arg(&data)
        .args(["--secure-port", &free_port().to_string(), "--bind-address", "127.0.0.1", "--disable-agent", "--datastore-endpoint", &ep])
        .args(["--datastore-cafile", &ca])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd at https://127.0.0.1"), "{err}");

    let s = Server::spawn(
        &data,
        free_port(),
        &["--datastore-endpoint", &ep, "--datastore-cafile", &ca, "--datastore-certfile", &crt, "--datastore-keyfile", &key],
    );
    s.ok(K, &["create", "configmap", "over-tls", "--from-literal=a=b"]);
    assert_eq!(s.ok(K, &["get", "configmap", "over-tls", "-o", "jsonpath={.data.a}"]), "b");
}
