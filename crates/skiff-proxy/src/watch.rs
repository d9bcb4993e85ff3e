//! One pair of Service and EndpointSlice reflectors per agent, shared by the service proxy and
//! the cluster DNS: both answer from the same objects, so a second copy of every Service and a
//! second pair of watches per node would only cost memory and API server load.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch as signal;

/// The agent's view of Services and EndpointSlices. Clones share the stores; each clone has its
/// own change signal, so every consumer sees every change.
#[derive(Clone)]
pub struct Services {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    changed: signal::Receiver<u64>,
}

impl Services {
    /// Starts both watches on a background task that lives as long as any handle.
    pub fn watch(client: Client) -> Services {
        let (tx, changed) = signal::channel(0u64);
        let tx = Arc::new(tx);
        let (services, svc_watch) = reflect(Api::<Service>::all(client.clone()), tx.clone());
        let (slices, slice_watch) = reflect(Api::<EndpointSlice>::all(client), tx.clone());
        tokio::spawn(async move {
            // Ends when every receiver is gone (send_modify keeps going regardless, so check).
            tokio::select! {
                _ = async { tokio::join!(svc_watch, slice_watch) } => {}
                _ = tx.closed() => {}
            }
        });
        Services { services, slices, changed }
    }

    /// Both listings are complete.
    pub async fn ready(&self) -> anyhow::Result<()> {
        tokio::try_join!(self.services.wait_until_ready(), self.slices.wait_until_ready())?;
        Ok(())
    }

    /// Resolves at the next change after the last one this handle saw.
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn reflect<K>(api: Api<K>, tx: Arc<signal::Sender<u64>>) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let fut = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitApply(_)) | Ok(watcher::Event::Init) => {}
                Ok(_) => tx.send_modify(|n| *n += 1),
                Err(e) => tracing::debug!(error = %e, "service watch error (retrying)"),
            }
        }
    };
    (reader, fut)
}
