//! Leader election through a coordination.k8s.io/v1 Lease, as upstream's leaderelection package:
//! acquire when the Lease is absent or expired, renew every `retry`, give up leadership when
//! renewals fail for `renew_deadline`. Only the leader works (schedules, reconciles); the work
//! future is dropped (all its tasks stop) the moment leadership is lost.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl LeaseConfig {
    /// Upstream's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// Tries once to take or keep the Lease; `Ok(true)` when we hold it afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let fresh = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(cfg.name.clone()), namespace: Some(cfg.namespace.clone()), ..Default::default() },
            spec: Some(fresh(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    let new_spec = if holder == cfg.identity {
        fresh(transitions, spec.acquire_time.clone())
    } else {
        let duration = spec.lease_duration_seconds.unwrap_or(15).max(1) as i64;
        let expired = match &spec.renew_time {
            Some(MicroTime(t)) => t.as_second() + duration < now.as_second(),
            None => true,
        };
        if !holder.is_empty() && !expired {
            return Ok(false);
        }
        fresh(transitions + 1, None)
    };
    lease.spec = Some(new_spec);
    // The resourceVersion we read makes this a compare-and-swap: two candidates cannot both win.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `work` whenever this process holds the Lease; returns only if `work` returns.
pub async fn run_as_leader<F, Fut>(client: kube::Client, cfg: LeaseConfig, work: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    run_as_leader_until(client, cfg, work, std::future::pending()).await
}

/// [`run_as_leader`] until `shutdown` resolves; a leader then stops its work and releases the
/// Lease (upstream's ReleaseOnCancel), so a standby or a restarted process takes over at once
/// instead of waiting out the lease duration.
pub async fn run_as_leader_until<F, Fut>(
    client: kube::Client,
    cfg: LeaseConfig,
    work: F,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        loop {
            match try_acquire_or_renew(&api, &cfg).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "leader election: lease not acquired"),
            }
            tokio::select! {
                () = tokio::time::sleep(cfg.retry) => {}
                () = &mut shutdown => return Ok(()),
            }
        }
        tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %cfg.identity, "became leader");
        tokio::select! {
            r = work() => return r,
            () = keep_renewing(&api, &cfg) => tracing::warn!(identity = %cfg.identity, "lost the lease; stopped leading"),
            () = &mut shutdown => {
                if let Err(e) = release(&api, &cfg).await {
                    tracing::debug!(error = %e, "releasing the lease");
                }
                return Ok(());
            }
        }
    }
}

/// Gives the Lease up if we hold it: no holder and a one-second duration, as upstream releases.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    let now = MicroTime(Timestamp::now());
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now.clone());
    spec.acquire_time = Some(now);
    api.replace(&cfg.name, &PostParams::default(), &lease).await?;
    tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), "released the lease");
    Ok(())
}

/// Resolves once `rx` reports shutdown (or its sender is gone): the shutdown signal components
/// embedded in one process share.
pub async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Returns when the Lease could not be renewed within the renew deadline.
async fn keep_renewing(api: &Api<Lease>, cfg: &LeaseConfig) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.retry).await;
        match tokio::time::timeout(cfg.renew_deadline, try_acquire_or_renew(api, cfg)).await {
            Ok(Ok(true)) => last_ok = tokio::time::Instant::now(),
            Ok(Ok(false)) => return, // someone else holds it now
            Ok(Err(e)) => tracing::debug!(error = %e, "lease renewal failed"),
            Err(_) => {}
        }
        if last_ok.elapsed() > cfg.renew_deadline {
            return;
        }
    }
}
