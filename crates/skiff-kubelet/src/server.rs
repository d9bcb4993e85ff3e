//! The kubelet's HTTPS endpoint (port 10250): mutual TLS with the cluster CA, so only the API
//! server (its kubelet-client certificate, in system:masters) gets in. Container logs; exec,
//! attach and port-forward, which ask the runtime for a streaming URL (CRI Exec/Attach/
//! PortForward) and join the caller's upgraded connection (SPDY or WebSocket) to the runtime's
//! streaming server, as upstream's kubelet does when it proxies instead of redirecting.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::cri::Cri;
use crate::logs;

/// The serving certificate and the CA whose client certificates are accepted.
#[derive(Clone, Debug)]
pub struct ServingTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

/// Users allowed in: upstream's kubelet authorizes the API server through its group.
fn authorized(id: Option<&skiff_apiserver::UserInfo>) -> bool {
    id.is_some_and(|u| u.groups.iter().any(|g| g == "system:masters") || u.name == "kube-apiserver-kubelet-client")
}

fn cert_identity(certs: &[rustls::pki_types::CertificateDer<'static>]) -> Option<skiff_apiserver::UserInfo> {
    skiff_pki::client_identity(certs).map(|u| skiff_apiserver::UserInfo { name: u.name, groups: u.groups })
}

pub fn router(cri: Cri, node_name: String, data_dir: std::path::PathBuf) -> Router {
    let rates = std::sync::Arc::new(crate::stats::Rates::default());
    let summary = move |State(cri): State<Cri>| {
        let (rates, node_name, data_dir) = (rates.clone(), node_name.clone(), data_dir.clone());
        async move {
            match crate::stats::summary(&cri, &rates, &node_name, &data_dir).await {
                Ok(v) => ([("content-type", "application/json")], v.to_string()).into_response(),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("stats: {}", e.message())),
            }
        }
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stats/summary", get(summary))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route("/attach/{namespace}/{pod}/{container}", get(attach).post(attach))
        .route("/portForward/{namespace}/{pod}", get(port_forward).post(port_forward))
        .layer(axum::middleware::from_fn(|req: axum::extract::Request, next: axum::middleware::Next| async move {
            let id = req.extensions().get::<skiff_apiserver::Identity>().and_then(|i| i.0.clone());
            if !authorized(id.as_ref()) {
                return (StatusCode::FORBIDDEN, "Forbidden: the kubelet serves the API server only\n").into_response();
            }
            next.run(req).await
        }))
        .with_state(cri)
}

pub async fn serve(addr: SocketAddr, tls: ServingTls, cri: Cri, node_name: String, data_dir: std::path::PathBuf) -> anyhow::Result<()> {
    let config = skiff_pki::mtls_server_config(&tls.cert_pem, &tls.key_pem, &tls.client_ca_pem)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("kubelet server on {addr}: {e}"))?;
    tracing::info!(%addr, "kubelet server listening");
    skiff_apiserver::server::serve_tls(listener, config, router(cri, node_name, data_dir), cert_identity, std::future::pending()).await?;
    Ok(())
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

fn text(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

async fn container_logs(
    State(cri): State<Cri>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let int = |k: &str| q.get(k).map(|v| v.parse::<i64>().map_err(|_| format!("invalid value for {k}: {v:?}")));
    let parse = || -> Result<logs::Options, String> {
        let since = match (int("sinceSeconds").transpose()?, q.get("sinceTime")) {
            (Some(s), _) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0))),
            (None, Some(t)) => Some(t.parse::<jiff::Timestamp>().map_err(|e| format!("invalid sinceTime {t:?}: {e}"))?),
            (None, None) => None,
        };
        Ok(logs::Options {
            follow: flag(&q, "follow"),
            previous: flag(&q, "previous"),
            timestamps: flag(&q, "timestamps"),
            tail_lines: int("tailLines").transpose()?.filter(|n| *n >= 0).map(|n| n as usize),
            since,
            limit_bytes: int("limitBytes").transpose()?.filter(|n| *n > 0).map(|n| n as usize),
        })
    };
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (id, path) = match logs::locate(&cri, &ns, &pod, &container, opts.previous).await {
        Ok(x) => x,
        Err(logs::LogError::NotFound(m)) => return text(StatusCode::NOT_FOUND, m),
        Err(logs::LogError::BadRequest(m)) => return text(StatusCode::BAD_REQUEST, m),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(logs::stream(cri, id, path, opts, tx));
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx)) });
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "building the response".into()))
}

/// Query pairs in order, repeats kept (`command=sh&command=-c`), `+` and `%XX` decoded as Go's
/// url.ParseQuery does.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn truthy(pairs: &[(String, String)], k: &str) -> bool {
    pairs.iter().any(|(key, v)| key == k && (v == "1" || v == "true" || v == "True"))
}

/// The ready sandbox of a pod (by namespace and name) and, when asked, its running container.
async fn running(cri: &Cri, ns: &str, pod: &str, container: Option<&str>) -> Result<(String, Option<String>), Response> {
    let not_found = |m: String| text(StatusCode::NOT_FOUND, m);
    let sandboxes = cri.sandboxes(None).await.map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let ready = sandboxes.into_iter().find(|s| {
        s.state == crate::cri::v1::PodSandboxState::SandboxReady as i32
            && s.labels.get(crate::labels::POD_NAMESPACE).map(String::as_str) == Some(ns)
            && s.labels.get(crate::labels::POD_NAME).map(String::as_str) == Some(pod)
    });
    let Some(sandbox) = ready else { return Err(not_found(format!("pod {ns}/{pod} is not running on this node"))) };
    let Some(name) = container else { return Ok((sandbox.id, None)) };
    let list = cri.containers(Some(&sandbox.id)).await.map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let c = list
        .into_iter()
        .filter(|c| {
            c.metadata.as_ref().is_some_and(|m| m.name == name) && c.state == crate::cri::v1::ContainerState::ContainerRunning as i32
        })
        .max_by_key(|c| c.created_at);
    match c {
        Some(c) => Ok((sandbox.id, Some(c.id))),
        None => Err(text(StatusCode::BAD_REQUEST, format!("container {name} is not running in pod {pod}"))),
    }
}

/// Joins the request to the runtime's streaming server at `url` (http://host:port/path).
async fn to_runtime(req: axum::extract::Request, url: &str) -> Response {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tcp = match tokio::net::TcpStream::connect(host).await {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("the runtime's streaming server at {host}: {e}")),
    };
    match skiff_apiserver::upgrade::forward(req, tcp, host, path).await {
        Ok(r) => r,
        Err(e) => text(StatusCode::BAD_GATEWAY, e),
    }
}

async fn exec(State(cri): State<Cri>, Path((ns, pod, container)): Path<(String, String, String)>, req: axum::extract::Request) -> Response {
    let q = query_pairs(req.uri().query().unwrap_or_default());
    let cmd: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if cmd.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 command".into());
    }
    let (_, id) = match running(&cri, &ns, &pod, Some(&container)).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r = crate::cri::v1::ExecRequest {
        container_id: id.unwrap_or_default(),
        cmd,
        tty: truthy(&q, "tty"),
        stdin: truthy(&q, "stdin"),
        stdout: truthy(&q, "stdout"),
        stderr: truthy(&q, "stderr"),
    };
    match cri.runtime.clone().exec(r).await {
        Ok(resp) => to_runtime(req, &resp.into_inner().url).await,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("exec: {}", e.message())),
    }
}

async fn attach(
    State(cri): State<Cri>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Response {
    let q = query_pairs(req.uri().query().unwrap_or_default());
    let (_, id) = match running(&cri, &ns, &pod, Some(&container)).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r = crate::cri::v1::AttachRequest {
        container_id: id.unwrap_or_default(),
        stdin: truthy(&q, "stdin"),
        tty: truthy(&q, "tty"),
        stdout: truthy(&q, "stdout"),
        stderr: truthy(&q, "stderr"),
    };
    match cri.runtime.clone().attach(r).await {
        Ok(resp) => to_runtime(req, &resp.into_inner().url).await,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("attach: {}", e.message())),
    }
}

async fn port_forward(State(cri): State<Cri>, Path((ns, pod)): Path<(String, String)>, req: axum::extract::Request) -> Response {
    let q = query_pairs(req.uri().query().unwrap_or_default());
    let ports: Vec<i32> = q
        .iter()
        .filter(|(k, _)| k == "ports")
        .flat_map(|(_, v)| v.split(',').filter_map(|p| p.trim().parse().ok()).collect::<Vec<_>>())
        .collect();
    let (sandbox, _) = match running(&cri, &ns, &pod, None).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r = crate::cri::v1::PortForwardRequest { pod_sandbox_id: sandbox, port: ports };
    match cri.runtime.clone().port_forward(r).await {
        Ok(resp) => to_runtime(req, &resp.into_inner().url).await,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("port-forward: {}", e.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_keep_repeats_and_decode() {
        let q = query_pairs("command=sh&command=-c&command=echo+hi%21&stdin=true&tty&bad=%zz&end=%4");
        assert_eq!(q[0], ("command".into(), "sh".into()));
        assert_eq!(q[2], ("command".into(), "echo hi!".into()));
        assert!(truthy(&q, "stdin"));
        assert!(!truthy(&q, "tty"));
        assert_eq!(q[5].1, "%zz");
        assert_eq!(q[6].1, "%4");
    }
}
