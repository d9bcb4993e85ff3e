//! The OpenAPI documents with type schemas: `kubectl explain` (v3, the default since 1.27, and
//! `--output=plaintext-openapiv2`) with kubectl 1.27, 1.30 and 1.33; `kubectl apply --validate`
//! with an unknown field; and the documents' HTTP surface (v3 index hashes and caching, v2 as
//! JSON or gnostic protobuf).

use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{Request, StatusCode};
use kube::client::Body;
use serde_json::Value;

use crate::harness::{KUBECTL_127, KUBECTL_130, KUBECTL_133, Server};

fn has(out: &str, what: &str) {
    assert!(out.contains(what), "expected {what:?} in:\n{out}");
}

fn explain_flows(s: &Server, k: &str) {
    // Default (OpenAPI v3): the field's description, its type's description, the element type
    // by name, and the fields of Container with their types and required marks.
    let out = s.ok(k, &["explain", "pod.spec.containers"]);
    has(&out, "KIND:       Pod");
    has(&out, "FIELD: containers <[]Container>");
    has(&out, "List of containers belonging to the pod.");
    has(&out, "A single application container that you want to run within a pod.");
    has(&out, "name\t<string> -required-");
    has(&out, "ports\t<[]ContainerPort>");
    has(&out, "resources\t<ResourceRequirements>");
    has(&out, "Compute Resources required by this container.");

    // The same from the v2 document (gnostic protobuf).
    let out = s.ok(k, &["explain", "pod.spec.containers", "--output=plaintext-openapiv2"]);
    has(&out, "RESOURCE: containers <[]Object>");
    has(&out, "A single application container that you want to run within a pod.");
    has(&out, "name\t<string> -required-");
    has(&out, "ports\t<[]Object>");

    // Recursive, through a described reference and int-or-string fields.
    let out = s.ok(k, &["explain", "deployment.spec.strategy", "--recursive"]);
    has(&out, "GROUP:      apps");
    has(&out, "FIELD: strategy <DeploymentStrategy>");
    has(&out, "The deployment strategy to use to replace existing pods with new ones.");
    has(&out, "rollingUpdate\t<RollingUpdateDeployment>");
    has(&out, "maxSurge\t<IntOrString>");
    has(&out, "maxUnavailable\t<IntOrString>");
    let out = s.ok(k, &["explain", "deployment.spec.strategy", "--recursive", "--output=plaintext-openapiv2"]);
    has(&out, "VERSION:  apps/v1");
    has(&out, "maxSurge\t<string>");

    // A short name, a whole kind, maps of quantities, timestamps.
    let out = s.ok(k, &["explain", "svc"]);
    has(&out, "KIND:       Service");
    has(&out, "Service is a named abstraction of software service");
    has(&out, "spec\t<ServiceSpec>");
    has(&out, "status\t<ServiceStatus>");
    let out = s.ok(k, &["explain", "pod.spec.containers.resources.limits"]);
    has(&out, "FIELD: limits <map[string]Quantity>");
    let out = s.ok(k, &["explain", "pod.metadata.creationTimestamp"]);
    has(&out, "FIELD: creationTimestamp <string>");
    has(&out, "CreationTimestamp is a timestamp representing the server time");
    let out = s.ok(k, &["explain", "cronjobs.spec.jobTemplate.spec.template.spec.volumes.configMap", "--output=plaintext-openapiv2"]);
    has(&out, "RESOURCE: configMap <Object>");
    has(&out, "items\t<[]Object>");

    let err = s.fails(k, &["explain", "pod.spec.nosuchfield"]);
    has(&err, "nosuchfield");
}

#[test]
fn kubectl_1_27_explain() {
    explain_flows(&Server::start(), KUBECTL_127);
}

#[test]
fn kubectl_1_30_explain() {
    explain_flows(&Server::start(), KUBECTL_130);
}

#[test]
fn kubectl_1_33_explain() {
    explain_flows(&Server::start(), KUBECTL_133);
}

const UNKNOWN_FIELD_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: b}\nbogus: 1\n";
const UNKNOWN_NESTED: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        imagePullPolicyy: Always
"#;

/// `kubectl apply --validate=strict|warn|false`: kubectl leaves the check to the server
/// (`fieldValidation`), which answers as upstream for creates (400) and patches (422).
fn validate_flows(s: &Server, k: &str, ns: &str) {
    s.ok(k, &["create", "namespace", ns]);
    let apply =
        |mode: &str, manifest: &str| s.kubectl_stdin(k, &["-n", ns, "apply", &format!("--validate={mode}"), "-f", "-"], Some(manifest));
    let text =
        |o: &std::process::Output| (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());

    let out = apply("strict", UNKNOWN_FIELD_CM);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    has(&err, r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "bogus""#);
    let out = apply("strict", UNKNOWN_NESTED);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    has(&err, r#"strict decoding error: unknown field "spec.template.spec.containers[0].imagePullPolicyy""#);
    assert!(s.kubectl(k, &["-n", ns, "get", "configmap/cm"]).status.code() != Some(0), "strict must not create");

    let out = apply("warn", UNKNOWN_FIELD_CM);
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    has(&stdout, "configmap/cm created");
    has(&err, r#"Warning: unknown field "bogus""#);
    let out = apply("warn", UNKNOWN_NESTED);
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    has(&stdout, "deployment.apps/web created");
    has(&err, r#"Warning: unknown field "spec.template.spec.containers[0].imagePullPolicyy""#);
    // The unknown field is dropped, the rest stored.
    assert_eq!(s.ok(k, &["-n", ns, "get", "configmap/cm", "-o", "jsonpath={.data.a}"]), "b");

    // Now a patch of the existing object: strict fails on the patched object, as upstream.
    let changed = UNKNOWN_FIELD_CM.replace("{a: b}", "{a: c}");
    let out = apply("strict", &changed);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    has(&err, "patch: Invalid value");
    has(&err, r#"strict decoding error: unknown field "bogus""#);
    assert_eq!(s.ok(k, &["-n", ns, "get", "configmap/cm", "-o", "jsonpath={.data.a}"]), "b");

    let out = apply("false", &changed);
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    has(&stdout, "configmap/cm configured");
    assert!(!err.contains("Warning"), "{err}");
    assert_eq!(s.ok(k, &["-n", ns, "get", "configmap/cm", "-o", "jsonpath={.data.a}"]), "c");
    let out = apply("false", &UNKNOWN_FIELD_CM.replace("name: cm", "name: cm2"));
    assert!(out.status.success());
    has(&text(&out).0, "configmap/cm2 created");
}

#[test]
fn kubectl_apply_validate_modes() {
    let s = Server::start();
    validate_flows(&s, KUBECTL_127, "validate-127");
    validate_flows(&s, KUBECTL_133, "validate-133");
}

async fn get(client: &kube::Client, uri: &str, accept: Option<&str>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().uri(uri);
    if let Some(a) = accept {
        req = req.header(ACCEPT, a);
    }
    let resp = client.send(req.body(Body::empty()).unwrap()).await.expect("request");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect_bytes().await.unwrap().to_vec())
}

/// The documents' HTTP surface: the v3 index lists every served group-version with its content
/// hash; a current hash may be cached for good, an outdated one is redirected; v2 is JSON unless
/// protobuf is asked for, and both carry the definitions.
#[tokio::test]
async fn openapi_documents() {
    let s = Server::start();
    let client = s.kube_client().await;
    let (code, _, body) = get(&client, "/openapi/v3", None).await;
    assert_eq!(code, StatusCode::OK);
    let index: Value = serde_json::from_slice(&body).unwrap();
    let paths = index["paths"].as_object().unwrap();
    for gv in ["api/v1", "apis/apps/v1", "apis/batch/v1", "apis/rbac.authorization.k8s.io/v1", "apis/policy/v1"] {
        let url = paths[gv]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with(&format!("/openapi/v3/{gv}?hash=")), "{url}");
        let hash = url.rsplit('=').next().unwrap();
        assert_eq!(hash.len(), 128, "SHA-512 in hex: {hash}");
        let (code, headers, body) = get(&client, url, Some("application/json")).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(headers[CACHE_CONTROL], "public, immutable");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert!(doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["name"].is_object(), "{gv}");
        let (code, headers, _) = get(&client, &format!("/openapi/v3/{gv}?hash=0000"), None).await;
        assert_eq!(code, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(headers[LOCATION], url);
    }
    let (_, _, body) = get(&client, paths["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap(), None).await;
    let apps: Value = serde_json::from_slice(&body).unwrap();
    let spec = &apps["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"];
    assert_eq!(spec["containers"]["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(spec["containers"]["items"]["$ref"], "#/components/schemas/io.k8s.api.core.v1.Container");
    let deploy = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(deploy["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
    assert!(apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"].is_object());

    let (code, headers, body) = get(&client, "/openapi/v2", Some("application/json")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    let v2: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    let ports = &v2["definitions"]["io.k8s.api.core.v1.Container"]["properties"]["ports"];
    assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
    assert_eq!(ports["items"]["$ref"], "#/definitions/io.k8s.api.core.v1.ContainerPort");
    assert_eq!(v2["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"], "int-or-string");

    let (code, headers, body) = get(&client, "/openapi/v2", Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/com.github.proto-openapi.spec.v2.v1.0+protobuf");
    assert!(body.windows(b"io.k8s.api.core.v1.Pod".len()).any(|w| w == b"io.k8s.api.core.v1.Pod"));
}
