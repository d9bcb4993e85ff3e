//! `skiff sim` end to end: the real binary registers simulated nodes against a real `skiff server`,
//! and the real kubectl sees what it would see with kubelets: Ready nodes with their labels, node
//! Leases being renewed, a pod bound to a node becoming Running and Ready, a deleted pod going away.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Server, wait_for};

const KUBECTL: &str = "/usr/bin/kubectl";

/// A `skiff sim` child process, stopped by the PID we started (also when the test panics).
struct Sim {
    child: Option<Child>,
    log: PathBuf,
}

impl Sim {
    fn start(server: &Server, args: &[&str]) -> Sim {
        let log = server.data_dir.join("sim.log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("sim")
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .args(args)
            .env("SKIFF_LOG", "info,skiff_sim=debug")
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start skiff sim");
        Sim { child: Some(child), log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("skiff sim exited ({status}):\n{}", self.logs());
        }
    }

    /// SIGTERM, then the exit status (None if it had to be killed).
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn json(s: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(KUBECTL, &a)).expect("kubectl -o json")
}

fn text(out: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn sim_nodes_register_heartbeat_and_run_pods() {
    let s = Server::start();
    // --server by another name than the kubeconfig's 127.0.0.1, to see the override is used.
    let server = format!("https://localhost:{}", s.port);
    let mut sim = Sim::start(
        &s,
        &[
            "--server",
            &server,
            "--nodes",
            "3",
            "--zones",
            "3",
            "--node-labels",
            "team=blue,example.com/pool=sim",
            "--lease-interval-seconds",
            "1",
        ],
    );

    // Nodes: registered with their labels, and Ready.
    wait_for("3 sim nodes", Duration::from_secs(15), || {
        sim.assert_running();
        let out = s.kubectl(KUBECTL, &["get", "nodes", "-l", "type=skiff-sim", "-o", "name"]);
        (String::from_utf8_lossy(&out.stdout).lines().count() == 3).then_some(())
    });
    let table = s.ok(KUBECTL, &["get", "nodes", "-l", "type=skiff-sim"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    for (i, row) in rows.iter().enumerate() {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], format!("sim-{i}"), "{table}");
        assert_eq!(cols[1], "Ready", "{table}");
        assert_eq!(cols[4], "v1.33.0-skiff-sim", "{table}");
    }
    let nodes = json(&s, &["get", "nodes", "-l", "type=skiff-sim"]);
    for (i, n) in nodes["items"].as_array().unwrap().iter().enumerate() {
        let labels = &n["metadata"]["labels"];
        assert_eq!(labels["kubernetes.io/hostname"], format!("sim-{i}"));
        assert_eq!(labels["topology.kubernetes.io/zone"], format!("zone-{i}"));
        assert_eq!(labels["topology.kubernetes.io/region"], "sim");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["team"], "blue");
        assert_eq!(labels["example.com/pool"], "sim");
        assert_eq!(n["status"]["allocatable"]["pods"], "110");
        assert_eq!(n["status"]["addresses"][0]["type"], "InternalIP");
    }

    // Leases: one per node, held by it, owned by it, and renewed.
    let lease = json(&s, &["get", "lease", "-n", "kube-node-lease", "sim-0"]);
    assert_eq!(lease["spec"]["holderIdentity"], "sim-0");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(lease["metadata"]["ownerReferences"][0]["uid"], nodes["items"][0]["metadata"]["uid"]);
    let leases = s.ok(KUBECTL, &["get", "lease", "-n", "kube-node-lease", "-o", "name"]);
    for i in 0..3 {
        assert!(leases.contains(&format!("lease.coordination.k8s.io/sim-{i}")), "{leases}");
    }
    let renew_time = |name: &str| s.ok(KUBECTL, &["get", "lease", "-n", "kube-node-lease", name, "-o", "jsonpath={.spec.renewTime}"]);
    let first = renew_time("sim-2");
    assert!(!first.is_empty());
    wait_for("sim-2's lease to be renewed", Duration::from_secs(5), || (renew_time("sim-2") > first).then_some(()));

    // Pods: bound by hand (no scheduler involved), reported Running and Ready.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  nodeName: sim-1\n  initContainers:\n  - name: init\n    \
               image: busybox\n  containers:\n  - name: c\n    image: nginx\n";
    let out = s.kubectl_stdin(KUBECTL, &["apply", "-f", "-"], Some(pod));
    assert!(out.status.success(), "{}", text(&out));
    let out = s.kubectl(KUBECTL, &["wait", "--for=condition=Ready", "pod/x", "--timeout=30s"]);
    assert!(out.status.success(), "pod x not Ready: {}\n--- sim log ---\n{}", text(&out), sim.logs());
    let p = json(&s, &["get", "pod", "x"]);
    assert_eq!(p["status"]["phase"], "Running");
    assert!(p["status"]["podIP"].as_str().is_some_and(|ip| ip.starts_with("100.64.1.")), "{}", p["status"]);
    assert_eq!(p["status"]["hostIP"], nodes["items"][1]["status"]["addresses"][0]["address"]);
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
    assert!(p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
    assert_eq!(p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    let wide = s.ok(KUBECTL, &["get", "pod", "x", "-o", "wide"]);
    assert!(wide.contains("1/1") && wide.contains("Running") && wide.contains("sim-1"), "{wide}");

    // Deletion: graceful on the API side, finished by the simulated kubelet.
    let t0 = Instant::now();
    let out = s.kubectl(KUBECTL, &["delete", "pod", "x", "--timeout=10s"]);
    assert!(out.status.success(), "delete: {}\n--- sim log ---\n{}", text(&out), sim.logs());
    assert!(t0.elapsed() < Duration::from_secs(5), "deletion took {:?}", t0.elapsed());
    let gone = s.kubectl(KUBECTL, &["get", "pod", "x"]);
    assert!(!gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("NotFound"), "{}", text(&gone));

    // SIGTERM: a clean exit, nodes left registered.
    sim.assert_running();
    let status = sim.stop().expect("skiff sim did not stop on SIGTERM");
    assert!(status.success(), "skiff sim exit {status}:\n{}", sim.logs());
    let logs = sim.logs();
    assert!(logs.contains("registered 3 nodes in"), "{logs}");
    assert_eq!(s.ok(KUBECTL, &["get", "nodes", "-l", "type=skiff-sim", "-o", "name"]).lines().count(), 3);
}

#[test]
fn sim_rejects_bad_flags_naming_them() {
    for (flag, value) in [("--node-taints", "garbage"), ("--node-taints", "a=b:Sometimes"), ("--node-labels", "a=b,c"), ("--cpu", "lots")] {
        let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["sim", "--kubeconfig", "/nonexistent", flag, value])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} accepted: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(value), "{flag} {value}: {err}");
    }
}
