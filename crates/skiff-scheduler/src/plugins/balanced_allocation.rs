//! NodeResourcesBalancedAllocation: prefers nodes where cpu and memory would be used in equal
//! proportion after placing the pod (score = (1 - standard deviation of the fractions) × 100).

use super::node_resources_fit::alloc_and_requested;
use crate::framework::{CycleState, MAX_NODE_SCORE, Plugin};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeResourcesBalancedAllocation";

pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let fractions: Vec<f64> = ["cpu", "memory"]
            .iter()
            .filter_map(|r| {
                let (alloc, req) = alloc_and_requested(r, node, pod, false);
                (alloc > 0).then(|| (req as f64 / alloc as f64).min(1.0))
            })
            .collect();
        if fractions.len() < 2 {
            return MAX_NODE_SCORE;
        }
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        let var = fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / fractions.len() as f64;
        ((1.0 - var.sqrt()) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testutil::*;
    use serde_json::json;

    #[test]
    fn balanced_beats_lopsided() {
        let n = node("a", json!({}), json!({}), json!({"cpu": "1", "memory": "1Gi", "pods": "10"}));
        let nodes = [n];
        assert_eq!(run_score(&BalancedAllocation, &pod_requesting("even", "500m", "512Mi"), &nodes), vec![100]);
        assert_eq!(run_score(&BalancedAllocation, &pod_requesting("odd", "1", "0"), &nodes), vec![50]);
    }
}
