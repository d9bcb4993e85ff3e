//! Request validation (done on the caller's task, so the single writer thread only applies) and the
//! key-span rules shared by reads, deletes and watches.

use crate::{Op, RangeRequest, Result, StoreError, Txn};

/// The keys a request names, with etcd's conventions for `range_end`: absent or empty = the single
/// key, "\0" = every key from `key` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span<'a> {
    One(&'a str),
    /// `[start, end)`; `None` = no upper bound.
    Range(&'a str, Option<&'a str>),
}

impl<'a> Span<'a> {
    pub fn new(key: &'a str, range_end: Option<&'a str>) -> Span<'a> {
        match range_end {
            None | Some("") => Span::One(key),
            Some("\0") => Span::Range(key, None),
            Some(end) => Span::Range(key, Some(end)),
        }
    }

    pub fn contains(&self, k: &str) -> bool {
        match *self {
            Span::One(key) => k == key,
            Span::Range(start, end) => k >= start && end.is_none_or(|e| k < e),
        }
    }

    /// True for a range whose end is not above its start: it names no key (and redb must not be
    /// asked for an inverted range).
    pub fn is_empty(&self) -> bool {
        matches!(*self, Span::Range(start, Some(end)) if end <= start)
    }
}

fn invalid(msg: &str) -> StoreError {
    StoreError::InvalidRequest(msg.to_string())
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() { Err(invalid("key is not provided")) } else { Ok(()) }
}

pub fn check_range(r: &RangeRequest) -> Result<()> {
    check_key(&r.key)?;
    if r.limit < 0 {
        return Err(invalid("limit must not be negative"));
    }
    if r.revision < 0 {
        return Err(invalid("revision must not be negative"));
    }
    Ok(())
}

pub fn check_watch(key: &str, start_revision: i64) -> Result<()> {
    check_key(key)?;
    if start_revision < 0 {
        return Err(invalid("start revision must not be negative"));
    }
    Ok(())
}

/// Both branches are checked, whichever will run, as etcd does.
pub fn check_txn(txn: &Txn) -> Result<()> {
    for c in &txn.compare {
        check_key(&c.key)?;
    }
    check_ops(&txn.success)?;
    check_ops(&txn.failure)
}

fn check_ops(ops: &[Op]) -> Result<()> {
    let mut writes = 0;
    for op in ops {
        match op {
            Op::Put { key, .. } => {
                check_key(key)?;
                writes += 1;
            }
            Op::Delete { key, .. } => {
                check_key(key)?;
                writes += 1;
            }
            Op::Range(r) => check_range(r)?,
        }
    }
    if writes > 1 { check_overlap(ops) } else { Ok(()) }
}

/// etcd refuses a transaction that writes one key twice (two puts, or a put inside a deleted
/// range): every key changes at most once per revision, which the history layout relies on.
fn check_overlap(ops: &[Op]) -> Result<()> {
    let mut puts: Vec<&str> = ops.iter().filter_map(|op| if let Op::Put { key, .. } = op { Some(key.as_str()) } else { None }).collect();
    puts.sort_unstable();
    let duplicate = || invalid("duplicate key given in txn request");
    if puts.windows(2).any(|w| w[0] == w[1]) {
        return Err(duplicate());
    }
    for op in ops {
        if let Op::Delete { key, range_end } = op {
            let span = Span::new(key, range_end.as_deref());
            if puts.iter().any(|p| span.contains(p)) {
                return Err(duplicate());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn put(k: &str) -> Op {
        Op::Put { key: k.into(), value: Bytes::new() }
    }

    #[test]
    fn spans_follow_etcd_conventions() {
        assert_eq!(Span::new("a", Some("")), Span::One("a"));
        assert!(Span::new("a", Some("\0")).contains("zzz"));
        assert!(!Span::new("b", Some("\0")).contains("a"));
        assert!(Span::new("b", Some("a")).is_empty());
        assert!(Span::new("a", Some("c")).contains("b") && !Span::new("a", Some("c")).contains("c"));
    }

    #[test]
    fn txns_writing_a_key_twice_are_refused() {
        let txn = |ops: Vec<Op>| Txn { success: ops, ..Default::default() };
        assert!(check_txn(&txn(vec![put("/a"), put("/b")])).is_ok());
        assert!(check_txn(&txn(vec![put("/a"), put("/a")])).is_err());
        assert!(check_txn(&txn(vec![put("/a/1"), Op::Delete { key: "/a/".into(), range_end: Some("/a0".into()) }])).is_err());
        assert!(check_txn(&txn(vec![put(""), put("/b")])).is_err());
        let failure = Txn { failure: vec![Op::Range(RangeRequest { limit: -1, ..RangeRequest::key("/a") })], ..Default::default() };
        assert!(check_txn(&failure).is_err());
    }
}
