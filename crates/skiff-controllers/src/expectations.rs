//! Controller expectations, as upstream's `ControllerExpectations`: after a controller creates or
//! deletes pods it must not act on the same owner again until its pod cache has seen those writes,
//! or watch lag makes it create (or delete) the same pods twice. Creations are counted; deletions
//! are tracked by pod uid. Entries expire after five minutes so a lost watch event cannot wedge an
//! owner forever (upstream's ExpectationsTimeout).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

use crate::podutil::controller_ref;

const TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Default)]
struct Entry {
    adds: i64,
    /// pod uid → the pod's store key, to check it against the cache after a relist.
    dels: HashMap<String, ObjectRef<Pod>>,
    since: Option<Instant>,
}

#[derive(Default)]
pub struct Expectations {
    by_owner: Mutex<HashMap<String, Entry>>,
    /// What the pod watch has shown so far: uid → controller uid, to tell a new pod from an
    /// update (and a relist's survivors from what it dropped).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    known: HashMap<String, Option<String>>,
    relist: Option<Vec<Pod>>,
}

impl Expectations {
    /// True when the owner may be synced: nothing outstanding, or the expectations expired.
    /// Deletions of pods the cache no longer holds count as observed (a relist drops deletes).
    pub fn satisfied(&self, owner_uid: &str, pods: &Store<Pod>) -> bool {
        let mut map = self.by_owner.lock().unwrap();
        let Some(e) = map.get_mut(owner_uid) else { return true };
        e.dels.retain(|uid, key| {
            pods.get(key).is_some_and(|p| p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none())
        });
        let done = e.adds <= 0 && e.dels.is_empty();
        if done || e.since.is_some_and(|t| t.elapsed() > TIMEOUT) {
            map.remove(owner_uid);
            return true;
        }
        false
    }

    pub fn expect_creations(&self, owner_uid: &str, n: usize) {
        let mut map = self.by_owner.lock().unwrap();
        let e = map.entry(owner_uid.to_string()).or_default();
        e.adds += n as i64;
        e.since = Some(Instant::now());
    }

    /// A create that failed (or was skipped) will never be observed.
    pub fn creation_observed(&self, owner_uid: &str) {
        if let Some(e) = self.by_owner.lock().unwrap().get_mut(owner_uid) {
            e.adds -= 1;
        }
    }

    pub fn expect_deletions(&self, owner_uid: &str, pods: &[&Pod]) {
        let mut map = self.by_owner.lock().unwrap();
        let e = map.entry(owner_uid.to_string()).or_default();
        for p in pods {
            if let Some(uid) = &p.metadata.uid {
                e.dels.insert(uid.clone(), ObjectRef::from_obj(*p));
            }
        }
        e.since = Some(Instant::now());
    }

    pub fn deletion_observed(&self, owner_uid: &str, pod_uid: &str) {
        if let Some(e) = self.by_owner.lock().unwrap().get_mut(owner_uid) {
            e.dels.remove(pod_uid);
        }
    }

    pub fn forget(&self, owner_uid: &str) {
        self.by_owner.lock().unwrap().remove(owner_uid);
    }

    /// Feeds one pod watch event *after* the reflector applied it to the cache, so an owner is
    /// never reported satisfied while its new pods are still missing from the cache. During a
    /// relist the cache only changes at `InitDone`, so the relisted pods are buffered until then;
    /// a pod absent from the relist was deleted while the watch was down.
    pub fn observe(&self, event: &Event<Pod>) {
        let mut seen = self.seen.lock().unwrap();
        match event {
            Event::Apply(p) => self.present(&mut seen.known, p),
            Event::Delete(p) => {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                seen.known.remove(&uid);
                if let Some(owner) = controller_ref(&p.metadata) {
                    self.deletion_observed(&owner.uid, &uid);
                }
            }
            Event::Init => seen.relist = Some(Vec::new()),
            Event::InitApply(p) => seen.relist.get_or_insert_with(Vec::new).push(p.clone()),
            Event::InitDone => {
                let listed = seen.relist.take().unwrap_or_default();
                let now: std::collections::HashSet<&str> = listed.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
                let gone: Vec<(String, Option<String>)> =
                    seen.known.iter().filter(|(u, _)| !now.contains(u.as_str())).map(|(u, o)| (u.clone(), o.clone())).collect();
                for (uid, owner) in gone {
                    seen.known.remove(&uid);
                    if let Some(owner) = owner {
                        self.deletion_observed(&owner, &uid);
                    }
                }
                for p in &listed {
                    self.present(&mut seen.known, p);
                }
            }
        }
    }

    fn present(&self, known: &mut HashMap<String, Option<String>>, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let owner = controller_ref(&pod.metadata).map(|r| r.uid.clone());
        let new = known.insert(uid.clone(), owner.clone()).is_none();
        if let Some(owner) = owner {
            if new {
                self.creation_observed(&owner);
            }
            if pod.metadata.deletion_timestamp.is_some() {
                self.deletion_observed(&owner, &uid);
            }
        }
    }

    #[cfg(test)]
    fn outstanding(&self, owner_uid: &str) -> Option<(i64, usize)> {
        self.by_owner.lock().unwrap().get(owner_uid).map(|e| (e.adds, e.dels.len()))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use kube::runtime::reflector;

    use super::*;
    use crate::podutil::testing::pod;

    fn owned(name: &str) -> Pod {
        let mut p = pod(name);
        p.metadata.owner_references =
            Some(vec![OwnerReference { uid: "rs1".into(), controller: Some(true), kind: "ReplicaSet".into(), ..Default::default() }]);
        p
    }

    #[test]
    fn creations_are_satisfied_once_the_watch_shows_them() {
        let (store, mut writer) = reflector::store::<Pod>();
        let exp = Expectations::default();
        assert!(exp.satisfied("rs1", &store));
        exp.expect_creations("rs1", 2);
        assert!(!exp.satisfied("rs1", &store));
        for name in ["a", "b"] {
            let ev = Event::Apply(owned(name));
            writer.apply_watcher_event(&ev);
            exp.observe(&ev);
        }
        assert!(exp.satisfied("rs1", &store));
        // An update of a pod already in the cache is not a creation.
        exp.expect_creations("rs1", 1);
        exp.observe(&Event::Apply(owned("a")));
        assert_eq!(exp.outstanding("rs1"), Some((1, 0)));
        exp.creation_observed("rs1"); // the create failed
        assert!(exp.satisfied("rs1", &store));
    }

    #[test]
    fn deletions_count_when_terminating_deleted_or_gone_after_relist() {
        let (store, mut writer) = reflector::store::<Pod>();
        let exp = Expectations::default();
        let (a, b, c) = (owned("a"), owned("b"), owned("c"));
        for p in [&a, &b, &c] {
            writer.apply_watcher_event(&Event::Apply(p.clone()));
            exp.observe(&Event::Apply(p.clone()));
        }
        exp.expect_deletions("rs1", &[&a, &b, &c]);
        assert!(!exp.satisfied("rs1", &store));
        let mut a2 = a.clone();
        a2.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        exp.observe(&Event::Apply(a2));
        exp.observe(&Event::Delete(b.clone()));
        assert_eq!(exp.outstanding("rs1"), Some((0, 1)));
        // c vanished during a relist: the cache no longer has it.
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(a.clone()));
        writer.apply_watcher_event(&Event::InitDone);
        assert!(exp.satisfied("rs1", &store));
    }

    #[test]
    fn a_relist_counts_creations_only_once_the_cache_has_them() {
        let (store, mut writer) = reflector::store::<Pod>();
        let exp = Expectations::default();
        exp.expect_creations("rs1", 2);
        for ev in [Event::Init, Event::InitApply(owned("a")), Event::InitApply(owned("b"))] {
            writer.apply_watcher_event(&ev);
            exp.observe(&ev);
        }
        // The cache still lacks both pods: acting now would create them again.
        assert!(!exp.satisfied("rs1", &store));
        writer.apply_watcher_event(&Event::InitDone);
        exp.observe(&Event::InitDone);
        assert!(exp.satisfied("rs1", &store));
        assert_eq!(store.state().len(), 2);
    }
}
