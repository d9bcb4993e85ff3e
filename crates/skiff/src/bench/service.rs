//! `skiff bench service`: the proxy's rule sync for many Services, in a network namespace made for
//! the run. Measures what a change costs at 1,000 and 10,000 Services × N endpoints: the first
//! write into an empty table, a restarted proxy's rewrite of the same state, and one Service's
//! endpoints changing (the common case), each split into building the transaction and the
//! kernel applying it.
//!
//! Then the data path with the largest table loaded (`traffic.rs`): requests/s to a pod through
//! its cluster IP against straight to its pod IP, and DNS queries/s and latency from a pod.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use clap::Args;
use skiff_proxy::desired::Desired;
use skiff_proxy::model::{Endpoint, Proto, ServicePort};
use skiff_proxy::nft::{From, Nft, transaction};
use skiff_proxy::rules::{Options, Ruleset};

use super::stats::{Samples, ms};
use super::traffic;

#[derive(Args, Debug)]
pub struct ServiceArgs {
    /// Service counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub services: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Single-Service changes timed per size.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Seconds per data-path measurement (0: rule sync only).
    #[arg(long, default_value_t = 5.0)]
    pub traffic_seconds: f64,
    /// Concurrent clients in the data-path measurements.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
}

fn ip(base: u32, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(base + n)
}

fn ports(n: usize, eps: usize, generation: usize) -> Vec<ServicePort> {
    let svc_base = u32::from(Ipv4Addr::new(10, 43, 0, 1));
    let ep_base = u32::from(Ipv4Addr::new(10, 64, 0, 1));
    (0..n)
        .map(|i| ServicePort {
            id: format!("bench/svc-{i}:http/tcp"),
            proto: Proto::Tcp,
            cluster_ips: vec![ip(svc_base, i as u32)],
            port: 80,
            // A quarter of them NodePorts (the range holds 2,768).
            node_port: (i % 4 == 0 && i / 4 < 2768).then(|| 30000 + (i / 4) as u16),
            external_ips: vec![],
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            endpoints: (0..eps)
                .map(|k| Endpoint {
                    ip: ip(ep_base, (i * eps + k + generation) as u32),
                    port: 8080,
                    local: k == 0,
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect(),
        })
        .collect()
}

/// The Service and EndpointSlice objects `ports` stands for, so a timed change includes the
/// proxy's first step too (objects from its watch caches → service ports).
fn objects(ports: &[ServicePort]) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let name = format!("svc-{i}");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {
                "type": if p.node_port.is_some() { "NodePort" } else { "ClusterIP" },
                "clusterIP": p.cluster_ips[0].to_string(),
                "ports": [{"name": "http", "port": p.port, "protocol": "TCP", "nodePort": p.node_port}],
            },
        }))
        .expect("static shape");
        let eps: Vec<serde_json::Value> = p
            .endpoints
            .iter()
            .map(|e| serde_json::json!({"addresses": [e.ip.to_string()], "conditions": {"ready": true}, "nodeName": if e.local { "bench" } else { "other" }}))
            .collect();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{name}-1"), "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"name": "http", "port": p.endpoints.first().map_or(8080, |e| e.port), "protocol": "TCP"}],
        }))
        .expect("static shape");
        services.push(Arc::new(svc));
        slices.push(Arc::new(slice));
    }
    (services, slices)
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

async fn timed(nft: &Nft, from: From<'_>, next: &Ruleset) -> anyhow::Result<(Duration, Duration, usize)> {
    let t = Instant::now();
    let script = transaction(from, next).script();
    let build = t.elapsed();
    let t = Instant::now();
    nft.apply(&script).await?;
    Ok((build, t.elapsed(), script.len()))
}

pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let ns = Netns(format!("skiff-bench-svc-{}", std::process::id()));
    anyhow::ensure!(std::process::Command::new("ip").args(["netns", "add", &ns.0]).status()?.success(), "ip netns add");
    let nft = Nft::in_netns(&ns.0);
    let opts = Options { cluster_cidr: Some("10.0.0.0/8".parse()?), service_cidr: "10.43.0.0/16".parse()? };
    println!(
        "proxy rule sync, {} endpoints per Service (ms; build = ruleset + transaction text, apply = nft -f - into the kernel)",
        args.endpoints
    );
    println!(
        "| services | first write build/apply | restart rewrite build/apply | one Service's endpoints change p50 / p99 (build+apply) | of which model + step / transaction / apply p50 | script size first |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &args.services {
        nft.delete_table().await?;
        let t = Instant::now();
        let base = Ruleset::build(&ports(n, args.endpoints, 0), &opts);
        let model_ms = t.elapsed();
        let empty = nft.kernel().await?;
        let (b1, a1, size) = timed(&nft, From::Kernel(&empty), &base).await?;
        let kernel = nft.kernel().await?;
        let (b2, a2, _) = timed(&nft, From::Kernel(&kernel), &base).await?;
        let (mut samples, mut builds, mut txs, mut applies) =
            (Samples::default(), Samples::default(), Samples::default(), Samples::default());
        let all = ports(n, args.endpoints, 0);
        let (services, slices) = objects(&all);
        let mut desired = Desired::new(&skiff_proxy::service_ports(&services, &slices, "bench"), &opts);
        let mut rebuilt = 0;
        drop(base);
        for c in 0..args.changes {
            let mut next_ports = all.clone();
            // Service c's endpoints move (a rollout step): new addresses, same count.
            let i = (c * 7919) % n;
            for (k, e) in next_ports[i].endpoints.iter_mut().enumerate() {
                e.ip = ip(u32::from(Ipv4Addr::new(10, 200, 0, 1)), (c * args.endpoints + k) as u32);
            }
            // What the proxy does on a change: every Service and slice from its caches to
            // service ports, then the changed ports' step.
            let (services, slices) = objects(&next_ports);
            let t = Instant::now();
            let modelled = skiff_proxy::service_ports(&services, &slices, "bench");
            assert_eq!(modelled.len(), next_ports.len());
            let step = desired.update(&modelled);
            rebuilt = rebuilt.max(step.rebuilt);
            builds.push(t.elapsed());
            let (tx, apply, _) = timed(&nft, From::Applied(&step.before), &step.after).await?;
            samples.push(t.elapsed());
            txs.push(tx);
            applies.push(apply);
        }
        println!(
            "| {n} | {} + {} / {} | {} / {} | {} / {} | {} / {} / {} ({rebuilt} ports rebuilt at most) | {:.1} MiB |",
            ms(model_ms),
            ms(b1),
            ms(a1),
            ms(b2),
            ms(a2),
            ms(samples.quantile(0.5)),
            ms(samples.quantile(0.99)),
            ms(builds.quantile(0.5)),
            ms(txs.quantile(0.5)),
            ms(applies.quantile(0.5)),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    if args.traffic_seconds > 0.0 {
        data_path(&args, &ns.0, &nft, &opts).await?;
    }
    nft.delete_table().await?;
    Ok(())
}

fn one_backend(id: &str, proto: Proto, cluster_ip: Ipv4Addr, port: u16, backend: Ipv4Addr, backend_port: u16) -> ServicePort {
    ServicePort {
        id: id.into(),
        proto,
        cluster_ips: vec![cluster_ip],
        port,
        node_port: None,
        external_ips: vec![],
        external_local: false,
        internal_local: false,
        affinity_timeout: None,
        endpoints: vec![Endpoint { ip: backend, port: backend_port, local: true, ready: true, serving: true, terminating: false }],
    }
}

async fn data_path(args: &ServiceArgs, node: &str, nft: &Nft, opts: &Options) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let n = args.services.iter().copied().max().unwrap_or(1000);
    let pods = Arc::new(traffic::Pods::create(node)?);
    let stop = Arc::new(AtomicBool::new(false));
    traffic::serve_http(&pods, stop.clone())?;
    let zone = traffic::zone_services(n);
    let _dns = traffic::serve_dns(node, &zone).await?;
    let mut all = ports(n, args.endpoints, 0);
    all.push(one_backend("bench/web:http/tcp", Proto::Tcp, traffic::SERVICE_IP, 80, traffic::SERVER_IP, traffic::ENDPOINT_PORT));
    all.push(one_backend("kube-system/kube-dns:dns/udp", Proto::Udp, traffic::DNS_IP, 53, traffic::NODE_CLIENT_SIDE, 10053));
    nft.delete_table().await?;
    let empty = nft.kernel().await?;
    nft.apply(&transaction(From::Kernel(&empty), &Ruleset::build(&all, opts)).script()).await?;

    let (secs, clients) = (args.traffic_seconds, args.clients);
    let rate = |target: Ipv4Addr, port: u16, secs: f64| {
        let pods = pods.clone();
        tokio::task::spawn_blocking(move || traffic::http_rate(&pods, target, port, clients, secs))
    };
    // Warm both paths, then alternate so drift on a noisy machine hits both alike.
    rate(traffic::SERVER_IP, traffic::DIRECT_PORT, 0.5).await??;
    rate(traffic::SERVICE_IP, 80, 0.5).await??;
    // Many short rounds in ABBA order, so drift on a noisy machine (conntrack filling up,
    // other work) lands on both paths alike; the per-round ratios show the spread.
    let rounds = ((secs as usize) / 2).max(2) * 2;
    let (mut direct, mut via, mut failed) = (0.0, 0.0, 0);
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let slice = secs / rounds as f64;
        let (d, v) = if r % 2 == 0 {
            let d = rate(traffic::SERVER_IP, traffic::DIRECT_PORT, slice).await??;
            (d, rate(traffic::SERVICE_IP, 80, slice).await??)
        } else {
            let v = rate(traffic::SERVICE_IP, 80, slice).await??;
            (rate(traffic::SERVER_IP, traffic::DIRECT_PORT, slice).await??, v)
        };
        direct += d.0 / rounds as f64;
        via += v.0 / rounds as f64;
        failed += d.1 + v.1;
        ratios.push(v.0 / d.0);
    }
    ratios.sort_by(f64::total_cmp);
    println!();
    println!(
        "HTTP from a pod to a pod on this node ({n} Services in the table, {clients} clients, new connection per request, {rounds} alternating rounds): pod IP {direct:.0} req/s, cluster IP {via:.0} req/s, ratio {:.3} (rounds {:.3}..{:.3}; {failed} failed)",
        via / direct,
        ratios[0],
        ratios[ratios.len() - 1],
    );
    let pods2 = pods.clone();
    let (qps, mut samples, dns_failed) = tokio::task::spawn_blocking(move || traffic::dns_rate(&pods2, n, clients, secs)).await??;
    traffic::print_dns(qps, &mut samples, dns_failed, n, clients);
    stop.store(true, Ordering::Relaxed);
    Ok(())
}
