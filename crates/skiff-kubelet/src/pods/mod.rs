//! The pods bound to this node: one watch (`spec.nodeName=<node>`), one worker task per pod UID
//! (upstream's pod workers), and housekeeping that removes runtime sandboxes whose pod is gone.
//!
//! Nothing is killed because the API server is unreachable: housekeeping runs only right after
//! a complete listing, so a control-plane outage leaves every pod running.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::Config;
use crate::cri::Cri;

pub mod env;
pub mod images;
pub mod probes;
pub mod spec;
pub mod static_pods;
pub mod status;
pub mod volumes;
mod worker;

pub use worker::remove_sandbox;

/// What every worker shares.
pub struct Shared {
    pub client: kube::Client,
    pub cfg: Config,
    pub cri: Cri,
    pub events: skiff_controllers::events::Recorder,
    pub node_memory: i64,
    pub node_cpus: i64,
    pub dns: spec::NodeDns,
}

pub struct Manager {
    shared: Arc<Shared>,
    /// UIDs of the static pods running now (housekeeping must not remove their sandboxes).
    statics: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// The latest word on a pod for its worker: the object, or None once it left the API (or this
/// node).
type Slot = watch::Sender<Option<Arc<Pod>>>;

impl Manager {
    pub fn new(client: kube::Client, cfg: Config, cri: Cri) -> Manager {
        let readings = crate::node::Readings::read(&cfg.data_dir);
        let dns = spec::NodeDns {
            host_resolv: std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default(),
            cluster_dns: cfg.cluster_dns.clone(),
            domain: cfg.cluster_domain.clone(),
        };
        let events = skiff_controllers::events::Recorder::new(client.clone(), "kubelet").on_host(&cfg.node_name);
        Manager {
            shared: Arc::new(Shared { client, cfg, cri, events, node_memory: readings.memory_total, node_cpus: readings.cpus, dns }),
            statics: Default::default(),
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::all(self.shared.client.clone());
        let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", self.shared.cfg.node_name));
        let mut stream = watcher::watcher(api, wc).boxed();
        let mut workers: HashMap<String, Slot> = HashMap::new();
        let mut listing: Option<HashSet<String>> = None;
        let mut reap = tokio::time::interval(Duration::from_secs(5));
        let (static_tx, mut static_rx) = watch::channel(HashMap::<String, Pod>::new());
        if self.shared.cfg.pod_manifest_path.is_some() || self.shared.cfg.manifest_url.is_some() {
            let shared = self.shared.clone();
            tokio::spawn(async move { scan_static(shared, static_tx).await });
        }
        let mut statics: HashMap<String, Pod> = HashMap::new();
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = reap.tick() => {
                    workers.retain(|_, s| !s.is_closed());
                    continue;
                }
                Ok(()) = static_rx.changed() => {
                    let now = static_rx.borrow_and_update().clone();
                    for (uid, p) in &now {
                        if statics.get(uid) != Some(p) {
                            self.deliver(&mut workers, uid.clone(), Some(Arc::new(p.clone())));
                        }
                    }
                    for uid in statics.keys().filter(|u| !now.contains_key(*u)) {
                        self.deliver(&mut workers, uid.clone(), None);
                    }
                    *self.statics.lock().expect("statics lock") = now.keys().cloned().collect();
                    statics = now;
                    continue;
                }
            };
            let Some(ev) = ev else { anyhow::bail!("the pod watch ended") };
            match ev {
                Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(p)) | Ok(watcher::Event::Apply(p)) => {
                    // Mirror pods stand for static pods, which run from their files.
                    if static_pods::is_mirror(&p) {
                        continue;
                    }
                    let Some(uid) = p.metadata.uid.clone() else { continue };
                    if let Some(seen) = listing.as_mut() {
                        seen.insert(uid.clone());
                    }
                    self.deliver(&mut workers, uid, Some(Arc::new(p)));
                }
                Ok(watcher::Event::Delete(p)) => {
                    if let Some(uid) = p.metadata.uid.clone() {
                        self.deliver(&mut workers, uid, None);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let mut seen = listing.take().unwrap_or_default();
                    seen.extend(statics.keys().cloned());
                    let gone: Vec<String> = workers.keys().filter(|u| !seen.contains(*u)).cloned().collect();
                    for uid in gone {
                        self.deliver(&mut workers, uid, None);
                    }
                    let shared = self.shared.clone();
                    let statics = self.statics.clone();
                    tokio::spawn(async move { housekeeping(&shared, &seen, &statics).await });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pod watch; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    fn deliver(&self, workers: &mut HashMap<String, Slot>, uid: String, pod: Option<Arc<Pod>>) {
        if let Some(slot) = workers.get(&uid)
            && !slot.is_closed()
        {
            let _ = slot.send(pod);
            return;
        }
        let Some(pod) = pod else { return };
        let (tx, rx) = watch::channel(Some(pod));
        workers.insert(uid.clone(), tx);
        let shared = self.shared.clone();
        tokio::spawn(async move { worker::Worker::new(shared, uid).run(rx).await });
    }
}

/// Removes sandboxes (and their containers) this kubelet made for pods the API no longer has
/// on this node, e.g. deleted while the agent was down.
/// Re-reads the manifest directory every few seconds and keeps the mirror pods in step.
async fn scan_static(shared: Arc<Shared>, tx: watch::Sender<HashMap<String, Pod>>) {
    let mut complained = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    // The URL's pod as last fetched: an unreachable URL keeps it running, as upstream.
    let mut from_url: Option<(String, Pod)> = None;
    loop {
        tick.tick().await;
        let node = &shared.cfg.node_name;
        let mut pods = match &shared.cfg.pod_manifest_path {
            Some(dir) => static_pods::scan(dir, node, &mut complained),
            None => HashMap::new(),
        };
        if let Some(url) = &shared.cfg.manifest_url {
            match static_pods::fetch(url).await.and_then(|body| static_pods::parse(std::path::Path::new(url), &body, node)) {
                Ok(p) => {
                    complained.remove(url);
                    from_url = Some((p.metadata.uid.clone().unwrap_or_default(), p));
                }
                Err(e) => {
                    if complained.get(url) != Some(&e) {
                        tracing::warn!(error = %e, "static pod from --manifest-url");
                        complained.insert(url.clone(), e);
                    }
                }
            }
            if let Some((uid, p)) = &from_url {
                pods.insert(uid.clone(), p.clone());
            }
        }
        let changed = *tx.borrow() != pods;
        if changed && tx.send(pods.clone()).is_err() {
            return;
        }
        static_pods::sync_mirrors(&shared.client, &shared.cfg.node_name, &pods).await;
    }
}

async fn housekeeping(shared: &Shared, live: &HashSet<String>, statics: &std::sync::Mutex<HashSet<String>>) {
    let statics = statics.lock().expect("statics lock").clone();
    let Ok(sandboxes) = shared.cri.sandboxes(None).await else { return };
    for s in sandboxes {
        if s.labels.get(crate::labels::MANAGED).map(String::as_str) != Some(crate::labels::MANAGED_BY) {
            continue;
        }
        let Some(uid) = s.labels.get(crate::labels::POD_UID) else { continue };
        if live.contains(uid) || statics.contains(uid) {
            continue;
        }
        tracing::info!(sandbox = %s.id, pod_uid = %uid, "removing the sandbox of a pod that is gone");
        worker::remove_sandbox(&shared.cri, &s.id, 2).await;
        volumes::teardown(&shared.cfg.pods_dir().join(uid));
        crate::cgroups::remove_pod(&shared.cfg.cgroup_root, uid);
    }
}
