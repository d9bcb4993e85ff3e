//! `skiff scheduler`: the scheduler as its own process (the server also embeds one unless
//! `--disable-scheduler`). Several may run; the `kube-system/kube-scheduler` Lease picks the active one.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Kubeconfig to reach the API server.
    #[arg(long, env = "KUBECONFIG", default_value = "/etc/skiff/kubeconfig.yaml")]
    pub kubeconfig: PathBuf,
    /// KubeSchedulerConfiguration-like file: profiles, plugin weights, scoring strategy.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Take part in leader election (false: schedule unconditionally).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a Lease stays valid without renewal (upstream's flag of the same name).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: std::time::Duration,
    /// How long the leader keeps trying to renew before giving up leadership.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: std::time::Duration,
    /// How often candidates try to acquire and the leader renews.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: std::time::Duration,
}

/// Go-style durations as upstream's flags take them: `15s`, `500ms`, `1m`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).ok_or(format!("{s:?}: missing unit (s, ms, m)"))?;
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: not a duration"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

/// A client from a kubeconfig file, as kubectl would read it.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// `host_random`, like upstream's `hostname_uuid` identities.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "skiff".into());
    format!("{host}_{:08x}", rand::random::<u32>())
}

pub fn options(config: Option<&std::path::Path>, leader_elect: bool) -> anyhow::Result<skiff_scheduler::Options> {
    let mut opts = skiff_scheduler::Options::new(&identity());
    opts.leader_elect = leader_elect;
    match config {
        Some(p) => opts.with_config_file(p),
        None => Ok(opts),
    }
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let mut opts = options(args.config.as_deref(), args.leader_elect)?;
    anyhow::ensure!(
        args.leader_elect_renew_deadline < args.leader_elect_lease_duration,
        "--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration"
    );
    opts.lease_duration = args.leader_elect_lease_duration;
    opts.renew_deadline = args.leader_elect_renew_deadline;
    opts.retry_period = args.leader_elect_retry_period;
    let client = client_from_kubeconfig(&args.kubeconfig).await?;
    tracing::info!(identity = %opts.identity, "skiff scheduler starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    opts.shutdown = Some(stop_rx);
    let mut run = std::pin::pin!(skiff_scheduler::run(client, opts));
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

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
