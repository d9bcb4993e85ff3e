//! Services through the proxy's nftables rules, with real pods (one node; see netns.rs): cluster
//! IP from a pod and from the node, NodePort on the node address and localhost, rejection without
//! endpoints, the `kubernetes` Service from a pod, rules gone with the Service, and a restarted
//! proxy leaving the table identical.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::wait_for;
use crate::netns::{BUSYBOX, Cluster, NODE_IP};

/// The proxy's table as nft lists it, without the countdowns of remembered affinity clients
/// (`expires 2h59m58s`), which tick on their own.
fn nft_table(c: &Cluster) -> String {
    let out = c.in_ns(&["nft", "list", "table", "ip", "skiff"]);
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    while let Some(i) = s.find(" expires ") {
        let rest = &s[i + 9..];
        let end = rest.find([',', ' ', '}', '\n']).unwrap_or(rest.len());
        s.replace_range(i..i + 9 + end, "");
    }
    s
}

/// Pages served through `url` by `n` requests from `argv_prefix` (kubectl exec or the node).
fn backends(get: impl Fn() -> Option<String>, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| get()).map(|s| s.trim().to_string()).collect()
}

#[test]
fn cluster_ip_and_node_port_reach_pods_and_rules_follow_the_service() {
    let mut c = Cluster::start_with(&["--lb-pool", "10.99.0.0/29"]);
    c.wait_jsonpath("node/node1", "{.status.conditions[?(@.type=='Ready')].status}", Duration::from_secs(30), |s| s == "True");
    c.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: httpd
        image: {BUSYBOX}
        command: ["sh", "-c", "echo $(POD_NAME) > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  sessionAffinity: ClientIP
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: nobody}}
spec:
  selector: {{app: nobody}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    volumeMounts:
    - {{name: kubectl, mountPath: /kubectl, readOnly: true}}
    - {{name: creds, mountPath: /creds, readOnly: true}}
  volumes:
  - name: kubectl
    hostPath: {{path: {kubectl}, type: File}}
  - name: creds
    hostPath: {{path: {creds}, type: File}}
"#,
        kubectl = crate::harness::KUBECTL_133,
        creds = c.kubeconfig.display(),
    ));
    c.wait_jsonpath("deployment/web", "{.status.availableReplicas}", Duration::from_secs(90), |s| s == "2");
    c.wait_jsonpath("pod/client", "{.status.phase}", Duration::from_secs(60), |s| s == "Running");
    let ip = c.jsonpath("service/web", "{.spec.clusterIP}");
    let pods: BTreeSet<String> =
        c.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]).split_whitespace().map(String::from).collect();
    assert_eq!(pods.len(), 2);

    // From a pod, by cluster IP: both backends answer.
    let from_pod = |url: &str| {
        let out = c.kubectl(&["exec", "client", "--", "timeout", "3", "wget", "-qO-", url]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let url = format!("http://{ip}/index.html");
    wait_for("the cluster IP from a pod", Duration::from_secs(20), || from_pod(&url));
    let seen = backends(|| from_pod(&url), 30);
    assert_eq!(seen, pods, "30 requests through the cluster IP reach both pods");

    // sessionAffinity ClientIP pins the client to one backend; the LoadBalancer IP from the pool
    // answers (from a pod: the test's node has no route to the pool, a real router would).
    let lb = c.wait_jsonpath("service/sticky", "{.status.loadBalancer.ingress[0].ip}", Duration::from_secs(20), |s| !s.is_empty());
    assert_eq!(lb, "10.99.0.1");
    let sticky = c.jsonpath("service/sticky", "{.spec.clusterIP}");
    for target in [sticky, lb] {
        let url = format!("http://{target}/index.html");
        wait_for(&format!("{url} from a pod"), Duration::from_secs(20), || from_pod(&url));
        let seen = backends(|| from_pod(&url), 10);
        assert_eq!(seen.len(), 1, "{url}: one backend for one client: {seen:?}");
    }

    // From the node itself: cluster IP, NodePort on the node address and on localhost.
    for url in [url.clone(), format!("http://{NODE_IP}:30080/index.html"), "http://127.0.0.1:30080/index.html".to_string()] {
        wait_for(&format!("{url} from the node"), Duration::from_secs(10), || c.http_get(&url));
        let seen = backends(|| c.http_get(&url), 20);
        assert!(seen.is_subset(&pods) && !seen.is_empty(), "{url}: {seen:?}");
    }

    // A Service without endpoints refuses at once (reject), from the node and from a pod.
    let nobody = c.jsonpath("service/nobody", "{.spec.clusterIP}");
    let t = Instant::now();
    let out = c.in_ns(&["timeout", "5", "/bin/busybox", "wget", "-O-", &format!("http://{nobody}/")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(3));
    let out = c.kubectl(&["exec", "client", "--", "sh", "-c", &format!("timeout 3 wget -O- http://{nobody}/ 2>&1")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused"), "{out:?}");
    // So does an address of the service CIDR that no Service has.
    let out = c.in_ns(&["timeout", "5", "/bin/busybox", "wget", "-O-", "http://10.43.255.254/"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{}", String::from_utf8_lossy(&out.stderr));

    // The `kubernetes` Service reaches the API server from inside a pod: kubectl (a static
    // binary from the host) verifies the serving certificate for 10.43.0.1 and reads /version.
    let out = c.kubectl(&[
        "exec",
        "client",
        "--",
        "/kubectl",
        "--kubeconfig",
        "/creds",
        "--server",
        "https://10.43.0.1",
        "get",
        "--raw",
        "/version",
    ]);
    assert!(out.status.success(), "kubernetes Service from a pod: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("gitVersion"), "{out:?}");

    // Restarting the proxy (it runs in the server's agent here) leaves the table identical.
    let before = nft_table(&c);
    assert!(before.contains(&format!("{ip} . tcp . 80 : goto svc-")), "{before}");
    c.kill_server();
    // While the proxy is down, its rules keep serving.
    assert!(c.http_get(&url).is_some(), "rules stay in place while the proxy is down");
    c.start_server();
    wait_for("the restarted proxy's first sync", Duration::from_secs(60), || c.logs().contains("proxy rules written").then_some(()));
    assert_eq!(nft_table(&c), before, "a restarted proxy rewrites the same table");

    // Deleting the Service removes its rules within a second or so.
    c.ok(&["delete", "service", "web"]);
    wait_for("rules of the deleted service gone", Duration::from_secs(5), || {
        (!nft_table(&c).contains(&format!("{ip} . tcp . 80"))).then_some(())
    });
    assert!(!nft_table(&c).contains("30080"));
    assert!(c.http_get(&url).is_none());

    // With skiff stopped, `skiff cleanup` takes every table, route, rule and the bridge away.
    c.kill_server();
    let out = c.in_ns(&[env!("CARGO_BIN_EXE_skiff"), "cleanup"]);
    assert!(out.status.success(), "skiff cleanup: {out:?}");
    let text = |argv: &[&str]| String::from_utf8_lossy(&c.in_ns(argv).stdout).into_owned();
    assert_eq!(text(&["nft", "list", "tables"]).trim(), "", "no nftables table left");
    assert!(!text(&["ip", "route", "show", "table", "all"]).contains("proto 211"), "{}", text(&["ip", "route", "show", "table", "all"]));
    assert!(!text(&["ip", "route", "show", "table", "all"]).contains("proto 212"));
    assert!(!text(&["ip", "rule", "show"]).contains("7460"), "{}", text(&["ip", "rule", "show"]));
    assert!(!c.in_ns(&["ip", "link", "show", "cni0"]).status.success(), "the CNI bridge is gone");
    let again = c.in_ns(&[env!("CARGO_BIN_EXE_skiff"), "cleanup"]);
    assert!(again.status.success(), "cleanup is idempotent: {again:?}");
}
