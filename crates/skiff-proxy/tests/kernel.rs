//! The generated transactions against a real kernel, in a network namespace made for each test
//! (root and nft needed, as for the rest of the suite).

use std::process::Command;

use skiff_proxy::model::{Endpoint, Proto, ServicePort};
use skiff_proxy::nft::{From, Nft};
use skiff_proxy::rules::{Options, Ruleset, hash_name};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("skiff-pxt-{}-{tag}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().unwrap().success();
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn opts() -> Options {
    Options { cluster_cidr: Some("10.42.0.0/16".parse().unwrap()), service_cidr: "10.43.0.0/16".parse().unwrap() }
}

fn port(name: &str, ip: &str, eps: usize, affinity: Option<u32>) -> ServicePort {
    ServicePort {
        id: format!("ns/{name}:http/tcp"),
        proto: Proto::Tcp,
        cluster_ips: vec![ip.parse().unwrap()],
        port: 80,
        node_port: Some(30000 + (ip.rsplit('.').next().unwrap().parse::<u16>().unwrap())),
        external_ips: vec!["10.99.0.1".parse().unwrap()],
        external_local: name.ends_with("local"),
        internal_local: false,
        affinity_timeout: affinity,
        endpoints: (0..eps)
            .map(|i| Endpoint {
                ip: format!("10.42.{}.{}", i % 2, 10 + i).parse().unwrap(),
                port: 8080,
                local: i % 2 == 0,
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect(),
    }
}

#[tokio::test]
async fn transactions_apply_and_converge() {
    let ns = Netns::new("conv");
    let nft = Nft::in_netns(&ns.0);
    let o = opts();

    // A fresh start: a full write.
    let first =
        Ruleset::build(&[port("a", "10.43.0.7", 3, None), port("b-local", "10.43.0.8", 2, Some(30)), port("c", "10.43.0.9", 0, None)], &o);
    let k = nft.kernel().await.unwrap();
    assert!(k.chains.is_empty());
    nft.apply(&skiff_proxy::nft::transaction(From::Kernel(&k), &first).script()).await.unwrap();
    let listed = nft.list().await.unwrap();
    assert!(listed.contains("10.43.0.7 . tcp . 80 : goto svc-"), "{listed}");
    assert!(listed.contains("10.43.0.9 . tcp . 80"), "no-endpoint service listed for rejection:\n{listed}");

    // Incremental: b loses affinity and an endpoint, c gains one, a goes away.
    let second = Ruleset::build(&[port("b-local", "10.43.0.8", 1, None), port("c", "10.43.0.9", 1, None)], &o);
    nft.apply(&skiff_proxy::nft::transaction(From::Applied(&first), &second).script()).await.unwrap();
    let k = nft.kernel().await.unwrap();
    assert!(!k.chains.contains(&hash_name("svc", "ns/a:http/tcp")), "a's chains are gone");
    assert!(k.chains.contains(&hash_name("svc", "ns/c:http/tcp")));
    assert!(!k.sets.iter().any(|s| s.starts_with("aff-")), "affinity sets removed: {:?}", k.sets);

    // A restart (full rewrite from the kernel's names) of the same state leaves an identical table.
    let before = nft.list().await.unwrap();
    nft.apply(&skiff_proxy::nft::transaction(From::Kernel(&k), &second).script()).await.unwrap();
    assert_eq!(nft.list().await.unwrap(), before);

    // And a restart into different state removes the strays.
    let third = Ruleset::build(&[port("d", "10.43.0.10", 2, Some(60))], &o);
    nft.apply(&skiff_proxy::nft::transaction(From::Kernel(&k), &third).script()).await.unwrap();
    let k = nft.kernel().await.unwrap();
    let expected: std::collections::BTreeSet<String> =
        third.chains.keys().cloned().chain(skiff_proxy::rules::base_chains().iter().map(|c| c.0.to_string())).collect();
    assert_eq!(k.chains, expected);
    nft.delete_table().await.unwrap();
    assert!(nft.kernel().await.unwrap().chains.is_empty());
}

/// Incremental steps (`Desired::update`) applied to the kernel one after another end in the same
/// table as a fresh full write of the final state.
#[tokio::test]
async fn incremental_steps_match_a_full_write() {
    let ns = Netns::new("steps");
    let nft = Nft::in_netns(&ns.0);
    let o = opts();
    let states = [
        vec![port("a", "10.43.0.7", 3, None), port("b-local", "10.43.0.8", 2, Some(30)), port("c", "10.43.0.9", 0, None)],
        vec![port("a", "10.43.0.7", 5, None), port("b-local", "10.43.0.8", 1, None), port("c", "10.43.0.9", 2, None)],
        vec![port("c", "10.43.0.9", 2, Some(10)), port("e", "10.43.0.11", 4, None)],
    ];
    let mut d = skiff_proxy::desired::Desired::new(&states[0], &o);
    let k = nft.kernel().await.unwrap();
    nft.apply(&skiff_proxy::nft::transaction(From::Kernel(&k), &d.ruleset()).script()).await.unwrap();
    for s in &states[1..] {
        let step = d.update(s);
        nft.apply(&skiff_proxy::nft::transaction(From::Applied(&step.before), &step.after).script()).await.unwrap();
    }
    let stepped = nft.list().await.unwrap();
    nft.delete_table().await.unwrap();
    let k = nft.kernel().await.unwrap();
    nft.apply(&skiff_proxy::nft::transaction(From::Kernel(&k), &Ruleset::build(&states[2], &o)).script()).await.unwrap();
    let full = nft.list().await.unwrap();
    // Same chains, maps and sets with the same content; nft lists them in creation order, and
    // steps keep endpoint maps declared once used (a full write drops the empty ones).
    let blocks = |t: &str| {
        let mut out: Vec<String> = Vec::new();
        for l in t.lines().filter(|l| !l.trim().is_empty() && l.starts_with('\t')) {
            if !l.starts_with("\t\t") && l.trim() != "}" {
                out.push(String::new());
            }
            out.last_mut().unwrap().push_str(l);
        }
        out.retain(|b| !b.starts_with("\tmap endpoint") || b.contains("elements"));
        out.sort();
        out
    };
    assert_eq!(blocks(&stepped), blocks(&full));
    nft.delete_table().await.unwrap();
}

/// A UDP endpoint leaving its Service: the step names its flows, and clearing them deletes the
/// kernel's entry for the translated flow and leaves other flows alone.
#[tokio::test]
async fn a_removed_udp_endpoint_loses_its_conntrack_entries() {
    let ns = Netns::new("ct");
    let nft = Nft::in_netns(&ns.0);
    let mut dns = port("dns", "10.43.0.53", 2, None);
    dns.proto = Proto::Udp;
    dns.id = "ns/dns:dns/udp".into();
    let mut d = skiff_proxy::desired::Desired::new(std::slice::from_ref(&dns), &opts());
    let k = nft.kernel().await.unwrap();
    nft.apply(&skiff_proxy::nft::transaction(From::Kernel(&k), &d.ruleset()).script()).await.unwrap();
    let (gone, stays) = (dns.endpoints[0].clone(), dns.endpoints[1].clone());
    // Flows as the kernel would have translated them: a client talking to the cluster IP,
    // answered by each endpoint.
    for (sport, ep) in [("5000", &gone), ("5001", &stays)] {
        let ip = ep.ip.to_string();
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "conntrack", "-I", "-p", "udp", "-s", "10.42.0.9", "-d", "10.43.0.53", "--sport", sport])
            .args([
                "--dport",
                "80",
                "-r",
                &ip,
                "-q",
                "10.42.0.9",
                "--reply-port-src",
                "8080",
                "--reply-port-dst",
                sport,
                "-t",
                "60",
                "-u",
                "SEEN_REPLY",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "conntrack -I: {out:?}");
    }
    let mut next = dns.clone();
    next.endpoints.remove(0);
    let step = d.update(&[next]);
    nft.apply(&skiff_proxy::nft::transaction(From::Applied(&step.before), &step.after).script()).await.unwrap();
    let ct = skiff_proxy::conntrack::Conntrack { netns: Some(ns.0.clone()), ..Default::default() };
    assert_eq!(ct.clear(&step.stale).await.unwrap(), 1, "{:?}", step.stale);
    let left = Command::new("ip").args(["netns", "exec", &ns.0, "conntrack", "-L", "-p", "udp"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains(&format!("src={} ", gone.ip)), "{left}");
    assert!(left.contains(&format!("src={} ", stays.ip)), "{left}");
    assert_eq!(ct.clear(&step.stale).await.unwrap(), 0, "nothing left to delete is not an error");
}
