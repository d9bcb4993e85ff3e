//! Walks objects with the built-in types' list semantics (`+listType`): the set of fields an
//! object sets, the value at a field path, and removal of a path.

use serde_json::{Map, Value};

use super::set::{FieldSet, Path};
use crate::patch::schema::{self, FieldMeta, ListKind, Ty};

/// The `k:` element naming a list item by its key fields. A missing `protocol` key is TCP, the
/// default upstream's schema declares for it.
pub fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    let parts: Vec<String> = sorted
        .iter()
        .filter_map(|k| {
            let v = match item.get(*k) {
                Some(v) if !v.is_null() => v.clone(),
                _ if *k == "protocol" => Value::String("TCP".into()),
                _ => return None,
            };
            Some(format!("{}:{}", Value::String((*k).to_string()), v))
        })
        .collect();
    format!("k:{{{}}}", parts.join(","))
}

fn value_key(v: &Value) -> String {
    format!("v:{v}")
}

/// Every field `obj` (a value of type `ty`) sets.
pub fn fieldset(obj: &Value, ty: Ty) -> FieldSet {
    let mut out = FieldSet::default();
    if let Some(m) = obj.as_object() {
        collect_object(m, ty, &mut Vec::new(), &mut out);
    }
    out
}

fn collect_object(m: &Map<String, Value>, ty: Ty, path: &mut Path, out: &mut FieldSet) {
    for (k, v) in m {
        if v.is_null() {
            continue;
        }
        path.push(format!("f:{k}"));
        collect_value(v, &schema::field(ty, k), path, out);
        path.pop();
    }
}

fn collect_value(v: &Value, meta: &FieldMeta, path: &mut Path, out: &mut FieldSet) {
    let elem = meta.ty.unwrap_or(Ty::Unknown);
    match v {
        Value::Object(m) if !m.is_empty() && elem != Ty::Unknown => collect_object(m, elem, path, out),
        Value::Array(items) if !items.is_empty() => match &meta.list {
            ListKind::Atomic => out.insert(path),
            ListKind::Set => {
                for item in items {
                    path.push(value_key(item));
                    out.insert(path);
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                for item in items {
                    path.push(item_key(item, keys));
                    out.insert(path);
                    if let Some(m) = item.as_object() {
                        collect_object(m, elem, path, out);
                    }
                    path.pop();
                }
            }
        },
        _ => out.insert(path),
    }
}

/// The list an element such as `k:{...}` or `v:...` selects from, and which item it names.
fn find_item(items: &[Value], el: &str) -> Option<usize> {
    if let Some(v) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        return items.iter().position(|i| *i == want);
    }
    let keys: Map<String, Value> = serde_json::from_str(el.strip_prefix("k:")?).ok()?;
    let names: Vec<&str> = keys.keys().map(String::as_str).collect();
    items.iter().position(|i| item_key(i, &names) == el)
}

/// The value at `path` in `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = match el.strip_prefix("f:") {
            Some(f) => cur.get(f)?,
            None => {
                let items = cur.as_array()?;
                &items[find_item(items, el)?]
            }
        };
    }
    Some(cur)
}

/// Removes the field or list item at `path` from `obj`.
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut cur = obj;
    for el in parent {
        cur = match el.strip_prefix("f:") {
            Some(f) => match cur.get_mut(f) {
                Some(v) => v,
                None => return,
            },
            None => {
                let Some(items) = cur.as_array_mut() else { return };
                let Some(i) = find_item(items, el) else { return };
                &mut items[i]
            }
        };
    }
    match last.strip_prefix("f:") {
        Some(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        None => {
            if let Some(items) = cur.as_array_mut()
                && let Some(i) = find_item(items, last)
            {
                items.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn deployment_fieldset_uses_list_keys() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "x", "ports": [{"containerPort": 80}]}],
            "tolerations": [{"key": "a"}]}}}});
        let set = fieldset(&d, schema::root("apps/v1", "Deployment").unwrap());
        let item = "k:{\"name\":\"web\"}";
        assert!(set.contains(&p(&["f:spec", "f:template", "f:spec", "f:containers", item])));
        assert!(set.contains(&p(&["f:spec", "f:template", "f:spec", "f:containers", item, "f:image"])));
        let port = "k:{\"containerPort\":80,\"protocol\":\"TCP\"}";
        assert!(set.contains(&p(&["f:spec", "f:template", "f:spec", "f:containers", item, "f:ports", port, "f:containerPort"])));
        // Atomic lists are one leaf.
        assert!(set.is_leaf(&p(&["f:spec", "f:template", "f:spec", "f:tolerations"])));
        assert!(set.contains(&p(&["f:metadata", "f:labels", "f:app"])));
        let path = p(&["f:spec", "f:template", "f:spec", "f:containers", item, "f:image"]);
        assert_eq!(value_at(&d, &path), Some(&json!("x")));
        let mut d2 = d.clone();
        remove_at(&mut d2, &p(&["f:spec", "f:template", "f:spec", "f:containers", item]));
        assert_eq!(d2["spec"]["template"]["spec"]["containers"], json!([]));
    }

    #[test]
    fn finalizers_are_a_set() {
        let pod = json!({"metadata": {"finalizers": ["a", "b"]}});
        let set = fieldset(&pod, schema::root("v1", "Pod").unwrap());
        assert!(set.contains(&p(&["f:metadata", "f:finalizers", "v:\"a\""])));
        let mut pod2 = pod.clone();
        remove_at(&mut pod2, &p(&["f:metadata", "f:finalizers", "v:\"a\""]));
        assert_eq!(pod2["metadata"]["finalizers"], json!(["b"]));
    }
}
