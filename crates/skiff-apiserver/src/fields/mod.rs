//! Field ownership: `metadata.managedFields` on every write, and server-side apply.
//!
//! Hand-written because structured-merge-diff (upstream's engine) has no Rust counterpart; it
//! works on the JSON form with the list semantics (`+listType`, `+listMapKey`) the built-in
//! types declare (`crate::patch::schema`).

pub mod apply;
pub mod managed;
pub mod set;
pub mod walk;

pub use managed::{Manager, Scope};
