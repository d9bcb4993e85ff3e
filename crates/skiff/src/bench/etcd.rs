//! The reference: Debian's etcd 3.4, one member on loopback, data on the same disk, driven with the
//! same create-if-absent transactions kube-apiserver sends it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

pub struct Etcd {
    child: Child,
    pub endpoint: String,
}

impl Etcd {
    pub async fn start(bin: &str, dir: &Path, client_port: u16, peer_port: u16) -> anyhow::Result<Etcd> {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(bin)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir)
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}"), "--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let etcd = Etcd { child, endpoint: format!("127.0.0.1:{client_port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect([etcd.endpoint.as_str()], None).await
                && c.status().await.is_ok()
            {
                return Ok(etcd);
            }
            anyhow::ensure!(Instant::now() < deadline, "etcd did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect([self.endpoint.as_str()], None).await?)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One create-if-absent, as kube-apiserver's etcd3 storage issues it.
pub async fn create(client: &mut Client, key: &str, value: &[u8]) -> anyhow::Result<()> {
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(key, value, None)]);
    let resp = client.txn(txn).await?;
    anyhow::ensure!(resp.succeeded(), "key {key} already existed");
    Ok(())
}
