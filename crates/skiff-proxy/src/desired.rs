//! The table the proxy wants, kept per service port so a change costs what it touches: only
//! the ports that changed (and the few whose endpoint offsets a change moved, see
//! `rules::Placement`) are rebuilt, and the transaction is the difference between their old
//! and new parts. Rebuilding and diffing the whole table took ~150 ms of CPU per change at
//! 10,000 Services, more than the kernel's share.

use std::collections::{BTreeMap, BTreeSet};

use crate::conntrack::{StaleFlow, stale};
use crate::model::ServicePort;
use crate::rules::{Options, Placement, Ruleset, bucket_of, owners, place_bucket};

pub struct Desired {
    opts: Options,
    ports: BTreeMap<String, ServicePort>,
    fragments: BTreeMap<String, Ruleset>,
    /// Owners of endpoint choices per bucket, with the offsets each needs.
    owners: BTreeMap<u64, BTreeMap<String, usize>>,
    /// Owner name → port id.
    owner_port: BTreeMap<String, String>,
    placed: Placement,
    /// How many ports hold each (container, key): elements such as hairpin pairs can be
    /// shared, and one port letting go must not delete another's.
    refs: BTreeMap<(String, String), usize>,
}

/// One step: the changed ports' part of the table before and after, for
/// `nft::transaction(From::Applied(&before), &after)`.
pub struct Step {
    pub before: Ruleset,
    pub after: Ruleset,
    /// Ports rebuilt (changed, added, removed, or moved within a bucket).
    pub rebuilt: usize,
    /// Datagram flows to forget once the step is in (endpoints that left their Service).
    pub stale: Vec<StaleFlow>,
}

impl Desired {
    pub fn new(ports: &[ServicePort], opts: &Options) -> Desired {
        let mut d = Desired {
            opts: opts.clone(),
            ports: BTreeMap::new(),
            fragments: BTreeMap::new(),
            owners: BTreeMap::new(),
            owner_port: BTreeMap::new(),
            placed: Placement::new(),
            refs: BTreeMap::new(),
        };
        d.update(ports);
        d
    }

    /// The whole table, for a full write.
    pub fn ruleset(&self) -> Ruleset {
        let mut r = Ruleset::fixed(&self.opts);
        for f in self.fragments.values() {
            r.merge(f.clone());
        }
        r
    }

    /// Moves to `ports`; returns the step the kernel has to take.
    pub fn update(&mut self, ports: &[ServicePort]) -> Step {
        let next: BTreeMap<&str, &ServicePort> = ports.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut changed: BTreeSet<String> = self.ports.keys().filter(|id| !next.contains_key(id.as_str())).cloned().collect();
        changed.extend(next.iter().filter(|(id, p)| self.ports.get(**id) != Some(**p)).map(|(id, _)| id.to_string()));

        // Re-place the buckets whose owners changed; ports whose offsets moved are rebuilt too.
        let mut buckets = BTreeSet::new();
        for id in &changed {
            if let Some(old) = self.ports.get(id) {
                for (owner, _) in owners(old) {
                    let b = bucket_of(&owner);
                    if let Some(o) = self.owners.get_mut(&b) {
                        o.remove(&owner);
                    }
                    self.owner_port.remove(&owner);
                    self.placed.remove(&owner);
                    buckets.insert(b);
                }
            }
            if let Some(new) = next.get(id.as_str()) {
                for (owner, n) in owners(new) {
                    let b = bucket_of(&owner);
                    self.owners.entry(b).or_default().insert(owner.clone(), n);
                    self.owner_port.insert(owner, id.clone());
                    buckets.insert(b);
                }
            }
        }
        for b in buckets {
            let Some(o) = self.owners.get(&b) else { continue };
            for (owner, at) in place_bucket(o) {
                if self.placed.get(&owner) != Some(&(b, at)) {
                    changed.insert(self.owner_port[&owner].clone());
                    self.placed.insert(owner, (b, at));
                }
            }
        }

        let (mut before, mut after) = (Ruleset::default(), Ruleset::default());
        let mut flows = Vec::new();
        for id in &changed {
            if let Some(old) = self.ports.get(id) {
                flows.extend(stale(old, next.get(id.as_str()).copied()));
            }
            if let Some(old) = self.fragments.remove(id) {
                self.count(&old, false);
                before.merge(old);
            }
            self.ports.remove(id);
            if let Some(p) = next.get(id.as_str()) {
                let f = Ruleset::fragment(p, &self.opts, &self.placed);
                self.count(&f, true);
                after.merge(f.clone());
                self.fragments.insert(id.clone(), f);
                self.ports.insert(id.clone(), (*p).clone());
            }
        }
        // Elements other ports still hold stay; containers stay (a full write drops unused ones).
        for (container, els) in &before.elements {
            let kept = after.elements.entry(container.clone()).or_default();
            for (k, v) in els {
                if !kept.contains_key(k) && self.refs.contains_key(&(container.clone(), k.clone())) {
                    kept.insert(k.clone(), v.clone());
                }
            }
        }
        Step { before, after, rebuilt: changed.len(), stale: flows }
    }

    fn count(&mut self, f: &Ruleset, add: bool) {
        for (container, els) in &f.elements {
            for k in els.keys() {
                let key = (container.clone(), k.clone());
                if add {
                    *self.refs.entry(key).or_default() += 1;
                } else if let Some(n) = self.refs.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.refs.remove(&key);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;
    use crate::model::fixtures::{self, endpoint, opts};
    use crate::nft::{From, transaction};
    use crate::rules::HAIRPIN;

    fn port(name: &str, ip: &str, eps: &[&str]) -> ServicePort {
        let eps = eps.iter().map(|e| endpoint(e, 80, true)).collect();
        fixtures::port(&format!("ns/{name}:/tcp"), Proto::Tcp, ip, 80, eps)
    }

    /// Applying the steps one after another gives the same table as building the end state.
    #[test]
    fn steps_add_up_to_the_whole_table() {
        let states = [
            vec![port("a", "10.43.0.7", &["10.42.0.5", "10.42.0.6"]), port("b", "10.43.0.8", &["10.42.0.5"])],
            vec![port("a", "10.43.0.7", &["10.42.0.6"]), port("b", "10.43.0.8", &["10.42.0.5", "10.42.0.9"])],
            vec![port("b", "10.43.0.8", &["10.42.0.9"]), port("c", "10.43.0.9", &[])],
            vec![],
        ];
        let mut d = Desired::new(&states[0], &opts());
        let mut table = d.ruleset();
        assert_eq!(table, Ruleset::build(&states[0], &opts()));
        for s in &states[1..] {
            let step = d.update(s);
            apply(&mut table, &step);
            let mut want = Ruleset::build(s, &opts());
            // Incremental steps leave endpoint maps declared once used.
            for name in table.elements.keys() {
                want.elements.entry(name.clone()).or_default();
            }
            assert_eq!(table, want);
            assert_eq!(d.ruleset().chains, want.chains);
        }
    }

    #[test]
    fn an_unchanged_state_is_no_step_and_shared_elements_survive() {
        let a = port("a", "10.43.0.7", &["10.42.0.5"]);
        let b = port("b", "10.43.0.8", &["10.42.0.5"]);
        let mut d = Desired::new(&[a.clone(), b.clone()], &opts());
        let step = d.update(&[a.clone(), b]);
        assert_eq!(step.rebuilt, 0);
        assert!(transaction(From::Applied(&step.before), &step.after).is_noop());
        // b goes; a still hairpins through the same endpoint.
        let step = d.update(&[a]);
        let s = transaction(From::Applied(&step.before), &step.after).script();
        assert!(!s.contains(&format!("delete element ip skiff {HAIRPIN}")), "{s}");
        assert!(s.contains("delete element ip skiff service-ips { 10.43.0.8 . tcp . 80 }"), "{s}");
    }

    /// What the kernel does with a step's transaction, on the data.
    fn apply(table: &mut Ruleset, step: &Step) {
        for name in step.before.chains.keys() {
            table.chains.remove(name);
        }
        for name in step.before.affinity_sets.keys() {
            table.affinity_sets.remove(name);
        }
        for (c, els) in &step.before.elements {
            for k in els.keys() {
                if step.after.elements.get(c).is_none_or(|a| !a.contains_key(k)) {
                    table.elements.get_mut(c).unwrap().remove(k);
                }
            }
        }
        table.merge(step.after.clone());
    }
}
