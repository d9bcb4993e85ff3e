//! `metrics.k8s.io/v1beta1` (metrics-server's API, built in): NodeMetrics and PodMetrics read on
//! request from each node's kubelet `/stats/summary`, so `kubectl top nodes|pods` work. Nothing is
//! stored; like the review resources these are listed in discovery without a Descriptor.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::Api;
use crate::handler::{Params, json_value};
use crate::selector::LabelSelector;
use crate::status::{ApiError, ApiResult};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const VERBS: &[&str] = &["get", "list"];

/// (plural, singular, kind, namespaced)
pub const RESOURCES: &[(&str, &str, &str, bool)] = &[("nodes", "", "NodeMetrics", false), ("pods", "", "PodMetrics", true)];

fn nanocores(n: u64) -> String {
    format!("{n}n")
}

fn kibibytes(b: u64) -> String {
    format!("{}Ki", b / 1024)
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

fn objects(api: &Api, prefix: &str) -> Vec<Value> {
    let Some(desc) = api.registry.for_key(prefix) else { return Vec::new() };
    api.cache.cache(desc).snapshot(prefix, api.cache.observed()).0.iter().map(|o| o.value()).collect()
}

/// Every node's summary (nodes whose kubelet does not answer in 5 s are left out, as
/// metrics-server leaves out nodes it cannot scrape).
async fn summaries(api: &Api, only: Option<&str>) -> Vec<(Value, Value)> {
    let nodes: Vec<Value> = objects(api, "/registry/minions/")
        .into_iter()
        .filter(|n| only.is_none_or(|o| n.pointer("/metadata/name").and_then(Value::as_str) == Some(o)))
        .collect();
    let calls = nodes.into_iter().map(|n| async move {
        let ep = crate::kubelet::node_endpoint(&n)?;
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::kubelet::kubelet_get(api, &format!("{}/stats/summary", ep.url())),
        )
        .await
        .ok()?
        .ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((n, serde_json::from_slice::<Value>(&body).ok()?))
    });
    futures::future::join_all(calls).await.into_iter().flatten().collect()
}

fn meta(obj: &Value, at: &Value) -> Value {
    let mut m = json!({"name": obj.pointer("/metadata/name"), "creationTimestamp": at});
    if let Some(ns) = obj.pointer("/metadata/namespace") {
        m["namespace"] = ns.clone();
    }
    if let Some(l) = obj.pointer("/metadata/labels") {
        m["labels"] = l.clone();
    }
    m
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

fn selector(params: &Params) -> ApiResult<LabelSelector> {
    LabelSelector::parse(params.get("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default()
}

/// GET under /apis/metrics.k8s.io/v1beta1/.
pub async fn serve(api: &Arc<Api>, rest: &[&str], params: &Params) -> ApiResult<Response> {
    let sel = selector(params)?;
    match rest {
        ["nodes"] | ["nodes", _] => {
            let name = rest.get(1).copied();
            let mut items = Vec::new();
            for (node, s) in summaries(api, name).await {
                if !sel.matches(&labels_of(&node)) {
                    continue;
                }
                let at = s.pointer("/node/cpu/time").cloned().unwrap_or(Value::Null);
                items.push(json!({
                    "metadata": meta(&node, &at),
                    "timestamp": at,
                    "window": "10s",
                    "usage": {"cpu": nanocores(u(&s, "/node/cpu/usageNanoCores")), "memory": kibibytes(u(&s, "/node/memory/workingSetBytes"))},
                }));
            }
            let mut out = match name {
                Some(n) => items.pop().ok_or_else(|| ApiError::not_found(GROUP, "nodes", n))?,
                None => list("NodeMetrics", items),
            };
            if name.is_some() {
                out["kind"] = json!("NodeMetrics");
                out["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            }
            Ok(json_value(StatusCode::OK, &out))
        }
        ["pods"] | ["namespaces", _, "pods"] | ["namespaces", _, "pods", _] => {
            let ns = if rest[0] == "namespaces" { Some(rest[1]) } else { None };
            let name = rest.get(3).copied();
            let pods: BTreeMap<String, Value> = objects(api, "/registry/pods/")
                .into_iter()
                .filter_map(|p| Some((p.pointer("/metadata/uid")?.as_str()?.to_string(), p)))
                .collect();
            let mut items = Vec::new();
            for (_, s) in summaries(api, None).await {
                for ps in s.get("pods").and_then(Value::as_array).into_iter().flatten() {
                    let uid = ps.pointer("/podRef/uid").and_then(Value::as_str).unwrap_or_default();
                    let Some(pod) = pods.get(uid) else { continue };
                    let pns = pod.pointer("/metadata/namespace").and_then(Value::as_str);
                    let pname = pod.pointer("/metadata/name").and_then(Value::as_str);
                    if ns.is_some_and(|n| Some(n) != pns) || name.is_some_and(|n| Some(n) != pname) || !sel.matches(&labels_of(pod)) {
                        continue;
                    }
                    let at = ps.pointer("/cpu/time").cloned().unwrap_or(Value::Null);
                    let containers: Vec<Value> = ps
                        .get("containers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|c| json!({"name": c.get("name"), "usage": {"cpu": nanocores(u(c, "/cpu/usageNanoCores")), "memory": kibibytes(u(c, "/memory/workingSetBytes"))}}))
                        .collect();
                    items.push(json!({"metadata": meta(pod, &at), "timestamp": at, "window": "10s", "containers": containers}));
                }
            }
            let out = match name {
                Some(n) => {
                    let mut one = items.pop().ok_or_else(|| ApiError::not_found(GROUP, "pods", n))?;
                    one["kind"] = json!("PodMetrics");
                    one["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
                    one
                }
                None => list("PodMetrics", items),
            };
            Ok(json_value(StatusCode::OK, &out))
        }
        _ => Err(ApiError::no_route()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_what_kubectl_top_parses() {
        assert_eq!(nanocores(1_500_000), "1500000n");
        assert_eq!(kibibytes(10 * 1024 * 1024 + 5), "10240Ki");
    }
}
