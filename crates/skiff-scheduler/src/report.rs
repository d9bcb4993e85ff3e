//! What users see of a scheduling decision: core/v1 Events (`Scheduled`, `FailedScheduling`, shown
//! by `kubectl describe pod` and `kubectl get events`) and the pod's PodScheduled condition.
//! Repeated identical failures bump the existing Event's count instead of writing new ones, as
//! upstream's event correlator does.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::node_info::PodInfo;

pub const COMPONENT: &str = "default-scheduler";

pub struct Reporter {
    client: kube::Client,
    identity: String,
    /// pod uid → (event name, message, count) of the last FailedScheduling event.
    last_failure: Mutex<HashMap<String, (String, String, i32)>>,
}

impl Reporter {
    pub fn new(client: kube::Client, identity: &str) -> Reporter {
        Reporter { client, identity: identity.to_string(), last_failure: Mutex::default() }
    }

    fn event(&self, pod: &PodInfo, kind: &str, reason: &str, action: &str, message: &str) -> Event {
        let now = Timestamp::now();
        let p = &pod.pod.metadata;
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", pod.name(), now.as_nanosecond())),
                namespace: p.namespace.clone(),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                uid: p.uid.clone(),
                resource_version: p.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            action: Some(action.into()),
            source: Some(EventSource { component: Some(COMPONENT.into()), host: None }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.identity.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        }
    }

    pub async fn scheduled(&self, pod: &PodInfo, node: &str) {
        self.last_failure.lock().expect("lock").remove(&pod.uid);
        let msg = format!("Successfully assigned {} to {node}", pod.key);
        let ev = self.event(pod, "Normal", "Scheduled", "Binding", &msg);
        if let Err(e) = Api::<Event>::namespaced(self.client.clone(), pod.namespace()).create(&PostParams::default(), &ev).await {
            tracing::debug!(pod = %pod.key, error = %e, "recording Scheduled event");
        }
    }

    /// A pod waits for a scheduler this process has no profile for. Upstream stays silent (another
    /// scheduler may own the name); one Warning per pod tells the user why nothing happens.
    pub async fn no_profile(&self, pod: &PodInfo, profiles: &[String]) {
        let name = pod.pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or_default();
        let msg = format!(
            "no scheduler profile named {name:?} (this scheduler serves: {}); the pod waits for a scheduler with that name",
            profiles.join(", ")
        );
        let ev = self.event(pod, "Warning", "UnknownSchedulerName", "Scheduling", &msg);
        if let Err(e) = Api::<Event>::namespaced(self.client.clone(), pod.namespace()).create(&PostParams::default(), &ev).await {
            tracing::debug!(pod = %pod.key, error = %e, "recording UnknownSchedulerName event");
        }
    }

    /// The `Preempted` event upstream writes on each victim.
    pub async fn preempted(&self, victim: &PodInfo, preemptor_uid: &str, node: &str) {
        let ev = self.event(victim, "Normal", "Preempted", "Preempting", &format!("Preempted by pod {preemptor_uid} on node {node}"));
        if let Err(e) = Api::<Event>::namespaced(self.client.clone(), victim.namespace()).create(&PostParams::default(), &ev).await {
            tracing::debug!(pod = %victim.key, error = %e, "recording Preempted event");
        }
    }

    /// A FailedScheduling event (or a count bump of the identical previous one) and the
    /// PodScheduled=False condition with the same message.
    pub async fn failed(&self, pod: &PodInfo, message: &str) {
        let events = Api::<Event>::namespaced(self.client.clone(), pod.namespace());
        let repeat = {
            let mut g = self.last_failure.lock().expect("lock");
            match g.get_mut(&pod.uid) {
                Some((name, msg, count)) if msg == message => {
                    *count += 1;
                    Some((name.clone(), *count))
                }
                _ => None,
            }
        };
        let bumped = match repeat {
            Some((name, count)) => {
                let patch = json!({"count": count, "lastTimestamp": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()});
                events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok()
            }
            None => false,
        };
        if !bumped {
            let ev = self.event(pod, "Warning", "FailedScheduling", "Scheduling", message);
            let name = ev.metadata.name.clone().unwrap_or_default();
            match events.create(&PostParams::default(), &ev).await {
                Ok(_) => {
                    self.last_failure.lock().expect("lock").insert(pod.uid.clone(), (name, message.to_string(), 1));
                }
                Err(e) => tracing::debug!(pod = %pod.key, error = %e, "recording FailedScheduling event"),
            }
        }
        self.set_unschedulable(&pod.pod, message).await;
    }

    async fn set_unschedulable(&self, pod: &Pod, message: &str) {
        let mut conditions: Vec<PodCondition> = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.message.as_deref() == Some(message)) {
            return;
        }
        conditions.retain(|c| c.type_ != "PodScheduled");
        conditions.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.into()),
            last_transition_time: Some(Time(Timestamp::now())),
            ..Default::default()
        });
        let api = Api::<Pod>::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or_default());
        let patch = json!({"status": {"conditions": conditions}});
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::debug!(pod = %name, error = %e, "setting PodScheduled=False");
        }
    }

    pub fn forget(&self, uid: &str) {
        self.last_failure.lock().expect("lock").remove(uid);
    }
}
