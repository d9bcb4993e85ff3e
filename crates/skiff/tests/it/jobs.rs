//! Jobs, CronJobs, TTL-after-finished and the pod GC end to end, driven with the real kubectl.
//! No kubelet exists: pods run on `skiff sim` nodes, whose pods exit when their annotations ask
//! (`sim.skiff.dev/exit-after-ms`, `sim.skiff.dev/exit-code`), or get their status written by
//! the test through `pods/status`, as a kubelet would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};

use crate::harness::{KUBECTL_127, KUBECTL_133, Server, SkiffProc, wait_for};

fn get_json(s: &Server, kubectl: &str, args: &[&str]) -> Value {
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
        (text.split_whitespace().filter(|s| *s == "True").count() >= want).then_some(())
    });
    sim
}

/// A Job whose pods exit `exit_after_ms` after starting with `code` (never when None).
fn job_yaml(name: &str, spec: &str, exit: Option<(u64, i32)>) -> String {
    let annotations = match exit {
        Some((ms, code)) => format!("{{sim.skiff.dev/exit-after-ms: \"{ms}\", sim.skiff.dev/exit-code: \"{code}\"}}"),
        None => "{}".into(),
    };
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{spec}  template:\n    metadata: {{annotations: {annotations}}}\n    \
         spec: {{restartPolicy: Never, containers: [{{name: main, image: busybox}}]}}\n"
    )
}

fn create(s: &Server, yaml: &str) {
    let out = s.kubectl_stdin(KUBECTL_133, &["create", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "create failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

fn conditions(job: &Value) -> Vec<(String, String, String, String)> {
    job["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let f = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    (f("type"), f("status"), f("reason"), f("message"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn job_pods(s: &Server, job: &str) -> Vec<Value> {
    get_json(s, KUBECTL_133, &["get", "pods", "-l", &format!("batch.kubernetes.io/job-name={job}")])["items"].as_array().unwrap().clone()
}

/// The pod no longer carries the Job tracking finalizer (the list may be left empty).
fn untracked(pod: &Value) -> bool {
    pod["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())
}

fn event_reasons(s: &Server, name: &str) -> Vec<String> {
    let evs = get_json(s, KUBECTL_133, &["get", "events", "--field-selector", &format!("involvedObject.name={name}")]);
    evs["items"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap_or("").to_string()).collect()
}

/// Watches a Job's pods and records the most that were active (not finished, not being
/// deleted) at any one time, as a client watching the API sees them.
struct MaxActive {
    max: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MaxActive {
    async fn start(s: &Server, job: &str) -> MaxActive {
        let api: Api<Pod> = Api::namespaced(s.kube_client().await, "default");
        let (store, writer) = reflector::store();
        let max = Arc::new(AtomicUsize::new(0));
        let m = max.clone();
        let cfg = watcher::Config::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
        let ready = store.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, cfg).default_backoff().reflect(writer));
            while let Some(ev) = events.next().await {
                // Never await readiness here: this loop is what makes the store ready.
                if ev.is_ok() {
                    let active = store
                        .state()
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
                        .count();
                    m.fetch_max(active, Ordering::SeqCst);
                }
            }
        });
        // Watching before the Job exists, or its first pods could come and go unseen.
        tokio::time::timeout(Duration::from_secs(20), ready.wait_until_ready()).await.expect("pod watch ready").unwrap();
        MaxActive { max, task }
    }
}

impl Drop for MaxActive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_with_parallelism_indexes_and_ttl() {
    let s = Server::start();
    let _sim = start_sim(&s, "2");
    let k = KUBECTL_133;

    // completions=5, parallelism=2: five successes, never more than two at once.
    let watch = MaxActive::start(&s, "pi").await;
    create(&s, &job_yaml("pi", "  completions: 5\n  parallelism: 2\n", Some((700, 0))));
    let out = s.ok(k, &["wait", "--for=condition=complete", "job/pi", "--timeout=90s"]);
    assert!(out.contains("condition met"), "{out}");
    let out = s.ok(KUBECTL_127, &["wait", "--for=condition=complete", "job/pi", "--timeout=10s"]);
    assert!(out.contains("condition met"), "{out}");
    let max = watch.max.load(Ordering::SeqCst);
    assert_eq!(max, 2, "at most parallelism=2 pods may be active, and two should have been");
    let job = get_json(&s, k, &["get", "job", "pi"]);
    let st = &job["status"];
    assert_eq!(st["succeeded"], 5, "{st}");
    assert!(st["failed"].is_null(), "{st}");
    assert!(st["active"].is_null(), "{st}");
    assert_eq!((st["ready"].clone(), st["terminating"].clone()), (json!(0), json!(0)), "{st}");
    assert_eq!(st["uncountedTerminatedPods"], json!({}), "{st}");
    assert!(st["startTime"].is_string() && st["completionTime"].is_string(), "{st}");
    let conds = conditions(&job);
    let msg = "Reached expected number of succeeded pods";
    assert_eq!(
        conds.iter().map(|c| (c.0.as_str(), c.1.as_str(), c.2.as_str(), c.3.as_str())).collect::<Vec<_>>(),
        [("SuccessCriteriaMet", "True", "CompletionsReached", msg), ("Complete", "True", "CompletionsReached", msg)],
    );
    // The selector and pod labels are upstream's, and every pod was counted and released.
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_eq!(job["spec"]["selector"]["matchLabels"], json!({"batch.kubernetes.io/controller-uid": uid}));
    let pods = job_pods(&s, "pi");
    assert_eq!(pods.len(), 5);
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert!(untracked(p), "tracking finalizer left on {}", p["metadata"]["name"]);
        let l = &p["metadata"]["labels"];
        assert_eq!((l["batch.kubernetes.io/controller-uid"].as_str(), l["controller-uid"].as_str()), (Some(uid), Some(uid)));
        assert_eq!((l["batch.kubernetes.io/job-name"].as_str(), l["job-name"].as_str()), (Some("pi"), Some("pi")));
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert!(p["metadata"]["name"].as_str().unwrap().starts_with("pi-"));
    }
    let table = s.ok(k, &["get", "job", "pi"]);
    assert!(table.contains("Complete") && table.contains("5/5"), "{table}");
    let reasons = event_reasons(&s, "pi");
    assert_eq!(reasons.iter().filter(|r| *r == "SuccessfulCreate").count(), 5, "{reasons:?}");
    assert!(reasons.contains(&"Completed".to_string()), "{reasons:?}");

    // Indexed: one success per index, with the index in annotation, label, hostname and env.
    create(&s, &job_yaml("idx", "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n", Some((200, 0))));
    s.ok(k, &["wait", "--for=condition=complete", "job/idx", "--timeout=90s"]);
    let job = get_json(&s, k, &["get", "job", "idx"]);
    assert_eq!(job["status"]["completedIndexes"], "0-2");
    assert_eq!(job["status"]["succeeded"], 3);
    let mut seen: Vec<i64> = job_pods(&s, "idx")
        .iter()
        .map(|p| {
            let ix = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap().to_string();
            assert_eq!(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"].as_str(), Some(ix.as_str()));
            assert_eq!(p["spec"]["hostname"].as_str(), Some(format!("idx-{ix}").as_str()));
            assert!(p["metadata"]["name"].as_str().unwrap().starts_with(&format!("idx-{ix}-")));
            let env = &p["spec"]["containers"][0]["env"][0];
            assert_eq!(env["name"], "JOB_COMPLETION_INDEX");
            assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.annotations['batch.kubernetes.io/job-completion-index']");
            ix.parse().unwrap()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [0, 1, 2]);

    // A work queue (parallelism, no completions): done when one pod succeeded and none runs.
    create(&s, &job_yaml("queue", "  parallelism: 2\n", Some((200, 0))));
    s.ok(k, &["wait", "--for=condition=complete", "job/queue", "--timeout=90s"]);
    let job = get_json(&s, k, &["get", "job", "queue"]);
    assert!(job["spec"]["completions"].is_null(), "parallelism alone leaves completions unset");
    assert_eq!(job["status"]["succeeded"], 2);

    // ttlSecondsAfterFinished: the finished Job goes, and its pods with it.
    create(&s, &job_yaml("short", "  ttlSecondsAfterFinished: 1\n", Some((100, 0))));
    wait_for("the TTL controller to delete job/short", Duration::from_secs(30), || {
        let out = s.kubectl(k, &["get", "job", "short"]);
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")).then_some(())
    });
    wait_for("job/short's pods to go", Duration::from_secs(30), || job_pods(&s, "short").is_empty().then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_fail_at_backoff_limit_and_deadline_and_suspend() {
    let s = Server::start_with(&["--job-pod-failure-backoff=1s"]);
    let _sim = start_sim(&s, "1");
    let k = KUBECTL_133;

    // Every pod fails: three pods (the first and two retries, 1 s then 2 s apart), then Failed.
    create(&s, &job_yaml("fail", "  backoffLimit: 2\n", Some((100, 1))));
    let out = s.ok(KUBECTL_127, &["wait", "--for=condition=failed", "job/fail", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    let job = get_json(&s, k, &["get", "job", "fail"]);
    assert_eq!(job["status"]["failed"], 3, "{}", job["status"]);
    assert!(job["status"]["succeeded"].is_null());
    assert!(job["status"]["completionTime"].is_null(), "only a Complete Job has a completionTime");
    let conds = conditions(&job);
    let msg = "Job has reached the specified backoff limit";
    assert_eq!(
        conds.iter().map(|c| (c.0.as_str(), c.2.as_str(), c.3.as_str())).collect::<Vec<_>>(),
        [("FailureTarget", "BackoffLimitExceeded", msg), ("Failed", "BackoffLimitExceeded", msg)],
    );
    let pods = job_pods(&s, "fail");
    assert_eq!(pods.len(), 3, "no pod after the limit");
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Failed" && untracked(p)), "{pods:?}");
    let mut created: Vec<k8s_openapi::jiff::Timestamp> =
        pods.iter().map(|p| p["metadata"]["creationTimestamp"].as_str().unwrap().parse().unwrap()).collect();
    created.sort();
    let spread = created[2].duration_since(created[0]).as_secs();
    assert!(spread >= 2, "re-creations waited 1 s and 2 s, yet all came within {spread} s");
    let reasons = event_reasons(&s, "fail");
    assert!(reasons.contains(&"BackoffLimitExceeded".to_string()), "{reasons:?}");
    // Counts survive pod deletion: the finalizers kept every failure until it was counted.
    s.ok(k, &["delete", "pods", "-l", "batch.kubernetes.io/job-name=fail"]);
    assert_eq!(get_json(&s, k, &["get", "job", "fail"])["status"]["failed"], 3);

    // restartPolicy OnFailure: failures are container restarts, counted against the same limit.
    let crash = job_yaml("crash", "  backoffLimit: 2\n", Some((150, 2))).replace("restartPolicy: Never", "restartPolicy: OnFailure");
    create(&s, &crash);
    s.ok(k, &["wait", "--for=condition=failed", "job/crash", "--timeout=60s"]);
    let job = get_json(&s, k, &["get", "job", "crash"]);
    assert_eq!(conditions(&job).last().map(|c| (c.0.clone(), c.2.clone())), Some(("Failed".into(), "BackoffLimitExceeded".into())));
    assert_eq!(job["status"]["failed"], 1, "one pod, stopped after its second restart");

    // activeDeadlineSeconds: pods that never finish are stopped and the Job fails.
    create(&s, &job_yaml("slow", "  activeDeadlineSeconds: 2\n  parallelism: 2\n  completions: 4\n", None));
    s.ok(k, &["wait", "--for=condition=failed", "job/slow", "--timeout=60s"]);
    let job = get_json(&s, k, &["get", "job", "slow"]);
    let failed = conditions(&job).into_iter().find(|c| c.0 == "Failed").unwrap();
    assert_eq!((failed.2.as_str(), failed.3.as_str()), ("DeadlineExceeded", "Job was active longer than specified deadline"));
    assert_eq!(job["status"]["failed"], 2, "the two stopped pods count as failed");
    wait_for("job/slow's pods to go", Duration::from_secs(30), || job_pods(&s, "slow").is_empty().then_some(()));

    // suspend: no pods until resumed.
    create(&s, &job_yaml("later", "  suspend: true\n  completions: 2\n", Some((100, 0))));
    wait_for("Suspended condition", Duration::from_secs(20), || {
        let job = get_json(&s, k, &["get", "job", "later"]);
        conditions(&job).iter().any(|c| c.0 == "Suspended" && c.1 == "True" && c.2 == "JobSuspended").then_some(())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(job_pods(&s, "later").is_empty());
    let job = get_json(&s, k, &["get", "job", "later"]);
    assert!(job["status"]["startTime"].is_null(), "a suspended Job has not started");
    s.ok(k, &["patch", "job", "later", "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    s.ok(k, &["wait", "--for=condition=complete", "job/later", "--timeout=60s"]);
    let job = get_json(&s, k, &["get", "job", "later"]);
    assert!(conditions(&job).iter().any(|c| c.0 == "Suspended" && c.1 == "False" && c.2 == "JobResumed"));
    let reasons = event_reasons(&s, "later");
    assert!(reasons.contains(&"Suspended".to_string()) && reasons.contains(&"Resumed".to_string()), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_runs_on_schedule_and_from_kubectl() {
    let s = Server::start();
    let _sim = start_sim(&s, "1");
    let k = KUBECTL_133;
    let cj = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n  schedule: \"* * * * *\"\n  jobTemplate:\n    spec:\n      \
              template:\n        metadata: {annotations: {sim.skiff.dev/exit-after-ms: \"200\"}}\n        \
              spec: {restartPolicy: OnFailure, containers: [{name: main, image: busybox}]}\n";
    create(&s, cj);

    // kubectl create job --from=cronjob: a Job from the template, owned by the CronJob.
    for (kubectl, name) in [(KUBECTL_133, "manual-133"), (KUBECTL_127, "manual-127")] {
        s.ok(kubectl, &["create", "job", name, "--from=cronjob/tick"]);
        s.ok(kubectl, &["wait", "--for=condition=complete", &format!("job/{name}"), "--timeout=60s"]);
        let job = get_json(&s, k, &["get", "job", name]);
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");
    }

    // The schedule fires within a minute: Job `tick-<minutes since the epoch>`.
    let scheduled: String = wait_for("a scheduled Job", Duration::from_secs(70), || {
        let jobs = get_json(&s, k, &["get", "jobs"]);
        jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
            .find(|n| n.strip_prefix("tick-").is_some_and(|m| m.chars().all(|c| c.is_ascii_digit())))
    });
    let job = get_json(&s, k, &["get", "job", &scheduled]);
    let at: k8s_openapi::jiff::Timestamp =
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].as_str().unwrap().parse().unwrap();
    assert_eq!(at.as_second() % 60, 0);
    assert_eq!(scheduled, format!("tick-{}", at.as_second() / 60));
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "tick");
    // Requeued for the scheduled time itself, not found by some later poll.
    let created: k8s_openapi::jiff::Timestamp = job["metadata"]["creationTimestamp"].as_str().unwrap().parse().unwrap();
    assert!(created.duration_since(at).as_secs() <= 1, "scheduled {at}, created {created}");
    let cj = get_json(&s, k, &["get", "cronjob", "tick"]);
    assert_eq!(cj["status"]["lastScheduleTime"].as_str().map(|t| t.parse::<k8s_openapi::jiff::Timestamp>().unwrap()), Some(at));
    s.ok(k, &["wait", "--for=condition=complete", &format!("job/{scheduled}"), "--timeout=60s"]);
    let cj = wait_for("lastSuccessfulTime and an empty active list", Duration::from_secs(20), || {
        let cj = get_json(&s, k, &["get", "cronjob", "tick"]);
        (cj["status"]["active"].is_null() && cj["status"]["lastSuccessfulTime"].is_string()).then_some(cj)
    });
    assert!(cj["status"]["lastSuccessfulTime"].as_str().unwrap().parse::<k8s_openapi::jiff::Timestamp>().unwrap() >= at);
    let reasons = event_reasons(&s, "tick");
    assert!(reasons.contains(&"SuccessfulCreate".to_string()) && reasons.contains(&"SawCompletedJob".to_string()), "{reasons:?}");
    let table = s.ok(k, &["get", "cronjob", "tick"]);
    assert!(table.contains("* * * * *"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gc_removes_pods_of_deleted_nodes_and_old_terminated_pods() {
    let s =
        Server::start_with(&["--disable-scheduler", "--terminated-pod-gc-threshold=2", "--pod-gc-period=500ms", "--pod-gc-quarantine=1s"]);
    let k = KUBECTL_133;
    let client = s.kube_client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");

    // A pod bound to a node that is then deleted: marked Failed, then force-deleted.
    create(&s, "apiVersion: v1\nkind: Node\nmetadata: {name: doomed}\n");
    create(
        &s,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: stranded}\nspec: {nodeName: doomed, containers: [{name: c, image: busybox}]}\n",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.kubectl(k, &["get", "pod", "stranded"]).status.success(), "the node still exists: its pod stays");
    s.ok(k, &["delete", "node", "doomed"]);
    wait_for("the pod GC to delete the stranded pod", Duration::from_secs(20), || {
        (!s.kubectl(k, &["get", "pod", "stranded"]).status.success()).then_some(())
    });

    // Four terminated pods with a threshold of two: the two oldest go.
    let mut created = HashMap::new();
    for i in 1..=4 {
        let name = format!("done-{i}");
        create(
            &s,
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c, image: busybox}}]}}\n"),
        );
        let patch = json!({"status": {"phase": if i % 2 == 0 { "Succeeded" } else { "Failed" }}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("pods/status");
        created.insert(name, i);
        tokio::time::sleep(Duration::from_millis(1100)).await; // distinct creation seconds
    }
    // A running pod is never a terminated one.
    create(&s, "apiVersion: v1\nkind: Pod\nmetadata: {name: busy}\nspec: {containers: [{name: c, image: busybox}]}\n");
    let left = wait_for("two terminated pods left", Duration::from_secs(20), || {
        let names = s.ok(k, &["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]);
        let mut v: Vec<String> = names.split_whitespace().map(str::to_string).collect();
        v.sort();
        (v.len() == 3).then_some(v)
    });
    assert_eq!(left, ["busy", "done-3", "done-4"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.ok(k, &["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]).split_whitespace().count(), 3);
}
