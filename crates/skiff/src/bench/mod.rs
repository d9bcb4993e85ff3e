//! `skiff bench`: benchmarks that print absolute numbers and ratios against a reference measured in
//! the same run on the same machine (these machines are noisy; only same-run ratios compare).

use clap::{Args, Subcommand};

mod api;
mod apply;
mod churn;
mod client;
mod etcd;
mod podstartup;
mod sandbox;
mod scheduler;
mod server;
mod service;
mod stats;
mod traffic;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// API server: durable ConfigMap creates at 1/16/128 clients, p99 at a fixed rate, list and
    /// watch latency, RSS; the same writes against etcd 3.4 as the reference.
    Api(ApiArgs),
    /// Scheduler: upstream scheduler_perf shapes (5,000 nodes, 10,000 pods) through the API,
    /// against the bindings/s the API accepts with no scheduling work.
    Scheduler(scheduler::SchedulerArgs),
    /// kubectl apply (client- and server-side) of a large manifest against kubectl create of the
    /// same file, and apply-patch vs merge-patch cost per request.
    Apply(apply::ApplyArgs),
    /// Controller manager: N Deployments × R replicas on simulated nodes until all are available,
    /// against the same number of bare pre-bound pods.
    Churn(churn::ChurnArgs),
    /// Kubelet: pods one by one and many at once, create → Running seen by a watch, against the
    /// raw CRI floor (RunPodSandbox + CreateContainer + StartContainer) in the same run; agent
    /// idle RSS. Runs in its own network/PID/mount namespaces (root, containerd installed).
    PodStartup(podstartup::PodStartupArgs),
    /// Service proxy: nftables rule sync at 1,000 and 10,000 Services (first write, restart
    /// rewrite, one Service changing), in a network namespace of its own (root, nft).
    Service(service::ServiceArgs),
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Seconds per write phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Objects for the large list/RSS phase.
    #[arg(long, default_value_t = 100_000)]
    pub objects: usize,
    /// Watchers for the watch-latency phase.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// The etcd binary for the reference run ("" skips it).
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: String,
    /// Directory for data (server store, etcd data); the same disk for both.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: std::path::PathBuf,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Api(args) => api::run(args).await,
        BenchCommand::Scheduler(args) => scheduler::run(args).await,
        BenchCommand::Apply(args) => apply::run(args).await,
        BenchCommand::Churn(args) => churn::run(args).await,
        BenchCommand::PodStartup(args) => podstartup::run(args).await,
        BenchCommand::Service(args) => service::run(args).await,
    }
}
