//! The resource registry: one [`Descriptor`] per served resource drives the single generic REST
//! handler, discovery, Table printing and storage keys. Adding a built-in resource means adding a
//! descriptor (and, if it needs one, a strategy) in [`builtin`]; no handler code changes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::Codec;
use crate::strategy::meta::NameRule;
use crate::table::TableDef;

pub mod builtin;

/// Subresources a descriptor may serve. Each has one generic implementation in the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subresource {
    /// `/status`: writes change only `.status`; the main resource ignores `.status`.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale view of `.spec.replicas`.
    Scale,
    /// `pods/binding`: sets `spec.nodeName` once.
    Binding,
    /// `pods/eviction`: a policy/v1 Eviction deletes the pod.
    Eviction,
    /// `namespaces/finalize`: writes only `spec.finalizers`.
    Finalize,
    /// `pods/log`: the container's log, streamed from the pod's kubelet.
    Log,
    /// `pods/exec`, `pods/attach`, `pods/portforward`: upgraded streams to the pod's kubelet
    /// (served before routing, see `kubelet::stream`; listed here for discovery).
    Exec,
    Attach,
    PortForward,
    /// `nodes/proxy`: any request to the node's kubelet (served before routing, like Exec).
    Proxy,
}

impl Subresource {
    pub fn path(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Finalize => "finalize",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
            Subresource::Proxy => "proxy",
        }
    }
    /// (kind, group, version, verbs) as discovery lists it.
    pub fn discovery(self, parent_kind: &'static str) -> (&'static str, &'static str, &'static str, &'static [&'static str]) {
        match self {
            Subresource::Status | Subresource::Finalize => {
                let verbs: &[&str] = if self == Subresource::Finalize { &["update"] } else { &["get", "patch", "update"] };
                (parent_kind, "", "", verbs)
            }
            Subresource::Scale => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
            Subresource::Binding => ("Binding", "", "v1", &["create"]),
            Subresource::Eviction => ("Eviction", "policy", "v1", &["create"]),
            Subresource::Log => ("Pod", "", "", &["get"]),
            Subresource::Exec => ("PodExecOptions", "", "v1", &["create", "get"]),
            Subresource::Attach => ("PodAttachOptions", "", "v1", &["create", "get"]),
            Subresource::PortForward => ("PodPortForwardOptions", "", "v1", &["create", "get"]),
            Subresource::Proxy => ("NodeProxyOptions", "", "v1", &["create", "delete", "get", "patch", "update"]),
        }
    }
}

pub const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// Everything the generic machinery needs to know about one resource.
pub struct Descriptor {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Storage prefix as upstream's etcd layout, e.g. `/registry/services/specs/`.
    pub storage_prefix: &'static str,
    /// Whether `metadata.generation` is maintained (set to 1 on create, bumped on spec changes).
    pub generation: bool,
    /// Field selectors supported beyond metadata.name / metadata.namespace (JSON paths).
    pub field_selectors: &'static [&'static str],
    /// Which rule `metadata.name` must follow.
    pub name_rule: NameRule,
    pub table: TableDef,
    /// Typed normalisation, defaulting and validation through the k8s-openapi type.
    pub codec: Box<dyn Codec>,
}

impl Descriptor {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
    /// `/registry/<resource>/<namespace>/<name>` or `/registry/<resource>/<name>`.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.storage_prefix),
            _ => format!("{}{name}", self.storage_prefix),
        }
    }
    /// Prefix of all keys in one namespace (or of all keys when `namespace` is None).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.storage_prefix),
            _ => self.storage_prefix.to_string(),
        }
    }
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name" || (field == "metadata.namespace" && self.namespaced) || self.field_selectors.contains(&field)
    }
}

/// All served resources, indexed for the handler and discovery.
pub struct Registry {
    all: Vec<Arc<Descriptor>>,
    by_path: HashMap<(String, String, String), Arc<Descriptor>>,
}

impl Registry {
    pub fn new(descriptors: Vec<Descriptor>) -> Self {
        let all: Vec<Arc<Descriptor>> = descriptors.into_iter().map(Arc::new).collect();
        let by_path = all.iter().map(|d| ((d.group.to_string(), d.version.to_string(), d.plural.to_string()), d.clone())).collect();
        Registry { all, by_path }
    }

    pub fn builtin() -> Self {
        Self::new(builtin::descriptors())
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<Descriptor>> {
        self.by_path.get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    pub fn all(&self) -> &[Arc<Descriptor>] {
        &self.all
    }

    /// Group → versions, in the order the groups were registered (core first), as discovery lists them.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for d in &self.all {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, versions)) if !versions.contains(&d.version) => versions.push(d.version),
                Some(_) => {}
                None => out.push((d.group, vec![d.version])),
            }
        }
        out
    }

    pub fn in_group_version<'a>(&'a self, group: &'a str, version: &'a str) -> impl Iterator<Item = &'a Arc<Descriptor>> + 'a {
        self.all.iter().filter(move |d| d.group == group && d.version == version)
    }

    /// The descriptor whose storage prefix owns `key` (longest prefix wins).
    pub fn for_key(&self, key: &str) -> Option<&Arc<Descriptor>> {
        self.all.iter().filter(|d| key.starts_with(d.storage_prefix)).max_by_key(|d| d.storage_prefix.len())
    }
}
