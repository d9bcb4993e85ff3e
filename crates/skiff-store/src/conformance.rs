//! A backend-agnostic conformance suite for [`Store`]: etcd v3 semantics the API server relies on.
//! Every backend runs it (`run_all` with a factory that returns a fresh, empty store per check).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::*;

fn put(key: &str, v: &str) -> Op {
    Op::Put { key: key.into(), value: Bytes::from(v.to_string()) }
}

async fn create<S: Store + ?Sized>(s: &S, key: &str, v: &str) -> TxnResponse {
    s.txn(Txn { compare: vec![Compare::absent(key)], success: vec![put(key, v)], failure: vec![] }).await.unwrap()
}

async fn next_event(w: &mut WatchStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("watch event in time").expect("stream open").expect("no error")
}

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    create_if_absent(&*make().await).await;
    update_if_unchanged(&*make().await).await;
    delete_if_unchanged(&*make().await).await;
    ranges(&*make().await).await;
    past_revisions_and_compaction(&*make().await).await;
    watch_replays_then_streams(&*make().await).await;
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
    let got = s.range(RangeRequest::key("/a")).await.unwrap();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].value, Bytes::from("1"));
    assert_eq!((got.kvs[0].create_revision, got.kvs[0].mod_revision, got.kvs[0].version), (rev1, rev1, 1));
    assert_eq!(s.current_revision().await.unwrap(), rev1);
}

pub async fn update_if_unchanged<S: Store + ?Sized>(s: &S) {
    let rev1 = create(s, "/k", "1").await.revision;
    let ok = s.txn(Txn { compare: vec![Compare::unchanged("/k", rev1)], success: vec![put("/k", "2")], failure: vec![] }).await.unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.revision, rev1 + 1);
    let stale = s.txn(Txn { compare: vec![Compare::unchanged("/k", rev1)], success: vec![put("/k", "3")], failure: vec![] }).await.unwrap();
    assert!(!stale.succeeded, "update on a stale revision must fail");
    let kv = &s.range(RangeRequest::key("/k")).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.value.clone()), (rev1, rev1 + 1, 2, Bytes::from("2")));
}

pub async fn delete_if_unchanged<S: Store + ?Sized>(s: &S) {
    let rev1 = create(s, "/d", "1").await.revision;
    let del = |rev| Txn {
        compare: vec![Compare::unchanged("/d", rev)],
        success: vec![Op::Delete { key: "/d".into(), range_end: None }],
        failure: vec![],
    };
    assert!(!s.txn(del(rev1 + 100)).await.unwrap().succeeded);
    let r = s.txn(del(rev1)).await.unwrap();
    assert!(r.succeeded);
    match &r.responses[0] {
        OpResponse::Delete { deleted, prev_kvs } => {
            assert_eq!(*deleted, 1);
            assert_eq!(prev_kvs[0].value, Bytes::from("1"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(s.range(RangeRequest::key("/d")).await.unwrap().kvs.is_empty());
    // Re-creating resets create_revision and version.
    let rev3 = create(s, "/d", "again").await.revision;
    let kv = &s.range(RangeRequest::key("/d")).await.unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (rev3, 1));
    // Deleting nothing changes nothing.
    let before = s.current_revision().await.unwrap();
    let r = s.txn(Txn { success: vec![Op::Delete { key: "/nothing".into(), range_end: None }], ..Default::default() }).await.unwrap();
    assert_eq!(r.revision, before);
}

pub async fn ranges<S: Store + ?Sized>(s: &S) {
    for k in ["/p/a", "/p/b", "/p/c", "/q/a"] {
        create(s, k, k).await;
    }
    let all = s.range(RangeRequest::prefix("/p/")).await.unwrap();
    assert_eq!(all.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/p/a", "/p/b", "/p/c"]);
    assert_eq!(all.count, 3);
    assert!(!all.more);
    let page = s.range(RangeRequest::prefix("/p/").with_limit(2)).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
    assert_eq!(page.count, 3);
    let counted = s.range(RangeRequest { count_only: true, ..RangeRequest::prefix("/p/") }).await.unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (3, 0));
    let rest = s.range(RangeRequest { key: "/p/b\0".into(), range_end: Some(prefix_end("/p/")), ..Default::default() }).await.unwrap();
    assert_eq!(rest.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/p/c"]);
    assert!(matches!(s.range(RangeRequest::key("")).await, Err(StoreError::InvalidRequest(_))));
}

pub async fn past_revisions_and_compaction<S: Store + ?Sized>(s: &S) {
    let r1 = create(s, "/h", "v1").await.revision;
    let r2 = s.txn(Txn { success: vec![put("/h", "v2")], ..Default::default() }).await.unwrap().revision;
    let r3 = s.txn(Txn { success: vec![Op::Delete { key: "/h".into(), range_end: None }], ..Default::default() }).await.unwrap().revision;
    let at = |rev| s.range(RangeRequest::key("/h").at_revision(rev));
    assert_eq!(at(r1).await.unwrap().kvs[0].value, Bytes::from("v1"));
    assert_eq!(at(r2).await.unwrap().kvs[0].value, Bytes::from("v2"));
    assert!(at(r3).await.unwrap().kvs.is_empty());
    assert!(matches!(at(r3 + 10).await, Err(StoreError::FutureRevision)));
    s.compact(r2).await.unwrap();
    assert_eq!(s.compact_revision().await.unwrap(), r2);
    assert!(matches!(at(r1).await, Err(StoreError::Compacted { .. })));
    assert_eq!(at(r2).await.unwrap().kvs[0].value, Bytes::from("v2"), "the compacted revision itself stays readable");
    assert!(matches!(s.compact(r1).await, Err(StoreError::Compacted { .. })));
    assert!(matches!(s.compact(r3 + 10).await, Err(StoreError::FutureRevision)));
    assert!(matches!(s.watch("/h".into(), None, r1).await, Err(StoreError::Compacted { .. })));
    // Watching from just above the compaction still replays the delete, with its previous value.
    let mut w = s.watch("/h".into(), None, r2 + 1).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(ev.kv.mod_revision, r3);
    assert_eq!(ev.prev_kv.unwrap().value, Bytes::from("v2"));
}

pub async fn watch_replays_then_streams<S: Store + ?Sized>(s: &S) {
    let r1 = create(s, "/w/a", "1").await.revision;
    create(s, "/other", "x").await;
    let mut w = s.watch("/w/".into(), Some(prefix_end("/w/")), r1).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kind, ev.kv.key.as_str(), ev.kv.mod_revision), (EventKind::Put, "/w/a", r1));
    let r3 = create(s, "/w/b", "2").await.revision;
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kv.key.as_str(), ev.kv.mod_revision), ("/w/b", r3));
    s.txn(Txn { success: vec![Op::Delete { key: "/w/a".into(), range_end: None }], ..Default::default() }).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!((ev.kind, ev.kv.key.as_str()), (EventKind::Delete, "/w/a"));
    assert_eq!(ev.prev_kv.expect("delete carries prev_kv").value, Bytes::from("1"));
    // Watching from "now" sees only later changes.
    let mut now = s.watch("/w/".into(), Some(prefix_end("/w/")), 0).await.unwrap();
    let r5 = create(s, "/w/c", "3").await.revision;
    assert_eq!(next_event(&mut now).await.kv.mod_revision, r5);
}

pub async fn watch_orders_concurrent_writers<S: Store>(s: Arc<S>) {
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
    match &r.responses[0] {
        OpResponse::Range(rr) => assert_eq!((rr.kvs[0].value.clone(), rr.kvs[0].mod_revision), (Bytes::from("current"), r1)),
        other => panic!("unexpected {other:?}"),
    }
}
