//! The everyday kubectl verbs against `skiff server`, with kubectl 1.27 (JSON bodies) and 1.33
//! (protobuf bodies for typed subcommands). Outputs are asserted, not just exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{KUBECTL_127, KUBECTL_130, KUBECTL_133, Server};

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/web:1.0
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  labels: {app: web}
data:
  k: v1
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  labels: {app: web}
stringData:
  password: s3cret
"#;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn everyday_verbs(s: &Server, k: &str, ns: &str) {
    let out = s.ok(k, &["version"]);
    // 1.27 prints the whole version.Info, later versions just the gitVersion.
    assert!(
        out.contains("Server Version: v1.33.0")
            || out.contains("Server Version: version.Info{Major:\"1\", Minor:\"33\", GitVersion:\"v1.33.0"),
        "{out}"
    );

    let out = s.ok(k, &["api-resources"]);
    let deploy = out.lines().find(|l| l.starts_with("deployments ")).unwrap_or_else(|| panic!("{out}"));
    assert!(deploy.split_whitespace().collect::<Vec<_>>() == ["deployments", "deploy", "apps/v1", "true", "Deployment"], "{deploy}");
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["configmaps", "cm", "v1", "true", "ConfigMap"]), "{out}");

    let out = s.ok(k, &["api-versions"]);
    for gv in ["v1", "apps/v1", "batch/v1", "coordination.k8s.io/v1", "rbac.authorization.k8s.io/v1"] {
        assert!(out.lines().any(|l| l == gv), "{gv} missing in {out}");
    }

    let out = s.ok(k, &["cluster-info"]);
    assert!(out.contains(&format!("is running at https://127.0.0.1:{}", s.port)), "{out}");

    assert_eq!(s.ok(k, &["create", "namespace", ns]).trim(), format!("namespace/{ns} created"));
    let out = s.ok(k, &["get", "namespace", ns]);
    assert!(out.lines().next().unwrap().split_whitespace().collect::<Vec<_>>() == ["NAME", "STATUS", "AGE"], "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with(&format!("{ns} ")) && out.contains("Active"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "app.yaml", MANIFEST);
    let out = s.ok(k, &["create", "-n", ns, "-f", &manifest]);
    for line in ["deployment.apps/web created", "service/web created", "configmap/web-config created", "secret/web-secret created"] {
        assert!(out.contains(line), "{line} missing in {out}");
    }

    // Default columns.
    let out = s.ok(k, &["get", "-n", ns, "deployments"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("web "), "{out}");
    assert!(out.contains("0/2"), "{out}");
    let out = s.ok(k, &["get", "-n", ns, "svc", "web"]);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0..2], ["web", "ClusterIP"], "{out}");
    assert!(row[2].starts_with("10.43."), "{out}");
    assert_eq!(row[3..5], ["<none>", "80/TCP"], "{out}");
    let out = s.ok(k, &["get", "-n", ns, "secret", "web-secret"]);
    assert!(out.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>()[..3] == ["web-secret", "Opaque", "1"], "{out}");

    // -o wide, yaml, json, jsonpath.
    let out = s.ok(k, &["get", "-n", ns, "deploy", "web", "-o", "wide"]);
    assert!(out.contains("CONTAINERS") && out.contains("IMAGES") && out.contains("SELECTOR"), "{out}");
    assert!(out.contains("registry.local/web:1.0") && out.contains("app=web"), "{out}");
    let out = s.ok(k, &["get", "-n", ns, "deploy", "web", "-o", "yaml"]);
    assert!(out.contains("kind: Deployment") && out.contains("uid:") && out.contains("resourceVersion:"), "{out}");
    assert!(out.contains("maxSurge: 25%") && out.contains("revisionHistoryLimit: 10"), "defaults missing: {out}");
    let out = s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"]["k"], "v1");
    assert_eq!(v["metadata"]["namespace"], ns);
    assert_eq!(s.ok(k, &["get", "-n", ns, "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "2");
    assert_eq!(s.ok(k, &["get", "-n", ns, "secret", "web-secret", "-o", "jsonpath={.data.password}"]), "czNjcmV0");

    // Labels, selectors, all namespaces.
    let out = s.ok(k, &["get", "-n", ns, "cm", "web-config", "--show-labels"]);
    assert!(out.lines().next().unwrap().contains("LABELS") && out.contains("app=web"), "{out}");
    let out = s.ok(k, &["get", "-n", ns, "cm,secret,svc", "-l", "app=web", "-o", "name"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["configmap/web-config", "secret/web-secret", "service/web"], "{out}");
    let out = s.ok(k, &["get", "-n", ns, "cm", "-l", "app!=web", "-o", "name"]);
    assert!(!out.contains("web-config"), "{out}");
    let out = s.ok(k, &["get", "-n", ns, "cm", "--field-selector", "metadata.name=web-config", "-o", "name"]);
    assert_eq!(out.trim(), "configmap/web-config");
    let out = s.ok(k, &["get", "cm", "-A"]);
    assert!(out.lines().next().unwrap().starts_with("NAMESPACE"), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&format!("{ns} ")) && l.contains("web-config")), "{out}");

    // label, annotate, patch (merge, json).
    assert_eq!(s.ok(k, &["label", "-n", ns, "cm", "web-config", "tier=frontend"]).trim(), "configmap/web-config labeled");
    assert_eq!(s.ok(k, &["get", "-n", ns, "cm", "-l", "tier=frontend", "-o", "name"]).trim(), "configmap/web-config");
    // kubectl 1.27 prints "annotate", later versions "annotated".
    assert!(s.ok(k, &["annotate", "-n", ns, "cm", "web-config", "owner=team-a"]).trim().starts_with("configmap/web-config annotate"));
    assert_eq!(s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "jsonpath={.metadata.annotations.owner}"]), "team-a");
    let rv_before = s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "jsonpath={.metadata.resourceVersion}"]);
    assert_eq!(
        s.ok(k, &["patch", "-n", ns, "cm", "web-config", "--type=merge", "-p", r#"{"data":{"k":"v2"}}"#]).trim(),
        "configmap/web-config patched"
    );
    assert_eq!(s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "jsonpath={.data.k}"]), "v2");
    let rv_after = s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "jsonpath={.metadata.resourceVersion}"]);
    assert!(rv_after.parse::<i64>().unwrap() > rv_before.parse::<i64>().unwrap());
    assert_eq!(
        s.ok(k, &["patch", "-n", ns, "cm", "web-config", "--type=json", "-p", r#"[{"op":"replace","path":"/data/k","value":"v3"}]"#])
            .trim(),
        "configmap/web-config patched"
    );
    assert_eq!(s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "jsonpath={.data.k}"]), "v3");
    let err =
        s.fails(k, &["patch", "-n", ns, "cm", "web-config", "--type=json", "-p", r#"[{"op":"test","path":"/data/k","value":"nope"}]"#]);
    assert!(err.contains("the server rejected our request due to an error in our request"), "{err}");

    // replace -f
    let replaced = write(dir.path(), "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  k: replaced\n");
    assert_eq!(s.ok(k, &["replace", "-n", ns, "-f", &replaced]).trim(), "configmap/web-config replaced");
    assert_eq!(s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "jsonpath={.data.k}"]), "replaced");
    assert_eq!(
        s.ok(k, &["get", "-n", ns, "cm", "web-config", "-o", "jsonpath={.metadata.labels}"]),
        "",
        "replace drops labels not in the manifest"
    );

    // scale
    assert_eq!(s.ok(k, &["scale", "-n", ns, "deploy", "web", "--replicas=3"]).trim(), "deployment.apps/web scaled");
    assert_eq!(s.ok(k, &["get", "-n", ns, "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "3");
    assert_eq!(s.ok(k, &["get", "-n", ns, "deploy", "web", "-o", "jsonpath={.metadata.generation}"]), "2");

    // typed create subcommands (protobuf bodies with kubectl 1.33)
    assert_eq!(
        s.ok(k, &["create", "configmap", "lit", "-n", ns, "--from-literal=a=1", "--from-literal=b=2"]).trim(),
        "configmap/lit created"
    );
    assert_eq!(s.ok(k, &["get", "-n", ns, "cm", "lit", "-o", "jsonpath={.data.b}"]), "2");
    assert_eq!(s.ok(k, &["create", "secret", "generic", "sec", "-n", ns, "--from-literal=user=admin"]).trim(), "secret/sec created");
    assert_eq!(s.ok(k, &["get", "-n", ns, "secret", "sec", "-o", "jsonpath={.data.user}"]), "YWRtaW4=");
    assert_eq!(
        s.ok(k, &["create", "deployment", "made", "-n", ns, "--image=registry.local/x:2", "--replicas=2"]).trim(),
        "deployment.apps/made created"
    );
    assert_eq!(
        s.ok(k, &["get", "-n", ns, "deploy", "made", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]),
        "registry.local/x:2"
    );

    // upstream error texts
    let err = s.fails(k, &["get", "-n", ns, "cm", "nope"]);
    assert_eq!(err.trim(), "Error from server (NotFound): configmaps \"nope\" not found");
    let err = s.fails(k, &["get", "-n", ns, "deploy", "nope"]);
    assert_eq!(err.trim(), "Error from server (NotFound): deployments.apps \"nope\" not found");
    let bad = write(dir.path(), "bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n");
    let err = s.fails(k, &["create", "-n", ns, "-f", &bad]);
    assert!(
        err.contains("The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of"),
        "{err}"
    );
    let err = s.fails(k, &["create", "-n", ns, "-f", &manifest]);
    assert!(err.contains("Error from server (AlreadyExists)") && err.contains("configmaps \"web-config\" already exists"), "{err}");

    // get -w sees a create made after the watch started.
    let (tx, rx) = mpsc::channel();
    let mut watch = Command::new(k)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .args(["get", "cm", "-n", ns, "-w", "--no-headers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The initial listing arrives first; then the new object.
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("watch printed the existing objects");
    assert!(first.starts_with("kube-root-ca.crt") || first.starts_with("lit") || first.starts_with("web-config"), "{first}");
    s.ok(k, &["create", "-n", ns, "-f", &write(dir.path(), "late.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late\n")]);
    let mut seen = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if line.starts_with("late ") {
            seen = true;
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen, "kubectl get -w did not show the configmap created after it started");

    // delete -f, delete --all
    let out = s.ok(k, &["delete", "-n", ns, "-f", &manifest]);
    for line in
        ["deployment.apps \"web\" deleted", "service \"web\" deleted", "configmap \"web-config\" deleted", "secret \"web-secret\" deleted"]
    {
        assert!(out.contains(line), "{line} missing in {out}");
    }
    let err = s.fails(k, &["get", "-n", ns, "deploy", "web"]);
    assert!(err.contains("NotFound"), "{err}");
    let out = s.ok(k, &["delete", "-n", ns, "cm", "--all"]);
    assert!(out.contains("configmap \"lit\" deleted") && out.contains("configmap \"late\" deleted"), "{out}");
    assert_eq!(s.ok(k, &["get", "-n", ns, "cm", "-o", "name"]).trim(), "");

    // delete namespace: Terminating, then gone once its contents are cleaned up.
    let out = s.ok(k, &["delete", "namespace", ns, "--timeout=60s"]);
    assert_eq!(out.trim(), format!("namespace \"{ns}\" deleted"));
    let err = s.fails(k, &["get", "namespace", ns]);
    assert!(err.contains("NotFound"), "{err}");
}

#[test]
fn kubectl_1_27_everyday_verbs() {
    let s = Server::start();
    everyday_verbs(&s, KUBECTL_127, "team-127");
}

#[test]
fn kubectl_1_30_everyday_verbs() {
    let s = Server::start();
    everyday_verbs(&s, KUBECTL_130, "team-130");
}

#[test]
fn kubectl_1_33_everyday_verbs() {
    let s = Server::start();
    everyday_verbs(&s, KUBECTL_133, "team-133");
}
