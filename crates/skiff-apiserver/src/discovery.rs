//! Discovery documents, all generated from the registry: legacy (`/api`, `/apis`, APIResourceList)
//! and aggregated (`apidiscovery.k8s.io` v2 and v2beta1, which kubectl 1.27+ asks for first).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::Api;
use crate::handler::json_value;
use crate::registry::Descriptor;
use crate::status::{ApiError, ApiResult};

/// Which aggregated discovery version the client accepts, if any (first match in Accept order).
fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for part in accept.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        if params.contains(&"g=apidiscovery.k8s.io") && params.contains(&"as=APIGroupDiscoveryList") {
            if params.contains(&"v=v2") {
                return Some("v2");
            }
            if params.contains(&"v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

fn aggregated_response(version: &str, body: &Value) -> Response {
    let mut r = json_value(StatusCode::OK, body);
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    if let Ok(v) = HeaderValue::from_str(&ct) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// shortNames and categories, present only when non-empty (both discovery forms).
fn add_names(r: &mut Value, d: &Descriptor) {
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
}

fn aggregated_resource(d: &Descriptor) -> Value {
    let subs: Vec<Value> = d
        .subresources
        .iter()
        .map(|s| {
            let (kind, group, version, verbs) = s.discovery(d.kind);
            let (group, version) = if group.is_empty() && version.is_empty() { (d.group, d.version) } else { (group, version) };
            json!({"subresource": s.path(), "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs})
        })
        .collect();
    let mut r = json!({
        "resource": d.plural,
        "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": d.verbs,
    });
    add_names(&mut r, d);
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}

fn all_groups(api: &Api) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups = crate::review::with_review_groups(api.registry.groups());
    groups.push((crate::metrics_api::GROUP, vec![crate::metrics_api::VERSION]));
    groups
}

/// The metrics API's resources in a group-version (none elsewhere): (plural, kind, namespaced).
fn metrics_in(g: &str, v: &str) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str, bool)> {
    let here = g == crate::metrics_api::GROUP && v == crate::metrics_api::VERSION;
    crate::metrics_api::RESOURCES.iter().filter(move |_| here)
}

fn aggregated_review(r: &crate::review::Review) -> Value {
    json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": "Cluster",
        "singularResource": r.singular,
        "verbs": crate::review::Review::VERBS,
    })
}

fn aggregated_list(api: &Api, version: &str, core: bool) -> Value {
    let items: Vec<Value> = all_groups(api)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = api
                        .registry
                        .in_group_version(g, v)
                        .map(|d| aggregated_resource(d))
                        .chain(crate::review::in_group_version(g, v).map(aggregated_review))
                        .chain(metrics_in(g, v).map(|(plural, _, kind, namespaced)| {
                            json!({
                                "resource": plural,
                                "responseKind": {"group": g, "version": v, "kind": kind},
                                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": "",
                                "verbs": crate::metrics_api::VERBS,
                            })
                        }))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let meta = if g.is_empty() { json!({"creationTimestamp": null}) } else { json!({"name": g, "creationTimestamp": null}) };
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

pub fn core_versions(api: &Arc<Api>, headers: &HeaderMap) -> ApiResult<Response> {
    if let Some(v) = aggregated_version(headers) {
        return Ok(aggregated_response(v, &aggregated_list(api, v, true)));
    }
    Ok(json_value(
        StatusCode::OK,
        &json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": api.config.advertise_address}],
        }),
    ))
}

fn group_doc(g: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
    json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
}

pub fn groups(api: &Arc<Api>, headers: &HeaderMap) -> ApiResult<Response> {
    if let Some(v) = aggregated_version(headers) {
        return Ok(aggregated_response(v, &aggregated_list(api, v, false)));
    }
    let groups: Vec<Value> = all_groups(api).into_iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_doc(g, &vs)).collect();
    Ok(json_value(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})))
}

pub fn group(api: &Arc<Api>, g: &str) -> ApiResult<Response> {
    let (_, vs) = all_groups(api).into_iter().find(|(x, _)| *x == g && !x.is_empty()).ok_or_else(ApiError::no_route)?;
    let mut doc = group_doc(g, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(json_value(StatusCode::OK, &doc))
}

pub fn resource_list(api: &Arc<Api>, g: &str, v: &str) -> ApiResult<Response> {
    let mut resources = Vec::new();
    for d in api.registry.in_group_version(g, v) {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": d.verbs,
        });
        add_names(&mut r, d);
        resources.push(r);
        for s in d.subresources {
            let (kind, group, version, verbs) = s.discovery(d.kind);
            let mut sr = json!({"name": format!("{}/{}", d.plural, s.path()), "singularName": "", "namespaced": d.namespaced, "kind": kind, "verbs": verbs});
            if !group.is_empty() || !version.is_empty() {
                sr["group"] = json!(group);
                sr["version"] = json!(version);
            }
            resources.push(sr);
        }
    }
    for r in crate::review::in_group_version(g, v) {
        resources.push(json!({"name": r.plural, "singularName": r.singular, "namespaced": false, "kind": r.kind, "verbs": crate::review::Review::VERBS}));
    }
    for (plural, _, kind, namespaced) in metrics_in(g, v) {
        resources
            .push(json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": crate::metrics_api::VERBS}));
    }
    if resources.is_empty() {
        return Err(ApiError::no_route());
    }
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    Ok(json_value(StatusCode::OK, &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})))
}
