//! Resource usage (cAdvisor's role, reduced to what `kubectl top` and the metrics API need):
//! `/stats/summary` in the Summary API's shape (stats/v1alpha1 field names) with the node's CPU
//! and memory from the root cgroup and each container's from CRI ListContainerStats. CPU rates
//! (nanocores) come from two cumulative samples, as upstream's.

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
pub async fn summary(cri: &Cri, rates: &Rates, node_name: &str) -> Result<Value, tonic::Status> {
    let fresh = rates.last.lock().expect("rates lock").is_empty();
    if fresh {
        collect(cri, rates, node_name).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    collect(cri, rates, node_name).await
}

async fn collect(cri: &Cri, rates: &Rates, node_name: &str) -> Result<Value, tonic::Status> {
    let (node, working_set, usage) = node_sample();
    let node_rate = rates.rate("", node);
    let stats = cri.runtime.clone().list_container_stats(cri::ListContainerStatsRequest { filter: None }).await?.into_inner().stats;
    let containers = cri.containers(None).await?;
    let by_id: HashMap<&str, &cri::Container> = containers.iter().map(|c| (c.id.as_str(), c)).collect();
    // pod uid → (ref, containers)
    let mut pods: HashMap<String, (Value, Vec<Value>, u64, u64)> = HashMap::new();
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
        let entry = pods.entry(uid.clone()).or_insert_with(|| (json!({"name": name, "namespace": ns, "uid": uid}), Vec::new(), 0, 0));
        entry.1.push(json!({
            "name": attrs.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            "cpu": {"time": rfc3339(at), "usageNanoCores": nano, "usageCoreNanoSeconds": total},
            "memory": {"time": rfc3339(at), "workingSetBytes": ws},
        }));
        entry.2 += nano;
        entry.3 += ws;
    }
    let now = rfc3339(node.at);
    let pods: Vec<Value> = pods
        .into_values()
        .map(|(r, cs, cpu, mem)| json!({"podRef": r, "containers": cs, "cpu": {"time": now, "usageNanoCores": cpu}, "memory": {"time": now, "workingSetBytes": mem}}))
        .collect();
    Ok(json!({
        "node": {
            "nodeName": node_name,
            "cpu": {"time": now, "usageNanoCores": node_rate.unwrap_or(0), "usageCoreNanoSeconds": node.cpu_ns},
            "memory": {"time": now, "workingSetBytes": working_set, "usageBytes": usage},
        },
        "pods": pods,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
