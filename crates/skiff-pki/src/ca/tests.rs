use std::os::unix::fs::PermissionsExt;

use super::*;

fn opts(sans: &[&str]) -> PkiOptions {
    PkiOptions { tls_sans: sans.iter().map(|s| s.to_string()).collect(), service_ip: Some("10.43.0.1".parse().unwrap()) }
}

fn file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

fn verify_serving(pki: &ClusterPki, name: &str) -> Result<(), rustls::Error> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(pki.ca_roots(), ring()).build().unwrap();
    let leaf = first_cert(pki.serving_cert_pem()).unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).map(|_| ())
}

#[test]
fn reload_keeps_ca_admin_and_serving_files() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let a = ClusterPki::load_or_create(&tls, &opts(&[])).unwrap();
    let before: Vec<Vec<u8>> = ["ca.crt", "ca.key", "serving.crt", "serving.key", "admin.crt", "admin.key"].map(|f| file(&tls, f)).into();
    let b = ClusterPki::load_or_create(&tls, &opts(&[])).unwrap();
    let after: Vec<Vec<u8>> = ["ca.crt", "ca.key", "serving.crt", "serving.key", "admin.crt", "admin.key"].map(|f| file(&tls, f)).into();
    assert_eq!(before, after);
    assert_eq!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.serving_cert_pem(), b.serving_cert_pem());
    assert_eq!(a.admin_cert_pem(), b.admin_cert_pem());
    assert_eq!(a.admin_key_pem(), b.admin_key_pem());
    for key in ["ca.key", "serving.key", "admin.key"] {
        assert_eq!(mode(&tls.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&tls), 0o700);
    assert_eq!(b.ca_cert_path(), tls.join("ca.crt"));
    let files: BTreeSet<String> = std::fs::read_dir(&tls).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files, ["admin.crt", "admin.key", "ca.crt", "ca.key", "serving.crt", "serving.key"].map(String::from).into());
}

#[test]
fn ca_is_p256_ten_years_named_skiff_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(pki.ca_cert_der()).unwrap();
    assert!(ca.is_ca());
    assert_eq!(ca.subject().iter_common_name().next().unwrap().as_str().unwrap(), "skiff-ca");
    assert_eq!(ca.public_key().algorithm.algorithm, x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY);
    let years = (ca.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp()) / (365 * 24 * 3600);
    assert!((9..=10).contains(&years), "{years}");
}

#[test]
fn changed_sans_reissue_only_the_serving_cert() {
    let dir = tempfile::tempdir().unwrap();
    let a = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let b = ClusterPki::load_or_create(dir.path(), &opts(&["api.example.com"])).unwrap();
    assert_eq!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.admin_cert_pem(), b.admin_cert_pem());
    assert_ne!(a.serving_cert_pem(), b.serving_cert_pem());
    assert!(b.serving_sans().contains(&"api.example.com".to_string()));
    assert_eq!(verify_serving(&b, "api.example.com"), Ok(()));

    // The same set spelled differently is the same set: no churn.
    let c = ClusterPki::load_or_create(dir.path(), &opts(&[" API.example.com. ", "127.0.0.1"])).unwrap();
    assert_eq!(b.serving_cert_pem(), c.serving_cert_pem());

    let d = ClusterPki::load_or_create(dir.path(), &PkiOptions { tls_sans: vec!["api.example.com".into()], service_ip: None }).unwrap();
    assert_ne!(c.serving_cert_pem(), d.serving_cert_pem(), "a dropped service IP re-issues too");
    assert!(!d.serving_sans().contains(&"10.43.0.1".to_string()));
}

#[test]
fn serving_cert_verifies_for_every_name_clients_dial() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &opts(&["skiff.test", "192.0.2.77", "[2001:db8::7]", "*.apps.example"])).unwrap();
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.43.0.1",
        "skiff.test",
        "192.0.2.77",
        "2001:db8::7",
        "web.apps.example",
    ] {
        assert_eq!(verify_serving(&pki, name), Ok(()), "{name}");
    }
    for ip in crate::host_ips() {
        assert_eq!(verify_serving(&pki, &ip.to_string()), Ok(()), "host IP {ip}");
    }
    assert!(verify_serving(&pki, "example.org").is_err());
    assert!(verify_serving(&pki, "10.43.0.2").is_err());
}

#[test]
fn invalid_tls_san_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClusterPki::load_or_create(dir.path(), &opts(&["https://api.example.com:6443"])).unwrap_err();
    assert!(format!("{err:#}").contains("--tls-san \"https://api.example.com:6443\""), "{err:#}");
}

#[test]
fn damaged_or_foreign_leaves_are_reissued_and_the_ca_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let ca_key = file(dir.path(), "ca.key");

    // A crash between writing a new key and its certificate leaves a mismatched pair.
    std::fs::write(dir.path().join("serving.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
    std::fs::remove_file(dir.path().join("admin.crt")).unwrap();
    let b = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    assert_ne!(a.serving_cert_pem(), b.serving_cert_pem());
    assert_ne!(a.admin_cert_pem(), b.admin_cert_pem());
    assert_eq!(verify_serving(&b, "localhost"), Ok(()));
    assert_eq!(file(dir.path(), "ca.key"), ca_key);

    // Leaves signed by another cluster's CA are not ours to serve.
    let other = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(other.path(), &opts(&[])).unwrap();
    for f in ["serving.crt", "serving.key", "admin.crt", "admin.key"] {
        std::fs::copy(other.path().join(f), dir.path().join(f)).unwrap();
    }
    let c = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    assert_eq!(verify_serving(&c, "localhost"), Ok(()));
    assert_ne!(c.admin_cert_pem().as_bytes(), file(other.path(), "admin.crt"));
    assert_eq!(c.ca_pem(), a.ca_pem());

    // Garbage in a certificate file is treated like a missing one.
    std::fs::write(dir.path().join("serving.crt"), "not a certificate").unwrap();
    let d = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    assert_eq!(verify_serving(&d, "localhost"), Ok(()));
}

#[test]
fn leaves_close_to_expiry_are_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let a = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let sans: Vec<San> = desired_serving_sans(&opts(&[])).unwrap().into_iter().collect();
    let short = RENEW_BEFORE - Duration::from_secs(24 * 3600);
    let serving = a.issue(SERVING_CN, &[], &sans, ExtendedKeyUsagePurpose::ServerAuth, short).unwrap();
    a.store(&a.serving_cert_path(), &a.serving_key_path(), &serving).unwrap();
    let admin = a.issue_client_cert(ADMIN_NAME, &[ADMIN_GROUP], short).unwrap();
    a.store(&a.admin_cert_path(), &a.admin_key_path(), &admin).unwrap();

    let b = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    assert_ne!(b.serving_cert_pem(), serving.0);
    assert_ne!(b.admin_cert_pem(), admin.0);
    let der = first_cert(b.serving_cert_pem()).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let days = (leaf.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp()) / (24 * 3600);
    assert!((364..=365).contains(&days), "{days}");
}

#[test]
fn a_ca_cert_without_its_key_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = format!("{:#}", ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap_err());
    assert!(err.contains("ca.key is missing"), "{err}");

    std::fs::write(dir.path().join("ca.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let err = format!("{:#}", ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap_err());
    assert!(err.contains("does not belong to"), "{err}");
}

#[test]
fn a_ca_key_without_its_cert_keeps_trust_in_what_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let a = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let node = a.issue_client_cert("system:node:n1", &["system:nodes"], Duration::from_secs(3600)).unwrap();
    std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
    let b = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    assert_ne!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.admin_cert_pem(), b.admin_cert_pem(), "the old admin cert still verifies under the re-created CA cert");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(b.ca_roots(), ring()).build().unwrap();
    verifier.verify_client_cert(&first_cert(&node.0).unwrap(), &[], UnixTime::now()).unwrap();
}

#[test]
fn loose_key_permissions_are_tightened() {
    let dir = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    for key in ["ca.key", "admin.key"] {
        std::fs::set_permissions(dir.path().join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join("admin.key")), 0o600);
}

#[test]
fn client_identity_of_the_admin_cert() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let id = crate::client_identity(&certs(pki.admin_cert_pem())).unwrap();
    assert_eq!(id.name, "system:admin");
    assert_eq!(id.uid, "");
    assert_eq!(id.groups, ["system:masters", "system:authenticated"]);
    assert!(crate::client_identity(&[]).is_none());
    assert!(crate::client_identity(&certs(pki.serving_cert_pem())).is_some_and(|u| u.name == "kube-apiserver"));
}

#[test]
fn issued_client_and_server_certs() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let (cert, key) = pki.issue_client_cert("system:node:n1", &["system:nodes", "extra"], Duration::from_secs(7 * 24 * 3600)).unwrap();
    KeyPair::from_pem(&key).unwrap();
    let id = crate::client_identity(&certs(&cert)).unwrap();
    assert_eq!(id.name, "system:node:n1");
    assert_eq!(id.groups, ["system:nodes", "extra", "system:authenticated"]);
    let der = first_cert(&cert).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(pki.ca_roots(), ring()).build().unwrap();
    verifier.verify_client_cert(&der, &[], UnixTime::now()).unwrap();
    let in_8_days = unix_time(SystemTime::now() + Duration::from_secs(8 * 24 * 3600));
    assert!(verifier.verify_client_cert(&der, &[], in_8_days).is_err());
    assert!(pki.issue_client_cert("", &[], Duration::from_secs(60)).is_err());

    let (cert, _) = pki.issue_server_cert("kubelet", &["node-1".into(), "192.0.2.9".into()], Duration::from_secs(3600)).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(pki.ca_roots(), ring()).build().unwrap();
    for name in ["node-1", "192.0.2.9"] {
        let sn = ServerName::try_from(name).unwrap();
        verifier.verify_server_cert(&first_cert(&cert).unwrap(), &[], &sn, &[], UnixTime::now()).unwrap();
    }
    assert!(pki.issue_server_cert("x", &[], Duration::from_secs(60)).is_err());
}

/// Runs a TLS handshake between two in-memory connections.
fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) -> Result<(), rustls::Error> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets()?;
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        let mut rd = back.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() && !server.wants_write() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn client_config(pki: &ClusterPki, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.ca_roots());
    let mut cfg = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(certs(cert), PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn connect(
    pki: &ClusterPki,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> (rustls::ClientConnection, rustls::ServerConnection, Result<(), rustls::Error>) {
    let mut client = rustls::ClientConnection::new(cfg, ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut server = rustls::ServerConnection::new(pki.server_config().unwrap()).unwrap();
    let result = handshake(&mut client, &mut server);
    (client, server, result)
}

#[test]
fn tls_handshake_with_the_admin_cert() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &opts(&["skiff.test"])).unwrap();
    let cfg = client_config(&pki, Some((pki.admin_cert_pem(), pki.admin_key_pem())));
    for name in ["localhost", "127.0.0.1", "skiff.test"] {
        let (client, server, result) = connect(&pki, cfg.clone(), name);
        result.unwrap_or_else(|e| panic!("handshake for {name}: {e}"));
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
        let id = crate::client_identity(server.peer_certificates().unwrap()).unwrap();
        assert_eq!(id.name, "system:admin");
        assert_eq!(id.groups, ["system:masters", "system:authenticated"]);
    }
}

#[test]
fn tls_handshake_without_a_client_cert_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let (_, server, result) = connect(&pki, client_config(&pki, None), "kubernetes.default.svc");
    result.unwrap();
    assert!(server.peer_certificates().is_none());
}

#[test]
fn tls_handshake_with_a_foreign_client_cert_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &opts(&[])).unwrap();
    let other = ClusterPki::load_or_create(other_dir.path(), &opts(&[])).unwrap();
    let (_, _, result) = connect(&pki, client_config(&pki, Some((other.admin_cert_pem(), other.admin_key_pem()))), "localhost");
    assert!(result.is_err());
    // And a client that trusts only our CA refuses another cluster's server.
    let (_, _, result) = connect(&other, client_config(&pki, None), "localhost");
    assert!(result.is_err());
}
