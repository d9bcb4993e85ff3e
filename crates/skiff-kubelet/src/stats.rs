//! Resource usage (cAdvisor's role): `/stats/summary` in the Summary API's shape (stats/v1alpha1
//! field names). The node's CPU and memory come from the root cgroup, its filesystem from the
//! data dir's statvfs, its network from /proc/net/dev; each container's CPU, memory and writable
//! layer from CRI ListContainerStats, its log size from the log file, and each pod's network
//! from /proc/<sandbox pid>/net/dev. CPU rates (nanocores) come from two cumulative samples, as
//! upstream's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::cri::Cri;
use crate::cri::v1 as cri;
use crate::labels;

/// Cumulative CPU nanoseconds at a time (ns since the epoch).
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: i64,
    cpu_ns: u64,
}

/// Previous samples per key ("" is the node), to turn totals into rates.
#[derive(Default)]
pub struct Rates {
    last: Mutex<HashMap<String, Sample>>,
}

impl Rates {
    /// Records a sample and returns the rate since the previous one (None for the first).
    fn rate(&self, key: &str, s: Sample) -> Option<u64> {
        let mut last = self.last.lock().expect("rates lock");
        let prev = last.insert(key.to_string(), s)?;
        let dt = s.at - prev.at;
        if dt <= 0 || s.cpu_ns < prev.cpu_ns {
            // Same instant, or a restarted container: keep the older sample for the next call.
            if dt <= 0 {
                last.insert(key.to_string(), prev);
            }
            return None;
        }
        Some(((s.cpu_ns - prev.cpu_ns) as u128 * 1_000_000_000 / dt as u128) as u64)
    }
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The node: cpuacct and memory of the root cgroup (v1), working set = usage - inactive_file.
fn node_sample() -> (Sample, u64, u64) {
    let at = Timestamp::now().as_nanosecond() as i64;
    let cpu_ns = read_u64("/sys/fs/cgroup/cpuacct/cpuacct.usage").unwrap_or(0);
    let usage = read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes").unwrap_or(0);
    let inactive = std::fs::read_to_string("/sys/fs/cgroup/memory/memory.stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("total_inactive_file ")?.trim().parse::<u64>().ok()))
        .unwrap_or(0);
    (Sample { at, cpu_ns }, usage.saturating_sub(inactive), usage)
}

fn rfc3339(ns: i64) -> String {
    Timestamp::from_nanosecond(ns as i128).unwrap_or(Timestamp::UNIX_EPOCH).to_string()
}

/// The summary document. The first call of a series samples twice, 200 ms apart, so rates exist.
pub async fn summary(cri: &Cri, rates: &Rates, node_name: &str, data_dir: &std::path::Path) -> Result<Value, tonic::Status> {
    let fresh = rates.last.lock().expect("rates lock").is_empty();
    if fresh {
        collect(cri, rates, node_name, data_dir).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    collect(cri, rates, node_name, data_dir).await
}

/// Interfaces of a network namespace from a `/proc/.../net/dev` file, loopback left out.
pub fn interfaces(net_dev: &str) -> Vec<Value> {
    net_dev
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let name = name.trim();
            (name != "lo" && f.len() >= 16)
                .then(|| json!({"name": name, "rxBytes": f[0], "rxErrors": f[2], "txBytes": f[8], "txErrors": f[10]}))
        })
        .collect()
}

fn network(net_dev: &str, time: &str) -> Value {
    let ifs = interfaces(net_dev);
    let mut v = ifs.iter().find(|i| i["name"] == "eth0").cloned().unwrap_or_else(|| json!({}));
    v["time"] = json!(time);
    v["interfaces"] = json!(ifs);
    v
}

/// The sandbox's PID (containerd's verbose status carries it in its `info` JSON).
async fn sandbox_pid(cri: &Cri, sandbox_id: &str) -> Option<u64> {
    let req = cri::PodSandboxStatusRequest { pod_sandbox_id: sandbox_id.into(), verbose: true };
    let resp = cri.runtime.clone().pod_sandbox_status(req).await.ok()?.into_inner();
    let info: Value = serde_json::from_str(resp.info.get("info")?).ok()?;
    info.get("pid")?.as_u64()
}

async fn collect(cri: &Cri, rates: &Rates, node_name: &str, data_dir: &std::path::Path) -> Result<Value, tonic::Status> {
    let (node, working_set, usage) = node_sample();
    let node_rate = rates.rate("", node);
    let stats = cri.runtime.clone().list_container_stats(cri::ListContainerStatsRequest { filter: None }).await?.into_inner().stats;
    let containers = cri.containers(None).await?;
    let by_id: HashMap<&str, &cri::Container> = containers.iter().map(|c| (c.id.as_str(), c)).collect();
    // pod uid → (ref, containers)
    let mut pods: HashMap<String, (Value, Vec<Value>, u64, u64, String)> = HashMap::new();
    for s in &stats {
        let Some(attrs) = &s.attributes else { continue };
        let Some(c) = by_id.get(attrs.id.as_str()) else { continue };
        if c.state != cri::ContainerState::ContainerRunning as i32 {
            continue;
        }
        let l = &c.labels;
        let (Some(uid), Some(name), Some(ns)) = (l.get(labels::POD_UID), l.get(labels::POD_NAME), l.get(labels::POD_NAMESPACE)) else {
            continue;
        };
        let cpu = s.cpu.as_ref();
        let at = cpu.map(|c| c.timestamp).filter(|t| *t > 0).unwrap_or_else(|| Timestamp::now().as_nanosecond() as i64);
        let total = cpu.and_then(|c| c.usage_core_nano_seconds.as_ref()).map(|v| v.value).unwrap_or(0);
        let nano = rates
            .rate(&attrs.id, Sample { at, cpu_ns: total })
            .unwrap_or_else(|| cpu.and_then(|c| c.usage_nano_cores.as_ref()).map(|v| v.value).unwrap_or(0));
        let ws = s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
        let entry = pods
            .entry(uid.clone())
            .or_insert_with(|| (json!({"name": name, "namespace": ns, "uid": uid}), Vec::new(), 0, 0, c.pod_sandbox_id.clone()));
        let rootfs = s.writable_layer.as_ref().and_then(|w| w.used_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
        let log_bytes = match cri.container_status(&c.id).await {
            Ok(Some(st)) => std::fs::metadata(&st.log_path).map(|m| m.len()).unwrap_or(0),
            _ => 0,
        };
        entry.1.push(json!({
            "name": attrs.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            "cpu": {"time": rfc3339(at), "usageNanoCores": nano, "usageCoreNanoSeconds": total},
            "memory": {"time": rfc3339(at), "workingSetBytes": ws},
            "rootfs": {"time": rfc3339(at), "usedBytes": rootfs},
            "logs": {"time": rfc3339(at), "usedBytes": log_bytes},
        }));
        entry.2 += nano;
        entry.3 += ws;
    }
    let now = rfc3339(node.at);
    let mut out = Vec::new();
    for (r, cs, cpu, mem, sandbox) in pods.into_values() {
        let mut p = json!({"podRef": r, "containers": cs, "cpu": {"time": now, "usageNanoCores": cpu}, "memory": {"time": now, "workingSetBytes": mem}});
        if let Some(pid) = sandbox_pid(cri, &sandbox).await
            && let Ok(dev) = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        {
            p["network"] = network(&dev, &now);
        }
        out.push(p);
    }
    let pods = out;
    let (fs_total, fs_avail) = crate::node::statvfs(data_dir).unwrap_or((0, 0));
    let node_net = network(&std::fs::read_to_string("/proc/net/dev").unwrap_or_default(), &now);
    Ok(json!({
        "node": {
            "nodeName": node_name,
            "cpu": {"time": now, "usageNanoCores": node_rate.unwrap_or(0), "usageCoreNanoSeconds": node.cpu_ns},
            "memory": {"time": now, "workingSetBytes": working_set, "usageBytes": usage},
            "fs": {"time": now, "capacityBytes": fs_total, "availableBytes": fs_avail, "usedBytes": fs_total - fs_avail},
            "network": node_net,
        },
        "pods": pods,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_from_net_dev() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      10    1    0    0     0          0         0     7000      12    2    0    0     0       0          0\n";
        let i = interfaces(dev);
        assert_eq!(i.len(), 1);
        assert_eq!(
            (i[0]["name"].as_str(), i[0]["rxBytes"].as_u64(), i[0]["txBytes"].as_u64(), i[0]["txErrors"].as_u64()),
            (Some("eth0"), Some(5000), Some(7000), Some(2))
        );
        assert_eq!(network(dev, "t")["rxBytes"], 5000);
    }

    #[test]
    fn rates_from_cumulative_samples() {
        let r = Rates::default();
        assert_eq!(r.rate("c", Sample { at: 1_000_000_000, cpu_ns: 0 }), None);
        // 0.5 s of CPU over 1 s: half a core.
        assert_eq!(r.rate("c", Sample { at: 2_000_000_000, cpu_ns: 500_000_000 }), Some(500_000_000));
        assert_eq!(r.rate("c", Sample { at: 2_000_000_000, cpu_ns: 600_000_000 }), None, "same instant");
        assert_eq!(r.rate("c", Sample { at: 3_000_000_000, cpu_ns: 600_000_000 }), Some(100_000_000));
        assert_eq!(r.rate("c", Sample { at: 4_000_000_000, cpu_ns: 10 }), None, "a restart resets the counter");
    }
}
