//! Node join: `skiff server` writes a join token (`K10<sha256 of the CA PEM>::node:<secret>`, the
//! k3s shape) to `DATA/token`; `skiff agent --server URL --token T` fetches the CA from
//! `/cacerts`, checks it against the token's hash, then presents the secret at `/skiff/v1/join`
//! and gets its own client certificate (`system:node:<name>`, group `system:nodes`) and a kubelet
//! serving certificate, both from the cluster CA. The agent keeps them in its data dir and uses
//! them from then on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// The server's join token, created on first start.
pub fn ensure_token(data_dir: &Path, ca_pem: &str) -> anyhow::Result<String> {
    let path = data_dir.join("token");
    let hash = sha256_hex(ca_pem.as_bytes());
    if let Ok(t) = std::fs::read_to_string(&path)
        && let Ok((h, _)) = parse_token(t.trim())
        && h == hash
    {
        return Ok(t.trim().to_string());
    }
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let token = format!("K10{hash}::node:{secret}");
    std::fs::write(&path, format!("{token}\n"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(token)
}

/// (CA hash, secret) of a token.
pub fn parse_token(t: &str) -> anyhow::Result<(String, String)> {
    let rest = t.strip_prefix("K10").context("a join token starts with K10 (see DATA/token on the server)")?;
    let (hash, secret) = rest.split_once("::").context("a join token is K10<ca hash>::node:<secret>")?;
    let secret = secret.strip_prefix("node:").unwrap_or(secret);
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
        bail!("malformed join token");
    }
    Ok((hash.to_string(), secret.to_string()))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub node_name: String,
    pub node_ip: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub ca_pem: String,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: String,
    pub serving_key: String,
}

struct JoinState {
    pki: Arc<skiff_pki::ClusterPki>,
    secret: String,
}

/// `/cacerts` (no authentication: the CA is public, the token's hash vouches for it) and
/// `/skiff/v1/join` (the token's secret as a bearer token).
pub fn router(pki: Arc<skiff_pki::ClusterPki>, token: &str) -> anyhow::Result<Router> {
    let (_, secret) = parse_token(token)?;
    let state = Arc::new(JoinState { pki, secret });
    let ca = state.clone();
    Ok(Router::new().route("/cacerts", axum::routing::get(move || async move { ca.pki.ca_pem().to_string() })).route(
        "/skiff/v1/join",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| join(state.clone(), headers, body)),
    ))
}

/// Compares digests of both, byte for byte without an early exit, so the time taken says nothing
/// about how much of a guess was right.
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (ring::digest::digest(&ring::digest::SHA256, a.as_bytes()), ring::digest::digest(&ring::digest::SHA256, b.as_bytes()));
    x.as_ref().iter().zip(y.as_ref()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

async fn join(state: Arc<JoinState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    if !same_secret(given.trim(), &state.secret) {
        return (StatusCode::UNAUTHORIZED, "invalid join token\n").into_response();
    }
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("join request: {e}\n")).into_response(),
    };
    if req.node_name.is_empty()
        || req.node_name.len() > 253
        || !req.node_name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return (StatusCode::BAD_REQUEST, format!("nodeName {:?} is not a valid node name (lower-case DNS subdomain)\n", req.node_name))
            .into_response();
    }
    if req.node_ip.parse::<std::net::IpAddr>().is_err() {
        return (StatusCode::BAD_REQUEST, format!("nodeIP {:?} is not an IP address\n", req.node_ip)).into_response();
    }
    let issued = (|| -> anyhow::Result<JoinResponse> {
        let (client_cert, client_key) =
            state.pki.issue_client_cert(&format!("system:node:{}", req.node_name), &["system:nodes"], VALIDITY)?;
        let (serving_cert, serving_key) =
            state.pki.issue_server_cert(&req.node_name, &[req.node_ip.clone(), req.node_name.clone()], VALIDITY)?;
        Ok(JoinResponse { ca_pem: state.pki.ca_pem().to_string(), client_cert, client_key, serving_cert, serving_key })
    })();
    match issued {
        Ok(r) => {
            tracing::info!(node = %req.node_name, "a node joined");
            ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&r).unwrap_or_default()).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("issuing certificates: {e}\n")).into_response(),
    }
}

async fn request(
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, Vec<u8>)> {
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls).clone()).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let mut req = hyper::Request::builder().method(method).uri(url).header(header::CONTENT_TYPE, "application/json");
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let resp = tokio::time::timeout(Duration::from_secs(15), client.request(req.body(Body::from(body))?))
        .await
        .context("the server did not answer in 15 s")??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, bytes))
}

/// The files a joined agent keeps.
pub struct Joined {
    pub kubeconfig: PathBuf,
    pub serving: skiff_kubelet::server::ServingTls,
}

/// Joins (or re-uses an earlier join's credentials in `dir`).
pub async fn join_or_reuse(dir: &Path, server: &str, token: &str, node_name: &str, node_ip: &str) -> anyhow::Result<Joined> {
    let kubeconfig = dir.join("kubelet.kubeconfig");
    let (crt, key, ca) = (dir.join("kubelet.crt"), dir.join("kubelet.key"), dir.join("ca.crt"));
    if kubeconfig.exists() && crt.exists() && key.exists() && ca.exists() {
        let serving = skiff_kubelet::server::ServingTls {
            cert_pem: std::fs::read_to_string(&crt)?,
            key_pem: std::fs::read_to_string(&key)?,
            client_ca_pem: std::fs::read_to_string(&ca)?,
        };
        return Ok(Joined { kubeconfig, serving });
    }
    let (hash, secret) = parse_token(token)?;
    let base = server.trim_end_matches('/');
    let (status, ca_pem) = request(skiff_pki::unverified_client_config()?, "GET", &format!("{base}/cacerts"), None, Vec::new())
        .await
        .context("fetching the cluster CA")?;
    if !status.is_success() {
        bail!("{base}/cacerts answered {status}");
    }
    if sha256_hex(&ca_pem) != hash {
        bail!("the CA {base} presents does not match the join token's hash: wrong server or wrong token");
    }
    let ca_pem = String::from_utf8(ca_pem)?;
    let body = serde_json::to_vec(&JoinRequest { node_name: node_name.into(), node_ip: node_ip.into() })?;
    let (status, answer) = request(skiff_pki::ca_client_config(&ca_pem)?, "POST", &format!("{base}/skiff/v1/join"), Some(&secret), body)
        .await
        .context("joining")?;
    if !status.is_success() {
        bail!("joining {base}: {status}: {}", String::from_utf8_lossy(&answer).trim());
    }
    let r: JoinResponse = serde_json::from_slice(&answer).context("the join answer")?;
    std::fs::create_dir_all(dir)?;
    let private = |p: &Path, s: &str| -> anyhow::Result<()> {
        std::fs::write(p, s)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    };
    private(&key, &r.serving_key)?;
    std::fs::write(&crt, &r.serving_cert)?;
    std::fs::write(&ca, &r.ca_pem)?;
    let user = format!("system:node:{node_name}");
    skiff_pki::write_kubeconfig(
        &kubeconfig,
        base,
        &r.ca_pem,
        &user,
        skiff_pki::Credential::ClientCert { cert_pem: &r.client_cert, key_pem: &r.client_key },
    )?;
    tracing::info!(server = base, node = node_name, "joined the cluster");
    Ok(Joined {
        kubeconfig,
        serving: skiff_kubelet::server::ServingTls { cert_pem: r.serving_cert, key_pem: r.serving_key, client_ca_pem: r.ca_pem },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_reject_garbage() {
        let t = format!("K10{}::node:abc", "a".repeat(64));
        assert_eq!(parse_token(&t).unwrap(), ("a".repeat(64), "abc".to_string()));
        assert!(parse_token("abc").is_err());
        assert!(parse_token(&format!("K10{}::node:", "a".repeat(64))).is_err());
        assert!(parse_token("K10zz::node:x").is_err());
        let d = tempfile::tempdir().unwrap();
        let a = ensure_token(d.path(), "CA").unwrap();
        assert_eq!(ensure_token(d.path(), "CA").unwrap(), a, "kept across starts");
        assert_ne!(ensure_token(d.path(), "another CA").unwrap(), a, "a new CA means a new token");
    }
}
