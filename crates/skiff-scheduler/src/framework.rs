//! The plugin framework: upstream's extension points that matter for placement (PreFilter, Filter,
//! PreScore, Score, NormalizeScore), a per-cycle state map, and statuses that carry upstream's
//! reason strings so the FailedScheduling message reads the same as kube-scheduler's.

use std::any::Any;

use crate::node_info::{NodeInfo, PodInfo};

pub const MAX_NODE_SCORE: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Success,
    /// Not fit now; preemption might help.
    Unschedulable,
    /// Not fit, and removing pods would not change that.
    UnschedulableAndUnresolvable,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reasons: Vec<String>,
    pub plugin: &'static str,
}

impl Status {
    pub fn success() -> Status {
        Status { code: Code::Success, reasons: Vec::new(), plugin: "" }
    }
    pub fn unschedulable(plugin: &'static str, reason: impl Into<String>) -> Status {
        Status { code: Code::Unschedulable, reasons: vec![reason.into()], plugin }
    }
    pub fn unresolvable(plugin: &'static str, reason: impl Into<String>) -> Status {
        Status { code: Code::UnschedulableAndUnresolvable, reasons: vec![reason.into()], plugin }
    }
    pub fn error(plugin: &'static str, reason: impl Into<String>) -> Status {
        Status { code: Code::Error, reasons: vec![reason.into()], plugin }
    }
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

/// Data a plugin computes once per cycle (PreFilter/PreScore) and reads per node.
/// A handful of entries read once per node per plugin: a linear scan beats hashing here.
#[derive(Default)]
pub struct CycleState {
    data: Vec<(&'static str, Box<dyn Any + Send + Sync>)>,
}

impl CycleState {
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, v: T) {
        self.data.retain(|(k, _)| *k != key);
        self.data.push((key, Box::new(v)));
    }
    pub fn read<T: Any>(&self, key: &'static str) -> Option<&T> {
        self.data.iter().find(|(k, _)| *k == key).and_then(|(_, b)| b.downcast_ref())
    }
}

/// One scheduling plugin. Every method has a neutral default so a plugin implements only its
/// extension points; which points run is decided by the profile, as upstream.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Runs once per pod before filtering; may reject the pod for every node.
    fn pre_filter(&self, _state: &mut CycleState, _pod: &PodInfo, _nodes: &[NodeInfo]) -> Status {
        Status::success()
    }

    fn filter(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> Status {
        Status::success()
    }

    /// Runs once per pod before scoring, over the feasible nodes.
    fn pre_score(&self, _state: &mut CycleState, _pod: &PodInfo, _nodes: &[&NodeInfo]) {}

    /// A score in 0..=MAX_NODE_SCORE (before normalization).
    fn score(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> i64 {
        0
    }

    /// Rescales the raw scores of all feasible nodes into 0..=MAX_NODE_SCORE.
    fn normalize(&self, _state: &CycleState, _scores: &mut [i64]) {}
}

/// Upstream's DefaultNormalizeScore: scale to 0..=MAX_NODE_SCORE by the maximum, optionally reversed.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_scales_and_reverses() {
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![0, 50, 100]);
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
        let mut s = vec![0, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 100]);
    }
}
