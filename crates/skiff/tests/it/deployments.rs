//! Deployments and ReplicaSets end to end on simulated nodes, driven with the real kubectl: a
//! 10-replica rollout, a rolling update with maxUnavailable=0 that never drops below 10 available
//! pods (watched throughout), rollout history/undo/pause/resume/restart, scaling, and a
//! ReplicaSet that adopts orphans and replaces deleted pods without ever over-creating.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::Value;

use crate::harness::{KUBECTL_127, KUBECTL_133, Server, SkiffProc, wait_for};

fn json(s: &Server, kubectl: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(kubectl, &a)).expect("kubectl -o json")
}

fn start_sim(s: &Server, nodes: &str) -> SkiffProc {
    let kc = s.kubeconfig.to_string_lossy().into_owned();
    let sim = SkiffProc::start(s, &["sim", "--kubeconfig", &kc, "--nodes", nodes, "--name-prefix", "sim-"], "sim.log");
    let want: usize = nodes.parse().unwrap();
    wait_for("simulated nodes Ready", Duration::from_secs(30), || {
        let out = s.kubectl(KUBECTL_133, &["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.split_whitespace().filter(|s| *s == "True").count() == want).then_some(())
    });
    sim
}

/// Pods of `app` that are Ready and not being deleted, as a client watching the API sees them.
fn available(pods: &[Arc<Pod>]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

/// Watches `app=<app>` pods and records, while armed, the lowest available count and the highest
/// number of pods not being deleted.
struct MinAvailable {
    armed: Arc<AtomicBool>,
    min: Arc<AtomicUsize>,
    max_live: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MinAvailable {
    async fn start(s: &Server, app: &str) -> MinAvailable {
        let client = s.kube_client().await;
        let api: Api<Pod> = Api::namespaced(client, "default");
        let (store, writer) = reflector::store();
        let (armed, min, max_live) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(usize::MAX)), Arc::new(AtomicUsize::new(0)));
        let (a, m, x) = (armed.clone(), min.clone(), max_live.clone());
        let cfg = watcher::Config::default().labels(&format!("app={app}"));
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, cfg).default_backoff().reflect(writer));
            while let Some(ev) = events.next().await {
                if ev.is_ok() && a.load(Ordering::SeqCst) && store.wait_until_ready().await.is_ok() {
                    let state = store.state();
                    m.fetch_min(available(&state), Ordering::SeqCst);
                    x.fetch_max(state.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count(), Ordering::SeqCst);
                }
            }
        });
        MinAvailable { armed, min, max_live, task }
    }

    fn arm(&self) {
        self.min.store(usize::MAX, Ordering::SeqCst);
        self.max_live.store(0, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn disarm(&self) -> usize {
        self.armed.store(false, Ordering::SeqCst);
        self.min.load(Ordering::SeqCst)
    }
}

impl Drop for MinAvailable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rollout_status(s: &Server, kubectl: &str, what: &str) -> String {
    s.ok(kubectl, &["rollout", "status", what, "--timeout=90s"])
}

fn replicasets(s: &Server) -> Vec<(String, i64, String)> {
    let list = json(s, KUBECTL_133, &["get", "rs", "-l", "app=web"]);
    let mut v: Vec<(String, i64, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["name"].as_str().unwrap().to_string(),
                rs["spec"]["replicas"].as_i64().unwrap(),
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.2.cmp(&b.2));
    v
}

fn running_pods(s: &Server, selector: &str) -> usize {
    let list = json(s, KUBECTL_133, &["get", "pods", "-l", selector, "--field-selector=status.phase=Running"]);
    list["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollout_update_undo_pause_and_scale() {
    let s = Server::start();
    let _sim = start_sim(&s, "3");
    let k = KUBECTL_133;

    s.ok(k, &["create", "deployment", "web", "--image=busybox:1", "--replicas=10"]);
    let out = rollout_status(&s, k, "deployment/web");
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(running_pods(&s, "app=web"), 10);
    let d = json(&s, k, &["get", "deployment", "web"]);
    assert_eq!(d["status"]["availableReplicas"], 10);
    assert_eq!(d["status"]["updatedReplicas"], 10);
    assert_eq!(d["status"]["observedGeneration"], d["metadata"]["generation"]);
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let conds: Vec<(String, String, String)> = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap().into(), c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into()))
        .collect();
    assert!(conds.contains(&("Available".into(), "True".into(), "MinimumReplicasAvailable".into())), "{conds:?}");
    assert!(conds.contains(&("Progressing".into(), "True".into(), "NewReplicaSetAvailable".into())), "{conds:?}");
    let rss = replicasets(&s);
    assert_eq!(rss.len(), 1, "{rss:?}");
    let first_rs = rss[0].0.clone();
    let hash = s.ok(k, &["get", "rs", &first_rs, "-o", "jsonpath={.metadata.labels.pod-template-hash}"]);
    assert_eq!(first_rs, format!("web-{hash}"));
    // The Deployment's events name the ReplicaSet it scaled, as upstream's.
    let ev = s.ok(
        k,
        &["get", "events", "--field-selector", "involvedObject.name=web,reason=ScalingReplicaSet", "-o", "jsonpath={.items[0].message}"],
    );
    assert_eq!(ev, format!("Scaled up replica set {first_rs} from 0 to 10"));

    // Rolling update that must never dip below 10 available pods.
    s.ok(k, &["patch", "deployment", "web", "-p", r#"{"spec":{"strategy":{"rollingUpdate":{"maxUnavailable":0,"maxSurge":2}}}}"#]);
    let watch = MinAvailable::start(&s, "web").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    watch.arm();
    s.ok(k, &["set", "image", "deployment/web", "busybox=busybox:2"]);
    let out = rollout_status(&s, k, "deployment/web");
    assert!(out.contains("successfully rolled out"), "{out}");
    let min = watch.disarm();
    assert!(min >= 10 && min != usize::MAX, "available pods dropped to {min} during a maxUnavailable=0 rollout");
    let rss = replicasets(&s);
    assert_eq!(rss.iter().map(|r| (r.1, r.2.as_str())).collect::<Vec<_>>(), vec![(0, "1"), (10, "2")], "{rss:?}");
    assert_eq!(running_pods(&s, "app=web"), 10);

    // History and undo (kubectl 1.27 too: undo is done client-side from the ReplicaSets).
    let hist = s.ok(KUBECTL_127, &["rollout", "history", "deployment/web"]);
    assert!(hist.contains("REVISION") && hist.lines().any(|l| l.starts_with("1 ")) && hist.lines().any(|l| l.starts_with("2 ")), "{hist}");
    let out = s.ok(KUBECTL_127, &["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back"), "{out}");
    rollout_status(&s, KUBECTL_127, "deployment/web");
    let img = s.ok(k, &["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]);
    assert_eq!(img, "busybox:1");
    let rss = replicasets(&s);
    // The first ReplicaSet is reused under revision 3.
    assert_eq!(rss.last().map(|r| (r.0.as_str(), r.1, r.2.as_str())), Some((first_rs.as_str(), 10, "3")), "{rss:?}");
    assert_eq!(rss.len(), 2);

    // Scale down and up.
    s.ok(k, &["scale", "deployment/web", "--replicas=4"]);
    wait_for("4 pods", Duration::from_secs(30), || (running_pods(&s, "app=web") == 4).then_some(()));
    s.ok(k, &["scale", "deployment/web", "--replicas=6"]);
    rollout_status(&s, k, "deployment/web");
    assert_eq!(running_pods(&s, "app=web"), 6);

    // Paused: template changes wait; resumed: they roll out.
    s.ok(k, &["rollout", "pause", "deployment/web"]);
    s.ok(k, &["set", "image", "deployment/web", "busybox=busybox:3"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replicasets(&s).len(), 2, "no new ReplicaSet while paused");
    let reason = s.ok(k, &["get", "deployment", "web", "-o", "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}"]);
    assert_eq!(reason, "DeploymentPaused");
    s.ok(k, &["rollout", "resume", "deployment/web"]);
    rollout_status(&s, k, "deployment/web");
    let rss = replicasets(&s);
    assert_eq!(rss.len(), 3, "{rss:?}");
    assert_eq!(rss.last().unwrap().1, 6);

    // restart: a new template (annotation), a new ReplicaSet.
    s.ok(k, &["rollout", "restart", "deployment/web"]);
    rollout_status(&s, k, "deployment/web");
    assert_eq!(replicasets(&s).len(), 4);
    assert_eq!(running_pods(&s, "app=web"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_scales_old_pods_away_before_new_ones_start() {
    let s = Server::start();
    let _sim = start_sim(&s, "2");
    let k = KUBECTL_133;
    s.ok(k, &["create", "deployment", "rec", "--image=busybox:1", "--replicas=3"]);
    s.ok(k, &["patch", "deployment", "rec", "-p", r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#]);
    rollout_status(&s, k, "deployment/rec");
    s.ok(k, &["set", "image", "deployment/rec", "busybox=busybox:2"]);
    rollout_status(&s, k, "deployment/rec");
    let pods = json(&s, k, &["get", "pods", "-l", "app=rec"]);
    let images: Vec<&str> =
        pods["items"].as_array().unwrap().iter().map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap()).collect();
    assert_eq!(images, vec!["busybox:2"; 3]);
    // Recreate never runs old and new pods together: the new ReplicaSet was created only after the
    // old one reached zero, so its Scaling event comes after the old one's scale-down.
    let events = json(&s, k, &["get", "events", "--field-selector", "involvedObject.name=rec,reason=ScalingReplicaSet"]);
    let msgs: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    let down = msgs.iter().position(|m| m.starts_with("Scaled down")).expect("scale-down event");
    assert!(msgs[down..].iter().any(|m| m.starts_with("Scaled up") && m.ends_with("from 0 to 3")), "{msgs:?}");
}

#[test]
fn replicaset_adopts_orphans_replaces_deleted_pods_and_never_overcreates() {
    let s = Server::start_with(&["--disable-scheduler"]);
    let k = KUBECTL_133;
    // An orphan pod that matches the selector is adopted instead of a new one being created.
    let orphan =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: orphan, labels: {app: rs}}\nspec: {containers: [{name: c, image: busybox}]}\n";
    s.kubectl_stdin(k, &["create", "-f", "-"], Some(orphan));
    let rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: rs}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: rs}}\n  \
              template:\n    metadata: {labels: {app: rs}}\n    spec: {containers: [{name: c, image: busybox}]}\n";
    s.kubectl_stdin(k, &["create", "-f", "-"], Some(rs));
    let count = || json(&s, k, &["get", "pods", "-l", "app=rs"])["items"].as_array().unwrap().len();
    wait_for("3 pods", Duration::from_secs(20), || (count() == 3).then_some(()));
    let owner = s.ok(k, &["get", "pod", "orphan", "-o", "jsonpath={.metadata.ownerReferences[0].name}"]);
    assert_eq!(owner, "rs");
    let st = json(&s, k, &["get", "rs", "rs"]);
    assert_eq!(st["status"]["replicas"], 3);
    assert_eq!(st["status"]["observedGeneration"], 1);
    // Deleted pods are replaced; a settled ReplicaSet stays at exactly 3 for a while.
    s.ok(k, &["delete", "pod", "orphan", "--wait=false"]);
    wait_for("replacement", Duration::from_secs(20), || {
        let names = s.ok(k, &["get", "pods", "-l", "app=rs", "-o", "jsonpath={.items[*].metadata.name}"]);
        (!names.contains("orphan") && names.split_whitespace().count() == 3).then_some(())
    });
    for _ in 0..10 {
        assert_eq!(count(), 3);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A pod whose labels stop matching is released (and replaced).
    let victim = s.ok(k, &["get", "pods", "-l", "app=rs", "-o", "jsonpath={.items[0].metadata.name}"]);
    s.ok(k, &["label", "pod", &victim, "app=other", "--overwrite"]);
    wait_for("release", Duration::from_secs(20), || {
        let refs = s.ok(k, &["get", "pod", &victim, "-o", "jsonpath={.metadata.ownerReferences}"]);
        ((refs.is_empty() || refs == "[]") && count() == 3).then_some(())
    });
    // Scale to zero deletes them; events say so.
    s.ok(k, &["scale", "rs", "rs", "--replicas=0"]);
    wait_for("0 pods", Duration::from_secs(20), || (count() == 0).then_some(()));
    let ev = s.ok(
        k,
        &["get", "events", "--field-selector", "involvedObject.name=rs,reason=SuccessfulDelete", "-o", "jsonpath={.items[*].message}"],
    );
    assert!(ev.contains("Deleted pod: "), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_controller_manager_mid_rollout_creates_no_extra_pods() {
    let s = Server::start_with(&["--disable-controller-manager"]);
    let kc = s.kubeconfig.to_string_lossy().into_owned();
    let cm_args = ["controller-manager", "--kubeconfig", &kc, "--controllers-leader-elect=false"];
    let mut cm = SkiffProc::start(&s, &cm_args, "cm-1.log");
    // Pods take a moment to start, so the rollout is still going when the controllers restart.
    let sim_args = ["sim", "--kubeconfig", &kc, "--nodes", "3", "--name-prefix", "sim-", "--run-delay-ms", "400"];
    let _sim = SkiffProc::start(&s, &sim_args, "sim.log");
    let k = KUBECTL_133;
    wait_for("nodes", Duration::from_secs(30), || (s.ok(k, &["get", "nodes", "-o", "name"]).lines().count() == 3).then_some(()));
    s.ok(k, &["create", "deployment", "web", "--image=busybox:1", "--replicas=10"]);
    s.ok(k, &["patch", "deployment", "web", "-p", r#"{"spec":{"strategy":{"rollingUpdate":{"maxUnavailable":0,"maxSurge":2}}}}"#]);
    rollout_status(&s, k, "deployment/web");

    let watch = MinAvailable::start(&s, "web").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    watch.arm();
    s.ok(k, &["set", "image", "deployment/web", "busybox=busybox:2"]);
    for i in 2..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = cm.0.kill();
        let _ = cm.0.wait();
        cm = SkiffProc::start(&s, &cm_args, &format!("cm-{i}.log"));
    }
    let out = rollout_status(&s, k, "deployment/web");
    assert!(out.contains("successfully rolled out"), "{out}");
    let (min, max) = (watch.disarm(), watch.max_live.load(Ordering::SeqCst));
    assert!(min >= 10 && min != usize::MAX, "available dropped to {min}");
    assert!(max <= 12, "{max} pods at once: more than replicas + maxSurge");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running_pods(&s, "app=web"), 10);
    assert_eq!(json(&s, k, &["get", "pods", "-l", "app=web"])["items"].as_array().unwrap().len(), 10, "no pod too many after settling");
    drop(cm);
}
