//! The kubelet's pod lifecycle, minus containers: one watch over all bound pods. A pod bound to
//! one of our nodes is reported Running and Ready after `run_delay`; a pod being deleted
//! gracefully is removed for good after the same delay (the kubelet's final
//! `gracePeriodSeconds=0` delete once its containers stopped). Resource requests are not checked
//! against the node's capacity (no OutOfcpu rejection); that is the scheduler's job here.
//!
//! Pods run until deleted, unless they ask to exit: with the annotation [`EXIT_AFTER_MS`] all
//! containers exit that long after they started, with the code in [`EXIT_CODE`] (default 0).
//! As with the kubelet's restartPolicy, the pod then ends Succeeded or Failed (Never; OnFailure
//! with code 0), or its containers restart and run (and exit) again (Always; OnFailure with a
//! non-zero code). That is what Jobs need to be exercised without a container runtime.

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

/// Pod annotation: milliseconds after its containers started that they exit.
pub const EXIT_AFTER_MS: &str = "sim.skiff.dev/exit-after-ms";
/// Pod annotation: the exit code of that exit (default 0).
pub const EXIT_CODE: &str = "sim.skiff.dev/exit-code";

/// Pods waiting for a worker; when full, the watch loop waits (the watch cache buffers for it, and
/// a watcher that falls too far behind relists).
const QUEUE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Run,
    Delete,
    /// The containers exit (see [`EXIT_AFTER_MS`]).
    Exit,
}

struct Job {
    op: Op,
    pod: Pod,
    node: usize,
    at: Instant,
    /// For exits, the pod's restarts so far: the next exit after a restart is a new job.
    generation: i32,
}

struct Pods {
    client: kube::Client,
    cfg: Arc<SimConfig>,
    /// Per node, how many pod addresses it handed out (4 bytes a node).
    next_ip: Vec<AtomicU32>,
    /// (pod uid, op, generation) queued or being written, so watch events for the same pod in
    /// the meantime (our own status write echoing back, a relist) do not queue it twice.
    pending: Mutex<HashSet<(String, Op, i32)>>,
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
    // Exits fall due at times of their own, so they wait apart from the queue above (which relies
    // on arrival order being due order); the semaphore bounds their API writes instead.
    let (exit_tx, exit_rx) = mpsc::unbounded_channel::<Job>();
    let exits = {
        let pods = pods.clone();
        let writes = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
        futures::stream::unfold(exit_rx, |mut rx| async { rx.recv().await.map(|j| (j, rx)) }).for_each_concurrent(None, move |job| {
            let (pods, writes) = (pods.clone(), writes.clone());
            async move {
                tokio::time::sleep_until(job.at).await;
                let _permit = writes.acquire().await;
                pods.execute(job).await;
            }
        })
    };
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
                    let Some(job) = pods.classify(pod) else { continue };
                    if job.op == Op::Exit {
                        let _ = exit_tx.send(job);
                    } else if tx.send(job).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => WATCH_ERRORS.warn("pods", &e),
            }
        }
    };
    tokio::join!(watch, workers, exits);
    anyhow::bail!("the pod watch ended")
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

impl Pods {
    /// What this pod needs from us, if anything.
    fn classify(&self, pod: Pod) -> Option<Job> {
        let node = self.cfg.node_index(pod.spec.as_ref()?.node_name.as_deref()?)?;
        let (op, at) = if pod.metadata.deletion_timestamp.is_some() {
            // Containers take as long to stop as to start; one delay for both also keeps the
            // queue in due order (see the workers in `run`).
            (Op::Delete, Instant::now() + self.cfg.run_delay)
        } else if phase(&pod) == Some("Running") {
            (Op::Exit, exit_due(&pod)?)
        } else if matches!(phase(&pod), Some("Succeeded" | "Failed")) {
            return None;
        } else {
            (Op::Run, Instant::now() + self.cfg.run_delay)
        };
        let uid = pod.metadata.uid.clone()?;
        let generation = if op == Op::Exit { restarts(&pod) } else { 0 };
        if !self.pending.lock().expect("pending lock").insert((uid, op, generation)) {
            return None;
        }
        Some(Job { op, pod, node, at, generation })
    }

    async fn execute(&self, job: Job) {
        let Job { op, pod, node, generation, .. } = job;
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
            Op::Exit => {
                let status = exited_status(&pod, exit_code(&pod), Timestamp::now());
                let patch = Patch::Merge(Pod { status: Some(status), ..Default::default() });
                let pp = PatchParams::default();
                match with_retries(|| api.patch_status(&name, &pp, &patch)).await {
                    Ok(_) => tracing::debug!(pod = %subject, "containers exited"),
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
        self.pending.lock().expect("pending lock").remove(&(uid, op, generation));
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().map(|c| c.restart_count).sum()).unwrap_or(0)
}

fn exit_code(pod: &Pod) -> i32 {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(EXIT_CODE)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// When a running pod that asked to exit (see [`EXIT_AFTER_MS`]) is due to: that long after its
/// containers (last) started. `None` for pods that run until deleted.
fn exit_due(pod: &Pod) -> Option<Instant> {
    let after: u64 = pod.metadata.annotations.as_ref()?.get(EXIT_AFTER_MS)?.parse().ok()?;
    let st = pod.status.as_ref()?;
    let started = st
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(|t| t.0)
        .max()
        .or(st.start_time.as_ref().map(|t| t.0))?;
    let due = started + jiff::SignedDuration::from_millis(after as i64);
    let wait = due.duration_since(Timestamp::now());
    Some(Instant::now() + if wait.is_negative() { std::time::Duration::ZERO } else { wait.unsigned_abs() })
}

/// The status after every container exited with `code`: terminal per the restartPolicy, or
/// running again with one more restart.
pub fn exited_status(pod: &Pod, code: i32, now: Timestamp) -> PodStatus {
    let t = Time(now);
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let restart = match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    };
    let old = pod.status.clone().unwrap_or_default();
    let terminated = |c: &ContainerStatus| ContainerStateTerminated {
        exit_code: code,
        reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
        started_at: c.state.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.clone()),
        finished_at: Some(t.clone()),
        container_id: c.container_id.clone(),
        ..Default::default()
    };
    let statuses: Vec<ContainerStatus> = old
        .container_statuses
        .iter()
        .flatten()
        .map(|c| {
            if restart {
                ContainerStatus {
                    restart_count: c.restart_count + 1,
                    last_state: Some(ContainerState { terminated: Some(terminated(c)), ..Default::default() }),
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning { started_at: Some(t.clone()) }),
                        ..Default::default()
                    }),
                    ..c.clone()
                }
            } else {
                ContainerStatus {
                    ready: false,
                    started: Some(false),
                    state: Some(ContainerState { terminated: Some(terminated(c)), ..Default::default() }),
                    ..c.clone()
                }
            }
        })
        .collect();
    if restart {
        return PodStatus { phase: Some("Running".into()), container_statuses: Some(statuses), ..Default::default() };
    }
    // As the kubelet reports a pod whose containers all terminated.
    let conditions = old
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| match c.type_.as_str() {
            "Ready" | "ContainersReady" => {
                PodCondition { status: "False".into(), reason: Some("PodCompleted".into()), last_transition_time: Some(t.clone()), ..c }
            }
            "PodReadyToStartContainers" => PodCondition { status: "False".into(), last_transition_time: Some(t.clone()), ..c },
            _ => c,
        })
        .collect();
    PodStatus {
        phase: Some(if code == 0 { "Succeeded" } else { "Failed" }.into()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        ..Default::default()
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

    #[test]
    fn exits_end_the_pod_or_restart_its_containers_per_restart_policy() {
        let running = |policy: &str| {
            let mut p = pod(serde_json::json!({
                "metadata": {"name": "p", "namespace": "default", "uid": "u1", "annotations": {EXIT_AFTER_MS: "10", EXIT_CODE: "3"}},
                "spec": {"nodeName": "sim-0", "restartPolicy": policy, "containers": [{"name": "a", "image": "busybox"}]}
            }));
            p.status = Some(running_status(
                &p,
                "10.200.0.2".parse().unwrap(),
                "100.64.1.7".parse().unwrap(),
                "2025-01-01T00:00:00Z".parse().unwrap(),
            ));
            p
        };
        let now: Timestamp = "2025-01-01T00:00:01Z".parse().unwrap();
        assert_eq!(exit_code(&running("Never")), 3);
        assert!(exit_due(&running("Never")).is_some());
        let failed = exited_status(&running("Never"), 3, now);
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
        let term = failed.container_statuses.as_ref().unwrap()[0].state.as_ref().unwrap().terminated.clone().unwrap();
        assert_eq!((term.exit_code, term.reason.as_deref()), (3, Some("Error")));
        assert_eq!(term.started_at, Some(Time("2025-01-01T00:00:00Z".parse().unwrap())));
        assert_eq!(term.finished_at, Some(Time(now)));
        let ready = failed.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("PodCompleted")));
        assert_eq!(exited_status(&running("OnFailure"), 0, now).phase.as_deref(), Some("Succeeded"));
        for policy in ["OnFailure", "Always"] {
            let again = exited_status(&running(policy), 3, now);
            assert_eq!(again.phase.as_deref(), Some("Running"), "{policy}");
            let c = &again.container_statuses.as_ref().unwrap()[0];
            assert_eq!(c.restart_count, 1);
            assert_eq!(c.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 3);
            assert_eq!(c.state.as_ref().unwrap().running.as_ref().unwrap().started_at, Some(Time(now)));
            assert!(again.conditions.is_none(), "Ready stays as it was");
        }
        let mut forever = running("Never");
        forever.metadata.annotations = None;
        assert!(exit_due(&forever).is_none());
    }
}
