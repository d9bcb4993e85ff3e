//! get and list, served from the watch cache (consistent reads wait for the cache to catch up with
//! the store); continuation pages and exact-revision lists read the store at that revision.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use skiff_store::{RangeRequest, Revision};

use super::{Params, Target, json_bytes, json_value};
use crate::Api;
use crate::body::{Output, negotiate};
use crate::cache::CachedObject;
use crate::registry::Descriptor;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::table::Include;

/// How fresh a read must be, from `resourceVersion` / `resourceVersionMatch`.
pub enum Freshness {
    /// `resourceVersion` unset: everything acknowledged before the request (quorum-read semantics).
    Consistent,
    /// `"0"`: whatever the cache has.
    Any,
    /// `NotOlderThan` N.
    AtLeast(Revision),
    /// `Exact` N: the store at that revision.
    Exact(Revision),
}

pub fn freshness(params: &Params) -> ApiResult<Freshness> {
    let rv = params.get("resourceVersion").unwrap_or_default();
    let parsed = if rv.is_empty() {
        None
    } else {
        Some(rv.parse::<Revision>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?)
    };
    match (params.get("resourceVersionMatch").unwrap_or_default(), parsed) {
        ("", None) => Ok(Freshness::Consistent),
        ("", Some(0)) | ("NotOlderThan", Some(0)) => Ok(Freshness::Any),
        ("", Some(n)) | ("NotOlderThan", Some(n)) => Ok(Freshness::AtLeast(n)),
        ("Exact", Some(n)) if n > 0 => Ok(Freshness::Exact(n)),
        ("Exact", _) | ("NotOlderThan", None) => Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[crate::status::FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )],
        )),
        (other, _) => Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[crate::status::FieldError::not_supported("resourceVersionMatch", &json!(other), &["Exact", "NotOlderThan", ""])],
        )),
    }
}

/// Make the cache at least as fresh as the request requires; returns the revision to report.
pub async fn wait_fresh(api: &Api, f: &Freshness) -> ApiResult<()> {
    match f {
        Freshness::Consistent => api.cache.wait_fresh().await.map(|_| ()),
        Freshness::Any | Freshness::Exact(_) => Ok(()),
        Freshness::AtLeast(n) => api.cache.wait_for(*n, Duration::from_secs(3)).await,
    }
}

pub async fn get(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params) -> ApiResult<Response> {
    let output = negotiate(headers)?;
    let f = freshness(params)?;
    let obj = match f {
        Freshness::Exact(rev) => {
            let kv = api.store.range(RangeRequest::key(t.key()).at_revision(rev)).await?.kvs.into_iter().next();
            kv.map(|kv| CachedObject::from_stored(&t.desc, &kv.value, kv.mod_revision).map(Arc::new))
                .transpose()
                .map_err(ApiError::internal)?
        }
        _ => {
            wait_fresh(api, &f).await?;
            api.cache.cache(&t.desc).get(&t.key())
        }
    };
    let obj = obj.ok_or_else(|| ApiError::not_found(t.desc.group, t.desc.plural, t.name()))?;
    match output {
        Output::Json => Ok(json_bytes(StatusCode::OK, obj.bytes.clone())),
        Output::Table => {
            let include = Include::parse(params.get("includeObject")).map_err(ApiError::bad_request)?;
            let now = jiff::Timestamp::now();
            let row = t.desc.table.row(&obj.value(), include, now);
            Ok(json_value(StatusCode::OK, &t.desc.table.table(vec![row], json!({"resourceVersion": obj.rv.to_string()}))))
        }
    }
}

/// Parsed list filters.
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn parse(desc: &Descriptor, params: &Params) -> ApiResult<Filter> {
        let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
        for (f, _, _) in &fields.reqs {
            if !desc.supports_field(f) {
                return Err(ApiError::bad_request(format!("field label not supported: {f}")));
            }
        }
        Ok(Filter { labels, fields })
    }

    pub fn matches(&self, desc: &Descriptor, o: &CachedObject) -> bool {
        self.labels.matches_with(|k| o.label(k)) && self.fields.matches_with(|f| o.field(desc, f))
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(rv: Revision, start: &str) -> String {
    let t = ContinueToken { v: "meta.k8s.io/v1".into(), rv, start: start.to_string() };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str) -> ApiResult<ContinueToken> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {s:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" || t.rv <= 0 {
        return Err(bad());
    }
    Ok(t)
}

/// One page of a list.
pub struct Page {
    pub items: Vec<Arc<CachedObject>>,
    pub rev: Revision,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

pub async fn list_page(api: &Api, t: &Target, params: &Params, filter: &Filter) -> ApiResult<Page> {
    let limit = params.int("limit")?.filter(|l| *l > 0).map(|l| l.min(i64::from(u32::MAX)) as usize);
    let prefix = t.desc.prefix(t.namespace.as_deref());
    if let Some(token) = params.get("continue").filter(|s| !s.is_empty()) {
        let tok = decode_continue(token)?;
        return store_page(api, &t.desc, &prefix, &format!("{prefix}{}", tok.start), tok.rv, limit, filter).await;
    }
    let f = freshness(params)?;
    if let Freshness::Exact(rev) = f {
        return store_page(api, &t.desc, &prefix, &prefix, rev, limit, filter).await;
    }
    wait_fresh(api, &f).await?;
    let (all, rev) = api.cache.cache(&t.desc).snapshot(&prefix, api.cache.observed());
    let mut items = Vec::new();
    let mut iter = all.into_iter().filter(|o| filter.matches(&t.desc, o));
    for o in iter.by_ref() {
        items.push(o);
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    let remaining = iter.count() as i64;
    let continue_token = (remaining > 0).then(|| {
        let last = items.last().expect("limit > 0");
        let key = t.desc.key(last.namespace.as_deref(), &last.name);
        encode_continue(rev, &format!("{}\0", &key[prefix.len()..]))
    });
    Ok(Page { items, rev, continue_token, remaining: (remaining > 0 && filter.is_empty()).then_some(remaining) })
}

async fn store_page(
    api: &Api,
    desc: &Descriptor,
    prefix: &str,
    start: &str,
    rev: Revision,
    limit: Option<usize>,
    filter: &Filter,
) -> ApiResult<Page> {
    let end = skiff_store::prefix_end(prefix);
    let mut items = Vec::new();
    let mut from = start.to_string();
    let chunk = limit.map(|l| (l as i64).clamp(1, 10_000) + 1).unwrap_or(0);
    loop {
        let resp = api
            .store
            .range(RangeRequest { key: from.clone(), range_end: Some(end.clone()), revision: rev, limit: chunk, count_only: false })
            .await
            .map_err(|e| match e {
                skiff_store::StoreError::Compacted { .. } => ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."),
                other => other.into(),
            })?;
        let fetched = resp.kvs.len();
        for kv in resp.kvs {
            from = format!("{}\0", kv.key);
            let obj = CachedObject::from_stored(desc, &kv.value, kv.mod_revision).map_err(ApiError::internal)?;
            if !filter.matches(desc, &obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                // One more match exists beyond the page: hand out a continue token.
                let last: &Arc<CachedObject> = items.last().expect("limit > 0");
                let key = desc.key(last.namespace.as_deref(), &last.name);
                let token = encode_continue(rev, &format!("{}\0", &key[prefix.len()..]));
                return Ok(Page { items, rev, continue_token: Some(token), remaining: None });
            }
            items.push(Arc::new(obj));
        }
        if !resp.more || fetched == 0 {
            return Ok(Page { items, rev, continue_token: None, remaining: None });
        }
    }
}

pub async fn list(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params) -> ApiResult<Response> {
    let output = negotiate(headers)?;
    let filter = Filter::parse(&t.desc, params)?;
    let page = list_page(api, t, params, &filter).await?;
    let mut meta = json!({"resourceVersion": page.rev.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        meta["remainingItemCount"] = json!(r);
    }
    match output {
        Output::Table => {
            let include = Include::parse(params.get("includeObject")).map_err(ApiError::bad_request)?;
            let now = jiff::Timestamp::now();
            let rows = page.items.iter().map(|o| t.desc.table.row(&o.value(), include, now)).collect();
            Ok(json_value(StatusCode::OK, &t.desc.table.table(rows, meta)))
        }
        Output::Json => Ok(json_bytes(StatusCode::OK, list_bytes(&t.desc, &meta, &page.items))),
    }
}

/// `{"kind":"XList",...,"items":[...]}` assembled from the cached bytes without re-serializing items.
pub fn list_bytes(desc: &Descriptor, meta: &Value, items: &[Arc<CachedObject>]) -> Bytes {
    let head = json!({"kind": desc.list_kind, "apiVersion": desc.api_version(), "metadata": meta});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let size: usize = items.iter().map(|o| o.bytes.len() + 1).sum::<usize>() + head.len() + 16;
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(&head[..head.len() - 1]);
    out.put_slice(b",\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(&o.bytes);
    }
    out.put_slice(b"]}");
    out.freeze()
}
