//! One loop for a periodic per-node job over all nodes: node i runs at offset i·period/n of every
//! round, so 5,000 leases renewed every 10 s are 500 small writes a second instead of a burst of
//! 5,000, and no node needs a task or timer of its own.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

/// When the `k`th call of the endless schedule (node `k % n`) is due.
fn due(start: Instant, n: usize, period: Duration, k: u64) -> Instant {
    let offset = Duration::from_nanos((u128::from(k) * period.as_nanos() / n as u128).min(u64::MAX as u128) as u64);
    start + offset
}

/// Calls `f(i)` for every node, once per `period` each, forever, with at most `concurrency` calls
/// (including the ones waiting for their slot) in flight. Slots are fixed to `start`, so a stall
/// (slow API server) is caught up at once rather than shifting every later round.
pub async fn round_robin<F, Fut>(n: usize, period: Duration, concurrency: usize, first_round_at: Instant, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    if n == 0 {
        return std::future::pending().await;
    }
    futures::stream::iter(0u64..)
        .map(|k| {
            let at = due(first_round_at, n, period, k);
            let call = f((k % n as u64) as usize);
            async move {
                tokio::time::sleep_until(at).await;
                call.await
            }
        })
        .buffer_unordered(concurrency.max(1))
        .for_each(|()| async {})
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn slots_spread_over_the_period() {
        let start = Instant::now();
        let p = Duration::from_secs(10);
        assert_eq!(due(start, 4, p, 0), start);
        assert_eq!(due(start, 4, p, 1), start + Duration::from_millis(2500));
        assert_eq!(due(start, 4, p, 4), start + p);
        assert_eq!(due(start, 4, p, 9), start + Duration::from_millis(22_500));
    }

    #[tokio::test]
    async fn every_node_once_per_period_in_order() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let c = calls.clone();
        let slot = Duration::from_millis(100);
        let run = round_robin(3, slot * 3, 2, start, move |i| {
            let c = c.clone();
            async move { c.lock().unwrap().push((i, start.elapsed())) }
        });
        let _ = tokio::time::timeout(slot * 7 - slot / 2, run).await;
        let calls = calls.lock().unwrap();
        // Real time on a busy machine: calls may come late, never early, and always in turn.
        assert!((4..=7).contains(&calls.len()), "{calls:?}");
        for (k, (i, at)) in calls.iter().enumerate() {
            assert_eq!(*i, k % 3, "{calls:?}");
            assert!(*at >= slot * k as u32, "{calls:?}");
        }
    }
}
