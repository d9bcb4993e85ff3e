//! skiff-pki: the cluster's certificates and credentials. On first start it creates a CA, a serving
//! certificate and an admin client certificate under `<data-dir>/tls`; later starts reuse them,
//! re-issuing a leaf only when it is missing, damaged, not signed by the CA, close to expiry, or
//! (for the serving certificate) its names changed. It also maps client certificates and static
//! tokens to users, builds the API server's rustls config, and writes kubeconfig files. No HTTP.

mod ca;
mod identity;
mod kubeconfig;
mod net;
mod subject;
mod tls;

pub use ca::{ADMIN_VALIDITY, CA_VALIDITY, ClusterPki, PkiOptions, RENEW_BEFORE, SERVING_VALIDITY};
pub use identity::{ALL_AUTHENTICATED, TokenAuthenticator, UserInfo, client_identity};
pub use kubeconfig::{Credential, kubeconfig_yaml, write_admin_kubeconfig, write_kubeconfig};
pub use net::{host_ips, host_ipv4};
pub use tls::{ca_client_config, mtls_client_config, mtls_server_config, unverified_client_config};

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `data` to `path` atomically with `mode`: a temp file in the same directory, fsynced,
/// renamed over `path`, then the directory fsynced, so a crash leaves either the old file or the
/// new one, never half a key, and a key that was reported written survives power loss.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: AtomicU64 = AtomicU64::new(0);

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp.{}.{}", name.to_string_lossy(), std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = (|| -> std::io::Result<()> {
        // create_new: the mode only applies to a file we create, never to a leftover one.
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/dir/file.key");
        super::write_atomic(&p, b"one", 0o600).unwrap();
        super::write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["file.key"]);
    }
}
