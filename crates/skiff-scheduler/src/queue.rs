//! The scheduling queue, upstream's three sub-queues: active (priority, then arrival), backoff
//! (pods that failed, waiting 1 s doubling to 10 s), and unschedulable (pods no node fits, parked
//! until a cluster event may have changed that, or for at most 5 minutes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::node_info::PodInfo;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    /// Popped and being scheduled; `moved` records a cluster event seen meanwhile, so a failure
    /// retries instead of parking (upstream's moveRequestCycle).
    InFlight {
        moved: bool,
    },
}

struct Item {
    pod: Arc<PodInfo>,
    attempts: u32,
    seq: u64,
    at: Where,
}

#[derive(Default)]
struct Inner {
    items: HashMap<String, Item>,
    /// (priority, earlier first, seq, key); stale entries are skipped on pop.
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BinaryHeap<(Reverse<Instant>, u64, String)>,
    next_seq: u64,
    closed: bool,
    /// Keys parked in Unschedulable and keys in flight: cluster events touch only these, so a
    /// move costs O(parked), not O(queue).
    parked: HashSet<String>,
    flying: HashSet<String>,
    /// When parked pods were last checked for exceeding MAX_UNSCHEDULABLE (a full scan, so it runs
    /// periodically, as upstream's flush loop, not on every pop).
    last_flush: Option<Instant>,
}

const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// How an attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Scheduled,
    Unschedulable,
    Error,
}

#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    notify: Notify,
}

fn backoff_for(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(10);
    (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

impl Inner {
    /// Moves `key` to `at`, keeping the parked/flying indexes in step.
    fn set_at(&mut self, key: &str, at: Where) {
        let Some(item) = self.items.get_mut(key) else { return };
        match item.at {
            Where::Unschedulable(_) => {
                self.parked.remove(key);
            }
            Where::InFlight { .. } => {
                self.flying.remove(key);
            }
            _ => {}
        }
        item.at = at;
        match at {
            Where::Unschedulable(_) => {
                self.parked.insert(key.to_string());
            }
            Where::InFlight { .. } => {
                self.flying.insert(key.to_string());
            }
            _ => {}
        }
    }

    fn remove(&mut self, key: &str) {
        self.items.remove(key);
        self.parked.remove(key);
        self.flying.remove(key);
    }

    fn push_active(&mut self, key: &str) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let item = self.items.get_mut(key).expect("caller inserted");
        item.seq = seq;
        let priority = item.pod.priority;
        self.set_at(key, Where::Active);
        self.active.push((priority, Reverse(seq), key.to_string()));
    }

    fn push_backoff(&mut self, key: &str, until: Instant) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.items.get_mut(key).expect("caller inserted").seq = seq;
        self.set_at(key, Where::Backoff(until));
        self.backoff.push((Reverse(until), seq, key.to_string()));
    }

    /// Moves pods whose backoff expired into active.
    fn flush_backoff(&mut self, now: Instant) {
        while let Some((Reverse(until), seq, key)) = self.backoff.peek().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop();
            if self.items.get(&key).is_some_and(|i| i.seq == seq && matches!(i.at, Where::Backoff(_))) {
                self.push_active(&key);
            }
        }
    }

    /// Unschedulable pods go back to backoff (if still backing off) or active.
    fn requeue(&mut self, key: &str, now: Instant) {
        let Some(item) = self.items.get(key) else { return };
        let backoff_end = match item.at {
            Where::Unschedulable(since) => since + backoff_for(item.attempts),
            _ => now,
        };
        if backoff_end > now { self.push_backoff(key, backoff_end) } else { self.push_active(key) }
    }
}

impl Queue {
    pub fn new() -> Arc<Queue> {
        Arc::new(Queue::default())
    }

    /// A new or changed pending pod. A change to a parked pod makes it worth another try.
    pub fn add_or_update(&self, pod: Arc<PodInfo>) {
        let mut g = self.inner.lock().expect("queue lock");
        let key = pod.key.clone();
        match g.items.get_mut(&key) {
            None => {
                g.items.insert(key.clone(), Item { pod, attempts: 0, seq: 0, at: Where::Active });
                g.push_active(&key);
            }
            Some(item) => {
                item.pod = pod;
                match item.at {
                    Where::Unschedulable(_) => g.requeue(&key, Instant::now()),
                    Where::InFlight { .. } => g.set_at(&key, Where::InFlight { moved: true }),
                    Where::Active => g.push_active(&key), // priority may have changed
                    Where::Backoff(_) => {}
                }
            }
        }
        drop(g);
        self.notify.notify_one();
    }

    /// The pod was bound elsewhere or deleted.
    pub fn delete(&self, key: &str) {
        self.inner.lock().expect("queue lock").remove(key);
    }

    /// A cluster event (node added or changed, pod deleted) that may make parked pods fit.
    pub fn move_all_unschedulable(&self) {
        let mut g = self.inner.lock().expect("queue lock");
        let now = Instant::now();
        let flying: Vec<String> = g.flying.iter().cloned().collect();
        for k in flying {
            g.set_at(&k, Where::InFlight { moved: true });
        }
        let keys: Vec<String> = g.parked.iter().cloned().collect();
        for k in &keys {
            g.requeue(k, now);
        }
        drop(g);
        if !keys.is_empty() {
            self.notify.notify_one();
        }
    }

    /// Reports how the attempt for `key` ended.
    pub fn done(&self, key: &str, outcome: Outcome) {
        let mut g = self.inner.lock().expect("queue lock");
        let now = Instant::now();
        let Some(item) = g.items.get(key) else { return };
        let moved = matches!(item.at, Where::InFlight { moved: true });
        let attempts = item.attempts;
        match outcome {
            Outcome::Scheduled => g.remove(key),
            Outcome::Unschedulable if !moved => g.set_at(key, Where::Unschedulable(now)),
            Outcome::Unschedulable | Outcome::Error => g.push_backoff(key, now + backoff_for(attempts)),
        }
    }

    /// Waits for the next pod to schedule (highest priority, then oldest). `None` once closed.
    pub async fn pop(&self) -> Option<(Arc<PodInfo>, u32)> {
        loop {
            let wait = {
                let mut g = self.inner.lock().expect("queue lock");
                if g.closed {
                    return None;
                }
                let now = Instant::now();
                g.flush_backoff(now);
                // Parked too long: retry anyway (upstream's podMaxInUnschedulablePodsDuration).
                if g.last_flush.is_none_or(|t| now.duration_since(t) >= FLUSH_EVERY) {
                    g.last_flush = Some(now);
                    let stale: Vec<String> = g
                        .parked
                        .iter()
                        .filter(|k| {
                            g.items.get(*k).is_some_and(
                                |i| matches!(i.at, Where::Unschedulable(since) if now.duration_since(since) > MAX_UNSCHEDULABLE),
                            )
                        })
                        .cloned()
                        .collect();
                    for k in stale {
                        g.push_active(&k);
                    }
                }
                while let Some((_, Reverse(seq), key)) = g.active.pop() {
                    if let Some(item) = g.items.get_mut(&key)
                        && item.seq == seq
                        && item.at == Where::Active
                    {
                        item.attempts += 1;
                        let out = (item.pod.clone(), item.attempts);
                        g.set_at(&key, Where::InFlight { moved: false });
                        return Some(out);
                    }
                }
                let next_backoff = g.backoff.peek().map(|(Reverse(t), _, _)| t.saturating_duration_since(now));
                next_backoff.unwrap_or(Duration::from_secs(30)).min(Duration::from_secs(30))
            };
            let _ = tokio::time::timeout(wait.max(Duration::from_millis(1)), self.notify.notified()).await;
        }
    }

    pub fn close(&self) {
        self.inner.lock().expect("queue lock").closed = true;
        self.notify.notify_waiters();
    }

    /// (active, backoff, unschedulable, in flight) counts, for metrics and tests.
    pub fn lens(&self) -> (usize, usize, usize, usize) {
        let g = self.inner.lock().expect("queue lock");
        let mut c = (0, 0, 0, 0);
        for i in g.items.values() {
            match i.at {
                Where::Active => c.0 += 1,
                Where::Backoff(_) => c.1 += 1,
                Where::Unschedulable(_) => c.2 += 1,
                Where::InFlight { .. } => c.3 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::pod;
    use serde_json::json;

    fn p(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(pod(name, json!({"priority": priority})))
    }

    #[tokio::test]
    async fn pops_by_priority_then_age() {
        let q = Queue::new();
        q.add_or_update(p("low", 0));
        q.add_or_update(p("high", 100));
        q.add_or_update(p("low2", 0));
        let order: Vec<String> = [q.pop().await, q.pop().await, q.pop().await].into_iter().map(|x| x.unwrap().0.key.clone()).collect();
        assert_eq!(order, ["default/high", "default/low", "default/low2"]);
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_an_event_and_honour_backoff() {
        let q = Queue::new();
        q.add_or_update(p("a", 0));
        let (a, attempts) = q.pop().await.unwrap();
        assert_eq!(attempts, 1);
        q.done(&a.key, Outcome::Unschedulable);
        assert_eq!(q.lens(), (0, 0, 1, 0));
        q.move_all_unschedulable();
        // Still within its 1 s backoff: goes to backoff, then active once it expires.
        assert_eq!(q.lens(), (0, 1, 0, 0));
        let (again, attempts) = tokio::time::timeout(Duration::from_secs(3), q.pop()).await.unwrap().unwrap();
        assert_eq!((again.key.as_str(), attempts), ("default/a", 2));
    }

    #[tokio::test]
    async fn an_event_during_the_attempt_means_retry_not_park() {
        let q = Queue::new();
        q.add_or_update(p("a", 0));
        let (a, _) = q.pop().await.unwrap();
        q.move_all_unschedulable();
        q.done(&a.key, Outcome::Unschedulable);
        assert_eq!(q.lens(), (0, 1, 0, 0));
    }

    #[tokio::test]
    async fn deleted_and_scheduled_pods_leave() {
        let q = Queue::new();
        q.add_or_update(p("a", 0));
        q.add_or_update(p("b", 0));
        q.delete("default/a");
        let (b, _) = q.pop().await.unwrap();
        assert_eq!(b.key, "default/b");
        q.done(&b.key, Outcome::Scheduled);
        assert_eq!(q.lens(), (0, 0, 0, 0));
    }
}
