//! The pod sandbox ("pause") image, made by the binary itself so a node never pulls it from the
//! internet (an air-gapped node and a test inside a network namespace both need it).
//!
//! The image holds one file, `/pause`: a static ELF executable of a few dozen bytes that blocks in
//! the kernel forever. It is written here as bytes because no toolchain is guaranteed on a node
//! and a Rust program linked statically would weigh hundreds of kilobytes for the same two
//! instructions. Blocking is all a sandbox needs: containerd stops sandboxes with SIGKILL, and
//! without a shared PID namespace there are no orphans to reap.

use std::io::Write;

use ring::digest::{SHA256, digest};

/// The sandbox image's reference, fully qualified so containerd stores it under that name as is.
pub const IMAGE: &str = "registry.skiff.dev/pause:1";

/// Load address of the single segment (the conventional one for static x86_64/aarch64 ELFs).
const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;

/// Machine code for "loop forever in a blocking syscall" per architecture, or None if unknown.
fn code(arch: &str) -> Option<(u16, Vec<u8>)> {
    match arch {
        // loop: mov eax, 34 (pause); syscall; jmp loop
        "x86_64" => Some((62, vec![0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7])),
        // aarch64 has no pause(2): ppoll(NULL, 0, NULL, NULL) blocks until a signal.
        // loop: mov x0..x3, #0; mov x8, #73; svc #0; b loop
        "aarch64" => {
            let words: [u32; 7] = [0xd280_0000, 0xd280_0001, 0xd280_0002, 0xd280_0003, 0xd280_0928, 0xd400_0001, 0x17ff_fffa];
            Some((183, words.iter().flat_map(|w| w.to_le_bytes()).collect()))
        }
        _ => None,
    }
}

/// A minimal static ELF64 (little endian) executable running `code`: one header, one loadable
/// read+execute segment covering the whole file.
fn elf(machine: u16, code: &[u8]) -> Vec<u8> {
    let size = (EHDR + PHDR + code.len()) as u64;
    let mut f = Vec::with_capacity(size as usize);
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&machine.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    f.extend_from_slice(&(BASE + (EHDR + PHDR) as u64).to_le_bytes()); // entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // program headers follow the ELF header
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // one program header
    f.extend_from_slice(&64u16.to_le_bytes()); // section header size (unused)
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    // PT_LOAD, R+X, from file offset 0 at BASE.
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&5u32.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// The OCI architecture name for a Rust `target_arch`.
fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    digest(&SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn tar_entry(tar: &mut tar::Builder<&mut Vec<u8>>, path: &str, mode: u32, uid: u64, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

/// The pause image as a docker-archive tarball (`docker save` layout), ready for containerd's
/// import. Deterministic: the same binary always produces the same image digest.
pub fn docker_archive() -> anyhow::Result<Vec<u8>> {
    let arch = std::env::consts::ARCH;
    let Some((machine, code)) = code(arch) else {
        anyhow::bail!("no built-in pause program for architecture {arch}");
    };
    let mut layer = Vec::new();
    {
        let mut t = tar::Builder::new(&mut layer);
        tar_entry(&mut t, "pause", 0o755, 0, &elf(machine, &code))?;
        t.finish()?;
    }
    let diff_id = sha256_hex(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_arch(arch),
        "os": "linux",
        "config": { "Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created_by": "skiff: built-in pause program" }],
    }))?;
    let config_name = format!("{}.json", sha256_hex(&config));
    let layer_name = format!("{diff_id}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [IMAGE],
        "Layers": [layer_name],
    }]))?;
    let mut out = Vec::new();
    {
        let mut t = tar::Builder::new(&mut out);
        tar_entry(&mut t, &config_name, 0o644, 0, &config)?;
        tar_entry(&mut t, &layer_name, 0o644, 0, &layer)?;
        tar_entry(&mut t, "manifest.json", 0o644, 0, &manifest)?;
        t.finish()?;
    }
    let _ = out.flush();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_header_is_well_formed() {
        let (m, c) = code("x86_64").unwrap();
        let e = elf(m, &c);
        assert_eq!(&e[..4], b"\x7fELF");
        assert_eq!(e.len(), EHDR + PHDR + c.len());
        let entry = u64::from_le_bytes(e[24..32].try_into().unwrap());
        assert_eq!(entry, BASE + 120);
    }

    /// Runs the program for real on the build machine's architecture: it must block (not crash or
    /// exit) until it is killed.
    #[test]
    fn pause_program_blocks_until_killed() {
        let Some((m, c)) = code(std::env::consts::ARCH) else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pause");
        std::fs::write(&path, elf(m, &c)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "pause exited early");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn archive_is_deterministic_and_lists_the_image() {
        let a = docker_archive().unwrap();
        assert_eq!(a, docker_archive().unwrap());
        let mut ar = tar::Archive::new(&a[..]);
        let names: Vec<String> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
    }
}
