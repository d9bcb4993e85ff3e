//! `skiff sim`: N simulated nodes against a cluster (see `skiff_sim`). Stopping it (SIGINT or
//! SIGTERM) leaves the nodes registered, as KWOK does; their Leases expire.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use skiff_sim::Taint;

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Kubeconfig to reach the API server.
    #[arg(long, env = "KUBECONFIG", default_value = "/etc/skiff/kubeconfig.yaml")]
    pub kubeconfig: PathBuf,
    /// API server URL, instead of the kubeconfig's (e.g. https://10.0.0.1:6443).
    #[arg(long)]
    pub server: Option<String>,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Node names are {prefix}{i} for i in 0..nodes.
    #[arg(long, default_value = "sim-")]
    pub name_prefix: String,
    /// CPU capacity (and allocatable) per node.
    #[arg(long, default_value = "32", value_parser = skiff_sim::parse_quantity)]
    pub cpu: String,
    /// Memory capacity (and allocatable) per node.
    #[arg(long, default_value = "256Gi", value_parser = skiff_sim::parse_quantity)]
    pub memory: String,
    /// Ephemeral storage capacity (and allocatable) per node.
    #[arg(long, default_value = "1Ti", value_parser = skiff_sim::parse_quantity)]
    pub ephemeral_storage: String,
    /// Pod capacity per node.
    #[arg(long, default_value_t = 110)]
    pub pods: u32,
    /// Nodes are spread round-robin over topology.kubernetes.io/zone=zone-0..zone-{zones-1}.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub zones: u32,
    /// Extra node labels: k=v,k2=v2.
    #[arg(long, default_value = "", value_parser = skiff_sim::parse_labels)]
    pub node_labels: BTreeMap<String, String>,
    /// Node taints, as kubectl taint spells them: key=value:NoSchedule,key:NoExecute.
    #[arg(long, default_value = "", value_parser = skiff_sim::parse_taints)]
    pub node_taints: ::std::vec::Vec<Taint>, // a whole list per flag, not one item per occurrence
    /// How often each node renews its Lease (the kubelet renews every 10 s a 40 s lease).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_interval_seconds: u64,
    /// How long a bound pod takes to become Running (and a deleted one to go away).
    #[arg(long, default_value_t = 0)]
    pub run_delay_ms: u64,
    /// API requests in flight per concern (registration, leases, pods).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
}

impl SimArgs {
    pub fn config(&self) -> skiff_sim::SimConfig {
        skiff_sim::SimConfig {
            nodes: self.nodes,
            name_prefix: self.name_prefix.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            pods: self.pods,
            ephemeral_storage: self.ephemeral_storage.clone(),
            zones: self.zones as usize,
            node_labels: self.node_labels.clone(),
            node_taints: self.node_taints.clone(),
            lease_interval: Duration::from_secs(self.lease_interval_seconds),
            run_delay: Duration::from_millis(self.run_delay_ms),
            node_status_interval: skiff_sim::NODE_STATUS_REPORT_FREQUENCY,
            concurrency: self.concurrency as usize,
        }
    }
}

/// A client from the kubeconfig (as kubectl would read it), and the URL it talks to.
pub(crate) async fn client(kubeconfig: &std::path::Path, server: Option<&str>) -> anyhow::Result<(kube::Client, String)> {
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", kubeconfig.display()))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    if let Some(url) = server {
        cfg.cluster_url = url.parse().map_err(|e| anyhow::anyhow!("--server {url:?}: {e}"))?;
    }
    let url = cfg.cluster_url.to_string();
    Ok((kube::Client::try_from(cfg)?, url))
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    let (client, url) = client(&args.kubeconfig, args.server.as_deref()).await?;
    tracing::info!(nodes = cfg.nodes, prefix = %cfg.name_prefix, server = %url, "skiff sim starting");
    skiff_sim::run(client, cfg, shutdown_signal()).await.map_err(|e| e.context(format!("API server {url}")))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
