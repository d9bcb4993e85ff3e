//! Forwarding a request that may switch protocols (SPDY/3.1 or WebSocket, as `kubectl exec`,
//! `attach` and `port-forward` ask for) to another server, as upstream's UpgradeAwareHandler:
//! the request goes over HTTP/1.1 on a connection the caller opened; a 101 answer joins the two
//! upgraded connections byte for byte, any other answer is streamed back as is. The API server
//! uses it towards kubelets, the kubelet towards the container runtime's streaming server.

use axum::body::Body;
use axum::http::{HeaderName, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Headers that belong to one hop (or carry the caller's credentials) and are not passed on;
/// `Connection` and `Upgrade` are, since they are the point.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "proxy-authorization"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "impersonate-user"
            | "impersonate-group"
    )
}

/// Sends `req` to `path_and_query` on `host` over `io` and relays the answer.
pub async fn forward<IO>(mut req: Request<Body>, io: IO, host: &str, path_and_query: &str) -> Result<Response<Body>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await.map_err(|e| format!("connecting: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    let (parts, body) = req.into_parts();
    let mut out = Request::builder().method(parts.method.clone()).uri(path_and_query).header(header::HOST, host);
    for (k, v) in parts.headers.iter().filter(|(k, _)| forwardable(k)) {
        out = out.header(k, v);
    }
    let out = out.body(body).map_err(|e| e.to_string())?;
    let mut resp = sender.send_request(out).await.map_err(|e| format!("forwarding: {e}"))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let backend_upgrade = hyper::upgrade::on(&mut resp);
    let mut back = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        back = back.header(k, v);
    }
    tokio::spawn(async move {
        match (client_upgrade.await, backend_upgrade.await) {
            (Ok(client), Ok(backend)) => {
                let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(backend));
                if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                    tracing::debug!(error = %e, "upgraded stream ended");
                }
            }
            (c, b) => tracing::debug!(client = c.is_ok(), backend = b.is_ok(), "a side of the upgrade failed"),
        }
    });
    back.body(Body::empty()).map_err(|e| e.to_string())
}
