//! Strategic merge patch cases, including the shapes `kubectl apply` computes.

use serde_json::{Value, json};

use super::schema::root;
use super::strategic::apply;

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a/x", "b/y"]},
        "spec": {
            "containers": [
                {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}, {"containerPort": 8080}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "side", "image": "busybox"}
            ],
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}]
        }
    })
}

fn smp(obj: Value, patch: Value) -> Value {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    apply(obj, patch, root(&api_version, &kind).unwrap()).unwrap()
}

fn smp_err(obj: Value, patch: Value) -> (u16, String) {
    let ty = root(obj["apiVersion"].as_str().unwrap(), obj["kind"].as_str().unwrap()).unwrap();
    let e = apply(obj, patch, ty).unwrap_err();
    (e.code, e.message)
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()
}

#[test]
fn containers_merge_by_name() {
    let out = smp(pod(), json!({"spec": {"containers": [{"name": "side", "image": "busybox:2"}]}}));
    assert_eq!(out["spec"]["containers"][1]["image"], "busybox:2");
    assert_eq!(out["spec"]["containers"][0]["image"], "nginx:1");
    assert_eq!(names(&out["spec"]["containers"]), ["web", "side"]);
}

#[test]
fn new_container_is_added_and_nested_lists_merge() {
    let out = smp(
        pod(),
        json!({"spec": {"containers": [
            {"name": "web", "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}], "ports": [{"containerPort": 9090}]},
            {"name": "extra", "image": "x"}
        ]}}),
    );
    let c = &out["spec"]["containers"];
    // Without $setElementOrder, a new item follows the last patch item it came after (upstream).
    assert_eq!(names(c), ["web", "extra", "side"]);
    let env: Vec<(&str, &str)> =
        c[0]["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap())).collect();
    assert_eq!(env, [("A", "1"), ("B", "20"), ("C", "3")]);
    let ports: Vec<i64> = c[0]["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_i64().unwrap()).collect();
    assert_eq!(ports, [9090, 80, 8080]);
}

#[test]
fn delete_directive_removes_an_element() {
    let out = smp(pod(), json!({"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}));
    assert_eq!(names(&out["spec"]["containers"]), ["web"]);
}

#[test]
fn replace_directive_in_a_list_replaces_it() {
    let out = smp(pod(), json!({"spec": {"containers": [{"name": "only", "image": "i"}, {"$patch": "replace"}]}}));
    assert_eq!(out["spec"]["containers"], json!([{"name": "only", "image": "i"}]));
}

#[test]
fn replace_directive_on_a_map_replaces_it() {
    let out = smp(pod(), json!({"metadata": {"labels": {"$patch": "replace", "new": "1"}}}));
    assert_eq!(out["metadata"]["labels"], json!({"new": "1"}));
}

#[test]
fn delete_directive_on_a_map_empties_it() {
    let out = smp(pod(), json!({"metadata": {"labels": {"$patch": "delete"}}}));
    assert_eq!(out["metadata"]["labels"], json!({}));
}

#[test]
fn null_removes_a_key() {
    let out = smp(pod(), json!({"metadata": {"labels": {"tier": null, "x": "y"}}}));
    assert_eq!(out["metadata"]["labels"], json!({"app": "web", "x": "y"}));
}

#[test]
fn lists_without_a_merge_strategy_are_replaced() {
    let out = smp(pod(), json!({"spec": {"tolerations": [{"key": "other", "operator": "Exists"}]}}));
    assert_eq!(out["spec"]["tolerations"], json!([{"key": "other", "operator": "Exists"}]));
}

#[test]
fn primitive_merge_lists_are_unions_and_delete_lists_remove() {
    let out = smp(pod(), json!({"metadata": {"finalizers": ["c/z", "a/x"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["c/z", "a/x", "b/y"]));
    let out = smp(pod(), json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/x"]}}));
    assert_eq!(out["metadata"]["finalizers"], json!(["b/y"]));
}

#[test]
fn set_element_order_reorders() {
    let out = smp(pod(), json!({"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}}));
    assert_eq!(names(&out["spec"]["containers"]), ["side", "web"]);
}

#[test]
fn kubectl_apply_patch_that_drops_a_container_port() {
    // What `kubectl apply` sends after a manifest stops listing port 8080.
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
        "containers": [{"$setElementOrder/ports": [{"containerPort": 80}], "name": "web",
                        "ports": [{"$patch": "delete", "containerPort": 8080}]}]
    }});
    let out = smp(pod(), patch);
    assert_eq!(out["spec"]["containers"][0]["ports"], json!([{"containerPort": 80}]));
    assert_eq!(names(&out["spec"]["containers"]), ["web", "side"]);
}

#[test]
fn retain_keys_clears_unlisted_fields() {
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}
    });
    let out = smp(deploy.clone(), json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}));
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    let (code, msg) = smp_err(deploy, json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}));
    assert_eq!((code, msg.as_str()), (400, "invalid patch format of retainKeys"));
}

#[test]
fn volumes_switch_source_with_retain_keys() {
    let patch = json!({"spec": {"volumes": [{"$retainKeys": ["emptyDir", "name"], "name": "cfg", "emptyDir": {}}]}});
    let out = smp(pod(), patch);
    assert_eq!(out["spec"]["volumes"], json!([{"name": "cfg", "emptyDir": {}}]));
}

#[test]
fn cordon_sets_unschedulable() {
    let node =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
    let out = smp(node, json!({"spec": {"unschedulable": true}}));
    assert_eq!(out["spec"]["unschedulable"], true);
    assert_eq!(out["spec"]["taints"].as_array().unwrap().len(), 1);
}

#[test]
fn service_ports_merge_by_port_and_keep_cluster_ip() {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"clusterIP": "10.0.0.5", "ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
    let out = smp(svc, json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}));
    assert_eq!(out["spec"]["clusterIP"], "10.0.0.5");
    assert_eq!(out["spec"]["ports"], json!([{"port": 80, "targetPort": 9090}, {"port": 443}]));
}

#[test]
fn values_added_without_a_live_counterpart_drop_directives_and_nulls() {
    let out = smp(
        pod(),
        json!({"spec": {"nodeSelector": {"a": "b", "c": null}, "initContainers": [{"name": "i", "image": "x", "$patch": "merge"}]}}),
    );
    assert_eq!(out["spec"]["nodeSelector"], json!({"a": "b"}));
    assert_eq!(out["spec"]["initContainers"], json!([{"name": "i", "image": "x"}]));
}

#[test]
fn status_conditions_merge_by_type() {
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}});
    let out = smp(p, json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    assert_eq!(out["status"]["conditions"], json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]));
}

#[test]
fn malformed_patches_are_rejected_with_upstream_messages() {
    let (code, msg) = smp_err(pod(), json!({"spec": {"containers": [{"image": "no-name"}]}}));
    assert_eq!(code, 422);
    assert!(msg.contains("does not contain declared merge key: name"), "{msg}");

    let (code, msg) = smp_err(pod(), json!({"spec": {"containers": [{"name": "web", "$patch": "explode"}]}}));
    assert_eq!(code, 400);
    assert!(msg.starts_with("unknown patch type: explode in map:"), "{msg}");

    let (code, msg) = smp_err(pod(), json!({"metadata": {"$patch": "bogus"}}));
    assert_eq!(code, 400);
    assert!(msg.starts_with("unknown patch type: bogus"), "{msg}");

    let (code, msg) = smp_err(pod(), json!({"spec": {"$setElementOrder/containers": "web"}}));
    assert_eq!((code, msg.as_str()), (400, "invalid patch format of setElementOrder list"));

    let (code, msg) = smp_err(pod(), json!({"spec": {"$setElementOrder/containers": [{"name": "side"}], "containers": [{"name": "web"}]}}));
    assert_eq!(code, 400);
    assert!(msg.starts_with("The order in patch list:"), "{msg}");

    let (code, msg) = smp_err(pod(), json!({"metadata": {"$deleteFromPrimitiveList": ["a/x"]}}));
    assert_eq!((code, msg.as_str()), (400, "invalid patch format of primitive list"));

    let (code, msg) = smp_err(pod(), json!({"metadata": {"finalizers": [["nested"]]}}));
    assert_eq!((code, msg.as_str()), (422, "lists of lists are not supported"));

    let (code, msg) = smp_err(pod(), json!({"spec": {"containers": [{"name": "web", "$patch": "merge"}]}}));
    assert_eq!((code, msg.as_str()), (400, "merging lists cannot yet be specified in the patch"));

    let e = apply(pod(), json!([1, 2]), root("v1", "Pod").unwrap()).unwrap_err();
    assert_eq!(e.code, 400);
}
