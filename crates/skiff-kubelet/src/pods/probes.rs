//! Probes and lifecycle hooks (upstream's prober and lifecycle handlers): exec through CRI
//! ExecSync, httpGet (2xx/3xx is success, as upstream), tcpSocket, sleep; and the per-container
//! bookkeeping of thresholds (initialDelaySeconds, periodSeconds, timeoutSeconds,
//! successThreshold, failureThreshold).

use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cri::Cri;
use crate::cri::v1 as cri;

/// What to run: the common shape of a Probe and a LifecycleHandler.
pub struct Action<'a> {
    pub exec: Option<&'a ExecAction>,
    pub http_get: Option<&'a HTTPGetAction>,
    pub tcp_socket: Option<&'a TCPSocketAction>,
    pub sleep_seconds: Option<i64>,
}

impl<'a> Action<'a> {
    pub fn of_probe(p: &'a Probe) -> Action<'a> {
        Action { exec: p.exec.as_ref(), http_get: p.http_get.as_ref(), tcp_socket: p.tcp_socket.as_ref(), sleep_seconds: None }
    }

    pub fn of_handler(h: &'a LifecycleHandler) -> Action<'a> {
        Action {
            exec: h.exec.as_ref(),
            http_get: h.http_get.as_ref(),
            tcp_socket: h.tcp_socket.as_ref(),
            sleep_seconds: h.sleep.as_ref().map(|s| s.seconds),
        }
    }
}

/// A named or numbered port of the container.
fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(*n as u16),
        IntOrString::Int(n) => Err(format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .map(|cp| cp.container_port as u16)
                .ok_or_else(|| format!("port {name:?} is not a named port of container {}", c.name))
        }
    }
}

/// Runs the action against a running container; `Err` carries upstream-like failure text.
pub async fn run(cri: &Cri, container_id: &str, pod_ip: &str, c: &Container, a: &Action<'_>, timeout: Duration) -> Result<(), String> {
    if let Some(e) = a.exec {
        let req = cri::ExecSyncRequest {
            container_id: container_id.into(),
            cmd: e.command.clone().unwrap_or_default(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        let mut rt = cri.runtime.clone();
        let call = rt.exec_sync(req);
        let r = tokio::time::timeout(timeout + Duration::from_secs(1), call)
            .await
            .map_err(|_| format!("command timed out after {timeout:?}"))?;
        let r = r.map_err(|e| e.message().to_string())?.into_inner();
        if r.exit_code == 0 {
            return Ok(());
        }
        let out = String::from_utf8_lossy(&r.stdout).trim().to_string() + String::from_utf8_lossy(&r.stderr).trim();
        return Err(if out.is_empty() { format!("command exited with {}", r.exit_code) } else { out });
    }
    if let Some(h) = a.http_get {
        let host = h.host.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| pod_ip.to_string());
        let port = port(c, &h.port)?;
        if h.scheme.as_deref() == Some("HTTPS") {
            return Err("HTTPS probes are not supported by this node yet".into());
        }
        let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        let fut = http_get(&host, port, &path, h.http_headers.as_deref().unwrap_or_default());
        return tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("Get \"http://{host}:{port}{path}\": context deadline exceeded"))?;
    }
    if let Some(t) = a.tcp_socket {
        let host = t.host.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| pod_ip.to_string());
        let port = port(c, &t.port)?;
        let conn = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await;
        return match conn {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(s) = a.sleep_seconds {
        tokio::time::sleep(Duration::from_secs(s.max(0) as u64)).await;
        return Ok(());
    }
    Err("the probe names no action (exec, httpGet, tcpSocket)".into())
}

async fn http_get(host: &str, port: u16, path: &str, headers: &[k8s_openapi::api::core::v1::HTTPHeader]) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    tokio::spawn(conn);
    let mut req =
        hyper::Request::get(path).header("host", format!("{host}:{port}")).header("user-agent", "kube-probe/1.33").header("accept", "*/*");
    for h in headers {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
    let code = resp.status().as_u16();
    if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// One probe's history for one container instance.
#[derive(Clone, Debug)]
pub struct State {
    pub next: Instant,
    pub successes: i32,
    pub failures: i32,
    /// The verdict after the thresholds (None until the first verdict).
    pub ok: Option<bool>,
}

impl State {
    pub fn new(p: &Probe, started: Instant) -> State {
        State {
            next: started + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            successes: 0,
            failures: 0,
            ok: None,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records one result; returns the verdict when it changed.
    pub fn record(&mut self, p: &Probe, ok: bool, now: Instant) -> Option<bool> {
        self.next = now + Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if ok && self.successes >= p.success_threshold.unwrap_or(1).max(1) {
            Some(true)
        } else if !ok && self.failures >= p.failure_threshold.unwrap_or(3).max(1) {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.ok != Some(v) => {
                self.ok = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}

pub fn timeout_of(p: &Probe) -> Duration {
    Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_verdicts() {
        let p = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            period_seconds: Some(1),
            initial_delay_seconds: Some(5),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut s = State::new(&p, t0);
        assert!(!s.due(t0) && s.due(t0 + Duration::from_secs(5)));
        assert_eq!(s.record(&p, true, t0), Some(true));
        assert_eq!(s.record(&p, false, t0), None, "one failure is below the threshold");
        assert_eq!(s.record(&p, false, t0), Some(false));
        assert_eq!(s.record(&p, false, t0), None, "no change, no new verdict");
        assert_eq!(s.record(&p, true, t0), Some(true));
    }

    #[test]
    fn ports_by_number_or_name() {
        let c: Container =
            serde_json::from_value(serde_json::json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]})).unwrap();
        assert_eq!(port(&c, &IntOrString::String("http".into())).unwrap(), 8080);
        assert_eq!(port(&c, &IntOrString::Int(81)).unwrap(), 81);
        assert!(port(&c, &IntOrString::String("nope".into())).is_err());
        assert!(port(&c, &IntOrString::Int(0)).is_err());
    }
}
