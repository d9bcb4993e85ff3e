//! The bare-metal LoadBalancer provider (the service controller of a cloud-controller-manager,
//! for clusters without a cloud): Services of type LoadBalancer get `status.loadBalancer.ingress`
//! IPs from `--lb-pool`. The IP is released when the Service goes away or stops being a
//! LoadBalancer. `spec.loadBalancerIP` asks for a particular address; Services naming a
//! `loadBalancerClass` belong to another implementation and are left alone, as upstream's
//! default provider does. Traffic to the IPs is answered by every node's service proxy.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

use crate::events::{Recorder, reference};
use crate::metrics::{ControllerMetrics, Metrics};

const COMPONENT: &str = "service-lb-controller";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
    services: Store<Service>,
    pool: Ipv4Net,
    /// Allocation is one critical section: two Services reconciled at once never get one IP.
    lock: Mutex<()>,
    recorder: Recorder,
    metrics: Arc<ControllerMetrics>,
}

/// Whether this provider serves `svc`.
fn ours(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none()
}

fn ingress_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect()
}

/// The pool's usable addresses (network and broadcast addresses left out for prefixes < /31).
fn usable(pool: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let skip_edges = pool.prefix_len() < 31;
    pool.hosts().filter(move |ip| !skip_edges || (*ip != pool.network() && *ip != pool.broadcast()))
}

/// What `svc` should have: its current pool IP, the one it asks for, or the first free one.
/// `taken` holds the pool IPs of every other Service (oldest claim wins a conflict).
pub fn choose(svc: &Service, pool: Ipv4Net, taken: &BTreeMap<Ipv4Addr, String>) -> Result<Option<Ipv4Addr>, String> {
    if !ours(svc) {
        return Ok(None);
    }
    let wanted = svc.spec.as_ref().and_then(|s| s.load_balancer_ip.as_deref()).filter(|s| !s.is_empty());
    if let Some(w) = wanted {
        let ip: Ipv4Addr = w.parse().map_err(|_| format!("spec.loadBalancerIP {w:?} is not an IPv4 address"))?;
        if !pool.contains(&ip) {
            return Err(format!("spec.loadBalancerIP {ip} is outside the load balancer pool {pool}"));
        }
        if let Some(owner) = taken.get(&ip) {
            return Err(format!("spec.loadBalancerIP {ip} is already used by Service {owner}"));
        }
        return Ok(Some(ip));
    }
    if let Some(ip) = ingress_ips(svc).into_iter().find(|ip| pool.contains(ip) && !taken.contains_key(ip)) {
        return Ok(Some(ip));
    }
    usable(pool)
        .find(|ip| !taken.contains_key(ip))
        .map(Some)
        .ok_or_else(|| format!("no free address left in the load balancer pool {pool}"))
}

pub async fn run(
    client: Client,
    metrics: &Metrics,
    services: (Store<Service>, impl futures::Stream<Item = Result<Service, kube::runtime::watcher::Error>> + Send + 'static),
    pool: Option<Ipv4Net>,
) {
    let Some(pool) = pool else { return };
    let (store, events) = services;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        services: store.clone(),
        pool,
        lock: Mutex::new(()),
        recorder: Recorder::new(client, COMPONENT),
        metrics: metrics.controller(COMPONENT),
    });
    crate::drain(Controller::for_stream(events, store).run(reconcile, error_policy, ctx), COMPONENT).await;
}

fn error_policy(svc: Arc<Service>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    tracing::warn!(service = %svc.name_any(), "{COMPONENT}: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let _guard = ctx.lock.lock().await;
    // The cache may be behind the event that woke us; act on its current view of the object.
    let Some(svc) = ctx.services.get(&ObjectRef::from_obj(&*svc)) else { return Ok(Action::await_change()) };
    let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
    let mut others: Vec<Arc<Service>> = ctx.services.state().into_iter().filter(|s| ours(s) && s.uid() != svc.uid()).collect();
    others.sort_by_key(|s| s.metadata.creation_timestamp.clone().map(|t| t.0));
    let mut taken = BTreeMap::new();
    for o in &others {
        for ip in ingress_ips(o).into_iter().filter(|ip| ctx.pool.contains(ip)) {
            taken.entry(ip).or_insert_with(|| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()));
        }
    }
    let current: Vec<Ipv4Addr> = ingress_ips(&svc).into_iter().filter(|ip| ctx.pool.contains(ip)).collect();
    let want = match choose(&svc, ctx.pool, &taken) {
        Ok(w) => w,
        Err(msg) => {
            if ours(&svc) && current.is_empty() {
                ctx.recorder.warning(reference(&*svc), "AllocationFailed", msg);
            }
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };
    if current == want.into_iter().collect::<Vec<_>>() {
        return Ok(Action::await_change());
    }
    // Leave a non-LoadBalancer Service's status alone unless it still holds one of our IPs.
    if want.is_none() && current.is_empty() {
        return Ok(Action::await_change());
    }
    let ingress: Vec<serde_json::Value> = want.iter().map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    api.patch_status(&svc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    match want {
        Some(ip) => {
            tracing::info!(service = %key, ip = %ip, "load balancer IP assigned");
            ctx.recorder.normal(reference(&*svc), "IPAllocated", format!("Assigned IP [\"{ip}\"]"));
        }
        None => tracing::info!(service = %key, "load balancer IP released"),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn allocates_requested_current_or_first_free() {
        let pool: Ipv4Net = "10.99.0.0/29".parse().unwrap();
        let mut taken = BTreeMap::new();
        let lb = svc(serde_json::json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer"}}));
        assert_eq!(choose(&lb, pool, &taken), Ok(Some("10.99.0.1".parse().unwrap())), "the network address is skipped");
        taken.insert("10.99.0.1".parse().unwrap(), "ns/x".to_string());
        assert_eq!(choose(&lb, pool, &taken), Ok(Some("10.99.0.2".parse().unwrap())));

        let asks = svc(serde_json::json!({"metadata": {"name": "b"}, "spec": {"type": "LoadBalancer", "loadBalancerIP": "10.99.0.5"}}));
        assert_eq!(choose(&asks, pool, &taken), Ok(Some("10.99.0.5".parse().unwrap())));
        let conflict = svc(serde_json::json!({"metadata": {"name": "c"}, "spec": {"type": "LoadBalancer", "loadBalancerIP": "10.99.0.1"}}));
        assert!(choose(&conflict, pool, &taken).unwrap_err().contains("ns/x"));
        let outside = svc(serde_json::json!({"metadata": {"name": "d"}, "spec": {"type": "LoadBalancer", "loadBalancerIP": "192.0.2.1"}}));
        assert!(choose(&outside, pool, &taken).unwrap_err().contains("outside"));

        let keeps = svc(
            serde_json::json!({"metadata": {"name": "e"}, "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "10.99.0.6"}]}}}),
        );
        assert_eq!(choose(&keeps, pool, &taken), Ok(Some("10.99.0.6".parse().unwrap())));
    }

    #[test]
    fn other_classes_and_types_are_not_ours_and_a_full_pool_says_so() {
        let pool: Ipv4Net = "10.99.0.0/30".parse().unwrap();
        let classed =
            svc(serde_json::json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}}));
        assert_eq!(choose(&classed, pool, &BTreeMap::new()), Ok(None));
        let cluster_ip = svc(serde_json::json!({"metadata": {"name": "b"}, "spec": {"type": "ClusterIP"}}));
        assert_eq!(choose(&cluster_ip, pool, &BTreeMap::new()), Ok(None));
        let lb = svc(serde_json::json!({"metadata": {"name": "c"}, "spec": {"type": "LoadBalancer"}}));
        let full: BTreeMap<Ipv4Addr, String> =
            [("10.99.0.1".parse().unwrap(), "x".into()), ("10.99.0.2".parse().unwrap(), "y".into())].into();
        assert!(choose(&lb, pool, &full).unwrap_err().contains("no free address"));
    }
}
