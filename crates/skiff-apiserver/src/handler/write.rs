//! create, update (PUT) and patch, for main resources and the status/finalize subresources.
//!
//! Every write goes through [`prepare_create`] or [`commit_update`], which own the metadata rules
//! (system fields, generation, status-vs-spec), typed admission, and the compare-and-swap on the
//! store revision.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use skiff_store::{Compare, Op, RangeRequest, Revision, Txn};

use super::{Params, Target, json_value, with_warnings};
use crate::Api;
use crate::body::{content_type, decode_object, decode_yaml};
use crate::codec::AdmitError;
use crate::fields::apply::{ApplyRequest, apply_create};
use crate::fields::managed::{track_create, track_update};
use crate::fields::{Manager, Scope};
pub use crate::patch::Patcher;
use crate::patch::schema;
use crate::registry::{Descriptor, Subresource};
use crate::status::{ApiError, ApiResult, FieldError};
use crate::strategy::meta::{validate_labels_annotations, validate_name};

/// Which part of the object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// The main resource: everything but `.status` (when the resource has a status subresource).
    Main,
    /// `/status`: only `.status`.
    Status,
    /// `namespaces/{n}/finalize`: only `spec.finalizers`.
    Finalize,
    /// A server-side subresource that owns the whole write (pods/binding sets spec.nodeName and
    /// the PodScheduled condition together, as upstream's binding storage does).
    Whole,
}

impl WriteMode {
    pub fn for_sub(sub: Option<Subresource>) -> WriteMode {
        match sub {
            Some(Subresource::Status) => WriteMode::Status,
            Some(Subresource::Finalize) => WriteMode::Finalize,
            _ => WriteMode::Main,
        }
    }
}

/// The writer recorded in managedFields for a client request.
pub fn manager(headers: &HeaderMap, params: &Params, mode: WriteMode, sub: Option<&'static str>) -> Manager {
    let ua = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok());
    let sub = sub.or(match mode {
        WriteMode::Status => Some("status"),
        _ => None,
    });
    Manager::from_request(params.get("fieldManager"), ua, sub)
}

fn scope(desc: &Descriptor, mode: WriteMode) -> Scope {
    match mode {
        WriteMode::Status => Scope::Status,
        _ => Scope::Main { status_is_separate: desc.has(Subresource::Status) },
    }
}

/// How unknown fields are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(params: &Params) -> ApiResult<FieldValidation> {
        match params.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!("fieldValidation parameter unsupported: {other}"))),
        }
    }

    /// Turns unknown fields into warnings (Warn) or, for Strict, the strict decoding error's text.
    fn apply(self, unknown: &[String]) -> Result<Vec<String>, String> {
        if unknown.is_empty() || self == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let msgs: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        match self {
            FieldValidation::Strict => Err(format!("strict decoding error: {}", msgs.join(", "))),
            _ => Ok(msgs),
        }
    }
}

/// What the client sent, which decides how upstream words a strict field validation failure: an
/// object (create, update) "cannot be handled as a <Kind>" (400); a JSON/merge/strategic patch is
/// a 422 on the `patch` field quoting the patched object; an apply configuration is a plain 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Object,
    Apply,
    Patch,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("just ensured")
}

fn meta_str<'a>(obj: &'a Value, k: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(k)).and_then(Value::as_str)
}

/// The name upstream's generateName produces: prefix + 5 random characters from a consonant-digit alphabet.
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let prefix = if prefix.len() > 58 { &prefix[..58] } else { prefix };
    let suffix: String = (0..5).map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char).collect();
    format!("{prefix}{suffix}")
}

/// Checks apiVersion/kind of a body against the target resource. Missing ones default to the
/// endpoint's, as upstream's decoder does (it decodes with the endpoint's kind as the default).
pub fn check_type(desc: &Descriptor, obj: &mut Value) -> ApiResult<()> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    if !av.is_empty() && av != desc.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            desc.api_version()
        )));
    }
    if !kind.is_empty() && kind != desc.kind {
        return Err(ApiError::bad_request(format!("the kind in the data ({kind}) does not match the expected kind ({})", desc.kind)));
    }
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(desc.api_version()));
        o.insert("kind".into(), json!(desc.kind));
    }
    Ok(())
}

fn invalid(desc: &Descriptor, name: &str, errs: Vec<FieldError>) -> ApiError {
    ApiError::invalid(desc.group, desc.kind, name, &errs)
}

/// Typed admission with the error mapping every write shares.
fn admit(
    api: &Api,
    desc: &Descriptor,
    obj: Value,
    old: Option<&Value>,
    fv: FieldValidation,
    body: Body,
) -> ApiResult<(Value, Vec<String>)> {
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    // Only a strict patch's failure quotes the patched object, so only then is it kept.
    let patched = (fv == FieldValidation::Strict && body == Body::Patch).then(|| serde_json::to_string(&obj).unwrap_or_default());
    let admitted = desc.codec.admit(obj, old, &api.env).map_err(|e| match e {
        AdmitError::Decode(msg) => ApiError::bad_request(format!("error decoding {}: {msg}", desc.kind)),
        AdmitError::Invalid(errs) => invalid(desc, &name, errs),
        AdmitError::Api(e) => e,
    })?;
    let warnings = fv.apply(&admitted.unknown_fields).map_err(|strict| match (body, patched) {
        (Body::Patch, Some(patched)) => ApiError::invalid("", "", "", &[FieldError::invalid("patch", &Value::String(patched), &strict)]),
        (Body::Object, _) => {
            ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {strict}", desc.kind, desc.version, desc.kind))
        }
        _ => ApiError::bad_request(strict),
    })?;
    let errs = validate_labels_annotations(admitted.object.get("metadata").unwrap_or(&Value::Null));
    if !errs.is_empty() {
        return Err(invalid(desc, &name, errs));
    }
    Ok((admitted.object, warnings))
}

/// Serialized form written to the store: no resourceVersion (the store revision is the version).
/// The caller sets the new resourceVersion on `obj` after the write.
fn stored_bytes(obj: &mut Value) -> Bytes {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    Bytes::from(serde_json::to_vec(obj).unwrap_or_default())
}

fn set_rv(obj: &mut Value, rev: Revision) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rev.to_string()));
}

/// Checks the namespace a namespaced object is written into exists and is not terminating.
async fn check_namespace(api: &Api, desc: &Descriptor, ns: &str) -> ApiResult<()> {
    if !desc.namespaced {
        return Ok(());
    }
    let ns_desc = api.registry.lookup("", "v1", "namespaces").expect("namespaces registered");
    let cache = api.cache.cache(ns_desc);
    let mut found = cache.get(&ns_desc.key(None, ns));
    if found.is_none() {
        // A namespace created a moment ago may not have reached the cache yet.
        api.cache.wait_fresh().await?;
        found = cache.get(&ns_desc.key(None, ns));
    }
    let Some(nsobj) = found else { return Err(ApiError::not_found("", "namespaces", ns)) };
    if nsobj.deleting {
        return Err(ApiError::forbidden(
            desc.group,
            desc.plural,
            "",
            &format!("unable to create new content in namespace {ns} because it is being terminated"),
        ));
    }
    Ok(())
}

/// Create: generic metadata rules, admission, then a create-if-absent transaction.
pub async fn create(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params, body: Bytes) -> ApiResult<Response> {
    let mut obj = decode_object(headers, &body)?;
    let fv = FieldValidation::parse(params)?;
    let dry_run = params.dry_run()?;
    let (mut obj, warnings) = prepare_create(api, &t.desc, t.namespace.as_deref(), &mut obj, fv).await?;
    if let Some(ty) = schema::root(&t.desc.api_version(), t.desc.kind) {
        let m = manager(headers, params, WriteMode::Main, None);
        track_create(&mut obj, ty, &m, &t.desc.api_version(), scope(&t.desc, WriteMode::Main));
    }
    let name = meta_str(&obj, "name").unwrap_or_default().to_string();
    if dry_run {
        return Ok(with_warnings(json_value(StatusCode::CREATED, &obj), &warnings));
    }
    let created = store_create(api, &t.desc, t.namespace.as_deref(), &name, obj).await?;
    Ok(with_warnings(super::json_bytes(StatusCode::CREATED, created), &warnings))
}

/// Everything before the store write of a create; shared with internal bootstrap writes.
pub async fn prepare_create(
    api: &Api,
    desc: &Descriptor,
    ns: Option<&str>,
    obj: &mut Value,
    fv: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    check_type(desc, obj)?;
    let body_ns = meta_str(obj, "namespace").map(str::to_string);
    let meta = meta_mut(obj);
    if desc.namespaced {
        let ns = ns.unwrap_or_default();
        if let Some(b) = body_ns.as_deref()
            && !b.is_empty()
            && b != ns
        {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let generate = meta.get("generateName").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = if name.is_empty() && !generate.is_empty() { generate_name(&generate) } else { name };
    if name.is_empty() {
        return Err(invalid(desc, "", vec![FieldError::required("metadata.name", "name or generateName is required")]));
    }
    let errs = validate_name("metadata.name", &name, desc.name_rule);
    if !errs.is_empty() {
        return Err(invalid(desc, &name, errs));
    }
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
        meta.remove(k);
    }
    if desc.generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    if desc.has(Subresource::Status)
        && desc.kind != "Node"
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    if let Some(ns) = ns {
        check_namespace(api, desc, ns).await?;
    }
    admit(api, desc, obj.take(), None, fv, Body::Object)
}

/// The create-if-absent transaction; returns the created object's JSON with its resourceVersion
/// (spliced into the stored bytes rather than serializing the object a second time).
pub async fn store_create(api: &Api, desc: &Descriptor, ns: Option<&str>, name: &str, mut obj: Value) -> ApiResult<Bytes> {
    let key = desc.key(ns, name);
    let stored = stored_bytes(&mut obj);
    let txn =
        Txn { compare: vec![Compare::absent(&key)], success: vec![Op::Put { key: key.clone(), value: stored.clone() }], failure: vec![] };
    let resp = api.store.txn(txn).await?;
    if !resp.succeeded {
        return Err(ApiError::already_exists(desc.group, desc.plural, name));
    }
    Ok(crate::cache::splice_resource_version(&stored, resp.revision).unwrap_or_else(|| {
        set_rv(&mut obj, resp.revision);
        Bytes::from(serde_json::to_vec(&obj).unwrap_or_default())
    }))
}

/// The stored object (with resourceVersion) and its revision, or 404.
pub async fn read_current(api: &Api, t: &Target) -> ApiResult<(Value, Revision)> {
    let kv = api
        .store
        .range(RangeRequest::key(t.key()))
        .await?
        .kvs
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(t.desc.group, t.desc.plural, t.name()))?;
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
    set_rv(&mut v, kv.mod_revision);
    Ok((v, kv.mod_revision))
}

fn parse_rv(obj: &Value) -> ApiResult<Option<Revision>> {
    match meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<Revision>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("metadata.resourceVersion: Invalid value: {s:?}: must be a decimal integer"))),
    }
}

/// What an update turns into.
pub enum Outcome {
    Updated(Value),
    /// Nothing changed: the stored object is returned and no revision is spent (as upstream).
    Unchanged(Value),
    /// The last finalizer of an object being deleted went away: the object is gone.
    Deleted(Value),
}

/// The guaranteed-update loop: read, mutate, admit, compare-and-swap; retried on conflicts unless the
/// client pinned a resourceVersion.
#[allow(clippy::too_many_arguments)]
pub async fn commit_update<F>(
    api: &Api,
    t: &Target,
    mode: WriteMode,
    fv: FieldValidation,
    body: Body,
    dry_run: bool,
    manager: Option<&Manager>,
    mut mutate: F,
) -> ApiResult<(Outcome, Vec<String>)>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let desc = &t.desc;
    for _attempt in 0..16 {
        let (old, old_rev) = read_current(api, t).await?;
        let mut new = mutate(&old)?;
        check_type(desc, &mut new)?;
        let pinned = parse_rv(&new)?;
        if let Some(rv) = pinned
            && rv != old_rev
        {
            return Err(ApiError::stale(desc.group, desc.plural, t.name()));
        }
        if let Some(n) = meta_str(&new, "name")
            && !n.is_empty()
            && n != t.name()
        {
            return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({})", t.name())));
        }
        if let (Some(ns), Some(bns)) = (t.namespace.as_deref(), meta_str(&new, "namespace"))
            && !bns.is_empty()
            && bns != ns
        {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        merge_system_fields(desc, mode, &old, &mut new);
        // A server-authored change of an already admitted object (pods/binding) skips admission,
        // as upstream's binding storage does: nothing a client wrote needs decoding or defaulting.
        let (mut admitted, warnings) =
            if mode == WriteMode::Whole { (new, Vec::new()) } else { admit(api, desc, new, Some(&old), fv, body)? };
        if let Some(m) = manager
            && let Some(ty) = schema::root(&desc.api_version(), desc.kind)
        {
            track_update(&old, &mut admitted, ty, m, &desc.api_version(), scope(desc, mode));
        }
        bump_generation(desc, &old, &mut admitted);
        set_rv(&mut admitted, old_rev);
        if admitted == old {
            return Ok((Outcome::Unchanged(old), warnings));
        }
        let key = t.key();
        let finished = is_deleting(&admitted) && !has_finalizers(&admitted);
        if dry_run {
            return Ok((if finished { Outcome::Deleted(admitted) } else { Outcome::Updated(admitted) }, warnings));
        }
        let op = if finished {
            Op::Delete { key: key.clone(), range_end: None }
        } else {
            Op::Put { key: key.clone(), value: stored_bytes(&mut admitted) }
        };
        let resp = api.store.txn(Txn { compare: vec![Compare::unchanged(&key, old_rev)], success: vec![op], failure: vec![] }).await?;
        if resp.succeeded {
            set_rv(&mut admitted, resp.revision);
            return Ok((if finished { Outcome::Deleted(admitted) } else { Outcome::Updated(admitted) }, warnings));
        }
        // Lost the race: read again. A resourceVersion the client pinned no longer matches then
        // and ends in 409 above; one a patch merely carried over from the stored object follows it.
    }
    Err(ApiError::stale(desc.group, desc.plural, t.name()))
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

/// Finalizers that block removal: metadata.finalizers, and a namespace's spec.finalizers.
pub fn has_finalizers(obj: &Value) -> bool {
    let nonempty = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    nonempty(obj.get("metadata").and_then(|m| m.get("finalizers")))
        || (obj.get("kind").and_then(Value::as_str) == Some("Namespace") && nonempty(obj.get("spec").and_then(|s| s.get("finalizers"))))
}

/// Fields clients cannot change, and the status-vs-spec split of the status subresource.
fn merge_system_fields(desc: &Descriptor, mode: WriteMode, old: &Value, new: &mut Value) {
    match mode {
        WriteMode::Main => {
            // Finalizers of a namespace's spec change only through /finalize.
            if desc.has(Subresource::Finalize) {
                match old.pointer("/spec/finalizers") {
                    Some(f) => new["spec"]["finalizers"] = f.clone(),
                    None => {
                        if let Some(s) = new.get_mut("spec").and_then(Value::as_object_mut) {
                            s.remove("finalizers");
                        }
                    }
                }
            }
            if desc.has(Subresource::Status)
                && let Some(o) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
        }
        WriteMode::Status => {
            // Keep everything from the stored object except the new status.
            let status = new.get("status").cloned();
            let rv = meta_str(new, "resourceVersion").map(str::to_string);
            *new = old.clone();
            if let Some(o) = new.as_object_mut() {
                match status {
                    Some(s) => o.insert("status".into(), s),
                    None => o.remove("status"),
                };
            }
            match rv {
                Some(rv) => meta_mut(new).insert("resourceVersion".into(), json!(rv)),
                None => meta_mut(new).remove("resourceVersion"),
            };
        }
        WriteMode::Whole => {}
        WriteMode::Finalize => {
            let finalizers = new.get("spec").and_then(|s| s.get("finalizers")).cloned();
            let rv = meta_str(new, "resourceVersion").map(str::to_string);
            *new = old.clone();
            match finalizers {
                Some(f) => new["spec"]["finalizers"] = f,
                None => {
                    if let Some(s) = new.get_mut("spec").and_then(Value::as_object_mut) {
                        s.remove("finalizers");
                    }
                }
            }
            match rv {
                Some(rv) => meta_mut(new).insert("resourceVersion".into(), json!(rv)),
                None => meta_mut(new).remove("resourceVersion"),
            };
        }
    }
    let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
    let meta = meta_mut(new);
    for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "name", "namespace"] {
        match old_meta.get(k) {
            Some(v) => meta.insert(k.into(), v.clone()),
            None => meta.remove(k),
        };
    }
    if !desc.namespaced {
        meta.remove("namespace");
    }
}

/// Spec changes (anything outside metadata and status) bump metadata.generation.
fn bump_generation(desc: &Descriptor, old: &Value, new: &mut Value) {
    if !desc.generation {
        return;
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    let gen_old = old.get("metadata").and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(1);
    let bump = strip(old) != strip(new);
    meta_mut(new).insert("generation".into(), json!(if bump { gen_old + 1 } else { gen_old }));
}

fn respond(outcome: Outcome, warnings: &[String]) -> Response {
    let r = match outcome {
        Outcome::Updated(v) | Outcome::Unchanged(v) | Outcome::Deleted(v) => json_value(StatusCode::OK, &v),
    };
    with_warnings(r, warnings)
}

pub async fn update(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params, body: Bytes, mode: WriteMode) -> ApiResult<Response> {
    let obj = decode_object(headers, &body)?;
    let fv = FieldValidation::parse(params)?;
    let m = manager(headers, params, mode, None);
    let (outcome, warnings) = commit_update(api, t, mode, fv, Body::Object, params.dry_run()?, Some(&m), |_old| Ok(obj.clone())).await?;
    Ok(respond(outcome, &warnings))
}

pub async fn patch(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params, body: Bytes, mode: WriteMode) -> ApiResult<Response> {
    let ct = content_type(headers);
    let fv = FieldValidation::parse(params)?;
    if ct == "application/apply-patch+yaml" {
        return server_side_apply(api, t, params, &body, mode, fv).await;
    }
    if params.get("force").is_some() {
        return Err(invalid_options("force", "may not be specified for non-apply patch", true));
    }
    let patcher = Patcher::new(&ct, &body)?;
    let m = manager(headers, params, mode, None);
    let (outcome, warnings) = commit_update(api, t, mode, fv, Body::Patch, params.dry_run()?, Some(&m), |old| patcher.apply(old)).await?;
    Ok(respond(outcome, &warnings))
}

/// Upstream's 422 for bad PatchOptions.
fn invalid_options(field: &str, detail: &str, forbidden: bool) -> ApiError {
    let err = if forbidden { FieldError::forbidden(field, detail) } else { FieldError::required(field, detail) };
    ApiError::invalid("meta.k8s.io", "PatchOptions", "", &[err])
}

/// Server-side apply: creates the object from the configuration when absent, otherwise merges
/// it with field ownership (`crate::fields::apply`).
async fn server_side_apply(
    api: &Arc<Api>,
    t: &Target,
    params: &Params,
    body: &[u8],
    mode: WriteMode,
    fv: FieldValidation,
) -> ApiResult<Response> {
    let manager = match params.get("fieldManager") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => return Err(invalid_options("fieldManager", "is required for apply patch", false)),
    };
    let force = match params.get("force") {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("force: invalid value {other:?}: must be true or false"))),
    };
    let mut config = decode_yaml(body)?;
    check_type(&t.desc, &mut config)?;
    let api_version = t.desc.api_version();
    let Some(ty) = schema::root(&api_version, t.desc.kind) else {
        return Err(ApiError::unsupported_media_type("application/apply-patch+yaml"));
    };
    let sub = match mode {
        WriteMode::Status => Some("status"),
        _ => None,
    };
    let req = ApplyRequest { manager: &manager, api_version: &api_version, force, scope: scope(&t.desc, mode), subresource: sub };
    let dry_run = params.dry_run()?;
    match commit_update(api, t, mode, fv, Body::Apply, dry_run, None, |old| crate::fields::apply::apply(old, &config, ty, &req)).await {
        Ok((outcome, warnings)) => Ok(respond(outcome, &warnings)),
        Err(e) if e.code == 404 && mode == WriteMode::Main => {
            if let Some(n) = meta_str(&config, "name")
                && n != t.name()
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    t.name()
                )));
            }
            meta_mut(&mut config).insert("name".into(), json!(t.name()));
            let mut obj = apply_create(&config, ty, &req);
            let (obj, warnings) = prepare_create(api, &t.desc, t.namespace.as_deref(), &mut obj, fv).await?;
            if dry_run {
                return Ok(with_warnings(json_value(StatusCode::CREATED, &obj), &warnings));
            }
            let created = store_create(api, &t.desc, t.namespace.as_deref(), t.name(), obj).await?;
            Ok(with_warnings(super::json_bytes(StatusCode::CREATED, created), &warnings))
        }
        Err(e) => Err(e),
    }
}
