//! The Node object a kubelet would register, and the two writes a kubelet makes to it: the first
//! registration (create, or take over an existing Node) and the periodic status report.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::config::SimConfig;

pub const KUBELET_VERSION: &str = "v1.33.0-skiff-sim";
pub const CONTAINER_RUNTIME_VERSION: &str = "sim://1";
/// The kubelet's default port, so `kubectl describe node` reads as usual (nothing listens).
const KUBELET_PORT: i32 = 10250;

/// Node i's InternalIP: consecutive addresses from 10.200.0.1, which stay inside 10.0.0.0/8 for
/// up to `MAX_NODES` nodes.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + i as u32)
}

/// Node i's pod range: a /24 of 100.64.0.0/10 (16,384 of them; more nodes reuse ranges, which
/// nothing in a simulation routes anyway).
pub fn pod_cidr_base(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (((i % 16_384) as u32) << 8))
}

/// The `n`th pod address handed out on node i: .1 to .254 of its /24, round robin.
pub fn pod_ip(i: usize, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr_base(i)) + 1 + n % 254)
}

pub fn labels(cfg: &SimConfig, i: usize) -> BTreeMap<String, String> {
    let name = cfg.node_name(i);
    let mut l: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("node.kubernetes.io/instance-type", "sim"),
        ("topology.kubernetes.io/region", "sim"),
        ("type", "skiff-sim"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    l.insert("topology.kubernetes.io/zone".into(), format!("zone-{}", i % cfg.zones.max(1)));
    l.extend(cfg.node_labels.clone());
    l
}

/// The kubelet's four node conditions, healthy. `since` is when they last changed (the process
/// start: one timestamp for all nodes instead of one per node), `now` the heartbeat.
pub fn conditions(since: Timestamp, now: Timestamp) -> Vec<NodeCondition> {
    // Type, status, reason and message as upstream's kubelet (pkg/kubelet/nodestatus) writes them.
    [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    })
    .collect()
}

pub fn status(cfg: &SimConfig, i: usize, since: Timestamp, now: Timestamp) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", cfg.cpu.clone()),
        ("memory", cfg.memory.clone()),
        ("pods", cfg.pods.to_string()),
        ("ephemeral-storage", cfg.ephemeral_storage.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    // Stable per node and distinct across nodes, so tools that key on them (or dedupe) behave.
    let id = format!("{:08x}-5eed-4000-8000-{:012x}", 0x5100_0000u32, i);
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions(since, now)),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: node_ip(i).to_string() },
            NodeAddress { type_: "Hostname".into(), address: cfg.node_name(i) },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: KUBELET_PORT }) }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: id.clone(),
            container_runtime_version: CONTAINER_RUNTIME_VERSION.into(),
            kernel_version: "6.1.0-skiff-sim".into(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: id.replace('-', ""),
            operating_system: "linux".into(),
            os_image: "skiff sim".into(),
            system_uuid: id,
            swap: None,
        }),
        ..Default::default()
    }
}

pub fn build_node(cfg: &SimConfig, i: usize, since: Timestamp, now: Timestamp) -> Node {
    let cidr = format!("{}/24", pod_cidr_base(i));
    Node {
        metadata: ObjectMeta { name: Some(cfg.node_name(i)), labels: Some(labels(cfg, i)), ..Default::default() },
        spec: Some(NodeSpec {
            pod_cidr: Some(cidr.clone()),
            pod_cidrs: Some(vec![cidr]),
            taints: (!cfg.node_taints.is_empty()).then(|| cfg.node_taints.clone()),
            ..Default::default()
        }),
        status: Some(status(cfg, i, since, now)),
    }
}

/// Creates node i with its status in one request (the API server keeps a Node's status on
/// create). A Node that already exists is taken over: its status becomes ours, its labels, taints
/// and spec stay as they are.
pub async fn register(api: &Api<Node>, cfg: &SimConfig, i: usize, since: Timestamp) -> Result<Node, kube::Error> {
    let node = build_node(cfg, i, since, Timestamp::now());
    match api.create(&PostParams::default(), &node).await {
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let patch = Node { status: node.status, ..Default::default() };
            api.patch_status(&cfg.node_name(i), &PatchParams::default(), &Patch::Merge(&patch)).await
        }
        r => r,
    }
}

/// The periodic status report: only the conditions' heartbeat moves, so the patch is small.
pub async fn report_status(api: &Api<Node>, cfg: &SimConfig, i: usize, since: Timestamp) -> Result<(), kube::Error> {
    let patch = Node {
        status: Some(NodeStatus { conditions: Some(conditions(since, Timestamp::now())), ..Default::default() }),
        ..Default::default()
    };
    api.patch_status(&cfg.node_name(i), &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_labels, parse_taints};

    #[test]
    fn node_object_has_what_a_kubelet_registers() {
        let cfg = SimConfig {
            nodes: 10,
            zones: 3,
            node_labels: parse_labels("team=a,type=custom").unwrap(),
            node_taints: parse_taints("dedicated=sim:NoSchedule").unwrap(),
            ..Default::default()
        };
        let t0: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2025-01-01T00:05:00Z".parse().unwrap();
        let n = build_node(&cfg, 4, t0, t1);
        assert_eq!(n.metadata.name.as_deref(), Some("sim-4"));
        let l = n.metadata.labels.as_ref().unwrap();
        assert_eq!(l["kubernetes.io/hostname"], "sim-4");
        assert_eq!(l["topology.kubernetes.io/zone"], "zone-1");
        assert_eq!(l["topology.kubernetes.io/region"], "sim");
        assert_eq!(l["node.kubernetes.io/instance-type"], "sim");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["team"], "a");
        assert_eq!(l["type"], "custom", "--node-labels win over the defaults");
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.taints.as_ref().unwrap()[0].key, "dedicated");
        assert_eq!(spec.pod_cidr.as_deref(), Some("100.64.4.0/24"));

        let s = n.status.as_ref().unwrap();
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "32");
        assert_eq!(cap["memory"].0, "256Gi");
        assert_eq!(cap["pods"].0, "110");
        assert!(cap.contains_key("ephemeral-storage"));
        assert_eq!(s.allocatable, s.capacity);
        let conds = s.conditions.as_ref().unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(ready.message.as_deref(), Some("kubelet is posting ready status"));
        assert_eq!(ready.last_transition_time, Some(Time(t0)));
        assert_eq!(ready.last_heartbeat_time, Some(Time(t1)));
        for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(conds.iter().find(|c| c.type_ == t).unwrap().status, "False", "{t}");
        }
        let addrs = s.addresses.as_ref().unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "10.200.0.5");
        assert_eq!(addrs[1].address, "sim-4");
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.container_runtime_version, "sim://1");
        assert_eq!((info.operating_system.as_str(), info.architecture.as_str()), ("linux", "amd64"));
        assert_eq!(s.daemon_endpoints.as_ref().unwrap().kubelet_endpoint.as_ref().unwrap().port, 10250);

        // No taints: no empty list on the wire.
        assert!(build_node(&SimConfig::default(), 0, t0, t1).spec.unwrap().taints.is_none());
    }

    #[test]
    fn addresses_are_distinct_and_wrap_inside_their_ranges() {
        assert_eq!(node_ip(0).to_string(), "10.200.0.1");
        assert_eq!(node_ip(255).to_string(), "10.200.1.0");
        assert_eq!(node_ip(crate::config::MAX_NODES - 1).octets()[0], 10);
        assert_eq!(pod_ip(1, 0).to_string(), "100.64.1.1");
        assert_eq!(pod_ip(1, 253).to_string(), "100.64.1.254");
        assert_eq!(pod_ip(1, 254).to_string(), "100.64.1.1");
        assert_eq!(pod_ip(16_383, 0).to_string(), "100.127.255.1");
    }
}
