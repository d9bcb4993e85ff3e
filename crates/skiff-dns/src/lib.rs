//! skiff's cluster DNS (CoreDNS's role): every agent answers Kubernetes DNS-based service
//! discovery for its own pods from the Services and EndpointSlices the agent already watches
//! for the service proxy, and forwards other names to the node's resolvers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::Client;

pub mod forward;
pub mod handler;
pub mod index;
pub mod publish;

/// The port each node's DNS server listens on, on the node's address; the kube-dns Service's
/// port 53 is translated to it. Not 53 itself, which a node's own resolver often holds.
pub const PORT: u16 = 10053;
/// Changes right behind one another rebuild the zone once.
const COALESCE: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// The zone, `cluster.local` by default (the kubelet's --cluster-domain).
    pub domain: String,
    /// The kube-dns Service address, never forwarded to (a loop otherwise).
    pub cluster_dns: IpAddr,
    pub port: u16,
    /// The node's resolver configuration: where other names go.
    pub resolv_conf: std::path::PathBuf,
}

/// Serves until `stop` resolves.
pub async fn run(
    client: Client,
    mut watched: skiff_proxy::watch::Services,
    cfg: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let resolv = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
    let forwarder = forward::Forwarder::new(&forward::nameservers(&resolv, &[cfg.cluster_dns]))?;
    let addr = SocketAddr::new(cfg.node_ip, cfg.port);
    let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|e| anyhow::anyhow!("cluster DNS: bind udp {addr}: {e}"))?;
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cluster DNS: bind tcp {addr}: {e}"))?;
    let mut stop = std::pin::pin!(stop);
    tokio::select! {
        _ = &mut stop => return Ok(()),
        r = watched.ready() => r?,
    }
    let build = |w: &skiff_proxy::watch::Services, serial: u32| {
        Arc::new(index::Index::build(&cfg.domain, &w.services.state(), &w.slices.state(), serial))
    };
    let mut serial = 1u32;
    let zone = Arc::new(RwLock::new(build(&watched, serial)));
    let mut server = hickory_server::Server::new(handler::Handler { index: zone.clone(), forwarder });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64);
    tokio::spawn(publish::publish(client, cfg.node_name.clone(), cfg.node_ip, cfg.port));
    tracing::info!(%addr, domain = %cfg.domain, "cluster DNS serving");
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = watched.changed() => {
                tokio::time::sleep(COALESCE).await;
                serial = serial.wrapping_add(1);
                let next = build(&watched, serial);
                *zone.write().unwrap_or_else(|p| p.into_inner()) = next;
            }
        }
    }
    server.shutdown_gracefully().await.ok();
    Ok(())
}
