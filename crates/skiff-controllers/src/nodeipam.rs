//! Node IPAM (upstream's `pkg/controller/nodeipam` with the RangeAllocator): every Node gets a pod
//! CIDR out of the cluster CIDR (`--cluster-cidr`, default 10.42.0.0/16) of `--node-cidr-mask-size`
//! (default /24), written to `spec.podCIDR` and `spec.podCIDRs`. A CIDR is never given to two nodes:
//! the used set is rebuilt from the Nodes' podCIDRs before the first allocation (the applier holds
//! reconciles until the initial list is in), kept current from the same watch, and a deleted Node's
//! CIDR returns to the pool. Allocation is round-robin from where the last one ended, as upstream's
//! cidrset does, so a just-released CIDR is not handed out again at once. A podCIDR, once set, is
//! never changed (upstream's API server rejects changes). When the range is exhausted the Node gets
//! a `CIDRNotAvailable` Event, and waits until a Node is deleted.
//!
//! Not done: dual-stack (one cluster CIDR, one family; podCIDRs has one entry), the cloud
//! allocator, and the NodeNetworkUnavailable condition (a cloud-route concern).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::events::Recorder;
use crate::informer::Informer;
use crate::metrics::{ControllerMetrics, Metrics};

const CONTROLLER: &str = "node-ipam-controller";
/// The Event source upstream's range allocator records with.
const COMPONENT: &str = "cidrAllocator";
/// Upstream's clusterSubnetMaxDiff: at most 2^16 node CIDRs per cluster CIDR.
const MAX_SUBNET_BITS: u8 = 16;
/// Safety net for a Node waiting for a free CIDR (a Node deletion wakes waiting Nodes at once).
const EXHAUSTED_RETRY: Duration = Duration::from_secs(60);

/// An IP network, normalised to its network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn bits(&self) -> u8 {
        if self.addr.is_ipv6() { 128 } else { 32 }
    }

    fn base(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn from_parts(v6: bool, base: u128, prefix: u8) -> Cidr {
        let addr = if v6 { IpAddr::V6(Ipv6Addr::from(base)) } else { IpAddr::V4(Ipv4Addr::from(base as u32)) };
        Cidr { addr, prefix }
    }

    /// First and last address as integers.
    fn range(&self) -> (u128, u128) {
        let host_bits = (self.bits() - self.prefix) as u32;
        let size = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        (self.base(), self.base() + size)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
        let addr: IpAddr = ip.parse().map_err(|_| format!("{s:?}: invalid address {ip:?}"))?;
        let bits = if addr.is_ipv6() { 128 } else { 32 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= bits).ok_or_else(|| format!("{s:?}: invalid prefix length {prefix:?}"))?;
        let c = Cidr { addr, prefix };
        let host_bits = (bits - prefix) as u32;
        let mask = if host_bits >= 128 { 0 } else { !((1u128 << host_bits) - 1) };
        Ok(Cidr::from_parts(addr.is_ipv6(), c.base() & mask, prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `--cluster-cidr`, `--node-cidr-mask-size` and (for upstream's exclusion of an overlapping
/// service range) the service CIDR, checked as upstream's controller manager checks them.
#[derive(Clone, Debug)]
pub struct NodeIpamOptions {
    cluster: Cidr,
    node_prefix: u8,
    service: Option<Cidr>,
}

impl Default for NodeIpamOptions {
    fn default() -> Self {
        NodeIpamOptions::new("10.42.0.0/16", 24, None).expect("default cluster CIDR is valid")
    }
}

impl NodeIpamOptions {
    pub fn new(cluster_cidr: &str, node_cidr_mask_size: u8, service_cidr: Option<&str>) -> Result<Self, String> {
        let cluster: Cidr = cluster_cidr.parse().map_err(|e| format!("--cluster-cidr: {e}"))?;
        if node_cidr_mask_size < cluster.prefix || node_cidr_mask_size > cluster.bits() {
            return Err(format!(
                "--node-cidr-mask-size {node_cidr_mask_size} must be between the cluster CIDR's prefix length ({}) and {}",
                cluster.prefix,
                cluster.bits()
            ));
        }
        if node_cidr_mask_size - cluster.prefix > MAX_SUBNET_BITS {
            return Err(format!(
                "--node-cidr-mask-size {node_cidr_mask_size} is more than {MAX_SUBNET_BITS} bits longer than the cluster CIDR {cluster}"
            ));
        }
        let service = service_cidr.map(|s| s.parse::<Cidr>().map_err(|e| format!("service CIDR: {e}"))).transpose()?;
        Ok(NodeIpamOptions { cluster, node_prefix: node_cidr_mask_size, service })
    }
}

/// Upstream's cidrset: the node-sized subnets of one cluster CIDR, a used bit per subnet, and the
/// round-robin position of the next candidate.
#[derive(Clone, Debug)]
pub struct CidrSet {
    cluster: Cidr,
    node_prefix: u8,
    used: Vec<bool>,
    allocated: usize,
    next: usize,
}

impl CidrSet {
    pub fn new(opts: &NodeIpamOptions) -> CidrSet {
        let count = 1usize << (opts.node_prefix - opts.cluster.prefix);
        let mut set = CidrSet { cluster: opts.cluster, node_prefix: opts.node_prefix, used: vec![false; count], allocated: 0, next: 0 };
        // Pod addresses inside the service range would be unreachable (upstream's filterOutServiceRange).
        if let Some(svc) = opts.service
            && svc.addr.is_ipv6() == opts.cluster.addr.is_ipv6()
        {
            set.mark(&svc, true);
        }
        set
    }

    fn subnet(&self, i: usize) -> Cidr {
        let shift = (self.cluster.bits() - self.node_prefix) as u32;
        let offset = if shift >= 128 { 0 } else { (i as u128) << shift };
        Cidr::from_parts(self.cluster.addr.is_ipv6(), self.cluster.base() + offset, self.node_prefix)
    }

    /// Indices of the subnets `cidr` overlaps.
    fn indices(&self, cidr: &Cidr) -> Option<std::ops::RangeInclusive<usize>> {
        if cidr.addr.is_ipv6() != self.cluster.addr.is_ipv6() {
            return None;
        }
        let (cs, ce) = self.cluster.range();
        let (s, e) = cidr.range();
        if e < cs || s > ce {
            return None;
        }
        let shift = (self.cluster.bits() - self.node_prefix) as u32;
        let idx = |a: u128| if shift >= 128 { 0 } else { ((a - cs) >> shift) as usize };
        Some(idx(s.max(cs))..=idx(e.min(ce)))
    }

    fn mark(&mut self, cidr: &Cidr, used: bool) -> bool {
        let Some(r) = self.indices(cidr) else { return false };
        for i in r {
            if self.used[i] != used {
                self.used[i] = used;
                if used {
                    self.allocated += 1;
                } else {
                    self.allocated -= 1;
                }
            }
        }
        true
    }

    /// The next free subnet after the previous allocation, wrapping around.
    pub fn allocate_next(&mut self) -> Option<Cidr> {
        if self.allocated == self.used.len() {
            return None;
        }
        let n = self.used.len();
        let i = (0..n).map(|k| (self.next + k) % n).find(|i| !self.used[*i])?;
        self.used[i] = true;
        self.allocated += 1;
        self.next = (i + 1) % n;
        Some(self.subnet(i))
    }

    /// Marks a CIDR some Node already has; an error if it lies outside the cluster CIDR.
    pub fn occupy(&mut self, cidr: &Cidr) -> Result<(), String> {
        if self.mark(cidr, true) { Ok(()) } else { Err(format!("{cidr} is not inside the cluster CIDR {}", self.cluster)) }
    }

    pub fn release(&mut self, cidr: &Cidr) {
        self.mark(cidr, false);
    }

    pub fn is_used(&self, cidr: &Cidr) -> bool {
        self.indices(cidr).is_some_and(|mut r| r.all(|i| self.used[i]))
    }

    /// Forgets every allocation but keeps the round-robin position (used when rebuilding).
    fn clear(&mut self) {
        self.used.iter_mut().for_each(|u| *u = false);
        self.allocated = 0;
    }
}

/// A Node's CIDR as this controller counts it: seen on the Node, or assigned by us and not yet
/// seen (the patch may be in flight; a retry reuses the same CIDR).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Owned {
    cidr: Cidr,
    observed: bool,
}

/// The allocator plus who holds what. Fed by the Node watch before reconciles run.
#[derive(Debug)]
pub struct Allocator {
    set: CidrSet,
    service: Option<Cidr>,
    owners: HashMap<String, Owned>,
    /// Nodes seen during a relist (name → podCIDR), replacing `owners` when the relist ends.
    relist: Option<HashMap<String, Option<Cidr>>>,
    /// Nodes told the range is exhausted, still waiting.
    waiting: BTreeSet<String>,
}

pub(crate) fn node_cidr(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr.clone().filter(|c| !c.is_empty()).or_else(|| spec.pod_cidrs.as_ref()?.first().cloned())
}

impl Allocator {
    pub fn new(opts: &NodeIpamOptions) -> Allocator {
        Allocator { set: CidrSet::new(opts), service: opts.service, owners: HashMap::new(), relist: None, waiting: BTreeSet::new() }
    }

    fn parse(&self, node: &Node) -> Option<Cidr> {
        let raw = node_cidr(node)?;
        match raw.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(node = %node.name_any(), "ignoring unparsable podCIDR: {e}");
                None
            }
        }
    }

    fn observe(&mut self, name: &str, cidr: Cidr) {
        self.waiting.remove(name);
        if let Some(o) = self.owners.get_mut(name) {
            if o.cidr == cidr {
                o.observed = true;
                return;
            }
            let old = o.cidr;
            self.set.release(&old);
        }
        if self.owners.iter().any(|(n, o)| n != name && o.cidr == cidr) {
            tracing::warn!(node = %name, cidr = %cidr, "podCIDR is also held by another node");
        }
        if let Err(e) = self.set.occupy(&cidr) {
            tracing::warn!(node = %name, "{e}");
        }
        self.owners.insert(name.to_string(), Owned { cidr, observed: true });
    }

    /// A watch event, applied before any reconcile sees the store. Returns the Nodes to wake.
    pub fn on_event(&mut self, ev: &watcher::Event<Node>) -> Vec<String> {
        match ev {
            watcher::Event::Apply(n) => {
                if let Some(c) = self.parse(n) {
                    self.observe(&n.name_any(), c);
                }
                Vec::new()
            }
            watcher::Event::Delete(n) => {
                let name = n.name_any();
                self.waiting.remove(&name);
                match self.owners.remove(&name) {
                    Some(o) => {
                        self.set.release(&o.cidr);
                        self.waiting.iter().cloned().collect()
                    }
                    None => Vec::new(),
                }
            }
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(n) => {
                let c = self.parse(n);
                self.relist.get_or_insert_with(HashMap::new).insert(n.name_any(), c);
                Vec::new()
            }
            watcher::Event::InitDone => self.rebuild(),
        }
    }

    /// The end of a (re)list: the used set is exactly what the listed Nodes hold, plus our
    /// assignments whose patch the list may predate. Nodes that vanished meanwhile free theirs.
    fn rebuild(&mut self) -> Vec<String> {
        let listed = self.relist.take().unwrap_or_default();
        let old = std::mem::take(&mut self.owners);
        self.set.clear();
        if let Some(svc) = self.service {
            self.set.mark(&svc, true);
        }
        for (name, cidr) in &listed {
            if let Some(c) = cidr {
                self.observe(name, *c);
            }
        }
        for (name, o) in old {
            let keep = !o.observed && listed.get(&name).is_none_or(|c| c.is_none());
            if keep && !self.set.is_used(&o.cidr) {
                self.set.mark(&o.cidr, true);
                self.owners.insert(name, o);
            }
        }
        self.waiting.retain(|n| listed.contains_key(n));
        self.waiting.iter().cloned().collect()
    }

    /// The CIDR to give `name`: the one already assigned to it, else the next free one.
    pub fn assign(&mut self, name: &str) -> Option<Cidr> {
        if let Some(o) = self.owners.get(name) {
            return Some(o.cidr);
        }
        let c = self.set.allocate_next()?;
        self.owners.insert(name.to_string(), Owned { cidr: c, observed: false });
        self.waiting.remove(name);
        Some(c)
    }

    /// The Node is gone before its patch landed.
    pub fn unassign(&mut self, name: &str, cidr: &Cidr) {
        if self.owners.get(name).is_some_and(|o| o.cidr == *cidr && !o.observed) {
            self.owners.remove(name);
            self.set.release(cidr);
        }
    }

    /// Records that `name` found no free CIDR; true the first time (tell the Node once).
    pub fn exhausted(&mut self, name: &str) -> bool {
        self.waiting.insert(name.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
    alloc: Arc<Mutex<Allocator>>,
    events: Recorder,
    metrics: Arc<ControllerMetrics>,
}

/// The allocator hooked into the shared Node informer: it sees every event before the cache does
/// (so no reconcile can run on a Node the allocator has not counted), and gets the Node events
/// and the Nodes to wake after a release.
pub struct NodeIpam {
    opts: NodeIpamOptions,
    alloc: Arc<Mutex<Allocator>>,
    store: Store<Node>,
    events: BoxStream<'static, Result<Node, watcher::Error>>,
    wake: UnboundedReceiver<ObjectRef<Node>>,
}

/// Hooks the allocator into `nodes`; call before the informer runs.
pub fn attach(nodes: &mut Informer<Node>, opts: NodeIpamOptions) -> NodeIpam {
    let alloc = Arc::new(Mutex::new(Allocator::new(&opts)));
    let (tx, wake) = unbounded_channel();
    let a = alloc.clone();
    nodes.tap(move |ev, _| {
        for n in a.lock().expect("allocator lock").on_event(ev) {
            let _ = tx.send(ObjectRef::new(&n));
        }
    });
    // Nodes that already have a CIDR need nothing (the tap counted it).
    let events = nodes.subscribe().filter(|n| std::future::ready(n.as_ref().is_ok_and(|n| node_cidr(n).is_none()))).boxed();
    NodeIpam { opts, alloc, store: nodes.store(), events, wake }
}

impl NodeIpam {
    pub async fn run(self, client: Client, metrics: &Metrics) {
        tracing::info!(cluster_cidr = %self.opts.cluster, node_cidr_mask_size = self.opts.node_prefix, "node IPAM: range allocator");
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            alloc: self.alloc,
            events: Recorder::new(client, COMPONENT),
            metrics: metrics.controller(CONTROLLER),
        });
        crate::drain(
            Controller::for_stream(self.events, self.store).reconcile_on(UnboundedReceiverStream::new(self.wake)).run(
                reconcile,
                error_policy,
                ctx,
            ),
            CONTROLLER,
        )
        .await;
    }
}

fn error_policy(node: Arc<Node>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.error();
    tracing::warn!(node = %node.name_any(), "{CONTROLLER}: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    if node_cidr(&node).is_some() || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = node.name_any();
    let assigned = {
        let mut a = ctx.alloc.lock().expect("allocator lock");
        match a.assign(&name) {
            Some(c) => Ok(c),
            None => Err(a.exhausted(&name)),
        }
    };
    let cidr = match assigned {
        Ok(c) => c,
        Err(first) => {
            if first {
                tracing::warn!(node = %name, "no pod CIDR left in the cluster CIDR");
                // Upstream's RecordNodeStatusChange: `kubectl describe node` shows it.
                let about = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(name.clone()),
                    uid: node.metadata.uid.clone(),
                    ..Default::default()
                };
                ctx.events.normal(about, "CIDRNotAvailable", format!("Node {name} status is now: CIDRNotAvailable"));
            }
            return Ok(Action::requeue(EXHAUSTED_RETRY));
        }
    };
    // Upstream's PatchNodeCIDRs: the legacy single field and the list.
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    match Api::<Node>::all(ctx.client.clone()).patch(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
        Ok(_) => {
            tracing::info!(node = %name, cidr = %cidr, "set node podCIDR");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            ctx.alloc.lock().expect("allocator lock").unassign(&name, &cidr);
            Ok(Action::await_change())
        }
        // Keep the assignment: the patch may have been applied, and a retry reuses the CIDR.
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn opts(cidr: &str, mask: u8) -> NodeIpamOptions {
        NodeIpamOptions::new(cidr, mask, None).unwrap()
    }

    fn node(name: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(NodeSpec { pod_cidr: cidr.map(str::to_string), pod_cidrs: cidr.map(|c| vec![c.to_string()]), ..Default::default() }),
            ..Default::default()
        }
    }

    fn s(c: Option<Cidr>) -> String {
        c.map(|c| c.to_string()).unwrap_or_default()
    }

    #[test]
    fn options_are_checked() {
        assert!(NodeIpamOptions::new("10.42.0.0/16", 24, None).is_ok());
        assert!(NodeIpamOptions::new("10.42.0.0/16", 8, None).is_err());
        assert!(NodeIpamOptions::new("10.42.0.0/16", 33, None).is_err());
        assert!(NodeIpamOptions::new("10.0.0.0/8", 28, None).is_err(), "more than 2^16 subnets");
        assert!(NodeIpamOptions::new("10.42.0.0", 24, None).is_err());
        assert_eq!("10.42.7.9/16".parse::<Cidr>().unwrap().to_string(), "10.42.0.0/16");
        assert_eq!(NodeIpamOptions::default().cluster.to_string(), "10.42.0.0/16");
    }

    #[test]
    fn sequential_allocation() {
        let mut set = CidrSet::new(&opts("10.42.0.0/16", 24));
        let got: Vec<String> = (0..3).map(|_| s(set.allocate_next())).collect();
        assert_eq!(got, ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]);
        let mut v6 = CidrSet::new(&opts("fd00:42::/56", 64));
        assert_eq!(s(v6.allocate_next()), "fd00:42::/64");
        assert_eq!(s(v6.allocate_next()), "fd00:42:0:1::/64");
    }

    #[test]
    fn exhaustion_and_reuse_after_release() {
        let mut set = CidrSet::new(&opts("10.42.0.0/22", 24));
        let all: Vec<Cidr> = (0..4).map(|_| set.allocate_next().unwrap()).collect();
        assert_eq!(set.allocate_next(), None);
        set.release(&all[1]);
        assert_eq!(set.allocate_next(), Some(all[1]), "the only free one");
        assert_eq!(set.allocate_next(), None);
        // Round robin: a released CIDR is not the next one handed out while others are free.
        set.release(&all[0]);
        set.release(&all[3]);
        assert_eq!(set.allocate_next(), Some(all[3]));
        assert_eq!(set.allocate_next(), Some(all[0]));
    }

    #[test]
    fn service_range_inside_the_cluster_cidr_is_excluded() {
        let o = NodeIpamOptions::new("10.42.0.0/22", 24, Some("10.42.1.0/24")).unwrap();
        let mut set = CidrSet::new(&o);
        let got: Vec<String> = std::iter::from_fn(|| set.allocate_next()).map(|c| c.to_string()).collect();
        assert_eq!(got, ["10.42.0.0/24", "10.42.2.0/24", "10.42.3.0/24"]);
    }

    #[test]
    fn rebuild_from_existing_nodes_before_allocating() {
        let mut a = Allocator::new(&opts("10.42.0.0/16", 24));
        a.on_event(&watcher::Event::Init);
        a.on_event(&watcher::Event::InitApply(node("n0", Some("10.42.0.0/24"))));
        a.on_event(&watcher::Event::InitApply(node("n2", Some("10.42.2.0/24"))));
        a.on_event(&watcher::Event::InitApply(node("new", None)));
        a.on_event(&watcher::Event::InitDone);
        assert_eq!(s(a.assign("new")), "10.42.1.0/24");
        assert_eq!(s(a.assign("new")), "10.42.1.0/24", "a retry reuses the assignment");
        assert_eq!(s(a.assign("other")), "10.42.3.0/24");

        // A relist that no longer has n2 (deleted during a watch gap) frees its CIDR; our
        // assignments whose patches the list predates survive.
        a.on_event(&watcher::Event::Init);
        a.on_event(&watcher::Event::InitApply(node("n0", Some("10.42.0.0/24"))));
        a.on_event(&watcher::Event::InitApply(node("new", None)));
        a.on_event(&watcher::Event::InitApply(node("other", Some("10.42.3.0/24"))));
        a.on_event(&watcher::Event::InitDone);
        assert_eq!(s(a.assign("new")), "10.42.1.0/24");
        assert!(!a.set.is_used(&"10.42.2.0/24".parse().unwrap()));
        assert!(a.set.is_used(&"10.42.3.0/24".parse().unwrap()));
    }

    #[test]
    fn deletion_releases_and_wakes_waiting_nodes() {
        let mut a = Allocator::new(&opts("10.42.0.0/23", 24));
        a.on_event(&watcher::Event::Init);
        a.on_event(&watcher::Event::InitDone);
        let c1 = a.assign("n1").unwrap();
        a.on_event(&watcher::Event::Apply(node("n1", Some(&c1.to_string()))));
        a.assign("n2").unwrap();
        assert_eq!(a.assign("n3"), None);
        assert!(a.exhausted("n3"));
        assert!(!a.exhausted("n3"), "told once");
        let wake = a.on_event(&watcher::Event::Delete(node("n1", Some(&c1.to_string()))));
        assert_eq!(wake, ["n3"]);
        assert_eq!(a.assign("n3"), Some(c1));
    }
}
