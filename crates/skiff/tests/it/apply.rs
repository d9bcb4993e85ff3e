//! kubectl's patch-based verbs against `skiff server`, with kubectl 1.27, 1.30 and 1.33:
//! client-side `apply` (three-way strategic merge patches with `$setElementOrder` and
//! `$patch: delete`), `diff`, `patch` (strategic by default), `edit`, `set`, `rollout restart`,
//! `cordon`; and the errors upstream gives for malformed strategic patches.

use std::path::Path;
use std::process::Command;

use crate::harness::{KUBECTL_127, KUBECTL_130, KUBECTL_133, Server};

fn deployment(replicas: u32, containers: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {labels}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
{containers}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

const TWO_PORTS: &str =
    "      - name: web\n        image: registry.local/web:1\n        ports: [{containerPort: 8080}, {containerPort: 9090}]\n";
const ONE_PORT: &str = "      - name: web\n        image: registry.local/web:1\n        ports: [{containerPort: 8080}]\n";
const WEB_THEN_SIDE: &str = "      - name: web\n        image: registry.local/web:1\n        ports: [{containerPort: 8080}]\n      - name: side\n        image: registry.local/side:1\n";
const SIDE_THEN_WEB: &str = "      - name: side\n        image: registry.local/side:1\n      - name: web\n        image: registry.local/web:1\n        ports: [{containerPort: 8080}]\n";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn get(s: &Server, k: &str, ns: &str, what: &str, path: &str) -> String {
    s.ok(k, &["-n", ns, "get", what, "-o", &format!("jsonpath={path}")])
}

/// `kubectl patch` (strategic by default) of the web Deployment's pod template containers.
fn patch_containers(s: &Server, k: &str, ns: &str, containers: &str) -> String {
    let body = format!(r#"{{"spec":{{"template":{{"spec":{{"containers":{containers}}}}}}}}}"#);
    s.ok(k, &["-n", ns, "patch", "deployment/web", "-p", &body])
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

fn apply_flows(s: &Server, k: &str, ns: &str) {
    s.ok(k, &["create", "namespace", ns]);
    let dir = s.data_dir.join(format!("manifests-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = write(&dir, "web.yaml", &deployment(2, TWO_PORTS, "{app: web, tier: front}"));

    // Create a multi-document file, then re-apply it unchanged: nothing is written.
    let out = s.ok(k, &["-n", ns, "apply", "-f", &file]);
    assert_eq!(lines(&out), ["deployment.apps/web created", "service/web created"], "{out}");
    let rv = settled_rv(s, k, ns, "deployment/web");
    let cluster_ip = get(s, k, ns, "service/web", "{.spec.clusterIP}");
    assert!(!cluster_ip.is_empty());
    let out = s.ok(k, &["-n", ns, "apply", "-f", &file]);
    assert_eq!(lines(&out), ["deployment.apps/web unchanged", "service/web unchanged"], "{out}");
    assert_eq!(get(s, k, ns, "deployment/web", "{.metadata.resourceVersion}"), rv);
    let last = get(s, k, ns, "deployment/web", r"{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}");
    assert!(last.contains(r#""replicas":2"#), "{last}");

    // `kubectl diff` on an unchanged object prints nothing and exits 0.
    let out = s.kubectl(k, &["-n", ns, "diff", "-f", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");

    // Someone else annotates the live object; the manifest then changes a field, drops a
    // container port and a label. The dropped things go, the foreign annotation stays.
    s.ok(k, &["-n", ns, "annotate", "deployment/web", "team=blue"]);
    write(&dir, "web.yaml", &deployment(3, ONE_PORT, "{app: web}"));
    let out = s.kubectl(k, &["-n", ns, "diff", "-f", &file]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("-  replicas: 2") && diff.contains("+  replicas: 3"), "{diff}");
    assert!(diff.contains("-        - containerPort: 9090"), "{diff}");
    let out = s.ok(k, &["-n", ns, "apply", "-f", &file]);
    assert_eq!(lines(&out), ["deployment.apps/web configured", "service/web unchanged"], "{out}");
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.replicas}"), "3");
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[0].ports[*].containerPort}"), "8080");
    assert_eq!(get(s, k, ns, "deployment/web", "{.metadata.labels}"), r#"{"app":"web"}"#);
    assert_eq!(get(s, k, ns, "deployment/web", "{.metadata.annotations.team}"), "blue");
    // The Service kept the clusterIP the server allocated (the manifest never names one).
    assert_eq!(get(s, k, ns, "service/web", "{.spec.clusterIP}"), cluster_ip);

    // A second container, then the two swapped in the manifest: `$setElementOrder` reorders.
    write(&dir, "web.yaml", &deployment(3, WEB_THEN_SIDE, "{app: web}"));
    s.ok(k, &["-n", ns, "apply", "-f", &file]);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[*].name}"), "web side");
    write(&dir, "web.yaml", &deployment(3, SIDE_THEN_WEB, "{app: web}"));
    s.ok(k, &["-n", ns, "apply", "-f", &file]);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[*].name}"), "side web");

    // A directory, then --prune with an allowlist removes what left the directory.
    let cfg = dir.join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    let cm = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {{app: cfg}}\ndata: {{k: v}}\n");
    write(&cfg, "a.yaml", &cm("cm-a"));
    write(&cfg, "b.yaml", &cm("cm-b"));
    let cfg_dir = cfg.to_string_lossy().into_owned();
    let out = s.ok(k, &["-n", ns, "apply", "-f", &cfg_dir]);
    assert_eq!(lines(&out), ["configmap/cm-a created", "configmap/cm-b created"], "{out}");
    std::fs::remove_file(cfg.join("b.yaml")).unwrap();
    let out = s.ok(k, &["-n", ns, "apply", "-f", &cfg_dir, "--prune", "-l", "app=cfg", "--prune-allowlist=core/v1/ConfigMap"]);
    assert_eq!(lines(&out), ["configmap/cm-a unchanged", "configmap/cm-b pruned"], "{out}");
    assert!(s.fails(k, &["-n", ns, "get", "configmap", "cm-b"]).contains("NotFound"));

    // kubectl patch defaults to a strategic merge patch: containers merge by name.
    patch_containers(s, k, ns, r#"[{"name":"side","image":"registry.local/side:2"}]"#);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[*].image}"), "registry.local/side:2 registry.local/web:1");
    patch_containers(s, k, ns, r#"[{"name":"side","$patch":"delete"}]"#);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[*].name}"), "web");

    // The `set` family and `rollout restart` send strategic patches too.
    s.ok(k, &["-n", ns, "set", "image", "deployment/web", "web=registry.local/web:2"]);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[0].image}"), "registry.local/web:2");
    s.ok(k, &["-n", ns, "set", "env", "deployment/web", "MODE=fast", "LEVEL=3"]);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[0].env[*].name}"), "MODE LEVEL");
    s.ok(k, &["-n", ns, "set", "env", "deployment/web", "MODE-"]);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[0].env[*].name}"), "LEVEL");
    s.ok(k, &["-n", ns, "set", "resources", "deployment/web", "--limits=cpu=200m,memory=64Mi"]);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[0].resources.limits.cpu}"), "200m");
    s.ok(k, &["-n", ns, "rollout", "restart", "deployment/web"]);
    let restarted = get(s, k, ns, "deployment/web", r"{.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}");
    assert!(restarted.starts_with("20"), "{restarted}");

    // kubectl edit with an editor script.
    let editor = write(&dir, "editor.sh", "#!/bin/sh\nsed -i 's/replicas: 3/replicas: 5/' \"$1\"\n");
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(k)
        .args(["--kubeconfig"])
        .arg(&s.kubeconfig)
        .args(["-n", ns, "edit", "deployment/web"])
        .env("EDITOR", &editor)
        .env("KUBECACHEDIR", s.data_dir.join(format!("kcache-edit-{ns}")))
        .output()
        .unwrap();
    assert!(out.status.success(), "edit: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deployment.apps/web edited");
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.replicas}"), "5");

    // Bad strategic patches: upstream's status codes and messages; nothing is written.
    let rv = settled_rv(s, k, ns, "deployment/web");
    let err = s.fails(
        k,
        &[
            "-n",
            ns,
            "patch",
            "deployment/web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","$patch":"explode"}]}}}}"#,
        ],
    );
    assert!(err.contains("(BadRequest)") && err.contains("unknown patch type: explode"), "{err}");
    let err = s.fails(k, &["-n", ns, "patch", "deployment/web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#]);
    assert!(err.contains("does not contain declared merge key: name"), "{err}");
    let err =
        s.fails(k, &["-n", ns, "patch", "deployment/web", "-p", r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":"web"}}}}"#]);
    assert!(err.contains("invalid patch format of setElementOrder list"), "{err}");
    let err = s.fails(k, &["-n", ns, "patch", "deployment/web", "-p", r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#]);
    assert!(err.contains("field is immutable"), "{err}");
    let err = s.fails(k, &["-n", ns, "patch", "service/web", "-p", r#"{"spec":{"clusterIP":"10.43.0.99"}}"#]);
    assert!(err.contains("is invalid") && err.contains("spec.clusterIP"), "{err}");
    assert_eq!(get(s, k, ns, "deployment/web", "{.metadata.resourceVersion}"), rv);

    // cordon/uncordon (strategic patches on a Node).
    let node = format!("node-{ns}");
    s.kubectl_stdin(k, &["create", "-f", "-"], Some(&format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n")));
    assert_eq!(s.ok(k, &["cordon", &node]).trim(), format!("node/{node} cordoned"));
    assert_eq!(s.ok(k, &["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"]), "true");
    assert_eq!(s.ok(k, &["uncordon", &node]).trim(), format!("node/{node} uncordoned"));
    assert_eq!(s.ok(k, &["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"]), "");
}

/// The object's field managers, without the controller manager's own entries (a Deployment's
/// revision annotation and status are the deployment controller's, as upstream).
fn managers(s: &Server, k: &str, ns: &str, what: &str) -> String {
    let all = get(s, k, ns, what, r#"{range .metadata.managedFields[*]}{.manager}/{.operation}{.subresource} {end}"#);
    all.split_whitespace().filter(|m| !m.starts_with("kube-controller-manager/")).collect::<Vec<_>>().join(" ")
}

/// Waits until the controllers stop writing to the object (its resourceVersion holds for 1 s).
fn settled_rv(s: &Server, k: &str, ns: &str, what: &str) -> String {
    let mut rv = get(s, k, ns, what, "{.metadata.resourceVersion}");
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = get(s, k, ns, what, "{.metadata.resourceVersion}");
        if now == rv {
            return rv;
        }
        rv = now;
    }
    panic!("{what} never settled");
}

fn server_side_apply_flows(s: &Server, k: &str, ns: &str) {
    s.ok(k, &["create", "namespace", ns]);
    let dir = s.data_dir.join(format!("ssa-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = write(&dir, "web.yaml", &deployment(2, TWO_PORTS, "{app: web}"));
    let ssa = |extra: &[&str]| {
        let mut args = vec!["-n", ns, "apply", "--server-side", "-f", &file];
        args.extend_from_slice(extra);
        s.kubectl(k, &args)
    };

    let out = ssa(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines(&String::from_utf8_lossy(&out.stdout)), ["deployment.apps/web serverside-applied", "service/web serverside-applied"]);
    assert_eq!(managers(s, k, ns, "deployment/web"), "kubectl/Apply");
    let rv = settled_rv(s, k, ns, "deployment/web");
    assert!(ssa(&[]).status.success());
    assert_eq!(get(s, k, ns, "deployment/web", "{.metadata.resourceVersion}"), rv, "re-applying the same manifest writes nothing");

    // Two appliers fight over spec.replicas: a 409 naming the field and its owner, then forced.
    // The autoscaler applies only what it manages.
    let other = write(&dir, "web-3.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 3}\n");
    let out = s.kubectl(k, &["-n", ns, "apply", "--server-side", "--field-manager=autoscaler", "-f", &other]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas"#), "{err}");
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.replicas}"), "2");
    s.ok(k, &["-n", ns, "apply", "--server-side", "--field-manager=autoscaler", "--force-conflicts", "-f", &other]);
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.replicas}"), "3");
    assert_eq!(managers(s, k, ns, "deployment/web"), "kubectl/Apply autoscaler/Apply");

    // kubectl stops applying replicas and a port: the port goes (only kubectl owned it), the
    // replicas stay (the autoscaler owns them).
    let fewer = deployment(2, ONE_PORT, "{app: web}").replace("  replicas: 2\n", "");
    write(&dir, "web.yaml", &fewer);
    assert!(ssa(&[]).status.success());
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.replicas}"), "3");
    assert_eq!(get(s, k, ns, "deployment/web", "{.spec.template.spec.containers[0].ports[*].containerPort}"), "8080");

    // An update through /scale is owned by its writer, with the subresource named.
    s.ok(k, &["-n", ns, "scale", "deployment/web", "--replicas=4"]);
    let out = s.kubectl(k, &["-n", ns, "apply", "--server-side", "--field-manager=autoscaler", "-f", &other]);
    let err = String::from_utf8_lossy(&out.stderr);
    // The manager is the User-Agent's program name: the binary's file name (`kubectl.1.33`).
    let bin = Path::new(k).file_name().unwrap().to_string_lossy();
    assert!(err.contains(&format!(r#"conflict with "{bin}" with subresource "scale" using apps/v1 at "#)), "{err}");

    // Migration from client-side apply: fields only the old manifest had are removed.
    let cm = write(&dir, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mig}\ndata: {k: v, old: x}\n");
    s.ok(k, &["-n", ns, "apply", "-f", &cm]);
    assert_eq!(managers(s, k, ns, "configmap/mig"), "kubectl-client-side-apply/Update");
    write(&dir, "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mig}\ndata: {k: v}\n");
    let out = s.ok(k, &["-n", ns, "apply", "--server-side", "-f", &cm]);
    assert_eq!(out.trim(), "configmap/mig serverside-applied");
    assert_eq!(get(s, k, ns, "configmap/mig", "{.data}"), r#"{"k":"v"}"#);
    assert!(!managers(s, k, ns, "configmap/mig").contains("kubectl-client-side-apply"));

    // Every write keeps managedFields: kubectl create records its manager.
    s.ok(k, &["-n", ns, "create", "configmap", "plain", "--from-literal=a=b"]);
    assert_eq!(managers(s, k, ns, "configmap/plain"), "kubectl-create/Update");
}

#[test]
fn kubectl_1_27_apply_patch_edit() {
    let s = Server::start();
    apply_flows(&s, KUBECTL_127, "apply-127");
    server_side_apply_flows(&s, KUBECTL_127, "ssa-127");
}

#[test]
fn kubectl_1_30_apply_patch_edit() {
    let s = Server::start();
    apply_flows(&s, KUBECTL_130, "apply-130");
    server_side_apply_flows(&s, KUBECTL_130, "ssa-130");
}

#[test]
fn kubectl_1_33_apply_patch_edit() {
    let s = Server::start();
    apply_flows(&s, KUBECTL_133, "apply-133");
    server_side_apply_flows(&s, KUBECTL_133, "ssa-133");
}

/// kube-rs `Api::patch` with strategic, merge and JSON patches round-trips.
#[tokio::test]
async fn kube_rs_patch_types() {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let s = Server::start();
    let client = s.kube_client().await;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kr"},
        "spec": {"selector": {"matchLabels": {"app": "kr"}}, "template": {"metadata": {"labels": {"app": "kr"}},
            "spec": {"containers": [{"name": "a", "image": "i:1"}, {"name": "b", "image": "j:1"}]}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let pp = PatchParams::default();

    let strategic = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "j:2"}]}}}});
    let out = api.patch("kr", &pp, &Patch::Strategic(&strategic)).await.unwrap();
    let images: Vec<_> = out.spec.unwrap().template.spec.unwrap().containers.into_iter().map(|c| c.image.unwrap()).collect();
    assert_eq!(images, ["i:1", "j:2"]);

    let merge = serde_json::json!({"metadata": {"labels": {"x": "y"}}});
    let out = api.patch("kr", &pp, &Patch::Merge(&merge)).await.unwrap();
    assert_eq!(out.metadata.labels.unwrap()["x"], "y");

    let json: json_patch::Patch =
        serde_json::from_value(serde_json::json!([{"op": "replace", "path": "/spec/replicas", "value": 4}])).unwrap();
    let out = api.patch("kr", &pp, &Patch::Json::<()>(json)).await.unwrap();
    assert_eq!(out.spec.unwrap().replicas, Some(4));

    // A malformed strategic patch is a 400 Status, and the object is untouched.
    let bad = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "bogus"}]}}}});
    match api.patch("kr", &pp, &Patch::Strategic(&bad)).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 400);
            assert!(e.message.contains("unknown patch type: bogus"), "{}", e.message);
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(api.get("kr").await.unwrap().spec.unwrap().replicas, Some(4));

    // Server-side apply through kube-rs: create, conflict, force.
    let cfg = |replicas: i32| {
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ssa"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "s"}},
                     "template": {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "a", "image": "i"}]}}}})
    };
    let out = api.patch("ssa", &PatchParams::apply("ctrl-a"), &Patch::Apply(cfg(1))).await.unwrap();
    assert_eq!(out.metadata.managed_fields.unwrap()[0].manager.as_deref(), Some("ctrl-a"));
    match api.patch("ssa", &PatchParams::apply("ctrl-b"), &Patch::Apply(cfg(2))).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
            assert_eq!(e.message, "Apply failed with 1 conflict: conflict with \"ctrl-a\": .spec.replicas");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let out = api.patch("ssa", &PatchParams::apply("ctrl-b").force(), &Patch::Apply(cfg(2))).await.unwrap();
    assert_eq!(out.spec.unwrap().replicas, Some(2));

    // Bad apply input: no fieldManager (422), a body of the wrong kind (400).
    match api.patch("ssa", &PatchParams::default(), &Patch::Apply(cfg(3))).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422);
            assert!(e.message.contains("fieldManager: Required value: is required for apply patch"), "{}", e.message);
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    let wrong = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}});
    match api.patch("ssa", &PatchParams::apply("ctrl-a"), &Patch::Apply(wrong)).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 400, "{}", e.message),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(api.get("ssa").await.unwrap().spec.unwrap().replicas, Some(2));
}
