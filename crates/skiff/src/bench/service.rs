//! `skiff bench service`: the proxy's rule sync for many Services, in a network namespace made for
//! the run. Measures what a change costs at 1,000 and 10,000 Services × N endpoints: the first
//! write into an empty table, a restarted proxy's rewrite of the same state, and one Service's
//! endpoints changing (the common case), each split into building the transaction and the
//! kernel applying it.
//!
//! Not measured yet (issue 7 keeps them open): requests/s through a cluster IP against the pod IP,
//! DNS queries/s.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::Args;
use skiff_proxy::model::{Endpoint, Proto, ServicePort};
use skiff_proxy::nft::{From, Nft, transaction};
use skiff_proxy::rules::{Options, Ruleset};

use super::stats::{Samples, ms};

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
        "| services | first write build/apply | restart rewrite build/apply | one Service's endpoints change p50 / p99 (build+apply) | script size first |"
    );
    println!("|---|---|---|---|---|");
    for &n in &args.services {
        nft.delete_table().await?;
        let t = Instant::now();
        let base = Ruleset::build(&ports(n, args.endpoints, 0), &opts);
        let model_ms = t.elapsed();
        let empty = nft.kernel().await?;
        let (b1, a1, size) = timed(&nft, From::Kernel(&empty), &base).await?;
        let kernel = nft.kernel().await?;
        let (b2, a2, _) = timed(&nft, From::Kernel(&kernel), &base).await?;
        let mut samples = Samples::default();
        let mut prev = base;
        let all = ports(n, args.endpoints, 0);
        for c in 0..args.changes {
            let mut next_ports = all.clone();
            // Service c's endpoints move (a rollout step): new addresses, same count.
            let i = (c * 7919) % n;
            for (k, e) in next_ports[i].endpoints.iter_mut().enumerate() {
                e.ip = ip(u32::from(Ipv4Addr::new(10, 200, 0, 1)), (c * args.endpoints + k) as u32);
            }
            let t = Instant::now();
            let next = Ruleset::build(&next_ports, &opts);
            let (_, _, _) = timed(&nft, From::Applied(&prev), &next).await?;
            samples.push(t.elapsed());
            prev = next;
        }
        println!(
            "| {n} | {} + {} / {} | {} / {} | {} / {} | {:.1} MiB |",
            ms(model_ms),
            ms(b1),
            ms(a1),
            ms(b2),
            ms(a2),
            ms(samples.quantile(0.5)),
            ms(samples.quantile(0.99)),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    nft.delete_table().await?;
    Ok(())
}
