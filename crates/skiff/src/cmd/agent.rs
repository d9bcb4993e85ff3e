//! `skiff agent`: the node agent (kubelet role, `skiff_kubelet`) on its own, and the flags the
//! agent embedded in `skiff server` shares with it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use skiff_sim::Taint;

/// Node flags, the same for `skiff agent` and the agent inside `skiff server`.
#[derive(Args, Debug, Clone)]
pub struct AgentFlags {
    /// The Node's name (default: this host's name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The Node's InternalIP (default: the server's advertise address, or this host's first IPv4).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// An existing CRI socket to use instead of starting containerd.
    #[arg(long)]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// Pods this node accepts (Node capacity `pods`).
    #[arg(long, default_value_t = 110)]
    pub max_pods: i64,
    /// Resources kept for Kubernetes daemons: cpu=250m,memory=256Mi,ephemeral-storage=1Gi.
    #[arg(long, default_value = "", value_parser = skiff_kubelet::parse_map)]
    pub kube_reserved: BTreeMap<String, String>,
    /// Resources kept for the operating system, same shape as --kube-reserved.
    #[arg(long, default_value = "", value_parser = skiff_kubelet::parse_map)]
    pub system_reserved: BTreeMap<String, String>,
    /// Extra node labels: k=v,k2=v2.
    #[arg(long, default_value = "", value_parser = skiff_sim::parse_labels)]
    pub node_labels: BTreeMap<String, String>,
    /// Node taints registered with the Node: key=value:NoSchedule,key:NoExecute.
    #[arg(long, default_value = "", value_parser = skiff_sim::parse_taints)]
    pub node_taints: ::std::vec::Vec<Taint>, // a whole list per flag
    /// The cgroup the kubepods hierarchy is created under (cgroupfs path).
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// Where the CNI plugins are.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// The resolver configuration pods inherit.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Static pod manifests (default: `manifests/` in the data dir).
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// A static pod manifest to fetch over HTTP (re-read every few seconds).
    #[arg(long)]
    pub manifest_url: Option<String>,
    /// The kubelet's HTTPS port (logs, exec, attach, port-forward, stats).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Do not run the service proxy (Services then need another kube-proxy on this node).
    #[arg(long)]
    pub disable_kube_proxy: bool,
    /// The cluster DNS address pods get as their nameserver (default: the 10th address of the
    /// service CIDR, the kube-dns Service).
    #[arg(long)]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Do not run this node's DNS server (pods still get --cluster-dns; another DNS must answer).
    #[arg(long)]
    pub disable_cluster_dns: bool,
}

impl AgentFlags {
    /// The kube-dns address for this service CIDR.
    pub fn cluster_dns_ip(&self, service_cidr: ipnet::Ipv4Net) -> std::net::Ipv4Addr {
        self.cluster_dns.unwrap_or_else(|| {
            let base = u32::from(service_cidr.network());
            std::net::Ipv4Addr::from(base + 10)
        })
    }

    /// Starts what serves Services on this node next to the kubelet: the service proxy (unless
    /// --disable-kube-proxy) and the node's cluster DNS (unless --disable-cluster-dns), both on one
    /// watch of Services and EndpointSlices. They stop when `stop` turns true.
    pub fn spawn_services(
        &self,
        client: &kube::Client,
        cfg: &skiff_kubelet::Config,
        service_cidr: ipnet::Ipv4Net,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if self.disable_kube_proxy && self.disable_cluster_dns {
            return Ok(());
        }
        let IpAddr::V4(node_ip) = cfg.node_ip else { anyhow::bail!("the service proxy and cluster DNS need an IPv4 --node-ip") };
        let watched = skiff_proxy::watch::Services::watch(client.clone());
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if !self.disable_kube_proxy {
            let pcfg = skiff_proxy::Config {
                node_name: cfg.node_name.clone(),
                node_ip,
                cluster_cidr: cfg.cluster_cidr,
                service_cidr,
                nft: Default::default(),
                conntrack: Default::default(),
                manage_host: true,
            };
            let (w, stop) = (watched.clone(), stopped(stop.clone()));
            tokio::spawn(async move {
                if let Err(e) = skiff_proxy::run(w, pcfg, stop).await {
                    tracing::error!(error = format!("{e:#}"), "service proxy stopped");
                }
            });
        }
        if !self.disable_cluster_dns {
            let dcfg = skiff_dns::Config {
                node_name: cfg.node_name.clone(),
                node_ip: cfg.node_ip,
                domain: self.cluster_domain.clone(),
                cluster_dns: IpAddr::V4(self.cluster_dns_ip(service_cidr)),
                port: skiff_dns::PORT,
                resolv_conf: self.resolv_conf.clone(),
            };
            let (client, stop) = (client.clone(), stopped(stop));
            tokio::spawn(async move {
                if let Err(e) = skiff_dns::run(client, watched, dcfg, stop).await {
                    tracing::error!(error = format!("{e:#}"), "cluster DNS stopped");
                }
            });
        }
        Ok(())
    }

    /// `base` holds `manifests/` (static pods, unless --pod-manifest-path says otherwise) and
    /// `images/` (tarballs imported at start).
    pub fn config(&self, data_dir: &Path, base: &Path, default_ip: Option<IpAddr>) -> anyhow::Result<skiff_kubelet::Config> {
        let manifests = base.join("manifests");
        let name = match &self.node_name {
            Some(n) => n.clone(),
            None => hostname()?,
        };
        let ip = self
            .node_ip
            .or(default_ip.filter(|ip| !ip.is_unspecified() && !ip.is_loopback()))
            .or_else(skiff_pki::host_ipv4)
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let mut c = skiff_kubelet::Config::new(&name, ip, data_dir.to_path_buf());
        c.runtime_endpoint = self.container_runtime_endpoint.clone();
        c.max_pods = self.max_pods;
        c.kube_reserved = self.kube_reserved.clone();
        c.system_reserved = self.system_reserved.clone();
        c.node_labels = self.node_labels.clone();
        c.node_taints = self.node_taints.clone();
        c.cgroup_root = self.cgroup_root.clone();
        c.cni_bin_dir = self.cni_bin_dir.clone();
        c.resolv_conf = self.resolv_conf.clone();
        c.cluster_domain = self.cluster_domain.clone();
        c.kubelet_port = self.kubelet_port;
        let manifests = self.pod_manifest_path.clone().unwrap_or(manifests);
        std::fs::create_dir_all(&manifests)?;
        c.pod_manifest_path = Some(manifests);
        c.manifest_url = self.manifest_url.clone();
        let images = base.join("images");
        std::fs::create_dir_all(&images)?;
        c.images_dir = Some(images);
        Ok(c)
    }
}

/// The host name, lower-cased as a Node name must be.
fn hostname() -> anyhow::Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(h.trim().to_lowercase())
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Kubeconfig with this node's credentials (instead of joining with --server and --token).
    #[arg(long, env = "KUBECONFIG", default_value = "/etc/skiff/kubeconfig.yaml")]
    pub kubeconfig: PathBuf,
    /// API server URL (https://HOST:6443): with --token, join the cluster there.
    #[arg(long)]
    pub server: Option<String>,
    /// The server's join token (its DATA/token).
    #[arg(long, env = "SKIFF_TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Where the agent keeps containerd's state, CNI config and pod directories.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub data_dir: PathBuf,
    /// The cluster's pod CIDR (the server's --cluster-cidr): other nodes' pod CIDRs are routed
    /// and traffic leaving it is masqueraded.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// The cluster's service CIDR (the server's --service-cidr).
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: ipnet::Ipv4Net,
    #[command(flatten)]
    pub node: AgentFlags,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut cfg = args.node.config(&args.data_dir, &args.data_dir, None)?;
    cfg.cluster_cidr = Some(args.cluster_cidr);
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("--token-file {}: {e}", f.display()))?.trim().to_string())
        }
        (None, None) => None,
    };
    let (client, url) = match (token, &args.server) {
        (Some(token), Some(server)) => {
            let joined = crate::cmd::join::join_or_reuse(&args.data_dir, server, &token, &cfg.node_name, &cfg.node_ip.to_string()).await?;
            cfg.serving = Some(joined.serving);
            crate::cmd::sim::client(&joined.kubeconfig, None).await?
        }
        (Some(_), None) => anyhow::bail!("--token needs --server (the API server to join)"),
        (None, _) => crate::cmd::sim::client(&args.kubeconfig, args.server.as_deref()).await?,
    };
    tracing::info!(node = %cfg.node_name, server = %url, "skiff agent starting");
    cfg.cluster_dns = vec![IpAddr::V4(args.node.cluster_dns_ip(args.service_cidr))];
    // The proxy and DNS run as long as the process: their state outlives a kubelet stop anyway.
    let (_keep, stop) = tokio::sync::watch::channel(false);
    args.node.spawn_services(&client, &cfg, args.service_cidr, stop)?;
    skiff_kubelet::run(client, cfg, crate::cmd::scheduler::shutdown_signal()).await
}
