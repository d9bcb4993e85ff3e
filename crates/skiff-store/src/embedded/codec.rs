//! Table definitions and the byte layout of their records.
//!
//! The layout is etcd's: every change is a record keyed by (revision, sub) — `sub` numbers the
//! changes within one revision, in op order — so writes append at the right edge of one B-tree and
//! a commit dirties few, adjacent pages. (Keying by user key instead made every transaction
//! rewrite a random leaf, and random page writes before an fsync cost ~0.1 ms each on this class
//! of disk: that capped group commit near 6k txn/s.) Which record is a key's current one lives in
//! the in-memory index (`index.rs`), rebuilt from this table on open.
//!
//! * `revs`: (revision, sub) → `[kind: u8 (0 put, 1 delete)][create_revision: i64][version: i64]
//!   [prev revision: i64][prev sub: u32][key length: u32][key][value]`. `prev` names the record
//!   this change superseded ((0, 0) when a put created the key), which gives delete events their
//!   `prev_kv` and tells compaction what to delete. The table doubles as the change log that
//!   watches replay.
//! * `meta`: current revision, compact revision (logical: reads below it fail), physically
//!   compacted revision (garbage at or below it is deleted), schema version.
//!
//! Integers are little-endian; the decoder checks lengths, so a corrupt record is an error, not a
//! panic.

use bytes::Bytes;
use redb::TableDefinition;

use crate::{KeyValue, Result, Revision, StoreError};

pub const REVS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("revs");
pub const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

pub const META_REV: &str = "rev";
pub const META_COMPACT: &str = "compact";
pub const META_PHYSICAL: &str = "physical";
pub const META_SCHEMA: &str = "schema";
pub const SCHEMA: i64 = 2;

/// A record's key in `revs`.
pub type Id = (u64, u32);

pub fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

const HEADER: usize = 1 + 8 + 8 + 8 + 4 + 4;

/// A `revs` record, borrowed from the page it was read from.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub tombstone: bool,
    pub create_revision: Revision,
    pub version: i64,
    pub prev: Option<Id>,
    pub key: &'a str,
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(u8::from(self.tombstone));
        buf.extend_from_slice(&self.create_revision.to_le_bytes());
        buf.extend_from_slice(&self.version.to_le_bytes());
        let (prev_rev, prev_sub) = self.prev.unwrap_or((0, 0));
        buf.extend_from_slice(&prev_rev.to_le_bytes());
        buf.extend_from_slice(&prev_sub.to_le_bytes());
        buf.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        buf.extend_from_slice(self.key.as_bytes());
        buf.extend_from_slice(self.value);
    }

    pub fn decode(b: &'a [u8]) -> Result<Record<'a>> {
        let parsed = (|| {
            let i64_at = |at: usize| Some(i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
            let u32_at = |at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
            let prev_rev = i64_at(17)? as u64;
            let prev_sub = u32_at(25)?;
            let key_len = u32_at(29)? as usize;
            let key = std::str::from_utf8(b.get(HEADER..HEADER + key_len)?).ok()?;
            Some(Record {
                tombstone: *b.first()? == 1,
                create_revision: i64_at(1)?,
                version: i64_at(9)?,
                prev: (prev_rev > 0).then_some((prev_rev, prev_sub)),
                key,
                value: &b[HEADER + key_len..],
            })
        })();
        parsed.ok_or_else(|| StoreError::Backend("corrupt revision record".into()))
    }

    /// The key-value this record is at `rev` (for a tombstone: etcd's delete-event shape).
    pub fn to_kv(&self, rev: Revision) -> KeyValue {
        if self.tombstone {
            return KeyValue { key: self.key.to_string(), value: Bytes::new(), create_revision: 0, mod_revision: rev, version: 0 };
        }
        KeyValue {
            key: self.key.to_string(),
            value: Bytes::copy_from_slice(self.value),
            create_revision: self.create_revision,
            mod_revision: rev,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record { tombstone: false, create_revision: 3, version: 2, prev: Some((3, 1)), key: "/k/ü", value: b"v" };
        let mut buf = Vec::new();
        r.encode_into(&mut buf);
        assert_eq!(Record::decode(&buf).unwrap(), r);
        assert_eq!(
            r.to_kv(5),
            KeyValue { key: "/k/ü".into(), value: Bytes::from_static(b"v"), create_revision: 3, mod_revision: 5, version: 2 }
        );
        let t = Record { tombstone: true, create_revision: 0, version: 0, prev: None, key: "/k", value: b"" };
        t.encode_into(&mut buf);
        assert_eq!(Record::decode(&buf).unwrap(), t);
        assert!(Record::decode(&buf[..buf.len() - 1]).is_err());
        assert!(Record::decode(&[1, 2, 3]).is_err());
    }
}
