//! A minimal HTTPS client for load generation: one TLS connection per simulated client, HTTP/1.1
//! keep-alive, the admin client certificate. (kube-rs would pool connections behind our back;
//! the benchmark needs to control exactly how many connections carry the load.)

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    addr: SocketAddr,
}

impl Connector {
    /// Uses the admin credentials a server wrote under `<data-dir>/tls`.
    pub fn from_data_dir(tls_dir: &Path, addr: SocketAddr) -> anyhow::Result<Connector> {
        let read = |n: &str| std::fs::read(tls_dir.join(n)).with_context(|| format!("reading {n}"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&read("ca.crt")?)?)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("admin.crt")?).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&read("admin.key")?)?;
        let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(certs, key)?;
        Ok(Connector { tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)), addr })
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self.tls.connect(ServerName::try_from("127.0.0.1")?, tcp).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }
}

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Sends one request and reads the whole body.
    pub async fn call(&mut self, method: &str, path: &str, body: Option<Bytes>) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Starts a streaming request (a watch) and returns the response body to read incrementally.
    pub async fn stream(&mut self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        self.sender.ready().await?;
        let req = hyper::Request::builder().method("GET").uri(path).header("host", "127.0.0.1").body(Full::new(Bytes::new()))?;
        let resp = self.sender.send_request(req).await?;
        anyhow::ensure!(resp.status().is_success(), "watch failed: {}", resp.status());
        Ok(resp.into_body())
    }
}
