//! The pod-level cgroups under the kubepods hierarchy. runc creates and removes each container's
//! cgroup; the `pod<uid>` parent it creates on the way is the kubelet's to remove once the pod
//! is gone (upstream's pod container manager), or they pile up.

use std::path::Path;

const ROOT: &str = "/sys/fs/cgroup";

/// Removes `parent` (a cgroupfs path such as `/kubepods/besteffort/pod<uid>`) from every
/// hierarchy, deepest directories first. Busy directories are left alone; returns whether none
/// is left.
pub fn remove(parent: &str) -> bool {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return false;
    }
    let mut gone = true;
    for h in std::fs::read_dir(ROOT).into_iter().flatten().flatten() {
        let dir = h.path().join(rel);
        remove_tree(&dir);
        gone &= !dir.exists();
    }
    gone
}

fn remove_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes a pod's cgroup whatever its QoS class was (housekeeping has only the UID).
pub fn remove_pod(root: &str, uid: &str) {
    let root = root.trim_end_matches('/');
    for class in ["", "/burstable", "/besteffort"] {
        let _ = remove(&format!("{root}/kubepods{class}/pod{uid}"));
    }
}
