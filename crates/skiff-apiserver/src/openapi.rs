//! A minimal OpenAPI v3 surface generated from the registry: one document per group-version with
//! the operations each resource serves, their `x-kubernetes-group-version-kind` and query
//! parameters. kubectl reads it to learn that the server validates fields itself
//! (`fieldValidation` on PATCH); without it kubectl refuses `create -f` with validation on.
//! Schemas for the types (for `kubectl explain`) are not generated yet.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::Api;
use crate::handler::json_value;
use crate::registry::Descriptor;
use crate::status::{ApiError, ApiResult};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn index(api: &Arc<Api>) -> ApiResult<Response> {
    let mut paths = Map::new();
    for (g, versions) in api.registry.groups() {
        for v in versions {
            let p = gv_path(g, v);
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}));
        }
    }
    Ok(json_value(StatusCode::OK, &json!({"paths": paths})))
}

fn query_params(names: &[&str]) -> Value {
    Value::Array(names.iter().map(|n| json!({"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": true})).collect())
}

fn operation(d: &Descriptor, action: &str, params: &[&str]) -> Value {
    json!({
        "operationId": format!("{action}{}", d.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": d.group, "version": d.version, "kind": d.kind},
        "parameters": query_params(params),
        "responses": {"200": {"description": "OK"}},
    })
}

/// `/openapi/v3/{api/v1 | apis/g/v}`.
pub fn group_version(api: &Arc<Api>, path: &str) -> ApiResult<Response> {
    let segs: Vec<&str> = path.split('/').collect();
    let (group, version) = match segs.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return Err(ApiError::no_route()),
    };
    let mut paths = Map::new();
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let list = [
        "labelSelector",
        "fieldSelector",
        "limit",
        "continue",
        "resourceVersion",
        "resourceVersionMatch",
        "timeoutSeconds",
        "watch",
        "allowWatchBookmarks",
        "sendInitialEvents",
    ];
    for d in api.registry.in_group_version(group, version) {
        let base = if d.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}", gv_path(group, version), d.plural)
        } else {
            format!("/{}/{}", gv_path(group, version), d.plural)
        };
        paths.insert(base.clone(), json!({"get": operation(d, "list", &list), "post": operation(d, "post", &write), "delete": operation(d, "deletecollection", &list)}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": operation(d, "get", &["pretty"]), "put": operation(d, "put", &write), "patch": operation(d, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"]), "delete": operation(d, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"])}),
        );
    }
    if paths.is_empty() {
        return Err(ApiError::no_route());
    }
    Ok(json_value(
        StatusCode::OK,
        &json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION}, "paths": paths, "components": {"schemas": {}}}),
    ))
}
