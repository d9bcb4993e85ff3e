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

/// Accepts any server certificate. Only for fetching the cluster CA at join time, whose bytes the
/// caller then checks against the hash in the join token (k3s' `K10<hash>::` scheme): the hash,
/// not the TLS handshake, is what makes that first contact trustworthy.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that trusts any server: see [`AnyServer`] for the one use it has.
pub fn unverified_client_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = ring();
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A client that trusts servers signed by `ca_pem`, without a client certificate.
pub fn ca_client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
