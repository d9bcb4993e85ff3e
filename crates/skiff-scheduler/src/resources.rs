//! Resource vectors: what a pod requests and what a node can give, as upstream's scheduler
//! computes them (init containers, restartable sidecars, overhead, non-zero defaults for scoring).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{parse_milli, parse_value};

/// Upstream's defaults for containers without requests, used only for scoring so that
/// request-less pods still spread.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended and hugepages resources, by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            r.set(name, &q.0);
        }
        r
    }

    fn set(&mut self, name: &str, q: &str) {
        match name {
            "cpu" => self.milli_cpu = parse_milli(q).unwrap_or(0),
            "memory" => self.memory = parse_value(q).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral_storage = parse_value(q).unwrap_or(0),
            "pods" => {}
            other if is_scalar(other) => {
                self.scalar.insert(other.to_string(), parse_value(q).unwrap_or(0));
            }
            _ => {}
        }
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar.get(name).copied().unwrap_or(0)
    }
}

/// Extended resources (`example.com/foo`), hugepages and attachable volumes are "scalar" upstream.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-") || name.starts_with("attachable-volumes-") || (name.contains('/') && !name.starts_with("kubernetes.io/"))
}

/// A container's requests; limits stand in for missing requests, as API defaulting does upstream.
fn container_requests(c: &Container, non_zero: bool) -> Resources {
    let res = c.resources.as_ref();
    let mut merged: BTreeMap<String, Quantity> = res.and_then(|r| r.limits.clone()).unwrap_or_default();
    if let Some(req) = res.and_then(|r| r.requests.as_ref()) {
        merged.extend(req.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let mut r = Resources::from_list(Some(&merged));
    if non_zero {
        if !merged.contains_key("cpu") {
            r.milli_cpu = DEFAULT_MILLI_CPU;
        }
        if !merged.contains_key("memory") {
            r.memory = DEFAULT_MEMORY;
        }
    }
    r
}

/// The pod's effective request: max(sum of app containers + sidecars, each init container on top of
/// the sidecars started before it) + overhead. `non_zero` applies the scoring defaults.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::default() };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c, non_zero));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, non_zero);
        if c.restart_policy.as_deref() == Some("Always") {
            sum.add(&r);
            sidecars.add(&r);
            init_max.max_with(&sidecars);
        } else {
            let mut with_sidecars = r;
            with_sidecars.add(&sidecars);
            init_max.max_with(&with_sidecars);
        }
    }
    sum.max_with(&init_max);
    if let Some(overhead) = spec.overhead.as_ref() {
        sum.add(&Resources::from_list(Some(overhead)));
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": v})).unwrap()
    }

    #[test]
    fn requests_sum_containers_and_take_the_init_max() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}],
            "overhead": {"cpu": "10m"},
        }));
        let r = pod_requests(&p, false);
        assert_eq!(r.milli_cpu, 1010);
        assert_eq!(r.memory, 100 << 20);
    }

    #[test]
    fn sidecars_add_to_containers_and_to_later_init_containers() {
        let p = pod(json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                {"name": "i", "resources": {"requests": {"cpu": "500m"}}},
            ],
        }));
        assert_eq!(pod_requests(&p, false).milli_cpu, 550);
    }

    #[test]
    fn limits_stand_in_for_requests_and_non_zero_defaults_apply_for_scoring() {
        let p = pod(json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "300m", "example.com/gpu": "2"}}},
            {"name": "b"},
        ]}));
        let r = pod_requests(&p, false);
        assert_eq!((r.milli_cpu, r.memory, r.scalar("example.com/gpu")), (300, 0, 2));
        let nz = pod_requests(&p, true);
        assert_eq!((nz.milli_cpu, nz.memory), (400, 2 * DEFAULT_MEMORY));
    }
}
