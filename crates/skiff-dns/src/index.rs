//! The cluster zone as data: built from Services and EndpointSlices after each change and
//! swapped in whole, so a query is a hash lookup and never sees a half-built zone. The records
//! follow the Kubernetes DNS-based service discovery specification (the one CoreDNS's
//! `kubernetes` plugin implements): service A/AAAA, headless endpoint records, SRV for named
//! ports, PTR, pod records from the dashed address, ExternalName CNAMEs, NXDOMAIN for names
//! that do not exist and NODATA for names that exist without the asked type.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Seconds clients may cache an answer (CoreDNS's `kubernetes` plugin default).
pub const TTL: u32 = 5;
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The version of the DNS specification these records follow (its `dns-version` record).
const SPEC_VERSION: &str = "1.1.0";

#[derive(Debug)]
enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(String),
}

#[derive(Debug)]
struct NamedPort {
    name: String,
    proto: String,
    port: u16,
}

#[derive(Debug)]
struct Backend {
    ip: IpAddr,
    /// The endpoint's own DNS label: its hostname, else the dashed address.
    label: String,
}

#[derive(Debug)]
struct Svc {
    kind: Kind,
    ports: Vec<NamedPort>,
    backends: Vec<Backend>,
}

/// What the zone says about one query.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Authoritative: answers (possibly none) with a response code; `soa` puts the zone's SOA in
    /// the authority section, as negative answers need for caching.
    Answer { rcode: ResponseCode, answers: Vec<Record>, additionals: Vec<Record>, soa: bool },
    /// Not a cluster name: forward it.
    NotOurs,
}

#[derive(Debug)]
pub struct Index {
    /// "cluster.local", lower case, no trailing dot.
    domain: String,
    services: HashMap<(String, String), Svc>,
    namespaces: HashSet<String>,
    ptr: HashMap<IpAddr, String>,
    soa: Record,
}

fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn undashed(label: &str) -> Option<IpAddr> {
    label.replace('-', ".").parse().ok().filter(IpAddr::is_ipv4).or_else(|| label.replace('-', ":").parse().ok())
}

fn fqdn(s: &str) -> Name {
    // Names built here are from API objects whose names the API server validated as DNS labels.
    Name::from_ascii(format!("{s}.")).unwrap_or_else(|_| Name::root())
}

fn record(name: &Name, rdata: RData) -> Record {
    Record::from_rdata(name.clone(), TTL, rdata)
}

fn addr(name: &Name, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => record(name, RData::A(A(v4))),
        IpAddr::V6(v6) => record(name, RData::AAAA(AAAA(v6))),
    }
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    matches!((qtype, ip), (RecordType::A | RecordType::ANY, IpAddr::V4(_)) | (RecordType::AAAA | RecordType::ANY, IpAddr::V6(_)))
}

impl Index {
    pub fn build(domain: &str, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], serial: u32) -> Index {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            let ns = s.metadata.namespace.as_deref().unwrap_or_default();
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                by_service.entry((ns, svc.as_str())).or_default().push(s);
            }
        }
        let mut index = Index {
            soa: record(
                &fqdn(&domain),
                RData::SOA(SOA::new(
                    fqdn(&format!("ns.dns.{domain}")),
                    fqdn(&format!("hostmaster.{domain}")),
                    serial,
                    7200,
                    1800,
                    86400,
                    TTL,
                )),
            ),
            domain,
            services: HashMap::new(),
            namespaces: HashSet::new(),
            ptr: HashMap::new(),
        };
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (&svc.metadata.namespace, &svc.metadata.name, &svc.spec) else { continue };
            let slices = by_service.get(&(ns.as_str(), name.as_str())).map(Vec::as_slice).unwrap_or(&[]);
            let base = format!("{name}.{ns}.svc.{}", index.domain);
            let kind = if spec.type_.as_deref() == Some("ExternalName") {
                Kind::ExternalName(spec.external_name.clone().unwrap_or_default().trim_end_matches('.').to_string())
            } else if spec.cluster_ip.as_deref() == Some("None") {
                Kind::Headless
            } else {
                let ips: Vec<IpAddr> =
                    spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter()).filter_map(|s| s.parse().ok()).collect();
                let mut seen = HashSet::new();
                Kind::ClusterIp(ips.into_iter().filter(|ip| seen.insert(*ip)).collect())
            };
            let mut entry = Svc { kind, ports: Vec::new(), backends: Vec::new() };
            match &entry.kind {
                Kind::ClusterIp(ips) => {
                    for ip in ips {
                        index.ptr.insert(*ip, base.clone());
                    }
                    for p in spec.ports.iter().flatten() {
                        entry.ports.push(NamedPort {
                            name: p.name.clone().unwrap_or_default(),
                            proto: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            port: p.port as u16,
                        });
                    }
                }
                Kind::Headless => {
                    let mut seen = HashSet::new();
                    for slice in slices {
                        for p in slice.ports.iter().flatten() {
                            let (name, proto, port) = (
                                p.name.clone().unwrap_or_default(),
                                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                                p.port.unwrap_or(0) as u16,
                            );
                            if port != 0 && !entry.ports.iter().any(|x| x.name == name && x.proto == proto) {
                                entry.ports.push(NamedPort { name, proto, port });
                            }
                        }
                        for ep in &slice.endpoints {
                            // Unset means ready; the slice controller already marks not-ready
                            // pods ready when the Service publishes not-ready addresses.
                            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                                continue;
                            }
                            for a in &ep.addresses {
                                let Ok(ip) = a.parse::<IpAddr>() else { continue };
                                if !seen.insert(ip) {
                                    continue;
                                }
                                let label = ep.hostname.clone().unwrap_or_else(|| dashed(ip));
                                index.ptr.entry(ip).or_insert_with(|| format!("{label}.{base}"));
                                entry.backends.push(Backend { ip, label });
                            }
                        }
                    }
                }
                Kind::ExternalName(_) => {}
            }
            index.namespaces.insert(ns.clone());
            index.services.insert((ns.clone(), name.clone()), entry);
        }
        index
    }

    fn nxdomain() -> Outcome {
        Outcome::Answer { rcode: ResponseCode::NXDomain, answers: vec![], additionals: vec![], soa: true }
    }

    fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Outcome {
        let soa = answers.is_empty();
        Outcome::Answer { rcode: ResponseCode::NoError, answers, additionals, soa }
    }

    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Outcome {
        let lower = qname.to_ascii().to_ascii_lowercase();
        let lower = lower.trim_end_matches('.');
        if lower.ends_with(".in-addr.arpa") || lower.ends_with(".ip6.arpa") {
            return self.reverse(qname, qtype);
        }
        let rel = if lower == self.domain {
            ""
        } else if let Some(r) = lower.strip_suffix(self.domain.as_str()).and_then(|r| r.strip_suffix('.')) {
            r
        } else {
            return Outcome::NotOurs;
        };
        let labels: Vec<&str> = if rel.is_empty() { vec![] } else { rel.split('.').collect() };
        match labels.as_slice() {
            [] => match qtype {
                RecordType::SOA => Self::records(vec![self.soa.clone()], vec![]),
                RecordType::NS => Self::records(vec![record(qname, RData::NS(NS(fqdn(&format!("ns.dns.{}", self.domain)))))], vec![]),
                _ => Self::records(vec![], vec![]),
            },
            ["dns-version"] => match qtype {
                RecordType::TXT => Self::records(vec![record(qname, RData::TXT(TXT::new(vec![SPEC_VERSION.into()])))], vec![]),
                _ => Self::records(vec![], vec![]),
            },
            ["svc"] | ["pod"] => Self::records(vec![], vec![]),
            [ns, "svc"] | [ns, "pod"] if self.namespaces.contains(*ns) => Self::records(vec![], vec![]),
            [ip, _ns, "pod"] => match undashed(ip) {
                Some(ip) if wants(qtype, &ip) => Self::records(vec![addr(qname, ip)], vec![]),
                Some(_) => Self::records(vec![], vec![]),
                None => Self::nxdomain(),
            },
            [svc, ns, "svc"] => self.service(qname, ns, svc, qtype),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(qname, ns, svc, Some((&port[1..], &proto[1..])), qtype)
            }
            [endpoint, svc, ns, "svc"] => self.endpoint(qname, ns, svc, endpoint, qtype),
            _ => Self::nxdomain(),
        }
    }

    fn lookup(&self, ns: &str, name: &str) -> Option<&Svc> {
        self.services.get(&(ns.to_string(), name.to_string()))
    }

    fn service(&self, qname: &Name, ns: &str, name: &str, qtype: RecordType) -> Outcome {
        let Some(svc) = self.lookup(ns, name) else { return Self::nxdomain() };
        if qtype == RecordType::SRV {
            return self.srv(qname, ns, name, None, qtype);
        }
        let answers = match &svc.kind {
            Kind::ExternalName(target) => vec![record(qname, RData::CNAME(CNAME(fqdn(target))))],
            Kind::ClusterIp(ips) => ips.iter().filter(|ip| wants(qtype, ip)).map(|ip| addr(qname, *ip)).collect(),
            Kind::Headless => svc.backends.iter().filter(|b| wants(qtype, &b.ip)).map(|b| addr(qname, b.ip)).collect(),
        };
        Self::records(answers, vec![])
    }

    /// SRV for `_port._proto.svc.ns.svc.zone` (or every port when asked on the service name).
    fn srv(&self, qname: &Name, ns: &str, name: &str, want: Option<(&str, &str)>, qtype: RecordType) -> Outcome {
        let Some(svc) = self.lookup(ns, name) else { return Self::nxdomain() };
        let ports: Vec<&NamedPort> = svc
            .ports
            .iter()
            .filter(|p| want.is_none_or(|(port, proto)| p.name.eq_ignore_ascii_case(port) && p.proto.eq_ignore_ascii_case(proto)))
            .collect();
        if ports.is_empty() {
            return Self::nxdomain();
        }
        if qtype != RecordType::SRV {
            return Self::records(vec![], vec![]);
        }
        let base = format!("{name}.{ns}.svc.{}", self.domain);
        let (mut answers, mut additionals) = (Vec::new(), Vec::new());
        match &svc.kind {
            Kind::Headless => {
                let weight = (100 / svc.backends.len().max(1)) as u16;
                for p in &ports {
                    for b in &svc.backends {
                        let target = fqdn(&format!("{}.{base}", b.label));
                        answers.push(record(qname, RData::SRV(SRV::new(0, weight, p.port, target.clone()))));
                        additionals.push(addr(&target, b.ip));
                    }
                }
            }
            Kind::ClusterIp(ips) => {
                let target = fqdn(&base);
                for p in &ports {
                    answers.push(record(qname, RData::SRV(SRV::new(0, 100, p.port, target.clone()))));
                }
                additionals.extend(ips.iter().map(|ip| addr(&target, *ip)));
            }
            Kind::ExternalName(_) => {}
        }
        Self::records(answers, additionals)
    }

    fn endpoint(&self, qname: &Name, ns: &str, name: &str, label: &str, qtype: RecordType) -> Outcome {
        let Some(svc) = self.lookup(ns, name) else { return Self::nxdomain() };
        let found: Vec<&Backend> = svc.backends.iter().filter(|b| b.label.eq_ignore_ascii_case(label)).collect();
        if found.is_empty() {
            return Self::nxdomain();
        }
        Self::records(found.iter().filter(|b| wants(qtype, &b.ip)).map(|b| addr(qname, b.ip)).collect(), vec![])
    }

    /// PTR for cluster IPs and headless endpoints; other addresses are not the cluster's to
    /// answer for (they fall through to the upstream resolvers, as CoreDNS's `fallthrough`).
    fn reverse(&self, qname: &Name, qtype: RecordType) -> Outcome {
        let Ok(net) = qname.parse_arpa_name() else { return Outcome::NotOurs };
        if net.prefix_len() != net.max_prefix_len() {
            return Outcome::NotOurs;
        }
        match self.ptr.get(&net.addr()) {
            Some(target) if qtype == RecordType::PTR => Self::records(vec![record(qname, RData::PTR(PTR(fqdn(target))))], vec![]),
            Some(_) => Self::records(vec![], vec![]),
            None => Outcome::NotOurs,
        }
    }

    /// The SOA negative answers carry.
    pub fn soa(&self) -> &Record {
        &self.soa
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }
    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn index() -> Index {
        let services = vec![
            svc(
                json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            ),
            svc(json!({"metadata": {"name": "db", "namespace": "data"}, "spec": {"clusterIP": "None",
                "ports": [{"name": "pg", "port": 5432}]}})),
            svc(
                json!({"metadata": {"name": "ext", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "example.org."}}),
            ),
        ];
        let slices = vec![slice(json!({"metadata": {"name": "db-x", "namespace": "data", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.42.2.6"], "conditions": {}},
            {"addresses": ["10.42.2.7"], "conditions": {"ready": false}},
        ]}))];
        Index::build("cluster.local", &services, &slices, 7)
    }

    fn ask(ix: &Index, name: &str, t: RecordType) -> (ResponseCode, Vec<String>, usize, bool) {
        match ix.answer(&Name::from_ascii(name).unwrap(), t) {
            Outcome::Answer { rcode, answers, additionals, soa } => {
                (rcode, answers.iter().map(|r| r.data.to_string()).collect(), additionals.len(), soa)
            }
            Outcome::NotOurs => panic!("{name} forwarded"),
        }
    }

    #[test]
    fn cluster_ip_service_has_a_and_nodata_for_aaaa() {
        let ix = index();
        assert_eq!(ask(&ix, "web.default.svc.cluster.local.", RecordType::A), (ResponseCode::NoError, vec!["10.43.0.20".into()], 0, false));
        assert_eq!(ask(&ix, "WEB.Default.svc.cluster.local", RecordType::A).1, vec!["10.43.0.20".to_string()]);
        assert_eq!(ask(&ix, "web.default.svc.cluster.local.", RecordType::AAAA), (ResponseCode::NoError, vec![], 0, true));
        assert_eq!(ask(&ix, "nope.default.svc.cluster.local.", RecordType::A).0, ResponseCode::NXDomain);
        assert_eq!(ask(&ix, "web.other.svc.cluster.local.", RecordType::A).0, ResponseCode::NXDomain);
    }

    #[test]
    fn headless_service_answers_ready_endpoints_and_their_names() {
        let ix = index();
        let (rc, mut ips, _, _) = ask(&ix, "db.data.svc.cluster.local.", RecordType::A);
        ips.sort();
        assert_eq!((rc, ips), (ResponseCode::NoError, vec!["10.42.1.5".to_string(), "10.42.2.6".into()]));
        assert_eq!(ask(&ix, "db-0.db.data.svc.cluster.local.", RecordType::A).1, vec!["10.42.1.5".to_string()]);
        assert_eq!(ask(&ix, "10-42-2-6.db.data.svc.cluster.local.", RecordType::A).1, vec!["10.42.2.6".to_string()]);
        assert_eq!(ask(&ix, "10-42-2-7.db.data.svc.cluster.local.", RecordType::A).0, ResponseCode::NXDomain);
    }

    #[test]
    fn srv_for_named_ports() {
        let ix = index();
        assert_eq!(
            ask(&ix, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            (ResponseCode::NoError, vec!["0 100 80 web.default.svc.cluster.local.".into()], 1, false)
        );
        assert_eq!(
            ask(&ix, "_dns._udp.web.default.svc.cluster.local.", RecordType::SRV).1,
            vec!["0 100 53 web.default.svc.cluster.local.".to_string()]
        );
        assert_eq!(ask(&ix, "_http._udp.web.default.svc.cluster.local.", RecordType::SRV).0, ResponseCode::NXDomain);
        let (rc, mut targets, additionals, _) = ask(&ix, "_pg._tcp.db.data.svc.cluster.local.", RecordType::SRV);
        targets.sort();
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(
            targets,
            vec!["0 50 15432 10-42-2-6.db.data.svc.cluster.local.".to_string(), "0 50 15432 db-0.db.data.svc.cluster.local.".into()]
        );
        assert_eq!(additionals, 2);
        // The name exists; another type is NODATA.
        assert_eq!(ask(&ix, "_pg._tcp.db.data.svc.cluster.local.", RecordType::A), (ResponseCode::NoError, vec![], 0, true));
    }

    #[test]
    fn pods_external_names_and_intermediate_names() {
        let ix = index();
        assert_eq!(ask(&ix, "10-42-0-9.default.pod.cluster.local.", RecordType::A).1, vec!["10.42.0.9".to_string()]);
        assert_eq!(ask(&ix, "10-42-0-9.default.pod.cluster.local.", RecordType::AAAA).1, Vec::<String>::new());
        assert_eq!(ask(&ix, "not-an-ip.default.pod.cluster.local.", RecordType::A).0, ResponseCode::NXDomain);
        assert_eq!(ask(&ix, "ext.default.svc.cluster.local.", RecordType::A).1, vec!["example.org.".to_string()]);
        assert_eq!(ask(&ix, "default.svc.cluster.local.", RecordType::A), (ResponseCode::NoError, vec![], 0, true));
        assert_eq!(ask(&ix, "svc.cluster.local.", RecordType::A).0, ResponseCode::NoError);
        assert_eq!(ask(&ix, "nons.svc.cluster.local.", RecordType::A).0, ResponseCode::NXDomain);
        assert_eq!(ask(&ix, "a.b.c.d.e.f.cluster.local.", RecordType::A).0, ResponseCode::NXDomain);
        assert_eq!(ask(&ix, "cluster.local.", RecordType::SOA).1.len(), 1);
        assert_eq!(ask(&ix, "dns-version.cluster.local.", RecordType::TXT).1, vec!["1.1.0".to_string()]);
    }

    #[test]
    fn reverse_lookups_and_forwarding() {
        let ix = index();
        assert_eq!(ask(&ix, "20.0.43.10.in-addr.arpa.", RecordType::PTR).1, vec!["web.default.svc.cluster.local.".to_string()]);
        assert_eq!(ask(&ix, "5.1.42.10.in-addr.arpa.", RecordType::PTR).1, vec!["db-0.db.data.svc.cluster.local.".to_string()]);
        assert_eq!(ix.answer(&Name::from_ascii("1.0.0.192.in-addr.arpa.").unwrap(), RecordType::PTR), Outcome::NotOurs);
        assert_eq!(ix.answer(&Name::from_ascii("example.org.").unwrap(), RecordType::A), Outcome::NotOurs);
        assert_eq!(ix.answer(&Name::from_ascii("notcluster.local.").unwrap(), RecordType::A), Outcome::NotOurs);
    }
}
