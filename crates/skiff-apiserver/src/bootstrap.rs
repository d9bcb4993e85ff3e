//! Objects every cluster has from the start, created through the same admission path as user
//! writes (so they carry uid, timestamps and defaults) and only when missing.

use serde_json::{Value, json};

use crate::Api;
use crate::handler::write::{FieldValidation, prepare_create, store_create};

const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];
/// Namespaces upstream refuses to delete.
pub const UNDELETABLE_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

async fn create_if_missing(api: &Api, plural: &str, group: &str, ns: Option<&str>, mut obj: Value) -> anyhow::Result<()> {
    let desc = api.registry.lookup(group, "v1", plural).expect("built-in resource").clone();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if api.cache.cache(&desc).get(&desc.key(ns, &name)).is_some() {
        return Ok(());
    }
    let (obj, _) = prepare_create(api, &desc, ns, &mut obj, FieldValidation::Strict)
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap {plural}/{name}: {}", e.message))?;
    match store_create(api, &desc, ns, &name, obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::anyhow!("bootstrap {plural}/{name}: {}", e.message)),
    }
}

pub async fn ensure_builtin_objects(api: &Api) -> anyhow::Result<()> {
    for ns in SYSTEM_NAMESPACES {
        create_if_missing(api, "namespaces", "", None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await?;
    }
    api.cache.wait_fresh().await.map_err(|e| anyhow::anyhow!(e.message))?;
    // Upstream's API server creates these two classes; critical add-ons name them.
    for (name, value, desc) in [
        ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
        (
            "system-cluster-critical",
            2_000_000_000,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
    ] {
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value, "description": desc, "preemptionPolicy": "PreemptLowerPriority"});
        create_if_missing(api, "priorityclasses", "scheduling.k8s.io", None, pc).await?;
    }
    let ip = api.config.service_cidr.nth(1).to_string();
    create_if_missing(
        api,
        "services",
        "",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api.config.secure_port}], "sessionAffinity": "None"},
        }),
    )
    .await?;
    create_if_missing(
        api,
        "endpoints",
        "",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": api.config.advertise_address}], "ports": [{"name": "https", "port": api.config.secure_port, "protocol": "TCP"}]}],
        }),
    )
    .await?;
    // Upstream's API server keeps the EndpointSlice beside the Endpoints (no managed-by label, so
    // the EndpointSlice controller leaves it alone); the service proxy programs from slices.
    let family = if api.config.advertise_address.contains(':') { "IPv6" } else { "IPv4" };
    create_if_missing(
        api,
        "endpointslices",
        "discovery.k8s.io",
        Some("default"),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": family,
            "endpoints": [{"addresses": [api.config.advertise_address], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": api.config.secure_port, "protocol": "TCP"}],
        }),
    )
    .await?;
    // The cluster DNS Service (CoreDNS's name, so tools that look for it find it). It has no
    // selector: each node's DNS server publishes itself as an endpoint (skiff-dns), and Local
    // internal traffic keeps a pod's queries on its own node.
    let dns_ip = api.config.service_cidr.nth(10).to_string();
    // Not fatal: a cluster whose data predates it may have given that address to another Service.
    if let Err(e) = create_if_missing(
        api,
        "services",
        "",
        Some("kube-system"),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "skiff-dns"}},
            "spec": {"type": "ClusterIP", "clusterIP": dns_ip, "internalTrafficPolicy": "Local", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 10053},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 10053},
            ]},
        }),
    )
    .await
    {
        tracing::warn!(error = %e, "no kube-dns Service: cluster DNS is unreachable through its address");
    }
    api.cache.wait_fresh().await.map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(())
}
