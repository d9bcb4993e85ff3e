//! A backend-agnostic conformance suite for [`Store`]: the etcd v3 semantics the API server relies
//! on, checked through the trait alone, so every backend (embedded, etcd) runs the same checks.
//!
//! It is always compiled (it is small and has no extra dependencies), so other crates' tests can
//! use it too. Call [`run_all`] with a factory that returns a fresh, empty store for each check:
//!
//! ```ignore
//! skiff_store::conformance::run_all(|| async { make_store().await }).await;
//! ```
//!
//! Checks never assume absolute revision numbers (etcd starts at 1, the embedded store at 0), only
//! how they move. The individual checks are public, to run one alone while debugging. Failures
//! panic, as tests do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::*;

fn put(key: &str, v: &str) -> Op {
    Op::Put { key: key.into(), value: Bytes::from(v.to_string()) }
}

fn del(key: &str) -> Op {
    Op::Delete { key: key.into(), range_end: None }
}

fn ops(ops: Vec<Op>) -> Txn {
    Txn { success: ops, ..Default::default() }
}

async fn create<S: Store + ?Sized>(s: &S, key: &str, v: &str) -> TxnResponse {
    s.txn(Txn { compare: vec![Compare::absent(key)], success: vec![put(key, v)], failure: vec![] }).await.unwrap()
}

async fn write<S: Store + ?Sized>(s: &S, ops_: Vec<Op>) -> Revision {
    s.txn(ops(ops_)).await.unwrap().revision
}

async fn get<S: Store + ?Sized>(s: &S, key: &str) -> Option<KeyValue> {
    s.range(RangeRequest::key(key)).await.unwrap().kvs.pop()
}

fn keys(r: &RangeResponse) -> Vec<&str> {
    r.kvs.iter().map(|kv| kv.key.as_str()).collect()
}

async fn next_event(w: &mut WatchStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("watch event in time").expect("stream open").expect("no error")
}

/// Asserts that no event arrives for a short while.
async fn quiet(w: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), w.next()).await {
        panic!("unexpected watch item {item:?}");
    }
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: Store + ?Sized,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    create_if_absent(&*make().await).await;
    update_if_unchanged(&*make().await).await;
    delete_if_unchanged(&*make().await).await;
    compare_targets(&*make().await).await;
    one_revision_per_txn(&*make().await).await;
    invalid_requests(&*make().await).await;
    ranges(&*make().await).await;
    delete_ranges(&*make().await).await;
    past_revisions(&*make().await).await;
    compaction(&*make().await).await;
    future_revisions(&*make().await).await;
    watch_replays_then_streams(&*make().await).await;
    watch_filters_keys(&*make().await).await;
    watch_orders_concurrent_writers(make().await).await;
    failure_branch_reads(&*make().await).await;
}

pub async fn create_if_absent<S: Store + ?Sized>(s: &S) {
    let r = create(s, "/a", "1").await;
    assert!(r.succeeded);
    let rev1 = r.revision;
    assert!(rev1 > 0);
    let again = create(s, "/a", "2").await;
    assert!(!again.succeeded, "second create must fail");
    assert_eq!(again.revision, rev1, "a failed txn spends no revision");
    let kv = get(s, "/a").await.unwrap();
    assert_eq!(kv.value, Bytes::from("1"));
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (rev1, rev1, 1));
    assert_eq!(s.current_revision().await.unwrap(), rev1);
}

pub async fn update_if_unchanged<S: Store + ?Sized>(s: &S) {
    let rev1 = create(s, "/k", "1").await.revision;
    let update = |rev, v| Txn { compare: vec![Compare::unchanged("/k", rev)], success: vec![put("/k", v)], failure: vec![] };
    let ok = s.txn(update(rev1, "2")).await.unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.revision, rev1 + 1);
    match &ok.responses[0] {
        OpResponse::Put { prev_kv: Some(prev) } => assert_eq!((prev.value.clone(), prev.mod_revision), (Bytes::from("1"), rev1)),
        other => panic!("a put over a key returns its previous version, got {other:?}"),
    }
    let stale = s.txn(update(rev1, "3")).await.unwrap();
    assert!(!stale.succeeded, "update on a stale revision must fail");
    assert_eq!(stale.revision, rev1 + 1);
    let kv = get(s, "/k").await.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.value), (rev1, rev1 + 1, 2, Bytes::from("2")));
}

pub async fn delete_if_unchanged<S: Store + ?Sized>(s: &S) {
    let rev1 = create(s, "/d", "1").await.revision;
    let delete = |rev| Txn { compare: vec![Compare::unchanged("/d", rev)], success: vec![del("/d")], failure: vec![] };
    assert!(!s.txn(delete(rev1 + 100)).await.unwrap().succeeded);
    let r = s.txn(delete(rev1)).await.unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, rev1 + 1);
    match &r.responses[0] {
        OpResponse::Delete { deleted, prev_kvs } => {
            assert_eq!(*deleted, 1);
            assert_eq!((prev_kvs[0].value.clone(), prev_kvs[0].mod_revision), (Bytes::from("1"), rev1));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(get(s, "/d").await.is_none());
    // Re-creating resets create_revision and version.
    let rev3 = create(s, "/d", "again").await.revision;
    let kv = get(s, "/d").await.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (rev3, rev3, 1));
    // Deleting nothing changes nothing.
    let r = s.txn(ops(vec![del("/nothing")])).await.unwrap();
    assert_eq!(r.revision, rev3);
    assert_eq!(r.responses[0], OpResponse::Delete { deleted: 0, prev_kvs: vec![] });
    assert_eq!(s.current_revision().await.unwrap(), rev3);
}

pub async fn compare_targets<S: Store + ?Sized>(s: &S) {
    let rev1 = create(s, "/c", "b").await.revision;
    let rev2 = write(s, vec![put("/c", "b")]).await;
    let holds = |target: CompareTarget, result: CompareResult| async move {
        let txn = Txn { compare: vec![Compare { key: "/c".into(), target, result }], ..Default::default() };
        s.txn(txn).await.unwrap().succeeded
    };
    use CompareResult::*;
    use CompareTarget::*;
    assert!(holds(Version(2), Equal).await);
    assert!(holds(Version(1), Greater).await);
    assert!(holds(Version(3), Less).await);
    assert!(!holds(Version(2), NotEqual).await);
    assert!(holds(CreateRevision(rev1), Equal).await);
    assert!(holds(ModRevision(rev2), Equal).await);
    assert!(holds(ModRevision(rev1), Greater).await);
    assert!(holds(Value(Bytes::from("b")), Equal).await);
    assert!(holds(Value(Bytes::from("a")), Greater).await);
    assert!(holds(Value(Bytes::from("c")), Less).await);
    assert!(holds(Value(Bytes::from("c")), NotEqual).await);
    // A missing key reads as revision/version 0, but any value compare on it fails (etcd).
    let missing = |target: CompareTarget, result: CompareResult| async move {
        let txn = Txn { compare: vec![Compare { key: "/missing".into(), target, result }], ..Default::default() };
        s.txn(txn).await.unwrap().succeeded
    };
    assert!(missing(Version(0), Equal).await);
    assert!(missing(CreateRevision(0), Equal).await);
    assert!(missing(ModRevision(1), Less).await);
    assert!(!missing(Value(Bytes::new()), Equal).await);
    assert!(!missing(Value(Bytes::from("x")), NotEqual).await);
    // Every compare must hold.
    let both = Txn { compare: vec![Compare::unchanged("/c", rev2), Compare::absent("/c")], ..Default::default() };
    assert!(!s.txn(both).await.unwrap().succeeded);
    assert_eq!(s.current_revision().await.unwrap(), rev2, "compares alone write nothing");
}

pub async fn one_revision_per_txn<S: Store + ?Sized>(s: &S) {
    let rev0 = write(s, vec![put("/m/c", "0")]).await;
    let mut w = s.watch("/m/".into(), Some(prefix_end("/m/")), rev0 + 1).await.unwrap();
    let r = s.txn(ops(vec![put("/m/b", "1"), put("/m/a", "1"), del("/m/c"), Op::Range(RangeRequest::prefix("/m/"))])).await.unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, rev0 + 1, "one txn, one revision");
    match &r.responses[3] {
        OpResponse::Range(rr) => assert_eq!(keys(rr), ["/m/a", "/m/b"], "reads in a txn see its earlier writes"),
        other => panic!("unexpected {other:?}"),
    }
    for kv in s.range(RangeRequest::prefix("/m/")).await.unwrap().kvs {
        assert_eq!((kv.mod_revision, kv.create_revision, kv.version), (rev0 + 1, rev0 + 1, 1));
    }
    // Events of one revision come in op order.
    let evs = [next_event(&mut w).await, next_event(&mut w).await, next_event(&mut w).await];
    let seen: Vec<_> = evs.iter().map(|e| (e.kind, e.kv.key.as_str(), e.kv.mod_revision)).collect();
    assert_eq!(seen, [(EventKind::Put, "/m/b", rev0 + 1), (EventKind::Put, "/m/a", rev0 + 1), (EventKind::Delete, "/m/c", rev0 + 1)]);
}

pub async fn invalid_requests<S: Store + ?Sized>(s: &S) {
    let invalid = |r: Result<TxnResponse>| matches!(r, Err(StoreError::InvalidRequest(_)));
    assert!(invalid(s.txn(ops(vec![put("", "x")])).await));
    assert!(invalid(s.txn(ops(vec![put("/x", "1"), put("/x", "2")])).await), "a txn writes a key at most once");
    assert!(invalid(s.txn(ops(vec![put("/x/1", "1"), Op::Delete { key: "/x/".into(), range_end: Some(prefix_end("/x/")) }])).await));
    assert!(matches!(s.range(RangeRequest::key("")).await, Err(StoreError::InvalidRequest(_))));
    assert!(matches!(s.watch(String::new(), None, 0).await, Err(StoreError::InvalidRequest(_))));
    assert_eq!(s.range(RangeRequest::prefix("/x")).await.unwrap().count, 0, "refused txns write nothing");
}

pub async fn ranges<S: Store + ?Sized>(s: &S) {
    for k in ["/p/a", "/p/b", "/p/c", "/q/a"] {
        create(s, k, k).await;
    }
    let current = s.current_revision().await.unwrap();
    let all = s.range(RangeRequest::prefix("/p/")).await.unwrap();
    assert_eq!(keys(&all), ["/p/a", "/p/b", "/p/c"]);
    assert_eq!((all.count, all.more, all.revision), (3, false, current));
    assert_eq!(all.kvs[1].value, Bytes::from("/p/b"));
    let page = s.range(RangeRequest::prefix("/p/").with_limit(2)).await.unwrap();
    assert_eq!((keys(&page), page.more, page.count), (vec!["/p/a", "/p/b"], true, 3));
    let exact = s.range(RangeRequest::prefix("/p/").with_limit(3)).await.unwrap();
    assert_eq!((exact.kvs.len(), exact.more), (3, false));
    let counted = s.range(RangeRequest { count_only: true, ..RangeRequest::prefix("/p/") }).await.unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (3, 0));
    // The next page starts just after the last key returned (what the API server's continue does).
    let rest = s.range(RangeRequest { key: "/p/b\0".into(), range_end: Some(prefix_end("/p/")), ..Default::default() }).await.unwrap();
    assert_eq!(keys(&rest), ["/p/c"]);
    let from_key = s.range(RangeRequest { key: "/p/c".into(), range_end: Some("\0".into()), ..Default::default() }).await.unwrap();
    assert_eq!(keys(&from_key), ["/p/c", "/q/a"], "range_end \\0 reads every key from `key` on");
    let inverted = s.range(RangeRequest { key: "/q".into(), range_end: Some("/p".into()), ..Default::default() }).await.unwrap();
    assert_eq!(inverted.count, 0);
    assert_eq!(s.range(RangeRequest::key("/p/")).await.unwrap().count, 0, "a single-key read is exact");
}

pub async fn delete_ranges<S: Store + ?Sized>(s: &S) {
    for k in ["/r/a", "/r/b", "/rr"] {
        create(s, k, "v").await;
    }
    let mut w = s.watch("/r".into(), Some(prefix_end("/r")), 0).await.unwrap();
    let r = s.txn(ops(vec![Op::Delete { key: "/r/".into(), range_end: Some(prefix_end("/r/")) }])).await.unwrap();
    match &r.responses[0] {
        OpResponse::Delete { deleted, prev_kvs } => {
            assert_eq!(*deleted, 2);
            assert_eq!(prev_kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/r/a", "/r/b"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    for key in ["/r/a", "/r/b"] {
        let ev = next_event(&mut w).await;
        assert_eq!((ev.kind, ev.kv.key.as_str(), ev.kv.mod_revision), (EventKind::Delete, key, r.revision));
        assert_eq!(ev.prev_kv.expect("delete events carry prev_kv").value, Bytes::from("v"));
    }
    assert_eq!(keys(&s.range(RangeRequest::prefix("/r")).await.unwrap()), ["/rr"]);
}

pub async fn past_revisions<S: Store + ?Sized>(s: &S) {
    let r1 = write(s, vec![put("/h/a", "a1"), put("/h/b", "b1")]).await;
    let r2 = write(s, vec![put("/h/a", "a2"), del("/h/b")]).await;
    let r3 = write(s, vec![put("/h/b", "b3"), put("/h/c", "c3")]).await;
    let r4 = write(s, vec![Op::Delete { key: "/h/".into(), range_end: Some(prefix_end("/h/")) }]).await;
    let at = |rev| s.range(RangeRequest::prefix("/h/").at_revision(rev));
    let values = |r: RangeResponse| r.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision, kv.version)).collect::<Vec<_>>();
    let kv = |k: &str, v: &'static str, m, ver| (k.to_string(), Bytes::from(v), m, ver);
    assert_eq!(values(at(r1).await.unwrap()), [kv("/h/a", "a1", r1, 1), kv("/h/b", "b1", r1, 1)]);
    assert_eq!(values(at(r2).await.unwrap()), [kv("/h/a", "a2", r2, 2)]);
    assert_eq!(values(at(r3).await.unwrap()), [kv("/h/a", "a2", r2, 2), kv("/h/b", "b3", r3, 1), kv("/h/c", "c3", r3, 1)]);
    assert!(at(r4).await.unwrap().kvs.is_empty());
    let past = at(r3).await.unwrap();
    assert_eq!((past.count, past.revision), (3, r4), "the header revision is the store's current revision");
    let limited = s.range(RangeRequest::prefix("/h/").at_revision(r3).with_limit(1)).await.unwrap();
    assert_eq!((keys(&limited), limited.more, limited.count), (vec!["/h/a"], true, 3));
    let single = s.range(RangeRequest::key("/h/b").at_revision(r1)).await.unwrap();
    assert_eq!(single.kvs[0].value, Bytes::from("b1"));
    assert!(s.range(RangeRequest::key("/h/b").at_revision(r2)).await.unwrap().kvs.is_empty());
}

pub async fn compaction<S: Store + ?Sized>(s: &S) {
    let r1 = create(s, "/h", "v1").await.revision;
    let r2 = write(s, vec![put("/h", "v2")]).await;
    let r3 = write(s, vec![del("/h")]).await;
    let r4 = write(s, vec![put("/other", "x")]).await;
    let at = |rev| s.range(RangeRequest::key("/h").at_revision(rev));
    assert_eq!(at(r1).await.unwrap().kvs[0].value, Bytes::from("v1"));
    s.compact(r2).await.unwrap();
    assert_eq!(s.compact_revision().await.unwrap(), r2);
    assert!(matches!(at(r1).await, Err(StoreError::Compacted { .. })));
    assert_eq!(at(r2).await.unwrap().kvs[0].value, Bytes::from("v2"), "the compacted revision itself stays readable");
    assert!(at(r3).await.unwrap().kvs.is_empty());
    assert_eq!(get(s, "/other").await.unwrap().mod_revision, r4);
    assert!(matches!(s.compact(r1).await, Err(StoreError::Compacted { .. })));
    assert!(matches!(s.compact(r2).await, Err(StoreError::Compacted { .. })));
    assert!(matches!(s.compact(r4 + 10).await, Err(StoreError::FutureRevision)));
    // watch() itself refuses a start below the compact revision (at it, etcd differs: see the trait).
    assert!(matches!(s.watch("/h".into(), None, r1).await, Err(StoreError::Compacted { .. })));
    // Just above it, the delete replays with its previous value.
    let mut w = s.watch("/h".into(), None, r2 + 1).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kind, ev.kv.mod_revision), (EventKind::Delete, r3));
    assert_eq!(ev.prev_kv.unwrap().value, Bytes::from("v2"));
    // Compacting to the current revision keeps every current value.
    s.compact(r4).await.unwrap();
    assert_eq!(get(s, "/other").await.unwrap().value, Bytes::from("x"));
    assert!(get(s, "/h").await.is_none());
    assert_eq!(s.range(RangeRequest::key("/other").at_revision(r4)).await.unwrap().count, 1);
}

pub async fn future_revisions<S: Store + ?Sized>(s: &S) {
    let r1 = create(s, "/f", "1").await.revision;
    assert!(matches!(s.range(RangeRequest::key("/f").at_revision(r1 + 1)).await, Err(StoreError::FutureRevision)));
    assert!(matches!(s.range(RangeRequest::prefix("/").at_revision(r1 + 5)).await, Err(StoreError::FutureRevision)));
    let txn = ops(vec![put("/g", "1"), Op::Range(RangeRequest::key("/f").at_revision(r1 + 5))]);
    assert!(matches!(s.txn(txn).await, Err(StoreError::FutureRevision)));
    assert!(get(s, "/g").await.is_none(), "a refused txn writes nothing");
    assert!(matches!(s.compact(r1 + 1).await, Err(StoreError::FutureRevision)));
    // Watching from a future revision is allowed: it waits for that revision.
    let mut w = s.watch("/f".into(), None, r1 + 2).await.unwrap();
    write(s, vec![put("/f", "2")]).await;
    let r3 = write(s, vec![put("/f", "3")]).await;
    assert_eq!(next_event(&mut w).await.kv.mod_revision, r3);
}

pub async fn watch_replays_then_streams<S: Store + ?Sized>(s: &S) {
    let r1 = create(s, "/w/a", "1").await.revision;
    create(s, "/other", "x").await;
    let r3 = write(s, vec![put("/w/a", "2")]).await;
    let mut w = s.watch("/w/".into(), Some(prefix_end("/w/")), r1).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kind, ev.kv.key.as_str(), ev.kv.mod_revision, ev.kv.version), (EventKind::Put, "/w/a", r1, 1));
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kv.mod_revision, ev.kv.create_revision, ev.kv.version, ev.kv.value), (r3, r1, 2, Bytes::from("2")));
    let prev = ev.prev_kv.expect("a put over a key carries the version it replaced");
    assert_eq!((prev.value, prev.mod_revision), (Bytes::from("1"), r1));
    let r4 = create(s, "/w/b", "3").await.revision;
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kv.key.as_str(), ev.kv.mod_revision), ("/w/b", r4));
    let r5 = write(s, vec![del("/w/a")]).await;
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kind, ev.kv.key.as_str(), ev.kv.mod_revision), (EventKind::Delete, "/w/a", r5));
    assert!(ev.kv.value.is_empty());
    let prev = ev.prev_kv.expect("delete carries prev_kv");
    assert_eq!((prev.value, prev.mod_revision, prev.version), (Bytes::from("2"), r3, 2));
    // Watching from "now" sees only later changes.
    let mut now = s.watch("/w/".into(), Some(prefix_end("/w/")), 0).await.unwrap();
    let r6 = create(s, "/w/c", "4").await.revision;
    assert_eq!(next_event(&mut now).await.kv.mod_revision, r6);
    assert_eq!(next_event(&mut w).await.kv.mod_revision, r6);
    // A replay from the start is the same sequence the live watcher saw.
    let mut replay = s.watch("/w/".into(), Some(prefix_end("/w/")), r1).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_event(&mut replay).await.kv.mod_revision);
    }
    assert_eq!(seen, [r1, r3, r4, r5, r6]);
}

pub async fn watch_filters_keys<S: Store + ?Sized>(s: &S) {
    let mut one = s.watch("/k/a".into(), None, 0).await.unwrap();
    write(s, vec![put("/k/ab", "x"), put("/k/b", "x")]).await;
    let r = write(s, vec![put("/k/a", "x")]).await;
    let ev = next_event(&mut one).await;
    assert_eq!((ev.kv.key.as_str(), ev.kv.mod_revision), ("/k/a", r));
    quiet(&mut one).await;
}

pub async fn watch_orders_concurrent_writers<S: Store + ?Sized>(s: Arc<S>) {
    let mut w = s.watch("/c/".into(), Some(prefix_end("/c/")), 0).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                create(&*s, &format!("/c/{t}/{i}"), "v").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = 0;
    for _ in 0..200 {
        let ev = next_event(&mut w).await;
        assert!(ev.kv.mod_revision > last, "revisions strictly increase");
        last = ev.kv.mod_revision;
    }
    assert_eq!(last, s.current_revision().await.unwrap());
}

pub async fn failure_branch_reads<S: Store + ?Sized>(s: &S) {
    let r1 = create(s, "/f", "current").await.revision;
    let r = s
        .txn(Txn {
            compare: vec![Compare::absent("/f")],
            success: vec![put("/f", "new")],
            failure: vec![Op::Range(RangeRequest::key("/f"))],
        })
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, r1);
    match &r.responses[..] {
        [OpResponse::Range(rr)] => assert_eq!((rr.kvs[0].value.clone(), rr.kvs[0].mod_revision), (Bytes::from("current"), r1)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(get(s, "/f").await.unwrap().value, Bytes::from("current"));
}
