//! `skiff bench api`: the numbers the Foundation issue asks for, and etcd's for the same writes.

use std::collections::HashMap;
use std::future::Future;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::ApiArgs;
use super::client::{Conn, Connector};
use super::etcd::{self, Etcd};
use super::server::{Server, free_port};
use super::stats::{Samples, ms, rss_mib};

fn configmap(ns: &str, name: &str) -> Bytes {
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench"}},
        "data": {"payload": "x".repeat(200)},
    });
    Bytes::from(serde_json::to_vec(&body).expect("static json"))
}

struct PhaseResult {
    ops: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

impl PhaseResult {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// Runs `clients` loops for `seconds`, each calling `op(client, seq)`; `interval` paces each loop.
async fn phase<S, F, Fut>(clients: Vec<S>, seconds: u64, interval: Option<Duration>, op: F) -> anyhow::Result<PhaseResult>
where
    S: Send + 'static,
    F: Fn(S, usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = (S, anyhow::Result<()>)> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (c, mut state) in clients.into_iter().enumerate() {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut tick = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                t
            });
            let mut i = 0;
            while Instant::now() < deadline {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let t0 = Instant::now();
                let (s, res) = op(state, c, i).await;
                state = s;
                res?;
                samples.push(t0.elapsed());
                i += 1;
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(PhaseResult { ops: all.len(), secs, p50: all.quantile(0.5), p99: all.quantile(0.99) })
}

async fn connections(conn: &Connector, n: usize) -> anyhow::Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(conn.connect().await?);
    }
    Ok(out)
}

/// The same durable creates through a second `skiff server` whose store is a 3-member etcd
/// cluster on this machine (`--datastore-endpoint`), beside the embedded store's numbers of the
/// same run.
async fn on_etcd_cluster(args: &ApiArgs, tmp: &std::path::Path, clients: &[usize]) -> anyhow::Result<()> {
    let dir = tmp.join("etcd3");
    std::fs::create_dir_all(&dir)?;
    let cluster = skiff_store::etcd::testing::LocalCluster::start(&dir, 3);
    let endpoints = cluster.clients.join(",");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["endpoint", "health"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        anyhow::ensure!(Instant::now() < deadline, "the 3-member etcd cluster did not become healthy in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server = Server::start(tmp.join("skiff-on-etcd"), &["--datastore-endpoint", &endpoints])?;
    let conn = Connector::from_data_dir(&server.dir.join("tls"), format!("127.0.0.1:{}", server.port).parse()?)?;
    create_namespace(&mut conn.connect().await?, "bench").await?;
    println!("\nskiff on a 3-member etcd 3.4 cluster (same machine, same disk), same creates:\n");
    println!("| durable creates | skiff on etcd creates/s | p50 | p99 |");
    println!("|---|---|---|---|");
    for &n in clients {
        let r = skiff_creates(&conn, "bench", n, args.seconds, None).await?;
        println!("| {n} clients | {:.0} | {} | {} |", r.rate(), ms(r.p50), ms(r.p99));
    }
    drop(server);
    drop(cluster);
    Ok(())
}

async fn skiff_creates(
    conn: &Connector,
    ns: &'static str,
    clients: usize,
    seconds: u64,
    interval: Option<Duration>,
) -> anyhow::Result<PhaseResult> {
    let tag = rand::random::<u32>();
    phase(connections(conn, clients).await?, seconds, interval, move |mut c: Conn, client, i| async move {
        let name = format!("b{tag:x}-{client}-{i}");
        let res = c.call("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some(configmap(ns, &name))).await;
        let res = match res {
            Ok((201, _)) => Ok(()),
            Ok((code, body)) => Err(anyhow::anyhow!("create returned {code}: {}", String::from_utf8_lossy(&body))),
            Err(e) => Err(e),
        };
        (c, res)
    })
    .await
}

async fn etcd_creates(client: &etcd_client::Client, clients: usize, seconds: u64) -> anyhow::Result<PhaseResult> {
    let tag = rand::random::<u32>();
    let value = configmap("bench", "padding-to-the-same-size-as-stored");
    phase(vec![client.clone(); clients], seconds, None, move |mut c: etcd_client::Client, client, i| {
        let value = value.clone();
        async move {
            let key = format!("/registry/configmaps/bench/b{tag:x}-{client}-{i}");
            let res = etcd::create(&mut c, &key, &value).await;
            (c, res)
        }
    })
    .await
}

async fn create_namespace(c: &mut Conn, ns: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    let (code, _) = c.call("POST", "/api/v1/namespaces", Some(Bytes::from(serde_json::to_vec(&body)?))).await?;
    anyhow::ensure!(code == 201 || code == 409, "namespace create returned {code}");
    Ok(())
}

/// Fills `ns` up to `target` configmaps with 64 parallel clients.
async fn fill(conn: &Connector, ns: &'static str, have: usize, target: usize) -> anyhow::Result<()> {
    let clients = 64;
    let per = (target.saturating_sub(have)).div_ceil(clients);
    let mut tasks = Vec::new();
    for (k, mut c) in connections(conn, clients).await?.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let (code, body) = c
                    .call("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some(configmap(ns, &format!("f{have}-{k}-{i}"))))
                    .await?;
                anyhow::ensure!(code == 201, "fill create returned {code}: {}", String::from_utf8_lossy(&body));
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn list_latency(c: &mut Conn, ns: &str, reps: usize) -> anyhow::Result<(Duration, usize)> {
    let mut samples = Samples::default();
    let mut count = 0;
    for _ in 0..reps {
        let t0 = Instant::now();
        let (code, body) = c.call("GET", &format!("/api/v1/namespaces/{ns}/configmaps"), None).await?;
        samples.push(t0.elapsed());
        anyhow::ensure!(code == 200, "list returned {code}");
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        count = v["items"].as_array().map_or(0, Vec::len);
    }
    Ok((samples.quantile(0.5), count))
}

/// 100 watchers; creates at a steady pace; latency from just before the create request to the
/// moment each watcher has read the event.
async fn watch_latency(conn: &Connector, watchers: usize, events: usize) -> anyhow::Result<Samples> {
    let ns = "watch";
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut c = conn.connect().await?;
        let mut body = c.stream(&format!("/api/v1/namespaces/{ns}/configmaps?watch=true")).await?;
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut buf = Vec::new();
            while samples.len() < events {
                let Some(frame) = body.frame().await else { break };
                let Ok(data) = frame?.into_data() else { continue };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let v: serde_json::Value = serde_json::from_slice(&line)?;
                    let name = v["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    if let Some(t0) = sent.lock().expect("not poisoned").get(&name) {
                        samples.push(now - *t0);
                    }
                }
            }
            drop(c);
            anyhow::Ok(samples)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut writer = conn.connect().await?;
    for i in 0..events {
        let name = format!("w{i}");
        sent.lock().expect("not poisoned").insert(name.clone(), Instant::now());
        let (code, _) = writer.call("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some(configmap(ns, &name))).await?;
        anyhow::ensure!(code == 201, "watch-phase create returned {code}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = Samples::default();
    for t in tasks {
        all.extend(tokio::time::timeout(Duration::from_secs(60), t).await.context("watchers did not finish")???);
    }
    Ok(all)
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let tmp = args.work_dir.join(format!("skiff-bench-{}", std::process::id()));
    let result = run_in(&args, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn run_in(args: &ApiArgs, tmp: &std::path::Path) -> anyhow::Result<()> {
    let server = Server::start(tmp.join("skiff"), &[])?;
    let addr = format!("127.0.0.1:{}", server.port).parse()?;
    let conn = Connector::from_data_dir(&server.dir.join("tls"), addr)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mib(server.child.id());
    println!("## skiff bench api\n");
    println!("idle RSS after start: {idle_rss:.1} MiB (target ≤ 64 MiB)\n");
    let mut admin = conn.connect().await?;
    for ns in ["bench", "list", "watch"] {
        create_namespace(&mut admin, ns).await?;
    }

    let etcd = if args.etcd.is_empty() {
        None
    } else {
        Some(Etcd::start(&args.etcd, &tmp.join("etcd"), free_port()?, free_port()?).await.context("starting the etcd reference")?)
    };
    let etcd_client = match &etcd {
        Some(e) => Some(e.client().await?),
        None => None,
    };

    println!("| durable creates | skiff creates/s | p50 | p99 | etcd txn/s | p50 | p99 | skiff/etcd |");
    println!("|---|---|---|---|---|---|---|---|");
    for clients in [1usize, 16, 128] {
        let s = skiff_creates(&conn, "bench", clients, args.seconds, None).await?;
        let (erate, ep50, ep99) = match &etcd_client {
            Some(c) => {
                let e = etcd_creates(c, clients, args.seconds).await?;
                (e.rate(), ms(e.p50), ms(e.p99))
            }
            None => (0.0, "-".into(), "-".into()),
        };
        let ratio = if erate > 0.0 { format!("{:.2}×", s.rate() / erate) } else { "-".into() };
        println!("| {clients} clients | {:.0} | {} | {} | {erate:.0} | {ep50} | {ep99} | {ratio} |", s.rate(), ms(s.p50), ms(s.p99));
    }
    if !args.etcd.is_empty() {
        on_etcd_cluster(args, tmp, &[1, 16, 128]).await.context("skiff on a 3-member etcd")?;
    }
    let paced = skiff_creates(&conn, "bench", 16, args.seconds, Some(Duration::from_micros(16 * 500))).await?;
    println!(
        "\nat a fixed 2,000 creates/s (16 clients × 125/s): achieved {:.0}/s, p50 {}, p99 {} (target p99 ≤ 10 ms)\n",
        paced.rate(),
        ms(paced.p50),
        ms(paced.p99)
    );

    fill(&conn, "list", 0, 10_000).await?;
    let (l10k, n10k) = list_latency(&mut admin, "list", 5).await?;
    fill(&conn, "list", 10_000, args.objects).await?;
    let (l100k, n100k) = list_latency(&mut admin, "list", 3).await?;
    println!("list latency (median, full list, JSON): {n10k} objects {}, {n100k} objects {}", ms(l10k), ms(l100k));
    let big_rss = rss_mib(server.child.id());
    let (code, body) = admin.call("GET", "/api/v1/configmaps?limit=1", None).await?;
    anyhow::ensure!(code == 200, "count list returned {code}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let total = v["metadata"]["remainingItemCount"].as_i64().unwrap_or(0) + 1;
    println!("RSS with {total} ConfigMaps stored: {big_rss:.1} MiB\n");

    let mut w = watch_latency(&conn, args.watchers, 500).await?;
    println!(
        "watch delivery latency to {} watchers (500 events, {} deliveries): p50 {}, p99 {}",
        args.watchers,
        w.len(),
        ms(w.quantile(0.5)),
        ms(w.quantile(0.99))
    );
    if let Some(e) = &etcd {
        println!("\n(etcd reference: pid {}, one member, data in {})", e.pid(), tmp.join("etcd").display());
    }
    Ok(())
}
