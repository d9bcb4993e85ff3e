//! One pod's worker (upstream's pod worker + `SyncPod`): make the runtime match the spec, then
//! report what the runtime says. Each sync is idempotent and starts from the runtime's own
//! record (CRI lists filtered by the pod UID label), so a restarted agent picks up where the
//! last one stopped without restarting anything healthy.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::watch;

use super::env::{self, Runtime, Sources};
use super::probes::{self, Action, Kind};
use super::status::{self, ContainerView, is_exited, is_running};
use super::{Shared, images, spec, volumes};
use crate::cri::Cri;
use crate::cri::v1 as cri;
use crate::labels;

/// Upstream's CrashLoopBackOff and image pull backoff: 10 s doubling to 5 min, forgotten after
/// 10 min without trouble.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often a steady pod is looked at (exits, status) and its API-backed volumes refreshed.
const RESYNC: Duration = Duration::from_secs(1);
const VOLUME_REFRESH: Duration = Duration::from_secs(10);
/// Termination messages are capped as upstream's (4 KiB per container).
const MESSAGE_MAX: usize = 4096;

#[derive(Clone, Copy)]
struct Backoff {
    delay: Duration,
    at: Instant,
}

/// Upstream's flowcontrol.Backoff for one key: `Err(remaining)` while backing off; otherwise it
/// records an attempt now.
fn gate(map: &mut HashMap<String, Backoff>, key: &str, now: Instant) -> Result<(), Duration> {
    match map.get(key).copied() {
        Some(b) if now.duration_since(b.at) < b.delay => Err(b.delay - now.duration_since(b.at)),
        Some(b) if now.duration_since(b.at) < 2 * BACKOFF_MAX => {
            map.insert(key.into(), Backoff { delay: (b.delay * 2).min(BACKOFF_MAX), at: now });
            Ok(())
        }
        _ => {
            map.insert(key.into(), Backoff { delay: BACKOFF_START, at: now });
            Ok(())
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub struct Worker {
    sh: Arc<Shared>,
    uid: String,
    restart_backoff: HashMap<String, Backoff>,
    pull_backoff: HashMap<String, Backoff>,
    sandbox_backoff: HashMap<String, Backoff>,
    /// Why a container is not running, from the last attempt to start it.
    waiting: HashMap<String, (String, String)>,
    /// Highest attempt number seen per container name (restart counts survive new sandboxes).
    attempts: HashMap<String, u32>,
    posted: Option<PodStatus>,
    volumes: Option<(HashMap<String, PathBuf>, Instant)>,
    last: Option<Arc<Pod>>,
    announced: HashSet<String>,
    /// Probe history per (container id, probe kind).
    probes: HashMap<(String, Kind), probes::State>,
    /// Bumped by every call that may change the runtime's containers (start, kill, remove), so a
    /// sync that changed nothing reports from the listing it already has.
    runtime_changes: u64,
}

/// Where a container goes: its sandbox, the pod's volumes, the pod's runtime facts.
#[derive(Clone, Copy)]
struct Place<'a> {
    sandbox_id: &'a str,
    sandbox_cfg: &'a cri::PodSandboxConfig,
    vols: &'a HashMap<String, PathBuf>,
    rt: &'a Runtime<'a>,
}

/// A runtime container with its full status.
struct Seen {
    status: cri::ContainerStatus,
    attempt: u32,
    hash: String,
}

impl Worker {
    pub fn new(sh: Arc<Shared>, uid: String) -> Worker {
        Worker {
            sh,
            uid,
            restart_backoff: HashMap::new(),
            pull_backoff: HashMap::new(),
            sandbox_backoff: HashMap::new(),
            waiting: HashMap::new(),
            attempts: HashMap::new(),
            posted: None,
            volumes: None,
            last: None,
            announced: HashSet::new(),
            probes: HashMap::new(),
            runtime_changes: 0,
        }
    }

    pub async fn run(mut self, mut rx: watch::Receiver<Option<Arc<Pod>>>) {
        loop {
            let pod = rx.borrow_and_update().clone();
            let next = match pod {
                None => {
                    // Gone from the API (force-deleted, or moved off this node): stop everything.
                    let grace = self.last.as_ref().map(|p| grace_of(p)).unwrap_or(2);
                    self.stop_all(grace, true).await;
                    volumes::teardown(&self.pod_dir());
                    if let Some(p) = &self.last {
                        let _ = crate::cgroups::remove(&spec::cgroup_parent(&self.sh.cfg.cgroup_root, p));
                    }
                    return;
                }
                Some(p) => {
                    self.last = Some(p.clone());
                    match self.sync(&p).await {
                        Ok(Some(d)) => d,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(pod = %pod_key(&p), error = %e, "pod sync failed; retrying");
                            Duration::from_secs(2)
                        }
                    }
                }
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    fn pod_dir(&self) -> PathBuf {
        volumes::pod_dir(&self.sh.cfg.pods_dir(), &self.uid)
    }

    fn reference(&self, pod: &Pod, container: Option<(&str, bool)>) -> ObjectReference {
        let mut r = skiff_controllers::events::reference(pod);
        r.field_path =
            container.map(|(n, init)| if init { format!("spec.initContainers{{{n}}}") } else { format!("spec.containers{{{n}}}") });
        r
    }

    fn normal(&self, pod: &Pod, c: Option<(&str, bool)>, reason: &str, msg: String) {
        self.sh.events.normal(self.reference(pod, c), reason, msg);
    }

    fn warning(&self, pod: &Pod, c: Option<(&str, bool)>, reason: &str, msg: String) {
        self.sh.events.warning(self.reference(pod, c), reason, msg);
    }

    /// One pass. `Ok(None)` ends the worker (the pod was deleted for good).
    async fn sync(&mut self, pod: &Pod) -> anyhow::Result<Option<Duration>> {
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(pod).await.map(|_| None);
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            // A finished pod runs nothing (e.g. after an agent restart); its record stays.
            self.stop_all(grace_of(pod), false).await;
            return Ok(Some(Duration::from_secs(30)));
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
        let host_ip = self.sh.cfg.node_ip.to_string();
        let mut sources = Sources::new(self.sh.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));

        // Volumes first: a container never starts without its volumes.
        let known_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        let refresh = self.volumes.as_ref().is_none_or(|(_, at)| at.elapsed() >= VOLUME_REFRESH);
        if refresh {
            let pod_dir = self.pod_dir();
            let ctx = volumes::Context {
                pod_dir: &pod_dir,
                runtime: Runtime { pod_ip: &known_ip, host_ip: &host_ip, node_name: &self.sh.cfg.node_name },
                node_cpus: self.sh.node_cpus,
                node_memory: self.sh.node_memory,
            };
            match volumes::setup(pod, &ctx, &mut sources).await {
                Ok(v) => self.volumes = Some((v, Instant::now())),
                Err(e) if self.volumes.is_none() => {
                    if self.announced.insert(format!("mount:{e}")) {
                        self.warning(pod, None, "FailedMount", e.to_string());
                    }
                    self.report(pod, None, None, &policy).await?;
                    return Ok(Some(Duration::from_secs(5)));
                }
                Err(e) => tracing::warn!(pod = %pod_key(pod), error = %e, "refreshing volumes"),
            }
        }
        let vols = self.volumes.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();

        // The sandbox.
        let (sandbox_id, sandbox_cfg) = match self.ensure_sandbox(pod).await? {
            Some(s) => s,
            None => {
                self.report(pod, None, None, &policy).await?;
                return Ok(Some(Duration::from_secs(1)));
            }
        };
        let pod_ip = self.pod_ip(pod, &sandbox_id).await;
        let node_name = self.sh.cfg.node_name.clone();
        let rt = Runtime { pod_ip: &pod_ip, host_ip: &host_ip, node_name: &node_name };
        let at = Place { sandbox_id: &sandbox_id, sandbox_cfg: &sandbox_cfg, vols: &vols, rt: &rt };
        let mut next = RESYNC;

        // Init containers, in order; app containers only once all of them succeeded.
        let seen = self.seen(&sandbox_id).await?;
        let changes = self.runtime_changes;
        let mut init_done = true;
        for c in spec.init_containers.iter().flatten() {
            let cur = seen.get(&(c.name.clone(), true)).and_then(|v| v.first());
            match cur {
                Some(s) if is_exited(&s.status) && s.status.exit_code == 0 => continue,
                Some(s) if is_exited(&s.status) => {
                    init_done = false;
                    if policy != "Never"
                        && let Some(wait) = self.restart(pod, c, true, s.attempt + 1, &at, &mut sources).await
                    {
                        next = next.min(wait);
                    }
                }
                Some(_) => init_done = false,
                None => {
                    init_done = false;
                    let attempt = self.next_attempt(&c.name);
                    self.start(pod, c, true, attempt, &at, &mut sources).await;
                }
            }
            break;
        }
        if init_done {
            for c in &spec.containers {
                let cur = seen.get(&(c.name.clone(), false)).and_then(|v| v.first());
                match cur {
                    None => {
                        let attempt = self.next_attempt(&c.name);
                        self.start(pod, c, false, attempt, &at, &mut sources).await;
                    }
                    Some(s) if is_running(&s.status) => {
                        if s.hash != spec::container_hash(c) {
                            self.normal(
                                pod,
                                Some((&c.name, false)),
                                "Killing",
                                format!("Container {} definition changed, will be restarted", c.name),
                            );
                            self.kill(pod, Some(c), &s.status.id, grace_of(pod), &pod_ip).await;
                            let attempt = s.attempt + 1;
                            self.start(pod, c, false, attempt, &at, &mut sources).await;
                        }
                    }
                    Some(s) if is_exited(&s.status) => {
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => s.status.exit_code != 0,
                            _ => true,
                        };
                        if restart && let Some(wait) = self.restart(pod, c, false, s.attempt + 1, &at, &mut sources).await {
                            next = next.min(wait);
                        }
                    }
                    // Created but never started (a start that failed half-way): start it again.
                    Some(s) => {
                        self.runtime_changes += 1;
                        let _ = self.sh.cri.remove_container(&s.status.id).await;
                        self.start(pod, c, false, s.attempt + 1, &at, &mut sources).await;
                    }
                }
            }
        }
        let mut seen = if self.runtime_changes == changes { seen } else { self.seen(&sandbox_id).await? };
        if init_done {
            let (killed, wait) = self.probe(pod, &spec.containers, &seen, &pod_ip).await;
            next = next.min(wait);
            if killed {
                seen = self.seen(&sandbox_id).await?;
            }
        }
        // An unreachable API server is no reason to stop looking after the containers.
        if let Err(e) = self.report(pod, Some(&seen), Some(&pod_ip), &policy).await {
            tracing::debug!(pod = %pod_key(pod), error = %e, "posting the pod status");
        }
        Ok(Some(next))
    }

    /// Runs the probes that are due for the running app containers. A failed startup or
    /// liveness verdict kills the container (the next sync restarts it per restartPolicy).
    /// Returns whether one was killed and when the next probe is due.
    async fn probe(
        &mut self,
        pod: &Pod,
        containers: &[Container],
        seen: &HashMap<(String, bool), Vec<Seen>>,
        pod_ip: &str,
    ) -> (bool, Duration) {
        let live: HashSet<&str> = seen.values().flatten().map(|s| s.status.id.as_str()).collect();
        self.probes.retain(|(id, _), _| live.contains(id.as_str()));
        let mut killed = false;
        let mut next = RESYNC * 10;
        for c in containers {
            let Some(s) = seen.get(&(c.name.clone(), false)).and_then(|v| v.first()).filter(|s| is_running(&s.status)) else { continue };
            let id = s.status.id.clone();
            // The container's start as an Instant, from the runtime's wall-clock start time.
            let age = (Timestamp::now().as_nanosecond() - s.status.started_at as i128).max(0) as u64;
            let started = Instant::now().checked_sub(Duration::from_nanos(age)).unwrap_or_else(Instant::now);
            for (kind, probe) in
                [(Kind::Startup, &c.startup_probe), (Kind::Liveness, &c.liveness_probe), (Kind::Readiness, &c.readiness_probe)]
            {
                let Some(p) = probe else { continue };
                let startup_done =
                    c.startup_probe.is_none() || self.probes.get(&(id.clone(), Kind::Startup)).and_then(|s| s.ok) == Some(true);
                if (kind == Kind::Startup && startup_done) || (kind != Kind::Startup && !startup_done) {
                    continue;
                }
                let st = self.probes.entry((id.clone(), kind)).or_insert_with(|| probes::State::new(p, started));
                if !st.due(Instant::now()) {
                    next = next.min(st.next - Instant::now());
                    continue;
                }
                let result = probes::run(&self.sh.cri, &id, pod_ip, c, &Action::of_probe(p), probes::timeout_of(p)).await;
                let st = self.probes.get_mut(&(id.clone(), kind)).expect("inserted above");
                let verdict = st.record(p, result.is_ok(), Instant::now());
                next = next.min(st.next.saturating_duration_since(Instant::now()));
                if let Err(msg) = &result {
                    self.warning(pod, Some((&c.name, false)), "Unhealthy", format!("{} probe failed: {msg}", kind.name()));
                }
                if verdict == Some(false) && kind != Kind::Readiness {
                    let what = if kind == Kind::Liveness { "liveness" } else { "startup" };
                    self.normal(
                        pod,
                        Some((&c.name, false)),
                        "Killing",
                        format!("Container {} failed {what} probe, will be restarted", c.name),
                    );
                    self.kill(pod, Some(c), &id, grace_of(pod), pod_ip).await;
                    killed = true;
                    break;
                }
            }
        }
        (killed, next)
    }

    /// Stops one container as upstream: its preStop hook first (within the grace period), then
    /// SIGTERM and, after what is left of the grace period, SIGKILL.
    async fn kill(&mut self, pod: &Pod, c: Option<&Container>, id: &str, grace: i64, pod_ip: &str) {
        self.runtime_changes += 1;
        kill_container(&self.sh, pod, c, id, grace, pod_ip).await
    }

    fn next_attempt(&self, name: &str) -> u32 {
        self.attempts.get(name).map(|a| a + 1).unwrap_or(0)
    }

    /// Restarts an exited container unless it is backing off; returns how long to wait then.
    async fn restart(&mut self, pod: &Pod, c: &Container, init: bool, attempt: u32, at: &Place<'_>, src: &mut Sources) -> Option<Duration> {
        match gate(&mut self.restart_backoff, &c.name, Instant::now()) {
            Ok(()) => {
                self.waiting.remove(&c.name);
                self.start(pod, c, init, attempt, at, src).await;
                None
            }
            Err(wait) => {
                let delay = self.restart_backoff[&c.name].delay;
                let m = &pod.metadata;
                let who = format!("{}_{}({})", m.name.as_deref().unwrap_or_default(), m.namespace.as_deref().unwrap_or_default(), self.uid);
                let msg = format!("back-off {} restarting failed container={} pod={who}", human(delay), c.name);
                if self.waiting.get(&c.name).is_none_or(|(r, m)| r != "CrashLoopBackOff" || *m != msg) {
                    self.warning(
                        pod,
                        Some((&c.name, init)),
                        "BackOff",
                        format!("Back-off restarting failed container {} in pod {who}", c.name),
                    );
                }
                self.waiting.insert(c.name.clone(), ("CrashLoopBackOff".into(), msg));
                Some(wait)
            }
        }
    }

    /// Pull (per policy), resolve env and mounts, create and start one container. Failures end
    /// up as the container's waiting reason and a Warning event, never as a worker error.
    async fn start(&mut self, pod: &Pod, c: &Container, init: bool, attempt: u32, at: &Place<'_>, src: &mut Sources) {
        self.runtime_changes += 1;
        let Place { sandbox_id, sandbox_cfg, vols, rt } = *at;
        let who = Some((c.name.as_str(), init));
        let image_ref = match self.ensure_image(pod, c, init, sandbox_cfg).await {
            Ok(r) => r,
            Err((reason, msg)) => {
                self.waiting.insert(c.name.clone(), (reason, msg));
                return;
            }
        };
        let config_error = |w: &mut Worker, msg: String| {
            w.warning(pod, who, "Failed", format!("Error: {msg}"));
            w.waiting.insert(c.name.clone(), ("CreateContainerConfigError".into(), msg));
        };
        let envs = match env::resolve(pod, c, src, rt, self.sh.node_cpus, self.sh.node_memory).await {
            Ok(e) => e,
            Err(e) => return config_error(self, e.0),
        };
        let mut mounts = match volumes::mounts(c, vols) {
            Ok(m) => m,
            Err(e) => return config_error(self, e.0),
        };
        match self.extra_mounts(pod, c, attempt, rt) {
            Ok(extra) => {
                let extra: Vec<cri::Mount> =
                    extra.into_iter().filter(|e| !mounts.iter().any(|m| m.container_path == e.container_path)).collect();
                mounts.extend(extra);
            }
            Err(e) => return config_error(self, format!("preparing the container's files: {e}")),
        }
        // Upstream expands $(VAR) in command and args with the container's environment.
        let vars: HashMap<String, String> = envs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
        let mut expanded = c.clone();
        for list in [&mut expanded.command, &mut expanded.args].into_iter().flatten() {
            for a in list.iter_mut() {
                *a = env::expand(a, &vars);
            }
        }
        let config = spec::container_config(spec::ContainerInput {
            pod,
            container: &expanded,
            init,
            attempt,
            image_ref,
            envs,
            mounts,
            node_memory: self.sh.node_memory,
            hash: spec::container_hash(c),
        });
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_cfg.clone()),
        };
        let id = match self.sh.cri.runtime.clone().create_container(req).await {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                self.warning(pod, who, "Failed", format!("Error: {}", e.message()));
                self.waiting.insert(c.name.clone(), ("CreateContainerError".into(), e.message().into()));
                return;
            }
        };
        self.attempts.insert(c.name.clone(), attempt);
        self.normal(pod, who, "Created", format!("Created container {}", c.name));
        match self.sh.cri.runtime.clone().start_container(cri::StartContainerRequest { container_id: id.clone() }).await {
            Ok(_) => {
                self.waiting.remove(&c.name);
                self.normal(pod, who, "Started", format!("Started container {}", c.name));
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    // Upstream runs postStart before the container counts as started; a failure
                    // kills it and the restart policy takes over.
                    let limit = Duration::from_secs(grace_of(pod).max(1) as u64 + 30);
                    if let Err(msg) = probes::run(&self.sh.cri, &id, rt.pod_ip, c, &Action::of_handler(h), limit).await {
                        self.warning(pod, who, "FailedPostStartHook", format!("PostStartHook failed: {msg}"));
                        self.normal(pod, who, "Killing", format!("FailedPostStartHook: stopping container {}", c.name));
                        let _ = self.sh.cri.stop_container(&id, grace_of(pod)).await;
                    }
                }
            }
            Err(e) => {
                // The runtime keeps the container as exited (StartError, 128); the next sync
                // restarts it with backoff like any other failure.
                self.warning(pod, who, "Failed", format!("Error: {}", e.message()));
                self.waiting.remove(&c.name);
            }
        }
        self.prune(sandbox_id, &c.name, attempt).await;
    }

    /// Keeps the newest dead container of a name (for `logs --previous`) and removes older ones.
    async fn prune(&self, sandbox_id: &str, name: &str, attempt: u32) {
        let Ok(all) = self.sh.cri.containers(Some(sandbox_id)).await else { return };
        for c in all {
            let Some(m) = &c.metadata else { continue };
            if m.name == name && m.attempt + 1 < attempt {
                let _ = self.sh.cri.remove_container(&c.id).await;
            }
        }
    }

    async fn ensure_image(
        &mut self,
        pod: &Pod,
        c: &Container,
        init: bool,
        sandbox_cfg: &cri::PodSandboxConfig,
    ) -> Result<String, (String, String)> {
        let who = Some((c.name.as_str(), init));
        let image = c.image.clone().unwrap_or_default();
        let policy = images::pull_policy(c).to_string();
        let present = self.sh.cri.image_status(&image).await.ok().flatten();
        if policy != "Always"
            && let Some(img) = &present
        {
            if self.announced.insert(format!("present:{}:{image}", c.name)) {
                self.normal(pod, who, "Pulled", format!("Container image \"{image}\" already present on machine"));
            }
            return Ok(img.id.clone());
        }
        if policy == "Never" {
            let msg = format!("Container image \"{image}\" is not present with pull policy of Never");
            self.warning(pod, who, "ErrImageNeverPull", msg.clone());
            return Err(("ErrImageNeverPull".into(), msg));
        }
        if let Err(_wait) = gate(&mut self.pull_backoff, &image, Instant::now()) {
            let msg = format!("Back-off pulling image \"{image}\"");
            if self.waiting.get(&c.name).is_none_or(|(r, _)| r != "ImagePullBackOff") {
                self.normal(pod, who, "BackOff", msg.clone());
            }
            return Err(("ImagePullBackOff".into(), msg));
        }
        self.normal(pod, who, "Pulling", format!("Pulling image \"{image}\""));
        let t0 = Instant::now();
        let auth = images::credentials(&self.sh.client, pod, &image).await;
        match self.sh.cri.pull(&image, auth, Some(sandbox_cfg.clone())).await {
            Ok(r) => {
                self.pull_backoff.remove(&image);
                self.normal(pod, who, "Pulled", format!("Successfully pulled image \"{image}\" in {:.3}s", t0.elapsed().as_secs_f64()));
                Ok(r)
            }
            Err(e) => {
                let msg = format!("Failed to pull image \"{image}\": {}", e.message());
                self.warning(pod, who, "Failed", msg.clone());
                self.warning(pod, who, "Failed", "Error: ErrImagePull".into());
                Err(("ErrImagePull".into(), msg))
            }
        }
    }

    /// /etc/hosts (upstream's kubelet-managed hosts file) and the termination message file.
    fn extra_mounts(&self, pod: &Pod, c: &Container, attempt: u32, rt: &Runtime<'_>) -> std::io::Result<Vec<cri::Mount>> {
        let dir = self.pod_dir();
        std::fs::create_dir_all(&dir)?;
        let mut out = Vec::new();
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let hosts = dir.join("etc-hosts");
        if host_network {
            std::fs::copy("/etc/hosts", &hosts)?;
        } else {
            std::fs::write(&hosts, hosts_file(pod, rt.pod_ip))?;
        }
        out.push(cri::Mount { container_path: "/etc/hosts".into(), host_path: hosts.display().to_string(), ..Default::default() });
        let path = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
        if !path.is_empty() {
            let f = message_file(&dir, &c.name, attempt);
            if let Some(p) = f.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&f, b"")?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666))?;
            out.push(cri::Mount { container_path: path, host_path: f.display().to_string(), ..Default::default() });
        }
        Ok(out)
    }

    /// The ready sandbox of this pod, creating one (with backoff on failure) when there is none.
    async fn ensure_sandbox(&mut self, pod: &Pod) -> anyhow::Result<Option<(String, cri::PodSandboxConfig)>> {
        let sandboxes = self.sh.cri.sandboxes(Some(&self.uid)).await?;
        let log_dir = self.log_dir(pod);
        let cfg = &self.sh.cfg;
        if let Some(s) = sandboxes.iter().find(|s| s.state == cri::PodSandboxState::SandboxReady as i32) {
            let attempt = s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            let sc = spec::sandbox_config(pod, attempt, &cfg.cgroup_root, &log_dir.display().to_string(), &self.sh.dns);
            return Ok(Some((s.id.clone(), sc)));
        }
        if let Err(_wait) = gate(&mut self.sandbox_backoff, "sandbox", Instant::now()) {
            return Ok(None);
        }
        // The old sandbox died (or never existed): its containers go with it, counts stay.
        for s in &sandboxes {
            for c in self.sh.cri.containers(Some(&s.id)).await.unwrap_or_default() {
                if let Some(m) = &c.metadata {
                    let a = self.attempts.entry(m.name.clone()).or_insert(m.attempt);
                    *a = (*a).max(m.attempt);
                }
            }
            remove_sandbox(&self.sh.cri, &s.id, 0).await;
        }
        let attempt = sandboxes.first().and_then(|s| s.metadata.as_ref()).map(|m| m.attempt + 1).unwrap_or(0);
        std::fs::create_dir_all(&log_dir)?;
        let sc = spec::sandbox_config(pod, attempt, &cfg.cgroup_root, &log_dir.display().to_string(), &self.sh.dns);
        let req = cri::RunPodSandboxRequest { config: Some(sc.clone()), runtime_handler: String::new() };
        match self.sh.cri.runtime.clone().run_pod_sandbox(req).await {
            Ok(r) => {
                self.sandbox_backoff.remove("sandbox");
                Ok(Some((r.into_inner().pod_sandbox_id, sc)))
            }
            Err(e) => {
                self.warning(pod, None, "FailedCreatePodSandBox", format!("Failed to create pod sandbox: {}", e.message()));
                Ok(None)
            }
        }
    }

    fn log_dir(&self, pod: &Pod) -> PathBuf {
        let m = &pod.metadata;
        self.sh.cfg.data_dir.join("logs").join(format!(
            "{}_{}_{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            self.uid
        ))
    }

    async fn pod_ip(&self, pod: &Pod, sandbox_id: &str) -> String {
        if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
            return self.sh.cfg.node_ip.to_string();
        }
        match self.sh.cri.sandbox_status(sandbox_id).await {
            Ok(Some(s)) => s.network.map(|n| n.ip).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// The sandbox's containers by (name, init), newest attempt first, with full statuses.
    async fn seen(&mut self, sandbox_id: &str) -> anyhow::Result<HashMap<(String, bool), Vec<Seen>>> {
        let mut out: HashMap<(String, bool), Vec<Seen>> = HashMap::new();
        for c in self.sh.cri.containers(Some(sandbox_id)).await? {
            let Some(m) = c.metadata.clone() else { continue };
            let init = c.annotations.get(labels::INIT_CONTAINER).is_some_and(|v| v == "true");
            let hash = c.annotations.get(labels::CONTAINER_HASH).cloned().unwrap_or_default();
            let Some(status) = self.sh.cri.container_status(&c.id).await? else { continue };
            let a = self.attempts.entry(m.name.clone()).or_insert(m.attempt);
            *a = (*a).max(m.attempt);
            out.entry((m.name, init)).or_default().push(Seen { status, attempt: m.attempt, hash });
        }
        for v in out.values_mut() {
            v.sort_by_key(|s| std::cmp::Reverse(s.attempt));
        }
        Ok(out)
    }

    fn view(&self, pod: &Pod, c: &Container, init: bool, seen: Option<&HashMap<(String, bool), Vec<Seen>>>) -> ContainerView {
        let list = seen.and_then(|s| s.get(&(c.name.clone(), init)));
        let cur = list.and_then(|l| l.first());
        let prev = list.and_then(|l| l.get(1));
        let running = cur.is_some_and(|s| is_running(&s.status));
        let msg = |s: Option<&Seen>| s.filter(|s| is_exited(&s.status)).and_then(|s| self.termination_message(pod, c, s));
        ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            current: cur.map(|s| s.status.clone()),
            previous: prev.map(|s| s.status.clone()),
            waiting: self.waiting.get(&c.name).cloned().filter(|_| !running),
            restart_count: cur.map(|s| s.attempt as i32).unwrap_or_else(|| self.attempts.get(&c.name).map(|a| *a as i32 + 1).unwrap_or(0)),
            ready: running && !init && self.probe_ok(c, cur, Kind::Readiness) && self.probe_ok(c, cur, Kind::Startup),
            started: running && self.probe_ok(c, cur, Kind::Startup),
            message: msg(cur),
            previous_message: msg(prev),
        }
    }

    /// Whether a container passes a probe kind (no such probe: yes; not decided yet: no).
    fn probe_ok(&self, c: &Container, cur: Option<&Seen>, kind: Kind) -> bool {
        let defined = match kind {
            Kind::Startup => c.startup_probe.is_some(),
            Kind::Liveness => c.liveness_probe.is_some(),
            Kind::Readiness => c.readiness_probe.is_some(),
        };
        !defined || cur.is_some_and(|s| self.probes.get(&(s.status.id.clone(), kind)).and_then(|p| p.ok) == Some(true))
    }

    fn termination_message(&self, pod: &Pod, c: &Container, s: &Seen) -> Option<String> {
        let f = message_file(&self.pod_dir(), &c.name, s.attempt);
        let mut text = std::fs::read(&f).map(|mut b| {
            b.truncate(MESSAGE_MAX);
            String::from_utf8_lossy(&b).into_owned()
        });
        if text.as_ref().is_ok_and(|t| t.is_empty())
            && s.status.exit_code != 0
            && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            text = Ok(log_tail(&self.log_dir(pod).join(format!("{}/{}.log", c.name, s.attempt)), 80, 2048));
        }
        text.ok().filter(|t| !t.is_empty())
    }

    /// Posts the status computed from the runtime when it differs from what was last posted.
    async fn report(
        &mut self,
        pod: &Pod,
        seen: Option<&HashMap<(String, bool), Vec<Seen>>>,
        pod_ip: Option<&str>,
        policy: &str,
    ) -> anyhow::Result<()> {
        let spec = pod.spec.clone().unwrap_or_default();
        let init: Vec<ContainerView> = spec.init_containers.iter().flatten().map(|c| self.view(pod, c, true, seen)).collect();
        let init_failed = policy == "Never" && init.iter().any(|v| v.current.as_ref().is_some_and(|s| is_exited(s) && s.exit_code != 0));
        let containers: Vec<ContainerView> = spec.containers.iter().map(|c| self.view(pod, c, false, seen)).collect();
        let st = status::build(
            status::Inputs {
                pod,
                init,
                containers,
                init_failed,
                sandbox_ready: seen.is_some(),
                pod_ip: pod_ip.map(str::to_string).or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone())),
                host_ip: self.sh.cfg.node_ip.to_string(),
                qos: spec::qos(pod).as_str(),
                terminal: None,
            },
            Timestamp::now(),
        );
        self.post(pod, st).await
    }

    async fn post(&mut self, pod: &Pod, st: PodStatus) -> anyhow::Result<()> {
        if self.posted.as_ref() == Some(&st) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let body = serde_json::json!({ "status": st });
        match api.patch_status(pod.metadata.name.as_deref().unwrap_or_default(), &PatchParams::default(), &Patch::Merge(&body)).await {
            Ok(_) => {}
            // Deleted meanwhile (e.g. with grace 0): the watch's delete event ends this worker.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.posted = Some(st);
        Ok(())
    }

    /// Stops every container (SIGTERM, the grace period, SIGKILL: CRI StopContainer's timeout)
    /// and the sandbox; with `remove`, also removes them.
    async fn stop_all(&mut self, grace: i64, remove: bool) {
        let Ok(sandboxes) = self.sh.cri.sandboxes(Some(&self.uid)).await else { return };
        for s in sandboxes {
            if remove {
                remove_sandbox(&self.sh.cri, &s.id, grace).await;
            } else if s.state == cri::PodSandboxState::SandboxReady as i32 {
                stop_containers(&self.sh.cri, &s.id, grace).await;
                let _ = self.sh.cri.stop_sandbox(&s.id).await;
            }
        }
    }

    /// Graceful deletion: Killing events, stop with the pod's grace period, a final status, then
    /// the delete with grace 0 (UID precondition) that removes the object, as upstream.
    async fn terminate(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let grace = grace_of(pod);
        if let Ok(sandboxes) = self.sh.cri.sandboxes(Some(&self.uid)).await {
            for s in &sandboxes {
                for c in self.sh.cri.containers(Some(&s.id)).await.unwrap_or_default() {
                    if c.state == cri::ContainerState::ContainerRunning as i32
                        && let Some(m) = &c.metadata
                    {
                        let init = c.annotations.get(labels::INIT_CONTAINER).is_some_and(|v| v == "true");
                        self.normal(pod, Some((&m.name, init)), "Killing", format!("Stopping container {}", m.name));
                    }
                }
            }
        }
        let sandbox = self.sh.cri.sandboxes(Some(&self.uid)).await?.into_iter().next();
        if let Some(s) = &sandbox {
            let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            let spec = pod.spec.clone().unwrap_or_default();
            let running: Vec<(String, Option<Container>)> = self
                .sh
                .cri
                .containers(Some(&s.id))
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|c| {
                    c.state == cri::ContainerState::ContainerRunning as i32 || c.state == cri::ContainerState::ContainerCreated as i32
                })
                .map(|rc| {
                    let name = rc.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                    (rc.id, spec.containers.iter().find(|c| c.name == name).cloned())
                })
                .collect();
            let sh = &self.sh;
            futures::future::join_all(running.iter().map(|(id, c)| kill_container(sh, pod, c.as_ref(), id, grace, &pod_ip))).await;
        }
        // Report the containers' final states before the object goes.
        if let Some(s) = &sandbox {
            let seen = self.seen(&s.id).await?;
            let spec = pod.spec.clone().unwrap_or_default();
            let init: Vec<ContainerView> = spec.init_containers.iter().flatten().map(|c| self.view(pod, c, true, Some(&seen))).collect();
            let mut containers: Vec<ContainerView> = spec.containers.iter().map(|c| self.view(pod, c, false, Some(&seen))).collect();
            for v in &mut containers {
                v.waiting = None;
                v.ready = false;
            }
            let all_ok = containers.iter().all(|v| v.current.as_ref().is_some_and(|s| is_exited(s) && s.exit_code == 0));
            let st = status::build(
                status::Inputs {
                    pod,
                    init,
                    containers,
                    init_failed: false,
                    sandbox_ready: false,
                    pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                    host_ip: self.sh.cfg.node_ip.to_string(),
                    qos: spec::qos(pod).as_str(),
                    terminal: Some(if all_ok { "Succeeded" } else { "Failed" }),
                },
                Timestamp::now(),
            );
            if let Err(e) = self.post(pod, st).await {
                tracing::debug!(error = %e, "final status of a deleted pod");
            }
        }
        self.stop_all(0, true).await;
        volumes::teardown(&self.pod_dir());
        let _ = crate::cgroups::remove(&spec::cgroup_parent(&self.sh.cfg.cgroup_root, pod));
        let _ = std::fs::remove_dir_all(self.log_dir(pod));
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(pod.metadata.name.as_deref().unwrap_or_default(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn grace_of(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0)
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or_default(), p.metadata.name.as_deref().unwrap_or_default())
}

fn message_file(pod_dir: &std::path::Path, name: &str, attempt: u32) -> PathBuf {
    pod_dir.join("containers").join(name).join(attempt.to_string())
}

/// The kubelet-managed /etc/hosts of a pod.
pub fn hosts_file(pod: &Pod, pod_ip: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.as_ref();
    if !pod_ip.is_empty() {
        let host = spec::hostname(pod);
        match (spec.and_then(|s| s.subdomain.as_deref()), pod.metadata.namespace.as_deref()) {
            (Some(sub), Some(ns)) if !sub.is_empty() => s.push_str(&format!("{pod_ip}\t{host}.{sub}.{ns}.svc.cluster.local\t{host}\n")),
            _ => s.push_str(&format!("{pod_ip}\t{host}\n")),
        }
    }
    for a in spec.and_then(|s| s.host_aliases.as_ref()).into_iter().flatten() {
        s.push_str(&format!("\n# Entries added by HostAliases.\n{}\t{}\n", a.ip, a.hostnames.clone().unwrap_or_default().join("\t")));
    }
    s
}

/// The last lines of a CRI log file (`<time> <stream> <tag> <message>` lines), messages only.
pub fn log_tail(path: &std::path::Path, lines: usize, max_bytes: usize) -> String {
    let Ok(body) = std::fs::read_to_string(path) else { return String::new() };
    let msgs: Vec<&str> = body.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect();
    let start = msgs.len().saturating_sub(lines);
    let mut out = msgs[start..].join("\n");
    if out.len() > max_bytes {
        let cut = out.len() - max_bytes;
        let cut = (cut..out.len()).find(|i| out.is_char_boundary(*i)).unwrap_or(out.len());
        out = out[cut..].to_string();
    }
    out
}

async fn kill_container(sh: &Shared, pod: &Pod, c: Option<&Container>, id: &str, grace: i64, pod_ip: &str) {
    let t0 = Instant::now();
    if let Some(c) = c
        && let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
    {
        let limit = Duration::from_secs(grace.max(0) as u64);
        if let Err(msg) = probes::run(&sh.cri, id, pod_ip, c, &Action::of_handler(h), limit).await {
            let mut r = skiff_controllers::events::reference(pod);
            r.field_path = Some(format!("spec.containers{{{}}}", c.name));
            sh.events.warning(r, "FailedPreStopHook", format!("PreStopHook failed: {msg}"));
        }
    }
    // What the hook left of the grace period (upstream grants at least 2 s after a hook).
    let left = (grace - t0.elapsed().as_secs() as i64).max(if grace > 0 { 2 } else { 0 });
    let _ = sh.cri.stop_container(id, left).await;
}

async fn stop_containers(cri: &Cri, sandbox_id: &str, grace: i64) {
    let Ok(list) = cri.containers(Some(sandbox_id)).await else { return };
    let running = list
        .into_iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32 || c.state == cri::ContainerState::ContainerCreated as i32);
    futures::future::join_all(running.map(|c| async move { cri.stop_container(&c.id, grace).await })).await;
}

/// Stops a sandbox's containers with `grace`, then stops and removes the sandbox.
pub async fn remove_sandbox(cri: &Cri, id: &str, grace: i64) {
    stop_containers(cri, id, grace).await;
    if let Err(e) = cri.stop_sandbox(id).await {
        tracing::warn!(sandbox = id, error = %e, "stopping a sandbox");
    }
    if let Err(e) = cri.remove_sandbox(id).await {
        tracing::warn!(sandbox = id, error = %e, "removing a sandbox");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes_and_forgets() {
        let mut m = HashMap::new();
        let t0 = Instant::now();
        assert!(gate(&mut m, "c", t0).is_ok(), "the first restart is immediate");
        assert_eq!(gate(&mut m, "c", t0 + Duration::from_secs(3)), Err(Duration::from_secs(7)));
        assert!(gate(&mut m, "c", t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(m["c"].delay, Duration::from_secs(20));
        let mut t = t0 + Duration::from_secs(10);
        for _ in 0..10 {
            t += m["c"].delay;
            assert!(gate(&mut m, "c", t).is_ok());
        }
        assert_eq!(m["c"].delay, BACKOFF_MAX);
        assert!(gate(&mut m, "c", t + Duration::from_secs(1000)).is_ok());
        assert_eq!(m["c"].delay, BACKOFF_START);
        assert_eq!(human(Duration::from_secs(40)), "40s");
        assert_eq!(human(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-0", "namespace": "ns"}, "spec": {"subdomain": "web", "containers": [], "hostAliases": [{"ip": "1.2.3.4", "hostnames": ["a", "b"]}]}})).unwrap();
        let h = hosts_file(&pod, "10.42.0.9");
        assert!(h.contains("10.42.0.9\tweb-0.web.ns.svc.cluster.local\tweb-0\n"));
        assert!(h.contains("1.2.3.4\ta\tb"));
    }

    #[test]
    fn log_tail_strips_cri_prefixes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::fs::write(&p, "2026-01-01T00:00:00Z stdout F one\n2026-01-01T00:00:01Z stderr F two words\n").unwrap();
        assert_eq!(log_tail(&p, 80, 2048), "one\ntwo words");
        assert_eq!(log_tail(&p, 1, 2048), "two words");
        assert_eq!(log_tail(&p, 80, 5), "words");
    }
}
