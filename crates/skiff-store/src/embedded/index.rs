//! The in-memory key index (etcd's `treeIndex`): for every key, the versions since the last
//! compaction, each naming its record in `revs`. Rebuilt by scanning `revs` on open.
//!
//! It is multi-versioned, so readers and the writer share it under a plain `RwLock`: the writer adds
//! a batch's versions before the batch is committed, and readers never see them because they only
//! look at versions at or below the revision of their (committed) redb snapshot. Compaction removes
//! only versions superseded at or below the compact revision, which no permitted read can select.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use super::codec::Id;
use super::request::Span;
use crate::Revision;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub rev: Revision,
    pub sub: u32,
    pub create_revision: Revision,
    pub version: i64,
    pub tombstone: bool,
}

impl Version {
    pub fn id(&self) -> Id {
        (self.rev as u64, self.sub)
    }
}

/// Revision for "the newest version, committed or not" (the writer's view).
pub const LATEST: Revision = Revision::MAX;

#[derive(Default)]
pub struct Index {
    keys: BTreeMap<String, VecDeque<Version>>,
}

/// The newest version at or below `at`, unless it is a deletion.
fn visible(versions: &VecDeque<Version>, at: Revision) -> Option<Version> {
    let i = versions.partition_point(|v| v.rev <= at);
    versions.get(i.checked_sub(1)?).filter(|v| !v.tombstone).copied()
}

impl Index {
    pub fn get(&self, key: &str, at: Revision) -> Option<Version> {
        visible(self.keys.get(key)?, at)
    }

    /// The live versions in `span` at `at`, in key order.
    pub fn range<'a>(&'a self, span: Span<'a>, at: Revision) -> impl Iterator<Item = (&'a str, Version)> + 'a {
        self.entries(span).filter_map(move |(k, vs)| Some((k.as_str(), visible(vs, at)?)))
    }

    /// Every key in `span` with any version, deleted or not.
    pub fn range_all<'a>(&'a self, span: Span<'a>) -> impl Iterator<Item = &'a str> + 'a {
        self.entries(span).map(|(k, _)| k.as_str())
    }

    fn entries<'a>(&'a self, span: Span<'a>) -> std::collections::btree_map::Range<'a, String, VecDeque<Version>> {
        let bounds = match span {
            Span::One(key) => (Bound::Included(key), Bound::Included(key)),
            // BTreeMap::range panics on an inverted range; this one is merely empty.
            _ if span.is_empty() => (Bound::Included(""), Bound::Excluded("")),
            Span::Range(start, end) => (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded)),
        };
        self.keys.range::<str, _>(bounds)
    }

    /// Records a put of `key` at `id` and returns the version it replaces (one lookup: this is the
    /// write path's hot spot).
    pub fn put(&mut self, key: &str, id: Id) -> (Option<Version>, Version) {
        let rev = id.0 as Revision;
        let fresh = |current: Option<Version>| {
            let (create_revision, version) = current.map_or((rev, 1), |v| (v.create_revision, v.version + 1));
            Version { rev, sub: id.1, create_revision, version, tombstone: false }
        };
        match self.keys.get_mut(key) {
            Some(vs) => {
                let current = visible(vs, LATEST);
                let v = fresh(current);
                vs.push_back(v);
                (current, v)
            }
            None => {
                let v = fresh(None);
                self.keys.insert(key.to_string(), VecDeque::from([v]));
                (None, v)
            }
        }
    }

    /// Appends a version; versions of a key arrive in revision order.
    pub fn push(&mut self, key: &str, v: Version) {
        match self.keys.get_mut(key) {
            Some(vs) => vs.push_back(v),
            None => {
                self.keys.insert(key.to_string(), VecDeque::from([v]));
            }
        }
    }

    /// Drops the versions of `key` above `rev` (a batch that failed to commit).
    pub fn rollback(&mut self, key: &str, rev: Revision) {
        if let Some(vs) = self.keys.get_mut(key) {
            vs.truncate(vs.partition_point(|v| v.rev <= rev));
            if vs.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Drops the version of `key` stored as `id` (compaction, which mostly takes the oldest: a
    /// deque makes that cheap even for a key with a long history).
    pub fn forget(&mut self, key: &str, id: Id) {
        if let Some(vs) = self.keys.get_mut(key) {
            let i = vs.partition_point(|v| v.id() < id);
            if vs.get(i).is_some_and(|v| v.id() == id) {
                vs.remove(i);
            }
            if vs.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Keys with at least one version (live or deleted but not yet compacted).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(rev: Revision, tombstone: bool) -> Version {
        Version { rev, sub: 0, create_revision: 1, version: 1, tombstone }
    }

    #[test]
    fn versions_are_visible_by_revision() {
        let mut ix = Index::default();
        ix.push("/a", v(2, false));
        ix.push("/a", v(4, true));
        ix.push("/a", v(6, false));
        ix.push("/b", v(3, false));
        assert_eq!(ix.get("/a", 1), None);
        assert_eq!(ix.get("/a", 3).map(|v| v.rev), Some(2));
        assert_eq!(ix.get("/a", 5), None, "deleted at 4");
        assert_eq!(ix.get("/a", LATEST).map(|v| v.rev), Some(6));
        let at = |rev| ix.range(Span::Range("/", Some("0")), rev).map(|(k, v)| (k.to_string(), v.rev)).collect::<Vec<_>>();
        assert_eq!(at(5), [("/b".to_string(), 3)]);
        assert_eq!(at(LATEST), [("/a".to_string(), 6), ("/b".to_string(), 3)]);
        assert_eq!(ix.range(Span::Range("/b", Some("/a")), LATEST).count(), 0);
        ix.rollback("/a", 5);
        assert_eq!(ix.get("/a", LATEST), None);
        ix.forget("/b", (3, 0));
        assert_eq!(ix.len(), 1);
    }
}
