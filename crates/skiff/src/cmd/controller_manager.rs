//! `skiff controller-manager`: the controllers as their own process (the server also embeds them
//! unless `--disable-controller-manager`). Several may run; the `kube-system/kube-controller-manager`
//! Lease picks the active one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cmd::scheduler::{client_from_kubeconfig, identity, parse_duration, shutdown_signal};

#[derive(Args, Debug)]
pub struct ControllerManagerArgs {
    /// Kubeconfig to reach the API server.
    #[arg(long, env = "KUBECONFIG", default_value = "/etc/skiff/kubeconfig.yaml")]
    pub kubeconfig: PathBuf,
    #[command(flatten)]
    pub common: ControllerFlags,
}

/// Flags the embedded and the stand-alone controller manager share.
#[derive(Args, Debug, Clone)]
pub struct ControllerFlags {
    /// Take part in leader election (false: run the controllers unconditionally).
    #[arg(long = "controllers-leader-elect", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long the controller manager's Lease stays valid without renewal.
    #[arg(long = "controllers-lease-duration", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: std::time::Duration,
    /// How long the leader keeps trying to renew before giving up leadership.
    #[arg(long = "controllers-renew-deadline", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: std::time::Duration,
    /// How often candidates try to acquire and the leader renews.
    #[arg(long = "controllers-retry-period", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: std::time::Duration,
    /// CIDR that each Node's pod CIDR (`spec.podCIDR`) is allocated from.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Addresses for Services of type LoadBalancer (the bare-metal LoadBalancer provider); without
    /// it LoadBalancer Services stay pending, as on a cluster without a cloud.
    #[arg(long)]
    pub lb_pool: Option<ipnet::Ipv4Net>,
    /// Prefix length of each Node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// How often node health is evaluated.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: std::time::Duration,
    /// Silence (no Lease renewal, no status) after which a node is marked Unknown and tainted.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// Nodes per second that get NoExecute taints (and so lose their pods) in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,
    /// The same in a partially disrupted zone larger than --large-cluster-size-threshold.
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,
    /// Zones with at most this many nodes stop evicting when partially disrupted.
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,
    /// Share of not-ready nodes at which a zone counts as partially disrupted.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,
    /// Terminated (Succeeded/Failed) pods kept before the pod GC deletes the oldest; 0 keeps all.
    #[arg(long, default_value_t = 12500)]
    pub terminated_pod_gc_threshold: usize,
    /// How often the pod GC runs (upstream fixes it at 20s).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub pod_gc_period: std::time::Duration,
    /// How long a node missing from the cache waits before the pod GC confirms it is gone and
    /// deletes its pods (upstream fixes it at 40s).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub pod_gc_quarantine: std::time::Duration,
    /// Delay before a failed Job's pods are re-created, doubling per further failure (upstream
    /// fixes it at 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub job_pod_failure_backoff: std::time::Duration,
    /// Cap of that delay (upstream fixes it at 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub job_max_pod_failure_backoff: std::time::Duration,
    /// Serve the controllers' Prometheus metrics at http://ADDR/metrics (off when unset).
    #[arg(long = "controllers-metrics-address")]
    pub metrics_address: Option<SocketAddr>,
}

impl ControllerFlags {
    /// `service_cidr` (when known) is kept out of the pod CIDRs handed to nodes.
    pub fn options(&self, service_cidr: Option<&str>) -> anyhow::Result<skiff_controllers::Options> {
        anyhow::ensure!(
            self.renew_deadline < self.lease_duration,
            "--controllers-renew-deadline must be shorter than --controllers-lease-duration"
        );
        let mut opts = skiff_controllers::Options::new(&identity());
        opts.leader_elect = self.leader_elect;
        (opts.lease_duration, opts.renew_deadline, opts.retry_period) = (self.lease_duration, self.renew_deadline, self.retry_period);
        opts.node_lifecycle = skiff_controllers::nodelifecycle::NodeLifecycleOptions {
            monitor_period: self.node_monitor_period,
            grace_period: self.node_monitor_grace_period,
            eviction_rate: self.node_eviction_rate,
            secondary_eviction_rate: self.secondary_node_eviction_rate,
            large_cluster_threshold: self.large_cluster_size_threshold,
            unhealthy_zone_threshold: self.unhealthy_zone_threshold,
        };
        opts.pod_gc = skiff_controllers::podgc::PodGcOptions {
            terminated_pod_gc_threshold: self.terminated_pod_gc_threshold,
            period: self.pod_gc_period,
            quarantine: self.pod_gc_quarantine,
        };
        opts.job = skiff_controllers::job::JobOptions {
            pod_failure_backoff: self.job_pod_failure_backoff,
            max_pod_failure_backoff: self.job_max_pod_failure_backoff,
        };
        opts.lb_pool = self.lb_pool;
        opts.node_ipam = skiff_controllers::nodeipam::NodeIpamOptions::new(&self.cluster_cidr, self.node_cidr_mask_size, service_cidr)
            .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
        Ok(opts)
    }
}

/// Serves `/metrics` for the controllers on `addr` in the background.
pub async fn serve_metrics(addr: SocketAddr, metrics: Arc<skiff_controllers::Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--controllers-metrics-address {addr}: {e}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.encode()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "controller metrics server stopped");
        }
    });
    Ok(())
}

pub async fn run(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let mut opts = args.common.options(None)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    opts.shutdown = Some(stop_rx);
    if let Some(addr) = args.common.metrics_address {
        serve_metrics(addr, opts.metrics.clone()).await?;
    }
    let client = client_from_kubeconfig(&args.kubeconfig).await?;
    tracing::info!(identity = %opts.identity, "skiff controller-manager starting");
    let mut run = std::pin::pin!(skiff_controllers::run(client, opts));
    tokio::select! {
        r = &mut run => r,
        _ = shutdown_signal() => {
            // Give up the Lease so a standby takes over now, not after the lease duration.
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), run).await;
            Ok(())
        }
    }
}
