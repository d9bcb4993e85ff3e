//! TaintToleration: NoSchedule/NoExecute taints the pod does not tolerate rule the node out;
//! PreferNoSchedule taints it does not tolerate lower the node's score.

use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::framework::{CycleState, MAX_NODE_SCORE, Plugin, Status, default_normalize};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "TaintToleration";

pub struct TaintToleration;

/// Upstream's ToleratesTaint: effect and key must match when set; Exists matches any value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty())
        && k != taint.key
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
        _ => false,
    }
}

fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default()
}

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let tols = tolerations(pod);
        let untolerated = node
            .taints()
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .find(|taint| !tols.iter().any(|t| tolerates(t, taint)));
        match untolerated {
            None => Status::success(),
            Some(t) => Status::unresolvable(
                NAME,
                format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or_default()),
            ),
        }
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        // Only tolerations that can apply to PreferNoSchedule count, as upstream.
        let soft = |t: &&Toleration| t.effect.as_deref().is_none_or(|e| e.is_empty() || e == "PreferNoSchedule");
        node.taints()
            .iter()
            .filter(|taint| taint.effect == "PreferNoSchedule" && !tolerations(pod).iter().filter(soft).any(|t| tolerates(t, taint)))
            .count() as i64
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        default_normalize(scores, true);
        debug_assert!(scores.iter().all(|s| (0..=MAX_NODE_SCORE).contains(s)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint { key: key.into(), value: Some(value.into()), effect: effect.into(), ..Default::default() }
    }

    #[test]
    fn toleration_matching() {
        let t = taint("k", "v", "NoSchedule");
        let cases = [
            (json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}), true),
            (json!({"key": "k", "value": "v"}), true),
            (json!({"key": "k", "operator": "Exists"}), true),
            (json!({"operator": "Exists"}), true),
            (json!({"key": "k", "value": "other"}), false),
            (json!({"key": "k", "operator": "Exists", "effect": "NoExecute"}), false),
            (json!({"key": "other", "operator": "Exists"}), false),
        ];
        for (tol, want) in cases {
            let tol: Toleration = serde_json::from_value(tol.clone()).unwrap();
            assert_eq!(tolerates(&tol, &t), want, "{tol:?}");
        }
    }

    #[test]
    fn filter_reports_the_taint_as_upstream() {
        let alloc = json!({"cpu": "1", "memory": "1Gi", "pods": "10"});
        let n = node("a", json!({}), json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}), alloc);
        let st = run_filter(&TaintToleration, &pod("p", json!({})), &n);
        assert_eq!(st.reasons, vec!["node(s) had untolerated taint {dedicated: gpu}".to_string()]);
        let tolerant = pod("q", json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}));
        assert!(run_filter(&TaintToleration, &tolerant, &n).is_success());
    }

    #[test]
    fn prefer_no_schedule_lowers_the_score() {
        let alloc = json!({"cpu": "1", "memory": "1Gi", "pods": "10"});
        let clean = node("a", json!({}), json!({}), alloc.clone());
        let soft = node("b", json!({}), json!({"taints": [{"key": "k", "value": "v", "effect": "PreferNoSchedule"}]}), alloc);
        assert_eq!(run_score(&TaintToleration, &pod("p", json!({})), &[clean, soft]), vec![100, 0]);
    }
}
