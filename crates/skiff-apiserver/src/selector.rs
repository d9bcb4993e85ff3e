//! Label and field selectors: upstream's string syntax, parsed once per request and matched against
//! the labels and field values the watch cache keeps beside each object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
}

fn valid_key(k: &str) -> bool {
    crate::strategy::meta::validate_qualified_name("", k).is_empty()
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Parse upstream's selector syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(k) = term.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = split_set_op(term, " notin ") {
                Req::NotIn(k, parse_set(rest)?)
            } else if let Some((k, rest)) = split_set_op(term, " in ") {
                Req::In(k, parse_set(rest)?)
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!("unable to parse requirement: {term:?}"));
            } else {
                Req::Exists(term.to_string())
            };
            let (key, values): (&str, Vec<&str>) = match &req {
                Req::Eq(k, v) | Req::NotEq(k, v) => (k, vec![v.as_str()]),
                Req::In(k, vs) | Req::NotIn(k, vs) => (k, vs.iter().map(String::as_str).collect()),
                Req::Exists(k) | Req::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
                ));
            }
            for v in values {
                if !crate::strategy::meta::is_valid_label_value(v) {
                    return Err(format!(
                        "unable to parse requirement: invalid label value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
                    ));
                }
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// From a typed `metav1.LabelSelector` (matchLabels + matchExpressions).
    pub fn from_label_selector(sel: &meta::LabelSelector) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Req::Eq(k.clone(), v.clone()));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            reqs.push(match e.operator.as_str() {
                "In" => Req::In(e.key.clone(), values),
                "NotIn" => Req::NotIn(e.key.clone(), values),
                "Exists" => Req::Exists(e.key.clone()),
                "DoesNotExist" => Req::NotExists(e.key.clone()),
                op => return Err(format!("{op:?} is not a valid label selector operator")),
            });
        }
        Ok(LabelSelector { reqs })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Formats a selector as upstream prints it (`a=b,c in (x,y),!d`): a `metav1.LabelSelector`
/// (matchLabels + matchExpressions) or a plain label map (Services, ReplicationControllers).
pub fn format_selector(sel: &serde_json::Value) -> String {
    use serde_json::Value;
    let labels = sel.get("matchLabels").unwrap_or(sel);
    let mut parts: Vec<String> =
        labels.as_object().into_iter().flatten().filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}"))).collect();
    for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let vals: Vec<&str> = e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// Split on commas that are not inside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unable to parse requirement: unbalanced ')' in {s:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unable to parse requirement: unbalanced '(' in {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn split_set_op(term: &str, op: &str) -> Option<(String, String)> {
    let idx = term.find(op)?;
    Some((term[..idx].trim().to_string(), term[idx + op.len()..].trim().to_string()))
}

fn parse_set(rest: String) -> Result<Vec<String>, String> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse requirement: expected '(' values ')', found {rest:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

/// A parsed field selector: `metadata.name=x,spec.nodeName!=y` (only `=`, `==`, `!=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{term}'"));
            };
            reqs.push((k.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// `get(field)` returns the object's value for a supported field ("" when absent, as upstream).
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> &'a str) -> bool {
        self.reqs.iter().all(|(k, eq, v)| (get(k) == v) == *eq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_and_sets() {
        let s = LabelSelector::parse("app=web,tier!=db,env in (prod, staging),!legacy,zone").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod"), ("zone", "a"), ("legacy", "1")])));
        let n = LabelSelector::parse("env notin (prod)").unwrap();
        assert!(n.matches(&labels(&[])));
    }

    #[test]
    fn broken_selectors_are_errors() {
        for bad in ["app in (a", "a b c", "app=(", "-bad=x", "app=bad value"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
    }

    #[test]
    fn selectors_print_like_upstream() {
        let sel = serde_json::json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "old", "operator": "DoesNotExist"}]});
        assert_eq!(format_selector(&sel), "app=web,tier in (a,b),!old");
        assert_eq!(format_selector(&serde_json::json!({"app": "web"})), "app=web");
    }

    #[test]
    fn field_selector() {
        let f = FieldSelector::parse("metadata.name=a,status.phase!=Running").unwrap();
        assert!(f.matches_with(|k| if k == "metadata.name" { "a" } else { "Pending" }));
    }
}
