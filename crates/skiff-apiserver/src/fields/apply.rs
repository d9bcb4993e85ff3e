//! Server-side apply (`application/apply-patch+yaml`): merges an applied configuration into the
//! live object by the types' list semantics, refuses to overwrite fields other managers own
//! (409 naming them) unless forced, and removes fields the applier stopped applying when nobody
//! else owns them. The applier's managedFields entry becomes exactly what it applied.

use serde_json::{Map, Value, json};

use super::managed::{Entry, Scope, entries, now, owned_fields, set_entries};
use super::set::{FieldSet, Path, display};
use super::walk::{item_key, remove_at, value_at};
use crate::patch::schema::{self, FieldMeta, ListKind, Ty};
use crate::status::ApiError;

pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub force: bool,
    pub scope: Scope,
    pub subresource: Option<&'static str>,
}

/// The object to create when nothing exists yet: the configuration, owned by the applier.
pub fn apply_create(config: &Value, ty: Ty, req: &ApplyRequest) -> Value {
    let mut obj = config.clone();
    let entry = applier_entry(req, owned_fields(config, ty, req.scope));
    set_entries(&mut obj, vec![entry]);
    obj
}

fn applier_entry(req: &ApplyRequest, fields: FieldSet) -> Entry {
    Entry {
        manager: req.manager.to_string(),
        operation: "Apply".into(),
        api_version: req.api_version.to_string(),
        time: Some(now()),
        subresource: req.subresource.map(str::to_string),
        fields,
    }
}

/// Applies `config` to `live`; returns the new object with its managedFields.
pub fn apply(live: &Value, config: &Value, ty: Ty, req: &ApplyRequest) -> Result<Value, ApiError> {
    let mut list = entries(live);
    let applied = owned_fields(config, ty, req.scope);
    let mut merged = merge_value(live.clone(), config.clone(), &FieldMeta { ty: Some(ty), ..Default::default() });
    // Server-owned metadata is never taken from the configuration.
    if let (Some(m), Some(lm)) =
        (merged.get_mut("metadata").and_then(Value::as_object_mut), live.get("metadata").and_then(Value::as_object))
    {
        for k in ["uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            match lm.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
    }
    let mine = |e: &Entry| e.is(req.manager, "Apply", req.subresource);

    // Conflicts: a field the configuration changes that another manager owns.
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for p in applied.paths() {
        if !applied.is_leaf(&p) {
            continue;
        }
        let before = value_at(live, &p);
        if before.is_none() || before == value_at(&merged, &p) {
            continue;
        }
        for (i, e) in list.iter().enumerate() {
            if !mine(e) && e.fields.contains(&p) {
                conflicts.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !req.force {
            return Err(conflict_error(&list, &conflicts));
        }
        for (i, p) in &conflicts {
            list[*i].fields.remove(p);
        }
    }

    // Fields this manager applied before and no longer does go, unless someone else owns them.
    let previous = list.iter().find(|e| mine(e)).map(|e| e.fields.clone()).unwrap_or_default();
    let mut gone: Vec<Path> =
        previous.paths().into_iter().filter(|p| !applied.touches(p) && !list.iter().any(|e| !mine(e) && e.fields.touches(p))).collect();
    // Only the topmost of nested removals: an item goes with its fields (removing the fields
    // first would lose the key that finds the item).
    gone.sort_by_key(Vec::len);
    let mut removed: Vec<Path> = Vec::new();
    for p in gone {
        if removed.iter().any(|r| p.starts_with(r)) {
            continue;
        }
        remove_at(&mut merged, &p);
        removed.push(p);
    }

    // The applier's entry keeps its place, and its time when it applied the same fields again,
    // so re-applying an unchanged configuration writes nothing.
    match list.iter_mut().find(|e| mine(e)) {
        Some(e) if e.fields == applied && e.api_version == req.api_version => {}
        Some(e) => *e = applier_entry(req, applied),
        None => list.push(applier_entry(req, applied)),
    }
    // Other managers keep only fields that still exist.
    let present = owned_fields(&merged, ty, Scope::Main { status_is_separate: false });
    for e in &mut list {
        e.fields.retain(|p| present.contains(p));
    }
    set_entries(&mut merged, list);
    Ok(merged)
}

fn print_manager(e: &Entry) -> String {
    let mut s = format!("{:?}", e.manager);
    if let Some(sub) = &e.subresource {
        s = format!("{s} with subresource {sub:?}");
    }
    if e.operation == "Update" {
        s = match &e.time {
            Some(t) => format!("{s} using {} at {t}", e.api_version),
            None => format!("{s} using {}", e.api_version),
        };
    }
    s
}

/// Upstream's 409: one cause per conflicting field, and a message grouping them by manager.
fn conflict_error(list: &[Entry], conflicts: &[(usize, Path)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(i, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with {}", print_manager(&list[*i])), "field": display(p)}))
        .collect();
    let message = if let [(i, p)] = conflicts {
        format!("Apply failed with 1 conflict: conflict with {}: {}", print_manager(&list[*i]), display(p))
    } else {
        let mut by_manager: Vec<(String, Vec<String>)> = Vec::new();
        for (i, p) in conflicts {
            let m = print_manager(&list[*i]);
            match by_manager.iter_mut().find(|(k, _)| *k == m) {
                Some((_, v)) => v.push(display(p)),
                None => by_manager.push((m, vec![display(p)])),
            }
        }
        by_manager.sort();
        let lines: Vec<String> = by_manager
            .into_iter()
            .flat_map(|(m, paths)| std::iter::once(format!("conflicts with {m}:")).chain(paths.into_iter().map(|p| format!("- {p}"))))
            .collect();
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

/// The configuration merged into the live value: structs and maps key by key, associative
/// lists item by item, sets as unions, everything else replaced.
fn merge_value(live: Value, config: Value, meta: &FieldMeta) -> Value {
    let ty = meta.ty.unwrap_or(Ty::Unknown);
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if ty != Ty::Unknown => Value::Object(merge_object(l, c, ty)),
        (Value::Array(l), Value::Array(c)) => match &meta.list {
            ListKind::Atomic => Value::Array(c),
            ListKind::Set => {
                let mut out = l;
                for v in c {
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
                Value::Array(out)
            }
            ListKind::Map(keys) => {
                let mut out = l;
                for item in c {
                    let key = item_key(&item, keys);
                    match out.iter().position(|o| item_key(o, keys) == key) {
                        Some(i) => {
                            let cur = std::mem::take(&mut out[i]);
                            out[i] = merge_value(cur, item, &FieldMeta { ty: Some(ty), ..Default::default() });
                        }
                        None => out.push(item),
                    }
                }
                Value::Array(out)
            }
        },
        (_, c) => c,
    }
}

fn merge_object(mut live: Map<String, Value>, config: Map<String, Value>, ty: Ty) -> Map<String, Value> {
    for (k, v) in config {
        if k == "managedFields" && matches!(ty, Ty::Msg(m) if m.ends_with("ObjectMeta")) {
            continue;
        }
        if v.is_null() {
            live.remove(&k);
            continue;
        }
        let meta = schema::field(ty, &k);
        let merged = match live.remove(&k) {
            Some(cur) => merge_value(cur, v, &meta),
            None => v,
        };
        live.insert(k, merged);
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::schema::root;

    const MAIN: Scope = Scope::Main { status_is_separate: true };

    fn req(manager: &str, force: bool) -> ApplyRequest<'_> {
        ApplyRequest { manager, api_version: "apps/v1", force, scope: MAIN, subresource: None }
    }

    fn cfg(replicas: Option<i64>, images: &[(&str, &str)]) -> Value {
        let containers: Vec<Value> = images.iter().map(|(n, i)| json!({"name": n, "image": i})).collect();
        let mut spec = json!({"selector": {"matchLabels": {"app": "w"}}, "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": containers}}});
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": spec})
    }

    #[test]
    fn two_appliers_conflict_on_replicas_and_force_moves_ownership() {
        let ty = root("apps/v1", "Deployment").unwrap();
        let live = apply_create(&cfg(Some(2), &[("web", "a")]), ty, &req("alice", false));
        // Same value: shared ownership, no conflict.
        let shared = apply(&live, &cfg(Some(2), &[("web", "a")]), ty, &req("bob", false)).unwrap();
        assert_eq!(entries(&shared).len(), 2);
        // Different value: 409 naming the field and the owner.
        let err = apply(&live, &cfg(Some(3), &[("web", "a")]), ty, &req("bob", false)).unwrap_err();
        let status = err.to_status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["message"], "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas");
        assert_eq!(status["details"]["causes"][0]["field"], ".spec.replicas");
        // Forced: bob owns replicas, alice no longer does.
        let forced = apply(&live, &cfg(Some(3), &[("web", "a")]), ty, &req("bob", true)).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let alice = entries(&forced).into_iter().find(|e| e.manager == "alice").unwrap();
        assert!(!alice.fields.contains(&["f:spec".to_string(), "f:replicas".to_string()]));
        // Alice stops applying replicas: bob still owns it, so it stays.
        let after = apply(&forced, &cfg(None, &[("web", "a")]), ty, &req("alice", false)).unwrap();
        assert_eq!(after["spec"]["replicas"], 3);
    }

    #[test]
    fn dropped_fields_and_items_are_removed() {
        let ty = root("apps/v1", "Deployment").unwrap();
        let live = apply_create(&cfg(Some(2), &[("web", "a"), ("side", "b")]), ty, &req("alice", false));
        let out = apply(&live, &cfg(None, &[("web", "a2")]), ty, &req("alice", false)).unwrap();
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "web", "image": "a2"}]));
    }

    #[test]
    fn update_owned_fields_conflict_with_the_update_manager_named() {
        let ty = root("apps/v1", "Deployment").unwrap();
        let mut live = apply_create(&cfg(Some(2), &[("web", "a")]), ty, &req("alice", false));
        let mut list = entries(&live);
        list[0].manager = "kubectl-client-side-apply".into();
        list[0].operation = "Update".into();
        list[0].time = Some("2026-01-01T00:00:00Z".into());
        set_entries(&mut live, list);
        let err = apply(&live, &cfg(Some(4), &[("web", "a")]), ty, &req("kubectl", false)).unwrap_err();
        assert_eq!(
            err.to_status()["message"],
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1 at 2026-01-01T00:00:00Z: .spec.replicas"
        );
    }
}
