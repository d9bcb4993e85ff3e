//! containerd as the node's container runtime: skiff writes its configuration under the data dir,
//! starts it from PATH, restarts it when it dies, and loads the built-in pause image into it.
//!
//! Pods survive a containerd restart (their shims are separate processes), so supervising it
//! this way costs nothing to running workloads.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// The containerd namespace the CRI plugin keeps Kubernetes' images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Where one node's containerd keeps everything (all below the agent's data dir).
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub registry_dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path, cni_bin_dir: &Path) -> Layout {
        let base = data_dir.join("containerd");
        Layout {
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("containerd.sock"),
            config: base.join("config.toml"),
            cni_conf_dir: data_dir.join("cni").join("net.d"),
            cni_bin_dir: cni_bin_dir.to_path_buf(),
            registry_dir: base.join("certs.d"),
            log: base.join("containerd.log"),
            pid_file: base.join("containerd.pid"),
        }
    }

    /// The containerd configuration (version 2). `restrict_oom_score_adj` is what lets sandboxes
    /// start where the bounding set lacks CAP_SYS_RESOURCE (runc cannot lower oom_score_adj);
    /// the registry `config_path` is where per-registry `hosts.toml` files go.
    pub fn config_toml(&self) -> String {
        let q = |p: &Path| toml_string(&p.display().to_string());
        format!(
            r#"version = 2
root = {root}
state = {state}

[grpc]
  address = {socket}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {registry}
"#,
            root = q(&self.root),
            state = q(&self.state),
            socket = q(&self.socket),
            pause = toml_string(crate::pause::IMAGE),
            cni_bin = q(&self.cni_bin_dir),
            cni_conf = q(&self.cni_conf_dir),
            registry = q(&self.registry_dir),
        )
    }
}

/// A TOML basic string (paths may hold quotes or backslashes in principle).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the configuration and the directories it names.
pub fn prepare(layout: &Layout) -> anyhow::Result<()> {
    for d in [&layout.root, &layout.state, &layout.cni_conf_dir, &layout.registry_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(&layout.config, layout.config_toml()).with_context(|| format!("writing {}", layout.config.display()))?;
    Ok(())
}

/// Stops a containerd that an earlier agent started and left behind (the agent was killed): two
/// containerds on one root would fight over its database. Pods do not notice; their shims are
/// separate processes.
fn stop_leftover(layout: &Layout) {
    let Some(pid) = std::fs::read_to_string(&layout.pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) else { return };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&*layout.config.to_string_lossy());
    if !ours {
        return;
    }
    tracing::info!(pid, "stopping the containerd an earlier agent left running");
    // SAFETY: signalling a PID we verified runs containerd with our configuration.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
        // A zombie (exited, not yet reaped by its new parent) no longer holds anything.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn spawn(layout: &Layout) -> anyhow::Result<Child> {
    stop_leftover(layout);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&layout.log)?;
    let _ = std::fs::remove_file(&layout.socket);
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&layout.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // A killed agent takes its containerd with it; the pods' shims live on.
        .kill_on_drop(true)
        .spawn()
        .context("starting containerd (is it installed and on PATH?)")?;
    if let Some(pid) = child.id() {
        std::fs::write(&layout.pid_file, pid.to_string())?;
    }
    Ok(child)
}

/// Starts containerd, waits for its socket, and keeps restarting it (with a short backoff) for
/// as long as the returned future runs. Returns an error only when it cannot start at all.
pub async fn start_supervised(layout: Layout) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    prepare(&layout)?;
    let mut child = spawn(&layout)?;
    wait_socket(&layout.socket, &mut child, &layout.log).await?;
    Ok(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let status = child.wait().await;
            tracing::warn!(?status, log = %layout.log.display(), "containerd exited; restarting it");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            match spawn(&layout) {
                Ok(c) => {
                    child = c;
                    if wait_socket(&layout.socket, &mut child, &layout.log).await.is_ok() {
                        backoff = Duration::from_millis(200);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "restarting containerd failed");
                    return;
                }
            }
        }
    }))
}

async fn wait_socket(socket: &Path, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("containerd exited at start ({status}); see {}", log.display());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("containerd's socket {} did not answer in 30 s; see {}", socket.display(), log.display());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Makes sure the built-in pause image is in containerd (imports it when the CRI does not know it).
pub async fn ensure_pause(cri: &crate::cri::Cri, layout: &Layout) -> anyhow::Result<()> {
    if cri.image_present(crate::pause::IMAGE).await? {
        return Ok(());
    }
    let path = layout.state.join("pause.tar");
    std::fs::write(&path, crate::pause::docker_archive()?)?;
    crate::import::import_file(&layout.socket, &path, |_, _| {}).await?;
    let _ = std::fs::remove_file(&path);
    if !cri.image_present(crate::pause::IMAGE).await? {
        anyhow::bail!("the pause image was imported but the CRI does not list {}", crate::pause::IMAGE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_every_path_and_the_oom_setting() {
        let l = Layout::new(Path::new("/var/lib/skiff/agent"), Path::new("/usr/lib/cni"));
        let c = l.config_toml();
        assert!(c.contains("restrict_oom_score_adj = true"));
        assert!(c.contains("address = \"/var/lib/skiff/agent/containerd/containerd.sock\""));
        assert!(c.contains("conf_dir = \"/var/lib/skiff/agent/cni/net.d\""));
        assert!(c.contains(crate::pause::IMAGE));
        assert_eq!(toml_string("a\"b\\"), "\"a\\\"b\\\\\"");
    }
}
