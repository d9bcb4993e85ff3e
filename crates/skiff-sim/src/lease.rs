//! Node heartbeats the way kubelets send them since 1.17: one `coordination.k8s.io/v1` Lease per
//! node in `kube-node-lease`, renewed every few seconds; the Node object itself is written rarely.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::config::SimConfig;

pub const NAMESPACE: &str = "kube-node-lease";
/// The kubelet's nodeLeaseDurationSeconds.
pub const DURATION_SECONDS: i32 = 40;

pub fn build_lease(cfg: &SimConfig, i: usize, node_uid: &str, now: Timestamp) -> Lease {
    let name = cfg.node_name(i);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(NAMESPACE.into()),
            // As the kubelet does, so deleting the Node garbage-collects its Lease.
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid: node_uid.into(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name),
            lease_duration_seconds: Some(DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// Creates node i's Lease, or takes over the one a previous run (or a real kubelet) left.
pub async fn ensure(api: &Api<Lease>, cfg: &SimConfig, i: usize, node_uid: &str) -> Result<(), kube::Error> {
    let lease = build_lease(cfg, i, node_uid, Timestamp::now());
    match api.create(&PostParams::default(), &lease).await {
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            api.patch(&cfg.node_name(i), &PatchParams::default(), &Patch::Merge(&lease)).await.map(drop)
        }
        r => r.map(drop),
    }
}

/// Moves renewTime to now. A merge patch without resourceVersion: this process is the only
/// writer, so the kubelet's read-modify-update would cost a second request for nothing.
pub async fn renew(leases: &Api<Lease>, nodes: &Api<Node>, cfg: &SimConfig, i: usize) -> Result<(), kube::Error> {
    let name = cfg.node_name(i);
    let patch = Lease {
        spec: Some(LeaseSpec { holder_identity: Some(name.clone()), renew_time: Some(MicroTime(Timestamp::now())), ..Default::default() }),
        ..Default::default()
    };
    match leases.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        // Someone deleted the Lease: recreate it, owned by the Node if that still exists.
        Err(kube::Error::Api(s)) if s.is_not_found() => match nodes.get_opt(&name).await? {
            Some(node) => ensure(leases, cfg, i, node.metadata.uid.as_deref().unwrap_or_default()).await,
            None => Ok(()),
        },
        r => r.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_held_by_its_node_and_owned_by_it() {
        let cfg = SimConfig { nodes: 3, ..Default::default() };
        let now = Timestamp::now();
        let l = build_lease(&cfg, 2, "uid-2", now);
        assert_eq!(l.metadata.name.as_deref(), Some("sim-2"));
        assert_eq!(l.metadata.namespace.as_deref(), Some(NAMESPACE));
        let owner = &l.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Node", "sim-2", "uid-2"));
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("sim-2"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }
}
