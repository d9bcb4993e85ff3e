//! A skiff cluster that runs real containers, sealed off from the machine: its own network
//! namespace (so no packet leaves this host), mount namespace (containerd's /run and the pods'
//! mounts), PID namespace (every container and shim dies with it) and cgroup root. A local
//! docker-registry inside the namespace serves a busybox image built from Debian's
//! busybox-static, so pulls go through CRI for real.
//!
//! Processes are stopped by the PIDs this harness started; the namespace, cgroups and data dir
//! are removed on drop, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::{rand_u64, strip_ansi, tail, wait_for};

pub const NODE_IP: &str = "10.200.0.1";
pub const BUSYBOX: &str = "127.0.0.1:5000/busybox:1";
const PORT: u16 = 6443;

/// The OCI layout of the test busybox image, built once per test process under cargo's
/// per-target temp dir (so nothing is left in /tmp).
pub fn busybox_layout() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("busybox-image-{}", std::process::id()));
        // Layouts of earlier test runs are of no use (the pid differs).
        for e in std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("busybox-image-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["tmp", "etc", "var/www", "root", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static installed (scripts/install-deps.sh)");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let layout = dir.join("oci");
        let img = format!("{}:bb", layout.display());
        run_ok(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
        run_ok(Command::new("umoci").args(["new", "--image", &img]));
        run_ok(Command::new("umoci").args(["insert", "--image", &img]).arg(&rootfs).arg("/"));
        run_ok(Command::new("umoci").args(["config", "--image", &img, "--config.cmd", "sh", "--config.env", "PATH=/bin"]));
        layout
    })
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// One container cluster at a time: each runs containerd, runc and CNI work on a 2-core machine,
/// and several at once starve the timing-sensitive control-plane tests running beside them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    pub ns: String,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// `unshare`, whose child is PID 1 of the cluster's PID namespace (a reaper loop).
    init: Option<Child>,
    init_pid: u32,
    server: Option<Child>,
    agent: Option<Child>,
    registry: Option<Child>,
    server_logs: u32,
    extra: Vec<String>,
    /// Released after `drop` has cleaned up (fields drop after `Drop::drop`).
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// PID 1 of a node: reaps whatever gets re-parented to it (containerd shims) and holds the
/// mount namespace with a private /run. Returns unshare and its PID.
fn spawn_init(ns: &str) -> (Child, u32) {
    let mut init = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--", "unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && echo ready && while true; do sleep 1 & wait; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsenter/unshare");
    use std::io::Read;
    let mut buf = [0u8; 6];
    init.stdout.as_mut().unwrap().read_exact(&mut buf).expect("node init ready");
    let pid = init.id();
    (init, pid)
}

/// The PID (in our namespace) of the reaper loop under unshare `init_pid`, PID 1 inside.
fn pid1_of(init_pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{init_pid}/task/{init_pid}/children")).unwrap_or_default();
    children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("the node's PID 1")
}

fn enter_node(init_pid: u32) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.args(["--target", &pid1_of(init_pid).to_string(), "--mount", "--pid", "--net", "--"]);
    cmd
}

/// docker-registry on 127.0.0.1:5000 inside `ns`, serving `store`.
fn spawn_registry(ns: &str, dir: &Path, store: &Path) -> Child {
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            store.display()
        ),
    )
    .unwrap();
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--", "docker-registry", "serve"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .expect("docker-registry (scripts/install-deps.sh)")
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Cluster {
        // A test that panicked while holding the turn still cleaned up in its Drop.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("{:08x}", rand_u64() as u32);
        let ns = format!("skiff-t{id}");
        let dir = std::env::temp_dir().join(format!("skiff-e2e-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        run_ok(Command::new("ip").args(["netns", "add", &ns]));
        let mut c = Cluster {
            ns: ns.clone(),
            kubeconfig: dir.join("kubeconfig.yaml"),
            dir,
            init: None,
            init_pid: 0,
            server: None,
            agent: None,
            registry: None,
            server_logs: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _turn: turn,
        };
        // Loopback, and a veth pair so the node has a real InternalIP.
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "skv0", "type", "veth", "peer", "name", "skv1"],
            vec!["addr", "add", &format!("{NODE_IP}/24"), "dev", "skv0"],
            vec!["link", "set", "skv0", "up"],
            vec!["link", "set", "skv1", "up"],
        ] {
            run_ok(Command::new("ip").args(["netns", "exec", &ns, "ip"]).args(&args));
        }
        let (init, pid) = spawn_init(&ns);
        c.init_pid = pid;
        c.init = Some(init);
        c.start_registry();
        c.start_server();
        c
    }

    fn enter(&self) -> Command {
        enter_node(self.init_pid)
    }

    fn start_registry(&mut self) {
        let store = self.dir.join("registry");
        let child = spawn_registry(&self.ns, &self.dir, &store);
        self.registry = Some(child);
        let img = format!("oci:{}:bb", busybox_layout().display());
        wait_for("the local registry", Duration::from_secs(20), || {
            let out = self.in_ns(&["skopeo", "copy", "--dest-tls-verify=false", &img, &format!("docker://{BUSYBOX}")]);
            out.status.success().then_some(())
        });
    }

    /// The node's resolver configuration: the host's would send forwarded DNS queries off the
    /// machine, so the cluster's node resolver is loopback (nothing listens: forwarded names fail).
    pub fn resolv_conf(&self) -> PathBuf {
        let p = self.dir.join("resolv.conf");
        if !p.exists() {
            std::fs::write(&p, "nameserver 127.0.0.1\nsearch node.test\n").unwrap();
        }
        p
    }

    /// Starts (or restarts) `skiff server` with its embedded agent inside the namespaces.
    pub fn start_server(&mut self) {
        self.server_logs += 1;
        let log = self.dir.join(format!("server-{}.log", self.server_logs));
        let _ = std::fs::remove_file(&self.kubeconfig);
        let cgroup_root = format!("/{}", self.ns);
        let mut cmd = self.enter();
        cmd.arg(env!("CARGO_BIN_EXE_skiff"))
            .args(["server", "--data-dir"])
            .arg(&self.dir)
            .args(["--secure-port", &PORT.to_string(), "--bind-address", "0.0.0.0", "--advertise-address", NODE_IP])
            .args(["--node-name", "node1", "--cgroup-root", &cgroup_root])
            .arg("--resolv-conf")
            .arg(self.resolv_conf())
            .args(&self.extra)
            .env("SKIFF_LOG", "info,skiff_kubelet=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        self.server = Some(cmd.spawn().expect("start skiff server"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("skiff server exited early ({st}):\n{}", self.logs());
            }
            if self.kubeconfig.exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz"]);
                if out.status.success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server not ready:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL of the server (API server, controllers and agent), as a crash. The containers,
    /// their shims and containerd outlive it.
    pub fn kill_server(&mut self) {
        kill_entered(self.server.take());
    }

    /// Waits for the agent to exit by itself (e.g. a failed join); its exit status.
    pub fn wait_agent(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.agent.as_mut()?.try_wait().ok()? {
                self.agent = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn kill_agent(&mut self) {
        kill_entered(self.agent.take());
    }
}

/// Kills a process started through `nsenter --pid` (which forks it as its child) and nsenter.
fn kill_entered(child: Option<Child>) {
    if let Some(mut s) = child {
        let kids = std::fs::read_to_string(format!("/proc/{}/task/{}/children", s.id(), s.id())).unwrap_or_default();
        for k in kids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", k]).status();
        }
        let _ = s.kill();
        let _ = s.wait();
    }
}

impl Cluster {
    /// A `skiff agent` of its own (for a server started with `--disable-agent`), with its data
    /// under `agent/` and static pods from `agent/manifests/`.
    pub fn start_agent(&mut self) {
        let kc = self.kubeconfig.display().to_string();
        self.start_agent_with(&["--kubeconfig", &kc]);
    }

    /// The agent with its credentials flags (`--kubeconfig F`, or `--server URL --token-file F`);
    /// its stderr goes to `agent.log` (appended across starts).
    pub fn start_agent_with(&mut self, creds: &[&str]) {
        let cgroup_root = format!("/{}", self.ns);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).unwrap();
        let mut cmd = self.enter();
        cmd.arg(env!("CARGO_BIN_EXE_skiff"))
            .arg("agent")
            .args(creds)
            .arg("--data-dir")
            .arg(self.dir.join("agent"))
            .args(["--node-name", "node1", "--node-ip", NODE_IP, "--cgroup-root", &cgroup_root])
            .arg("--resolv-conf")
            .arg(self.resolv_conf())
            .env("SKIFF_LOG", "info,skiff_kubelet=debug")
            .stdout(Stdio::null())
            .stderr(log);
        self.agent = Some(cmd.spawn().expect("start skiff agent"));
    }

    pub fn agent_logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("server-{}.log", self.server_logs))).unwrap_or_default()
    }

    /// The log of the n-th server start (1-based).
    pub fn logs_of(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("server-{n}.log"))).unwrap_or_default()
    }

    /// A command inside the cluster's network namespace (only).
    pub fn in_ns(&self, argv: &[&str]) -> Output {
        Command::new("nsenter").arg(format!("--net=/run/netns/{}", self.ns)).arg("--").args(argv).stdin(Stdio::null()).output().unwrap()
    }

    pub fn kubectl_with(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", self.dir.join(format!("kcache-{}", bin.rsplit('.').next().unwrap_or("x"))))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(crate::harness::KUBECTL_133, args, None)
    }

    /// kubectl that must succeed; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        if !out.status.success() {
            panic!(
                "kubectl {args:?} failed: {}\n--- server log tail ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&self.logs(), 60)
            );
        }
        strip_ansi(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_with(crate::harness::KUBECTL_133, &["apply", "-f", "-"], Some(yaml));
        assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A jsonpath of one object, or "" when it does not exist (yet).
    /// `what` may carry flags after the object (`pod/x -n kube-system`).
    pub fn jsonpath(&self, what: &str, path: &str) -> String {
        let jp = format!("jsonpath={path}");
        let mut args = vec!["get"];
        args.extend(what.split_whitespace());
        args.extend(["-o", &jp]);
        let out = self.kubectl(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `jsonpath` of `what` satisfies `pred`, with the cluster's logs on timeout.
    pub fn wait_jsonpath(&self, what: &str, path: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.jsonpath(what, path);
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                let mut args = vec!["describe"];
                args.extend(what.split_whitespace());
                let describe = String::from_utf8_lossy(&self.kubectl(&args).stdout).into_owned();
                panic!(
                    "timed out waiting on {what} {path} (last {v:?})\n{describe}\n--- server log tail ---\n{}\n--- agent log tail ---\n{}",
                    tail(&self.logs(), 60),
                    tail(&self.agent_logs(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An HTTP GET from inside the namespace (busybox wget; `timeout` because its -T crashes).
    pub fn http_get(&self, url: &str) -> Option<String> {
        let out = self.in_ns(&["timeout", "5", "/bin/busybox", "wget", "-qO-", url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_server();
        self.kill_agent();
        if let Some(mut r) = self.registry.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        // Killing unshare takes its child, PID 1 of the cluster, and with it every process in
        // the PID namespace (containerd, shims, containers); the mount namespace goes with them.
        if let Some(mut i) = self.init.take() {
            let _ = i.kill();
            let _ = i.wait();
        }
        let cgroup = self.ns.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if skiff_kubelet::cgroups::remove(&format!("/{cgroup}")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        if std::env::var_os("SKIFF_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The second node's address (the far end of the cluster's veth pair).
pub const PEER_IP: &str = "10.200.0.2";

/// A second node: `skiff agent` joined with the server's token, in a network namespace of its
/// own that the cluster's veth pair connects to, with its own PID/mount namespace (containerd's
/// fixed /run paths), containerd, registry (serving the cluster's image store) and cgroup root.
pub struct Peer {
    pub ns: String,
    pub dir: PathBuf,
    init: Option<Child>,
    init_pid: u32,
    registry: Option<Child>,
    agent: Option<Child>,
}

impl Cluster {
    /// Starts `node2` at PEER_IP, joined to this cluster's server.
    pub fn add_peer(&self) -> Peer {
        let ns = format!("{}-b", self.ns);
        let dir = self.dir.join("node2");
        std::fs::create_dir_all(&dir).unwrap();
        run_ok(Command::new("ip").args(["netns", "add", &ns]));
        let mut p = Peer { ns: ns.clone(), dir, init: None, init_pid: 0, registry: None, agent: None };
        run_ok(Command::new("ip").args(["netns", "exec", &self.ns, "ip", "link", "set", "skv1", "netns", &ns]));
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{PEER_IP}/24"), "dev", "skv1"],
            vec!["link", "set", "skv1", "up"],
        ] {
            run_ok(Command::new("ip").args(["netns", "exec", &ns, "ip"]).args(&args));
        }
        let (init, pid) = spawn_init(&ns);
        p.init = Some(init);
        p.init_pid = pid;
        p.registry = Some(spawn_registry(&ns, &p.dir, &self.dir.join("registry")));
        let log = std::fs::File::create(p.dir.join("agent.log")).unwrap();
        let server = format!("https://{NODE_IP}:{PORT}");
        let mut cmd = enter_node(p.init_pid);
        cmd.arg(env!("CARGO_BIN_EXE_skiff"))
            .args(["agent", "--server", &server, "--token-file"])
            .arg(self.dir.join("token"))
            .arg("--data-dir")
            .arg(p.dir.join("agent"))
            .args(["--node-name", "node2", "--node-ip", PEER_IP, "--cgroup-root", &format!("/{ns}")])
            .arg("--resolv-conf")
            .arg(self.resolv_conf())
            .env("SKIFF_LOG", "info,skiff_kubelet=debug")
            .stdout(Stdio::null())
            .stderr(log);
        p.agent = Some(cmd.spawn().expect("start the second agent"));
        p
    }
}

impl Peer {
    pub fn in_ns(&self, argv: &[&str]) -> Output {
        enter_node(self.init_pid).args(argv).output().unwrap()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn http_get(&self, url: &str) -> Option<String> {
        let out = self.in_ns(&["timeout", "5", "/bin/busybox", "wget", "-qO-", url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        kill_entered(self.agent.take());
        for c in [self.registry.take(), self.init.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if skiff_kubelet::cgroups::remove(&format!("/{}", self.ns)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
