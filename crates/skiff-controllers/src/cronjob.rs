//! The CronJob controller (batch/v1), as upstream's `cronjob_controllerv2.go`: at each time the
//! schedule names, create a Job `<cronjob>-<scheduled time in minutes since the epoch>` from the
//! Job template; keep `status.active`, `lastScheduleTime` and `lastSuccessfulTime`; delete the
//! oldest finished Jobs beyond the history limits; and requeue for the next scheduled time (plus
//! upstream's 100 ms of slack for clock skew).
//!
//! Schedules are standard 5-field cron (ranges, steps, lists, month and weekday names, the
//! `@yearly`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly` macros and `@every <dur>`),
//! parsed by `croner` and evaluated in `spec.timeZone` (or this process's local zone, as
//! kube-controller-manager does) with jiff's time zone database. One difference from upstream's
//! robfig/cron: a fixed-time schedule that falls into a DST gap runs at the first time after the
//! gap (croner's rule, that of Vixie cron) instead of being skipped for that day.
//!
//! All the scheduling arithmetic is in pure functions of "now" ([`plan`],
//! [`most_recent_schedule_time`], [`next_schedule_duration`]); the controller takes now from a
//! [`Clock`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::clock::Clock;
use crate::events::{Recorder, reference};
use crate::job::{finished_condition, is_finished};
use crate::metrics::{ControllerMetrics, Metrics};
use crate::podutil::{controller_ref, owner_ref};

pub const COMPONENT: &str = "cronjob-controller";
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Upstream's limit: more missed start times than this means a broken clock or a long outage,
/// so only a warning is raised (the most recent one still runs).
const MANY_MISSED: i64 = 100;
/// Upstream's nextScheduleDelta: requeue a little after the scheduled time, never before it.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Schedules.

pub enum Schedule {
    Cron {
        cron: Box<Cron>,
        tz: TimeZone,
    },
    /// `@every <duration>`: a constant delay, whole seconds.
    Every(SignedDuration),
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Cron { cron, tz } => write!(f, "Cron({:?} in {:?})", cron.pattern.to_string(), tz.iana_name()),
            Schedule::Every(d) => write!(f, "Every({d})"),
        }
    }
}

impl Schedule {
    /// Parses a schedule as upstream's cron.ParseStandard does, in `tz` unless the schedule
    /// carries its own `TZ=`/`CRON_TZ=` prefix.
    pub fn parse(spec: &str, tz: TimeZone) -> Result<Schedule, String> {
        let mut spec = spec.trim();
        let mut tz = tz;
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let eq = spec.find('=').unwrap_or(0);
            let sp = spec.find(' ').ok_or_else(|| format!("missing schedule after time zone in {spec:?}"))?;
            let name = &spec[eq + 1..sp];
            tz = TimeZone::get(name).map_err(|e| format!("provided bad location {name}: {e}"))?;
            spec = spec[sp..].trim();
        }
        if spec.starts_with('@') {
            if let Some(d) = spec.strip_prefix("@every ") {
                let d = parse_go_duration(d.trim())?;
                // robfig: at least a second, whole seconds only.
                let secs = d.as_secs().max(1);
                return Ok(Schedule::Every(SignedDuration::from_secs(secs as i64)));
            }
            // croner knows the other macros except this one.
            if spec == "@midnight" {
                spec = "0 0 * * *";
            } else if !matches!(spec, "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@hourly") {
                return Err(format!("unrecognized descriptor: {spec}"));
            }
        } else {
            let n = spec.split_whitespace().count();
            if n != 5 {
                return Err(format!("expected exactly 5 fields, found {n}: {spec}"));
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            // robfig accepts `N/step` as `N-max/step`.
            .sloppy_ranges(true)
            .build()
            .parse(spec)
            .map_err(|e| e.to_string())?;
        Ok(Schedule::Cron { cron: Box::new(cron), tz })
    }

    /// The first scheduled time strictly after `t` (seconds granularity), if there is one.
    pub fn next(&self, t: Timestamp) -> Option<Timestamp> {
        let t = Timestamp::from_second(t.as_second()).ok()?;
        match self {
            Schedule::Every(d) => t.checked_add(*d).ok(),
            Schedule::Cron { cron, tz } => cron.find_next_occurrence(&t.to_zoned(tz.clone()), false).ok().map(|z| z.timestamp()),
        }
    }
}

/// Go's time.ParseDuration, for `@every` ("1h30m", "90s", "1.5h", "500ms").
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    Ok(Duration::from_secs_f64(total))
}

// ---------------------------------------------------------------------------------------------
// Scheduling arithmetic (upstream's utils.go).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    None,
    Few,
    Many,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recent {
    /// The last schedule time, or the CronJob's creation (moved up to the starting deadline).
    pub earliest: Timestamp,
    /// The most recent scheduled time at or before now, after `earliest`.
    pub most_recent: Option<Timestamp>,
    pub missed: Missed,
    /// A schedule that parses but cannot work (Feb 30).
    pub error: Option<String>,
}

fn created(cj: &CronJob) -> Timestamp {
    cj.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn last_schedule(cj: &CronJob) -> Option<Timestamp> {
    cj.status.as_ref()?.last_schedule_time.as_ref().map(|t| t.0)
}

/// Upstream's mostRecentScheduleTime: how many start times were missed since the last one, and
/// the latest of them, found by estimating from the interval and walking the last few.
pub fn most_recent_schedule_time(cj: &CronJob, now: Timestamp, sched: &Schedule, include_deadline: bool) -> Recent {
    let mut earliest = last_schedule(cj).unwrap_or_else(|| created(cj));
    if include_deadline && let Some(sds) = cj.spec.as_ref().and_then(|s| s.starting_deadline_seconds) {
        // Nothing older than the deadline is going to be started anyway.
        let deadline = now - SignedDuration::from_secs(sds);
        if deadline > earliest {
            earliest = deadline;
        }
    }
    let recent = |most_recent, missed, error: Option<&str>| Recent { earliest, most_recent, missed, error: error.map(str::to_string) };
    let Some(t1) = sched.next(earliest) else { return recent(None, Missed::None, Some("the schedule never fires")) };
    if now < t1 {
        return recent(None, Missed::None, None);
    }
    let Some(t2) = sched.next(t1) else { return recent(Some(t1), Missed::None, None) };
    if now < t2 {
        return recent(Some(t1), Missed::None, None);
    }
    // Rounded to whole seconds as upstream.
    let between = (t2.duration_since(t1).as_millis() as f64 / 1000.0).round() as i64;
    if between < 1 {
        return recent(None, Missed::None, Some("time difference between two schedules is less than 1 second"));
    }
    let elapsed = now.duration_since(t1).as_secs();
    let missed_n = elapsed / between + 1;
    // Start a little before the estimate and let the schedule find the exact times: intervals
    // are not uniform for schedules like `30 6-16/4 * * 1-5`.
    let potential = t1.checked_add(SignedDuration::from_secs((missed_n - 2).saturating_mul(between))).unwrap_or(t1);
    let mut most_recent = None;
    let mut t = sched.next(potential);
    while let Some(x) = t {
        if x > now {
            break;
        }
        most_recent = Some(x);
        t = sched.next(x);
    }
    let missed = if missed_n > MANY_MISSED { Missed::Many } else { Missed::Few };
    recent(most_recent, missed, None)
}

/// Upstream's nextScheduleTimeDuration: how long until the next scheduled time (plus the skew
/// allowance), counted from the last one we handled.
pub fn next_schedule_duration(cj: &CronJob, now: Timestamp, sched: &Schedule) -> Option<Duration> {
    let r = most_recent_schedule_time(cj, now, sched, false);
    let base = match (r.error, r.most_recent) {
        (Some(_), _) => now,
        (None, Some(t)) => t,
        (None, None) if r.missed == Missed::None => r.earliest,
        (None, None) => now,
    };
    let next = sched.next(base)?;
    let d = next.duration_since(now);
    let d = if d.is_negative() { Duration::ZERO } else { d.unsigned_abs() };
    Some(d + NEXT_SCHEDULE_DELTA)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ev {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

fn warn(reason: &'static str, message: String) -> Ev {
    Ev { warning: true, reason, message }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Do not schedule (suspended, bad schedule or time zone) until the CronJob changes.
    Stop,
    /// Nothing to start now; look again after this long.
    Wait(Duration),
    /// Start the Job for this scheduled time, deleting the active ones first when `replace`.
    Start { scheduled: Timestamp, replace: bool },
}

pub fn job_name(cj: &CronJob, scheduled: Timestamp) -> String {
    format!("{}-{}", cj.name_any(), scheduled.as_second().div_euclid(60))
}

/// The time zone a CronJob's schedule is evaluated in (before any `TZ=` prefix).
fn zone(cj: &CronJob, local: &TimeZone) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        Some(name) => TimeZone::get(name).map_err(|e| e.to_string()),
        None => Ok(local.clone()),
    }
}

/// What the CronJob should do at `now` given its status (upstream's syncCronJob after the
/// active list is reconciled). `local` is the zone of schedules without `spec.timeZone`.
pub fn plan(cj: &CronJob, now: Timestamp, local: &TimeZone) -> (Vec<Ev>, Step) {
    let mut events = Vec::new();
    let spec = cj.spec.clone().unwrap_or_default();
    let tz = match zone(cj, local) {
        Ok(tz) => tz,
        Err(e) => {
            let name = spec.time_zone.clone().unwrap_or_default();
            events.push(warn("UnknownTimeZone", format!("invalid timeZone: {name:?}: {e}")));
            return (events, Step::Stop);
        }
    };
    if spec.suspend == Some(true) {
        return (events, Step::Stop);
    }
    if spec.schedule.contains("TZ") {
        events.push(warn(
            "UnsupportedSchedule",
            format!(
                "CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
                spec.schedule
            ),
        ));
    }
    let sched = match Schedule::parse(&spec.schedule, tz) {
        Ok(s) => s,
        Err(e) => {
            events.push(warn("UnparseableSchedule", format!("unparseable schedule: {:?} : {e}", spec.schedule)));
            return (events, Step::Stop);
        }
    };
    let r = most_recent_schedule_time(cj, now, &sched, true);
    if r.missed == Missed::Many {
        events.push(warn(
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    let wait = |events| match next_schedule_duration(cj, now, &sched) {
        Some(d) => (events, Step::Wait(d)),
        None => (events, Step::Stop),
    };
    let scheduled = match (r.most_recent, r.error) {
        (Some(t), _) if t <= now => t,
        (_, Some(e)) => {
            events.push(warn("InvalidSchedule", format!("invalid schedule: {} : {e}", spec.schedule)));
            return (events, Step::Stop);
        }
        _ => return wait(events),
    };
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled + SignedDuration::from_secs(sds) < now
    {
        let when = scheduled.to_zoned(TimeZone::UTC).strftime("%a, %d %b %Y %H:%M:%S +0000").to_string();
        events.push(warn("MissSchedule", format!("Missed scheduled time to start a job: {when}")));
        return wait(events);
    }
    let active = cj.status.as_ref().and_then(|s| s.active.clone()).unwrap_or_default();
    let name = job_name(cj, scheduled);
    if active.iter().any(|a| a.name.as_deref() == Some(name.as_str())) || last_schedule(cj) == Some(scheduled) {
        return wait(events); // already handled
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        events.push(Ev {
            warning: false,
            reason: "JobAlreadyActive",
            message: "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
        });
        return wait(events);
    }
    (events, Step::Start { scheduled, replace: policy == "Replace" && !active.is_empty() })
}

/// Go's RFC3339 in `tz`: `Z` for a zero offset, else `±hh:mm`.
fn rfc3339_in(t: Timestamp, tz: &TimeZone) -> String {
    let z = t.to_zoned(tz.clone());
    if z.offset().seconds() == 0 { z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string() } else { z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string() }
}

/// The Job for `scheduled` (upstream's getJobFromTemplate2). The scheduled-timestamp annotation
/// is in `spec.timeZone`, or UTC without one.
pub fn job_from_template(cj: &CronJob, scheduled: Timestamp) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let tmeta = spec.job_template.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    let tz = spec.time_zone.as_deref().and_then(|n| TimeZone::get(n).ok()).unwrap_or(TimeZone::UTC);
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339_in(scheduled, &tz));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cj, scheduled)),
            namespace: cj.namespace(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref("batch/v1", "CronJob", &cj.metadata)]),
            ..Default::default()
        },
        spec: spec.job_template.spec,
        status: None,
    }
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn succeeded(job: &Job) -> bool {
    finished_condition(job).is_some_and(|c| c.type_ == "Complete")
}

/// The finished Jobs to delete beyond the history limits, oldest start first (upstream's
/// cleanupFinishedJobs/removeOldestJobs).
pub fn jobs_beyond_history(cj: &CronJob, jobs: &[Arc<Job>]) -> Vec<Arc<Job>> {
    let spec = cj.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (limit, complete) in [(spec.successful_jobs_history_limit, true), (spec.failed_jobs_history_limit, false)] {
        let Some(limit) = limit else { continue };
        let mut these: Vec<Arc<Job>> =
            jobs.iter().filter(|j| finished_condition(j).is_some_and(|c| (c.type_ == "Complete") == complete)).cloned().collect();
        let n = these.len().saturating_sub(limit.max(0) as usize);
        if n == 0 {
            continue;
        }
        // By start time, unstarted last, then by name.
        these.sort_by(|a, b| {
            let start = |j: &Job| j.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            match (start(a), start(b)) {
                (Some(x), Some(y)) if x != y => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                _ => a.name_any().cmp(&b.name_any()),
            }
        });
        out.extend(these.into_iter().take(n));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The controller.

struct Ctx {
    client: Client,
    jobs: Store<Job>,
    events: Recorder,
    metrics: Arc<ControllerMetrics>,
    clock: Arc<dyn Clock>,
    local: TimeZone,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("could not replace job {0}")]
    Replace(String),
}

pub async fn run(
    client: Client,
    metrics: &Metrics,
    jobs: (Store<Job>, impl futures::Stream<Item = Result<Job, watcher::Error>> + Send + 'static),
    clock: Arc<dyn Clock>,
) {
    let (job_store, job_events) = jobs;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        jobs: job_store,
        events: Recorder::new(client.clone(), COMPONENT),
        metrics: metrics.controller(COMPONENT),
        clock,
        local: TimeZone::system(),
    });
    let ctrl = Controller::new(Api::<CronJob>::all(client), watcher::Config::default()).watches_stream(job_events, |job: Job| {
        let ns = job.namespace().unwrap_or_default();
        controller_ref(&job.metadata).filter(|r| r.kind == "CronJob").map(|r| ObjectRef::new(&r.name).within(&ns))
    });
    crate::drain(ctrl.run(reconcile, error_policy, ctx), COMPONENT).await;
}

fn error_policy(_cj: Arc<CronJob>, err: &Error, ctx: Arc<Ctx>) -> Action {
    match err {
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Action::requeue(Duration::from_millis(500)),
        _ => {
            ctx.metrics.error();
            tracing::warn!("{COMPONENT}: {err}");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

fn emit(ctx: &Ctx, cj: &CronJob, ev: Ev) {
    if ev.warning {
        ctx.events.warning(reference(cj), ev.reason, ev.message);
    } else {
        ctx.events.normal(reference(cj), ev.reason, ev.message);
    }
}

fn in_active(cj: &CronJob, uid: &str) -> bool {
    cj.status.as_ref().and_then(|s| s.active.as_ref()).is_some_and(|a| a.iter().any(|r| r.uid.as_deref() == Some(uid)))
}

fn remove_active(cj: &mut CronJob, uid: &str) {
    if let Some(a) = cj.status.as_mut().and_then(|s| s.active.as_mut()) {
        a.retain(|r| r.uid.as_deref() != Some(uid));
        if a.is_empty() {
            cj.status.as_mut().unwrap().active = None;
        }
    }
}

/// Deletes a Job in the background (its pods follow through the garbage collector) and drops it
/// from the active list.
async fn delete_job(ctx: &Ctx, cj: &mut CronJob, job: &Job) -> bool {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            ctx.events.warning(reference(cj), "FailedDelete", format!("Deleted job: {e}"));
            return false;
        }
    }
    remove_active(cj, job.metadata.uid.as_deref().unwrap_or_default());
    ctx.events.normal(reference(cj), "SuccessfulDelete", format!("Deleted job {}", job.name_any()));
    true
}

async fn reconcile(shared: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    // An empty Job cache would make every active Job look missing.
    crate::informer::ready(&ctx.jobs).await;
    let now = ctx.clock.now();
    let mut cj = (*shared).clone();
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let jobs: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| controller_ref(&j.metadata).is_some_and(|r| r.kind == "CronJob" && r.name == name))
        .collect();

    let mut update = false;
    for job in jobs_beyond_history(&cj, &jobs) {
        update |= delete_job(&ctx, &mut cj, &job).await;
    }
    let (requeue, changed) = sync(&ctx, &mut cj, &jobs, now).await?;
    update |= changed;
    if update {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        match api.replace_status(&name, &PostParams::default(), &cj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Reconciles the active list with the Jobs that exist, then starts what is due. Returns when to
/// look again and whether the status changed.
async fn sync(ctx: &Ctx, cj: &mut CronJob, jobs: &[Arc<Job>], now: Timestamp) -> Result<(Option<Duration>, bool), Error> {
    let ns = cj.namespace().unwrap_or_default();
    let cj_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut update = false;
    let mut children: HashSet<String> = HashSet::new();
    for j in jobs {
        let uid = j.metadata.uid.clone().unwrap_or_default();
        children.insert(uid.clone());
        let found = in_active(cj, &uid);
        if !found && !is_finished(j) {
            // Our status may just be stale: a fresh read decides.
            if let Some(fresh) = cj_api.get_opt(&cj.name_any()).await?
                && in_active(&fresh, &uid)
            {
                *cj = fresh;
                continue;
            }
            ctx.events.warning(
                reference(cj),
                "UnexpectedJob",
                format!("Saw a job that the controller did not create or forgot: {}", j.name_any()),
            );
        } else if found && is_finished(j) {
            let status = finished_condition(j).map(|c| c.type_.clone()).unwrap_or_default();
            remove_active(cj, &uid);
            ctx.events.normal(reference(cj), "SawCompletedJob", format!("Saw completed job: {}, status: {status}", j.name_any()));
            update = true;
        } else if succeeded(j)
            && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
        {
            let st = cj.status.get_or_insert_with(Default::default);
            if st.last_successful_time.as_ref().is_none_or(|t| done.0 > t.0) {
                st.last_successful_time = Some(done);
                update = true;
            }
        }
    }
    // Active Jobs that are gone (confirmed by a live read, the cache may lag).
    let active = cj.status.as_ref().and_then(|s| s.active.clone()).unwrap_or_default();
    for a in active {
        let uid = a.uid.clone().unwrap_or_default();
        if children.contains(&uid) {
            continue;
        }
        let job_name = a.name.clone().unwrap_or_default();
        if job_api.get_opt(&job_name).await?.is_none_or(|j| j.metadata.uid.as_deref() != Some(uid.as_str())) {
            ctx.events.normal(reference(cj), "MissingJob", format!("Active job went missing: {job_name}"));
            remove_active(cj, &uid);
            update = true;
        }
    }
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok((None, update));
    }

    let (events, step) = plan(cj, now, &ctx.local);
    for ev in events {
        emit(ctx, cj, ev);
    }
    let (scheduled, replace) = match step {
        Step::Stop => return Ok((None, update)),
        Step::Wait(d) => return Ok((Some(d), update)),
        Step::Start { scheduled, replace } => (scheduled, replace),
    };
    if replace {
        let active = cj.status.as_ref().and_then(|s| s.active.clone()).unwrap_or_default();
        for a in active {
            let job_name = a.name.clone().unwrap_or_default();
            let job = match job_api.get(&job_name).await {
                Ok(j) => j,
                Err(e) => {
                    ctx.events.warning(reference(cj), "FailedGet", format!("Get job: {e}"));
                    return Err(e.into());
                }
            };
            if !delete_job(ctx, cj, &job).await {
                return Err(Error::Replace(format!("{ns}/{job_name}")));
            }
            update = true;
        }
    }
    let want = job_from_template(cj, scheduled);
    let created = match job_api.create(&PostParams::default(), &want).await {
        Ok(j) => {
            ctx.events.normal(reference(cj), "SuccessfulCreate", format!("Created job {}", j.name_any()));
            j
        }
        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
            // Created by an earlier sync whose status update was lost, or by somebody else.
            let existing = job_api.get(&want.name_any()).await?;
            let ours = controller_ref(&existing.metadata).is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref());
            if !ours || in_active(cj, existing.metadata.uid.as_deref().unwrap_or_default()) {
                return Ok((None, update));
            }
            existing
        }
        Err(e) => {
            ctx.events.warning(reference(cj), "FailedCreate", format!("Error creating job: {e}"));
            return Err(e.into());
        }
    };
    let st = cj.status.get_or_insert_with(Default::default);
    st.active.get_or_insert_with(Vec::new).push(job_ref(&created));
    st.last_schedule_time = Some(Time(scheduled));
    let tz = zone(cj, &ctx.local).unwrap_or(TimeZone::UTC);
    let next =
        cj.spec.as_ref().and_then(|s| Schedule::parse(&s.schedule, tz).ok()).and_then(|sched| next_schedule_duration(cj, now, &sched));
    Ok((next, true))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::clock::FakeClock;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cronjob(schedule: &str, extra: serde_json::Value) -> CronJob {
        let mut spec = json!({
            "schedule": schedule,
            "concurrencyPolicy": "Allow",
            "jobTemplate": {"metadata": {"labels": {"app": "x"}}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "OnFailure"}}}}
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "hello", "namespace": "default", "uid": "cj-uid", "creationTimestamp": "2025-01-15T10:00:30Z"},
            "spec": spec
        }))
        .unwrap()
    }

    fn with_status(mut cj: CronJob, last: Option<&str>, active: &[&str]) -> CronJob {
        let st = cj.status.get_or_insert_with(Default::default);
        st.last_schedule_time = last.map(|l| Time(ts(l)));
        st.active = (!active.is_empty()).then(|| {
            active
                .iter()
                .map(|n| ObjectReference { name: Some(n.to_string()), uid: Some(format!("uid-{n}")), ..Default::default() })
                .collect()
        });
        cj
    }

    fn starts(step: &Step) -> Option<Timestamp> {
        match step {
            Step::Start { scheduled, .. } => Some(*scheduled),
            _ => None,
        }
    }

    /// Applies a Start as the controller would: the Job becomes active, the time is recorded.
    fn apply(cj: &mut CronJob, step: &Step) {
        if let Step::Start { scheduled, replace } = step {
            let st = cj.status.get_or_insert_with(Default::default);
            if *replace {
                st.active = None;
            }
            let name = job_name(cj, *scheduled);
            cj.status.as_mut().unwrap().active.get_or_insert_with(Vec::new).push(ObjectReference {
                name: Some(name.clone()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            });
            cj.status.as_mut().unwrap().last_schedule_time = Some(Time(*scheduled));
        }
    }

    #[test]
    fn every_minute_runs_once_per_slot_and_requeues_just_after_the_next() {
        let clock = FakeClock::new(ts("2025-01-15T10:00:45Z"));
        let mut cj = cronjob("* * * * *", json!({}));
        let (ev, step) = plan(&cj, clock.now(), &TimeZone::UTC);
        assert!(ev.is_empty());
        assert_eq!(step, Step::Wait(Duration::from_millis(15_100)));
        clock.advance(SignedDuration::from_millis(15_100));
        let (_, step) = plan(&cj, clock.now(), &TimeZone::UTC);
        assert_eq!(starts(&step), Some(ts("2025-01-15T10:01:00Z")));
        assert_eq!(step, Step::Start { scheduled: ts("2025-01-15T10:01:00Z"), replace: false });
        apply(&mut cj, &step);
        // The same slot is never started twice.
        let (_, step) = plan(&cj, clock.now(), &TimeZone::UTC);
        assert_eq!(step, Step::Wait(Duration::from_millis(60_000)));
        assert_eq!(job_name(&cj, ts("2025-01-15T10:01:00Z")), format!("hello-{}", ts("2025-01-15T10:01:00Z").as_second() / 60));
    }

    #[test]
    fn missed_runs_start_only_the_most_recent() {
        let cj = cronjob("*/5 * * * *", json!({}));
        let (ev, step) = plan(&cj, ts("2025-01-15T10:27:00Z"), &TimeZone::UTC);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(starts(&step), Some(ts("2025-01-15T10:25:00Z")));
        let r = most_recent_schedule_time(&cj, ts("2025-01-15T10:27:00Z"), &Schedule::parse("*/5 * * * *", TimeZone::UTC).unwrap(), false);
        assert_eq!(r.missed, Missed::Few);
        assert_eq!(r.earliest, ts("2025-01-15T10:00:30Z"));
    }

    #[test]
    fn more_than_a_hundred_missed_warns_but_still_starts_the_latest() {
        let cj = with_status(cronjob("* * * * *", json!({})), Some("2025-01-15T10:00:00Z"), &[]);
        let (ev, step) = plan(&cj, ts("2025-01-15T13:20:30Z"), &TimeZone::UTC);
        assert_eq!(ev.iter().map(|e| e.reason).collect::<Vec<_>>(), ["TooManyMissedTimes"]);
        assert_eq!(starts(&step), Some(ts("2025-01-15T13:20:00Z")));
        // 100 missed is still "few".
        let (ev, _) = plan(&cj, ts("2025-01-15T11:39:30Z"), &TimeZone::UTC);
        assert!(ev.is_empty());
    }

    #[test]
    fn starting_deadline_skips_what_is_too_late() {
        let base = with_status(cronjob("*/5 * * * *", json!({"startingDeadlineSeconds": 10})), Some("2025-01-15T10:00:00Z"), &[]);
        let (ev, step) = plan(&base, ts("2025-01-15T10:05:30Z"), &TimeZone::UTC);
        assert!(ev.is_empty());
        assert_eq!(step, Step::Wait(Duration::from_millis(270_100)), "next is 10:10");
        let (_, step) = plan(&base, ts("2025-01-15T10:05:08Z"), &TimeZone::UTC);
        assert_eq!(starts(&step), Some(ts("2025-01-15T10:05:00Z")), "within the deadline");
        // A long deadline lets a missed run start late, and counts only what is inside it.
        let long = with_status(cronjob("* * * * *", json!({"startingDeadlineSeconds": 600})), Some("2025-01-10T00:00:00Z"), &[]);
        let (ev, step) = plan(&long, ts("2025-01-15T10:05:30Z"), &TimeZone::UTC);
        assert!(ev.is_empty(), "the deadline bounds the missed count: {ev:?}");
        assert_eq!(starts(&step), Some(ts("2025-01-15T10:05:00Z")));
    }

    #[test]
    fn concurrency_policies() {
        let now = ts("2025-01-15T10:05:01Z");
        let busy = |policy: &str| {
            with_status(cronjob("*/5 * * * *", json!({"concurrencyPolicy": policy})), Some("2025-01-15T10:00:00Z"), &["hello-old"])
        };
        let (_, allow) = plan(&busy("Allow"), now, &TimeZone::UTC);
        assert_eq!(allow, Step::Start { scheduled: ts("2025-01-15T10:05:00Z"), replace: false });
        let (ev, forbid) = plan(&busy("Forbid"), now, &TimeZone::UTC);
        assert_eq!(ev[0].reason, "JobAlreadyActive");
        assert!(!ev[0].warning);
        assert_eq!(forbid, Step::Wait(Duration::from_millis(299_100)));
        let (_, replace) = plan(&busy("Replace"), now, &TimeZone::UTC);
        assert_eq!(replace, Step::Start { scheduled: ts("2025-01-15T10:05:00Z"), replace: true });
        // Nothing active: Forbid and Replace start plainly.
        let idle = with_status(cronjob("*/5 * * * *", json!({"concurrencyPolicy": "Replace"})), Some("2025-01-15T10:00:00Z"), &[]);
        assert_eq!(plan(&idle, now, &TimeZone::UTC).1, Step::Start { scheduled: ts("2025-01-15T10:05:00Z"), replace: false });
    }

    #[test]
    fn forbid_waits_across_slots_until_the_job_finishes() {
        let clock = FakeClock::new(ts("2025-01-15T10:01:00.1Z"));
        let mut cj = cronjob("* * * * *", json!({"concurrencyPolicy": "Forbid"}));
        let (_, step) = plan(&cj, clock.now(), &TimeZone::UTC);
        apply(&mut cj, &step);
        clock.advance(SignedDuration::from_secs(60));
        let (ev, step) = plan(&cj, clock.now(), &TimeZone::UTC);
        assert_eq!((ev.len(), matches!(step, Step::Wait(_))), (1, true));
        // The job finished 90 s in: the 10:02 slot is still due (no deadline), 10:03 is not yet.
        cj.status.as_mut().unwrap().active = None;
        clock.advance(SignedDuration::from_secs(30));
        assert_eq!(starts(&plan(&cj, clock.now(), &TimeZone::UTC).1), Some(ts("2025-01-15T10:02:00Z")));
    }

    #[test]
    fn suspended_and_broken_schedules_stop() {
        let now = ts("2025-01-15T11:00:00Z");
        assert_eq!(plan(&cronjob("* * * * *", json!({"suspend": true})), now, &TimeZone::UTC), (vec![], Step::Stop));
        let (ev, step) = plan(&cronjob("61 * * * *", json!({})), now, &TimeZone::UTC);
        assert_eq!((ev[0].reason, step), ("UnparseableSchedule", Step::Stop));
        let (ev, _) = plan(&cronjob("* * * *", json!({})), now, &TimeZone::UTC);
        assert!(ev[0].message.contains("expected exactly 5 fields"), "{ev:?}");
        let (ev, step) = plan(&cronjob("* * * * *", json!({"timeZone": "Mars/Olympus"})), now, &TimeZone::UTC);
        assert_eq!((ev[0].reason, step), ("UnknownTimeZone", Step::Stop));
        let (ev, step) = plan(&cronjob("0 0 30 2 *", json!({})), now, &TimeZone::UTC);
        assert_eq!((ev[0].reason, step), ("InvalidSchedule", Step::Stop));
    }

    #[test]
    fn time_zones_shift_the_schedule_and_the_annotation() {
        let cj = cronjob("0 9 * * *", json!({"timeZone": "America/New_York"}));
        // 09:00 EST is 14:00Z in January, 13:00Z (EDT) in July.
        let (_, step) = plan(&cj, ts("2025-01-15T14:00:05Z"), &TimeZone::UTC);
        assert_eq!(starts(&step), Some(ts("2025-01-15T14:00:00Z")));
        let (_, step) = plan(&cj, ts("2025-01-15T13:59:00Z"), &TimeZone::UTC);
        assert_eq!(step, Step::Wait(Duration::from_millis(60_100)));
        let mut summer = cj.clone();
        summer.metadata.creation_timestamp = Some(Time(ts("2025-07-01T00:00:00Z")));
        assert_eq!(starts(&plan(&summer, ts("2025-07-15T13:00:05Z"), &TimeZone::UTC).1), Some(ts("2025-07-15T13:00:00Z")));
        let job = job_from_template(&cj, ts("2025-01-15T14:00:00Z"));
        assert_eq!(job.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIMESTAMP], "2025-01-15T09:00:00-05:00");
        // Without spec.timeZone: the controller's zone for the schedule, UTC for the annotation.
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let local = cronjob("0 9 * * *", json!({}));
        assert_eq!(starts(&plan(&local, ts("2025-01-16T00:00:05Z"), &tokyo).1), Some(ts("2025-01-16T00:00:00Z")));
        let job = job_from_template(&local, ts("2025-01-16T00:00:00Z"));
        assert_eq!(job.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIMESTAMP], "2025-01-16T00:00:00Z");
        // A TZ= prefix works, with a warning.
        let (ev, step) = plan(&cronjob("TZ=Asia/Tokyo 0 9 * * *", json!({})), ts("2025-01-16T00:00:05Z"), &TimeZone::UTC);
        assert_eq!(ev[0].reason, "UnsupportedSchedule");
        assert_eq!(starts(&step), Some(ts("2025-01-16T00:00:00Z")));
    }

    #[test]
    fn dst_fixed_times_run_once_per_day() {
        // Europe/Berlin springs forward at 02:00 on 2025-03-30 and falls back at 03:00 on 2025-10-26.
        let s = Schedule::parse("30 1 * * *", TimeZone::get("Europe/Berlin").unwrap()).unwrap();
        assert_eq!(s.next(ts("2025-03-29T12:00:00Z")), Some(ts("2025-03-30T00:30:00Z")));
        assert_eq!(s.next(ts("2025-03-30T00:30:00Z")), Some(ts("2025-03-30T23:30:00Z")), "CEST from now on");
        let s = Schedule::parse("30 2 * * *", TimeZone::get("Europe/Berlin").unwrap()).unwrap();
        let first = s.next(ts("2025-10-25T12:00:00Z")).unwrap();
        assert_eq!(first, ts("2025-10-26T00:30:00Z"), "the first 02:30 of the repeated hour");
        assert_eq!(s.next(first), Some(ts("2025-10-27T01:30:00Z")), "not again at the second 02:30");
    }

    #[test]
    fn cron_syntax_ranges_steps_lists_names_and_macros() {
        let utc = || TimeZone::UTC;
        let next = |spec: &str, from: &str| Schedule::parse(spec, utc()).unwrap().next(ts(from)).unwrap();
        // 2025-01-15 is a Wednesday.
        assert_eq!(next("*/15 9-17 * * MON-FRI", "2025-01-15T17:50:00Z"), ts("2025-01-16T09:00:00Z"));
        assert_eq!(next("0 0 * * sat,sun", "2025-01-15T00:00:00Z"), ts("2025-01-18T00:00:00Z"));
        assert_eq!(next("0 12 1 jan-mar *", "2025-03-02T00:00:00Z"), ts("2026-01-01T12:00:00Z"));
        assert_eq!(next("5,35 */6 * * *", "2025-01-15T06:06:00Z"), ts("2025-01-15T06:35:00Z"));
        assert_eq!(next("0/20 * * * *", "2025-01-15T06:41:00Z"), ts("2025-01-15T07:00:00Z"));
        // Day-of-month and day-of-week both restricted: either matches (Vixie cron, robfig).
        assert_eq!(next("0 0 20 * MON", "2025-01-15T00:00:00Z"), ts("2025-01-20T00:00:00Z"));
        assert_eq!(next("0 0 17 * MON", "2025-01-15T00:00:00Z"), ts("2025-01-17T00:00:00Z"));
        assert_eq!(next("@hourly", "2025-01-15T06:41:00Z"), ts("2025-01-15T07:00:00Z"));
        assert_eq!(next("@daily", "2025-01-15T06:41:00Z"), ts("2025-01-16T00:00:00Z"));
        assert_eq!(next("@midnight", "2025-01-15T06:41:00Z"), ts("2025-01-16T00:00:00Z"));
        assert_eq!(next("@weekly", "2025-01-15T06:41:00Z"), ts("2025-01-19T00:00:00Z"));
        assert_eq!(next("@monthly", "2025-01-15T06:41:00Z"), ts("2025-02-01T00:00:00Z"));
        assert_eq!(next("@yearly", "2025-01-15T06:41:00Z"), ts("2026-01-01T00:00:00Z"));
        assert_eq!(next("@annually", "2025-01-15T06:41:00Z"), ts("2026-01-01T00:00:00Z"));
        assert_eq!(next("@every 1h30m", "2025-01-15T06:41:00.7Z"), ts("2025-01-15T08:11:00Z"));
        assert_eq!(next("@every 90s", "2025-01-15T06:41:00Z"), ts("2025-01-15T06:42:30Z"));
        assert!(Schedule::parse("@every", utc()).is_err());
        assert!(Schedule::parse("@fortnightly", utc()).is_err());
        assert!(Schedule::parse("0 0 * * * *", utc()).is_err(), "no seconds field");
    }

    #[test]
    fn jobs_come_from_the_template_with_owner_and_annotation() {
        let cj = cronjob("* * * * *", json!({}));
        let job = job_from_template(&cj, ts("2025-01-15T10:01:00Z"));
        assert_eq!(job.metadata.name.as_deref(), Some("hello-28948921"));
        assert_eq!(job.metadata.labels.as_ref().unwrap()["app"], "x");
        assert_eq!(job.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIMESTAMP], "2025-01-15T10:01:00Z");
        let r = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((r.kind.as_str(), r.name.as_str(), r.uid.as_str(), r.controller), ("CronJob", "hello", "cj-uid", Some(true)));
        assert_eq!(job.spec.unwrap().template.spec.unwrap().restart_policy.as_deref(), Some("OnFailure"));
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let cj = cronjob("* * * * *", json!({"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 0}));
        let job = |name: &str, cond: &str, start: Option<&str>| -> Arc<Job> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "status": {"startTime": start, "conditions": [{"type": cond, "status": "True"}]}
                }))
                .unwrap(),
            )
        };
        let jobs = vec![
            job("c", "Complete", Some("2025-01-15T10:03:00Z")),
            job("a", "Complete", Some("2025-01-15T10:01:00Z")),
            job("b", "Complete", Some("2025-01-15T10:02:00Z")),
            job("f", "Failed", Some("2025-01-15T10:04:00Z")),
            job("r", "SuccessCriteriaMet", Some("2025-01-15T10:00:00Z")),
        ];
        let names: Vec<String> = jobs_beyond_history(&cj, &jobs).iter().map(|j| j.name_any()).collect();
        assert_eq!(names, ["a", "f"]);
        let none = cronjob("* * * * *", json!({}));
        assert!(jobs_beyond_history(&none, &jobs).is_empty(), "no limits, no cleanup");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("h").is_err());
    }
}
