//! The embedded scheduler, driven with the real kubectl: placement by nodeSelector, taints and
//! tolerations, cordon/uncordon, upstream's FailedScheduling message, and bad input left alone.
//! Nodes here are plain Node objects (the scheduler only reads the API), so the test needs no agent.

use std::time::Duration;

use crate::harness::{KUBECTL_133, Server, SkiffProc, wait_for};

const KUBECTL: &str = "/usr/bin/kubectl";

fn node_yaml(name: &str, labels: &str, taints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}{labels}}}\nspec:\n  taints: [{taints}]\n\
         status:\n  allocatable: {{cpu: '2', memory: 4Gi, pods: '110'}}\n  capacity: {{cpu: '2', memory: 4Gi, pods: '110'}}\n  \
         conditions: [{{type: Ready, status: 'True'}}]\n"
    )
}

fn pod_yaml(name: &str, spec_extra: &str, cpu: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{spec_extra}  containers:\n  - name: c\n    image: busybox\n    \
         resources: {{requests: {{cpu: '{cpu}'}}}}\n"
    )
}

fn node_of(s: &Server, pod: &str) -> String {
    s.ok(KUBECTL, &["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

fn wait_bound(s: &Server, pod: &str) -> String {
    wait_for(&format!("{pod} to be bound"), Duration::from_secs(20), || Some(node_of(s, pod)).filter(|n| !n.is_empty()))
}

fn failed_scheduling(s: &Server, pod: &str) -> String {
    let sel = format!("involvedObject.name={pod},reason=FailedScheduling");
    wait_for(&format!("FailedScheduling for {pod}"), Duration::from_secs(20), || {
        let list: serde_json::Value =
            serde_json::from_str(&s.ok(KUBECTL, &["get", "events", "--field-selector", &sel, "-o", "json"])).ok()?;
        list["items"].as_array()?.last()?["message"].as_str().map(str::to_string)
    })
}

#[test]
fn scheduler_places_pods_as_upstream() {
    let s = Server::start();
    let nodes = [
        node_yaml("n1", ", disk: ssd", ""),
        node_yaml("n2", "", "{key: dedicated, value: gpu, effect: NoSchedule}"),
        node_yaml("n3", "", ""),
    ]
    .join("---\n");
    let out = s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&nodes));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // nodeSelector
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("ssd", "  nodeSelector: {disk: ssd}\n", "100m")));
    assert_eq!(wait_bound(&s, "ssd"), "n1");
    let cond = s.ok(KUBECTL, &["get", "pod", "ssd", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}"]);
    assert_eq!(cond, "True");
    let ev = s.ok(
        KUBECTL,
        &["get", "events", "--field-selector", "involvedObject.name=ssd,reason=Scheduled", "-o", "jsonpath={.items[0].message}"],
    );
    assert_eq!(ev, "Successfully assigned default/ssd to n1");

    // Too big for any node: Pending with upstream's message, on the event and the condition.
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("huge", "", "3")));
    let msg = failed_scheduling(&s, "huge");
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
    let reason = s.ok(KUBECTL, &["get", "pod", "huge", "-o", "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}"]);
    assert_eq!(reason, "Unschedulable");
    let describe = s.ok(KUBECTL_133, &["describe", "pod", "huge"]);
    assert!(describe.contains("FailedScheduling") && describe.contains("Insufficient cpu"), "{describe}");
    assert_eq!(node_of(&s, "huge"), "");

    // Taint + toleration.
    let tolerant = "  nodeSelector: {kubernetes.io/hostname: n2}\n  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n";
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("gpu", tolerant, "100m")));
    assert_eq!(wait_bound(&s, "gpu"), "n2");

    // Cordon stops placements on n3; uncordon resumes them.
    assert_eq!(s.ok(KUBECTL, &["cordon", "n3"]).trim(), "node/n3 cordoned");
    assert_eq!(s.ok(KUBECTL, &["get", "node", "n3", "-o", "jsonpath={.spec.unschedulable}"]), "true");
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("on-n3", "  nodeSelector: {kubernetes.io/hostname: n3}\n", "100m")));
    let msg = failed_scheduling(&s, "on-n3");
    assert!(msg.contains("1 node(s) were unschedulable"), "{msg}");
    assert_eq!(node_of(&s, "on-n3"), "");
    assert_eq!(s.ok(KUBECTL, &["uncordon", "n3"]).trim(), "node/n3 uncordoned");
    assert_eq!(wait_bound(&s, "on-n3"), "n3");

    // Bad input: an invalid affinity operator is reported, and the scheduler keeps working.
    let bad = "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        \
               - matchExpressions: [{key: disk, operator: Near, values: [ssd]}]\n";
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("bad-affinity", bad, "100m")));
    let msg = failed_scheduling(&s, "bad-affinity");
    assert!(msg.contains("Near") && msg.contains("not a valid selector operator"), "{msg}");
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("after-bad", "", "100m")));
    assert!(!wait_bound(&s, "after-bad").is_empty());

    // Bad input: a scheduler name nobody serves is left alone, with one event saying why.
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("orphan", "  schedulerName: no-such-scheduler\n", "100m")));
    let sel = "involvedObject.name=orphan,reason=UnknownSchedulerName";
    let msg = wait_for("the UnknownSchedulerName event", Duration::from_secs(20), || {
        let list: serde_json::Value =
            serde_json::from_str(&s.ok(KUBECTL, &["get", "events", "--field-selector", sel, "-o", "json"])).ok()?;
        list["items"].as_array()?.first()?["message"].as_str().map(str::to_string)
    });
    assert!(msg.contains("\"no-such-scheduler\"") && msg.contains("default-scheduler"), "{msg}");
    assert_eq!(node_of(&s, "orphan"), "");

    let leases = s.ok(KUBECTL, &["get", "lease", "-n", "kube-system", "kube-scheduler", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert!(!leases.is_empty(), "the scheduler holds its Lease");
}

fn start_scheduler(s: &Server, log: &str) -> SkiffProc {
    let kc = s.kubeconfig.to_string_lossy().into_owned();
    let timing = ["--leader-elect-lease-duration", "3s", "--leader-elect-renew-deadline", "2s", "--leader-elect-retry-period", "500ms"];
    SkiffProc::start(s, &[&["scheduler", "--kubeconfig", &kc][..], &timing].concat(), log)
}

fn holder(s: &Server) -> String {
    let out = s.kubectl(KUBECTL, &["get", "lease", "-n", "kube-system", "kube-scheduler", "-o", "jsonpath={.spec.holderIdentity}"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_second_scheduler_takes_over_the_lease_when_the_first_dies() {
    let s = Server::start_with(&["--disable-scheduler"]);
    let out = s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&node_yaml("n1", "", "")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut first = start_scheduler(&s, "sched-a.log");
    let a = wait_for("the first scheduler to lead", Duration::from_secs(20), || Some(holder(&s)).filter(|h| !h.is_empty()));
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("p1", "", "100m")));
    assert_eq!(wait_bound(&s, "p1"), "n1");

    let _second = start_scheduler(&s, "sched-b.log");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(holder(&s), a, "the standby must not take a valid lease");

    let _ = first.0.kill(); // SIGKILL: no chance to hand over
    let _ = first.0.wait();
    let b =
        wait_for("the second scheduler to take over", Duration::from_secs(20), || Some(holder(&s)).filter(|h| !h.is_empty() && *h != a));
    assert_ne!(a, b);
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("p2", "", "100m")));
    assert_eq!(wait_bound(&s, "p2"), "n1");
    let transitions = s.ok(KUBECTL, &["get", "lease", "-n", "kube-system", "kube-scheduler", "-o", "jsonpath={.spec.leaseTransitions}"]);
    assert_eq!(transitions, "1");
}

#[test]
fn a_broken_scheduler_config_fails_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sched.yaml");
    std::fs::write(&cfg, "profiles: [{schedulerName: x, plugins: {score: {enabled: [{name: NoSuchPlugin}]}}}]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["scheduler", "--kubeconfig", "/nonexistent", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown plugin \"NoSuchPlugin\""), "{err}");
}

fn labelled_pod(name: &str, app: &str, spec_extra: &str) -> String {
    pod_yaml(name, spec_extra, "10m").replacen(&format!("name: {name}\n"), &format!("name: {name}\n  labels: {{app: {app}}}\n"), 1)
}

#[test]
fn anti_affinity_and_topology_spread() {
    let s = Server::start();
    let nodes: Vec<String> =
        (1..=3).map(|i| node_yaml(&format!("z{i}"), &format!(", topology.kubernetes.io/zone: zone-{i}"), "")).collect();
    let out = s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&nodes.join("---\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Required anti-affinity on the hostname: one per node; the fourth stays Pending.
    let anti = "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      \
                - {labelSelector: {matchLabels: {app: solo}}, topologyKey: kubernetes.io/hostname}\n";
    let pods: Vec<String> = (0..4).map(|i| labelled_pod(&format!("solo-{i}"), "solo", anti)).collect();
    let out = s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pods.join("---\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut placed: Vec<String> = (0..3).map(|i| wait_bound(&s, &format!("solo-{i}"))).collect();
    placed.sort();
    assert_eq!(placed, ["z1", "z2", "z3"]);
    assert_eq!(
        failed_scheduling(&s, "solo-3"),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );

    // Spread over zones with maxSkew 1: six pods land two per zone.
    let spread = "  topologySpreadConstraints:\n  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, \
                  labelSelector: {matchLabels: {app: spread}}}\n";
    let pods: Vec<String> = (0..6).map(|i| labelled_pod(&format!("spread-{i}"), "spread", spread)).collect();
    let out = s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pods.join("---\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        *per_node.entry(wait_bound(&s, &format!("spread-{i}"))).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{per_node:?}");
}

#[test]
fn a_high_priority_pod_preempts_a_low_priority_one_on_a_full_cluster() {
    let s = Server::start();
    s.ok(KUBECTL, &["create", "priorityclass", "high", "--value=1000"]);
    let kc = s.kubeconfig.to_string_lossy().into_owned();
    // Simulated nodes finish pod deletions, which preemption waits for.
    let sim_args = ["sim", "--kubeconfig", &kc, "--nodes", "1", "--cpu", "1", "--memory", "4Gi", "--name-prefix", "full-"];
    let _sim = SkiffProc::start(&s, &sim_args, "sim.log");
    wait_for("the simulated node", Duration::from_secs(20), || {
        let out = s.kubectl(KUBECTL, &["get", "node", "full-0", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
        Some(()).filter(|_| String::from_utf8_lossy(&out.stdout) == "True").map(|_| String::new())
    });
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("low", "", "800m")));
    assert_eq!(wait_bound(&s, "low"), "full-0");
    let low_uid = s.ok(KUBECTL, &["get", "pod", "low", "-o", "jsonpath={.metadata.uid}"]);

    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("high", "  priorityClassName: high\n", "800m")));
    assert_eq!(s.ok(KUBECTL, &["get", "pod", "high", "-o", "jsonpath={.spec.priority}"]), "1000");
    assert_eq!(wait_bound(&s, "high"), "full-0");
    let gone = s.kubectl(KUBECTL, &["get", "pod", "low"]);
    assert!(!gone.status.success(), "the victim is deleted");
    let high_uid = s.ok(KUBECTL, &["get", "pod", "high", "-o", "jsonpath={.metadata.uid}"]);
    let sel = format!("involvedObject.uid={low_uid},reason=Preempted");
    let msg = s.ok(KUBECTL, &["get", "events", "--field-selector", &sel, "-o", "jsonpath={.items[0].message}"]);
    assert_eq!(msg, format!("Preempted by pod {high_uid} on node full-0"));

    // A pod that may not preempt waits, with upstream's explanation.
    let never = "  priorityClassName: high\n  preemptionPolicy: Never\n";
    s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(&pod_yaml("polite", never, "800m")));
    assert_eq!(
        failed_scheduling(&s, "polite"),
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
    );
}
