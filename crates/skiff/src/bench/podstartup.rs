//! `skiff bench pod-startup`: pods created one by one and many at once, each timed from the
//! create request to the moment a watch sees it Running, against the raw CRI floor measured in
//! the same run (RunPodSandbox + CreateContainer + StartContainer of the same image with the
//! configs the kubelet would send, called directly). Also the agent's idle RSS, with
//! containerd's reported separately. Everything runs in a sandbox (sandbox.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use skiff_kubelet::cri::{Cri, v1 as cri};
use skiff_kubelet::pods::spec;
use tokio::sync::Notify;

use super::sandbox::{BUSYBOX, NODE_IP, Sandbox};
use super::stats::{Samples, ms, rss_mib};

#[derive(Args, Debug)]
pub struct PodStartupArgs {
    /// Pods created one after the other (each waited for).
    #[arg(long, default_value_t = 100)]
    pub sequential: usize,
    /// Pods created at once.
    #[arg(long, default_value_t = 30)]
    pub parallel: usize,
    /// Where the sandbox's data goes.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
    /// Internal: the measuring half, run inside the sandbox's network namespace.
    #[arg(long, hide = true)]
    pub inner_kubeconfig: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub inner_data_dir: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub inner_cgroup_root: Option<String>,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // nsenter forked the real process as its child: stop that one first.
        let pid = self.0.id();
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for k in kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()) {
            // SAFETY: signalling a child of a process we started.
            unsafe { libc::kill(k, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?.split_whitespace().next()?.parse().ok()
}

fn children_all(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(kids.split_whitespace().filter_map(|k| k.parse::<u32>().ok()));
    }
    out
}

pub async fn run(args: PodStartupArgs) -> anyhow::Result<()> {
    if let Some(kc) = &args.inner_kubeconfig {
        let data = args.inner_data_dir.clone().context("--inner-data-dir")?;
        return inner(&args, kc, &data, args.inner_cgroup_root.as_deref().unwrap_or("/")).await;
    }
    let dir = args.work_dir.join(format!("skiff-bench-pods-{:08x}", rand::random::<u32>()));
    let result = outer(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn outer(args: &PodStartupArgs, dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let sandbox = Sandbox::create(dir)?;
    let data = dir.join("server");
    let server = Proc(
        sandbox
            .enter()?
            .arg(&exe)
            .args(["server", "--data-dir"])
            .arg(&data)
            .args(["--secure-port", "6443", "--bind-address", "0.0.0.0", "--advertise-address", NODE_IP, "--disable-agent"])
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let kubeconfig = data.join("kubeconfig.yaml");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        anyhow::ensure!(Instant::now() < deadline, "skiff server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cgroup_root = format!("/{}", sandbox.ns);
    let agent_dir = dir.join("agent");
    let agent = Proc(
        sandbox
            .enter()?
            .arg(&exe)
            .args(["agent", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(&agent_dir)
            .args(["--node-name", "node1", "--node-ip", NODE_IP, "--cgroup-root", &cgroup_root])
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let status = sandbox
        .in_net(&exe.display().to_string())
        .args(["bench", "pod-startup", "--sequential", &args.sequential.to_string(), "--parallel", &args.parallel.to_string()])
        .arg("--inner-kubeconfig")
        .arg(&kubeconfig)
        .arg("--inner-data-dir")
        .arg(&agent_dir)
        .args(["--inner-cgroup-root", &format!("{cgroup_root}/floor")])
        .status()?;
    anyhow::ensure!(status.success(), "the measuring half failed");
    // Idle: every benchmark pod is gone; give the agent a moment to settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let agent_pid = child_of(agent.0.id()).context("the agent process")?;
    let containerd = children_all(agent_pid)
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "containerd"));
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap_or_default();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default();
    println!(
        "agent idle RSS (skiff agent, no pods): {:.1} MiB (anon {}, file {}, threads {})",
        rss_mib(agent_pid),
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:")
    );
    if let Some(c) = containerd {
        println!("containerd RSS (reported separately): {:.1} MiB", rss_mib(c));
    }
    drop(agent);
    drop(server);
    drop(sandbox);
    Ok(())
}

fn bench_pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"bench": "pod-startup"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sleep", "3600"]}]
        }
    }))
    .expect("a valid pod")
}

/// When a watch first saw each pod Running.
#[derive(Default)]
struct Seen {
    running: Mutex<HashMap<String, Instant>>,
    notify: Notify,
}

async fn wait_running(seen: &Seen, name: &str, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = seen.notify.notified();
        if let Some(t) = seen.running.lock().expect("lock").get(name) {
            return Ok(*t);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => anyhow::bail!("pod {name} not Running in {timeout:?}"),
        }
    }
}

async fn inner(args: &PodStartupArgs, kubeconfig: &Path, agent_dir: &Path, cgroup_root: &str) -> anyhow::Result<()> {
    let client = crate::cmd::scheduler::client_from_kubeconfig(kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes
            .get_opt("node1")
            .await?
            .and_then(|n| n.status?.conditions?.into_iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "node1 not Ready in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let seen = Arc::new(Seen::default());
    {
        let seen = seen.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut w = watcher::watcher(pods, watcher::Config::default().labels("bench=pod-startup")).boxed();
            while let Some(ev) = w.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                {
                    let now = Instant::now();
                    seen.running.lock().expect("lock").entry(p.metadata.name.clone().unwrap_or_default()).or_insert(now);
                    seen.notify.notify_waiters();
                }
            }
        });
    }
    let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    let gone = |name: String| {
        let pods = pods.clone();
        async move {
            while pods.get_opt(&name).await.ok().flatten().is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Warm-up: the image is pulled once, as the floor's image is present too.
    pods.create(&PostParams::default(), &bench_pod("warmup")).await?;
    wait_running(&seen, "warmup", Duration::from_secs(120)).await?;
    pods.delete("warmup", &dp).await?;
    gone("warmup".into()).await;

    let mut seq = Samples::default();
    for i in 0..args.sequential {
        let name = format!("seq-{i}");
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &bench_pod(&name)).await?;
        let t = wait_running(&seen, &name, Duration::from_secs(60)).await?;
        seq.push(t - t0);
        pods.delete(&name, &dp).await?;
        gone(name).await;
    }
    let t0 = Instant::now();
    let creates = (0..args.parallel).map(|i| {
        let pods = pods.clone();
        let seen = seen.clone();
        async move {
            let name = format!("par-{i}");
            let start = Instant::now();
            pods.create(&PostParams::default(), &bench_pod(&name)).await?;
            let t = wait_running(&seen, &name, Duration::from_secs(120)).await?;
            anyhow::Ok(t - start)
        }
    });
    let mut par = Samples::default();
    for r in futures::future::join_all(creates).await {
        par.push(r?);
    }
    let par_all = t0.elapsed();
    for i in 0..args.parallel {
        pods.delete(&format!("par-{i}"), &dp).await?;
    }
    for i in 0..args.parallel {
        gone(format!("par-{i}")).await;
    }

    let cri = Cri::connect(&agent_dir.join("containerd").join("containerd.sock"))?;
    let image = cri.image_status(BUSYBOX).await?.context("the busybox image after the warm-up")?.id;
    let floor_dir = agent_dir.join("floor-logs");
    let mut floor_seq = Samples::default();
    for i in 0..args.sequential {
        let (d, id) = raw_cri(&cri, &format!("floor-seq-{i}"), &image, cgroup_root, &floor_dir).await?;
        floor_seq.push(d);
        skiff_kubelet::pods::remove_sandbox(&cri, &id, 0).await;
    }
    let t1 = Instant::now();
    let runs = (0..args.parallel).map(|i| {
        let cri = cri.clone();
        let image = image.clone();
        let floor_dir = floor_dir.clone();
        async move { raw_cri(&cri, &format!("floor-par-{i}"), &image, cgroup_root, &floor_dir).await }
    });
    let mut floor_par = Samples::default();
    let mut ids = Vec::new();
    for r in futures::future::join_all(runs).await {
        let (d, id) = r?;
        floor_par.push(d);
        ids.push(id);
    }
    let floor_par_all = t1.elapsed();
    for id in ids {
        skiff_kubelet::pods::remove_sandbox(&cri, &id, 0).await;
    }
    let _ = skiff_kubelet::cgroups::remove(cgroup_root);

    let report = |what: &str, s: &mut Samples, f: &mut Samples| {
        let (p50, p99, f50, f99) = (s.quantile(0.5), s.quantile(0.99), f.quantile(0.5), f.quantile(0.99));
        println!(
            "{what}: create → Running (watch) p50 {} p99 {} | raw CRI floor p50 {} p99 {} | p99 ratio {:.2}×",
            ms(p50),
            ms(p99),
            ms(f50),
            ms(f99),
            p99.as_secs_f64() / f99.as_secs_f64().max(1e-9)
        );
    };
    report(&format!("{} pods one by one", args.sequential), &mut seq, &mut floor_seq);
    report(&format!("{} pods at once", args.parallel), &mut par, &mut floor_par);
    println!("{} pods at once, all Running after {} (floor: all started after {})", args.parallel, ms(par_all), ms(floor_par_all));
    Ok(())
}

/// RunPodSandbox + CreateContainer + StartContainer with the configs the kubelet builds for the
/// same pod, timed; returns the duration and the sandbox id.
async fn raw_cri(cri: &Cri, name: &str, image: &str, cgroup_root: &str, log_dir: &Path) -> anyhow::Result<(Duration, String)> {
    let mut pod = bench_pod(name);
    pod.metadata.namespace = Some("floor".into());
    pod.metadata.uid = Some(format!("{:032x}", rand::random::<u128>()));
    let logs = log_dir.join(name);
    std::fs::create_dir_all(&logs)?;
    let sc = spec::sandbox_config(&pod, 0, cgroup_root, &logs.display().to_string(), &Default::default());
    let c = pod.spec.as_ref().expect("spec").containers[0].clone();
    let cc = spec::container_config(spec::ContainerInput {
        pod: &pod,
        container: &c,
        init: false,
        attempt: 0,
        image_ref: image.into(),
        envs: vec![],
        mounts: vec![],
        node_memory: 0,
        hash: spec::container_hash(&c),
    });
    let t0 = Instant::now();
    let id = cri
        .runtime
        .clone()
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(sc.clone()), runtime_handler: String::new() })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let cid = cri
        .runtime
        .clone()
        .create_container(cri::CreateContainerRequest { pod_sandbox_id: id.clone(), config: Some(cc), sandbox_config: Some(sc) })
        .await?
        .into_inner()
        .container_id;
    cri.runtime.clone().start_container(cri::StartContainerRequest { container_id: cid }).await?;
    Ok((t0.elapsed(), id))
}
