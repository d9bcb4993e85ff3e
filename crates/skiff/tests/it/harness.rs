//! Starts the real `skiff server` binary on a free port with a temp data dir, and runs the real
//! kubectl against it. The process is stopped by the PID we started (never by name), also when a
//! test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KUBECTL_127: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.27";
pub const KUBECTL_130: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.30";
pub const KUBECTL_133: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub kubeconfig: PathBuf,
    pub port: u16,
    log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, free_port());
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server with extra flags (e.g. `--disable-scheduler`).
    pub fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server::spawn(&dir, free_port(), extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts (or restarts) a server on an existing data dir.
    pub fn start_in(dir: &Path, port: u16) -> Server {
        Server::spawn(dir, port, &[])
    }

    pub fn spawn(dir: &Path, port: u16, extra: &[&str]) -> Server {
        let log = dir.join(format!("server-{}.log", rand_u64()));
        let kubeconfig = dir.join("kubeconfig.yaml");
        let _ = std::fs::remove_file(&kubeconfig);
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["server", "--data-dir"])
            .arg(dir)
            .args(["--secure-port", &port.to_string(), "--bind-address", "127.0.0.1", "--disable-agent"])
            .args(extra)
            .env("SKIFF_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start skiff server");
        let mut s = Server { child: Some(child), data_dir: dir.to_path_buf(), _tmp: None, kubeconfig, port, log };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("skiff server exited early ({status}):\n{}", self.logs());
            }
            if self.kubeconfig.exists() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "server not ready in time:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// True while the process we started has not exited (a crash leaves a zombie until reaped).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), 15);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kubectl(&self, bin: &str, args: &[&str]) -> Output {
        self.kubectl_stdin(bin, args, None)
    }

    pub fn kubectl_stdin(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", self.data_dir.join(format!("kcache-{}", bin.rsplit('.').next().unwrap_or("x"))));
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// kube-rs configuration from the admin kubeconfig the server wrote.
    pub async fn kube_config(&self) -> kube::Config {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("kubeconfig to kube::Config")
    }

    pub async fn kube_client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config().await).expect("build kube client")
    }

    /// Runs kubectl and returns stdout, panicking with stderr and server logs on failure.
    pub fn ok(&self, bin: &str, args: &[&str]) -> String {
        let out = self.kubectl(bin, args);
        if !out.status.success() {
            panic!(
                "{bin} {args:?} failed: {}\nstdout: {}\n--- server log tail ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout),
                tail(&self.logs(), 40)
            );
        }
        strip_ansi(&String::from_utf8_lossy(&out.stdout))
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, bin: &str, args: &[&str]) -> String {
        let out = self.kubectl(bin, args);
        assert!(!out.status.success(), "{bin} {args:?} unexpectedly succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Polls `f` every 100 ms until it returns a value, panicking after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Another `skiff` process (scheduler, sim) against a test server, with its stderr in the server's
/// data dir; killed by the PID we started when dropped, also when the test panics.
pub struct SkiffProc(pub Child);

impl SkiffProc {
    pub fn start(s: &Server, args: &[&str], log: &str) -> SkiffProc {
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(args)
            .env("SKIFF_LOG", "info")
            .stderr(std::fs::File::create(s.data_dir.join(log)).unwrap())
            .spawn()
            .expect("start skiff");
        SkiffProc(child)
    }
}

impl Drop for SkiffProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Drops terminal colour sequences (`ESC [ ... m`) that some kubectl commands print.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
