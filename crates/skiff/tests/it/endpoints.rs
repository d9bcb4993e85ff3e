//! The Service-side controllers end to end, asserted with the real kubectl: Endpoints and
//! EndpointSlices following pod readiness (named target ports, not-ready and terminating pods,
//! a selector-less Service's hand-written Endpoints left alone, cleanup with the Service), the
//! `default` ServiceAccount of new namespaces, and node pod CIDRs. No kubelet exists, so pods are
//! created already bound (`spec.nodeName`) and their readiness is written through `pods/status`,
//! as a kubelet would.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::{Server, SkiffProc, wait_for};

const KUBECTL: &str = "/usr/bin/kubectl";

fn kubectl_json(s: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(KUBECTL, &a)).expect("kubectl -o json")
}

fn create(s: &Server, yaml: &str) {
    let out = s.kubectl_stdin(KUBECTL, &["create", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "kubectl create: {}", String::from_utf8_lossy(&out.stderr));
}

async fn create_node(nodes: &Api<Node>, name: &str, zone: &str) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.expect("create node");
}

async fn create_pod(pods: &Api<Pod>, name: &str, app: &str, node: &str, port: i32) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": port}]}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
}

/// What a kubelet reports: Running, an IP, and the Ready condition.
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": status, "lastTransitionTime": now}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch pod status");
}

fn ips(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v.as_array().into_iter().flatten().filter_map(|a| a["ip"].as_str().map(str::to_string)).collect();
    out.sort();
    out
}

/// (ready, notReady) addresses of an Endpoints object, over all subsets.
fn addresses(ep: &Value) -> (Vec<String>, Vec<String>) {
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for s in ep["subsets"].as_array().into_iter().flatten() {
        ready.extend(ips(&s["addresses"]));
        not_ready.extend(ips(&s["notReadyAddresses"]));
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

fn slices_of(s: &Server, svc: &str) -> Vec<Value> {
    let list = kubectl_json(s, &["get", "endpointslices", "-l", &format!("kubernetes.io/service-name={svc}")]);
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Endpoint conditions by address across the slices: (ready, serving, terminating).
fn slice_conditions(slices: &[Value]) -> Vec<(String, bool, bool, bool)> {
    let mut out: Vec<(String, bool, bool, bool)> = slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            let c = &e["conditions"];
            (
                e["addresses"][0].as_str().unwrap_or_default().to_string(),
                c["ready"].as_bool().unwrap_or(false),
                c["serving"].as_bool().unwrap_or(false),
                c["terminating"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

fn s3(v: [&str; 3]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_pod_readiness() {
    let s = Server::start();
    let client = s.kube_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    create_node(&Api::all(client.clone()), "n1", "zone-a").await;

    create(
        &s,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {tier: front}\nspec:\n  selector: {app: web}\n  ports:\n  \
         - {name: http, port: 80, targetPort: http}\n",
    );
    for (i, name) in ["web-0", "web-1", "web-2"].iter().enumerate() {
        create_pod(&pods, name, "web", "n1", 8080).await;
        set_status(&pods, name, &format!("10.42.0.1{i}"), true).await;
    }
    // A pod of another app and a ready pod without an IP are not listed.
    create_pod(&pods, "other", "db", "n1", 5432).await;
    set_status(&pods, "other", "10.42.0.99", true).await;

    let want = s3(["10.42.0.10", "10.42.0.11", "10.42.0.12"]);
    let ep = wait_for("3 ready addresses", Duration::from_secs(10), || {
        let ep = kubectl_json(&s, &["get", "endpoints", "web"]);
        (addresses(&ep).0 == want).then_some(ep)
    });
    assert_eq!(addresses(&ep).1, Vec::<String>::new());
    let subset = &ep["subsets"][0];
    // The named targetPort resolved to the container's port, under the service port's name.
    assert_eq!(subset["ports"], json!([{"name": "http", "port": 8080, "protocol": "TCP"}]), "{ep}");
    let a0 = &subset["addresses"][0];
    assert_eq!(a0["nodeName"], "n1");
    assert_eq!(a0["targetRef"]["kind"], "Pod");
    assert_eq!(a0["targetRef"]["name"], "web-0");
    assert_eq!(a0["targetRef"]["namespace"], "default");
    assert!(a0["targetRef"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(ep["metadata"]["labels"]["tier"], "front", "service labels are copied");
    assert!(ep["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"].is_string(), "{ep}");
    let text = s.ok(KUBECTL, &["get", "endpoints", "web"]);
    assert!(text.contains("10.42.0.10:8080,10.42.0.11:8080,10.42.0.12:8080"), "{text}");

    let sl = wait_for("a slice with 3 endpoints", Duration::from_secs(10), || {
        let sl = slices_of(&s, "web");
        (sl.len() == 1 && sl[0]["endpoints"].as_array().map(Vec::len) == Some(3)).then_some(sl)
    });
    let slice = &sl[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert!(slice["metadata"]["name"].as_str().unwrap().starts_with("web-"));
    assert_eq!(slice["metadata"]["generateName"], "web-");
    assert_eq!(slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io");
    assert_eq!(slice["metadata"]["labels"]["tier"], "front");
    let owner = &slice["metadata"]["ownerReferences"][0];
    assert_eq!((owner["kind"].as_str(), owner["name"].as_str()), (Some("Service"), Some("web")));
    assert_eq!((owner["controller"].as_bool(), owner["blockOwnerDeletion"].as_bool()), (Some(true), Some(true)));
    assert_eq!(slice["ports"], json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
    let e0 = &slice["endpoints"][0];
    assert_eq!((e0["nodeName"].as_str(), e0["zone"].as_str()), (Some("n1"), Some("zone-a")));
    assert_eq!(e0["targetRef"]["kind"], "Pod");
    assert!(slice_conditions(&sl).iter().all(|(_, r, sv, t)| *r && *sv && !*t), "{sl:?}");

    // Readiness off: the address moves to notReadyAddresses. Timed with a tight poll through the API.
    let started = Instant::now();
    set_status(&pods, "web-1", "10.42.0.11", false).await;
    let deadline = started + Duration::from_secs(2);
    let mut ep_latency = None;
    let mut slice_latency = None;
    while Instant::now() < deadline && (ep_latency.is_none() || slice_latency.is_none()) {
        if ep_latency.is_none() {
            let e = eps.get("web").await.unwrap();
            let not_ready: Vec<&str> =
                e.subsets.iter().flatten().flat_map(|s| s.not_ready_addresses.iter().flatten()).map(|a| a.ip.as_str()).collect();
            if not_ready == ["10.42.0.11"] {
                ep_latency = Some(started.elapsed());
            }
        }
        if slice_latency.is_none() {
            let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap();
            let flipped = list.items.iter().flat_map(|s| &s.endpoints).any(|e| {
                e.addresses == ["10.42.0.11"] && e.conditions.as_ref().is_some_and(|c| c.ready == Some(false) && c.serving == Some(false))
            });
            if flipped {
                slice_latency = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("readiness → Endpoints: {ep_latency:?}, readiness → EndpointSlice: {slice_latency:?}");
    assert!(ep_latency.is_some(), "Endpoints did not move the not-ready address within 2 s");
    assert!(slice_latency.is_some(), "EndpointSlice did not flip the endpoint's conditions within 2 s");
    let ep = kubectl_json(&s, &["get", "endpoints", "web"]);
    assert_eq!(addresses(&ep), (vec!["10.42.0.10".to_string(), "10.42.0.12".to_string()], vec!["10.42.0.11".to_string()]));

    // Terminating: gone from Endpoints, kept in the slice as terminating (serving, not ready).
    s.ok(KUBECTL, &["delete", "pod", "web-2", "--wait=false"]);
    wait_for("terminating pod out of Endpoints", Duration::from_secs(5), || {
        (addresses(&kubectl_json(&s, &["get", "endpoints", "web"])).0 == ["10.42.0.10"]).then_some(())
    });
    let conds = wait_for("terminating endpoint in the slice", Duration::from_secs(5), || {
        let c = slice_conditions(&slices_of(&s, "web"));
        c.iter().any(|(ip, _, _, t)| ip == "10.42.0.12" && *t).then_some(c)
    });
    assert_eq!(
        conds,
        [
            ("10.42.0.10".to_string(), true, true, false),
            ("10.42.0.11".to_string(), false, false, false),
            ("10.42.0.12".to_string(), false, true, true),
        ]
    );

    // Settled: nothing is rewritten while nothing changes.
    let ep_rv = eps.get("web").await.unwrap().metadata.resource_version;
    let slice_rvs: Vec<_> = slices_of(&s, "web").iter().map(|s| s["metadata"]["resourceVersion"].clone()).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(eps.get("web").await.unwrap().metadata.resource_version, ep_rv, "Endpoints rewritten without a change");
    let again: Vec<_> = slices_of(&s, "web").iter().map(|s| s["metadata"]["resourceVersion"].clone()).collect();
    assert_eq!(again, slice_rvs, "slices rewritten without a change");

    // A Service without a selector: its hand-written Endpoints are left exactly as written.
    create(&s, "apiVersion: v1\nkind: Service\nmetadata:\n  name: manual\nspec:\n  ports:\n  - {port: 80}\n");
    create(
        &s,
        "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: manual\nsubsets:\n- addresses: [{ip: 192.0.2.10}]\n  ports: [{port: 9000}]\n",
    );
    let before = kubectl_json(&s, &["get", "endpoints", "manual"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = kubectl_json(&s, &["get", "endpoints", "manual"]);
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"]);
    assert_eq!(after["subsets"], json!([{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 9000}]}]));
    assert!(slices_of(&s, "manual").is_empty(), "no slices for a selector-less Service from this controller");

    // The Service goes: its Endpoints (deleted by the controller) and slices (garbage collected) too.
    s.ok(KUBECTL, &["delete", "service", "web"]);
    wait_for("Endpoints and slices of web gone", Duration::from_secs(10), || {
        let gone = s.kubectl(KUBECTL, &["get", "endpoints", "web"]);
        (!gone.status.success() && slices_of(&s, "web").is_empty()).then_some(())
    });
    let err = s.fails(KUBECTL, &["get", "endpoints", "web"]);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
}

#[test]
fn headless_service_publishes_hostnames_and_not_ready_addresses() {
    let s = Server::start();
    create(
        &s,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  \
         clusterIP: None\n  publishNotReadyAddresses: true\n  selector: {app: db}\n",
    );
    create(
        &s,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db-0\n  labels: {app: db}\nspec:\n  nodeName: n1\n  hostname: db-0\n  \
         subdomain: db\n  containers: [{name: c, image: busybox}]\n",
    );
    let patch = r#"{"status": {"phase": "Running", "podIP": "10.42.0.20", "podIPs": [{"ip": "10.42.0.20"}], "conditions": [{"type": "Ready", "status": "False"}]}}"#;
    s.ok(KUBECTL, &["patch", "pod", "db-0", "--subresource=status", "--type=merge", "-p", patch]);
    let ep = wait_for("headless endpoints", Duration::from_secs(10), || {
        let ep = kubectl_json(&s, &["get", "endpoints", "db"]);
        (!addresses(&ep).0.is_empty()).then_some(ep)
    });
    // publishNotReadyAddresses: the not-ready pod is an address; no ports; hostname from the subdomain.
    assert_eq!(
        ep["subsets"],
        json!([{"addresses": [{
            "ip": "10.42.0.20", "hostname": "db-0", "nodeName": "n1",
            "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "default", "uid": ep["subsets"][0]["addresses"][0]["targetRef"]["uid"]},
        }]}])
    );
    assert_eq!(ep["metadata"]["labels"]["service.kubernetes.io/headless"], "");
    let sl = wait_for("headless slice", Duration::from_secs(10), || {
        let sl = slices_of(&s, "db");
        (sl.len() == 1 && !sl[0]["endpoints"].as_array().unwrap().is_empty()).then_some(sl)
    });
    assert_eq!(sl[0]["endpoints"][0]["hostname"], "db-0");
    assert_eq!(sl[0]["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(sl[0]["endpoints"][0]["conditions"]["serving"], false);
}

#[test]
fn new_namespaces_get_a_default_service_account() {
    let s = Server::start();
    s.ok(KUBECTL, &["create", "namespace", "x"]);
    let uid = wait_for("default ServiceAccount in x", Duration::from_secs(10), || {
        let out = s.kubectl(KUBECTL, &["get", "sa", "default", "-n", "x", "-o", "jsonpath={.metadata.uid}"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    // Deleted: recreated.
    s.ok(KUBECTL, &["delete", "sa", "default", "-n", "x"]);
    wait_for("default ServiceAccount recreated", Duration::from_secs(10), || {
        let out = s.kubectl(KUBECTL, &["get", "sa", "default", "-n", "x", "-o", "jsonpath={.metadata.uid}"]);
        (out.status.success() && String::from_utf8_lossy(&out.stdout) != uid).then_some(())
    });
    // The namespaces the server bootstraps have one too.
    for ns in ["default", "kube-system"] {
        wait_for(&format!("default ServiceAccount in {ns}"), Duration::from_secs(10), || {
            s.kubectl(KUBECTL, &["get", "sa", "default", "-n", ns]).status.success().then_some(())
        });
    }
}

fn node_yaml(name: &str, pod_cidr: Option<&str>) -> String {
    let spec = pod_cidr.map(|c| format!("spec:\n  podCIDR: {c}\n  podCIDRs: [{c}]\n")).unwrap_or_default();
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{spec}")
}

fn pod_cidr(s: &Server, node: &str) -> String {
    s.ok(KUBECTL, &["get", "node", node, "-o", "jsonpath={.spec.podCIDR} {.spec.podCIDRs[*]}"]).trim().to_string()
}

fn wait_cidr(s: &Server, node: &str) -> String {
    let both = wait_for(&format!("podCIDR of {node}"), Duration::from_secs(10), || Some(pod_cidr(s, node)).filter(|c| !c.is_empty()));
    let (single, list) = both.split_once(' ').expect("podCIDR and podCIDRs");
    assert_eq!(single, list, "podCIDRs is [podCIDR]");
    single.to_string()
}

#[test]
fn nodes_get_distinct_pod_cidrs() {
    // The controller manager as its own process (no leader election), so it can be restarted
    // without waiting for a Lease to expire.
    let s = Server::start_with(&["--disable-controller-manager"]);
    let kc = s.kubeconfig.to_string_lossy().into_owned();
    let cm_args = ["controller-manager", "--kubeconfig", kc.as_str(), "--controllers-leader-elect=false"];
    let cm = SkiffProc::start(&s, &cm_args, "controller-manager-1.log");
    // A Node that already has a CIDR keeps it, and nobody else gets it.
    create(&s, &node_yaml("pre", Some("10.42.0.0/24")));
    create(&s, &node_yaml("a", None));
    create(&s, &node_yaml("b", None));
    let mut got = [wait_cidr(&s, "a"), wait_cidr(&s, "b")];
    got.sort();
    assert_eq!(got, ["10.42.1.0/24", "10.42.2.0/24"]);
    assert_eq!(pod_cidr(&s, "pre"), "10.42.0.0/24 10.42.0.0/24");

    // A restarted controller rebuilds the used set from the Nodes before allocating: the first
    // candidate after a restart is 10.42.0.0/24 again, and it must be skipped like the others.
    drop(cm);
    create(&s, &node_yaml("c", None));
    let _cm = SkiffProc::start(&s, &cm_args, "controller-manager-2.log");
    assert_eq!(wait_cidr(&s, "c"), "10.42.3.0/24");
}

#[test]
fn exhausted_cluster_cidr_is_reported_and_freed_by_node_deletion() {
    // Room for exactly two /24s.
    let s = Server::start_with(&["--cluster-cidr", "10.99.0.0/23", "--node-cidr-mask-size", "24"]);
    create(&s, &node_yaml("a", None));
    create(&s, &node_yaml("b", None));
    let a = wait_cidr(&s, "a");
    let mut got = [a.clone(), wait_cidr(&s, "b")];
    got.sort();
    assert_eq!(got, ["10.99.0.0/24", "10.99.1.0/24"]);

    create(&s, &node_yaml("c", None));
    let ev = wait_for("CIDRNotAvailable event", Duration::from_secs(10), || {
        let list =
            kubectl_json(&s, &["get", "events", "-n", "default", "--field-selector", "involvedObject.name=c,reason=CIDRNotAvailable"]);
        list["items"].as_array()?.first().cloned()
    });
    assert_eq!(ev["message"], "Node c status is now: CIDRNotAvailable");
    assert_eq!((ev["type"].as_str(), ev["source"]["component"].as_str()), (Some("Normal"), Some("cidrAllocator")));
    assert_eq!(ev["involvedObject"]["kind"], "Node");
    assert_eq!(pod_cidr(&s, "c"), "");

    // Deleting a Node returns its CIDR; the waiting Node gets it.
    s.ok(KUBECTL, &["delete", "node", "a"]);
    assert_eq!(wait_cidr(&s, "c"), a);
}
