//! Bodies encoded by hand exactly as Go's generated marshalers write them (including the empty
//! non-pointer fields they always emit), decoded back to upstream's JSON.

use serde_json::json;

use super::*;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn key(tag: u32, wt: u8, out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | u32::from(wt)), out);
}
fn ld(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    key(tag, 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}
fn s(tag: u32, v: &str) -> Vec<u8> {
    ld(tag, v.as_bytes())
}
fn int(tag: u32, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    key(tag, 0, &mut out);
    varint(v as u64, &mut out);
    out
}
fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}
fn wrap(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = cat(&[s(1, api_version), s(2, kind)]);
    let mut body = b"k8s\0".to_vec();
    body.extend(cat(&[ld(1, &type_meta), ld(2, raw), s(3, ""), s(4, "")]));
    body
}
/// ObjectMeta as Go writes it for a new object: empty strings and a zero creationTimestamp.
fn meta(name: &str, labels: &[(&str, &str)]) -> Vec<u8> {
    let zero_time = cat(&[int(1, GO_ZERO_TIME), int(2, 0)]);
    let mut parts = vec![s(1, name), s(2, ""), s(3, ""), s(4, ""), s(5, ""), s(6, ""), int(7, 0), ld(8, &zero_time)];
    for (k, v) in labels {
        parts.push(ld(11, &cat(&[s(1, k), s(2, v)])));
    }
    cat(&parts)
}

#[test]
fn configmap_from_kubectl_create() {
    let raw = cat(&[ld(1, &meta("lit", &[])), ld(2, &cat(&[s(1, "a"), s(2, "1")])), ld(2, &cat(&[s(1, "b"), s(2, "")]))]);
    let v = decode(&wrap("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "lit", "generation": 0}, "data": {"a": "1", "b": ""}})
    );
}

#[test]
fn secret_bytes_are_base64() {
    let raw = cat(&[ld(1, &meta("sec", &[])), ld(2, &cat(&[s(1, "user"), ld(2, b"admin")])), s(3, "Opaque")]);
    let v = decode(&wrap("v1", "Secret", &raw)).unwrap();
    assert_eq!(v["data"]["user"], "YWRtaW4=");
    assert_eq!(v["type"], "Opaque");
}

#[test]
fn deployment_with_intorstring_quantity_and_embedded_structs() {
    let quantity = |q: &str| s(1, q);
    let resources = ld(2, &cat(&[s(1, "cpu"), ld(2, &quantity("100m"))])); // requests
    let port = cat(&[s(1, ""), int(2, 0), int(3, 8080), s(4, "TCP"), s(5, "")]);
    let container = cat(&[s(1, "web"), s(2, "registry.local/x:2"), ld(6, &port), ld(8, &resources), s(14, "")]);
    let empty_dir = ld(2, &[]); // VolumeSource.emptyDir = {}
    let volume = cat(&[s(1, "scratch"), ld(2, &empty_dir)]);
    let pod_spec = cat(&[ld(1, &volume), ld(2, &container)]);
    let template = cat(&[ld(1, &meta("", &[("app", "made")])), ld(2, &pod_spec)]);
    let selector = ld(1, &cat(&[s(1, "app"), s(2, "made")]));
    let max_surge = cat(&[int(1, 1), int(2, 0), s(3, "25%")]);
    let max_unavailable = cat(&[int(1, 0), int(2, 1), s(3, "")]);
    let strategy = cat(&[s(1, "RollingUpdate"), ld(2, &cat(&[ld(1, &max_unavailable), ld(2, &max_surge)]))]);
    let spec = cat(&[int(1, 2), ld(2, &selector), ld(3, &template), ld(4, &strategy)]);
    let raw = cat(&[ld(1, &meta("made", &[("app", "made")])), ld(2, &spec)]);
    let v = decode(&wrap("apps/v1", "Deployment", &raw)).unwrap();
    assert_eq!(v["spec"]["replicas"], 2);
    assert_eq!(v["spec"]["strategy"]["rollingUpdate"], json!({"maxSurge": "25%", "maxUnavailable": 1}));
    let c = &v["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.local/x:2");
    assert_eq!(c["ports"], json!([{"hostPort": 0, "containerPort": 8080, "protocol": "TCP"}]));
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    assert!(c.get("imagePullPolicy").is_none(), "empty strings are omitted like Go's omitempty");
    assert_eq!(v["spec"]["template"]["spec"]["volumes"], json!([{"name": "scratch", "emptyDir": {}}]));
    assert_eq!(v["spec"]["template"]["metadata"]["labels"], json!({"app": "made"}));
    assert!(v["metadata"].get("creationTimestamp").is_none(), "Go's zero time is omitted");
}

#[test]
fn real_times_and_durations() {
    assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_000_000_000 + 500_000_000), "1h0m0.5s");
    assert_eq!(go_duration(1_500_000), "1.5ms");
    let time = cat(&[int(1, 1_700_000_000), int(2, 0)]);
    let raw = cat(&[ld(1, &meta("ev", &[])), ld(2, &cat(&[s(1, "Pod"), s(3, "p")])), s(3, "Started"), ld(6, &time)]);
    let v = decode(&wrap("v1", "Event", &raw)).unwrap();
    assert_eq!(v["firstTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(v["involvedObject"], json!({"kind": "Pod", "name": "p"}));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(decode(b"not protobuf").is_err());
    assert!(decode(b"k8s\0\x0a\xff\xff\xff\xff\x0f").is_err());
    assert!(decode(&wrap("v1", "NoSuchKind", &[])).is_err());
    let truncated = wrap("v1", "ConfigMap", &ld(1, &meta("x", &[])));
    for n in 4..truncated.len() {
        let _ = decode(&truncated[..n]);
    }
}
