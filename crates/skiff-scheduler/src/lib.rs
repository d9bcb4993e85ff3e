//! skiff-scheduler: kube-scheduler's role. An API client (hard rule 1) that watches unscheduled
//! pods and nodes, runs upstream's filter/score plugins over a node snapshot, and binds through
//! `pods/binding`. See ARCHITECTURE.md for how the pieces fit.

pub mod cache;
pub mod config;
pub mod framework;
pub mod informer;
pub mod node_info;
pub mod plugins;
pub mod quantity;
pub mod queue;
pub mod report;
pub mod resources;
pub mod schedule;
pub mod scheduler;

pub use config::{DEFAULT_SCHEDULER, Profile};
pub use skiff_lease as leader;

/// Where and how the scheduler runs.
pub struct Options {
    pub profiles: Vec<Profile>,
    /// This instance's name in the Lease and in Events.
    pub identity: String,
    /// Take part in leader election on `kube-system/kube-scheduler` (upstream's default).
    pub leader_elect: bool,
    pub lease_duration: std::time::Duration,
    pub renew_deadline: std::time::Duration,
    pub retry_period: std::time::Duration,
    /// When this turns true the scheduler stops and the Lease is released.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Options {
    pub fn new(identity: &str) -> Options {
        let lease = leader::LeaseConfig::new("kube-system", "kube-scheduler", identity);
        Options {
            profiles: vec![Profile::default_profile()],
            identity: identity.to_string(),
            leader_elect: true,
            lease_duration: lease.lease_duration,
            renew_deadline: lease.renew_deadline,
            retry_period: lease.retry,
            shutdown: None,
        }
    }

    /// Reads profiles from a KubeSchedulerConfiguration-like file.
    pub fn with_config_file(mut self, path: &std::path::Path) -> anyhow::Result<Options> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        self.profiles = config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(self)
    }
}

/// Runs the scheduler until the future is dropped.
pub async fn run(client: kube::Client, opts: Options) -> anyhow::Result<()> {
    let Options { profiles, identity, leader_elect, lease_duration, renew_deadline, retry_period, shutdown } = opts;
    let profiles = std::sync::Arc::new(profiles);
    let work = || {
        let (client, identity) = (client.clone(), identity.clone());
        let profiles: Vec<Profile> = profiles.iter().map(Profile::clone_shallow).collect();
        scheduler::run(client, profiles, identity)
    };
    if leader_elect {
        let mut lease = leader::LeaseConfig::new("kube-system", "kube-scheduler", &identity);
        (lease.lease_duration, lease.renew_deadline, lease.retry) = (lease_duration, renew_deadline, retry_period);
        let stop = async {
            match shutdown {
                Some(rx) => leader::stopped(rx).await,
                None => std::future::pending().await,
            }
        };
        leader::run_as_leader_until(client.clone(), lease, work, stop).await
    } else {
        work().await
    }
}
pub mod selector;
