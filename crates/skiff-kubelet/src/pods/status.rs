//! The pod status a kubelet reports, computed from what the runtime says (upstream's
//! `generateAPIPodStatus` and `getPhase`): container states from CRI container statuses, the
//! phase from those states and the restart policy, and the standard conditions.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition,
    PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::cri::v1 as cri;

/// One container as the worker sees it.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    /// The newest runtime container for this name, and the one before it.
    pub current: Option<cri::ContainerStatus>,
    pub previous: Option<cri::ContainerStatus>,
    /// Why the container is not running when the runtime has no answer of its own
    /// (ErrImagePull, CrashLoopBackOff, CreateContainerConfigError, ...).
    pub waiting: Option<(String, String)>,
    pub restart_count: i32,
    pub ready: bool,
    /// Running and past its startup probe (upstream's `started`).
    pub started: bool,
    /// The termination message of `current` / `previous` (read from the message file).
    pub message: Option<String>,
    pub previous_message: Option<String>,
}

fn ts(nanos: i64) -> Option<Time> {
    (nanos > 0).then(|| Time(Timestamp::from_nanosecond(nanos as i128).unwrap_or(Timestamp::UNIX_EPOCH)))
}

fn container_id(s: &cri::ContainerStatus) -> String {
    format!("containerd://{}", s.id)
}

fn terminated(s: &cri::ContainerStatus, message: Option<&String>) -> ContainerStateTerminated {
    let reason = if s.reason.is_empty() { if s.exit_code == 0 { "Completed".into() } else { "Error".into() } } else { s.reason.clone() };
    ContainerStateTerminated {
        exit_code: s.exit_code,
        reason: Some(reason),
        message: message.cloned().or_else(|| (!s.message.is_empty()).then(|| s.message.clone())),
        started_at: ts(s.started_at),
        finished_at: ts(s.finished_at),
        container_id: Some(container_id(s)),
        signal: None,
    }
}

pub fn is_running(s: &cri::ContainerStatus) -> bool {
    s.state == cri::ContainerState::ContainerRunning as i32
}

pub fn is_exited(s: &cri::ContainerStatus) -> bool {
    s.state == cri::ContainerState::ContainerExited as i32
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState { waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message }), ..Default::default() }
}

pub fn container_status(v: &ContainerView) -> ContainerStatus {
    let (state, last) = match (&v.current, &v.waiting) {
        (Some(c), _) if is_running(c) => (
            ContainerState { running: Some(ContainerStateRunning { started_at: ts(c.started_at) }), ..Default::default() },
            v.previous.as_ref().filter(|p| is_exited(p)).map(|p| terminated(p, v.previous_message.as_ref())),
        ),
        // Exited and about to be restarted (or backing off): waiting, with the exit as lastState.
        (Some(c), Some((reason, msg))) if is_exited(c) => (waiting(reason, Some(msg.clone())), Some(terminated(c, v.message.as_ref()))),
        (Some(c), None) if is_exited(c) => (
            ContainerState { terminated: Some(terminated(c, v.message.as_ref())), ..Default::default() },
            v.previous.as_ref().filter(|p| is_exited(p)).map(|p| terminated(p, v.previous_message.as_ref())),
        ),
        (_, Some((reason, msg))) => {
            (waiting(reason, Some(msg.clone())), v.current.as_ref().filter(|p| is_exited(p)).map(|p| terminated(p, v.message.as_ref())))
        }
        _ => (waiting("ContainerCreating", None), None),
    };
    let started = v.current.as_ref().map(|c| is_running(c) && v.started);
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: v.current.as_ref().map(|c| c.image_ref.clone()).unwrap_or_default(),
        container_id: v.current.as_ref().map(container_id),
        ready: v.ready,
        restart_count: v.restart_count,
        started,
        state: Some(state),
        last_state: Some(last.map(|t| ContainerState { terminated: Some(t), ..Default::default() }).unwrap_or_default()),
        ..Default::default()
    }
}

/// Counts as upstream's getPhase does.
pub fn phase(pod: &Pod, init: &[ContainerStatus], containers: &[ContainerStatus], init_failed: bool) -> &'static str {
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    if init_failed && policy == "Never" {
        return "Failed";
    }
    let init_done = init.iter().all(|s| s.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0));
    if !init_done {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let st = s.state.as_ref();
        if st.and_then(|s| s.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(t) = st.and_then(|s| s.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if succeeded == stopped => "Succeeded",
            "OnFailure" => "Running",
            _ => "Failed",
        }
    } else {
        "Pending"
    }
}

fn condition(old: Option<&PodStatus>, ty: &str, ok: bool, reason: Option<&str>, message: Option<String>, now: Timestamp) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == ty));
    let since = prev.filter(|p| p.status == status).and_then(|p| p.last_transition_time.clone()).unwrap_or(Time(now));
    PodCondition {
        type_: ty.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        last_probe_time: None,
        observed_generation: None,
    }
}

pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub init_failed: bool,
    pub sandbox_ready: bool,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub qos: &'static str,
    /// Set when the kubelet ended the pod (deleted, or a terminal restart policy).
    pub terminal: Option<&'static str>,
}

pub fn build(i: Inputs<'_>, now: Timestamp) -> PodStatus {
    let old = i.pod.status.as_ref();
    let init: Vec<ContainerStatus> = i.init.iter().map(container_status).collect();
    let containers: Vec<ContainerStatus> = i.containers.iter().map(container_status).collect();
    let phase = i.terminal.unwrap_or_else(|| phase(i.pod, &init, &containers, i.init_failed));
    let terminal = phase == "Succeeded" || phase == "Failed";
    let incomplete: Vec<&str> = init
        .iter()
        .filter(|s| s.state.as_ref().and_then(|s| s.terminated.as_ref()).is_none_or(|t| t.exit_code != 0))
        .map(|s| s.name.as_str())
        .collect();
    let unready: Vec<&str> = containers.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    let initialized = incomplete.is_empty() || terminal && !i.init_failed;
    let ready = unready.is_empty() && !terminal;
    let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
    let unready_msg = (!ready && !terminal).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let mut conditions = vec![
        condition(old, "PodReadyToStartContainers", i.sandbox_ready, None, None, now),
        condition(
            old,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| format!("containers with incomplete status: [{}]", incomplete.join(" "))),
            now,
        ),
        condition(old, "Ready", ready, (!ready).then_some(not_ready_reason), unready_msg.clone(), now),
        condition(old, "ContainersReady", ready, (!ready).then_some(not_ready_reason), unready_msg, now),
    ];
    // PodScheduled belongs to the scheduler; keep it (a pod created with nodeName has none).
    let scheduled = old.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled")).cloned();
    conditions.push(scheduled.unwrap_or_else(|| condition(old, "PodScheduled", true, None, None, now)));
    let pod_ip = i.pod_ip.filter(|s| !s.is_empty());
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(i.host_ip.clone()),
        host_ips: Some(vec![HostIP { ip: i.host_ip.clone() }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: old.and_then(|s| s.start_time.clone()).or(Some(Time(now))),
        qos_class: Some(i.qos.into()),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(containers),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "i"}]}})).unwrap()
    }

    fn exited(code: i32) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: "abc".into(),
            state: cri::ContainerState::ContainerExited as i32,
            exit_code: code,
            started_at: 1,
            finished_at: 2,
            ..Default::default()
        }
    }

    fn view(current: Option<cri::ContainerStatus>, waiting: Option<(&str, &str)>) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "i".into(),
            current,
            waiting: waiting.map(|(a, b)| (a.into(), b.into())),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_restart_policy() {
        let done = [container_status(&view(Some(exited(0)), None))];
        let failed = [container_status(&view(Some(exited(1)), None))];
        assert_eq!(phase(&pod("Never"), &[], &done, false), "Succeeded");
        assert_eq!(phase(&pod("Never"), &[], &failed, false), "Failed");
        assert_eq!(phase(&pod("OnFailure"), &[], &failed, false), "Running");
        assert_eq!(phase(&pod("Always"), &[], &done, false), "Running");
        let creating = [container_status(&view(None, None))];
        assert_eq!(phase(&pod("Always"), &[], &creating, false), "Pending");
        let backoff = [container_status(&view(Some(exited(1)), Some(("CrashLoopBackOff", "back-off 10s"))))];
        assert_eq!(backoff[0].state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(backoff[0].last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
        assert_eq!(phase(&pod("Always"), &[], &backoff, false), "Running");
    }

    #[test]
    fn conditions_name_unready_containers() {
        let p = pod("Always");
        let st = build(
            Inputs {
                pod: &p,
                init: vec![],
                containers: vec![view(None, Some(("ErrImagePull", "no such image")))],
                init_failed: false,
                sandbox_ready: true,
                pod_ip: Some("10.42.0.2".into()),
                host_ip: "10.0.0.1".into(),
                qos: "BestEffort",
                terminal: None,
            },
            Timestamp::now(),
        );
        assert_eq!(st.phase.as_deref(), Some("Pending"));
        let ready = st.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [c]"));
        assert_eq!(st.pod_ips.unwrap()[0].ip, "10.42.0.2");
    }
}
