//! Validation rules every object shares: names, labels, annotations (upstream's
//! `ValidateObjectMeta` and the `apimachinery/pkg/util/validation` helpers).

use serde_json::{Value, json};

use crate::status::FieldError;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const TOTAL_ANNOTATION_BYTES: usize = 256 * 1024;

pub const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Which name rule a resource's `metadata.name` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// RBAC and a few others only forbid path segments.
    PathSegment,
}

pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= DNS1123_LABEL_MAX && label_shape(s)
}

fn label_shape(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX && subdomain_shape(s)
}

/// The regex part of the subdomain rule, without the length limit (upstream reports them apart).
fn subdomain_shape(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Errors for `name` under `rule` at `field`.
pub fn validate_name(field: &str, name: &str, rule: NameRule) -> Vec<FieldError> {
    let v = json!(name);
    let mut errs = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > DNS1123_SUBDOMAIN_MAX {
                errs.push(FieldError::invalid(field, &v, format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters")));
            }
            if !subdomain_shape(name) {
                errs.push(FieldError::invalid(field, &v, DNS1123_SUBDOMAIN_MSG));
            }
        }
        NameRule::Label => {
            if name.len() > DNS1123_LABEL_MAX {
                errs.push(FieldError::invalid(field, &v, format!("must be no more than {DNS1123_LABEL_MAX} characters")));
            }
            if !label_shape(name) {
                errs.push(FieldError::invalid(field, &v, DNS1123_LABEL_MSG));
            }
        }
        NameRule::Dns1035 => {
            if name.len() > DNS1123_LABEL_MAX {
                errs.push(FieldError::invalid(field, &v, format!("must be no more than {DNS1123_LABEL_MAX} characters")));
            }
            if !(label_shape(name) && name.as_bytes()[0].is_ascii_lowercase()) {
                errs.push(FieldError::invalid(field, &v, DNS1035_LABEL_MSG));
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                errs.push(FieldError::invalid(field, &v, format!("may not be '{name}'")));
            }
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    errs.push(FieldError::invalid(field, &v, format!("may not contain '{bad}'")));
                }
            }
        }
    }
    errs
}

/// A qualified name as labels and annotation keys use: `[prefix/]name`.
pub fn validate_qualified_name(field: &str, key: &str) -> Vec<FieldError> {
    let v = json!(key);
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errs = Vec::new();
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        errs.push(FieldError::invalid(field, &v, format!("prefix part {DNS1123_SUBDOMAIN_MSG}")));
    }
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !name_ok {
        errs.push(FieldError::invalid(field, &v, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"));
    }
    errs
}

pub fn is_valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// Labels and annotations of any object (`metadata` as JSON).
pub fn validate_labels_annotations(meta: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            errs.extend(validate_qualified_name("metadata.labels", k));
            let s = v.as_str().unwrap_or_default();
            if !is_valid_label_value(s) {
                errs.push(FieldError::invalid("metadata.labels", v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
            }
        }
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            errs.extend(validate_qualified_name("metadata.annotations", &k.to_lowercase()));
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > TOTAL_ANNOTATION_BYTES {
            errs.push(FieldError::too_long("metadata.annotations", TOTAL_ANNOTATION_BYTES));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_dns1035_label("abc-1"));
        assert!(!is_dns1035_label("1abc"));
        assert_eq!(validate_name("metadata.name", &"a".repeat(254), NameRule::Subdomain).len(), 1);
    }

    #[test]
    fn label_keys_and_values() {
        assert!(validate_qualified_name("f", "app.kubernetes.io/name").is_empty());
        assert!(!validate_qualified_name("f", "-bad").is_empty());
        assert!(is_valid_label_value(""));
        assert!(!is_valid_label_value("bad value"));
    }
}
