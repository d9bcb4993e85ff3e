//! The watch cache: every list and watch is served from memory.
//!
//! One store watch over `/registry/` feeds every resource's cache (so N watchers cost one store
//! watch in total, not one per watcher). Each object version is turned into JSON bytes once, with
//! its resourceVersion filled in, and those bytes are shared (`Arc`) by the cache, its history and
//! every watcher. Watchers read a bounded broadcast channel; one that lags catches up from the
//! bounded history, and one that falls behind even that gets a 410 and relists, so a slow client
//! never costs unbounded memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use skiff_store::{EventKind, RangeRequest, Revision, Store};
use tokio::sync::{broadcast, watch};

use crate::registry::{Descriptor, Registry};
use crate::status::ApiError;

/// Default number of events kept per resource for watchers that resume from a resourceVersion.
pub const DEFAULT_HISTORY: usize = 10_000;
/// Broadcast slots per resource; a watcher further behind catches up from the history.
const BROADCAST: usize = 1024;

/// One object version as the cache holds it.
pub struct CachedObject {
    pub namespace: Option<String>,
    pub name: String,
    pub rv: Revision,
    /// The object's JSON, resourceVersion included: written to clients as-is.
    pub bytes: Bytes,
    /// Labels sorted by key. A boxed slice, not a map: a BTreeMap node is allocated for 11
    /// entries even when an object has one label, and there is one of these per cached object.
    pub labels: Box<[(Box<str>, Box<str>)]>,
    /// Whether metadata.deletionTimestamp is set (checked on every create in a namespace).
    pub deleting: bool,
    /// Values of the descriptor's selectable fields, in `field_selectors` order.
    fields: Vec<String>,
}

impl CachedObject {
    /// Builds the cached form of a stored value at revision `rv`.
    ///
    /// Every write passes through here, so the common case avoids building a `Value` and
    /// re-serializing the object: it reads only the metadata it needs and splices the
    /// resourceVersion into the stored bytes. Resources with field selectors beyond name and
    /// namespace take the general path.
    pub fn from_stored(desc: &Descriptor, raw: &[u8], rv: Revision) -> Result<CachedObject, String> {
        if desc.field_selectors.is_empty()
            && let Some(obj) = Self::fast(raw, rv)
        {
            return Ok(obj);
        }
        let mut v: Value = serde_json::from_slice(raw).map_err(|e| format!("stored object is not JSON: {e}"))?;
        Self::from_value(desc, &mut v, rv)
    }

    fn fast(raw: &[u8], rv: Revision) -> Option<CachedObject> {
        #[derive(serde::Deserialize)]
        struct Head {
            metadata: MetaHead,
        }
        #[derive(serde::Deserialize)]
        struct MetaHead {
            #[serde(default)]
            name: String,
            namespace: Option<String>,
            #[serde(default)]
            labels: BTreeMap<String, String>,
            #[serde(rename = "deletionTimestamp")]
            deletion_timestamp: Option<serde::de::IgnoredAny>,
            #[serde(rename = "resourceVersion")]
            resource_version: Option<serde::de::IgnoredAny>,
        }
        let head: Head = serde_json::from_slice(raw).ok()?;
        if head.metadata.resource_version.is_some() {
            return None;
        }
        let bytes = splice_resource_version(raw, rv)?;
        let labels = head.metadata.labels.into_iter().map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect();
        Some(CachedObject {
            namespace: head.metadata.namespace,
            name: head.metadata.name,
            rv,
            bytes,
            labels,
            deleting: head.metadata.deletion_timestamp.is_some(),
            fields: Vec::new(),
        })
    }

    pub fn from_value(desc: &Descriptor, v: &mut Value, rv: Revision) -> Result<CachedObject, String> {
        let meta = v.get_mut("metadata").and_then(Value::as_object_mut).ok_or("stored object has no metadata")?;
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace = meta.get("namespace").and_then(Value::as_str).map(str::to_string);
        let mut labels: Vec<(Box<str>, Box<str>)> = meta
            .get("labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.as_str().into(), v.as_str().unwrap_or_default().into())).collect())
            .unwrap_or_default();
        labels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let labels = labels.into_boxed_slice();
        let deleting = meta.get("deletionTimestamp").is_some_and(|t| !t.is_null());
        let fields = desc.field_selectors.iter().map(|f| field_value(v, f)).collect();
        let mut json = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        // The serializer grows its buffer by doubling; the cache keeps these bytes for the
        // object's lifetime, so give the slack back.
        json.shrink_to_fit();
        let bytes = Bytes::from(json);
        Ok(CachedObject { namespace, name, rv, bytes, labels, deleting, fields })
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*self.labels[i].1)
    }

    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    /// The value of a selectable field ("" when absent, as upstream).
    pub fn field<'a>(&'a self, desc: &Descriptor, field: &str) -> &'a str {
        match field {
            "metadata.name" => &self.name,
            "metadata.namespace" => self.namespace.as_deref().unwrap_or_default(),
            f => desc.field_selectors.iter().position(|x| *x == f).map(|i| self.fields[i].as_str()).unwrap_or(""),
        }
    }
}

/// Inserts `"resourceVersion":"<rv>"` as the first member of the top-level `metadata` object, by
/// scanning the JSON structure (strings skipped, depth tracked). None if there is no such object.
pub(crate) fn splice_resource_version(raw: &[u8], rv: Revision) -> Option<Bytes> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_start = 0;
    let mut last_string: &[u8] = &[];
    let mut key: &[u8] = &[];
    for (i, &b) in raw.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                last_string = &raw[string_start..i];
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b':' if depth == 1 => key = last_string,
            b',' if depth == 1 => key = &[],
            b'{' | b'[' => {
                depth += 1;
                if b == b'{' && depth == 2 && key == b"metadata" {
                    let insert = format!("\"resourceVersion\":\"{rv}\"");
                    let rest = &raw[i + 1..];
                    let empty = rest.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'}');
                    let mut out = Vec::with_capacity(raw.len() + insert.len() + 1);
                    out.extend_from_slice(&raw[..=i]);
                    out.extend_from_slice(insert.as_bytes());
                    if !empty {
                        out.push(b',');
                    }
                    out.extend_from_slice(rest);
                    return Some(Bytes::from(out));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Reads a dotted JSON path as upstream's field-label conversion does: strings as-is, bools and
/// numbers formatted, absent as "".
pub fn field_value(v: &Value, path: &str) -> String {
    let found = path.split('.').try_fold(v, |v, k| v.get(k));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        // `source` on events is an object; upstream selects on its component.
        Some(Value::Object(o)) => o.get("component").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

pub struct CacheEvent {
    /// Position in this cache's event sequence (dedupes events that share a revision).
    pub seq: u64,
    pub ty: EventType,
    /// For deletes: the last state, with resourceVersion set to the delete's revision.
    pub obj: Arc<CachedObject>,
    /// The previous version (for selector transitions); None for adds.
    pub prev: Option<Arc<CachedObject>>,
}

struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    history: VecDeque<Arc<CacheEvent>>,
    /// Every event of this resource after this revision is in `history`.
    complete_after: Revision,
    /// Highest revision applied to this cache.
    rev: Revision,
    next_seq: u64,
}

/// One resource's cache.
pub struct ResourceCache {
    pub desc: Arc<Descriptor>,
    history: usize,
    state: RwLock<State>,
    tx: broadcast::Sender<Arc<CacheEvent>>,
}

/// What a new watcher starts with: events to send first, then the live receiver.
pub struct WatchStart {
    pub backlog: Vec<Arc<CacheEvent>>,
    pub rx: broadcast::Receiver<Arc<CacheEvent>>,
}

impl ResourceCache {
    fn new(desc: Arc<Descriptor>, rev: Revision, history: usize) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST.min(history.max(16)));
        let state = State { objects: BTreeMap::new(), history: VecDeque::new(), complete_after: rev, rev, next_seq: 1 };
        ResourceCache { desc, history: history.max(1), state: RwLock::new(state), tx }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Objects under `prefix` (a namespace's or all), in key order, and the revision they are current at.
    pub fn snapshot(&self, prefix: &str, observed: Revision) -> (Vec<Arc<CachedObject>>, Revision) {
        let st = self.read();
        let items = st.objects.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, o)| o.clone()).collect();
        (items, observed.max(st.rev))
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.read().objects.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start a watch. `from: None` sends the current objects as ADDED first; `Some(rv)` replays what
    /// happened after `rv`, or fails with 410 when that is no longer in the history.
    pub fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStart, ApiError> {
        let st = self.read();
        let rx = self.tx.subscribe();
        let backlog = match from {
            None => st
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, o)| Arc::new(CacheEvent { seq: 0, ty: EventType::Added, obj: o.clone(), prev: None }))
                .collect(),
            Some(rv) => {
                if rv < st.complete_after {
                    return Err(ApiError::too_old_resource_version(rv, st.complete_after + 1));
                }
                let start = st.history.partition_point(|e| e.obj.rv <= rv);
                st.history.iter().skip(start).cloned().collect()
            }
        };
        Ok(WatchStart { backlog, rx })
    }

    /// Resume a lagged watcher after event `seq`: the events it missed and a fresh receiver.
    pub fn resume(&self, seq: u64) -> Result<WatchStart, ApiError> {
        let st = self.read();
        let rx = self.tx.subscribe();
        match st.history.front() {
            Some(first) if first.seq <= seq + 1 => {
                let start = st.history.partition_point(|e| e.seq <= seq);
                Ok(WatchStart { backlog: st.history.iter().skip(start).cloned().collect(), rx })
            }
            _ if st.next_seq == seq + 1 => Ok(WatchStart { backlog: Vec::new(), rx }),
            _ => Err(ApiError::gone("watch fell too far behind; relist and watch again")),
        }
    }

    fn apply(&self, key: &str, ty: EventType, obj: Option<Arc<CachedObject>>, rev: Revision) {
        let mut st = self.write();
        let prev = st.objects.get(key).cloned();
        let (ty, obj) = match (ty, obj, prev.clone()) {
            (EventType::Deleted, _, Some(prev)) => {
                st.objects.remove(key);
                (EventType::Deleted, deleted_version(&self.desc, &prev, rev))
            }
            (EventType::Deleted, _, None) => return,
            (_, Some(obj), p) => {
                st.objects.insert(key.to_string(), obj.clone());
                (if p.is_some() { EventType::Modified } else { EventType::Added }, obj)
            }
            (_, None, _) => return,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        st.rev = st.rev.max(rev);
        let ev = Arc::new(CacheEvent { seq, ty, obj, prev });
        st.history.push_back(ev.clone());
        if st.history.len() > self.history
            && let Some(old) = st.history.pop_front()
        {
            st.complete_after = old.obj.rv;
        }
        // Sent under the lock so a watcher subscribing under the read lock sees no gap.
        let _ = self.tx.send(ev);
    }
}

/// A deleted object carries the delete's revision as its resourceVersion (upstream's watch does too).
fn deleted_version(desc: &Descriptor, prev: &CachedObject, rev: Revision) -> Arc<CachedObject> {
    let mut v = prev.value();
    Arc::new(CachedObject::from_value(desc, &mut v, rev).unwrap_or_else(|_| CachedObject {
        namespace: prev.namespace.clone(),
        name: prev.name.clone(),
        rv: rev,
        bytes: prev.bytes.clone(),
        labels: prev.labels.clone(),
        deleting: prev.deleting,
        fields: prev.fields.clone(),
    }))
}

/// All resource caches plus the store feed.
pub struct WatchCache {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    caches: HashMap<&'static str, Arc<ResourceCache>>,
    observed: watch::Sender<Revision>,
}

impl WatchCache {
    /// Loads every resource from the store and starts following it.
    /// `history`: events kept per resource (upstream's `--default-watch-cache-size`).
    pub async fn start(store: Arc<dyn Store>, registry: Arc<Registry>, history: usize) -> Result<Arc<WatchCache>, ApiError> {
        let initial = store.range(RangeRequest::prefix("/registry/")).await?;
        let rev = initial.revision;
        let caches: HashMap<&'static str, Arc<ResourceCache>> =
            registry.all().iter().map(|d| (d.storage_prefix, Arc::new(ResourceCache::new(d.clone(), rev, history)))).collect();
        let (observed, _) = watch::channel(rev);
        let wc = Arc::new(WatchCache { store, registry, caches, observed });
        for kv in initial.kvs {
            if let Some(cache) = wc.cache_for_key(&kv.key) {
                match CachedObject::from_stored(&cache.desc, &kv.value, kv.mod_revision) {
                    Ok(obj) => {
                        cache.write().objects.insert(kv.key.clone(), Arc::new(obj));
                    }
                    Err(e) => tracing::warn!(key = %kv.key, "skipping unreadable object: {e}"),
                }
            }
        }
        tokio::spawn(Self::follow(Arc::downgrade(&wc), rev));
        Ok(wc)
    }

    fn cache_for_key(&self, key: &str) -> Option<&Arc<ResourceCache>> {
        let d = self.registry.for_key(key)?;
        self.caches.get(d.storage_prefix)
    }

    pub fn cache(&self, desc: &Descriptor) -> &Arc<ResourceCache> {
        self.caches.get(desc.storage_prefix).expect("every descriptor has a cache")
    }

    /// The store revision the caches have caught up with.
    pub fn observed(&self) -> Revision {
        *self.observed.borrow()
    }

    /// Wait until the caches reflect revision `rev` (bounded, as upstream's 3 s for lists).
    pub async fn wait_for(&self, rev: Revision, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.observed.subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::timeout(format!("Too large resource version: {rev}, current: {}", self.observed())).with_retry(1)),
        }
    }

    /// Wait until the caches hold every write the store has acknowledged (a consistent read).
    pub async fn wait_fresh(&self) -> Result<Revision, ApiError> {
        let rev = self.store.current_revision().await?;
        self.wait_for(rev, Duration::from_secs(3)).await?;
        Ok(rev)
    }

    async fn follow(this: std::sync::Weak<WatchCache>, mut rev: Revision) {
        loop {
            let Some(wc) = this.upgrade() else { return };
            let stream = wc.store.watch("/registry/".into(), Some(skiff_store::prefix_end("/registry/")), rev + 1).await;
            drop(wc);
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("watch cache: store watch failed: {e}; resyncing");
                    match Self::resync(&this).await {
                        Some(r) => rev = r,
                        None => return,
                    }
                    continue;
                }
            };
            while let Some(item) = stream.next().await {
                let Some(wc) = this.upgrade() else { return };
                match item {
                    Ok(ev) => {
                        rev = ev.kv.mod_revision;
                        wc.apply_store_event(ev);
                        wc.observed.send_replace(rev);
                    }
                    Err(skiff_store::StoreError::Closed) => return,
                    Err(e) => {
                        tracing::warn!("watch cache: store watch ended: {e}; resyncing");
                        drop(wc);
                        match Self::resync(&this).await {
                            Some(r) => rev = r,
                            None => return,
                        }
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn apply_store_event(&self, ev: skiff_store::Event) {
        let Some(cache) = self.cache_for_key(&ev.kv.key) else { return };
        match ev.kind {
            EventKind::Put => match CachedObject::from_stored(&cache.desc, &ev.kv.value, ev.kv.mod_revision) {
                Ok(obj) => cache.apply(&ev.kv.key, EventType::Modified, Some(Arc::new(obj)), ev.kv.mod_revision),
                Err(e) => tracing::warn!(key = %ev.kv.key, "skipping unreadable object: {e}"),
            },
            EventKind::Delete => cache.apply(&ev.kv.key, EventType::Deleted, None, ev.kv.mod_revision),
        }
    }

    /// After losing the store watch: relist and turn the difference into events.
    async fn resync(this: &std::sync::Weak<WatchCache>) -> Option<Revision> {
        loop {
            let wc = this.upgrade()?;
            match wc.store.range(RangeRequest::prefix("/registry/")).await {
                Ok(list) => {
                    let rev = list.revision;
                    let mut seen: HashMap<&'static str, Vec<String>> = HashMap::new();
                    for kv in &list.kvs {
                        if let Some(cache) = wc.cache_for_key(&kv.key) {
                            seen.entry(cache.desc.storage_prefix).or_default().push(kv.key.clone());
                            let unchanged = cache.get(&kv.key).is_some_and(|o| o.rv == kv.mod_revision);
                            if !unchanged && let Ok(obj) = CachedObject::from_stored(&cache.desc, &kv.value, kv.mod_revision) {
                                cache.apply(&kv.key, EventType::Modified, Some(Arc::new(obj)), kv.mod_revision);
                            }
                        }
                    }
                    for (prefix, cache) in &wc.caches {
                        let keep = seen.remove(prefix).unwrap_or_default();
                        let gone: Vec<String> = cache.read().objects.keys().filter(|k| keep.binary_search(k).is_err()).cloned().collect();
                        for k in gone {
                            cache.apply(&k, EventType::Deleted, None, rev);
                        }
                    }
                    wc.observed.send_replace(rev);
                    return Some(rev);
                }
                Err(skiff_store::StoreError::Closed) => return None,
                Err(e) => {
                    tracing::warn!("watch cache resync failed: {e}");
                    drop(wc);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_version_is_spliced_into_top_level_metadata_only() {
        let raw = br#"{"apiVersion":"v1","data":{"x":"\"metadata\":{","nested":"{"},"kind":"ControllerRevision","metadata":{"name":"a","labels":{"k":"v"}},"spec":{"metadata":{}}}"#;
        let out = splice_resource_version(raw, 42).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "a");
        assert!(v["spec"]["metadata"].get("resourceVersion").is_none());
        let empty = splice_resource_version(br#"{"metadata":{}}"#, 7).unwrap();
        assert_eq!(&empty[..], br#"{"metadata":{"resourceVersion":"7"}}"#);
        assert!(splice_resource_version(br#"{"kind":"X"}"#, 1).is_none());
    }
}
