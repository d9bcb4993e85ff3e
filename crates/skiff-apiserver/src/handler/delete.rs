//! delete and deletecollection: preconditions, propagationPolicy finalizers, graceful pod deletion,
//! and the namespace lifecycle (Terminating until its finalizers are gone).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_store::{Compare, Op, Txn};

use super::read::{Filter, list_page};
use super::write::{has_finalizers, is_deleting, read_current};
use super::{Params, Target, json_bytes, json_value};
use crate::Api;
use crate::status::{ApiError, ApiResult};

/// The parts of `DeleteOptions` (body or query) that matter here.
#[derive(Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn parse(params: &Params, body: &[u8]) -> ApiResult<DeleteOptions> {
        let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else if body.starts_with(b"k8s\0") {
            // Typed clients (kubectl 1.33) send DeleteOptions as Kubernetes protobuf.
            crate::protobuf::decode(body).map_err(ApiError::bad_request)?
        } else {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        let mut o = DeleteOptions {
            grace_period: b.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation: b.get("propagationPolicy").and_then(Value::as_str).map(str::to_string),
            uid: b.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
            resource_version: b.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string),
            dry_run: b.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x == "All")) || params.dry_run()?,
        };
        if let Some(g) = params.int("gracePeriodSeconds")? {
            o.grace_period = Some(g);
        }
        if let Some(p) = params.get("propagationPolicy") {
            o.propagation = Some(p.to_string());
        }
        let orphan = match params.get("orphanDependents") {
            Some(_) => Some(params.flag("orphanDependents")),
            None => b.get("orphanDependents").and_then(Value::as_bool),
        };
        if let Some(orphan) = orphan {
            o.propagation.get_or_insert_with(|| if orphan { "Orphan".into() } else { "Background".into() });
        }
        if let Some(p) = o.propagation.as_deref()
            && !["Orphan", "Background", "Foreground"].contains(&p)
        {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                &[crate::status::FieldError::not_supported("propagationPolicy", &json!(p), &["Foreground", "Background", "Orphan"])],
            ));
        }
        Ok(o)
    }
}

pub async fn delete(api: &Arc<Api>, t: &Target, params: &Params, body: Bytes) -> ApiResult<Response> {
    let opts = DeleteOptions::parse(params, &body)?;
    let (status, obj) = delete_one(api, t, &opts).await?;
    Ok(json_value(status, &obj))
}

/// Deletes one object; 200 with the object when it is gone, 202 when deletion is pending
/// (finalizers or graceful termination).
pub async fn delete_one(api: &Api, t: &Target, opts: &DeleteOptions) -> ApiResult<(StatusCode, Value)> {
    let desc = &t.desc;
    // Upstream's NamespaceLifecycle admission keeps the system namespaces.
    if desc.kind == "Namespace" && crate::bootstrap::UNDELETABLE_NAMESPACES.contains(&t.name()) {
        return Err(ApiError::forbidden("", "namespaces", t.name(), "this namespace may not be deleted"));
    }
    for _attempt in 0..16 {
        let (old, rev) = read_current(api, t).await?;
        let meta = old.get("metadata").cloned().unwrap_or(json!({}));
        if let Some(uid) = &opts.uid
            && meta.get("uid").and_then(Value::as_str) != Some(uid)
        {
            return Err(ApiError::conflict(
                desc.group,
                desc.plural,
                t.name(),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta.get("uid").and_then(Value::as_str).unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && *rv != rev.to_string()
        {
            return Err(ApiError::conflict(
                desc.group,
                desc.plural,
                t.name(),
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {rev}"),
            ));
        }
        let mut new = old.clone();
        let pending = plan_deletion(desc.kind, &mut new, opts);
        let key = t.key();
        if opts.dry_run {
            return Ok((if pending { StatusCode::ACCEPTED } else { StatusCode::OK }, if pending { new } else { old }));
        }
        if pending && new == old {
            // Already terminating with nothing new to record.
            return Ok((StatusCode::ACCEPTED, old));
        }
        let op = if pending {
            let mut stored = new.clone();
            if let Some(m) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            Op::Put { key: key.clone(), value: Bytes::from(serde_json::to_vec(&stored).unwrap_or_default()) }
        } else {
            Op::Delete { key: key.clone(), range_end: None }
        };
        let resp = api.store.txn(Txn { compare: vec![Compare::unchanged(&key, rev)], success: vec![op], failure: vec![] }).await?;
        if resp.succeeded {
            new["metadata"]["resourceVersion"] = json!(resp.revision.to_string());
            return Ok(if pending { (StatusCode::ACCEPTED, new) } else { (StatusCode::OK, old) });
        }
    }
    Err(ApiError::stale(desc.group, desc.plural, t.name()))
}

/// Mutates `obj` for a pending deletion; returns false when the object can go away now.
fn plan_deletion(kind: &str, obj: &mut Value, opts: &DeleteOptions) -> bool {
    let now = jiff::Timestamp::now();
    let stamp = |secs: i64| {
        let t = now.checked_add(jiff::SignedDuration::from_secs(secs)).unwrap_or(now);
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    // Graceful pod termination: a pod on a node gets a deadline the kubelet honours.
    if kind == "Pod" {
        let on_node = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let finished = matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded") | Some("Failed"));
        let spec_grace = obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
        let grace = opts.grace_period.unwrap_or(spec_grace).max(0);
        let current = obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
        if on_node && !finished && grace > 0 {
            if current.is_none_or(|c| grace < c) {
                obj["metadata"]["deletionTimestamp"] = json!(stamp(grace));
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            add_propagation_finalizer(obj, opts);
            return true;
        }
    }
    add_propagation_finalizer(obj, opts);
    if has_finalizers(obj) {
        if !is_deleting(obj) {
            obj["metadata"]["deletionTimestamp"] = json!(stamp(0));
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        if kind == "Namespace" {
            obj["status"]["phase"] = json!("Terminating");
        }
        return true;
    }
    false
}

fn add_propagation_finalizer(obj: &mut Value, opts: &DeleteOptions) {
    let fin = match opts.propagation.as_deref() {
        Some("Orphan") => "orphan",
        Some("Foreground") => "foregroundDeletion",
        _ => return,
    };
    if is_deleting(obj) && !obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|a| a.iter().any(|f| f == fin)) {
        // Upstream only adds propagation finalizers when the deletion starts.
        return;
    }
    let list = obj["metadata"].as_object_mut().map(|m| m.entry("finalizers").or_insert(json!([])));
    if let Some(Value::Array(a)) = list
        && !a.iter().any(|f| f == fin)
    {
        a.push(json!(fin));
    }
}

pub async fn delete_collection(api: &Arc<Api>, t: &Target, params: &Params, body: Bytes) -> ApiResult<Response> {
    let opts = DeleteOptions::parse(params, &body)?;
    let filter = Filter::parse(&t.desc, params)?;
    let page = list_page(api, t, &Params::parse(None), &filter).await?;
    let mut deleted = Vec::new();
    for item in page.items {
        let target = Target { desc: t.desc.clone(), namespace: item.namespace.clone(), name: Some(item.name.clone()), sub: None };
        match delete_one(api, &target, &opts).await {
            Ok((_, obj)) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": t.desc.list_kind,
        "apiVersion": t.desc.api_version(),
        "metadata": {"resourceVersion": api.cache.observed().to_string()},
        "items": deleted,
    });
    Ok(json_bytes(StatusCode::OK, Bytes::from(serde_json::to_vec(&list).unwrap_or_default())))
}
