//! The EndpointSlice controller (upstream's `pkg/controller/endpointslice` with the reconciler of
//! `k8s.io/endpointslice`): discovery.k8s.io/v1 EndpointSlices for every Service with a selector.
//! Each slice holds at most `--max-endpoints-per-slice` (100) endpoints that share one port list;
//! terminating pods stay listed (ready=false, serving as their readiness says, terminating=true) so
//! proxies can drain them. Slices are named `<service>-<random>`, labelled with the Service name and
//! this controller as manager, and owned by the Service (the garbage collector deletes them with it,
//! as upstream relies on). Existing slices are updated in place and filled before new ones are
//! created, so a change touches as few slices as upstream's algorithm does.
//!
//! Services, pods and nodes (for the zone) come from the shared informers; slices have an informer
//! of their own here.
//!
//! Not done (upstream has them): topology-aware hints and `trafficDistribution`, dual-stack slices
//! for headless Services without `ipFamilies` (the API server here does not default ipFamilies, so
//! the family comes from the cluster IP and is IPv4 for headless ones), and the EndpointSlice
//! mirroring of selector-less Services' Endpoints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::endpoints::{
    HEADLESS_LABEL, Membership, STALE_RETRY, Shared, TRIGGER_TIME_ANNOTATION, TriggerTimes, Written, find_port, is_headless,
    is_namespace_terminating, is_pod_ready, is_service_ip_set, namespace_of, pod_ips, rv_of, selected_pods, service_selector,
    services_for_pod, should_pod_be_in_endpoints, should_set_hostname,
};
use crate::informer::Informer;
use crate::metrics::{ControllerMetrics, Metrics};

/// The name upstream's controller records under (metrics label here).
const COMPONENT: &str = "endpointslice-controller";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Upstream's `--max-endpoints-per-slice` default.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// How soon to retry a Service whose pods name a Node the store does not have (upstream requeues
/// with backoff and meanwhile publishes the slice without those pods).
const MISSING_NODE_RETRY: Duration = Duration::from_secs(2);

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
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    triggers: Mutex<TriggerTimes>,
    members: Mutex<Membership>,
    written: Mutex<Written>,
    metrics: Arc<ControllerMetrics>,
    max_per_slice: usize,
}

pub async fn run<SS, PS>(client: Client, metrics: &Metrics, services: Shared<Service, SS>, pods: Shared<Pod, PS>, nodes: Store<Node>)
where
    SS: Stream<Item = Result<Service, watcher::Error>> + Send + 'static,
    PS: Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
{
    let (services, service_events) = services;
    let (pods, pod_events) = pods;
    let mut slices = Informer::new(Api::<EndpointSlice>::all(client.clone()));
    let slice_events = slices.subscribe();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: services.clone(),
        pods,
        slices: slices.store(),
        nodes,
        triggers: Mutex::default(),
        members: Mutex::default(),
        written: Mutex::default(),
        metrics: metrics.controller(COMPONENT),
        max_per_slice: DEFAULT_MAX_ENDPOINTS_PER_SLICE,
    });

    let c = ctx.clone();
    let service_events = service_events.inspect(move |s| {
        // A deleted Service: its slices go with it through their ownerReference (garbage collector).
        if let Ok(s) = s
            && c.services.get(&ObjectRef::from_obj(s)).is_none()
        {
            let (ns, name) = (namespace_of(s), s.name_any());
            c.members.lock().expect("members lock").remove_service(&ns, &name);
            c.triggers.lock().expect("triggers lock").remove(&ns, &name);
            c.written.lock().expect("written lock").forget(&ns, &name);
        }
    });
    let (c1, c2) = (ctx.clone(), ctx.clone());
    let controller = crate::drain(
        Controller::for_stream(service_events, services)
            .watches_stream(pod_events, move |p: Pod| services_for_pod(&c1.services, &c1.members.lock().expect("members lock"), &p))
            .watches_stream(slice_events, move |s: EndpointSlice| on_slice(&c2, &s))
            .run(reconcile, error_policy, ctx),
        COMPONENT,
    );
    tokio::join!(slices.run(), controller);
}

fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    tracing::warn!(service = %ObjectRef::from_obj(&*svc), "{COMPONENT}: {err}");
    Action::requeue(Duration::from_secs(1))
}

/// A slice changed: settle our write expectations and resync its Service if we manage it (someone
/// else's edit or deletion of a managed slice is undone).
fn on_slice(ctx: &Ctx, s: &EndpointSlice) -> Vec<ObjectRef<Service>> {
    if s.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(CONTROLLER_NAME) {
        return Vec::new();
    }
    let Some(svc) = s.labels().get(SERVICE_NAME_LABEL) else { return Vec::new() };
    let ns = namespace_of(s);
    {
        let mut w = ctx.written.lock().expect("written lock");
        match ctx.slices.get(&ObjectRef::from_obj(s)) {
            Some(cur) => w.observe_apply(&ns, svc, &s.name_any(), rv_of(&*cur)),
            None => w.observe_delete(&ns, svc, &s.name_any()),
        }
    }
    let r = ObjectRef::new(svc).within(&ns);
    match ctx.services.get(&r) {
        Some(found) if service_selector(&found).is_some() => vec![r],
        _ => Vec::new(),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    crate::informer::ready(&ctx.pods).await;
    crate::informer::ready(&ctx.slices).await;
    crate::informer::ready(&ctx.nodes).await;
    let (ns, name) = (namespace_of(&*svc), svc.name_any());
    let Some(selector) = service_selector(&svc) else {
        ctx.members.lock().expect("members lock").remove_service(&ns, &name);
        return Ok(Action::await_change());
    };
    let mut existing: Vec<EndpointSlice> = ctx
        .slices
        .state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&name)
                && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(CONTROLLER_NAME)
                // Slices being deleted would keep the controller stuck on them (upstream drops them too).
                && s.metadata.deletion_timestamp.is_none()
        })
        .into_iter()
        .map(|s| (*s).clone())
        .collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let present: HashMap<String, Option<u64>> = existing.iter().map(|s| (s.name_any(), rv_of(s))).collect();
    if ctx.written.lock().expect("written lock").is_stale(&ns, &name, &present) {
        return Ok(Action::requeue(STALE_RETRY));
    }

    let pods = selected_pods(&ctx.pods, &ns, selector);
    ctx.members.lock().expect("members lock").set(&ns, &name, pods.iter().map(|p| p.name_any()));
    let trigger = ctx.triggers.lock().expect("triggers lock").compute(&svc, &pods);
    let zone_of = |node: &str| ctx.nodes.get(&ObjectRef::new(node)).map(|n| n.labels().get(ZONE_LABEL).filter(|z| !z.is_empty()).cloned());
    let plan = plan_slices(&svc, &pods, &zone_of, &existing, ctx.max_per_slice, trigger);

    let api = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns);
    // Creating slices for a Service being deleted would race the garbage collector removing them.
    if svc.metadata.deletion_timestamp.is_none() {
        for s in &plan.create {
            match api.create(&PostParams::default(), s).await {
                Ok(c) => ctx.written.lock().expect("written lock").wrote(&ns, &name, &c.name_any(), rv_of(&c)),
                Err(e) if is_namespace_terminating(&e) => return Ok(Action::await_change()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    for s in &plan.update {
        let u = api.replace(&s.name_any(), &PostParams::default(), s).await?;
        ctx.written.lock().expect("written lock").wrote(&ns, &name, &u.name_any(), rv_of(&u));
    }
    for s in &plan.delete {
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(st)) if st.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        ctx.written.lock().expect("written lock").deleted(&ns, &name, &s.name_any());
    }
    if !plan.missing_nodes.is_empty() {
        tracing::info!(service = %format!("{ns}/{name}"), nodes = ?plan.missing_nodes, "skipping pods on nodes that do not exist");
        return Ok(Action::requeue(MISSING_NODE_RETRY));
    }
    Ok(Action::await_change())
}

// ---------------------------------------------------------------------------------------------
// The reconciler proper: pure, so it can be checked without an API server.

#[derive(Debug, Default)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
    /// Nodes named by selected pods that the node store lacks; those pods were skipped.
    pub missing_nodes: Vec<String>,
}

/// Node zone lookup: `None` when the node is unknown, `Some(zone)` otherwise.
pub type ZoneOf<'a> = dyn Fn(&str) -> Option<Option<String>> + 'a;

/// Port lists compare as sets; `name: ""` and no name are the same port.
type PortKey = Vec<(String, Option<i32>, Option<String>, Option<String>)>;
/// Upstream's endpoint hash: addresses, hostname and the pod it points at.
type EndpointKey = (Vec<String>, String, String, String);

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut k: PortKey =
        ports.iter().map(|p| (p.name.clone().unwrap_or_default(), p.port, p.protocol.clone(), p.app_protocol.clone())).collect();
    k.sort();
    k
}

fn endpoint_key(e: &Endpoint) -> EndpointKey {
    let mut addrs = e.addresses.clone();
    addrs.sort();
    let r = e.target_ref.as_ref();
    (
        addrs,
        e.hostname.clone().unwrap_or_default(),
        r.and_then(|r| r.namespace.clone()).unwrap_or_default(),
        r.and_then(|r| r.name.clone()).unwrap_or_default(),
    )
}

/// Upstream's EndpointsEqualBeyondHash: what the key does not cover (ignoring the pod's
/// resourceVersion in targetRef).
fn equal_beyond_key(a: &Endpoint, b: &Endpoint) -> bool {
    let cond = |e: &Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    let target = |e: &Endpoint| e.target_ref.clone().map(|r| ObjectReference { resource_version: None, ..r });
    a.node_name == b.node_name && a.zone == b.zone && cond(a) == cond(b) && target(a) == target(b)
}

/// Address types the Service's slices carry: its ipFamilies, else the family of its cluster IP
/// (IPv4 for headless Services, see the module notes).
fn address_types(svc: &Service) -> Vec<&'static str> {
    let spec = svc.spec.as_ref();
    let mut types: Vec<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    types.dedup();
    if types.is_empty() {
        let v6 = is_service_ip_set(svc) && spec.and_then(|s| s.cluster_ip.as_deref()).is_some_and(|ip| ip.contains(':'));
        types.push(if v6 { "IPv6" } else { "IPv4" });
    }
    types
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    slice.owner_references().iter().any(|o| Some(&o.uid) == svc.metadata.uid.as_ref() && o.kind == "Service" && o.api_version == "v1")
}

fn is_reserved_label(k: &str) -> bool {
    k == SERVICE_NAME_LABEL || k == MANAGED_BY_LABEL || k == HEADLESS_LABEL
}

/// Upstream's setEndpointSliceLabels: the Service's labels (minus the reserved ones) plus the
/// service-name, managed-by and headless labels; and whether the copied part changed.
fn slice_labels(current: Option<&BTreeMap<String, String>>, svc: &Service) -> (BTreeMap<String, String>, bool) {
    let keep = |m: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        m.into_iter().flatten().filter(|(k, _)| !is_reserved_label(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut labels = keep(svc.metadata.labels.as_ref());
    let changed = keep(current) != labels;
    if !is_service_ip_set(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    (labels, changed)
}

fn new_slice(svc: &Service, ports: &[EndpointPort], address_type: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.name_any())),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(None, svc).0),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: svc.name_any(),
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Vec::new(),
        ports: (!ports.is_empty()).then(|| ports.to_vec()),
    }
}

/// Upstream's getEndpointPorts: the Service's ports resolved against this pod.
fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    if ports.is_empty() && is_headless(svc) {
        return Vec::new();
    }
    ports
        .iter()
        .filter_map(|sp| {
            let n = find_port(pod, sp)?;
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(n),
                protocol: sp.protocol.clone(),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// Upstream's podToEndpoint.
fn pod_to_endpoint(pod: &Pod, zone: Option<String>, svc: &Service, address_type: &str) -> Endpoint {
    let serving = is_pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    // Ready is never true for a terminating pod, unless the Service publishes not-ready addresses.
    let publish = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let ready = publish || (serving && !terminating);
    let want_v6 = address_type == "IPv6";
    let addresses = pod_ips(pod)
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv6() == want_v6)
        .map(|ip| ip.to_string())
        .collect();
    let spec = pod.spec.as_ref();
    Endpoint {
        addresses,
        conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        node_name: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
        zone,
        hostname: if should_set_hostname(pod, svc) { spec.and_then(|s| s.hostname.clone()) } else { None },
        ..Default::default()
    }
}

/// What to create, update and delete so the slices of `svc` list `pods` (upstream's
/// Reconciler.Reconcile followed by finalize's turning of deletes into updates).
pub fn plan_slices(
    svc: &Service,
    pods: &[Arc<Pod>],
    zone_of: &ZoneOf<'_>,
    existing: &[EndpointSlice],
    max: usize,
    trigger: Option<Timestamp>,
) -> SlicePlan {
    let types = address_types(svc);
    let mut plan = SlicePlan::default();
    let mut unsupported = Vec::new();
    let mut by_type: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in existing {
        match types.iter().find(|t| **t == s.address_type) {
            Some(t) => by_type.entry(t).or_default().push(s),
            None => unsupported.push(s.clone()),
        }
    }
    for t in &types {
        let (mut create, mut update, mut delete) = reconcile_address_type(
            svc,
            pods,
            zone_of,
            by_type.get(t).map(Vec::as_slice).unwrap_or_default(),
            t,
            max,
            &mut plan.missing_nodes,
        );
        finalize(svc, &mut create, &mut update, &mut delete);
        plan.create.extend(create);
        plan.update.extend(update);
        plan.delete.extend(delete);
    }
    plan.delete.extend(unsupported);
    for s in plan.create.iter_mut().chain(plan.update.iter_mut()) {
        let ann = s.metadata.annotations.get_or_insert_with(Default::default);
        match trigger {
            Some(t) => ann.insert(TRIGGER_TIME_ANNOTATION.into(), t.to_string()),
            None => ann.remove(TRIGGER_TIME_ANNOTATION),
        };
        if ann.is_empty() {
            s.metadata.annotations = None;
        }
    }
    plan.missing_nodes.sort();
    plan.missing_nodes.dedup();
    plan
}

type Changes = (Vec<EndpointSlice>, Vec<EndpointSlice>, Vec<EndpointSlice>);

fn reconcile_address_type(
    svc: &Service,
    pods: &[Arc<Pod>],
    zone_of: &ZoneOf<'_>,
    existing: &[&EndpointSlice],
    address_type: &str,
    max: usize,
    missing_nodes: &mut Vec<String>,
) -> Changes {
    let (mut create, mut update, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    let mut existing_by_ports: BTreeMap<PortKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in existing {
        if owned_by(s, svc) {
            existing_by_ports.entry(port_key(s.ports.as_deref().unwrap_or_default())).or_default().push(s);
        } else {
            delete.push((*s).clone());
        }
    }

    let publish = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let mut desired: BTreeMap<PortKey, (Vec<EndpointPort>, BTreeMap<EndpointKey, Endpoint>)> = BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let ports = endpoint_ports(svc, pod);
        let entry = desired.entry(port_key(&ports)).or_insert_with(|| (ports, BTreeMap::new()));
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let zone = match zone_of(&node) {
            Some(z) => z,
            // A pod on an unknown node is left out (it may be a leftover the pod GC will remove),
            // unless the Service asked for every address.
            None if !publish => {
                missing_nodes.push(node);
                continue;
            }
            None => None,
        };
        let ep = pod_to_endpoint(pod, zone, svc, address_type);
        if !ep.addresses.is_empty() {
            entry.1.insert(endpoint_key(&ep), ep);
        }
    }

    let mut by_ports = existing_by_ports;
    for (key, (ports, mut want)) in desired {
        let slices = by_ports.remove(&key).unwrap_or_default();
        let (c, u, d) = reconcile_ports(svc, &slices, &mut want, &ports, address_type, max);
        create.extend(c);
        update.extend(u);
        delete.extend(d);
    }
    // Port lists no pod has any more.
    delete.extend(by_ports.into_values().flatten().cloned());

    // A Service with no endpoints still gets one empty slice, so consumers can tell "no
    // endpoints" from "not processed yet".
    if existing.len() == delete.len() && create.is_empty() {
        let placeholder = new_slice(svc, &[], address_type);
        if delete.len() == 1 && is_same_placeholder(&delete[0], &placeholder) {
            delete.clear();
        } else {
            create.push(placeholder);
        }
    }
    (create, update, delete)
}

fn is_same_placeholder(s: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    s.metadata.namespace == placeholder.metadata.namespace
        && s.labels() == placeholder.labels()
        && s.address_type == placeholder.address_type
        && s.endpoints.is_empty()
        && s.ports.as_ref().is_none_or(Vec::is_empty)
}

/// Upstream's reconcileByPortMapping for one port list: keep desired endpoints where they already
/// are (updating changed ones), drop the rest, top up slices being updated anyway (fullest first),
/// then put what is left into the unchanged slice it fills best, or new slices.
fn reconcile_ports(
    svc: &Service,
    existing: &[&EndpointSlice],
    desired: &mut BTreeMap<EndpointKey, Endpoint>,
    ports: &[EndpointPort],
    address_type: &str,
    max: usize,
) -> Changes {
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut to_update: BTreeSet<String> = BTreeSet::new();
    let mut to_delete: BTreeSet<String> = BTreeSet::new();

    for s in existing {
        let name = s.name_any();
        let mut kept = Vec::new();
        let mut changed = false;
        for ep in &s.endpoints {
            if let Some(want) = desired.remove(&endpoint_key(ep)) {
                changed |= !equal_beyond_key(&want, ep);
                kept.push(want);
            }
        }
        let (labels, labels_changed) = slice_labels(s.metadata.labels.as_ref(), svc);
        let mut copy = (*s).clone();
        if changed || kept.len() != s.endpoints.len() {
            if kept.is_empty() {
                to_delete.insert(name.clone());
            } else {
                copy.endpoints = kept;
                copy.metadata.labels = Some(labels);
                to_update.insert(name.clone());
            }
        } else if labels_changed {
            copy.metadata.labels = Some(labels);
            to_update.insert(name.clone());
        } else {
            unchanged.insert(name.clone());
        }
        by_name.insert(name, copy);
    }

    let pop = |d: &mut BTreeMap<EndpointKey, Endpoint>| d.pop_first().map(|(_, e)| e);
    if !desired.is_empty() && !to_update.is_empty() {
        let mut order: Vec<&String> = to_update.iter().collect();
        order.sort_by_key(|n| std::cmp::Reverse(by_name[*n].endpoints.len()));
        for n in order {
            let s = by_name.get_mut(n).expect("slice by name");
            while s.endpoints.len() < max {
                let Some(e) = pop(desired) else { break };
                s.endpoints.push(e);
            }
        }
    }

    let mut create = Vec::new();
    while !desired.is_empty() {
        let fill = if desired.len() < max {
            // The unchanged slice that ends up closest to full (upstream's getSliceToFill).
            unchanged
                .iter()
                .filter_map(|n| max.checked_sub(desired.len() + by_name[n].endpoints.len()).map(|room| (room, n)))
                .filter(|(room, _)| *room < max)
                .min_by_key(|(room, _)| *room)
                .map(|(_, n)| n.clone())
        } else {
            None
        };
        match fill {
            Some(n) => {
                let s = by_name.get_mut(&n).expect("slice by name");
                while s.endpoints.len() < max {
                    let Some(e) = pop(desired) else { break };
                    s.endpoints.push(e);
                }
                unchanged.remove(&n);
                to_update.insert(n);
            }
            None => {
                let mut s = new_slice(svc, ports, address_type);
                while s.endpoints.len() < max {
                    let Some(e) = pop(desired) else { break };
                    s.endpoints.push(e);
                }
                create.push(s);
            }
        }
    }
    let update = to_update.iter().map(|n| by_name[n].clone()).collect();
    let delete = to_delete.iter().map(|n| by_name[n].clone()).collect();
    (create, update, delete)
}

/// Upstream's finalize: a slice about to be deleted is reused for one about to be created (same
/// address type, owned by this Service) — one update instead of a delete and a create.
fn finalize(svc: &Service, create: &mut Vec<EndpointSlice>, update: &mut Vec<EndpointSlice>, delete: &mut Vec<EndpointSlice>) {
    let mut i = 0;
    while i < delete.len() && !create.is_empty() {
        let last = create.last().expect("non-empty");
        if delete[i].address_type == last.address_type && owned_by(&delete[i], svc) {
            let mut s = create.pop().expect("non-empty");
            let old = delete.remove(i);
            s.metadata.name = old.metadata.name;
            s.metadata.resource_version = old.metadata.resource_version;
            update.push(s);
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::tests::{pod, port, svc};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn web() -> Service {
        svc("web", vec![port("http", 80, IntOrString::String("http".into()))])
    }

    fn pods(n: usize) -> Vec<Arc<Pod>> {
        (0..n).map(|i| pod(&format!("p{i:03}"), &format!("10.42.{}.{}", i / 200, i % 200 + 1), true)).collect()
    }

    fn zone_a(_: &str) -> Option<Option<String>> {
        Some(Some("zone-a".into()))
    }

    /// What the store holds after `plan` is carried out: created slices get names `gen-N`.
    fn apply(existing: &[EndpointSlice], plan: &SlicePlan) -> Vec<EndpointSlice> {
        let gone: BTreeSet<String> = plan.delete.iter().chain(&plan.update).map(|s| s.name_any()).collect();
        let mut out: Vec<EndpointSlice> = existing.iter().filter(|s| !gone.contains(&s.name_any())).cloned().collect();
        out.extend(plan.update.iter().cloned());
        for (i, s) in plan.create.iter().enumerate() {
            let mut s = s.clone();
            s.metadata.name = Some(format!("gen-{}-{i}", out.len()));
            out.push(s);
        }
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }

    fn sizes(slices: &[EndpointSlice]) -> Vec<usize> {
        let mut v: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }

    #[test]
    fn chunks_at_max_endpoints_per_slice_and_is_idempotent() {
        let s = web();
        let plan = plan_slices(&s, &pods(250), &zone_a, &[], 100, None);
        assert_eq!(sizes(&plan.create), [100, 100, 50]);
        assert!(plan.update.is_empty() && plan.delete.is_empty());
        let stored = apply(&[], &plan);
        let again = plan_slices(&s, &pods(250), &zone_a, &stored, 100, Some(Timestamp::now()));
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty(), "{again:?}");

        // Growing by one touches one slice; the new endpoint lands in the half-full one.
        let grown = plan_slices(&s, &pods(251), &zone_a, &stored, 100, None);
        assert!(grown.create.is_empty() && grown.delete.is_empty());
        assert_eq!(sizes(&grown.update), [51]);

        // Shrinking: endpoints stay where they are (no rebalancing, as upstream); slices left
        // empty are deleted.
        let shrunk = plan_slices(&s, &pods(50), &zone_a, &stored, 100, None);
        assert!(shrunk.create.is_empty());
        assert!(!shrunk.delete.is_empty());
        let after = apply(&stored, &shrunk);
        assert!(after.len() < 3 && after.iter().all(|s| !s.endpoints.is_empty()));
        assert_eq!(after.iter().map(|s| s.endpoints.len()).sum::<usize>(), 50);
        assert!(plan_slices(&s, &pods(50), &zone_a, &after, 100, None).update.is_empty());

        // No pods at all: one slice is kept as the empty placeholder, the others go.
        let emptied = plan_slices(&s, &[], &zone_a, &stored, 100, None);
        assert!(emptied.create.is_empty());
        assert_eq!((emptied.update.len(), emptied.delete.len()), (1, 2));
        assert!(emptied.update[0].endpoints.is_empty());
    }

    #[test]
    fn slice_metadata_as_upstream() {
        let s = web();
        let plan = plan_slices(&s, &pods(1), &zone_a, &[], 100, Some("2025-01-01T00:00:10Z".parse().unwrap()));
        let sl = &plan.create[0];
        assert_eq!(sl.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(sl.address_type, "IPv4");
        assert_eq!(sl.labels().get(SERVICE_NAME_LABEL).map(String::as_str), Some("web"));
        assert_eq!(sl.labels().get(MANAGED_BY_LABEL).map(String::as_str), Some(CONTROLLER_NAME));
        assert_eq!(sl.labels().get("app").map(String::as_str), Some("web"));
        let o = &sl.owner_references()[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str(), o.controller, o.block_owner_deletion),
            ("Service", "web", "uid-web", Some(true), Some(true))
        );
        assert_eq!(sl.annotations().get(TRIGGER_TIME_ANNOTATION).map(String::as_str), Some("2025-01-01T00:00:10Z"));
        let p = &sl.ports.as_ref().unwrap()[0];
        assert_eq!((p.name.as_deref(), p.port, p.protocol.as_deref()), (Some("http"), Some(8080), Some("TCP")));
        let e = &sl.endpoints[0];
        assert_eq!(e.addresses, ["10.42.0.1"]);
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        assert_eq!(e.zone.as_deref(), Some("zone-a"));
        assert_eq!(e.target_ref.as_ref().unwrap().name.as_deref(), Some("p000"));
        let c = e.conditions.as_ref().unwrap();
        assert_eq!((c.ready, c.serving, c.terminating), (Some(true), Some(true), Some(false)));
    }

    #[test]
    fn conditions_for_not_ready_and_terminating_pods() {
        let s = web();
        let mut term = (*pod("t", "10.42.0.9", true)).clone();
        term.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let all = vec![pod("a", "10.42.0.2", false), Arc::new(term)];
        let plan = plan_slices(&s, &all, &zone_a, &[], 100, None);
        type Conds = (Option<bool>, Option<bool>, Option<bool>);
        let conds: BTreeMap<String, Conds> = plan.create[0]
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (e.target_ref.as_ref().unwrap().name.clone().unwrap(), (c.ready, c.serving, c.terminating))
            })
            .collect();
        assert_eq!(conds["a"], (Some(false), Some(false), Some(false)));
        assert_eq!(conds["t"], (Some(false), Some(true), Some(true)), "terminating: not ready, still serving");

        let mut publish = web();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let plan = plan_slices(&publish, &all, &zone_a, &[], 100, None);
        assert!(plan.create[0].endpoints.iter().all(|e| e.conditions.as_ref().unwrap().ready == Some(true)));
    }

    #[test]
    fn readiness_change_updates_in_place() {
        let s = web();
        let stored = apply(&[], &plan_slices(&s, &pods(3), &zone_a, &[], 100, None));
        let mut flipped = pods(3);
        flipped[1] = pod("p001", "10.42.0.2", false);
        let plan = plan_slices(&s, &flipped, &zone_a, &stored, 100, None);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].name_any(), stored[0].name_any());
        let e = plan.update[0].endpoints.iter().find(|e| e.addresses == ["10.42.0.2"]).unwrap();
        assert_eq!(e.conditions.as_ref().unwrap().ready, Some(false));
    }

    #[test]
    fn pods_with_different_ports_get_separate_slices() {
        let s = web();
        let mut other = (*pod("b", "10.42.0.3", true)).clone();
        other.spec.as_mut().unwrap().containers[0].ports.as_mut().unwrap()[0].container_port = 9090;
        let plan = plan_slices(&s, &[pod("a", "10.42.0.2", true), Arc::new(other)], &zone_a, &[], 100, None);
        let mut ports: Vec<Option<i32>> = plan.create.iter().map(|s| s.ports.as_ref().unwrap()[0].port).collect();
        ports.sort();
        assert_eq!(ports, [Some(8080), Some(9090)]);
    }

    #[test]
    fn empty_service_gets_one_placeholder() {
        let s = web();
        let plan = plan_slices(&s, &[], &zone_a, &[], 100, None);
        assert_eq!(plan.create.len(), 1);
        assert!(plan.create[0].endpoints.is_empty() && plan.create[0].ports.is_none());
        let stored = apply(&[], &plan);
        let again = plan_slices(&s, &[], &zone_a, &stored, 100, None);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty(), "{again:?}");
        // Pods arrive: the placeholder is reused rather than deleted and recreated.
        let filled = plan_slices(&s, &pods(2), &zone_a, &stored, 100, None);
        assert!(filled.create.is_empty() && filled.delete.is_empty());
        assert_eq!(filled.update.len(), 1);
        assert_eq!(filled.update[0].name_any(), stored[0].name_any());
        assert_eq!(filled.update[0].endpoints.len(), 2);
    }

    #[test]
    fn foreign_slices_are_removed_and_missing_nodes_skipped() {
        let s = web();
        let mut foreign = new_slice(&s, &[], "IPv4");
        foreign.metadata.name = Some("web-old".into());
        foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-of-an-older-web".into();
        foreign.endpoints = vec![Endpoint { addresses: vec!["10.42.9.9".into()], ..Default::default() }];
        let nowhere = |n: &str| if n == "n1" { None } else { Some(None) };
        let plan = plan_slices(&s, &pods(2), &nowhere, &[foreign], 100, None);
        assert_eq!(plan.missing_nodes, ["n1"]);
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.delete[0].name_any(), "web-old");
        assert_eq!(plan.create.len(), 1, "placeholder while no pod can be listed");
        assert!(plan.create[0].endpoints.is_empty());
    }

    #[test]
    fn headless_service_labels() {
        let mut s = web();
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let plan = plan_slices(&s, &pods(1), &zone_a, &[], 100, None);
        assert_eq!(plan.create[0].labels().get(HEADLESS_LABEL).map(String::as_str), Some(""));
        // Service label edits reach existing slices.
        let stored = apply(&[], &plan);
        s.metadata.labels.as_mut().unwrap().insert("tier".into(), "db".into());
        let relabel = plan_slices(&s, &pods(1), &zone_a, &stored, 100, None);
        assert_eq!(relabel.update.len(), 1);
        assert_eq!(relabel.update[0].labels().get("tier").map(String::as_str), Some("db"));
    }
}
