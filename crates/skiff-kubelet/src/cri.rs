//! The CRI v1 client (runtime and image services) over the runtime's Unix socket. The generated
//! gRPC clients come from the `k8s-cri` crate; this adds the connection and the few queries the
//! kubelet repeats.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub socket: PathBuf,
}

impl Cri {
    /// Connects lazily: the channel dials the socket on first use and again after containerd
    /// restarts, so a supervised restart needs no reconnect logic here.
    pub fn connect(socket: &Path) -> anyhow::Result<Cri> {
        let path = socket.to_path_buf();
        // The URI is required by tonic and ignored by the connector.
        let channel = Endpoint::try_from("http://[::]:0")?.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }));
        let max = 16 * 1024 * 1024;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(max),
            images: ImageServiceClient::new(channel).max_decoding_message_size(max),
            socket: socket.to_path_buf(),
        })
    }

    pub async fn version(&self) -> Result<cri::VersionResponse, tonic::Status> {
        Ok(self.runtime.clone().version(cri::VersionRequest { version: "v1".into() }).await?.into_inner())
    }

    /// The runtime's RuntimeReady and NetworkReady conditions (false when absent).
    pub async fn ready(&self) -> Result<(bool, bool, String), tonic::Status> {
        let st = self.runtime.clone().status(cri::StatusRequest { verbose: false }).await?.into_inner();
        let conds = st.status.map(|s| s.conditions).unwrap_or_default();
        let get = |t: &str| conds.iter().find(|c| c.r#type == t);
        let runtime = get("RuntimeReady").is_some_and(|c| c.status);
        let network = get("NetworkReady").is_some_and(|c| c.status);
        let why =
            conds.iter().filter(|c| !c.status).map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message)).collect::<Vec<_>>().join("; ");
        Ok((runtime, network, why))
    }

    pub async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, tonic::Status> {
        let req = cri::ImageStatusRequest { image: Some(image_spec(image)), verbose: false };
        Ok(self.images.clone().image_status(req).await?.into_inner().image)
    }

    pub async fn image_present(&self, image: &str) -> Result<bool, tonic::Status> {
        Ok(self.image_status(image).await?.is_some())
    }

    pub async fn pull(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox: Option<cri::PodSandboxConfig>,
    ) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest { image: Some(image_spec(image)), auth, sandbox_config: sandbox };
        Ok(self.images.clone().pull_image(req).await?.into_inner().image_ref)
    }

    /// Every sandbox the runtime knows for a pod UID (the kubelet's labels), newest first.
    pub async fn sandboxes(&self, pod_uid: Option<&str>) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
        let filter = cri::PodSandboxFilter {
            label_selector: pod_uid.map(|u| [(crate::labels::POD_UID.to_string(), u.to_string())].into()).unwrap_or_default(),
            ..Default::default()
        };
        let mut items =
            self.runtime.clone().list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) }).await?.into_inner().items;
        items.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(items)
    }

    pub async fn sandbox_status(&self, id: &str) -> Result<Option<cri::PodSandboxStatus>, tonic::Status> {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        match self.runtime.clone().pod_sandbox_status(req).await {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Containers of one sandbox, or of all sandboxes.
    pub async fn containers(&self, sandbox: Option<&str>) -> Result<Vec<cri::Container>, tonic::Status> {
        let filter = cri::ContainerFilter { pod_sandbox_id: sandbox.unwrap_or_default().into(), ..Default::default() };
        Ok(self.runtime.clone().list_containers(cri::ListContainersRequest { filter: Some(filter) }).await?.into_inner().containers)
    }

    pub async fn container_status(&self, id: &str) -> Result<Option<cri::ContainerStatus>, tonic::Status> {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        match self.runtime.clone().container_status(req).await {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    pub async fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), tonic::Status> {
        let req = cri::StopContainerRequest { container_id: id.into(), timeout: timeout_s };
        ignore_not_found(self.runtime.clone().stop_container(req).await.map(|_| ()))
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        ignore_not_found(self.runtime.clone().remove_container(cri::RemoveContainerRequest { container_id: id.into() }).await.map(|_| ()))
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        ignore_not_found(self.runtime.clone().stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.map(|_| ()))
    }

    pub async fn remove_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        ignore_not_found(
            self.runtime.clone().remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.map(|_| ()),
        )
    }
}

fn ignore_not_found(r: Result<(), tonic::Status>) -> Result<(), tonic::Status> {
    match r {
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        other => other,
    }
}

pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), ..Default::default() }
}
