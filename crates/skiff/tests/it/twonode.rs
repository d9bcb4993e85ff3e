//! Two nodes, each a `skiff agent` process with its own containerd (node1 next to a
//! `skiff server --disable-agent` in one network namespace, node2 joined with the server's
//! token in another, a veth pair between them; see netns.rs): pod to pod across nodes without NAT, a Service over
//! pods on both nodes, NodePort on each node, externalTrafficPolicy Local keeping the client's
//! address, internalTrafficPolicy Local, cluster DNS on the second node, and a pod whose
//! readiness fails dropping out of the Service within 2 s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::wait_for;
use crate::netns::{BUSYBOX, Cluster, NODE_IP, PEER_IP};

/// A pod on `node` serving `/cgi-bin/who` → "<pod name> <client address>" (busybox httpd hands
/// CGI scripts the client's address), ready while /tmp/ready exists.
fn web_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeName: {node}
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: ["sh", "-c"]
    args:
    - |
      mkdir -p /www/cgi-bin
      cat > /www/cgi-bin/who <<'EOF'
      #!/bin/sh
      echo Content-Type: text/plain
      echo
      echo {name} $(echo $REMOTE_ADDR | tr -d '[]' | sed s/::ffff://)
      EOF
      chmod +x /www/cgi-bin/who
      touch /tmp/ready
      exec httpd -f -p 8080 -h /www
    readinessProbe:
      exec: {{command: ["test", "-f", "/tmp/ready"]}}
      periodSeconds: 1
      failureThreshold: 1
---
"#
    )
}

fn client_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers:\n  - {{name: c, image: {BUSYBOX}, command: [sleep, '3600']}}\n---\n"
    )
}

/// How many of `n` requests from `pod` to `url` each "<backend> <source>" answer got.
fn tally(c: &Cluster, pod: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
    let script = format!("for i in $(seq {n}); do timeout 3 wget -qO- {url} || echo failed; done");
    let out = c.kubectl(&["exec", pod, "--", "sh", "-c", &script]);
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        *m.entry(l.trim().to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn two_nodes_pod_network_services_and_traffic_policies() {
    let mut c = Cluster::start_with(&["--lb-pool", "10.99.0.0/29", "--disable-agent"]);
    // Joined with the token (not the admin kubeconfig) so it gets a serving certificate and
    // `kubectl exec` reaches its pods.
    let (server, token) = (format!("https://{NODE_IP}:6443"), c.dir.join("token").display().to_string());
    c.start_agent_with(&["--server", &server, "--token-file", &token]);
    let b = c.add_peer();
    for n in ["node1", "node2"] {
        c.wait_jsonpath(&format!("node/{n}"), "{.status.conditions[?(@.type=='Ready')].status}", Duration::from_secs(60), |s| s == "True");
    }
    let mut yaml =
        web_pod("web-a", "node1") + &web_pod("web-b", "node2") + &client_pod("client-a", "node1") + &client_pod("client-b", "node2");
    yaml += r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30082}]
---
apiVersion: v1
kind: Service
metadata: {name: itp}
spec:
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;
    c.apply(&yaml);
    for p in ["web-a", "web-b", "client-a", "client-b"] {
        c.wait_jsonpath(&format!("pod/{p}"), "{.status.conditions[?(@.type=='Ready')].status}", Duration::from_secs(90), |s| s == "True");
    }
    let ip = |p: &str| c.jsonpath(&format!("pod/{p}"), "{.status.podIP}");
    let (web_b, client_a, client_b) = (ip("web-b"), ip("client-a"), ip("client-b"));
    assert!(web_b.starts_with("10.42.") && client_a.starts_with("10.42."), "{web_b} {client_a}");
    assert_ne!(web_b.rsplit_once('.').unwrap().0, client_a.rsplit_once('.').unwrap().0, "the nodes have different pod CIDRs");

    // Pod to pod across nodes by pod IP: the server sees the client pod's own address.
    let who = format!("http://{web_b}:8080/cgi-bin/who");
    wait_for("web-b from client-a", Duration::from_secs(20), || {
        tally(&c, "client-a", &who, 1).contains_key(&format!("web-b {client_a}")).then_some(())
    });

    // The ClusterIP over both nodes: 100 requests reach both backends, each seeing the client.
    let svc = c.jsonpath("service/web", "{.spec.clusterIP}");
    let url = format!("http://{svc}/cgi-bin/who");
    let t = tally(&c, "client-a", &url, 100);
    assert_eq!(t.values().sum::<usize>(), 100, "{t:?}");
    assert!(
        t.get(&format!("web-a {client_a}")).is_some_and(|n| *n > 10) && t.get(&format!("web-b {client_a}")).is_some_and(|n| *n > 10),
        "{t:?}"
    );

    // NodePort on each node's address, from either node; the LoadBalancer IP from a pod.
    for node_ip in [NODE_IP, PEER_IP] {
        let url = format!("http://{node_ip}:30081/cgi-bin/who");
        wait_for(&format!("{url} from node1"), Duration::from_secs(10), || c.http_get(&url));
        wait_for(&format!("{url} from node2"), Duration::from_secs(10), || b.http_get(&url));
    }
    let lb = c.wait_jsonpath("service/web", "{.status.loadBalancer.ingress[0].ip}", Duration::from_secs(20), |s| !s.is_empty());
    let t = tally(&c, "client-b", &format!("http://{lb}/cgi-bin/who"), 10);
    // (Masqueraded, as upstream does for external destinations under the Cluster policy.)
    assert_eq!(t.keys().filter(|k| k.starts_with("web-")).map(|k| t[k]).sum::<usize>(), 10, "{t:?}");

    // externalTrafficPolicy Local: node2's NodePort answers from node2's pod only and the pod
    // sees node1's own address (no masquerade).
    let url = format!("http://{PEER_IP}:30082/cgi-bin/who");
    for _ in 0..10 {
        let got = wait_for(&format!("{url} from node1"), Duration::from_secs(10), || c.http_get(&url));
        assert_eq!(got.trim(), format!("web-b {NODE_IP}"));
    }

    // internalTrafficPolicy Local: each client only reaches its own node's backend.
    let itp = c.jsonpath("service/itp", "{.spec.clusterIP}");
    let url = format!("http://{itp}/cgi-bin/who");
    assert_eq!(tally(&c, "client-a", &url, 10), BTreeMap::from([(format!("web-a {client_a}"), 10)]));
    assert_eq!(tally(&c, "client-b", &url, 10), BTreeMap::from([(format!("web-b {client_b}"), 10)]));

    // Cluster DNS answers on the second node too (its own server, Local internal traffic),
    // once that server has published itself.
    c.wait_jsonpath("-n kube-system endpointslice/kube-dns-node2", "{.endpoints[0].addresses[0]}", Duration::from_secs(20), |s| {
        s == PEER_IP
    });
    let out = c.kubectl(&["exec", "client-b", "--", "nslookup", "web.default.svc.cluster.local"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&svc),
        "{out:?}\n{}",
        b.logs().lines().filter(|l| l.contains("DNS") || l.contains("proxy")).collect::<Vec<_>>().join("\n")
    );
    let t = tally(&c, "client-b", "http://web.default/cgi-bin/who", 4);
    assert_eq!(t.values().sum::<usize>(), 4, "by name from node2: {t:?}");
    assert!(!t.contains_key("failed"), "{t:?}");

    // web-b turns unready: within 2 s the Service sends nothing more to it.
    let url = format!("http://{svc}/cgi-bin/who");
    let out = c.kubectl(&["exec", "web-b", "--", "rm", "/tmp/ready"]);
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    let gone = wait_for("web-b out of the Service", Duration::from_secs(10), || {
        let t = tally(&c, "client-a", &url, 10);
        (!t.keys().any(|k| k.starts_with("web-b")) && t.values().sum::<usize>() == 10).then(|| started.elapsed())
    });
    eprintln!("unready backend out of the Service after {gone:?}");
    assert!(gone < Duration::from_secs(2), "took {gone:?}");
    let t = tally(&c, "client-a", &url, 20);
    assert_eq!(t, BTreeMap::from([(format!("web-a {client_a}"), 20)]));

    drop(b);
    // Nothing was written to this machine's own network: the rules and routes lived in the
    // namespaces, which are gone now.
    assert!(!std::process::Command::new("nft").args(["list", "table", "ip", "skiff"]).output().unwrap().status.success());
}
