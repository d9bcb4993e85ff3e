//! The service account controller (upstream's `pkg/controller/serviceaccount`, ServiceAccountsController):
//! every active namespace has a `default` ServiceAccount; it is created when missing and again when
//! someone deletes it. Namespaces that are terminating are left alone (their content is being removed).
//! Token Secrets are not created: upstream stopped doing that in 1.24 (tokens are requested
//! through TokenRequest instead).
//!
//! ServiceAccounts come from an informer whose events are fanned out after its cache applied
//! them, so the reconcile woken by a deletion sees the account gone.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::informer::Informer;
use crate::metrics::{ControllerMetrics, Metrics};

const COMPONENT: &str = "serviceaccount-controller";
/// The accounts every namespace gets (upstream's DefaultServiceAccountsControllerOptions).
const ENSURED: &[&str] = &["default"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("a reflector stopped")]
    StoreGone(#[from] reflector::store::WriterDropped),
}

struct Ctx {
    client: Client,
    accounts: Store<ServiceAccount>,
    metrics: Arc<ControllerMetrics>,
}

pub async fn run(client: Client, metrics: &Metrics) {
    let mut accounts = Informer::new(Api::<ServiceAccount>::all(client.clone()));
    let account_events = accounts.subscribe();
    let ctx = Arc::new(Ctx { client: client.clone(), accounts: accounts.store(), metrics: metrics.controller(COMPONENT) });
    let c = ctx.clone();
    let controller = crate::drain(
        Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
            .watches_stream(account_events, move |sa: ServiceAccount| {
                // Only a deletion of an ensured account needs the namespace looked at again.
                let ns = sa.namespace().unwrap_or_default();
                let gone = ENSURED.contains(&sa.name_any().as_str()) && c.accounts.get(&ObjectRef::from_obj(&sa)).is_none();
                gone.then(|| ObjectRef::<Namespace>::new(&ns))
            })
            .run(reconcile, error_policy, ctx),
        COMPONENT,
    );
    tokio::join!(accounts.run(), controller);
}

fn error_policy(ns: Arc<Namespace>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    tracing::warn!(namespace = %ns.name_any(), "{COMPONENT}: {err}");
    Action::requeue(Duration::from_secs(2))
}

/// Upstream creates accounts only in namespaces whose phase is Active.
pub fn is_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none() && ns.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Active") == "Active"
}

/// The accounts `ns` lacks, given whether each name exists.
pub fn missing(ns: &Namespace, exists: impl Fn(&str) -> bool) -> Vec<&'static str> {
    if !is_active(ns) {
        return Vec::new();
    }
    ENSURED.iter().copied().filter(|name| !exists(name)).collect()
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    crate::informer::ready(&ctx.accounts).await;
    let name = ns.name_any();
    let todo = missing(&ns, |sa| ctx.accounts.get(&ObjectRef::new(sa).within(&name)).is_some());
    let api = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &name);
    for sa in todo {
        let obj = ServiceAccount { metadata: ObjectMeta { name: Some(sa.into()), ..Default::default() }, ..Default::default() };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => tracing::debug!(namespace = %name, "created ServiceAccount {sa}"),
            // Created meanwhile (our store lags our own write).
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) if crate::endpoints::is_namespace_terminating(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ns(phase: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta { name: Some("x".into()), ..Default::default() },
            status: phase.map(|p| NamespaceStatus { phase: Some(p.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn default_account_is_ensured_in_active_namespaces_only() {
        assert_eq!(missing(&ns(Some("Active")), |_| false), ["default"]);
        assert!(missing(&ns(Some("Active")), |n| n == "default").is_empty());
        assert!(missing(&ns(Some("Terminating")), |_| false).is_empty());
        let mut deleting = ns(Some("Active"));
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(missing(&deleting, |_| false).is_empty());
    }
}
