//! skiff-controllers: kube-controller-manager's role. Each controller is a module with a
//! `reconcile(obj, ctx) -> Result<Action>` function driven by kube-runtime's `Controller`, and talks
//! to the API server only through a `kube::Client` (hard rule: only the API server opens the store).
//!
//! Start with [`run`], which runs every controller until the future is dropped.

use kube::Client;

pub mod namespace;

/// Runs all controllers on `client` until dropped.
pub async fn run(client: Client) {
    namespace::run(client).await;
}
