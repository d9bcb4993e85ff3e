//! Request bodies and response media types. JSON and YAML bodies decode to JSON values; Kubernetes
//! protobuf (what kubectl 1.33's typed subcommands send) is decoded by [`crate::protobuf`] when
//! available. Responses are always JSON (clients accept it even when they prefer protobuf).

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use crate::status::ApiError;

/// Upstream's limit for a request body (apiserver `MaxRequestBodyBytes`).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The media type of a body without parameters, lower-cased.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Decode a create/update body (JSON, YAML or Kubernetes protobuf) into a JSON value.
pub fn decode_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    match ct.as_str() {
        "" | "application/json" | "*/*" => decode_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body),
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body).map_err(ApiError::bad_request),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding request body as JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!("the body must be a JSON object, got {}", type_name(&v))));
    }
    Ok(v)
}

pub fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("error decoding YAML: body is not UTF-8"))?;
    let v: Value = serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!("the body must be a YAML mapping, got {}", type_name(&v))));
    }
    Ok(v)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the client asked the response to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    /// `as=Table` (meta.k8s.io v1 or v1beta1).
    Table,
}

/// Content negotiation on Accept. JSON answers every JSON-compatible or protobuf-preferring Accept
/// that also allows JSON; a Table is served when asked for first.
pub fn negotiate(headers: &HeaderMap) -> Result<Output, ApiError> {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Output::Json) };
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let mt = params.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<&str> = params.collect();
        let as_ = params.iter().find_map(|p| p.strip_prefix("as="));
        match (mt.as_str(), as_) {
            ("application/json", Some("Table")) => {
                let g = params.iter().find_map(|p| p.strip_prefix("g="));
                if g == Some("meta.k8s.io") {
                    return Ok(Output::Table);
                }
            }
            ("application/json" | "*/*" | "application/*" | "application/yaml" | "", None) => return Ok(Output::Json),
            // PartialObjectMetadata and other `as=` forms: answer as JSON objects (kubectl accepts it).
            ("application/json", Some(_)) => {}
            _ => {}
        }
    }
    if accept.contains("application/json") || accept.contains("*/*") {
        return Ok(Output::Json);
    }
    Err(ApiError::not_acceptable(accept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(ct: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        m.insert(ACCEPT, HeaderValue::from_str(ct).unwrap());
        m
    }

    #[test]
    fn decodes_json_and_yaml() {
        assert!(decode_object(&h("application/json"), b"{\"a\":1}").is_ok());
        let v = decode_object(&h("application/yaml"), b"kind: ConfigMap\ndata:\n  a: b\n").unwrap();
        assert_eq!(v["data"]["a"], "b");
        assert_eq!(decode_object(&h("application/json"), b"{nope").unwrap_err().code, 400);
        assert_eq!(decode_object(&h("application/json"), b"[1]").unwrap_err().code, 400);
        assert_eq!(decode_object(&h("text/plain"), b"x").unwrap_err().code, 415);
    }

    #[test]
    fn negotiates_table() {
        assert_eq!(negotiate(&h("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")).unwrap(), Output::Table);
        assert_eq!(negotiate(&h("application/vnd.kubernetes.protobuf,application/json")).unwrap(), Output::Json);
        assert!(negotiate(&h("application/vnd.kubernetes.protobuf")).is_err());
    }
}
