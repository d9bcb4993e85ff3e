//! The TTL-after-finished controller, as upstream's `pkg/controller/ttlafterfinished`: a Job
//! with `spec.ttlSecondsAfterFinished` is deleted that many seconds after its `Complete` or
//! `Failed` condition's transition time. Deletion is in the foreground, as upstream's, so the Job
//! disappears only after the garbage collector removed its pods; and it is preconditioned on the
//! uid and resourceVersion of a fresh read, so a TTL changed meanwhile is honoured.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::clock::Clock;
use crate::job::finished_condition;
use crate::metrics::{ControllerMetrics, Metrics};

pub const COMPONENT: &str = "ttl-after-finished-controller";

struct Ctx {
    client: Client,
    clock: Arc<dyn Clock>,
    metrics: Arc<ControllerMetrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

pub async fn run(
    client: Client,
    metrics: &Metrics,
    jobs: (Store<Job>, impl futures::Stream<Item = Result<Job, watcher::Error>> + Send + 'static),
    clock: Arc<dyn Clock>,
) {
    let ctx = Arc::new(Ctx { client, clock, metrics: metrics.controller(COMPONENT) });
    let ctrl = Controller::for_stream(jobs.1, jobs.0);
    crate::drain(ctrl.run(reconcile, error_policy, ctx), COMPONENT).await;
}

fn error_policy(_job: Arc<Job>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    tracing::warn!("{COMPONENT}: {err}");
    Action::requeue(Duration::from_secs(2))
}

/// When the Job's TTL runs out, if it has one and has finished.
pub fn expires_at(job: &Job) -> Option<Timestamp> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished = finished_condition(job)?.last_transition_time.as_ref()?.0;
    Some(finished + SignedDuration::from_secs(ttl as i64))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let Some(at) = expires_at(&job) else { return Ok(Action::await_change()) };
    let now = ctx.clock.now();
    if at > now {
        return Ok(Action::requeue(at.duration_since(now).unsigned_abs()));
    }
    // The cached Job may be stale (its TTL just changed): decide again on a fresh read.
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let Some(fresh) = api.get_opt(&job.name_any()).await? else { return Ok(Action::await_change()) };
    let Some(at) = expires_at(&fresh) else { return Ok(Action::await_change()) };
    let now = ctx.clock.now();
    if at > now {
        return Ok(Action::requeue(at.duration_since(now).unsigned_abs()));
    }
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions { uid: fresh.metadata.uid.clone(), resource_version: fresh.metadata.resource_version.clone() }),
        ..Default::default()
    };
    match api.delete(&fresh.name_any(), &dp).await {
        Ok(_) => {
            tracing::debug!(job = %fresh.name_any(), "deleted finished Job after its TTL");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        // Changed since the read: the watch brings the new version.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::requeue(Duration::from_secs(1))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn expires_ttl_seconds_after_the_terminal_condition() {
        let mut job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "default"},
            "spec": {"ttlSecondsAfterFinished": 30, "template": {}},
            "status": {"conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "Complete", "status": "True", "lastTransitionTime": "2025-01-01T00:00:10Z"}
            ]}
        }))
        .unwrap();
        assert_eq!(expires_at(&job), Some("2025-01-01T00:00:40Z".parse().unwrap()));
        job.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        assert_eq!(expires_at(&job), None);
        job.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(0);
        job.status.as_mut().unwrap().conditions.as_mut().unwrap().pop();
        assert_eq!(expires_at(&job), None, "not finished yet");
    }
}
