//! Watch: a chunked stream of `{"type":...,"object":...}` lines served from the watch cache.
//!
//! Errors after the stream has started (a resourceVersion too old, a watcher too far behind) are
//! sent as an ERROR event carrying a 410 Status inside the 200 stream, which is what client-go and
//! kube-runtime's watcher expect in order to relist.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::read::{Filter, Freshness, freshness, wait_fresh};
use super::{Params, Target};
use crate::Api;
use crate::body::{Output, negotiate};
use crate::cache::{CacheEvent, CachedObject, EventType, ResourceCache};
use crate::registry::Descriptor;
use crate::status::{ApiError, ApiResult};
use crate::table::Include;

const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

struct Watcher {
    desc: Arc<Descriptor>,
    cache: Arc<ResourceCache>,
    namespace: Option<String>,
    name: Option<String>,
    filter: Filter,
    output: Output,
    include: Include,
    bookmarks: bool,
    last_rv: i64,
    last_seq: u64,
}

pub async fn watch(api: &Arc<Api>, t: &Target, headers: &HeaderMap, params: &Params) -> ApiResult<Response> {
    let output = negotiate(headers)?;
    let filter = Filter::parse(&t.desc, params)?;
    let include = Include::parse(params.get("includeObject")).map_err(ApiError::bad_request)?;
    let timeout = match params.int("timeoutSeconds")? {
        Some(s) if s > 0 => Duration::from_secs(s.min(24 * 3600) as u64),
        // Upstream spreads long-running request timeouts over [min, 2*min) with min 1800 s.
        _ => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
    };
    let send_initial = params.get("sendInitialEvents") == Some("true");
    let bookmarks = params.flag("allowWatchBookmarks");
    if send_initial && !bookmarks {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[crate::status::FieldError::forbidden(
                "allowWatchBookmarks",
                "allowWatchBookmarks must be set to true when sendInitialEvents is set",
            )],
        ));
    }
    let f = freshness(params)?;
    let from = match f {
        Freshness::Consistent if !send_initial => None,
        Freshness::Consistent | Freshness::Any => {
            wait_fresh(api, &f).await?;
            None
        }
        Freshness::AtLeast(n) | Freshness::Exact(n) => {
            api.cache.wait_for(n, Duration::from_secs(3)).await?;
            if send_initial { None } else { Some(n) }
        }
    };
    let cache = api.cache.cache(&t.desc).clone();
    let prefix = t.desc.prefix(t.namespace.as_deref());
    let start = cache.watch(&prefix, from);
    let initial_rv = api.cache.observed();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut w = Watcher {
        desc: t.desc.clone(),
        cache,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        filter,
        output,
        include,
        bookmarks,
        last_rv: from.unwrap_or(0),
        last_seq: 0,
    };
    let api2 = api.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, async {
            let start = match start {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(w.error_frame(&e)).await;
                    return;
                }
            };
            if w.send_backlog(&tx, start.backlog).await.is_err() {
                return;
            }
            if send_initial {
                let rv = w.last_rv.max(initial_rv);
                if tx.send(w.bookmark(rv, true)).await.is_err() {
                    return;
                }
            }
            w.run(&api2, &tx, start.rx).await;
        })
        .await;
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    Ok(resp)
}

impl Watcher {
    async fn run(&mut self, api: &Api, tx: &mpsc::Sender<Bytes>, mut rx: broadcast::Receiver<Arc<CacheEvent>>) {
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if self.send_event(tx, &ev).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => match self.cache.resume(self.last_seq) {
                        Ok(start) => {
                            rx = start.rx;
                            if self.send_backlog(tx, start.backlog).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(self.error_frame(&e)).await;
                            return;
                        }
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if self.bookmarks => {
                    // Read the revision before checking for queued events, so the bookmark never
                    // claims a revision whose events this watcher has not been sent yet.
                    let observed = api.cache.observed();
                    if rx.is_empty() && tx.send(self.bookmark(self.last_rv.max(observed), false)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }

    async fn send_backlog(&mut self, tx: &mpsc::Sender<Bytes>, backlog: Vec<Arc<CacheEvent>>) -> Result<(), ()> {
        for ev in backlog {
            self.send_event(tx, &ev).await?;
        }
        Ok(())
    }

    fn in_scope(&self, o: &CachedObject) -> bool {
        (self.namespace.is_none() || o.namespace == self.namespace) && self.name.as_deref().is_none_or(|n| n == o.name)
    }

    fn selected(&self, o: &CachedObject) -> bool {
        self.in_scope(o) && self.filter.matches(&self.desc, o)
    }

    async fn send_event(&mut self, tx: &mpsc::Sender<Bytes>, ev: &CacheEvent) -> Result<(), ()> {
        if ev.seq != 0 {
            if ev.seq <= self.last_seq {
                return Ok(());
            }
            self.last_seq = ev.seq;
        }
        let now = self.selected(&ev.obj);
        let before = ev.prev.as_ref().is_some_and(|p| self.selected(p));
        let ty = match ev.ty {
            EventType::Added if now => EventType::Added,
            EventType::Modified if now && before => EventType::Modified,
            EventType::Modified if now => EventType::Added,
            EventType::Modified if before => EventType::Deleted,
            EventType::Deleted if before || now => EventType::Deleted,
            _ => {
                self.last_rv = self.last_rv.max(ev.obj.rv);
                return Ok(());
            }
        };
        self.last_rv = self.last_rv.max(ev.obj.rv);
        tx.send(self.frame(ty.as_str(), &ev.obj)).await.map_err(|_| ())
    }

    fn frame(&self, ty: &str, obj: &CachedObject) -> Bytes {
        match self.output {
            Output::Json => {
                let mut b = BytesMut::with_capacity(obj.bytes.len() + 32);
                b.put_slice(b"{\"type\":\"");
                b.put_slice(ty.as_bytes());
                b.put_slice(b"\",\"object\":");
                b.put_slice(&obj.bytes);
                b.put_slice(b"}\n");
                b.freeze()
            }
            Output::Table => {
                let now = jiff::Timestamp::now();
                let row = self.desc.table.row(&obj.value(), self.include, now);
                let table = self.desc.table.table(vec![row], json!({"resourceVersion": obj.rv.to_string()}));
                line(&json!({"type": ty, "object": table}))
            }
        }
    }

    fn bookmark(&self, rv: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(&json!({"type": "BOOKMARK", "object": {"kind": self.desc.kind, "apiVersion": self.desc.api_version(), "metadata": meta}}))
    }

    fn error_frame(&self, e: &ApiError) -> Bytes {
        line(&json!({"type": "ERROR", "object": e.to_status()}))
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}
