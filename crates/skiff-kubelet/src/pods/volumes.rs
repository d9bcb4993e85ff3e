//! Pod volumes on the node: each under `<pods dir>/<uid>/volumes/<plugin>/<name>`, as upstream's
//! layout. emptyDir (disk, or tmpfs for medium Memory), hostPath with its type checks, and the
//! API-backed kinds (configMap, secret, downwardAPI, projected) written with upstream's atomic
//! writer: files live in a timestamped directory, `..data` points at it, and each visible name is
//! a symlink through `..data`, so an update is one rename and a reader never sees half of it.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};

use super::env::{ConfigError, Runtime, Sources};
use crate::cri::v1 as cri;

#[derive(Debug, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
pub struct VolumeError {
    pub volume: String,
    pub message: String,
}

fn verr(volume: &str, message: impl ToString) -> VolumeError {
    VolumeError { volume: volume.into(), message: message.to_string() }
}

pub fn pod_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid)
}

/// What volume setup needs from the pod's surroundings.
pub struct Context<'a> {
    pub pod_dir: &'a Path,
    pub runtime: Runtime<'a>,
    pub node_cpus: i64,
    pub node_memory: i64,
}

/// Sets up (or refreshes) every volume of the pod; returns each volume's host path.
pub async fn setup(pod: &Pod, ctx: &Context<'_>, src: &mut Sources) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let mut out = HashMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let path = setup_one(pod, v, ctx, src).await?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn plugin_dir(ctx: &Context<'_>, plugin: &str, name: &str) -> PathBuf {
    ctx.pod_dir.join("volumes").join(plugin).join(name)
}

async fn setup_one(pod: &Pod, v: &Volume, ctx: &Context<'_>, src: &mut Sources) -> Result<PathBuf, VolumeError> {
    let name = v.name.as_str();
    let io = |e: std::io::Error| verr(name, e);
    let cfg = |e: ConfigError| verr(name, e.0);
    if let Some(e) = &v.empty_dir {
        let dir = plugin_dir(ctx, "kubernetes.io~empty-dir", name);
        std::fs::create_dir_all(&dir).map_err(io)?;
        if e.medium.as_deref() == Some("Memory") {
            let size = e.size_limit.as_ref().and_then(|q| skiff_scheduler::quantity::parse_value(&q.0));
            ensure_tmpfs(&dir, size).map_err(io)?;
        }
        // Writable by any user a container runs as, as upstream's emptyDir (0777).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        check_host_path(&p, h.type_.as_deref().unwrap_or("")).map_err(|m| verr(name, m))?;
        return Ok(p);
    }
    let files: BTreeMap<String, (Vec<u8>, u32)>;
    let plugin;
    if let Some(c) = &v.config_map {
        plugin = "kubernetes.io~configmap";
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        files = config_map_files(name, src, &c.name, c.items.as_deref(), c.optional, mode).await?;
    } else if let Some(s) = &v.secret {
        plugin = "kubernetes.io~secret";
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let sname = s.secret_name.clone().unwrap_or_default();
        files = secret_files(name, src, &sname, s.items.as_deref(), s.optional, mode).await?;
    } else if let Some(d) = &v.downward_api {
        plugin = "kubernetes.io~downward-api";
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        files = downward(pod, d.items.as_deref().unwrap_or_default(), mode, ctx).map_err(cfg)?;
    } else if let Some(p) = &v.projected {
        plugin = "kubernetes.io~projected";
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        let mut all = BTreeMap::new();
        for s in p.sources.iter().flatten() {
            if let Some(c) = &s.config_map {
                all.extend(config_map_files(name, src, &c.name, c.items.as_deref(), c.optional, mode).await?);
            }
            if let Some(c) = &s.secret {
                all.extend(secret_files(name, src, &c.name, c.items.as_deref(), c.optional, mode).await?);
            }
            if let Some(d) = &s.downward_api {
                all.extend(downward(pod, d.items.as_deref().unwrap_or_default(), mode, ctx).map_err(cfg)?);
            }
            if s.service_account_token.is_some() {
                // The seam for bound service account tokens (TokenRequest), which the security
                // issue brings; until then the pod waits with this message instead of running
                // without the token it asked for.
                return Err(verr(name, "serviceAccountToken projection is not supported by this node yet"));
            }
        }
        files = all;
    } else {
        return Err(verr(name, "unsupported volume type on this node (emptyDir, hostPath, configMap, secret, downwardAPI, projected are)"));
    }
    let dir = plugin_dir(ctx, plugin, name);
    std::fs::create_dir_all(&dir).map_err(io)?;
    if plugin == "kubernetes.io~secret" || plugin == "kubernetes.io~projected" {
        // Secret material never touches the disk.
        ensure_tmpfs(&dir, None).map_err(io)?;
    }
    write_atomic(&dir, &files).map_err(io)?;
    Ok(dir)
}

type Files = BTreeMap<String, (Vec<u8>, u32)>;

async fn config_map_files(
    volume: &str,
    src: &mut Sources,
    cm: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<Files, VolumeError> {
    match src.config_map(cm).await.map_err(|e| verr(volume, e.0))? {
        Some(d) => project(volume, d.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect(), items, mode, "configmap", cm),
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(verr(volume, format!("configmap {cm:?} not found"))),
    }
}

async fn secret_files(
    volume: &str,
    src: &mut Sources,
    secret: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<Files, VolumeError> {
    match src.secret(secret).await.map_err(|e| verr(volume, e.0))? {
        Some(d) => project(volume, d.clone(), items, mode, "secret", secret),
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(verr(volume, format!("secret {secret:?} not found"))),
    }
}

/// The files a configMap/secret source projects: every key, or only `items` (key → path, mode).
fn project(
    volume: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    kind: &str,
    name: &str,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, VolumeError> {
    let Some(items) = items else {
        return Ok(data.into_iter().map(|(k, v)| (k, (v, mode))).collect());
    };
    let mut out = BTreeMap::new();
    for it in items {
        let v = data.get(&it.key).ok_or_else(|| verr(volume, format!("{kind} {name:?}: key {:?} not found", it.key)))?;
        out.insert(it.path.clone(), (v.clone(), it.mode.map(|m| m as u32).unwrap_or(mode)));
    }
    Ok(out)
}

fn downward(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    mode: u32,
    ctx: &Context<'_>,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, ConfigError> {
    let mut out = BTreeMap::new();
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            super::env::field_value(pod, f, &ctx.runtime)?
        } else if let Some(r) = &it.resource_field_ref {
            super::env::resource_value(pod, None, r, ctx.node_cpus, ctx.node_memory)?
        } else {
            String::new()
        };
        out.insert(it.path.clone(), (value.into_bytes(), it.mode.map(|m| m as u32).unwrap_or(mode)));
    }
    Ok(out)
}

/// upstream's hostPath `type` checks.
fn check_host_path(p: &Path, ty: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(p);
    let what = |ok: bool, kind: &str| if ok { Ok(()) } else { Err(format!("hostPath type check failed: {} is not a {kind}", p.display())) };
    match ty {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
                return Ok(());
            }
            what(meta.is_ok_and(|m| m.is_dir()), "directory")
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::File::create(p).map_err(|e| e.to_string())?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())?;
                return Ok(());
            }
            what(meta.is_ok_and(|m| m.is_file()), "file")
        }
        "Directory" => what(meta.is_ok_and(|m| m.is_dir()), "directory"),
        "File" => what(meta.is_ok_and(|m| m.is_file()), "file"),
        "Socket" => what(meta.is_ok_and(|m| m.file_type().is_socket()), "socket"),
        "CharDevice" => what(meta.is_ok_and(|m| m.file_type().is_char_device()), "character device"),
        "BlockDevice" => what(meta.is_ok_and(|m| m.file_type().is_block_device()), "block device"),
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

fn ensure_tmpfs(dir: &Path, size: Option<i64>) -> std::io::Result<()> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let opts = match size {
        Some(s) if s > 0 => format!("mode=0755,size={s}"),
        _ => "mode=0755".to_string(),
    };
    mount_tmpfs(dir, &opts)
}

fn mount_tmpfs(dir: &Path, opts: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let data = std::ffi::CString::new(opts)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, data.as_ptr().cast())
    };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn unmount(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks on busy mounts.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes `files` (relative path → bytes, mode) into `dir` with the `..data` symlink swap.
/// Returns whether anything changed.
pub fn write_atomic(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> std::io::Result<bool> {
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let cur = dir.join(&current);
        let same = files.iter().all(|(p, (bytes, mode))| {
            let f = cur.join(p);
            std::fs::read(&f).is_ok_and(|b| &b == bytes) && std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
        }) && count_files(&cur) == files.len();
        if same {
            return Ok(false);
        }
    }
    for p in files.keys() {
        if p.starts_with("..") || p.split('/').any(|s| s == ".." || s.is_empty()) || p.starts_with('/') {
            return Err(std::io::Error::other(format!("invalid path {p:?} in volume")));
        }
    }
    let stamp = format!("..{}", jiff::Timestamp::now().as_nanosecond());
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir_all(&ts_dir)?;
    for (p, (bytes, mode)) in files {
        let f = ts_dir.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&f, bytes)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
    }
    let old = std::fs::read_link(&data_link).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // Visible names: one symlink per top-level entry, through ..data.
    let top: std::collections::BTreeSet<&str> = files.keys().map(|p| p.split('/').next().unwrap_or(p)).collect();
    for t in &top {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("..") && !top.contains(n.as_str()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old
        && old != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(_) => n += 1,
            Err(_) => {}
        }
    }
    n
}

/// The container's mounts from its volumeMounts. A volume the pod does not declare is an error
/// (the API server validates this too; a static pod is not validated by it).
pub fn mounts(c: &Container, vols: &HashMap<String, PathBuf>) -> Result<Vec<cri::Mount>, ConfigError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = vols.get(&m.name).ok_or_else(|| ConfigError(format!("volumeMount {:?}: the pod has no volume of that name", m.name)))?;
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                if sub.starts_with('/') || sub.split('/').any(|s| s == "..") {
                    return Err(ConfigError(format!(
                        "volumeMount {:?}: subPath {sub:?} must be a relative path inside the volume",
                        m.name
                    )));
                }
                let p = base.join(sub);
                if std::fs::symlink_metadata(&p).is_err() {
                    std::fs::create_dir_all(&p).map_err(|e| ConfigError(format!("creating subPath {}: {e}", p.display())))?;
                }
                p
            }
            None => base.clone(),
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only.unwrap_or(false),
            propagation: match m.mount_propagation.as_deref() {
                Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
                _ => cri::MountPropagation::PropagationPrivate,
            } as i32,
            ..Default::default()
        });
    }
    Ok(out)
}

/// Unmounts every tmpfs under the pod's directory and removes it.
pub fn teardown(pod_dir: &Path) {
    let vols = pod_dir.join("volumes");
    for plugin in std::fs::read_dir(&vols).into_iter().flatten().flatten() {
        for v in std::fs::read_dir(plugin.path()).into_iter().flatten().flatten() {
            if is_mount_point(&v.path()) {
                unmount(&v.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(pod_dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_data_and_prunes_names() {
        let d = tempfile::tempdir().unwrap();
        let mut f = BTreeMap::new();
        f.insert("a".to_string(), (b"1".to_vec(), 0o644));
        f.insert("sub/b".to_string(), (b"2".to_vec(), 0o600));
        assert!(write_atomic(d.path(), &f).unwrap());
        assert!(!write_atomic(d.path(), &f).unwrap());
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(d.path().join("sub/b")).unwrap(), b"2");
        let first = std::fs::read_link(d.path().join("..data")).unwrap();
        f.remove("sub/b");
        f.insert("a".to_string(), (b"new".to_vec(), 0o644));
        assert!(write_atomic(d.path(), &f).unwrap());
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"new");
        assert!(std::fs::symlink_metadata(d.path().join("sub")).is_err());
        assert!(!d.path().join(first).exists());
        let mut bad = BTreeMap::new();
        bad.insert("../x".to_string(), (vec![], 0o644));
        assert!(write_atomic(d.path(), &bad).is_err());
    }

    #[test]
    fn host_path_types() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("made");
        check_host_path(&p, "DirectoryOrCreate").unwrap();
        assert!(p.is_dir());
        assert!(check_host_path(&p, "File").unwrap_err().contains("is not a file"));
        check_host_path(&d.path().join("f"), "FileOrCreate").unwrap();
        assert!(check_host_path(&d.path().join("none"), "Directory").is_err());
        assert!(check_host_path(&p, "Weird").is_err());
    }
}
