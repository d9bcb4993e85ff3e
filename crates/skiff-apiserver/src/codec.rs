//! Typed admission for untyped requests: every object the API server stores passes through its
//! k8s-openapi type once, so unknown fields are pruned (and reported for `fieldValidation`), wrong
//! types are rejected, and strategies default and validate typed structs instead of JSON.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::status::{ApiError, FieldError};
use crate::strategy::{Env, Strategy};

/// The result of running an object through its type.
pub struct Admitted {
    pub object: Value,
    /// Paths of fields the type does not know, formatted as upstream (`spec.containers[0].foo`).
    pub unknown_fields: Vec<String>,
}

/// Why admission failed: a decode error (400) or field errors (422).
#[derive(Debug)]
pub enum AdmitError {
    Decode(String),
    Invalid(Vec<FieldError>),
    Api(ApiError),
}

/// Type-erased view of a k8s-openapi type plus its strategy.
pub trait Codec: Send + Sync {
    /// Decode, default and validate `obj`; `old` is the stored object on updates.
    fn admit(&self, obj: Value, old: Option<&Value>, env: &Env) -> Result<Admitted, AdmitError>;
    /// Decode only (no defaulting): used for bodies of subresources and for fieldValidation checks.
    fn decode(&self, obj: Value) -> Result<Admitted, AdmitError>;
}

pub struct TypedCodec<K, S> {
    strategy: S,
    _k: PhantomData<fn() -> K>,
}

impl<K, S> TypedCodec<K, S> {
    pub fn new(strategy: S) -> Self {
        TypedCodec { strategy, _k: PhantomData }
    }
}

/// Deserialize `obj` into `K`, collecting the paths serde skipped as unknown.
pub fn decode_typed<K: DeserializeOwned>(obj: Value) -> Result<(K, Vec<String>), String> {
    let mut unknown = Vec::new();
    let typed = serde_ignored::deserialize(obj, |path| unknown.push(format_path(&path))).map_err(|e| e.to_string())?;
    Ok((typed, unknown))
}

fn format_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", format_path(parent)),
        Path::Map { parent, key } => {
            let p = format_path(parent);
            if p.is_empty() { key.clone() } else { format!("{p}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => format_path(parent),
    }
}

impl<K, S> Codec for TypedCodec<K, S>
where
    K: DeserializeOwned + Serialize + Send + Sync + 'static,
    S: Strategy<K>,
{
    fn admit(&self, obj: Value, old: Option<&Value>, env: &Env) -> Result<Admitted, AdmitError> {
        let (mut typed, unknown_fields) = decode_typed::<K>(obj).map_err(AdmitError::Decode)?;
        let old_typed = match old {
            Some(o) => Some(decode_typed::<K>(o.clone()).map_err(|e| AdmitError::Api(ApiError::internal(e)))?.0),
            None => None,
        };
        self.strategy.default(&mut typed, old_typed.as_ref(), env)?;
        let errs = self.strategy.validate(&typed, old_typed.as_ref());
        if !errs.is_empty() {
            return Err(AdmitError::Invalid(errs));
        }
        let object = serde_json::to_value(&typed).map_err(|e| AdmitError::Api(ApiError::internal(e.to_string())))?;
        Ok(Admitted { object, unknown_fields })
    }

    fn decode(&self, obj: Value) -> Result<Admitted, AdmitError> {
        let (typed, unknown_fields) = decode_typed::<K>(obj).map_err(AdmitError::Decode)?;
        let object = serde_json::to_value(&typed).map_err(|e| AdmitError::Api(ApiError::internal(e.to_string())))?;
        Ok(Admitted { object, unknown_fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_reported_with_upstream_paths() {
        let (_, unknown) = decode_typed::<Pod>(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "nope": true}]}
        }))
        .unwrap();
        assert_eq!(unknown, vec!["metadata.bogus".to_string(), "spec.containers[0].nope".to_string()]);
    }

    #[test]
    fn wrong_kind_is_a_decode_error() {
        assert!(decode_typed::<Pod>(json!({"apiVersion": "v1", "kind": "Service"})).is_err());
    }
}
