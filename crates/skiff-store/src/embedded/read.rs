//! Range reads: the index picks the versions, `revs` supplies their records. Shared by read
//! transactions and by `Op::Range` inside the writer's transaction.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

use redb::{ReadTransaction, ReadableTable};

use super::codec::{Id, META, META_REV, REVS, Record, backend};
use super::index::Index;
use super::request::Span;
use crate::{KeyValue, RangeRequest, RangeResponse, Result, Revision, StoreError};

pub trait RevTable: ReadableTable<(u64, u32), &'static [u8]> {}
impl<T: ReadableTable<(u64, u32), &'static [u8]>> RevTable for T {}

/// The record stored as `id`, as the key-value it is at its revision.
pub fn fetch(revs: &impl RevTable, id: Id) -> Result<KeyValue> {
    let guard = revs.get(id).map_err(backend)?.ok_or_else(|| StoreError::Backend(format!("revision record {id:?} is missing")))?;
    Ok(Record::decode(guard.value())?.to_kv(id.0 as Revision))
}

/// The versions a range read returns, chosen under the index lock; records are fetched after it
/// is released, so a long list never holds up the writer.
pub struct Picked {
    ids: Vec<Id>,
    count: i64,
    more: bool,
}

/// etcd's count/limit/count_only rules over the versions visible at `at`.
pub fn pick(index: &Index, req: &RangeRequest, at: Revision) -> Picked {
    let mut p = Picked { ids: Vec::new(), count: 0, more: false };
    for (_, v) in index.range(Span::new(&req.key, req.range_end.as_deref()), at) {
        p.count += 1;
        if req.count_only {
            continue;
        }
        if req.limit > 0 && p.ids.len() as i64 >= req.limit {
            p.more = true;
            continue;
        }
        p.ids.push(v.id());
    }
    p
}

/// `resp.revision` is `current`, as etcd's header revision.
pub fn materialize(p: Picked, revs: &impl RevTable, current: Revision) -> Result<RangeResponse> {
    let kvs = p.ids.into_iter().map(|id| fetch(revs, id)).collect::<Result<_>>()?;
    Ok(RangeResponse { kvs, more: p.more, count: p.count, revision: current })
}

/// A read against a committed snapshot. `compacted` is the live compact revision: the snapshot's
/// may be older than index entries compaction has already removed.
pub fn snapshot_range(index: &RwLock<Index>, compacted: &AtomicI64, rtx: &ReadTransaction, req: &RangeRequest) -> Result<RangeResponse> {
    let current = meta_get(&rtx.open_table(META).map_err(backend)?, META_REV)?;
    let at = if req.revision == 0 { current } else { req.revision };
    if at > current {
        return Err(StoreError::FutureRevision);
    }
    let picked = {
        // The writer raises `compacted` before removing index versions, under the write lock: a
        // check made under the read lock is valid for the lookup that follows.
        let index = index.read().unwrap_or_else(PoisonError::into_inner);
        let compacted = compacted.load(Ordering::SeqCst);
        if at < compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        pick(&index, req, at)
    };
    materialize(picked, &rtx.open_table(REVS).map_err(backend)?, current)
}

pub fn meta_get(meta: &impl ReadableTable<&'static str, i64>, key: &str) -> Result<i64> {
    Ok(meta.get(key).map_err(backend)?.map(|v| v.value()).unwrap_or(0))
}
