//! Host settings the rules depend on: sysctls, and routes for the service CIDR.
//!
//! Service IPs exist only as rules. A packet to one that no rule translated must not follow a
//! default route off the machine, so the service CIDR gets an `unreachable` route. Packets the
//! node itself sends are routed before the output hook translates them, and an unreachable route
//! would fail their connect() outright; a policy rule therefore gives host-originated traffic
//! (`iif lo`) its own table in which the CIDR points at the loopback device. A translated packet
//! is routed again to its endpoint; an untranslated one is rejected by the table's filter rules
//! (or, failing that, loops back and is dropped).

use std::net::Ipv4Addr;

use anyhow::Context;
use ipnet::Ipv4Net;

/// Policy-routing table and rule priority owned by skiff.
pub const ROUTE_TABLE: u32 = 7460;
/// Routes skiff adds carry this protocol number, so they can be told apart and removed.
pub const ROUTE_PROTO: u32 = 211;

/// Runs `ip` (iproute2 is what the rest of the host setup documents and what an operator reads
/// back with; the rtnetlink crates would add a netlink stack for a handful of calls).
pub async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("ip").args(args).output().await.context("running ip")?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    let p = format!("/proc/sys/{path}");
    if std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&p, value).with_context(|| format!("setting {path}={value}"))
}

/// Forwarding for pod traffic, bridged pod-to-pod traffic through the nat hooks (so replies from
/// a Service's endpoint on the same bridge are translated back), and route_localnet for
/// NodePorts on 127.0.0.1.
pub fn sysctls() -> anyhow::Result<()> {
    sysctl("net/ipv4/ip_forward", "1")?;
    sysctl("net/ipv4/conf/all/route_localnet", "1")?;
    // Present only once a bridge exists or br_netfilter is loaded; the CNI bridge comes later.
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
    }
    Ok(())
}

/// Installs (idempotently) the routes and the policy rule for `cidr`, sourcing host-originated
/// service traffic from `node_ip`.
pub async fn ensure_service_routes(cidr: Ipv4Net, node_ip: Ipv4Addr) -> anyhow::Result<()> {
    let (c, table, proto, src) = (cidr.to_string(), ROUTE_TABLE.to_string(), ROUTE_PROTO.to_string(), node_ip.to_string());
    ip(&["route", "replace", "unreachable", &c, "proto", &proto]).await?;
    ip(&["route", "replace", &c, "dev", "lo", "src", &src, "table", &table, "proto", &proto]).await?;
    let rules = ip(&["rule", "show", "priority", &table]).await?;
    if !rules.contains(&format!("lookup {table}")) {
        ip(&["rule", "add", "priority", &table, "iif", "lo", "to", &c, "lookup", &table]).await?;
    }
    Ok(())
}

/// Removes what `ensure_service_routes` added.
pub async fn remove_service_routes(cidr: Ipv4Net) -> anyhow::Result<()> {
    let (c, table) = (cidr.to_string(), ROUTE_TABLE.to_string());
    while ip(&["rule", "show", "priority", &table]).await?.contains(&format!("lookup {table}")) {
        ip(&["rule", "del", "priority", &table]).await?;
    }
    let _ = ip(&["route", "del", &c, "table", &table]).await;
    let _ = ip(&["route", "del", "unreachable", &c]).await;
    Ok(())
}

/// Removes every route and rule the proxy adds, whatever CIDR they were for (`skiff cleanup`).
pub async fn remove_all_routes() -> anyhow::Result<()> {
    let (table, proto) = (ROUTE_TABLE.to_string(), ROUTE_PROTO.to_string());
    while ip(&["rule", "show", "priority", &table]).await?.contains(&format!("lookup {table}")) {
        ip(&["rule", "del", "priority", &table]).await?;
    }
    if !ip(&["route", "show", "table", &table]).await?.trim().is_empty() {
        ip(&["route", "flush", "table", &table]).await?;
    }
    if !ip(&["route", "show", "proto", &proto]).await?.trim().is_empty() {
        ip(&["route", "flush", "proto", &proto]).await?;
    }
    Ok(())
}
