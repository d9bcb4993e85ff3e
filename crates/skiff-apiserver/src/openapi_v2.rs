//! `/openapi/v2` in the protobuf form kubectl 1.27–1.29 fetch (gnostic's `openapi.v2.Document`).
//!
//! kubectl decides from this document whether the server validates fields itself: it looks for a
//! PATCH operation tagged with the object's `x-kubernetes-group-version-kind` that accepts a
//! `fieldValidation` query parameter. Only the message fields that document needs are declared
//! here, with gnostic's field numbers (no crate ships these types). Schemas are not generated yet.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;

use crate::Api;
use crate::registry::Descriptor;

#[derive(Clone, PartialEq, Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
}

#[derive(Clone, PartialEq, Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct Paths {
    #[prost(message, repeated, tag = "2")]
    path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedPathItem {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
struct PathItem {
    #[prost(message, optional, tag = "2")]
    get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    delete: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    patch: Option<Operation>,
}

#[derive(Clone, PartialEq, Message)]
struct Operation {
    #[prost(string, tag = "5")]
    operation_id: String,
    #[prost(message, repeated, tag = "8")]
    parameters: Vec<ParametersItem>,
    #[prost(message, repeated, tag = "13")]
    vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    parameter: Option<Parameter>,
}

#[derive(Clone, PartialEq, Message)]
struct Parameter {
    #[prost(message, optional, tag = "2")]
    non_body_parameter: Option<NonBodyParameter>,
}

#[derive(Clone, PartialEq, Message)]
struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    query_parameter_sub_schema: Option<QueryParameter>,
}

#[derive(Clone, PartialEq, Message)]
struct QueryParameter {
    #[prost(string, tag = "2")]
    r#in: String,
    #[prost(string, tag = "4")]
    name: String,
    #[prost(string, tag = "6")]
    r#type: String,
    #[prost(bool, tag = "20")]
    unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
struct NamedAny {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(string, tag = "2")]
    yaml: String,
}

fn operation(d: &Descriptor, action: &str, params: &[&str]) -> Operation {
    let gvk = format!("group: \"{}\"\nkind: {}\nversion: {}\n", d.group, d.kind, d.version);
    Operation {
        operation_id: format!("{action}{}", d.kind),
        parameters: params
            .iter()
            .map(|p| ParametersItem {
                parameter: Some(Parameter {
                    non_body_parameter: Some(NonBodyParameter {
                        query_parameter_sub_schema: Some(QueryParameter {
                            r#in: "query".into(),
                            name: p.to_string(),
                            r#type: "string".into(),
                            unique_items: true,
                        }),
                    }),
                }),
            })
            .collect(),
        vendor_extension: vec![
            NamedAny { name: "x-kubernetes-action".into(), value: Some(AnyValue { yaml: format!("{action}\n") }) },
            NamedAny { name: "x-kubernetes-group-version-kind".into(), value: Some(AnyValue { yaml: gvk }) },
        ],
    }
}

fn document(api: &Api) -> Document {
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let mut paths = Vec::new();
    for d in api.registry.all() {
        let gv = if d.group.is_empty() { format!("/api/{}", d.version) } else { format!("/apis/{}/{}", d.group, d.version) };
        let base = if d.namespaced { format!("{gv}/namespaces/{{namespace}}/{}", d.plural) } else { format!("{gv}/{}", d.plural) };
        paths.push(NamedPathItem {
            name: base.clone(),
            value: Some(PathItem { get: Some(operation(d, "list", &[])), post: Some(operation(d, "post", &write)), ..Default::default() }),
        });
        paths.push(NamedPathItem {
            name: format!("{base}/{{name}}"),
            value: Some(PathItem {
                get: Some(operation(d, "get", &[])),
                put: Some(operation(d, "put", &write)),
                patch: Some(operation(d, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"])),
                delete: Some(operation(d, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"])),
                ..Default::default()
            }),
        });
    }
    Document {
        swagger: "2.0".into(),
        info: Some(Info { title: "Kubernetes".into(), version: crate::KUBERNETES_VERSION.into() }),
        paths: Some(Paths { path: paths }),
    }
}

// Go clients parse the Content-Type with mime.ParseMediaType, which rejects the `@` of the Accept form.
const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Protobuf when asked for (what kubectl asks for); otherwise 406, since the JSON form with full
/// schemas is not generated yet.
pub fn serve(api: &Arc<Api>, headers: &HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !accept.contains("com.github.proto-openapi.spec.v2") {
        return crate::status::ApiError::not_acceptable(accept).into_response();
    }
    let body = document(api).encode_to_vec();
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    r
}
