//! Watch streams: replay from the log (`revs`, in revision order), then live events from the
//! writer's broadcast.
//!
//! A watcher is in one of two modes. Catching up, it reads the log in chunks from the next revision
//! it owes. Each chunk subscribes to the broadcast *before* opening its read snapshot, so when a
//! chunk reaches the snapshot's newest revision, every later revision is guaranteed to arrive on
//! that subscription (the writer broadcasts only after committing): the watcher switches to live
//! mode with no gap, dropping live events it already replayed. If the live subscription lags
//! (its bounded buffer overflowed) or sees a gap, the watcher goes back to catching up from the
//! log, so a slow consumer costs a bounded amount of memory and never misses an event.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::broadcast;

use redb::ReadableDatabase;

use super::codec::{META, META_COMPACT, META_REV, REVS, Record, backend};
use super::read::{fetch, meta_get};
use super::request::Span;
use super::writer::{Published, Shared};
use crate::{Event, EventKind, Result, Revision, StoreError, WatchStream};

/// Most log changes one catch-up read scans.
const CHUNK: usize = 1024;

pub struct Watcher {
    pub shared: Weak<Shared>,
    pub range: Arc<(String, Option<String>)>,
    /// The first revision not yet delivered.
    pub next: Revision,
    pub live: Option<broadcast::Receiver<Arc<Published>>>,
    pending: VecDeque<Event>,
    done: bool,
}

impl Watcher {
    pub fn new(
        shared: Weak<Shared>,
        key: String,
        range_end: Option<String>,
        next: Revision,
        live: Option<broadcast::Receiver<Arc<Published>>>,
    ) -> Self {
        Watcher { shared, range: Arc::new((key, range_end)), next, live, pending: VecDeque::new(), done: false }
    }

    pub fn into_stream(self) -> WatchStream {
        Box::pin(futures::stream::unfold(self, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        }))
    }

    fn fail(&mut self, e: StoreError) -> Option<Result<Event>> {
        self.done = true;
        self.pending.clear();
        Some(Err(e))
    }

    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            let Some(live) = self.live.as_mut() else {
                if let Err(e) = self.catch_up().await {
                    return self.fail(e);
                }
                continue;
            };
            match live.recv().await {
                Ok(batch) => {
                    if batch.last < self.next {
                        continue;
                    }
                    match &batch.events {
                        Some(events) if batch.first <= self.next => {
                            let span = Span::new(&self.range.0, self.range.1.as_deref());
                            let owed = events.iter().filter(|ev| ev.kv.mod_revision >= self.next && span.contains(&ev.kv.key));
                            self.pending.extend(owed.cloned());
                            self.next = batch.last + 1;
                        }
                        // A gap or a batch applied without events: read it from the log.
                        _ => self.live = None,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.live = None,
                Err(broadcast::error::RecvError::Closed) => return self.fail(StoreError::Closed),
            }
        }
    }

    async fn catch_up(&mut self) -> Result<()> {
        let shared = self.shared.upgrade().ok_or(StoreError::Closed)?;
        let live = shared.subscribe().ok_or(StoreError::Closed)?;
        let (range, from) = (self.range.clone(), self.next);
        let chunk = tokio::task::spawn_blocking(move || read_log(&shared, Span::new(&range.0, range.1.as_deref()), from))
            .await
            .map_err(backend)??;
        self.pending.extend(chunk.events);
        self.next = chunk.next;
        if chunk.caught_up {
            self.live = Some(live);
        }
        Ok(())
    }
}

struct Chunk {
    events: Vec<Event>,
    next: Revision,
    caught_up: bool,
}

/// Reads up to [`CHUNK`] changes from revision `from` on (whole revisions), keeping those in `span`.
fn read_log(shared: &Shared, span: Span<'_>, from: Revision) -> Result<Chunk> {
    let rtx = shared.db.begin_read().map_err(backend)?;
    let meta = rtx.open_table(META).map_err(backend)?;
    let current = meta_get(&meta, META_REV)?;
    let compacted = meta_get(&meta, META_COMPACT)?.max(shared.compacted.load(Ordering::SeqCst));
    if from <= compacted {
        return Err(StoreError::Compacted { compact_revision: compacted });
    }
    let revs = rtx.open_table(REVS).map_err(backend)?;
    let mut events = Vec::new();
    let mut last = None;
    for (scanned, row) in revs.range((from as u64, 0)..).map_err(backend)?.enumerate() {
        let (id, record) = row.map_err(backend)?;
        let (rev, _) = id.value();
        let rev = rev as Revision;
        if scanned >= CHUNK
            && let Some(last) = last
            && rev != last
        {
            return Ok(Chunk { events, next: last + 1, caught_up: false });
        }
        last = Some(rev);
        let record = Record::decode(record.value())?;
        if span.contains(record.key) {
            let prev_kv = record.prev.map(|prev| fetch(&revs, prev)).transpose()?;
            let kind = if record.tombstone { EventKind::Delete } else { EventKind::Put };
            events.push(Event { kind, kv: record.to_kv(rev), prev_kv });
        }
    }
    Ok(Chunk { events, next: from.max(current + 1), caught_up: true })
}
