//! The single writer thread: group commit.
//!
//! Concurrent transactions queue here; the writer drains the queue, applies every queued transaction
//! in order inside ONE redb write transaction (each writing transaction gets its own revision, and
//! compares see the effects of earlier transactions in the batch), commits once with fsync, and only
//! then answers the callers and publishes the events. So N concurrent writers share one fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::tables::{
    HIST, LOG, LogEntry, META, META_COMPACT, META_REV, Version, backend, decode_log, encode_log, live_at, range_at, version_at,
};
use crate::{
    Compare, CompareResult, CompareTarget, Event, EventKind, KeyValue, Op, OpResponse, RangeRequest, Result, Revision, StoreError, Txn,
    TxnResponse,
};

/// Most transactions one commit carries, so a burst cannot make one commit's latency unbounded.
const MAX_BATCH: usize = 1024;

pub enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

/// State shared between the writer and readers.
pub struct Shared {
    pub db: Database,
    pub revision: AtomicI64,
    pub compacted: AtomicI64,
    pub commits: AtomicU64,
    pub txns: AtomicU64,
    pub events: broadcast::Sender<Arc<Vec<Event>>>,
}

pub fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (txns, compacts): (Vec<_>, Vec<_>) = batch.drain(..).partition(|r| matches!(r, Request::Txn(..)));
        if !txns.is_empty() {
            commit_batch(&shared, txns);
        }
        for c in compacts {
            if let Request::Compact(rev, reply) = c {
                let _ = reply.send(compact(&shared, rev));
            }
        }
    }
}

fn commit_batch(shared: &Shared, reqs: Vec<Request>) {
    let mut replies = Vec::with_capacity(reqs.len());
    let mut txns = Vec::with_capacity(reqs.len());
    for r in reqs {
        if let Request::Txn(t, reply) = r {
            txns.push(t);
            replies.push(reply);
        }
    }
    match apply_batch(shared, &txns) {
        Ok((results, events, rev)) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.txns.fetch_add(txns.len() as u64, Ordering::Relaxed);
            // Publish the revision before the events: a watcher that reads the revision after
            // subscribing then never misses an event above it.
            shared.revision.store(rev, Ordering::SeqCst);
            if !events.is_empty() {
                let _ = shared.events.send(Arc::new(events));
            }
            for (reply, res) in replies.into_iter().zip(results) {
                let _ = reply.send(res);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

type Hist<'t> = Table<'t, (&'static str, u64), &'static [u8]>;

/// Applies all transactions in one write transaction and commits it durably.
fn apply_batch(shared: &Shared, txns: &[Txn]) -> Result<(Vec<Result<TxnResponse>>, Vec<Event>, Revision)> {
    let wtx: WriteTransaction = shared.db.begin_write().map_err(backend)?;
    let mut rev = shared.revision.load(Ordering::SeqCst);
    let mut results = Vec::with_capacity(txns.len());
    let mut events = Vec::new();
    {
        let mut hist = wtx.open_table(HIST).map_err(backend)?;
        let mut log = wtx.open_table(LOG).map_err(backend)?;
        for txn in txns {
            match apply_txn(&mut hist, txn, rev + 1) {
                Ok((resp, entries, evs)) => {
                    if !entries.is_empty() {
                        rev += 1;
                        log.insert(rev as u64, encode_log(&entries).as_slice()).map_err(backend)?;
                        events.extend(evs);
                    }
                    results.push(Ok(TxnResponse { revision: rev, ..resp }));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut meta = wtx.open_table(META).map_err(backend)?;
        meta.insert(META_REV, rev).map_err(backend)?;
    }
    wtx.commit().map_err(backend)?;
    Ok((results, events, rev))
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidRequest("key is not provided".into()));
    }
    Ok(())
}

fn check(hist: &Hist<'_>, c: &Compare, rev: Revision) -> Result<bool> {
    validate_key(&c.key)?;
    let cur = live_at(hist, &c.key, rev)?;
    let ord = |a: i64, b: i64| a.cmp(&b);
    let o = match &c.target {
        CompareTarget::ModRevision(r) => ord(cur.as_ref().map_or(0, |kv| kv.mod_revision), *r),
        CompareTarget::CreateRevision(r) => ord(cur.as_ref().map_or(0, |kv| kv.create_revision), *r),
        CompareTarget::Version(v) => ord(cur.as_ref().map_or(0, |kv| kv.version), *v),
        CompareTarget::Value(v) => cur.as_ref().map_or(Bytes::new(), |kv| kv.value.clone()).as_ref().cmp(v.as_ref()),
    };
    Ok(match c.result {
        CompareResult::Equal => o.is_eq(),
        CompareResult::NotEqual => o.is_ne(),
        CompareResult::Less => o.is_lt(),
        CompareResult::Greater => o.is_gt(),
    })
}

/// Applies one transaction as revision `rev` (used only if it writes). Returns the response, the
/// log entries and the events.
fn apply_txn(hist: &mut Hist<'_>, txn: &Txn, rev: Revision) -> Result<(TxnResponse, Vec<LogEntry>, Vec<Event>)> {
    // Reads inside the transaction see everything committed so far plus earlier ops of this batch.
    let visible = i64::MAX;
    let mut ok = true;
    for c in &txn.compare {
        if !check(hist, c, visible)? {
            ok = false;
            break;
        }
    }
    let ops = if ok { &txn.success } else { &txn.failure };
    let mut responses = Vec::with_capacity(ops.len());
    let mut entries = Vec::new();
    let mut events = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value } => {
                validate_key(key)?;
                let prev = live_at(hist, key, visible)?;
                let (create, version) = match &prev {
                    Some(p) => (p.create_revision, p.version + 1),
                    None => (rev, 1),
                };
                let v = Version { tombstone: false, create_revision: create, version, value: value.clone() };
                hist.insert((key.as_str(), rev as u64), v.encode().as_slice()).map_err(backend)?;
                entries.push(LogEntry { delete: false, key: key.clone(), prev: prev.as_ref().map_or(0, |p| p.mod_revision) });
                events.push(Event { kind: EventKind::Put, kv: v.into_kv(key, rev), prev_kv: None });
                responses.push(OpResponse::Put { prev_kv: prev });
            }
            Op::Delete { key, range_end } => {
                validate_key(key)?;
                let victims: Vec<KeyValue> = match range_end {
                    None => live_at(hist, key, visible)?.into_iter().collect(),
                    Some(end) => {
                        range_at(hist, &RangeRequest { key: key.clone(), range_end: Some(end.clone()), ..Default::default() }, visible)?.kvs
                    }
                };
                for p in &victims {
                    let t = Version { tombstone: true, create_revision: 0, version: 0, value: Bytes::new() };
                    hist.insert((p.key.as_str(), rev as u64), t.encode().as_slice()).map_err(backend)?;
                    entries.push(LogEntry { delete: true, key: p.key.clone(), prev: p.mod_revision });
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue { key: p.key.clone(), value: Bytes::new(), create_revision: 0, mod_revision: rev, version: 0 },
                        prev_kv: Some(p.clone()),
                    });
                }
                responses.push(OpResponse::Delete { deleted: victims.len() as i64, prev_kvs: victims });
            }
            Op::Range(r) => {
                validate_key(&r.key)?;
                let mut resp = range_at(hist, r, visible)?;
                resp.revision = rev - 1;
                responses.push(OpResponse::Range(resp));
            }
        }
    }
    Ok((TxnResponse { succeeded: ok, revision: 0, responses }, entries, events))
}

/// Drops history at or below `rev`: log entries, superseded versions and tombstones.
fn compact(shared: &Shared, rev: Revision) -> Result<()> {
    let current = shared.revision.load(Ordering::SeqCst);
    let done = shared.compacted.load(Ordering::SeqCst);
    if rev > current {
        return Err(StoreError::FutureRevision);
    }
    if rev <= done {
        return Err(StoreError::Compacted { compact_revision: done });
    }
    let wtx = shared.db.begin_write().map_err(backend)?;
    {
        let mut log = wtx.open_table(LOG).map_err(backend)?;
        let mut hist = wtx.open_table(HIST).map_err(backend)?;
        let mut keys = std::collections::BTreeSet::new();
        {
            let iter = log.range((done as u64 + 1)..=(rev as u64)).map_err(backend)?;
            for entry in iter {
                let (_, v) = entry.map_err(backend)?;
                for e in decode_log(v.value())? {
                    keys.insert(e.key);
                }
            }
        }
        log.retain_in((done as u64 + 1)..=(rev as u64), |_, _| false).map_err(backend)?;
        for key in keys {
            // Keep only the newest version at or below `rev`, and not even that if it is a tombstone.
            let newest = version_at(&hist, &key, rev)?;
            let keep = newest.as_ref().filter(|(_, v)| !v.tombstone).map(|(m, _)| *m as u64);
            hist.retain_in((key.as_str(), 0u64)..=(key.as_str(), rev as u64), |(_, m), _| Some(m) == keep).map_err(backend)?;
        }
        let mut meta = wtx.open_table(META).map_err(backend)?;
        meta.insert(META_COMPACT, rev).map_err(backend)?;
    }
    wtx.commit().map_err(backend)?;
    shared.compacted.store(rev, Ordering::SeqCst);
    Ok(())
}

/// Reads the log for revisions in `[from, to]` as events (for watch replay).
pub fn replay<T, L>(hist: &T, log: &L, from: Revision, to: Revision) -> Result<Vec<Event>>
where
    T: ReadableTable<(&'static str, u64), &'static [u8]>,
    L: ReadableTable<u64, &'static [u8]>,
{
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    for entry in log.range(from as u64..=to as u64).map_err(backend)? {
        let (r, v) = entry.map_err(backend)?;
        let rev = r.value() as Revision;
        for e in decode_log(v.value())? {
            if e.delete {
                let prev = version_at(hist, &e.key, e.prev)?.map(|(m, v)| v.into_kv(&e.key, m));
                out.push(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue { key: e.key.clone(), value: Bytes::new(), create_revision: 0, mod_revision: rev, version: 0 },
                    prev_kv: prev,
                });
            } else {
                let kv = version_at(hist, &e.key, rev)?
                    .map(|(m, v)| v.into_kv(&e.key, m))
                    .ok_or_else(|| StoreError::Backend(format!("log names {}@{rev} but history lacks it", e.key)))?;
                out.push(Event { kind: EventKind::Put, kv, prev_kv: None });
            }
        }
    }
    Ok(out)
}
