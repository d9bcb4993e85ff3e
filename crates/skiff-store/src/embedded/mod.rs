//! The embedded backend: one redb file, fsync before acknowledging, group commit, automatic
//! compaction.
//!
//! * Revisions: an empty store is at revision 0; the first write creates revision 1 (etcd starts at
//!   1 with an empty store; nothing here depends on the difference).
//! * Layout ([`codec`]): etcd's. Changes are records keyed by revision, so commits append; an
//!   in-memory index ([`index`]) maps keys to their versions and is rebuilt from the records on
//!   open (it costs memory per key and per uncompacted version, like etcd's).
//! * Writes go through one writer thread ([`writer`]) that commits many transactions per fsync.
//! * Reads ([`read`]) and watch replays ([`watch`]) use redb read transactions (MVCC snapshots) and
//!   the multi-versioned index, and never queue behind writes.
//! * A commit's bookkeeping (revision, compaction state) is in the same redb transaction as its
//!   data, so a crash at any point reopens to the last acknowledged commit.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{broadcast, oneshot};

mod apply;
mod codec;
mod compact;
mod index;
mod read;
mod request;
mod watch;
mod writer;

use codec::{META, META_COMPACT, META_PHYSICAL, META_REV, META_SCHEMA, REVS, Record, SCHEMA, backend};
use index::{Index, Version};
use request::Span;
use writer::{AutoCompact, Request, Shared, Writer};

use crate::{RangeRequest, RangeResponse, Result, Revision, Store, StoreError, Txn, TxnResponse, WatchStream};

/// Commits a live watcher may fall behind before it switches to re-reading the log. Small on
/// purpose: each slot holds a whole commit's events, and catching up from the log is cheap.
const LIVE_BUFFER: usize = 128;

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Every interval, compact to the revision that was current at the previous tick (what
    /// kube-apiserver's compactor does against etcd); None disables it.
    pub auto_compact_interval: Option<Duration>,
    /// Memory redb may use to cache pages (counts towards the server's RSS once touched).
    pub cache_size: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { auto_compact_interval: Some(Duration::from_secs(300)), cache_size: 64 << 20 }
    }
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Durable commits of transaction batches (compaction commits are not counted).
    pub commits: u64,
    /// Transactions answered by the writer, including those that changed nothing.
    pub txns: u64,
}

/// See the [module docs](self). Dropping the last handle stops the writer thread (after it finishes
/// the batch at hand) and ends every watch with `Err(Closed)`.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in the database file at `path`; missing parent
    /// directories are created. After a crash redb recovers the last durable commit and an
    /// interrupted compaction resumes. Opening reads every record to rebuild the index.
    pub fn open(path: &Path, opts: EmbeddedOptions) -> Result<Arc<EmbeddedStore>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Database::builder().set_cache_size(opts.cache_size).create(path).map_err(backend)?;
        let (rev, compacted, physical) = init(&db)?;
        let index = load_index(&db)?;
        let (events, _) = broadcast::channel(LIVE_BUFFER);
        let shared = Arc::new(Shared {
            db,
            index: RwLock::new(index),
            revision: rev.into(),
            compacted: compacted.into(),
            closed: false.into(),
            commits: 0.into(),
            txns: 0.into(),
            #[cfg(test)]
            fail_commits: 0.into(),
            events: Mutex::new(Some(events.clone())),
        });
        let auto = opts.auto_compact_interval.map(|every| AutoCompact { every, next_tick: Instant::now() + every, previous: None });
        let writer = Writer::new(shared.clone(), events, physical, auto);
        let (requests, rx) = mpsc::channel();
        let handle = std::thread::Builder::new().name("skiff-store-writer".into()).spawn(move || writer.run(rx)).map_err(backend)?;
        Ok(Arc::new(EmbeddedStore { shared, requests, writer: Mutex::new(Some(handle)) }))
    }

    pub fn stats(&self) -> Stats {
        Stats { commits: self.shared.commits.load(Ordering::Relaxed), txns: self.shared.txns.load(Ordering::Relaxed) }
    }

    /// Stops the writer after the transactions already queued, and ends every watch with
    /// `Err(Closed)`; later calls fail with `Closed`. The file is released when the last handle is
    /// dropped.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown(Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }

    fn read(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let rtx = self.shared.db.begin_read().map_err(backend)?;
        read::snapshot_range(&self.shared.index, &self.shared.compacted, &rtx, req)
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) { Err(StoreError::Closed) } else { Ok(()) }
    }
}

/// Creates the tables of a new file, checks the schema of an existing one, and returns the current,
/// compact and physically compacted revisions.
fn init(db: &Database) -> Result<(Revision, Revision, Revision)> {
    let wtx = db.begin_write().map_err(backend)?;
    let revs = {
        let mut meta = wtx.open_table(META).map_err(backend)?;
        wtx.open_table(REVS).map_err(backend)?;
        let get = |key| Ok::<_, StoreError>(meta.get(key).map_err(backend)?.map(|v| v.value()));
        let (schema, rev, compacted, physical) = (get(META_SCHEMA)?, get(META_REV)?, get(META_COMPACT)?, get(META_PHYSICAL)?);
        match (schema, rev) {
            (Some(SCHEMA), _) => {}
            (None, None) => {
                meta.insert(META_SCHEMA, SCHEMA).map_err(backend)?;
            }
            (other, _) => return Err(StoreError::Backend(format!("unsupported store format {other:?} (expected {SCHEMA})"))),
        }
        (rev.unwrap_or(0), compacted.unwrap_or(0), physical.unwrap_or(0))
    };
    wtx.commit().map_err(backend)?;
    Ok(revs)
}

/// Rebuilds the index from every record, in revision order.
fn load_index(db: &Database) -> Result<Index> {
    let mut index = Index::default();
    let rtx = db.begin_read().map_err(backend)?;
    let revs = rtx.open_table(REVS).map_err(backend)?;
    for row in revs.range::<(u64, u32)>(..).map_err(backend)? {
        let (id, record) = row.map_err(backend)?;
        let (rev, sub) = id.value();
        let r = Record::decode(record.value())?;
        let v = Version { rev: rev as Revision, sub, create_revision: r.create_revision, version: r.version, tombstone: r.tombstone };
        index.push(r.key, v);
    }
    Ok(index)
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Shutdown(None));
        // Joining releases the writer's hold on the file, so the store can be reopened at once.
        if let Some(handle) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = handle.join();
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        request::check_range(&req)?;
        self.check_open()?;
        // A single key is a few page reads; a range may be long, so it leaves the async workers.
        if matches!(Span::new(&req.key, req.range_end.as_deref()), Span::One(_)) {
            return self.read(&req);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let rtx = shared.db.begin_read().map_err(backend)?;
            read::snapshot_range(&shared.index, &shared.compacted, &rtx, &req)
        })
        .await
        .map_err(backend)?
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        request::check_txn(&txn)?;
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Txn(txn, tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, key: String, range_end: Option<String>, start_revision: Revision) -> Result<WatchStream> {
        request::check_watch(&key, start_revision)?;
        // Subscribing before loading the revision: every revision above it then arrives live.
        let live = self.shared.subscribe().ok_or(StoreError::Closed)?;
        let current = self.shared.revision.load(Ordering::SeqCst);
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        let next = if start_revision == 0 { current + 1 } else { start_revision };
        if next <= compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        let live = (next > current).then_some(live);
        Ok(watch::Watcher::new(Arc::downgrade(&self.shared), key, range_end, next, live).into_stream())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Compact(revision, tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn compact_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests;
