//! Forgetting UDP (and SCTP) flows to endpoints that are gone. A datagram flow has no end the
//! kernel can see, so its conntrack entry keeps sending a client's packets (same source port,
//! e.g. a resolver or a syslog sender) to the endpoint it was first translated to for as long
//! as the client keeps talking; upstream's kube-proxy deletes those entries when the endpoint
//! leaves its Service, and so does this, after the rules that no longer choose it are in.
//!
//! TCP needs none of this: a connection to a gone endpoint is reset or times out and the
//! client's next connection is a new flow. Flows created while a Service had no endpoints never
//! reach the table (the filter hook rejects the first packet before conntrack confirms it).
//!
//! Through the `conntrack` tool (conntrack-tools): the netlink crates for ctnetlink are not
//! maintained, and the tool's filters are what an operator would type to check.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;

use crate::model::{Proto, ServicePort};

/// Entries to delete: translated from (`orig_dst`, `orig_port`) — a service address and port,
/// or any address and a nodePort — to `endpoint`:`endpoint_port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlow {
    pub proto: Proto,
    pub orig_dst: Option<Ipv4Addr>,
    pub orig_port: u16,
    pub endpoint: Ipv4Addr,
    pub endpoint_port: u16,
}

/// The flows to forget when `old` becomes `new` (None: the port is gone).
pub fn stale(old: &ServicePort, new: Option<&ServicePort>) -> Vec<StaleFlow> {
    if old.proto == Proto::Tcp {
        return Vec::new();
    }
    let kept: Vec<(Ipv4Addr, u16)> = new.map(|n| n.cluster_endpoints().iter().map(|e| (e.ip, e.port)).collect()).unwrap_or_default();
    let mut out = Vec::new();
    for e in old.cluster_endpoints() {
        if kept.contains(&(e.ip, e.port)) {
            continue;
        }
        let flow = |orig_dst, orig_port| StaleFlow { proto: old.proto, orig_dst, orig_port, endpoint: e.ip, endpoint_port: e.port };
        for ip in old.cluster_ips.iter().chain(&old.external_ips) {
            out.push(flow(Some(*ip), old.port));
        }
        if let Some(np) = old.node_port {
            out.push(flow(None, np));
        }
    }
    out
}

#[derive(Clone, Debug)]
pub struct Conntrack {
    pub bin: PathBuf,
    /// Run inside this named network namespace (`ip netns exec`): tests.
    pub netns: Option<String>,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack { bin: PathBuf::from("conntrack"), netns: None }
    }
}

impl Conntrack {
    /// Deletes the entries of `flows`; returns how many went.
    pub async fn clear(&self, flows: &[StaleFlow]) -> anyhow::Result<usize> {
        let mut deleted = 0;
        for f in flows {
            let (port, ep, ep_port) = (f.orig_port.to_string(), f.endpoint.to_string(), f.endpoint_port.to_string());
            let mut args = vec!["-D", "-p", f.proto.nft(), "--orig-port-dst", &port, "--reply-src", &ep, "--reply-port-src", &ep_port];
            let dst = f.orig_dst.map(|d| d.to_string());
            if let Some(d) = &dst {
                args.extend(["--orig-dst", d.as_str()]);
            }
            let mut cmd = crate::tool::command(&self.bin, self.netns.as_deref());
            let out = cmd.args(&args).output().await.with_context(|| format!("running {}", self.bin.display()))?;
            let err = String::from_utf8_lossy(&out.stderr);
            // It exits 1 when nothing matched, which is the common case.
            match err
                .split(" flow entries have been deleted")
                .next()
                .and_then(|h| h.rsplit(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => deleted += n,
                None if out.status.success() => {}
                None => anyhow::bail!("conntrack {}: {}", args.join(" "), err.trim()),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{endpoint, port as service_port};

    fn port(proto: Proto, eps: &[&str]) -> ServicePort {
        let mut p = service_port("ns/dns:dns/udp", proto, "10.43.0.53", 53, eps.iter().map(|e| endpoint(e, 5353, true)).collect());
        p.node_port = Some(30053);
        p
    }

    #[test]
    fn a_removed_udp_endpoint_is_forgotten_for_the_cluster_ip_and_the_node_port() {
        let old = port(Proto::Udp, &["10.42.0.5", "10.42.0.6"]);
        let new = port(Proto::Udp, &["10.42.0.6"]);
        let flows = stale(&old, Some(&new));
        let ep: Ipv4Addr = "10.42.0.5".parse().unwrap();
        assert_eq!(
            flows,
            vec![
                StaleFlow {
                    proto: Proto::Udp,
                    orig_dst: Some("10.43.0.53".parse().unwrap()),
                    orig_port: 53,
                    endpoint: ep,
                    endpoint_port: 5353
                },
                StaleFlow { proto: Proto::Udp, orig_dst: None, orig_port: 30053, endpoint: ep, endpoint_port: 5353 },
            ]
        );
        assert_eq!(stale(&old, None).len(), 4, "a deleted Service forgets every endpoint");
        assert!(stale(&new, Some(&old)).is_empty(), "gaining endpoints forgets nothing");
    }

    #[test]
    fn tcp_flows_are_left_alone() {
        assert!(stale(&port(Proto::Tcp, &["10.42.0.5"]), None).is_empty());
    }

    #[test]
    fn an_endpoint_that_stops_being_ready_is_stale() {
        let old = port(Proto::Udp, &["10.42.0.5", "10.42.0.6"]);
        let mut new = old.clone();
        new.endpoints[0].ready = false;
        assert_eq!(stale(&old, Some(&new)).iter().map(|f| f.endpoint.to_string()).collect::<Vec<_>>(), ["10.42.0.5", "10.42.0.5"]);
    }
}
