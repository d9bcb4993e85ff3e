//! Strategic merge patch (`application/strategic-merge-patch+json`) applied to a live object,
//! with upstream's semantics: maps merge key by key (null deletes), lists marked
//! `patchStrategy=merge` merge element-wise by their `patchMergeKey` (or as sets of scalars),
//! other lists are replaced, and the directives `$patch` (replace/delete), `$retainKeys`,
//! `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>` are honoured.
//!
//! Hand-written because no Rust crate implements strategic merge patch; the merge rules follow
//! apimachinery's `strategicpatch` package (read for semantics, see
//! community/contributors/devel/sig-api-machinery/strategic-merge-patch.md).

use serde_json::{Map, Value};

use super::order::{normalize_element_order, partition};
use super::schema::{self, FieldMeta, Ty};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList";

/// Why a patch could not be applied: upstream answers format errors with 400 and content
/// errors with 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmpError {
    pub code: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> SmpError {
    SmpError { code: 400, message: message.into() }
}

fn unprocessable(message: impl Into<String>) -> SmpError {
    SmpError { code: 422, message: message.into() }
}

fn no_merge_key(item: &Value, key: &str) -> SmpError {
    unprocessable(format!("map: {item} does not contain declared merge key: {key}"))
}

fn bad_patch_type(directive: &Value, map: &Map<String, Value>) -> SmpError {
    bad(format!("unknown patch type: {} in map: {}", display(directive), Value::Object(map.clone())))
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Applies `patch` to `original` (a whole object of type `ty`).
pub fn apply(original: Value, patch: Value, ty: Ty) -> Result<Value, SmpError> {
    let Value::Object(patch) = patch else {
        return Err(bad("invalid JSON document"));
    };
    let original = match original {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    merge_map(original, patch, ty).map(Value::Object)
}

fn merge_map(mut original: Map<String, Value>, mut patch: Map<String, Value>, ty: Ty) -> Result<Map<String, Value>, SmpError> {
    if let Some(d) = patch.get(DIRECTIVE) {
        return match d.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(clean_map(patch))
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(bad_patch_type(d, &patch)),
        };
    }
    retain_keys(&mut original, &mut patch)?;
    set_element_orders(&mut original, &mut patch, ty)?;

    for (key, value) in patch {
        let (key, delete_list) = match key.strip_prefix(DELETE_PRIMITIVE) {
            Some(rest) => match rest.strip_prefix('/') {
                Some(k) if !k.is_empty() => (k.to_string(), true),
                _ => return Err(bad("invalid patch format of primitive list")),
            },
            None => (key, false),
        };
        if value.is_null() {
            original.remove(&key);
            continue;
        }
        let Some(current) = original.remove(&key) else {
            if !delete_list {
                original.insert(key, clean(value));
            }
            continue;
        };
        let meta = schema::field(ty, &key);
        let merged = merge_value(current, value, &meta, delete_list)?;
        original.insert(key, merged);
    }
    Ok(original)
}

fn merge_value(current: Value, patch: Value, meta: &FieldMeta, delete_list: bool) -> Result<Value, SmpError> {
    let elem = meta.ty.unwrap_or(Ty::Unknown);
    match (current, patch) {
        (Value::Object(c), Value::Object(p)) => {
            if meta.strategy.replace {
                Ok(Value::Object(clean_map(p)))
            } else {
                merge_map(c, p, elem).map(Value::Object)
            }
        }
        (Value::Array(c), Value::Array(p)) => {
            if meta.strategy.merge {
                merge_list(c, p, elem, meta.merge_key.unwrap_or(""), delete_list).map(Value::Array)
            } else if delete_list {
                // A deletion list for a list that does not merge: nothing sensible to delete.
                Ok(Value::Array(c))
            } else {
                Ok(clean(Value::Array(p)))
            }
        }
        (_, p) => Ok(clean(p)),
    }
}

/// `$retainKeys`: keys of the original not listed are cleared; every key the patch sets must
/// be listed.
fn retain_keys(original: &mut Map<String, Value>, patch: &mut Map<String, Value>) -> Result<(), SmpError> {
    let Some(list) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(list) = list else {
        return Err(bad("invalid patch format of retainKeys"));
    };
    let keep: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_PRIMITIVE) || k.starts_with(SET_ORDER) {
            continue;
        }
        if !keep.contains(&k.as_str()) {
            return Err(bad("invalid patch format of retainKeys"));
        }
    }
    original.retain(|k, _| keep.contains(&k.as_str()));
    Ok(())
}

/// `$setElementOrder/<field>`: merges that field's list now and orders the result by the given
/// order, then the patch's, then the live list's.
fn set_element_orders(original: &mut Map<String, Value>, patch: &mut Map<String, Value>, ty: Ty) -> Result<(), SmpError> {
    let keys: Vec<String> = patch.keys().filter(|k| k.starts_with(SET_ORDER)).cloned().collect();
    for directive in keys {
        let order = patch.remove(&directive).unwrap_or_default();
        let field = match directive.strip_prefix(SET_ORDER).and_then(|r| r.strip_prefix('/')) {
            Some(f) if !f.is_empty() => f.to_string(),
            _ => return Err(bad("invalid patch format of setElementOrder list")),
        };
        let Value::Array(order) = order else {
            return Err(bad("invalid patch format of setElementOrder list"));
        };
        let live = match original.get(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(bad("invalid patch format of setElementOrder list")),
        };
        let patch_list = match patch.remove(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(_) => return Err(bad("invalid patch format of setElementOrder list")),
        };
        let meta = schema::field(ty, &field);
        let merge_key = meta.merge_key.unwrap_or("");
        validate_order(patch_list.as_deref().unwrap_or_default(), &order, merge_key)?;
        let merged = match (&live, patch_list) {
            (Some(l), None) => l.clone(),
            (None, Some(p)) => drop_directive_items(p),
            (Some(l), Some(p)) => match merge_value(Value::Array(l.clone()), Value::Array(p), &meta, false)? {
                Value::Array(a) => a,
                _ => unreachable!("merging two lists yields a list"),
            },
            (None, None) => continue,
        };
        let (in_patch, server_only) = partition(merged, &order, merge_key)?;
        let live = live.unwrap_or_default();
        let ordered = normalize_element_order(in_patch, server_only, &order, &live, merge_key)?;
        original.insert(field, Value::Array(ordered));
    }
    Ok(())
}

/// The patch's list must follow the relative order of `$setElementOrder` (deletions aside).
fn validate_order(patch: &[Value], order: &[Value], merge_key: &str) -> Result<(), SmpError> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let items: Vec<&Value> = if merge_key.is_empty() {
        patch.iter().collect()
    } else {
        patch.iter().filter(|v| v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete")).collect()
    };
    let key_of = |v: &Value| -> Result<Value, SmpError> {
        if merge_key.is_empty() {
            return Ok(v.clone());
        }
        v.get(merge_key).cloned().ok_or_else(|| no_merge_key(v, merge_key))
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < items.len() && oi < order.len() {
        if items[pi].get(DIRECTIVE).is_some() {
            pi += 1;
            continue;
        }
        if key_of(items[pi])? == key_of(&order[oi])? {
            pi += 1;
        }
        oi += 1;
    }
    if pi < items.len() {
        return Err(bad(format!(
            "The order in patch list:\n{}\n doesn't match {SET_ORDER} list:\n{}\n",
            Value::Array(patch.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

fn merge_list(original: Vec<Value>, patch: Vec<Value>, elem: Ty, merge_key: &str, delete_list: bool) -> Result<Vec<Value>, SmpError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let is_maps = element_kind(&original, &patch)?;
    let (original, patch, merged) = if !is_maps {
        if delete_list {
            return Ok(original.into_iter().filter(|v| !patch.contains(v)).collect());
        }
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(patch.iter()) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        (original, patch, merged)
    } else {
        if merge_key.is_empty() {
            return Err(unprocessable("cannot merge lists without merge key for type map"));
        }
        let (original, patch) = special_elements(original, patch, merge_key)?;
        let merged = merge_maps_by_key(original.clone(), patch.clone(), elem, merge_key)?;
        (original, patch, merged)
    };
    let (in_patch, server_only) = partition(merged, &patch, merge_key)?;
    normalize_element_order(in_patch, server_only, &patch, &original, merge_key)
}

/// True when the elements are objects, false for scalars; lists of lists and mixed lists are
/// rejected as upstream does.
fn element_kind(a: &[Value], b: &[Value]) -> Result<bool, SmpError> {
    let mut kind: Option<u8> = None;
    for v in a.iter().chain(b.iter()) {
        let k = match v {
            Value::Array(_) => return Err(unprocessable("lists of lists are not supported")),
            Value::Object(_) => 0,
            Value::String(_) => 1,
            Value::Number(_) => 2,
            Value::Bool(_) => 3,
            Value::Null => 4,
        };
        match kind {
            None => kind = Some(k),
            Some(prev) if prev != k => {
                return Err(unprocessable(format!(
                    "list element types are not identical: {} and {}",
                    Value::Array(a.to_vec()),
                    Value::Array(b.to_vec())
                )));
            }
            _ => {}
        }
    }
    Ok(kind == Some(0))
}

/// Handles `$patch: delete` and `$patch: replace` elements of a merging list; returns the
/// updated original and the patch without them.
fn special_elements(mut original: Vec<Value>, patch: Vec<Value>, merge_key: &str) -> Result<(Vec<Value>, Vec<Value>), SmpError> {
    let mut rest = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            rest.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let key = item.get(merge_key).ok_or_else(|| no_merge_key(&item, merge_key))?;
                original.retain(|o| o.get(merge_key) != Some(key));
            }
            Some("replace") => replace = true,
            Some("merge") => return Err(bad("merging lists cannot yet be specified in the patch")),
            _ => return Err(bad_patch_type(directive, item.as_object().unwrap_or(&Map::new()))),
        }
    }
    if replace {
        return Ok((rest.into_iter().map(clean).collect(), Vec::new()));
    }
    Ok((original, rest))
}

fn merge_maps_by_key(mut original: Vec<Value>, patch: Vec<Value>, elem: Ty, merge_key: &str) -> Result<Vec<Value>, SmpError> {
    for item in patch {
        let key = item.get(merge_key).cloned().ok_or_else(|| no_merge_key(&item, merge_key))?;
        let Value::Object(item) = item else { continue };
        match original.iter().position(|o| o.get(merge_key) == Some(&key)) {
            Some(i) => {
                let current = match std::mem::take(&mut original[i]) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                original[i] = Value::Object(merge_map(current, item, elem)?);
            }
            None => original.push(clean(Value::Object(item))),
        }
    }
    Ok(original)
}

fn drop_directive_items(list: Vec<Value>) -> Vec<Value> {
    list.into_iter().filter(|v| v.get(DIRECTIVE).is_none()).map(clean).collect()
}

/// A patch value taken as-is (no live counterpart): directives and nulls mean nothing there.
fn clean(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(clean_map(m)),
        Value::Array(a) => Value::Array(drop_directive_items_shallow(a)),
        other => other,
    }
}

fn drop_directive_items_shallow(a: Vec<Value>) -> Vec<Value> {
    a.into_iter().filter(|v| v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete")).map(clean).collect()
}

fn clean_map(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter().filter(|(k, v)| !v.is_null() && !is_directive_key(k)).map(|(k, v)| (k, clean(v))).collect()
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE || k == RETAIN_KEYS || k.starts_with(SET_ORDER) || k.starts_with(DELETE_PRIMITIVE)
}
