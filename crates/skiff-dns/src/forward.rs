//! Names outside the cluster go to the node's own resolvers (what CoreDNS's `forward . /etc/resolv.conf`
//! does). The DNS server runs on the host, so the node's resolver configuration works as it
//! does for the node itself, loopback resolvers included.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};

pub struct Forwarder {
    resolver: Option<TokioResolver>,
}

/// What the upstream said.
pub struct Forwarded {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

/// The `nameserver` lines of a resolv.conf, skipping `skip` (the cluster DNS address itself, so
/// a node whose resolv.conf names the cluster DNS does not loop).
pub fn nameservers(resolv_conf: &str, skip: &[IpAddr]) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next()).flatten()
        })
        .filter_map(|s| s.split('%').next().and_then(|s| s.parse().ok()))
        .filter(|ip| !skip.contains(ip))
        .collect()
}

impl Forwarder {
    pub fn new(upstreams: &[IpAddr]) -> anyhow::Result<Forwarder> {
        if upstreams.is_empty() {
            return Ok(Forwarder { resolver: None });
        }
        let config = ResolverConfig::from_parts(None, vec![], upstreams.iter().map(|ip| NameServerConfig::udp_and_tcp(*ip)).collect());
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts: &mut ResolverOpts = builder.options_mut();
        // The names come fully qualified from the client's own search-list expansion.
        opts.ndots = 0;
        opts.attempts = 2;
        Ok(Forwarder { resolver: Some(builder.build()?) })
    }

    pub async fn forward(&self, name: &Name, qtype: RecordType) -> Forwarded {
        let Some(resolver) = &self.resolver else {
            return Forwarded { rcode: ResponseCode::ServFail, answers: vec![], authorities: vec![] };
        };
        let mut name = name.clone();
        name.set_fqdn(true);
        match resolver.lookup(name, qtype).await {
            Ok(lookup) => Forwarded { rcode: ResponseCode::NoError, answers: lookup.answers().to_vec(), authorities: vec![] },
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => Forwarded {
                rcode: no.response_code,
                answers: vec![],
                authorities: no.soa.map(|soa| vec![soa.into_record_of_rdata()]).unwrap_or_default(),
            },
            Err(NetError::Dns(DnsError::ResponseCode(rcode))) => Forwarded { rcode, answers: vec![], authorities: vec![] },
            Err(e) => {
                tracing::debug!(error = %e, "upstream DNS failed");
                Forwarded { rcode: ResponseCode::ServFail, answers: vec![], authorities: vec![] }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_skip_the_cluster_dns() {
        let conf = "# x\nnameserver 10.43.0.10\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch a b\n";
        let skip: Vec<IpAddr> = vec!["10.43.0.10".parse().unwrap()];
        assert_eq!(nameservers(conf, &skip), vec!["127.0.0.53".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]);
    }
}
