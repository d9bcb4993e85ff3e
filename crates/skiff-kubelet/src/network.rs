//! The pod network between nodes (host-gw style): every other node's pod CIDR is routed via
//! that node's InternalIP, so pods reach pods on other nodes with their own source address; only
//! traffic leaving the cluster CIDR is masqueraded (a small nftables table of our own).
//!
//! Routes carry protocol number `ROUTE_PROTO`, which is how the agent finds the ones it owns
//! (and removes those of nodes that are gone) without touching anyone else's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::Context;
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};

pub const ROUTE_PROTO: &str = "212";
pub const NAT_TABLE: &str = "skiff-pods";

use skiff_proxy::host::ip;

/// podCIDR → InternalIP for every node but `me` that has both.
pub fn wanted_routes(nodes: &[std::sync::Arc<Node>], me: &str) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(me) {
            continue;
        }
        let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).and_then(|c| c.parse::<Ipv4Net>().ok()) else {
            continue;
        };
        let addr = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
        if let Some(addr) = addr {
            out.insert(cidr, addr);
        }
    }
    out
}

/// Our routes as the kernel has them now.
async fn current_routes() -> anyhow::Result<BTreeMap<Ipv4Net, Ipv4Addr>> {
    let out = ip(&["-j", "route", "show", "proto", ROUTE_PROTO]).await?;
    let v: serde_json::Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })?;
    let mut m = BTreeMap::new();
    for r in v.as_array().into_iter().flatten() {
        if let (Some(dst), Some(gw)) = (r["dst"].as_str(), r["gateway"].as_str()) {
            let dst = if dst.contains('/') { dst.to_string() } else { format!("{dst}/32") };
            if let (Ok(d), Ok(g)) = (dst.parse(), gw.parse()) {
                m.insert(d, g);
            }
        }
    }
    Ok(m)
}

async fn sync_routes(want: &BTreeMap<Ipv4Net, Ipv4Addr>) -> anyhow::Result<()> {
    let have = current_routes().await?;
    for (cidr, via) in want {
        if have.get(cidr) != Some(via) {
            ip(&["route", "replace", &cidr.to_string(), "via", &via.to_string(), "proto", ROUTE_PROTO]).await?;
            tracing::info!(pod_cidr = %cidr, via = %via, "route to a node's pods");
        }
    }
    for cidr in have.keys().filter(|c| !want.contains_key(c)) {
        ip(&["route", "del", &cidr.to_string(), "proto", ROUTE_PROTO]).await?;
        tracing::info!(pod_cidr = %cidr, "route removed (node gone)");
    }
    Ok(())
}

/// Masquerade for pod traffic leaving the cluster CIDR, replaced as a whole (it never changes
/// while the agent runs).
async fn ensure_masquerade(cluster_cidr: Ipv4Net) -> anyhow::Result<()> {
    let script = format!(
        "add table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\ntable ip {NAT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority 110; policy accept;\n    ip saddr {cluster_cidr} ip daddr != {cluster_cidr} ip daddr != 224.0.0.0/4 masquerade\n  }}\n}}\n"
    );
    skiff_proxy::nft::Nft::default().apply(&script).await
}

/// Removes what the pod network set up on this host: the masquerade table, the routes to other
/// nodes, and the CNI bridge (`skiff cleanup`; pods still on the bridge lose their network).
pub async fn remove_all() -> anyhow::Result<()> {
    skiff_proxy::nft::Nft::default().delete_named_table(NAT_TABLE).await?;
    if !ip(&["route", "show", "proto", ROUTE_PROTO]).await?.trim().is_empty() {
        ip(&["route", "flush", "proto", ROUTE_PROTO]).await?;
    }
    if ip(&["link", "show", crate::cni::BRIDGE]).await.is_ok() {
        ip(&["link", "del", crate::cni::BRIDGE]).await?;
    }
    Ok(())
}

/// Keeps the routes in line with the Nodes until the watch ends (never, normally).
pub async fn run(client: kube::Client, me: String, cluster_cidr: Ipv4Net) -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
    ensure_masquerade(cluster_cidr).await?;
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff());
    let mut stream = std::pin::pin!(stream);
    let mut last: Option<BTreeMap<Ipv4Net, Ipv4Addr>> = None;
    while let Some(ev) = stream.next().await {
        if matches!(ev, Ok(watcher::Event::InitApply(_)) | Ok(watcher::Event::Init)) || ev.is_err() {
            continue;
        }
        let want = wanted_routes(&reader.state(), &me);
        if last.as_ref() == Some(&want) {
            continue;
        }
        match sync_routes(&want).await {
            Ok(()) => last = Some(want),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "syncing pod routes");
                last = None;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_go_to_other_nodes_internal_ips() {
        let node = |name: &str, cidr: Option<&str>, ip: &str| -> std::sync::Arc<Node> {
            std::sync::Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"podCIDR": cidr},
                    "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
                }))
                .unwrap(),
            )
        };
        let nodes = vec![
            node("a", Some("10.42.0.0/24"), "10.200.0.1"),
            node("b", Some("10.42.1.0/24"), "10.200.0.2"),
            node("c", None, "10.200.0.3"),
        ];
        let r = wanted_routes(&nodes, "a");
        assert_eq!(r.len(), 1);
        assert_eq!(r[&"10.42.1.0/24".parse::<Ipv4Net>().unwrap()], "10.200.0.2".parse::<Ipv4Addr>().unwrap());
    }
}
