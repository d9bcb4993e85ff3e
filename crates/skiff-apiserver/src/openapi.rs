//! `/openapi/v3`: one document per served group-version (`/openapi/v3/api/v1`,
//! `/openapi/v3/apis/apps/v1`, ...) with the operations each resource serves and the type schemas
//! they use in `components.schemas`, and the index listing them with a content hash, as upstream.
//!
//! kubectl reads these for `explain` (the default since 1.27) and to learn that the server
//! validates fields itself (`fieldValidation` on PATCH); without the latter it refuses
//! `create -f` with validation on.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::Api;
use crate::handler::json_value;
use crate::openapi_schema::{Definitions, Dialect, Doc, RenderAll, group_versions};
use crate::registry::Descriptor;
use crate::status::{ApiError, ApiResult};

fn documents(api: &Api) -> &HashMap<String, Doc> {
    api.openapi.v3.get_or_init(|| {
        let defs = Definitions::load();
        group_versions(&api.registry)
            .into_iter()
            .map(|(g, v, path)| {
                let descriptors: Vec<&Descriptor> = api.registry.in_group_version(g, v).map(|d| &**d).collect();
                (path, build(&defs, g, v, &descriptors))
            })
            .collect()
    })
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn index(api: &Arc<Api>) -> ApiResult<Response> {
    let docs = documents(api);
    let mut paths = Map::new();
    for (_, _, p) in group_versions(&api.registry) {
        let hash = &docs[&p].hash;
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}));
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

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn paths(group: &str, version: &str, descriptors: &[&Descriptor]) -> Map<String, Value> {
    let mut paths = Map::new();
    for r in crate::review::in_group_version(group, version) {
        let post = json!({
            "operationId": format!("create{}", r.kind),
            "x-kubernetes-action": "post",
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            "parameters": query_params(&["dryRun", "fieldManager", "fieldValidation", "pretty"]),
            "responses": {"201": {"description": "Created"}},
        });
        paths.insert(format!("/{}/{}", gv_path(group, version), r.plural), json!({"post": post}));
    }
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
    for d in descriptors {
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
    paths
}

#[derive(Serialize)]
struct Components<'s> {
    schemas: RenderAll<'s>,
}

#[derive(Serialize)]
struct Document<'s> {
    components: Components<'s>,
    info: Value,
    openapi: &'static str,
    paths: Map<String, Value>,
}

fn build(defs: &Definitions, group: &str, version: &str, descriptors: &[&Descriptor]) -> Doc {
    let names = defs.closure(defs.roots_for(descriptors.iter().copied(), crate::review::in_group_version(group, version)));
    let doc = Document {
        components: Components { schemas: RenderAll { defs, names: &names, dialect: Dialect::V3 } },
        info: json!({"title": "Kubernetes", "version": crate::KUBERNETES_VERSION}),
        openapi: "3.0.0",
        paths: paths(group, version, descriptors),
    };
    Doc::new(serde_json::to_vec(&doc).expect("documents serialize"))
}

/// `/openapi/v3/{api/v1 | apis/g/v}`. As upstream: a request naming an outdated `hash` is
/// redirected to the current one, and one naming the current hash may be cached for good.
pub fn group_version(api: &Arc<Api>, path: &str, query: Option<&str>, headers: &HeaderMap) -> ApiResult<Response> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !accept.is_empty() && !accept.contains("json") && !accept.contains("*/*") {
        return Err(ApiError::not_acceptable(accept));
    }
    let Some(doc) = documents(api).get(path) else { return Err(ApiError::no_route()) };
    let asked = query.and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "hash").map(|(_, v)| v.into_owned()));
    let mut r = match asked {
        Some(h) if h != doc.hash => {
            let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
            if let Ok(loc) = HeaderValue::from_str(&format!("/openapi/v3/{path}?hash={}", doc.hash)) {
                r.headers_mut().insert(header::LOCATION, loc);
            }
            return Ok(r);
        }
        Some(_) => {
            let mut r = (StatusCode::OK, doc.bytes.clone()).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, immutable"));
            // A year, as upstream: the URL changes whenever the content does.
            let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365);
            let printed = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&expires);
            if let Some(v) = printed.ok().and_then(|s| HeaderValue::from_str(&s).ok()) {
                r.headers_mut().insert(header::EXPIRES, v);
            }
            r
        }
        None => {
            let mut r = (StatusCode::OK, doc.bytes.clone()).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
            r
        }
    };
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", doc.hash)) {
        r.headers_mut().insert(header::ETAG, etag);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    /// Each group-version document is self-contained: every `$ref` resolves inside it, and every
    /// kind it serves has its schema with the group-version-kind kubectl explain looks up.
    #[test]
    fn group_version_documents_are_self_contained() {
        let registry = Registry::builtin();
        let defs = Definitions::load();
        for (g, v, path) in group_versions(&registry) {
            let descriptors: Vec<&Descriptor> = registry.in_group_version(g, v).map(|d| &**d).collect();
            let doc: Value = serde_json::from_slice(&build(&defs, g, v, &descriptors).bytes).unwrap();
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let mut all = Vec::new();
            refs(&doc, &mut all);
            for r in all {
                let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{path}: bad ref {r}"));
                assert!(schemas.contains_key(name), "{path}: {name} referenced but absent");
            }
            for d in &descriptors {
                let found = schemas.values().any(|s| {
                    s["x-kubernetes-group-version-kind"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|k| k["kind"] == d.kind && k["group"] == d.group && k["version"] == d.version))
                });
                assert!(found, "{path}: no schema for {}", d.kind);
            }
            assert!(schemas.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"));
        }
    }
}
