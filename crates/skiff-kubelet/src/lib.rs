//! skiff's kubelet: registers the node and keeps its Lease and status fresh, configures and
//! supervises containerd, and runs the pods bound to this node through CRI.
//!
//! It is an API client like every other component (a `kube::Client`, in-process when embedded in
//! `skiff server`, HTTPS for `skiff agent`). Runtime objects carry upstream's labels, so the
//! runtime itself is the record of what runs: a restarted agent finds its pods there.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Taint;

pub mod cgroups;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod import;
pub mod labels;
pub mod logs;
pub mod network;
pub mod node;
mod node_sync;
pub mod pause;
pub mod pods;
pub mod server;
pub mod stats;

/// Everything the agent is told at start.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// The agent's own state: containerd's root and state, CNI config, pod directories.
    pub data_dir: PathBuf,
    /// An existing CRI socket; when None the agent starts and supervises its own containerd.
    pub runtime_endpoint: Option<PathBuf>,
    pub cni_bin_dir: PathBuf,
    pub max_pods: i64,
    pub kube_reserved: BTreeMap<String, String>,
    pub system_reserved: BTreeMap<String, String>,
    pub node_labels: BTreeMap<String, String>,
    pub node_taints: Vec<Taint>,
    /// The cgroup (cgroupfs path) the kubepods hierarchy goes under; "/" as upstream by default.
    pub cgroup_root: String,
    /// The node's resolver configuration handed to pods (upstream's --resolv-conf).
    pub resolv_conf: PathBuf,
    /// Image tarballs imported at start when new (None: none).
    pub images_dir: Option<PathBuf>,
    /// Static pod manifests (upstream's --pod-manifest-path); None: no file source.
    pub pod_manifest_path: Option<PathBuf>,
    /// A static pod manifest fetched over HTTP (upstream's --manifest-url).
    pub manifest_url: Option<String>,
    /// The kubelet's HTTPS port (logs, exec, attach, port-forward, stats).
    pub kubelet_port: u16,
    /// The kubelet's certificate and the CA its clients' certificates come from; without it the
    /// kubelet serves nothing and `kubectl logs` cannot reach this node.
    pub serving: Option<server::ServingTls>,
    /// All pod addresses (the controller manager's --cluster-cidr). With it the agent routes
    /// other nodes' pod CIDRs and masquerades only traffic leaving the cluster (`network.rs`);
    /// without it each node masquerades whatever leaves its own pod CIDR.
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// The cluster DNS servers ClusterFirst pods use (upstream's --cluster-dns); empty: pods get
    /// the node's resolvers, as upstream without cluster DNS.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain (upstream's --cluster-domain).
    pub cluster_domain: String,
}

impl Config {
    pub fn new(node_name: &str, node_ip: IpAddr, data_dir: PathBuf) -> Config {
        Config {
            node_name: node_name.into(),
            node_ip,
            data_dir,
            runtime_endpoint: None,
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            max_pods: 110,
            kube_reserved: BTreeMap::new(),
            system_reserved: BTreeMap::new(),
            node_labels: BTreeMap::new(),
            node_taints: Vec::new(),
            cgroup_root: "/".into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            images_dir: None,
            pod_manifest_path: None,
            manifest_url: None,
            kubelet_port: node::KUBELET_PORT as u16,
            serving: None,
            cluster_cidr: None,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
        }
    }

    #[cfg(test)]
    pub fn for_test(name: &str) -> Config {
        Config::new(name, IpAddr::from([10, 0, 0, 1]), PathBuf::from("/nonexistent"))
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.data_dir.join("pods")
    }
}

/// Parses `k=v,k2=v2` (the --kube-reserved / --node-labels shape).
pub fn parse_map(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("{p:?} is not key=value")),
        })
        .collect()
}

/// Runs the agent until `shutdown` resolves. Pods keep running after it returns: stopping the
/// agent is not a reason to stop workloads (upstream's kubelet behaves the same).
pub async fn run(client: kube::Client, cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    std::fs::create_dir_all(cfg.pods_dir())?;
    let layout = containerd::Layout::new(&cfg.data_dir, &cfg.cni_bin_dir);
    let (socket, supervisor) = match &cfg.runtime_endpoint {
        Some(sock) => (sock.clone(), None),
        None => (layout.socket.clone(), Some(containerd::start_supervised(layout.clone()).await?)),
    };
    let cri = cri::Cri::connect(&socket)?;
    // The socket answers before the CRI plugin is initialized ("server is not initialized yet").
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) = cri.image_status(pause::IMAGE).await {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the container runtime at {} is not ready after 60 s: {}", socket.display(), e.message());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    containerd::ensure_pause(&cri, &layout).await?;
    if let Some(dir) = &cfg.images_dir {
        match import::import_new(&socket, dir, &cfg.data_dir.join("images-imported.json")).await {
            Ok(files) if !files.is_empty() => tracing::info!(count = files.len(), dir = %dir.display(), "imported new image tarballs"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = format!("{e:#}"), dir = %dir.display(), "importing image tarballs"),
        }
    }
    let version = cri.version().await?;
    tracing::info!(node = %cfg.node_name, runtime = %format!("{} {}", version.runtime_name, version.runtime_version), "node agent started");

    if let Some(tls) = cfg.serving.clone() {
        let addr = std::net::SocketAddr::new(IpAddr::from([0, 0, 0, 0]), cfg.kubelet_port);
        let cri = cri.clone();
        let node_name = cfg.node_name.clone();
        let data_dir = cfg.data_dir.clone();
        tokio::spawn(async move {
            if let Err(e) = server::serve(addr, tls, cri, node_name, data_dir).await {
                tracing::error!(error = format!("{e:#}"), "the kubelet server stopped");
            }
        });
    } else {
        tracing::warn!("no serving certificate: the kubelet endpoint (logs) is off on this node");
    }
    let node = node_sync::NodeSync::new(client.clone(), cfg.clone(), cri.clone(), layout.clone());
    let pods = pods::Manager::new(client.clone(), cfg.clone(), cri.clone());
    let net = async {
        match cfg.cluster_cidr {
            Some(cidr) => network::run(client.clone(), cfg.node_name.clone(), cidr).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = node.run() => r?,
        r = pods.run() => r?,
        r = net => r?,
        _ = shutdown => {}
    }
    if let Some(s) = supervisor {
        s.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse() {
        let m = parse_map("cpu=250m, memory=1Gi").unwrap();
        assert_eq!(m["cpu"], "250m");
        assert_eq!(m["memory"], "1Gi");
        assert!(parse_map("cpu").is_err());
        assert!(parse_map("").unwrap().is_empty());
    }
}
