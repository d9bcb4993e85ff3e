//! The kubelet's pod lifecycle, minus containers: one watch over all bound pods. A pod bound to
//! one of our nodes is reported Running and Ready after `run_delay`; a pod being deleted
//! gracefully is removed for good after the same delay (the kubelet's final
//! `gracePeriodSeconds=0` delete once its containers stopped). Pods run until deleted, whatever
//! their restartPolicy: nothing in a simulation ever exits. Resource requests are not checked
//! against the node's capacity (no OutOfcpu rejection); that is the scheduler's job here.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, HostIP, Pod, PodCondition, PodIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::SimConfig;
use crate::errors::{Throttle, is_not_found, with_retries};
use crate::node::{node_ip, pod_ip};

static WATCH_ERRORS: Throttle = Throttle::new("pod watch");
static STATUS_ERRORS: Throttle = Throttle::new("pod status update");
static DELETE_ERRORS: Throttle = Throttle::new("pod delete");

/// Pods waiting for a worker; when full, the watch loop waits (the watch cache buffers for it, and
/// a watcher that falls too far behind relists).
const QUEUE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Run,
    Delete,
}

struct Job {
    op: Op,
    pod: Pod,
    node: usize,
    at: Instant,
}

struct Pods {
    client: kube::Client,
    cfg: Arc<SimConfig>,
    /// Per node, how many pod addresses it handed out (4 bytes a node).
    next_ip: Vec<AtomicU32>,
    /// (pod uid, op) queued or being written, so watch events for the same pod in the meantime
    /// (our own status write echoing back, a relist) do not queue it twice.
    pending: Mutex<HashSet<(String, Op)>>,
}

/// Watches bound pods until the process stops; never returns on its own.
pub async fn run(client: kube::Client, cfg: Arc<SimConfig>) -> anyhow::Result<()> {
    let pods = Arc::new(Pods {
        next_ip: (0..cfg.nodes).map(|_| AtomicU32::new(0)).collect(),
        client: client.clone(),
        cfg: cfg.clone(),
        pending: Mutex::new(HashSet::new()),
    });
    let (tx, rx) = mpsc::channel::<Job>(QUEUE);
    let workers = {
        let pods = pods.clone();
        // Jobs are queued in arrival order with one fixed delay, so they also become due in queue
        // order: a worker waiting for the head's time never holds back a job that is already due.
        futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|j| (j, rx)) }).for_each_concurrent(cfg.concurrency, move |job| {
            let pods = pods.clone();
            async move {
                tokio::time::sleep_until(job.at).await;
                pods.execute(job).await;
            }
        })
    };
    // Only bound pods: the field selector keeps the (usually many) pending ones off this watch.
    let stream = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default().fields("spec.nodeName!=")).default_backoff();
    let watch = async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                    if let Some(job) = pods.classify(pod)
                        && tx.send(job).await.is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => WATCH_ERRORS.warn("pods", &e),
            }
        }
    };
    tokio::join!(watch, workers);
    anyhow::bail!("the pod watch ended")
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

impl Pods {
    /// What this pod needs from us, if anything.
    fn classify(&self, pod: Pod) -> Option<Job> {
        let node = self.cfg.node_index(pod.spec.as_ref()?.node_name.as_deref()?)?;
        let op = if pod.metadata.deletion_timestamp.is_some() {
            Op::Delete
        } else if matches!(phase(&pod), Some("Running" | "Succeeded" | "Failed")) {
            return None;
        } else {
            Op::Run
        };
        // Containers take as long to stop as to start; one delay for both also keeps the queue
        // in due order (see the workers in `run`).
        let at = Instant::now() + self.cfg.run_delay;
        let uid = pod.metadata.uid.clone()?;
        if !self.pending.lock().expect("pending lock").insert((uid, op)) {
            return None;
        }
        Some(Job { op, pod, node, at })
    }

    async fn execute(&self, job: Job) {
        let Job { op, pod, node, .. } = job;
        let (ns, name, uid) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            pod.metadata.uid.clone().unwrap_or_default(),
        );
        let api = Api::<Pod>::namespaced(self.client.clone(), &ns);
        let subject = format!("{ns}/{name}");
        match op {
            Op::Run => {
                let host = node_ip(node);
                let ip = if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
                    host
                } else {
                    pod_ip(node, self.next_ip[node].fetch_add(1, Ordering::Relaxed))
                };
                let patch = Patch::Merge(Pod { status: Some(running_status(&pod, host, ip, Timestamp::now())), ..Default::default() });
                let pp = PatchParams::default();
                let r = with_retries(|| api.patch_status(&name, &pp, &patch)).await;
                match r {
                    Ok(_) => tracing::debug!(pod = %subject, node, %ip, "running"),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => STATUS_ERRORS.warn(&subject, &e),
                }
            }
            Op::Delete => {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    // Never the pod of the same name created after this one was deleted.
                    preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                    ..Default::default()
                };
                match with_retries(|| api.delete(&name, &dp)).await {
                    Ok(_) => tracing::debug!(pod = %subject, "deleted"),
                    Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => {}
                    Err(e) => DELETE_ERRORS.warn(&subject, &e),
                }
            }
        }
        self.pending.lock().expect("pending lock").remove(&(uid, op));
    }
}

fn condition(type_: &str, now: Time) -> PodCondition {
    PodCondition { type_: type_.into(), status: "True".into(), last_transition_time: Some(now), ..Default::default() }
}

fn running(c: &Container, uid: &str, now: &Time) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: format!("sim://{}", c.image.as_deref().unwrap_or_default()),
        container_id: Some(format!("sim://{uid}-{}", c.name)),
        ready: true,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState { running: Some(ContainerStateRunning { started_at: Some(now.clone()) }), ..Default::default() }),
        ..Default::default()
    }
}

/// The status a kubelet reports once every container started and passed its readiness checks.
pub fn running_status(pod: &Pod, host_ip: Ipv4Addr, pod_ip: Ipv4Addr, now: Timestamp) -> PodStatus {
    let t = Time(now);
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.as_ref();
    // The scheduler's condition keeps its own time (a merge patch replaces the whole list).
    let scheduled = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled" && c.status == "True"))
        .cloned()
        .unwrap_or_else(|| condition("PodScheduled", t.clone()));
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            // Sidecars (restartPolicy Always) keep running next to the main containers.
            if c.restart_policy.as_deref() == Some("Always") {
                return running(c, uid, &t);
            }
            let container_id = format!("sim://{uid}-{}", c.name);
            ContainerStatus {
                ready: true,
                started: Some(false),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some("Completed".into()),
                        started_at: Some(t.clone()),
                        finished_at: Some(t.clone()),
                        container_id: Some(container_id.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..running(c, uid, &t)
            }
        })
        .collect();
    PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![
            condition("PodReadyToStartContainers", t.clone()),
            condition("Initialized", t.clone()),
            condition("Ready", t.clone()),
            condition("ContainersReady", t.clone()),
            scheduled,
        ]),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP { ip: host_ip.to_string() }]),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: pod_ip.to_string() }]),
        start_time: Some(old.and_then(|s| s.start_time.clone()).unwrap_or(t.clone())),
        container_statuses: Some(spec.containers.iter().map(|c| running(c, uid, &t)).collect()),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn running_status_reports_every_container() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {
                "nodeName": "sim-1",
                "initContainers": [{"name": "init", "image": "busybox"}, {"name": "side", "image": "envoy", "restartPolicy": "Always"}],
                "containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}]
            },
            "status": {"phase": "Pending", "qosClass": "BestEffort", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
            ]}
        }));
        let now: Timestamp = "2025-01-01T00:00:05Z".parse().unwrap();
        let s = running_status(&p, "10.200.0.2".parse().unwrap(), "100.64.1.7".parse().unwrap(), now);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("100.64.1.7"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "100.64.1.7");
        assert_eq!(s.host_ip.as_deref(), Some("10.200.0.2"));
        assert_eq!(s.start_time, Some(Time(now)));
        let conds = s.conditions.as_ref().unwrap();
        for t in ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"] {
            assert_eq!(conds.iter().find(|c| c.type_ == t).map(|c| c.status.as_str()), Some("True"), "{t}");
        }
        let sched = conds.iter().find(|c| c.type_ == "PodScheduled").unwrap();
        assert_eq!(sched.last_transition_time, Some(Time("2025-01-01T00:00:00Z".parse().unwrap())), "scheduler's time kept");
        let cs = s.container_statuses.as_ref().unwrap();
        assert_eq!(cs.len(), 2);
        assert!(cs.iter().all(|c| c.ready && c.started == Some(true) && c.restart_count == 0));
        assert_eq!(cs[1].image, "redis");
        assert_eq!(cs[0].container_id.as_deref(), Some("sim://u1-a"));
        assert!(cs[0].state.as_ref().unwrap().running.is_some());
        let init = s.init_container_statuses.as_ref().unwrap();
        let done = init[0].state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((done.exit_code, done.reason.as_deref()), (0, Some("Completed")));
        assert_eq!(init[0].started, Some(false));
        assert!(init[1].state.as_ref().unwrap().running.is_some(), "sidecar keeps running");
        // qosClass is absent, so the merge patch leaves the API server's value alone.
        assert!(s.qos_class.is_none());
    }
}
