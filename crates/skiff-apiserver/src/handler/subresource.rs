//! Subresources with their own shapes: scale (autoscaling/v1 Scale), pods/binding, pods/eviction.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::delete::{DeleteOptions, delete_one};
use super::write::{Body, FieldValidation, Outcome, Patcher, WriteMode, commit_update, read_current};
use super::{Params, Target, json_value};
use crate::Api;
use crate::body::{content_type, decode_object};
use crate::status::{ApiError, ApiResult, FieldError};

/// The autoscaling/v1 Scale view of a workload.
fn scale_of(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": obj.pointer("/spec/selector").map(crate::selector::format_selector).unwrap_or_default(),
        },
    })
}

pub async fn get_scale(api: &Arc<Api>, t: &Target) -> ApiResult<Response> {
    let (obj, _) = read_current(api, t).await?;
    Ok(json_value(StatusCode::OK, &scale_of(&obj)))
}

pub async fn update_scale(
    api: &Arc<Api>,
    t: &Target,
    headers: &HeaderMap,
    params: &Params,
    body: Bytes,
    is_patch: bool,
) -> ApiResult<Response> {
    let patcher = if is_patch { Some(Patcher::new(&content_type(headers), &body)?) } else { None };
    let put_body = if is_patch { None } else { Some(decode_object(headers, &body)?) };
    let m = super::write::manager(headers, params, WriteMode::Main, Some("scale"));
    let (outcome, _) = commit_update(api, t, WriteMode::Main, FieldValidation::Ignore, Body::Object, params.dry_run()?, Some(&m), |old| {
        let current = scale_of(old);
        let scale = match (&patcher, &put_body) {
            (Some(p), _) => {
                let mut s = p.apply(&current)?;
                // A patch pins the version only when it names one.
                if s.pointer("/metadata/resourceVersion").is_none() {
                    s["metadata"]["resourceVersion"] = Value::Null;
                }
                s
            }
            (_, Some(b)) => b.clone(),
            _ => unreachable!("either a patch or a body"),
        };
        if scale.get("kind").and_then(Value::as_str) != Some("Scale") {
            return Err(ApiError::bad_request("the body must be an autoscaling/v1 Scale"));
        }
        let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                t.name(),
                &[FieldError::invalid("spec.replicas", &json!(replicas), "must be greater than or equal to 0")],
            ));
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        match scale.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            Some(rv) if !rv.is_empty() => new["metadata"]["resourceVersion"] = json!(rv),
            _ => {
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
            }
        }
        Ok(new)
    })
    .await?;
    let obj = match outcome {
        Outcome::Updated(v) | Outcome::Unchanged(v) | Outcome::Deleted(v) => v,
    };
    Ok(json_value(StatusCode::OK, &scale_of(&obj)))
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

/// pods/binding: assigns a pod to a node exactly once (what the scheduler calls).
pub async fn bind(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params, body: Bytes) -> ApiResult<Response> {
    let binding = decode_object(headers, &body)?;
    let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or_default().to_string();
    if node.is_empty() {
        return Err(ApiError::invalid("", "Binding", t.name(), &[FieldError::required("target.name", "")]));
    }
    commit_update(api, t, WriteMode::Whole, FieldValidation::Ignore, Body::Object, params.dry_run()?, None, |old| {
        if old.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some() {
            return Err(ApiError::conflict("", "pods", t.name(), "pod is being deleted, cannot be assigned to a host"));
        }
        if let Some(current) = old.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "",
                "pods/binding",
                t.name(),
                &format!("pod {} is already assigned to node {current:?}", t.name()),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        // As upstream's binding storage: the binding's annotations land on the pod, and the pod is
        // marked PodScheduled=True in the same write.
        if let Some(anns) = binding.pointer("/metadata/annotations").and_then(Value::as_object) {
            let meta = new["metadata"].as_object_mut().expect("stored objects have metadata");
            let target = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(t) = target.as_object_mut() {
                t.extend(anns.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        set_scheduled_condition(&mut new);
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        Ok(new)
    })
    .await?;
    Ok(json_value(StatusCode::CREATED, &success(201)))
}

fn set_scheduled_condition(pod: &mut Value) {
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let status = pod["status"].as_object_mut().expect("just ensured");
    let conds = status.entry("conditions").or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let list = conds.as_array_mut().expect("just ensured");
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    match list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled")) {
        Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => {}
        Some(c) => *c = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}),
        None => list.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now})),
    }
}

/// pods/eviction: deletes the pod with the eviction's DeleteOptions.
pub async fn evict(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params, body: Bytes) -> ApiResult<Response> {
    let eviction = decode_object(headers, &body)?;
    let opts_body = eviction.get("deleteOptions").map(|o| serde_json::to_vec(o).unwrap_or_default()).unwrap_or_default();
    let opts = DeleteOptions::parse(params, &opts_body)?;
    delete_one(api, t, &opts).await?;
    Ok(json_value(StatusCode::CREATED, &success(201)))
}
