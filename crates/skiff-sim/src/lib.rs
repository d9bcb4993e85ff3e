//! skiff sim: thousands of simulated nodes in one process (the KWOK idea). To the cluster each one
//! looks like a kubelet: a registered Ready Node, a Lease renewed every few seconds, and pods bound
//! to it reported Running (and, when a pod asks with an annotation, exiting; see [`EXIT_AFTER_MS`]). Nothing runs; it is an API client only, for scale work on the control
//! plane (scheduler, watch fan-out, controllers).
//!
//! Cost is per cluster, not per node: a node is an index (its name, addresses and objects are
//! derived from it), and three loops (leases, node status, pods) serve all nodes.
//!
//! On shutdown the nodes stay registered, as with KWOK: their Leases expire, which is what a
//! node that went away looks like. Running again with the same prefix takes them over.

mod config;
mod errors;
mod lease;
mod node;
mod pace;
mod pods;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

pub use config::{MAX_NODES, NODE_STATUS_REPORT_FREQUENCY, SimConfig, parse_labels, parse_quantity, parse_taints};
pub use k8s_openapi::api::core::v1::Taint;
pub use lease::NAMESPACE as LEASE_NAMESPACE;
pub use node::{CONTAINER_RUNTIME_VERSION, KUBELET_VERSION, build_node, node_ip};
pub use pods::{EXIT_AFTER_MS, EXIT_CODE, exited_status, running_status};

static LEASE_ERRORS: errors::Throttle = errors::Throttle::new("lease renewal");
static STATUS_ERRORS: errors::Throttle = errors::Throttle::new("node status report");

/// Registers the nodes, then keeps them alive and runs their pods until `shutdown` completes.
/// Returns early only with an error (registration failed, or the pod watch ended).
pub async fn run(client: kube::Client, cfg: SimConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let work = async {
        let since = Timestamp::now();
        register_since(&client, &cfg, since).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        let leases: Api<Lease> = Api::namespaced(client.clone(), lease::NAMESPACE);
        let start = tokio::time::Instant::now();
        let renew_leases = pace::round_robin(cfg.nodes, cfg.lease_interval, cfg.concurrency, start, |i| {
            let (leases, nodes, cfg) = (&leases, &nodes, &cfg);
            async move {
                if let Err(e) = lease::renew(leases, nodes, cfg, i).await {
                    LEASE_ERRORS.warn(&cfg.node_name(i), &e);
                }
            }
        });
        // Few in flight: these are rare, and must not compete with the Leases.
        let report_status = pace::round_robin(cfg.nodes, cfg.node_status_interval, 4, start, |i| {
            let (nodes, cfg) = (&nodes, &cfg);
            async move {
                if let Err(e) = node::report_status(nodes, cfg, i, since).await {
                    STATUS_ERRORS.warn(&cfg.node_name(i), &e);
                }
            }
        });
        tokio::select! {
            r = pods::run(client.clone(), cfg.clone()) => r,
            () = renew_leases => unreachable!("lease renewal never ends"),
            () = report_status => unreachable!("status reports never end"),
        }
    };
    tokio::select! {
        r = work => r,
        () = shutdown => {
            tracing::info!(nodes = cfg.nodes, "skiff sim stopping; nodes stay registered until their Leases expire");
            Ok(())
        }
    }
}

/// Creates (or takes over) every node and its Lease, `cfg.concurrency` at a time, and returns how
/// long it took. Fails if any node could not be registered after a few retries.
pub async fn register(client: &kube::Client, cfg: &SimConfig) -> anyhow::Result<Duration> {
    cfg.validate()?;
    register_since(client, cfg, Timestamp::now()).await
}

async fn register_since(client: &kube::Client, cfg: &SimConfig, since: Timestamp) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease::NAMESPACE);
    let failed: Vec<(usize, kube::Error)> = futures::stream::iter(0..cfg.nodes)
        .map(|i| {
            let (nodes, leases) = (&nodes, &leases);
            async move {
                let node = errors::with_retries(|| node::register(nodes, cfg, i, since)).await?;
                let uid = node.metadata.uid.unwrap_or_default();
                errors::with_retries(|| lease::ensure(leases, cfg, i, &uid)).await
            }
            .map(move |r| r.err().map(|e| (i, e)))
        })
        .buffer_unordered(cfg.concurrency)
        .filter_map(std::future::ready)
        .collect()
        .await;
    if let Some((i, e)) = failed.first() {
        anyhow::bail!("registering {} of {} nodes failed; {}: {e}", failed.len(), cfg.nodes, cfg.node_name(*i));
    }
    let took = t0.elapsed();
    tracing::info!(nodes = cfg.nodes, prefix = %cfg.name_prefix, "registered {} nodes in {} ms", cfg.nodes, took.as_millis());
    Ok(took)
}
