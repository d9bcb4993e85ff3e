//! kube-runtime watchers against the real server: a `reflector` store fed by `watcher` must end up
//! equal to the server's list (names and resourceVersions) after the server is SIGKILLed and
//! restarted under it (resuming from its resourceVersion, or relisting when the restarted cache
//! cannot replay what it missed), and after the watcher falls so far behind that the watch cache's
//! history no longer holds what it missed (410 inside the watch stream, then a relist).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::harness::{Server, free_port};

const NS: &str = "default";

/// name → resourceVersion: what a watcher's view and the server's list are compared on.
type View = BTreeMap<String, String>;

fn configmap(name: &str, label: &str, value: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([("test".to_string(), label.to_string())].into()),
            ..Default::default()
        },
        data: Some([("v".to_string(), value)].into()),
        ..Default::default()
    }
}

fn view_of<'a>(items: impl IntoIterator<Item = &'a ConfigMap>) -> View {
    items.into_iter().map(|c| (c.name_any(), c.resource_version().unwrap_or_default())).collect()
}

/// A consistent list (no resourceVersion): everything acknowledged so far.
async fn server_view(api: &Api<ConfigMap>) -> View {
    view_of(&api.list(&ListParams::default()).await.expect("list configmaps").items)
}

fn store_view(store: &Store<ConfigMap>) -> View {
    view_of(store.state().iter().map(|c| &**c))
}

fn labelled(store: &Store<ConfigMap>, label: &str) -> BTreeSet<String> {
    store.state().iter().filter(|c| c.labels().get("test").map(String::as_str) == Some(label)).map(|c| c.name_any()).collect()
}

/// Human-readable difference between the watcher's view and the server's (first 20 entries).
fn diff(mine: &View, server: &View) -> String {
    let mut out = Vec::new();
    for (name, rv) in server {
        match mine.get(name) {
            None => out.push(format!("missing in watcher: {name} (server rv {rv})")),
            Some(w) if w != rv => out.push(format!("stale in watcher: {name} rv {w}, server rv {rv}")),
            _ => {}
        }
    }
    for (name, rv) in mine {
        if !server.contains_key(name) {
            out.push(format!("only in watcher (deleted on server?): {name} rv {rv}"));
        }
    }
    let n = out.len();
    out.truncate(20);
    format!("{n} differences: {}", out.join("; "))
}

/// What the watcher stream yielded, in order (objects abbreviated to counts).
#[derive(Default, Debug)]
struct Log {
    inits: usize,
    init_dones: usize,
    init_applies: usize,
    applies: usize,
    deletes: usize,
    errors: Vec<String>,
    /// Watch events that carried a 410 Status (the "too old / fell behind" signal).
    gone: usize,
    /// resourceVersion of the last Apply/Delete since the last (re)list: a watch delivers events
    /// in revision order, also across a resumed watch.
    last_rv: u64,
    out_of_order: Vec<String>,
    /// Apply/Delete events whose resourceVersion is not the previous one + 1 (diagnostic only:
    /// writes to other resources also take revisions).
    rv_gaps: usize,
    /// Apply/Delete events received before the first Init of this log: what was still queued
    /// from before a relist.
    before_relist: usize,
}

impl Log {
    /// Returns what was recorded so far and starts counting afresh, still checking that later
    /// events come after the ones already seen.
    fn split(&mut self) -> Log {
        let last_rv = self.last_rv;
        let done = std::mem::take(self);
        self.last_rv = last_rv;
        done
    }

    fn check_order(&mut self, what: &str, cm: &ConfigMap) {
        let rv: u64 = cm.resource_version().and_then(|rv| rv.parse().ok()).unwrap_or(0);
        if rv <= self.last_rv && self.out_of_order.len() < 20 {
            self.out_of_order.push(format!("{what} {} rv {rv} after rv {}", cm.name_any(), self.last_rv));
        }
        if self.last_rv > 0 && rv > self.last_rv + 1 {
            self.rv_gaps += 1;
        }
        if self.inits == 0 {
            self.before_relist += 1;
        }
        self.last_rv = self.last_rv.max(rv);
    }

    fn record(&mut self, ev: &Result<watcher::Event<ConfigMap>, watcher::Error>) {
        match ev {
            Ok(watcher::Event::Init) => {
                self.inits += 1;
                self.last_rv = 0;
            }
            Ok(watcher::Event::InitApply(_)) => self.init_applies += 1,
            Ok(watcher::Event::InitDone) => self.init_dones += 1,
            Ok(watcher::Event::Apply(cm)) => {
                self.applies += 1;
                self.check_order("Apply", cm);
            }
            Ok(watcher::Event::Delete(cm)) => {
                self.deletes += 1;
                self.check_order("Delete", cm);
            }
            Err(e) => {
                if let watcher::Error::WatchError(status) = e
                    && status.code == 410
                {
                    self.gone += 1;
                }
                if self.errors.len() < 50 {
                    self.errors.push(e.to_string());
                }
            }
        }
    }
}

/// The reflector stream every test drives: `watcher` with the default backoff, into a store.
fn reflector_stream(client: kube::Client) -> (Store<ConfigMap>, EventStream) {
    let (reader, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watcher(Api::<ConfigMap>::namespaced(client, NS), watcher::Config::default()).default_backoff());
    (reader, Box::pin(stream))
}

/// Polls until the reflector's store equals the server's list, or returns the last difference.
async fn converge(store: &Store<ConfigMap>, api: &Api<ConfigMap>, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let server = server_view(api).await;
        let mine = store_view(store);
        if mine == server {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(diff(&mine, &server));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Send>>;

/// Polls the watcher, recording into `log`, until `done(log)` holds; Err(()) when `within` passes.
async fn drive_until(stream: &mut EventStream, log: &mut Log, within: Duration, mut done: impl FnMut(&Log) -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + within;
    loop {
        if done(log) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(());
        }
        match tokio::time::timeout(left.min(Duration::from_millis(200)), stream.next()).await {
            Ok(Some(ev)) => log.record(&ev),
            Ok(None) => panic!("the watcher stream ended: {log:?}"),
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_consistent_across_restart() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start_in(tmp.path(), port);
    let client = server.kube_client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);

    let (store, mut stream) = reflector_stream(client);
    let log = Arc::new(Mutex::new(Log::default()));
    let driver = tokio::spawn({
        let log = log.clone();
        async move {
            while let Some(ev) = stream.next().await {
                log.lock().unwrap().record(&ev);
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready())
        .await
        .expect("the reflector did not finish its initial list within 30 s")
        .unwrap();

    let mut expected: BTreeSet<String> = BTreeSet::new();
    for i in 0..20 {
        let name = format!("w-{i:02}");
        api.create(&PostParams::default(), &configmap(&name, "w", format!("before-{i}"))).await.expect("create");
        expected.insert(name);
    }
    converge(&store, &api, Duration::from_secs(30))
        .await
        .unwrap_or_else(|d| panic!("before restart, the reflector never matched the server's list: {d}\n{:?}", log.lock().unwrap()));
    assert_eq!(labelled(&store, "w"), expected, "before restart, the reflector does not hold exactly the 20 configmaps");
    let before_restart = log.lock().unwrap().split();

    server.kill();
    let server = Server::start_in(tmp.path(), port);
    let restarted_at = Instant::now();
    let api: Api<ConfigMap> = Api::namespaced(server.kube_client().await, NS);
    for i in 20..30 {
        let name = format!("w-{i:02}");
        api.create(&PostParams::default(), &configmap(&name, "w", format!("after-{i}"))).await.expect("create after restart");
        expected.insert(name);
    }
    for i in 0..5 {
        let name = format!("w-{i:02}");
        api.delete(&name, &DeleteParams::default()).await.expect("delete after restart");
        expected.remove(&name);
    }

    converge(&store, &api, Duration::from_secs(30)).await.unwrap_or_else(|d| {
        panic!(
            "30 s after the restart the reflector still differs from the server's list: {d}\nwatcher events since restart: {:?}\n--- server log ---\n{}",
            log.lock().unwrap(),
            server.logs()
        )
    });
    let took = restarted_at.elapsed();
    assert_eq!(labelled(&store, "w"), expected, "after restart, the reflector holds the wrong configmaps");
    let log_now = log.lock().unwrap();
    assert!(
        before_restart.out_of_order.is_empty() && log_now.out_of_order.is_empty(),
        "watch events out of resourceVersion order: {:?} {:?}",
        before_restart.out_of_order,
        log_now.out_of_order
    );
    drop(log_now);
    driver.abort();
    eprintln!(
        "watcher_consistent_across_restart: converged {:.1} s after the restart ({:.1} s total); before restart: {:?}; since restart: {:?}",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        before_restart,
        log.lock().unwrap()
    );
}

/// Objects updated in place, and how many updates in total: more than the watch cache's history
/// (10,000 events per resource) plus what the connection between server and client can buffer.
const LAG_OBJECTS: usize = 50;
const LAG_WRITES: usize = 16_000;
const LAG_CONCURRENCY: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_relists_after_falling_behind() {
    let started = Instant::now();
    let server = Server::start();
    // The watcher gets a client (and so connections) of its own, apart from the writers.
    let (store, mut stream) = reflector_stream(server.kube_client().await);
    let api: Api<ConfigMap> = Api::namespaced(server.kube_client().await, NS);
    let mut log = Log::default();

    let value = |i: usize| format!("{i:08}-{}", "x".repeat(2048));
    futures::stream::iter(0..LAG_OBJECTS)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &configmap(&format!("lag-{i:02}"), "lag", value(i))).await }
        })
        .buffer_unordered(LAG_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .expect("create the configmaps");

    // The initial list, then one live event: the watch connection is established and delivering.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut live = false;
    while !live {
        let ev = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), stream.next())
            .await
            .unwrap_or_else(|_| panic!("the watcher did not list and start watching within 30 s: {log:?}"))
            .expect("the watcher stream ended");
        log.record(&ev);
        match ev {
            Ok(watcher::Event::InitDone) => {
                api.create(&PostParams::default(), &configmap("lag-sentinel", "lag", "s".into())).await.expect("create sentinel");
            }
            Ok(watcher::Event::Apply(cm)) if cm.name_any() == "lag-sentinel" => live = true,
            _ => {}
        }
    }
    assert_eq!((log.inits, log.init_dones), (1, 1), "the initial list is one Init .. InitDone: {log:?}");
    assert_eq!(store_view(&store), server_view(&api).await, "the initial list and the sentinel are in the store");
    let initial = log.split();

    // The watcher is not polled from here on: its connection's buffers fill, then the server's
    // per-watcher queue, and the cache's history moves past the last event the watcher was sent.
    let writes_started = Instant::now();
    futures::stream::iter(0..LAG_WRITES)
        .map(|i| {
            let api = api.clone();
            async move {
                // Distinct from the value each object was created with: every patch is a change.
                let patch = serde_json::json!({ "data": { "v": value(LAG_OBJECTS + i) } });
                api.patch(&format!("lag-{:02}", i % LAG_OBJECTS), &PatchParams::default(), &Patch::Merge(&patch)).await
            }
        })
        .buffer_unordered(LAG_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("update the configmaps");
    let writes_took = writes_started.elapsed();
    let server_final = server_view(&api).await;
    assert_eq!(server_final.len(), LAG_OBJECTS + 1, "the server lists the 50 configmaps and the sentinel");

    // Resume: the watcher drains what was buffered, gets the 410, relists, and must then agree with
    // the server exactly.
    let resumed = Instant::now();
    let caught_up = drive_until(&mut stream, &mut log, Duration::from_secs(30), |log| {
        log.inits >= 1 && log.init_dones >= 1 && store_view(&store) == server_final
    })
    .await;
    if caught_up.is_err() {
        panic!(
            "30 s after resuming, the watcher has not relisted and caught up: {}\nevents since resuming: {log:?}\n--- server log tail ---\n{}",
            diff(&store_view(&store), &server_final),
            server.logs().lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
    }
    let caught_up = resumed.elapsed();

    assert!(log.gone >= 1, "the watcher was never told 410 although it fell {LAG_WRITES} events behind: {log:?}");
    assert!(log.inits >= 1 && log.init_dones >= 1, "no relist after falling behind: {log:?}");
    assert!(log.out_of_order.is_empty(), "watch events out of resourceVersion order: {:?}", log.out_of_order);
    assert_eq!(store_view(&store), server_final);
    eprintln!(
        "watcher_relists_after_falling_behind: {LAG_WRITES} updates in {:.1} s ({:.0}/s); caught up {:.1} s after resuming; \
         {} buffered events before the relist; initial: {initial:?}; after resuming: {log:?}; total {:.1} s",
        writes_took.as_secs_f64(),
        LAG_WRITES as f64 / writes_took.as_secs_f64(),
        caught_up.as_secs_f64(),
        log.before_relist,
        started.elapsed().as_secs_f64()
    );
}

/// The watcher is paused while the server is killed, restarted, written to, and killed and
/// restarted again: when it resumes, its resourceVersion is older than anything the second restart's
/// watch cache can replay. The server must not silently resume it from there (it would miss the
/// writes in between); the store must end up equal to the server's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_catches_up_on_writes_it_missed_across_restarts() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start_in(tmp.path(), port);
    let client = server.kube_client().await;
    let (store, mut stream) = reflector_stream(client.clone());
    let mut log = Log::default();

    // The initial (empty) list, then 20 creates that reach the store over the live watch.
    drive_until(&mut stream, &mut log, Duration::from_secs(30), |log| log.init_dones == 1)
        .await
        .unwrap_or_else(|_| panic!("the watcher did not list within 30 s: {log:?}"));
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    for i in 0..20 {
        api.create(&PostParams::default(), &configmap(&format!("m-{i:02}"), "m", format!("v{i}"))).await.expect("create");
    }
    let want = server_view(&api).await;
    drive_until(&mut stream, &mut log, Duration::from_secs(30), |_| store_view(&store) == want)
        .await
        .unwrap_or_else(|_| panic!("the reflector never matched the server's list: {}\n{log:?}", diff(&store_view(&store), &want)));
    assert_eq!(log.applies, 20, "the creates arrive as watch events: {log:?}");
    let before = log.split();

    // Not polled from here until both restarts are done.
    server.kill();
    let mut server = Server::start_in(tmp.path(), port);
    let api: Api<ConfigMap> = Api::namespaced(server.kube_client().await, NS);
    let mut expected: BTreeSet<String> = (0..20).map(|i| format!("m-{i:02}")).collect();
    for i in 20..30 {
        let name = format!("m-{i:02}");
        api.create(&PostParams::default(), &configmap(&name, "m", format!("v{i}"))).await.expect("create after restart");
        expected.insert(name);
    }
    for i in 0..5 {
        let name = format!("m-{i:02}");
        api.delete(&name, &DeleteParams::default()).await.expect("delete after restart");
        expected.remove(&name);
    }
    server.kill();
    let server = Server::start_in(tmp.path(), port);
    let api: Api<ConfigMap> = Api::namespaced(server.kube_client().await, NS);
    let want = server_view(&api).await;
    assert_eq!(want.keys().cloned().collect::<BTreeSet<_>>(), expected, "the server lost or resurrected configmaps across restarts");

    let resumed = Instant::now();
    drive_until(&mut stream, &mut log, Duration::from_secs(30), |_| store_view(&store) == want).await.unwrap_or_else(|_| {
        panic!(
            "30 s after resuming, the reflector still differs from the server's list: {}\nevents since resuming: {log:?}\n--- server log ---\n{}",
            diff(&store_view(&store), &want),
            server.logs()
        )
    });
    assert!(log.out_of_order.is_empty(), "watch events out of resourceVersion order: {:?}", log.out_of_order);
    eprintln!(
        "watcher_catches_up_on_writes_it_missed_across_restarts: caught up {:.1} s after resuming ({:.1} s total); before: {before:?}; after resuming: {log:?}",
        resumed.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
