//! The host's own addresses, read from /proc: no extra dependency, no traffic, and it answers for
//! the network namespace the server runs in (tests run clusters inside their own namespaces).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Non-loopback addresses of this host (IPv4 first, then global IPv6), sorted and deduplicated.
/// These go into the serving certificate so clients may dial the server by any of its IPs.
pub fn host_ips() -> Vec<IpAddr> {
    let v4 = std::fs::read_to_string("/proc/net/fib_trie").map(|t| parse_fib_trie(&t)).unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/if_inet6").map(|t| parse_if_inet6(&t)).unwrap_or_default();
    v4.into_iter().map(IpAddr::V4).chain(v6.into_iter().map(IpAddr::V6)).collect()
}

/// The first non-loopback IPv4 address of the host, if any: the default advertise address.
pub fn host_ipv4() -> Option<IpAddr> {
    std::fs::read_to_string("/proc/net/fib_trie").ok().and_then(|t| parse_fib_trie(&t).into_iter().next()).map(IpAddr::V4)
}

/// Local IPv4 addresses are the `/32 host LOCAL` leaves of the kernel's routing trie; the address
/// is on the line before its leaf description.
fn parse_fib_trie(trie: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(ip) = t.parse::<Ipv4Addr>() {
            last = Some(ip);
        } else if t.starts_with("/32 host LOCAL")
            && let Some(ip) = last
            && !ip.is_loopback()
        {
            out.push(ip);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Global-scope IPv6 addresses. Link-local ones are left out: they need a zone to be dialled and
/// every pod's host-side veth has one, so they would bloat the certificate and churn its SANs.
/// Privacy (temporary) and deprecated addresses rotate on their own, and would churn it too.
fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    const SCOPE_GLOBAL: u8 = 0x00;
    const IFA_F_TEMPORARY: u8 = 0x01;
    const IFA_F_DADFAILED: u8 = 0x08;
    const IFA_F_DEPRECATED: u8 = 0x20;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [hex, _ifindex, _prefix, scope, flags, ..] = f[..] else { continue };
        let (Ok(bits), Ok(scope), Ok(flags)) =
            (u128::from_str_radix(hex, 16), u8::from_str_radix(scope, 16), u8::from_str_radix(flags, 16))
        else {
            continue;
        };
        let ip = Ipv6Addr::from(bits);
        if hex.len() == 32
            && scope == SCOPE_GLOBAL
            && flags & (IFA_F_TEMPORARY | IFA_F_DADFAILED | IFA_F_DEPRECATED) == 0
            && !ip.is_loopback()
            && !ip.is_unspecified()
        {
            out.push(ip);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_trie_local_addresses() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n           |-- 127.0.0.1\n              /32 host LOCAL\n        |-- 127.255.255.255\n           /32 link BROADCAST\n     +-- 192.0.2.0/24 2 0 2\n           |-- 192.0.2.0\n              /24 link UNICAST\n           |-- 192.0.2.2\n              /32 host LOCAL\n        |-- 192.0.2.255\n           /32 link BROADCAST\nLocal:\n           |-- 192.0.2.2\n              /32 host LOCAL\n           |-- 10.42.0.1\n              /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(trie), [Ipv4Addr::new(10, 42, 0, 1), Ipv4Addr::new(192, 0, 2, 2)]);
    }

    #[test]
    fn if_inet6_global_addresses_only() {
        let text = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                    fd000000000000000000000000000002 04 40 00 82     eth0\n\
                    20010db8000000000000000000000007 04 40 00 01     eth0\n\
                    20010db8000000000000000000000008 04 40 00 20     eth0\n\
                    00000000000000000000000000000001 01 80 10 80       lo\n\
                    garbage\n";
        assert_eq!(parse_if_inet6(text), ["fd00::2".parse::<Ipv6Addr>().unwrap()]);
    }

    #[test]
    fn host_ips_have_no_loopback() {
        assert!(host_ips().iter().all(|ip| !ip.is_loopback()));
    }
}
