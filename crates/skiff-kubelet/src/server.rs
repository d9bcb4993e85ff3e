//! The kubelet's HTTPS endpoint (port 10250): mutual TLS with the cluster CA, so only the API
//! server (its kubelet-client certificate, in system:masters) gets in. Serves container logs now;
//! exec, attach, port-forward and stats come next on the same endpoint.

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

pub fn router(cri: Cri) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .layer(axum::middleware::from_fn(|req: axum::extract::Request, next: axum::middleware::Next| async move {
            let id = req.extensions().get::<skiff_apiserver::Identity>().and_then(|i| i.0.clone());
            if !authorized(id.as_ref()) {
                return (StatusCode::FORBIDDEN, "Forbidden: the kubelet serves the API server only\n").into_response();
            }
            next.run(req).await
        }))
        .with_state(cri)
}

pub async fn serve(addr: SocketAddr, tls: ServingTls, cri: Cri) -> anyhow::Result<()> {
    let config = skiff_pki::mtls_server_config(&tls.cert_pem, &tls.key_pem, &tls.client_ca_pem)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("kubelet server on {addr}: {e}"))?;
    tracing::info!(%addr, "kubelet server listening");
    skiff_apiserver::server::serve_tls(listener, config, router(cri), cert_identity, std::future::pending()).await?;
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
