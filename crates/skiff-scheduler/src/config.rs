//! Scheduler configuration: a subset of upstream's KubeSchedulerConfiguration (profiles by
//! schedulerName, enabled/disabled plugins per extension point, score weights, NodeResourcesFit's
//! scoring strategy, percentageOfNodesToScore), read from YAML or JSON.

use std::sync::Arc;

use serde::Deserialize;

use crate::framework::Plugin;
use crate::plugins::node_resources_fit::{NodeResourcesFit, ResourceWeight, ShapePoint, Strategy};
use crate::plugins::{
    balanced_allocation, inter_pod_affinity, node_affinity, node_name, node_ports, node_resources_fit, node_unschedulable,
    pod_topology_spread, taint_toleration,
};

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<i32>,
    #[serde(default)]
    pub profiles: Vec<FileProfile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileProfile {
    pub scheduler_name: String,
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<i32>,
    #[serde(default)]
    pub plugins: Option<FilePlugins>,
    #[serde(default)]
    pub plugin_config: Vec<FilePluginConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilePlugins {
    #[serde(default)]
    pub filter: PluginSet,
    #[serde(default)]
    pub score: PluginSet,
    #[serde(default)]
    pub post_filter: PluginSet,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSet {
    #[serde(default)]
    pub enabled: Vec<PluginRef>,
    #[serde(default)]
    pub disabled: Vec<PluginRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    #[serde(default)]
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePluginConfig {
    pub name: String,
    pub args: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FitArgs {
    #[serde(default)]
    scoring_strategy: Option<ScoringStrategy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScoringStrategy {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceWeight>,
    #[serde(default)]
    requested_to_capacity_ratio: Option<RatioArgs>,
}

#[derive(Debug, Deserialize)]
struct RatioArgs {
    shape: Vec<ShapePoint>,
}

/// A resolved profile: the plugins that run at each point, with score weights.
pub struct Profile {
    pub scheduler_name: String,
    pub percentage_of_nodes_to_score: i32,
    pub filters: Vec<Arc<dyn Plugin>>,
    pub scorers: Vec<(Arc<dyn Plugin>, i64)>,
    /// DefaultPreemption runs when no node fits.
    pub preemption: bool,
}

/// Upstream's default plugin set, in upstream's order, with its default score weights.
fn defaults(fit: NodeResourcesFit) -> Vec<(Arc<dyn Plugin>, bool, Option<i64>)> {
    vec![
        (Arc::new(node_unschedulable::NodeUnschedulable), true, None),
        (Arc::new(node_name::NodeName), true, None),
        (Arc::new(taint_toleration::TaintToleration), true, Some(3)),
        (Arc::new(node_affinity::NodeAffinity), true, Some(2)),
        (Arc::new(node_ports::NodePorts), true, None),
        (Arc::new(fit), true, Some(1)),
        (Arc::new(pod_topology_spread::PodTopologySpread), true, Some(2)),
        (Arc::new(inter_pod_affinity::InterPodAffinity), true, Some(2)),
        (Arc::new(balanced_allocation::BalancedAllocation), false, Some(1)),
    ]
}

fn fit_from_args(args: &serde_json::Value) -> Result<NodeResourcesFit, String> {
    let a: FitArgs = serde_json::from_value(args.clone()).map_err(|e| format!("NodeResourcesFit args: {e}"))?;
    let mut fit = NodeResourcesFit::default();
    if let Some(s) = a.scoring_strategy {
        if !s.resources.is_empty() {
            fit.resources = s.resources;
        }
        fit.strategy = match s.kind.as_deref().unwrap_or("LeastAllocated") {
            "LeastAllocated" => Strategy::LeastAllocated,
            "MostAllocated" => Strategy::MostAllocated,
            "RequestedToCapacityRatio" => {
                let shape = s.requested_to_capacity_ratio.ok_or("RequestedToCapacityRatio needs requestedToCapacityRatio.shape")?.shape;
                if shape.is_empty() || shape.windows(2).any(|w| w[0].utilization >= w[1].utilization) {
                    return Err("requestedToCapacityRatio.shape: utilization must be increasing and non-empty".into());
                }
                Strategy::RequestedToCapacityRatio(shape)
            }
            other => return Err(format!("scoringStrategy.type: unsupported value {other:?}")),
        };
    }
    Ok(fit)
}

impl Profile {
    /// Another handle on the same plugins (they are stateless between cycles).
    pub fn clone_shallow(&self) -> Profile {
        Profile {
            scheduler_name: self.scheduler_name.clone(),
            percentage_of_nodes_to_score: self.percentage_of_nodes_to_score,
            filters: self.filters.clone(),
            scorers: self.scorers.clone(),
            preemption: self.preemption,
        }
    }

    pub fn default_profile() -> Profile {
        Profile::resolve(&FileProfile { scheduler_name: DEFAULT_SCHEDULER.into(), ..Default::default() }, None).expect("defaults resolve")
    }

    fn resolve(p: &FileProfile, global_pct: Option<i32>) -> Result<Profile, String> {
        let mut fit = NodeResourcesFit::default();
        for pc in &p.plugin_config {
            match pc.name.as_str() {
                node_resources_fit::NAME => fit = fit_from_args(&pc.args)?,
                other => return Err(format!("pluginConfig: no arguments supported for plugin {other:?}")),
            }
        }
        let all = defaults(fit);
        let known = |n: &str| all.iter().any(|(pl, _, _)| pl.name() == n);
        let plugins = p.plugins.as_ref();
        let empty = PluginSet::default();
        let (fset, sset) = plugins.map_or((&empty, &empty), |pl| (&pl.filter, &pl.score));
        let pset = plugins.map_or(&empty, |pl| &pl.post_filter);
        for r in pset.enabled.iter().chain(&pset.disabled) {
            if r.name != "*" && r.name != "DefaultPreemption" {
                return Err(format!("profile {:?}: unknown postFilter plugin {:?}", p.scheduler_name, r.name));
            }
        }
        let preemption = !pset.disabled.iter().any(|r| r.name == "*" || r.name == "DefaultPreemption");
        for r in fset.enabled.iter().chain(&fset.disabled).chain(&sset.enabled).chain(&sset.disabled) {
            if r.name != "*" && !known(&r.name) {
                return Err(format!("profile {:?}: unknown plugin {:?}", p.scheduler_name, r.name));
            }
        }
        let off = |set: &PluginSet, n: &str| {
            set.disabled.iter().any(|r| r.name == "*" || r.name == n) && !set.enabled.iter().any(|r| r.name == n)
        };
        let filters = all.iter().filter(|(pl, f, _)| *f && !off(fset, pl.name())).map(|(pl, _, _)| pl.clone()).collect();
        let mut scorers = Vec::new();
        for (pl, _, w) in &all {
            let Some(default_w) = w else { continue };
            if off(sset, pl.name()) {
                continue;
            }
            let weight = sset.enabled.iter().find(|r| r.name == pl.name()).and_then(|r| r.weight).unwrap_or(*default_w);
            if weight <= 0 {
                return Err(format!("profile {:?}: score weight of {} must be positive", p.scheduler_name, pl.name()));
            }
            scorers.push((pl.clone(), weight));
        }
        let pct = p.percentage_of_nodes_to_score.or(global_pct).unwrap_or(0);
        if !(0..=100).contains(&pct) {
            return Err(format!("percentageOfNodesToScore: {pct} is not in 0..=100"));
        }
        Ok(Profile { scheduler_name: p.scheduler_name.clone(), percentage_of_nodes_to_score: pct, filters, scorers, preemption })
    }
}

/// Parses a configuration file's contents into profiles (the default profile when none is given).
pub fn parse(text: &str) -> Result<Vec<Profile>, String> {
    let fc: FileConfig = serde_saphyr::from_str(text).map_err(|e| format!("scheduler config: {e}"))?;
    if let Some(k) = fc.kind.as_deref()
        && k != "KubeSchedulerConfiguration"
    {
        return Err(format!("scheduler config: kind {k:?} is not KubeSchedulerConfiguration"));
    }
    if let Some(pct) = fc.percentage_of_nodes_to_score
        && !(0..=100).contains(&pct)
    {
        return Err(format!("percentageOfNodesToScore: {pct} is not in 0..=100"));
    }
    if fc.profiles.is_empty() {
        let mut p = Profile::default_profile();
        p.percentage_of_nodes_to_score = fc.percentage_of_nodes_to_score.unwrap_or(0);
        return Ok(vec![p]);
    }
    let mut out: Vec<Profile> = Vec::new();
    for p in &fc.profiles {
        if out.iter().any(|o| o.scheduler_name == p.scheduler_name) {
            return Err(format!("profiles: duplicate schedulerName {:?}", p.scheduler_name));
        }
        out.push(Profile::resolve(p, fc.percentage_of_nodes_to_score)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_weights_and_strategies() {
        let text = r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 30
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packer
  plugins:
    score:
      enabled: [{name: NodeResourcesFit, weight: 5}]
      disabled: [{name: NodeResourcesBalancedAllocation}]
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources: [{name: cpu, weight: 2}, {name: memory}]
"#;
        let ps = parse(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].percentage_of_nodes_to_score, 30);
        let names: Vec<(&str, i64)> = ps[1].scorers.iter().map(|(p, w)| (p.name(), *w)).collect();
        assert_eq!(
            names,
            vec![("TaintToleration", 3), ("NodeAffinity", 2), ("NodeResourcesFit", 5), ("PodTopologySpread", 2), ("InterPodAffinity", 2)]
        );
        assert_eq!(ps[0].filters.len(), 8);
    }

    #[test]
    fn bad_configs_are_rejected_with_the_reason() {
        let bad = [
            ("profiles: [{schedulerName: a, plugins: {score: {enabled: [{name: Nope}]}}}]", "unknown plugin"),
            ("profiles: [{schedulerName: a}, {schedulerName: a}]", "duplicate"),
            ("percentageOfNodesToScore: 150", "not in 0..=100"),
            ("kind: Pod", "not KubeSchedulerConfiguration"),
            ("bogus: 1", "unknown field"),
            (
                "profiles: [{schedulerName: a, pluginConfig: [{name: NodeResourcesFit, args: {scoringStrategy: {type: Random}}}]}]",
                "unsupported value",
            ),
        ];
        for (text, want) in bad {
            let err = parse(text).err().unwrap_or_default();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
