//! skiff-apiserver: kube-apiserver's role. Start with [`Api::start`] (store + registry + watch
//! cache), then [`router`] for the HTTP surface and [`server::serve_tls`] to listen.
//!
//! Architecture invariant: this crate is the only one that touches the store. Everything else in
//! skiff talks to it through the HTTP API (or the same router in-process).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use skiff_store::Store;

pub mod body;
pub mod cache;
pub mod codec;
pub mod discovery;
pub mod fields;
pub mod handler;
pub mod kubelet;
pub mod metrics_api;
pub mod openapi;
pub mod openapi_schema;
pub mod openapi_v2;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod review;
pub mod selector;
pub mod server;
pub mod status;
pub mod strategy;
pub mod table;
pub mod upgrade;

mod bootstrap;

pub use server::{Authenticator, Identity, UserInfo};
use status::ApiError;
use strategy::service::Cidr;

/// The Kubernetes API level skiff serves (its k8s-openapi feature).
pub const KUBERNETES_VERSION: &str = "v1.33.0";

#[derive(Clone, Debug)]
pub struct Config {
    /// The address clients and the `kubernetes` Endpoints use to reach this server.
    pub advertise_address: String,
    pub secure_port: u16,
    pub service_cidr: Cidr,
    /// Events kept per resource in the watch cache for resuming watchers.
    pub watch_cache_size: usize,
    pub toleration_seconds: strategy::DefaultTolerationSeconds,
    /// TLS for calls to kubelets (pods/log and the other node-proxied subresources): the API
    /// server's kubelet-client certificate, trusting kubelet certificates from the cluster CA.
    /// None: those subresources answer 503.
    pub kubelet_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The API server's shared state.
pub struct Api {
    pub registry: Arc<registry::Registry>,
    pub store: Arc<dyn Store>,
    pub cache: Arc<cache::WatchCache>,
    pub env: strategy::Env,
    pub config: Config,
    pub authn: Option<Arc<dyn Authenticator>>,
    /// OpenAPI documents, serialized on first request.
    pub openapi: openapi_schema::Cache,
}

impl Api {
    /// Loads the store into the watch cache, wires allocators and creates the built-in objects
    /// every cluster has (system namespaces, the `kubernetes` Service).
    pub async fn start(store: Arc<dyn Store>, config: Config, authn: Option<Arc<dyn Authenticator>>) -> anyhow::Result<Arc<Api>> {
        let registry = Arc::new(registry::Registry::builtin());
        let cache = cache::WatchCache::start(store.clone(), registry.clone(), config.watch_cache_size)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let env = strategy::Env {
            services: strategy::ServiceAllocator::new(config.service_cidr),
            priority_classes: Default::default(),
            toleration_seconds: config.toleration_seconds,
        };
        let api = Arc::new(Api { registry, store, cache, env, config, authn, openapi: Default::default() });
        let weak = Arc::downgrade(&api);
        api.env.priority_classes.set_source(Arc::new(move || {
            let Some(api) = weak.upgrade() else { return Vec::new() };
            let desc = api.registry.lookup("scheduling.k8s.io", "v1", "priorityclasses").expect("priorityclasses registered");
            let (items, _) = api.cache.cache(desc).snapshot(desc.storage_prefix, 0);
            items
                .iter()
                .map(|o| {
                    let v = o.value();
                    strategy::PriorityClassInfo {
                        name: o.name.clone(),
                        value: v.get("value").and_then(|x| x.as_i64()).unwrap_or(0) as i32,
                        preemption_policy: v.get("preemptionPolicy").and_then(|x| x.as_str()).map(str::to_string),
                        global_default: v.get("globalDefault").and_then(|x| x.as_bool()).unwrap_or(false),
                    }
                })
                .collect()
        }));
        let weak = Arc::downgrade(&api);
        api.env.services.set_source(Arc::new(move || {
            let Some(api) = weak.upgrade() else { return Vec::new() };
            let desc = api.registry.lookup("", "v1", "services").expect("services registered");
            let (items, _) = api.cache.cache(desc).snapshot(desc.storage_prefix, 0);
            items
                .iter()
                .map(|o| {
                    let v = o.value();
                    let ips = v
                        .pointer("/spec/clusterIPs")
                        .and_then(|a| a.as_array())
                        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    let ports = v
                        .pointer("/spec/ports")
                        .and_then(|a| a.as_array())
                        .map(|a| a.iter().filter_map(|p| p.get("nodePort").and_then(|n| n.as_i64()).map(|n| n as i32)).collect())
                        .unwrap_or_default();
                    (format!("{}/{}", o.namespace.as_deref().unwrap_or_default(), o.name), ips, ports)
                })
                .collect()
        }));
        bootstrap::ensure_builtin_objects(&api).await?;
        Ok(api)
    }
}

/// The complete HTTP surface. Requests must carry an [`Identity`] extension (set by the TLS layer
/// from the client certificate) or a bearer token the authenticator accepts; health checks are open.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/version", axum::routing::get(version))
        .route("/openapi/v2", axum::routing::get(openapi_v2))
        .route("/openapi/v3", axum::routing::get(openapi_index))
        .route("/openapi/v3/{*path}", axum::routing::get(openapi_gv))
        .fallback(api_fallback)
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .route("/healthz", axum::routing::get(ok))
        .route("/livez", axum::routing::get(ok))
        .route("/readyz", axum::routing::get(ok))
        .route("/healthz/{*check}", axum::routing::get(ok))
        .route("/livez/{*check}", axum::routing::get(ok))
        .route("/readyz/{*check}", axum::routing::get(ok))
        .with_state(api)
}

async fn ok() -> &'static str {
    "ok"
}

async fn version() -> Response {
    let minor = KUBERNETES_VERSION.split('.').nth(1).unwrap_or("33");
    let body = json!({
        "major": "1",
        "minor": minor,
        "gitVersion": format!("{KUBERNETES_VERSION}+skiff-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    });
    handler::json_value(StatusCode::OK, &body)
}

// The first request builds the documents (all v3 ones take ~80 ms in a debug build): keep that
// off the async workers. Serving an already built document is cheap either way.
async fn off_worker(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| ApiError::internal("openapi document build panicked").into_response())
}

async fn openapi_v2(State(api): State<Arc<Api>>, headers: axum::http::HeaderMap) -> Response {
    off_worker(move || openapi_v2::serve(&api, &headers)).await
}

async fn openapi_index(State(api): State<Arc<Api>>) -> Response {
    off_worker(move || openapi::index(&api).unwrap_or_else(IntoResponse::into_response)).await
}

async fn openapi_gv(
    State(api): State<Arc<Api>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    off_worker(move || openapi::group_version(&api, &path, uri.query(), &headers).unwrap_or_else(IntoResponse::into_response)).await
}

async fn api_fallback(State(api): State<Arc<Api>>, req: Request<Body>) -> Response {
    let path = req.uri().path();
    if path == "/api" || path.starts_with("/api/") || path == "/apis" || path.starts_with("/apis/") {
        handler::serve(api, req).await
    } else {
        ApiError::no_route().into_response()
    }
}

async fn authenticate(State(api): State<Arc<Api>>, mut req: Request<Body>, next: Next) -> Response {
    let from_cert = req.extensions().get::<Identity>().and_then(|i| i.0.clone());
    let user = match from_cert {
        Some(u) => Some(u),
        None => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match (token, &api.authn) {
                (Some(t), Some(a)) if !t.is_empty() => a.authenticate(t),
                _ => None,
            }
        }
    };
    match user {
        Some(u) => {
            req.extensions_mut().insert(Identity(Some(u)));
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}
