//! Images for containers: imagePullPolicy, credentials from the pod's imagePullSecrets
//! (`kubernetes.io/dockerconfigjson` and the older `dockercfg`), and upstream's
//! ErrImagePull → ImagePullBackOff waiting reasons.

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use serde_json::Value;

use crate::cri::v1 as cri;

/// The registry host an image reference pulls from (docker.io for short names, as containerd).
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Upstream's default when the API server did not set one: Always for `:latest` or no tag.
pub fn pull_policy(c: &Container) -> &str {
    if let Some(p) = c.image_pull_policy.as_deref() {
        return p;
    }
    let image = c.image.as_deref().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.split_once(':').is_some_and(|(_, t)| t != "latest") { "IfNotPresent" } else { "Always" }
}

/// Credentials for `host` from a docker config document (`{"auths": {...}}` or the bare map).
pub fn auth_from_docker_config(doc: &Value, host: &str) -> Option<cri::AuthConfig> {
    let auths = doc.get("auths").unwrap_or(doc).as_object()?;
    let matches = |key: &str| {
        let k = key.trim_start_matches("https://").trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        k == host || (host == "docker.io" && (k == "index.docker.io" || k == "registry-1.docker.io"))
    };
    let (_, entry) = auths.iter().find(|(k, _)| matches(k))?;
    let s = |f: &str| entry.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let (mut username, mut password) = (s("username"), s("password"));
    if username.is_empty() && !s("auth").is_empty() {
        let decoded = base64_decode(&s("auth"))?;
        let (u, p) = decoded.split_once(':')?;
        (username, password) = (u.into(), p.into());
    }
    Some(cri::AuthConfig { username, password, server_address: host.into(), identity_token: s("identitytoken"), ..Default::default() })
}

fn base64_decode(s: &str) -> Option<String> {
    use base64::Engine;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).ok()?).ok()
}

/// The first matching credentials among the pod's imagePullSecrets (missing secrets are skipped,
/// as upstream, which then tries an anonymous pull).
pub async fn credentials(client: &kube::Client, pod: &Pod, image: &str) -> Option<cri::AuthConfig> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let host = registry_host(image);
    for r in pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_ref()).into_iter().flatten() {
        let Ok(Some(secret)) = api.get_opt(&r.name).await else { continue };
        let data = secret.data.unwrap_or_default();
        let doc = data.get(".dockerconfigjson").or_else(|| data.get(".dockercfg")).and_then(|b| serde_json::from_slice::<Value>(&b.0).ok());
        if let Some(auth) = doc.and_then(|d| auth_from_docker_config(&d, host)) {
            return Some(auth);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_policies() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/x"), "localhost");
        let c = |image: &str| Container { name: "c".into(), image: Some(image.into()), ..Default::default() };
        assert_eq!(pull_policy(&c("busybox")), "Always");
        assert_eq!(pull_policy(&c("busybox:latest")), "Always");
        assert_eq!(pull_policy(&c("127.0.0.1:5000/busybox:1")), "IfNotPresent");
        assert_eq!(pull_policy(&c("127.0.0.1:5000/busybox")), "Always");
    }

    #[test]
    fn docker_config_credentials() {
        let doc = serde_json::json!({"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"}, "https://index.docker.io/v1/": {"username": "d", "password": "p"}}});
        let a = auth_from_docker_config(&doc, "127.0.0.1:5000").unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("user", "pass"));
        assert_eq!(auth_from_docker_config(&doc, "docker.io").unwrap().username, "d");
        assert!(auth_from_docker_config(&doc, "quay.io").is_none());
    }
}
