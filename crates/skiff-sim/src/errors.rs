//! Failures of thousands of small writes: which are worth retrying, and logging them without
//! printing one line per node when the API server is away.

use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Errors that a later attempt can fix: throttling, server trouble, lost connections, and the
/// API server's own "try again" conflict of its guaranteed-update loop.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500 || (s.code == 409 && s.reason == "Conflict"),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Runs `f` up to five times while it fails transiently (100 ms, doubling, between attempts).
pub async fn with_retries<T, F, Fut>(mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..4 {
        match f().await {
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            r => return r,
        }
    }
    f().await
}

/// A warning printed at most once per `INTERVAL`, with the number of failures it stands for.
pub struct Throttle {
    what: &'static str,
    last: Mutex<Option<Instant>>,
    failures: AtomicU64,
}

impl Throttle {
    const INTERVAL: Duration = Duration::from_secs(10);

    pub const fn new(what: &'static str) -> Self {
        Throttle { what, last: Mutex::new(None), failures: AtomicU64::new(0) }
    }

    pub fn warn(&self, subject: &str, err: &dyn Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let failures = self.failures.swap(0, Ordering::Relaxed);
        tracing::warn!(failures, "{} failed (e.g. {subject}): {err}", self.what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status::failure("x", reason).with_code(code)))
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient(&api(503, "ServiceUnavailable")));
        assert!(is_transient(&api(429, "TooManyRequests")));
        assert!(is_transient(&api(409, "Conflict")));
        assert!(!is_transient(&api(409, "AlreadyExists")));
        assert!(!is_transient(&api(422, "Invalid")));
        assert!(!is_transient(&api(404, "NotFound")));
        assert!(is_not_found(&api(404, "NotFound")));
    }
}
