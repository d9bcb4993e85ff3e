//! A set of field paths in upstream's `FieldsV1` shape: `{"f:spec": {"f:replicas": {}},
//! "k:{\"name\":\"web\"}": {".": {}, ...}, "v:\"x\"": {}}`. Path elements are kept in their
//! serialized form (`f:name`, `k:{...}`, `v:value`), which is also how they are matched.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeMap<String, Node>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The path ending here is itself in the set (`.` when it also has children).
    pub member: bool,
    pub children: FieldSet,
}

pub type Path = Vec<String>;

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads a `fieldsV1` document; anything malformed is skipped.
    pub fn from_v1(v: &Value) -> FieldSet {
        let mut out = FieldSet::default();
        for (k, child) in v.as_object().into_iter().flatten() {
            if k == "." {
                continue;
            }
            let node = match child.as_object() {
                Some(m) if m.is_empty() => Node { member: true, children: FieldSet::default() },
                Some(m) => Node { member: m.contains_key("."), children: FieldSet::from_v1(child) },
                None => continue,
            };
            out.0.insert(k.clone(), node);
        }
        out
    }

    pub fn to_v1(&self) -> Value {
        let mut m = Map::new();
        for (k, node) in &self.0 {
            let mut inner = match node.children.to_v1() {
                Value::Object(o) => o,
                _ => Map::new(),
            };
            if node.member && !inner.is_empty() {
                inner.insert(".".into(), Value::Object(Map::new()));
            }
            m.insert(k.clone(), Value::Object(inner));
        }
        Value::Object(m)
    }

    pub fn insert(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else { return };
        let node = self.0.entry(first.clone()).or_default();
        if rest.is_empty() {
            node.member = true;
        } else {
            node.children.insert(rest);
        }
    }

    fn node(&self, path: &[String]) -> Option<&Node> {
        let (first, rest) = path.split_first()?;
        let node = self.0.get(first)?;
        if rest.is_empty() { Some(node) } else { node.children.node(rest) }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// True when the path or anything under it is in the set.
    pub fn touches(&self, path: &[String]) -> bool {
        self.node(path).is_some()
    }

    /// True when the path is in the set and nothing below it is.
    pub fn is_leaf(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member && n.children.is_empty())
    }

    /// Removes a path (not its children); prunes nodes left empty.
    pub fn remove(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else { return };
        let Some(node) = self.0.get_mut(first) else { return };
        if rest.is_empty() {
            node.member = false;
        } else {
            node.children.remove(rest);
        }
        if !node.member && node.children.is_empty() {
            self.0.remove(first);
        }
    }

    /// Every member path, parents before children.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        for (k, node) in &self.0 {
            prefix.push(k.clone());
            if node.member {
                out.push(prefix.clone());
            }
            node.children.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    /// Keeps only the paths `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&[String]) -> bool) {
        for p in self.paths() {
            if !keep(&p) {
                self.remove(&p);
            }
        }
    }

    /// Drops a whole subtree.
    pub fn remove_tree(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else { return };
        if rest.is_empty() {
            self.0.remove(first);
            return;
        }
        if let Some(node) = self.0.get_mut(first) {
            node.children.remove_tree(rest);
            if !node.member && node.children.is_empty() {
                self.0.remove(first);
            }
        }
    }

    /// Keeps only the subtree at `path` (used for the status subresource).
    pub fn only(&self, first: &str) -> FieldSet {
        let mut out = FieldSet::default();
        if let Some(n) = self.0.get(first) {
            out.0.insert(first.to_string(), n.clone());
        }
        out
    }
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="web"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &[&str]) -> Path {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn round_trips_fields_v1() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}});
        let set = FieldSet::from_v1(&v);
        assert_eq!(set.to_v1(), v);
        assert!(set.contains(&p(&["f:metadata", "f:labels"])));
        assert!(!set.contains(&p(&["f:metadata"])));
        assert!(set.is_leaf(&p(&["f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"])));
        assert_eq!(set.paths().len(), 4);
    }

    #[test]
    fn remove_prunes_empty_parents() {
        let mut set = FieldSet::default();
        set.insert(&p(&["f:spec", "f:replicas"]));
        set.remove(&p(&["f:spec", "f:replicas"]));
        assert!(set.is_empty());
    }

    #[test]
    fn displays_like_upstream() {
        assert_eq!(display(&p(&["f:spec", "f:replicas"])), ".spec.replicas");
        assert_eq!(display(&p(&["f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"])), ".spec.containers[name=\"web\"].image");
    }
}
