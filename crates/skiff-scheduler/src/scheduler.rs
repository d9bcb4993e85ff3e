//! The scheduling loop: pop a pod, run the cycle against the cache under its lock, assume the pod
//! onto the chosen node, and bind asynchronously (many binds in flight) so the next cycle starts at
//! once, as upstream's scheduling/binding cycle split.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio::sync::{Semaphore, watch};

use crate::cache::Cache;
use crate::config::Profile;
use crate::informer::{self, Shared};
use crate::node_info::PodInfo;
use crate::plugins::default_preemption::{self, Candidate};
use crate::queue::{Outcome, Queue};
use crate::report::Reporter;
use crate::schedule::{ScheduleError, schedule};

/// Binds in flight at once; enough to hide API latency, bounded so a burst cannot pile up.
const MAX_BINDS_IN_FLIGHT: usize = 256;

pub async fn bind(client: &kube::Client, pod: &PodInfo, node: &str) -> Result<(), kube::Error> {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name().to_string()),
            namespace: Some(pod.namespace().to_string()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    Api::<Pod>::namespaced(client.clone(), pod.namespace())
        .create_subresource::<_, serde_json::Value>("binding", pod.name(), &PostParams::default(), &binding)
        .await
        .map(|_| ())
}

/// Schedules until the watches end (or the future is dropped, e.g. on losing leadership).
pub async fn run(client: kube::Client, profiles: Vec<Profile>, identity: String) -> anyhow::Result<()> {
    let queue = Queue::new();
    let (foreign_tx, mut foreign_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        cache: std::sync::Mutex::new(Cache::default()),
        queue: queue.clone(),
        scheduler_names: profiles.iter().map(|p| p.scheduler_name.clone()).collect(),
        foreign: foreign_tx,
        foreign_seen: Default::default(),
    });
    let reporter = Arc::new(Reporter::new(client.clone(), &identity));
    let (pods_synced_tx, mut pods_synced) = watch::channel(false);
    let (nodes_synced_tx, mut nodes_synced) = watch::channel(false);
    let pods_task = tokio::spawn(informer::pods(client.clone(), shared.clone(), pods_synced_tx));
    let nodes_task = tokio::spawn(informer::nodes(client.clone(), shared.clone(), nodes_synced_tx));
    // Dropping this future (leadership lost) must stop the watches too.
    let _guard = AbortOnDrop(vec![pods_task.abort_handle(), nodes_task.abort_handle()]);
    pods_synced.wait_for(|s| *s).await?;
    nodes_synced.wait_for(|s| *s).await?;
    tracing::info!(profiles = ?shared.scheduler_names, "scheduler caches synced; scheduling");

    let names = shared.scheduler_names.clone();
    let foreign_reporter = reporter.clone();
    let foreign_task = tokio::spawn(async move {
        while let Some(pod) = foreign_rx.recv().await {
            foreign_reporter.no_profile(&pod, &names).await;
        }
    });
    let _foreign_guard = AbortOnDrop(vec![foreign_task.abort_handle()]);
    let binds = Arc::new(Semaphore::new(MAX_BINDS_IN_FLIGHT));
    let next_start = AtomicUsize::new(0);
    while let Some((pod, _attempts)) = queue.pop().await {
        let name = pod.pod.spec.as_ref().and_then(|s| s.scheduler_name.clone()).unwrap_or_else(|| crate::config::DEFAULT_SCHEDULER.into());
        let Some(profile) = profiles.iter().find(|p| p.scheduler_name == name).or(profiles.first()) else { break };
        let result = {
            let mut cache = shared.cache.lock().expect("cache lock");
            let nodes = cache.nodes();
            let start = next_start.load(Ordering::Relaxed) % nodes.len().max(1);
            match schedule(profile, &pod, nodes, start) {
                Ok((i, examined)) => {
                    next_start.store(start + examined, Ordering::Relaxed);
                    let node = nodes[i].name.clone();
                    cache.assume(pod.clone(), &node);
                    Ok(node)
                }
                Err(ScheduleError::Fit(mut fit)) if profile.preemption => {
                    match default_preemption::post_filter(profile, &pod, nodes, &fit.failed) {
                        Ok(candidate) => {
                            queue.done(&pod.key, Outcome::Unschedulable);
                            let (client, reporter, pod, msg) = (client.clone(), reporter.clone(), pod.clone(), fit.to_string());
                            tokio::spawn(async move { preempt(&client, &reporter, &pod, candidate, &msg).await });
                            continue;
                        }
                        Err(why) => fit.post_filter = Some(why),
                    }
                    Err(ScheduleError::Fit(fit))
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(node) => {
                let permit = binds.clone().acquire_owned().await?;
                let (client, shared, reporter, queue) = (client.clone(), shared.clone(), reporter.clone(), queue.clone());
                tokio::spawn(async move {
                    let bound = bind(&client, &pod, &node).await;
                    // The permit bounds binds only; reporting must not hold back the next bind.
                    drop(permit);
                    match bound {
                        Ok(()) => {
                            queue.done(&pod.key, Outcome::Scheduled);
                            reporter.scheduled(&pod, &node).await;
                        }
                        Err(e) => {
                            shared.cache.lock().expect("cache lock").forget(&pod.uid);
                            queue.done(&pod.key, Outcome::Error);
                            tracing::info!(pod = %pod.key, node = %node, error = %e, "binding rejected");
                            reporter.failed(&pod, &format!("Binding rejected: {e}")).await;
                        }
                    }
                });
            }
            Err(e) => {
                queue.done(&pod.key, if matches!(e, ScheduleError::NoNodes) { Outcome::Error } else { Outcome::Unschedulable });
                let (reporter, msg) = (reporter.clone(), e.to_string());
                tracing::debug!(pod = %pod.key, "unschedulable: {msg}");
                tokio::spawn(async move { reporter.failed(&pod, &msg).await });
            }
        }
    }
    Ok(())
}

/// Nominates the node on the preemptor, deletes the victims (with a `Preempted` event on each),
/// and reports the preemptor as unschedulable for now: the victims' deletion events requeue it.
async fn preempt(client: &kube::Client, reporter: &Reporter, pod: &PodInfo, c: Candidate, msg: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), pod.namespace());
    let patch = serde_json::json!({"status": {"nominatedNodeName": c.node}});
    if let Err(e) = pods.patch_status(pod.name(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        tracing::debug!(pod = %pod.key, error = %e, "setting nominatedNodeName");
    }
    for v in &c.victims {
        let api = Api::<Pod>::namespaced(client.clone(), v.namespace());
        tracing::info!(preemptor = %pod.key, victim = %v.key, node = %c.node, "preempting");
        match api.delete(v.name(), &DeleteParams::default()).await {
            Ok(_) => reporter.preempted(v, &pod.uid, &c.node).await,
            Err(e) => tracing::info!(victim = %v.key, error = %e, "deleting preemption victim"),
        }
    }
    reporter.failed(pod, msg).await;
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
