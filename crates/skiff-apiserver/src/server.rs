//! HTTPS serving: TLS (rustls) per connection, the client certificate's identity attached to every
//! request on that connection, HTTP/1.1 and HTTP/2 through hyper-util.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// An authenticated user, as upstream's `user.Info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// The identity the transport established for a request (None: no client certificate).
#[derive(Clone, Debug)]
pub struct Identity(pub Option<UserInfo>);

/// Authenticates bearer tokens (static token file now; service-account tokens later).
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, token: &str) -> Option<UserInfo>;
}

/// Maps verified peer certificates to a user (CN = name, O = groups).
pub type CertIdentity = fn(&[rustls::pki_types::CertificateDer<'static>]) -> Option<UserInfo>;

/// Accepts TLS connections until `shutdown` resolves; each connection is served on its own task.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    identity: CertIdentity,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(acceptor, tcp, peer, router, identity).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

async fn serve_conn(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    _peer: SocketAddr,
    router: Router,
    identity: CertIdentity,
) -> anyhow::Result<()> {
    let tls = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await??;
    let user = tls.get_ref().1.peer_certificates().and_then(identity);
    let ident = Identity(user);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ident.clone());
        let router = router.clone();
        async move { router.oneshot(req.map(axum::body::Body::new)).await }
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
