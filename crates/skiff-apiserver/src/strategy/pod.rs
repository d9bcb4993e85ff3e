//! Pods: upstream's defaulting (SetDefaults_PodSpec/Container plus the admission plugins that every
//! cluster runs: ServiceAccount, Priority, DefaultTolerationSeconds) and the validation users hit most.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus, Toleration};
use serde_json::json;

use super::meta::{NameRule, validate_name};
use super::{Env, PriorityClassInfo, Strategy};
use crate::codec::AdmitError;
use crate::status::{ApiError, FieldError};

pub struct PodStrategy;

impl Strategy<Pod> for PodStrategy {
    fn default(&self, pod: &mut Pod, old: Option<&Pod>, env: &Env) -> Result<(), AdmitError> {
        let spec = pod.spec.get_or_insert_with(Default::default);
        match old {
            None => {
                default_pod_spec(spec);
                resolve_priority(spec, &env.priority_classes.all())?;
                admission_defaults(spec, env.toleration_seconds);
                pod.status =
                    Some(PodStatus { phase: Some("Pending".into()), qos_class: Some(qos_class(spec).into()), ..Default::default() });
            }
            Some(old) => {
                // Defaults are re-applied so a replace without them does not read as a change.
                default_pod_spec(spec);
                if spec.service_account_name.is_none() {
                    spec.service_account_name = old.spec.as_ref().and_then(|s| s.service_account_name.clone());
                    spec.service_account = spec.service_account_name.clone();
                }
            }
        }
        Ok(())
    }

    fn validate(&self, pod: &Pod, old: Option<&Pod>) -> Vec<FieldError> {
        let Some(spec) = pod.spec.as_ref() else {
            return vec![FieldError::required("spec", "")];
        };
        let mut errs = validate_pod_spec(spec, "spec");
        if let (Some(old), Some(old_spec)) = (old, old.and_then(|o| o.spec.as_ref())) {
            let _ = old;
            // Upstream allows only image, activeDeadlineSeconds, tolerations (additions) and a few
            // scheduling gates to change; everything else is immutable.
            let strip = |s: &PodSpec| {
                let mut s = s.clone();
                for c in s.containers.iter_mut().chain(s.init_containers.iter_mut().flatten()) {
                    c.image = None;
                }
                s.active_deadline_seconds = None;
                s.tolerations = None;
                s.termination_grace_period_seconds = None;
                s.scheduling_gates = None;
                s
            };
            let node_name_set_by_binding = old_spec.node_name.is_none() && spec.node_name.is_some();
            let mut new_stripped = strip(spec);
            if node_name_set_by_binding {
                new_stripped.node_name = None;
            }
            if new_stripped != strip(old_spec) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        errs
    }
}

/// Defaults of a PodSpec (also applied to workload templates).
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    for c in spec.containers.iter_mut() {
        default_container(c);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
    if spec.service_account.is_some() && spec.service_account_name.is_none() {
        spec.service_account_name = spec.service_account.clone();
    }
}

fn default_container(c: &mut Container) {
    c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy.get_or_insert_with(|| "File".into());
    c.resources.get_or_insert_with(Default::default);
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or_default();
        // A digest pins the image; otherwise only an explicit non-latest tag does.
        let last = image.rsplit('/').next().unwrap_or(image);
        let tag = last.split_once(':').map(|(_, t)| t);
        let pinned = image.contains('@') || matches!(tag, Some(t) if t != "latest");
        c.image_pull_policy = Some(if pinned { "IfNotPresent" } else { "Always" }.into());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}

/// Upstream's Priority admission plugin: the PriorityClass (named, else the global default) sets
/// spec.priority and the default preemptionPolicy; a missing class is a 403, a hand-set priority
/// that disagrees with the class is rejected.
fn resolve_priority(spec: &mut PodSpec, classes: &[PriorityClassInfo]) -> Result<(), AdmitError> {
    let class = match spec.priority_class_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => match classes.iter().find(|c| c.name == name) {
            Some(c) => Some(c),
            None => {
                return Err(AdmitError::Api(ApiError::forbidden("", "pods", "", &format!("no PriorityClass with name {name} was found"))));
            }
        },
        None => classes.iter().filter(|c| c.global_default).min_by_key(|c| c.value),
    };
    let Some(class) = class else { return Ok(()) };
    if let Some(p) = spec.priority
        && p != class.value
    {
        return Err(AdmitError::Api(ApiError::forbidden(
            "",
            "pods",
            "",
            &format!(
                "the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {} from the given PriorityClass name",
                class.value
            ),
        )));
    }
    spec.priority_class_name = Some(class.name.clone());
    spec.priority = Some(class.value);
    if spec.preemption_policy.is_none() {
        spec.preemption_policy = class.preemption_policy.clone();
    }
    Ok(())
}

/// What the ServiceAccount, Priority and DefaultTolerationSeconds admission plugins add on create.
fn admission_defaults(spec: &mut PodSpec, seconds: crate::strategy::DefaultTolerationSeconds) {
    if spec.service_account_name.as_deref().unwrap_or_default().is_empty() {
        spec.service_account_name = Some("default".into());
    }
    spec.service_account = spec.service_account_name.clone();
    if spec.priority_class_name.is_none() {
        spec.priority.get_or_insert(0);
    }
    spec.preemption_policy.get_or_insert_with(|| "PreemptLowerPriority".into());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, secs) in [("node.kubernetes.io/not-ready", seconds.not_ready), ("node.kubernetes.io/unreachable", seconds.unreachable)] {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key) && matches!(t.effect.as_deref(), Some("NoExecute") | None)
                || (t.key.is_none() && t.operator.as_deref() == Some("Exists"))
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(secs),
                ..Default::default()
            });
        }
    }
}

/// Upstream's QoS class: Guaranteed when every container has equal cpu+memory requests and limits,
/// BestEffort when none has any, else Burstable.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let containers: Vec<&Container> = spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(res));
            let q = req.and_then(|m| m.get(res)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Validation of a PodSpec at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &PodSpec, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = HashSet::new();
    let groups = [("containers", &spec.containers[..]), ("initContainers", spec.init_containers.as_deref().unwrap_or_default())];
    for (group, list) in groups {
        for (i, c) in list.iter().enumerate() {
            let p = format!("{path}.{group}[{i}]");
            if c.name.is_empty() {
                errs.push(FieldError::required(format!("{p}.name"), ""));
            } else {
                errs.extend(validate_name(&format!("{p}.name"), &c.name, NameRule::Label));
                if !names.insert(c.name.clone()) {
                    errs.push(FieldError::duplicate(format!("{p}.name"), &json!(c.name)));
                }
            }
            if c.image.as_deref().unwrap_or_default().trim().is_empty() {
                errs.push(FieldError::required(format!("{p}.image"), ""));
            }
            if let Some(policy) = c.image_pull_policy.as_deref()
                && !["Always", "IfNotPresent", "Never"].contains(&policy)
            {
                errs.push(FieldError::not_supported(format!("{p}.imagePullPolicy"), &json!(policy), &["Always", "IfNotPresent", "Never"]));
            }
            for (j, port) in c.ports.iter().flatten().enumerate() {
                if !(1..=65535).contains(&port.container_port) {
                    errs.push(FieldError::invalid(
                        format!("{p}.ports[{j}].containerPort"),
                        &json!(port.container_port),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        errs.push(FieldError::not_supported(format!("{path}.restartPolicy"), &json!(rp), &["Always", "OnFailure", "Never"]));
    }
    if let Some(dp) = spec.dns_policy.as_deref()
        && !["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"].contains(&dp)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            &json!(dp),
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_typed;

    fn pod(containers: serde_json::Value) -> Pod {
        decode_typed::<Pod>(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}}))
            .unwrap()
            .0
    }

    #[test]
    fn defaults_like_upstream() {
        let mut p = pod(json!([{"name": "c", "image": "busybox"}, {"name": "d", "image": "busybox:1.36"}]));
        PodStrategy
            .default(
                &mut p,
                None,
                &crate::strategy::Env {
                    services: Default::default(),
                    priority_classes: Default::default(),
                    toleration_seconds: Default::default(),
                },
            )
            .unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(spec.containers[1].image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 2);
        assert_eq!(p.status.as_ref().unwrap().qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn rejects_missing_image_and_duplicate_names() {
        let p = pod(json!([{"name": "c"}, {"name": "c", "image": "x"}]));
        let errs = PodStrategy.validate(&p, None);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.containers[0].image"));
        assert!(fields.contains(&"spec.containers[1].name"));
    }

    #[test]
    fn priority_comes_from_the_class_or_the_global_default() {
        let classes = vec![
            PriorityClassInfo { name: "high".into(), value: 1000, preemption_policy: Some("Never".into()), global_default: false },
            PriorityClassInfo { name: "normal".into(), value: 10, preemption_policy: None, global_default: true },
        ];
        let mut spec = PodSpec { priority_class_name: Some("high".into()), ..Default::default() };
        resolve_priority(&mut spec, &classes).unwrap();
        assert_eq!((spec.priority, spec.preemption_policy.as_deref()), (Some(1000), Some("Never")));
        let mut spec = PodSpec::default();
        resolve_priority(&mut spec, &classes).unwrap();
        assert_eq!((spec.priority, spec.priority_class_name.as_deref()), (Some(10), Some("normal")));
        let mut spec = PodSpec { priority_class_name: Some("missing".into()), ..Default::default() };
        let Err(AdmitError::Api(e)) = resolve_priority(&mut spec, &classes) else { panic!("missing class accepted") };
        assert!(e.message.contains("no PriorityClass with name missing was found"), "{}", e.message);
        let mut spec = PodSpec { priority_class_name: Some("high".into()), priority: Some(5), ..Default::default() };
        assert!(resolve_priority(&mut spec, &classes).is_err());
    }
}
