//! Image tarballs into the node's containerd: `skiff image import FILE...` (with progress) and the
//! agent's start-up import of `DATA/images/*.tar`, which remembers what it imported (size, mtime,
//! sha256) so a tarball is imported once, not at every start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::containerd::CRI_NAMESPACE;

/// Loading a tarball (docker-archive or OCI archive) means writing blobs to the content store,
/// creating image records and unpacking snapshots: containerd's own client logic, which no
/// maintained Rust crate provides, so this drives `ctr` (shipped with containerd).
///
/// Streams `file` into `ctr images import -` on `socket`, calling `progress(done, total)` as the
/// bytes go; returns ctr's report (the image names it unpacked).
pub async fn import_file(socket: &Path, file: &Path, mut progress: impl FnMut(u64, u64)) -> anyhow::Result<String> {
    let mut f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
    let total = f.metadata().await?.len();
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", CRI_NAMESPACE, "images", "import", "--snapshotter", "overlayfs", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ctr (shipped with containerd)")?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if stdin.write_all(&buf[..n]).await.is_err() {
            break; // ctr gave up; its stderr says why
        }
        done += n as u64;
        progress(done, total);
    }
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        anyhow::bail!("importing {}: {}", file.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Imported {
    size: u64,
    mtime_ns: i128,
    sha256: String,
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn stat(path: &Path) -> Option<(u64, i128)> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
    Some((m.len(), mtime))
}

/// Imports the tarballs in `dir` that were not imported before (by size+mtime, then by digest);
/// the record is kept in `state`. Returns the files imported.
pub async fn import_new(socket: &Path, dir: &Path, state: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut seen: BTreeMap<String, Imported> = std::fs::read(state).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "tar")).collect(),
        Err(_) => return Ok(Vec::new()),
    };
    files.sort();
    let mut done = Vec::new();
    for f in files {
        let key = f.display().to_string();
        let Some((size, mtime_ns)) = stat(&f) else { continue };
        if seen.get(&key).is_some_and(|i| i.size == size && i.mtime_ns == mtime_ns) {
            continue;
        }
        let sha256 = sha256_file(&f)?;
        if seen.values().any(|i| i.sha256 == sha256) {
            // The same bytes under another name or a touched file: nothing new to load.
            seen.insert(key, Imported { size, mtime_ns, sha256 });
            continue;
        }
        let t0 = std::time::Instant::now();
        import_file(socket, &f, |_, _| {}).await?;
        tracing::info!(file = %f.display(), ms = t0.elapsed().as_millis() as u64, "imported image tarball");
        seen.insert(key, Imported { size, mtime_ns, sha256 });
        done.push(f);
        std::fs::write(state, serde_json::to_vec_pretty(&seen)?)?;
    }
    std::fs::write(state, serde_json::to_vec_pretty(&seen)?)?;
    Ok(done)
}

/// A one-line progress bar: `[#####.....]  52%  1.1/2.0 MiB`.
pub fn bar(done: u64, total: u64) -> String {
    let frac = if total == 0 { 1.0 } else { done as f64 / total as f64 };
    let filled = (frac * 30.0).round() as usize;
    format!(
        "[{}{}] {:>3}%  {:.1}/{:.1} MiB",
        "#".repeat(filled.min(30)),
        ".".repeat(30 - filled.min(30)),
        (frac * 100.0).round() as u64,
        done as f64 / 1048576.0,
        total as f64 / 1048576.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar() {
        assert_eq!(bar(0, 100), format!("[{}]   0%  0.0/0.0 MiB", ".".repeat(30)));
        assert!(bar(50, 100).starts_with(&format!("[{}{}]  50%", "#".repeat(15), ".".repeat(15))));
        assert!(bar(7, 0).contains("100%"));
    }

    #[test]
    fn digests_of_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
