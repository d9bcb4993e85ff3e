use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::*;
use crate::{Compare, Op};

fn opts() -> EmbeddedOptions {
    EmbeddedOptions { auto_compact_interval: None }
}

fn put(key: &str, v: &str) -> Txn {
    Txn { success: vec![Op::Put { key: key.into(), value: Bytes::from(v.to_string()) }], ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    crate::conformance::run_all(|| {
        let path = dir.path().join(format!("db{}", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        async move { EmbeddedStore::open(&path, opts()).unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.txn(Txn { compare: vec![Compare::absent(format!("/g/{i}"))], ..put(&format!("/g/{i}"), "v") }).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().succeeded);
    }
    let st = s.stats();
    assert_eq!(st.txns, 200);
    assert!(st.commits < 100, "group commit should batch: {st:?}");
    assert_eq!(s.current_revision().await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = EmbeddedStore::open(&path, opts()).unwrap();
        for i in 0..50 {
            s.txn(put(&format!("/r/{i}"), "v")).await.unwrap();
        }
        s.compact(10).await.unwrap();
    }
    // The writer thread releases the file shortly after the last handle is dropped.
    let s = loop {
        match EmbeddedStore::open(&path, opts()) {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(s.current_revision().await.unwrap(), 50);
    assert_eq!(s.compact_revision().await.unwrap(), 10);
    assert_eq!(s.range(RangeRequest::prefix("/r/")).await.unwrap().count, 50);
    assert_eq!(s.txn(put("/r/new", "v")).await.unwrap().revision, 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    let mut w = s.watch("/s/".into(), Some(crate::prefix_end("/s/")), 0).await.unwrap();
    // Far more events than the live buffer and the stream buffer hold, without reading any.
    let n = (LIVE_BUFFER + STREAM_BUFFER + 500) as i64;
    let batch: Vec<_> = (0..n).map(|i| s.txn(put(&format!("/s/{}", i % 10), "x"))).collect();
    for f in batch {
        f.await.unwrap();
    }
    let mut last = 0;
    for _ in 0..n {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(ev.kv.mod_revision, last + 1, "no gap and no duplicate");
        last = ev.kv.mod_revision;
    }
    assert_eq!(last, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_file_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = EmbeddedStore::open(&path, opts()).unwrap();
    let value = "x".repeat(200);
    let mut sizes = Vec::new();
    for round in 0..8 {
        let futs: Vec<_> = (0..2500).map(|i| s.txn(put(&format!("/b/{}", i % 100), &value))).collect();
        for f in futs {
            f.await.unwrap();
        }
        let rev = s.current_revision().await.unwrap();
        s.compact(rev).await.unwrap();
        if round >= 2 {
            sizes.push(std::fs::metadata(&path).unwrap().len());
        }
    }
    let (first, last) = (sizes[0], *sizes.last().unwrap());
    assert!(last <= first * 2, "file keeps growing under compaction: {sizes:?}");
    assert_eq!(s.range(RangeRequest::prefix("/b/")).await.unwrap().count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    let mut w = s.watch("/x".into(), None, 0).await.unwrap();
    drop(s);
    let end = tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap();
    assert!(matches!(end, Some(Err(StoreError::Closed)) | None));
}
