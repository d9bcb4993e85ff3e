//! The nftables ruleset for a set of service ports, as data: named regular chains with their rule
//! lines, and the elements of the table's maps and sets. `nft.rs` turns the difference between
//! two of these into one atomic transaction.
//!
//! Shape (one `ip skiff` table, after upstream's nftables proxy mode):
//! - `nat-prerouting` / `nat-output` jump to `services`: a verdict map from
//!   (cluster or external IP, protocol, port) to the service's chain, then — for addresses of this
//!   node, localhost included — a verdict map from (protocol, nodePort).
//! - `svc-*` (traffic to the cluster IP) marks what must be masqueraded and picks an endpoint;
//!   `ext-*` (nodePort / LoadBalancer / external IPs) does the same through `clu-*` (all usable
//!   endpoints) or `loc-*` (this node's). An endpoint is picked with equal probability by
//!   `numgen random mod N offset K` looked up in a shared map (`endpoints-XX`, or
//!   `endpoint-chains-XX` whose `sep-*` chains remember the client in a timeout set for
//!   sessionAffinity ClientIP); see `Offsets` for why the maps are shared.
//! - `nat-postrouting` masquerades marked packets and hairpin traffic (a pod reaching itself
//!   through its Service).
//! - Filter hooks (prerouting after DNAT, output, input) reject new connections to services without endpoints and to any other address
//!   of the service CIDR, so nothing aimed at a service IP is forwarded anywhere else.

use std::collections::{BTreeMap, BTreeSet};

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

/// How many maps the endpoint choices are spread over (see `Offsets`).
pub const ENDPOINT_BUCKETS: u64 = 64;
/// Offsets a range owner is placed at multiples of; one with more endpoints takes several.
const BLOCK: u64 = 4096;
/// Blocks in numgen's 32-bit value space.
const BLOCKS: u64 = (1 << 32) / BLOCK;

/// The maps and sets every table has.
const FIXED: [&str; 5] = [SERVICE_IPS, SERVICE_NODEPORTS, NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, HAIRPIN];

/// How a map or set of the table is declared: what follows `type`/`typeof`, and whether it is a
/// map. None for names that are not the proxy's containers.
pub fn declaration(name: &str) -> Option<(String, bool)> {
    let fixed = match name {
        SERVICE_IPS => Some(("type ipv4_addr . inet_proto . inet_service : verdict", true)),
        SERVICE_NODEPORTS => Some(("type inet_proto . inet_service : verdict", true)),
        NO_ENDPOINT_SERVICES => Some(("type ipv4_addr . inet_proto . inet_service", false)),
        NO_ENDPOINT_NODEPORTS => Some(("type inet_proto . inet_service", false)),
        HAIRPIN => Some(("type ipv4_addr . ipv4_addr", false)),
        _ => None,
    };
    if let Some((ty, is_map)) = fixed {
        return Some((ty.to_string(), is_map));
    }
    if name.starts_with("endpoint-chains-") {
        return Some(("typeof numgen random mod 1 : verdict".into(), true));
    }
    // The data's protocol is part of the map: nft refuses `th dport` data under a rule that
    // matched `meta l4proto tcp` once it reads the declaration back from the kernel.
    let proto = name.strip_prefix("endpoints-")?.split_once('-')?.0;
    ["tcp", "udp", "sctp"].contains(&proto).then(|| (format!("typeof numgen random mod 1 : ip daddr . {proto} dport"), true))
}

fn endpoint_map(proto: &str, bucket: u64) -> String {
    format!("endpoints-{proto}-{bucket:02x}")
}

fn endpoint_chain_map(bucket: u64) -> String {
    format!("endpoint-chains-{bucket:02x}")
}

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
    /// Map/set name → element key → value (maps) or "" (sets): the containers the table
    /// declares (the fixed ones, and the endpoint maps in use).
    pub elements: BTreeMap<String, BTreeMap<String, String>>,
    /// sessionAffinity sets (dynamic, with timeout): name → timeout seconds. Their contents are
    /// the kernel's (remembered clients), never rewritten by a sync.
    pub affinity_sets: BTreeMap<String, u32>,
}

fn digest64(id: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

/// A short, stable name part for `id` (chain names must stay well under nft's 256 bytes and be
/// the same after a restart, so a restarted proxy rewrites nothing).
pub fn hash_name(prefix: &str, id: &str) -> String {
    format!("{prefix}-{:016x}", digest64(id))
}

/// Where the endpoint choices live: owner (`clu-*`/`loc-*` chain name) → (bucket map, first
/// offset).
///
/// Why shared maps with offsets rather than one anonymous map per chain (upstream's shape): on
/// kernel 6.x every anonymous set costs a scan of all the table's sets to name it, so 10,000 of
/// them took ~10 s of kernel time to load; and binding a rule to a map validates every element
/// of it, so one map for all would cost rules × elements. Spread over `ENDPOINT_BUCKETS` maps
/// both stay small. Placement within a bucket is a pure function of that bucket's owners
/// (hashed preferred block, then the next free one, owners taken in name order), so a restarted
/// proxy computes the same offsets and a change moves nothing outside its bucket.
pub type Placement = BTreeMap<String, (u64, u64)>;

/// The bucket an owner's choices go to.
pub fn bucket_of(owner: &str) -> u64 {
    digest64(owner) % ENDPOINT_BUCKETS
}

/// Places one bucket's owners (name → offsets needed): name → first offset.
pub fn place_bucket(owners: &BTreeMap<String, usize>) -> BTreeMap<String, u64> {
    let mut used = BTreeSet::new();
    let mut placed = BTreeMap::new();
    for (name, &n) in owners {
        let blocks = (n as u64).div_ceil(BLOCK).max(1);
        let mut start = (digest64(name) / ENDPOINT_BUCKETS) % (BLOCKS - blocks + 1);
        while (start..start + blocks).any(|b| used.contains(&b)) {
            start = (start + 1) % (BLOCKS - blocks + 1);
        }
        used.extend(start..start + blocks);
        placed.insert(name.clone(), start * BLOCK);
    }
    placed
}

/// Places every owner (name → offsets needed).
pub fn place(owners: &BTreeMap<String, usize>) -> Placement {
    let mut by_bucket: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
    for (name, &n) in owners {
        by_bucket.entry(bucket_of(name)).or_default().insert(name.clone(), n);
    }
    let mut out = Placement::new();
    for (bucket, owners) in by_bucket {
        out.extend(place_bucket(&owners).into_iter().map(|(name, at)| (name, (bucket, at))));
    }
    out
}

/// The endpoints one endpoint choice picks from, before offsets are known.
struct Choice<'a> {
    port: &'a ServicePort,
    eps: Vec<&'a Endpoint>,
}

impl Choice<'_> {
    /// How many offsets it takes in a shared map (none for zero or one endpoint without
    /// affinity: those need no choice).
    fn width(&self) -> usize {
        match (self.eps.len(), self.port.affinity_timeout) {
            (0, _) | (1, None) => 0,
            (n, _) => n,
        }
    }
}

/// A port's endpoint choices by owner name.
fn choices(p: &ServicePort) -> BTreeMap<String, Choice<'_>> {
    let mut out = BTreeMap::new();
    let cluster = p.cluster_endpoints();
    if cluster.is_empty() {
        return out;
    }
    if p.internal_local || (p.external_local && p.has_external()) {
        out.insert(hash_name("loc", &p.id), Choice { port: p, eps: p.local_endpoints() });
    }
    out.insert(hash_name("clu", &p.id), Choice { port: p, eps: cluster });
    out
}

/// The offsets a port's choices need in the shared maps: owner name → count.
pub fn owners(p: &ServicePort) -> Vec<(String, usize)> {
    choices(p).into_iter().filter(|(_, c)| c.width() > 0).map(|(n, c)| (n, c.width())).collect()
}

impl Ruleset {
    /// The table for `ports`, whole.
    pub fn build(ports: &[ServicePort], opts: &Options) -> Ruleset {
        let placed = place(&ports.iter().flat_map(owners).collect());
        let mut r = Ruleset::fixed(opts);
        for p in ports {
            r.merge(Ruleset::fragment(p, opts, &placed));
        }
        r
    }

    /// What every table has, whatever the Services.
    pub fn fixed(opts: &Options) -> Ruleset {
        let mut r = Ruleset::default();
        for name in FIXED {
            r.elements.insert(name.to_string(), BTreeMap::new());
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
        r
    }

    /// One port's part of the table: its chains, map and set elements, affinity sets. Chain
    /// and set names are the port's own; elements may be shared (hairpin) with other ports.
    pub fn fragment(p: &ServicePort, opts: &Options, placed: &Placement) -> Ruleset {
        let mut r = Ruleset::default();
        let mut bodies = BTreeMap::new();
        for (name, c) in &choices(p) {
            bodies.insert(name.clone(), r.choice_rules(c, placed.get(name).copied()));
        }
        r.add_port(p, opts, &bodies);
        r
    }

    /// Adds `other`'s content (names are disjoint but for shared set elements).
    pub fn merge(&mut self, other: Ruleset) {
        self.chains.extend(other.chains);
        self.affinity_sets.extend(other.affinity_sets);
        for (name, els) in other.elements {
            self.elements.entry(name).or_default().extend(els);
        }
    }

    fn element(&mut self, container: &str, key: String, value: String) {
        debug_assert!(declaration(container).is_some(), "{container}");
        match self.elements.get_mut(container) {
            Some(c) => {
                c.insert(key, value);
            }
            None => {
                self.elements.insert(container.to_string(), BTreeMap::from([(key, value)]));
            }
        }
    }

    fn add_port(&mut self, p: &ServicePort, opts: &Options, bodies: &BTreeMap<String, Vec<String>>) {
        let proto = p.proto.nft();
        for e in p.endpoints.iter().filter(|e| e.local) {
            self.element(HAIRPIN, format!("{} . {}", e.ip, e.ip), String::new());
        }
        let clu = hash_name("clu", &p.id);
        let loc = hash_name("loc", &p.id);
        if !bodies.contains_key(&clu) {
            // Nothing to send to: reject, for the cluster IP and every external way in.
            for ip in p.cluster_ips.iter().chain(&p.external_ips) {
                self.element(NO_ENDPOINT_SERVICES, format!("{ip} . {proto} . {}", p.port), String::new());
            }
            if let Some(np) = p.node_port {
                self.element(NO_ENDPOINT_NODEPORTS, format!("{proto} . {np}"), String::new());
            }
            return;
        }

        // The cluster IP's chain picks the endpoint itself (one chain fewer per Service than
        // jumping to clu-*/loc-*, which exist only for the external ways in).
        let svc = hash_name("svc", &p.id);
        let mut svc_rules = Vec::new();
        if let Some(cidr) = opts.cluster_cidr {
            svc_rules.push(format!("ip saddr != {cidr} jump mark-for-masquerade"));
        }
        svc_rules.extend(bodies[if p.internal_local { &loc } else { &clu }].iter().cloned());
        self.chains.insert(svc.clone(), svc_rules);
        for ip in &p.cluster_ips {
            self.element(SERVICE_IPS, format!("{ip} . {proto} . {}", p.port), format!("goto {svc}"));
        }

        if p.has_external() {
            let ext = hash_name("ext", &p.id);
            let mut rules = Vec::new();
            self.chains.insert(clu.clone(), bodies[&clu].clone());
            if p.external_local {
                self.chains.insert(loc.clone(), bodies[&loc].clone());
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

    /// Rules that DNAT to one of the choice's endpoints with equal probability (drop when there
    /// is none: a Local policy with no endpoint on this node, as upstream), with the elements
    /// and per-endpoint chains they use.
    fn choice_rules(&mut self, c: &Choice, at: Option<(u64, u64)>) -> Vec<String> {
        let (p, eps) = (c.port, &c.eps);
        let proto = p.proto.nft();
        let n = eps.len();
        match (at, p.affinity_timeout) {
            (None, None) if n == 1 => vec![format!("meta l4proto {proto} dnat to {}:{}", eps[0].ip, eps[0].port)],
            (None, _) => vec!["drop".to_string()],
            (Some((bucket, offset)), Some(timeout)) => {
                let mut rules = Vec::new();
                for (i, e) in eps.iter().enumerate() {
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
                    self.element(&endpoint_chain_map(bucket), (offset + i as u64).to_string(), format!("goto {sep}"));
                }
                rules.push(format!("numgen random mod {n} offset {offset} vmap @{}", endpoint_chain_map(bucket)));
                rules
            }
            (Some((bucket, offset)), None) => {
                for (i, e) in eps.iter().enumerate() {
                    self.element(&endpoint_map(proto, bucket), (offset + i as u64).to_string(), format!("{} . {}", e.ip, e.port));
                }
                vec![format!("meta l4proto {proto} dnat to numgen random mod {n} offset {offset} map @{}", endpoint_map(proto, bucket))]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;
    use crate::model::fixtures::{self, endpoint, opts};

    fn ep(ip: &str, local: bool) -> Endpoint {
        endpoint(ip, 8080, local)
    }

    fn port(endpoints: Vec<Endpoint>) -> ServicePort {
        fixtures::port("ns/web:http/tcp", Proto::Tcp, "10.43.0.7", 80, endpoints)
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints() {
        let r = Ruleset::build(&[port(vec![ep("10.42.0.5", true), ep("10.42.1.5", false)])], &opts());
        let svc = hash_name("svc", "ns/web:http/tcp");
        assert_eq!(r.elements[SERVICE_IPS]["10.43.0.7 . tcp . 80"], format!("goto {svc}"));
        assert_eq!(r.chains[&svc][0], "ip saddr != 10.42.0.0/16 jump mark-for-masquerade");
        let (map, offset) = choice(&r.chains[&svc][1], "meta l4proto tcp dnat to numgen random mod 2 offset ", " map @");
        assert_eq!(r.elements[&map][&offset.to_string()], "10.42.0.5 . 8080");
        assert_eq!(r.elements[&map][&(offset + 1).to_string()], "10.42.1.5 . 8080");
        assert_eq!(r.elements[&map].len(), 2);
        assert!(!r.chains.contains_key(&hash_name("clu", "ns/web:http/tcp")), "no external way in, no clu chain");
        assert!(r.elements[HAIRPIN].contains_key("10.42.0.5 . 10.42.0.5"), "local endpoints may hairpin");
        assert!(!r.elements[HAIRPIN].contains_key("10.42.1.5 . 10.42.1.5"));
        assert!(r.elements[NO_ENDPOINT_SERVICES].is_empty());
    }

    /// The (map, offset) of a `numgen ... offset K [v]map @M` rule.
    fn choice(rule: &str, prefix: &str, sep: &str) -> (String, u64) {
        let rest = rule.strip_prefix(prefix).unwrap_or_else(|| panic!("{rule}"));
        let (offset, map) = rest.split_once(sep).unwrap_or_else(|| panic!("{rule}"));
        assert_eq!(offset.parse::<u64>().unwrap() % BLOCK, 0);
        (map.to_string(), offset.parse().unwrap())
    }

    #[test]
    fn offsets_are_stable_disjoint_and_fit_large_services() {
        let mut owners: BTreeMap<String, usize> = (0..3000).map(|i| (hash_name("clu", &i.to_string()), 10)).collect();
        owners.insert("big".into(), 10_000);
        let a = place(&owners);
        let mut ranges: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for (name, (bucket, start)) in &a {
            assert!(start + owners[name] as u64 <= 1 << 32);
            ranges.entry(*bucket).or_default().push((*start, start + owners[name] as u64));
        }
        for rs in ranges.values_mut() {
            rs.sort();
            assert!(rs.windows(2).all(|w| w[0].1 <= w[1].0), "ranges overlap: {rs:?}");
        }
        // One more owner moves at most the owners it collides with, never everyone.
        owners.insert(hash_name("clu", "new"), 10);
        let b = place(&owners);
        let moved = a.iter().filter(|(n, at)| b[*n] != **at).count();
        assert!(moved <= 1, "{moved} moved");
        assert_eq!(place(&owners), b, "placement is a function of the owners");
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
        let svc = &r.chains[&hash_name("svc", "ns/web:http/tcp")];
        assert_eq!(svc.len(), 4);
        assert!(svc[1].starts_with("ip saddr @aff-") && svc[1].contains(" goto sep-"));
        let (map, offset) = choice(&svc[3], "numgen random mod 2 offset ", " vmap @");
        let sep = hash_name("sep", "ns/web:http/tcp|10.42.0.5:8080");
        assert_eq!(r.elements[&map][&offset.to_string()], format!("goto {sep}"));
        assert!(r.chains[&sep][0].starts_with("update @aff-") && r.chains[&sep][0].ends_with("dnat to 10.42.0.5:8080"));
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(hash_name("svc", "a"), hash_name("svc", "a"));
        assert_ne!(hash_name("svc", "a"), hash_name("svc", "b"));
        assert_eq!(hash_name("svc", "a").len(), 20);
    }
}
