//! The Job controller (batch/v1), as upstream's `pkg/controller/job`: run pods until
//! `completions` of them succeeded (NonIndexed), or one per index `0..completions` succeeded
//! (Indexed), at most `parallelism` at a time; give up after `backoffLimit` failures or
//! `activeDeadlineSeconds`; honour `suspend`.
//!
//! Counting is upstream's finalizer-based tracking: every pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer until the controller has counted it. A finished pod
//! is first recorded by uid in `status.uncountedTerminatedPods`, then its finalizer is removed,
//! then the uid moves into `succeeded`/`failed`; so a pod that is deleted (or a controller that
//! crashes) at any point is counted exactly once. Status writes are full updates carrying the
//! cached resourceVersion, so a reconcile working from a stale Job gets a 409 instead of
//! overwriting newer counts.
//!
//! The terminal conditions follow upstream 1.31+: `SuccessCriteriaMet` (or `FailureTarget`) is
//! written first, and `Complete` (or `Failed`) only once no pod is uncounted or still terminating.
//! Pods of a failing Job are re-created after an exponential backoff (10 s, doubling, capped;
//! both configurable, see [`JobOptions`]).
//!
//! Not implemented (a Job using them runs as if they were absent): `podFailurePolicy` rules,
//! `successPolicy`, `backoffLimitPerIndex`/`maxFailedIndexes`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use futures::stream::BoxStream;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::clock::Clock;
use crate::events::{Recorder, reference};
use crate::expectations::Expectations;
use crate::informer::Informer;
use crate::metrics::{ControllerMetrics, Metrics};
use crate::podutil::{self, PodSelector, controller_ref, is_active, is_ready, owner_ref, pod_from_template};

pub const COMPONENT: &str = "job-controller";
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation (and, since upstream's PodIndexLabel, label) with an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// `spec.managedBy` of Jobs this controller syncs (unset means the same).
const MANAGED_BY: &str = "kubernetes.io/job-controller";
/// Upstream's MaxUncountedPods: keeps `uncountedTerminatedPods` around 20 KB.
const MAX_UNCOUNTED_PODS: usize = 500;
/// Upstream's MaxPodCreateDeletePerSync.
const MAX_POD_CHANGES_PER_SYNC: usize = 500;

const SUCCEEDED: &str = "Succeeded";
const FAILED: &str = "Failed";

/// Knobs of the Job controller; upstream hard-codes them (DefaultJobPodFailureBackOff,
/// MaxJobPodFailureBackOff), tests shorten them.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Delay before re-creating pods after the first failure; doubles per further failure.
    pub pod_failure_backoff: Duration,
    pub max_pod_failure_backoff: Duration,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions { pod_failure_backoff: Duration::from_secs(10), max_pod_failure_backoff: Duration::from_secs(10 * 60) }
    }
}

/// Pods whose tracking finalizer this controller removed (or is removing) but whose update the
/// pod watch has not shown yet, by Job uid (upstream's uidTrackingExpectations). Such a pod was
/// already counted; until the watch catches up it must not be counted again.
#[derive(Default)]
pub struct FinalizerExpectations {
    by_job: Mutex<HashMap<String, HashSet<String>>>,
}

impl FinalizerExpectations {
    fn expect_removals(&self, job_uid: &str, pods: &[Arc<Pod>]) {
        let mut map = self.by_job.lock().unwrap();
        let set = map.entry(job_uid.to_string()).or_default();
        set.extend(pods.iter().map(|p| pod_uid(p).to_string()));
    }

    fn removal_observed(&self, job_uid: &str, pod_uid: &str) {
        let mut map = self.by_job.lock().unwrap();
        if let Some(set) = map.get_mut(job_uid) {
            set.remove(pod_uid);
            if set.is_empty() {
                map.remove(job_uid);
            }
        }
    }

    /// The expected uids still among `pods`; the rest are gone for good and are forgotten.
    fn expected(&self, job_uid: &str, pods: &[Arc<Pod>]) -> HashSet<String> {
        let mut map = self.by_job.lock().unwrap();
        let Some(set) = map.get_mut(job_uid) else { return HashSet::new() };
        let present: HashSet<&str> = pods.iter().map(|p| pod_uid(p)).collect();
        set.retain(|u| present.contains(u.as_str()));
        let out = set.clone();
        if set.is_empty() {
            map.remove(job_uid);
        }
        out
    }

    fn forget(&self, job_uid: &str) {
        self.by_job.lock().unwrap().remove(job_uid);
    }

    /// Feeds one pod watch event (from the pod informer's tap).
    pub fn observe(&self, event: &Event<Pod>) {
        let (pod, deleted) = match event {
            Event::Apply(p) | Event::InitApply(p) => (p, false),
            Event::Delete(p) => (p, true),
            Event::Init | Event::InitDone => return,
        };
        let Some(owner) = controller_ref(&pod.metadata) else { return };
        if deleted || !has_finalizer(pod) {
            self.removal_observed(&owner.uid, pod_uid(pod));
        }
    }
}

/// Failures since the last success, for the re-creation backoff (upstream's backoffRecord).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackoffRecord {
    pub failures_after_last_success: i32,
    pub last_failure_time: Option<Timestamp>,
}

struct Ctx {
    client: Client,
    pods: Store<Pod>,
    exp: Arc<Expectations>,
    fin: Arc<FinalizerExpectations>,
    events: Recorder,
    metrics: Arc<ControllerMetrics>,
    clock: Arc<dyn Clock>,
    opts: JobOptions,
    /// By Job uid; kept in memory only, as upstream's podBackoffStore.
    backoff: Arc<Mutex<HashMap<String, BackoffRecord>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

type Events<K> = (Store<K>, BoxStream<'static, Result<K, watcher::Error>>);

/// What the Job controller takes from the shared informers.
pub struct Inputs {
    jobs: Events<Job>,
    pods: Events<Pod>,
    /// Pod and Job events for the orphan-finalizer cleanup.
    orphan_pods: BoxStream<'static, Result<Pod, watcher::Error>>,
    job_events: BoxStream<'static, Result<Job, watcher::Error>>,
    exp: Arc<Expectations>,
    fin: Arc<FinalizerExpectations>,
}

impl Inputs {
    /// Subscribes to both informers and taps the pod informer for the finalizer expectations
    /// (`exp` is the shared creation/deletion expectations, fed by its own tap).
    pub fn new(jobs: &mut Informer<Job>, pods: &mut Informer<Pod>, exp: Arc<Expectations>) -> Inputs {
        let fin = Arc::new(FinalizerExpectations::default());
        let tap = fin.clone();
        pods.tap_applied(move |ev| tap.observe(ev));
        Inputs {
            jobs: (jobs.store(), Box::pin(jobs.subscribe())),
            pods: (pods.store(), Box::pin(pods.subscribe())),
            orphan_pods: Box::pin(pods.subscribe()),
            job_events: Box::pin(jobs.subscribe()),
            exp,
            fin,
        }
    }
}

/// Runs the Job controller (and its orphan-pod finalizer cleanup) until dropped.
pub async fn run(client: Client, metrics: &Metrics, inputs: Inputs, clock: Arc<dyn Clock>, opts: JobOptions) {
    let Inputs { jobs: (job_store, job_stream), pods: (pod_store, pod_stream), orphan_pods, job_events, exp, fin } = inputs;
    let backoff = Arc::new(Mutex::new(HashMap::new()));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods: pod_store.clone(),
        exp,
        fin: fin.clone(),
        events: Recorder::new(client.clone(), COMPONENT),
        metrics: metrics.controller(COMPONENT),
        clock,
        opts,
        backoff: backoff.clone(),
    });
    let owners = job_store.clone();
    let jobs_ctrl = Controller::for_stream(job_stream, job_store.clone())
        .watches_stream(pod_stream, move |pod: Pod| jobs_of(&owners, &pod))
        .run(reconcile, error_policy, ctx);
    let orphans = orphan_finalizers(client, metrics, job_store, pod_store, orphan_pods, job_events, fin, backoff);
    tokio::join!(crate::drain(jobs_ctrl, COMPONENT), orphans);
}

/// Which Jobs a pod event concerns: its controlling Job, or for an orphan, the Jobs whose
/// selector matches it (one may adopt it).
fn jobs_of(jobs: &Store<Job>, pod: &Pod) -> Vec<ObjectRef<Job>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_ref(&pod.metadata) {
        return if r.kind == "Job" { vec![ObjectRef::new(&r.name).within(&ns)] } else { vec![] };
    }
    if !is_active(pod) {
        return vec![];
    }
    let labels = podutil::labels(&pod.metadata);
    jobs.state()
        .iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| PodSelector::new(j.spec.as_ref().and_then(|s| s.selector.as_ref())).matches(labels))
        .map(|j| ObjectRef::from_obj(j.as_ref()))
        .collect()
}

fn error_policy(_job: Arc<Job>, err: &Error, ctx: Arc<Ctx>) -> Action {
    match err {
        // A status write from a stale cached Job; the watch brings the newer one.
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Action::requeue(Duration::from_millis(500)),
        _ => {
            ctx.metrics.error();
            tracing::warn!("{COMPONENT}: {err}");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pod and Job facts.

fn pod_uid(p: &Pod) -> &str {
    p.metadata.uid.as_deref().unwrap_or_default()
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

pub fn has_finalizer(p: &Pod) -> bool {
    p.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

/// A pod's completion index; `None` when missing or not a non-negative integer.
pub fn completion_index(p: &Pod) -> Option<i32> {
    p.metadata.annotations.as_ref()?.get(COMPLETION_INDEX)?.parse::<i32>().ok().filter(|i| *i >= 0)
}

fn spec(job: &Job) -> &k8s_openapi::api::batch::v1::JobSpec {
    static EMPTY: std::sync::OnceLock<k8s_openapi::api::batch::v1::JobSpec> = std::sync::OnceLock::new();
    job.spec.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

fn is_indexed(job: &Job) -> bool {
    spec(job).completion_mode.as_deref() == Some("Indexed")
}

fn suspended(job: &Job) -> bool {
    spec(job).suspend == Some(true)
}

fn completions(job: &Job) -> Option<i32> {
    spec(job).completions
}

/// Indexed Jobs always have completions (validation requires it); 0 keeps a bad object inert.
fn indexed_completions(job: &Job) -> i32 {
    completions(job).unwrap_or(0)
}

/// With `podReplacementPolicy: Failed` (or a podFailurePolicy) a pod counts as failed, and is
/// replaced, only once it reached phase Failed, not while it is terminating.
fn only_replace_failed(job: &Job) -> bool {
    let s = spec(job);
    s.pod_replacement_policy.as_deref() == Some("Failed") || s.pod_failure_policy.is_some()
}

pub fn is_pod_failed(p: &Pod, job: &Job) -> bool {
    if phase(p) == FAILED {
        return true;
    }
    if only_replace_failed(job) {
        return false;
    }
    // A deleted pod that did not succeed counts as failed: an orphaned or evicted pod may never
    // get to report the Failed phase.
    p.metadata.deletion_timestamp.is_some() && phase(p) != SUCCEEDED
}

fn is_terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some() && phase(p) != SUCCEEDED && phase(p) != FAILED
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// The Job's `Complete` or `Failed` condition, when it has one that is True.
pub fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| (c.type_ == "Complete" || c.type_ == FAILED) && c.status == "True")
}

pub fn is_finished(job: &Job) -> bool {
    finished_condition(job).is_some()
}

fn new_condition(type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: (!reason.is_empty()).then(|| reason.into()),
        message: (!message.is_empty()).then(|| message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets condition `type_` (upstream's ensureJobConditionStatus): updates a differing one, adds a
/// missing one unless it would be False. Returns whether anything changed.
fn ensure_condition(list: &mut Vec<JobCondition>, type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> bool {
    if let Some(c) = list.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status || c.reason.as_deref().unwrap_or("") != reason || c.message.as_deref().unwrap_or("") != message {
            *c = new_condition(type_, status, reason, message, now);
            return true;
        }
        return false;
    }
    if status != "False" {
        list.push(new_condition(type_, status, reason, message, now));
        return true;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Completed indexes: "1,3-5,7" (upstream's orderedIntervals).

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intervals(pub Vec<(i32, i32)>);

impl Intervals {
    /// Parses `status.completedIndexes`, dropping what lies beyond `completions` and what does
    /// not parse (upstream logs and ignores corrupted intervals).
    pub fn parse(s: &str, completions: i32) -> Intervals {
        let mut out: Vec<(i32, i32)> = Vec::new();
        if s.is_empty() {
            return Intervals(out);
        }
        for part in s.split(',') {
            let mut limits = part.splitn(2, '-');
            let Ok(first) = limits.next().unwrap_or("").parse::<i32>() else { continue };
            if first >= completions {
                break;
            }
            let last = match limits.next() {
                Some(l) => match l.parse::<i32>() {
                    Ok(l) => l.min(completions - 1),
                    Err(_) => continue,
                },
                None => first,
            };
            match out.last_mut() {
                Some(prev) if prev.1 == first - 1 => prev.1 = last,
                _ => out.push((first, last)),
            }
        }
        Intervals(out)
    }

    pub fn with_indexes(&self, new: &[i32]) -> Intervals {
        let mut all: Vec<(i32, i32)> = self.0.clone();
        all.extend(new.iter().map(|&i| (i, i)));
        all.sort();
        let mut out: Vec<(i32, i32)> = Vec::with_capacity(all.len());
        for (first, last) in all {
            match out.last_mut() {
                Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
                _ => out.push((first, last)),
            }
        }
        Intervals(out)
    }

    pub fn total(&self) -> i32 {
        self.0.iter().map(|(f, l)| l - f + 1).sum()
    }

    pub fn has(&self, ix: i32) -> bool {
        self.0.iter().any(|&(f, l)| f <= ix && ix <= l)
    }
}

impl std::fmt::Display for Intervals {
    /// Upstream's format: two adjacent indexes are listed ("1,2"), longer runs are ranges ("1-3").
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (first, last)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{first}")?;
            if last > first {
                write!(f, "{}{last}", if *last == first + 1 { "," } else { "-" })?;
            }
        }
        Ok(())
    }
}

/// The indexes already done (previously recorded, and newly succeeded pods not yet counted).
fn succeeded_indexes(job: &Job, pods: &[Arc<Pod>]) -> (Intervals, Intervals) {
    let completions = indexed_completions(job);
    let prev = Intervals::parse(job.status.as_ref().and_then(|s| s.completed_indexes.as_deref()).unwrap_or(""), completions);
    let mut new: Vec<i32> = pods
        .iter()
        .filter(|p| phase(p) == SUCCEEDED && has_finalizer(p))
        .filter_map(|p| completion_index(p))
        .filter(|&ix| ix < completions)
        .collect();
    new.sort();
    new.dedup();
    let all = prev.with_indexes(&new);
    (prev, all)
}

/// The lowest `count` indexes below `completions` that are neither done nor being worked on.
pub fn first_pending_indexes(job: &Job, pods: &[Arc<Pod>], active: &[Arc<Pod>], done: &Intervals, count: usize) -> Vec<i32> {
    let completions = indexed_completions(job);
    let mut busy: Vec<i32> = active.iter().filter_map(|p| completion_index(p)).collect();
    if only_replace_failed(job) {
        // A terminating pod still holds its index until it has failed.
        busy.extend(pods.iter().filter(|p| is_terminating(p)).filter_map(|p| completion_index(p)));
    }
    let taken = done.with_indexes(&busy);
    (0..completions).filter(|ix| !taken.has(*ix)).take(count).collect()
}

// ---------------------------------------------------------------------------------------------
// Which pods to remove, and in which order (upstream's controller.ActivePods and
// activePodsForRemoval).

fn max_restarts(p: &Pod) -> i32 {
    p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|cs| cs.iter().map(|c| c.restart_count).max()).unwrap_or(0)
}

/// Sort key, first to delete first: unscheduled, then Pending < Unknown < Running, not ready,
/// ready for less time, more restarts, newer.
type RemovalKey = (bool, u8, bool, Reverse<Option<Timestamp>>, Reverse<i32>, Reverse<Option<Timestamp>>);

fn removal_key(p: &Pod) -> RemovalKey {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let phase = match phase(p) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    let ready = podutil::ready_since(p);
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (scheduled, phase, ready.is_some(), Reverse(ready), Reverse(max_restarts(p)), Reverse(created))
}

pub fn active_pods_for_removal(job: &Job, active: &[Arc<Pod>], rm_at_least: usize) -> Vec<Arc<Pod>> {
    let (mut rm, mut left): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = (Vec::new(), Vec::new());
    if is_indexed(job) {
        // Pods without a valid index, or repeating another pod's index, go first.
        let completions = indexed_completions(job);
        let mut by_index: BTreeMap<i32, Vec<Arc<Pod>>> = BTreeMap::new();
        for p in active {
            match completion_index(p) {
                Some(ix) if ix < completions => by_index.entry(ix).or_default().push(p.clone()),
                _ => rm.push(p.clone()),
            }
        }
        for (_, mut same) in by_index {
            same.sort_by_cached_key(|p| removal_key(p));
            let keep = same.pop().expect("non-empty group");
            rm.extend(same);
            left.push(keep);
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < rm_at_least {
        left.sort_by_cached_key(|p| removal_key(p));
        let n = (rm_at_least - rm.len()).min(left.len());
        rm.extend(left.into_iter().take(n));
    }
    rm
}

/// How many pods the Job wants running now.
pub fn want_active(job: &Job, succeeded: i32, active: i32) -> i32 {
    let parallelism = spec(job).parallelism.unwrap_or(1);
    match completions(job) {
        // A work queue: once one pod succeeded, let the others finish but start no more.
        None => {
            if succeeded > 0 {
                active
            } else {
                parallelism
            }
        }
        Some(c) => (c - succeeded).min(parallelism).max(0),
    }
}

// ---------------------------------------------------------------------------------------------
// Backoff between pod re-creations.

/// When a pod finished: its containers' latest finish, else when Ready turned False, else its
/// deletion time less the grace period, else its creation.
pub fn finish_time(p: &Pod) -> Timestamp {
    let st = p.status.as_ref();
    let from_containers = || -> Option<Timestamp> {
        let mut latest: Option<Timestamp> = None;
        let sidecars: HashSet<&str> = p
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .map(|c| c.name.as_str())
            .collect();
        let main = st.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten();
        let side = st.and_then(|s| s.init_container_statuses.as_ref()).into_iter().flatten().filter(|c| sidecars.contains(c.name.as_str()));
        let mut any = false;
        for cs in main.chain(side) {
            any = true;
            let t = cs.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref()?.0;
            latest = Some(latest.map_or(t, |l: Timestamp| l.max(t)));
        }
        if any { latest } else { None }
    };
    let from_ready = || {
        let c = st?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
        (c.status == "False").then_some(c.last_transition_time.as_ref()?.0)
    };
    let from_deletion = || {
        let d = p.metadata.deletion_timestamp.as_ref()?.0;
        Some(d - SignedDuration::from_secs(p.metadata.deletion_grace_period_seconds.unwrap_or(0)))
    };
    from_containers()
        .or_else(from_ready)
        .or_else(from_deletion)
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The record after this sync's newly finished pods (upstream's newBackoffRecord): a success
/// resets it, and only failures after the latest success count.
pub fn new_backoff_record(old: Option<&BackoffRecord>, new_succeeded: &[&Pod], new_failed: &[&Pod]) -> BackoffRecord {
    let mut rec = old.cloned().unwrap_or_default();
    let mut failed: Vec<Timestamp> = new_failed.iter().map(|p| finish_time(p)).collect();
    failed.sort();
    if new_succeeded.is_empty() {
        if let Some(last) = failed.last() {
            rec.failures_after_last_success += failed.len() as i32;
            rec.last_failure_time = Some(*last);
        }
        return rec;
    }
    let last_success = new_succeeded.iter().map(|p| finish_time(p)).max().expect("non-empty");
    rec = BackoffRecord::default();
    for t in failed.iter().rev() {
        if *t <= last_success {
            break;
        }
        rec.last_failure_time.get_or_insert(*t);
        rec.failures_after_last_success += 1;
    }
    rec
}

/// How long pod creation must still wait: `base * 2^(failures-1)`, capped, since the last failure.
pub fn backoff_remaining(rec: &BackoffRecord, now: Timestamp, base: Duration, max: Duration) -> Duration {
    let Some(last) = rec.last_failure_time else { return Duration::ZERO };
    if rec.failures_after_last_success == 0 {
        return Duration::ZERO;
    }
    let mut delay = base;
    for _ in 1..rec.failures_after_last_success {
        delay = delay.saturating_mul(2);
        if delay >= max {
            delay = max;
            break;
        }
    }
    let elapsed = now.duration_since(last);
    let elapsed = if elapsed.is_negative() { Duration::ZERO } else { elapsed.unsigned_abs() };
    delay.saturating_sub(elapsed)
}

/// With restartPolicy OnFailure failures are container restarts, not failed pods.
fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<Pod>]) -> bool {
    if spec(job).template.spec.as_ref().map(|s| s.restart_policy.as_deref()) != Some(Some("OnFailure")) {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .flat_map(|p| {
            let st = p.status.as_ref();
            let init = st.and_then(|s| s.init_container_statuses.as_ref()).into_iter().flatten();
            let main = st.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten();
            init.chain(main).map(|c| c.restart_count)
        })
        .sum();
    let limit = spec(job).backoff_limit.unwrap_or(6);
    if limit == 0 { restarts > 0 } else { restarts >= limit }
}

fn active_deadline(job: &Job) -> Option<Timestamp> {
    let secs = spec(job).active_deadline_seconds?;
    let start = job.status.as_ref()?.start_time.as_ref()?.0;
    if suspended(job) {
        return None;
    }
    Some(start + SignedDuration::from_secs(secs))
}

// ---------------------------------------------------------------------------------------------
// One sync.

/// What one sync works with (upstream's syncJobCtx).
struct Sync {
    job: Job,
    pods: Vec<Arc<Pod>>,
    active: Vec<Arc<Pod>>,
    terminating: i32,
    ready: i32,
    uncounted_succeeded: HashSet<String>,
    uncounted_failed: HashSet<String>,
    expected_rm: HashSet<String>,
    finished: Option<JobCondition>,
    succeeded: i32,
    prev_indexes: Intervals,
    indexes: Intervals,
    backoff: BackoffRecord,
}

impl Sync {
    fn status(&mut self) -> &mut JobStatus {
        self.job.status.get_or_insert_with(Default::default)
    }

    fn uncounted(&mut self) -> &mut UncountedTerminatedPods {
        self.status().uncounted_terminated_pods.get_or_insert_with(Default::default)
    }

    /// Newly finished pods: still carrying the finalizer, not yet in the uncounted lists, not
    /// already counted by a removal the watch has not shown yet, with a valid index.
    fn new_finished(&self) -> (Vec<&Pod>, Vec<&Pod>) {
        let indexed = is_indexed(&self.job);
        let completions = indexed_completions(&self.job);
        let valid = |p: &Pod, uncounted: &HashSet<String>| {
            let uid = pod_uid(p);
            has_finalizer(p)
                && !uncounted.contains(uid)
                && !self.expected_rm.contains(uid)
                && (!indexed || completion_index(p).is_some_and(|ix| ix < completions))
        };
        let succeeded = self.pods.iter().filter(|p| valid(p, &self.uncounted_succeeded) && phase(p) == SUCCEEDED).map(|p| p.as_ref());
        let failed = self.pods.iter().filter(|p| valid(p, &self.uncounted_failed) && is_pod_failed(p, &self.job)).map(|p| p.as_ref());
        (succeeded.collect(), failed.collect())
    }
}

/// Moves uids whose pods no longer carry the finalizer out of the uncounted lists into the
/// counters. Returns whether anything moved.
fn clean_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let u = status.uncounted_terminated_pods.get_or_insert_with(Default::default);
    let mut changed = false;
    let mut moved = |list: &mut Option<Vec<String>>| -> i32 {
        let Some(l) = list.as_mut() else { return 0 };
        let before = l.len();
        l.retain(|uid| with_finalizer.contains(uid));
        let n = (before - l.len()) as i32;
        if l.is_empty() {
            *list = None;
        }
        changed |= n > 0;
        n
    };
    let (s, f) = (moved(&mut u.succeeded), moved(&mut u.failed));
    if s > 0 {
        status.succeeded = Some(status.succeeded.unwrap_or(0) + s);
    }
    if f > 0 {
        status.failed = Some(status.failed.unwrap_or(0) + f);
    }
    changed
}

async fn reconcile(shared: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    // Never decide from a partial pod cache: at start-up that would re-create every pod.
    crate::informer::ready(&ctx.pods).await;
    let uid = shared.metadata.uid.clone().unwrap_or_default();
    if spec(&shared).managed_by.as_deref().is_some_and(|m| m != MANAGED_BY) {
        return Ok(Action::await_change());
    }
    if is_finished(&shared) {
        ctx.backoff.lock().unwrap().remove(&uid);
        return Ok(Action::await_change());
    }
    if let Some(mode) = spec(&shared).completion_mode.as_deref()
        && mode != "NonIndexed"
        && mode != "Indexed"
    {
        ctx.events.warning(
            reference(shared.as_ref()),
            "UnknownCompletionMode",
            "Skipped Job sync because completion mode is unknown".into(),
        );
        return Ok(Action::await_change());
    }
    let now = ctx.clock.now();
    let mut job = (*shared).clone();
    job.status.get_or_insert_with(Default::default).uncounted_terminated_pods.get_or_insert_with(Default::default);

    // Expectations first: a pod that shows up after this check only defers the decision.
    let satisfied = ctx.exp.satisfied(&uid, &ctx.pods);
    let pods = pods_for_job(&ctx, &job).await?;
    let expected_rm = ctx.fin.expected(&uid, &pods);
    let active: Vec<Arc<Pod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    let uncounted = job.status.as_ref().and_then(|s| s.uncounted_terminated_pods.clone()).unwrap_or_default();
    let mut s = Sync {
        terminating: pods.iter().filter(|p| is_terminating(p)).count() as i32,
        ready: active.iter().filter(|p| is_ready(p)).count() as i32,
        uncounted_succeeded: uncounted.succeeded.unwrap_or_default().into_iter().collect(),
        uncounted_failed: uncounted.failed.unwrap_or_default().into_iter().collect(),
        expected_rm,
        finished: None,
        succeeded: 0,
        prev_indexes: Intervals::default(),
        indexes: Intervals::default(),
        backoff: BackoffRecord::default(),
        job,
        pods,
        active,
    };
    let mut active_n = s.active.len() as i32;
    let old_backoff = ctx.backoff.lock().unwrap().get(&uid).cloned();
    let (backoff, new_succeeded, new_failed) = {
        let (ns, nf) = s.new_finished();
        (new_backoff_record(old_backoff.as_ref(), &ns, &nf), ns.len() as i32, nf.len() as i32)
    };
    s.backoff = backoff;
    let st = s.job.status.clone().unwrap_or_default();
    s.succeeded = st.succeeded.unwrap_or(0) + new_succeeded + s.uncounted_succeeded.len() as i32;
    let failed = st.failed.unwrap_or(0) + new_failed + s.uncounted_failed.len() as i32;

    // First start; a suspended Job has not started.
    if st.start_time.is_none() && !suspended(&s.job) {
        s.status().start_time = Some(Time(now));
    }

    let mut requeue: Option<Duration> = None;
    let mut want_requeue = |d: Duration| requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
    s.finished = condition(&s.job, "SuccessCriteriaMet").filter(|c| c.status == "True").cloned();
    if s.finished.is_none()
        && let Some(target) = condition(&s.job, "FailureTarget").filter(|c| c.status == "True")
    {
        s.finished =
            Some(new_condition(FAILED, "True", target.reason.as_deref().unwrap_or(""), target.message.as_deref().unwrap_or(""), now));
    }
    if s.finished.is_none() {
        let limit = spec(&s.job).backoff_limit.unwrap_or(6);
        if failed > limit || past_backoff_limit_on_failure(&s.job, &s.pods) {
            s.finished =
                Some(new_condition("FailureTarget", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit", now));
        } else if let Some(deadline) = active_deadline(&s.job) {
            if now >= deadline {
                s.finished =
                    Some(new_condition("FailureTarget", "True", "DeadlineExceeded", "Job was active longer than specified deadline", now));
            } else {
                want_requeue(deadline.duration_since(now).unsigned_abs());
            }
        }
    }
    if is_indexed(&s.job) {
        (s.prev_indexes, s.indexes) = succeeded_indexes(&s.job, &s.pods);
        s.succeeded = s.indexes.total();
    }

    let mut manage_err: Option<Error> = None;
    let mut suspend_changed = false;
    if s.finished.is_some() {
        // The Job is done: stop what still runs. Finalizers stay until these pods are counted.
        let active = s.active.clone();
        let (deleted_ready, deleted, err) = delete_active_pods(&ctx, &s.job, &active).await;
        if deleted != active_n || !satisfied {
            // Pods we could not delete, or creations the cache has not shown: not finished yet.
            s.finished = None;
        }
        active_n -= deleted;
        s.terminating += deleted;
        s.ready -= deleted_ready;
        manage_err = err;
    } else {
        let mut managed = false;
        if satisfied && s.job.metadata.deletion_timestamp.is_none() {
            let (n, wait, err) = manage_job(&ctx, &mut s, now).await;
            active_n = n;
            if let Some(w) = wait {
                want_requeue(w);
            }
            manage_err = err;
            managed = true;
        }
        let complete = match completions(&s.job) {
            // A work queue is done once any pod succeeded and none is left running.
            None => s.succeeded > 0 && active_n == 0,
            Some(c) => s.succeeded >= c && active_n == 0,
        };
        if complete {
            s.finished =
                Some(new_condition("SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods", now));
        } else if managed {
            let is_suspended = suspended(&s.job);
            let conds = s.status().conditions.get_or_insert_with(Vec::new);
            let changed = if is_suspended {
                ensure_condition(conds, "Suspended", "True", "JobSuspended", "Job suspended", now)
            } else {
                ensure_condition(conds, "Suspended", "False", "JobResumed", "Job resumed", now)
            };
            if conds.is_empty() {
                s.status().conditions = None;
            }
            if changed {
                suspend_changed = true;
                if is_suspended {
                    ctx.events.normal(reference(&s.job), "Suspended", "Job suspended".into());
                } else {
                    ctx.events.normal(reference(&s.job), "Resumed", "Job resumed".into());
                    // activeDeadlineSeconds counts continuous activity: a resumed Job starts anew.
                    s.status().start_time = Some(Time(now));
                }
            }
        }
    }

    let st = s.job.status.clone().unwrap_or_default();
    let needs_update = suspend_changed
        || active_n != st.active.unwrap_or(0)
        || Some(s.ready) != st.ready
        || Some(s.terminating) != st.terminating
        || st.start_time != shared.status.as_ref().and_then(|s| s.start_time.clone());
    let (ready, terminating) = (s.ready, s.terminating);
    let status = s.status();
    status.active = (active_n != 0).then_some(active_n);
    status.ready = Some(ready);
    status.terminating = Some(terminating);
    match track_status(&ctx, &mut s, needs_update, now).await {
        Ok(()) => {}
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    Ok(match requeue {
        // Upstream never requeues sooner than its one-second batching period.
        Some(d) => Action::requeue(d.max(Duration::from_millis(100))),
        None => Action::await_change(),
    })
}

/// The pods this Job owns (all phases), adopting matching orphans and releasing owned pods that
/// stopped matching, as upstream's ClaimPods with the tracking finalizer.
async fn pods_for_job(ctx: &Ctx, job: &Job) -> Result<Vec<Arc<Pod>>, Error> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let sel = PodSelector::new(spec(job).selector.as_ref());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned = Vec::new();
    let mut orphans = Vec::new();
    for pod in ctx.pods.state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let matches = sel.matches(podutil::labels(&pod.metadata));
        match controller_ref(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(pod);
                } else if pod.metadata.deletion_timestamp.is_none() && job.metadata.deletion_timestamp.is_none() {
                    release(&api, &pod, &uid).await?;
                }
            }
            Some(_) => {}
            None if matches && pod.metadata.deletion_timestamp.is_none() && job.metadata.deletion_timestamp.is_none() => orphans.push(pod),
            None => {}
        }
    }
    if !orphans.is_empty() && can_adopt(ctx, job).await? {
        let oref = owner_ref("batch/v1", "Job", &job.metadata);
        for pod in orphans {
            if adopt(&api, &pod, &oref).await? {
                let mut p = (*pod).clone();
                if !has_finalizer(&p) {
                    p.metadata.finalizers.get_or_insert_with(Vec::new).push(TRACKING_FINALIZER.into());
                }
                owned.push(Arc::new(p));
            }
        }
    }
    Ok(owned)
}

/// Adoption rechecks the Job with a live read: a Job being deleted (or replaced) adopts nothing.
async fn can_adopt(ctx: &Ctx, job: &Job) -> Result<bool, Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    Ok(match api.get_opt(&job.name_any()).await? {
        Some(fresh) => fresh.metadata.uid == job.metadata.uid && fresh.metadata.deletion_timestamp.is_none(),
        None => false,
    })
}

async fn adopt(api: &Api<Pod>, pod: &Pod, oref: &OwnerReference) -> Result<bool, Error> {
    let patch = json!({ "metadata": { "ownerReferences": [oref], "finalizers": [TRACKING_FINALIZER], "uid": pod.metadata.uid } });
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Pod>, pod: &Pod, job_uid: &str) -> Result<(), Error> {
    let patch = json!({ "metadata": {
        "ownerReferences": [{ "$patch": "delete", "uid": job_uid }],
        "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER],
        "uid": pod.metadata.uid,
    } });
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Creates or deletes pods toward [`want_active`]. Returns the active count after that, how long
/// creation must wait for the failure backoff, and the first error.
async fn manage_job(ctx: &Ctx, s: &mut Sync, now: Timestamp) -> (i32, Option<Duration>, Option<Error>) {
    let uid = s.job.metadata.uid.clone().unwrap_or_default();
    let mut active = s.active.len() as i32;
    if suspended(&s.job) {
        let victims = active_pods_for_removal(&s.job, &s.active, s.active.len());
        let (removed_ready, removed, err) = delete_job_pods(ctx, &s.job, &uid, &victims).await;
        s.terminating += removed;
        s.ready -= removed_ready;
        return (active - removed, None, err);
    }
    let want = want_active(&s.job, s.succeeded, active);
    let rm_at_least = (active - want).max(0) as usize;
    let mut victims = active_pods_for_removal(&s.job, &s.active, rm_at_least);
    victims.truncate(MAX_POD_CHANGES_PER_SYNC);
    if !victims.is_empty() {
        // Deletions first; creations wait for the next sync.
        let (removed_ready, removed, err) = delete_job_pods(ctx, &s.job, &uid, &victims).await;
        s.terminating += removed;
        s.ready -= removed_ready;
        return (active - removed, None, err);
    }
    let terminating = if only_replace_failed(&s.job) { s.terminating } else { 0 };
    let diff = want - terminating - active;
    if diff <= 0 {
        return (active, None, None);
    }
    let wait = backoff_remaining(&s.backoff, now, ctx.opts.pod_failure_backoff, ctx.opts.max_pod_failure_backoff);
    if !wait.is_zero() {
        // Upstream reports 0 active here; the pods that do run are still active, so say so.
        return (active, Some(wait), None);
    }
    let diff = (diff as usize).min(MAX_POD_CHANGES_PER_SYNC);
    let indexes: Vec<Option<i32>> = if is_indexed(&s.job) {
        first_pending_indexes(&s.job, &s.pods, &s.active, &s.indexes, diff).into_iter().map(Some).collect()
    } else {
        vec![None; diff]
    };
    let (created, err) = create_pods(ctx, &s.job, &indexes).await;
    active += created;
    (active, None, err)
}

/// The pod for `index` (None: NonIndexed), as upstream stamps it from the template.
pub fn job_pod(job: &Job, index: Option<i32>) -> Pod {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let oref = owner_ref("batch/v1", "Job", &job.metadata);
    let mut pod = pod_from_template(&spec(job).template, &name, &ns, oref);
    let fins = pod.metadata.finalizers.get_or_insert_with(Vec::new);
    if !fins.iter().any(|f| f == TRACKING_FINALIZER) {
        fins.push(TRACKING_FINALIZER.into());
    }
    if let Some(ix) = index {
        let ps = pod.spec.get_or_insert_with(Default::default);
        for c in ps.init_containers.iter_mut().flatten().chain(ps.containers.iter_mut()) {
            let env = c.env.get_or_insert_with(Vec::new);
            if !env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
                env.push(EnvVar {
                    name: COMPLETION_INDEX_ENV.into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                            api_version: None,
                        }),
                        ..Default::default()
                    }),
                });
            }
        }
        ps.hostname = Some(format!("{name}-{ix}"));
        pod.metadata.annotations.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), ix.to_string());
        pod.metadata.labels.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), ix.to_string());
        // generateName `<job>-<index>-`, cut so the generated name stays within 63 characters.
        let suffix = format!("-{ix}-");
        let max_prefix = 58usize.saturating_sub(suffix.len());
        let prefix: String = if name.len() > max_prefix { name.chars().take(max_prefix).collect() } else { name.clone() };
        pod.metadata.generate_name = Some(format!("{prefix}{suffix}"));
    }
    pod
}

/// Creates one pod per entry in upstream's slow-start batches (1, 2, 4, ...), stopping after a
/// batch with a failure. Returns how many were created and the first error.
async fn create_pods(ctx: &Ctx, job: &Job, indexes: &[Option<i32>]) -> (i32, Option<Error>) {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    ctx.exp.expect_creations(&uid, indexes.len());
    let (mut done, mut batch, mut created) = (0usize, 1usize, 0i32);
    while done < indexes.len() {
        let size = batch.min(indexes.len() - done);
        let results = join_all(indexes[done..done + size].iter().map(|ix| {
            let (api, pod) = (api.clone(), job_pod(job, *ix));
            async move { api.create(&PostParams::default(), &pod).await }
        }))
        .await;
        done += size;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(p) => {
                    created += 1;
                    ctx.events.normal(reference(job), "SuccessfulCreate", format!("Created pod: {}", p.name_any()));
                }
                Err(e) => {
                    ctx.exp.creation_observed(&uid);
                    ctx.events.warning(reference(job), "FailedCreate", format!("Error creating: {}", api_message(&e)));
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for _ in done..indexes.len() {
                ctx.exp.creation_observed(&uid);
            }
            return (created, Some(e.into()));
        }
        batch *= 2;
    }
    (created, None)
}

/// Deletes pods the Job no longer wants (excess parallelism, suspension). Their finalizer goes
/// first: a pod removed on purpose is not a failure. Returns (ready removed, removed, error).
async fn delete_job_pods(ctx: &Ctx, job: &Job, uid: &str, victims: &[Arc<Pod>]) -> (i32, i32, Option<Error>) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let refs: Vec<&Pod> = victims.iter().map(|p| p.as_ref()).collect();
    ctx.exp.expect_deletions(uid, &refs);
    let results = join_all(victims.iter().map(|p| {
        let api = api.clone();
        async move {
            if has_finalizer(p) {
                remove_finalizer(&api, p).await?;
            }
            delete_pod(&api, p).await
        }
    }))
    .await;
    let (mut ready, mut removed, mut err) = (0, 0, None);
    for (p, r) in victims.iter().zip(results) {
        match r {
            Ok(()) => {
                removed += 1;
                ready += is_ready(p) as i32;
                ctx.events.normal(reference(job), "SuccessfulDelete", format!("Deleted pod: {}", p.name_any()));
            }
            Err(e) => {
                ctx.exp.deletion_observed(uid, pod_uid(p));
                ctx.events.warning(reference(job), "FailedDelete", format!("Error deleting: {}", api_message(&e)));
                err.get_or_insert(Error::from(e));
            }
        }
    }
    (ready, removed, err)
}

/// Deletes the active pods of a finished Job, keeping their finalizers: they are counted (as
/// failed) before the finalizer goes. Returns (ready deleted, deleted, error).
async fn delete_active_pods(ctx: &Ctx, job: &Job, pods: &[Arc<Pod>]) -> (i32, i32, Option<Error>) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let results = join_all(pods.iter().map(|p| delete_pod(&api, p))).await;
    let (mut ready, mut deleted, mut err) = (0, 0, None);
    for (p, r) in pods.iter().zip(results) {
        ready += is_ready(p) as i32;
        match r {
            Ok(()) => {
                deleted += 1;
                ctx.events.normal(reference(job), "SuccessfulDelete", format!("Deleted pod: {}", p.name_any()));
            }
            Err(e) => {
                err.get_or_insert(Error::from(e));
            }
        }
    }
    (ready, deleted, err)
}

/// A graceful delete of exactly this pod (never a same-named successor); gone already is fine.
async fn delete_pod(api: &Api<Pod>, p: &Pod) -> Result<(), kube::Error> {
    let dp =
        DeleteParams { preconditions: Some(Preconditions { uid: p.metadata.uid.clone(), resource_version: None }), ..Default::default() };
    match api.delete(&p.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn remove_finalizer(api: &Api<Pod>, p: &Pod) -> Result<(), kube::Error> {
    let patch = json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER] } });
    match api.patch(&p.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A full status update from the Job as this sync read it: the resourceVersion makes a stale
/// cache fail with 409 rather than roll counts back.
async fn write_status(ctx: &Ctx, job: &mut Job) -> Result<(), Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    *job = api.replace_status(&job.name_any(), &PostParams::default(), job).await?;
    Ok(())
}

/// Upstream's trackJobStatusAndRemoveFinalizers: record finished pods as uncounted, remove their
/// finalizers, move them into the counters, and set the terminal condition once nothing is
/// uncounted or terminating.
async fn track_status(ctx: &Ctx, s: &mut Sync, mut needs_flush: bool, now: Timestamp) -> Result<(), Error> {
    let uid = s.job.metadata.uid.clone().unwrap_or_default();
    let indexed = is_indexed(&s.job);
    let completions = indexed_completions(&s.job);
    let mut pods = s.pods.clone();
    if indexed {
        // Completed indexes are introduced in order.
        pods.sort_by_key(|p| completion_index(p).unwrap_or(-1));
    }
    let mut with_finalizer: HashSet<String> =
        pods.iter().filter(|p| has_finalizer(p) && !s.expected_rm.contains(pod_uid(p))).map(|p| pod_uid(p).to_string()).collect();
    if clean_uncounted(s.status(), &with_finalizer) {
        needs_flush = true;
    }
    let mut to_remove: Vec<Arc<Pod>> = Vec::new();
    let mut new_indexes: Vec<i32> = Vec::new();
    let mut reached_max = false;
    for pod in &pods {
        let puid = pod_uid(pod).to_string();
        if !has_finalizer(pod) || s.expected_rm.contains(&puid) {
            continue; // counted by an earlier sync
        }
        let failed = is_pod_failed(pod, &s.job);
        // The finalizer may go once the Job is finishing or being deleted, or the pod is done.
        let removable = s.job.metadata.deletion_timestamp.is_some() || s.finished.is_some() || phase(pod) == SUCCEEDED || failed;
        if !removable {
            continue;
        }
        to_remove.push(pod.clone());
        if phase(pod) == SUCCEEDED && !s.uncounted_failed.contains(&puid) {
            if indexed {
                // The index itself keeps a success from being counted twice.
                if let Some(ix) = completion_index(pod)
                    && ix < completions
                    && !s.prev_indexes.has(ix)
                {
                    new_indexes.push(ix);
                    needs_flush = true;
                }
            } else if !s.uncounted_succeeded.contains(&puid) {
                needs_flush = true;
                s.uncounted().succeeded.get_or_insert_with(Vec::new).push(puid.clone());
            }
        } else if failed || s.finished.as_ref().is_some_and(|c| c.type_ != "SuccessCriteriaMet") {
            // A finishing (failing) Job counts every pod it stops as failed.
            let ix_ok = !indexed || completion_index(pod).is_some_and(|ix| ix < completions);
            if !s.uncounted_failed.contains(&puid) && ix_ok {
                needs_flush = true;
                s.uncounted().failed.get_or_insert_with(Vec::new).push(puid.clone());
            }
        }
        let u = s.job.status.as_ref().and_then(|st| st.uncounted_terminated_pods.as_ref());
        let uncounted = u.map_or(0, |u| u.succeeded.as_ref().map_or(0, Vec::len) + u.failed.as_ref().map_or(0, Vec::len));
        if new_indexes.len() + uncounted >= MAX_UNCOUNTED_PODS {
            // Bounded work per sync; the status and pod updates bring the Job back.
            reached_max = true;
            break;
        }
    }
    if indexed {
        s.indexes = s.indexes.with_indexes(&new_indexes);
        let text = s.indexes.to_string();
        let total = s.indexes.total();
        let status = s.status();
        if status.completed_indexes.as_deref().unwrap_or("") != text {
            needs_flush = true;
        }
        status.succeeded = (total != 0).then_some(total);
        status.completed_indexes = (!text.is_empty()).then_some(text);
    }
    if let Some(c) = s.finished.clone() {
        if c.type_ == "FailureTarget" {
            // Record why the Job fails before the pods (and with them the evidence) go.
            s.status().conditions.get_or_insert_with(Vec::new).push(c.clone());
            needs_flush = true;
            s.finished = Some(new_condition(FAILED, "True", c.reason.as_deref().unwrap_or(""), c.message.as_deref().unwrap_or(""), now));
        } else if c.type_ == "SuccessCriteriaMet" {
            if condition(&s.job, "SuccessCriteriaMet").is_none() {
                s.status().conditions.get_or_insert_with(Vec::new).push(c.clone());
                needs_flush = true;
            }
            s.finished =
                Some(new_condition("Complete", "True", c.reason.as_deref().unwrap_or(""), c.message.as_deref().unwrap_or(""), now));
        }
    }

    // Flush the uncounted uids (and interim condition) before touching any finalizer.
    if needs_flush {
        write_status(ctx, &mut s.job).await?;
        ctx.backoff.lock().unwrap().insert(uid.clone(), s.backoff.clone());
        needs_flush = false;
    }
    let mut rm_err: Option<Error> = None;
    if !to_remove.is_empty() {
        ctx.fin.expect_removals(&uid, &to_remove);
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &s.job.namespace().unwrap_or_default());
        let results = join_all(to_remove.iter().map(|p| remove_finalizer(&api, p))).await;
        for (p, r) in to_remove.iter().zip(results) {
            match r {
                Ok(()) => {
                    with_finalizer.remove(pod_uid(p));
                }
                Err(e) => {
                    // No update will come for this pod; it is counted by a later sync.
                    ctx.fin.removal_observed(&uid, pod_uid(p));
                    rm_err.get_or_insert(e.into());
                }
            }
        }
    }
    if clean_uncounted(s.status(), &with_finalizer) {
        needs_flush = true;
    }
    if let Some(e) = rm_err {
        if needs_flush {
            write_status(ctx, &mut s.job).await?;
        }
        return Err(e);
    }
    let finished = !reached_max && enact_finished(s, now);
    if finished {
        needs_flush = true;
    }
    if needs_flush {
        write_status(ctx, &mut s.job).await?;
        if finished {
            record_finished(ctx, s);
        }
    }
    Ok(())
}

/// Sets `Complete`/`Failed` when the Job is finishing, nothing is uncounted and no pod is still
/// terminating. Returns whether it did.
fn enact_finished(s: &mut Sync, now: Timestamp) -> bool {
    let Some(fc) = s.finished.clone() else { return false };
    let u = s.uncounted().clone();
    if u.succeeded.as_ref().is_some_and(|v| !v.is_empty()) || u.failed.as_ref().is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if s.terminating > 0 {
        return false;
    }
    let status = s.status();
    let conds = status.conditions.get_or_insert_with(Vec::new);
    ensure_condition(conds, &fc.type_, &fc.status, fc.reason.as_deref().unwrap_or(""), fc.message.as_deref().unwrap_or(""), now);
    if fc.type_ == "Complete" {
        status.completion_time = fc.last_transition_time.clone();
    }
    true
}

fn record_finished(ctx: &Ctx, s: &Sync) {
    let Some(fc) = &s.finished else { return };
    let job = &s.job;
    if fc.type_ == "Complete" {
        let succeeded = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
        if completions(job).is_some_and(|c| succeeded > c) {
            ctx.events.warning(
                reference(job),
                "TooManySucceededPods",
                "Too many succeeded pods running after completion count reached".into(),
            );
        }
        ctx.events.normal(reference(job), "Completed", "Job completed".into());
    } else {
        ctx.events.warning(reference(job), fc.reason.as_deref().unwrap_or(FAILED), fc.message.clone().unwrap_or_default());
    }
}

// ---------------------------------------------------------------------------------------------
// Orphaned pods (upstream's orphanQueue): a pod whose Job is gone, finished, or who has no
// controller any more will never be counted; its tracking finalizer must still go or the pod
// can never be deleted.

#[allow(clippy::too_many_arguments)]
async fn orphan_finalizers(
    client: Client,
    metrics: &Metrics,
    jobs: Store<Job>,
    pods: Store<Pod>,
    pod_events: impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    job_events: impl futures::Stream<Item = Result<Job, watcher::Error>> + Send + 'static,
    fin: Arc<FinalizerExpectations>,
    backoff: Arc<Mutex<HashMap<String, BackoffRecord>>>,
) {
    use futures::StreamExt;
    let with_finalizer = pod_events.filter(|p| futures::future::ready(p.as_ref().is_ok_and(has_finalizer)));
    let pod_store = pods.clone();
    let job_store = jobs.clone();
    let ctx = Arc::new(OrphanCtx { client, jobs: jobs.clone(), metrics: metrics.controller(COMPONENT) });
    let ctrl = Controller::for_stream(with_finalizer, pods).watches_stream(job_events, move |job: Job| {
        // A Job event: when it is gone or finished, its remaining pods are orphans to clean.
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let live = job_store.get(&ObjectRef::from_obj(&job)).filter(|j| j.metadata.uid.as_deref() == Some(uid.as_str()));
        if live.as_ref().is_some_and(|j| !is_finished(j)) {
            return vec![];
        }
        if live.is_none() {
            fin.forget(&uid);
            backoff.lock().unwrap().remove(&uid);
        }
        pod_store
            .state()
            .iter()
            .filter(|p| has_finalizer(p) && controller_ref(&p.metadata).is_some_and(|r| r.uid == uid))
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect()
    });
    crate::drain(ctrl.run(reconcile_orphan, orphan_error_policy, ctx), COMPONENT).await;
}

struct OrphanCtx {
    client: Client,
    jobs: Store<Job>,
    metrics: Arc<ControllerMetrics>,
}

fn orphan_error_policy(_p: Arc<Pod>, err: &Error, ctx: Arc<OrphanCtx>) -> Action {
    ctx.metrics.error();
    tracing::warn!("{COMPONENT} (orphan pods): {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile_orphan(pod: Arc<Pod>, ctx: Arc<OrphanCtx>) -> Result<Action, Error> {
    if !has_finalizer(&pod) {
        return Ok(Action::await_change());
    }
    // "Job not in the cache" means nothing before the first list is in.
    crate::informer::ready(&ctx.jobs).await;
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_ref(&pod.metadata) {
        if r.kind != "Job" || r.api_version != "batch/v1" {
            return Ok(Action::await_change()); // somebody else's finalizer business
        }
        let cached = ctx.jobs.get(&ObjectRef::new(&r.name).within(&ns)).filter(|j| j.metadata.uid.as_deref() == Some(r.uid.as_str()));
        let job = match cached {
            Some(j) => Some((*j).clone()),
            // A cache miss is confirmed with a live read before the finalizer goes.
            None => Api::<Job>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&r.name)
                .await?
                .filter(|j| j.metadata.uid.as_deref() == Some(r.uid.as_str())),
        };
        if let Some(job) = job
            && (spec(&job).managed_by.as_deref().is_some_and(|m| m != MANAGED_BY) || !is_finished(&job))
        {
            return Ok(Action::await_change());
        }
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    remove_finalizer(&api, &pod).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};

    use super::*;
    use crate::podutil::testing::{pod, ready_at, with_phase};

    fn job(v: serde_json::Value) -> Job {
        let mut j: Job = serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        let spec: k8s_openapi::api::batch::v1::JobSpec = serde_json::from_value({
            let mut base = serde_json::to_value(j.spec.as_ref().unwrap()).unwrap();
            for (k, val) in v.as_object().unwrap() {
                base[k] = val.clone();
            }
            base
        })
        .unwrap();
        j.spec = Some(spec);
        j
    }

    fn indexed(p: Pod, ix: i32) -> Pod {
        let mut p = p;
        p.metadata.annotations.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), ix.to_string());
        p
    }

    fn tracked(mut p: Pod) -> Pod {
        p.metadata.finalizers = Some(vec![TRACKING_FINALIZER.into()]);
        p
    }

    fn finished_at(mut p: Pod, phase: &str, secs: i64) -> Pod {
        let st = p.status.get_or_insert_with(PodStatus::default);
        st.phase = Some(phase.into());
        st.container_statuses = Some(vec![ContainerStatus {
            name: "c".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: if phase == SUCCEEDED { 0 } else { 1 },
                    finished_at: Some(Time(Timestamp::from_second(secs).unwrap())),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn intervals_parse_merge_and_print_like_upstream() {
        let i = Intervals::parse("0,1,3-5,7", 10);
        assert_eq!(i.0, vec![(0, 1), (3, 5), (7, 7)]);
        assert_eq!(i.to_string(), "0,1,3-5,7");
        assert_eq!(i.total(), 6);
        assert!(i.has(4) && !i.has(2) && !i.has(6));
        let merged = i.with_indexes(&[2, 6, 9]);
        assert_eq!(merged.to_string(), "0-7,9");
        // Beyond completions is cut; garbage is skipped.
        assert_eq!(Intervals::parse("1,x,3-20", 5).to_string(), "1,3,4");
        assert_eq!(Intervals::parse("7", 5).total(), 0);
        assert_eq!(Intervals::default().to_string(), "");
    }

    #[test]
    fn want_active_respects_parallelism_and_remaining_completions() {
        let j = job(json!({"completions": 5, "parallelism": 2}));
        assert_eq!(want_active(&j, 0, 0), 2);
        assert_eq!(want_active(&j, 4, 1), 1);
        assert_eq!(want_active(&j, 6, 0), 0);
        // Work queue: parallelism until the first success, then only what still runs.
        let q = job(json!({"parallelism": 3}));
        assert_eq!(want_active(&q, 0, 1), 3);
        assert_eq!(want_active(&q, 1, 2), 2);
    }

    #[test]
    fn pending_indexes_skip_done_and_running_ones() {
        let j = job(json!({"completions": 6, "parallelism": 3, "completionMode": "Indexed"}));
        let active: Vec<Arc<Pod>> = vec![Arc::new(indexed(pod("a"), 1)), Arc::new(indexed(pod("b"), 4))];
        let done = Intervals::parse("0,2", 6);
        assert_eq!(first_pending_indexes(&j, &active, &active, &done, 3), vec![3, 5]);
        assert_eq!(first_pending_indexes(&j, &active, &active, &done, 1), vec![3]);
        // A terminating pod holds its index only with podReplacementPolicy Failed.
        let mut term = indexed(pod("t"), 3);
        term.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let pods: Vec<Arc<Pod>> = vec![Arc::new(term)];
        assert_eq!(first_pending_indexes(&j, &pods, &active, &done, 3), vec![3, 5]);
        let f = job(json!({"completions": 6, "completionMode": "Indexed", "podReplacementPolicy": "Failed"}));
        assert_eq!(first_pending_indexes(&f, &pods, &active, &done, 3), vec![5]);
    }

    #[test]
    fn succeeded_indexes_count_only_tracked_pods_in_range() {
        let mut j = job(json!({"completions": 4, "completionMode": "Indexed"}));
        j.status = Some(JobStatus { completed_indexes: Some("0".into()), ..Default::default() });
        let pods: Vec<Arc<Pod>> = vec![
            Arc::new(tracked(with_phase(indexed(pod("a"), 2), SUCCEEDED))),
            Arc::new(with_phase(indexed(pod("b"), 3), SUCCEEDED)), // counted before: no finalizer
            Arc::new(tracked(with_phase(indexed(pod("c"), 7), SUCCEEDED))), // out of range
            Arc::new(tracked(with_phase(indexed(pod("d"), 1), FAILED))),
        ];
        let (prev, all) = succeeded_indexes(&j, &pods);
        assert_eq!(prev.to_string(), "0");
        assert_eq!(all.to_string(), "0,2");
    }

    #[test]
    fn removal_prefers_duplicates_then_unscheduled_not_ready_newer() {
        let j = job(json!({"completions": 3, "completionMode": "Indexed"}));
        let mut sched = ready_at(indexed(pod("ready"), 0), Timestamp::from_second(10).unwrap());
        sched.spec.get_or_insert_with(Default::default).node_name = Some("n1".into());
        let dup = indexed(pod("dup"), 0);
        let bad = indexed(pod("bad"), 9);
        let none = pod("none");
        let other = indexed(pod("other"), 1);
        let active: Vec<Arc<Pod>> = [sched, dup, bad, none, other].into_iter().map(Arc::new).collect();
        let rm: Vec<String> = active_pods_for_removal(&j, &active, 0).iter().map(|p| p.name_any()).collect();
        assert_eq!(rm.len(), 3, "{rm:?}");
        assert!(rm.contains(&"dup".to_string()) && rm.contains(&"bad".to_string()) && rm.contains(&"none".to_string()));
        let rm4: Vec<String> = active_pods_for_removal(&j, &active, 4).iter().map(|p| p.name_any()).collect();
        assert_eq!(rm4[3], "other", "the unscheduled one goes before the ready scheduled one");

        let nj = job(json!({"completions": 3}));
        let mut running = with_phase(pod("running"), "Running");
        running.spec.get_or_insert_with(Default::default).node_name = Some("n1".into());
        let mut pending = with_phase(pod("pending"), "Pending");
        pending.spec.get_or_insert_with(Default::default).node_name = Some("n1".into());
        let active: Vec<Arc<Pod>> = vec![Arc::new(running), Arc::new(pending), Arc::new(pod("unscheduled"))];
        let rm: Vec<String> = active_pods_for_removal(&nj, &active, 2).iter().map(|p| p.name_any()).collect();
        assert_eq!(rm, ["unscheduled", "pending"]);
    }

    #[test]
    fn deleted_pods_count_as_failed_unless_replacement_waits_for_failure() {
        let j = job(json!({}));
        let mut p = with_phase(pod("a"), "Running");
        assert!(!is_pod_failed(&p, &j));
        p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(is_pod_failed(&p, &j));
        assert!(!is_pod_failed(&with_phase(pod("s"), SUCCEEDED), &j));
        let f = job(json!({"podReplacementPolicy": "Failed"}));
        assert!(!is_pod_failed(&p, &f));
        assert!(is_pod_failed(&with_phase(pod("x"), FAILED), &f));
    }

    #[test]
    fn backoff_doubles_from_the_base_and_resets_on_success() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(360);
        let f1 = finished_at(pod("f1"), FAILED, 100);
        let f2 = finished_at(pod("f2"), FAILED, 130);
        let rec = new_backoff_record(None, &[], &[&f1]);
        assert_eq!(rec, BackoffRecord { failures_after_last_success: 1, last_failure_time: Some(Timestamp::from_second(100).unwrap()) });
        let at = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(backoff_remaining(&rec, at(104), base, max), Duration::from_secs(6));
        assert_eq!(backoff_remaining(&rec, at(111), base, max), Duration::ZERO);
        let rec = new_backoff_record(Some(&rec), &[], &[&f2]);
        assert_eq!(rec.failures_after_last_success, 2);
        assert_eq!(backoff_remaining(&rec, at(130), base, max), Duration::from_secs(20));
        let many = BackoffRecord { failures_after_last_success: 12, last_failure_time: Some(at(0)) };
        assert_eq!(backoff_remaining(&many, at(0), base, max), max, "capped");
        // A success after the failures resets; failures after it still count.
        let s = finished_at(pod("s"), SUCCEEDED, 120);
        let rec = new_backoff_record(Some(&rec), &[&s], &[&f1, &f2]);
        assert_eq!(rec, BackoffRecord { failures_after_last_success: 1, last_failure_time: Some(at(130)) });
        assert_eq!(new_backoff_record(Some(&rec), &[&s], &[]), BackoffRecord::default());
    }

    #[test]
    fn finish_time_prefers_containers_then_ready_then_deletion() {
        let p = finished_at(pod("a"), FAILED, 50);
        assert_eq!(finish_time(&p), Timestamp::from_second(50).unwrap());
        let mut d = pod("d");
        d.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(100).unwrap()));
        d.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(finish_time(&d), Timestamp::from_second(70).unwrap());
        assert_eq!(finish_time(&pod("c")), Timestamp::UNIX_EPOCH);
    }

    #[test]
    fn uncounted_pods_move_into_counters_once_their_finalizer_is_gone() {
        let mut st = JobStatus {
            succeeded: Some(2),
            uncounted_terminated_pods: Some(UncountedTerminatedPods {
                succeeded: Some(vec!["a".into(), "b".into()]),
                failed: Some(vec!["c".into()]),
            }),
            ..Default::default()
        };
        let with: HashSet<String> = ["b".to_string()].into();
        assert!(clean_uncounted(&mut st, &with));
        assert_eq!((st.succeeded, st.failed), (Some(3), Some(1)));
        let u = st.uncounted_terminated_pods.as_ref().unwrap();
        assert_eq!(u.succeeded.as_deref(), Some(&["b".to_string()][..]));
        assert!(u.failed.is_none());
        assert!(!clean_uncounted(&mut st, &with));
    }

    #[test]
    fn indexed_pods_get_index_hostname_env_and_finalizer() {
        let j = job(json!({"completions": 3, "completionMode": "Indexed"}));
        let p = job_pod(&j, Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(p.metadata.annotations.as_ref().unwrap()[COMPLETION_INDEX], "2");
        assert_eq!(p.metadata.labels.as_ref().unwrap()[COMPLETION_INDEX], "2");
        assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "pi");
        assert_eq!(p.metadata.finalizers.as_deref(), Some(&[TRACKING_FINALIZER.to_string()][..]));
        let ps = p.spec.unwrap();
        assert_eq!(ps.hostname.as_deref(), Some("pi-2"));
        let env = &ps.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, COMPLETION_INDEX_ENV);
        assert_eq!(
            env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
            format!("metadata.annotations['{COMPLETION_INDEX}']")
        );
        let r = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((r.kind.as_str(), r.api_version.as_str(), r.controller), ("Job", "batch/v1", Some(true)));
        let n = job_pod(&job(json!({})), None);
        assert_eq!(n.metadata.generate_name.as_deref(), Some("pi-"));
        assert!(n.metadata.annotations.is_none_or(|a| !a.contains_key(COMPLETION_INDEX)));
        // Long names are cut so `<prefix>-<index>-` plus five random characters fit 63.
        let mut long = job(json!({"completions": 3, "completionMode": "Indexed"}));
        long.metadata.name = Some("x".repeat(63));
        let g = job_pod(&long, Some(12)).metadata.generate_name.unwrap();
        assert_eq!(g.len(), 58);
        assert!(g.ends_with("-12-"));
    }

    #[test]
    fn conditions_are_added_updated_and_never_added_false() {
        let now = Timestamp::from_second(5).unwrap();
        let mut list = Vec::new();
        assert!(!ensure_condition(&mut list, "Suspended", "False", "JobResumed", "Job resumed", now));
        assert!(list.is_empty());
        assert!(ensure_condition(&mut list, "Suspended", "True", "JobSuspended", "Job suspended", now));
        assert!(!ensure_condition(&mut list, "Suspended", "True", "JobSuspended", "Job suspended", now));
        assert!(ensure_condition(&mut list, "Suspended", "False", "JobResumed", "Job resumed", now));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, "False");
    }

    #[test]
    fn on_failure_restarts_count_against_the_backoff_limit() {
        let mut j = job(json!({"backoffLimit": 2}));
        j.spec.as_mut().unwrap().template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        let mut p = with_phase(pod("a"), "Running");
        p.status.as_mut().unwrap().container_statuses =
            Some(vec![ContainerStatus { name: "c".into(), restart_count: 1, ..Default::default() }]);
        let pods = vec![Arc::new(p.clone())];
        assert!(!past_backoff_limit_on_failure(&j, &pods));
        p.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].restart_count = 2;
        assert!(past_backoff_limit_on_failure(&j, &[Arc::new(p)]));
    }

    #[test]
    fn finalizer_expectations_clear_on_observed_removal_or_delete() {
        let fin = FinalizerExpectations::default();
        let mut p = tracked(pod("a"));
        p.metadata.owner_references =
            Some(vec![OwnerReference { uid: "job-uid".into(), controller: Some(true), kind: "Job".into(), ..Default::default() }]);
        let pods = vec![Arc::new(p.clone()), Arc::new(tracked(pod("b")))];
        fin.expect_removals("job-uid", &pods);
        assert_eq!(fin.expected("job-uid", &pods).len(), 2);
        fin.observe(&Event::Apply(p.clone())); // still has the finalizer: not yet
        assert_eq!(fin.expected("job-uid", &pods).len(), 2);
        p.metadata.finalizers = None;
        fin.observe(&Event::Apply(p));
        assert_eq!(fin.expected("job-uid", &pods), HashSet::from(["uid-b".to_string()]));
        // A pod no longer in the cache is forgotten.
        assert!(fin.expected("job-uid", &pods[..1]).is_empty());
    }
}
