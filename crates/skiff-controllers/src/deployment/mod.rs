//! The Deployment controller: owns ReplicaSets named by the pod template's hash and moves replicas
//! from old to new ones by the Deployment's strategy, as upstream's deployment controller does.
//!
//! One reconcile takes one step (create or scale one set of ReplicaSets, then report status) and
//! waits for the ReplicaSet watch to show the result before the next: every ReplicaSet write is a
//! compare-and-swap on the cached resourceVersion, so a step computed from a stale cache fails with
//! a conflict instead of doing something twice. `rollout.rs` has the strategies, `status.rs` the
//! conditions, `util.rs` the arithmetic.

mod rollout;
pub mod status;
pub mod util;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::events::Recorder;
use crate::metrics::{ControllerMetrics, Metrics};
use crate::podutil::{self, PodSelector, controller_ref, owner_ref};

const COMPONENT: &str = "deployment-controller";

pub struct Ctx {
    client: Client,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    events: Recorder,
    metrics: Arc<ControllerMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Retry(String),
}

pub async fn run(
    client: Client,
    metrics: &Metrics,
    (replicasets, rs_events): (Store<ReplicaSet>, impl Stream<Item = Result<ReplicaSet, watcher::Error>> + Send + 'static),
    (pods, pod_events): (Store<Pod>, impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static),
) {
    let ctrl = Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default());
    let deployments = ctrl.store();
    let (deps_for_rs, deps_for_pods, rs_for_pods) = (deployments.clone(), deployments, replicasets.clone());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        replicasets,
        pods,
        events: Recorder::new(client, COMPONENT),
        metrics: metrics.controller(COMPONENT),
    });
    crate::drain(
        ctrl.watches_stream(rs_events, move |rs: ReplicaSet| owners_of_rs(&deps_for_rs, &rs))
            .watches_stream(pod_events, move |pod: Pod| recreate_owner(&rs_for_pods, &deps_for_pods, &pod))
            .run(reconcile, error_policy, ctx),
        COMPONENT,
    )
    .await;
}

/// A ReplicaSet event concerns its controlling Deployment or, for an orphan, every Deployment in
/// its namespace whose selector matches it (one may adopt it).
fn owners_of_rs(deployments: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.namespace().unwrap_or_default();
    if let Some(r) = controller_ref(&rs.metadata) {
        return if r.kind == "Deployment" { vec![ObjectRef::new(&r.name).within(&ns)] } else { vec![] };
    }
    let labels = podutil::labels(&rs.metadata);
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| PodSelector::new(d.spec.as_ref().map(|s| &s.selector)).matches(labels))
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

/// Recreate waits for the old pods to be gone, so their events concern the Deployment.
fn recreate_owner(rss: &Store<ReplicaSet>, deployments: &Store<Deployment>, pod: &Pod) -> Option<ObjectRef<Deployment>> {
    let ns = pod.namespace()?;
    let r = controller_ref(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let rs = rss.get(&ObjectRef::new(&r.name).within(&ns))?;
    let d = controller_ref(&rs.metadata).filter(|r| r.kind == "Deployment")?;
    let dref = ObjectRef::new(&d.name).within(&ns);
    let dep = deployments.get(&dref)?;
    (!util::is_rolling(&dep)).then_some(dref)
}

fn error_policy(_d: Arc<Deployment>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    match err {
        // A conflict means our cache was behind; the watch event that brings it up to date is on
        // its way, so try again soon.
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Action::requeue(Duration::from_millis(200)),
        Error::Retry(_) => Action::requeue(Duration::from_millis(200)),
        e => {
            tracing::warn!("deployment controller: {e}");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    crate::informer::ready(&ctx.replicasets).await;
    crate::informer::ready(&ctx.pods).await;
    let mut s = rollout::Sync::new(&ctx, (*d).clone());
    s.claim_replicasets().await?;
    if d.metadata.deletion_timestamp.is_some() {
        s.sync_status_only().await?;
        return Ok(Action::await_change());
    }
    s.check_paused_conditions().await?;
    let paused = d.spec.as_ref().and_then(|sp| sp.paused).unwrap_or(false);
    if paused || s.is_scaling_event() {
        s.sync_scale().await?;
    } else if util::is_rolling(&d) {
        s.rolling().await?;
    } else {
        s.recreate().await?;
    }
    Ok(match s.recheck {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

impl Ctx {
    fn deployments(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn replicaset_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }
}

/// Writes the Deployment's status (a compare-and-swap on the version we read).
async fn write_status(ctx: &Ctx, d: &mut Deployment, status: DeploymentStatus) -> Result<(), Error> {
    if d.status.as_ref() == Some(&status) {
        return Ok(());
    }
    d.status = Some(status);
    let api = ctx.deployments(&d.namespace().unwrap_or_default());
    match api.replace_status(&d.name_any(), &PostParams::default(), &*d).await {
        Ok(updated) => {
            *d = updated;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Keeps the Deployment's revision annotation equal to its newest ReplicaSet's.
async fn write_revision(ctx: &Ctx, d: &mut Deployment, revision: i64) -> Result<(), Error> {
    let rev = revision.to_string();
    if d.metadata.annotations.as_ref().and_then(|a| a.get(util::REVISION)) == Some(&rev) {
        return Ok(());
    }
    let api = ctx.deployments(&d.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {util::REVISION: rev}, "resourceVersion": d.metadata.resource_version}});
    match api.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(updated) => {
            *d = updated;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn owner(d: &Deployment) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    owner_ref("apps/v1", "Deployment", &d.metadata)
}
