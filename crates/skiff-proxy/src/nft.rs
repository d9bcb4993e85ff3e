//! Programming the table: the difference between what was applied and what is wanted becomes one
//! `nft -f -` transaction, which the kernel applies atomically (a packet sees the old ruleset or
//! the new one, never a mix).
//!
//! nft's text syntax through the `nft` binary is the interface nftables documents as stable; the
//! JSON crates drive the same binary with larger input, and the netlink crates are unmaintained.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use crate::rules::{Ruleset, TABLE, base_chains, declaration};

/// Elements per `add element` line, so no line grows without bound.
const CHUNK: usize = 2000;

/// Names of what the table holds in the kernel, read before the first sync after a start.
#[derive(Clone, Debug, Default)]
pub struct Kernel {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

#[derive(Clone, Debug)]
pub struct Nft {
    pub bin: PathBuf,
    /// Run inside this named network namespace (`ip netns exec`): tests and the benchmark.
    pub netns: Option<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft { bin: PathBuf::from("nft"), netns: None }
    }
}

impl Nft {
    pub fn in_netns(ns: &str) -> Nft {
        Nft { netns: Some(ns.to_string()), ..Nft::default() }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = crate::tool::command(&self.bin, self.netns.as_deref());
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        if let Some(input) = stdin {
            let mut w = child.stdin.take().expect("piped stdin");
            w.write_all(input.as_bytes()).await?;
            drop(w);
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let head: Vec<&str> = err.lines().take(6).collect();
            anyhow::bail!("nft {}: {}", args.join(" "), head.join(" | "));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a transaction script atomically.
    pub async fn apply(&self, script: &str) -> anyhow::Result<()> {
        self.run(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// The chains and sets our table holds now (empty when there is no table).
    pub async fn kernel(&self) -> anyhow::Result<Kernel> {
        let out = match self.run(&["-j", "-t", "list", "table", "ip", TABLE], None).await {
            Ok(out) => out,
            Err(e) if e.to_string().contains("No such file or directory") => return Ok(Kernel::default()),
            Err(e) => return Err(e),
        };
        parse_kernel(&out)
    }

    /// The table as nft prints it (tests, debugging).
    pub async fn list(&self) -> anyhow::Result<String> {
        self.run(&["list", "table", "ip", TABLE], None).await
    }

    /// Removes the table.
    pub async fn delete_table(&self) -> anyhow::Result<()> {
        self.delete_named_table(TABLE).await
    }

    /// Removes table `ip NAME` if it exists.
    pub async fn delete_named_table(&self, name: &str) -> anyhow::Result<()> {
        match self.run(&["delete", "table", "ip", name], None).await {
            Err(e) if !e.to_string().contains("No such file or directory") => Err(e),
            _ => Ok(()),
        }
    }
}

fn parse_kernel(json: &str) -> anyhow::Result<Kernel> {
    let v: serde_json::Value = serde_json::from_str(json).context("parsing nft -j output")?;
    let mut k = Kernel::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(name) = item["chain"]["name"].as_str() {
            k.chains.insert(name.to_string());
        }
        for kind in ["set", "map"] {
            if let Some(name) = item[kind]["name"].as_str() {
                k.sets.insert(name.to_string());
            }
        }
    }
    Ok(k)
}

/// What the transaction starts from: the last applied ruleset, or (first sync after a start or
/// a failure) only the names the kernel holds, in which case everything is rewritten.
pub enum From<'a> {
    Applied(&'a Ruleset),
    Kernel(&'a Kernel),
}

fn add_elements(s: &mut String, container: &str, items: &[String]) {
    for chunk in items.chunks(CHUNK) {
        let _ = writeln!(s, "add element ip {TABLE} {container} {{ {} }}", chunk.join(", "));
    }
}

fn delete_elements(s: &mut String, container: &str, keys: &[&String]) {
    for chunk in keys.chunks(CHUNK) {
        let keys: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
        let _ = writeln!(s, "delete element ip {TABLE} {container} {{ {} }}", keys.join(", "));
    }
}

/// `map` or `set`, as nft wants it named in commands.
fn kind(name: &str) -> &'static str {
    if declaration(name).is_some_and(|d| d.1) { "map" } else { "set" }
}

fn element(key: &str, verdict: &str) -> String {
    if verdict.is_empty() { key.to_string() } else { format!("{key} : {verdict}") }
}

/// A transaction: idempotent declarations (table, base chains, maps) and the changes proper.
#[derive(Debug, Default)]
pub struct Transaction {
    pub declarations: String,
    pub changes: String,
}

impl Transaction {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn script(&self) -> String {
        format!("{}{}", self.declarations, self.changes)
    }
}

/// The transaction taking the table from `from` to `next`.
pub fn transaction(from: From<'_>, next: &Ruleset) -> Transaction {
    let mut d = String::new();
    let mut s = String::new();
    // Base chains jump to regular ones, so their rules follow the regular chains' declarations.
    let mut base_rules = String::new();
    let _ = writeln!(d, "add table ip {TABLE}");
    let full = matches!(from, From::Kernel(_));
    for (name, hook, rules) in base_chains() {
        let _ = writeln!(d, "add chain ip {TABLE} {name} {{ {hook} }}");
        if full {
            let _ = writeln!(base_rules, "flush chain ip {TABLE} {name}");
            for r in rules {
                let _ = writeln!(base_rules, "add rule ip {TABLE} {name} {r}");
            }
        }
    }
    for name in next.elements.keys() {
        let (ty, is_map) = declaration(name).expect("the proxy's own container");
        let _ = writeln!(d, "add {} ip {TABLE} {name} {{ {ty}; }}", if is_map { "map" } else { "set" });
    }
    let empty = Ruleset::default();
    let (prev_chains, prev_sets): (BTreeSet<&String>, BTreeSet<&String>) = match &from {
        From::Applied(prev) => (prev.chains.keys().collect(), prev.affinity_sets.keys().collect()),
        From::Kernel(k) => (k.chains.iter().collect(), k.sets.iter().collect()),
    };
    for (name, timeout) in &next.affinity_sets {
        if !prev_sets.contains(name) {
            let _ = writeln!(s, "add set ip {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}");
        }
    }
    // Chains first exist (rules may jump to chains declared later), then get their rules.
    for name in next.chains.keys() {
        if !prev_chains.contains(name) {
            let _ = writeln!(s, "add chain ip {TABLE} {name}");
        }
    }
    s.push_str(&base_rules);
    let prev_rules = match &from {
        From::Applied(prev) => &prev.chains,
        From::Kernel(_) => &empty.chains,
    };
    for (name, rules) in &next.chains {
        if prev_rules.get(name) == Some(rules) {
            continue;
        }
        if prev_chains.contains(name) {
            let _ = writeln!(s, "flush chain ip {TABLE} {name}");
        }
        for r in rules {
            let _ = writeln!(s, "add rule ip {TABLE} {name} {r}");
        }
    }
    let none = BTreeMap::new();
    for (name, want) in &next.elements {
        match &from {
            From::Applied(prev) => {
                let had = prev.elements.get(name).unwrap_or(&none);
                let gone: Vec<&String> = had.iter().filter(|(k, v)| want.get(*k) != Some(v)).map(|(k, _)| k).collect();
                delete_elements(&mut s, name, &gone);
                let new: Vec<String> = want.iter().filter(|(k, v)| had.get(*k) != Some(v)).map(|(k, v)| element(k, v)).collect();
                add_elements(&mut s, name, &new);
            }
            From::Kernel(_) => {
                let _ = writeln!(s, "flush {} ip {TABLE} {name}", kind(name));
                let all: Vec<String> = want.iter().map(|(k, v)| element(k, v)).collect();
                add_elements(&mut s, name, &all);
            }
        }
    }
    // Chains, maps and sets no longer wanted: chains emptied first so no rule refers to a map
    // or set, then those deleted so no map element refers to a chain, then the chains.
    let base: BTreeSet<&str> = base_chains().iter().map(|(n, _, _)| *n).collect();
    let gone: Vec<&&String> = prev_chains.iter().filter(|n| !next.chains.contains_key(n.as_str()) && !base.contains(n.as_str())).collect();
    for name in &gone {
        let _ = writeln!(s, "flush chain ip {TABLE} {name}");
    }
    let prev_sets: BTreeSet<&String> = match &from {
        From::Applied(prev) => prev_sets.into_iter().chain(prev.elements.keys()).collect(),
        From::Kernel(_) => prev_sets,
    };
    for name in prev_sets {
        if !next.affinity_sets.contains_key(name) && !next.elements.contains_key(name) {
            let _ = writeln!(s, "delete {} ip {TABLE} {name}", kind(name));
        }
    }
    for name in &gone {
        let _ = writeln!(s, "delete chain ip {TABLE} {name}");
    }
    Transaction { declarations: d, changes: s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{self, endpoint, opts};
    use crate::model::{Proto, ServicePort};
    use crate::rules::{SERVICE_IPS, hash_name};

    fn port(name: &str, ip: &str, eps: &[&str]) -> ServicePort {
        let eps = eps.iter().map(|e| endpoint(e, 80, false)).collect();
        fixtures::port(&format!("ns/{name}:/tcp"), Proto::Tcp, ip, 80, eps)
    }

    #[test]
    fn a_full_sync_rewrites_everything_and_drops_strays() {
        let next = Ruleset::build(&[port("a", "10.43.0.7", &["10.42.0.5"])], &opts());
        let kernel =
            Kernel { chains: ["nat-prerouting".into(), "svc-stale".into()].into(), sets: ["aff-stale".into(), SERVICE_IPS.into()].into() };
        let s = transaction(From::Kernel(&kernel), &next).script();
        assert!(s.contains("flush chain ip skiff nat-prerouting\nadd rule ip skiff nat-prerouting jump services\n"));
        assert!(s.contains("flush map ip skiff service-ips\nadd element ip skiff service-ips { 10.43.0.7 . tcp . 80 : goto svc-"));
        let flush = s.find("flush chain ip skiff svc-stale").unwrap();
        let delete = s.find("delete chain ip skiff svc-stale").unwrap();
        assert!(flush < delete);
        assert!(s.contains("delete set ip skiff aff-stale"));
        assert!(!s.contains("delete chain ip skiff nat-prerouting"));
        assert!(!s.contains("delete set ip skiff service-ips"));
    }

    #[test]
    fn an_incremental_sync_touches_only_what_changed() {
        let a = port("a", "10.43.0.7", &["10.42.0.5"]);
        let b = port("b", "10.43.0.8", &["10.42.0.6"]);
        let prev = Ruleset::build(&[a.clone(), b.clone()], &opts());
        assert!(transaction(From::Applied(&prev), &prev).is_noop());

        let b2 = port("b", "10.43.0.8", &["10.42.0.6", "10.42.0.7"]);
        let next = Ruleset::build(&[a.clone(), b2], &opts());
        let s = transaction(From::Applied(&prev), &next).script();
        let svc_b = hash_name("svc", "ns/b:/tcp");
        assert!(s.contains(&format!("flush chain ip skiff {svc_b}\n")), "{s}");
        assert!(s.contains(&format!("add rule ip skiff {svc_b} meta l4proto tcp dnat to numgen random mod 2 offset ")), "{s}");
        assert!(!s.contains(&hash_name("svc", "ns/a:/tcp")), "service a is untouched:\n{s}");
        let adds: Vec<&str> = s.lines().filter(|l| l.contains("element")).collect();
        assert_eq!(adds.len(), 1, "only b's endpoint choices are added:\n{s}");
        assert!(adds[0].starts_with("add element ip skiff endpoints-") && adds[0].contains(" : 10.42.0.6 . 80, "), "{s}");

        let gone = Ruleset::build(&[a], &opts());
        let s = transaction(From::Applied(&next), &gone).script();
        assert!(s.contains("delete element ip skiff service-ips { 10.43.0.8 . tcp . 80 }"));
        let (flush, drop_map, delete) = (
            s.find(&format!("flush chain ip skiff {svc_b}")).unwrap(),
            s.find("delete map ip skiff endpoints-tcp-").expect("b's endpoint map is no longer needed"),
            s.find(&format!("delete chain ip skiff {svc_b}")).unwrap(),
        );
        assert!(flush < drop_map && drop_map < delete, "{s}");
    }

    #[test]
    fn parses_the_kernels_names() {
        let k = parse_kernel(r#"{"nftables": [{"metainfo": {}}, {"table": {"name": "skiff"}}, {"set": {"name": "aff-1"}}, {"map": {"name": "service-ips"}}, {"chain": {"name": "svc-1"}}]}"#).unwrap();
        assert!(k.chains.contains("svc-1"));
        assert!(k.sets.contains("aff-1") && k.sets.contains("service-ips"));
    }
}
