//! Patch documents: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

pub mod order;
pub mod schema;
pub mod strategic;

#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::body::decode_json;
use crate::status::{ApiError, ApiResult};

/// A decoded patch document.
pub enum Patcher {
    Merge(Value),
    Json(json_patch::Patch),
    Strategic(Value),
}

impl Patcher {
    pub fn new(content_type: &str, body: &[u8]) -> ApiResult<Patcher> {
        match content_type {
            "application/merge-patch+json" => Ok(Patcher::Merge(decode_json(body)?)),
            "application/json-patch+json" => {
                let p: json_patch::Patch =
                    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
                Ok(Patcher::Json(p))
            }
            "application/strategic-merge-patch+json" => Ok(Patcher::Strategic(decode_json(body)?)),
            "application/apply-patch+cbor" => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the server does not support {content_type} patches; send application/apply-patch+yaml"),
            )),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    /// Applies the patch to `old` (which carries its apiVersion and kind).
    pub fn apply(&self, old: &Value) -> ApiResult<Value> {
        let mut v = old.clone();
        let current_rv = old.pointer("/metadata/resourceVersion").cloned();
        match self {
            Patcher::Merge(p) => json_patch::merge(&mut v, p),
            Patcher::Json(p) => json_patch::patch(&mut v, p).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
            })?,
            Patcher::Strategic(p) => {
                let api_version = old.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
                let kind = old.get("kind").and_then(Value::as_str).unwrap_or_default();
                let Some(ty) = schema::root(api_version, kind) else {
                    // Upstream's answer for types without strategic merge information (custom
                    // resources): clients such as kubectl fall back to a JSON merge patch.
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                };
                v = strategic::apply(v, p.clone(), ty).map_err(|e| match e.code {
                    422 => ApiError::new(422, "Invalid", e.message),
                    _ => ApiError::bad_request(e.message),
                })?;
            }
        }
        if !v.is_object() {
            return Err(ApiError::bad_request("the patch produced something that is not an object"));
        }
        // A patch pins the resourceVersion only when it changes it: JSON patches may `test` the
        // current one (kubectl's managedFields migration does), which is no precondition.
        if v.pointer("/metadata/resourceVersion") == current_rv.as_ref()
            && let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("resourceVersion");
        }
        Ok(v)
    }
}
