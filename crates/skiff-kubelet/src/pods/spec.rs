//! A pod's spec turned into CRI requests: the sandbox config (hostname, DNS, hostPorts, cgroup
//! parent by QoS class, namespaces) and each container's config (command, env, mounts,
//! resources, security context), with upstream's labels so the runtime objects can be found again.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::cri::v1 as cri;
use crate::labels;
use skiff_scheduler::quantity::{parse_milli, parse_value};

/// Upstream's CFS period (100 ms) and the cpu.shares floor.
const CPU_PERIOD: i64 = 100_000;
const MIN_SHARES: i64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
}

/// Upstream's QoS rules: Guaranteed when every container has cpu and memory limits equal to its
/// requests, BestEffort when none has any request or limit, Burstable otherwise.
pub fn qos(pod: &Pod) -> Qos {
    let mut any = false;
    let mut guaranteed = true;
    for c in all_containers(pod) {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        for name in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(name)).and_then(|q| parse_milli(&q.0)).filter(|v| *v != 0);
            let q = requests.and_then(|m| m.get(name)).and_then(|q| parse_milli(&q.0)).filter(|v| *v != 0);
            any |= l.is_some() || q.is_some();
            match (l, q) {
                (Some(l), Some(q)) if l == q => {}
                (Some(_), None) => {} // a request defaults to its limit
                _ => guaranteed = false,
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => Qos::BestEffort,
        (true, true) => Qos::Guaranteed,
        (true, false) => Qos::Burstable,
    }
}

/// `<root>/kubepods[/burstable|/besteffort]/pod<uid>`, upstream's cgroupfs layout.
pub fn cgroup_parent(root: &str, pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let root = root.trim_end_matches('/');
    match qos(pod) {
        Qos::Guaranteed => format!("{root}/kubepods/pod{uid}"),
        Qos::Burstable => format!("{root}/kubepods/burstable/pod{uid}"),
        Qos::BestEffort => format!("{root}/kubepods/besteffort/pod{uid}"),
    }
}

pub fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let m = &pod.metadata;
    let mut l: HashMap<String, String> = m.labels.clone().unwrap_or_default().into_iter().collect();
    l.insert(labels::POD_NAME.into(), m.name.clone().unwrap_or_default());
    l.insert(labels::POD_NAMESPACE.into(), m.namespace.clone().unwrap_or_default());
    l.insert(labels::POD_UID.into(), m.uid.clone().unwrap_or_default());
    l.insert(labels::MANAGED.into(), labels::MANAGED_BY.into());
    l
}

fn namespaces(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    let host = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| spec.and_then(f).unwrap_or(false);
    let mode = |on_host: bool, default: cri::NamespaceMode| if on_host { cri::NamespaceMode::Node } else { default } as i32;
    let shared_pid = spec.and_then(|s| s.share_process_namespace).unwrap_or(false);
    cri::NamespaceOption {
        network: mode(host(|s| s.host_network), cri::NamespaceMode::Pod),
        pid: mode(host(|s| s.host_pid), if shared_pid { cri::NamespaceMode::Pod } else { cri::NamespaceMode::Container }),
        ipc: mode(host(|s| s.host_ipc), cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The pod's hostname as upstream derives it (spec.hostname, else the name, at most 63 chars).
pub fn hostname(pod: &Pod) -> String {
    let name = pod.spec.as_ref().and_then(|s| s.hostname.clone()).unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}

/// What the node knows about name resolution: its own resolver configuration and the cluster
/// DNS (upstream's --resolv-conf, --cluster-dns and --cluster-domain).
#[derive(Clone, Debug, Default)]
pub struct NodeDns {
    pub host_resolv: String,
    pub cluster_dns: Vec<std::net::IpAddr>,
    pub domain: String,
}

/// Upstream's limits on what goes into a pod's resolv.conf.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

/// DNS for the sandbox by dnsPolicy, as upstream's kubelet: ClusterFirst (for hostNetwork pods
/// only with ClusterFirstWithHostNet) gets the cluster DNS, the pod's namespace search path
/// before the node's and `ndots:5`; Default gets the node's resolvers; None only the pod's
/// dnsConfig, which every policy merges last (options override by name). Without a cluster
/// DNS, ClusterFirst falls back to Default as upstream does.
pub fn dns_config(pod: &Pod, node: &NodeDns) -> cri::DnsConfig {
    let spec = pod.spec.as_ref();
    let policy = spec.and_then(|s| s.dns_policy.as_deref()).unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let cluster = !node.cluster_dns.is_empty()
        && match policy {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !host_network,
            _ => false,
        };
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in node.host_resolv.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => servers.extend(f.next().map(str::to_string)),
            Some("search") => searches.extend(f.map(str::to_string)),
            Some("options") => options.extend(f.map(str::to_string)),
            _ => {}
        }
    }
    let mut d = cri::DnsConfig::default();
    if cluster {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        d.servers = node.cluster_dns.iter().map(|ip| ip.to_string()).collect();
        let domain = node.domain.trim_end_matches('.');
        push_unique(&mut d.searches, [format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()]);
        push_unique(&mut d.searches, searches);
        d.options = vec!["ndots:5".into()];
    } else if policy != "None" {
        (d.servers, d.searches, d.options) = (servers, searches, options);
    }
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        push_unique(&mut d.servers, extra.nameservers.iter().flatten().cloned());
        push_unique(&mut d.searches, extra.searches.iter().flatten().cloned());
        for o in extra.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            d.options.retain(|x| x.split(':').next() != Some(name));
            d.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            });
        }
    }
    d.servers.truncate(MAX_NAMESERVERS);
    d.searches.truncate(MAX_SEARCHES);
    d
}

fn port_mappings(pod: &Pod) -> Vec<cri::PortMapping> {
    all_containers(pod)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp,
                Some("SCTP") => cri::Protocol::Sctp,
                _ => cri::Protocol::Tcp,
            } as i32,
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

pub fn sandbox_config(pod: &Pod, attempt: u32, cgroup_root: &str, log_dir: &str, dns: &NodeDns) -> cri::PodSandboxConfig {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let psc = spec.and_then(|s| s.security_context.as_ref());
    let sysctls =
        psc.and_then(|s| s.sysctls.as_ref()).map(|v| v.iter().map(|s| (s.name.clone(), s.value.clone())).collect()).unwrap_or_default();
    let mut annotations: HashMap<String, String> = m.annotations.clone().unwrap_or_default().into_iter().collect();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname: if spec.and_then(|s| s.host_network).unwrap_or(false) { String::new() } else { hostname(pod) },
        log_directory: log_dir.into(),
        dns_config: Some(dns_config(pod, dns)),
        port_mappings: port_mappings(pod),
        labels: pod_labels(pod),
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(cgroup_root, pod),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(pod)),
                run_as_user: psc.and_then(|s| s.run_as_user).map(|value| cri::Int64Value { value }),
                run_as_group: psc.and_then(|s| s.run_as_group).map(|value| cri::Int64Value { value }),
                supplemental_groups: psc.and_then(|s| s.supplemental_groups.clone()).unwrap_or_default(),
                privileged: all_containers(pod).any(|c| c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false)),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

/// cgroup limits for a container: cpu.shares from the cpu request, CFS quota from the cpu limit,
/// the memory limit, and upstream's oom_score_adj by QoS class (containerd clamps it to what the
/// node allows).
pub fn resources(c: &Container, qos: Qos, node_memory: i64) -> cri::LinuxContainerResources {
    let r = c.resources.as_ref();
    let get = |m: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, name: &str| {
        m.and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let cpu_limit = get(limits, "cpu").and_then(|q| parse_milli(&q));
    let cpu_request = get(requests, "cpu").and_then(|q| parse_milli(&q)).or(cpu_limit);
    let mem_limit = get(limits, "memory").and_then(|q| parse_value(&q));
    let mem_request = get(requests, "memory").and_then(|q| parse_value(&q)).or(mem_limit);
    let shares = match cpu_request {
        Some(m) if m > 0 => (m * 1024 / 1000).max(MIN_SHARES),
        _ => MIN_SHARES,
    };
    let quota = cpu_limit.filter(|m| *m > 0).map(|m| (m * CPU_PERIOD / 1000).max(1000)).unwrap_or(0);
    let oom = match qos {
        Qos::Guaranteed => -997,
        Qos::BestEffort => 1000,
        Qos::Burstable => {
            let req = mem_request.unwrap_or(0);
            let adj = if node_memory > 0 { 1000 - (1000 * req as i128 / node_memory as i128) as i64 } else { 999 };
            adj.clamp(2, 999)
        }
    };
    cri::LinuxContainerResources {
        cpu_period: if quota > 0 { CPU_PERIOD } else { 0 },
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: mem_limit.unwrap_or(0),
        oom_score_adj: oom,
        ..Default::default()
    }
}

fn security_context(pod: &Pod, c: &Container) -> cri::LinuxContainerSecurityContext {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let run_as_user = sc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user));
    let run_as_group = sc.and_then(|s| s.run_as_group).or(psc.and_then(|s| s.run_as_group));
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    cri::LinuxContainerSecurityContext {
        capabilities: caps.map(|c| cri::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..Default::default()
        }),
        privileged,
        namespace_options: Some(namespaces(pod)),
        run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
        supplemental_groups: psc.and_then(|s| s.supplemental_groups.clone()).unwrap_or_default(),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        ..Default::default()
    }
}

/// A short stable hash of a container's spec: a different hash on the running container means
/// the spec changed (e.g. an image update on a bare pod) and it must be restarted.
pub fn container_hash(c: &Container) -> String {
    let bytes = serde_json::to_vec(c).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub struct ContainerInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub init: bool,
    pub attempt: u32,
    pub image_ref: String,
    pub envs: Vec<cri::KeyValue>,
    pub mounts: Vec<cri::Mount>,
    pub node_memory: i64,
    /// `container_hash` of the container as the pod spec has it (before `$(VAR)` expansion).
    pub hash: String,
}

pub fn container_config(i: ContainerInput<'_>) -> cri::ContainerConfig {
    let ContainerInput { pod, container: c, init, attempt, image_ref, envs, mounts, node_memory, hash } = i;
    let m = &pod.metadata;
    let mut labels: HashMap<String, String> = [
        (labels::POD_NAME.to_string(), m.name.clone().unwrap_or_default()),
        (labels::POD_NAMESPACE.to_string(), m.namespace.clone().unwrap_or_default()),
        (labels::POD_UID.to_string(), m.uid.clone().unwrap_or_default()),
        (labels::CONTAINER_NAME.to_string(), c.name.clone()),
    ]
    .into();
    labels.insert(labels::MANAGED.into(), labels::MANAGED_BY.into());
    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    let annotations: HashMap<String, String> = [
        (labels::RESTART_COUNT.to_string(), attempt.to_string()),
        (labels::CONTAINER_HASH.to_string(), hash),
        (labels::GRACE_PERIOD.to_string(), grace.to_string()),
        (labels::TERMINATION_MESSAGE_PATH.to_string(), c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into())),
        (labels::INIT_CONTAINER.to_string(), init.to_string()),
    ]
    .into();
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt }),
        image: Some(crate::cri::image_spec(&image_ref)),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs,
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", c.name, attempt),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(c, qos(pod), node_memory)),
            security_context: Some(security_context(pod, c)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn qos_classes_follow_upstream() {
        let be = pod(serde_json::json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(qos(&be), Qos::BestEffort);
        assert_eq!(cgroup_parent("/", &be), "/kubepods/besteffort/podu");
        let g = pod(
            serde_json::json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
        );
        assert_eq!(qos(&g), Qos::Guaranteed);
        assert_eq!(cgroup_parent("/skiff", &g), "/skiff/kubepods/podu");
        let b = pod(
            serde_json::json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]}}),
        );
        assert_eq!(qos(&b), Qos::Burstable);
    }

    #[test]
    fn cpu_and_memory_become_cgroup_values() {
        let p = pod(
            serde_json::json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}}}]}}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        let r = resources(c, qos(&p), 1 << 30);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        assert_eq!(r.oom_score_adj, 1000 - 1000 * 32 / 1024);
    }

    fn node_dns(cluster: bool) -> NodeDns {
        NodeDns {
            host_resolv: "nameserver 10.0.0.2\nsearch example.internal\noptions ndots:1 edns0\n".into(),
            cluster_dns: if cluster { vec!["10.43.0.10".parse().unwrap()] } else { vec![] },
            domain: "cluster.local".into(),
        }
    }

    #[test]
    fn cluster_first_gets_the_cluster_dns_and_search_path() {
        let p = pod(serde_json::json!({"metadata": {"namespace": "team"}, "spec": {"containers": []}}));
        let d = dns_config(&p, &node_dns(true));
        assert_eq!(d.servers, ["10.43.0.10"]);
        assert_eq!(d.searches, ["team.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.internal"]);
        assert_eq!(d.options, ["ndots:5"]);
        // Without a cluster DNS, ClusterFirst is the node's configuration.
        assert_eq!(dns_config(&p, &node_dns(false)).servers, ["10.0.0.2"]);
    }

    #[test]
    fn host_network_and_default_policies_get_the_node_resolver() {
        let host = pod(serde_json::json!({"spec": {"hostNetwork": true, "containers": []}}));
        assert_eq!(dns_config(&host, &node_dns(true)).servers, ["10.0.0.2"]);
        let with = pod(serde_json::json!({"spec": {"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []}}));
        assert_eq!(dns_config(&with, &node_dns(true)).servers, ["10.43.0.10"]);
        let default = pod(serde_json::json!({"spec": {"dnsPolicy": "Default", "containers": []}}));
        let d = dns_config(&default, &node_dns(true));
        assert_eq!(
            (d.servers, d.searches, d.options),
            (vec!["10.0.0.2".to_string()], vec!["example.internal".to_string()], vec!["ndots:1".to_string(), "edns0".into()])
        );
    }

    #[test]
    fn dns_config_merges_last_and_none_takes_only_it() {
        let p = pod(
            serde_json::json!({"spec": {"containers": [], "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["x.test"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}}),
        );
        let d = dns_config(&p, &node_dns(true));
        assert_eq!(d.servers, ["10.43.0.10", "1.2.3.4"]);
        assert_eq!(d.searches.last().map(String::as_str), Some("x.test"));
        assert_eq!(d.options, ["ndots:2", "edns0"]);
        let none = pod(serde_json::json!({"spec": {"dnsPolicy": "None", "containers": [], "dnsConfig": {"nameservers": ["1.2.3.4"]}}}));
        let d = dns_config(&none, &node_dns(true));
        assert_eq!((d.servers, d.searches, d.options), (vec!["1.2.3.4".to_string()], vec![], vec![]));
    }

    #[test]
    fn hostname_is_trimmed_to_63() {
        let p = pod(serde_json::json!({"metadata": {"name": format!("{}-x", "a".repeat(62))}, "spec": {"containers": []}}));
        assert_eq!(hostname(&p), "a".repeat(62));
    }
}
