//! skiff-store: the datastore behind the API server.
//!
//! The [`Store`] trait is deliberately one-to-one with etcd's v3 KV/Watch API (range at a revision,
//! transactions with compares, watch from a revision, compaction) so that an etcd backend can slot in
//! behind the same trait and the same conformance suite ([`conformance`]). Revisions are the single
//! clock: every successful write transaction gets exactly one new revision, and the API server uses
//! that revision verbatim as `metadata.resourceVersion`.
//!
//! Start with [`embedded::EmbeddedStore`], the default backend (redb, fsync before acknowledging,
//! group commit); [`etcd::EtcdStore`] runs the same trait on a real etcd cluster.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub mod conformance;
pub mod embedded;
pub mod etcd;

/// A store revision. 0 means "none" (a key that does not exist has mod_revision 0).
pub type Revision = i64;

/// One key at one revision, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the put that created the current incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the last put (or, in a delete event, of the delete).
    pub mod_revision: Revision,
    /// Number of puts since the key was (re)created: 1 after create.
    pub version: i64,
}

/// A range read. `range_end` follows etcd: `None` reads the single `key`; `Some(end)` reads
/// `[key, end)`. Use [`RangeRequest::prefix`] for a prefix scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: String,
    pub range_end: Option<String>,
    /// Read as of this revision; 0 = the current revision.
    pub revision: Revision,
    /// At most this many keys; 0 = no limit. `more` in the response says whether keys were left out.
    pub limit: i64,
    /// Return only the count of matching keys.
    pub count_only: bool,
}

impl RangeRequest {
    pub fn key(key: impl Into<String>) -> Self {
        RangeRequest { key: key.into(), ..Default::default() }
    }

    pub fn prefix(prefix: impl Into<String>) -> Self {
        let key = prefix.into();
        let end = prefix_end(&key);
        RangeRequest { key, range_end: Some(end), ..Default::default() }
    }

    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    pub fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
}

/// The smallest key greater than every key that starts with `prefix` (etcd's `clientv3.GetPrefixRangeEnd`).
/// Keys here are UTF-8 strings; the range end is computed on bytes and mapped back losslessly for ASCII
/// prefixes, which is what `/registry/...` keys are.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).expect("ascii increment keeps utf-8");
        }
    }
    // Every byte was 0x7f or above: no finite end within ASCII; use a sentinel above all keys.
    "\u{10FFFF}".to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// True when `limit` cut the result.
    pub more: bool,
    /// Number of keys in the range (ignoring `limit`).
    pub count: i64,
    /// The revision the read was served at (the store's current revision for revision=0 reads).
    pub revision: Revision,
}

/// Which field of a key a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    ModRevision(Revision),
    CreateRevision(Revision),
    Version(i64),
    Value(Bytes),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// A guard in a [`Txn`]. For a missing key every revision/version reads as 0, exactly as in etcd, so
/// "create if absent" is `ModRevision(0) == `. As in etcd, a `Value` compare on a missing key is
/// false whatever the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    pub result: CompareResult,
}

impl Compare {
    pub fn mod_revision(key: impl Into<String>, result: CompareResult, rev: Revision) -> Self {
        Compare { key: key.into(), target: CompareTarget::ModRevision(rev), result }
    }
    /// Shorthand for "the key does not exist".
    pub fn absent(key: impl Into<String>) -> Self {
        Self::mod_revision(key, CompareResult::Equal, 0)
    }
    /// Shorthand for "the key exists and was last written at `rev`".
    pub fn unchanged(key: impl Into<String>, rev: Revision) -> Self {
        Self::mod_revision(key, CompareResult::Equal, rev)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Bytes,
    },
    /// Delete one key (`range_end: None`) or `[key, range_end)`.
    Delete {
        key: String,
        range_end: Option<String>,
    },
    Range(RangeRequest),
}

/// etcd's `TxnRequest`: if every compare holds, run `success`, else `failure`. A transaction that
/// changes anything gets exactly one new revision; one that changes nothing gets none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    Put { prev_kv: Option<KeyValue> },
    Delete { deleted: i64, prev_kvs: Vec<KeyValue> },
    Range(RangeResponse),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store's revision after the transaction (the new revision if it wrote anything).
    pub revision: Revision,
    pub responses: Vec<OpResponse>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watcher. For `Delete`, `kv.mod_revision` is the delete's revision, `kv.value`
/// is empty, and `prev_kv` holds the key's last value before the delete (always set for deletes).
/// For `Put`, `prev_kv` is the version it replaced, or None if the put created the key (etcd's
/// `WithPrevKV`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The requested revision has been compacted away (etcd's `ErrCompacted`).
    #[error("mvcc: required revision has been compacted (compact revision {compact_revision})")]
    Compacted { compact_revision: Revision },
    /// The requested revision is newer than the store's current revision (etcd's `ErrFutureRev`).
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("store is closed")]
    Closed,
    #[error("store backend error: {0}")]
    Backend(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch events in revision order. It ends after yielding an `Err` (e.g. `Compacted`
/// when the start revision is gone, or `Closed` at shutdown).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// etcd v3 semantics, one-to-one, so that backends are interchangeable.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Returns only after the transaction is durable (fsync or quorum).
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Watch `[key, range_end)` (or the single key) starting at `start_revision` inclusive;
    /// 0 = only changes after the current revision. A start at or below the compact revision is
    /// refused here with `Compacted`; a stream that later falls behind a compaction yields
    /// `Err(Compacted)` and ends. (etcd itself still serves a start equal to the compact revision;
    /// the conformance suite does not rely on that boundary.)
    async fn watch(&self, key: String, range_end: Option<String>, start_revision: Revision) -> Result<WatchStream>;

    async fn current_revision(&self) -> Result<Revision>;

    /// Forget history at or below `revision` (current values stay readable).
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The revision of the last compaction (0 if never).
    async fn compact_revision(&self) -> Result<Revision>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), "/registry/pods0");
        assert_eq!(prefix_end("a"), "b");
    }
}
