//! Namespaces: the `kubernetes` finalizer, phase, and the `kubernetes.io/metadata.name` label that
//! upstream maintains so selectors can target namespaces by name.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, NamespaceSpec, NamespaceStatus, Secret};
use serde_json::json;

use super::meta::{NameRule, validate_name};
use super::{Env, Strategy};
use crate::codec::AdmitError;
use crate::status::FieldError;

pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub struct NamespaceStrategy;

impl Strategy<Namespace> for NamespaceStrategy {
    fn default(&self, ns: &mut Namespace, old: Option<&Namespace>, _env: &Env) -> Result<(), AdmitError> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        ns.metadata.labels.get_or_insert_with(Default::default).insert(NAME_LABEL.into(), name);
        // spec.finalizers change only through /finalize (enforced by the handler's write modes).
        if old.is_none() {
            ns.spec = Some(NamespaceSpec { finalizers: Some(vec!["kubernetes".into()]) });
            ns.status = Some(NamespaceStatus { phase: Some("Active".into()), ..Default::default() });
        }
        Ok(())
    }
    fn validate(&self, ns: &Namespace, _old: Option<&Namespace>) -> Vec<FieldError> {
        validate_name("metadata.name", ns.metadata.name.as_deref().unwrap_or_default(), NameRule::Label)
    }
}

pub struct SecretStrategy;

impl Strategy<Secret> for SecretStrategy {
    fn default(&self, s: &mut Secret, _old: Option<&Secret>, _env: &Env) -> Result<(), AdmitError> {
        s.type_.get_or_insert_with(|| "Opaque".into());
        // stringData is a write-only convenience: upstream folds it into data and never stores it.
        if let Some(sd) = s.string_data.take() {
            let data = s.data.get_or_insert_with(Default::default);
            for (k, v) in sd {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
        Ok(())
    }
    fn validate(&self, s: &Secret, old: Option<&Secret>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        for key in s.data.iter().flat_map(|d| d.keys()).chain(s.string_data.iter().flat_map(|d| d.keys())) {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                errs.push(FieldError::invalid(format!("data[{key}]"), &json!(key), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
        }
        if let Some(old) = old
            && old.type_ != s.type_
        {
            errs.push(FieldError::invalid("type", &json!(s.type_), "field is immutable"));
        }
        errs
    }
}
