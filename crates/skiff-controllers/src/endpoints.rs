//! The endpoints controller (upstream's `pkg/controller/endpoint`): a core/v1 Endpoints object per
//! Service with a selector, listing the selected pods that have an IP — ready ones in `addresses`,
//! the others in `notReadyAddresses` (all in `addresses` with `publishNotReadyAddresses`), with
//! named target ports resolved per pod. Services without a selector (and ExternalName services) are
//! left alone: their Endpoints belong to whoever wrote them. When a Service goes away its Endpoints
//! goes too (Endpoints carry no ownerReference, so the garbage collector would not do it).
//!
//! Services and pods come from the controller manager's shared informers ([`crate::informer`]);
//! their event streams are fanned out after the cache applied the change, so a reconcile never
//! reads a cache older than the event that woke it. Endpoints have an informer of their own here.
//!
//! The pure parts (which addresses, how they are packed into subsets, what to write) are separate
//! functions; the endpointslice controller reuses the pod and port helpers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::informer::Informer;
use crate::metrics::{ControllerMetrics, Metrics};

/// The name upstream's controller records under (metrics label here).
const COMPONENT: &str = "endpoint-controller";
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
pub(crate) const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints used as leader-election locks have no Service and must survive the leftover sweep.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// Upstream's maxCapacity: larger Endpoints are truncated (EndpointSlices carry the full set).
const MAX_CAPACITY: usize = 1000;
/// How soon to look again when our own last write has not reached the store yet (the watch event
/// that brings it also triggers a reconcile; this is only the safety net).
pub(crate) const STALE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("a reflector stopped")]
    StoreGone(#[from] reflector::store::WriterDropped),
}

struct Ctx {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    triggers: Mutex<TriggerTimes>,
    members: Mutex<Membership>,
    written: Mutex<Written>,
    metrics: Arc<ControllerMetrics>,
}

/// A shared informer's cache and its stream of touched objects ([`Informer::subscribe`]).
pub type Shared<K, S> = (Store<K>, S);

pub async fn run<SS, PS>(client: Client, metrics: &Metrics, services: Shared<Service, SS>, pods: Shared<Pod, PS>)
where
    SS: Stream<Item = Result<Service, watcher::Error>> + Send + 'static,
    PS: Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
{
    let (services, service_events) = services;
    let (pods, pod_events) = pods;
    let mut endpoints = Informer::new(Api::<Endpoints>::all(client.clone()));
    let endpoint_events = endpoints.subscribe();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: services.clone(),
        pods,
        endpoints: endpoints.store(),
        triggers: Mutex::default(),
        members: Mutex::default(),
        written: Mutex::default(),
        metrics: metrics.controller(COMPONENT),
    });

    let c = ctx.clone();
    let service_events = service_events.inspect(move |s| {
        if let Ok(s) = s {
            on_service_event(&c, s);
        }
    });
    let (c1, c2) = (ctx.clone(), ctx.clone());
    let controller = crate::drain(
        Controller::for_stream(service_events, services)
            .watches_stream(pod_events, move |p: Pod| services_for_pod(&c1.services, &c1.members.lock().expect("members lock"), &p))
            .watches_stream(endpoint_events, move |e: Endpoints| on_endpoints_event(&c2, &e))
            .run(reconcile, error_policy, ctx.clone()),
        COMPONENT,
    );
    tokio::join!(endpoints.run(), controller, sweep_leftovers(ctx));
}

fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    tracing::warn!(service = %ObjectRef::from_obj(&*svc), "{COMPONENT}: {err}");
    Action::requeue(Duration::from_secs(1))
}

/// A Service the informer touched and its cache no longer has was deleted: so goes its Endpoints.
fn on_service_event(ctx: &Arc<Ctx>, s: &Service) {
    let (ns, name) = (namespace_of(s), s.name_any());
    if ctx.services.get(&ObjectRef::new(&name).within(&ns)).is_some() {
        return;
    }
    ctx.members.lock().expect("members lock").remove_service(&ns, &name);
    ctx.triggers.lock().expect("triggers lock").remove(&ns, &name);
    tokio::spawn(delete_endpoints(ctx.clone(), ns, name));
}

/// An Endpoints object changed: settle our write expectations, and resync its Service if we manage
/// it (an edit or deletion by someone else is undone).
fn on_endpoints_event(ctx: &Ctx, e: &Endpoints) -> Vec<ObjectRef<Service>> {
    let (ns, name) = (namespace_of(e), e.name_any());
    {
        let mut w = ctx.written.lock().expect("written lock");
        match ctx.endpoints.get(&ObjectRef::new(&name).within(&ns)) {
            Some(cur) => w.observe_apply(&ns, &name, &name, rv_of(&*cur)),
            None => w.observe_delete(&ns, &name, &name),
        }
    }
    let r = ObjectRef::new(&name).within(&ns);
    match ctx.services.get(&r) {
        Some(svc) if service_selector(&svc).is_some() => vec![r],
        _ => Vec::new(),
    }
}

pub(crate) fn namespace_of<K: Resource>(obj: &K) -> String {
    obj.meta().namespace.clone().unwrap_or_default()
}

pub(crate) fn rv_of<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref().and_then(|v| v.parse().ok())
}

async fn delete_endpoints(ctx: Arc<Ctx>, ns: String, name: String) {
    let api = Api::<Endpoints>::namespaced(ctx.client.clone(), &ns);
    for attempt in 0..6u32 {
        // Recreated meanwhile: the new Service's reconcile owns the object now.
        if ctx.services.get(&ObjectRef::new(&name).within(&ns)).is_some() {
            return;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.written.lock().expect("written lock").forget(&ns, &name);
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return,
            Err(e) => {
                tracing::warn!(endpoints = %format!("{ns}/{name}"), "deleting Endpoints of a deleted Service: {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}

/// Upstream's checkLeftoverEndpoints, once at start: Endpoints whose Service was deleted while no
/// controller was watching.
async fn sweep_leftovers(ctx: Arc<Ctx>) {
    crate::informer::ready(&ctx.endpoints).await;
    crate::informer::ready(&ctx.services).await;
    for ep in ctx.endpoints.state() {
        if ep.annotations().contains_key(LEADER_ANNOTATION) {
            continue;
        }
        let (ns, name) = (namespace_of(&*ep), ep.name_any());
        if ctx.services.get(&ObjectRef::new(&name).within(&ns)).is_none() {
            delete_endpoints(ctx.clone(), ns, name).await;
        }
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    // Never decide from a partial cache: at start-up that would empty every Endpoints.
    crate::informer::ready(&ctx.pods).await;
    crate::informer::ready(&ctx.endpoints).await;
    let (ns, name) = (namespace_of(&*svc), svc.name_any());
    let Some(selector) = service_selector(&svc) else {
        ctx.members.lock().expect("members lock").remove_service(&ns, &name);
        return Ok(Action::await_change());
    };
    let current = ctx.endpoints.get(&ObjectRef::new(&name).within(&ns));
    let present: HashMap<String, Option<u64>> = current.iter().map(|e| (e.name_any(), rv_of(&**e))).collect();
    if ctx.written.lock().expect("written lock").is_stale(&ns, &name, &present) {
        return Ok(Action::requeue(STALE_RETRY));
    }

    let pods = selected_pods(&ctx.pods, &ns, selector);
    ctx.members.lock().expect("members lock").set(&ns, &name, pods.iter().map(|p| p.name_any()));
    let trigger = ctx.triggers.lock().expect("triggers lock").compute(&svc, &pods);
    let subsets = desired_subsets(&svc, &pods);
    let Some(desired) = plan(&svc, current.as_deref(), subsets, trigger) else {
        return Ok(Action::await_change());
    };

    let api = Api::<Endpoints>::namespaced(ctx.client.clone(), &ns);
    let written = match &current {
        None => match api.create(&PostParams::default(), &desired).await {
            Ok(e) => e,
            // Forbidden in a terminating namespace: nothing will ever be created there again.
            Err(e) if is_namespace_terminating(&e) => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        },
        Some(_) => api.replace(&name, &PostParams::default(), &desired).await?,
    };
    tracing::debug!(
        service = %format!("{ns}/{name}"),
        ready = count(&written, |s| &s.addresses),
        not_ready = count(&written, |s| &s.not_ready_addresses),
        "wrote endpoints"
    );
    ctx.written.lock().expect("written lock").wrote(&ns, &name, &name, rv_of(&written));
    Ok(Action::await_change())
}

fn count(ep: &Endpoints, f: impl Fn(&EndpointSubset) -> &Option<Vec<EndpointAddress>>) -> usize {
    ep.subsets.iter().flatten().map(|s| f(s).as_ref().map_or(0, Vec::len)).sum()
}

pub(crate) fn is_namespace_terminating(e: &kube::Error) -> bool {
    let kube::Error::Api(s) = e else { return false };
    if s.code != 403 {
        return false;
    }
    let by_cause = s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"));
    by_cause || s.message.contains("because it is being terminated")
}

// ---------------------------------------------------------------------------------------------
// Pod and Service facts shared with the endpointslice controller.

/// The selector of a Service this controller manages: `None` for ExternalName services and for
/// services without a selector (an empty selector is no selector: upstream's storage drops empty
/// maps, so it reads back as nil).
pub(crate) fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

pub(crate) fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Pods of `ns` the selector picks, sorted by name so every computation sees them in one order.
pub(crate) fn selected_pods(pods: &Store<Pod>, ns: &str, selector: &BTreeMap<String, String>) -> Vec<Arc<Pod>> {
    let mut out = pods.state_filter(|p| p.metadata.namespace.as_deref() == Some(ns) && selector_matches(selector, p.labels()));
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// Services to reconcile when `pod` changed: those selecting it now, and those that listed it on
/// their last reconcile (its labels may have moved away, or it is gone).
pub(crate) fn services_for_pod(services: &Store<Service>, members: &Membership, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = namespace_of(pod);
    let mut names: BTreeSet<String> = members.services_of(&ns, &pod.name_any()).cloned().collect();
    for svc in services.state() {
        if svc.metadata.namespace.as_deref() == Some(ns.as_str())
            && service_selector(&svc).is_some_and(|s| selector_matches(s, pod.labels()))
        {
            names.insert(svc.name_any());
        }
    }
    names.into_iter().map(|n| ObjectRef::new(&n).within(&ns)).filter(|r| services.get(r).is_some()).collect()
}

pub(crate) fn is_pod_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// The pod's IPs, `podIPs` first; `podIP` alone when a writer set only that (upstream's API
/// server fills podIPs from podIP; a status written here may carry just podIP).
pub(crate) fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else { return Vec::new() };
    let ips: Vec<String> = status.pod_ips.iter().flatten().map(|p| p.ip.clone()).filter(|ip| !ip.is_empty()).collect();
    if !ips.is_empty() {
        return ips;
    }
    status.pod_ip.iter().filter(|ip| !ip.is_empty()).cloned().collect()
}

/// Upstream's ShouldPodBeInEndpoints: not finished, has an IP, and not terminating unless asked.
pub(crate) fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return false;
    }
    if pod_ips(pod).is_empty() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// A pod gets its hostname published when it names the Service as its subdomain.
pub(crate) fn should_set_hostname(pod: &Pod, svc: &Service) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.hostname.as_deref().is_some_and(|h| !h.is_empty())
        && spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace
}

pub(crate) fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Upstream's IsServiceIPSet: a cluster IP other than `None`.
pub(crate) fn is_service_ip_set(svc: &Service) -> bool {
    matches!(svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()), Some(ip) if !ip.is_empty() && ip != "None")
}

/// Upstream's FindPort: a numeric targetPort as is, a named one looked up in the pod's container
/// ports (and restartable init containers, i.e. sidecars) with the same protocol.
pub(crate) fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let proto = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == proto)
                .map(|p| p.container_port)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Desired state.

/// The pod's address for the Service's primary IP family (upstream's podToEndpointAddressForService).
fn address_ip(svc: &Service, pod: &Pod) -> Option<String> {
    let ips = pod_ips(pod);
    let spec = svc.spec.as_ref();
    let v6 = match spec.and_then(|s| s.ip_families.as_ref()).and_then(|f| f.first()) {
        Some(f) => f == "IPv6",
        None if is_service_ip_set(svc) => spec.and_then(|s| s.cluster_ip.as_deref()).is_some_and(|ip| ip.contains(':')),
        None => ips.first().is_some_and(|ip| ip.contains(':')),
    };
    ips.into_iter().find(|ip| ip.contains(':') == v6)
}

/// The subsets upstream's syncService computes for `svc` over the pods its selector picks.
pub fn desired_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.unwrap_or_default();
    let mut subsets = Vec::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, publish) {
            continue;
        }
        let Some(ip) = address_ip(svc, pod) else { continue };
        let pspec = pod.spec.as_ref();
        let addr = EndpointAddress {
            ip,
            node_name: pspec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            hostname: if should_set_hostname(pod, svc) { pspec.and_then(|s| s.hostname.clone()) } else { None },
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let ready = publish || is_pod_ready(pod);
        let subset = |ports: Option<Vec<EndpointPort>>| {
            let addrs = Some(vec![addr.clone()]);
            if ready {
                EndpointSubset { addresses: addrs, not_ready_addresses: None, ports }
            } else {
                EndpointSubset { addresses: None, not_ready_addresses: addrs, ports }
            }
        };
        if ports.is_empty() {
            // Headless services may have no ports: the addresses alone are the point (DNS).
            if is_headless(svc) {
                subsets.push(subset(None));
            }
            continue;
        }
        for sp in &ports {
            let Some(port) = find_port(pod, sp) else { continue };
            subsets.push(subset(Some(vec![EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: sp.protocol.clone(),
                app_protocol: sp.app_protocol.clone(),
            }])));
        }
    }
    repack(subsets)
}

type PortKey = (Option<String>, i32, Option<String>, Option<String>);
/// Addresses are told apart by IP and pod UID (two pods may share an IP, e.g. host network).
type AddrKey = (String, String);

fn addr_key(a: &EndpointAddress) -> AddrKey {
    (a.ip.clone(), a.target_ref.as_ref().and_then(|r| r.uid.clone()).unwrap_or_default())
}

/// Upstream's RepackSubsets: expand to (address, port, ready) and regroup into the canonical form,
/// one subset per distinct set of addresses, addresses sorted by IP then UID. Not-ready wins when
/// one address appears both ways for a port. Used on both sides of every comparison, so any
/// equivalent layout compares equal.
pub fn repack(subsets: Vec<EndpointSubset>) -> Vec<EndpointSubset> {
    // A port that cannot occur keeps headless, port-less addresses in the regrouping.
    const NO_PORTS: PortKey = (None, -1, None, None);
    let mut all: BTreeMap<AddrKey, EndpointAddress> = BTreeMap::new();
    let mut by_port: BTreeMap<PortKey, BTreeMap<AddrKey, bool>> = BTreeMap::new();
    for s in subsets {
        let ports: Vec<PortKey> = match s.ports.as_deref() {
            None | Some([]) => vec![NO_PORTS],
            Some(ps) => {
                ps.iter().map(|p| (p.name.clone().filter(|n| !n.is_empty()), p.port, p.protocol.clone(), p.app_protocol.clone())).collect()
            }
        };
        let tagged =
            s.addresses.into_iter().flatten().map(|a| (a, true)).chain(s.not_ready_addresses.into_iter().flatten().map(|a| (a, false)));
        for (mut a, ready) in tagged {
            if let Some(r) = a.target_ref.as_mut() {
                // A pod's resourceVersion changes with every status write; it says nothing here.
                r.resource_version = None;
            }
            let key = addr_key(&a);
            all.entry(key.clone()).or_insert(a);
            for p in &ports {
                let slot = by_port.entry(p.clone()).or_default().entry(key.clone()).or_insert(ready);
                *slot = *slot && ready;
            }
        }
    }
    let mut groups: BTreeMap<Vec<(AddrKey, bool)>, Vec<PortKey>> = BTreeMap::new();
    for (port, addrs) in by_port {
        groups.entry(addrs.into_iter().collect()).or_default().push(port);
    }
    groups
        .into_iter()
        .map(|(addrs, ports)| {
            let pick = |want: bool| -> Option<Vec<EndpointAddress>> {
                let v: Vec<EndpointAddress> = addrs.iter().filter(|(_, r)| *r == want).map(|(k, _)| all[k].clone()).collect();
                (!v.is_empty()).then_some(v)
            };
            let ports = (ports != [NO_PORTS]).then(|| {
                ports.into_iter().map(|(name, port, protocol, app_protocol)| EndpointPort { name, port, protocol, app_protocol }).collect()
            });
            EndpointSubset { addresses: pick(true), not_ready_addresses: pick(false), ports }
        })
        .collect()
}

fn len_of(v: &Option<Vec<EndpointAddress>>) -> usize {
    v.as_ref().map_or(0, Vec::len)
}

/// Upstream's truncateEndpoints: above 1000 addresses keep ready ones first, shared between subsets
/// in proportion to their size. Returns whether anything was cut.
fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let ready: usize = subsets.iter().map(|s| len_of(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| len_of(&s.not_ready_addresses)).sum();
    if ready + not_ready <= MAX_CAPACITY {
        return false;
    }
    let truncate_ready = ready > MAX_CAPACITY;
    let (max, total) = if truncate_ready { (MAX_CAPACITY, ready) } else { (MAX_CAPACITY - ready, not_ready) };
    let mut room = max;
    for s in subsets.iter_mut() {
        let n = if truncate_ready { len_of(&s.addresses) } else { len_of(&s.not_ready_addresses) };
        let share = ((n as f64 / total as f64) * max as f64).ceil() as usize;
        let take = share.min(room);
        if truncate_ready {
            if let Some(a) = s.addresses.as_mut() {
                a.truncate(take);
            }
            s.not_ready_addresses = None;
            room -= len_of(&s.addresses);
        } else {
            if let Some(a) = s.not_ready_addresses.as_mut() {
                a.truncate(take);
            }
            room -= len_of(&s.not_ready_addresses);
        }
    }
    true
}

/// The Endpoints object to write for `svc`, or `None` when `current` already says the same:
/// same subsets (compared in canonical form), same labels, capacity annotation right. The
/// trigger-time annotation alone never causes a write, as upstream.
pub fn plan(svc: &Service, current: Option<&Endpoints>, subsets: Vec<EndpointSubset>, trigger: Option<Timestamp>) -> Option<Endpoints> {
    let mut subsets = subsets;
    let truncated = truncate(&mut subsets);
    let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
    if let Some(cur) = current {
        let mut cur_labels = cur.metadata.labels.clone().unwrap_or_default();
        cur_labels.remove(HEADLESS_LABEL);
        let same_subsets = repack(cur.subsets.clone().unwrap_or_default()) == subsets;
        let capacity_ok = cur.annotations().contains_key(OVER_CAPACITY_ANNOTATION) == truncated;
        if same_subsets && cur_labels == svc_labels && capacity_ok {
            return None;
        }
    }
    let mut ep = current.cloned().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta { name: svc.metadata.name.clone(), namespace: svc.metadata.namespace.clone(), ..Default::default() },
        ..Default::default()
    });
    ep.subsets = (!subsets.is_empty()).then_some(subsets);
    let mut labels = svc_labels;
    if !is_service_ip_set(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    ep.metadata.labels = (!labels.is_empty()).then_some(labels);
    let mut ann = ep.metadata.annotations.take().unwrap_or_default();
    match trigger {
        Some(t) => ann.insert(TRIGGER_TIME_ANNOTATION.into(), t.to_string()),
        None => ann.remove(TRIGGER_TIME_ANNOTATION),
    };
    if truncated {
        ann.insert(OVER_CAPACITY_ANNOTATION.into(), "truncated".into());
    } else {
        ann.remove(OVER_CAPACITY_ANNOTATION);
    }
    ep.metadata.annotations = (!ann.is_empty()).then_some(ann);
    Some(ep)
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping shared with the endpointslice controller.

/// Upstream's TriggerTimeTracker: the `last-change-trigger-time` to publish is the earliest change
/// (a pod's Ready transition, or the Service's creation) not seen at the previous sync of the
/// Service; the creation time for a Service synced for the first time.
#[derive(Default)]
pub struct TriggerTimes {
    services: HashMap<(String, String), TriggerState>,
}

#[derive(Default)]
struct TriggerState {
    service: Option<Timestamp>,
    pods: HashMap<String, Timestamp>,
}

impl TriggerTimes {
    pub fn compute(&mut self, svc: &Service, pods: &[Arc<Pod>]) -> Option<Timestamp> {
        let key = (namespace_of(svc), svc.name_any());
        let known = self.services.contains_key(&key);
        let state = self.services.entry(key).or_default();
        let mut earliest: Option<Timestamp> = None;
        let mut seen = HashMap::new();
        for pod in pods {
            let Some(t) = ready_condition(pod).and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0) else { continue };
            let name = pod.name_any();
            if state.pods.get(&name).is_none_or(|prev| t > *prev) {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
            seen.insert(name, t);
        }
        let created = svc.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(c) = created
            && state.service.is_none_or(|prev| c > prev)
        {
            earliest = Some(earliest.map_or(c, |e| e.min(c)));
        }
        state.pods = seen;
        state.service = created;
        if !known {
            return created;
        }
        earliest
    }

    pub fn remove(&mut self, ns: &str, name: &str) {
        self.services.remove(&(ns.to_string(), name.to_string()));
    }
}

/// Which pods each Service listed at its last reconcile, so a pod whose labels no longer match
/// (or that is gone) still wakes the Services it has to leave.
#[derive(Default)]
pub struct Membership {
    by_pod: HashMap<(String, String), BTreeSet<String>>,
    by_service: HashMap<(String, String), BTreeSet<String>>,
}

impl Membership {
    pub fn set(&mut self, ns: &str, svc: &str, pods: impl Iterator<Item = String>) {
        let new: BTreeSet<String> = pods.collect();
        let old = self.by_service.insert((ns.into(), svc.into()), new.clone()).unwrap_or_default();
        for gone in old.difference(&new) {
            self.unlink(ns, gone, svc);
        }
        for added in new.difference(&old) {
            self.by_pod.entry((ns.into(), added.clone())).or_default().insert(svc.into());
        }
    }

    pub fn remove_service(&mut self, ns: &str, svc: &str) {
        for pod in self.by_service.remove(&(ns.into(), svc.into())).unwrap_or_default() {
            self.unlink(ns, &pod, svc);
        }
    }

    fn unlink(&mut self, ns: &str, pod: &str, svc: &str) {
        let key = (ns.to_string(), pod.to_string());
        if let Some(set) = self.by_pod.get_mut(&key) {
            set.remove(svc);
            if set.is_empty() {
                self.by_pod.remove(&key);
            }
        }
    }

    pub fn services_of<'a>(&'a self, ns: &str, pod: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.by_pod.get(&(ns.to_string(), pod.to_string())).into_iter().flatten()
    }
}

/// Our own writes the reflector has not shown us yet, per owner (a Service) and object name —
/// upstream's staleEndpointsTracker / endpointSliceTracker. A reconcile that would compare against
/// an older copy waits instead of writing a duplicate (slices have generated names) or losing a
/// conflict. Expectations expire, so a missed event cannot wedge a Service.
#[derive(Default)]
pub struct Written {
    by_owner: HashMap<(String, String), HashMap<String, (Expect, Instant)>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    AtLeast(u64),
    Gone,
}

const EXPECTATION_TTL: Duration = Duration::from_secs(30);

impl Written {
    pub fn wrote(&mut self, ns: &str, owner: &str, name: &str, rv: Option<u64>) {
        let Some(rv) = rv else { return };
        self.by_owner.entry((ns.into(), owner.into())).or_default().insert(name.into(), (Expect::AtLeast(rv), Instant::now()));
    }

    pub fn deleted(&mut self, ns: &str, owner: &str, name: &str) {
        self.by_owner.entry((ns.into(), owner.into())).or_default().insert(name.into(), (Expect::Gone, Instant::now()));
    }

    pub fn observe_apply(&mut self, ns: &str, owner: &str, name: &str, rv: Option<u64>) {
        self.settle(ns, owner, name, |e| matches!((e, rv), (Expect::AtLeast(want), Some(have)) if have >= want));
    }

    pub fn observe_delete(&mut self, ns: &str, owner: &str, name: &str) {
        self.settle(ns, owner, name, |_| true);
    }

    pub fn forget(&mut self, ns: &str, owner: &str) {
        self.by_owner.remove(&(ns.to_string(), owner.to_string()));
    }

    fn settle(&mut self, ns: &str, owner: &str, name: &str, met: impl Fn(Expect) -> bool) {
        let key = (ns.to_string(), owner.to_string());
        if let Some(m) = self.by_owner.get_mut(&key) {
            if m.get(name).is_some_and(|(e, _)| met(*e)) {
                m.remove(name);
            }
            if m.is_empty() {
                self.by_owner.remove(&key);
            }
        }
    }

    /// Whether the store (`present`: name → resourceVersion of the owner's objects) is behind what
    /// we wrote.
    pub fn is_stale(&mut self, ns: &str, owner: &str, present: &HashMap<String, Option<u64>>) -> bool {
        let key = (ns.to_string(), owner.to_string());
        let Some(m) = self.by_owner.get_mut(&key) else { return false };
        m.retain(|_, (_, at)| at.elapsed() < EXPECTATION_TTL);
        let stale = m.iter().any(|(name, (e, _))| match e {
            Expect::AtLeast(want) => present.get(name).is_none_or(|have| have.is_some_and(|h| h < *want)),
            Expect::Gone => present.contains_key(name),
        });
        if m.is_empty() {
            self.by_owner.remove(&key);
        }
        stale
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) fn svc(name: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                creation_timestamp: Some(Time("2025-01-01T00:00:00Z".parse().unwrap())),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                cluster_ip: Some("10.43.0.10".into()),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn port(name: &str, port: i32, target: IntOrString) -> ServicePort {
        ServicePort { name: Some(name.into()), port, protocol: Some("TCP".into()), target_port: Some(target), ..Default::default() }
    }

    pub(crate) fn pod(name: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time("2025-01-01T00:00:10Z".parse().unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn ips(v: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        v.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_split_sorted_by_ip() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080))]);
        let pods = vec![pod("c", "10.42.0.12", true), pod("a", "10.42.0.11", true), pod("b", "10.42.0.5", false)];
        let subsets = desired_subsets(&s, &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.11", "10.42.0.12"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.42.0.5"]);
        let p = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!((p.name.as_deref(), p.port, p.protocol.as_deref()), (Some("http"), 8080, Some("TCP")));
        let a = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        let r = a.target_ref.as_ref().unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.namespace.as_deref(), r.uid.as_deref()),
            (Some("Pod"), Some("a"), Some("default"), Some("uid-a"))
        );
    }

    #[test]
    fn named_target_port_resolves_per_pod() {
        let s = svc("web", vec![port("web", 80, IntOrString::String("http".into()))]);
        let mut other = (*pod("b", "10.42.0.3", true)).clone();
        other.spec.as_mut().unwrap().containers[0].ports.as_mut().unwrap()[0].container_port = 9090;
        let mut unnamed = (*pod("c", "10.42.0.4", true)).clone();
        unnamed.spec.as_mut().unwrap().containers[0].ports = None;
        let subsets = desired_subsets(&s, &[pod("a", "10.42.0.2", true), Arc::new(other), Arc::new(unnamed)]);
        // The pod without the named port has no address; the two others differ by port.
        assert_eq!(subsets.len(), 2);
        let by_port: BTreeMap<i32, Vec<&str>> = subsets.iter().map(|s| (s.ports.as_ref().unwrap()[0].port, ips(&s.addresses))).collect();
        assert_eq!(by_port, BTreeMap::from([(8080, vec!["10.42.0.2"]), (9090, vec!["10.42.0.3"])]));
        assert!(subsets.iter().all(|s| s.ports.as_ref().unwrap()[0].name.as_deref() == Some("web")));
    }

    #[test]
    fn publish_not_ready_addresses_lists_everything_as_ready() {
        let mut s = svc("web", vec![port("http", 80, IntOrString::Int(8080))]);
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut terminating = (*pod("c", "10.42.0.9", true)).clone();
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let subsets = desired_subsets(&s, &[pod("a", "10.42.0.2", false), pod("b", "10.42.0.3", true), Arc::new(terminating)]);
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.2", "10.42.0.3", "10.42.0.9"]);
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn terminating_finished_and_ipless_pods_are_left_out() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080))]);
        let mut terminating = (*pod("t", "10.42.0.9", true)).clone();
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let mut done = (*pod("d", "10.42.0.8", false)).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut no_ip = (*pod("n", "", false)).clone();
        no_ip.status.as_mut().unwrap().pod_ips = None;
        let subsets = desired_subsets(&s, &[pod("a", "10.42.0.2", true), Arc::new(terminating), Arc::new(done), Arc::new(no_ip)]);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.2"]);
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn headless_without_ports_and_hostnames() {
        let mut s = svc("db", vec![]);
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let mut named = (*pod("db-0", "10.42.0.2", true)).clone();
        named.spec.as_mut().unwrap().hostname = Some("db-0".into());
        named.spec.as_mut().unwrap().subdomain = Some("db".into());
        let mut elsewhere = (*pod("db-1", "10.42.0.3", true)).clone();
        elsewhere.spec.as_mut().unwrap().hostname = Some("db-1".into());
        elsewhere.spec.as_mut().unwrap().subdomain = Some("other".into());
        let subsets = desired_subsets(&s, &[Arc::new(named), Arc::new(elsewhere)]);
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        let hosts: Vec<Option<&str>> = subsets[0].addresses.iter().flatten().map(|a| a.hostname.as_deref()).collect();
        assert_eq!(hosts, [Some("db-0"), None]);
        let ep = plan(&s, None, subsets, None).unwrap();
        assert_eq!(ep.labels().get(HEADLESS_LABEL).map(String::as_str), Some(""));

        // A headful service without ports gets no addresses at all.
        let mut headful = svc("x", vec![]);
        headful.spec.as_mut().unwrap().ports = None;
        assert!(desired_subsets(&headful, &[pod("a", "10.42.0.2", true)]).is_empty());
    }

    #[test]
    fn plan_is_idempotent_and_ignores_order_and_trigger_time() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080)), port("metrics", 9100, IntOrString::Int(9100))]);
        let pods = vec![pod("a", "10.42.0.2", true), pod("b", "10.42.0.3", false)];
        let t = Some("2025-01-01T00:00:10Z".parse().unwrap());
        let first = plan(&s, None, desired_subsets(&s, &pods), t).expect("created");
        assert_eq!(first.annotations().get(TRIGGER_TIME_ANNOTATION).map(String::as_str), Some("2025-01-01T00:00:10Z"));
        assert_eq!(first.labels().get("app").map(String::as_str), Some("web"));
        assert!(!first.labels().contains_key(HEADLESS_LABEL));
        // Same content, different trigger time: nothing to write.
        assert!(plan(&s, Some(&first), desired_subsets(&s, &pods), None).is_none());
        // A hand-shuffled but equivalent layout is still equal.
        let mut shuffled = first.clone();
        let sub = shuffled.subsets.as_mut().unwrap();
        sub[0].ports.as_mut().unwrap().reverse();
        sub[0].addresses.as_mut().unwrap()[0].target_ref.as_mut().unwrap().resource_version = Some("77".into());
        assert!(plan(&s, Some(&shuffled), desired_subsets(&s, &pods), None).is_none());
        // Readiness flips: a write moving the address.
        let flipped = vec![pod("a", "10.42.0.2", false), pod("b", "10.42.0.3", false)];
        let next = plan(&s, Some(&first), desired_subsets(&s, &flipped), None).expect("update");
        assert!(next.subsets.as_ref().unwrap()[0].addresses.is_none());
        assert_eq!(ips(&next.subsets.as_ref().unwrap()[0].not_ready_addresses), ["10.42.0.2", "10.42.0.3"]);
        // Label changes on the service are copied.
        let mut relabeled = s.clone();
        relabeled.metadata.labels.as_mut().unwrap().insert("tier".into(), "front".into());
        let ep = plan(&relabeled, Some(&first), desired_subsets(&s, &pods), None).expect("labels");
        assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    }

    #[test]
    fn over_capacity_is_truncated_and_annotated() {
        let s = svc("big", vec![port("http", 80, IntOrString::Int(8080))]);
        let pods: Vec<Arc<Pod>> =
            (0..1100).map(|i| pod(&format!("p{i:04}"), &format!("10.42.{}.{}", i / 250, i % 250), i % 2 == 0)).collect();
        let ep = plan(&s, None, desired_subsets(&s, &pods), None).unwrap();
        let sub = &ep.subsets.as_ref().unwrap()[0];
        assert_eq!(len_of(&sub.addresses), 550);
        assert_eq!(len_of(&sub.not_ready_addresses), 450);
        assert_eq!(ep.annotations().get(OVER_CAPACITY_ANNOTATION).map(String::as_str), Some("truncated"));
        assert!(plan(&s, Some(&ep), desired_subsets(&s, &pods), None).is_none(), "truncated result is stable");
    }

    #[test]
    fn trigger_times_follow_upstream() {
        let s = svc("web", vec![]);
        let mut tt = TriggerTimes::default();
        let pods = vec![pod("a", "10.42.0.2", true)];
        // First sync: the service's creation.
        assert_eq!(tt.compute(&s, &pods), Some("2025-01-01T00:00:00Z".parse().unwrap()));
        // Nothing changed since.
        assert_eq!(tt.compute(&s, &pods), None);
        // A pod's Ready transition.
        let mut later = (*pod("a", "10.42.0.2", false)).clone();
        let t: Timestamp = "2025-01-01T00:01:00.5Z".parse().unwrap();
        later.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time = Some(Time(t));
        assert_eq!(tt.compute(&s, &[Arc::new(later)]), Some(t));
        assert_eq!(t.to_string(), "2025-01-01T00:01:00.5Z", "RFC 3339 with nanoseconds, trailing zeros dropped");
    }

    #[test]
    fn membership_remembers_who_listed_a_pod() {
        let mut m = Membership::default();
        m.set("ns", "a", ["p1".to_string(), "p2".to_string()].into_iter());
        m.set("ns", "b", ["p2".to_string()].into_iter());
        assert_eq!(m.services_of("ns", "p2").cloned().collect::<Vec<_>>(), ["a", "b"]);
        m.set("ns", "a", ["p1".to_string()].into_iter());
        assert_eq!(m.services_of("ns", "p2").cloned().collect::<Vec<_>>(), ["b"]);
        m.remove_service("ns", "b");
        assert_eq!(m.services_of("ns", "p2").count(), 0);
        assert_eq!(m.services_of("ns", "p1").cloned().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn written_expectations() {
        let mut w = Written::default();
        let present = |rv: Option<u64>| -> HashMap<String, Option<u64>> { rv.map(|v| ("e".to_string(), Some(v))).into_iter().collect() };
        assert!(!w.is_stale("ns", "s", &present(None)));
        w.wrote("ns", "s", "e", Some(10));
        assert!(w.is_stale("ns", "s", &present(None)));
        assert!(w.is_stale("ns", "s", &present(Some(9))));
        assert!(!w.is_stale("ns", "s", &present(Some(10))));
        w.observe_apply("ns", "s", "e", Some(10));
        assert!(w.by_owner.is_empty());
        w.deleted("ns", "s", "e");
        assert!(w.is_stale("ns", "s", &present(Some(10))));
        w.observe_delete("ns", "s", "e");
        assert!(!w.is_stale("ns", "s", &present(Some(10))));
    }

    #[test]
    fn selectorless_and_external_name_services_are_not_managed() {
        let mut s = svc("x", vec![]);
        assert!(service_selector(&s).is_some());
        s.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        assert!(service_selector(&s).is_none());
        s.spec.as_mut().unwrap().selector = None;
        assert!(service_selector(&s).is_none());
        let mut e = svc("e", vec![]);
        e.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert!(service_selector(&e).is_none());
    }
}
