//! The single writer thread: group commit.
//!
//! Callers queue transactions; the writer drains the queue (up to [`MAX_BATCH`]), applies every
//! transaction in order inside ONE redb write transaction (each writing transaction gets the next
//! revision; compares see the earlier transactions of the batch), commits once with fsync, and only
//! then publishes the events and answers the callers. N concurrent writers share one fsync, and
//! nobody learns of a write before it is durable.
//!
//! Between batches the writer also runs compaction in bounded steps (`compact.rs`), so a large
//! compaction never stalls writes for long.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::time::{Duration, Instant};

use redb::Database;
use tokio::sync::{broadcast, oneshot};

use super::apply::{Context, Scratch, Tables, apply_txn};
use super::codec::{META, META_REV, backend};
use super::index::Index;
use super::request::Span;
use crate::{Event, Op, Result, Revision, StoreError, Txn, TxnResponse};

/// Most transactions one commit carries, so that one commit's latency stays bounded under a burst.
pub const MAX_BATCH: usize = 1024;

pub enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
    Shutdown(Option<oneshot::Sender<()>>),
}

/// The changes of one commit, as broadcast to live watchers.
pub struct Published {
    /// The revisions this commit created: `first..=last`.
    pub first: Revision,
    pub last: Revision,
    /// None when nobody was subscribed as the batch was applied; a watcher that subscribed
    /// meanwhile reads these revisions from the log instead.
    pub events: Option<Vec<Event>>,
}

/// State shared by the store handle, the writer thread and watchers.
pub struct Shared {
    pub db: Database,
    pub index: RwLock<Index>,
    /// The newest committed revision. Stored before the commit's events are broadcast, so a watcher
    /// that subscribes and then loads it receives every later revision live.
    pub revision: AtomicI64,
    /// Raised (after its commit) before compaction removes anything from the index.
    pub compacted: AtomicI64,
    pub closed: AtomicBool,
    pub commits: AtomicU64,
    pub txns: AtomicU64,
    /// Batch commits still to fail on purpose, to exercise the rollback path.
    #[cfg(test)]
    pub fail_commits: std::sync::atomic::AtomicU32,
    /// Taken (dropped) by the writer when it exits, which ends every live watch with `Closed`.
    pub events: Mutex<Option<broadcast::Sender<Arc<Published>>>>,
}

impl Shared {
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<Published>>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(broadcast::Sender::subscribe)
    }
}

pub struct AutoCompact {
    pub every: Duration,
    pub next_tick: Instant,
    /// The revision current at the previous tick: the next tick compacts to it.
    pub previous: Option<Revision>,
}

pub struct Writer {
    pub shared: Arc<Shared>,
    pub events: broadcast::Sender<Arc<Published>>,
    /// History at or below this revision is physically deleted.
    pub physical: Revision,
    /// Callers of `compact` waiting for physical compaction to reach their revision.
    pub waiters: Vec<(Revision, oneshot::Sender<Result<()>>)>,
    /// Set when a compaction step failed; cleared by the next compaction request.
    pub stalled: bool,
    pub auto: Option<AutoCompact>,
    scratch: Scratch,
}

type Reply = oneshot::Sender<Result<TxnResponse>>;

/// The outcome of applying a batch: each transaction's result, the events (if anyone watches) and
/// the newest revision.
struct Applied {
    results: Vec<Result<TxnResponse>>,
    events: Option<Vec<Event>>,
    last: Revision,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, events: broadcast::Sender<Arc<Published>>, physical: Revision, auto: Option<AutoCompact>) -> Writer {
        Writer { shared, events, physical, waiters: Vec::new(), stalled: false, auto, scratch: Scratch::default() }
    }

    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut batch: Vec<(Txn, Reply)> = Vec::with_capacity(MAX_BATCH);
        let mut compacts = Vec::new();
        let mut shutdown = None;
        while shutdown.is_none() {
            let first = match self.wait() {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(wait) => rx.recv_timeout(wait),
            };
            let mut next = match first {
                Ok(req) => Some(req),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            while let Some(req) = next.take() {
                match req {
                    Request::Txn(txn, reply) => batch.push((txn, reply)),
                    Request::Compact(rev, reply) => compacts.push((rev, reply)),
                    Request::Shutdown(ack) => {
                        shutdown = Some(ack);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            for (rev, reply) in compacts.drain(..) {
                self.start_compaction(rev, Some(reply));
            }
            self.auto_compact_tick();
            if self.compaction_pending() {
                self.compact_step();
            }
        }
        self.exit(rx, shutdown.flatten());
    }

    /// How long to block for the next request: not at all while compaction has work, else until
    /// the next auto-compaction tick (None = indefinitely).
    fn wait(&self) -> Option<Duration> {
        if self.compaction_pending() {
            return Some(Duration::ZERO);
        }
        self.auto.as_ref().map(|a| a.next_tick.saturating_duration_since(Instant::now()))
    }

    fn exit(mut self, rx: mpsc::Receiver<Request>, ack: Option<oneshot::Sender<()>>) {
        self.shared.closed.store(true, Ordering::SeqCst);
        drop(self.shared.events.lock().unwrap_or_else(PoisonError::into_inner).take());
        for (_, reply) in self.waiters.drain(..) {
            let _ = reply.send(Err(StoreError::Closed));
        }
        // Dropping `rx` (and the replies still queued in it) answers late callers with Closed.
        drop(rx);
        drop(self);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    pub fn current(&self) -> Revision {
        self.shared.revision.load(Ordering::SeqCst)
    }

    pub fn compacted(&self) -> Revision {
        self.shared.compacted.load(Ordering::SeqCst)
    }

    fn commit_batch(&mut self, batch: &mut Vec<(Txn, Reply)>) {
        let base = self.current();
        match self.apply_batch(batch, base) {
            Ok(a) => {
                self.shared.revision.store(a.last, Ordering::SeqCst);
                self.shared.txns.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if a.last > base {
                    let _ = self.events.send(Arc::new(Published { first: base + 1, last: a.last, events: a.events }));
                }
                for ((_, reply), result) in batch.drain(..).zip(a.results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                self.rollback(batch, base);
                // One transaction may be what fails the backend (say, a value too large for
                // redb): retry each alone, so that only it fails.
                if batch.len() > 1 {
                    for item in std::mem::take(batch) {
                        self.commit_batch(&mut vec![item]);
                    }
                    return;
                }
                tracing::warn!("store write failed: {e}");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Applies the batch in one write transaction and commits it durably if anything changed.
    fn apply_batch(&mut self, batch: &[(Txn, Reply)], base: Revision) -> Result<Applied> {
        let wtx = self.shared.db.begin_write().map_err(backend)?;
        let with_events = self.events.receiver_count() > 0;
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        let mut cx = Context { index: &self.shared.index, base, compacted: self.compacted(), with_events };
        {
            let mut tables = Tables::open(&wtx)?;
            for (txn, _) in batch {
                let result = apply_txn(&mut tables, &mut self.scratch, txn, &cx, &mut events)?;
                if let Ok(resp) = &result {
                    cx.base = resp.revision;
                }
                results.push(result);
            }
        }
        #[cfg(test)]
        if self.shared.fail_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Backend("injected commit failure".into()));
        }
        if cx.base == base {
            // Nothing changed: the results rest on state that is already durable.
            wtx.abort().map_err(backend)?;
        } else {
            wtx.open_table(META).map_err(backend)?.insert(META_REV, cx.base).map_err(backend)?;
            wtx.commit().map_err(backend)?;
            self.shared.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Applied { results, events: with_events.then_some(events), last: cx.base })
    }

    /// Takes the index versions of a batch that did not commit back out.
    fn rollback(&self, batch: &[(Txn, Reply)], base: Revision) {
        let mut index = self.shared.index.write().unwrap_or_else(PoisonError::into_inner);
        let mut keys = Vec::new();
        for (txn, _) in batch {
            for op in txn.success.iter().chain(&txn.failure) {
                match op {
                    Op::Put { key, .. } => keys.push(key.clone()),
                    Op::Delete { key, range_end } => {
                        // Deleted keys have a tombstone above `base`, which the LATEST view hides.
                        let span = Span::new(key, range_end.as_deref());
                        keys.extend(index.range_all(span).map(str::to_string));
                    }
                    Op::Range(_) => {}
                }
            }
        }
        for key in keys {
            index.rollback(&key, base);
        }
    }
}
