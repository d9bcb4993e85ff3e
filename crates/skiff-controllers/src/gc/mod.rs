//! The garbage collector: deletes objects whose owners are gone, and carries out the two
//! deletion modes that need help: foreground (the owner keeps a `foregroundDeletion` finalizer
//! until its blocking dependents are gone) and orphan (dependents lose their reference to the
//! owner, then the `orphan` finalizer is removed). Background deletion is the first case: the
//! owner disappears and its dependents become garbage.
//!
//! Unlike the other controllers this is not a kube-runtime `Controller`: it reasons over one graph
//! spanning every resource type, as upstream's GraphBuilder does. Each served resource is watched
//! with a metadata-only watch (`Api<PartialObjectMeta<_>>`; metadata is all the graph needs); the events update
//! [`graph::Graph`] and queue the uids whose fate may have changed; one worker decides, always
//! confirming with a live GET that an owner is really gone before deleting anything.

pub mod graph;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use serde_json::json;
use tokio::sync::Notify;

use self::graph::{FOREGROUND, Graph, Node, ORPHAN};
use crate::metrics::{ControllerMetrics, Metrics};

/// Resources the collector ignores, as upstream: Events are never owners worth tracking and churn
/// the most.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

struct Resource {
    ar: Arc<ApiResource>,
    namespaced: bool,
}

struct Gc {
    client: kube::Client,
    graph: Mutex<Graph>,
    queue: Arc<WorkQueue>,
    /// (group, kind) → resource, to look owners up by their reference.
    kinds: HashMap<(String, String), Arc<Resource>>,
    metrics: Arc<ControllerMetrics>,
}

pub async fn run(client: kube::Client, metrics: &Metrics) {
    let resources = loop {
        match discover(&client).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: discovery failed, retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let kinds = resources.iter().map(|r| ((r.ar.group.clone(), r.ar.kind.clone()), r.clone())).collect();
    let gc = Arc::new(Gc {
        client: client.clone(),
        graph: Mutex::default(),
        queue: Arc::default(),
        kinds,
        metrics: metrics.controller("garbage-collector"),
    });
    let watches = resources.into_iter().map(|r| {
        let gc = gc.clone();
        async move { gc.watch(r).await }
    });
    tokio::join!(futures::future::join_all(watches), gc.clone().work());
}

/// Every resource the API serves that can be listed, watched and deleted (CRDs would need
/// rediscovery; skiff serves none yet).
async fn discover(client: &kube::Client) -> Result<Vec<Arc<Resource>>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run_aggregated().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let ok = [verbs::LIST, verbs::WATCH, verbs::DELETE].iter().all(|v| caps.supports_operation(v));
            if !ok || IGNORED.contains(&(ar.group.as_str(), ar.plural.as_str())) {
                continue;
            }
            out.push(Arc::new(Resource { ar: Arc::new(ar), namespaced: caps.scope == Scope::Namespaced }));
        }
    }
    Ok(out)
}

impl Gc {
    async fn watch(&self, r: Arc<Resource>) {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), r.ar.as_ref());
        let mut events = std::pin::pin!(watch(api, watcher::Config::default()).default_backoff());
        // uids of this resource not (yet) seen again during a relist.
        let mut unseen: Option<HashSet<String>> = None;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(Event::Init) => unseen = Some(self.graph.lock().unwrap().uids_of(&r.ar)),
                Ok(Event::InitApply(obj)) => {
                    if let (Some(set), Some(uid)) = (unseen.as_mut(), obj.metadata.uid.as_ref()) {
                        set.remove(uid);
                    }
                    self.observe(&r, obj);
                }
                Ok(Event::Apply(obj)) => self.observe(&r, obj),
                Ok(Event::InitDone) => {
                    // Objects deleted while the watch was down never sent a Delete.
                    for uid in unseen.take().unwrap_or_default() {
                        self.forget(&uid);
                    }
                }
                Ok(Event::Delete(obj)) => {
                    if let Some(uid) = obj.metadata.uid.as_deref() {
                        self.forget(uid);
                    }
                }
                Err(e) => tracing::debug!(resource = %r.ar.plural, error = %e, "garbage collector watch"),
            }
        }
    }

    fn observe(&self, r: &Resource, obj: PartialObjectMeta<DynamicObject>) {
        let m = obj.metadata;
        let Some(uid) = m.uid else { return };
        let node = Node {
            resource: r.ar.clone(),
            namespace: m.namespace.filter(|_| r.namespaced),
            name: m.name.unwrap_or_default(),
            owners: m.owner_references.unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.unwrap_or_default(),
        };
        let mut g = self.graph.lock().unwrap();
        let interesting = !node.owners.is_empty() || (node.deleting && (node.has_finalizer(FOREGROUND) || node.has_finalizer(ORPHAN)));
        let was_waiting = g.upsert(&uid, node).is_some_and(|old| old.waiting_for_dependents());
        let now_waiting = g.get(&uid).is_some_and(Node::waiting_for_dependents);
        if interesting {
            self.queue.add(&uid);
        }
        // A foreground deletion just started: all dependents must go (or let go).
        if now_waiting && !was_waiting {
            for d in g.dependents(&uid) {
                self.queue.add(&d);
            }
        }
    }

    fn forget(&self, uid: &str) {
        let mut g = self.graph.lock().unwrap();
        let Some(old) = g.remove(uid) else { return };
        // Its dependents may be garbage now; owners waiting on it may be done.
        for d in g.dependents(uid) {
            self.queue.add(&d);
        }
        for o in &old.owners {
            if g.get(&o.uid).is_some_and(Node::waiting_for_dependents) {
                self.queue.add(&o.uid);
            }
        }
    }

    async fn work(self: Arc<Self>) {
        loop {
            let uid = self.queue.next().await;
            let _t = self.metrics.reconcile_timer();
            let result = self.process(&uid).await;
            self.queue.done(&uid);
            match result {
                Ok(None) => {}
                Ok(Some(after)) => self.queue.add_after(&uid, after),
                Err(e) => {
                    self.metrics.error();
                    tracing::debug!(uid = %uid, error = %e, "garbage collector: will retry");
                    self.queue.add_after(&uid, Duration::from_secs(1));
                }
            }
        }
    }

    /// Decides one object's fate; `Ok(Some(d))` asks to look again after `d`.
    async fn process(&self, uid: &str) -> Result<Option<Duration>, kube::Error> {
        let Some(node) = self.graph.lock().unwrap().get(uid).cloned() else { return Ok(None) };
        if node.deleting && node.has_finalizer(ORPHAN) {
            return self.orphan_dependents(uid, &node).await;
        }
        if node.waiting_for_dependents() {
            let blocking = self.graph.lock().unwrap().blocking_dependents(uid);
            if blocking.is_empty() {
                self.remove_finalizer(&node, FOREGROUND).await?;
                return Ok(None);
            }
        }
        if node.deleting || node.owners.is_empty() {
            return Ok(None);
        }
        self.attempt_to_delete(uid, &node).await
    }

    /// upstream's attemptToDeleteItem: keep the object while a real owner exists (dropping
    /// references to vanished or foreground-deleting owners), else delete it.
    async fn attempt_to_delete(&self, uid: &str, node: &Node) -> Result<Option<Duration>, kube::Error> {
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for o in &node.owners {
            match self.owner_state(node, o).await? {
                OwnerState::Absent => dangling.push(o),
                OwnerState::WaitingForDependents => waiting.push(o),
                OwnerState::Present => solid.push(o),
            }
        }
        let api = self.api(&node.resource, node.namespace.as_deref());
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(None);
            }
            let drop: Vec<serde_json::Value> = dangling.iter().chain(&waiting).map(|o| json!({"$patch": "delete", "uid": o.uid})).collect();
            let patch = json!({"metadata": {"ownerReferences": drop, "uid": uid}});
            return gone_ok(api.patch(&node.name, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| None));
        }
        let has_dependents = !self.graph.lock().unwrap().dependents(uid).is_empty();
        let policy = if !waiting.is_empty() && has_dependents {
            PropagationPolicy::Foreground
        } else if node.has_finalizer(ORPHAN) {
            PropagationPolicy::Orphan
        } else if node.has_finalizer(FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::debug!(kind = %node.resource.kind, name = %node.name, ?policy, "garbage collector: deleting object whose owners are gone");
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        gone_ok(api.delete(&node.name, &dp).await.map(|_| None))
    }

    async fn owner_state(&self, dependent: &Node, owner: &OwnerReference) -> Result<OwnerState, kube::Error> {
        if let Some(n) = self.graph.lock().unwrap().get(&owner.uid) {
            return Ok(if n.waiting_for_dependents() { OwnerState::WaitingForDependents } else { OwnerState::Present });
        }
        // Not in the graph: maybe gone, maybe just not listed yet. Ask the API server.
        let group = owner.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let Some(r) = self.kinds.get(&(group.to_string(), owner.kind.clone())) else {
            // An owner kind the API does not serve can never be looked up: treat as absent, as
            // upstream does once the REST mapping is known to be missing.
            return Ok(OwnerState::Absent);
        };
        let ns = if r.namespaced { dependent.namespace.as_deref() } else { None };
        match self.api(&r.ar, ns).get_metadata_opt(&owner.name).await? {
            Some(o) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
                let waiting =
                    o.metadata.deletion_timestamp.is_some() && o.metadata.finalizers.unwrap_or_default().iter().any(|f| f == FOREGROUND);
                Ok(if waiting { OwnerState::WaitingForDependents } else { OwnerState::Present })
            }
            _ => Ok(OwnerState::Absent),
        }
    }

    /// Orphan mode: every dependent drops its reference to the owner, then the finalizer goes.
    async fn orphan_dependents(&self, uid: &str, owner: &Node) -> Result<Option<Duration>, kube::Error> {
        let deps: Vec<(String, Node)> = {
            let g = self.graph.lock().unwrap();
            g.dependents(uid).into_iter().filter_map(|d| g.get(&d).cloned().map(|n| (d, n))).collect()
        };
        for (d_uid, d) in deps {
            let patch = json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": d_uid}});
            let api = self.api(&d.resource, d.namespace.as_deref());
            gone_ok(api.patch(&d.name, &PatchParams::default(), &Patch::Strategic(patch)).await.map(|_| None))?;
        }
        self.remove_finalizer(owner, ORPHAN).await?;
        Ok(None)
    }

    /// Removes one finalizer; the `test` op makes it a no-op failure if the list changed meanwhile.
    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> Result<(), kube::Error> {
        let Some(i) = node.finalizers.iter().position(|f| f == finalizer) else { return Ok(()) };
        let ops = json!([
            {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer},
            {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
        ]);
        let patch: json_patch::Patch = serde_json::from_value(ops).expect("a valid JSON patch");
        let api = self.api(&node.resource, node.namespace.as_deref());
        match api.patch(&node.name, &PatchParams::default(), &Patch::Json::<()>(patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn api(&self, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }
}

enum OwnerState {
    Present,
    Absent,
    WaitingForDependents,
}

/// The object went away (or changed identity) while we decided: nothing left to do.
fn gone_ok(r: Result<Option<Duration>, kube::Error>) -> Result<Option<Duration>, kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(None),
        other => other,
    }
}

/// A de-duplicating FIFO of uids: a uid queued twice is processed once, and a uid being processed
/// is queued again only after it finishes (so one object is never handled concurrently).
#[derive(Default)]
struct WorkQueue {
    state: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    again: HashSet<String>,
}

impl WorkQueue {
    fn add(&self, uid: &str) {
        let mut s = self.state.lock().unwrap();
        if s.active.contains(uid) {
            s.again.insert(uid.to_string());
        } else if s.queued.insert(uid.to_string()) {
            s.order.push_back(uid.to_string());
            self.notify.notify_one();
        }
    }

    fn add_after(self: &Arc<Self>, uid: &str, after: Duration) {
        let (q, uid) = (self.clone(), uid.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            q.add(&uid);
        });
    }

    async fn next(&self) -> String {
        loop {
            {
                let mut s = self.state.lock().unwrap();
                if let Some(uid) = s.order.pop_front() {
                    s.queued.remove(&uid);
                    s.active.insert(uid.clone());
                    return uid;
                }
            }
            self.notify.notified().await;
        }
    }

    fn done(&self, uid: &str) {
        let again = {
            let mut s = self.state.lock().unwrap();
            s.active.remove(uid);
            s.again.remove(uid)
        };
        if again {
            self.add(uid);
        }
    }
}
