use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use redb::{ReadableDatabase, ReadableTableMetadata};

use super::*;
use crate::{Compare, Event, EventKind, KeyValue, Op, prefix_end};

fn opts() -> EmbeddedOptions {
    EmbeddedOptions { auto_compact_interval: None, ..Default::default() }
}

fn put(key: &str, v: &str) -> Txn {
    Txn { success: vec![Op::Put { key: key.into(), value: Bytes::from(v.to_string()) }], ..Default::default() }
}

fn del(key: &str) -> Txn {
    Txn { success: vec![Op::Delete { key: key.into(), range_end: None }], ..Default::default() }
}

async fn next(w: &mut WatchStream) -> Result<Event> {
    tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("watch item in time").expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    crate::conformance::run_all(|| {
        let path = dir.path().join(format!("db{}", n.fetch_add(1, Ordering::SeqCst)));
        // As a trait object, the way the API server holds it (and an etcd backend would be run).
        async move { EmbeddedStore::open(&path, opts()).unwrap() as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_store_starts_at_revision_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("sub/dir/db"), opts()).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), 0);
    assert_eq!(s.range(RangeRequest::prefix("/")).await.unwrap(), RangeResponse::default());
    assert_eq!(s.txn(put("/a", "1")).await.unwrap().revision, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            let key = format!("/g/{i}");
            tokio::spawn(async move { s.txn(Txn { compare: vec![Compare::absent(&key)], ..put(&key, "v") }).await.unwrap() })
        })
        .collect();
    let mut revs = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.succeeded);
        revs.push(r.revision);
    }
    revs.sort_unstable();
    assert_eq!(revs, (1..=200).collect::<Vec<_>>(), "each txn gets its own revision");
    let st = s.stats();
    assert_eq!(st.txns, 200);
    assert!(st.commits <= 50, "group commit should batch: {st:?}");
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
        s.txn(del("/r/0")).await.unwrap();
        s.compact(10).await.unwrap();
    }
    // Dropping the last handle released the file.
    let s = EmbeddedStore::open(&path, opts()).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), 51);
    assert_eq!(s.compact_revision().await.unwrap(), 10);
    assert_eq!(s.range(RangeRequest::prefix("/r/")).await.unwrap().count, 49);
    assert_eq!(s.range(RangeRequest::prefix("/r/").at_revision(20)).await.unwrap().count, 20);
    assert_eq!(s.txn(put("/r/new", "v")).await.unwrap().revision, 52);
    let mut w = s.watch("/r/".into(), Some(prefix_end("/r/")), 50).await.unwrap();
    assert_eq!(next(&mut w).await.unwrap().kv.key, "/r/49");
    let ev = next(&mut w).await.unwrap();
    assert_eq!((ev.kind, ev.prev_kv.unwrap().key.as_str()), (EventKind::Delete, "/r/0"));
}

/// The child half of `crash_keeps_acknowledged_writes`: writes until killed, printing each
/// acknowledged revision. Does nothing unless run by that test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(path) = std::env::var("SKIFF_STORE_CRASH_DB") else { return };
    let s = EmbeddedStore::open(std::path::Path::new(&path), opts()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..16 {
        let (s, tx) = (s.clone(), tx.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let r = s.txn(put(&format!("/crash/{w}/{}", i % 50), &format!("{i}"))).await.unwrap();
                if tx.send(r.revision).is_err() {
                    return;
                }
            }
        });
    }
    while let Some(rev) = rx.recv().await {
        println!("ACK {rev}");
    }
}

#[test]
fn crash_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "embedded::tests::crash_child_writer", "--nocapture", "--test-threads=1"])
            .env("SKIFF_STORE_CRASH_DB", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = 0;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        while acked < 300 + 200 * round {
            let line = lines.next().expect("child still writing").unwrap();
            if let Some(rev) = line.strip_prefix("ACK ") {
                acked = acked.max(rev.parse::<i64>().unwrap());
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = EmbeddedStore::open(&path, opts()).unwrap();
            let current = s.current_revision().await.unwrap();
            assert!(current >= acked, "round {round}: acknowledged revision {acked} lost (reopened at {current})");
            let all = s.range(RangeRequest::prefix("/crash/")).await.unwrap();
            assert!(all.kvs.iter().all(|kv| kv.mod_revision <= current));
            // The log is intact: a full replay reaches the current revision.
            let mut w = s.watch("/crash/".into(), Some(prefix_end("/crash/")), 1).await.unwrap();
            let mut last = 0;
            while last < current {
                last = next(&mut w).await.unwrap().kv.mod_revision;
            }
            s.txn(put("/after", "x")).await.unwrap();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    let mut w = s.watch("/s/".into(), Some(prefix_end("/s/")), 0).await.unwrap();
    let n = 3 * LIVE_BUFFER as i64;
    // One commit per revision, far more than the live buffer holds, while nobody reads `w`.
    for i in 0..n {
        s.txn(put(&format!("/s/{}", i % 10), &i.to_string())).await.unwrap();
    }
    for i in 1..=n {
        let ev = next(&mut w).await.unwrap();
        assert_eq!((ev.kv.mod_revision, ev.kv.value.clone()), (i, Bytes::from((i - 1).to_string())), "no gap, no duplicate");
        assert_eq!(ev.prev_kv.is_some(), i > 10, "puts over existing keys carry prev_kv");
    }
    // Back to live delivery afterwards.
    let r = s.txn(put("/s/live", "x")).await.unwrap().revision;
    assert_eq!(next(&mut w).await.unwrap().kv.mod_revision, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_behind_compaction_gets_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    s.txn(put("/x", "1")).await.unwrap();
    let mut w = s.watch("/x".into(), None, 1).await.unwrap();
    let r = s.txn(put("/x", "2")).await.unwrap().revision;
    s.compact(r).await.unwrap();
    assert_eq!(next(&mut w).await, Err(StoreError::Compacted { compact_revision: r }));
    assert!(w.next().await.is_none(), "the stream ends after an error");
    // This backend refuses a start exactly at the compact revision too.
    assert!(matches!(s.watch("/x".into(), None, r).await, Err(StoreError::Compacted { compact_revision }) if compact_revision == r));
    let mut after = s.watch("/x".into(), None, r + 1).await.unwrap();
    let r3 = s.txn(put("/x", "3")).await.unwrap().revision;
    assert_eq!(next(&mut after).await.unwrap().kv.mod_revision, r3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_ends_watches_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = EmbeddedStore::open(&path, opts()).unwrap();
    let mut live = s.watch("/x".into(), None, 0).await.unwrap();
    s.close().await;
    assert_eq!(next(&mut live).await, Err(StoreError::Closed));
    assert_eq!(s.txn(put("/x", "1")).await, Err(StoreError::Closed));
    assert!(matches!(s.watch("/x".into(), None, 0).await, Err(StoreError::Closed)));

    let s = {
        drop(s);
        EmbeddedStore::open(&path, opts()).unwrap()
    };
    let mut w = s.watch("/x".into(), None, 0).await.unwrap();
    drop(s);
    assert_eq!(next(&mut w).await, Err(StoreError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_file_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = EmbeddedStore::open(&path, opts()).unwrap();
    let value = "x".repeat(200);
    let mut sizes = Vec::new();
    for round in 0..10 {
        let writes: Vec<_> = (0..2000).map(|i| s.txn(put(&format!("/b/{}", i % 100), &value))).collect();
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        s.compact(s.current_revision().await.unwrap()).await.unwrap();
        if round >= 2 {
            sizes.push(std::fs::metadata(&path).unwrap().len());
        }
    }
    let (first, last) = (sizes[0], *sizes.last().unwrap());
    assert!(last <= first + first / 4, "file keeps growing under compaction: {sizes:?}");
    let all = s.range(RangeRequest::prefix("/b/")).await.unwrap();
    assert_eq!(all.count, 100);
    assert!(all.kvs.iter().all(|kv| kv.version == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_trails_one_interval() {
    let dir = tempfile::tempdir().unwrap();
    let every = Duration::from_millis(100);
    let s = EmbeddedStore::open(&dir.path().join("db"), EmbeddedOptions { auto_compact_interval: Some(every), ..opts() }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.compact_revision().await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "auto-compaction never ran");
        s.txn(put("/a", "x")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let compacted = s.compact_revision().await.unwrap();
    assert!(compacted < s.current_revision().await.unwrap(), "history of the last interval is kept");
    assert!(matches!(s.range(RangeRequest::key("/a").at_revision(compacted - 1)).await, Err(StoreError::Compacted { .. })));
}

/// A deterministic random walk of puts, deletes and compactions, checked against a model of every
/// revision: reads at every retained revision, and replays against what a live watcher saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_history_matches_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    let mut live = s.watch("/m/".into(), Some(prefix_end("/m/")), 0).await.unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // models[rev] = the state after revision rev.
    let mut models: Vec<BTreeMap<String, KeyValue>> = vec![BTreeMap::new()];
    let mut compacted = 0;
    let mut seen = Vec::new();
    for step in 0..400 {
        let mut state = models.last().unwrap().clone();
        let rev = models.len() as i64;
        let mut ops = Vec::new();
        let mut touched = std::collections::HashSet::new();
        for _ in 0..=rand(3) {
            let key = format!("/m/{}", rand(12));
            if !touched.insert(key.clone()) {
                continue;
            }
            if rand(4) == 0 {
                ops.push(Op::Delete { key: key.clone(), range_end: None });
                state.remove(&key);
            } else {
                let value = Bytes::from(format!("{step}"));
                let (create_revision, version) = state.get(&key).map_or((rev, 1), |kv| (kv.create_revision, kv.version + 1));
                state.insert(key.clone(), KeyValue { key: key.clone(), value: value.clone(), create_revision, mod_revision: rev, version });
                ops.push(Op::Put { key, value });
            }
        }
        let changed = &state != models.last().unwrap();
        let r = s.txn(Txn { success: ops, ..Default::default() }).await.unwrap();
        if changed {
            assert_eq!(r.revision, rev);
            models.push(state);
            while seen.last().is_none_or(|ev: &Event| ev.kv.mod_revision < rev) {
                seen.push(next(&mut live).await.unwrap());
            }
        } else {
            assert_eq!(r.revision, rev - 1);
        }
        if step % 97 == 96 {
            let to = models.len() as i64 - 1 - rand(20) as i64;
            if to > compacted {
                s.compact(to).await.unwrap();
                compacted = to;
            }
        }
    }
    check_history(&s, &models, compacted, &seen).await;
    // The same history again after reopening: the index is rebuilt from the records.
    let path = dir.path().join("db");
    drop(s);
    let s = EmbeddedStore::open(&path, opts()).unwrap();
    check_history(&s, &models, compacted, &seen).await;
}

async fn check_history(s: &EmbeddedStore, models: &[BTreeMap<String, KeyValue>], compacted: i64, seen: &[Event]) {
    for (rev, model) in models.iter().enumerate().skip(compacted as usize) {
        let got = s.range(RangeRequest::prefix("/m/").at_revision(rev as i64)).await.unwrap();
        assert_eq!(got.kvs, model.values().cloned().collect::<Vec<_>>(), "range at revision {rev}");
        for key in ["/m/1", "/m/7"] {
            let one = s.range(RangeRequest::key(key).at_revision(rev as i64)).await.unwrap();
            assert_eq!(one.kvs.first(), model.get(key), "{key} at revision {rev}");
        }
    }
    if compacted > 1 {
        assert!(matches!(s.range(RangeRequest::prefix("/m/").at_revision(compacted - 1)).await, Err(StoreError::Compacted { .. })));
    }
    let mut replay = s.watch("/m/".into(), Some(prefix_end("/m/")), compacted + 1).await.unwrap();
    for expected in seen.iter().filter(|ev| ev.kv.mod_revision > compacted) {
        assert_eq!(&next(&mut replay).await.unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    s.txn(put("/f/a", "1")).await.unwrap();
    let mut w = s.watch("/f/".into(), Some(prefix_end("/f/")), 0).await.unwrap();
    // A failing batch is retried one transaction at a time, so one injected failure costs at most
    // one transaction (none when the writer happened to batch them).
    s.shared.fail_commits.store(1, Ordering::SeqCst);
    let writes: Vec<_> = (0..20).map(|i| s.txn(put(&format!("/f/{i}"), "x"))).collect();
    let results = futures::future::join_all(writes).await;
    let landed = results.iter().filter(|r| r.is_ok()).count() as i64;
    assert!(landed >= 19 && results.iter().all(|r| matches!(r, Ok(_) | Err(StoreError::Backend(_)))), "{results:?}");
    let current = 1 + landed;
    assert_eq!(s.current_revision().await.unwrap(), current);
    // A lone transaction that fails is reported, and its index versions are rolled back.
    s.shared.fail_commits.store(1, Ordering::SeqCst);
    let lost = Txn {
        success: vec![Op::Put { key: "/f/a".into(), value: Bytes::from("lost") }, Op::Delete { key: "/f/1".into(), range_end: None }],
        ..Default::default()
    };
    assert!(matches!(s.txn(lost).await, Err(StoreError::Backend(_))));
    s.shared.fail_commits.store(1, Ordering::SeqCst);
    let r = s.txn(Txn { success: vec![Op::Delete { key: "/f/".into(), range_end: Some(prefix_end("/f/")) }], ..Default::default() }).await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    assert_eq!(s.current_revision().await.unwrap(), current);
    let a = s.range(RangeRequest::key("/f/a")).await.unwrap().kvs.pop().unwrap();
    assert_eq!((a.value, a.mod_revision, a.version), (Bytes::from("1"), 1, 1));
    assert_eq!(s.range(RangeRequest::prefix("/f/")).await.unwrap().count, 1 + landed);
    let r = s.txn(put("/f/a", "y")).await.unwrap();
    assert_eq!(r.revision, current + 1);
    assert_eq!(s.range(RangeRequest::key("/f/a")).await.unwrap().kvs[0].version, 2);
    let mut seen = Vec::new();
    for _ in 0..=landed {
        seen.push(next(&mut w).await.unwrap().kv.mod_revision);
    }
    assert_eq!(seen, (2..=current + 1).collect::<Vec<_>>(), "watchers saw no failed write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_forgets_deleted_keys_and_old_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("db"), opts()).unwrap();
    for i in 0..50 {
        s.txn(put(&format!("/gone/{i}"), "v")).await.unwrap();
        s.txn(put(&format!("/kept/{i}"), "1")).await.unwrap();
        s.txn(put(&format!("/kept/{i}"), "2")).await.unwrap();
    }
    s.txn(Txn { success: vec![Op::Delete { key: "/gone/".into(), range_end: Some(prefix_end("/gone/")) }], ..Default::default() })
        .await
        .unwrap();
    let rev = s.current_revision().await.unwrap();
    s.compact(rev).await.unwrap();
    let index = s.shared.index.read().unwrap();
    assert_eq!(index.len(), 50, "deleted keys are forgotten");
    assert!(index.range(Span::Range("/kept/", Some("/kept0")), index::LATEST).all(|(_, v)| v.version == 2));
    drop(index);
    let rtx = s.shared.db.begin_read().unwrap();
    assert_eq!(rtx.open_table(codec::REVS).unwrap().len().unwrap(), 50, "only the live records remain");
}
