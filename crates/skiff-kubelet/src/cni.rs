//! The node's pod network: a CNI conflist (bridge + host-local IPAM over the node's podCIDR +
//! portmap for hostPorts) that containerd's CRI plugin picks up by itself once it appears.

use std::path::Path;

use anyhow::Context;

pub const BRIDGE: &str = "cni0";
pub const FILE: &str = "10-skiff.conflist";

/// The conflist for a node whose pods take addresses from `pod_cidr`. `ip_masq`: the bridge
/// plugin masquerades everything leaving the node's own pod CIDR; off when the agent routes pod
/// CIDRs between nodes and masquerades only traffic leaving the cluster (`network.rs`).
pub fn conflist(pod_cidr: &str, ipam_dir: &Path, ip_masq: bool) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "skiff",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": ip_masq,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": pod_cidr }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_dir.display().to_string(),
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// Writes the conflist atomically (rename), so the CRI never reads half a file. Returns whether
/// the file changed.
pub fn write(conf_dir: &Path, pod_cidr: &str, ipam_dir: &Path, ip_masq: bool) -> anyhow::Result<bool> {
    let path = conf_dir.join(FILE);
    let body = serde_json::to_vec_pretty(&conflist(pod_cidr, ipam_dir, ip_masq))?;
    if std::fs::read(&path).is_ok_and(|old| old == body) {
        return Ok(false);
    }
    std::fs::create_dir_all(conf_dir)?;
    let tmp = conf_dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, &body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_uses_the_pod_cidr() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), "10.42.3.0/24", Path::new("/x/ipam"), false).unwrap());
        assert!(!write(dir.path(), "10.42.3.0/24", Path::new("/x/ipam"), false).unwrap());
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.42.3.0/24");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][0]["ipMasq"], false);
    }
}
