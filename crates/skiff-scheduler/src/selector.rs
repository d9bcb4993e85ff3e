//! metav1.LabelSelector matching (matchLabels AND matchExpressions), with validation so a bad
//! operator is an error the user sees, not a selector that silently matches nothing.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Checks operators and values; `path` names the selector in the error.
pub fn validate(sel: &LabelSelector, path: &str) -> Result<(), String> {
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let values = r.values.as_deref().unwrap_or_default();
        let p = format!("{path}.matchExpressions[{i}]");
        match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("{p}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("{p}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(format!("{p}.operator: Invalid value: {other:?}: not a valid selector operator")),
        }
    }
    Ok(())
}

/// Whether `labels` satisfy `sel`. An empty selector matches everything (as upstream's
/// LabelSelectorAsSelector); callers treat a missing selector as matching nothing.
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    sel.match_expressions.iter().flatten().all(|r| {
        let v = labels.get(&r.key);
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => !v.is_some_and(|v| values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table() {
        let labels: BTreeMap<String, String> =
            [("app", "web"), ("tier", "front")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cases = [
            (json!({}), true),
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}), true),
            (json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}), false),
            (json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}), true),
            (json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "x", "operator": "Exists"}]}), false),
        ];
        for (sel, want) in cases {
            let s: LabelSelector = serde_json::from_value(sel.clone()).unwrap();
            assert_eq!(matches(&s, &labels), want, "{sel}");
            assert!(validate(&s, "s").is_ok());
        }
        let bad: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["b"]}]})).unwrap();
        assert!(validate(&bad, "spec.x").unwrap_err().contains("spec.x.matchExpressions[0].operator"));
    }
}
