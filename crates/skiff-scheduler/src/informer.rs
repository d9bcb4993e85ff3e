//! Feeds the cache and the queue from two watches (all pods, all nodes), through kube-runtime's
//! watcher. Pending pods for one of our profiles go to the queue; assigned pods count on their node;
//! node changes and pod deletions move parked pods back for another try.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::cache::Cache;
use crate::node_info::PodInfo;
use crate::queue::Queue;

pub struct Shared {
    pub cache: Mutex<Cache>,
    pub queue: Arc<Queue>,
    pub scheduler_names: Vec<String>,
    /// Pending pods naming a scheduler no profile here answers to, reported once per pod.
    pub foreign: tokio::sync::mpsc::UnboundedSender<Arc<PodInfo>>,
    pub foreign_seen: Mutex<HashSet<String>>,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

fn scheduler_name(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).filter(|n| !n.is_empty()).unwrap_or(crate::config::DEFAULT_SCHEDULER)
}

/// Assigned pods are kept for what other pods' cycles read: identity, labels, priority, deletion,
/// and affinity terms (requests and ports are already computed into the PodInfo). Everything else
/// goes, so 100,000 placed pods cost a few hundred bytes each, not a whole PodSpec.
fn slim(info: PodInfo) -> PodInfo {
    let p = &info.pod;
    let meta = ObjectMeta {
        name: p.metadata.name.clone(),
        namespace: p.metadata.namespace.clone(),
        uid: p.metadata.uid.clone(),
        labels: p.metadata.labels.clone(),
        deletion_timestamp: p.metadata.deletion_timestamp.clone(),
        ..Default::default()
    };
    let spec = p.spec.as_ref().map(|s| PodSpec {
        affinity: s.affinity.clone(),
        priority: s.priority,
        node_name: s.node_name.clone(),
        containers: Vec::new(),
        ..Default::default()
    });
    PodInfo { pod: Arc::new(Pod { metadata: meta, spec, status: None }), ..info }
}

impl Shared {
    fn apply_pod(&self, pod: Pod) {
        let key = format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(node) = node_name(&pod).map(str::to_string) {
            self.queue.delete(&key);
            let mut cache = self.cache.lock().expect("cache lock");
            if is_terminal(&pod) {
                cache.remove_pod(&uid);
                drop(cache);
                self.queue.move_all_unschedulable();
            } else {
                cache.add_assigned(Arc::new(slim(PodInfo::new(Arc::new(pod)))), &node);
            }
            return;
        }
        let ours = self.scheduler_names.iter().any(|n| n == scheduler_name(&pod));
        let pending = pod.metadata.deletion_timestamp.is_none() && !is_terminal(&pod);
        if ours && pending {
            self.queue.add_or_update(Arc::new(PodInfo::new(Arc::new(pod))));
        } else if pending && self.foreign_seen.lock().expect("lock").insert(uid) {
            let _ = self.foreign.send(Arc::new(PodInfo::new(Arc::new(pod))));
        } else {
            self.queue.delete(&key);
        }
    }

    fn delete_pod(&self, pod: &Pod) {
        self.foreign_seen.lock().expect("lock").remove(pod.metadata.uid.as_deref().unwrap_or_default());
        let key = format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
        self.queue.delete(&key);
        self.cache.lock().expect("cache lock").remove_pod(pod.metadata.uid.as_deref().unwrap_or_default());
        self.queue.move_all_unschedulable();
    }
}

/// Watches pods until the stream ends; flips `synced` after the first complete list.
pub async fn pods(client: kube::Client, shared: Arc<Shared>, synced: watch::Sender<bool>) -> anyhow::Result<()> {
    let stream = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default());
    futures::pin_mut!(stream);
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.try_next().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "pod watch failed; retrying");
        Some(Event::Init)
    }) {
        match ev {
            Event::Init => seen.clear(),
            Event::InitApply(p) => {
                seen.insert(p.metadata.uid.clone().unwrap_or_default());
                shared.apply_pod(p);
            }
            Event::InitDone => {
                shared.cache.lock().expect("cache lock").retain_pods(|uid| seen.contains(uid));
                seen.clear();
                let _ = synced.send(true);
            }
            Event::Apply(p) => shared.apply_pod(p),
            Event::Delete(p) => shared.delete_pod(&p),
        }
    }
    Ok(())
}

/// Watches nodes until the stream ends; flips `synced` after the first complete list.
pub async fn nodes(client: kube::Client, shared: Arc<Shared>, synced: watch::Sender<bool>) -> anyhow::Result<()> {
    let stream = watcher::watcher(Api::<Node>::all(client), watcher::Config::default());
    futures::pin_mut!(stream);
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.try_next().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "node watch failed; retrying");
        Some(Event::Init)
    }) {
        match ev {
            Event::Init => seen.clear(),
            Event::InitApply(n) => {
                seen.insert(n.metadata.name.clone().unwrap_or_default());
                shared.cache.lock().expect("cache lock").upsert_node(Arc::new(n));
            }
            Event::InitDone => {
                let mut cache = shared.cache.lock().expect("cache lock");
                let stale: Vec<String> = cache.nodes().iter().filter(|n| !seen.contains(&n.name)).map(|n| n.name.clone()).collect();
                for n in stale {
                    cache.remove_node(&n);
                }
                drop(cache);
                seen.clear();
                shared.queue.move_all_unschedulable();
                let _ = synced.send(true);
            }
            Event::Apply(n) => {
                shared.cache.lock().expect("cache lock").upsert_node(Arc::new(n));
                shared.queue.move_all_unschedulable();
            }
            Event::Delete(n) => shared.cache.lock().expect("cache lock").remove_node(n.metadata.name.as_deref().unwrap_or_default()),
        }
    }
    Ok(())
}
