//! What a simulation looks like: node count, names, sizes, labels and taints, timings. The parsers
//! take the CLI's string forms (`k=v,k2=v2`, `key=value:NoSchedule`) so the library and the
//! command line share one definition of what is valid.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;

/// Upstream kubelet's nodeStatusReportFrequency: how often a full status is written when nothing
/// changed (the Lease carries liveness in between).
pub const NODE_STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(300);

/// Node addresses are consecutive from 10.200.0.1; this keeps them inside 10.0.0.0/8 (and is far
/// beyond what one process should simulate anyway).
pub const MAX_NODES: usize = 1_000_000;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub name_prefix: String,
    /// Quantities as the API writes them (`32`, `256Gi`); capacity and allocatable are equal.
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub ephemeral_storage: String,
    /// Nodes are spread round-robin over `zone-0..zone-{zones-1}`.
    pub zones: usize,
    /// Added to every node's well-known labels (and win over them on a clash).
    pub node_labels: BTreeMap<String, String>,
    pub node_taints: Vec<Taint>,
    /// How often each node's Lease is renewed (the kubelet's default is 10s of a 40s lease).
    pub lease_interval: Duration,
    /// How long a bound pod "starts" before it is reported Running (and a deleted one "stops").
    pub run_delay: Duration,
    pub node_status_interval: Duration,
    /// In-flight API requests per concern (registration, leases, pods).
    pub concurrency: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1,
            name_prefix: "sim-".into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            ephemeral_storage: "1Ti".into(),
            zones: 3,
            node_labels: BTreeMap::new(),
            node_taints: Vec::new(),
            lease_interval: Duration::from_secs(10),
            run_delay: Duration::ZERO,
            node_status_interval: NODE_STATUS_REPORT_FREQUENCY,
            concurrency: 32,
        }
    }
}

impl SimConfig {
    pub fn node_name(&self, i: usize) -> String {
        format!("{}{i}", self.name_prefix)
    }

    /// The index of one of our nodes, from its name; `None` for anybody else's node. Parsing the
    /// name instead of keeping a map costs no memory per node.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        let digits = name.strip_prefix(self.name_prefix.as_str())?;
        // `sim-01` is not `sim-1`: only the canonical spelling is ours.
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<usize>().ok().filter(|&i| i < self.nodes)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes <= MAX_NODES, "at most {MAX_NODES} nodes per process, got {}", self.nodes);
        anyhow::ensure!(self.zones >= 1, "zones must be at least 1");
        anyhow::ensure!(self.concurrency >= 1, "concurrency must be at least 1");
        anyhow::ensure!(!self.lease_interval.is_zero(), "the lease interval must be positive");
        anyhow::ensure!(!self.node_status_interval.is_zero(), "the node status interval must be positive");
        // The longest name must still be a DNS subdomain (and a label value, for kubernetes.io/hostname).
        let longest = self.node_name(self.nodes.saturating_sub(1));
        if let Err(e) = check_label_value(&longest) {
            anyhow::bail!("node name {longest:?} (from the name prefix {:?}) is not valid: {e}", self.name_prefix);
        }
        anyhow::ensure!(
            longest.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && !longest.contains(['_', '.'])
                && longest == longest.to_lowercase(),
            "node name {longest:?} must be lowercase letters, digits and '-'"
        );
        for (what, q) in [("cpu", &self.cpu), ("memory", &self.memory), ("ephemeral-storage", &self.ephemeral_storage)] {
            parse_quantity(q).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        }
        for (k, v) in &self.node_labels {
            check_label_key(k).map_err(|e| anyhow::anyhow!("label {k:?}: {e}"))?;
            check_label_value(v).map_err(|e| anyhow::anyhow!("label {k:?}: {e}"))?;
        }
        Ok(())
    }
}

/// `k=v,k2=v2` (the empty string is no labels).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v) = term.split_once('=').ok_or_else(|| format!("{term:?} is not key=value"))?;
        check_label_key(k).map_err(|e| format!("{term:?}: {e}"))?;
        check_label_value(v).map_err(|e| format!("{term:?}: {e}"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label {k:?} given twice"));
        }
    }
    Ok(out)
}

/// `key=value:Effect` or `key:Effect`, comma separated, as `kubectl taint` spells them.
pub fn parse_taints(s: &str) -> Result<Vec<Taint>, String> {
    let mut out: Vec<Taint> = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (kv, effect) = term.rsplit_once(':').ok_or_else(|| format!("{term:?} is not key=value:Effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!("{term:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute, not {effect:?}"));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        check_label_key(key).map_err(|e| format!("{term:?}: taint key: {e}"))?;
        if let Some(v) = value {
            check_label_value(v).map_err(|e| format!("{term:?}: taint value: {e}"))?;
        }
        if out.iter().any(|t| t.key == key && t.effect == effect) {
            return Err(format!("taint {key}:{effect} given twice"));
        }
        out.push(Taint {
            key: key.to_string(),
            value: value.filter(|v| !v.is_empty()).map(str::to_string),
            effect: effect.to_string(),
            time_added: None,
        });
    }
    Ok(out)
}

/// A Kubernetes quantity (`32`, `500m`, `256Gi`, `1e3`); returns it unchanged when well formed.
pub fn parse_quantity(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a quantity (like 32, 500m, 256Gi)");
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let num_end = body.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let ok_suffix = matches!(suffix, "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E")
        || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
        });
    if ok_suffix { Ok(s.to_string()) } else { Err(bad()) }
}

/// A qualified name (`[prefix/]name`), as label and taint keys must be.
fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let dns_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(dns_label) {
            return Err(format!("key prefix {p:?} must be a DNS subdomain"));
        }
    }
    if name.is_empty() {
        return Err("key must not be empty".into());
    }
    check_label_value(name)
        .map_err(|_| format!("key name {name:?} must be 63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric"))
}

fn check_label_value(v: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.starts_with(alnum)
            && v.ends_with(alnum)
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
    if ok { Ok(()) } else { Err(format!("value {v:?} must be 63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_reject_bad_keys_and_values() {
        let l = parse_labels("a=b, example.com/x=y,empty=").unwrap();
        assert_eq!(l.get("a").map(String::as_str), Some("b"));
        assert_eq!(l.get("example.com/x").map(String::as_str), Some("y"));
        assert_eq!(l.get("empty").map(String::as_str), Some(""));
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("novalue").unwrap_err().contains("key=value"));
        assert!(parse_labels("a=b,a=c").unwrap_err().contains("twice"));
        assert!(parse_labels("-a=b").is_err());
        assert!(parse_labels("a=b c").is_err());
        assert!(parse_labels("Bad_Prefix/a=b").is_err());
        assert!(parse_labels(&format!("a={}", "x".repeat(64))).is_err());
    }

    #[test]
    fn taints_parse_like_kubectl_taint() {
        let t = parse_taints("dedicated=infra:NoSchedule,gpu:NoExecute, x=y:PreferNoSchedule").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].key.as_str(), t[0].value.as_deref(), t[0].effect.as_str()), ("dedicated", Some("infra"), "NoSchedule"));
        assert_eq!((t[1].key.as_str(), t[1].value.as_deref(), t[1].effect.as_str()), ("gpu", None, "NoExecute"));
        assert_eq!(t[2].effect, "PreferNoSchedule");
        assert!(parse_taints("").unwrap().is_empty());
        assert!(parse_taints("garbage").unwrap_err().contains("key=value:Effect"));
        assert!(parse_taints("a=b:Sometimes").unwrap_err().contains("effect"));
        assert!(parse_taints("a=b:NoSchedule,a=c:NoSchedule").unwrap_err().contains("twice"));
        assert!(parse_taints("a=b:NoSchedule,a=c:NoExecute").is_ok());
        assert!(parse_taints("=b:NoSchedule").is_err());
        assert!(parse_taints("a=b!:NoSchedule").is_err());
    }

    #[test]
    fn quantities() {
        for ok in ["32", "500m", "256Gi", "1.5", "1e3", "+2", "0.5Ti"] {
            assert_eq!(parse_quantity(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["", "Gi", "1.2.3", "12GB", "1e", "abc", "."] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_names_round_trip_only_for_our_nodes() {
        let cfg = SimConfig { nodes: 12, ..Default::default() };
        assert_eq!(cfg.node_name(7), "sim-7");
        assert_eq!(cfg.node_index("sim-7"), Some(7));
        assert_eq!(cfg.node_index("sim-11"), Some(11));
        assert_eq!(cfg.node_index("sim-0"), Some(0));
        for other in ["sim-12", "sim-07", "sim-", "sim-x", "node-1", "sim-+1"] {
            assert_eq!(cfg.node_index(other), None, "{other}");
        }
    }

    #[test]
    fn validation() {
        assert!(SimConfig::default().validate().is_ok());
        assert!(SimConfig { zones: 0, ..Default::default() }.validate().is_err());
        assert!(SimConfig { memory: "lots".into(), ..Default::default() }.validate().unwrap_err().to_string().contains("memory"));
        assert!(SimConfig { name_prefix: "Sim_".into(), ..Default::default() }.validate().is_err());
        assert!(SimConfig { name_prefix: "x".repeat(70), ..Default::default() }.validate().is_err());
    }
}
