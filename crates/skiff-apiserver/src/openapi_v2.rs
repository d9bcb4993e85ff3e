//! `/openapi/v2`: the swagger document, in the protobuf form kubectl fetches (gnostic's
//! `openapi.v2.Document`) or as JSON.
//!
//! kubectl uses it for `explain --output=plaintext-openapiv2`, for the patch metadata of
//! client-side `apply`/`diff` (merge keys and strategies, when a definition carries the kind's
//! `x-kubernetes-group-version-kind`), and (1.27–1.29) to decide whether the server validates
//! fields itself: it looks for a PATCH operation tagged with the object's group-version-kind that
//! accepts a `fieldValidation` query parameter. Only the message fields this document uses are
//! declared here, with gnostic's field numbers (no crate ships these types).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::Api;
use crate::openapi_schema::{self, Dialect, Doc, RenderAll};
use crate::registry::{Descriptor, Registry};

#[derive(Clone, PartialEq, Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    definitions: Option<ProtoDefinitions>,
}

#[derive(Clone, PartialEq, Message)]
struct ProtoDefinitions {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedSchema {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Schema {
    #[prost(string, tag = "1")]
    r#ref: String,
    #[prost(string, tag = "2")]
    format: String,
    #[prost(string, tag = "4")]
    description: String,
    #[prost(string, repeated, tag = "19")]
    required: Vec<String>,
    #[prost(message, optional, boxed, tag = "21")]
    additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    items: Option<ItemsItem>,
    #[prost(message, optional, tag = "25")]
    properties: Option<Properties>,
    #[prost(message, repeated, tag = "31")]
    vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
struct AdditionalPropertiesItem {
    #[prost(message, optional, tag = "1")]
    schema: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Properties {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
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

const WRITE_PARAMS: [&str; 4] = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
const PATCH_PARAMS: [&str; 4] = ["dryRun", "fieldManager", "fieldValidation", "force"];
const DELETE_PARAMS: [&str; 3] = ["dryRun", "gracePeriodSeconds", "propagationPolicy"];

fn base_path(d: &Descriptor) -> String {
    let gv = if d.group.is_empty() { format!("/api/{}", d.version) } else { format!("/apis/{}/{}", d.group, d.version) };
    if d.namespaced { format!("{gv}/namespaces/{{namespace}}/{}", d.plural) } else { format!("{gv}/{}", d.plural) }
}

/// Vendor extension values travel as YAML text; JSON is YAML, and keeps quoting exact.
fn yaml(v: &serde_json::Value) -> String {
    format!("{v}\n")
}

fn schema(s: &openapi_schema::Schema<'static>) -> Schema {
    Schema {
        r#ref: s.reference.map(|r| Dialect::V2.reference(r)).unwrap_or_default(),
        format: s.format.unwrap_or_default().to_string(),
        description: s.description.as_deref().unwrap_or_default().to_string(),
        required: s.required.iter().map(|r| r.to_string()).collect(),
        additional_properties: s.additional_properties.as_ref().map(|a| Box::new(AdditionalPropertiesItem { schema: Some(schema(a)) })),
        r#type: s.ty.map(|t| TypeItem { value: vec![t.to_string()] }),
        items: s.items.as_ref().map(|i| ItemsItem { schema: vec![schema(i)] }),
        properties: (!s.properties.is_empty()).then(|| Properties {
            additional_properties: s.properties.iter().map(|(k, v)| NamedSchema { name: k.to_string(), value: Some(schema(v)) }).collect(),
        }),
        vendor_extension: s
            .extensions()
            .into_iter()
            .map(|(name, v)| NamedAny { name: name.into(), value: Some(AnyValue { yaml: yaml(&v) }) })
            .collect(),
    }
}

fn all_definitions(registry: &Registry, defs: &openapi_schema::Definitions) -> BTreeSet<&'static str> {
    defs.closure(defs.roots_for(registry.all().iter().map(|d| &**d), crate::review::REVIEWS))
}

fn document(registry: &Registry) -> Document {
    let mut paths = Vec::new();
    for d in registry.all() {
        let base = base_path(d);
        paths.push(NamedPathItem {
            name: base.clone(),
            value: Some(PathItem {
                get: Some(operation(d, "list", &[])),
                post: Some(operation(d, "post", &WRITE_PARAMS)),
                ..Default::default()
            }),
        });
        paths.push(NamedPathItem {
            name: format!("{base}/{{name}}"),
            value: Some(PathItem {
                get: Some(operation(d, "get", &[])),
                put: Some(operation(d, "put", &WRITE_PARAMS)),
                patch: Some(operation(d, "patch", &PATCH_PARAMS)),
                delete: Some(operation(d, "delete", &DELETE_PARAMS)),
                ..Default::default()
            }),
        });
    }
    let defs = openapi_schema::Definitions::load();
    let definitions = all_definitions(registry, &defs)
        .into_iter()
        .map(|name| NamedSchema { name: name.to_string(), value: Some(schema(&defs.defs[name])) })
        .collect();
    Document {
        swagger: "2.0".into(),
        info: Some(Info { title: "Kubernetes".into(), version: crate::KUBERNETES_VERSION.into() }),
        paths: Some(Paths { path: paths }),
        definitions: Some(ProtoDefinitions { additional_properties: definitions }),
    }
}

fn json_operation(d: &Descriptor, action: &str, params: &[&str]) -> Value {
    json!({
        "operationId": format!("{action}{}", d.kind),
        "parameters": params.iter().map(|p| json!({"in": "query", "name": p, "type": "string", "uniqueItems": true})).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": d.group, "kind": d.kind, "version": d.version},
    })
}

#[derive(Serialize)]
struct JsonDocument<'s> {
    definitions: RenderAll<'s>,
    info: Value,
    paths: Map<String, Value>,
    swagger: &'static str,
}

fn json_document(registry: &Registry) -> Vec<u8> {
    let mut paths = Map::new();
    for d in registry.all() {
        let base = base_path(d);
        paths.insert(base.clone(), json!({"get": json_operation(d, "list", &[]), "post": json_operation(d, "post", &WRITE_PARAMS)}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "delete": json_operation(d, "delete", &DELETE_PARAMS),
                "get": json_operation(d, "get", &[]),
                "patch": json_operation(d, "patch", &PATCH_PARAMS),
                "put": json_operation(d, "put", &WRITE_PARAMS),
            }),
        );
    }
    let defs = openapi_schema::Definitions::load();
    let names = all_definitions(registry, &defs);
    let doc = JsonDocument {
        definitions: RenderAll { defs: &defs, names: &names, dialect: Dialect::V2 },
        info: json!({"title": "Kubernetes", "version": crate::KUBERNETES_VERSION}),
        paths,
        swagger: "2.0",
    };
    serde_json::to_vec(&doc).expect("documents serialize")
}

// Go clients parse the Content-Type with mime.ParseMediaType, which rejects the `@` of the Accept form.
const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Protobuf when asked for (what kubectl asks for), JSON otherwise; both built on first request.
pub fn serve(api: &Arc<Api>, headers: &HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (doc, content_type) = if accept.contains("com.github.proto-openapi.spec.v2") {
        (api.openapi.v2_proto.get_or_init(|| Doc::new(document(&api.registry).encode_to_vec())), PROTOBUF)
    } else if accept.is_empty() || accept.contains("json") || accept.contains("*/*") {
        (api.openapi.v2_json.get_or_init(|| Doc::new(json_document(&api.registry))), "application/json")
    } else {
        return crate::status::ApiError::not_acceptable(accept).into_response();
    };
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim_matches('"') == doc.hash) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut r = (StatusCode::OK, doc.bytes.clone()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", doc.hash)) {
        r.headers_mut().insert(header::ETAG, etag);
    }
    r
}
