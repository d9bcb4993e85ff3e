//! Workloads (apps/v1, batch/v1, ReplicationController): defaults, the selector-matches-template rule,
//! selector immutability, and the pod template's own defaults and validation.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::pod::{default_pod_spec, validate_pod_spec};
use super::{Env, Strategy, immutable};
use crate::codec::AdmitError;
use crate::selector::LabelSelector as Sel;
use crate::status::FieldError;

fn template_labels(t: Option<&PodTemplateSpec>) -> BTreeMap<String, String> {
    t.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default()
}

fn default_template(t: Option<&mut PodTemplateSpec>) {
    if let Some(spec) = t.and_then(|t| t.spec.as_mut()) {
        default_pod_spec(spec);
    }
}

/// The checks every selector-based workload shares.
fn validate_selector_and_template(
    selector: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    restart_policies: &[&str],
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match selector {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let empty =
                sel.match_labels.as_ref().is_none_or(|m| m.is_empty()) && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty());
            if empty {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    &serde_json::to_value(sel).unwrap_or_default(),
                    "empty selector is invalid for deployment",
                ));
            } else {
                match Sel::from_label_selector(sel) {
                    Ok(parsed) => {
                        let labels = template_labels(template);
                        if !parsed.matches(&labels) {
                            errs.push(FieldError::invalid(
                                "spec.template.metadata.labels",
                                &json!(labels),
                                "`selector` does not match template `labels`",
                            ));
                        }
                    }
                    Err(e) => errs.push(FieldError::invalid("spec.selector", &serde_json::to_value(sel).unwrap_or_default(), e)),
                }
            }
        }
    }
    match template.and_then(|t| t.spec.as_ref()) {
        None => errs.push(FieldError::required("spec.template", "")),
        Some(spec) => {
            errs.extend(validate_pod_spec(spec, "spec.template.spec"));
            let rp = spec.restart_policy.as_deref().unwrap_or("Always");
            if !restart_policies.contains(&rp) {
                errs.push(FieldError::not_supported("spec.template.spec.restartPolicy", &json!(rp), restart_policies));
            }
        }
    }
    errs
}

fn non_negative(errs: &mut Vec<FieldError>, field: &str, v: Option<i32>) {
    if let Some(v) = v
        && v < 0
    {
        errs.push(FieldError::invalid(field, &json!(v), "must be greater than or equal to 0"));
    }
}

pub struct DeploymentStrategy;
impl Strategy<Deployment> for DeploymentStrategy {
    fn default(&self, d: &mut Deployment, _old: Option<&Deployment>, _env: &Env) -> Result<(), AdmitError> {
        let spec = d.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec.strategy.get_or_insert_with(Default::default);
        let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if ty == "RollingUpdate" {
            let ru = strategy.rolling_update.get_or_insert_with(Default::default);
            ru.max_surge.get_or_insert(IntOrString::String("25%".into()));
            ru.max_unavailable.get_or_insert(IntOrString::String("25%".into()));
        }
        default_template(Some(&mut spec.template));
        Ok(())
    }
    fn validate(&self, d: &Deployment, old: Option<&Deployment>) -> Vec<FieldError> {
        let Some(spec) = d.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let mut errs = validate_selector_and_template(Some(&spec.selector), Some(&spec.template), &["Always"]);
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        if let Some(ty) = spec.strategy.as_ref().and_then(|s| s.type_.as_deref())
            && !["Recreate", "RollingUpdate"].contains(&ty)
        {
            errs.push(FieldError::not_supported("spec.strategy.type", &json!(ty), &["Recreate", "RollingUpdate"]));
        }
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            immutable(&mut errs, "spec.selector", &spec.selector, &old.selector);
        }
        errs
    }
}

pub struct ReplicaSetStrategy;
impl Strategy<ReplicaSet> for ReplicaSetStrategy {
    fn default(&self, rs: &mut ReplicaSet, _old: Option<&ReplicaSet>, _env: &Env) -> Result<(), AdmitError> {
        let spec = rs.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        default_template(spec.template.as_mut());
        Ok(())
    }
    fn validate(&self, rs: &ReplicaSet, old: Option<&ReplicaSet>) -> Vec<FieldError> {
        let Some(spec) = rs.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let mut errs = validate_selector_and_template(Some(&spec.selector), spec.template.as_ref(), &["Always"]);
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            immutable(&mut errs, "spec.selector", &spec.selector, &old.selector);
        }
        errs
    }
}

pub struct StatefulSetStrategy;
impl Strategy<StatefulSet> for StatefulSetStrategy {
    fn default(&self, s: &mut StatefulSet, _old: Option<&StatefulSet>, _env: &Env) -> Result<(), AdmitError> {
        let spec = s.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
        let us = spec.update_strategy.get_or_insert_with(Default::default);
        if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            us.rolling_update.get_or_insert_with(Default::default).partition.get_or_insert(0);
        }
        let retention = spec.persistent_volume_claim_retention_policy.get_or_insert_with(Default::default);
        retention.when_deleted.get_or_insert_with(|| "Retain".into());
        retention.when_scaled.get_or_insert_with(|| "Retain".into());
        default_template(Some(&mut spec.template));
        Ok(())
    }
    fn validate(&self, s: &StatefulSet, old: Option<&StatefulSet>) -> Vec<FieldError> {
        let Some(spec) = s.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let mut errs = validate_selector_and_template(Some(&spec.selector), Some(&spec.template), &["Always"]);
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            immutable(&mut errs, "spec.selector", &spec.selector, &old.selector);
            immutable(&mut errs, "spec.serviceName", &spec.service_name, &old.service_name);
        }
        errs
    }
}

pub struct DaemonSetStrategy;
impl Strategy<DaemonSet> for DaemonSetStrategy {
    fn default(&self, ds: &mut DaemonSet, _old: Option<&DaemonSet>, _env: &Env) -> Result<(), AdmitError> {
        let spec = ds.spec.get_or_insert_with(Default::default);
        spec.revision_history_limit.get_or_insert(10);
        let us = spec.update_strategy.get_or_insert_with(Default::default);
        if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            let ru = us.rolling_update.get_or_insert_with(Default::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        default_template(Some(&mut spec.template));
        Ok(())
    }
    fn validate(&self, ds: &DaemonSet, old: Option<&DaemonSet>) -> Vec<FieldError> {
        let Some(spec) = ds.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let mut errs = validate_selector_and_template(Some(&spec.selector), Some(&spec.template), &["Always"]);
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            immutable(&mut errs, "spec.selector", &spec.selector, &old.selector);
        }
        errs
    }
}

pub struct ReplicationControllerStrategy;
impl Strategy<ReplicationController> for ReplicationControllerStrategy {
    fn default(&self, rc: &mut ReplicationController, _old: Option<&ReplicationController>, _env: &Env) -> Result<(), AdmitError> {
        let spec = rc.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        // An RC without a selector selects its template's labels (upstream's defaulting).
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            let labels = template_labels(spec.template.as_ref());
            if !labels.is_empty() {
                spec.selector = Some(labels);
            }
        }
        default_template(spec.template.as_mut());
        Ok(())
    }
    fn validate(&self, rc: &ReplicationController, _old: Option<&ReplicationController>) -> Vec<FieldError> {
        let Some(spec) = rc.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let selector = spec.selector.clone().map(|m| LabelSelector { match_labels: Some(m), ..Default::default() });
        let mut errs = validate_selector_and_template(selector.as_ref(), spec.template.as_ref(), &["Always"]);
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        errs
    }
}

pub struct JobStrategy;
const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
impl Strategy<Job> for JobStrategy {
    fn default(&self, job: &mut Job, old: Option<&Job>, _env: &Env) -> Result<(), AdmitError> {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let spec = job.spec.get_or_insert_with(Default::default);
        // Both unset: one pod. Parallelism alone leaves completions unset (a work queue).
        if spec.completions.is_none() && spec.parallelism.is_none() {
            spec.completions = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        spec.backoff_limit.get_or_insert(6);
        spec.completion_mode.get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        let replacement = if spec.pod_failure_policy.is_some() { "Failed" } else { "TerminatingOrFailed" };
        spec.pod_replacement_policy.get_or_insert_with(|| replacement.into());
        if old.is_none() && spec.manual_selector != Some(true) {
            // Upstream generates a selector on the job's uid and stamps it into the template.
            let mut labels = BTreeMap::new();
            labels.insert(CONTROLLER_UID.to_string(), uid.clone());
            spec.selector = Some(LabelSelector { match_labels: Some(labels), ..Default::default() });
            let meta = spec.template.metadata.get_or_insert_with(Default::default);
            let tl = meta.labels.get_or_insert_with(Default::default);
            for (k, v) in [
                (CONTROLLER_UID, uid.as_str()),
                ("batch.kubernetes.io/job-name", name.as_str()),
                ("controller-uid", uid.as_str()),
                ("job-name", name.as_str()),
            ] {
                tl.insert(k.into(), v.into());
            }
        }
        default_template(Some(&mut spec.template));
        Ok(())
    }
    fn validate(&self, job: &Job, old: Option<&Job>) -> Vec<FieldError> {
        let Some(spec) = job.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let mut errs = validate_selector_and_template(spec.selector.as_ref(), Some(&spec.template), &["OnFailure", "Never"]);
        non_negative(&mut errs, "spec.parallelism", spec.parallelism);
        non_negative(&mut errs, "spec.completions", spec.completions);
        non_negative(&mut errs, "spec.backoffLimit", spec.backoff_limit);
        if spec.completion_mode.as_deref() == Some("Indexed") && spec.completions.is_none() {
            errs.push(FieldError::required("spec.completions", "when completion mode is Indexed"));
        }
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            immutable(&mut errs, "spec.selector", &spec.selector, &old.selector);
            immutable(&mut errs, "spec.completions", &spec.completions, &old.completions);
        }
        errs
    }
}

pub struct CronJobStrategy;
impl Strategy<CronJob> for CronJobStrategy {
    fn default(&self, cj: &mut CronJob, _old: Option<&CronJob>, _env: &Env) -> Result<(), AdmitError> {
        let spec = cj.spec.get_or_insert_with(Default::default);
        spec.concurrency_policy.get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(js) = spec.job_template.spec.as_mut() {
            js.backoff_limit.get_or_insert(6);
            js.completion_mode.get_or_insert_with(|| "NonIndexed".into());
            js.suspend.get_or_insert(false);
            default_template(Some(&mut js.template));
        }
        Ok(())
    }
    fn validate(&self, cj: &CronJob, _old: Option<&CronJob>) -> Vec<FieldError> {
        let Some(spec) = cj.spec.as_ref() else { return vec![FieldError::required("spec", "")] };
        let mut errs = Vec::new();
        let fields = spec.schedule.split_whitespace().count();
        let macro_ok = spec.schedule.starts_with('@');
        if spec.schedule.is_empty() {
            errs.push(FieldError::required("spec.schedule", ""));
        } else if !macro_ok && fields != 5 {
            errs.push(FieldError::invalid(
                "spec.schedule",
                &json!(spec.schedule),
                format!("expected exactly 5 fields, found {fields}: {}", spec.schedule),
            ));
        }
        match spec.job_template.spec.as_ref() {
            None => errs.push(FieldError::required("spec.jobTemplate.spec", "")),
            Some(js) => match js.template.spec.as_ref() {
                None => errs.push(FieldError::required("spec.jobTemplate.spec.template.spec", "")),
                Some(ps) => errs.extend(validate_pod_spec(ps, "spec.jobTemplate.spec.template.spec")),
            },
        }
        errs
    }
}
