//! Shared informers: one watch per resource type for the whole controller manager, folded into a
//! kube-runtime reflector `Store` that every controller reads, and fanned out to each controller
//! that wants the events as triggers. kube-runtime's own shared streams (`reflect_shared`) do not
//! forward deletions, which the ReplicaSet controller needs for its expectations and to replace
//! deleted pods, so the fan-out is a plain channel per subscriber.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

type Tap<K> = Box<dyn Fn(&Event<K>, &Store<K>) + Send + Sync>;
type AppliedTap<K> = Box<dyn Fn(&Event<K>) + Send + Sync>;

pub struct Informer<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    store: Store<K>,
    writer: Writer<K>,
    subscribers: Vec<UnboundedSender<K>>,
    taps: Vec<Tap<K>>,
    applied: Vec<AppliedTap<K>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Informer<K> {
        let (store, writer) = reflector::store();
        Informer { api, store, writer, subscribers: Vec::new(), taps: Vec::new(), applied: Vec::new() }
    }

    /// The shared cache; [`Store::wait_until_ready`] tells when the first list is in.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object the watch touches (added, changed or deleted), for `Controller::watches_stream`
    /// and friends. Subscribe before [`run`](Self::run).
    pub fn subscribe(&mut self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let (tx, rx) = unbounded_channel();
        self.subscribers.push(tx);
        UnboundedReceiverStream::new(rx).map(Ok)
    }

    /// Sees each event before the store applies it (for expectations: "not in the store yet" means
    /// the watch shows the object for the first time).
    pub fn tap(&mut self, f: impl Fn(&Event<K>, &Store<K>) + Send + Sync + 'static) {
        self.taps.push(Box::new(f));
    }

    /// Sees each event right *after* the store applied it (for expectations: once an owner's
    /// writes are observed here, the cache already holds them).
    pub fn tap_applied(&mut self, f: impl Fn(&Event<K>) + Send + Sync + 'static) {
        self.applied.push(Box::new(f));
    }

    pub async fn run(self) {
        let Informer { api, store, writer, subscribers, taps, applied } = self;
        watch(api, watcher::Config::default())
            .default_backoff()
            .inspect(move |ev| {
                if let Ok(ev) = ev {
                    for t in &taps {
                        t(ev, &store);
                    }
                }
            })
            .reflect(writer)
            .inspect(move |ev| {
                if let Ok(ev) = ev {
                    for t in &applied {
                        t(ev);
                    }
                }
            })
            .touched_objects()
            .for_each(|obj| {
                match obj {
                    Ok(obj) => {
                        for s in &subscribers {
                            let _ = s.send(obj.clone());
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "informer watch"),
                }
                futures::future::ready(())
            })
            .await;
    }
}

/// Waits until `store` has its first full list. Use this instead of `Store::wait_until_ready` in
/// reconcilers: kube-runtime's readiness gate polls a single oneshot receiver from every waiter,
/// so with several concurrent waiters only the last one's waker fires and the others (reconciles
/// parked inside the controller's runner) never wake up. Checking without waiting and sleeping
/// between checks has no waker to lose; it only costs a few wake-ups at start.
pub async fn ready<K>(store: &Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    while store.wait_until_ready().now_or_never().is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
