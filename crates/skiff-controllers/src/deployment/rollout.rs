//! One sync of one Deployment: claim its ReplicaSets, then take the next step of its strategy
//! (RollingUpdate, Recreate) or of a scaling event (proportional scaling), and report status.
//! Upstream's `sync.go`, `rolling.go` and `recreate.go`, step for step.

use std::cmp::Ordering;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::status::{self, PAUSED, PROGRESSING, RESUMED};
use super::util::{self, available, revision, spec_replicas, status_replicas};
use super::{Ctx, Error, now, owner, write_revision, write_status};
use crate::events::reference;
use crate::podutil::{PodSelector, controller_ref, labels};

pub struct Sync<'a> {
    ctx: &'a Ctx,
    pub d: Deployment,
    rss: Vec<ReplicaSet>,
    /// When to look again (a progress deadline that has not passed yet).
    pub recheck: Option<Duration>,
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let t = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

impl<'a> Sync<'a> {
    pub fn new(ctx: &'a Ctx, d: Deployment) -> Sync<'a> {
        Sync { ctx, d, rss: Vec::new(), recheck: None }
    }

    fn ns(&self) -> String {
        self.d.namespace().unwrap_or_default()
    }

    fn replicas(&self) -> i32 {
        util::replicas(&self.d)
    }

    /// The ReplicaSets this Deployment controls, adopting matching orphans and releasing those
    /// that stopped matching (upstream's ControllerRefManager).
    pub async fn claim_replicasets(&mut self) -> Result<(), Error> {
        let ns = self.ns();
        let uid = self.d.metadata.uid.clone().unwrap_or_default();
        let sel = PodSelector::new(self.d.spec.as_ref().map(|s| &s.selector));
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let api = self.ctx.replicaset_api(&ns);
        let mut rss = Vec::new();
        for rs in self.ctx.replicasets.state() {
            if rs.metadata.namespace.as_deref() != Some(ns.as_str()) {
                continue;
            }
            let matches = sel.matches(labels(&rs.metadata));
            match controller_ref(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        rss.push((*rs).clone());
                    } else if !deleting {
                        let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": rs.metadata.uid}});
                        ignore_gone(api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await)?;
                    }
                }
                None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    let patch = json!({"metadata": {"ownerReferences": [owner(&self.d)], "uid": rs.metadata.uid}});
                    if let Some(adopted) = ignore_gone(api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await)?
                    {
                        rss.push(adopted);
                    }
                }
                _ => {}
            }
        }
        rss.sort_by(by_creation);
        self.rss = rss;
        Ok(())
    }

    fn find_new(&self) -> Option<usize> {
        let template = self.d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        // Oldest first (the list is sorted): with duplicates, the oldest wins, as upstream.
        self.rss
            .iter()
            .position(|rs| rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| util::equal_ignore_hash(t, &template)))
    }

    fn olds(&self, new: Option<usize>) -> Vec<usize> {
        (0..self.rss.len()).filter(|i| Some(*i) != new).collect()
    }

    fn total_spec(&self) -> i32 {
        self.rss.iter().map(spec_replicas).sum()
    }

    fn status_inputs(&self, new: Option<usize>) -> (Vec<&ReplicaSet>, Option<&ReplicaSet>) {
        (self.rss.iter().collect(), new.map(|i| &self.rss[i]))
    }

    /// Finds (and, when `create`, makes) the ReplicaSet for the current template, keeping its
    /// revision, annotations and minReadySeconds in step with the Deployment.
    async fn new_replicaset(&mut self, create: bool) -> Result<Option<usize>, Error> {
        let new = self.find_new();
        let max_old = self.olds(new).iter().map(|&i| revision(&self.rss[i])).max().unwrap_or(0);
        let new_revision = max_old + 1;
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let has_deadline = self.d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).is_some();
        if let Some(i) = new {
            let mut rs = self.rss[i].clone();
            let mut changed = util::copy_annotations(&self.d, &mut rs);
            changed |= util::set_revision(&mut rs, new_revision);
            if util::annotation_i32(&rs, util::DESIRED_REPLICAS).is_none() {
                changed |= util::set_replicas_annotations(&mut rs, self.replicas(), self.replicas() + util::max_surge(&self.d));
            }
            let spec = rs.spec.get_or_insert_with(Default::default);
            if spec.min_ready_seconds != min_ready {
                spec.min_ready_seconds = min_ready;
                changed = true;
            }
            if changed {
                let api = self.ctx.replicaset_api(&self.ns());
                self.rss[i] = api.replace(&rs.name_any(), &PostParams::default(), &rs).await?;
            }
            let rev = revision(&self.rss[i]);
            write_revision(self.ctx, &mut self.d, rev).await?;
            if has_deadline && self.d.status.as_ref().and_then(|s| status::get(s, PROGRESSING)).is_none() {
                let mut st = self.d.status.clone().unwrap_or_default();
                let msg = format!("Found new replica set \"{}\"", self.rss[i].name_any());
                status::set(&mut st, status::condition(PROGRESSING, "True", status::FOUND_NEW_RS, msg, now()));
                write_status(self.ctx, &mut self.d, st).await?;
            }
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }

        let spec = self.d.spec.clone().unwrap_or_default();
        let collision = self.d.status.as_ref().and_then(|s| s.collision_count);
        let mut template = spec.template.clone();
        let hash = util::template_hash(&template, collision);
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(util::HASH_LABEL.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector.match_labels.get_or_insert_with(Default::default).insert(util::HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", self.d.name_any());
        let replicas = self.new_rs_replicas(None);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![owner(&self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec { replicas: Some(replicas), min_ready_seconds: min_ready, selector, template: Some(template) }),
            status: None,
        };
        util::copy_annotations(&self.d, &mut rs);
        util::set_revision(&mut rs, new_revision);
        util::set_replicas_annotations(&mut rs, self.replicas(), self.replicas() + util::max_surge(&self.d));
        let api = self.ctx.replicaset_api(&self.ns());
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if replicas > 0 {
                    let msg = format!("Scaled up replica set {name} from 0 to {replicas}");
                    self.ctx.events.normal(reference(&self.d), "ScalingReplicaSet", msg);
                }
                self.rss.push(created);
                let i = self.rss.len() - 1;
                write_revision(self.ctx, &mut self.d, new_revision).await?;
                if has_deadline {
                    let mut st = self.d.status.clone().unwrap_or_default();
                    let msg = format!("Created new replica set \"{name}\"");
                    status::set(&mut st, status::condition(PROGRESSING, "True", status::NEW_RS_CREATED, msg, now()));
                    write_status(self.ctx, &mut self.d, st).await?;
                }
                Ok(Some(i))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A ReplicaSet of that name exists. Ours with the same template means our cache is
                // behind; anything else is a hash collision: bump collisionCount and try a new name.
                if let Some(existing) = api.get_opt(&name).await? {
                    let ours = controller_ref(&existing.metadata).is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                    let same = existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|t| util::equal_ignore_hash(t, &spec.template));
                    if ours && same {
                        return Err(Error::Retry(format!("replica set {name} not in the cache yet")));
                    }
                }
                let mut st = self.d.status.clone().unwrap_or_default();
                st.collision_count = Some(collision.unwrap_or(0) + 1);
                write_status(self.ctx, &mut self.d, st).await?;
                Err(Error::Retry(format!("hash collision on replica set {name}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replicas for the new ReplicaSet as upstream's NewRSNewReplicas.
    fn new_rs_replicas(&self, new: Option<usize>) -> i32 {
        let want = self.replicas();
        if !util::is_rolling(&self.d) {
            return want;
        }
        let cur = new.map(|i| spec_replicas(&self.rss[i])).unwrap_or(0);
        let max_total = want + util::max_surge(&self.d);
        let total = self.total_spec();
        if total >= max_total {
            return cur;
        }
        cur + (max_total - total).min(want - cur).max(0)
    }

    /// Sets one ReplicaSet's size (and the replica annotations); true when the size changed.
    async fn scale(&mut self, i: usize, size: i32, direction: &str) -> Result<bool, Error> {
        let mut rs = self.rss[i].clone();
        let old = spec_replicas(&rs);
        let size_changed = old != size;
        let ann_changed = util::set_replicas_annotations(&mut rs, self.replicas(), self.replicas() + util::max_surge(&self.d));
        if !size_changed && !ann_changed {
            return Ok(false);
        }
        rs.spec.get_or_insert_with(Default::default).replicas = Some(size);
        let api = self.ctx.replicaset_api(&self.ns());
        self.rss[i] = api.replace(&rs.name_any(), &PostParams::default(), &rs).await?;
        if size_changed {
            let msg = format!("Scaled {direction} replica set {} from {old} to {size}", rs.name_any());
            self.ctx.events.normal(reference(&self.d), "ScalingReplicaSet", msg);
        }
        Ok(size_changed)
    }

    pub async fn rolling(&mut self) -> Result<(), Error> {
        let new = self.new_replicaset(true).await?;
        if self.reconcile_new(new).await? || self.reconcile_old(new).await? {
            return self.sync_rollout_status(new).await;
        }
        if status::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(new).await?;
        }
        self.sync_rollout_status(new).await
    }

    async fn reconcile_new(&mut self, new: Option<usize>) -> Result<bool, Error> {
        let Some(i) = new else { return Ok(false) };
        let (want, cur) = (self.replicas(), spec_replicas(&self.rss[i]));
        match cur.cmp(&want) {
            Ordering::Equal => Ok(false),
            Ordering::Greater => self.scale(i, want, "down").await,
            Ordering::Less => {
                let size = self.new_rs_replicas(new);
                self.scale(i, size, "up").await
            }
        }
    }

    /// Scales old ReplicaSets down as far as maxUnavailable allows: unhealthy replicas first, then
    /// available ones, oldest ReplicaSet first.
    async fn reconcile_old(&mut self, new: Option<usize>) -> Result<bool, Error> {
        let olds = self.olds(new);
        if olds.iter().map(|&i| spec_replicas(&self.rss[i])).sum::<i32>() == 0 {
            return Ok(false);
        }
        let all_pods = self.total_spec();
        let min_available = self.replicas() - util::max_unavailable(&self.d);
        let new_unavailable = new.map(|i| spec_replicas(&self.rss[i]) - available(&self.rss[i])).unwrap_or(0);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut cleaned = 0;
        for &i in &olds {
            if cleaned >= max_scaled_down {
                break;
            }
            let spec = spec_replicas(&self.rss[i]);
            let unhealthy = spec - available(&self.rss[i]);
            if spec == 0 || unhealthy <= 0 {
                continue;
            }
            let n = (max_scaled_down - cleaned).min(unhealthy);
            self.scale(i, spec - n, "down").await?;
            cleaned += n;
        }
        let available_all: i32 = self.rss.iter().map(available).sum();
        let mut scaled = 0;
        if available_all > min_available {
            let total = available_all - min_available;
            for &i in &olds {
                if scaled >= total {
                    break;
                }
                let spec = spec_replicas(&self.rss[i]);
                if spec == 0 {
                    continue;
                }
                let n = spec.min(total - scaled);
                self.scale(i, spec - n, "down").await?;
                scaled += n;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    pub async fn recreate(&mut self) -> Result<(), Error> {
        let mut new = self.new_replicaset(false).await?;
        let active_old: Vec<usize> = self.olds(new).into_iter().filter(|&i| spec_replicas(&self.rss[i]) > 0).collect();
        if !active_old.is_empty() {
            for i in active_old {
                self.scale(i, 0, "down").await?;
            }
            return self.sync_rollout_status(new).await;
        }
        if self.old_pods_running(new) {
            return self.sync_rollout_status(new).await;
        }
        if new.is_none() {
            new = self.new_replicaset(true).await?;
        }
        if let Some(i) = new {
            let want = self.replicas();
            self.scale(i, want, "up").await?;
        }
        if status::complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(new).await?;
        }
        self.sync_rollout_status(new).await
    }

    /// Any pod of an old ReplicaSet not yet finished (Recreate waits for all of them to go).
    fn old_pods_running(&self, new: Option<usize>) -> bool {
        let old_uids: Vec<&str> = self.olds(new).iter().filter_map(|&i| self.rss[i].metadata.uid.as_deref()).collect();
        let ns = self.ns();
        self.ctx.pods.state().iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && controller_ref(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid.as_str()))
                && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
    }

    /// True when an active ReplicaSet was sized for another replica count: the user scaled.
    pub fn is_scaling_event(&self) -> bool {
        let want = self.replicas();
        self.rss
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .any(|rs| util::annotation_i32(rs, util::DESIRED_REPLICAS).is_some_and(|d| d != want))
    }

    /// A scaling event or a paused Deployment: resize, spreading the change proportionally over
    /// the active ReplicaSets during a rollout; no rollout progress.
    pub async fn sync_scale(&mut self) -> Result<(), Error> {
        let new = self.new_replicaset(false).await?;
        self.proportional_scale(new).await?;
        if self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
            self.cleanup(new).await?;
        }
        let (all, new_rs) = self.status_inputs(new);
        let st = status::calculate(&self.d, &all, new_rs, now());
        write_status(self.ctx, &mut self.d, st).await
    }

    async fn proportional_scale(&mut self, new: Option<usize>) -> Result<(), Error> {
        let want = self.replicas();
        let mut olds = self.olds(new);
        olds.sort_by(|&a, &b| by_creation(&self.rss[b], &self.rss[a])); // newest first
        let active: Vec<usize> = new.into_iter().chain(olds.iter().copied()).filter(|&i| spec_replicas(&self.rss[i]) > 0).collect();
        // One active (or none: the newest) ReplicaSet takes the whole count.
        let single = match active.len() {
            0 => new.or(olds.first().copied()),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = single {
            if spec_replicas(&self.rss[i]) != want {
                let dir = if spec_replicas(&self.rss[i]) < want { "up" } else { "down" };
                self.scale(i, want, dir).await?;
            }
            return Ok(());
        }
        // A saturated new ReplicaSet means the old ones only need to go.
        if let Some(i) = new {
            let rs = &self.rss[i];
            if spec_replicas(rs) == want && util::annotation_i32(rs, util::DESIRED_REPLICAS) == Some(want) && available(rs) == want {
                for &o in &olds {
                    if spec_replicas(&self.rss[o]) > 0 {
                        self.scale(o, 0, "down").await?;
                    }
                }
                return Ok(());
            }
        }
        if !util::is_rolling(&self.d) {
            return Ok(());
        }
        let surge = util::max_surge(&self.d);
        let current: i32 = active.iter().map(|&i| spec_replicas(&self.rss[i])).sum();
        let allowed = if want > 0 { want + surge } else { 0 };
        let to_add = allowed - current;
        let mut order = active.clone();
        let newer_first = |a: &usize, b: &usize| by_creation(&self.rss[*b], &self.rss[*a]);
        match to_add.cmp(&0) {
            // Larger first; ties: newer first when scaling up, older first when scaling down.
            Ordering::Greater => {
                order.sort_by(|a, b| spec_replicas(&self.rss[*b]).cmp(&spec_replicas(&self.rss[*a])).then_with(|| newer_first(a, b)))
            }
            Ordering::Less => {
                order.sort_by(|a, b| spec_replicas(&self.rss[*b]).cmp(&spec_replicas(&self.rss[*a])).then_with(|| newer_first(b, a)))
            }
            Ordering::Equal => {}
        }
        let mut added = 0;
        let mut sizes: Vec<(usize, i32)> = Vec::new();
        for &i in &order {
            let cur = spec_replicas(&self.rss[i]);
            let p = if to_add != 0 { self.proportion(i, to_add, added) } else { 0 };
            added += p;
            sizes.push((i, cur + p));
        }
        if let Some(first) = sizes.first_mut()
            && to_add != 0
        {
            first.1 = (first.1 + to_add - added).max(0);
        }
        let dir = if to_add > 0 { "up" } else { "down" };
        for (i, size) in sizes {
            self.scale(i, size, dir).await?;
        }
        Ok(())
    }

    /// This ReplicaSet's share of `to_add`, bounded by what is left (upstream's GetProportion).
    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        let rs = &self.rss[i];
        let cur = spec_replicas(rs);
        if cur == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let want = self.replicas();
        let fraction = if want == 0 {
            -cur
        } else {
            let max_now = want + util::max_surge(&self.d);
            let before = util::annotation_i32(rs, util::MAX_REPLICAS)
                .filter(|v| *v != 0)
                .unwrap_or_else(|| self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
            if before == 0 { 0 } else { ((cur as f64 * max_now as f64) / before as f64).round() as i32 - cur }
        };
        let allowed = to_add - added;
        if to_add > 0 { fraction.min(allowed) } else { fraction.max(allowed) }
    }

    /// Deletes the oldest fully scaled-down ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&mut self, new: Option<usize>) -> Result<(), Error> {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else { return Ok(()) };
        let mut old: Vec<&ReplicaSet> =
            self.olds(new).iter().map(|&i| &self.rss[i]).filter(|rs| rs.metadata.deletion_timestamp.is_none()).collect();
        let diff = old.len() as i64 - limit as i64;
        if diff <= 0 {
            return Ok(());
        }
        old.sort_by_key(|rs| revision(rs));
        let api = self.ctx.replicaset_api(&self.ns());
        for rs in old.into_iter().take(diff as usize) {
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0);
            if status_replicas(rs) != 0 || spec_replicas(rs) != 0 || rs.metadata.generation.unwrap_or(0) > observed {
                continue;
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: rs.metadata.uid.clone(), resource_version: None }),
                ..Default::default()
            };
            ignore_gone(api.delete(&rs.name_any(), &dp).await.map(|_| ()))?;
        }
        Ok(())
    }

    async fn sync_rollout_status(&mut self, new: Option<usize>) -> Result<(), Error> {
        let (all, new_rs) = self.status_inputs(new);
        let (st, recheck) = status::rollout(&self.d, &all, new_rs, now());
        self.recheck = recheck;
        write_status(self.ctx, &mut self.d, st).await
    }

    pub async fn sync_status_only(&mut self) -> Result<(), Error> {
        let new = self.find_new();
        let (all, new_rs) = self.status_inputs(new);
        let st = status::calculate(&self.d, &all, new_rs, now());
        write_status(self.ctx, &mut self.d, st).await
    }

    /// Progressing=Unknown with DeploymentPaused / DeploymentResumed as the Deployment is paused
    /// and resumed (only for Deployments with a progress deadline, as upstream).
    pub async fn check_paused_conditions(&mut self) -> Result<(), Error> {
        if self.d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).is_none() {
            return Ok(());
        }
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let mut st = self.d.status.clone().unwrap_or_default();
        let reason = status::get(&st, PROGRESSING).and_then(|c| c.reason.clone());
        let cond = match (paused, reason.as_deref()) {
            (true, r) if r != Some(PAUSED) => status::condition(PROGRESSING, "Unknown", PAUSED, "Deployment is paused".into(), now()),
            (false, Some(PAUSED)) => status::condition(PROGRESSING, "Unknown", RESUMED, "Deployment is resumed".into(), now()),
            _ => return Ok(()),
        };
        status::set(&mut st, cond);
        write_status(self.ctx, &mut self.d, st).await
    }
}

fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
