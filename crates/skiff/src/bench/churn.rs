//! `skiff bench churn`: Deployments end to end through every control-plane component. N
//! Deployments × R replicas against simulated nodes (`skiff sim` child process): the deployment and
//! ReplicaSet controllers create the pods, the scheduler binds them, sim nodes report them Running;
//! measured until every Deployment reports all replicas available. The reference in the same run:
//! the same number of bare pods created already bound to the sim nodes (no controllers, no
//! scheduling), timed until all are Running — the floor of API writes plus the node side.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::client::Connector;
use super::scheduler::post_all_with;
use super::server::Server;
use super::stats::rss_mib;

#[derive(Args, Debug)]
pub struct ChurnArgs {
    /// Deployments to create.
    #[arg(long, default_value_t = 1000)]
    pub deployments: usize,
    /// Replicas per Deployment.
    #[arg(long, default_value_t = 10)]
    pub replicas: usize,
    /// Simulated nodes.
    #[arg(long, default_value_t = 500)]
    pub nodes: usize,
    /// Concurrent creating clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Give up after this many seconds per phase.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Directory for the server's data.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: std::path::PathBuf,
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deployment(i: usize, replicas: usize) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("d-{i}"), "namespace": "churn"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": format!("d-{i}")}},
            "template": {"metadata": {"labels": {"app": format!("d-{i}")}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]}}}})
}

fn bare_pod(i: usize, nodes: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i}"), "namespace": "reference", "labels": {"app": "reference"}},
        "spec": {"nodeName": format!("churn-{}", i % nodes), "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}})
}

fn available(d: &Deployment, want: usize) -> bool {
    let st = d.status.clone().unwrap_or_default();
    st.available_replicas == Some(want as i32)
        && st.updated_replicas == Some(want as i32)
        && st.observed_generation >= d.metadata.generation
}

/// Seconds from `t0` at which each of `n` Deployments became fully available.
async fn watch_deployments(api: Api<Deployment>, n: usize, want: usize, t0: Instant, limit: Duration) -> anyhow::Result<Vec<f64>> {
    let mut ready = HashSet::new();
    let mut times = Vec::with_capacity(n);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
    let deadline = tokio::time::Instant::now() + limit;
    while times.len() < n {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| anyhow::anyhow!("{} of {n} Deployments available before the timeout", times.len()))?;
        let Some(Ok(d)) = ev else { continue };
        if available(&d, want) && ready.insert(d.metadata.name.clone().unwrap_or_default()) {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// Seconds from `t0` until `n` pods of the namespace report Running.
async fn watch_running(api: Api<Pod>, n: usize, t0: Instant, limit: Duration) -> anyhow::Result<f64> {
    let mut running = HashSet::new();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
    let deadline = tokio::time::Instant::now() + limit;
    while running.len() < n {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| anyhow::anyhow!("{} of {n} pods Running before the timeout", running.len()))?;
        let Some(Ok(p)) = ev else { continue };
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            running.insert(p.metadata.name.clone().unwrap_or_default());
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// utime + stime of a process, in seconds (clock ticks are 100 Hz on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub async fn run(args: ChurnArgs) -> anyhow::Result<()> {
    let tmp = args.work_dir.join(format!("skiff-bench-churn-{}", std::process::id()));
    let result = run_in(&args, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn run_in(args: &ChurnArgs, tmp: &std::path::Path) -> anyhow::Result<()> {
    // The controller manager runs as its own process (as upstream's does) so its memory and CPU
    // show apart from the API server's.
    let server = Server::start(tmp.join("skiff"), &["--disable-controller-manager"])?;
    let kubeconfig = server.dir.join("kubeconfig.yaml");
    let cm = Sim(Command::new(std::env::current_exe()?)
        .args(["controller-manager", "--controllers-leader-elect=false", "--kubeconfig"])
        .arg(&kubeconfig)
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?);
    let client = crate::cmd::scheduler::client_from_kubeconfig(&kubeconfig).await?;
    let conn = Connector::from_data_dir(&server.dir.join("tls"), format!("127.0.0.1:{}", server.port).parse()?)?;
    let sim = Sim(Command::new(std::env::current_exe()?)
        .args(["sim", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--nodes", &args.nodes.to_string(), "--name-prefix", "churn-", "--pods", "250"])
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?);
    let nodes: Api<Node> = Api::all(client.clone());
    let t = Instant::now();
    while nodes.list(&Default::default()).await?.items.len() < args.nodes {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "simulated nodes did not register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let limit = Duration::from_secs(args.timeout);
    let total_pods = args.deployments * args.replicas;
    for ns in ["churn", "reference"] {
        post_all_with(&conn, vec![("/api/v1/namespaces".into(), json!({"metadata": {"name": ns}}))], 1).await?;
    }

    let t0 = Instant::now();
    let dwatch = tokio::spawn(watch_deployments(Api::namespaced(client.clone(), "churn"), args.deployments, args.replicas, t0, limit));
    let pwatch = tokio::spawn(watch_running(Api::namespaced(client.clone(), "churn"), total_pods, t0, limit));
    let items =
        (0..args.deployments).map(|i| ("/apis/apps/v1/namespaces/churn/deployments".to_string(), deployment(i, args.replicas))).collect();
    post_all_with(&conn, items, args.clients).await?;
    let created = t0.elapsed().as_secs_f64();
    let mut ready = dwatch.await??;
    let all_running = pwatch.await??;
    ready.sort_by(f64::total_cmp);
    let last = *ready.last().unwrap_or(&0.0);
    let median = ready[ready.len() / 2];
    let (server_rss, cm_rss, sim_rss) = (rss_mib(server.child.id()), rss_mib(cm.0.id()), rss_mib(sim.0.id()));
    let cpu = |pid: u32| cpu_seconds(pid);
    let (server_cpu, cm_cpu, sim_cpu) = (cpu(server.child.id()), cpu(cm.0.id()), cpu(sim.0.id()));

    let r0 = Instant::now();
    let rwatch = tokio::spawn(watch_running(Api::namespaced(client.clone(), "reference"), total_pods, r0, limit));
    let items = (0..total_pods).map(|i| ("/api/v1/namespaces/reference/pods".to_string(), bare_pod(i, args.nodes))).collect();
    post_all_with(&conn, items, args.clients).await?;
    let reference = rwatch.await??;

    println!("## skiff bench churn\n");
    println!(
        "{} Deployments × {} replicas on {} simulated nodes; creates posted by {} clients in {created:.1} s\n",
        args.deployments, args.replicas, args.nodes, args.clients
    );
    println!("| measurement | result |");
    println!("|---|---|");
    println!("| all {total_pods} pods Running | {all_running:.1} s |");
    println!("| all Deployments available | {last:.1} s (median Deployment {median:.1} s) |");
    println!("| Deployments available per second | {:.0} |", args.deployments as f64 / last);
    println!("| reference: {total_pods} bare pods, pre-bound, all Running | {reference:.1} s |");
    println!("| Deployments path / reference | {:.2}× |", all_running / reference);
    println!(
        "| RSS after the Deployments: server (API + scheduler) / controller manager / sim | {server_rss:.0} / {cm_rss:.0} / {sim_rss:.0} MiB |"
    );
    println!("| CPU until then: server / controller manager / sim | {server_cpu:.1} / {cm_cpu:.1} / {sim_cpu:.1} s |");
    drop(sim);
    drop(cm);
    Ok(())
}
