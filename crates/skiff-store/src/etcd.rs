//! The etcd backend: the [`Store`] trait over a real etcd cluster (etcd-client), for HA, where
//! several API servers share one datastore and etcd's Raft does the replication. The trait is
//! etcd's v3 API already, so this is mostly a translation; the parts that are not:
//!
//! - An optional key prefix (a namespace inside a shared etcd; the conformance tests use one per
//!   check). With none, keys are the API server's own `/registry/...`, as upstream's.
//! - etcd does not report its compact revision outside a failed request, so, as upstream's API
//!   server does with `compact_rev_key`, the revision of the last compaction made through here is
//!   kept in a key of its own.
//! - The trait's validation (empty keys, a key written twice in one txn) is checked here or
//!   mapped from etcd's errors, so both backends refuse the same requests the same way.

use bytes::Bytes;
use etcd_client as ec;
use futures::StreamExt;

use crate::*;

/// Where the revision of the last compaction is kept (outside any prefix, like upstream's).
const COMPACT_REV_KEY: &str = "compact_rev_key";

#[derive(Clone)]
pub struct EtcdStore {
    /// One client per member: etcd-client's balanced channel keeps sending a share of requests
    /// to a dead member, so failover is done here, on errors that prove a request was not
    /// carried out.
    clients: std::sync::Arc<Vec<ec::Client>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    prefix: String,
}

/// How long a request keeps trying other members (or waits out an election) before failing.
const FAILOVER_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Errors after which the request certainly did not take effect, so another try is safe even
/// for a write: the member could not be reached, or had no leader to propose to.
fn not_carried_out(e: &ec::Error) -> bool {
    match e {
        ec::Error::GRpcStatus(st) => {
            let m = st.message();
            st.code() == tonic::Code::Unavailable && (m.contains("connect") || m.contains("no leader"))
                || m.contains("etcdserver: no leader")
        }
        ec::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Connection settings: endpoints (`http://host:2379`, or `https://` with `ca_file`).
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// CA bundle (PEM) that etcd's serving certificates are checked against.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for etcd's `--client-cert-auth`.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Namespace for every key (empty: none).
    pub prefix: String,
    pub connect_timeout: Option<std::time::Duration>,
}

fn backend(e: ec::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EtcdStore {
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore> {
        // Without a leader a member refuses at once (instead of holding the request until its
        // own timeout), so the request can wait out the election and go again.
        let mut co = ec::ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout.unwrap_or(std::time::Duration::from_secs(5)))
            .with_keep_alive(std::time::Duration::from_secs(10), std::time::Duration::from_secs(5))
            .with_require_leader(true);
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| StoreError::Backend(format!("reading {}: {e}", p.display())));
        if let Some(ca) = &opts.ca_file {
            let mut tls = ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(read(ca)?));
            match (&opts.cert_file, &opts.key_file) {
                (Some(cert), Some(key)) => tls = tls.identity(ec::Identity::from_pem(read(cert)?, read(key)?)),
                (None, None) => {}
                _ => return Err(StoreError::InvalidRequest("an etcd client certificate needs both its cert and key file".into())),
            }
            co = co.with_tls(tls);
        }
        let mut clients = Vec::new();
        for ep in &opts.endpoints {
            clients.push(ec::Client::connect([ep], Some(co.clone())).await.map_err(backend)?);
        }
        if clients.is_empty() {
            return Err(StoreError::InvalidRequest("no etcd endpoints".into()));
        }
        Ok(EtcdStore { clients: std::sync::Arc::new(clients), current: Default::default(), prefix: opts.prefix })
    }

    /// Runs `f` against the current member, moving to the next one (and, once all were tried,
    /// pausing briefly) while the error proves nothing happened, for up to `FAILOVER_BUDGET`.
    async fn call<T, F, Fut>(&self, f: F) -> std::result::Result<T, ec::Error>
    where
        F: Fn(ec::Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, ec::Error>>,
    {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + FAILOVER_BUDGET;
        let mut tried = 0;
        loop {
            let i = self.current.load(Ordering::Relaxed) % self.clients.len();
            match f(self.clients[i].clone()).await {
                Err(e) if not_carried_out(&e) && tokio::time::Instant::now() < deadline => {
                    let _ = self.current.compare_exchange(i, (i + 1) % self.clients.len(), Ordering::Relaxed, Ordering::Relaxed);
                    tried += 1;
                    if tried % self.clients.len() == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
                other => return other,
            }
        }
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// A range end in the namespace: etcd's `\0` ("every key from `key` on") stops at the
    /// prefix's end.
    fn full_end(&self, end: &str) -> Vec<u8> {
        match (end, self.prefix.is_empty()) {
            ("\0", false) => prefix_end(&self.prefix).into_bytes(),
            _ => self.full(end),
        }
    }

    fn kv(&self, kv: &ec::KeyValue) -> KeyValue {
        let key = String::from_utf8_lossy(kv.key());
        KeyValue {
            key: key.strip_prefix(self.prefix.as_str()).unwrap_or(&key).to_string(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
        }
    }

    /// etcd's refusals as the trait's errors.
    async fn error(&self, e: ec::Error) -> StoreError {
        let msg = e.to_string();
        if msg.contains("required revision has been compacted") {
            StoreError::Compacted { compact_revision: self.compact_revision().await.unwrap_or(0) }
        } else if msg.contains("required revision is a future revision") {
            StoreError::FutureRevision
        } else if msg.contains("duplicate key given in txn request") || msg.contains("key is not provided") {
            StoreError::InvalidRequest(msg)
        } else {
            StoreError::Backend(msg)
        }
    }

    fn get_options(&self, r: &RangeRequest) -> ec::GetOptions {
        let mut o = ec::GetOptions::new().with_revision(r.revision).with_limit(r.limit);
        if let Some(end) = &r.range_end {
            o = o.with_range(self.full_end(end));
        }
        if r.count_only {
            o = o.with_count_only();
        }
        o
    }

    fn range_response(&self, g: &ec::GetResponse) -> RangeResponse {
        RangeResponse {
            kvs: g.kvs().iter().map(|kv| self.kv(kv)).collect(),
            more: g.more(),
            count: g.count(),
            revision: g.header().map_or(0, |h| h.revision()),
        }
    }

    fn op(&self, op: &Op) -> Result<ec::TxnOp> {
        Ok(match op {
            Op::Put { key, value } => {
                non_empty(key)?;
                ec::TxnOp::put(self.full(key), value.to_vec(), Some(ec::PutOptions::new().with_prev_key()))
            }
            Op::Delete { key, range_end } => {
                non_empty(key)?;
                let mut o = ec::DeleteOptions::new().with_prev_key();
                if let Some(end) = range_end {
                    o = o.with_range(self.full_end(end));
                }
                ec::TxnOp::delete(self.full(key), Some(o))
            }
            Op::Range(r) => {
                non_empty(&r.key)?;
                ec::TxnOp::get(self.full(&r.key), Some(self.get_options(r)))
            }
        })
    }

    fn compare(&self, c: &Compare) -> Result<ec::Compare> {
        non_empty(&c.key)?;
        let op = match c.result {
            CompareResult::Equal => ec::CompareOp::Equal,
            CompareResult::NotEqual => ec::CompareOp::NotEqual,
            CompareResult::Less => ec::CompareOp::Less,
            CompareResult::Greater => ec::CompareOp::Greater,
        };
        let key = self.full(&c.key);
        Ok(match &c.target {
            CompareTarget::ModRevision(r) => ec::Compare::mod_revision(key, op, *r),
            CompareTarget::CreateRevision(r) => ec::Compare::create_revision(key, op, *r),
            CompareTarget::Version(v) => ec::Compare::version(key, op, *v),
            CompareTarget::Value(v) => ec::Compare::value(key, op, v.to_vec()),
        })
    }
}

fn non_empty(key: &str) -> Result<()> {
    if key.is_empty() { Err(StoreError::InvalidRequest("key is not provided".into())) } else { Ok(()) }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        non_empty(&req.key)?;
        let (key, o) = (self.full(&req.key), self.get_options(&req));
        match self
            .call(|c| {
                let (key, o) = (key.clone(), o.clone());
                async move { c.kv_client().get(key, Some(o)).await }
            })
            .await
        {
            Ok(g) => Ok(self.range_response(&g)),
            Err(e) => Err(self.error(e).await),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let compare = txn.compare.iter().map(|c| self.compare(c)).collect::<Result<Vec<_>>>()?;
        let success = txn.success.iter().map(|o| self.op(o)).collect::<Result<Vec<_>>>()?;
        let failure = txn.failure.iter().map(|o| self.op(o)).collect::<Result<Vec<_>>>()?;
        // etcd 3.4 applies a txn's writes and then fails on a read at a future revision; the
        // trait wants nothing written, so such reads are checked first.
        let newest =
            txn.success.iter().chain(&txn.failure).filter_map(|o| if let Op::Range(r) = o { Some(r.revision) } else { None }).max();
        if newest.is_some_and(|r| r > 0) && newest > Some(self.current_revision().await?) {
            return Err(StoreError::FutureRevision);
        }
        let t = ec::Txn::new().when(compare).and_then(success).or_else(failure);
        let resp = match self
            .call(|c| {
                let t = t.clone();
                async move { c.kv_client().txn(t).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.error(e).await),
        };
        let responses = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                ec::TxnOpResponse::Put(p) => OpResponse::Put { prev_kv: p.prev_key().map(|kv| self.kv(kv)) },
                ec::TxnOpResponse::Delete(d) => {
                    OpResponse::Delete { deleted: d.deleted(), prev_kvs: d.prev_kvs().iter().map(|kv| self.kv(kv)).collect() }
                }
                ec::TxnOpResponse::Get(g) => OpResponse::Range(self.range_response(&g)),
                ec::TxnOpResponse::Txn(_) => OpResponse::Range(RangeResponse::default()),
            })
            .collect();
        Ok(TxnResponse { succeeded: resp.succeeded(), revision: resp.header().map_or(0, |h| h.revision()), responses })
    }

    async fn watch(&self, key: String, range_end: Option<String>, start_revision: Revision) -> Result<WatchStream> {
        non_empty(&key)?;
        if start_revision > 0 {
            let compacted = self.compact_revision().await?;
            if start_revision <= compacted {
                return Err(StoreError::Compacted { compact_revision: compacted });
            }
        }
        let mut o = ec::WatchOptions::new().with_prev_key().with_start_revision(start_revision);
        if let Some(end) = &range_end {
            o = o.with_range(self.full_end(end));
        }
        let k = self.full(&key);
        let mut stream = self
            .call(|c| {
                let (k, o) = (k.clone(), o.clone());
                async move { c.watch_client().watch(k, Some(o)).await }
            })
            .await
            .map_err(backend)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event>>(256);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        // The member went away, not this store: the caller re-watches.
                        let _ = tx.send(Err(StoreError::Backend("etcd watch stream ended".into()))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(backend(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = tx.send(Err(StoreError::Compacted { compact_revision: resp.compact_revision() })).await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx.send(Err(StoreError::Backend(format!("watch canceled: {}", resp.cancel_reason())))).await;
                    return;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let kind = match ev.event_type() {
                        ec::EventType::Put => EventKind::Put,
                        ec::EventType::Delete => EventKind::Delete,
                    };
                    let event = Event { kind, kv: this.kv(kv), prev_kv: ev.prev_kv().map(|p| this.kv(p)) };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let g = self
            .call(|c| async move { c.kv_client().get(COMPACT_REV_KEY, Some(ec::GetOptions::new().with_count_only())).await })
            .await
            .map_err(backend)?;
        Ok(g.header().map_or(0, |h| h.revision()))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        if let Err(e) =
            self.call(|c| async move { c.kv_client().compact(revision, Some(ec::CompactionOptions::new().with_physical())).await }).await
        {
            return Err(self.error(e).await);
        }
        // Recorded only if newer, so two API servers compacting cannot move it back.
        let newer = ec::Compare::value(COMPACT_REV_KEY, ec::CompareOp::Less, format!("{revision:020}"));
        let missing = ec::Compare::version(COMPACT_REV_KEY, ec::CompareOp::Equal, 0);
        for guard in [missing, newer] {
            let t = ec::Txn::new().when(vec![guard]).and_then(vec![ec::TxnOp::put(COMPACT_REV_KEY, format!("{revision:020}"), None)]);
            let r = self
                .call(|c| {
                    let t = t.clone();
                    async move { c.kv_client().txn(t).await }
                })
                .await;
            if r.map_err(backend)?.succeeded() {
                break;
            }
        }
        Ok(())
    }

    async fn compact_revision(&self) -> Result<Revision> {
        let g = self.call(|c| async move { c.kv_client().get(COMPACT_REV_KEY, None).await }).await.map_err(backend)?;
        Ok(g.kvs().first().and_then(|kv| std::str::from_utf8(kv.value()).ok()?.trim().parse().ok()).unwrap_or(0))
    }
}

/// Compacts etcd's history every `interval` to the revision current one interval earlier, so
/// watchers can resume across that much history (upstream's API server compactor). Several API
/// servers may each run it: compacting to an already compacted revision is a no-op here.
pub async fn compact_periodically(store: std::sync::Arc<EtcdStore>, interval: std::time::Duration) {
    let mut last: Option<Revision> = None;
    loop {
        tokio::time::sleep(interval).await;
        let current = match store.current_revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "etcd compaction: reading the revision");
                continue;
            }
        };
        if let Some(rev) = last {
            match store.compact(rev).await {
                Ok(()) => tracing::debug!(revision = rev, "compacted etcd"),
                Err(StoreError::Compacted { .. }) => {}
                Err(e) => tracing::warn!(error = %e, revision = rev, "etcd compaction"),
            }
        }
        last = Some(current);
    }
}

/// Local etcd clusters for tests: Debian's `etcd` binary on loopback ports with data under a
/// directory the caller owns, members stopped by PID on drop.
pub mod testing {
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    /// PEM files for a cluster serving TLS and requiring client certificates.
    pub struct Tls {
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    pub struct LocalCluster {
        pub members: Vec<Option<Child>>,
        /// Client URL of each member.
        pub clients: Vec<String>,
        args: Vec<Vec<String>>,
        dir: PathBuf,
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("bound").port()
    }

    impl LocalCluster {
        /// Starts `n` members; they are healthy a couple of seconds later (REFERENCE.md).
        pub fn start(dir: &Path, n: usize) -> LocalCluster {
            LocalCluster::start_with(dir, n, None)
        }

        /// Like `start`; with `tls`, clients must use https and present a certificate of that
        /// CA (the members' serving certificate is `tls.cert`, which must name 127.0.0.1).
        pub fn start_with(dir: &Path, n: usize, tls: Option<&Tls>) -> LocalCluster {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial: Vec<String> = ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
            let args = ports
                .iter()
                .enumerate()
                .map(|(i, (client, peer))| {
                    let data = dir.join(format!("etcd-m{i}")).display().to_string();
                    let (c, p) = (format!("{scheme}://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
                    let flags = [
                        ("--name", format!("m{i}")),
                        ("--data-dir", data),
                        ("--listen-client-urls", c.clone()),
                        ("--advertise-client-urls", c),
                        ("--listen-peer-urls", p.clone()),
                        ("--initial-advertise-peer-urls", p),
                        ("--initial-cluster", initial.join(",")),
                        ("--initial-cluster-state", "new".into()),
                        ("--initial-cluster-token", "skiff-test".into()),
                    ];
                    let mut args: Vec<String> = flags.into_iter().flat_map(|(k, v)| [k.to_string(), v]).collect();
                    if let Some(t) = tls {
                        for (k, v) in [("--cert-file", &t.cert), ("--key-file", &t.key), ("--trusted-ca-file", &t.ca)] {
                            args.extend([k.to_string(), v.display().to_string()]);
                        }
                        args.push("--client-cert-auth".into());
                    }
                    args
                })
                .collect();
            let mut c = LocalCluster {
                members: (0..n).map(|_| None).collect(),
                clients: ports.iter().map(|(c, _)| format!("{scheme}://127.0.0.1:{c}")).collect(),
                args,
                dir: dir.to_path_buf(),
            };
            for i in 0..n {
                c.restart(i);
            }
            c
        }

        /// (Re)starts member `i` on its data dir (a restarted member rejoins with its data).
        pub fn restart(&mut self, i: usize) {
            self.kill(i);
            let log =
                std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("etcd-m{i}.log"))).expect("etcd log file");
            let child = Command::new("etcd")
                .args(&self.args[i])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (scripts/install-deps.sh installs etcd-server)");
            self.members[i] = Some(child);
        }

        /// SIGKILLs member `i`.
        pub fn kill(&mut self, i: usize) {
            if let Some(mut m) = self.members[i].take() {
                let _ = m.kill();
                let _ = m.wait();
            }
        }
    }

    impl Drop for LocalCluster {
        fn drop(&mut self) {
            for i in 0..self.members.len() {
                self.kill(i);
            }
        }
    }
}
