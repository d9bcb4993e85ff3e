//! skiff-pki: the cluster's certificates and credentials. On first start it creates a CA, a serving
//! certificate and an admin client certificate; later starts reuse them (re-issuing only the
//! serving certificate when its names change). It also maps client certificates and static tokens
//! to users, and writes kubeconfig files. No HTTP here.

mod ca;
mod identity;
mod kubeconfig;
mod net;

pub use ca::{ClusterPki, PkiOptions};
pub use identity::{TokenAuthenticator, UserInfo, client_identity};
pub use kubeconfig::write_admin_kubeconfig;
pub use net::{host_ips, host_ipv4};

use std::path::Path;

/// Writes `data` to `path` atomically (temp file + rename) with `mode`, so a crash never leaves a
/// half-written key or kubeconfig.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
