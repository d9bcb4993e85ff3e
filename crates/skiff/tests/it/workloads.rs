//! DaemonSets and StatefulSets end to end on simulated nodes, driven with the real kubectl: a
//! DaemonSet on every eligible node (skipping a tainted one, following a node that joins later and
//! leaving one that becomes ineligible), its rolling update, history and undo; a StatefulSet
//! created in order with each pod waiting for its predecessor to be Ready (watched), its claims,
//! scale-down from the highest ordinal, rolling update, history and undo.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use crate::harness::{KUBECTL_127, KUBECTL_133, Server, SkiffProc, wait_for};

fn json(s: &Server, kubectl: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(kubectl, &a)).expect("kubectl -o json")
}

/// `skiff sim` with `nodes` nodes named `<prefix>N`.
fn sim(s: &Server, prefix: &str, nodes: usize, extra: &[&str]) -> SkiffProc {
    let kc = s.kubeconfig.to_string_lossy().into_owned();
    let n = nodes.to_string();
    let mut args = vec!["sim", "--kubeconfig", &kc, "--nodes", &n, "--name-prefix", prefix];
    args.extend(extra);
    SkiffProc::start(s, &args, &format!("sim-{prefix}log"))
}

fn wait_ready_nodes(s: &Server, want: usize) {
    wait_for("simulated nodes Ready", Duration::from_secs(30), || {
        let out = s.kubectl(KUBECTL_133, &["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.split_whitespace().filter(|s| *s == "True").count() == want).then_some(())
    });
}

fn apply(s: &Server, kubectl: &str, yaml: &str) {
    let out = s.kubectl_stdin(kubectl, &["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn rollout_status(s: &Server, kubectl: &str, what: &str) -> String {
    s.ok(kubectl, &["rollout", "status", what, "--timeout=90s"])
}

/// Live (not terminating) pods of `selector`: name → (node, image).
fn pods(s: &Server, selector: &str) -> BTreeMap<String, (String, String)> {
    let list = json(s, KUBECTL_133, &["get", "pods", "-l", selector]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                (
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    p["spec"]["containers"][0]["image"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// The nodes the pods run on, sorted.
fn nodes_of(pods: &BTreeMap<String, (String, String)>) -> Vec<String> {
    let mut v: Vec<String> = pods.values().map(|(n, _)| n.clone()).collect();
    v.sort();
    v
}

fn images_of(pods: &BTreeMap<String, (String, String)>) -> BTreeSet<String> {
    pods.values().map(|(_, i)| i.clone()).collect()
}

/// (name, revision) of the revisions owned by `owner` (by the owner's selector, as kubectl lists them).
fn revisions(s: &Server, selector: &str) -> Vec<(String, i64)> {
    let list = json(s, KUBECTL_133, &["get", "controllerrevisions", "-l", selector]);
    let mut v: Vec<(String, i64)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["metadata"]["name"].as_str().unwrap().to_string(), r["revision"].as_i64().unwrap()))
        .collect();
    v.sort_by_key(|r| r.1);
    v
}

const DAEMONSET: &str = "\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 1}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - {name: agent, image: 'busybox:1'}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_taints_and_rolls_out_updates() {
    let s = Server::start();
    let k = KUBECTL_133;
    let _sims = sim(&s, "sim-", 2, &[]);
    let _tainted = sim(&s, "tainted-", 1, &["--node-taints", "dedicated=db:NoSchedule"]);
    wait_ready_nodes(&s, 3);

    apply(&s, k, DAEMONSET);
    let out = rollout_status(&s, k, "daemonset/agent");
    assert!(out.contains("successfully rolled out"), "{out}");
    let p = pods(&s, "app=agent");
    assert_eq!(nodes_of(&p), ["sim-0", "sim-1"], "one pod per untainted node: {p:?}");
    let ds = json(&s, k, &["get", "daemonset", "agent"]);
    let st = &ds["status"];
    assert_eq!(
        [
            &st["desiredNumberScheduled"],
            &st["currentNumberScheduled"],
            &st["numberReady"],
            &st["updatedNumberScheduled"],
            &st["numberAvailable"]
        ],
        [2, 2, 2, 2, 2]
    );
    assert_eq!(st["numberMisscheduled"], 0);
    assert_eq!(st["observedGeneration"], ds["metadata"]["generation"]);

    // The pods are placed by node affinity and bound by the scheduler, and carry the DaemonSet
    // tolerations and the revision label.
    let name = p.keys().next().unwrap();
    let pod = json(&s, k, &["get", "pod", name]);
    let node = pod["spec"]["nodeName"].as_str().unwrap();
    let term = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0];
    assert_eq!(term["matchFields"][0], serde_json::json!({"key": "metadata.name", "operator": "In", "values": [node]}));
    let tolerations: Vec<String> = pod["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}:{}", t["key"].as_str().unwrap_or(""), t["effect"].as_str().unwrap_or("")))
        .collect();
    for want in [
        "node.kubernetes.io/not-ready:NoExecute",
        "node.kubernetes.io/unreachable:NoExecute",
        "node.kubernetes.io/unschedulable:NoSchedule",
    ] {
        assert!(tolerations.iter().any(|t| t == want), "{want} missing from {tolerations:?}");
    }
    let hash = pod["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap().to_string();
    assert_eq!(revisions(&s, "app=agent"), [(format!("agent-{hash}"), 1)]);
    let ev = s.ok(
        k,
        &["get", "events", "--field-selector", "involvedObject.name=agent,reason=SuccessfulCreate", "-o", "jsonpath={.items[*].message}"],
    );
    assert!(ev.contains("Created pod: agent-"), "{ev}");

    // A node that joins later gets its pod.
    let _other = sim(&s, "other-", 1, &[]);
    wait_for("a pod on other-0", Duration::from_secs(30), || {
        nodes_of(&pods(&s, "app=agent")).contains(&"other-0".to_string()).then_some(())
    });
    rollout_status(&s, k, "daemonset/agent");
    assert_eq!(s.ok(k, &["get", "ds", "agent", "-o", "jsonpath={.status.desiredNumberScheduled}"]), "3");

    // Rolling update: every node gets the new template.
    s.ok(k, &["set", "image", "daemonset/agent", "agent=busybox:2"]);
    let out = rollout_status(&s, k, "daemonset/agent");
    assert!(out.contains("successfully rolled out"), "{out}");
    let p = pods(&s, "app=agent");
    assert_eq!(nodes_of(&p), ["other-0", "sim-0", "sim-1"]);
    assert_eq!(images_of(&p), BTreeSet::from(["busybox:2".to_string()]));
    let revs = revisions(&s, "app=agent");
    assert_eq!(revs.iter().map(|r| r.1).collect::<Vec<_>>(), [1, 2], "{revs:?}");

    // History and undo, which kubectl does from the ControllerRevisions.
    for kc in [KUBECTL_127, KUBECTL_133] {
        let hist = s.ok(kc, &["rollout", "history", "daemonset/agent"]);
        assert!(hist.lines().any(|l| l.starts_with("1 ")) && hist.lines().any(|l| l.starts_with("2 ")), "{hist}");
    }
    let one = s.ok(k, &["rollout", "history", "daemonset/agent", "--revision=1"]);
    assert!(one.contains("busybox:1"), "{one}");
    let out = s.ok(KUBECTL_127, &["rollout", "undo", "daemonset/agent"]);
    assert!(out.contains("rolled back"), "{out}");
    rollout_status(&s, KUBECTL_127, "daemonset/agent");
    let p = pods(&s, "app=agent");
    assert_eq!(images_of(&p), BTreeSet::from(["busybox:1".to_string()]), "{p:?}");
    assert_eq!(p.len(), 3);
    // The first revision is reused as revision 3.
    let revs = revisions(&s, "app=agent");
    assert_eq!(revs.last().unwrap(), &(format!("agent-{hash}"), 3), "{revs:?}");

    // A node that stops being eligible (a NoExecute taint the pods do not tolerate) loses its pod.
    s.ok(k, &["taint", "node", "other-0", "maintenance=yes:NoExecute"]);
    wait_for("the pod on other-0 to go", Duration::from_secs(30), || {
        (nodes_of(&pods(&s, "app=agent")) == ["sim-0", "sim-1"]).then_some(())
    });
    wait_for("desired 2", Duration::from_secs(10), || {
        (s.ok(k, &["get", "ds", "agent", "-o", "jsonpath={.status.desiredNumberScheduled}"]) == "2").then_some(())
    });
    // And a DaemonSet that tolerates the tainted node runs there too.
    let tolerant = DAEMONSET.replace("name: agent\n", "name: db-agent\n").replace("app: agent", "app: db-agent").replace(
        "      containers:",
        "      tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]\n      containers:",
    );
    apply(&s, k, &tolerant);
    rollout_status(&s, k, "daemonset/db-agent");
    assert_eq!(nodes_of(&pods(&s, "app=db-agent")), ["sim-0", "sim-1", "tainted-0"]);
}

const STATEFULSET: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: 'nginx:1'
        volumeMounts: [{name: www, mountPath: /usr/share/nginx/html}]
  volumeClaimTemplates:
  - metadata: {name: www}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
";

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A pod appeared; the Ready pods at that moment.
    Created(String, BTreeSet<String>),
    /// A pod began terminating (or vanished).
    Deleting(String),
}

fn pod_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Records, from a watch on `app=web` pods, when each pod first appears (and which pods were Ready
/// then) and when each starts going away, in watch order.
async fn watch_pods(s: &Server) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let api: Api<Pod> = Api::namespaced(s.kube_client().await, "default");
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready: BTreeMap<String, bool> = BTreeMap::new();
        let mut deleting: BTreeSet<String> = BTreeSet::new();
        let mut ready_tx = Some(ready_tx);
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default().labels("app=web")).default_backoff());
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { continue };
            let (pod, gone) = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
                watcher::Event::Delete(p) => (p, true),
                watcher::Event::InitDone => {
                    ready_tx.take().map(|t| t.send(()));
                    continue;
                }
                watcher::Event::Init => continue,
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let mut log = l.lock().unwrap();
            if !ready.contains_key(&name) && !gone {
                let now_ready = ready.iter().filter(|(_, r)| **r).map(|(n, _)| n.clone()).collect();
                log.push(Seen::Created(name.clone(), now_ready));
            }
            if (gone || pod.metadata.deletion_timestamp.is_some()) && deleting.insert(name.clone()) {
                log.push(Seen::Deleting(name.clone()));
            }
            if gone {
                ready.remove(&name);
                deleting.remove(&name);
            } else {
                ready.insert(name, pod_ready(&pod) && pod.metadata.deletion_timestamp.is_none());
            }
        }
    });
    let _ = ready_rx.await;
    (log, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_keeps_claims_and_rolls_out_updates() {
    let s = Server::start();
    let k = KUBECTL_133;
    // Pods take a moment to start, so a controller that did not wait would be caught.
    let _sims = sim(&s, "sim-", 2, &["--run-delay-ms", "300"]);
    wait_ready_nodes(&s, 2);
    let (log, watch) = watch_pods(&s).await;

    apply(&s, k, STATEFULSET);
    let out = rollout_status(&s, k, "statefulset/web");
    assert!(out.contains("3 pods at revision") || out.contains("partitioned roll out complete"), "{out}");
    let created: Vec<Seen> = log.lock().unwrap().clone();
    let ready_at = |n: &str| {
        created
            .iter()
            .find_map(|e| match e {
                Seen::Created(p, r) if p == n => Some(r.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{n} never seen: {created:?}"))
    };
    let order: Vec<&str> = created
        .iter()
        .filter_map(|e| match e {
            Seen::Created(p, _) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["web-0", "web-1", "web-2"]);
    assert_eq!(ready_at("web-0"), BTreeSet::new());
    assert_eq!(ready_at("web-1"), BTreeSet::from(["web-0".to_string()]), "web-1 was created only after web-0 was Ready");
    assert_eq!(ready_at("web-2"), BTreeSet::from(["web-0".to_string(), "web-1".to_string()]));

    // Stable identity and claims.
    let sts = json(&s, k, &["get", "statefulset", "web"]);
    let st = &sts["status"];
    assert_eq!(
        [&st["replicas"], &st["readyReplicas"], &st["currentReplicas"], &st["updatedReplicas"], &st["availableReplicas"]],
        [3, 3, 3, 3, 3]
    );
    assert_eq!(st["observedGeneration"], sts["metadata"]["generation"]);
    assert_eq!(st["currentRevision"], st["updateRevision"]);
    let first_rev = st["updateRevision"].as_str().unwrap().to_string();
    let pod = json(&s, k, &["get", "pod", "web-1"]);
    assert_eq!(pod["spec"]["hostname"], "web-1");
    assert_eq!(pod["spec"]["subdomain"], "web");
    assert_eq!(pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], "web-1");
    assert_eq!(pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"], "1");
    assert_eq!(pod["metadata"]["labels"]["controller-revision-hash"], first_rev.as_str());
    let vol = pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "www").cloned().unwrap();
    assert_eq!(vol["persistentVolumeClaim"]["claimName"], "www-web-1");
    let claims = s.ok(k, &["get", "pvc", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(claims, "www-web-0 www-web-1 www-web-2");
    let ev = s.ok(
        k,
        &["get", "events", "--field-selector", "involvedObject.name=web,reason=SuccessfulCreate", "-o", "jsonpath={.items[*].message}"],
    );
    assert!(ev.contains("create Pod web-0 in StatefulSet web successful"), "{ev}");
    assert!(ev.contains("create Claim www-web-0 Pod web-0 in StatefulSet web success"), "{ev}");

    // Scale down: highest ordinal first, claims kept.
    let mark = log.lock().unwrap().len();
    s.ok(k, &["scale", "statefulset/web", "--replicas=1"]);
    wait_for("1 pod", Duration::from_secs(30), || (pods(&s, "app=web").len() == 1).then_some(()));
    wait_for("web-1 gone", Duration::from_secs(30), || {
        log.lock().unwrap()[mark..].iter().filter(|e| matches!(e, Seen::Deleting(_))).count().ge(&2).then_some(())
    });
    let deletions: Vec<Seen> = log.lock().unwrap()[mark..].iter().filter(|e| matches!(e, Seen::Deleting(_))).cloned().collect();
    assert_eq!(deletions, [Seen::Deleting("web-2".into()), Seen::Deleting("web-1".into())]);
    assert_eq!(pods(&s, "app=web").keys().collect::<Vec<_>>(), ["web-0"]);
    let claims = s.ok(k, &["get", "pvc", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(claims, "www-web-0 www-web-1 www-web-2", "claims are retained on scale-down");
    s.ok(k, &["scale", "statefulset/web", "--replicas=3"]);
    rollout_status(&s, k, "statefulset/web");

    // Rolling update, highest ordinal first, then history and undo from the ControllerRevisions.
    let mark = log.lock().unwrap().len();
    s.ok(k, &["set", "image", "statefulset/web", "nginx=nginx:2"]);
    let out = rollout_status(&s, k, "statefulset/web");
    assert!(out.contains("partitioned roll out complete") || out.contains("rolling update complete"), "{out}");
    let p = pods(&s, "app=web");
    assert_eq!(images_of(&p), BTreeSet::from(["nginx:2".to_string()]), "{p:?}");
    let deletions: Vec<Seen> = log.lock().unwrap()[mark..].iter().filter(|e| matches!(e, Seen::Deleting(_))).cloned().collect();
    assert_eq!(deletions, ["web-2", "web-1", "web-0"].map(|n| Seen::Deleting(n.into())));
    let st = json(&s, k, &["get", "statefulset", "web"])["status"].clone();
    assert_ne!(st["updateRevision"], first_rev.as_str());
    wait_for("currentRevision to follow", Duration::from_secs(10), || {
        let st = json(&s, k, &["get", "statefulset", "web"])["status"].clone();
        (st["currentRevision"] == st["updateRevision"] && st["updatedReplicas"] == 3).then_some(())
    });
    assert_eq!(revisions(&s, "app=web").len(), 2);
    for kc in [KUBECTL_127, KUBECTL_133] {
        let hist = s.ok(kc, &["rollout", "history", "statefulset/web"]);
        assert!(hist.lines().any(|l| l.starts_with("1 ")) && hist.lines().any(|l| l.starts_with("2 ")), "{hist}");
    }
    let out = s.ok(KUBECTL_127, &["rollout", "undo", "statefulset/web"]);
    assert!(out.contains("rolled back"), "{out}");
    rollout_status(&s, KUBECTL_127, "statefulset/web");
    wait_for("rolled back pods", Duration::from_secs(30), || {
        let p = pods(&s, "app=web");
        (p.len() == 3 && images_of(&p) == BTreeSet::from(["nginx:1".to_string()])).then_some(())
    });
    wait_for("the first revision current again", Duration::from_secs(10), || {
        let st = json(&s, k, &["get", "statefulset", "web"])["status"].clone();
        (st["currentRevision"] == first_rev.as_str() && st["updateRevision"] == first_rev.as_str()).then_some(())
    });
    let revs = revisions(&s, "app=web");
    assert_eq!(revs.last().unwrap(), &(first_rev.clone(), 3), "{revs:?}");
    watch.abort();
}
