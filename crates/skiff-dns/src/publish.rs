//! Each node's DNS server is an endpoint of the `kube-system/kube-dns` Service: one
//! EndpointSlice per node (`kube-dns-<node>`), owned by the Node so the garbage collector
//! removes it with the node. The Service has internalTrafficPolicy Local, so a pod's queries go
//! to the DNS server on its own node and never cross the network.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "kube-dns";
const MANAGER: &str = "skiff-dns";

pub fn slice_name(node: &str) -> String {
    format!("{SERVICE}-{node}")
}

pub fn slice(node: &str, node_uid: &str, ip: IpAddr, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(node), "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE, "endpointslice.kubernetes.io/managed-by": MANAGER},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
        },
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": node}],
        "ports": [{"name": "dns", "port": port, "protocol": "UDP"}, {"name": "dns-tcp", "port": port, "protocol": "TCP"}],
    })
}

/// Publishes this node's endpoint once its Node exists (the kubelet registers it), retrying
/// until the API server takes it.
pub async fn publish(client: Client, node: String, ip: IpAddr, port: u16) {
    let nodes: Api<Node> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
    let params = PatchParams::apply(MANAGER).force();
    loop {
        let result = async {
            let n = nodes.get(&node).await?;
            let uid = n.metadata.uid.unwrap_or_default();
            slices.patch(&slice_name(&node), &params, &Patch::Apply(slice(&node, &uid, ip, port))).await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "kube-dns endpoint not published yet"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
