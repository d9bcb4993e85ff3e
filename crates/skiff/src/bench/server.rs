//! The `skiff server` child process a benchmark drives.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Server {
    /// Starts the current binary as `skiff server` on loopback with `extra` flags.
    pub fn start(dir: PathBuf, extra: &[&str]) -> anyhow::Result<Server> {
        let port = free_port()?;
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(std::env::current_exe()?)
            .args(["server", "--data-dir"])
            .arg(&dir)
            .args(["--secure-port", &port.to_string(), "--bind-address", "127.0.0.1", "--disable-agent"])
            .args(extra)
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("kubeconfig.yaml").exists() {
            anyhow::ensure!(Instant::now() < deadline, "skiff server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server { child, dir, port })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
