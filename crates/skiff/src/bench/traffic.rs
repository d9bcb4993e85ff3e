//! The data path of `skiff bench service`: a client "pod" and a server "pod" (network
//! namespaces with a veth each to the node's namespace, which forwards between them as a node
//! does) and the proxy's table in the node. Measured in one run: HTTP requests/s (a new TCP
//! connection each, so every request pays the conntrack entry and NAT lookup) to the server pod's
//! IP and to its cluster IP; and DNS queries/s and latency from the client pod to the kube-dns
//! cluster IP, answered by skiff-dns on the node from a zone of N Services.
//!
//! Sockets belong to the network namespace of the thread that created them, so each client and
//! server thread enters its namespace first (setns affects only the calling thread).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;

use super::stats::{Samples, ms};

pub const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 2);
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 255, 1);
/// Not 10.43.0.10: the synthetic Services fill the bottom of the range.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 255, 10);
/// The server pod listens on two ports: one reached by pod IP, one as the Service's endpoint.
/// With one port, a connection through the cluster IP could DNAT onto the exact 4-tuple a
/// direct connection from the same client port left in conntrack moments before, and
/// conntrack drops such a clash (a SYN retransmit, 1 s): a property of the benchmark's
/// alternation, not of the Service path.
pub const DIRECT_PORT: u16 = 8080;
pub const ENDPOINT_PORT: u16 = 8081;
const DNS_PORT: u16 = 10053;

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("{args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| path.clone())?;
        // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

/// The two pod namespaces, wired to `node` (removed on drop).
pub struct Pods {
    pub client: String,
    pub server: String,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Pods {
    pub fn create(node: &str) -> anyhow::Result<Pods> {
        let id = std::process::id();
        let pods = Pods { client: format!("skiff-bench-cli-{id}"), server: format!("skiff-bench-srv-{id}") };
        sh(&["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for (ns, dev, node_side, pod) in
            [(&pods.client, "skbc", "10.88.1.1", "10.88.1.2"), (&pods.server, "skbs", "10.88.2.1", "10.88.2.2")]
        {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", node, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            sh(&["ip", "-n", node, "addr", "add", &format!("{node_side}/24"), "dev", dev])?;
            sh(&["ip", "-n", node, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", ns, "addr", "add", &format!("{pod}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", ns, "route", "add", "default", "via", node_side])?;
        }
        Ok(pods)
    }
}

/// A minimal HTTP/1.0 server in the server pod: one response per connection.
pub fn serve_http(pods: &Pods, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let listeners = in_netns(&pods.server, || -> std::io::Result<Vec<TcpListener>> {
        [DIRECT_PORT, ENDPOINT_PORT].into_iter().map(|p| TcpListener::bind((Ipv4Addr::UNSPECIFIED, p))).collect()
    })
    .join()
    .expect("thread")??;
    for l in listeners.iter().flat_map(|l| [l.try_clone(), l.try_clone()]) {
        let (l, stop) = (l?, stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else { continue };
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
    }
    Ok(())
}

/// Requests/s from the client pod to `target` with `threads` sequential clients for `secs`.
pub fn http_rate(pods: &Pods, target: Ipv4Addr, port: u16, threads: usize, secs: f64) -> anyhow::Result<(f64, usize)> {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            in_netns(&pods.client, move || {
                let (deadline, mut ok, mut failed) = (Instant::now() + Duration::from_secs_f64(secs), 0usize, 0usize);
                let mut buf = Vec::with_capacity(128);
                while Instant::now() < deadline {
                    let r = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&SocketAddr::from((target, port)), Duration::from_secs(1))?;
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                        buf.clear();
                        s.read_to_end(&mut buf)?;
                        Ok(())
                    })();
                    match r {
                        Ok(()) if buf.ends_with(b"ok") => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        let (o, f) = h.join().expect("client thread")?;
        ok += o;
        failed += f;
    }
    Ok((ok as f64 / secs, failed))
}

/// Synthetic Services for the zone: `svc-<i>.bench` at consecutive cluster IPs.
pub fn zone_services(n: usize) -> Vec<Arc<Service>> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 0, 1)) + i as u32).to_string();
            let v = serde_json::json!({"metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
            Arc::new(serde_json::from_value(v).expect("service"))
        })
        .collect()
}

/// skiff-dns on the node's client-side address, answering from `services`.
pub async fn serve_dns(node: &str, services: &[Arc<Service>]) -> anyhow::Result<hickory_server::Server<skiff_dns::handler::Handler>> {
    let addr = SocketAddr::from((NODE_CLIENT_SIDE, DNS_PORT));
    let (udp, tcp) = in_netns(node, move || -> std::io::Result<(UdpSocket, TcpListener)> {
        let udp = UdpSocket::bind(addr)?;
        udp.set_nonblocking(true)?;
        let tcp = TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .join()
    .expect("thread")??;
    let index = skiff_dns::index::Index::build("cluster.local", services, &[], 1);
    let handler = skiff_dns::handler::Handler {
        index: Arc::new(std::sync::RwLock::new(Arc::new(index))),
        forwarder: skiff_dns::forward::Forwarder::new(&[])?,
    };
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
    server.register_listener(tokio::net::TcpListener::from_std(tcp)?, Duration::from_secs(5), 64);
    Ok(server)
}

/// DNS A queries/s and latency from the client pod to the kube-dns cluster IP, `threads`
/// clients each with one query outstanding, names spread over `n` Services.
pub fn dns_rate(pods: &Pods, n: usize, threads: usize, secs: f64) -> anyhow::Result<(f64, Samples, usize)> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            in_netns(&pods.client, move || -> anyhow::Result<(usize, Samples, usize)> {
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                sock.connect((DNS_IP, 53))?;
                sock.set_read_timeout(Some(Duration::from_secs(1)))?;
                let (deadline, mut samples, mut failed) = (Instant::now() + Duration::from_secs_f64(secs), Samples::default(), 0);
                let mut buf = [0u8; 1500];
                let mut i = t;
                while Instant::now() < deadline {
                    i = (i + 7919) % n;
                    let mut m = Message::query();
                    m.metadata.id = (i & 0xffff) as u16;
                    m.metadata.recursion_desired = true;
                    m.add_query(Query::query(Name::from_ascii(format!("svc-{i}.bench.svc.cluster.local."))?, RecordType::A));
                    let bytes = m.to_vec()?;
                    let started = Instant::now();
                    sock.send(&bytes)?;
                    match sock.recv(&mut buf) {
                        Ok(len) => match Message::from_vec(&buf[..len]) {
                            Ok(r) if r.answers.len() == 1 => samples.push(started.elapsed()),
                            _ => failed += 1,
                        },
                        Err(_) => failed += 1,
                    }
                }
                Ok((samples.len(), samples, failed))
            })
        })
        .collect();
    let (mut total, mut all, mut failed) = (0, Samples::default(), 0);
    for h in handles {
        let (n, s, f) = h.join().expect("client thread")??;
        total += n;
        all.extend(s);
        failed += f;
    }
    Ok((total as f64 / secs, all, failed))
}

pub fn print_dns(qps: f64, samples: &mut Samples, failed: usize, n: usize, threads: usize) {
    println!(
        "DNS from a pod through the kube-dns cluster IP, {n} Services in the zone, {threads} clients: {qps:.0} queries/s, p50 {} p99 {} ({failed} failed)",
        ms(samples.quantile(0.5)),
        ms(samples.quantile(0.99))
    );
}
