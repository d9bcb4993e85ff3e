//! Real containers: `skiff server` with its embedded agent, containerd and CNI, inside namespaces
//! the test creates (see netns.rs). Containers report back through a hostPath directory the
//! test reads, so these tests need nothing but the kubelet itself.

use std::time::{Duration, Instant};

use crate::harness::wait_for;
use crate::netns::{BUSYBOX, Cluster};

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn deployment_pods_serve_http_on_their_pod_ips() {
    let c = Cluster::start();
    c.wait_jsonpath("node/node1", "{.status.conditions[?(@.type=='Ready')].status}", Duration::from_secs(30), |s| s == "True");
    c.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: httpd
        image: {BUSYBOX}
        command: ["sh", "-c", "echo served-by-$(POD_NAME) > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        ports: [{{containerPort: 8080}}]
"#
    ));
    c.wait_jsonpath("deployment/web", "{.status.availableReplicas}", Duration::from_secs(90), |s| s == "3");
    let names = c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}"]);
    let pods: Vec<(&str, &str)> = names.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(pods.len(), 3, "{names}");
    for (name, ip) in pods {
        assert!(ip.starts_with("10.42."), "pod IP from the node's podCIDR: {ip}");
        let body = wait_for("the pod's httpd", Duration::from_secs(20), || c.http_get(&format!("http://{ip}:8080/index.html")));
        assert_eq!(body.trim(), format!("served-by-{name}"));
    }
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(wide.contains("node1"), "{wide}");
    let node = c.ok(&[
        "get",
        "node",
        "node1",
        "-o",
        "jsonpath={.status.nodeInfo.containerRuntimeVersion} {.status.addresses[0].address} {.status.capacity.pods}",
    ]);
    assert!(node.starts_with("containerd://"), "{node}");
    assert!(node.contains(crate::netns::NODE_IP) && node.ends_with(" 110"), "{node}");
    let lease = c.ok(&["get", "lease", "-n", "kube-node-lease", "node1", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert_eq!(lease, "node1");
}

#[test]
fn containers_get_env_volumes_init_order_restarts_and_graceful_stops() {
    let c = Cluster::start();
    let out = c.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let out_s = out.display().to_string();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: hello, MODE: fast}}
---
apiVersion: v1
kind: Pod
metadata: {{name: features}}
spec:
  terminationGracePeriodSeconds: 10
  initContainers:
  - name: first
    image: {BUSYBOX}
    command: ["sh", "-c", "echo first >> /out/order"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  - name: second
    image: {BUSYBOX}
    command: ["sh", "-c", "echo second >> /out/order"]
    volumeMounts: [{{name: out, mountPath: /out}}]
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c"]
    args:
    - |
      echo main >> /out/order
      echo "$PASSWORD $MODE $(HOSTNAME_VAR)" > /out/env
      cat /etc/hostname > /out/hostname
      trap 'echo got-term > /out/term; exit 0' TERM
      while true; do cat /cfg/greeting > /out/greeting.tmp; mv /out/greeting.tmp /out/greeting; sleep 1; done
    env:
    - name: PASSWORD
      valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
    - name: HOSTNAME_VAR
      value: on-$(MODE)
    envFrom:
    - configMapRef: {{name: settings}}
    volumeMounts:
    - {{name: out, mountPath: /out}}
    - {{name: cfg, mountPath: /cfg}}
  volumes:
  - name: out
    hostPath: {{path: {out_s}, type: Directory}}
  - name: cfg
    configMap: {{name: settings}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "echo dying; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "tail /dev/zero"]
    resources: {{limits: {{memory: 24Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: noimage}}
spec:
  containers: [{{name: c, image: "127.0.0.1:5000/does-not-exist:1"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: nocommand}}
spec:
  containers: [{{name: c, image: {BUSYBOX}, command: ["/no/such/binary"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: novolume}}
spec:
  containers: [{{name: c, image: {BUSYBOX}, command: ["sleep", "3600"], volumeMounts: [{{name: v, mountPath: /v}}]}}]
  volumes: [{{name: v, configMap: {{name: missing-config}}}}]
"#
    ));
    let t = Duration::from_secs(90);
    c.wait_jsonpath("pod/features", "{.status.phase}", t, |s| s == "Running");
    wait_for("the container's files", t, || (read(&out.join("greeting")).trim() == "hello").then_some(()));
    assert_eq!(read(&out.join("order")), "first\nsecond\nmain\n", "init containers run in order, before the app container");
    assert_eq!(read(&out.join("env")).trim(), "s3cret fast on-fast", "env from a secret, envFrom a configMap, $(VAR) expansion");
    assert_eq!(read(&out.join("hostname")).trim(), "features");
    let init = c.jsonpath("pod/features", "{.status.initContainerStatuses[*].state.terminated.reason}");
    assert_eq!(init, "Completed Completed");

    // A configMap volume follows updates (upstream's sync period is a minute; ours is shorter).
    c.ok(&["patch", "configmap", "settings", "--type=merge", "-p", r#"{"data":{"greeting":"updated"}}"#]);
    wait_for("the configMap update inside the pod", Duration::from_secs(60), || {
        (read(&out.join("greeting")).trim() == "updated").then_some(())
    });

    // CrashLoopBackOff with growing delay and restart count.
    let why = c.wait_jsonpath("pod/crasher", "{.status.containerStatuses[0].state.waiting.message}", t, |s| s.contains("back-off 20s"));
    assert!(why.contains("restarting failed container=c pod=crasher_default("), "{why}");
    assert_eq!(c.jsonpath("pod/crasher", "{.status.containerStatuses[0].state.waiting.reason}"), "CrashLoopBackOff");
    assert_eq!(c.jsonpath("pod/crasher", "{.status.containerStatuses[0].lastState.terminated.exitCode}"), "3");
    let restarts: i32 = c.jsonpath("pod/crasher", "{.status.containerStatuses[0].restartCount}").parse().unwrap();
    assert!(restarts >= 2, "restartCount {restarts}");

    // A memory hog is OOM-killed with that reason; restartPolicy Never makes the pod Failed.
    c.wait_jsonpath("pod/hog", "{.status.phase}", t, |s| s == "Failed");
    assert_eq!(c.jsonpath("pod/hog", "{.status.containerStatuses[0].state.terminated.reason}"), "OOMKilled");

    // Bad input: clear reasons and events, and nothing else is disturbed.
    c.wait_jsonpath("pod/noimage", "{.status.containerStatuses[0].state.waiting.reason}", t, |s| {
        s == "ImagePullBackOff" || s == "ErrImagePull"
    });
    c.wait_jsonpath("pod/nocommand", "{.status.containerStatuses[0].lastState.terminated.reason}", t, |s| s == "StartError");
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=novolume", "-o", "jsonpath={.items[*].message}"]);
    let events = if events.contains("missing-config") {
        events
    } else {
        wait_for("FailedMount", t, || {
            let e = c.ok(&["get", "events", "--field-selector", "involvedObject.name=novolume", "-o", "jsonpath={.items[*].message}"]);
            e.contains("missing-config").then_some(e)
        })
    };
    assert!(events.contains("MountVolume.SetUp failed for volume \"v\" : configmap \"missing-config\" not found"), "{events}");
    assert_eq!(c.jsonpath("pod/novolume", "{.status.containerStatuses[0].state.waiting.reason}"), "ContainerCreating");
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=noimage", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("Failed") && events.contains("Pulling"), "{events}");
    assert_eq!(c.jsonpath("pod/features", "{.status.containerStatuses[0].restartCount}"), "0");

    // Graceful deletion: SIGTERM reaches the container, which exits; the object then goes.
    c.ok(&["delete", "pod", "features", "--wait=true", "--timeout=60s"]);
    assert_eq!(read(&out.join("term")).trim(), "got-term");
}

#[test]
fn grace_period_is_honoured_and_a_restarted_agent_adopts_running_pods() {
    let mut c = Cluster::start();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: ["sh", "-c", "echo still-here > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
"#
    ));
    let t = Duration::from_secs(90);
    c.wait_jsonpath("pod/web", "{.status.containerStatuses[0].ready}", t, |s| s == "true");
    c.wait_jsonpath("pod/stubborn", "{.status.phase}", t, |s| s == "Running");
    let ip = c.jsonpath("pod/web", "{.status.podIP}");
    let id = c.jsonpath("pod/web", "{.status.containerStatuses[0].containerID}");
    let url = format!("http://{ip}:8080/index.html");
    assert_eq!(wait_for("httpd", Duration::from_secs(20), || c.http_get(&url)).trim(), "still-here");

    // A container that ignores SIGTERM is killed when its grace period ends, not before.
    let t0 = Instant::now();
    c.ok(&["delete", "pod", "stubborn", "--wait=true", "--timeout=60s"]);
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(3), "deleted after {took:?}, before the 3 s grace period");
    assert!(took < Duration::from_secs(30), "deleted after {took:?}");

    // The control plane and agent die; the pod keeps serving.
    c.kill_server();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.http_get(&url).as_deref().map(str::trim), Some("still-here"), "pods keep running without the agent");

    // A new agent adopts the running container instead of restarting it.
    c.start_server();
    c.wait_jsonpath("node/node1", "{.status.conditions[?(@.type=='Ready')].status}", t, |s| s == "True");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(c.jsonpath("pod/web", "{.status.containerStatuses[0].containerID}"), id);
    assert_eq!(c.jsonpath("pod/web", "{.status.containerStatuses[0].restartCount}"), "0");
    assert_eq!(c.jsonpath("pod/web", "{.status.phase}"), "Running");
    assert_eq!(c.http_get(&url).as_deref().map(str::trim), Some("still-here"));
}

#[test]
fn kubectl_logs_reads_and_follows_container_output_through_the_kubelet() {
    use crate::harness::{KUBECTL_127, KUBECTL_133};
    let c = Cluster::start();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: logger}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "echo one; echo two; echo three >&2; echo four; i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done"]
---
apiVersion: v1
kind: Pod
metadata: {{name: twice}}
spec:
  restartPolicy: OnFailure
  containers:
  - name: a
    image: {BUSYBOX}
    command: ["sh", "-c", "echo attempt-output; sleep 1; exit 1"]
  - name: b
    image: {BUSYBOX}
    command: ["sleep", "3600"]
"#
    ));
    let t = Duration::from_secs(90);
    c.wait_jsonpath("pod/logger", "{.status.phase}", t, |s| s == "Running");
    for bin in [KUBECTL_127, KUBECTL_133] {
        let all = wait_for("the first lines", t, || {
            let out = c.kubectl_with(bin, &["logs", "logger"], None);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.contains("tick-1").then_some(s)
        });
        // stdout and stderr are separate pipes: their relative order is not kept (upstream neither).
        let stdout: Vec<&str> = all.lines().filter(|l| *l != "three").collect();
        assert_eq!(stdout[..4], ["one", "two", "four", "tick-0"], "{bin}: {all}");
        assert!(all.lines().any(|l| l == "three"), "{bin}: stderr is in the log too: {all}");
        let tail = String::from_utf8_lossy(&c.kubectl_with(bin, &["logs", "logger", "--tail=1"], None).stdout).into_owned();
        assert_eq!(tail.lines().count(), 1, "{tail}");
        let ts = String::from_utf8_lossy(&c.kubectl_with(bin, &["logs", "logger", "--timestamps", "-c", "main", "--tail=2"], None).stdout)
            .into_owned();
        assert!(ts.lines().count() == 2 && ts.lines().all(|l| l.starts_with("20") && l.contains("Z ")), "{ts}");
    }
    // -f keeps streaming what the container writes after the request started.
    let out =
        c.in_ns(&["timeout", "4", KUBECTL_133, "--kubeconfig", &c.kubeconfig.display().to_string(), "logs", "-f", "logger", "--tail=1"]);
    let followed = String::from_utf8_lossy(&out.stdout).into_owned();
    let ticks: Vec<u32> = followed.lines().filter_map(|l| l.strip_prefix("tick-")?.parse().ok()).collect();
    assert!(ticks.len() >= 3 && ticks.windows(2).all(|w| w[1] == w[0] + 1), "follow streamed {followed:?}");

    // attach joins the running container's output stream.
    for bin in [KUBECTL_127, KUBECTL_133] {
        let out = c.in_ns(&["timeout", "4", bin, "--kubeconfig", &c.kubeconfig.display().to_string(), "attach", "logger"]);
        let attached = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            attached.lines().filter(|l| l.starts_with("tick-")).count() >= 2,
            "{bin} attach: {attached:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Two containers: the API wants one named (kubectl itself defaults to the first); --previous
    // reads the last run of a restarted one.
    let err = String::from_utf8_lossy(&c.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/twice/log"]).stderr).into_owned();
    assert!(err.contains("a container name must be specified for pod twice, choose one of: [a b]"), "{err}");
    c.wait_jsonpath("pod/twice", "{.status.containerStatuses[?(@.name=='a')].restartCount}", t, |s| s.parse::<i32>().is_ok_and(|n| n >= 1));
    for bin in [KUBECTL_127, KUBECTL_133] {
        let prev = c.kubectl_with(bin, &["logs", "twice", "-c", "a", "--previous"], None);
        assert!(prev.status.success(), "{}", String::from_utf8_lossy(&prev.stderr));
        assert_eq!(String::from_utf8_lossy(&prev.stdout), "attempt-output\n");
    }
    let none = String::from_utf8_lossy(&c.kubectl(&["logs", "twice", "-c", "b", "--previous"]).stderr).into_owned();
    assert!(none.contains("previous terminated container \"b\" in pod \"twice\" not found"), "{none}");
    let bad = String::from_utf8_lossy(&c.kubectl(&["logs", "twice", "-c", "nope"]).stderr).into_owned();
    assert!(bad.contains("container nope is not valid for pod twice"), "{bad}");
}

#[test]
fn exec_cp_and_port_forward_stream_through_the_api_server_and_kubelet() {
    use crate::harness::{KUBECTL_127, KUBECTL_133};
    let c = Cluster::start();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: box}}
spec:
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "echo forwarded-page > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
"#
    ));
    c.wait_jsonpath("pod/box", "{.status.containerStatuses[0].ready}", Duration::from_secs(90), |s| s == "true");
    let kc = c.kubeconfig.display().to_string();
    for (i, bin) in [KUBECTL_127, KUBECTL_133].into_iter().enumerate() {
        let run = |args: &[&str], stdin: Option<&str>| c.kubectl_with(bin, args, stdin);
        let out = run(&["exec", "box", "--", "cat", "/etc/hostname"], None);
        assert!(out.status.success(), "{bin} exec: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "box\n");
        let out = run(&["exec", "box", "--", "sh", "-c", "echo to-stderr >&2; exit 7"], None);
        assert_eq!(out.status.code(), Some(7), "{bin}: the command's exit code comes back");
        assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"), "{bin}");
        let out = run(&["exec", "-i", "box", "--", "sh", "-c", "tr a-z A-Z"], Some("from stdin\n"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "FROM STDIN\n", "{bin}: {}", String::from_utf8_lossy(&out.stderr));

        // -it through a real pty (script(1) gives kubectl a terminal).
        let cmd = format!("{bin} --kubeconfig {kc} exec -it box -- sh -c 'tty; echo done'");
        let out = c.in_ns(&["script", "-qec", &cmd, "/dev/null"]);
        let tty = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        assert!(tty.contains("/dev/pts/") && tty.contains("done"), "{bin} exec -it: {tty:?} {}", String::from_utf8_lossy(&out.stderr));

        // kubectl cp both ways (tar over exec).
        let local = c.dir.join(format!("cp-{i}.txt"));
        std::fs::write(&local, format!("copied by {bin}\n")).unwrap();
        let dest = format!("box:/tmp/cp-{i}.txt");
        let out = run(&["cp", &local.display().to_string(), &dest], None);
        assert!(out.status.success(), "{bin} cp to: {}", String::from_utf8_lossy(&out.stderr));
        let inside = run(&["exec", "box", "--", "cat", &format!("/tmp/cp-{i}.txt")], None);
        assert_eq!(String::from_utf8_lossy(&inside.stdout), format!("copied by {bin}\n"));
        let back = c.dir.join(format!("back-{i}.html"));
        let out = run(&["cp", "box:/tmp/index.html", &back.display().to_string()], None);
        assert!(out.status.success(), "{bin} cp from: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_to_string(&back).unwrap(), "forwarded-page\n");

        // port-forward, then a request through it.
        let port = 18080 + i as u16;
        let mut pf = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", c.ns))
            .args(["--", bin, "--kubeconfig", &kc, "port-forward", "pod/box", &format!("{port}:8080")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let page =
            wait_for("a page through port-forward", Duration::from_secs(20), || c.http_get(&format!("http://127.0.0.1:{port}/index.html")));
        // nsenter execs kubectl in place (no new PID namespace), so this PID is kubectl's.
        let _ = pf.kill();
        let _ = pf.wait();
        assert_eq!(page, "forwarded-page\n", "{bin} port-forward");
    }
    let err = String::from_utf8_lossy(&c.kubectl(&["exec", "box", "-c", "nope", "--", "true"]).stderr).into_owned();
    assert!(err.contains("container nope is not valid for pod box"), "{err}");
}

#[test]
fn probes_restart_and_unready_containers_and_hooks_run() {
    let c = Cluster::start();
    let out = c.dir.join("hooks");
    std::fs::create_dir_all(&out).unwrap();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: live}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec: {{command: ["cat", "/tmp/healthy"]}}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {{name: ready}}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "echo ok > /tmp/ready.html; exec httpd -f -p 8080 -h /tmp"]
    ports: [{{name: http, containerPort: 8080}}]
    startupProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
    readinessProbe:
      httpGet: {{path: /ready.html, port: http}}
      periodSeconds: 1
      failureThreshold: 1
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo post-start > /out/poststart"]}}
      preStop:
        exec: {{command: ["sh", "-c", "echo pre-stop > /out/prestop"]}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - name: out
    hostPath: {{path: {}, type: Directory}}
"#,
        out.display()
    ));
    let t = Duration::from_secs(90);
    c.wait_jsonpath("pod/ready", "{.status.conditions[?(@.type=='Ready')].status}", t, |s| s == "True");
    assert_eq!(c.jsonpath("pod/ready", "{.status.containerStatuses[0].started}"), "true");
    assert_eq!(read(&out.join("poststart")).trim(), "post-start");
    // A failing readiness probe flips Ready to False without restarting anything.
    c.ok(&["exec", "ready", "--", "rm", "/tmp/ready.html"]);
    c.wait_jsonpath("pod/ready", "{.status.conditions[?(@.type=='Ready')].status}", t, |s| s == "False");
    assert_eq!(c.jsonpath("pod/ready", "{.status.containerStatuses[0].restartCount}"), "0");
    c.ok(&["exec", "ready", "--", "sh", "-c", "echo ok > /tmp/ready.html"]);
    c.wait_jsonpath("pod/ready", "{.status.conditions[?(@.type=='Ready')].status}", t, |s| s == "True");

    // A failing liveness probe restarts the container.
    c.wait_jsonpath("pod/live", "{.status.containerStatuses[0].restartCount}", t, |s| s.parse::<i32>().is_ok_and(|n| n >= 1));
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=live", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("Liveness probe failed") && events.contains("failed liveness probe, will be restarted"), "{events}");

    // preStop runs before the container is stopped.
    c.ok(&["delete", "pod", "ready", "--wait=true", "--timeout=60s"]);
    assert_eq!(read(&out.join("prestop")).trim(), "pre-stop");
}

#[test]
fn kubectl_top_shows_the_usage_of_a_busy_pod() {
    use crate::harness::{KUBECTL_127, KUBECTL_133};
    let c = Cluster::start();
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: busy, labels: {{app: busy}}}}
spec:
  containers:
  - name: spin
    image: {BUSYBOX}
    command: ["sh", "-c", "x=$(head -c 8000000 /dev/zero | tr '\\0' a); while true; do :; done"]
"#
    ));
    c.wait_jsonpath("pod/busy", "{.status.phase}", Duration::from_secs(90), |s| s == "Running");
    // millicores and MiB, as kubectl prints them: "busy   950m   1Mi".
    let parse = |line: &str| -> Option<(u64, u64)> {
        let f: Vec<&str> = line.split_whitespace().collect();
        Some((f.get(1)?.strip_suffix('m')?.parse().ok()?, f.get(2)?.strip_suffix("Mi")?.parse().ok()?))
    };
    for bin in [KUBECTL_127, KUBECTL_133] {
        let (cpu, mem) = wait_for("kubectl top pods", Duration::from_secs(60), || {
            let out = c.kubectl_with(bin, &["top", "pods", "-l", "app=busy", "--no-headers"], None);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.lines().find(|l| l.starts_with("busy ")).and_then(parse).filter(|(cpu, _)| *cpu > 0)
        });
        assert!(cpu >= 100, "{bin}: a spinning shell uses a good part of a core, got {cpu}m");
        assert!(mem >= 4, "{bin}: the shell holds an 8 MB string, got {mem}Mi");
        let nodes = c.kubectl_with(bin, &["top", "nodes", "--no-headers"], None);
        let n = String::from_utf8_lossy(&nodes.stdout).into_owned();
        assert!(n.starts_with("node1 ") && n.contains('%'), "{bin}: {n} {}", String::from_utf8_lossy(&nodes.stderr));
    }
    let containers = c.ok(&["top", "pod", "busy", "--containers", "--no-headers"]);
    assert!(containers.contains("spin"), "{containers}");
    // nodes/proxy reaches the kubelet itself.
    let summary = c.ok(&["get", "--raw", "/api/v1/nodes/node1/proxy/stats/summary"]);
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["node"]["nodeName"], "node1", "{summary}");
    let busy = v["pods"].as_array().and_then(|p| p.iter().find(|p| p["podRef"]["name"] == "busy")).cloned().unwrap_or_default();
    assert!(busy["network"]["interfaces"].as_array().is_some_and(|i| i.iter().any(|i| i["name"] == "eth0")), "pod network stats: {busy}");
    assert!(busy["containers"][0]["rootfs"]["usedBytes"].is_u64() && busy["containers"][0]["logs"]["usedBytes"].is_u64(), "{busy}");
    assert!(v["node"]["fs"]["capacityBytes"].as_u64().is_some_and(|b| b > 0), "node fs stats: {summary}");
    let err = String::from_utf8_lossy(&c.kubectl(&["get", "--raw", "/api/v1/nodes/nope/proxy/healthz"]).stderr).into_owned();
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
}

#[test]
fn static_pods_run_without_the_api_server_and_show_up_as_mirror_pods() {
    let mut c = Cluster::start_with(&["--disable-agent"]);
    c.start_agent();
    let t = Duration::from_secs(90);
    c.wait_jsonpath("node/node1", "{.status.conditions[?(@.type=='Ready')].status}", t, |s| s == "True");
    let out = c.dir.join("static-out");
    std::fs::create_dir_all(&out).unwrap();
    let manifests = c.dir.join("agent").join("manifests");
    let manifest = |name: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: kube-system}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"{script}\"]\n    volumeMounts: [{{name: out, mountPath: /out}}]\n  volumes: [{{name: out, hostPath: {{path: {}}}}}]\n",
            out.display()
        )
    };
    std::fs::write(manifests.join("beat.yaml"), manifest("beat", "i=0; while true; do i=$((i+1)); echo $i > /out/beat; sleep 0.2; done"))
        .unwrap();
    c.wait_jsonpath("pod/beat-node1 -n kube-system", "{.status.phase}", t, |s| s == "Running");
    let mirror = c.ok(&[
        "get",
        "pod",
        "beat-node1",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.metadata.annotations.kubernetes\\.io/config\\.mirror} {.metadata.ownerReferences[0].kind}",
    ]);
    assert!(mirror.len() > 10 && mirror.ends_with(" Node"), "{mirror}");

    // The API server goes away; the static pod keeps running and a new manifest still starts.
    c.kill_server();
    let before = read(&out.join("beat"));
    wait_for("the static pod to keep beating", Duration::from_secs(20), || (read(&out.join("beat")) != before).then_some(()));
    std::fs::write(manifests.join("late.yaml"), manifest("late", "echo started-without-api > /out/late; sleep 3600")).unwrap();
    wait_for("a static pod started with no API server", Duration::from_secs(60), || {
        (read(&out.join("late")).trim() == "started-without-api").then_some(())
    });

    // Back: the mirror of the new pod appears, with the status the agent reports.
    c.start_server();
    c.wait_jsonpath("pod/late-node1 -n kube-system", "{.status.phase}", t, |s| s == "Running");

    // Removing a manifest stops the pod and removes its mirror.
    std::fs::remove_file(manifests.join("beat.yaml")).unwrap();
    wait_for("the mirror pod to go", t, || (!c.kubectl(&["get", "pod", "beat-node1", "-n", "kube-system"]).status.success()).then_some(()));
    wait_for("the static pod's container to stop", Duration::from_secs(20), || {
        let last = read(&out.join("beat"));
        std::thread::sleep(Duration::from_secs(1));
        (read(&out.join("beat")) == last).then_some(())
    });
}

#[test]
fn image_tarballs_import_by_command_and_once_from_the_images_dir() {
    let mut c = Cluster::start();
    let tarball = c.dir.join("imported.tar");
    let src = format!("oci:{}:bb", crate::netns::busybox_layout().display());
    let out = std::process::Command::new("skopeo")
        .args(["copy", &src, &format!("docker-archive:{}:registry.skiff.dev/imported:1", tarball.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let socket = c.dir.join("agent/containerd/containerd.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["image", "import"])
        .arg(&tarball)
        .arg("--address")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "skiff image import: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("registry.skiff.dev/imported:1"), "{}", String::from_utf8_lossy(&out.stdout));
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: local}\nspec:\n  containers: [{name: c, image: registry.skiff.dev/imported:1, imagePullPolicy: Never, command: [sleep, '3600']}]\n",
    );
    c.wait_jsonpath("pod/local", "{.status.phase}", Duration::from_secs(60), |s| s == "Running");
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["image", "import", "/nonexistent.tar", "--address"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.tar"));

    // DATA/images: imported at the next start, and not again at the one after.
    std::fs::create_dir_all(c.dir.join("images")).unwrap();
    std::fs::copy(&tarball, c.dir.join("images/imported.tar")).unwrap();
    c.kill_server();
    c.start_server();
    wait_for("the start-up import", Duration::from_secs(30), || c.logs_of(2).contains("imported image tarball").then_some(()));
    c.kill_server();
    c.start_server();
    c.wait_jsonpath("node/node1", "{.status.conditions[?(@.type=='Ready')].status}", Duration::from_secs(60), |s| s == "True");
    assert!(c.logs_of(3).contains("node agent started"), "{}", c.logs_of(3));
    assert!(!c.logs_of(3).contains("imported image tarball"), "a tarball already imported is not imported again");
}

#[test]
fn an_agent_joins_with_the_server_token_and_gets_its_own_certificates() {
    let mut c = Cluster::start_with(&["--disable-agent"]);
    let token_file = c.dir.join("token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.starts_with("K10") && token.contains("::node:"), "{token}");
    let server = format!("https://{}:6443", crate::netns::NODE_IP);

    // A wrong secret is refused, with the reason, and the agent stops.
    let bad = c.dir.join("bad-token");
    std::fs::write(&bad, format!("{}::node:wrong", token.trim().split("::").next().unwrap())).unwrap();
    c.start_agent_with(&["--server", &server, "--token-file", &bad.display().to_string()]);
    let st = c.wait_agent(Duration::from_secs(30)).expect("the agent gives up");
    assert!(!st.success());
    assert!(c.agent_logs().contains("invalid join token"), "{}", c.agent_logs());

    c.start_agent_with(&["--server", &server, "--token-file", &token_file.display().to_string()]);
    let t = Duration::from_secs(90);
    c.wait_jsonpath("node/node1", "{.status.conditions[?(@.type=='Ready')].status}", t, |s| s == "True");
    let kc = std::fs::read_to_string(c.dir.join("agent/kubelet.kubeconfig")).unwrap();
    assert!(kc.contains("system:node:node1"), "the agent's own identity: {kc}");
    // Its kubelet certificate lets the API server reach it: logs work.
    c.apply(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: hello}}\nspec:\n  containers: [{{name: c, image: {BUSYBOX}, command: [sh, -c, 'echo joined-node; sleep 3600']}}]\n"));
    c.wait_jsonpath("pod/hello", "{.status.phase}", t, |s| s == "Running");
    let logs = wait_for("logs from the joined node", Duration::from_secs(20), || {
        let out = c.kubectl(&["logs", "hello"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(logs, "joined-node\n");

    // A restarted agent uses what it got instead of joining again.
    c.kill_agent();
    c.start_agent_with(&["--server", &server, "--token-file", &token_file.display().to_string()]);
    wait_for("the second agent to start", t, || (c.agent_logs().matches("node agent started").count() == 2).then_some(()));
    assert_eq!(c.agent_logs().matches("joined the cluster").count(), 1, "{}", c.agent_logs());
    c.wait_jsonpath("pod/hello", "{.status.containerStatuses[0].ready}", t, |s| s == "true");
}

#[test]
fn a_static_pod_can_come_from_a_manifest_url() {
    let c = Cluster::start_with(&["--manifest-url", "http://127.0.0.1:18090/pod.yaml"]);
    let www = c.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("pod.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: fromurl}}\nspec:\n  containers: [{{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}]\n"),
    )
    .unwrap();
    // busybox httpd in the cluster's network namespace serves the manifest.
    let mut httpd = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.ns))
        .args(["--", "/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:18090", "-h"])
        .arg(&www)
        .spawn()
        .unwrap();
    let t = Duration::from_secs(90);
    c.wait_jsonpath("pod/fromurl-node1", "{.status.phase}", t, |s| s == "Running");
    let _ = httpd.kill();
    let _ = httpd.wait();
    // The URL going away does not stop the pod.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(c.jsonpath("pod/fromurl-node1", "{.status.phase}"), "Running");
    assert!(c.logs().contains("static pod from --manifest-url"), "the unreachable URL is reported");
}
