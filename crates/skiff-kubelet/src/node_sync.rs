//! The node's side of the heartbeat: registers the Node, renews its Lease in `kube-node-lease`
//! every 10 s (upstream's default), posts the status when it changes (and at least every minute),
//! and writes the CNI configuration once the Node has a podCIDR.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::Config;
use crate::containerd::Layout;
use crate::cri::Cri;
use crate::node::{self, Readings, RuntimeState};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;
const RENEW: Duration = Duration::from_secs(10);
/// A status that did not change is re-posted this often anyway (upstream: 5 min with Leases;
/// shorter here keeps readings such as available memory visibly fresh).
const STATUS_REFRESH: Duration = Duration::from_secs(60);
const STATUS_CHECK: Duration = Duration::from_secs(10);

pub struct NodeSync {
    client: kube::Client,
    cfg: Config,
    cri: Cri,
    layout: Layout,
}

impl NodeSync {
    pub fn new(client: kube::Client, cfg: Config, cri: Cri, layout: Layout) -> NodeSync {
        NodeSync { client, cfg, cri, layout }
    }

    async fn runtime_state(&self) -> RuntimeState {
        let version = match self.cri.version().await {
            Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
            Err(e) => return RuntimeState { message: e.message().to_string(), ..Default::default() },
        };
        match self.cri.ready().await {
            Ok((runtime_ready, network_ready, message)) => RuntimeState { version, runtime_ready, network_ready, message },
            Err(e) => RuntimeState { version, message: e.message().to_string(), ..Default::default() },
        }
    }

    /// Creates the Node or, when it exists (a restart, or registered before), takes it over
    /// with a fresh status. Retries until the API server answers.
    async fn register(&self, nodes: &Api<Node>) -> Node {
        let mut delay = Duration::from_millis(200);
        loop {
            let rt = self.runtime_state().await;
            let want = node::build(&self.cfg, &Readings::read(&self.cfg.data_dir), &rt, Timestamp::now());
            let result = match nodes.create(&PostParams::default(), &want).await {
                Ok(n) => Ok(n),
                Err(kube::Error::Api(e)) if e.code == 409 => self.post_status(nodes, &want).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => {
                    tracing::info!(node = %self.cfg.node_name, "node registered");
                    return n;
                }
                Err(e) => tracing::warn!(error = %e, "registering the node; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(7));
        }
    }

    async fn post_status(&self, nodes: &Api<Node>, want: &Node) -> Result<Node, kube::Error> {
        // Labels we own are merged in; labels others added (kubectl label) stay.
        let meta = serde_json::json!({ "metadata": { "labels": want.metadata.labels } });
        nodes.patch(&self.cfg.node_name, &PatchParams::default(), &Patch::Merge(&meta)).await?;
        let body = serde_json::json!({ "status": want.status });
        nodes.patch_status(&self.cfg.node_name, &PatchParams::default(), &Patch::Merge(&body)).await
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let mut current = self.register(&nodes).await;
        let mut last_post = tokio::time::Instant::now();
        let mut next_lease = tokio::time::Instant::now();
        let mut next_status = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_lease {
                if let Err(e) = renew_lease(&leases, &self.cfg.node_name, current.metadata.uid.as_deref()).await {
                    tracing::warn!(error = %e, "renewing the node lease");
                }
                next_lease = now + RENEW;
            }
            if now >= next_status {
                // Pick up changes others made (podCIDR from node IPAM, taints, labels).
                match nodes.get_opt(&self.cfg.node_name).await {
                    Ok(Some(n)) => current = n,
                    // Deleted under us: register again, as upstream's kubelet does on restart.
                    Ok(None) => current = self.register(&nodes).await,
                    Err(e) => tracing::debug!(error = %e, "reading the node"),
                }
                self.sync_cni(&current);
                let rt = self.runtime_state().await;
                let old = current.status.clone().unwrap_or_default();
                let new = node::status(&self.cfg, Some(&old), &Readings::read(&self.cfg.data_dir), &rt, Timestamp::now());
                if node::changed(&old, &new) || last_post.elapsed() >= STATUS_REFRESH {
                    let body = serde_json::json!({ "status": { "conditions": new.conditions, "capacity": new.capacity, "allocatable": new.allocatable, "nodeInfo": new.node_info, "addresses": new.addresses } });
                    match nodes.patch_status(&self.cfg.node_name, &PatchParams::default(), &Patch::Merge(&body)).await {
                        Ok(n) => {
                            current = n;
                            last_post = tokio::time::Instant::now();
                        }
                        Err(e) => tracing::warn!(error = %e, "posting node status"),
                    }
                }
                // Until the network is ready, check often: the first pods wait for it.
                let ready = rt.runtime_ready && rt.network_ready;
                next_status = tokio::time::Instant::now() + if ready { STATUS_CHECK } else { Duration::from_millis(500) };
            }
            tokio::time::sleep_until(next_lease.min(next_status)).await;
        }
    }

    fn sync_cni(&self, n: &Node) {
        let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) else { return };
        let ipam = self.cfg.data_dir.join("cni").join("ipam");
        match crate::cni::write(&self.layout.cni_conf_dir, cidr, &ipam, self.cfg.cluster_cidr.is_none()) {
            Ok(true) => tracing::info!(pod_cidr = cidr, "pod network configured"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "writing the CNI configuration"),
        }
    }
}

/// Renews (or creates) the node's Lease, owned by its Node so it goes when the Node goes.
pub async fn renew_lease(leases: &Api<Lease>, node_name: &str, node_uid: Option<&str>) -> Result<(), kube::Error> {
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(node_name.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(now),
        ..Default::default()
    };
    let patch = serde_json::json!({ "spec": { "holderIdentity": spec.holder_identity, "leaseDurationSeconds": spec.lease_duration_seconds, "renewTime": spec.renew_time } });
    match leases.patch(node_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let owner = node_uid.map(|uid| OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.into(),
                uid: uid.into(),
                ..Default::default()
            });
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node_name.into()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: owner.map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
