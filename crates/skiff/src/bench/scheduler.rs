//! `skiff bench scheduler`: upstream scheduler_perf's shapes end to end through the API. Nodes and
//! pods are API objects (no kubelet needed to schedule); a `skiff scheduler` child process does the
//! work; a watch counts real bindings. The reference in the same run: bindings/s the API server
//! accepts when a client posts them with no scheduling work at all.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::client::{Conn, Connector};
use super::server::Server;
use super::stats::rss_mib;

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5000)]
    pub nodes: usize,
    /// Pods already placed before the measurement.
    #[arg(long, default_value_t = 1000)]
    pub placed: usize,
    /// Pods measured per shape.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Shapes to run: basic, node-affinity, pod-anti-affinity.
    #[arg(long, value_delimiter = ',', default_value = "basic,node-affinity,pod-anti-affinity")]
    pub shapes: Vec<String>,
    /// Directory for the server's data.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: std::path::PathBuf,
}

const ZONES: usize = 10;
const CLIENTS: usize = 32;
/// The binding reference uses as many connections as the create benchmark's top level, so it
/// shows what the API can take, not one client's latency.
const REFERENCE_CLIENTS: usize = 128;

fn node(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{i}"), "labels": {
            "kubernetes.io/hostname": format!("node-{i}"), "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES)}},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"}, "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pod(ns: &str, name: &str, shape: &str) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": shape}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}]}});
    match shape {
        "node-affinity" => {
            let zones: Vec<String> = (0..ZONES / 2).map(|z| format!("zone-{z}")).collect();
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": zones}]}]}}});
        }
        "pod-anti-affinity" => {
            p["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": shape}}, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        _ => {}
    }
    p
}

/// POSTs `bodies` to their paths over `CLIENTS` connections; every answer must be 201.
async fn post_all(conn: &Connector, items: Vec<(String, Value)>) -> anyhow::Result<()> {
    post_all_with(conn, items, CLIENTS).await
}

pub(super) async fn post_all_with(conn: &Connector, items: Vec<(String, Value)>, clients: usize) -> anyhow::Result<()> {
    let chunks: Vec<Vec<(String, Value)>> = {
        let per = items.len().div_ceil(clients).max(1);
        let mut it = items.into_iter();
        (0..clients).map(|_| it.by_ref().take(per).collect()).collect()
    };
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut c = conn.connect().await?;
        tasks.push(tokio::spawn(async move {
            for (path, body) in chunk {
                let (code, resp) = c.call("POST", &path, Some(Bytes::from(serde_json::to_vec(&body)?))).await?;
                anyhow::ensure!(code == 201, "POST {path}: {code} {}", String::from_utf8_lossy(&resp));
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn resource_version(c: &mut Conn, path: &str) -> anyhow::Result<String> {
    let (code, body) = c.call("GET", &format!("{path}?limit=1"), None).await?;
    anyhow::ensure!(code == 200, "list {path}: {code}");
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string())
}

struct Throughput {
    pods: usize,
    secs: f64,
    per_second: Vec<usize>,
}

impl Throughput {
    fn avg(&self) -> f64 {
        self.pods as f64 / self.secs.max(1e-9)
    }
    fn quantile(&self, q: f64) -> usize {
        let mut v = self.per_second.clone();
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

/// Counts first bindings seen on a pod watch until `want` pods are bound (or 5 minutes pass).
async fn count_bindings(conn: &Connector, ns: &str, rv: &str, want: usize) -> anyhow::Result<Throughput> {
    let mut c = conn.connect().await?;
    let mut body = c.stream(&format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}")).await?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut buf = Vec::new();
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    let mut per_second: Vec<usize> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < want {
        let frame = tokio::time::timeout_at(deadline.into(), body.frame()).await.context("scheduling did not finish in 5 minutes")?;
        let Some(frame) = frame else { anyhow::bail!("watch ended after {} bindings", seen.len()) };
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: Value = serde_json::from_slice(&line)?;
            let obj = &ev["object"];
            if obj["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
                && seen.insert(obj["metadata"]["name"].as_str().unwrap_or_default().to_string())
            {
                let now = Instant::now();
                let t0 = *first.get_or_insert(now);
                let sec = now.duration_since(t0).as_secs() as usize;
                if per_second.len() <= sec {
                    per_second.resize(sec + 1, 0);
                }
                per_second[sec] += 1;
                last = now;
            }
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    // The last bucket is partial; per-second quantiles use full seconds only.
    if per_second.len() > 1 {
        per_second.pop();
    }
    Ok(Throughput { pods: want, secs, per_second })
}

fn start_scheduler(server: &Server) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(std::env::current_exe()?)
        .args(["scheduler", "--leader-elect=false", "--kubeconfig"])
        .arg(server.dir.join("kubeconfig.yaml"))
        .env("SKIFF_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?)
}

async fn shape(server: &Server, conn: &Connector, args: &SchedulerArgs, shape: &str) -> anyhow::Result<()> {
    let ns = format!("sched-{shape}");
    let mut admin = conn.connect().await?;
    let (code, _) = admin.call("POST", "/api/v1/namespaces", Some(Bytes::from(json!({"metadata": {"name": ns}}).to_string()))).await?;
    anyhow::ensure!(code == 201, "namespace {ns}: {code}");
    // Anti-affinity allows one pod per node.
    let pods = if shape == "pod-anti-affinity" { args.pods.min(args.nodes) } else { args.pods };
    let items = (0..pods).map(|i| (format!("/api/v1/namespaces/{ns}/pods"), pod(&ns, &format!("p-{i}"), shape))).collect();
    post_all(conn, items).await?;
    let rv = resource_version(&mut admin, &format!("/api/v1/namespaces/{ns}/pods")).await?;
    let mut sched = start_scheduler(server)?;
    let started = Instant::now();
    let result = count_bindings(conn, &ns, &rv, pods).await;
    let rss = rss_mib(sched.id());
    let _ = sched.kill();
    let _ = sched.wait();
    let t = result?;
    println!(
        "| {shape} | {} | {:.0} pods/s | {} | {} | {:.1} s | {:.0} MiB |",
        pods,
        t.avg(),
        t.quantile(0.5),
        t.quantile(0.99),
        started.elapsed().as_secs_f64(),
        rss
    );
    Ok(())
}

/// The reference: bindings posted directly (round-robin nodes) by the same number of clients.
async fn reference(conn: &Connector, args: &SchedulerArgs) -> anyhow::Result<f64> {
    let ns = "bind-reference";
    let mut admin = conn.connect().await?;
    admin.call("POST", "/api/v1/namespaces", Some(Bytes::from(json!({"metadata": {"name": ns}}).to_string()))).await?;
    let items = (0..args.pods)
        .map(|i| {
            let mut p = pod(ns, &format!("r-{i}"), "basic");
            p["spec"]["schedulerName"] = json!("nobody");
            (format!("/api/v1/namespaces/{ns}/pods"), p)
        })
        .collect();
    post_all(conn, items).await?;
    let binds = (0..args.pods)
        .map(|i| {
            let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": format!("r-{i}")},
                "target": {"apiVersion": "v1", "kind": "Node", "name": format!("node-{}", i % args.nodes)}});
            (format!("/api/v1/namespaces/{ns}/pods/r-{i}/binding"), b)
        })
        .collect();
    let t0 = Instant::now();
    post_all_with(conn, binds, REFERENCE_CLIENTS).await?;
    Ok(args.pods as f64 / t0.elapsed().as_secs_f64())
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let tmp = args.work_dir.join(format!("skiff-bench-sched-{}", std::process::id()));
    let result = run_in(&args, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn run_in(args: &SchedulerArgs, tmp: &std::path::Path) -> anyhow::Result<()> {
    let server = Server::start(tmp.join("skiff"), &["--disable-scheduler"])?;
    let conn = Connector::from_data_dir(&server.dir.join("tls"), format!("127.0.0.1:{}", server.port).parse()?)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    post_all(&conn, (0..args.nodes).map(|i| ("/api/v1/nodes".to_string(), node(i))).collect()).await?;
    let nodes_secs = t0.elapsed().as_secs_f64();
    let mut admin = conn.connect().await?;
    admin.call("POST", "/api/v1/namespaces", Some(Bytes::from(json!({"metadata": {"name": "placed"}}).to_string()))).await?;
    let placed = (0..args.placed)
        .map(|i| {
            let mut p = pod("placed", &format!("placed-{i}"), "placed");
            p["spec"]["nodeName"] = json!(format!("node-{}", i % args.nodes));
            ("/api/v1/namespaces/placed/pods".to_string(), p)
        })
        .collect();
    post_all(&conn, placed).await?;
    println!("## skiff bench scheduler\n");
    println!("{} nodes registered in {nodes_secs:.1} s; {} pods pre-placed\n", args.nodes, args.placed);
    println!("| shape | pods | average | per-second p50 | per-second p99 | wall (incl. scheduler start) | scheduler RSS |");
    println!("|---|---|---|---|---|---|---|");
    for s in &args.shapes {
        anyhow::ensure!(matches!(s.as_str(), "basic" | "node-affinity" | "pod-anti-affinity"), "unknown shape {s:?}");
        shape(&server, &conn, args, s).await?;
    }
    let r = reference(&conn, args).await?;
    println!("\nreference: {r:.0} bindings/s posted directly by {REFERENCE_CLIENTS} clients (no scheduling work)");
    println!("server RSS at the end: {:.0} MiB", rss_mib(server.child.id()));
    Ok(())
}
