//! `metav1.Status` errors with upstream's reasons, codes and message shapes, so kubectl prints
//! exactly what a Kubernetes user expects (`Error from server (NotFound): pods "x" not found`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One `StatusCause`: a field error inside an Invalid (422) or BadRequest (400) Status.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// e.g. `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueDuplicate`.
    pub reason: &'static str,
    pub field: String,
    /// The text after the field path, e.g. `Invalid value: "x": must be ...`.
    pub message: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {}", render_value(value), detail.as_ref()),
        }
    }
    pub fn required(field: impl Into<String>, detail: impl AsRef<str>) -> Self {
        let detail = detail.as_ref();
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message: if detail.is_empty() { "Required value".into() } else { format!("Required value: {detail}") },
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        let list = allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: {}: supported values: {list}", render_value(value)),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        FieldError { reason: "FieldValueDuplicate", field: field.into(), message: format!("Duplicate value: {}", render_value(value)) }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl AsRef<str>) -> Self {
        FieldError { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {}", detail.as_ref()) }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError { reason: "FieldValueTooLong", field: field.into(), message: format!("Too long: may not be more than {max} bytes") }
    }
    /// Upstream's `field.Error.Error()`: `<field>: <message>`.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// Go's `%#v`-like rendering upstream uses in "Invalid value" messages: strings quoted, numbers bare.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// An API error that renders as a `metav1.Status` body.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Extra response headers, e.g. Retry-After.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None, retry_after: None }
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(group, resource)))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }
    /// A path that names no resource at all (upstream answers 404 with a generic Status).
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(group, resource)))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": {why}", qualified(group, resource)))
            .with_details(json!({"name": name, "group": group, "kind": resource}))
    }
    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(group, resource, name, "the object has been modified; please apply your changes to the latest version and try again")
    }
    /// 422 with one cause per field error, message as upstream's `NewInvalid`.
    pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let list = if errs.len() == 1 {
            errs[0].render()
        } else {
            format!("[{}]", errs.iter().map(FieldError::render).collect::<Vec<_>>().join(", "))
        };
        let causes: Vec<Value> = errs.iter().map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field})).collect();
        // Upstream qualifies the kind with its group only for non-core groups: `Deployment.apps "x" is invalid`.
        let qualified_kind = qualified(group, kind);
        Self::new(422, "Invalid", format!("{qualified_kind} \"{name}\" is invalid: {list}"))
            .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn method_not_allowed(verb: &str) -> Self {
        Self::new(405, "MethodNotAllowed", format!("the server does not allow this method on the requested resource ({verb})"))
            .with_details(json!({}))
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf, application/json-patch+json, application/merge-patch+json (got {content_type:?})"
            ),
        )
    }
    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io (got {accept:?})"
            ),
        )
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn too_old_resource_version(requested: i64, oldest: i64) -> Self {
        Self::gone(format!("too old resource version: {requested} ({oldest})"))
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let q = qualified(group, resource);
        let msg = if name.is_empty() { format!("{q} is forbidden: {why}") } else { format!("{q} \"{name}\" is forbidden: {why}") };
        Self::new(403, "Forbidden", msg).with_details(json!({"name": name, "group": group, "kind": resource}))
    }
    pub fn request_entity_too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {limit}"))
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") }
}

impl From<skiff_store::StoreError> for ApiError {
    fn from(e: skiff_store::StoreError) -> Self {
        match e {
            skiff_store::StoreError::Compacted { compact_revision } => {
                ApiError::gone(format!("The resourceVersion for the provided list is too old (compacted at {compact_revision})."))
            }
            skiff_store::StoreError::FutureRevision => ApiError::timeout("Too large resource version").with_retry(1),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl ApiError {
    pub fn with_retry(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut resp = (StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_matches_upstream_shape() {
        let e = ApiError::invalid("", "ConfigMap", "Bad_Name", &[FieldError::invalid("metadata.name", &json!("Bad_Name"), "x")]);
        assert_eq!(e.message, "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": x");
        let e = ApiError::invalid(
            "apps",
            "Deployment",
            "d",
            &[FieldError::required("spec.selector", ""), FieldError::required("spec.template", "")],
        );
        assert_eq!(e.message, "Deployment.apps \"d\" is invalid: [spec.selector: Required value, spec.template: Required value]");
        assert_eq!(e.to_status()["details"]["causes"][1]["field"], "spec.template");
    }

    #[test]
    fn not_found_is_group_qualified() {
        assert_eq!(ApiError::not_found("apps", "deployments", "x").message, "deployments.apps \"x\" not found");
        assert_eq!(ApiError::not_found("", "pods", "x").message, "pods \"x\" not found");
    }
}
