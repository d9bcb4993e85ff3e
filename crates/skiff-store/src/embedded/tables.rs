//! On-disk layout and the read paths shared by read and write transactions.
//!
//! Every version of every key lives once in `hist`, keyed by (key, mod_revision): current reads take
//! the newest version, reads at a past revision the newest at or below it. `log` records, per
//! revision, which keys changed (and for deletes the revision of the deleted version), so watches
//! replay history without storing values twice. `meta` holds the current and compacted revisions.

use bytes::Bytes;
use redb::{ReadableTable, TableDefinition};

use crate::{KeyValue, RangeRequest, RangeResponse, Result, Revision, StoreError};

pub const HIST: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("hist");
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

pub const META_REV: &str = "rev";
pub const META_COMPACT: &str = "compact";

pub fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A stored version: put (with create_revision, version, value) or tombstone.
pub struct Version {
    pub tombstone: bool,
    pub create_revision: Revision,
    pub version: i64,
    pub value: Bytes,
}

impl Version {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(17 + self.value.len());
        b.push(u8::from(self.tombstone));
        b.extend_from_slice(&self.create_revision.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.value);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Version> {
        if b.len() < 17 {
            return Err(StoreError::Backend("corrupt version record".into()));
        }
        Ok(Version {
            tombstone: b[0] == 1,
            create_revision: i64::from_le_bytes(b[1..9].try_into().expect("8 bytes")),
            version: i64::from_le_bytes(b[9..17].try_into().expect("8 bytes")),
            value: Bytes::copy_from_slice(&b[17..]),
        })
    }

    pub fn into_kv(self, key: &str, mod_revision: Revision) -> KeyValue {
        KeyValue { key: key.to_string(), value: self.value, create_revision: self.create_revision, mod_revision, version: self.version }
    }
}

/// One change recorded in the log: for deletes, `prev` is the mod_revision of the deleted version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub delete: bool,
    pub key: String,
    pub prev: Revision,
}

pub fn encode_log(entries: &[LogEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in entries {
        b.push(u8::from(e.delete));
        b.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
        b.extend_from_slice(e.key.as_bytes());
        b.extend_from_slice(&e.prev.to_le_bytes());
    }
    b
}

pub fn decode_log(mut b: &[u8]) -> Result<Vec<LogEntry>> {
    let corrupt = || StoreError::Backend("corrupt log record".into());
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 5 {
            return Err(corrupt());
        }
        let delete = b[0] == 1;
        let len = u32::from_le_bytes(b[1..5].try_into().expect("4 bytes")) as usize;
        if b.len() < 5 + len + 8 {
            return Err(corrupt());
        }
        let key = std::str::from_utf8(&b[5..5 + len]).map_err(|_| corrupt())?.to_string();
        let prev = i64::from_le_bytes(b[5 + len..13 + len].try_into().expect("8 bytes"));
        out.push(LogEntry { delete, key, prev });
        b = &b[13 + len..];
    }
    Ok(out)
}

/// The newest version of `key` at or below `rev`, with its mod_revision.
pub fn version_at<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    t: &T,
    key: &str,
    rev: Revision,
) -> Result<Option<(Revision, Version)>> {
    let mut it = t.range((key, 0u64)..=(key, rev as u64)).map_err(backend)?;
    match it.next_back() {
        Some(entry) => {
            let (k, v) = entry.map_err(backend)?;
            let mod_rev = k.value().1 as Revision;
            Ok(Some((mod_rev, Version::decode(v.value())?)))
        }
        None => Ok(None),
    }
}

/// The live (non-tombstone) newest version of `key` at or below `rev`.
pub fn live_at<T: ReadableTable<(&'static str, u64), &'static [u8]>>(t: &T, key: &str, rev: Revision) -> Result<Option<KeyValue>> {
    Ok(version_at(t, key, rev)?.filter(|(_, v)| !v.tombstone).map(|(m, v)| v.into_kv(key, m)))
}

/// etcd's Range over `hist` as of revision `rev` (already resolved: never 0 here).
pub fn range_at<T: ReadableTable<(&'static str, u64), &'static [u8]>>(t: &T, req: &RangeRequest, rev: Revision) -> Result<RangeResponse> {
    let mut resp = RangeResponse { revision: rev, ..Default::default() };
    let Some(end) = req.range_end.as_deref() else {
        if let Some(kv) = live_at(t, &req.key, rev)? {
            resp.count = 1;
            if !req.count_only {
                resp.kvs.push(kv);
            }
        }
        return Ok(resp);
    };
    // Walk keys in order; for each key take the newest version at or below `rev`.
    let iter = t.range((req.key.as_str(), 0u64)..(end, 0u64)).map_err(backend)?;
    let mut current: Option<(String, Revision, Version)> = None;
    let flush = |cur: Option<(String, Revision, Version)>, resp: &mut RangeResponse| {
        if let Some((k, m, v)) = cur
            && !v.tombstone
        {
            resp.count += 1;
            if req.count_only {
                return;
            }
            if req.limit > 0 && resp.kvs.len() as i64 >= req.limit {
                resp.more = true;
                return;
            }
            resp.kvs.push(v.into_kv(&k, m));
        }
    };
    for entry in iter {
        let (k, v) = entry.map_err(backend)?;
        let (key, m) = k.value();
        let m = m as Revision;
        if m > rev {
            continue;
        }
        let same = current.as_ref().is_some_and(|(ck, _, _)| ck == key);
        if !same {
            flush(current.take(), &mut resp);
        }
        current = Some((key.to_string(), m, Version::decode(v.value())?));
    }
    flush(current.take(), &mut resp);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_round_trip() {
        let e = vec![LogEntry { delete: false, key: "/a".into(), prev: 0 }, LogEntry { delete: true, key: "/b/c".into(), prev: 7 }];
        assert_eq!(decode_log(&encode_log(&e)).unwrap(), e);
        assert!(decode_log(&[1, 9, 0, 0, 0]).is_err());
    }

    #[test]
    fn version_round_trip() {
        let v = Version { tombstone: false, create_revision: 3, version: 2, value: Bytes::from_static(b"x") };
        let d = Version::decode(&v.encode()).unwrap();
        assert_eq!((d.tombstone, d.create_revision, d.version, &d.value[..]), (false, 3, 2, &b"x"[..]));
    }
}
