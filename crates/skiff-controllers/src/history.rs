//! ControllerRevisions, the history the DaemonSet and StatefulSet controllers keep (upstream's
//! `pkg/controller/history` and the two controllers' snapshot format).
//!
//! A revision's `data` is what `kubectl rollout undo` applies to the owner as a strategic merge
//! patch: `{"spec":{"template":{..., "$patch":"replace"}}}`. kubectl lists an owner's revisions by
//! the owner's selector and keeps those whose controller reference is the owner, so revisions carry
//! the template's labels and a controller reference.

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::deployment::util::equal_ignore_hash;

/// The label naming a pod's (and a DaemonSet revision's) revision: the DaemonSet's template hash,
/// or the StatefulSet revision's name.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The hash of a revision's data, on StatefulSet revisions (upstream's ControllerRevisionHashLabel).
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";

/// The revision data that restores `template`.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({ "spec": { "template": t } })
}

/// The template a revision restores, if its data has the snapshot shape.
pub fn template_of(cr: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = cr.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// The revision records `template`. Upstream compares the data bytes; the same template can come
/// back with zero values spelled out or omitted (protobuf from kubectl, JSON from a rollback's
/// patch), so templates are compared the way the Deployment controller compares them.
pub fn records(cr: &ControllerRevision, template: &PodTemplateSpec) -> bool {
    template_of(cr).is_some_and(|t| equal_ignore_hash(&t, template))
}

/// Two revisions restore the same template (upstream's EqualRevision).
pub fn equal(a: &ControllerRevision, b: &ControllerRevision) -> bool {
    match (template_of(a), template_of(b)) {
        (Some(ta), Some(tb)) => equal_ignore_hash(&ta, &tb),
        _ => a.data == b.data,
    }
}

/// FNV-1 (not 1a), 32 bit: upstream hashes revision data with `fnv.New32`.
pub fn fnv32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h = h.wrapping_mul(0x01000193);
        h ^= *b as u32;
    }
    h
}

/// Upstream's rand.SafeEncodeString: no vowels, no look-alike characters, so a hash never spells
/// a word. (The Deployment controller has the same alphabet for its template hash.)
pub fn safe_encode(s: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHABET[b as usize % ALPHABET.len()] as char).collect()
}

/// Upstream's HashControllerRevision: the data's bytes, then the collision count in decimal.
pub fn data_hash(data: &Value, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    safe_encode(&fnv32(&bytes).to_string())
}

/// `<owner>-<hash>`, the owner's name cut to 223 bytes so the result stays a valid name.
pub fn revision_name(owner: &str, hash: &str) -> String {
    let mut cut = owner.len().min(223);
    while !owner.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &owner[..cut])
}

/// A new revision object (not yet created): the template's labels plus `extra_labels`, the
/// owner's controller reference and annotations (upstream's NewControllerRevision, which takes as
/// many).
#[allow(clippy::too_many_arguments)]
pub fn new_revision(
    name: String,
    namespace: &str,
    template_labels: Option<&BTreeMap<String, String>>,
    extra_labels: &[(&str, &str)],
    annotations: Option<&BTreeMap<String, String>>,
    owner: OwnerReference,
    data: Value,
    revision: i64,
) -> ControllerRevision {
    let mut labels = template_labels.cloned().unwrap_or_default();
    for (k, v) in extra_labels {
        labels.insert(k.to_string(), v.to_string());
    }
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            annotations: annotations.cloned().filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// Oldest first: by revision number, then creation time, then name (upstream's byRevision).
pub fn by_revision(a: &ControllerRevision, b: &ControllerRevision) -> Ordering {
    let t = |r: &ControllerRevision| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    a.revision.cmp(&b.revision).then_with(|| t(a).cmp(&t(b))).then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

pub fn max_revision<'a>(revs: impl IntoIterator<Item = &'a ControllerRevision>) -> i64 {
    revs.into_iter().map(|r| r.revision).max().unwrap_or(0)
}

/// Gives an existing revision a new number (a rollback makes an old revision the newest).
pub async fn set_revision(
    api: &Api<ControllerRevision>,
    cr: &ControllerRevision,
    revision: i64,
) -> Result<ControllerRevision, kube::Error> {
    let patch = json!({ "revision": revision, "metadata": { "resourceVersion": cr.metadata.resource_version } });
    api.patch(&cr.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await
}

/// Deletes a revision if it is still the one we saw; a revision already gone is fine.
pub async fn delete(api: &Api<ControllerRevision>, cr: &ControllerRevision) -> Result<(), kube::Error> {
    let dp =
        DeleteParams { preconditions: Some(Preconditions { uid: cr.metadata.uid.clone(), resource_version: None }), ..Default::default() };
    match api.delete(&cr.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": image}]}}))
            .unwrap()
    }

    fn revision(t: &PodTemplateSpec, n: i64) -> ControllerRevision {
        ControllerRevision { data: Some(RawExtension(template_patch(t))), revision: n, ..Default::default() }
    }

    #[test]
    fn fnv1_matches_the_reference_vectors() {
        // Go's hash/fnv New32 (FNV-1) test vectors.
        assert_eq!(fnv32(b""), 0x811c9dc5);
        assert_eq!(fnv32(b"a"), 0x050c5d7e);
        assert_eq!(fnv32(b"ab"), 0x70772d38);
        assert_eq!(fnv32(b"abc"), 0x439c2f4b);
    }

    #[test]
    fn snapshot_restores_the_template_and_compares_semantically() {
        let t = template("busybox:1");
        let r = revision(&t, 1);
        assert_eq!(r.data.as_ref().unwrap().0["spec"]["template"]["$patch"], "replace");
        assert_eq!(template_of(&r), Some(t.clone()));
        assert!(records(&r, &t));
        assert!(!records(&r, &template("busybox:2")));
        // The same template with zero values spelled out is the same revision.
        let mut zeros = serde_json::to_value(&t).unwrap();
        zeros["spec"]["containers"][0]["stdin"] = json!(false);
        let t2: PodTemplateSpec = serde_json::from_value(zeros).unwrap();
        assert!(equal(&r, &revision(&t2, 2)));
        assert!(!equal(&r, &revision(&template("busybox:2"), 2)));
    }

    #[test]
    fn hashes_are_stable_safe_and_change_with_collisions() {
        let d = template_patch(&template("busybox:1"));
        let h = data_hash(&d, None);
        assert_eq!(h, data_hash(&d, None));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{h}");
        assert_ne!(h, data_hash(&d, Some(1)));
        assert_ne!(data_hash(&d, Some(1)), data_hash(&d, Some(2)));
        assert_eq!(revision_name("web", "abc"), "web-abc");
        assert_eq!(revision_name(&"x".repeat(300), "h").len(), 225);
    }

    #[test]
    fn revisions_sort_by_number_then_name() {
        let t = template("a");
        let mut v = vec![revision(&t, 3), revision(&t, 1), revision(&t, 2)];
        v[0].metadata.name = Some("c".into());
        v.sort_by(by_revision);
        assert_eq!(v.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(max_revision(&v), 3);
    }
}
