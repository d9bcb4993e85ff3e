//! The Node object from real readings of this machine: capacity and allocatable, addresses,
//! nodeInfo, well-known labels, and the conditions (Ready, MemoryPressure, DiskPressure,
//! PIDPressure) computed against upstream's default eviction thresholds.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::Config;

/// The version this kubelet reports (the Kubernetes API level skiff serves).
pub const KUBELET_VERSION: &str = "v1.33.0-skiff";
pub const KUBELET_PORT: i32 = 10250;
/// Upstream's default hard eviction thresholds: memory.available<100Mi, nodefs.available<10%,
/// pid.available<... (none by default upstream; we flag the last 1% of pid_max).
pub const EVICTION_MEMORY_BYTES: i64 = 100 * 1024 * 1024;
pub const EVICTION_NODEFS_PERCENT: u64 = 10;

/// What the machine has right now.
#[derive(Clone, Debug, Default)]
pub struct Readings {
    pub cpus: i64,
    pub memory_total: i64,
    pub memory_available: i64,
    pub fs_total: i64,
    pub fs_available: i64,
    pub pid_max: i64,
    pub processes: i64,
}

impl Readings {
    pub fn read(data_dir: &Path) -> Readings {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let (fs_total, fs_available) = statvfs(data_dir).unwrap_or((0, 0));
        Readings {
            cpus: std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1),
            memory_total: mem("MemTotal"),
            memory_available: mem("MemAvailable"),
            fs_total,
            fs_available,
            pid_max: read_trim("/proc/sys/kernel/pid_max").parse().unwrap_or(32768),
            // "running/total" is the 4th field of /proc/loadavg.
            processes: read_trim("/proc/loadavg")
                .split_whitespace()
                .nth(3)
                .and_then(|f| f.split('/').nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Total and available bytes of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a plain C struct the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as i64;
    Some((st.f_blocks as i64 * frsize, st.f_bavail as i64 * frsize))
}

fn os_image() -> String {
    let rel = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    rel.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()).unwrap_or_else(|| "Linux".into())
}

pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn q(v: impl ToString) -> Quantity {
    Quantity(v.to_string())
}

/// capacity and allocatable (capacity minus kube- and system-reserved minus the hard eviction
/// thresholds, as upstream's node allocatable).
pub fn resources(cfg: &Config, r: &Readings) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let reserved = |name: &str, milli: bool| -> i64 {
        [&cfg.kube_reserved, &cfg.system_reserved]
            .iter()
            .filter_map(|m| m.get(name))
            .filter_map(|v| if milli { skiff_scheduler::quantity::parse_milli(v) } else { skiff_scheduler::quantity::parse_value(v) })
            .sum()
    };
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), q(r.cpus)),
        ("memory".to_string(), q(format!("{}Ki", r.memory_total / 1024))),
        ("ephemeral-storage".to_string(), q(format!("{}Ki", r.fs_total / 1024))),
        ("pods".to_string(), q(cfg.max_pods)),
        ("hugepages-2Mi".to_string(), q(0)),
    ]
    .into();
    let cpu_m = (r.cpus * 1000 - reserved("cpu", true)).max(0);
    let mem = (r.memory_total - reserved("memory", false) - EVICTION_MEMORY_BYTES).max(0);
    let fs = (r.fs_total - reserved("ephemeral-storage", false) - r.fs_total * EVICTION_NODEFS_PERCENT as i64 / 100).max(0);
    let allocatable: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), q(if cpu_m % 1000 == 0 { (cpu_m / 1000).to_string() } else { format!("{cpu_m}m") })),
        ("memory".to_string(), q(format!("{}Ki", mem / 1024))),
        ("ephemeral-storage".to_string(), q(fs)),
        ("pods".to_string(), q(cfg.max_pods)),
        ("hugepages-2Mi".to_string(), q(0)),
    ]
    .into();
    (capacity, allocatable)
}

/// One condition, keeping its lastTransitionTime when the status did not change.
fn condition(old: Option<&NodeStatus>, ty: &str, status: bool, reason: &str, message: &str, now: Timestamp) -> NodeCondition {
    let status = if status { "True" } else { "False" };
    let prev = old.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == ty));
    let transition = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => None,
    }
    .unwrap_or(Time(now));
    NodeCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(transition),
    }
}

/// What the runtime said about itself on the last check.
#[derive(Clone, Debug, Default)]
pub struct RuntimeState {
    pub version: String,
    pub runtime_ready: bool,
    pub network_ready: bool,
    pub message: String,
}

pub fn conditions(old: Option<&NodeStatus>, r: &Readings, rt: &RuntimeState, now: Timestamp) -> Vec<NodeCondition> {
    let mem_pressure = r.memory_available < EVICTION_MEMORY_BYTES;
    let disk_pressure = r.fs_total > 0 && (r.fs_available as u128 * 100) < (r.fs_total as u128 * EVICTION_NODEFS_PERCENT as u128);
    let pid_pressure = r.processes > r.pid_max - r.pid_max / 100;
    let ready = rt.runtime_ready && rt.network_ready;
    let ready_msg = if ready {
        "kubelet is posting ready status".to_string()
    } else if !rt.runtime_ready {
        format!("container runtime is down: {}", rt.message)
    } else {
        format!("container runtime network not ready: {}", rt.message)
    };
    vec![
        condition(
            old,
            "MemoryPressure",
            mem_pressure,
            if mem_pressure { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
            if mem_pressure { "kubelet has insufficient memory available" } else { "kubelet has sufficient memory available" },
            now,
        ),
        condition(
            old,
            "DiskPressure",
            disk_pressure,
            if disk_pressure { "KubeletHasDiskPressure" } else { "KubeletHasNoDiskPressure" },
            if disk_pressure { "kubelet has disk pressure" } else { "kubelet has no disk pressure" },
            now,
        ),
        condition(
            old,
            "PIDPressure",
            pid_pressure,
            if pid_pressure { "KubeletHasInsufficientPID" } else { "KubeletHasSufficientPID" },
            if pid_pressure { "kubelet has insufficient PID available" } else { "kubelet has sufficient PID available" },
            now,
        ),
        condition(old, "Ready", ready, if ready { "KubeletReady" } else { "KubeletNotReady" }, &ready_msg, now),
    ]
}

/// The Node as this kubelet registers it (status included; the API server takes status on create).
pub fn build(cfg: &Config, r: &Readings, rt: &RuntimeState, now: Timestamp) -> Node {
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname".to_string(), cfg.node_name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), oci_arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), oci_arch().to_string()),
    ]
    .into();
    labels.extend(cfg.node_labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels),
            annotations: Some([("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec { taints: (!cfg.node_taints.is_empty()).then(|| cfg.node_taints.clone()), ..Default::default() }),
        status: Some(status(cfg, None, r, rt, now)),
    }
}

pub fn status(cfg: &Config, old: Option<&NodeStatus>, r: &Readings, rt: &RuntimeState, now: Timestamp) -> NodeStatus {
    let (capacity, allocatable) = resources(cfg, r);
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions(old, r, rt, now)),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: cfg.node_ip.to_string() },
            NodeAddress { type_: "Hostname".into(), address: cfg.node_name.clone() },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: cfg.kubelet_port as i32 }) }),
        node_info: Some(NodeSystemInfo {
            architecture: oci_arch().into(),
            operating_system: "linux".into(),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            os_image: os_image(),
            container_runtime_version: rt.version.clone(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: KUBELET_VERSION.into(),
            machine_id: read_trim("/etc/machine-id"),
            system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether two statuses differ in anything but heartbeat times (then a post can wait for the
/// report frequency).
pub fn changed(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s.images = None;
        s.volumes_attached = None;
        s.volumes_in_use = None;
        s.phase = None;
        s.config = None;
        s.runtime_handlers = None;
        s.features = None;
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::for_test("n1")
    }

    #[test]
    fn allocatable_subtracts_reservations_and_thresholds() {
        let mut c = cfg();
        c.kube_reserved.insert("cpu".into(), "250m".into());
        c.system_reserved.insert("memory".into(), "1Gi".into());
        let r = Readings {
            cpus: 2,
            memory_total: 4 << 30,
            memory_available: 2 << 30,
            fs_total: 100 << 30,
            fs_available: 50 << 30,
            pid_max: 32768,
            processes: 100,
        };
        let (cap, alloc) = resources(&c, &r);
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(alloc["cpu"].0, "1750m");
        assert_eq!(alloc["memory"].0, format!("{}Ki", ((4i64 << 30) - (1 << 30) - EVICTION_MEMORY_BYTES) / 1024));
        assert_eq!(alloc["pods"].0, "110");
    }

    #[test]
    fn pressure_conditions_follow_readings() {
        let now = Timestamp::now();
        let rt = RuntimeState { version: "containerd://1.6".into(), runtime_ready: true, network_ready: true, message: String::new() };
        let low = Readings {
            cpus: 1,
            memory_total: 1 << 30,
            memory_available: 50 << 20,
            fs_total: 100,
            fs_available: 5,
            pid_max: 1000,
            processes: 995,
        };
        let c = conditions(None, &low, &rt, now);
        let get = |t: &str| c.iter().find(|x| x.type_ == t).unwrap().status.clone();
        assert_eq!(get("MemoryPressure"), "True");
        assert_eq!(get("DiskPressure"), "True");
        assert_eq!(get("PIDPressure"), "True");
        assert_eq!(get("Ready"), "True");
        let down = RuntimeState { network_ready: false, ..rt };
        let c2 = conditions(None, &low, &down, now);
        let ready = c2.iter().find(|x| x.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert!(ready.message.as_ref().unwrap().contains("network not ready"));
    }
}
