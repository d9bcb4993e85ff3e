//! skiff-controllers: kube-controller-manager's role. Each controller is a module with a
//! `reconcile(obj, ctx) -> Result<Action>` function driven by kube-runtime's `Controller`, and talks
//! to the API server only through a `kube::Client` (hard rule: only the API server opens the store).
//!
//! Start with [`run`]: it takes the `kube-system/kube-controller-manager` Lease (unless leader
//! election is off) and then runs every controller on shared informers ([`informer`]) until the
//! future is dropped or leadership is lost.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController, Service};
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::watcher;

pub mod claim;
pub mod clock;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod informer;
pub mod job;
pub mod metrics;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod podutil;
pub mod replicaset;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod ttl;

use expectations::Expectations;
use informer::Informer;
pub use metrics::Metrics;

/// How the controller manager runs.
pub struct Options {
    /// This instance's name in the Lease.
    pub identity: String,
    /// Take part in leader election on `kube-system/kube-controller-manager` (upstream's default).
    pub leader_elect: bool,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub metrics: Arc<Metrics>,
    /// `--cluster-cidr` and `--node-cidr-mask-size` of the node IPAM controller.
    pub node_ipam: nodeipam::NodeIpamOptions,
    /// Node health, taints and taint-based eviction.
    pub node_lifecycle: nodelifecycle::NodeLifecycleOptions,
    /// The Job controller's pod-failure backoff.
    pub job: job::JobOptions,
    /// `--terminated-pod-gc-threshold` and the pod GC's timing.
    pub pod_gc: podgc::PodGcOptions,
    /// `--lb-pool`: addresses for Services of type LoadBalancer (None: no LoadBalancer provider).
    pub lb_pool: Option<ipnet::Ipv4Net>,
    /// When this turns true the controllers stop and the Lease is released.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Options {
    pub fn new(identity: &str) -> Options {
        let lease = skiff_lease::LeaseConfig::new("kube-system", "kube-controller-manager", identity);
        Options {
            identity: identity.to_string(),
            leader_elect: true,
            lease_duration: lease.lease_duration,
            renew_deadline: lease.renew_deadline,
            retry_period: lease.retry,
            metrics: Arc::new(Metrics::default()),
            node_ipam: nodeipam::NodeIpamOptions::default(),
            node_lifecycle: Default::default(),
            job: Default::default(),
            pod_gc: Default::default(),
            lb_pool: None,
            shutdown: None,
        }
    }
}

/// Runs all controllers on `client` until dropped (or, with leader election, while leading).
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let metrics = opts.metrics.clone();
    let batch = (opts.job.clone(), opts.pod_gc.clone());
    let work = || {
        run_controllers(client.clone(), metrics.clone(), opts.node_ipam.clone(), opts.node_lifecycle.clone(), batch.clone(), opts.lb_pool)
    };
    if opts.leader_elect {
        let mut lease = skiff_lease::LeaseConfig::new("kube-system", "kube-controller-manager", &opts.identity);
        (lease.lease_duration, lease.renew_deadline, lease.retry) = (opts.lease_duration, opts.renew_deadline, opts.retry_period);
        let stop = async {
            match opts.shutdown {
                Some(rx) => skiff_lease::stopped(rx).await,
                None => std::future::pending().await,
            }
        };
        skiff_lease::run_as_leader_until(client.clone(), lease, work, stop).await
    } else {
        work().await
    }
}

async fn run_controllers(
    client: Client,
    metrics: Arc<Metrics>,
    node_ipam: nodeipam::NodeIpamOptions,
    node_lifecycle: nodelifecycle::NodeLifecycleOptions,
    (job_opts, pod_gc): (job::JobOptions, podgc::PodGcOptions),
    lb_pool: Option<ipnet::Ipv4Net>,
) -> anyhow::Result<()> {
    let exp = Arc::new(Expectations::default());
    let mut pods = Informer::new(Api::<Pod>::all(client.clone()));
    let tap_exp = exp.clone();
    pods.tap_applied(move |ev| tap_exp.observe(ev));
    let mut replicasets = Informer::new(Api::<ReplicaSet>::all(client.clone()));

    let rs_ctrl = Controller::for_stream(replicasets.subscribe(), replicasets.store());
    let rc_ctrl = Controller::new(Api::<ReplicationController>::all(client.clone()), watcher::Config::default());
    let rs_for_deployments = (replicasets.store(), replicasets.subscribe());
    let (pods_rs, pods_rc, pods_deploy) = (pods.subscribe(), pods.subscribe(), pods.subscribe());
    let pod_store = pods.store();
    let mut services = Informer::new(Api::<Service>::all(client.clone()));
    let mut nodes = Informer::new(Api::<Node>::all(client.clone()));
    let ipam = nodeipam::attach(&mut nodes, node_ipam);
    let (pods_ep, pods_eps) = (pods.subscribe(), pods.subscribe());
    let (services_ep, services_eps, services_lb) = (services.subscribe(), services.subscribe(), services.subscribe());
    let (service_store, node_store) = (services.store(), nodes.store());
    // DaemonSets and StatefulSets share one ControllerRevision watch; DaemonSets also follow nodes.
    let mut revisions = Informer::new(Api::<k8s_openapi::api::apps::v1::ControllerRevision>::all(client.clone()));
    let mut claims = Informer::new(Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::all(client.clone()));
    let ds_inputs = daemonset::Inputs::new(
        (pod_store.clone(), pods.subscribe()),
        (node_store.clone(), nodes.subscribe()),
        (revisions.store(), revisions.subscribe()),
        exp.clone(),
    );
    let sts_inputs = statefulset::Inputs::new(
        (pod_store.clone(), pods.subscribe()),
        (claims.store(), claims.subscribe()),
        (revisions.store(), revisions.subscribe()),
        exp.clone(),
    );
    // One Job watch for the Job, TTL-after-finished and CronJob controllers.
    let mut jobs = Informer::new(Api::<k8s_openapi::api::batch::v1::Job>::all(client.clone()));
    let job_inputs = job::Inputs::new(&mut jobs, &mut pods, exp.clone());
    let (ttl_jobs, cronjob_jobs) = ((jobs.store(), jobs.subscribe()), (jobs.store(), jobs.subscribe()));
    let (pod_gc_pods, pod_gc_nodes) = (pods.store(), nodes.store());

    tokio::join!(
        pods.run(),
        jobs.run(),
        replicasets.run(),
        services.run(),
        nodes.run(),
        namespace::run(client.clone()),
        gc::run(client.clone(), &metrics),
        replicaset::run::<ReplicaSet>(client.clone(), &metrics, rs_ctrl, pod_store.clone(), pods_rs, exp.clone()),
        replicaset::run::<ReplicationController>(client.clone(), &metrics, rc_ctrl, pod_store.clone(), pods_rc, exp.clone()),
        deployment::run(client.clone(), &metrics, rs_for_deployments, (pod_store.clone(), pods_deploy)),
        serviceaccount::run(client.clone(), &metrics),
        endpoints::run(client.clone(), &metrics, (service_store.clone(), services_ep), (pod_store.clone(), pods_ep)),
        endpointslice::run(
            client.clone(),
            &metrics,
            (service_store.clone(), services_eps),
            (pod_store.clone(), pods_eps),
            node_store.clone()
        ),
        servicelb::run(client.clone(), &metrics, (service_store, services_lb), lb_pool),
        nodelifecycle::run(client.clone(), &metrics, node_store, pod_store.clone(), node_lifecycle),
        ipam.run(client.clone(), &metrics),
        revisions.run(),
        claims.run(),
        daemonset::run(client.clone(), &metrics, ds_inputs),
        statefulset::run(client.clone(), &metrics, sts_inputs),
        job::run(client.clone(), &metrics, job_inputs, clock::system(), job_opts),
        ttl::run(client.clone(), &metrics, ttl_jobs, clock::system()),
        cronjob::run(client.clone(), &metrics, cronjob_jobs, clock::system()),
        podgc::run(client.clone(), &metrics, pod_gc_pods, pod_gc_nodes, pod_gc),
    );
    Ok(())
}

/// Consumes a `Controller::run` stream, logging failed reconciles. A trigger for an object that is
/// already gone (`ObjectNotFound`) is normal churn, not an error.
pub(crate) async fn drain<K, E, QE>(
    results: impl futures::Stream<
        Item = Result<(kube::runtime::reflector::ObjectRef<K>, kube::runtime::controller::Action), kube::runtime::controller::Error<E, QE>>,
    >,
    component: &str,
) where
    K: kube::Resource,
    E: std::error::Error + 'static,
    QE: std::error::Error + 'static,
{
    use futures::StreamExt;
    results
        .for_each(|r| {
            match r {
                Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(e) => tracing::debug!("{component}: {e}"),
            }
            futures::future::ready(())
        })
        .await
}
