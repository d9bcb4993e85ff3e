//! Bad input over real HTTPS (kube-rs client, raw requests): every case must be answered with the
//! 4xx `metav1.Status` upstream kube-apiserver sends, and the server must keep serving afterwards.
//!
//! Cases are checked one after another against one server and every deviation is collected, so a
//! single run reports all of them instead of stopping at the first.

use std::time::Duration;

use axum::http::header::{CONTENT_TYPE, WARNING};
use axum::http::{Method, Request};
use kube::client::Body;
use serde_json::{Value, json};

use crate::harness::Server;

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const JSON: &str = "application/json";
const YAML: &str = "application/yaml";

struct Reply {
    code: u16,
    warnings: Vec<String>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    fn describe(&self) -> String {
        let mut text = self.text.clone();
        if text.len() > 600 {
            text.truncate(text.floor_char_boundary(600));
            text.push_str("...");
        }
        format!("HTTP {} body {text}", self.code)
    }
}

async fn send(client: &kube::Client, method: Method, uri: &str, content_type: Option<&str>, body: Vec<u8>) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    let req = req.body(Body::from(body)).unwrap();
    // A server stuck on one input must show up as a failed case, not a hung suite.
    let resp = tokio::time::timeout(Duration::from_secs(30), client.send(req))
        .await
        .map_err(|_| "no response within 30s".to_string())?
        .map_err(|e| format!("transport error: {e:?}"))?;
    let code = resp.status().as_u16();
    let warnings = resp.headers().get_all(WARNING).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    let bytes = resp.into_body().collect_bytes().await.map_err(|e| format!("reading body: {e}"))?;
    Ok(Reply { code, warnings, text: String::from_utf8_lossy(&bytes).into_owned() })
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

/// Deviations from upstream, one line per failed case.
#[derive(Default)]
struct Deviations(Vec<String>);

impl Deviations {
    fn add(&mut self, case: &str, why: String) {
        self.0.push(format!("[{case}] {why}"));
    }

    /// Checks a `metav1.Status` failure with `code` and one of `reasons` whose message contains every
    /// needle (case-insensitive). Returns the Status when it matched.
    fn status(&mut self, case: &str, reply: &Result<Reply, String>, code: u16, reasons: &[&str], needles: &[&str]) -> Option<Value> {
        let r = match reply {
            Ok(r) => r,
            Err(e) => {
                self.add(case, format!("want {code} {reasons:?}, got {e}"));
                return None;
            }
        };
        let s = r.json();
        let message = s["message"].as_str().unwrap_or_default().to_lowercase();
        let problems: Vec<String> = [
            (r.code != code).then(|| format!("HTTP code {} (want {code})", r.code)),
            (s["kind"] != "Status" || s["apiVersion"] != "v1").then(|| "body is not a v1 Status".to_string()),
            (s["status"] != "Failure").then(|| "status is not Failure".to_string()),
            (s["code"] != code).then(|| format!("Status.code {} (want {code})", s["code"])),
            (!reasons.iter().any(|want| s["reason"] == *want)).then(|| format!("reason {} (want one of {reasons:?})", s["reason"])),
        ]
        .into_iter()
        .flatten()
        .chain(needles.iter().filter(|n| !message.contains(&n.to_lowercase())).map(|n| format!("message does not mention {n:?}")))
        .collect();
        if problems.is_empty() {
            Some(s)
        } else {
            self.add(case, format!("{}: {}", problems.join("; "), r.describe()));
            None
        }
    }

    fn code(&mut self, case: &str, reply: &Result<Reply, String>, code: u16) -> Option<Value> {
        match reply {
            Ok(r) if r.code == code => Some(r.json()),
            Ok(r) => {
                self.add(case, format!("want HTTP {code}, got {}", r.describe()));
                None
            }
            Err(e) => {
                self.add(case, format!("want HTTP {code}, got {e}"));
                None
            }
        }
    }

    fn check(&mut self, case: &str, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.add(case, why());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_the_server_keeps_serving() {
    let mut server = Server::start();
    let c = server.kube_client().await;
    let mut d = Deviations::default();

    // --- bodies that do not decode ---
    let r = send(&c, Method::POST, CMS, Some(JSON), br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"#.to_vec()).await;
    d.status("malformed JSON", &r, 400, &["BadRequest"], &["json"]);

    let r = send(&c, Method::POST, CMS, Some(YAML), b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [x\n".to_vec()).await;
    d.status("malformed YAML", &r, 400, &["BadRequest"], &["yaml"]);

    // Parsers that recurse per nesting level must refuse deep documents rather than overflow the
    // stack (which would take the whole server down).
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let r = send(&c, Method::POST, CMS, Some(JSON), deep.clone().into_bytes()).await;
    d.status("deeply nested JSON", &r, 400, &["BadRequest"], &[]);
    let r = send(&c, Method::POST, CMS, Some(YAML), deep.into_bytes()).await;
    d.status("deeply nested YAML", &r, 400, &["BadRequest"], &[]);

    // Billion laughs: aliases expanding exponentially (CVE-2019-11253 against kube-apiserver).
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i", "j"]) {
        bomb.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let r = send(&c, Method::POST, CMS, Some(YAML), bomb.into_bytes()).await;
    d.status("YAML alias bomb", &r, 400, &["BadRequest"], &[]);

    // --- type meta ---
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "wrong-kind"}, "spec": {"ports": [{"port": 80}]}});
    let r = send(&c, Method::POST, CMS, Some(JSON), body(&svc)).await;
    d.status("wrong kind (Service to configmaps)", &r, 400, &["BadRequest"], &["Service", "ConfigMap"]);

    let mut v2 = configmap("wrong-version");
    v2["apiVersion"] = json!("v2");
    let r = send(&c, Method::POST, CMS, Some(JSON), body(&v2)).await;
    d.status("wrong apiVersion", &r, 400, &["BadRequest"], &["v2"]);

    // Upstream decodes bodies with the endpoint's group/version/kind as defaults
    // (create.go: `decoder.Decode(body, &defaultGVK, original)`), so a missing kind is filled in.
    let mut no_kind = configmap("no-kind");
    no_kind.as_object_mut().unwrap().remove("kind");
    let r = send(&c, Method::POST, CMS, Some(JSON), body(&no_kind)).await;
    if let Some(obj) = d.code("missing kind (upstream defaults it from the URL)", &r, 201) {
        d.check("missing kind (upstream defaults it from the URL)", obj["kind"] == "ConfigMap", || {
            format!("created object has kind {}", obj["kind"])
        });
    }

    // --- size limit (upstream MaxRequestBodyBytes is 3 MiB) ---
    let mut big = configmap("too-big");
    big["data"]["k"] = json!("x".repeat(10 * 1024 * 1024));
    // The server answers before the client has finished uploading; whether the client gets to read
    // that answer depends on how the server closes the connection, a race, so one try proves little.
    let big = body(&big);
    for attempt in 1..=5 {
        let r = send(&c, Method::POST, CMS, Some(JSON), big.clone()).await;
        d.status(&format!("10 MB body, attempt {attempt}/5"), &r, 413, &["RequestEntityTooLarge"], &["too large"]);
    }

    // --- fieldValidation ---
    let mut unknown = configmap("unknown-strict");
    unknown["bogus"] = json!(1);
    let r = send(&c, Method::POST, &format!("{CMS}?fieldValidation=Strict"), Some(JSON), body(&unknown)).await;
    d.status("unknown top-level field, Strict", &r, 400, &["BadRequest"], &["unknown field \"bogus\""]);

    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "unknown-strict"},
        "spec": {
            "bogus": true,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        }
    });
    let r = send(&c, Method::POST, "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Strict", Some(JSON), body(&deploy)).await;
    d.status("unknown nested field, Strict", &r, 400, &["BadRequest"], &["unknown field \"spec.bogus\""]);

    unknown["metadata"]["name"] = json!("unknown-warn");
    let r = send(&c, Method::POST, &format!("{CMS}?fieldValidation=Warn"), Some(JSON), body(&unknown)).await;
    if d.code("unknown field, Warn", &r, 201).is_some() {
        let warnings = &r.as_ref().unwrap().warnings;
        d.check("unknown field, Warn", warnings.iter().any(|w| w.contains("unknown field") && w.contains("bogus")), || {
            format!("no Warning header naming the field: {warnings:?}")
        });
    }

    // --- names ---
    let r = send(&c, Method::POST, CMS, Some(JSON), body(&configmap(&"a".repeat(254)))).await;
    if let Some(s) = d.status("254-character name", &r, 422, &["Invalid"], &["metadata.name", "253"]) {
        d.check("254-character name", s["details"]["causes"][0]["field"] == "metadata.name", || {
            format!("causes: {}", s["details"]["causes"])
        });
    }
    let r = send(&c, Method::POST, CMS, Some(JSON), body(&configmap("Bad_Name"))).await;
    if let Some(s) = d.status("invalid DNS subdomain name", &r, 422, &["Invalid"], &["metadata.name", "RFC 1123"]) {
        d.check("invalid DNS subdomain name", s["details"]["causes"][0]["field"] == "metadata.name", || {
            format!("causes: {}", s["details"]["causes"])
        });
    }

    // --- list options ---
    let r = send(&c, Method::GET, &format!("{CMS}?labelSelector=app%20in%20(a"), None, vec![]).await;
    d.status("broken label selector", &r, 400, &["BadRequest"], &["unable to parse requirement"]);
    let r = send(&c, Method::GET, &format!("{CMS}?fieldSelector=spec.bogus%3D1"), None, vec![]).await;
    d.status("unsupported field selector", &r, 400, &["BadRequest"], &["spec.bogus"]);
    let r = send(&c, Method::GET, &format!("{CMS}?limit=abc"), None, vec![]).await;
    d.status("limit=abc", &r, 400, &["BadRequest"], &["abc"]);
    // Upstream treats a non-positive limit as "no limit" and serves any int64.
    for limit in ["-5", "99999999999999"] {
        let case = format!("limit={limit}");
        let r = send(&c, Method::GET, &format!("{CMS}?limit={limit}"), None, vec![]).await;
        if let Some(list) = d.code(&case, &r, 200) {
            d.check(&case, list["kind"] == "ConfigMapList", || format!("not a ConfigMapList: {}", list["kind"]));
        }
    }
    let r = send(&c, Method::GET, &format!("{CMS}?limit=1&continue=not-a-continue-token"), None, vec![]).await;
    d.status("invalid continue token", &r, 400, &["BadRequest"], &["continue"]);
    let r = send(&c, Method::GET, &format!("{CMS}?resourceVersionMatch=Exact"), None, vec![]).await;
    // Upstream answers 422 (ListOptions validation); a 400 also tells the client what is wrong.
    let (code, reason) = if matches!(&r, Ok(x) if x.code == 400) { (400, "BadRequest") } else { (422, "Invalid") };
    d.status("resourceVersionMatch=Exact without resourceVersion", &r, code, &[reason], &["resourceVersionMatch"]);

    // --- paths and methods ---
    let r = send(&c, Method::GET, "/api/v1/namespaces/default/bogusthings", None, vec![]).await;
    d.status("unknown resource", &r, 404, &["NotFound"], &[]);
    let r = send(&c, Method::GET, "/apis/nothing.example.com/v1/things", None, vec![]).await;
    d.status("unknown group", &r, 404, &["NotFound"], &[]);
    let r = send(&c, Method::PUT, CMS, Some(JSON), body(&configmap("put-on-collection"))).await;
    d.status("PUT on a collection", &r, 405, &["MethodNotAllowed"], &[]);
    // binding is create-only: no collection, no DELETE.
    let r = send(&c, Method::DELETE, "/api/v1/namespaces/default/pods/p/binding", None, vec![]).await;
    d.status("DELETE on pods/binding", &r, 405, &["MethodNotAllowed"], &[]);

    // --- optimistic concurrency ---
    let r = send(&c, Method::POST, CMS, Some(JSON), body(&configmap("stale"))).await;
    if let Some(created) = d.code("stale resourceVersion: create", &r, 201) {
        let mut update = created.clone();
        update["data"]["k"] = json!("v2");
        let r = send(&c, Method::PUT, &format!("{CMS}/stale"), Some(JSON), body(&update)).await;
        d.code("stale resourceVersion: first update", &r, 200);
        update["data"]["k"] = json!("v3");
        let r = send(&c, Method::PUT, &format!("{CMS}/stale"), Some(JSON), body(&update)).await;
        d.status("PUT with a stale resourceVersion", &r, 409, &["Conflict"], &["the object has been modified"]);
    }

    // --- authentication: the cluster CA is trusted, but no client certificate and no token ---
    let mut anon = server.kube_config().await;
    anon.auth_info = Default::default();
    match kube::Client::try_from(anon) {
        Ok(anon) => {
            let r = send(&anon, Method::GET, CMS, None, vec![]).await;
            d.status("anonymous request", &r, 401, &["Unauthorized"], &[]);
        }
        Err(e) => d.add("anonymous request", format!("building the client: {e}")),
    }

    // --- still serving ---
    let r = send(&c, Method::POST, CMS, Some(JSON), body(&configmap("after-bad-input"))).await;
    d.code("create after bad input", &r, 201);
    let r = send(&c, Method::GET, &format!("{CMS}/after-bad-input"), None, vec![]).await;
    if let Some(got) = d.code("get after bad input", &r, 200) {
        d.check("get after bad input", got["data"]["k"] == "v", || format!("unexpected object {got}"));
    }
    d.check("server process", server.is_running(), || "the server process exited".into());

    assert!(
        d.0.is_empty(),
        "{} case(s) deviate from upstream:\n{}\n--- server log tail ---\n{}",
        d.0.len(),
        d.0.join("\n"),
        server.logs().lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// Upstream namespaces have no deletecollection: `DELETE /api/v1/namespaces` is a 405, not a
/// request to delete every namespace. Own server, since a wrong answer tears down all namespaces.
#[tokio::test]
async fn namespaces_cannot_be_deleted_as_a_collection() {
    let server = Server::start();
    let c = server.kube_client().await;
    let r = send(&c, Method::DELETE, "/api/v1/namespaces", None, vec![]).await;
    let mut d = Deviations::default();
    d.status("DELETE /api/v1/namespaces", &r, 405, &["MethodNotAllowed"], &[]);
    let r = send(&c, Method::GET, "/api/v1/namespaces/default", None, vec![]).await;
    if let Some(ns) = d.code("default namespace afterwards", &r, 200) {
        d.check("default namespace afterwards", ns["metadata"]["deletionTimestamp"].is_null(), || {
            format!("default is being deleted: {ns}")
        });
    }
    assert!(d.0.is_empty(), "{}", d.0.join("\n"));
}
