//! `metadata.managedFields`: which manager set which fields, kept on every write. Updates
//! (create/update/patch) give the writer the fields it changed and take them from everyone
//! else; server-side apply (`apply.rs`) gives the applier exactly the fields it applied.

use serde_json::{Map, Value, json};

use super::set::FieldSet;
use super::walk::{fieldset, value_at};
use crate::patch::schema::Ty;

/// Who writes, and through which subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub name: String,
    pub subresource: Option<&'static str>,
}

impl Manager {
    /// `fieldManager` if the client named one, else its User-Agent up to the first `/`, as
    /// upstream derives it.
    pub fn from_request(field_manager: Option<&str>, user_agent: Option<&str>, subresource: Option<&'static str>) -> Manager {
        let name = match field_manager {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => user_agent.and_then(|ua| ua.split('/').next()).filter(|s| !s.is_empty()).unwrap_or("unknown").to_string(),
        };
        Manager { name, subresource }
    }
}

/// Which part of the object a write path may own: the main resource never owns `status` of a
/// resource with a status subresource; `/status` owns only `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main { status_is_separate: bool },
    Status,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn from_value(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Entry {
            manager: s("manager").unwrap_or_default(),
            operation: s("operation")?,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").filter(|x| !x.is_empty()),
            fields: FieldSet::from_v1(v.get("fieldsV1").unwrap_or(&Value::Null)),
        })
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_v1());
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), json!(s));
        }
        Value::Object(m)
    }

    pub fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == subresource
    }
}

pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Entry::from_value).collect())
        .unwrap_or_default()
}

pub fn set_entries(obj: &mut Value, entries: Vec<Entry>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let list: Vec<Value> = entries.iter().filter(|e| !e.fields.is_empty()).map(Entry::to_value).collect();
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Metadata the server owns: never part of anyone's field set.
const SERVER_META: &[&str] = &[
    "f:name",
    "f:namespace",
    "f:uid",
    "f:resourceVersion",
    "f:generation",
    "f:creationTimestamp",
    "f:managedFields",
    "f:selfLink",
    "f:deletionTimestamp",
    "f:deletionGracePeriodSeconds",
    "f:generateName",
];

/// The fields of `obj` a writer in `scope` can own.
pub fn owned_fields(obj: &Value, ty: Ty, scope: Scope) -> FieldSet {
    let mut set = fieldset(obj, ty);
    set.remove_tree(&["f:apiVersion".to_string()]);
    set.remove_tree(&["f:kind".to_string()]);
    for f in SERVER_META {
        set.remove_tree(&["f:metadata".to_string(), f.to_string()]);
    }
    match scope {
        Scope::Main { status_is_separate: true } => {
            set.remove_tree(&["f:status".to_string()]);
            set
        }
        Scope::Main { .. } => set,
        Scope::Status => set.only("f:status"),
    }
}

pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A create: the creator owns every field it set.
pub fn track_create(obj: &mut Value, ty: Ty, m: &Manager, api_version: &str, scope: Scope) {
    let fields = owned_fields(obj, ty, scope);
    let entry = Entry {
        manager: m.name.clone(),
        operation: "Update".into(),
        api_version: api_version.to_string(),
        time: Some(now()),
        subresource: m.subresource.map(str::to_string),
        fields,
    };
    set_entries(obj, vec![entry]);
}

/// An update by `m`: the fields it changed become its own and leave every other manager; fields
/// that disappeared leave everyone. A client may replace managedFields outright by sending
/// different ones; sending none keeps the stored ones.
pub fn track_update(old: &Value, new: &mut Value, ty: Ty, m: &Manager, api_version: &str, scope: Scope) {
    let sent = new.pointer("/metadata/managedFields").cloned();
    let stored = old.pointer("/metadata/managedFields").cloned();
    let mut list = match &sent {
        Some(s) if Some(s) != stored.as_ref() => entries(new),
        _ => entries(old),
    };
    let before = owned_fields(old, ty, scope);
    let after = owned_fields(new, ty, scope);
    let mut changed = FieldSet::default();
    for p in after.paths() {
        if !before.contains(&p) || (after.is_leaf(&p) && value_at(old, &p) != value_at(new, &p)) {
            changed.insert(&p);
        }
    }
    // Fields gone from the object (in the part this write can touch) leave every manager.
    let all_new = owned_fields(new, ty, Scope::Main { status_is_separate: false });
    for e in &mut list {
        let in_scope = |p: &[String]| match scope {
            Scope::Status => p.first().map(String::as_str) == Some("f:status"),
            Scope::Main { status_is_separate } => !(status_is_separate && p.first().map(String::as_str) == Some("f:status")),
        };
        e.fields.retain(|p| !in_scope(p) || all_new.contains(p));
        if !e.is(&m.name, "Update", m.subresource) {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() {
        match list.iter_mut().find(|e| e.is(&m.name, "Update", m.subresource)) {
            Some(e) => {
                for p in changed.paths() {
                    e.fields.insert(&p);
                }
                e.time = Some(now());
                e.api_version = api_version.to_string();
            }
            None => list.push(Entry {
                manager: m.name.clone(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                time: Some(now()),
                subresource: m.subresource.map(str::to_string),
                fields: changed,
            }),
        }
    }
    set_entries(new, list);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::schema::root;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "uid": "u", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}},
            "status": {"replicas": 1}})
    }

    const MAIN: Scope = Scope::Main { status_is_separate: true };

    #[test]
    fn create_owns_everything_but_server_fields_and_status() {
        let ty = root("apps/v1", "Deployment").unwrap();
        let mut d = deploy(2, "a");
        track_create(&mut d, ty, &Manager::from_request(None, Some("kubectl/v1.33.0 (linux)"), None), "apps/v1", MAIN);
        let e = &entries(&d)[0];
        assert_eq!((e.manager.as_str(), e.operation.as_str()), ("kubectl", "Update"));
        let v1 = e.fields.to_v1();
        assert!(v1["f:spec"]["f:replicas"].is_object());
        assert!(v1.get("f:status").is_none() && v1["f:metadata"].get("f:name").is_none() && v1["f:metadata"].get("f:uid").is_none());
    }

    #[test]
    fn update_moves_changed_fields_to_the_writer() {
        let ty = root("apps/v1", "Deployment").unwrap();
        let mut old = deploy(2, "a");
        track_create(&mut old, ty, &Manager::from_request(Some("creator"), None, None), "apps/v1", MAIN);
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        track_update(&old, &mut new, ty, &Manager::from_request(Some("scaler"), None, Some("scale")), "apps/v1", MAIN);
        let list = entries(&new);
        let creator = list.iter().find(|e| e.manager == "creator").unwrap();
        let scaler = list.iter().find(|e| e.manager == "scaler").unwrap();
        let replicas = vec!["f:spec".to_string(), "f:replicas".to_string()];
        assert!(!creator.fields.contains(&replicas));
        assert!(scaler.fields.contains(&replicas));
        assert_eq!(scaler.subresource.as_deref(), Some("scale"));
        // No change: nothing moves and the timestamps stay.
        let mut same = new.clone();
        track_update(&new, &mut same, ty, &Manager::from_request(Some("other"), None, None), "apps/v1", MAIN);
        assert_eq!(same, new);
    }
}
