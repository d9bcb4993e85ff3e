//! skiff: Kubernetes in one binary. This crate is only the CLI and the wiring; each component lives
//! in its own crate (see ARCHITECTURE.md).

use clap::{Parser, Subcommand};

mod bench;
mod cmd;
mod inprocess;

// glibc malloc's per-thread arenas cost ~20% of the API server's CPU on the create path (perf, see
// BENCHMARKS.md); mimalloc's thread-local free lists are the usual fix.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "skiff", version, about = "Kubernetes in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (API server, datastore, controllers, scheduler) and a node agent.
    Server(Box<cmd::server::ServerArgs>),
    /// Run a node agent (kubelet role) against a cluster.
    Agent(cmd::agent::AgentArgs),
    /// Run the scheduler on its own (leader-elected; the server embeds one by default).
    Scheduler(cmd::scheduler::SchedulerArgs),
    /// Run the controller manager on its own (leader-elected; the server embeds one by default).
    ControllerManager(cmd::controller_manager::ControllerManagerArgs),
    /// Run N simulated nodes against a cluster (register, heartbeat, "run" bound pods).
    Sim(cmd::sim::SimArgs),
    /// Container images on this node (import tarballs).
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Remove the host networking a stopped agent leaves in place (nftables tables, routes, CNI bridge).
    Cleanup,
    /// Print the skiff and Kubernetes API versions.
    Version,
    /// Benchmarks with a same-run reference (build with --release).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// SKIFF_LOG (default info). hickory-server logs every DNS query at info, which on a node
/// answering its pods' lookups would be most of the log and much of the DNS cost, so its
/// crates stay at warn unless SKIFF_LOG names them.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !spec.contains("hickory") {
        for d in ["hickory_server=warn", "hickory_proto=warn", "hickory_resolver=warn", "hickory_net=warn"] {
            filter = filter.add_directive(d.parse().expect("static directive"));
        }
    }
    filter
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One TLS backend for the whole process (kube and our server both use ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Version => {
            println!("skiff version v{} (Kubernetes API {})", env!("CARGO_PKG_VERSION"), skiff_apiserver::KUBERNETES_VERSION);
            Ok(())
        }
        Command::Bench(cmd) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(bench::run(cmd))
        }
        Command::Scheduler(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(cmd::scheduler::run(args))
        }
        Command::ControllerManager(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(cmd::controller_manager::run(args))
        }
        Command::Sim(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(cmd::sim::run(args))
        }
        Command::Cleanup => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(cmd::cleanup::run())
        }
        Command::Image(cmd) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(cmd::image::run(cmd))
        }
        Command::Agent(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(cmd::agent::run(args))
        }
        Command::Server(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(cmd::server::run(*args))
        }
    }
}
