//! Kubeconfig files. The shape is fixed, so the YAML is written by hand; every free-form string is
//! emitted as a JSON string, which is also a valid YAML double-quoted scalar, so no URL, name or
//! token can break the document.

use std::path::Path;

use base64::Engine;

use crate::ClusterPki;

/// Cluster, user and context name in the admin kubeconfig.
const CLUSTER: &str = "skiff";
const ADMIN_USER: &str = "skiff-admin";

/// How the kubeconfig's user proves who it is.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    ClientCert { cert_pem: &'a str, key_pem: &'a str },
    Token(&'a str),
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// A kubeconfig with one cluster (`skiff`, trusting `ca_pem`), one user and one context (`skiff`,
/// the current one).
pub fn kubeconfig_yaml(server_url: &str, ca_pem: &str, user_name: &str, credential: Credential<'_>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user = match credential {
        Credential::ClientCert { cert_pem, key_pem } => {
            format!("    client-certificate-data: {}\n    client-key-data: {}\n", b64(cert_pem), b64(key_pem))
        }
        Credential::Token(t) => format!("    token: {}\n", quote(t)),
    };
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {cluster}\n  \
         cluster:\n    \
         certificate-authority-data: {ca}\n    \
         server: {server}\n\
         users:\n\
         - name: {user_name}\n  \
         user:\n\
         {user}\
         contexts:\n\
         - name: {cluster}\n  \
         context:\n    \
         cluster: {cluster}\n    \
         user: {user_name}\n\
         current-context: {cluster}\n\
         preferences: {{}}\n",
        cluster = quote(CLUSTER),
        ca = b64(ca_pem),
        server = quote(server_url),
        user_name = quote(user_name),
    )
}

/// Writes [`kubeconfig_yaml`] to `path`: mode 0600 (it holds a credential), parent directories
/// created, replaced atomically so a reader never sees half a file.
pub fn write_kubeconfig(path: &Path, server_url: &str, ca_pem: &str, user_name: &str, credential: Credential<'_>) -> anyhow::Result<()> {
    crate::write_atomic(path, kubeconfig_yaml(server_url, ca_pem, user_name, credential).as_bytes(), 0o600)
}

/// The admin kubeconfig: cluster `skiff` at `server_url`, user `skiff-admin` with the admin client
/// certificate (system:admin in system:masters), context `skiff` current.
pub fn write_admin_kubeconfig(path: &Path, server_url: &str, pki: &ClusterPki) -> anyhow::Result<()> {
    let credential = Credential::ClientCert { cert_pem: pki.admin_cert_pem(), key_pem: pki.admin_key_pem() };
    write_kubeconfig(path, server_url, pki.ca_pem(), ADMIN_USER, credential)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::Value;

    use super::*;
    use crate::PkiOptions;

    fn unb64(v: &Value) -> String {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn admin_kubeconfig_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(&dir.path().join("tls"), &PkiOptions::default()).unwrap();
        let path = dir.path().join("a/b/kubeconfig.yaml");
        write_admin_kubeconfig(&path, "https://127.0.0.1:6443", &pki).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let kc: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(kc["apiVersion"], "v1");
        assert_eq!(kc["kind"], "Config");
        assert_eq!(kc["current-context"], "skiff");
        let cluster = &kc["clusters"][0];
        assert_eq!(cluster["name"], "skiff");
        assert_eq!(cluster["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(unb64(&cluster["cluster"]["certificate-authority-data"]), pki.ca_pem());
        let user = &kc["users"][0];
        assert_eq!(user["name"], "skiff-admin");
        assert_eq!(unb64(&user["user"]["client-certificate-data"]), pki.admin_cert_pem());
        assert_eq!(unb64(&user["user"]["client-key-data"]), pki.admin_key_pem());
        let ctx = &kc["contexts"][0];
        assert_eq!(ctx["name"], "skiff");
        assert_eq!(ctx["context"]["cluster"], "skiff");
        assert_eq!(ctx["context"]["user"], "skiff-admin");

        // Rewriting (every server start does) replaces the file in place.
        write_admin_kubeconfig(&path, "https://[::1]:6443", &pki).unwrap();
        let kc: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(kc["clusters"][0]["cluster"]["server"], "https://[::1]:6443");
    }

    #[test]
    fn token_kubeconfig_quotes_free_text() {
        let yaml = kubeconfig_yaml("https://h:1/#x: y", "CA", "node: \"1\"", Credential::Token("a: b #c"));
        let kc: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(kc["clusters"][0]["cluster"]["server"], "https://h:1/#x: y");
        assert_eq!(kc["users"][0]["name"], "node: \"1\"");
        assert_eq!(kc["users"][0]["user"]["token"], "a: b #c");
        assert_eq!(kc["contexts"][0]["context"]["user"], "node: \"1\"");
        assert!(kc["users"][0]["user"].get("client-key-data").is_none());
    }
}
