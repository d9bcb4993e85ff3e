//! Per-field patch metadata of the built-in types: which message a field holds, and its
//! `patchStrategy` / `patchMergeKey` / `listType` markers. Read from the generated wire schema
//! (`protobuf/schema.json`, whose `fieldmeta` section carries the markers upstream's Go struct
//! tags declare), so strategic merge patch and (later) server-side apply share one source.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

/// What a JSON field holds, as far as merging is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A struct (k8s-pb message name).
    Msg(&'static str),
    /// A `map[string]T`; values are messages of this type when known.
    MapOf(Option<&'static str>),
    /// No type information (scalars, RawExtension, or a type outside the schema).
    Unknown,
}

#[derive(Debug, Clone, Default)]
pub struct FieldMeta {
    /// The type of the value, or of each element for lists.
    pub ty: Option<Ty>,
    pub strategy: Strategy,
    pub merge_key: Option<&'static str>,
    /// How server-side apply treats the list (`+listType`, `+listMapKey`).
    pub list: ListKind,
}

/// `+listType`: lists without one are atomic, as in upstream's OpenAPI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ListKind {
    #[default]
    Atomic,
    Set,
    Map(Vec<&'static str>),
}

/// `+patchStrategy`: `merge`, `replace`, `retainKeys`, or `merge,retainKeys`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strategy {
    pub merge: bool,
    pub replace: bool,
    pub retain_keys: bool,
}

impl Strategy {
    fn parse(s: &str) -> Strategy {
        let mut out = Strategy::default();
        for part in s.split(',') {
            match part.trim() {
                "merge" => out.merge = true,
                "replace" => out.replace = true,
                "retainKeys" => out.retain_keys = true,
                _ => {}
            }
        }
        out
    }
}

type Fields = HashMap<&'static str, FieldMeta>;

struct Schema {
    messages: HashMap<&'static str, Fields>,
}

fn leak(s: &str) -> &'static str {
    // The schema is loaded once per process and lives as long as it; interning the names keeps
    // every lookup allocation-free.
    Box::leak(s.to_string().into_boxed_str())
}

/// Messages whose JSON form is a scalar: never merged field by field.
const SCALAR_MESSAGES: &[&str] = &[
    "apimachinery.pkg.api.resource.Quantity",
    "apimachinery.pkg.util.intstr.IntOrString",
    "apimachinery.pkg.apis.meta.v1.Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration",
    "apimachinery.pkg.runtime.RawExtension",
    "apimachinery.pkg.apis.meta.v1.FieldsV1",
];

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let raw: Value = serde_json::from_str(crate::protobuf::SCHEMA_JSON).expect("embedded schema is valid JSON");
        let msg_ty = |name: &str| -> Ty { if SCALAR_MESSAGES.contains(&name) { Ty::Unknown } else { Ty::Msg(leak(name)) } };
        // Direct fields first; embedded (inline) structs are flattened afterwards.
        let mut direct: HashMap<&'static str, Fields> = HashMap::new();
        let mut inlines: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
        for (msg, fields) in raw["messages"].as_object().into_iter().flatten() {
            let msg = leak(msg);
            let meta = raw["fieldmeta"].get(msg);
            let mut out = Fields::new();
            for f in fields.as_array().into_iter().flatten() {
                let name = f[1].as_str().unwrap_or_default();
                let kind = f[2].as_str().unwrap_or_default();
                let ty_name = f.get(3).and_then(Value::as_str).unwrap_or_default();
                let ty = match kind.trim_end_matches("[]") {
                    "message" => Some(msg_ty(ty_name)),
                    "inline" => {
                        inlines.entry(msg).or_default().push(leak(ty_name));
                        continue;
                    }
                    "map:message" => Some(Ty::MapOf(match msg_ty(ty_name) {
                        Ty::Msg(m) => Some(m),
                        _ => None,
                    })),
                    k if k.starts_with("map:") => Some(Ty::MapOf(None)),
                    _ => None,
                };
                let m = meta.and_then(|m| m.get(name));
                let strategy = m.and_then(|m| m.get("strategy")).and_then(Value::as_str).map(Strategy::parse).unwrap_or_default();
                let merge_key = m.and_then(|m| m.get("mergeKey")).and_then(Value::as_str).map(leak);
                let keys: Vec<&'static str> = m
                    .and_then(|m| m.get("listMapKeys"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(leak).collect())
                    .unwrap_or_default();
                let list = match m.and_then(|m| m.get("listType")).and_then(Value::as_str) {
                    Some("map") if !keys.is_empty() => ListKind::Map(keys),
                    Some("set") => ListKind::Set,
                    Some(_) => ListKind::Atomic,
                    // Older fields carry only the strategic-merge markers.
                    None => match (strategy.merge, merge_key) {
                        (true, Some(k)) => ListKind::Map(vec![k]),
                        (true, None) => ListKind::Set,
                        _ => ListKind::Atomic,
                    },
                };
                out.insert(leak(name), FieldMeta { ty, strategy, merge_key, list });
            }
            direct.insert(msg, out);
        }
        let mut messages = HashMap::with_capacity(direct.len());
        for &msg in direct.keys() {
            let mut all = Fields::new();
            flatten(&direct, &inlines, msg, &mut all, 0);
            messages.insert(msg, all);
        }
        Schema { messages }
    })
}

fn flatten(
    direct: &HashMap<&'static str, Fields>,
    inlines: &HashMap<&'static str, Vec<&'static str>>,
    msg: &'static str,
    out: &mut Fields,
    depth: usize,
) {
    if depth > 8 {
        return;
    }
    if let Some(fields) = direct.get(msg) {
        for (k, v) in fields {
            out.entry(k).or_insert_with(|| v.clone());
        }
    }
    for &inner in inlines.get(msg).into_iter().flatten() {
        flatten(direct, inlines, inner, out, depth + 1);
    }
}

/// The message for a kind served at `api_version`, if the schema knows it.
pub fn root(api_version: &str, kind: &str) -> Option<Ty> {
    let name = crate::protobuf::message_name(api_version, kind);
    schema().messages.get_key_value(name.as_str()).map(|(k, _)| Ty::Msg(k))
}

/// Metadata of `field` inside a value of type `ty`.
pub fn field(ty: Ty, field: &str) -> FieldMeta {
    match ty {
        Ty::Msg(m) => schema().messages.get(m).and_then(|f| f.get(field)).cloned().unwrap_or_default(),
        Ty::MapOf(v) => FieldMeta { ty: Some(v.map(Ty::Msg).unwrap_or(Ty::Unknown)), ..Default::default() },
        Ty::Unknown => FieldMeta::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_fields_carry_upstream_markers() {
        let pod = root("v1", "Pod").unwrap();
        let spec = field(pod, "spec");
        let spec_ty = spec.ty.unwrap();
        let containers = field(spec_ty, "containers");
        assert!(containers.strategy.merge);
        assert_eq!(containers.merge_key, Some("name"));
        let volumes = field(spec_ty, "volumes");
        assert!(volumes.strategy.merge && volumes.strategy.retain_keys);
        let c = field(containers.ty.unwrap(), "ports");
        assert_eq!(c.merge_key, Some("containerPort"));
        let tolerations = field(spec_ty, "tolerations");
        assert!(!tolerations.strategy.merge);
        // Volume embeds VolumeSource: its fields are found on Volume itself.
        let cm = field(volumes.ty.unwrap(), "configMap");
        assert!(matches!(cm.ty, Some(Ty::Msg(_))));
        // metadata.labels is a string map.
        let meta = field(pod, "metadata").ty.unwrap();
        assert_eq!(field(meta, "labels").ty, Some(Ty::MapOf(None)));
        assert!(field(meta, "finalizers").strategy.merge);
    }

    #[test]
    fn quantities_are_scalars() {
        let c = field(field(field(root("v1", "Pod").unwrap(), "spec").ty.unwrap(), "containers").ty.unwrap(), "resources");
        let limits = field(c.ty.unwrap(), "limits");
        assert_eq!(limits.ty, Some(Ty::MapOf(None)));
    }

    #[test]
    fn deployment_strategy_retains_keys_and_unknown_kinds_have_no_root() {
        let spec = field(root("apps/v1", "Deployment").unwrap(), "spec").ty.unwrap();
        assert!(field(spec, "strategy").strategy.retain_keys);
        assert!(root("example.com/v1", "Widget").is_none());
    }
}
