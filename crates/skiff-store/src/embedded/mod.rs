//! The embedded backend: redb, fsync before acknowledging, group commit, automatic compaction.
//!
//! Layout and read paths are in [`tables`], the writer thread in [`writer`]. Reads never queue
//! behind writes: they use redb's MVCC read transactions.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

mod tables;
mod writer;

use tables::{HIST, LOG, META, META_COMPACT, META_REV, backend, range_at};
use writer::{Request, Shared};

use crate::{Event, RangeRequest, RangeResponse, Result, Revision, Store, StoreError, Txn, TxnResponse, WatchStream};

/// Events a watcher may have in flight before it is switched to re-reading the log.
const LIVE_BUFFER: usize = 4096;
/// Events buffered per watch stream towards its consumer.
const STREAM_BUFFER: usize = 1024;

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Every interval, compact to the revision that was current at the previous tick (what
    /// kube-apiserver's compactor does against etcd); None disables it.
    pub auto_compact_interval: Option<Duration>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { auto_compact_interval: Some(Duration::from_secs(300)) }
    }
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub commits: u64,
    pub txns: u64,
}

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Request>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store at `path`. An unclean shutdown is recovered by redb.
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Arc<EmbeddedStore>> {
        let db = Database::create(path).map_err(backend)?;
        let (rev, compacted) = {
            let wtx = db.begin_write().map_err(backend)?;
            let (rev, compacted) = {
                let meta = wtx.open_table(META).map_err(backend)?;
                wtx.open_table(HIST).map_err(backend)?;
                wtx.open_table(LOG).map_err(backend)?;
                let rev = meta.get(META_REV).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
                let compacted = meta.get(META_COMPACT).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
                (rev, compacted)
            };
            wtx.commit().map_err(backend)?;
            (rev, compacted)
        };
        let (events, _) = broadcast::channel(LIVE_BUFFER);
        let shared = Arc::new(Shared { db, revision: rev.into(), compacted: compacted.into(), commits: 0.into(), txns: 0.into(), events });
        let (tx, rx) = mpsc::unbounded_channel();
        let s2 = shared.clone();
        std::thread::Builder::new().name("skiff-store-writer".into()).spawn(move || writer::run(s2, rx)).map_err(backend)?;
        let store = Arc::new(EmbeddedStore { shared, tx });
        if let Some(every) = opts.auto_compact_interval {
            let weak = Arc::downgrade(&store);
            std::thread::Builder::new().name("skiff-store-compactor".into()).spawn(move || auto_compact(weak, every)).map_err(backend)?;
        }
        Ok(store)
    }

    pub fn stats(&self) -> Stats {
        Stats { commits: self.shared.commits.load(Ordering::Relaxed), txns: self.shared.txns.load(Ordering::Relaxed) }
    }

    fn read_range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        if req.key.is_empty() {
            return Err(StoreError::InvalidRequest("key is not provided".into()));
        }
        let rtx = self.shared.db.begin_read().map_err(backend)?;
        let meta = rtx.open_table(META).map_err(backend)?;
        let current = meta.get(META_REV).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        let compacted = meta.get(META_COMPACT).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        let rev = if req.revision <= 0 { current } else { req.revision };
        if rev > current {
            return Err(StoreError::FutureRevision);
        }
        if rev < compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        let hist = rtx.open_table(HIST).map_err(backend)?;
        let mut resp = range_at(&hist, req, rev)?;
        resp.revision = current;
        Ok(resp)
    }

    fn replay(&self, from: Revision, to: Revision) -> Result<Vec<Event>> {
        let rtx = self.shared.db.begin_read().map_err(backend)?;
        let compacted = rtx.open_table(META).map_err(backend)?.get(META_COMPACT).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        if from <= compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        let hist = rtx.open_table(HIST).map_err(backend)?;
        let log = rtx.open_table(LOG).map_err(backend)?;
        writer::replay(&hist, &log, from, to)
    }
}

fn auto_compact(store: Weak<EmbeddedStore>, every: Duration) {
    let mut previous: Option<Revision> = None;
    loop {
        std::thread::sleep(every);
        let Some(s) = store.upgrade() else { return };
        let now = s.shared.revision.load(Ordering::SeqCst);
        if let Some(p) = previous
            && p > s.shared.compacted.load(Ordering::SeqCst)
        {
            let (tx, rx) = oneshot::channel();
            if s.tx.send(Request::Compact(p, tx)).is_err() {
                return;
            }
            drop(s);
            match rx.blocking_recv() {
                Ok(Err(e)) => tracing::warn!("auto-compaction to {p} failed: {e}"),
                Ok(Ok(())) => tracing::debug!("compacted to revision {p}"),
                Err(_) => return,
            }
        }
        previous = Some(now);
    }
}

fn in_range(key: &str, start: &str, end: Option<&str>) -> bool {
    match end {
        None => key == start,
        Some(end) => key >= start && key < end,
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.read_range(&req)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Txn(txn, tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, key: String, range_end: Option<String>, start_revision: Revision) -> Result<WatchStream> {
        if key.is_empty() {
            return Err(StoreError::InvalidRequest("key is not provided".into()));
        }
        // Subscribe before reading the revision: every event above it then reaches `live`.
        let mut live = self.shared.events.subscribe();
        let current = self.shared.revision.load(Ordering::SeqCst);
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        let start = if start_revision <= 0 { current + 1 } else { start_revision };
        if start <= compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        let backlog = self.replay(start, current)?;
        let (out, rx) = mpsc::channel::<Result<Event>>(STREAM_BUFFER);
        let weak = Arc::downgrade(&self.shared);
        let me = WatchReader { shared: weak, key, end: range_end };
        tokio::spawn(async move {
            let mut delivered = start - 1;
            if me.send_all(&out, backlog, &mut delivered).await.is_err() {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(batch) => {
                        if me.send_all(&out, batch.iter().cloned().collect(), &mut delivered).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live buffer: catch up from the log instead.
                        live = match me.shared.upgrade() {
                            Some(s) => s.events.subscribe(),
                            None => return,
                        };
                        match me.catch_up(delivered + 1) {
                            Ok(evs) => {
                                if me.send_all(&out, evs, &mut delivered).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = out.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = out.send(Err(StoreError::Closed)).await;
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Compact(revision, tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn compact_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted.load(Ordering::SeqCst))
    }
}

struct WatchReader {
    shared: Weak<Shared>,
    key: String,
    end: Option<String>,
}

impl WatchReader {
    /// Sends the events above `delivered` that fall in the watched range. Batches always hold whole
    /// revisions, so afterwards everything up to the highest revision seen is delivered.
    async fn send_all(
        &self,
        out: &mpsc::Sender<Result<Event>>,
        events: Vec<Event>,
        delivered: &mut Revision,
    ) -> std::result::Result<(), ()> {
        let mut max = *delivered;
        for ev in events {
            let rev = ev.kv.mod_revision;
            if rev <= *delivered {
                continue;
            }
            if in_range(&ev.kv.key, &self.key, self.end.as_deref()) {
                out.send(Ok(ev)).await.map_err(|_| ())?;
            }
            max = max.max(rev);
        }
        *delivered = max;
        Ok(())
    }

    fn catch_up(&self, next: Revision) -> Result<Vec<Event>> {
        let shared = self.shared.upgrade().ok_or(StoreError::Closed)?;
        let rtx = shared.db.begin_read().map_err(backend)?;
        let meta = rtx.open_table(META).map_err(backend)?;
        let current = meta.get(META_REV).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        let compacted = meta.get(META_COMPACT).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
        if next <= compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        let hist = rtx.open_table(HIST).map_err(backend)?;
        let log = rtx.open_table(LOG).map_err(backend)?;
        writer::replay(&hist, &log, next, current)
    }
}

#[cfg(test)]
mod tests;
