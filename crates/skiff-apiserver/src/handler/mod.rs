//! The one generic REST handler. A request path resolves to a [`Target`] through the registry; the
//! verb modules below implement each operation once for every resource.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::Api;
use crate::registry::{Descriptor, Subresource};
use crate::status::{ApiError, ApiResult};

mod delete;
mod read;
mod subresource;
mod watch;
pub mod write;

pub use write::WriteMode;

/// A request aimed at a resource.
pub struct Target {
    pub desc: Arc<Descriptor>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Subresource>,
}

impl Target {
    pub fn key(&self) -> String {
        self.desc.key(self.namespace.as_deref(), self.name.as_deref().unwrap_or_default())
    }
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// Query parameters, decoded once.
#[derive(Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(query: Option<&str>) -> Params {
        Params(form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect())
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// A boolean parameter as upstream converts it: absent, `0` or any case of `false` is
    /// false, anything else true (the Python client sends `watch=True`, a bare `?watch` is true).
    pub fn flag(&self, k: &str) -> bool {
        self.get(k).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
    }
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("Invalid dryRun value: {other:?}: supported values: \"All\""))),
        }
    }
    /// A non-negative integer parameter; malformed values are a 400 naming the parameter.
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(s) => {
                s.parse::<i64>().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {s:?} is not an integer")))
            }
        }
    }
}

/// Entry point for every `/api/...` and `/apis/...` request.
pub async fn serve(api: Arc<Api>, req: Request<Body>) -> Response {
    // exec/attach/portforward keep the whole request: its connection may be upgraded.
    if crate::kubelet::stream_path(req.uri().path()).is_some() {
        return crate::kubelet::stream(&api, req).await.unwrap_or_else(|e| e.into_response());
    }
    if crate::kubelet::node_proxy_path(req.uri().path()).is_some() {
        return crate::kubelet::node_proxy(&api, req).await.unwrap_or_else(|e| e.into_response());
    }
    let (parts, body) = req.into_parts();
    let params = Params::parse(parts.uri.query());
    let path = parts.uri.path().to_string();
    let user = parts.extensions.get::<crate::Identity>().and_then(|i| i.0.as_ref());
    let result = route(&api, &parts.method, &path, &parts.headers, params, body, user).await;
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(
    api: &Arc<Api>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    params: Params,
    body: Body,
    user: Option<&crate::UserInfo>,
) -> ApiResult<Response> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return crate::discovery::core_versions(api, headers),
        ["apis"] => return crate::discovery::groups(api, headers),
        ["api", v] => return crate::discovery::resource_list(api, "", v),
        ["apis", g] => return crate::discovery::group(api, g),
        ["apis", g, v] => return crate::discovery::resource_list(api, g, v),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    // Legacy `/watch/` paths are watch=true lists.
    let (legacy_watch, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    if let [plural] = rest
        && let Some(review) = crate::review::find(group, version, plural)
    {
        return match *method {
            Method::POST => crate::review::create(review, user, headers, &params, &read_body(body).await?),
            ref m => Err(ApiError::method_not_allowed(m.as_str())),
        };
    }
    if group == crate::metrics_api::GROUP && version == crate::metrics_api::VERSION {
        return match *method {
            Method::GET if !is_watch_request(legacy_watch, &params) => crate::metrics_api::serve(api, rest, &params).await,
            ref m => Err(ApiError::method_not_allowed(m.as_str())),
        };
    }
    let target = resolve(api, group, version, rest)?;
    let is_watch = legacy_watch || params.flag("watch");
    match (method.clone(), target.name.is_some(), target.sub) {
        (Method::GET, false, None) if is_watch => watch::watch(api, &target, headers, &params).await,
        (Method::GET, true, None) if is_watch => watch::watch(api, &target, headers, &params).await,
        (Method::GET, false, None) => read::list(api, &target, headers, &params).await,
        (Method::GET, true, None) => read::get(api, &target, headers, &params).await,
        (Method::GET, true, Some(Subresource::Scale)) => subresource::get_scale(api, &target).await,
        (Method::GET, true, Some(Subresource::Log)) => crate::kubelet::pod_log(api, &target, &params).await,
        (Method::GET, true, Some(_)) => read::get(api, &target, headers, &params).await,
        (Method::POST, false, None) => write::create(api, &target, headers, &params, read_body(body).await?).await,
        (Method::POST, true, Some(Subresource::Binding)) => subresource::bind(api, &target, headers, &params, read_body(body).await?).await,
        (Method::POST, true, Some(Subresource::Eviction)) => {
            subresource::evict(api, &target, headers, &params, read_body(body).await?).await
        }
        (Method::PUT, true, Some(Subresource::Scale)) => {
            subresource::update_scale(api, &target, headers, &params, read_body(body).await?, false).await
        }
        (Method::PATCH, true, Some(Subresource::Scale)) => {
            subresource::update_scale(api, &target, headers, &params, read_body(body).await?, true).await
        }
        (Method::PUT, true, sub) => write::update(api, &target, headers, &params, read_body(body).await?, WriteMode::for_sub(sub)).await,
        (Method::PATCH, true, sub) => write::patch(api, &target, headers, &params, read_body(body).await?, WriteMode::for_sub(sub)).await,
        (Method::DELETE, true, None) => delete::delete(api, &target, &params, read_body(body).await?).await,
        (Method::DELETE, false, None) if target.desc.verbs.contains(&"deletecollection") => {
            delete::delete_collection(api, &target, &params, read_body(body).await?).await
        }
        (m, _, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

fn is_watch_request(legacy: bool, params: &Params) -> bool {
    legacy || params.flag("watch")
}

/// Resolve `rest` (the path after the group/version) into a target.
fn resolve(api: &Api, group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let lookup = |plural: &str| api.registry.lookup(group, version, plural).cloned().ok_or_else(ApiError::no_route);
    let sub = |desc: &Descriptor, s: &str| desc.subresources.iter().copied().find(|x| x.path() == s).ok_or_else(ApiError::no_route);
    let t = match rest {
        // namespaces/{ns}/{plural}[/{name}[/{sub}]], except namespace subresources.
        ["namespaces", ns, s] if group.is_empty() && (*s == "status" || *s == "finalize") => {
            let desc = lookup("namespaces")?;
            let sub = sub(&desc, s)?;
            Target { desc, namespace: None, name: Some(ns.to_string()), sub: Some(sub) }
        }
        ["namespaces", ns, plural, tail @ ..] => {
            let desc = lookup(plural)?;
            if !desc.namespaced {
                return Err(ApiError::no_route());
            }
            let (name, s) = match tail {
                [] => (None, None),
                [n] => (Some(n.to_string()), None),
                [n, s] => (Some(n.to_string()), Some(sub(&desc, s)?)),
                _ => return Err(ApiError::no_route()),
            };
            Target { desc, namespace: Some(ns.to_string()), name, sub: s }
        }
        [plural, tail @ ..] => {
            let desc = lookup(plural)?;
            let (name, s) = match tail {
                [] => (None, None),
                [n] if !desc.namespaced => (Some(n.to_string()), None),
                [n, s] if !desc.namespaced => (Some(n.to_string()), Some(sub(&desc, s)?)),
                _ => return Err(ApiError::no_route()),
            };
            Target { desc, namespace: None, name, sub: s }
        }
        [] => return Err(ApiError::no_route()),
    };
    Ok(t)
}

/// Reads a request body up to the limit. An oversized body is still drained (bounded in bytes
/// and time) before the 413 is sent: closing a socket with unread upload data makes the kernel
/// reset the connection, and the client would lose the 413 (upstream's Go server lingers too).
async fn read_body(body: Body) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let limit = crate::body::MAX_BODY_BYTES;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(Some(Err(e))) => return Err(ApiError::bad_request(format!("error reading the request body: {e}"))),
            Ok(None) | Err(_) => break,
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::request_entity_too_large(limit));
    }
    Ok(buf.freeze())
}

/// A JSON response from already-serialized bytes.
pub fn json_bytes(status: StatusCode, bytes: Bytes) -> Response {
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn json_value(status: StatusCode, v: &Value) -> Response {
    json_bytes(status, Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
}

/// Adds `Warning: 299 - "..."` headers, as upstream does for fieldValidation=Warn and deprecations.
pub fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

#[cfg(test)]
mod params_tests {
    use super::Params;

    #[test]
    fn booleans_convert_as_upstream() {
        for (q, want) in [("watch=true", true), ("watch=True", true), ("watch=1", true), ("watch", true), ("watch=yes", true)] {
            assert_eq!(Params::parse(Some(q)).flag("watch"), want, "{q}");
        }
        for q in ["watch=false", "watch=False", "watch=FALSE", "watch=0", "other=true", ""] {
            assert!(!Params::parse(Some(q)).flag("watch"), "{q}");
        }
    }
}
