//! Subresources the API server answers by calling the pod's kubelet (upstream's
//! `pkg/registry/core/pod/rest/log.go` and the kubelet client): the API server checks the pod and
//! container, finds the node's address and kubelet port, and streams the kubelet's answer back.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::Api;
use crate::handler::{Params, Target};
use crate::status::{ApiError, ApiResult};

/// The query parameters of pods/log the kubelet understands, passed through as given (after
/// checking the integers, so a bad one is a 400 from us naming it).
const LOG_PARAMS: &[&str] =
    &["follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes", "insecureSkipTLSVerifyBackend"];

/// The container a log request is for: the one named, or the pod's only (or default) container.
pub fn pick_container(pod: &Value, requested: Option<&str>) -> ApiResult<String> {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let (containers, init, ephemeral) = (names("containers"), names("initContainers"), names("ephemeralContainers"));
    match requested.filter(|s| !s.is_empty()) {
        Some(c) => {
            if containers.iter().chain(&init).chain(&ephemeral).any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}")))
            }
        }
        None => {
            let default = pod.pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container").and_then(Value::as_str);
            if let Some(d) = default.filter(|d| containers.iter().any(|n| n == d)) {
                return Ok(d.to_string());
            }
            match containers.as_slice() {
                [only] => Ok(only.clone()),
                _ => {
                    let mut msg = format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" "));
                    if !init.is_empty() {
                        msg.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
                    }
                    Err(ApiError::bad_request(msg))
                }
            }
        }
    }
}

/// Where a Node's kubelet listens: its InternalIP (else ExternalIP, Hostname) and kubelet port.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

pub fn node_endpoint(node: &Value) -> Option<Endpoint> {
    let addrs = node.pointer("/status/addresses").and_then(Value::as_array)?;
    let pick = |ty: &str| addrs.iter().find(|a| a.get("type").and_then(Value::as_str) == Some(ty)).and_then(|a| a.get("address")?.as_str());
    let host = pick("InternalIP").or_else(|| pick("ExternalIP")).or_else(|| pick("Hostname"))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0 && *p < 65536)
        .unwrap_or(10250);
    Some(Endpoint { host: host.to_string(), port: port as u16 })
}

async fn read_object(api: &Api, key: &str) -> Option<Value> {
    let desc = api.registry.for_key(key)?;
    api.cache.cache(desc).get(key).map(|o| o.value())
}

/// The pod and the kubelet endpoint of its node.
async fn locate(api: &Api, t: &Target) -> ApiResult<(Value, Endpoint)> {
    let pod = read_object(api, &t.key()).await.ok_or_else(|| ApiError::not_found(t.desc.group, t.desc.plural, t.name()))?;
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|s| !s.is_empty());
    let Some(node_name) = node_name else {
        return Err(ApiError::bad_request(format!("pod {} does not have a host assigned", t.name())));
    };
    let node = read_object(api, &format!("/registry/minions/{node_name}"))
        .await
        .ok_or_else(|| ApiError::bad_request(format!("node {node_name:?} of pod {} is not found", t.name())))?;
    let url =
        node_endpoint(&node).ok_or_else(|| ApiError::bad_request(format!("node {node_name:?} has no address to reach its kubelet at")))?;
    Ok((pod, url))
}

/// GET pods/{name}/log.
pub async fn pod_log(api: &Arc<Api>, t: &Target, params: &Params) -> ApiResult<Response> {
    for p in ["tailLines", "sinceSeconds", "limitBytes"] {
        params.int(p)?;
    }
    if params.get("sinceSeconds").is_some() && params.get("sinceTime").is_some() {
        return Err(ApiError::bad_request("at most one of sinceTime or sinceSeconds may be specified"));
    }
    let (pod, base) = locate(api, t).await?;
    let container = pick_container(&pod, params.get("container"))?;
    let mut query: Vec<String> = Vec::new();
    for p in LOG_PARAMS {
        if let Some(v) = params.get(p) {
            query.push(format!("{p}={}", urlencode(v)));
        }
    }
    let ns = t.namespace.as_deref().unwrap_or("default");
    let url = format!("{}/containerLogs/{ns}/{}/{container}?{}", base.url(), t.name(), query.join("&"));
    proxy_get(api, &url, "text/plain").await
}

/// `pods/exec`, `pods/attach`, `pods/portforward` paths: (namespace, pod, subresource).
pub fn stream_path(path: &str) -> Option<(&str, &str, &str)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub @ ("exec" | "attach" | "portforward")] => Some((ns, name, sub)),
        _ => None,
    }
}

/// exec, attach and port-forward: the request (SPDY or WebSocket upgrade) goes to the pod's
/// kubelet over mutual TLS and the upgraded connections are joined.
pub async fn stream(api: &Api, req: axum::extract::Request) -> ApiResult<Response> {
    let path = req.uri().path().to_string();
    let (ns, name, sub) = stream_path(&path).ok_or_else(ApiError::no_route)?;
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return Err(ApiError::method_not_allowed(req.method().as_str()));
    }
    let desc = api.registry.lookup("", "v1", "pods").ok_or_else(ApiError::no_route)?.clone();
    let t = Target { desc, namespace: Some(ns.to_string()), name: Some(name.to_string()), sub: None };
    let (pod, ep) = locate(api, &t).await?;
    let query = req.uri().query().unwrap_or_default().to_string();
    let params = Params::parse(Some(&query));
    let target = match sub {
        "portforward" => format!("/portForward/{ns}/{name}?{query}"),
        _ => {
            let container = pick_container(&pod, params.get("container"))?;
            let verb = if sub == "exec" { "exec" } else { "attach" };
            if verb == "exec" && params.get("command").is_none() {
                return Err(ApiError::bad_request("you must specify at least 1 command"));
            }
            format!("/{verb}/{ns}/{name}/{container}?{query}")
        }
    };
    let conn = connect(api, &ep).await?;
    let host = format!("{}:{}", ep.host, ep.port);
    crate::upgrade::forward(req, conn, &host, &target).await.map_err(ApiError::service_unavailable)
}

/// `nodes/{name}/proxy[/{path}]`: (node, the path on the kubelet, with its leading slash).
pub fn node_proxy_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/nodes/")?;
    let (name, rest) = rest.split_once('/')?;
    let tail = rest.strip_prefix("proxy")?;
    if !(tail.is_empty() || tail.starts_with('/')) || name.is_empty() {
        return None;
    }
    Some((name, if tail.is_empty() { "/" } else { tail }))
}

/// Opens a mutual-TLS connection to a kubelet.
async fn connect(api: &Api, ep: &Endpoint) -> ApiResult<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls =
        api.config.kubelet_tls.clone().ok_or_else(|| ApiError::service_unavailable("this API server has no kubelet client credentials"))?;
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)))
        .await
        .map_err(|_| ApiError::service_unavailable(format!("the kubelet at {} did not answer in 10 s", ep.url())))?
        .map_err(|e| ApiError::service_unavailable(format!("calling the kubelet at {}: {e}", ep.url())))?;
    let server_name = rustls::pki_types::ServerName::try_from(ep.host.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| ApiError::service_unavailable(format!("TLS to the kubelet at {}: {e}", ep.url())))
}

/// nodes/{name}/proxy/...: the request as is to the node's kubelet (`kubectl get --raw
/// /api/v1/nodes/N/proxy/stats/summary`).
pub async fn node_proxy(api: &Api, req: axum::extract::Request) -> ApiResult<Response> {
    let path = req.uri().path().to_string();
    let (name, tail) = node_proxy_path(&path).ok_or_else(ApiError::no_route)?;
    let node = read_object(api, &format!("/registry/minions/{name}")).await.ok_or_else(|| ApiError::not_found("", "nodes", name))?;
    let ep = node_endpoint(&node).ok_or_else(|| ApiError::bad_request(format!("node {name:?} has no address to reach its kubelet at")))?;
    let target = match req.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail.to_string(),
    };
    let conn = connect(api, &ep).await?;
    let host = format!("{}:{}", ep.host, ep.port);
    crate::upgrade::forward(req, conn, &host, &target).await.map_err(ApiError::service_unavailable)
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A GET to a kubelet over mutual TLS.
pub async fn kubelet_get(api: &Api, url: &str) -> ApiResult<hyper::Response<hyper::body::Incoming>> {
    let tls =
        api.config.kubelet_tls.clone().ok_or_else(|| ApiError::service_unavailable("this API server has no kubelet client credentials"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls).clone()).https_only().enable_http1().build();
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(https);
    let uri: hyper::Uri = url.parse().map_err(|e| ApiError::internal(format!("kubelet URL {url}: {e}")))?;
    let req = hyper::Request::get(uri).body(Body::empty()).map_err(|e| ApiError::internal(e.to_string()))?;
    tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| ApiError::service_unavailable(format!("the kubelet at {url} did not answer in 30 s")))?
        .map_err(|e| ApiError::service_unavailable(format!("calling the kubelet: {e}")))
}

/// A GET to a kubelet, its body streamed back; a kubelet error becomes a Status with its text.
async fn proxy_get(api: &Api, url: &str, content_type: &str) -> ApiResult<Response> {
    let resp = kubelet_get(api, url).await?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(match status {
            StatusCode::NOT_FOUND => ApiError::new(404, "NotFound", msg),
            StatusCode::BAD_REQUEST => ApiError::bad_request(msg),
            _ => ApiError::internal(format!("the kubelet answered {status}: {msg}")),
        });
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_str(content_type).expect("a valid content type"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_defaults_and_errors_follow_upstream() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "a");
        let two =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = pick_container(&two, None).unwrap_err();
        assert!(
            e.to_status()["message"]
                .as_str()
                .unwrap()
                .contains("a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]")
        );
        assert_eq!(pick_container(&two, Some("i")).unwrap(), "i");
        assert!(
            pick_container(&two, Some("zz")).unwrap_err().to_status()["message"]
                .as_str()
                .unwrap()
                .contains("container zz is not valid for pod p")
        );
        let def = json!({"metadata": {"name": "p", "annotations": {"kubectl.kubernetes.io/default-container": "b"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&def, None).unwrap(), "b");
    }

    #[test]
    fn node_endpoints() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(node_endpoint(&n).unwrap().url(), "https://10.0.0.5:10250");
        assert!(node_endpoint(&json!({})).is_none());
        assert_eq!(urlencode("2026-01-01T00:00:00Z"), "2026-01-01T00%3A00%3A00Z");
        assert_eq!(node_proxy_path("/api/v1/nodes/n1/proxy/stats/summary"), Some(("n1", "/stats/summary")));
        assert_eq!(node_proxy_path("/api/v1/nodes/n1/proxy"), Some(("n1", "/")));
        assert_eq!(node_proxy_path("/api/v1/nodes/n1/proxyx"), None);
        assert_eq!(node_proxy_path("/api/v1/nodes/n1/status"), None);
    }
}
