//! skiff's kube-proxy: an API client that watches Services and EndpointSlices and keeps one
//! nftables table (`ip skiff`) in line with them. Every sync is one atomic transaction holding
//! only what changed (`desired.rs` rebuilds only the changed ports); a (re)started proxy first reads which chains and sets the table already
//! has and rewrites it whole in one transaction, so traffic keeps flowing through a restart.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub mod conntrack;
pub mod desired;
pub mod host;
pub mod model;
pub mod nft;
pub mod rules;
mod tool;
pub mod watch;

/// How long a change waits for the ones right behind it before the sync runs.
const COALESCE: Duration = Duration::from_millis(50);
/// A full rewrite now and then repairs anything done to the table behind the proxy's back.
const FULL_RESYNC: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// Source for host-originated traffic to service IPs.
    pub node_ip: Ipv4Addr,
    pub cluster_cidr: Option<Ipv4Net>,
    pub service_cidr: Ipv4Net,
    pub nft: nft::Nft,
    pub conntrack: conntrack::Conntrack,
    /// Host routes and sysctls (off for tests of the rules alone).
    pub manage_host: bool,
}

/// Everything the rules are built from, grouped per Service.
pub fn service_ports(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], node_name: &str) -> Vec<model::ServicePort> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(model::SERVICE_NAME_LABEL)) {
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    let mut out = Vec::new();
    for svc in services {
        let key = (svc.metadata.namespace.as_deref().unwrap_or_default(), svc.metadata.name.as_deref().unwrap_or_default());
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        out.extend(model::service_ports(svc, slices, node_name));
    }
    out
}

/// Runs until `stop` resolves. The table stays in place when the proxy stops, as upstream's does:
/// connections keep flowing while it restarts.
pub async fn run(mut watched: watch::Services, cfg: Config, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    if cfg.manage_host {
        host::sysctls()?;
        host::ensure_service_routes(cfg.service_cidr, cfg.node_ip).await?;
    }
    let opts = rules::Options { cluster_cidr: cfg.cluster_cidr, service_cidr: cfg.service_cidr };

    let mut stop = std::pin::pin!(stop);
    // The first sync waits for complete listings: rules from half a listing would reject
    // traffic to Services that do have endpoints.
    tokio::select! {
        _ = &mut stop => return Ok(()),
        r = watched.ready() => { r?; }
    }
    let mut desired: Option<desired::Desired> = None;
    let mut last_full = Instant::now();
    loop {
        if last_full.elapsed() >= FULL_RESYNC {
            desired = None;
        }
        let started = Instant::now();
        let full = desired.is_none();
        let ports = service_ports(&watched.services.state(), &watched.slices.state(), &cfg.node_name);
        let result = match &mut desired {
            Some(d) => {
                let step = d.update(&ports);
                let r = apply(&cfg.nft, nft::From::Applied(&step.before), &step.after).await;
                if r.is_ok() && !step.stale.is_empty() {
                    match cfg.conntrack.clear(&step.stale).await {
                        Ok(n) => tracing::debug!(flows = n, "forgot datagram flows to removed endpoints"),
                        Err(e) => tracing::warn!(error = format!("{e:#}"), "clearing conntrack entries of removed endpoints"),
                    }
                }
                r
            }
            None => {
                let d = desired.insert(desired::Desired::new(&ports, &opts));
                match cfg.nft.kernel().await {
                    Ok(kernel) => apply(&cfg.nft, nft::From::Kernel(&kernel), &d.ruleset()).await,
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(changed) => {
                let ms = started.elapsed().as_millis() as u64;
                if full {
                    last_full = Instant::now();
                    tracing::info!(services = ports.len(), ms, "proxy rules written");
                } else if changed {
                    tracing::debug!(services = ports.len(), ms, "proxy rules synced");
                }
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "proxy sync failed; rewriting the table");
                desired = None;
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = watched.changed() => tokio::time::sleep(COALESCE).await,
            _ = tokio::time::sleep(FULL_RESYNC) => {}
        }
    }
}

/// Applies the step from `from` to `next`; returns whether anything had to change.
pub async fn apply(nft: &nft::Nft, from: nft::From<'_>, next: &rules::Ruleset) -> anyhow::Result<bool> {
    let tx = nft::transaction(from, next);
    if tx.is_noop() {
        return Ok(false);
    }
    nft.apply(&tx.script()).await?;
    Ok(true)
}
