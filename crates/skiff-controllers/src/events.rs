//! core/v1 Events from controllers (`SuccessfulCreate`, `ScalingReplicaSet`, ...), the kind
//! `kubectl describe` lists under an object. Written in the background: an Event is advice for
//! people, so a slow or failed write must never hold up a reconcile.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: &'static str,
    host: Option<String>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &'static str) -> Recorder {
        Recorder { client, component, host: None }
    }

    /// Events from a per-node component (the kubelet) name their node as `source.host`, which
    /// `kubectl describe` shows in the From column.
    pub fn on_host(mut self, host: &str) -> Recorder {
        self.host = Some(host.into());
        self
    }

    pub fn normal(&self, about: ObjectReference, reason: &str, message: String) {
        self.record(about, "Normal", reason, message)
    }

    pub fn warning(&self, about: ObjectReference, reason: &str, message: String) {
        self.record(about, "Warning", reason, message)
    }

    fn record(&self, about: ObjectReference, type_: &str, reason: &str, message: String) {
        let now = Timestamp::now();
        let ns = about.namespace.clone().unwrap_or_else(|| "default".into());
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", about.name.as_deref().unwrap_or("object"), now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: about,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource { component: Some(self.component.into()), host: self.host.clone() }),
            reporting_instance: self.host.clone(),
            reporting_component: Some(self.component.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "recording event");
            }
        });
    }
}

/// The reference an Event points at, for any typed object.
pub fn reference<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}
