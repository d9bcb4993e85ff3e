//! Compaction, run by the writer thread.
//!
//! Like etcd, compaction has a logical and a physical half. Logically, `compact(rev)` durably
//! records the compact revision at once: from then on reads below it and watches from at or below
//! it fail with `Compacted`. Physically, the records at or below it are walked in revision order in
//! steps of at most [`STEP`] changes, one write transaction each, between write batches (so writes
//! keep flowing): each change's `prev` record (the version it superseded) is deleted, and so is the
//! change itself if it is a deletion; the index forgets the same versions. Every hop of the way,
//! reads at or above the compact revision are unaffected: they only ever select the newest version
//! at or below their revision, and a version superseded at or below the compact revision never is.
//! `compact` answers once the physical half is done.
//!
//! Freed pages are reused by redb, so under steady compaction the file stops growing.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Instant;

use redb::{Durability, ReadableTable};
use tokio::sync::oneshot;

use super::codec::{Id, META, META_COMPACT, META_PHYSICAL, REVS, Record, backend};
use super::writer::Writer;
use crate::{Result, Revision, StoreError};

/// Most changes one physical compaction step walks (it ends on a revision boundary).
const STEP: usize = 1024;

impl Writer {
    pub fn compaction_pending(&self) -> bool {
        !self.stalled && self.physical < self.compacted()
    }

    /// etcd's rules: a future revision or one at or below an earlier compaction is refused.
    pub fn start_compaction(&mut self, rev: Revision, reply: Option<oneshot::Sender<Result<()>>>) {
        let (current, done) = (self.current(), self.compacted());
        let result = if rev > current {
            Err(StoreError::FutureRevision)
        } else if rev <= done {
            Err(StoreError::Compacted { compact_revision: done })
        } else {
            self.mark_compacted(rev)
        };
        match (result, reply) {
            (Ok(()), Some(reply)) => self.waiters.push((rev, reply)),
            (Ok(()), None) => {}
            (Err(e), Some(reply)) => {
                let _ = reply.send(Err(e));
            }
            (Err(e), None) => tracing::warn!("compaction to {rev} refused: {e}"),
        }
    }

    fn mark_compacted(&mut self, rev: Revision) -> Result<()> {
        let wtx = self.shared.db.begin_write().map_err(backend)?;
        wtx.open_table(META).map_err(backend)?.insert(META_COMPACT, rev).map_err(backend)?;
        wtx.commit().map_err(backend)?;
        self.shared.compacted.store(rev, Ordering::SeqCst);
        self.stalled = false;
        tracing::debug!("compacted to revision {rev}");
        Ok(())
    }

    /// kube-apiserver's compactor: every interval, compact to the revision that was current at the
    /// previous tick, so that history always covers at least one interval.
    pub fn auto_compact_tick(&mut self) {
        let current = self.current();
        let compacted = self.compacted();
        let Some(auto) = self.auto.as_mut() else { return };
        let now = Instant::now();
        if now < auto.next_tick {
            return;
        }
        auto.next_tick = now + auto.every;
        if let Some(rev) = auto.previous.replace(current)
            && rev > compacted
        {
            self.start_compaction(rev, None);
        }
    }

    pub fn compact_step(&mut self) {
        let target = self.compacted();
        match self.delete_history(target) {
            Ok(reached) => {
                self.physical = reached;
                let (done, waiting) = std::mem::take(&mut self.waiters).into_iter().partition(|(rev, _)| *rev <= reached);
                self.waiters = waiting;
                for (_, reply) in done {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!("compaction step failed, retrying at the next compaction: {e}");
                self.stalled = true;
                for (_, reply) in self.waiters.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Walks the changes above `self.physical`, up to `target` and about [`STEP`] of them, deleting
    /// what they superseded; returns the revision physical compaction has reached.
    fn delete_history(&mut self, target: Revision) -> Result<Revision> {
        let mut wtx = self.shared.db.begin_write().map_err(backend)?;
        let mut reached = target;
        let mut forget: Vec<(String, Id)> = Vec::new();
        {
            let mut revs = wtx.open_table(REVS).map_err(backend)?;
            let mut doomed: Vec<Id> = Vec::new();
            let mut last = None;
            for (walked, row) in revs.range((self.physical as u64 + 1, 0)..=(target as u64, u32::MAX)).map_err(backend)?.enumerate() {
                let (id, record) = row.map_err(backend)?;
                let id = id.value();
                if walked >= STEP
                    && let Some(last) = last
                    && id.0 != last
                {
                    reached = last as Revision;
                    break;
                }
                last = Some(id.0);
                let record = Record::decode(record.value())?;
                if let Some(prev) = record.prev {
                    doomed.push(prev);
                    forget.push((record.key.to_string(), prev));
                }
                if record.tombstone {
                    doomed.push(id);
                    forget.push((record.key.to_string(), id));
                }
            }
            for id in doomed {
                revs.remove(id).map_err(backend)?;
            }
            wtx.open_table(META).map_err(backend)?.insert(META_PHYSICAL, reached).map_err(backend)?;
        }
        // Intermediate steps need no fsync of their own: a crash merely redoes them (and the next
        // batch's commit makes them durable anyway).
        if reached < target {
            wtx.set_durability(Durability::None).map_err(backend)?;
        }
        wtx.commit().map_err(backend)?;
        let mut index = self.shared.index.write().unwrap_or_else(PoisonError::into_inner);
        for (key, id) in forget {
            index.forget(&key, id);
        }
        Ok(reached)
    }
}
