//! The scheduler's cluster state: every node with the pods assigned to it, including pods the
//! scheduler has *assumed* onto a node but whose binding the API server has not confirmed yet, so
//! the next cycle never double-books the same resources.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::node_info::{NodeInfo, PodInfo};

#[derive(Default)]
pub struct Cache {
    /// Dense, in a stable order, so a cycle walks a slice (upstream's snapshot list).
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// uid → (node, assumed-but-not-confirmed).
    pods: HashMap<String, (String, bool)>,
    /// Pods the watch reported on nodes the cache has not seen yet.
    waiting: HashMap<String, Vec<Arc<PodInfo>>>,
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(i) = self.index.get(&name) {
            self.nodes[*i].set_node(node);
            return;
        }
        let mut info = NodeInfo::new(node);
        for p in self.waiting.remove(&name).unwrap_or_default() {
            info.add_pod(p);
        }
        self.index.insert(name, self.nodes.len());
        self.nodes.push(info);
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        let gone = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        // Pods stay known: if the node comes back (re-registration), they count again.
        self.waiting.insert(gone.name.clone(), gone.pods);
    }

    fn place(&mut self, p: Arc<PodInfo>, node: &str) {
        match self.index.get(node) {
            Some(i) => self.nodes[*i].add_pod(p),
            None => self.waiting.entry(node.to_string()).or_default().push(p),
        }
    }

    /// A pod the API reports as assigned to `node` (confirms an assumption if there was one).
    pub fn add_assigned(&mut self, p: Arc<PodInfo>, node: &str) {
        self.remove_pod(&p.uid);
        self.pods.insert(p.uid.clone(), (node.to_string(), false));
        self.place(p, node);
    }

    /// Books `p` onto `node` before the binding is confirmed.
    pub fn assume(&mut self, p: Arc<PodInfo>, node: &str) {
        self.pods.insert(p.uid.clone(), (node.to_string(), true));
        self.place(p, node);
    }

    /// Undoes an assumption whose binding failed (a confirmed pod is left alone).
    pub fn forget(&mut self, uid: &str) {
        if self.pods.get(uid).is_some_and(|(_, assumed)| *assumed) {
            self.remove_pod(uid);
        }
    }

    pub fn remove_pod(&mut self, uid: &str) {
        let Some((node, _)) = self.pods.remove(uid) else { return };
        match self.index.get(&node) {
            Some(i) => {
                self.nodes[*i].remove_pod(uid);
            }
            None => {
                if let Some(w) = self.waiting.get_mut(&node) {
                    w.retain(|p| p.uid != uid);
                }
            }
        }
    }

    /// Drops every confirmed pod whose uid `keep` rejects: after a relist.
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.pods.iter().filter(|(uid, (_, assumed))| !*assumed && !keep(uid)).map(|(u, _)| u.clone()).collect();
        for uid in gone {
            self.remove_pod(&uid);
        }
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::{pod_requesting, simple_node};

    #[test]
    fn assume_confirm_forget_and_node_churn() {
        let mut c = Cache::default();
        c.upsert_node(simple_node("a").node.clone());
        let p = Arc::new(pod_requesting("p", "1", "1Gi"));
        c.assume(p.clone(), "a");
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 1000);
        c.forget(&p.uid);
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 0);
        c.assume(p.clone(), "a");
        c.add_assigned(p.clone(), "a"); // confirmation replaces, never double counts
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 1000);
        c.forget(&p.uid); // confirmed: forget is a no-op
        assert_eq!(c.node("a").unwrap().pods.len(), 1);
        c.remove_node("a");
        assert!(c.node("a").is_none());
        c.upsert_node(simple_node("a").node.clone());
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 1000);
        // A pod reported before its node arrives counts once the node does.
        c.add_assigned(Arc::new(pod_requesting("early", "500m", "0")), "b");
        c.upsert_node(simple_node("b").node.clone());
        assert_eq!(c.node("b").unwrap().requested.milli_cpu, 500);
        c.remove_pod(&p.uid);
        assert_eq!(c.node("a").unwrap().pods.len(), 0);
        assert_eq!(c.pod_count(), 1);
    }
}
