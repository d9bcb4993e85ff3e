//! An in-process transport: a kube-rs `Client` whose requests go straight into the API server's
//! router, with no TLS or socket. Components embedded in `skiff server` use it; the semantics are
//! the public HTTP API's (same router, same authentication step with a fixed identity).

use axum::Router;
use skiff_apiserver::{Identity, UserInfo};

pub fn client(router: Router, user: &str, groups: &[&str]) -> kube::Client {
    let ident = Identity(Some(UserInfo { name: user.to_string(), groups: groups.iter().map(|g| g.to_string()).collect() }));
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut r: axum::http::Request<kube::client::Body>| {
            r.extensions_mut().insert(ident.clone());
            r.map(axum::body::Body::new)
        })
        .service(router);
    kube::Client::new(svc, "default")
}
