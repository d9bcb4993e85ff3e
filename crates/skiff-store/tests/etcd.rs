//! The conformance suite against a real 3-member etcd cluster (Debian's etcd-server on loopback
//! ports, data under a temp dir), each check in a fresh key prefix of the shared cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use skiff_store::Store;
use skiff_store::etcd::testing::LocalCluster;
use skiff_store::etcd::{EtcdOptions, EtcdStore};

async fn connect(e: &LocalCluster, prefix: &str) -> EtcdStore {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let opts = EtcdOptions {
            endpoints: e.clients.clone(),
            prefix: prefix.into(),
            connect_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        if let Ok(s) = EtcdStore::connect(opts).await
            && s.current_revision().await.is_ok()
        {
            return s;
        }
        assert!(Instant::now() < deadline, "etcd cluster healthy within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let e = LocalCluster::start(dir.path(), 3);
    connect(&e, "/warmup").await;
    let n = AtomicUsize::new(0);
    skiff_store::conformance::run_all(|| {
        let prefix = format!("/check-{}", n.fetch_add(1, Ordering::SeqCst));
        let e = &e;
        async move { Arc::new(connect(e, &prefix).await) as Arc<dyn Store> }
    })
    .await;
}
