//! Static pods (upstream's file source and mirror pods): Pod manifests in a directory run on this
//! node with no API server at all. Each gets the name `<name>-<node>`, a UID derived from its
//! content, node and file (so an edited file is a new pod), and the `kubernetes.io/config.*`
//! annotations; when the API server is reachable a mirror pod shows it there (status included),
//! and a deleted mirror comes back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};

pub const SOURCE: &str = "kubernetes.io/config.source";
pub const HASH: &str = "kubernetes.io/config.hash";
pub const MIRROR: &str = "kubernetes.io/config.mirror";
const SEEN: &str = "kubernetes.io/config.seen";

/// Whether an API pod is the mirror of a static pod (the kubelet never runs those itself).
pub fn is_mirror(p: &Pod) -> bool {
    p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR))
}

fn uid_for(content: &[u8], node: &str, file: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(content);
    ctx.update(node.as_bytes());
    ctx.update(file.as_bytes());
    let d = ctx.finish();
    d.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A manifest file as the static pod it defines (errors name the file and the reason).
pub fn parse(file: &Path, content: &[u8], node: &str) -> Result<Pod, String> {
    let text = std::str::from_utf8(content).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut pod: Pod = serde_saphyr::from_str(text).map_err(|e| format!("{}: not a Pod: {e}", file.display()))?;
    let name =
        pod.metadata.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| format!("{}: metadata.name is required", file.display()))?;
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Err(format!("{}: spec.containers is required", file.display()));
    }
    let uid = uid_for(content, node, &file.display().to_string());
    let m = &mut pod.metadata;
    m.name = Some(format!("{name}-{node}"));
    m.namespace = Some(m.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()));
    m.uid = Some(uid.clone());
    let ann = m.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(SOURCE.into(), "file".into());
    ann.insert(HASH.into(), uid);
    ann.insert(SEEN.into(), jiff::Timestamp::now().to_string());
    let spec = pod.spec.as_mut().expect("checked above");
    spec.node_name = Some(node.into());
    Ok(pod)
}

/// Every static pod in `dir` by UID; unreadable or invalid files are logged and skipped.
pub fn scan(dir: &Path, node: &str, complained: &mut HashMap<String, String>) -> HashMap<String, Pod> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")) {
            continue;
        }
        let Ok(content) = std::fs::read(&f) else { continue };
        match parse(&f, &content, node) {
            Ok(p) => {
                complained.remove(&name);
                out.insert(p.metadata.uid.clone().unwrap_or_default(), p);
            }
            Err(e) => {
                if complained.get(&name) != Some(&e) {
                    tracing::warn!(error = %e, "static pod manifest skipped");
                    complained.insert(name, e);
                }
            }
        }
    }
    out
}

/// The body of an `http://host[:port]/path` URL (what --manifest-url serves).
pub async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// manifest URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| format!("{url}: connect timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", host).body(http_body_util::Empty::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: {}", resp.status()));
    }
    let body = resp.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
    Ok(body.to_vec())
}

/// The mirror pod the API shows for a static pod: same spec, the mirror annotation, owned by the
/// Node (so it goes with the Node).
fn mirror_of(p: &Pod, node: Option<&Node>) -> Pod {
    let mut m = p.clone();
    m.metadata.uid = None;
    m.status = None;
    let hash = p.metadata.uid.clone().unwrap_or_default();
    m.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(MIRROR.into(), hash);
    if let Some(n) = node
        && let (Some(name), Some(uid)) = (&n.metadata.name, &n.metadata.uid)
    {
        m.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            ..Default::default()
        }]);
    }
    m
}

/// Makes the API's mirror pods match the static pods: creates missing ones, replaces stale ones
/// (another hash), removes those whose static pod is gone. Silent when the API is unreachable.
pub async fn sync_mirrors(client: &kube::Client, node_name: &str, pods: &HashMap<String, Pod>) {
    let node = Api::<Node>::all(client.clone()).get_opt(node_name).await.ok().flatten();
    for p in pods.values() {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let want = p.metadata.uid.clone().unwrap_or_default();
        match api.get_opt(name).await {
            Ok(Some(existing)) => {
                let hash = existing.metadata.annotations.as_ref().and_then(|a| a.get(MIRROR)).cloned();
                if hash.as_deref() != Some(want.as_str()) {
                    let _ = api.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                }
            }
            Ok(None) => {
                if let Err(e) = api.create(&PostParams::default(), &mirror_of(p, node.as_ref())).await {
                    tracing::debug!(pod = name, error = %e, "creating a mirror pod");
                }
            }
            Err(_) => return,
        }
    }
    // Mirrors of static pods that are gone.
    let all: Api<Pod> = Api::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node_name}"));
    let Ok(list) = all.list(&lp).await else { return };
    for m in list.items.into_iter().filter(is_mirror) {
        let hash = m.metadata.annotations.as_ref().and_then(|a| a.get(MIRROR)).cloned().unwrap_or_default();
        if !pods.contains_key(&hash) {
            let api: Api<Pod> = Api::namespaced(client.clone(), m.metadata.namespace.as_deref().unwrap_or("default"));
            let _ = api
                .delete(
                    m.metadata.name.as_deref().unwrap_or_default(),
                    &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_node_named_pods_with_stable_uids() {
        let yaml = b"apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: busybox}]\n";
        let p = parse(Path::new("/m/web.yaml"), yaml, "n1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        let again = parse(Path::new("/m/web.yaml"), yaml, "n1").unwrap();
        assert_eq!(p.metadata.uid, again.metadata.uid);
        let other =
            parse(Path::new("/m/web.yaml"), b"metadata: {name: web}\nspec: {containers: [{name: c, image: other}]}\n", "n1").unwrap();
        assert_ne!(p.metadata.uid, other.metadata.uid, "an edited manifest is a new pod");
        assert!(
            parse(Path::new("/m/x.yaml"), b"metadata: {name: x}\nspec: {containers: []}\n", "n1").unwrap_err().contains("spec.containers")
        );
        assert!(parse(Path::new("/m/x.yaml"), b"spec: {containers: [{name: c}]}\n", "n1").unwrap_err().contains("metadata.name"));
        let m = mirror_of(&p, None);
        assert!(is_mirror(&m) && m.metadata.uid.is_none());
    }
}
