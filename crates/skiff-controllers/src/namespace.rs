//! The namespace lifecycle controller: when a namespace is being deleted, delete everything in it
//! (every namespaced resource discovery lists), report progress in the namespace's conditions as
//! upstream does, and remove the `kubernetes` finalizer once nothing is left, which lets the API
//! server delete the namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

const FINALIZER: &str = "kubernetes";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
}

pub async fn run(client: Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    crate::drain(
        Controller::new(namespaces, watcher::Config::default()).run(reconcile, error_policy, Arc::new(Ctx { client })),
        "namespace-controller",
    )
    .await;
}

fn error_policy(_ns: Arc<Namespace>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!("namespace controller: {err}");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let has_finalizer = ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    if !has_finalizer {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let remaining = delete_contents(&ctx.client, &name).await?;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    if remaining.is_empty() {
        let mut done = (*ns).clone();
        if let Some(spec) = done.spec.as_mut() {
            spec.finalizers = Some(spec.finalizers.take().unwrap_or_default().into_iter().filter(|f| f != FINALIZER).collect());
        }
        match namespaces.replace_subresource("finalize", &name, &PostParams::default(), &done).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    set_content_remaining(&namespaces, &ns, &remaining).await?;
    // Pods terminating gracefully, or objects with finalizers, take a while.
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Deletes every namespaced object in `ns`; returns "resource has N objects" for what is left.
async fn delete_contents(client: &Client, ns: &str) -> Result<Vec<String>, Error> {
    let discovery = Discovery::new(client.clone()).run_aggregated().await?;
    let mut remaining = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE_COLLECTION)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            match api.delete_collection(&DeleteParams::background(), &ListParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => continue,
                Err(e) => return Err(e.into()),
            }
            let left = api.list(&ListParams::default().limit(1)).await?;
            if !left.items.is_empty() {
                remaining.push(format!("{}.{} has objects", ar.plural, ar.group).replace(". has", " has"));
            }
        }
    }
    Ok(remaining)
}

async fn set_content_remaining(namespaces: &Api<Namespace>, ns: &Namespace, remaining: &[String]) -> Result<(), Error> {
    let message = format!("Some resources are remaining: {}", remaining.join(", "));
    let conds = ns.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    if conds.iter().any(|c| c.type_ == "NamespaceContentRemaining" && c.message.as_deref() == Some(message.as_str())) {
        return Ok(());
    }
    let mut updated = ns.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    let mut conds: Vec<NamespaceCondition> = conds.into_iter().filter(|c| c.type_ != "NamespaceContentRemaining").collect();
    conds.push(NamespaceCondition {
        type_: "NamespaceContentRemaining".into(),
        status: "True".into(),
        reason: Some("SomeResourcesRemain".into()),
        message: Some(message),
        last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())),
    });
    status.conditions = Some(conds);
    match namespaces.replace_status(&ns.name_any(), &PostParams::default(), &updated).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
