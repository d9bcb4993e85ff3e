//! Per-type defaulting and validation (upstream's "strategies"), written against k8s-openapi types.
//! Generic metadata rules live in [`meta`]; everything type-specific lives in one file per family.

use crate::codec::AdmitError;
use crate::status::FieldError;

pub mod meta;
pub mod namespace;
pub mod pod;
pub mod service;
pub mod workload;

pub use service::ServiceAllocator;

/// Shared state strategies may consult (allocators). One per API server.
pub struct Env {
    pub services: ServiceAllocator,
    /// PriorityClasses for the Priority admission step on pod creation.
    pub priority_classes: PriorityClasses,
    /// The DefaultTolerationSeconds admission plugin's `tolerationSeconds` for the not-ready and
    /// unreachable NoExecute taints (upstream's --default-not-ready-toleration-seconds and
    /// --default-unreachable-toleration-seconds).
    pub toleration_seconds: DefaultTolerationSeconds,
}

#[derive(Clone, Copy, Debug)]
pub struct DefaultTolerationSeconds {
    pub not_ready: i64,
    pub unreachable: i64,
}

impl Default for DefaultTolerationSeconds {
    fn default() -> Self {
        DefaultTolerationSeconds { not_ready: 300, unreachable: 300 }
    }
}

/// A PriorityClass as pod admission needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityClassInfo {
    pub name: String,
    pub value: i32,
    pub preemption_policy: Option<String>,
    pub global_default: bool,
}

/// Read access to the stored PriorityClasses (wired to the watch cache once it exists).
#[derive(Default)]
pub struct PriorityClasses {
    source: std::sync::OnceLock<std::sync::Arc<dyn Fn() -> Vec<PriorityClassInfo> + Send + Sync>>,
}

impl PriorityClasses {
    pub fn set_source(&self, f: std::sync::Arc<dyn Fn() -> Vec<PriorityClassInfo> + Send + Sync>) {
        let _ = self.source.set(f);
    }

    pub fn all(&self) -> Vec<PriorityClassInfo> {
        self.source.get().map(|f| f()).unwrap_or_default()
    }
}

/// Defaulting and validation for one type. Both hooks see the stored object on updates.
pub trait Strategy<K>: Send + Sync + 'static {
    fn default(&self, _obj: &mut K, _old: Option<&K>, _env: &Env) -> Result<(), AdmitError> {
        Ok(())
    }
    fn validate(&self, _obj: &K, _old: Option<&K>) -> Vec<FieldError> {
        Vec::new()
    }
}

/// For types whose only rules are the generic metadata ones.
pub struct Plain;
impl<K> Strategy<K> for Plain {}

/// Appends `err` when `new` differs from `old` (upstream's ValidateImmutableField message).
pub fn immutable<T: PartialEq + serde::Serialize>(errs: &mut Vec<FieldError>, field: &str, new: &T, old: &T) {
    if new != old {
        let v = serde_json::to_value(new).unwrap_or_default();
        errs.push(FieldError::invalid(field, &v, "field is immutable"));
    }
}
