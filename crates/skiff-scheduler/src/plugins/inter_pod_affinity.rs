//! InterPodAffinity: required pod affinity and anti-affinity (the incoming pod's, and existing
//! pods' anti-affinity against it), counted per topology domain (`topologyKey` value) once per
//! cycle; preferred terms (both directions) score domains.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};

use crate::framework::{CycleState, MAX_NODE_SCORE, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};
use crate::selector;

pub const NAME: &str = "InterPodAffinity";
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
/// Upstream's hardPodAffinityWeight: existing pods' required affinity counts as this preference.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

pub struct InterPodAffinity;

type Domain = (String, String);

/// Counts per topology domain, keyed by topology key first so a node is checked with one lookup per
/// key it might match, not one per domain in the cluster.
#[derive(Default)]
struct DomainCounts(HashMap<String, HashMap<String, i64>>);

impl DomainCounts {
    fn add(&mut self, (k, v): Domain, n: i64) {
        *self.0.entry(k).or_default().entry(v).or_default() += n;
    }
    fn get(&self, (k, v): &Domain) -> i64 {
        self.0.get(k).and_then(|m| m.get(v)).copied().unwrap_or(0)
    }
    fn is_empty(&self) -> bool {
        self.0.values().all(|m| m.is_empty())
    }
    /// The sum over every key of the count of the node's own domain.
    fn on_node(&self, node: &NodeInfo, positive_only: bool) -> i64 {
        let labels = node.labels();
        self.0
            .iter()
            .filter_map(|(k, m)| labels.get(k).and_then(|v| m.get(v)))
            .map(|n| if positive_only { (*n > 0) as i64 } else { *n })
            .sum()
    }
}

#[derive(Default)]
struct FilterState {
    existing_anti: DomainCounts,
    affinity: DomainCounts,
    anti: DomainCounts,
    /// Preferred-term score per domain, computed with the filter state (both need every pod).
    scores: DomainCounts,
}

fn required_affinity(p: &Pod) -> &[PodAffinityTerm] {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default()
}

fn required_anti(p: &Pod) -> &[PodAffinityTerm] {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default()
}

fn preferred_affinity(p: &Pod) -> &[WeightedPodAffinityTerm] {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default()
}

fn preferred_anti(p: &Pod) -> &[WeightedPodAffinityTerm] {
    p.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref())
        .unwrap_or_default()
}

/// Whether `term`, written in a pod of namespace `owner_ns`, selects `target`. Namespaces: the
/// listed ones, all of them for an empty namespaceSelector, else the owner's own namespace.
/// (A non-empty namespaceSelector needs namespace labels, which this plugin does not watch yet: it
/// then matches only the listed namespaces.)
fn term_selects(term: &PodAffinityTerm, owner_ns: &str, target: &Pod) -> bool {
    let ns = target.metadata.namespace.as_deref().unwrap_or_default();
    let listed = term.namespaces.as_deref().unwrap_or_default();
    let all_ns = term
        .namespace_selector
        .as_ref()
        .is_some_and(|s| s.match_labels.as_ref().is_none_or(|m| m.is_empty()) && s.match_expressions.as_ref().is_none_or(|e| e.is_empty()));
    let ns_ok = all_ns || listed.iter().any(|n| n == ns) || (listed.is_empty() && term.namespace_selector.is_none() && ns == owner_ns);
    let empty = std::collections::BTreeMap::new();
    ns_ok && term.label_selector.as_ref().is_some_and(|s| selector::matches(s, target.metadata.labels.as_ref().unwrap_or(&empty)))
}

fn domain(node: &NodeInfo, key: &str) -> Option<Domain> {
    node.labels().get(key).map(|v| (key.to_string(), v.clone()))
}

fn validate_terms(pod: &Pod) -> Result<(), String> {
    let base = "spec.affinity";
    let all = required_affinity(pod)
        .iter()
        .map(|t| ("podAffinity.requiredDuringSchedulingIgnoredDuringExecution", t))
        .chain(required_anti(pod).iter().map(|t| ("podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution", t)))
        .chain(
            preferred_affinity(pod).iter().map(|w| ("podAffinity.preferredDuringSchedulingIgnoredDuringExecution", &w.pod_affinity_term)),
        )
        .chain(
            preferred_anti(pod).iter().map(|w| ("podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution", &w.pod_affinity_term)),
        );
    for (i, (path, t)) in all.enumerate() {
        if t.topology_key.is_empty() {
            return Err(format!("{base}.{path}.topologyKey: Required value: can not be empty"));
        }
        if let Some(s) = &t.label_selector {
            selector::validate(s, &format!("{base}.{path}[{i}].labelSelector"))?;
        }
    }
    Ok(())
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, nodes: &[NodeInfo]) -> Status {
        if let Err(e) = validate_terms(&pod.pod) {
            return Status::unresolvable(NAME, e);
        }
        let incoming = &pod.pod;
        let own_ns = pod.namespace();
        let (req_aff, req_anti) = (required_affinity(incoming), required_anti(incoming));
        let (pref_aff, pref_anti) = (preferred_affinity(incoming), preferred_anti(incoming));
        let incoming_has_terms = pod.has_pod_affinity;
        let mut st = FilterState::default();
        for node in nodes {
            if !incoming_has_terms && node.pods_with_affinity == 0 {
                continue;
            }
            for existing in &node.pods {
                let ep = &existing.pod;
                let ens = existing.namespace();
                if existing.has_pod_affinity {
                    for t in required_anti(ep) {
                        if term_selects(t, ens, incoming)
                            && let Some(d) = domain(node, &t.topology_key)
                        {
                            st.existing_anti.add(d, 1);
                        }
                    }
                    for (terms, sign) in [(preferred_affinity(ep), 1), (preferred_anti(ep), -1)] {
                        for w in terms {
                            if term_selects(&w.pod_affinity_term, ens, incoming)
                                && let Some(d) = domain(node, &w.pod_affinity_term.topology_key)
                            {
                                st.scores.add(d, sign * w.weight as i64);
                            }
                        }
                    }
                    for t in required_affinity(ep) {
                        if term_selects(t, ens, incoming)
                            && let Some(d) = domain(node, &t.topology_key)
                        {
                            st.scores.add(d, HARD_POD_AFFINITY_WEIGHT);
                        }
                    }
                }
                if !incoming_has_terms {
                    continue;
                }
                if !req_aff.is_empty() && req_aff.iter().all(|t| term_selects(t, own_ns, ep)) {
                    for t in req_aff {
                        if let Some(d) = domain(node, &t.topology_key) {
                            st.affinity.add(d, 1);
                        }
                    }
                }
                for t in req_anti {
                    if term_selects(t, own_ns, ep)
                        && let Some(d) = domain(node, &t.topology_key)
                    {
                        st.anti.add(d, 1);
                    }
                }
                for (terms, sign) in [(pref_aff, 1), (pref_anti, -1)] {
                    for w in terms {
                        if term_selects(&w.pod_affinity_term, own_ns, ep)
                            && let Some(d) = domain(node, &w.pod_affinity_term.topology_key)
                        {
                            st.scores.add(d, sign * w.weight as i64);
                        }
                    }
                }
            }
        }
        state.write(NAME, st);
        Status::success()
    }

    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<FilterState>(NAME) else { return Status::error(NAME, "PreFilter state missing") };
        let req_aff = required_affinity(&pod.pod);
        if !req_aff.is_empty() {
            let satisfied = req_aff.iter().all(|t| domain(node, &t.topology_key).is_some_and(|d| st.affinity.get(&d) > 0));
            // The first pod of a group that selects itself may go anywhere, as upstream.
            let first_of_group = st.affinity.is_empty() && req_aff.iter().all(|t| term_selects(t, pod.namespace(), &pod.pod));
            if !satisfied && !first_of_group {
                return Status::unresolvable(NAME, REASON_AFFINITY);
            }
        }
        if required_anti(&pod.pod).iter().any(|t| domain(node, &t.topology_key).is_some_and(|d| st.anti.get(&d) > 0)) {
            return Status::unschedulable(NAME, REASON_ANTI_AFFINITY);
        }
        if st.existing_anti.on_node(node, true) > 0 {
            return Status::unschedulable(NAME, REASON_EXISTING_ANTI_AFFINITY);
        }
        Status::success()
    }

    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.read::<FilterState>(NAME) else { return 0 };
        st.scores.on_node(node, false)
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        let (min, max) = (scores.iter().copied().min().unwrap_or(0), scores.iter().copied().max().unwrap_or(0));
        for s in scores.iter_mut() {
            *s = if max > min { MAX_NODE_SCORE * (*s - min) / (max - min) } else { 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn zoned(name: &str, zone: &str) -> NodeInfo {
        node(name, json!({"zone": zone, "kubernetes.io/hostname": name}), json!({}), json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))
    }

    fn labelled_pod(name: &str, app: &str, affinity: Value) -> PodInfo {
        let mut p = pod(name, json!({"affinity": affinity}));
        Arc::get_mut(&mut p.pod).unwrap().metadata.labels = Some([("app".to_string(), app.to_string())].into());
        PodInfo::new(p.pod.clone())
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    fn filter_all(pod: &PodInfo, nodes: &[NodeInfo]) -> Vec<Status> {
        let mut state = CycleState::default();
        let pre = InterPodAffinity.pre_filter(&mut state, pod, nodes);
        if !pre.is_success() {
            return vec![pre];
        }
        nodes.iter().map(|n| InterPodAffinity.filter(&state, pod, n)).collect()
    }

    fn ok(v: &[Status]) -> Vec<bool> {
        v.iter().map(Status::is_success).collect()
    }

    #[test]
    fn required_anti_affinity_spreads_one_per_host() {
        let mut nodes = vec![zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "kubernetes.io/hostname")]}});
        nodes[0].add_pod(Arc::new(labelled_pod("w0", "web", anti.clone())));
        let st = filter_all(&labelled_pod("w1", "web", anti.clone()), &nodes);
        assert_eq!(ok(&st), vec![false, true, true]);
        assert_eq!(st[0].reasons, vec![REASON_ANTI_AFFINITY]);
        // A pod without terms is still kept off by the existing pod's anti-affinity.
        let plain = labelled_pod("other", "web", json!({}));
        let st = filter_all(&plain, &nodes);
        assert_eq!(st[0].reasons, vec![REASON_EXISTING_ANTI_AFFINITY]);
        // ...but only if it is selected.
        assert_eq!(ok(&filter_all(&labelled_pod("db", "db", json!({})), &nodes)), vec![true, true, true]);
    }

    #[test]
    fn required_affinity_follows_the_zone_and_lets_the_first_pod_in() {
        let mut nodes = vec![zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        let aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}});
        // No cache pod anywhere and the pod is not one: unresolvable everywhere.
        let st = filter_all(&labelled_pod("app", "app", aff.clone()), &nodes);
        assert_eq!(ok(&st), vec![false, false, false]);
        assert_eq!(st[0].reasons, vec![REASON_AFFINITY]);
        // The first cache pod selecting itself may go anywhere.
        assert_eq!(ok(&filter_all(&labelled_pod("c0", "cache", aff.clone()), &nodes)), vec![true, true, true]);
        nodes[1].add_pod(Arc::new(labelled_pod("c1", "cache", json!({}))));
        assert_eq!(ok(&filter_all(&labelled_pod("app", "app", aff), &nodes)), vec![true, true, false]);
    }

    #[test]
    fn preferred_terms_score_domains_and_bad_selectors_are_reported() {
        let mut nodes = vec![zoned("a", "z1"), zoned("b", "z2")];
        nodes[1].add_pod(Arc::new(labelled_pod("c1", "cache", json!({}))));
        let pref = json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": term("cache", "zone")}]}});
        assert_eq!(run_score(&InterPodAffinity, &labelled_pod("app", "app", pref), &nodes), vec![0, 100]);
        let bad = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Sometimes", "values": ["x"]}]}, "topologyKey": "zone"}]}});
        let st = filter_all(&labelled_pod("bad", "x", bad), &nodes);
        assert!(st[0].reasons[0].contains("not a valid selector operator"), "{st:?}");
    }
}
