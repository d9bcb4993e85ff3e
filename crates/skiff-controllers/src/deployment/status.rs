//! Deployment status and conditions, as upstream's `calculateStatus` and `syncRolloutStatus`:
//! replica counts summed over the ReplicaSets, `Available` against maxUnavailable, and
//! `Progressing` with upstream's reasons and progress-deadline rules.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::util::{self, available, ready, spec_replicas, status_replicas};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";

pub fn condition(type_: &str, status: &str, reason: &str, message: String, now: Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

pub fn get<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// Upstream's SetDeploymentCondition: same status and reason is no change; same status keeps the
/// transition time; the new condition goes last.
pub fn set(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(cur) = get(status, &cond.type_) {
        if cur.status == cond.status && cur.reason == cond.reason {
            return;
        }
        if cur.status == cond.status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove(status, &cond.type_);
    status.conditions.get_or_insert_with(Vec::new).push(cond);
}

pub fn remove(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

/// Counts from the ReplicaSets plus the Available condition.
pub fn calculate(d: &Deployment, all: &[&ReplicaSet], new_rs: Option<&ReplicaSet>, now: Timestamp) -> DeploymentStatus {
    let old = d.status.clone().unwrap_or_default();
    let avail: i32 = all.iter().map(|r| available(r)).sum();
    let total: i32 = all.iter().map(|r| spec_replicas(r)).sum();
    let mut st = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(|r| status_replicas(r)).sum()),
        updated_replicas: Some(new_rs.map(status_replicas).unwrap_or(0)),
        ready_replicas: Some(all.iter().map(|r| ready(r)).sum()),
        available_replicas: Some(avail),
        unavailable_replicas: Some((total - avail).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    if avail >= util::replicas(d) - util::max_unavailable(d) {
        set(&mut st, condition(AVAILABLE, "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), now));
    } else {
        set(
            &mut st,
            condition(AVAILABLE, "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into(), now),
        );
    }
    st
}

fn has_deadline(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).is_some_and(|s| s != i32::MAX)
}

fn deadline(d: &Deployment) -> SignedDuration {
    SignedDuration::from_secs(d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(600) as i64)
}

/// Every replica updated, present and available, and the spec observed.
pub fn complete(d: &Deployment, st: &DeploymentStatus) -> bool {
    let want = util::replicas(d);
    st.updated_replicas == Some(want)
        && st.replicas == Some(want)
        && st.available_replicas == Some(want)
        && st.observed_generation >= d.metadata.generation
}

fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

fn timed_out(d: &Deployment, st: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(c) = get(st, PROGRESSING) else { return false };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => c.last_update_time.as_ref().is_some_and(|t| t.0 + deadline(d) < now),
    }
}

/// The rollout status upstream computes after each step; also returns when to look again for a
/// progress deadline that has not passed yet.
pub fn rollout(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    now: Timestamp,
) -> (DeploymentStatus, Option<std::time::Duration>) {
    let mut st = calculate(d, all, new_rs, now);
    if !has_deadline(d) {
        remove(&mut st, PROGRESSING);
    }
    let cur = d.status.as_ref().and_then(|s| get(s, PROGRESSING)).cloned();
    let is_complete = st.replicas == st.updated_replicas && cur.as_ref().is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    let rs_name = |what: &str| match new_rs {
        Some(rs) => format!("ReplicaSet \"{}\" {what}", rs.metadata.name.as_deref().unwrap_or_default()),
        None => format!("Deployment \"{}\" {what}", d.metadata.name.as_deref().unwrap_or_default()),
    };
    if has_deadline(d) && !is_complete {
        if complete(d, &st) {
            set(&mut st, condition(PROGRESSING, "True", NEW_RS_AVAILABLE, rs_name("has successfully progressed."), now));
        } else if progressing(d, &st) {
            let mut c = condition(PROGRESSING, "True", RS_UPDATED, rs_name("is progressing."), now);
            if let Some(cur) = &cur {
                if cur.status == "True" {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                remove(&mut st, PROGRESSING);
            }
            set(&mut st, c);
        } else if timed_out(d, &st, now) {
            set(&mut st, condition(PROGRESSING, "False", TIMED_OUT, rs_name("has timed out progressing."), now));
        }
    }
    // ReplicaSet failures (e.g. quota) surface on the Deployment.
    let failure = new_rs
        .into_iter()
        .chain(all.iter().copied())
        .flat_map(|rs| rs.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default())
        .find(|c| c.type_ == REPLICA_FAILURE && c.status == "True");
    match failure {
        Some(f) => set(
            &mut st,
            DeploymentCondition {
                type_: REPLICA_FAILURE.into(),
                status: f.status,
                reason: f.reason,
                message: f.message,
                last_update_time: f.last_transition_time.clone(),
                last_transition_time: f.last_transition_time,
            },
        ),
        None => remove(&mut st, REPLICA_FAILURE),
    }
    // A rollout still within its deadline is looked at again when the deadline would pass.
    let recheck = get(&st, PROGRESSING).filter(|_| has_deadline(d) && !complete(d, &st)).and_then(|c| {
        if c.reason.as_deref() == Some(TIMED_OUT) {
            return None;
        }
        let at = c.last_update_time.as_ref()?.0 + deadline(d);
        (at > now).then(|| at.duration_since(now).unsigned_abs() + std::time::Duration::from_millis(100))
    });
    (st, recheck)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rs(spec: i32, status: i32, avail: i32) -> ReplicaSet {
        serde_json::from_value(json!({"metadata": {"name": "web-1"}, "spec": {"replicas": spec, "selector": {}},
            "status": {"replicas": status, "readyReplicas": avail, "availableReplicas": avail}}))
        .unwrap()
    }

    fn dep(replicas: i32) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": replicas, "progressDeadlineSeconds": 600, "selector": {}, "template": {}}}))
        .unwrap()
    }

    #[test]
    fn complete_rollout_reports_new_replicaset_available() {
        let now = Timestamp::now();
        let d = dep(3);
        let new = rs(3, 3, 3);
        let (st, recheck) = rollout(&d, &[&new], Some(&new), now);
        assert_eq!(
            (st.replicas, st.updated_replicas, st.available_replicas, st.unavailable_replicas),
            (Some(3), Some(3), Some(3), Some(0))
        );
        assert_eq!(get(&st, AVAILABLE).unwrap().status, "True");
        let p = get(&st, PROGRESSING).unwrap();
        assert_eq!(p.reason.as_deref(), Some(NEW_RS_AVAILABLE));
        assert_eq!(p.message.as_deref(), Some("ReplicaSet \"web-1\" has successfully progressed."));
        assert!(recheck.is_none());
    }

    #[test]
    fn stalled_rollout_times_out_after_the_deadline() {
        let now = Timestamp::now();
        let mut d = dep(3);
        let stale = condition(PROGRESSING, "True", RS_UPDATED, "x".into(), now - SignedDuration::from_secs(601));
        d.status =
            Some(DeploymentStatus { conditions: Some(vec![stale]), replicas: Some(1), updated_replicas: Some(1), ..Default::default() });
        let new = rs(1, 1, 0);
        let (st, _) = rollout(&d, &[&new], Some(&new), now);
        let p = get(&st, PROGRESSING).unwrap();
        assert_eq!((p.status.as_str(), p.reason.as_deref()), ("False", Some(TIMED_OUT)));
        assert_eq!(get(&st, AVAILABLE).unwrap().status, "False");
    }

    #[test]
    fn same_status_keeps_transition_time() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let mut st = DeploymentStatus::default();
        set(&mut st, condition(PROGRESSING, "True", NEW_RS_CREATED, "a".into(), t0));
        set(&mut st, condition(PROGRESSING, "True", RS_UPDATED, "b".into(), Timestamp::now()));
        let c = get(&st, PROGRESSING).unwrap();
        assert_eq!(c.reason.as_deref(), Some(RS_UPDATED));
        assert_eq!(c.last_transition_time.as_ref().unwrap().0, t0);
    }
}
