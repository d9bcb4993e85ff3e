//! The cluster CA and the certificates it issues (rcgen, ECDSA P-256), stored as PEM under
//! `<data-dir>/tls`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::{Duration, OffsetDateTime};

use crate::write_atomic;

#[derive(Clone, Debug, Default)]
pub struct PkiOptions {
    /// Extra names or IPs for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// The first address of the service CIDR (the `kubernetes` Service), which pods dial.
    pub service_ip: Option<IpAddr>,
}

pub struct ClusterPki {
    dir: PathBuf,
    ca_pem: String,
    ca_key_pem: String,
    serving_pem: String,
    serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn validity(years: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // Back-dated a little so a client with a slightly slow clock accepts a fresh certificate.
    (now - Duration::hours(1), now + Duration::days(365 * years))
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok().filter(|s| !s.trim().is_empty())
}

/// The SAN set of the serving certificate, sorted and deduplicated.
fn serving_sans(opts: &PkiOptions) -> Vec<String> {
    let mut sans: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "127.0.0.1",
        "::1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sans.extend(crate::host_ips().iter().map(IpAddr::to_string));
    sans.extend(opts.service_ip.iter().map(IpAddr::to_string));
    sans.extend(opts.tls_sans.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    sans.sort();
    sans.dedup();
    sans
}

fn san(s: &str) -> anyhow::Result<SanType> {
    Ok(match s.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(s.try_into().with_context(|| format!("invalid --tls-san {s:?}"))?),
    })
}

impl ClusterPki {
    pub fn load_or_create(dir: &Path, opts: &PkiOptions) -> anyhow::Result<ClusterPki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, ca_key_pem) = match (read(dir, "ca.crt"), read(dir, "ca.key")) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key = KeyPair::generate()?;
                let mut p = CertificateParams::new(Vec::<String>::new())?;
                p.distinguished_name = DistinguishedName::new();
                p.distinguished_name.push(DnType::CommonName, "skiff-ca");
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
                (p.not_before, p.not_after) = validity(10);
                let cert = p.self_signed(&key)?;
                // Key first: a crash between the writes leaves a key without a cert, which is regenerated.
                write_atomic(&dir.join("ca.key"), key.serialize_pem().as_bytes(), 0o600)?;
                write_atomic(&dir.join("ca.crt"), cert.pem().as_bytes(), 0o644)?;
                for stale in ["serving.crt", "serving.key", "admin.crt", "admin.key", "serving.sans"] {
                    let _ = std::fs::remove_file(dir.join(stale));
                }
                (cert.pem(), key.serialize_pem())
            }
        };
        let mut pki = ClusterPki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_key_pem,
            serving_pem: String::new(),
            serving_key_pem: String::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
        };
        let sans = serving_sans(opts);
        let sans_text = sans.join("\n");
        match (read(dir, "serving.crt"), read(dir, "serving.key"), read(dir, "serving.sans")) {
            (Some(c), Some(k), Some(s)) if s == sans_text => (pki.serving_pem, pki.serving_key_pem) = (c, k),
            _ => {
                let (c, k) = pki.issue(Some("kube-apiserver"), &[], &sans, true)?;
                write_atomic(&dir.join("serving.key"), k.as_bytes(), 0o600)?;
                write_atomic(&dir.join("serving.crt"), c.as_bytes(), 0o644)?;
                write_atomic(&dir.join("serving.sans"), sans_text.as_bytes(), 0o644)?;
                (pki.serving_pem, pki.serving_key_pem) = (c, k);
            }
        }
        match (read(dir, "admin.crt"), read(dir, "admin.key")) {
            (Some(c), Some(k)) => (pki.admin_cert_pem, pki.admin_key_pem) = (c, k),
            _ => {
                let (c, k) = pki.issue_client_cert("system:admin", &["system:masters"])?;
                write_atomic(&dir.join("admin.key"), k.as_bytes(), 0o600)?;
                write_atomic(&dir.join("admin.crt"), c.as_bytes(), 0o644)?;
                (pki.admin_cert_pem, pki.admin_key_pem) = (c, k);
            }
        }
        Ok(pki)
    }

    fn issue(&self, cn: Option<&str>, orgs: &[&str], sans: &[String], server: bool) -> anyhow::Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).context("reading the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &ca_key).context("reading the CA certificate")?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = sans.iter().map(|s| san(s)).collect::<anyhow::Result<_>>()?;
        p.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = validity(if server { 1 } else { 5 });
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for `common_name` in groups `organizations` (agents, components).
    pub fn issue_client_cert(&self, common_name: &str, organizations: &[&str]) -> anyhow::Result<(String, String)> {
        self.issue(Some(common_name), organizations, &[], false)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// TLS for the API server: serving certificate, client certificates verified against the CA
    /// when presented (requests without one may still authenticate with a bearer token).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.serving_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes())?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_keeps_the_ca_and_new_sans_reissue_serving() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterPki::load_or_create(dir.path(), &PkiOptions::default()).unwrap();
        let b = ClusterPki::load_or_create(dir.path(), &PkiOptions::default()).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.serving_pem, b.serving_pem);
        assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
        let c = ClusterPki::load_or_create(dir.path(), &PkiOptions { tls_sans: vec!["api.example".into()], service_ip: None }).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(a.serving_pem, c.serving_pem);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn admin_cert_identity_and_tls_handshake() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), &PkiOptions { tls_sans: vec!["skiff.test".into()], service_ip: None }).unwrap();
        let admin: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.admin_cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let id = crate::client_identity(&admin).unwrap();
        assert_eq!(id.name, "system:admin");
        assert_eq!(id.groups, ["system:masters", "system:authenticated"]);

        // A real handshake in memory: the client trusts the CA, presents the admin cert, and
        // the server sees it.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.admin_key_pem.as_bytes()).unwrap();
        let client_cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(admin, key).unwrap();
        for name in ["skiff.test", "localhost", "127.0.0.1"] {
            let mut client = rustls::ClientConnection::new(Arc::new(client_cfg.clone()), name.to_string().try_into().unwrap()).unwrap();
            let mut server = rustls::ServerConnection::new(pki.server_config().unwrap()).unwrap();
            for _ in 0..10 {
                let mut buf = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut buf).unwrap();
                }
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets().unwrap();
                let mut back = Vec::new();
                while server.wants_write() {
                    server.write_tls(&mut back).unwrap();
                }
                client.read_tls(&mut back.as_slice()).unwrap();
                client.process_new_packets().unwrap();
                if !client.is_handshaking() && !server.is_handshaking() {
                    break;
                }
            }
            assert!(!server.is_handshaking(), "handshake for {name}");
            let peer = server.peer_certificates().unwrap();
            assert_eq!(crate::client_identity(peer).unwrap().name, "system:admin");
        }
    }
}
