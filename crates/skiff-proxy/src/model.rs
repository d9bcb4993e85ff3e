//! What the proxy programs, reduced from Services and EndpointSlices: one `ServicePort` per
//! (Service, port), with the endpoints that serve it and the traffic policies that pick among them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// nftables' name for the protocol.
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (its `nodeName`), for the Local traffic policies.
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port-name/proto`, stable for the Service's lifetime; names the chains.
    pub id: String,
    pub proto: Proto,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// LoadBalancer ingress IPs and spec.externalIPs: traffic arriving for them is external.
    pub external_ips: Vec<Ipv4Addr>,
    /// externalTrafficPolicy: Local (only for NodePort / LoadBalancer / external IPs).
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    /// sessionAffinity: ClientIP, with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Endpoints for traffic that may go anywhere in the cluster: the ready ones, or, when none
    /// is ready, those still serving while terminating (upstream's ProxyTerminatingEndpoints).
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        pick(self.endpoints.iter())
    }

    /// Likewise among this node's endpoints.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        pick(self.endpoints.iter().filter(|e| e.local))
    }

    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

fn pick<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<_> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

fn ipv4s<'a>(ips: impl Iterator<Item = &'a String>) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = ips.filter_map(|s| s.parse().ok()).collect();
    v.sort();
    v.dedup();
    v
}

/// The ports of one Service with their endpoints from `slices` (the Service's EndpointSlices).
/// ExternalName and headless Services program nothing; nor do IPv6 addresses yet.
pub fn service_ports(svc: &Service, slices: &[&EndpointSlice], node_name: &str) -> Vec<ServicePort> {
    let Some(spec) = svc.spec.as_ref() else { return Vec::new() };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ipv4s(ips.iter()),
        _ => ipv4s(spec.cluster_ip.iter()),
    };
    if cluster_ips.is_empty() {
        return Vec::new();
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let mut external: Vec<&String> = spec.external_ips.iter().flatten().collect();
    let lb_ips: Vec<&String> = svc
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_ref())
        .collect();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        external.extend(lb_ips);
    }
    let external_ips = ipv4s(external.into_iter());
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map(|t| t.clamp(1, 86400) as u32)
            .unwrap_or(10800)
    });
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer"));

    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(proto) = Proto::parse(p.protocol.as_deref()) else { continue };
        let port_name = p.name.clone().unwrap_or_default();
        let mut endpoints: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            // The slice's port entry with this Service port's name carries the target port.
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|sp| sp.name.clone().unwrap_or_default() == port_name && Proto::parse(sp.protocol.as_deref()) == Some(proto))
            else {
                continue;
            };
            let Some(port) = target.port.and_then(|p| u16::try_from(p).ok()) else { continue };
            for ep in &slice.endpoints {
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let local = ep.node_name.as_deref() == Some(node_name);
                for ip in ipv4s(ep.addresses.iter()) {
                    // An address in two slices (mid-move between slices): keep the readier view.
                    let e = Endpoint { ip, port, local, ready, serving, terminating };
                    endpoints.entry((ip, port)).and_modify(|old| old.ready |= ready).or_insert(e);
                }
            }
        }
        out.push(ServicePort {
            id: format!("{ns}/{name}:{port_name}/{}", proto.nft()),
            proto,
            cluster_ips: cluster_ips.clone(),
            port: p.port as u16,
            node_port: p.node_port.filter(|_| node_ports).map(|n| n as u16),
            external_ips: external_ips.clone(),
            external_local,
            internal_local,
            affinity_timeout,
            endpoints: endpoints.into_values().collect(),
        });
    }
    out
}

/// Builders for the proxy's unit tests: a ClusterIP port with ready endpoints, adjusted field by
/// field where a test needs more.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Endpoint, Proto, ServicePort};
    use crate::rules::Options;

    pub fn opts() -> Options {
        Options { cluster_cidr: Some("10.42.0.0/16".parse().unwrap()), service_cidr: "10.43.0.0/16".parse().unwrap() }
    }

    pub fn endpoint(ip: &str, port: u16, local: bool) -> Endpoint {
        Endpoint { ip: ip.parse().unwrap(), port, local, ready: true, serving: true, terminating: false }
    }

    pub fn port(id: &str, proto: Proto, cluster_ip: &str, port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            id: id.into(),
            proto,
            cluster_ips: vec![cluster_ip.parse().unwrap()],
            port,
            node_port: None,
            external_ips: vec![],
            external_local: false,
            internal_local: false,
            affinity_timeout: None,
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ports_take_target_ports_from_slices_by_name() {
        let s = svc(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
                     "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP"}
        }));
        let es = slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "nodeName": "a", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.5"], "nodeName": "b", "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }));
        let ports = service_ports(&s, &[&es], "a");
        assert_eq!(ports.len(), 2);
        let http = &ports[0];
        assert_eq!(http.id, "ns/web:http/tcp");
        assert_eq!((http.port, http.node_port), (80, Some(30080)));
        assert!(http.external_local && !http.internal_local);
        assert_eq!(http.affinity_timeout, Some(10800));
        assert_eq!(http.endpoints.len(), 2);
        assert_eq!(http.cluster_endpoints().len(), 1, "the terminating endpoint is only a fallback");
        assert_eq!(http.cluster_endpoints()[0].port, 8080);
        assert_eq!(ports[1].proto, Proto::Udp);
        assert_eq!(ports[1].endpoints[0].port, 5353);
    }

    #[test]
    fn terminating_endpoints_serve_when_nothing_is_ready() {
        let s = svc(
            serde_json::json!({"metadata": {"name": "w", "namespace": "n"}, "spec": {"clusterIP": "10.43.0.9", "ports": [{"port": 80}]}}),
        );
        let es = slice(serde_json::json!({
            "metadata": {"name": "w-1", "namespace": "n"}, "addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [{"addresses": ["10.42.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}}]
        }));
        let p = &service_ports(&s, &[&es], "a")[0];
        assert_eq!(p.node_port, None);
        assert_eq!(p.cluster_endpoints().len(), 1);
        assert!(p.local_endpoints().is_empty());
    }

    #[test]
    fn headless_and_external_name_services_program_nothing() {
        let headless = svc(serde_json::json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        assert!(service_ports(&headless, &[], "a").is_empty());
        let ext = svc(serde_json::json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}));
        assert!(service_ports(&ext, &[], "a").is_empty());
    }

    #[test]
    fn load_balancer_ingress_ips_are_external() {
        let s = svc(serde_json::json!({
            "metadata": {"name": "lb", "namespace": "n"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.20", "ports": [{"port": 80, "nodePort": 31000}], "externalIPs": ["192.0.2.9"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.1"}]}}
        }));
        let p = &service_ports(&s, &[], "a")[0];
        assert_eq!(p.external_ips, vec!["10.99.0.1".parse::<Ipv4Addr>().unwrap(), "192.0.2.9".parse().unwrap()]);
        assert!(p.has_external());
    }
}
