//! Mutual TLS between components other than the API server's own front door: a kubelet serves
//! only clients with a certificate from the cluster CA, and the API server calls kubelets with
//! its kubelet-client certificate, verifying theirs against the same CA.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use rustls::RootCertStore;
use rustls::pki_types::{PrivateKeyDer, pem::PemObject};

use crate::ca::{first_cert, ring};

fn roots(ca_pem: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| anyhow!("CA certificate: {e}"))?)?;
    }
    if roots.is_empty() {
        anyhow::bail!("no CA certificate in the PEM given");
    }
    Ok(Arc::new(roots))
}

/// A server that requires a client certificate signed by `client_ca_pem`.
pub fn mtls_server_config(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = ring();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(client_ca_pem)?, provider.clone()).build()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| anyhow!("private key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![first_cert(cert_pem).context("serving certificate")?], key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client presenting `cert_pem` that trusts servers signed by `ca_pem`.
pub fn mtls_client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| anyhow!("private key: {e}"))?;
    // No ALPN here: HTTP clients (hyper-rustls) set it from the protocols they enable.
    let cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(vec![first_cert(cert_pem).context("client certificate")?], key)?;
    Ok(Arc::new(cfg))
}
