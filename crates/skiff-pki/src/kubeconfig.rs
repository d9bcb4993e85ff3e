//! Admin kubeconfig files (fixed shape, written as YAML by hand: nothing here needs a YAML library).

use std::path::Path;

use base64::Engine;

use crate::ClusterPki;

/// Writes a kubeconfig for the admin client certificate (mode 0600, atomically).
pub fn write_admin_kubeconfig(path: &Path, server_url: &str, pki: &ClusterPki) -> anyhow::Result<()> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server_url}\nusers:\n- name: skiff-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: skiff-admin\ncurrent-context: skiff\npreferences: {{}}\n",
        ca = b64(pki.ca_pem()),
        cert = b64(&pki.admin_cert_pem),
        key = b64(&pki.admin_key_pem),
    );
    crate::write_atomic(path, text.as_bytes(), 0o600)
}
