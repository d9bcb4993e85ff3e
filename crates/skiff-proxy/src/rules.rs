//! The nftables ruleset for a set of service ports, as data: named regular chains with their rule
//! lines, and the elements of the table's maps and sets. `nft.rs` turns the difference between
//! two of these into one atomic transaction.
//!
//! Shape (one `ip skiff` table, after upstream's nftables proxy mode):
//! - `nat-prerouting` / `nat-output` jump to `services`: a verdict map from
//!   (cluster or external IP, protocol, port) to the service's chain, then — for addresses of this
//!   node, localhost included — a verdict map from (protocol, nodePort).
//! - `svc-*` (traffic to the cluster IP) and `ext-*` (nodePort / LoadBalancer / external IPs) mark
//!   what must be masqueraded and go to `clu-*` (all usable endpoints) or `loc-*` (this node's),
//!   which DNAT to one endpoint with equal probability (`numgen random`), or through `sep-*`
//!   chains that remember the client in a timeout set for sessionAffinity ClientIP.
//! - `nat-postrouting` masquerades marked packets and hairpin traffic (a pod reaching itself
//!   through its Service).
//! - Filter hooks (prerouting after DNAT, output, input) reject new connections to services without endpoints and to any other address
//!   of the service CIDR, so nothing aimed at a service IP is forwarded anywhere else.

use std::collections::BTreeMap;
use std::fmt::Write;

use ipnet::Ipv4Net;

use crate::model::{Endpoint, ServicePort};

pub const TABLE: &str = "skiff";
/// The fwmark bit asking `nat-postrouting` to masquerade (upstream's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const HAIRPIN: &str = "hairpin";

/// The table's maps and sets with their nft types; elements are what changes between syncs.
pub const CONTAINERS: [(&str, &str, bool); 5] = [
    (SERVICE_IPS, "ipv4_addr . inet_proto . inet_service : verdict", true),
    (SERVICE_NODEPORTS, "inet_proto . inet_service : verdict", true),
    (NO_ENDPOINT_SERVICES, "ipv4_addr . inet_proto . inet_service", false),
    (NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service", false),
    (HAIRPIN, "ipv4_addr . ipv4_addr", false),
];

/// Base chains: (name, hook declaration, rules). They never change shape at runtime.
pub fn base_chains() -> Vec<(&'static str, &'static str, Vec<String>)> {
    vec![
        ("nat-prerouting", "type nat hook prerouting priority -100; policy accept;", vec!["jump services".into()]),
        ("nat-output", "type nat hook output priority -100; policy accept;", vec!["jump services".into()]),
        ("nat-postrouting", "type nat hook postrouting priority 100; policy accept;", vec!["jump masquerading".into()]),
        // After DNAT (-100) but before routing: an untranslated service address is refused
        // here, not answered by the unreachable route.
        ("filter-prerouting", "type filter hook prerouting priority -90; policy accept;", vec!["ct state new jump service-checks".into()]),
        ("filter-output", "type filter hook output priority -10; policy accept;", vec!["ct state new jump service-checks".into()]),
        ("filter-input", "type filter hook input priority -10; policy accept;", vec!["ct state new jump nodeport-checks".into()]),
    ]
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Pod addresses: traffic from elsewhere to a cluster IP is masqueraded, as upstream does
    /// with --cluster-cidr.
    pub cluster_cidr: Option<Ipv4Net>,
    pub service_cidr: Ipv4Net,
}

/// Desired (or applied) table content besides the base declarations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Regular chains: name → rule lines.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Map/set name → element key → verdict (maps) or "" (sets).
    pub elements: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// sessionAffinity sets (dynamic, with timeout): name → timeout seconds. Their contents are
    /// the kernel's (remembered clients), never rewritten by a sync.
    pub affinity_sets: BTreeMap<String, u32>,
}

/// A short, stable name part for `id` (chain names must stay well under nft's 256 bytes and be
/// the same after a restart, so a restarted proxy rewrites nothing).
pub fn hash_name(prefix: &str, id: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut s = String::with_capacity(prefix.len() + 17);
    s.push_str(prefix);
    s.push('-');
    for b in &d.as_ref()[..8] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Ruleset {
    pub fn build(ports: &[ServicePort], opts: &Options) -> Ruleset {
        let mut r = Ruleset::default();
        for (name, _, _) in CONTAINERS {
            r.elements.insert(name, BTreeMap::new());
        }
        r.chains.insert("mark-for-masquerade".into(), vec![format!("meta mark set meta mark | {MASQ_MARK:#x}")]);
        r.chains.insert(
            "masquerading".into(),
            vec![
                format!("ip saddr . ip daddr @{HAIRPIN} masquerade"),
                format!("meta mark & {MASQ_MARK:#x} == 0 return"),
                format!("meta mark set meta mark ^ {MASQ_MARK:#x}"),
                "masquerade fully-random".into(),
            ],
        );
        r.chains.insert(
            "services".into(),
            vec![
                format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
                format!("fib daddr type local meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
            ],
        );
        r.chains.insert(
            "service-checks".into(),
            // TCP gets a reset: the ICMP error `reject` sends would not find its way back to a
            // socket of the node itself, whose service traffic is routed via loopback (host.rs).
            vec![
                format!("ip daddr . meta l4proto . th dport @{NO_ENDPOINT_SERVICES} meta l4proto tcp reject with tcp reset"),
                format!("ip daddr . meta l4proto . th dport @{NO_ENDPOINT_SERVICES} reject"),
                format!("ip daddr {} meta l4proto tcp reject with tcp reset", opts.service_cidr),
                format!("ip daddr {} reject", opts.service_cidr),
            ],
        );
        r.chains.insert(
            "nodeport-checks".into(),
            vec![
                format!("fib daddr type local meta l4proto . th dport @{NO_ENDPOINT_NODEPORTS} meta l4proto tcp reject with tcp reset"),
                format!("fib daddr type local meta l4proto . th dport @{NO_ENDPOINT_NODEPORTS} reject"),
            ],
        );
        for p in ports {
            r.add_port(p, opts);
        }
        r
    }

    fn element(&mut self, container: &'static str, key: String, verdict: String) {
        self.elements.get_mut(container).expect("declared container").insert(key, verdict);
    }

    fn add_port(&mut self, p: &ServicePort, opts: &Options) {
        let proto = p.proto.nft();
        let cluster = p.cluster_endpoints();
        for e in p.endpoints.iter().filter(|e| e.local) {
            self.element(HAIRPIN, format!("{} . {}", e.ip, e.ip), String::new());
        }
        if cluster.is_empty() {
            // Nothing to send to: reject, for the cluster IP and every external way in.
            for ip in p.cluster_ips.iter().chain(&p.external_ips) {
                self.element(NO_ENDPOINT_SERVICES, format!("{ip} . {proto} . {}", p.port), String::new());
            }
            if let Some(np) = p.node_port {
                self.element(NO_ENDPOINT_NODEPORTS, format!("{proto} . {np}"), String::new());
            }
            return;
        }
        let clu = hash_name("clu", &p.id);
        let loc = hash_name("loc", &p.id);
        let svc = hash_name("svc", &p.id);
        let needs_local = p.internal_local || (p.external_local && p.has_external());
        self.endpoint_chain(&clu, p, &cluster);
        if needs_local {
            self.endpoint_chain(&loc, p, &p.local_endpoints());
        }

        let mut svc_rules = Vec::new();
        if let Some(cidr) = opts.cluster_cidr {
            svc_rules.push(format!("ip saddr != {cidr} jump mark-for-masquerade"));
        }
        svc_rules.push(format!("goto {}", if p.internal_local { &loc } else { &clu }));
        self.chains.insert(svc.clone(), svc_rules);
        for ip in &p.cluster_ips {
            self.element(SERVICE_IPS, format!("{ip} . {proto} . {}", p.port), format!("goto {svc}"));
        }

        if p.has_external() {
            let ext = hash_name("ext", &p.id);
            let mut rules = Vec::new();
            if p.external_local {
                // Pods and the node itself reach external addresses as cluster traffic; only
                // traffic from outside keeps its source and stays on this node.
                if let Some(cidr) = opts.cluster_cidr {
                    rules.push(format!("ip saddr {cidr} goto {clu}"));
                }
                rules.push("fib saddr type local jump mark-for-masquerade".into());
                rules.push(format!("fib saddr type local goto {clu}"));
                rules.push(format!("goto {loc}"));
            } else {
                rules.push("jump mark-for-masquerade".into());
                rules.push(format!("goto {clu}"));
            }
            self.chains.insert(ext.clone(), rules);
            for ip in &p.external_ips {
                self.element(SERVICE_IPS, format!("{ip} . {proto} . {}", p.port), format!("goto {ext}"));
            }
            if let Some(np) = p.node_port {
                self.element(SERVICE_NODEPORTS, format!("{proto} . {np}"), format!("goto {ext}"));
            }
        }
    }

    /// A chain that DNATs to one of `eps` with equal probability (drops when there is none: a
    /// Local policy with no endpoint on this node, as upstream).
    fn endpoint_chain(&mut self, name: &str, p: &ServicePort, eps: &[&Endpoint]) {
        let proto = p.proto.nft();
        let rules = match (eps.len(), p.affinity_timeout) {
            (0, _) => vec!["drop".to_string()],
            (_, Some(timeout)) => {
                let mut rules = Vec::new();
                let mut seps = Vec::new();
                for e in eps {
                    let sep_id = format!("{}|{}:{}", p.id, e.ip, e.port);
                    let sep = hash_name("sep", &sep_id);
                    // The timeout is part of the set's identity: a set's timeout cannot be changed in place.
                    let aff = hash_name("aff", &format!("{sep_id}|{timeout}"));
                    rules.push(format!("ip saddr @{aff} goto {sep}"));
                    self.affinity_sets.insert(aff.clone(), timeout);
                    self.chains.insert(
                        sep.clone(),
                        vec![format!("update @{aff} {{ ip saddr }} meta l4proto {proto} dnat to {}:{}", e.ip, e.port)],
                    );
                    seps.push(sep);
                }
                rules.push(random_choice(seps.iter().map(|s| format!("goto {s}")), |choices| {
                    format!("numgen random mod {} vmap {choices}", seps.len())
                }));
                rules
            }
            (1, None) => vec![format!("meta l4proto {proto} dnat to {}:{}", eps[0].ip, eps[0].port)],
            (n, None) => vec![random_choice(eps.iter().map(|e| format!("{} . {}", e.ip, e.port)), |choices| {
                format!("meta l4proto {proto} dnat to numgen random mod {n} map {choices}")
            })],
        };
        self.chains.insert(name.to_string(), rules);
    }
}

/// `{ 0 : a, 1 : b, ... }` handed to `wrap`.
fn random_choice(items: impl Iterator<Item = String>, wrap: impl FnOnce(&str) -> String) -> String {
    let mut s = String::from("{ ");
    for (i, item) in items.enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{i} : {item}");
    }
    s.push_str(" }");
    wrap(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;

    fn opts() -> Options {
        Options { cluster_cidr: Some("10.42.0.0/16".parse().unwrap()), service_cidr: "10.43.0.0/16".parse().unwrap() }
    }

    fn ep(ip: &str, local: bool) -> Endpoint {
        Endpoint { ip: ip.parse().unwrap(), port: 8080, local, ready: true, serving: true, terminating: false }
    }

    fn port(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            id: "ns/web:http/tcp".into(),
            proto: Proto::Tcp,
            cluster_ips: vec!["10.43.0.7".parse().unwrap()],
            port: 80,
            node_port: None,
            external_ips: vec![],
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            endpoints,
        }
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints() {
        let r = Ruleset::build(&[port(vec![ep("10.42.0.5", true), ep("10.42.1.5", false)])], &opts());
        let svc = hash_name("svc", "ns/web:http/tcp");
        let clu = hash_name("clu", "ns/web:http/tcp");
        assert_eq!(r.elements[SERVICE_IPS]["10.43.0.7 . tcp . 80"], format!("goto {svc}"));
        assert_eq!(r.chains[&svc], vec!["ip saddr != 10.42.0.0/16 jump mark-for-masquerade".to_string(), format!("goto {clu}")]);
        assert_eq!(
            r.chains[&clu],
            vec!["meta l4proto tcp dnat to numgen random mod 2 map { 0 : 10.42.0.5 . 8080, 1 : 10.42.1.5 . 8080 }".to_string()]
        );
        assert!(r.elements[HAIRPIN].contains_key("10.42.0.5 . 10.42.0.5"), "local endpoints may hairpin");
        assert!(!r.elements[HAIRPIN].contains_key("10.42.1.5 . 10.42.1.5"));
        assert!(r.elements[NO_ENDPOINT_SERVICES].is_empty());
    }

    #[test]
    fn no_endpoints_means_reject_everywhere() {
        let mut p = port(vec![]);
        p.node_port = Some(30080);
        p.external_ips = vec!["10.99.0.1".parse().unwrap()];
        let r = Ruleset::build(&[p], &opts());
        assert!(r.elements[SERVICE_IPS].is_empty());
        assert!(r.elements[NO_ENDPOINT_SERVICES].contains_key("10.43.0.7 . tcp . 80"));
        assert!(r.elements[NO_ENDPOINT_SERVICES].contains_key("10.99.0.1 . tcp . 80"));
        assert!(r.elements[NO_ENDPOINT_NODEPORTS].contains_key("tcp . 30080"));
    }

    #[test]
    fn external_local_keeps_outside_sources_on_local_endpoints() {
        let mut p = port(vec![ep("10.42.1.5", false)]);
        p.node_port = Some(30080);
        p.external_local = true;
        let r = Ruleset::build(&[p], &opts());
        let ext = hash_name("ext", "ns/web:http/tcp");
        let loc = hash_name("loc", "ns/web:http/tcp");
        assert_eq!(r.elements[SERVICE_NODEPORTS]["tcp . 30080"], format!("goto {ext}"));
        assert_eq!(r.chains[&ext].last().unwrap(), &format!("goto {loc}"));
        assert!(!r.chains[&ext].iter().any(|l| l == "jump mark-for-masquerade"), "no masquerade for outside clients");
        assert_eq!(r.chains[&loc], vec!["drop".to_string()], "no endpoint on this node");
    }

    #[test]
    fn client_ip_affinity_goes_through_per_endpoint_chains() {
        let mut p = port(vec![ep("10.42.0.5", true), ep("10.42.0.6", true)]);
        p.affinity_timeout = Some(60);
        let r = Ruleset::build(&[p], &opts());
        assert_eq!(r.affinity_sets.len(), 2);
        assert!(r.affinity_sets.values().all(|t| *t == 60));
        let clu = &r.chains[&hash_name("clu", "ns/web:http/tcp")];
        assert_eq!(clu.len(), 3);
        assert!(clu[0].starts_with("ip saddr @aff-") && clu[0].contains(" goto sep-"));
        assert!(clu[2].starts_with("numgen random mod 2 vmap { 0 : goto sep-"));
        let sep = hash_name("sep", "ns/web:http/tcp|10.42.0.5:8080");
        assert!(r.chains[&sep][0].starts_with("update @aff-") && r.chains[&sep][0].ends_with("dnat to 10.42.0.5:8080"));
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(hash_name("svc", "a"), hash_name("svc", "a"));
        assert_ne!(hash_name("svc", "a"), hash_name("svc", "b"));
        assert_eq!(hash_name("svc", "a").len(), 20);
    }
}
