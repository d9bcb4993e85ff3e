//! Crash safety: a create acknowledged with 201 is durable. Concurrent creators run against the real
//! server, which is SIGKILLed at a random moment; after every restart on the same data dir, every
//! acknowledged object of every round so far must be there, and the revision must not go back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use crate::harness::{Server, free_port};

const ROUNDS: usize = 30;
const CREATORS: usize = 8;
const LABEL: &str = "skiff-test=crash";

struct Acked {
    name: String,
    rv: u64,
}

/// Creates configmaps until the first error (the kill); returns the acknowledged ones and any
/// error that was not the connection going away.
async fn creator(api: Api<ConfigMap>, round: usize, task: usize) -> (Vec<Acked>, Option<String>) {
    let mut acked = Vec::new();
    for i in 0.. {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("crash-r{round}-t{task}-{i}")),
                labels: Some([("skiff-test".to_string(), "crash".to_string())].into()),
                ..Default::default()
            },
            data: Some([("payload".to_string(), "x".repeat(256))].into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &cm).await {
            Ok(created) => {
                let rv = created.metadata.resource_version.as_deref().and_then(|rv| rv.parse().ok()).unwrap_or(0);
                acked.push(Acked { name: created.metadata.name.unwrap_or_default(), rv });
            }
            // An answer from the server (rather than a dead connection) means it misbehaved before
            // it was killed.
            Err(kube::Error::Api(status)) => return (acked, Some(format!("{status:?}"))),
            Err(_) => return (acked, None),
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_creates_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = Instant::now();
    let mut server = Server::start_in(dir, free_port());
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut max_acked_rv = 0u64;

    for round in 0..ROUNDS {
        let client = server.kube_client().await;
        let tasks: Vec<_> = (0..CREATORS).map(|t| tokio::spawn(creator(Api::namespaced(client.clone(), "default"), round, t))).collect();
        tokio::time::sleep(Duration::from_millis(rand::random_range(50..=400))).await;
        server.kill();

        let mut round_acked = 0;
        for task in tasks {
            let (done, unexpected) = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a creator did not notice the kill within 20s"))
                .unwrap();
            assert!(unexpected.is_none(), "round {round}: the server answered a create with an error: {}", unexpected.unwrap());
            round_acked += done.len();
            for a in done {
                max_acked_rv = max_acked_rv.max(a.rv);
                acked.insert(a.name);
            }
        }

        // A store that does not open cleanly fails here: start_in panics when the server exits.
        server = Server::start_in(dir, free_port());
        let api: Api<ConfigMap> = Api::namespaced(server.kube_client().await, "default");
        let list = api.list(&ListParams::default().labels(LABEL)).await.unwrap_or_else(|e| {
            panic!("round {round}: list after restart failed: {e}\n{}", server.logs());
        });
        let present: BTreeSet<String> = list.items.into_iter().filter_map(|cm| cm.metadata.name).collect();
        let lost: Vec<&String> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged configmap(s) lost after SIGKILL (of {} acknowledged, {round_acked} this round): {:?}\n--- server log ---\n{}",
            lost.len(),
            acked.len(),
            lost.iter().take(20).collect::<Vec<_>>(),
            server.logs()
        );
        let list_rv: u64 = list.metadata.resource_version.as_deref().and_then(|rv| rv.parse().ok()).unwrap_or(0);
        assert!(
            list_rv >= max_acked_rv,
            "round {round}: revision went back after restart: list at {list_rv}, acknowledged up to {max_acked_rv}"
        );
        let logs = server.logs();
        let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "round {round}: the restarted server logged errors:\n{}", errors.join("\n"));
    }

    // Guards against a test that passes because nothing was ever acknowledged.
    assert!(acked.len() >= ROUNDS * CREATORS, "only {} creates were acknowledged in {ROUNDS} rounds", acked.len());
    server.stop();
    eprintln!("crash: {ROUNDS} rounds, {} acknowledged creates, {:?}", acked.len(), started.elapsed());
}
