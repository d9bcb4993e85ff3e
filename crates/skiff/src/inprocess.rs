//! An in-process transport: a kube-rs `Client` whose requests go straight into the API server's
//! router, with no TLS or socket. Components embedded in `skiff server` use it; the semantics are
//! the public HTTP API's (same router, same authentication step with a fixed identity).

use axum::Router;
use skiff_apiserver::{Identity, UserInfo};

/// `agent` is the component name sent as User-Agent, which the API server records as the field
/// manager of its writes (upstream: `kube-controller-manager`, `kube-scheduler`).
pub fn client(router: Router, user: &str, groups: &[&str], agent: &str) -> kube::Client {
    let ident = Identity(Some(UserInfo { name: user.to_string(), groups: groups.iter().map(|g| g.to_string()).collect() }));
    let ua = axum::http::HeaderValue::from_str(&format!("{agent}/v{} skiff", env!("CARGO_PKG_VERSION"))).expect("a valid header");
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut r: axum::http::Request<kube::client::Body>| {
            r.extensions_mut().insert(ident.clone());
            r.headers_mut().entry(axum::http::header::USER_AGENT).or_insert_with(|| ua.clone());
            r.map(axum::body::Body::new)
        })
        .service(router);
    kube::Client::new(svc, "default")
}
