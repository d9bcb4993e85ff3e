//! The host's own addresses, read from /proc (no extra dependency, no traffic).

use std::net::{IpAddr, Ipv4Addr};

/// Non-loopback IPv4 addresses assigned to this host, from the kernel's local routing table.
pub fn host_ips() -> Vec<IpAddr> {
    let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") else { return Vec::new() };
    let mut out: Vec<IpAddr> = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(ip) = t.parse::<Ipv4Addr>() {
            last = Some(ip);
        } else if t.contains("/32 host LOCAL")
            && let Some(ip) = last
            && !ip.is_loopback()
            && !out.contains(&IpAddr::V4(ip))
        {
            out.push(IpAddr::V4(ip));
        }
    }
    out.sort();
    out
}

/// The first non-loopback IPv4 address of the host, if any.
pub fn host_ipv4() -> Option<IpAddr> {
    host_ips().into_iter().next()
}
