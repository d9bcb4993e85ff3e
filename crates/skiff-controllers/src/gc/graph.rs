//! The ownership graph the garbage collector works from, as upstream's GraphBuilder keeps it: one
//! node per object seen on any watch (uid → where it lives, its owners, whether it is being
//! deleted and with which finalizers), and the reverse index owner uid → dependents. Pure data, so
//! its rules are unit-tested without a cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::ApiResource;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

#[derive(Clone, Debug)]
pub struct Node {
    pub resource: Arc<ApiResource>,
    pub namespace: Option<String>,
    pub name: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

impl Node {
    pub fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    /// Being deleted in the foreground: waits for its blocking dependents to go first.
    pub fn waiting_for_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }
}

#[derive(Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// Inserts or replaces a node; returns the node it replaced.
    pub fn upsert(&mut self, uid: &str, node: Node) -> Option<Node> {
        for o in &node.owners {
            self.dependents.entry(o.uid.clone()).or_default().insert(uid.to_string());
        }
        let old = self.nodes.insert(uid.to_string(), node);
        if let Some(old) = &old {
            let now: HashSet<String> = self.nodes[uid].owners.iter().map(|o| o.uid.clone()).collect();
            for o in old.owners.iter().filter(|o| !now.contains(&o.uid)) {
                self.unlink(&o.uid, uid);
            }
        }
        old
    }

    pub fn remove(&mut self, uid: &str) -> Option<Node> {
        let old = self.nodes.remove(uid)?;
        for o in &old.owners {
            self.unlink(&o.uid, uid);
        }
        Some(old)
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    pub fn dependents(&self, owner_uid: &str) -> Vec<String> {
        self.dependents.get(owner_uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// Dependents whose reference to `owner_uid` has blockOwnerDeletion: a foreground deletion
    /// waits for exactly these.
    pub fn blocking_dependents(&self, owner_uid: &str) -> Vec<String> {
        self.dependents(owner_uid)
            .into_iter()
            .filter(|d| {
                self.nodes.get(d).is_some_and(|n| n.owners.iter().any(|o| o.uid == owner_uid && o.block_owner_deletion == Some(true)))
            })
            .collect()
    }

    /// uids of every node of one resource, for spotting objects a relist no longer shows.
    pub fn uids_of(&self, resource: &ApiResource) -> HashSet<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.resource.group == resource.group && n.resource.plural == resource.plural)
            .map(|(u, _)| u.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar() -> Arc<ApiResource> {
        Arc::new(ApiResource {
            group: "apps".into(),
            version: "v1".into(),
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            plural: "replicasets".into(),
        })
    }

    fn node(owners: &[(&str, bool)]) -> Node {
        Node {
            resource: ar(),
            namespace: Some("default".into()),
            name: "x".into(),
            owners: owners
                .iter()
                .map(|(u, b)| OwnerReference { uid: u.to_string(), block_owner_deletion: Some(*b), ..Default::default() })
                .collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    #[test]
    fn dependents_follow_owner_reference_changes() {
        let mut g = Graph::default();
        g.upsert("d1", node(&[("o1", true)]));
        g.upsert("d2", node(&[("o1", false), ("o2", true)]));
        let mut deps = g.dependents("o1");
        deps.sort();
        assert_eq!(deps, ["d1", "d2"]);
        assert_eq!(g.blocking_dependents("o1"), ["d1"]);
        // d2 drops o1 (orphaned by it): the index forgets the edge.
        g.upsert("d2", node(&[("o2", true)]));
        assert_eq!(g.dependents("o1"), ["d1"]);
        g.remove("d1");
        assert!(g.dependents("o1").is_empty());
        assert_eq!(g.dependents("o2"), ["d2"]);
        assert_eq!(g.uids_of(&ar()).len(), 1);
    }

    #[test]
    fn foreground_waiting_needs_deletion_and_the_finalizer() {
        let mut n = node(&[]);
        n.finalizers = vec![FOREGROUND.into()];
        assert!(!n.waiting_for_dependents());
        n.deleting = true;
        assert!(n.waiting_for_dependents());
    }
}
