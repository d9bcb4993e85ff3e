//! A container's environment as upstream's kubelet builds it: `envFrom` sources first, then `env`
//! in order (later names win), each value with `$(VAR)` references to earlier variables
//! expanded; values from the pod's own fields, its resources, ConfigMaps and Secrets.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret};
use kube::api::Api;

use crate::cri::v1 as cri;

/// Why a container cannot be configured (upstream's CreateContainerConfigError message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// ConfigMaps and Secrets of one namespace, fetched once per sync.
pub struct Sources {
    client: kube::Client,
    namespace: String,
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl Sources {
    pub fn new(client: kube::Client, namespace: &str) -> Sources {
        Sources { client, namespace: namespace.into(), config_maps: HashMap::new(), secrets: HashMap::new() }
    }

    /// A ConfigMap's data (binaryData decoded as bytes is not text; it is included for volumes only).
    pub async fn config_map(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let cm = api.get_opt(name).await.map_err(|e| ConfigError(format!("reading configmap {:?}: {e}", name)))?;
            self.config_maps.insert(name.into(), cm.map(|c| c.data.unwrap_or_default()));
        }
        Ok(self.config_maps[name].as_ref())
    }

    pub async fn secret(&mut self, name: &str) -> Result<Option<&BTreeMap<String, Vec<u8>>>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let s = api.get_opt(name).await.map_err(|e| ConfigError(format!("reading secret {:?}: {e}", name)))?;
            let data = s.map(|s| {
                let mut d: BTreeMap<String, Vec<u8>> = s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    d.insert(k, v.into_bytes());
                }
                d
            });
            self.secrets.insert(name.into(), data);
        }
        Ok(self.secrets[name].as_ref())
    }
}

/// Pod facts a fieldRef can name that are not in the object the API sent (status not posted yet).
pub struct Runtime<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub node_name: &'a str,
}

/// Upstream's `$(VAR)` expansion: `$$` is a literal `$`, an undefined reference stays as written.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix('(')
            && let Some(end) = a.find(')')
        {
            let name = &a[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &a[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value a downward-API field path names.
pub fn field_value(pod: &Pod, sel: &ObjectFieldSelector, rt: &Runtime<'_>) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let path = sel.field_path.as_str();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", &m.labels).or_else(|| keyed("metadata.annotations['", &m.annotations)) {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| rt.node_name.into()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => rt.pod_ip.into(),
        "status.hostIP" | "status.hostIPs" => rt.host_ip.into(),
        other => return Err(ConfigError(format!("unsupported fieldRef fieldPath {other:?}"))),
    })
}

/// `key="value"` lines, as upstream's downward API formats label and annotation maps.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter().flatten().map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone()))).collect::<Vec<_>>().join("\n")
}

/// A resourceFieldRef (limits.cpu, requests.memory, ...) in units of its divisor, rounded up as
/// upstream; an unset limit falls back to the node's allocatable.
pub fn resource_value(
    pod: &Pod,
    own: Option<&Container>,
    sel: &ResourceFieldSelector,
    node_cpus: i64,
    node_memory: i64,
) -> Result<String, ConfigError> {
    use skiff_scheduler::quantity::{parse_milli, parse_value};
    let c = match &sel.container_name {
        Some(n) if !n.is_empty() => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).find(|c| &c.name == n))
            .ok_or_else(|| ConfigError(format!("resourceFieldRef names container {n:?}, which the pod does not have")))?,
        _ => own.ok_or_else(|| ConfigError("resourceFieldRef needs containerName here".into()))?,
    };
    let (kind, name) = sel.resource.split_once('.').ok_or_else(|| ConfigError(format!("unsupported resource {:?}", sel.resource)))?;
    let r = c.resources.as_ref();
    let map = match kind {
        "limits" => r.and_then(|r| r.limits.as_ref()),
        "requests" => r.and_then(|r| r.requests.as_ref()),
        _ => return Err(ConfigError(format!("unsupported resource {:?}", sel.resource))),
    };
    let raw = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    let divisor = sel.divisor.as_ref().map(|d| d.0.clone());
    let value = match name {
        "cpu" => {
            let milli = raw.and_then(|q| parse_milli(&q)).unwrap_or(if kind == "limits" { node_cpus * 1000 } else { 0 });
            let div = divisor.and_then(|d| parse_milli(&d)).filter(|d| *d > 0).unwrap_or(1000);
            (milli + div - 1) / div
        }
        "memory" | "ephemeral-storage" => {
            let v = raw.and_then(|q| parse_value(&q)).unwrap_or(if kind == "limits" && name == "memory" { node_memory } else { 0 });
            let div = divisor.and_then(|d| parse_value(&d)).filter(|d| *d > 0).unwrap_or(1);
            (v + div - 1) / div
        }
        other => return Err(ConfigError(format!("unsupported resource {other:?}"))),
    };
    Ok(value.to_string())
}

/// The container's environment.
pub async fn resolve(
    pod: &Pod,
    c: &Container,
    src: &mut Sources,
    rt: &Runtime<'_>,
    node_cpus: i64,
    node_memory: i64,
) -> Result<Vec<cri::KeyValue>, ConfigError> {
    let mut order: Vec<String> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set = |order: &mut Vec<String>, vars: &mut HashMap<String, String>, k: String, v: String| {
        if vars.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match src.config_map(&r.name).await? {
                Some(d) => {
                    for (k, v) in d.clone() {
                        set(&mut order, &mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match src.secret(&r.name).await? {
                Some(d) => {
                    for (k, v) in d.clone() {
                        set(&mut order, &mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                field_value(pod, f, rt)?
            } else if let Some(r) = &vf.resource_field_ref {
                resource_value(pod, Some(c), r, node_cpus, node_memory)?
            } else if let Some(r) = &vf.config_map_key_ref {
                let optional = r.optional == Some(true);
                match src.config_map(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => return Err(ConfigError(format!("couldn't find key {} in ConfigMap {}/{}", r.key, src.namespace, r.name))),
                    },
                    None if optional => continue,
                    None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
                }
            } else if let Some(r) = &vf.secret_key_ref {
                let optional = r.optional == Some(true);
                match src.secret(&r.name).await? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => return Err(ConfigError(format!("couldn't find key {} in Secret {}/{}", r.key, src.namespace, r.name))),
                    },
                    None if optional => continue,
                    None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut order, &mut vars, e.name.clone(), value);
    }
    Ok(order.into_iter().map(|k| cri::KeyValue { value: vars[&k].clone(), key: k }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream() {
        let vars: HashMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("plain", &vars), "plain");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn field_and_resource_refs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}}}]}
        }))
        .unwrap();
        let rt = Runtime { pod_ip: "10.42.0.5", host_ip: "10.0.0.1", node_name: "n1" };
        let f = |p: &str| field_value(&pod, &ObjectFieldSelector { field_path: p.into(), api_version: None }, &rt).unwrap();
        assert_eq!(f("metadata.name"), "p");
        assert_eq!(f("metadata.labels['app']"), "web");
        assert_eq!(f("status.podIP"), "10.42.0.5");
        assert_eq!(f("metadata.labels"), "app=\"web\"");
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let r = |res: &str, div: Option<&str>| {
            let sel = ResourceFieldSelector {
                resource: res.into(),
                divisor: div.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
                container_name: None,
            };
            resource_value(&pod, Some(c), &sel, 2, 1 << 30).unwrap()
        };
        assert_eq!(r("limits.cpu", None), "2");
        assert_eq!(r("limits.cpu", Some("1m")), "1500");
        assert_eq!(r("limits.memory", Some("1Mi")), "64");
        assert_eq!(r("requests.cpu", None), "0");
    }
}
