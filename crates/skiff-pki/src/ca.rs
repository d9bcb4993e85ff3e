//! The cluster CA and the certificates it issues (rcgen, ECDSA P-256), stored as PEM under
//! `<data-dir>/tls`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::write_atomic;

/// Lifetime of the cluster CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the API server's serving certificate (k3s and kubeadm use one year too).
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the admin client certificate.
pub const ADMIN_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf certificate with less than this left is re-issued at start, as k3s does, so a server
/// restarted now and then never serves an expired certificate.
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

const ADMIN_NAME: &str = "system:admin";
const ADMIN_GROUP: &str = "system:masters";
const CA_CN: &str = "skiff-ca";
const SERVING_CN: &str = "kube-apiserver";
/// Names every serving certificate carries besides the configured ones: what in-cluster clients
/// and local tools dial.
const FIXED_SANS: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "127.0.0.1",
    "::1",
];

#[derive(Clone, Debug, Default)]
pub struct PkiOptions {
    /// Extra DNS names or IPs for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// The first address of the service CIDR (the `kubernetes` Service), which pods dial.
    pub service_ip: Option<IpAddr>,
}

/// The CA, the API server's serving certificate and the admin client certificate of one cluster.
pub struct ClusterPki {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_key: KeyPair,
    ca_not_after: OffsetDateTime,
    serving_pem: String,
    serving_key_pem: String,
    serving_sans: Vec<String>,
    admin_cert_pem: String,
    admin_key_pem: String,
}

impl fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterPki").field("dir", &self.dir).field("serving_sans", &self.serving_sans).finish_non_exhaustive()
    }
}

/// One subject alternative name, normalised so that the same set always compares equal no matter
/// how it was spelled on the command line or in which order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl San {
    fn parse(raw: &str) -> anyhow::Result<San> {
        let s = raw.trim();
        let unbracketed = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let name = s.trim_end_matches('.').to_ascii_lowercase();
        // Validated the way clients will match it, so a name that no client could ever use is
        // refused at start instead of silently never matching.
        let base = name.strip_prefix("*.").unwrap_or(&name);
        DnsName::try_from(base).map_err(|_| anyhow!("invalid --tls-san {raw:?}: neither an IP address nor a DNS name"))?;
        Ok(San::Dns(name))
    }

    fn to_rcgen(&self) -> anyhow::Result<SanType> {
        Ok(match self {
            San::Dns(d) => SanType::DnsName(d.as_str().try_into().with_context(|| format!("DNS name {d:?}"))?),
            San::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

fn desired_serving_sans(opts: &PkiOptions) -> anyhow::Result<BTreeSet<San>> {
    let mut sans = BTreeSet::new();
    for s in FIXED_SANS {
        sans.insert(San::parse(s)?);
    }
    sans.extend(crate::host_ips().into_iter().map(San::Ip));
    sans.extend(opts.service_ip.map(San::Ip));
    for s in opts.tls_sans.iter().filter(|s| !s.trim().is_empty()) {
        sans.insert(San::parse(s)?);
    }
    Ok(sans)
}

fn cert_sans(cert: &X509Certificate<'_>) -> BTreeSet<San> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return BTreeSet::new() };
    ext.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(San::Dns(d.to_ascii_lowercase())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?))),
                16 => Some(San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn read(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A key someone made group- or world-readable (a copy, a restore from backup) is tightened back.
fn keep_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "private key was readable by others; setting mode 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn first_cert(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| anyhow!("no PEM certificate: {e}"))
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// RFC 5280 wants serials unique per CA; rcgen's default (a hash of the public key) is, since every
/// leaf gets a fresh key, but a random serial stays unique even if a key is ever reused.
fn random_serial() -> anyhow::Result<SerialNumber> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| anyhow!("the system random generator failed"))?;
    b[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&b))
}

fn ca_params(not_after: OffsetDateTime) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, CA_CN);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(random_serial()?);
    // Back-dated a little so a machine whose clock lags ours still accepts a fresh certificate.
    p.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    p.not_after = not_after;
    Ok(p)
}

/// What a leaf must be to be reused at start.
enum Want<'a> {
    Serving(&'a BTreeSet<San>),
    Admin,
}

impl ClusterPki {
    /// Loads the cluster's certificates from `dir` (`<data-dir>/tls`), creating what is missing.
    ///
    /// The CA is created once and then only ever read: if `ca.crt` is there but `ca.key` is not, or
    /// they do not belong together, this fails rather than replace the CA, which would cut off
    /// every node and kubeconfig issued so far. The serving and admin certificates are re-issued
    /// when missing, unreadable, not matching their key, not verifying against the CA, within
    /// [`RENEW_BEFORE`] of expiry, or, for the serving certificate, when its SAN set (fixed names,
    /// host IPs, service IP, `--tls-san`) changed.
    pub fn load_or_create(dir: &Path, opts: &PkiOptions) -> anyhow::Result<ClusterPki> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, ca_key) = load_or_create_ca(dir)?;
        let ca_der = first_cert(&ca_pem).context("ca.crt")?;
        let ca_not_after = {
            let (_, c) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| anyhow!("parsing ca.crt: {e}"))?;
            OffsetDateTime::from_unix_timestamp(c.validity().not_after.timestamp())?
        };
        if ca_not_after < OffsetDateTime::now_utc() + RENEW_BEFORE {
            tracing::warn!(expires = %ca_not_after, "the cluster CA expires soon; certificates it issues will not outlive it");
        }
        let mut pki = ClusterPki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_der,
            ca_key,
            ca_not_after,
            serving_pem: String::new(),
            serving_key_pem: String::new(),
            serving_sans: Vec::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
        };

        let sans = desired_serving_sans(opts)?;
        (pki.serving_pem, pki.serving_key_pem) = match pki.reusable(&pki.serving_cert_path(), &pki.serving_key_path(), Want::Serving(&sans))
        {
            Ok(pair) => pair,
            Err(why) => {
                tracing::info!(reason = %why, "issuing the API server's serving certificate");
                let sans: Vec<San> = sans.iter().cloned().collect();
                let pair = pki.issue(SERVING_CN, &[], &sans, ExtendedKeyUsagePurpose::ServerAuth, SERVING_VALIDITY)?;
                pki.store(&pki.serving_cert_path(), &pki.serving_key_path(), &pair)?;
                pair
            }
        };
        pki.serving_sans = sans.iter().map(San::to_string).collect();

        (pki.admin_cert_pem, pki.admin_key_pem) = match pki.reusable(&pki.admin_cert_path(), &pki.admin_key_path(), Want::Admin) {
            Ok(pair) => pair,
            Err(why) => {
                tracing::info!(reason = %why, "issuing the admin client certificate");
                let pair = pki.issue(ADMIN_NAME, &[ADMIN_GROUP], &[], ExtendedKeyUsagePurpose::ClientAuth, ADMIN_VALIDITY)?;
                pki.store(&pki.admin_cert_path(), &pki.admin_key_path(), &pair)?;
                pair
            }
        };
        Ok(pki)
    }

    /// Key first, then certificate: a crash in between leaves a pair that does not match, which
    /// the next start notices and re-issues.
    fn store(&self, cert_path: &Path, key_path: &Path, (cert, key): &(String, String)) -> anyhow::Result<()> {
        write_atomic(key_path, key.as_bytes(), 0o600)?;
        write_atomic(cert_path, cert.as_bytes(), 0o644)
    }

    /// The stored pair if it is still good for `want`, else why not.
    fn reusable(&self, cert_path: &Path, key_path: &Path, want: Want<'_>) -> Result<(String, String), String> {
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (cert_pem, key_pem) = match (read(cert_path), read(key_path)) {
            (Ok(Some(c)), Ok(Some(k))) => (c, k),
            (Ok(None), _) => return Err(format!("{} is missing", name(cert_path))),
            (_, Ok(None)) => return Err(format!("{} is missing", name(key_path))),
            (Err(e), _) | (_, Err(e)) => return Err(format!("{e:#}")),
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{} is unreadable: {e}", name(key_path)))?;
        let der = first_cert(&cert_pem).map_err(|e| format!("{}: {e}", name(cert_path)))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("{} is unreadable: {e}", name(cert_path)))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(format!("{} does not belong to {}", name(key_path), name(cert_path)));
        }
        let then = unix_time(SystemTime::now() + RENEW_BEFORE);
        match want {
            Want::Serving(sans) => {
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(self.ca_roots(), ring())
                    .build()
                    .map_err(|e| format!("CA: {e}"))?;
                let localhost = ServerName::try_from("localhost").expect("valid name");
                verifier.verify_server_cert(&der, &[], &localhost, &[], then).map_err(|e| {
                    format!("{} is not valid for {} more days under the current CA: {e}", name(cert_path), RENEW_BEFORE.as_secs() / 86400)
                })?;
                let have = cert_sans(&cert);
                if have != *sans {
                    let added: Vec<String> = sans.difference(&have).map(San::to_string).collect();
                    let removed: Vec<String> = have.difference(sans).map(San::to_string).collect();
                    return Err(format!("SANs changed (added {added:?}, removed {removed:?})"));
                }
            }
            Want::Admin => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.ca_roots(), ring())
                    .build()
                    .map_err(|e| format!("CA: {e}"))?;
                verifier.verify_client_cert(&der, &[], then).map_err(|e| {
                    format!("{} is not valid for {} more days under the current CA: {e}", name(cert_path), RENEW_BEFORE.as_secs() / 86400)
                })?;
                let id = crate::client_identity(std::slice::from_ref(&der));
                if !id.is_some_and(|u| u.name == ADMIN_NAME && u.groups.iter().any(|g| g == ADMIN_GROUP)) {
                    return Err(format!("{} is not {ADMIN_NAME} in {ADMIN_GROUP}", name(cert_path)));
                }
            }
        }
        if let Err(e) = keep_private(key_path) {
            return Err(format!("{e:#}"));
        }
        Ok((cert_pem, key_pem))
    }

    fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[San],
        usage: ExtendedKeyUsagePurpose,
        validity: Duration,
    ) -> anyhow::Result<(String, String)> {
        let issuer = Issuer::from_ca_cert_der(&self.ca_der, &self.ca_key).context("reading the CA certificate")?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<anyhow::Result<_>>()?;
        // The real subject goes in below; see `subject`.
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, common_name);
        // ECDSA keys only sign; keyEncipherment is an RSA-only usage.
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        // A leaf outliving its CA would only look valid; cap it so its expiry tells the truth.
        p.not_after = (now + validity).min(self.ca_not_after);
        let cert = p.signed_by(&key, &issuer)?;
        let der = crate::subject::replace_subject(cert.der(), &crate::subject::subject_der(common_name, organizations), &self.ca_key)?;
        Ok((crate::subject::cert_pem(&der), key.serialize_pem()))
    }

    /// A client certificate (PEM certificate, PEM PKCS#8 key) for user `common_name` in groups
    /// `organizations`, signed by the cluster CA; for nodes, agents and components.
    pub fn issue_client_cert(&self, common_name: &str, organizations: &[&str], validity: Duration) -> anyhow::Result<(String, String)> {
        if common_name.is_empty() {
            bail!("a client certificate needs a common name: it becomes the user name");
        }
        self.issue(common_name, organizations, &[], ExtendedKeyUsagePurpose::ClientAuth, validity)
    }

    /// A serving certificate (PEM certificate, PEM PKCS#8 key) for `sans` (DNS names or IPs),
    /// signed by the cluster CA; for servers other than the API server, such as a kubelet's.
    pub fn issue_server_cert(&self, common_name: &str, sans: &[String], validity: Duration) -> anyhow::Result<(String, String)> {
        let sans = sans.iter().map(|s| San::parse(s)).collect::<anyhow::Result<BTreeSet<San>>>()?;
        if sans.is_empty() {
            bail!("a serving certificate needs at least one DNS name or IP");
        }
        let sans: Vec<San> = sans.into_iter().collect();
        self.issue(common_name, &[], &sans, ExtendedKeyUsagePurpose::ServerAuth, validity)
    }

    /// TLS for the API server (ring provider; TLS 1.2 and 1.3; ALPN h2 then http/1.1). A client
    /// certificate is verified against the cluster CA when presented, but not required: requests
    /// without one go on to bearer-token authentication, as upstream's do. Read the verified
    /// chain with `ServerConnection::peer_certificates` and map it with [`crate::client_identity`].
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = ring();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.ca_roots(), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let chain = vec![first_cert(&self.serving_pem).context("serving.crt")?];
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes()).map_err(|e| anyhow!("serving.key: {e}"))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The cluster CA as a rustls trust store, for clients of the API server.
    pub fn ca_roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA certificate was parsed at load");
        Arc::new(roots)
    }

    /// The CA certificate, PEM (what kubeconfigs and `--certificate-authority` want).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    pub fn serving_cert_pem(&self) -> &str {
        &self.serving_pem
    }

    /// The serving certificate's SANs as DNS names and IP strings, sorted.
    pub fn serving_sans(&self) -> &[String] {
        &self.serving_sans
    }

    /// The admin client certificate (CN system:admin, O system:masters), PEM.
    pub fn admin_cert_pem(&self) -> &str {
        &self.admin_cert_pem
    }

    /// The admin client key, PEM PKCS#8.
    pub fn admin_key_pem(&self) -> &str {
        &self.admin_key_pem
    }

    /// `<data-dir>/tls`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn serving_cert_path(&self) -> PathBuf {
        self.dir.join("serving.crt")
    }

    pub fn serving_key_path(&self) -> PathBuf {
        self.dir.join("serving.key")
    }

    pub fn admin_cert_path(&self) -> PathBuf {
        self.dir.join("admin.crt")
    }

    pub fn admin_key_path(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
}

fn load_or_create_ca(dir: &Path) -> anyhow::Result<(String, KeyPair)> {
    let (crt_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (read(&crt_path)?, read(&key_path)?) {
        (Some(crt), Some(key_pem)) => {
            let key = KeyPair::from_pem(&key_pem).with_context(|| format!("reading {}", key_path.display()))?;
            let der = first_cert(&crt).with_context(|| format!("reading {}", crt_path.display()))?;
            let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow!("parsing {}: {e}", crt_path.display()))?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                bail!(
                    "{} does not belong to {}; restore the matching pair (skiff will not replace a CA)",
                    key_path.display(),
                    crt_path.display()
                );
            }
            if !cert.is_ca() {
                bail!("{} is not a CA certificate", crt_path.display());
            }
            keep_private(&key_path)?;
            Ok((crt, key))
        }
        (Some(_), None) => bail!(
            "{} exists but {} is missing; restore the key, or remove {} to create a new CA (which invalidates every certificate and kubeconfig issued so far)",
            crt_path.display(),
            key_path.display(),
            crt_path.display()
        ),
        (None, Some(key_pem)) => {
            // A crash between writing the key and the certificate of a new CA. Self-signing the
            // same key again yields an equivalent trust anchor (same name, same key), so nothing
            // it may already have signed is lost.
            let key = KeyPair::from_pem(&key_pem).with_context(|| format!("reading {}", key_path.display()))?;
            tracing::warn!(path = %crt_path.display(), "CA certificate missing next to its key; re-creating it from the key");
            let cert = ca_params(OffsetDateTime::now_utc() + CA_VALIDITY)?.self_signed(&key)?;
            write_atomic(&crt_path, cert.pem().as_bytes(), 0o644)?;
            keep_private(&key_path)?;
            Ok((cert.pem(), key))
        }
        (None, None) => {
            let key = KeyPair::generate()?;
            let cert = ca_params(OffsetDateTime::now_utc() + CA_VALIDITY)?.self_signed(&key)?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&crt_path, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(dir = %dir.display(), "created the cluster CA");
            Ok((cert.pem(), key))
        }
    }
}

#[cfg(test)]
mod tests;
