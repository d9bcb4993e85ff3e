//! NodeAffinity: `spec.nodeSelector` and required node affinity filter; preferred terms score.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

use crate::framework::{CycleState, Plugin, Status, default_normalize};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeAffinity";
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

pub struct NodeAffinity;

/// Checks a requirement's operator and values up front, so a malformed pod gets one clear message
/// instead of silently matching nothing.
pub fn validate_requirement(r: &NodeSelectorRequirement, path: &str) -> Result<(), String> {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => {
            Err(format!("{path}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"))
        }
        "In" | "NotIn" => Ok(()),
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            Err(format!("{path}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
        }
        "Exists" | "DoesNotExist" => Ok(()),
        "Gt" | "Lt" if values.len() != 1 || values[0].parse::<i64>().is_err() => {
            Err(format!("{path}.values: Invalid value: {values:?}: must be specified single value when `operator` is 'Lt' or 'Gt'"))
        }
        "Gt" | "Lt" => Ok(()),
        other => Err(format!("{path}.operator: Invalid value: {other:?}: not a valid selector operator")),
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// A term matches when all its expressions and fields match; an empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)))
}

fn required_terms(pod: &PodInfo) -> Option<&[NodeSelectorTerm]> {
    let a = pod.pod.spec.as_ref()?.affinity.as_ref()?.node_affinity.as_ref()?;
    Some(&a.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms)
}

/// The pod's nodeSelector and required node affinity hold on `node` (shared with PodTopologySpread's
/// nodeAffinityPolicy: Honor).
pub fn required_match(pod: &PodInfo, node: &NodeInfo) -> bool {
    let labels = node.labels();
    let selector_ok =
        pod.pod.spec.as_ref().and_then(|s| s.node_selector.as_ref()).is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    selector_ok && required_terms(pod).is_none_or(|terms| terms.iter().any(|t| term_matches(t, labels, &node.name)))
}

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, _: &mut CycleState, pod: &PodInfo, _: &[NodeInfo]) -> Status {
        let base = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
        for (i, term) in required_terms(pod).unwrap_or_default().iter().enumerate() {
            for (j, r) in term.match_expressions.iter().flatten().enumerate() {
                if let Err(e) = validate_requirement(r, &format!("{base}[{i}].matchExpressions[{j}]")) {
                    return Status::unresolvable(NAME, e);
                }
            }
        }
        let preferred = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default();
        for (i, p) in preferred.iter().enumerate() {
            for (j, r) in p.preference.match_expressions.iter().flatten().enumerate() {
                let path = format!(
                    "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference.matchExpressions[{j}]"
                );
                if let Err(e) = validate_requirement(r, &path) {
                    return Status::unresolvable(NAME, e);
                }
            }
        }
        Status::success()
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if required_match(pod, node) { Status::success() } else { Status::unresolvable(NAME, REASON) }
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let preferred = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default();
        preferred.iter().filter(|p| term_matches(&p.preference, node.labels(), &node.name)).map(|p| p.weight as i64).sum()
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn labelled(name: &str, labels: serde_json::Value) -> NodeInfo {
        node(name, labels, json!({}), json!({"cpu": "1", "memory": "1Gi", "pods": "10"}))
    }

    fn required(exprs: serde_json::Value) -> serde_json::Value {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}})
    }

    #[test]
    fn filter_table() {
        let n = labelled("n1", json!({"zone": "a", "gen": "5", "disk": "ssd"}));
        let cases = [
            (json!({"nodeSelector": {"zone": "a"}}), true),
            (json!({"nodeSelector": {"zone": "b"}}), false),
            (required(json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])), true),
            (required(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])), false),
            (required(json!([{"key": "disk", "operator": "Exists"}])), true),
            (required(json!([{"key": "gpu", "operator": "DoesNotExist"}])), true),
            (required(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])), true),
            (required(json!([{"key": "gen", "operator": "Lt", "values": ["4"]}])), false),
            (
                required(json!([{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "disk", "operator": "In", "values": ["hdd"]}])),
                false,
            ),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
                true,
            ),
            (json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}}), false),
        ];
        for (spec, ok) in cases {
            let st = run_filter(&NodeAffinity, &pod("p", spec.clone()), &n);
            assert_eq!(st.is_success(), ok, "{spec}");
            if !ok {
                assert_eq!(st.reasons, vec![REASON.to_string()]);
            }
        }
    }

    #[test]
    fn invalid_expressions_are_reported_not_matched() {
        let n = labelled("n1", json!({"zone": "a"}));
        let st = run_filter(&NodeAffinity, &pod("p", required(json!([{"key": "zone", "operator": "Near", "values": ["a"]}]))), &n);
        assert!(st.reasons[0].contains("not a valid selector operator"), "{st:?}");
        let st = run_filter(&NodeAffinity, &pod("p", required(json!([{"key": "gen", "operator": "Gt", "values": ["x"]}]))), &n);
        assert!(st.reasons[0].contains("single value"), "{st:?}");
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let nodes = [labelled("a", json!({"zone": "a"})), labelled("b", json!({"zone": "b"})), labelled("c", json!({}))];
        let spec = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            {"weight": 20, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}]}}});
        assert_eq!(run_score(&NodeAffinity, &pod("p", spec), &nodes), vec![100, 25, 0]);
    }
}
