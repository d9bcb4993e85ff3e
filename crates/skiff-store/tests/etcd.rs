//! The conformance suite against a real 3-member etcd cluster (Debian's etcd-server, started here
//! on loopback ports with data under a temp dir, stopped by PID), each check in a fresh key
//! prefix of the shared cluster.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use skiff_store::Store;
use skiff_store::etcd::{EtcdOptions, EtcdStore};

struct Etcd {
    members: Vec<Child>,
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_cluster(n: usize) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
        members.push(
            Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new", "--initial-cluster-token", "skiff-test"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (scripts/install-deps.sh installs etcd-server)"),
        );
    }
    let clients = ports.iter().map(|(c, _)| format!("http://127.0.0.1:{c}")).collect();
    Etcd { members, clients, _dir: dir }
}

async fn connect(e: &Etcd, prefix: &str) -> EtcdStore {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let opts = EtcdOptions { endpoints: e.clients.clone(), prefix: prefix.into(), connect_timeout: Some(Duration::from_secs(2)) };
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
    let e = start_cluster(3);
    connect(&e, "/warmup").await;
    let n = AtomicUsize::new(0);
    skiff_store::conformance::run_all(|| {
        let prefix = format!("/check-{}", n.fetch_add(1, Ordering::SeqCst));
        let e = &e;
        async move { Arc::new(connect(e, &prefix).await) as Arc<dyn Store> }
    })
    .await;
}
