//! Deployment arithmetic shared by the sync paths, as upstream's `deployment/util`: the
//! pod-template-hash, template equality ignoring that hash, revisions, the replica annotations
//! proportional scaling relies on, and maxSurge/maxUnavailable resolution.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Deployment annotations that describe the Deployment itself and are not copied to its
/// ReplicaSets (everything else, e.g. `kubernetes.io/change-cause`, is, so that `kubectl rollout
/// history` can show it per revision).
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// FNV-1a, 32 bit, the hash upstream names pod templates with. Written out because it is five lines
/// and no maintained crate offers the 32-bit variant on its own.
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// The `pod-template-hash` for a template and the Deployment's collisionCount, encoded with
/// upstream's alphabet (no vowels, no ambiguous characters). Upstream hashes Go's debug dump of
/// the struct; we hash canonical JSON, so names differ from upstream's but are just as stable.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&canonical(serde_json::to_value(template).unwrap_or_default())).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHABET[b as usize % ALPHABET.len()] as char).collect()
}

/// serde_json's maps are ordered already (BTreeMap without the preserve_order feature); this keeps
/// the hash independent of that choice.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, canonical(v))).collect::<BTreeMap<_, _>>().into_iter().collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Templates equal once the hash label is ignored (upstream's EqualIgnoreHash).
///
/// Upstream compares Go structs, where an omitted value-type field *is* its zero value. Here the
/// same template can arrive with those zeros spelled out (protobuf bodies from kubectl carry
/// `stdin: false`, `generation: 0`, ...) or omitted (JSON from kubectl's rollback), so zero values
/// are dropped before comparing. Go pointer fields whose zero means something (`runAsUser: 0`,
/// `automountServiceAccountToken: false`, ...) are kept: protobuf only sends those when set.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut v = drop_zero_values(serde_json::to_value(t).unwrap_or_default());
        if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                v["metadata"].as_object_mut().map(|m| m.remove("labels"));
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// Keys under which a zero value is a real choice (Go pointers), left as they are.
const ZERO_IS_MEANINGFUL: &[&str] = &["securityContext", "automountServiceAccountToken", "hostUsers"];

fn drop_zero_values(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter_map(|(k, v)| {
                    let v = if ZERO_IS_MEANINGFUL.contains(&k.as_str()) { v } else { drop_zero_values(v) };
                    let zero = match &v {
                        Value::Null | Value::Bool(false) => true,
                        Value::Number(n) => n.as_f64() == Some(0.0),
                        Value::String(s) => s.is_empty(),
                        Value::Array(a) => a.is_empty(),
                        Value::Object(o) => o.is_empty(),
                        _ => false,
                    };
                    (!zero).then_some((k, v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(drop_zero_values).collect()),
        other => other,
    }
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

/// Available replicas as the ReplicaSet reports them, but never more than its spec asks for: right
/// after we scale a ReplicaSet down its status still counts the pods being removed, and believing
/// that would let a rolling update scale down below maxUnavailable.
pub fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0).min(spec_replicas(rs))
}

pub fn ready(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)
}

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn is_rolling(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") != "Recreate"
}

/// An int or a percentage of `total` (rounded up or down), as upstream's GetScaledValueFromIntOrPercent.
pub fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let v = v.cloned().unwrap_or_else(|| IntOrString::String(default.into()));
    match v {
        IntOrString::Int(i) => i,
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => {
                let num = p * total as i64;
                (if round_up { (num + 99).div_euclid(100) } else { num.div_euclid(100) }) as i32
            }
            None => s.parse().unwrap_or(0),
        },
    }
}

/// (maxSurge, maxUnavailable) for a rolling Deployment; both zero would never progress, so
/// unavailable becomes 1 then, as upstream's ResolveFenceposts.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    let total = replicas(d);
    let ru = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), total, true, "25%");
    let unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), total, false, "25%");
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) { 0 } else { fenceposts(d).0 }
}

pub fn max_unavailable(d: &Deployment) -> i32 {
    let total = replicas(d);
    if !is_rolling(d) || total == 0 {
        return 0;
    }
    fenceposts(d).1.min(total)
}

/// Sets the desired/max replica annotations on `rs`; true when they changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let ann = rs.metadata.annotations.get_or_insert_with(Default::default);
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if ann.get(k) != Some(&v) {
            ann.insert(k.to_string(), v);
            changed = true;
        }
    }
    changed
}

pub fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// Copies the Deployment's own annotations onto the ReplicaSet; true when anything changed.
pub fn copy_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let Some(src) = d.metadata.annotations.as_ref() else { return false };
    let dst = rs.metadata.annotations.get_or_insert_with(Default::default);
    let mut changed = false;
    for (k, v) in src {
        if NOT_COPIED.contains(&k.as_str()) {
            continue;
        }
        if dst.get(k) != Some(v) {
            dst.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed
}

/// Gives the ReplicaSet `new_revision` if it has a lower one, remembering the old number in the
/// revision history (a rollback re-uses an old ReplicaSet under a new revision).
pub fn set_revision(rs: &mut ReplicaSet, new_revision: i64) -> bool {
    let old = revision(rs);
    if old >= new_revision {
        return false;
    }
    let ann = rs.metadata.annotations.get_or_insert_with(Default::default);
    if old > 0 {
        let hist = ann.get(REVISION_HISTORY).cloned().unwrap_or_default();
        let hist = if hist.is_empty() { old.to_string() } else { format!("{hist},{old}") };
        ann.insert(REVISION_HISTORY.into(), hist);
    }
    ann.insert(REVISION.into(), new_revision.to_string());
    true
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use serde_json::json;

    use super::*;

    fn template(labels: Value) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
            .unwrap()
    }

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment { max_surge: Some(surge), max_unavailable: Some(unavailable) }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn hash_is_stable_alphabet_safe_and_changes_with_collisions() {
        let t = template(json!({"app": "x"}));
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{h}");
        assert_ne!(h, template_hash(&t, Some(1)));
        assert_ne!(h, template_hash(&template(json!({"app": "y"})), None));
    }

    #[test]
    fn equality_ignores_only_the_hash_label() {
        let a = template(json!({"app": "x"}));
        let b = template(json!({"app": "x", "pod-template-hash": "abc"}));
        assert!(equal_ignore_hash(&a, &b));
        assert!(!equal_ignore_hash(&a, &template(json!({"app": "x", "v": "2"}))));
        // Zero values spelled out (protobuf) equal omitted ones (JSON), except Go pointers.
        let mut zeros = serde_json::to_value(&a).unwrap();
        zeros["metadata"]["generation"] = json!(0);
        zeros["spec"]["containers"][0]["stdin"] = json!(false);
        zeros["spec"]["hostNetwork"] = json!(false);
        assert!(equal_ignore_hash(&a, &serde_json::from_value(zeros.clone()).unwrap()));
        zeros["spec"]["securityContext"] = json!({"runAsUser": 0});
        assert!(!equal_ignore_hash(&a, &serde_json::from_value(zeros).unwrap()));
    }

    #[test]
    fn surge_rounds_up_unavailable_down_and_fenceposts() {
        let d = deployment(10, IntOrString::String("25%".into()), IntOrString::String("25%".into()));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (3, 2));
        let d = deployment(10, IntOrString::Int(0), IntOrString::Int(0));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 1));
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(5));
        assert_eq!(max_unavailable(&d), 3);
        let d = deployment(10, IntOrString::Int(2), IntOrString::Int(0));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (2, 0));
    }

    #[test]
    fn revisions_move_forward_and_keep_history() {
        let mut rs = ReplicaSet::default();
        assert!(set_revision(&mut rs, 1));
        assert!(!set_revision(&mut rs, 1));
        assert!(set_revision(&mut rs, 3));
        assert_eq!(revision(&rs), 3);
        assert_eq!(rs.metadata.annotations.as_ref().unwrap()[REVISION_HISTORY], "1");
    }
}
