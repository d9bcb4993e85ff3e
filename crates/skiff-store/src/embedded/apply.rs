//! Applying transactions inside the writer's redb write transaction.
//!
//! Every op of a transaction that writes shares one revision; each change gets the next `sub`.
//! Reads and compares see the transactions applied earlier in the batch: the index holds their
//! versions (at revisions no reader is allowed to see yet) and the write transaction their records.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};

use super::codec::{Id, REVS, Record, backend};
use super::index::{Index, LATEST, Version};
use super::read::{fetch, materialize, pick};
use super::request::Span;
use crate::{
    Compare, CompareResult, CompareTarget, Event, EventKind, KeyValue, Op, OpResponse, Result, Revision, StoreError, Txn, TxnResponse,
};

pub struct Tables<'t> {
    pub revs: Table<'t, (u64, u32), &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub fn open(wtx: &'t WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables { revs: wtx.open_table(REVS).map_err(backend)? })
    }
}

/// A scratch buffer reused across transactions, so encoding records allocates nothing.
#[derive(Default)]
pub struct Scratch {
    record: Vec<u8>,
}

/// What applying one transaction needs to know about the store.
pub struct Context<'a> {
    pub index: &'a RwLock<Index>,
    /// The revision before this transaction.
    pub base: Revision,
    pub compacted: Revision,
    /// Whether anyone may watch: events are only materialized for watchers.
    pub with_events: bool,
}

impl Context<'_> {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where one transaction's changes go.
struct Change<'a> {
    rev: Revision,
    next_sub: u32,
    events: Option<&'a mut Vec<Event>>,
}

impl Change<'_> {
    fn id(&mut self) -> Id {
        let id = (self.rev as u64, self.next_sub);
        self.next_sub += 1;
        id
    }
}

/// Applies `txn`. The outer error is a backend failure (the whole batch is abandoned and the index
/// rolled back); the inner one refuses this transaction alone, before it wrote anything.
pub fn apply_txn(t: &mut Tables<'_>, s: &mut Scratch, txn: &Txn, cx: &Context<'_>, events: &mut Vec<Event>) -> Result<Result<TxnResponse>> {
    let mut succeeded = true;
    for c in &txn.compare {
        if !compare(t, cx, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    for op in ops {
        if let Op::Range(r) = op {
            if r.revision > cx.base {
                return Ok(Err(StoreError::FutureRevision));
            }
            if r.revision > 0 && r.revision < cx.compacted {
                return Ok(Err(StoreError::Compacted { compact_revision: cx.compacted }));
            }
        }
    }
    let mut change = Change { rev: cx.base + 1, next_sub: 0, events: cx.with_events.then_some(events) };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op {
            Op::Put { key, value } => put(t, s, cx, &mut change, key, value)?,
            Op::Delete { key, range_end } => delete(t, s, cx, &mut change, Span::new(key, range_end.as_deref()))?,
            Op::Range(r) => {
                let current = if change.next_sub > 0 { change.rev } else { cx.base };
                let at = if r.revision == 0 { LATEST } else { r.revision };
                let picked = pick(&cx.read(), r, at);
                OpResponse::Range(materialize(picked, &t.revs, current)?)
            }
        };
        responses.push(response);
    }
    let revision = if change.next_sub > 0 { change.rev } else { cx.base };
    Ok(Ok(TxnResponse { succeeded, revision, responses }))
}

fn compare(t: &Tables<'_>, cx: &Context<'_>, c: &Compare) -> Result<bool> {
    let current = cx.read().get(&c.key, LATEST);
    let field = |f: fn(&Version) -> i64| current.as_ref().map_or(0, f);
    let ord = match (&c.target, &current) {
        // etcd: a value compare on a missing key fails whatever the operator (nil and "" are
        // indistinguishable on the wire, so it refuses to guess).
        (CompareTarget::Value(_), None) => return Ok(false),
        (CompareTarget::Value(want), Some(v)) => {
            let guard = t.revs.get(v.id()).map_err(backend)?.ok_or_else(|| StoreError::Backend("current record missing".into()))?;
            Record::decode(guard.value())?.value.cmp(want.as_ref())
        }
        (CompareTarget::ModRevision(r), _) => field(|v| v.rev).cmp(r),
        (CompareTarget::CreateRevision(r), _) => field(|v| v.create_revision).cmp(r),
        (CompareTarget::Version(n), _) => field(|v| v.version).cmp(n),
    };
    Ok(match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Less => ord.is_lt(),
        CompareResult::Greater => ord.is_gt(),
    })
}

fn put(t: &mut Tables<'_>, s: &mut Scratch, cx: &Context<'_>, change: &mut Change<'_>, key: &str, value: &Bytes) -> Result<OpResponse> {
    let id = change.id();
    let (current, new) = cx.write().put(key, id);
    let prev_kv = current.map(|v| fetch(&t.revs, v.id())).transpose()?;
    let (create_revision, version) = (new.create_revision, new.version);
    Record { tombstone: false, create_revision, version, prev: current.map(|v| v.id()), key, value }.encode_into(&mut s.record);
    t.revs.insert(id, s.record.as_slice()).map_err(backend)?;
    if let Some(events) = change.events.as_deref_mut() {
        let kv = KeyValue { key: key.to_string(), value: value.clone(), create_revision, mod_revision: change.rev, version };
        events.push(Event { kind: EventKind::Put, kv, prev_kv: prev_kv.clone() });
    }
    Ok(OpResponse::Put { prev_kv })
}

fn delete(t: &mut Tables<'_>, s: &mut Scratch, cx: &Context<'_>, change: &mut Change<'_>, span: Span<'_>) -> Result<OpResponse> {
    let victims: Vec<Version> = cx.read().range(span, LATEST).map(|(_, v)| v).collect();
    let mut prev_kvs = Vec::with_capacity(victims.len());
    for v in victims {
        let prev = fetch(&t.revs, v.id())?;
        let id = change.id();
        Record { tombstone: true, create_revision: 0, version: 0, prev: Some(v.id()), key: &prev.key, value: &[] }
            .encode_into(&mut s.record);
        t.revs.insert(id, s.record.as_slice()).map_err(backend)?;
        cx.write().push(&prev.key, Version { rev: change.rev, sub: id.1, create_revision: 0, version: 0, tombstone: true });
        if let Some(events) = change.events.as_deref_mut() {
            let kv = KeyValue { key: prev.key.clone(), value: Bytes::new(), create_revision: 0, mod_revision: change.rev, version: 0 };
            events.push(Event { kind: EventKind::Delete, kv, prev_kv: Some(prev.clone()) });
        }
        prev_kvs.push(prev);
    }
    Ok(OpResponse::Delete { deleted: prev_kvs.len() as i64, prev_kvs })
}
