//! A sealed place for benchmarks that run real containers: a network namespace (no packet leaves
//! the machine), a PID + mount namespace held by a reaper loop as PID 1 (containerd's /run is
//! private; every process dies with it), a cgroup root, and a docker-registry inside the network
//! namespace serving a busybox image built from Debian's busybox-static. The end-to-end tests
//! build the same thing in their harness (tests/it/netns.rs); a test crate cannot share code
//! with a binary crate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const NODE_IP: &str = "10.200.0.1";
pub const BUSYBOX: &str = "127.0.0.1:5000/busybox:1";

pub struct Sandbox {
    pub ns: String,
    pub dir: PathBuf,
    init: Option<Child>,
    registry: Option<Child>,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Sandbox {
    pub fn create(dir: &Path) -> anyhow::Result<Sandbox> {
        let id = format!("{:08x}", rand::random::<u32>());
        let ns = format!("skiff-b{id}");
        std::fs::create_dir_all(dir)?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        let mut s = Sandbox { ns: ns.clone(), dir: dir.to_path_buf(), init: None, registry: None };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "skv0", "type", "veth", "peer", "name", "skv1"],
            vec!["addr", "add", "10.200.0.1/24", "dev", "skv0"],
            vec!["link", "set", "skv0", "up"],
            vec!["link", "set", "skv1", "up"],
        ] {
            run(Command::new("ip").args(["netns", "exec", &ns, "ip"]).args(&args))?;
        }
        let mut init = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["--", "unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && echo ready && while true; do sleep 1 & wait; done")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("nsenter/unshare")?;
        {
            use std::io::Read;
            let mut buf = [0u8; 6];
            init.stdout.as_mut().expect("piped").read_exact(&mut buf).context("the sandbox's PID 1 did not start")?;
        }
        s.init = Some(init);
        s.start_registry()?;
        Ok(s)
    }

    fn pid1(&self) -> anyhow::Result<u32> {
        let pid = self.init.as_ref().expect("started").id();
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
        kids.split_whitespace().next().and_then(|p| p.parse().ok()).context("the sandbox's PID 1")
    }

    /// A command in all of the sandbox's namespaces.
    pub fn enter(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.pid1()?.to_string(), "--mount", "--pid", "--net", "--"]);
        Ok(cmd)
    }

    /// A command in the sandbox's network namespace only.
    pub fn in_net(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns)).arg("--").arg(program);
        cmd
    }

    fn start_registry(&mut self) -> anyhow::Result<()> {
        let cfg = self.dir.join("registry.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
                self.dir.join("registry").display()
            ),
        )?;
        let child = self
            .in_net("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("docker-registry (scripts/install-deps.sh installs it)")?;
        self.registry = Some(child);
        let layout = busybox_layout(&self.dir)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let img = format!("oci:{}:bb", layout.display());
            let ok = self
                .in_net("skopeo")
                .args(["copy", "--dest-tls-verify=false", &img, &format!("docker://{BUSYBOX}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pushing the busybox image to the sandbox registry failed");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A busybox OCI layout (busybox-static and one symlink per applet).
fn busybox_layout(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("busybox-rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for d in ["tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("busybox-static")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    let layout = dir.join("busybox-oci");
    let img = format!("{}:bb", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &img]))?;
    run(Command::new("umoci").args(["insert", "--image", &img]).arg(&rootfs).arg("/"))?;
    run(Command::new("umoci").args(["config", "--image", &img, "--config.cmd", "sh", "--config.env", "PATH=/bin"]))?;
    Ok(layout)
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut r) = self.registry.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        if let Some(mut i) = self.init.take() {
            let _ = i.kill();
            let _ = i.wait();
        }
        // The cgroup root named after the namespace, deepest first, once its processes are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !skiff_kubelet::cgroups::remove(&format!("/{}", self.ns)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
