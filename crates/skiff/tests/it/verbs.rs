//! kubectl verbs that need no running containers, with kubectl 1.27 and 1.33 (whoami: 1.30 and
//! 1.33), each checked on what kubectl prints or on the objects it wrote: `describe` (with Events
//! found through `involvedObject.*` field selectors), `wait` (condition, jsonpath, delete),
//! `api-resources -o wide`, `auth whoami`, the `create` generators, and `get` with `--sort-by`,
//! `--chunk-size`, `custom-columns` and `go-template`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{KUBECTL_127, KUBECTL_130, KUBECTL_133, Server, wait_for};

/// `what` in `out`, with runs of spaces counting as one: describe's column widths depend on
/// which sections an object has.
fn has(out: &str, what: &str) {
    let squash = |s: &str| s.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
    assert!(squash(out).contains(&squash(what)), "expected {what:?} in:\n{out}");
}

fn jp(s: &Server, k: &str, ns: &str, what: &str, path: &str) -> String {
    s.ok(k, &["-n", ns, "get", what, "-o", &format!("jsonpath={path}")])
}

/// A core/v1 Event about an object, as a component would report it.
#[allow(clippy::too_many_arguments)] // one Event's fields, spelled out at each call
fn event_for(s: &Server, k: &str, ev_ns: &str, kind: &str, api_version: &str, name: &str, obj_ns: Option<&str>, uid: &str, reason: &str) {
    let ns_line = obj_ns.map(|n| format!(", namespace: {n}")).unwrap_or_default();
    let ev_name = format!("{name}.{}", reason.to_lowercase());
    let manifest = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: {ev_name}, namespace: {ev_ns}}}\n\
         involvedObject: {{kind: {kind}, apiVersion: {api_version}, name: {name}{ns_line}, uid: {uid}}}\n\
         reason: {reason}\nmessage: {reason} happened to {name}\ntype: Warning\nsource: {{component: e2e}}\ncount: 2\n\
         firstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\n"
    );
    let out = s.kubectl_stdin(k, &["apply", "-f", "-"], Some(&manifest));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn describe_flows(s: &Server, k: &str, ns: &str) {
    s.ok(k, &["create", "namespace", ns]);
    s.ok(k, &["-n", ns, "run", "web", "--image=registry.local/web:1", "--labels=app=web"]);
    s.ok(k, &["-n", ns, "create", "deployment", "api", "--image=registry.local/api:2", "--replicas=2"]);
    s.ok(k, &["-n", ns, "create", "service", "clusterip", "web", "--tcp=80:8080"]);
    s.ok(k, &["-n", ns, "create", "configmap", "conf", "--from-literal=greeting=hello"]);
    s.ok(k, &["-n", ns, "create", "secret", "generic", "creds", "--from-literal=password=s3cr3t"]);
    let node = format!("node-{ns}");
    let manifest = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: {{disk: ssd}}}}\nspec: {{podCIDR: 10.244.0.0/24}}\n\
         status:\n  capacity: {{cpu: \"4\", memory: 8Gi, pods: \"110\"}}\n  allocatable: {{cpu: \"4\", memory: 8Gi, pods: \"110\"}}\n"
    );
    assert!(s.kubectl_stdin(k, &["apply", "-f", "-"], Some(&manifest)).status.success());

    let uid = |what: &str, ns: &str| jp(s, k, ns, what, "{.metadata.uid}");
    for (kind, av, name, what) in [
        ("Pod", "v1", "web", "pod/web"),
        ("Deployment", "apps/v1", "api", "deployment/api"),
        ("Service", "v1", "web", "service/web"),
        ("ConfigMap", "v1", "conf", "configmap/conf"),
    ] {
        event_for(s, k, ns, kind, av, name, Some(ns), &uid(what, ns), &format!("Checked{kind}"));
    }
    // Node events live in `default` with no involvedObject namespace, as the kubelet writes them.
    event_for(s, k, "default", "Node", "v1", &node, None, &uid(&format!("node/{node}"), "default"), "CheckedNode");

    let d = |what: &str| s.ok(k, &["-n", ns, "describe", what]);
    let pod = d("pod/web");
    has(&pod, "Name:             web");
    has(&pod, &format!("Namespace:        {ns}"));
    has(&pod, "Image:        registry.local/web:1");
    has(&pod, "Status:           Pending");
    has(&pod, "QoS Class:       BestEffort");
    has(&pod, "Warning  CheckedPod");
    has(&pod, "CheckedPod happened to web");
    has(&pod, "(x2 over");

    let deploy = d("deployment/api");
    has(&deploy, "Selector:               app=api");
    has(&deploy, "Replicas:               2 desired");
    has(&deploy, "StrategyType:           RollingUpdate");
    has(&deploy, "RollingUpdateStrategy:  25% max unavailable, 25% max surge");
    has(&deploy, "Image:         registry.local/api:2");
    has(&deploy, "CheckedDeployment happened to api");

    let svc = d("service/web");
    has(&svc, "Type:                     ClusterIP");
    has(&svc, "TargetPort:               8080/TCP");
    has(&svc, &format!("IP:                       {}", jp(s, k, ns, "service/web", "{.spec.clusterIP}")));
    has(&svc, "CheckedService happened to web");

    let cm = d("configmap/conf");
    has(&cm, "greeting:\n----\nhello");
    has(&cm, "CheckedConfigMap happened to conf");

    let secret = d("secret/creds");
    has(&secret, "Type:  Opaque");
    has(&secret, "password:  6 bytes");
    assert!(!secret.contains("s3cr3t"), "describe must not print secret values:\n{secret}");
    // Upstream's secret describer shows no events.

    let node_out = s.ok(k, &["describe", "node", &node]);
    has(&node_out, &format!("Name:               {node}"));
    has(&node_out, "disk=ssd");
    has(&node_out, "PodCIDR:                      10.244.0.0/24");
    has(&node_out, "Non-terminated Pods:          (0 in total)");
    has(&node_out, "cpu                0 (0%)");
    has(&node_out, "CheckedNode happened to");

    s.ok(k, &["-n", ns, "create", "quota", "small", "--hard=pods=10"]);
    let nsd = s.ok(k, &["describe", "namespace", ns]);
    has(&nsd, &format!("Name:         {ns}"));
    has(&nsd, "Status:       Active");
    has(&nsd, "Name:     small");
    has(&nsd, "No LimitRange resource.");
}

#[test]
fn kubectl_1_27_describe() {
    let s = Server::start_with(&["--disable-scheduler"]);
    describe_flows(&s, KUBECTL_127, "describe-127");
}

#[test]
fn kubectl_1_33_describe() {
    let s = Server::start_with(&["--disable-scheduler"]);
    describe_flows(&s, KUBECTL_133, "describe-133");
}

#[test]
fn kubectl_1_30_describe() {
    let s = Server::start_with(&["--disable-scheduler"]);
    describe_flows(&s, KUBECTL_130, "describe-130");
}

fn spawn(s: &Server, k: &str, args: &[&str]) -> Child {
    Command::new(k)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl")
}

/// Waits for a background kubectl and returns (success, stdout + stderr).
fn finish(c: Child) -> (bool, String) {
    let out = c.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A watch kubectl starts must be established before the change it waits for is made; kubectl
/// lists first, so a change made before that also satisfies it. Either way `wait` must return.
fn pause() {
    std::thread::sleep(Duration::from_millis(700));
}

fn wait_flows(s: &Server, k: &str, ns: &str) {
    s.ok(k, &["create", "namespace", ns]);
    s.ok(k, &["-n", ns, "run", "p", "--image=registry.local/x:1"]);

    let waiter = spawn(s, k, &["-n", ns, "wait", "--for=condition=Ready", "pod/p", "--timeout=30s"]);
    pause();
    let cond = r#"{"status":{"conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    s.ok(k, &["-n", ns, "patch", "pod/p", "--subresource=status", "--type=merge", "-p", cond]);
    let (ok, out) = finish(waiter);
    assert!(ok, "{out}");
    has(&out, "pod/p condition met");

    // A condition that does not hold times out with upstream's message.
    let out = s.fails(k, &["-n", ns, "wait", "--for=condition=Ready=false", "pod/p", "--timeout=1s"]);
    has(&out, "timed out waiting for the condition on pods/p");

    let waiter = spawn(s, k, &["-n", ns, "wait", "--for=jsonpath={.status.phase}=Running", "pod/p", "--timeout=30s"]);
    pause();
    s.ok(k, &["-n", ns, "patch", "pod/p", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#]);
    let (ok, out) = finish(waiter);
    assert!(ok, "{out}");
    has(&out, "pod/p condition met");

    // Waiting for deletion.
    s.ok(k, &["-n", ns, "create", "configmap", "gone-soon"]);
    let waiter = spawn(s, k, &["-n", ns, "wait", "--for=delete", "configmap/gone-soon", "--timeout=30s"]);
    pause();
    s.ok(k, &["-n", ns, "delete", "configmap/gone-soon"]);
    let (ok, out) = finish(waiter);
    assert!(ok, "{out}");
    has(&out, "configmap/gone-soon condition met");
    // Already gone: succeeds at once.
    s.ok(k, &["-n", ns, "wait", "--for=delete", "configmap/gone-soon", "--timeout=5s"]);
}

#[test]
fn kubectl_1_27_wait() {
    let s = Server::start_with(&["--disable-scheduler"]);
    wait_flows(&s, KUBECTL_127, "wait-127");
}

#[test]
fn kubectl_1_33_wait() {
    let s = Server::start_with(&["--disable-scheduler"]);
    wait_flows(&s, KUBECTL_133, "wait-133");
}

#[test]
fn kubectl_1_30_wait() {
    let s = Server::start_with(&["--disable-scheduler"]);
    wait_flows(&s, KUBECTL_130, "wait-130");
}

/// The row of `api-resources -o wide` for a resource, columns split on runs of spaces.
fn resource_row(table: &str, name: &str, api_version: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name) && cols.iter().any(|c| c == api_version))
        .unwrap_or_else(|| panic!("no {name} {api_version} row in:\n{table}"))
}

#[test]
fn kubectl_api_resources_and_whoami() {
    let s = Server::start();
    for k in [KUBECTL_127, KUBECTL_133] {
        let table = s.ok(k, &["api-resources", "-o", "wide"]);
        let all = "create,delete,deletecollection,get,list,patch,update,watch";
        assert_eq!(resource_row(&table, "pods", "v1"), ["pods", "po", "v1", "true", "Pod", all, "all"]);
        assert_eq!(
            resource_row(&table, "namespaces", "v1"),
            ["namespaces", "ns", "v1", "false", "Namespace", "create,delete,get,list,patch,update,watch"]
        );
        assert_eq!(resource_row(&table, "secrets", "v1"), ["secrets", "v1", "true", "Secret", all]);
        assert_eq!(resource_row(&table, "deployments", "apps/v1"), ["deployments", "deploy", "apps/v1", "true", "Deployment", all, "all"]);
        assert_eq!(
            resource_row(&table, "selfsubjectreviews", "authentication.k8s.io/v1"),
            ["selfsubjectreviews", "authentication.k8s.io/v1", "false", "SelfSubjectReview", "create"]
        );
        let namespaced = s.ok(k, &["api-resources", "--namespaced=false", "-o", "name"]);
        has(&namespaced, "nodes\n");
        assert!(!namespaced.contains("pods\n"), "{namespaced}");
    }

    // kubectl 1.30+ posts authentication.k8s.io/v1 (1.33 as protobuf).
    for k in [KUBECTL_130, KUBECTL_133] {
        let out = s.ok(k, &["auth", "whoami"]);
        has(&out, "ATTRIBUTE   VALUE");
        has(&out, "Username    system:admin");
        has(&out, "system:authenticated]");
        let json: serde_json::Value = serde_json::from_str(&s.ok(k, &["auth", "whoami", "-o", "json"])).unwrap();
        assert_eq!(json["kind"], "SelfSubjectReview");
        assert_eq!(json["status"]["userInfo"]["username"], "system:admin");
    }
    // kubectl 1.27 only knows v1alpha1/v1beta1, which a 1.33 server no longer serves either.
    let err = s.fails(KUBECTL_127, &["auth", "whoami"]);
    has(&err, "the selfsubjectreviews API is not enabled in the cluster");
}

fn create_flows(s: &Server, k: &str, ns: &str) {
    s.ok(k, &["create", "namespace", ns]);
    let out = s.ok(k, &["-n", ns, "create", "job", "once", "--image=registry.local/job:1", "--", "/bin/echo", "hi"]);
    assert_eq!(out.trim(), "job.batch/once created");
    assert_eq!(jp(s, k, ns, "job/once", "{.spec.template.spec.containers[0].image}"), "registry.local/job:1");
    assert_eq!(jp(s, k, ns, "job/once", "{.spec.template.spec.containers[0].command}"), r#"["/bin/echo","hi"]"#);
    assert_eq!(jp(s, k, ns, "job/once", "{.spec.template.spec.restartPolicy}"), "Never");

    let out = s.ok(k, &["-n", ns, "create", "cronjob", "tick", "--image=registry.local/job:1", "--schedule=*/5 * * * *"]);
    assert_eq!(out.trim(), "cronjob.batch/tick created");
    assert_eq!(jp(s, k, ns, "cronjob/tick", "{.spec.schedule}"), "*/5 * * * *");
    assert_eq!(jp(s, k, ns, "cronjob/tick", "{.spec.jobTemplate.spec.template.spec.restartPolicy}"), "OnFailure");
    // A job from the cronjob's template, owned by it.
    s.ok(k, &["-n", ns, "create", "job", "manual", "--from=cronjob/tick"]);
    assert_eq!(jp(s, k, ns, "job/manual", "{.metadata.ownerReferences[0].name}"), "tick");

    assert_eq!(s.ok(k, &["-n", ns, "create", "serviceaccount", "robot"]).trim(), "serviceaccount/robot created");
    assert_eq!(jp(s, k, ns, "serviceaccount/robot", "{.metadata.name}"), "robot");

    assert_eq!(s.ok(k, &["-n", ns, "create", "quota", "q", "--hard=pods=10,requests.cpu=2"]).trim(), "resourcequota/q created");
    assert_eq!(jp(s, k, ns, "resourcequota/q", "{.spec.hard.pods}"), "10");
    assert_eq!(jp(s, k, ns, "resourcequota/q", "{.spec.hard.requests\\.cpu}"), "2");

    let pc = format!("pc-{ns}");
    let out = s.ok(k, &["create", "priorityclass", &pc, "--value=1000", "--description=batch work", "--preemption-policy=Never"]);
    assert_eq!(out.trim(), format!("priorityclass.scheduling.k8s.io/{pc} created"));
    assert_eq!(jp(s, k, "default", &format!("priorityclass/{pc}"), "{.value} {.description} {.preemptionPolicy}"), "1000 batch work Never");

    let out = s.ok(k, &["-n", ns, "create", "service", "clusterip", "db", "--tcp=5432:5433"]);
    assert_eq!(out.trim(), "service/db created");
    assert_eq!(jp(s, k, ns, "service/db", "{.spec.type} {.spec.ports[0].port} {.spec.ports[0].targetPort}"), "ClusterIP 5432 5433");
    assert_eq!(jp(s, k, ns, "service/db", "{.spec.ports[0].nodePort}"), "", "a ClusterIP service has no node port");
    assert!(jp(s, k, ns, "service/db", "{.spec.clusterIP}").starts_with("10."));
    let out = s.ok(k, &["-n", ns, "create", "service", "clusterip", "headless", "--clusterip=None"]);
    assert_eq!(out.trim(), "service/headless created");
    assert_eq!(jp(s, k, ns, "service/headless", "{.spec.clusterIP}"), "None");

    // `kubectl expose` reads the selector from what it exposes.
    s.ok(k, &["-n", ns, "create", "deployment", "web", "--image=registry.local/web:1", "--port=8080"]);
    assert_eq!(s.ok(k, &["-n", ns, "expose", "deployment", "web", "--port=80", "--target-port=8080"]).trim(), "service/web exposed");
    assert_eq!(
        jp(
            s,
            k,
            ns,
            "service/web",
            "{.spec.type} {.spec.selector.app} {.spec.ports[0].port} {.spec.ports[0].targetPort} {.spec.ports[0].protocol}"
        ),
        "ClusterIP web 80 8080 TCP"
    );
    s.ok(k, &["-n", ns, "run", "solo", "--image=registry.local/web:1", "--labels=app=solo,tier=x", "--port=9000"]);
    assert_eq!(s.ok(k, &["-n", ns, "expose", "pod", "solo", "--port=90", "--type=NodePort"]).trim(), "service/solo exposed");
    assert_eq!(
        jp(s, k, ns, "service/solo", "{.spec.type} {.spec.selector.app} {.spec.selector.tier} {.spec.ports[0].targetPort}"),
        "NodePort solo x 90"
    );
    let np: u16 = jp(s, k, ns, "service/solo", "{.spec.ports[0].nodePort}").parse().expect("a node port");
    assert!((30000..=32767).contains(&np), "{np}");
    assert_eq!(
        s.ok(k, &["-n", ns, "expose", "service", "web", "--name=web-lb", "--port=443", "--type=LoadBalancer"]).trim(),
        "service/web-lb exposed"
    );
    assert_eq!(jp(s, k, ns, "service/web-lb", "{.spec.type} {.spec.selector.app} {.spec.ports[0].port}"), "LoadBalancer web 443");
    let err = s.fails(k, &["-n", ns, "expose", "deployment", "web", "--name=Bad.Name", "--port=80"]);
    assert!(err.contains("metadata.name: Invalid value: \"Bad.Name\""), "{err}");

    // `kubectl set selector` replaces a Service's selector.
    assert_eq!(s.ok(k, &["-n", ns, "set", "selector", "service", "web", "app=web2,tier=front"]).trim(), "service/web selector updated");
    assert_eq!(jp(s, k, ns, "service/web", "{.spec.selector}"), r#"{"app":"web2","tier":"front"}"#);
}

#[test]
fn kubectl_1_27_create_generators() {
    let s = Server::start_with(&["--disable-scheduler"]);
    create_flows(&s, KUBECTL_127, "create-127");
}

#[test]
fn kubectl_1_33_create_generators() {
    let s = Server::start_with(&["--disable-scheduler"]);
    create_flows(&s, KUBECTL_133, "create-133");
}

#[test]
fn kubectl_1_30_create_generators() {
    let s = Server::start_with(&["--disable-scheduler"]);
    create_flows(&s, KUBECTL_130, "create-130");
}

fn get_flows(s: &Server, k: &str, ns: &str) {
    s.ok(k, &["create", "namespace", ns]);
    // Created out of name order, and with increasing sizes in reverse name order.
    for (name, n) in [("b", "22"), ("c", "1"), ("a", "333")] {
        s.ok(k, &["-n", ns, "create", "configmap", name, &format!("--from-literal=n={n}")]);
        // creationTimestamp has a resolution of a second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let names = |out: &str| out.lines().skip(1).map(|l| l.split_whitespace().next().unwrap_or_default().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&s.ok(k, &["-n", ns, "get", "configmaps", "--sort-by=.metadata.creationTimestamp"])), ["b", "c", "a"]);
    assert_eq!(names(&s.ok(k, &["-n", ns, "get", "configmaps", "--sort-by={.data.n}"])), ["c", "b", "a"]);
    assert_eq!(names(&s.ok(k, &["-n", ns, "get", "configmaps", "--sort-by=.metadata.name"])), ["a", "b", "c"]);

    let out = s.ok(k, &["-n", ns, "get", "configmaps", "-o", "custom-columns=NAME:.metadata.name,VALUE:.data.n,NS:.metadata.namespace"]);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, [vec!["NAME", "VALUE", "NS"], vec!["a", "333", ns], vec!["b", "22", ns], vec!["c", "1", ns]]);

    let out = s.ok(k, &["-n", ns, "get", "configmaps", "-o", "go-template={{range .items}}{{.metadata.name}}={{.data.n}};{{end}}"]);
    assert_eq!(out, "a=333;b=22;c=1;");
    let out = s.ok(k, &["-n", ns, "get", "configmap", "b", "-o", "go-template={{.kind}}/{{.metadata.name}} {{len .data}}"]);
    assert_eq!(out, "ConfigMap/b 1");

    // One page per object: three list calls with limit=1 and continue tokens, one table.
    let out = s.kubectl(k, &["-n", ns, "get", "configmaps", "--chunk-size=1", "-v=6"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let pages = log.lines().filter(|l| l.contains("/configmaps?") && l.contains("limit=1")).count();
    assert_eq!(pages, 3, "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("continue=")).count(), 2, "{log}");
    assert_eq!(names(&String::from_utf8_lossy(&out.stdout)), ["a", "b", "c"]);
}

#[test]
fn kubectl_1_27_get_output() {
    let s = Server::start_with(&["--disable-scheduler"]);
    get_flows(&s, KUBECTL_127, "get-127");
}

#[test]
fn kubectl_1_33_get_output() {
    let s = Server::start_with(&["--disable-scheduler"]);
    get_flows(&s, KUBECTL_133, "get-133");
}

#[test]
fn kubectl_1_30_get_output() {
    let s = Server::start_with(&["--disable-scheduler"]);
    get_flows(&s, KUBECTL_130, "get-130");
}

/// `describe` of a pod whose Events arrive later shows them on the next call (field selectors
/// are evaluated on every list, not cached per object).
#[test]
fn describe_sees_new_events() {
    let s = Server::start_with(&["--disable-scheduler"]);
    let k = KUBECTL_133;
    s.ok(k, &["run", "late", "--image=registry.local/x:1"]);
    let uid = jp(&s, k, "default", "pod/late", "{.metadata.uid}");
    let before = s.ok(k, &["describe", "pod/late"]);
    assert!(before.lines().any(|l| l.starts_with("Events:") && l.trim_end().ends_with("<none>")), "{before}");
    event_for(&s, k, "default", "Pod", "v1", "late", Some("default"), &uid, "Arrived");
    // An event about another object with the same name must not show up.
    event_for(&s, k, "default", "ConfigMap", "v1", "late", Some("default"), "other-uid", "Unrelated");
    let out = wait_for("event in describe", Duration::from_secs(10), || {
        let out = s.ok(k, &["describe", "pod/late"]);
        out.contains("Arrived happened to late").then_some(out)
    });
    assert!(!out.contains("Unrelated"), "{out}");
}
