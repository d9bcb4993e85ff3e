//! The scheduler's view of a node: the Node object plus the pods on it, condensed into what the
//! plugins read on every cycle (requested resources, used host ports), so filtering a node is a few
//! comparisons and no allocation.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

use crate::resources::{Resources, pod_requests};

/// A host port a pod holds on its node: (protocol, hostIP, port), as upstream's HostPortInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Upstream: same protocol and port, and either side binds 0.0.0.0 or both bind the same IP.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port && self.protocol == o.protocol && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")))
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|hp| *hp > 0)?;
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".to_string());
            Some(HostPort { protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, port })
        })
        .collect()
}

/// What the scheduler keeps of a pod: enough for resources, ports, and (anti-)affinity.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub key: String,
    pub uid: String,
    pub priority: i32,
    pub requests: Resources,
    /// Requests with upstream's scoring defaults for containers that request nothing.
    pub non_zero: Resources,
    pub host_ports: Vec<HostPort>,
    /// Has pod affinity or anti-affinity terms (so nodes without such pods skip that work).
    pub has_pod_affinity: bool,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        PodInfo {
            key: format!("{ns}/{name}"),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            requests: pod_requests(&pod, false),
            non_zero: pod_requests(&pod, true),
            host_ports: host_ports(&pod),
            has_pod_affinity: pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some()),
            pod,
        }
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }
}

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub node: Arc<Node>,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// How many of `pods` have pod (anti-)affinity terms.
    pub pods_with_affinity: usize,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let mut n = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            node: node.clone(),
            allocatable: Resources::default(),
            allowed_pods: 0,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: Vec::new(),
            used_ports: Vec::new(),
            pods_with_affinity: 0,
        };
        n.set_node(node);
        n
    }

    /// Replaces the Node object, keeping the pods accounted on it.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let status = node.status.as_ref();
        let alloc = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        self.allocatable = Resources::from_list(alloc);
        self.allowed_pods = alloc.and_then(|a| a.get("pods")).and_then(|q| crate::quantity::parse_value(&q.0)).unwrap_or(0);
        self.node = node;
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
    }

    pub fn unschedulable(&self) -> bool {
        self.node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.add(&p.non_zero);
        self.used_ports.extend(p.host_ports.iter().cloned());
        self.pods_with_affinity += p.has_pod_affinity as usize;
        self.pods.push(p);
    }

    /// Removes the pod with `uid`; returns whether it was there.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.uid == uid) else { return false };
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.non_zero_requested.sub(&p.non_zero);
        self.pods_with_affinity -= p.has_pod_affinity as usize;
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        true
    }
}
