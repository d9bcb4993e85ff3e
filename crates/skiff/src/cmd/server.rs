//! `skiff server`: opens the store, bootstraps the PKI, starts the API server and writes the admin
//! kubeconfig.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use skiff_apiserver::strategy::service::Cidr;
use skiff_apiserver::{Authenticator, UserInfo};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where skiff keeps its state (store, certificates, kubeconfig).
    #[arg(long, default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Address advertised to clients and in the `kubernetes` Endpoints (default: the bind address,
    /// or the host's first non-loopback IPv4 when binding to all addresses).
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// Also write the admin kubeconfig here.
    #[arg(long)]
    pub write_kubeconfig: Option<PathBuf>,
    /// Extra names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// CIDR that Service cluster IPs are allocated from.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Static bearer tokens (upstream's token file: token,user,uid,"group1,group2").
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Events kept per resource for watchers resuming from a resourceVersion (upstream's
    /// --default-watch-cache-size); older resumes get 410 Gone and relist.
    #[arg(long, default_value_t = skiff_apiserver::cache::DEFAULT_HISTORY)]
    pub watch_cache_size: usize,
    /// tolerationSeconds the API server gives pods for the `node.kubernetes.io/not-ready` NoExecute
    /// taint when they bring no toleration of their own (how long they stay on a not-ready node).
    #[arg(long, default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// Likewise for `node.kubernetes.io/unreachable`.
    #[arg(long, default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
    /// Keep the cluster state in etcd instead of the embedded store: comma-separated client URLs
    /// (`http://host:2379,...`; keys under `/registry/` as upstream's).
    #[arg(long, value_delimiter = ',')]
    pub datastore_endpoint: Vec<String>,
    /// CA bundle for `https://` etcd endpoints.
    #[arg(long)]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate (and `--datastore-keyfile`) for etcd's --client-cert-auth.
    #[arg(long)]
    pub datastore_certfile: Option<PathBuf>,
    #[arg(long)]
    pub datastore_keyfile: Option<PathBuf>,
    /// How often the API server compacts etcd's history (to the revision of the previous tick,
    /// as upstream's --etcd-compaction-interval); 0s turns it off.
    #[arg(long, default_value = "5m", value_parser = crate::cmd::scheduler::parse_duration)]
    pub etcd_compaction_interval: std::time::Duration,
    /// Do not run the embedded scheduler (run `skiff scheduler` elsewhere, or none).
    #[arg(long)]
    pub disable_scheduler: bool,
    /// Scheduler configuration file (KubeSchedulerConfiguration-like: profiles, weights).
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Do not run the embedded controller manager (run `skiff controller-manager` elsewhere, or none).
    #[arg(long)]
    pub disable_controller_manager: bool,
    #[command(flatten)]
    pub controllers: crate::cmd::controller_manager::ControllerFlags,
    /// Do not run the embedded node agent (a control-plane-only server).
    #[arg(long)]
    pub disable_agent: bool,
    #[command(flatten)]
    pub agent: crate::cmd::agent::AgentFlags,
}

struct TokenFile(skiff_pki::TokenAuthenticator);

impl Authenticator for TokenFile {
    fn authenticate(&self, token: &str) -> Option<UserInfo> {
        self.0.authenticate(token).map(|u| UserInfo { name: u.name, groups: u.groups })
    }
}

fn cert_identity(certs: &[rustls::pki_types::CertificateDer<'static>]) -> Option<UserInfo> {
    skiff_pki::client_identity(certs).map(|u| UserInfo { name: u.name, groups: u.groups })
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Read before anything starts, so a bad file fails the start with its reason.
    let scheduler_opts = match args.disable_scheduler {
        true => None,
        false => Some(crate::cmd::scheduler::options(args.scheduler_config.as_deref(), true)?),
    };
    let controller_opts = match args.disable_controller_manager {
        true => None,
        false => Some(args.controllers.options(Some(&args.service_cidr))?),
    };
    let service_cidr = Cidr::parse(&args.service_cidr).map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let advertise = args.advertise_address.unwrap_or_else(|| {
        if args.bind_address.is_unspecified() { skiff_pki::host_ipv4().unwrap_or(IpAddr::from([127, 0, 0, 1])) } else { args.bind_address }
    });

    let store: Arc<dyn skiff_store::Store> = if args.datastore_endpoint.is_empty() {
        let db_dir = args.data_dir.join("db");
        std::fs::create_dir_all(&db_dir)?;
        skiff_store::embedded::EmbeddedStore::open(&db_dir.join("state.redb"), Default::default())
            .with_context(|| format!("opening the store in {}", db_dir.display()))?
    } else {
        let opts = skiff_store::etcd::EtcdOptions {
            endpoints: args.datastore_endpoint.clone(),
            ca_file: args.datastore_cafile.clone(),
            cert_file: args.datastore_certfile.clone(),
            key_file: args.datastore_keyfile.clone(),
            ..Default::default()
        };
        let etcd = Arc::new(
            skiff_store::etcd::EtcdStore::connect(opts)
                .await
                .with_context(|| format!("connecting to etcd at {}", args.datastore_endpoint.join(",")))?,
        );
        skiff_store::Store::current_revision(&*etcd)
            .await
            .with_context(|| format!("reading from etcd at {}", args.datastore_endpoint.join(",")))?;
        if !args.etcd_compaction_interval.is_zero() {
            tokio::spawn(skiff_store::etcd::compact_periodically(etcd.clone(), args.etcd_compaction_interval));
        }
        etcd
    };

    let mut sans = args.tls_san.clone();
    sans.push(advertise.to_string());
    let pki = skiff_pki::ClusterPki::load_or_create(
        &args.data_dir.join("tls"),
        &skiff_pki::PkiOptions { tls_sans: sans, service_ip: Some(IpAddr::V4(service_cidr.nth(1))) },
    )
    .context("setting up the cluster CA and certificates")?;
    let pki = Arc::new(pki);
    let token = crate::cmd::join::ensure_token(&args.data_dir, pki.ca_pem())?;

    let authn: Option<Arc<dyn Authenticator>> = match &args.token_auth_file {
        Some(p) => Some(Arc::new(TokenFile(skiff_pki::TokenAuthenticator::load(p)?))),
        None => None,
    };
    // The API server calls kubelets with its own client certificate; the embedded kubelet serves
    // with a certificate from the same CA.
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    let (kc_cert, kc_key) = pki.issue_client_cert("kube-apiserver-kubelet-client", &["system:masters"], year)?;
    let kubelet_tls = skiff_pki::mtls_client_config(pki.ca_pem(), &kc_cert, &kc_key)?;
    let config = skiff_apiserver::Config {
        kubelet_tls: Some(kubelet_tls),
        advertise_address: advertise.to_string(),
        secure_port: args.secure_port,
        service_cidr,
        watch_cache_size: args.watch_cache_size,
        toleration_seconds: skiff_apiserver::strategy::DefaultTolerationSeconds {
            not_ready: args.default_not_ready_toleration_seconds,
            unreachable: args.default_unreachable_toleration_seconds,
        },
    };
    let api = skiff_apiserver::Api::start(store.clone(), config, authn).await?;
    let router = skiff_apiserver::router(api.clone()).merge(crate::cmd::join::router(pki.clone(), &token)?);

    let addr = SocketAddr::new(args.bind_address, args.secure_port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    let host = if args.bind_address.is_unspecified() || args.bind_address.is_loopback() {
        "127.0.0.1".to_string()
    } else {
        args.bind_address.to_string()
    };
    let url = format!("https://{host}:{}", listener.local_addr()?.port());
    let kubeconfig = args.data_dir.join("kubeconfig.yaml");
    skiff_pki::write_admin_kubeconfig(&kubeconfig, &url, &pki)?;
    if let Some(extra) = &args.write_kubeconfig {
        skiff_pki::write_admin_kubeconfig(extra, &url, &pki)?;
    }
    // Embedded components stop and release their Leases when the server shuts down.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut components = Vec::new();
    if let Some(mut opts) = controller_opts {
        opts.shutdown = Some(stop_rx.clone());
        if let Some(addr) = args.controllers.metrics_address {
            crate::cmd::controller_manager::serve_metrics(addr, opts.metrics.clone()).await?;
        }
        let client =
            crate::inprocess::client(router.clone(), "system:kube-controller-manager", &["system:masters"], "kube-controller-manager");
        components.push(tokio::spawn(async move {
            if let Err(e) = skiff_controllers::run(client, opts).await {
                tracing::error!(error = %e, "controller manager stopped");
            }
        }));
    }
    if let Some(mut opts) = scheduler_opts {
        opts.shutdown = Some(stop_rx.clone());
        let client = crate::inprocess::client(router.clone(), "system:kube-scheduler", &[], "kube-scheduler");
        components.push(tokio::spawn(async move {
            if let Err(e) = skiff_scheduler::run(client, opts).await {
                tracing::error!(error = %e, "scheduler stopped");
            }
        }));
    }
    if !args.disable_agent {
        let mut cfg = args.agent.config(&args.data_dir.join("agent"), &args.data_dir, Some(advertise))?;
        let sans = vec![cfg.node_ip.to_string(), cfg.node_name.clone()];
        let (cert_pem, key_pem) = pki.issue_server_cert(&cfg.node_name, &sans, year)?;
        cfg.serving = Some(skiff_kubelet::server::ServingTls { cert_pem, key_pem, client_ca_pem: pki.ca_pem().to_string() });
        cfg.cluster_cidr = Some(args.controllers.cluster_cidr.parse().map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?);
        let user = format!("system:node:{}", cfg.node_name);
        let client = crate::inprocess::client(router.clone(), &user, &["system:nodes"], "kubelet");
        let svc_cidr: ipnet::Ipv4Net = args.service_cidr.parse().map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?;
        let proxy_client = crate::inprocess::client(router.clone(), &user, &["system:nodes"], "kube-proxy");
        cfg.cluster_dns = vec![IpAddr::V4(args.agent.cluster_dns_ip(svc_cidr))];
        args.agent.spawn_services(&proxy_client, &cfg, svc_cidr, stop_rx.clone())?;
        let mut stop = stop_rx.clone();
        components.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = skiff_kubelet::run(client, cfg, stopped).await {
                tracing::error!(error = format!("{e:#}"), "node agent stopped");
            }
        }));
    }
    tracing::info!(url = %url, kubeconfig = %kubeconfig.display(), "skiff API server ready in {} ms", started.elapsed().as_millis());

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    skiff_apiserver::server::serve_tls(listener, pki.server_config()?, router, cert_identity, shutdown).await?;
    // The in-process clients reach the router directly, so Lease releases still go through.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), futures::future::join_all(components)).await;
    drop(api);
    Ok(())
}
