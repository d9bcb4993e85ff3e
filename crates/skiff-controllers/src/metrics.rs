//! Per-controller metrics (prometheus-client): reconciles, errors, reconcile duration, and
//! reconciles in flight. kube-runtime's scheduler does not expose its queue, so "in flight" (started,
//! not finished) is the depth we can measure honestly; requeues show up as reconciles.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    controller: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    in_flight: Family<Labels, Gauge>,
    duration: Family<Labels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("skiff_controller");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let duration = Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that returned an error", errors.clone());
        registry.register("reconciles_in_flight", "Reconciles started and not yet finished", in_flight.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", duration.clone());
        Metrics { registry: Mutex::new(registry), reconciles, errors, in_flight, duration }
    }
}

impl Metrics {
    pub fn controller(&self, name: &str) -> Arc<ControllerMetrics> {
        let l = Labels { controller: name.to_string() };
        Arc::new(ControllerMetrics {
            reconciles: self.reconciles.get_or_create(&l).clone(),
            errors: self.errors.get_or_create(&l).clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            duration: self.duration.get_or_create(&l).clone(),
        })
    }

    /// The Prometheus text exposition of every controller's metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap());
        out
    }
}

pub struct ControllerMetrics {
    reconciles: Counter,
    errors: Counter,
    in_flight: Gauge,
    duration: Histogram,
}

impl ControllerMetrics {
    /// Counts a reconcile as in flight until the returned guard drops.
    pub fn reconcile_timer(self: &Arc<Self>) -> ReconcileTimer {
        self.in_flight.inc();
        ReconcileTimer { m: self.clone(), start: Instant::now() }
    }

    pub fn error(&self) {
        self.errors.inc();
    }
}

pub struct ReconcileTimer {
    m: Arc<ControllerMetrics>,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.m.in_flight.dec();
        self.m.reconciles.inc();
        self.m.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_and_errors_per_controller() {
        let m = Metrics::default();
        let rs = m.controller("replicaset");
        {
            let _t = rs.reconcile_timer();
            assert!(m.encode().contains("skiff_controller_reconciles_in_flight{controller=\"replicaset\"} 1"));
        }
        rs.error();
        let text = m.encode();
        assert!(text.contains("skiff_controller_reconciles_total{controller=\"replicaset\"} 1"), "{text}");
        assert!(text.contains("skiff_controller_reconcile_errors_total{controller=\"replicaset\"} 1"), "{text}");
        assert!(text.contains("skiff_controller_reconciles_in_flight{controller=\"replicaset\"} 0"), "{text}");
    }
}
