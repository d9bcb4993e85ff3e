//! The labels and annotations the kubelet puts on CRI sandboxes and containers. They use
//! upstream's keys so `crictl` users see what they know, and they are how a restarted agent finds
//! its pods again (adoption): everything it needs to match a runtime object to a pod is here.

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Marks runtime objects this kubelet manages (upstream's value for the same key).
pub const MANAGED: &str = "io.kubernetes.container.managed-by";
pub const MANAGED_BY: &str = "kubelet";

/// Annotations: the container's restart count (so it survives an agent restart), the hash of the
/// container's spec (a changed spec restarts the container), the pod's grace period, and whether
/// it is an init container.
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub const GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
pub const INIT_CONTAINER: &str = "io.skiff.container.init";
