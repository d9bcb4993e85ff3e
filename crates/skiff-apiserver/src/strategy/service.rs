//! Services: defaulting, ClusterIP and NodePort allocation, validation.
//!
//! Allocation state is derived, not stored: the allocator asks the services watch cache which IPs and
//! ports are in use and adds its own short-lived reservations for creates still in flight. So a failed
//! create or a deleted service frees its IP without any bookkeeping that could drift.
//! (With several API servers this needs a shared allocator; see ARCHITECTURE.md.)

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::{Env, Strategy, immutable};
use crate::codec::AdmitError;
use crate::status::FieldError;

pub const NODE_PORT_RANGE: (i32, i32) = (30000, 32767);
const RESERVATION_TTL: Duration = Duration::from_secs(60);

/// An IPv4 CIDR such as 10.43.0.0/16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub base: u32,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, len) = s.split_once('/').ok_or_else(|| format!("invalid CIDR {s:?}: missing '/'"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("invalid CIDR {s:?}: bad IPv4 address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("invalid CIDR {s:?}: bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("invalid CIDR {s:?}: prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr { base: u32::from(ip) & mask, prefix })
    }
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & (u32::MAX << (32 - self.prefix)) == self.base
    }
    /// The n-th address (1 = the `kubernetes` service, 10 = cluster DNS, as upstream).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + n)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Which IPs and node ports existing services hold, as (ip, node ports) per service key.
pub type InUseSource = Arc<dyn Fn() -> Vec<(String, Vec<String>, Vec<i32>)> + Send + Sync>;

pub struct ServiceAllocator {
    pub cidr: Cidr,
    source: OnceLock<InUseSource>,
    reserved: Mutex<Reservations>,
}

#[derive(Default)]
struct Reservations {
    ips: HashMap<Ipv4Addr, (String, Instant)>,
    ports: HashMap<i32, (String, Instant)>,
}

impl Default for ServiceAllocator {
    fn default() -> Self {
        Self::new(Cidr::parse("10.43.0.0/16").expect("static cidr"))
    }
}

impl ServiceAllocator {
    pub fn new(cidr: Cidr) -> Self {
        ServiceAllocator { cidr, source: OnceLock::new(), reserved: Mutex::new(Reservations::default()) }
    }

    /// Wire the allocator to the services cache (done once at startup).
    pub fn set_source(&self, source: InUseSource) {
        let _ = self.source.set(source);
    }

    fn in_use(&self, owner: &str) -> (HashSet<Ipv4Addr>, HashSet<i32>) {
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        if let Some(src) = self.source.get() {
            for (key, svc_ips, svc_ports) in src() {
                if key == owner {
                    continue;
                }
                ips.extend(svc_ips.iter().filter_map(|s| s.parse::<Ipv4Addr>().ok()));
                ports.extend(svc_ports);
            }
        }
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        r.ips.retain(|_, (_, t)| now.duration_since(*t) < RESERVATION_TTL);
        r.ports.retain(|_, (_, t)| now.duration_since(*t) < RESERVATION_TTL);
        ips.extend(r.ips.iter().filter(|(_, (o, _))| o != owner).map(|(ip, _)| *ip));
        ports.extend(r.ports.iter().filter(|(_, (o, _))| o != owner).map(|(p, _)| *p));
        (ips, ports)
    }

    /// Reserve `requested` (validated) or a free IP for service `owner` (`ns/name`).
    pub fn allocate_ip(&self, owner: &str, requested: Option<&str>) -> Result<Ipv4Addr, FieldError> {
        let (used, _) = self.in_use(owner);
        let ip = match requested {
            Some(req) => {
                let bad = |detail: String| FieldError::invalid("spec.clusterIPs", &json!([req]), detail);
                let ip: Ipv4Addr = req.parse().map_err(|_| bad("must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into()))?;
                if !self.cidr.contains(ip) || u32::from(ip) == self.cidr.base || u32::from(ip) == self.cidr.base + self.cidr.size() - 1 {
                    return Err(bad(format!(
                        "failed to allocate IP {req}: the provided IP ({req}) is not in the valid range. The range of valid IPs is {}",
                        self.cidr
                    )));
                }
                if used.contains(&ip) {
                    return Err(bad(format!("failed to allocate IP {req}: provided IP is already allocated")));
                }
                ip
            }
            None => {
                // Random start so concurrent servers (later: HA) rarely collide; upstream also
                // prefers the upper part of the range for dynamic allocation, leaving low IPs to users.
                let size = self.cidr.size();
                let start = rand::random::<u32>() % (size - 2);
                (0..size - 2)
                    .map(|i| self.cidr.nth(1 + (start + i) % (size - 2)))
                    .find(|ip| !used.contains(ip) && *ip != self.cidr.nth(1) && *ip != self.cidr.nth(10))
                    .ok_or_else(|| FieldError::invalid("spec.clusterIPs", &json!([]), "failed to allocate IP: range is full"))?
            }
        };
        self.reserved.lock().unwrap_or_else(|p| p.into_inner()).ips.insert(ip, (owner.to_string(), Instant::now()));
        Ok(ip)
    }

    pub fn allocate_node_port(
        &self,
        owner: &str,
        field: &str,
        requested: Option<i32>,
        taken_here: &HashSet<i32>,
    ) -> Result<i32, FieldError> {
        let used = self.in_use(owner).1;
        let (lo, hi) = NODE_PORT_RANGE;
        let port = match requested {
            Some(p) => {
                if !(lo..=hi).contains(&p) {
                    return Err(FieldError::invalid(
                        field,
                        &json!(p),
                        format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                    ));
                }
                if used.contains(&p) {
                    return Err(FieldError::invalid(field, &json!(p), "provided port is already allocated"));
                }
                p
            }
            None => {
                let n = hi - lo + 1;
                let start = (rand::random::<u32>() % n as u32) as i32;
                (0..n)
                    .map(|i| lo + (start + i) % n)
                    .find(|p| !used.contains(p) && !taken_here.contains(p))
                    .ok_or_else(|| FieldError::invalid(field, &json!(0), "range is full"))?
            }
        };
        self.reserved.lock().unwrap_or_else(|p| p.into_inner()).ports.insert(port, (owner.to_string(), Instant::now()));
        Ok(port)
    }
}

pub struct ServiceStrategy;

const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

fn owner(svc: &Service) -> String {
    format!("{}/{}", svc.metadata.namespace.as_deref().unwrap_or_default(), svc.metadata.name.as_deref().unwrap_or_default())
}

impl Strategy<Service> for ServiceStrategy {
    fn default(&self, svc: &mut Service, old: Option<&Service>, env: &Env) -> Result<(), AdmitError> {
        let key = owner(svc);
        let spec = svc.spec.get_or_insert_with(Default::default);
        let old_spec = old.and_then(|o| o.spec.as_ref());
        let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
        if !TYPES.contains(&ty.as_str()) {
            return Err(AdmitError::Invalid(vec![FieldError::not_supported("spec.type", &json!(ty), &TYPES)]));
        }
        spec.session_affinity.get_or_insert_with(|| "None".into());
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            // Upstream's fields are Go values where zero means unset; protobuf bodies (kubectl
            // 1.33's `create service`) always carry them, e.g. `nodePort: 0`, `targetPort: 0`.
            if p.node_port == Some(0) {
                p.node_port = None;
            }
            if matches!(&p.target_port, None | Some(IntOrString::Int(0)))
                || matches!(&p.target_port, Some(IntOrString::String(s)) if s.is_empty())
            {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
        if let Some(os) = old_spec {
            // Updates that omit allocated values keep them (what `kubectl replace` relies on).
            if spec.cluster_ip.is_none() && spec.cluster_ips.is_none() {
                spec.cluster_ip = os.cluster_ip.clone();
                spec.cluster_ips = os.cluster_ips.clone();
            }
            for p in spec.ports.iter_mut().flatten() {
                if p.node_port.is_none() {
                    p.node_port =
                        os.ports.iter().flatten().find(|o| o.port == p.port && o.protocol == p.protocol).and_then(|o| o.node_port);
                }
            }
        }
        let mut errs = Vec::new();
        if ty == "ExternalName" {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        } else {
            let requested = spec.cluster_ip.clone().or_else(|| spec.cluster_ips.as_ref().and_then(|v| v.first().cloned()));
            match requested.as_deref() {
                Some("None") => {
                    spec.cluster_ip = Some("None".into());
                    spec.cluster_ips = Some(vec!["None".into()]);
                }
                Some(ip) if !ip.is_empty() && old_spec.and_then(|o| o.cluster_ip.as_deref()) == Some(ip) => {
                    spec.cluster_ips = Some(vec![ip.to_string()]);
                }
                req => match env.services.allocate_ip(&key, req.filter(|s| !s.is_empty())) {
                    Ok(ip) => {
                        spec.cluster_ip = Some(ip.to_string());
                        spec.cluster_ips = Some(vec![ip.to_string()]);
                    }
                    Err(e) => errs.push(e),
                },
            }
            spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
            spec.ip_family_policy.get_or_insert_with(|| "SingleStack".into());
            spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            spec.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
            if ty == "LoadBalancer" {
                spec.allocate_load_balancer_node_ports.get_or_insert(true);
            }
            let allocate = ty == "NodePort" || spec.allocate_load_balancer_node_ports == Some(true);
            let mut taken_here = HashSet::new();
            for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
                let kept = old_spec.is_some()
                    && p.node_port.is_some()
                    && old_spec.and_then(|o| o.ports.as_ref()).is_some_and(|ports| ports.iter().any(|o| o.node_port == p.node_port));
                if kept {
                    taken_here.extend(p.node_port);
                    continue;
                }
                if p.node_port.is_none() && !allocate {
                    continue;
                }
                let field = format!("spec.ports[{i}].nodePort");
                if let Some(np) = p.node_port
                    && taken_here.contains(&np)
                {
                    errs.push(FieldError::duplicate(field, &json!(np)));
                    continue;
                }
                match env.services.allocate_node_port(&key, &field, p.node_port, &taken_here) {
                    Ok(np) => {
                        p.node_port = Some(np);
                        taken_here.insert(np);
                    }
                    Err(e) => errs.push(e),
                }
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(AdmitError::Invalid(errs)) }
    }

    fn validate(&self, svc: &Service, old: Option<&Service>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let Some(spec) = svc.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if ty == "ExternalName" {
            if spec.external_name.as_deref().unwrap_or_default().is_empty() {
                errs.push(FieldError::required("spec.externalName", ""));
            }
        } else if ports.is_empty() && !headless {
            errs.push(FieldError::required("spec.ports", ""));
        }
        let mut seen_names = HashSet::new();
        let mut seen_ports = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let name = p.name.as_deref().unwrap_or_default();
            if ports.len() > 1 && name.is_empty() {
                errs.push(FieldError::required(format!("spec.ports[{i}].name"), ""));
            }
            if !name.is_empty() && !seen_names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("spec.ports[{i}].name"), &json!(name)));
            }
            if !(1..=65535).contains(&p.port) {
                errs.push(FieldError::invalid(format!("spec.ports[{i}].port"), &json!(p.port), "must be between 1 and 65535, inclusive"));
            }
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                errs.push(FieldError::not_supported(format!("spec.ports[{i}].protocol"), &json!(proto), &["SCTP", "TCP", "UDP"]));
            }
            if !seen_ports.insert((p.port, proto.to_string())) {
                errs.push(FieldError::duplicate(format!("spec.ports[{i}]"), &json!({"port": p.port, "protocol": proto})));
            }
            if p.node_port.is_some() && ty == "ClusterIP" {
                errs.push(FieldError::forbidden(format!("spec.ports[{i}].nodePort"), "may not be used when `type` is 'ClusterIP'"));
            }
        }
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            let old_ip = old_spec.cluster_ip.as_deref().unwrap_or_default();
            if !old_ip.is_empty() && ty != "ExternalName" && old_spec.type_.as_deref() != Some("ExternalName") {
                immutable(&mut errs, "spec.clusterIPs[0]", &spec.cluster_ip.as_deref().unwrap_or_default(), &old_ip);
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c = Cidr::parse("10.43.0.0/16").unwrap();
        assert_eq!(c.nth(1), Ipv4Addr::new(10, 43, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(Cidr::parse("10.43.0.0").is_err());
    }

    #[test]
    fn allocates_distinct_ips_and_rejects_taken_ones() {
        let a = ServiceAllocator::default();
        let ip1 = a.allocate_ip("ns/a", None).unwrap();
        let ip2 = a.allocate_ip("ns/b", None).unwrap();
        assert_ne!(ip1, ip2);
        assert!(a.allocate_ip("ns/c", Some(&ip1.to_string())).is_err());
        assert!(a.allocate_ip("ns/c", Some("192.168.0.1")).unwrap_err().message.contains("not in the valid range"));
        let p = a.allocate_node_port("ns/a", "f", Some(30080), &HashSet::new()).unwrap();
        assert!(a.allocate_node_port("ns/b", "f", Some(p), &HashSet::new()).unwrap_err().message.contains("already allocated"));
        assert!(a.allocate_node_port("ns/b", "f", Some(80), &HashSet::new()).is_err());
    }

    /// kubectl 1.33 posts `create service clusterip` as protobuf, which carries Go's zero values.
    #[test]
    fn zero_node_and_target_ports_mean_unset() {
        let env =
            Env { services: ServiceAllocator::default(), priority_classes: Default::default(), toleration_seconds: Default::default() };
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"type": "ClusterIP", "ports": [{"port": 5432, "targetPort": 0, "nodePort": 0}]},
        }))
        .unwrap();
        assert!(ServiceStrategy.default(&mut svc, None, &env).is_ok());
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!((port.node_port, port.target_port.clone()), (None, Some(IntOrString::Int(5432))));
        assert!(ServiceStrategy.validate(&svc, None).is_empty());
    }
}
