//! Cluster DNS from real pods (one node; see netns.rs): pods get the cluster resolver and search
//! path, Service names resolve to cluster IPs and are reachable by name, headless Services
//! resolve to their ready pods (and per-pod hostnames), SRV for named ports, pod and PTR
//! records, NXDOMAIN for names that do not exist; dnsPolicy Default and None are honoured.

use std::time::Duration;

use crate::harness::wait_for;
use crate::netns::{BUSYBOX, Cluster};

#[test]
fn pods_resolve_services_headless_pods_and_srv_through_cluster_dns() {
    let c = Cluster::start();
    c.wait_jsonpath("node/node1", "{.status.conditions[?(@.type=='Ready')].status}", Duration::from_secs(30), |s| s == "True");
    // kube-dns is bootstrapped at the 10th address, with this node's server as its endpoint.
    assert_eq!(c.ok(&["-n", "kube-system", "get", "service", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"]), "10.43.0.10");
    c.wait_jsonpath("-n kube-system endpointslice/kube-dns-node1", "{.endpoints[0].addresses[0]}", Duration::from_secs(20), |s| {
        s == crate::netns::NODE_IP
    });
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, labels: {{app: web}}}}
spec:
  hostname: web-0
  subdomain: db
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: ["sh", "-c", "echo web-0 > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: own-dns}}
spec:
  dnsPolicy: None
  dnsConfig:
    nameservers: ["10.1.2.3"]
    searches: ["corp.test"]
    options: [{{name: ndots, value: "2"}}]
  containers:
  - {{name: c, image: {BUSYBOX}, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: node-dns}}
spec:
  dnsPolicy: Default
  containers:
  - {{name: c, image: {BUSYBOX}, command: ["sleep", "3600"]}}
"#
    ));
    for p in ["web-0", "client", "own-dns", "node-dns"] {
        c.wait_jsonpath(&format!("pod/{p}"), "{.status.phase}", Duration::from_secs(90), |s| s == "Running");
    }
    let exec = |pod: &str, cmd: &str| {
        let out = c.kubectl(&["exec", pod, "--", "sh", "-c", cmd]);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };

    // resolv.conf per dnsPolicy.
    let (_, conf) = exec("client", "cat /etc/resolv.conf");
    assert!(conf.contains("nameserver 10.43.0.10"), "{conf}");
    assert!(conf.contains("search default.svc.cluster.local svc.cluster.local cluster.local node.test"), "{conf}");
    assert!(conf.contains("options ndots:5"), "{conf}");
    let (_, conf) = exec("own-dns", "cat /etc/resolv.conf");
    assert!(conf.contains("nameserver 10.1.2.3") && conf.contains("search corp.test") && conf.contains("ndots:2"), "{conf}");
    assert!(!conf.contains("10.43.0.10"), "{conf}");
    let (_, conf) = exec("node-dns", "cat /etc/resolv.conf");
    assert!(conf.contains("nameserver 127.0.0.1") && conf.contains("search node.test") && !conf.contains("cluster.local"), "{conf}");

    let web_ip = c.jsonpath("service/web", "{.spec.clusterIP}");
    let pod_ip = c.jsonpath("pod/web-0", "{.status.podIP}");
    // A Service by its short name through the search path (the libc resolver), then by HTTP.
    wait_for("web resolves from a pod", Duration::from_secs(20), || {
        let (ok, out) = exec("client", "nslookup web.default.svc.cluster.local");
        (ok && out.contains(&web_ip)).then_some(())
    });
    wait_for("http://web.default by name", Duration::from_secs(20), || {
        let (ok, out) = exec("client", "timeout 3 wget -qO- http://web.default/index.html");
        (ok && out.contains("web-0")).then_some(())
    });
    let (ok, out) = exec("client", "timeout 3 wget -qO- http://web/index.html");
    assert!(ok && out.contains("web-0"), "short name: {out}");

    // Headless: the ready pod, and the pod by its hostname under the Service.
    wait_for("headless db resolves to the pod", Duration::from_secs(20), || {
        let (ok, out) = exec("client", "nslookup db.default.svc.cluster.local");
        (ok && out.contains(&pod_ip)).then_some(())
    });
    let (ok, out) = exec("client", "nslookup web-0.db.default.svc.cluster.local");
    assert!(ok && out.contains(&pod_ip), "{out}");
    // SRV for the named port.
    let (ok, out) = exec("client", "nslookup -type=SRV _http._tcp.web.default.svc.cluster.local");
    assert!(ok && out.contains("80") && out.contains("web.default.svc.cluster.local"), "{out}");
    let (ok, out) = exec("client", "nslookup -type=SRV _http._tcp.db.default.svc.cluster.local");
    assert!(ok && out.contains("8080") && out.contains("web-0.db.default.svc.cluster.local"), "{out}");
    // Pod records and reverse lookups.
    let dashed = pod_ip.replace('.', "-");
    let (ok, out) = exec("client", &format!("nslookup {dashed}.default.pod.cluster.local"));
    assert!(ok && out.contains(&pod_ip), "{out}");
    let (ok, out) = exec("client", &format!("nslookup {web_ip}"));
    assert!(ok && out.contains("web.default.svc.cluster.local"), "{out}");
    // A Service that does not exist: NXDOMAIN.
    let (ok, out) = exec("client", "nslookup nope.default.svc.cluster.local");
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
    // The kubernetes Service by name.
    let (ok, out) = exec("client", "nslookup kubernetes.default.svc.cluster.local");
    assert!(ok && out.contains("10.43.0.1"), "{out}");

    // A Service created now resolves within a moment.
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  selector: {app: web}\n  ports: [{port: 81, targetPort: 8080}]\n",
    );
    let late = c.jsonpath("service/late", "{.spec.clusterIP}");
    wait_for("a new Service resolves", Duration::from_secs(3), || {
        let (ok, out) = exec("client", "nslookup late.default.svc.cluster.local");
        (ok && out.contains(&late)).then_some(())
    });
}
