//! `runtime.v1.RuntimeService`.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};
use toted::engine::readiness::NetworkReadiness;

use crate::api::runtime_service_server::RuntimeService;
use crate::api::*;
use crate::{CRI_API_VERSION, Cri, MAX_MESSAGE_BYTES, containers, pods, stats, status};

/// The name the CRI's Version answers with, as containerd's is
/// "containerd" and CRI-O's "cri-o".
pub const RUNTIME_NAME: &str = "tote";

/// The condition types and the reason the kubelet knows (its
/// `NetworkPluginNotReady` is what containerd and CRI-O report too).
const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";
const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, _: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let request = pods::request(request.into_inner())?;
        let pod_sandbox_id = self.engine.run_pod(request).await.map_err(status)?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        pods::gone_is_fine(self.engine.stop_pod(&request.into_inner().pod_sandbox_id).await)?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        pods::gone_is_fine(self.engine.remove_pod(&request.into_inner().pod_sandbox_id).await)?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let pod = self.engine.pod(&request.pod_sandbox_id).map_err(status)?;
        Ok(Response::new(pods::status(&pod, request.verbose)))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = pods::filter(request.into_inner().filter);
        let items = self.engine.pods(&filter).iter().map(pods::summary).collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let request = containers::request(&self.engine, request.into_inner())?;
        let (container_id, _warnings) = self.engine.create(request).await.map_err(status)?;
        Ok(Response::new(CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.engine.start(&request.into_inner().container_id).await.map_err(status)?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let request = request.into_inner();
        let timeout = u32::try_from(request.timeout.max(0)).unwrap_or(u32::MAX);
        pods::gone_is_fine(self.engine.stop(&request.container_id, Some(timeout)).await)?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        pods::gone_is_fine(self.engine.remove(&request.into_inner().container_id, true, true).await)?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let images = containers::ImageRefs::of(&self.engine);
        let containers =
            self.pod_containers(&filter).iter().map(|record| containers::summary(&images, record)).collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let record = self.engine.container(&request.container_id).map_err(status)?;
        if self.engine.pod(&record.sandbox).is_err() {
            return Err(Status::not_found(format!("container {:?} is not a pod's", request.container_id)));
        }
        Ok(Response::new(containers::status(&self.engine, &record, request.verbose)))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let record = self.engine.container(&request.into_inner().container_id).map_err(status)?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats::container(&self.engine, &record).await) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let wanted = ContainerFilter {
            id: filter.id,
            pod_sandbox_id: filter.pod_sandbox_id,
            label_selector: filter.label_selector,
            // As containerd: the containers that run.
            state: Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 }),
        };
        let mut out = Vec::new();
        for record in self.pod_containers(&wanted) {
            out.push(stats::container(&self.engine, &record).await);
        }
        Ok(Response::new(ListContainerStatsResponse { stats: out }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let pod = self.engine.pod(&request.into_inner().pod_sandbox_id).map_err(status)?;
        Ok(Response::new(PodSandboxStatsResponse { stats: Some(stats::pod(&self.engine, &pod).await) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let wanted = toted::engine::PodFilter {
            id: Some(filter.id).filter(|id| !id.is_empty()),
            ready: Some(true),
            labels: filter.label_selector.into_iter().collect(),
        };
        let mut out = Vec::new();
        for pod in self.engine.pods(&wanted) {
            out.push(stats::pod(&self.engine, &pod).await);
        }
        Ok(Response::new(ListPodSandboxStatsResponse { stats: out }))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let limits = containers::limits(&request.linux.unwrap_or_default());
        self.engine.update_container(&request.container_id, limits, None).await.map_err(status)?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        self.engine.reopen_log(&request.into_inner().container_id).await.map_err(status)?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>>, Status> {
        Ok(Response::new(crate::events::container_events(self.engine.clone())))
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<BoxStream<StreamPodSandboxesResponse>>, Status> {
        let filter = pods::filter(request.into_inner().filter);
        let items: Vec<PodSandbox> = self.engine.pods(&filter).iter().map(pods::summary).collect();
        Ok(Response::new(crate::in_chunks(&items, |pod_sandboxes| StreamPodSandboxesResponse { pod_sandboxes })))
    }

    async fn stream_containers(
        &self,
        request: Request<StreamContainersRequest>,
    ) -> Result<Response<BoxStream<StreamContainersResponse>>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let images = containers::ImageRefs::of(&self.engine);
        let items: Vec<Container> =
            self.pod_containers(&filter).iter().map(|record| containers::summary(&images, record)).collect();
        Ok(Response::new(crate::in_chunks(&items, |containers| StreamContainersResponse { containers })))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = request.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr);
        if let Some(cidr) = cidr.filter(|c| !c.is_empty()) {
            // Addresses come from the CNI configuration (its IPAM ranges),
            // as with containerd without a config template: recorded only.
            tracing::info!(pod_cidr = %cidr, "the kubelet's pod CIDR");
            *self.pod_cidr.lock().expect("pod cidr lock") = cidr;
        }
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let timeout = (request.timeout > 0).then(|| Duration::from_secs(request.timeout.unsigned_abs()));
        // Both streams must fit one reply.
        let output = self
            .engine
            .exec_sync(&request.container_id, request.cmd, timeout, MAX_MESSAGE_BYTES / 2 - 4096)
            .await
            .map_err(status)?;
        Ok(Response::new(ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.exit_code,
        }))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let request = request.into_inner();
        self.running(&request.container_id)?;
        let url = self.streaming()?.exec_url(tote_stream::ExecRequest {
            container_id: request.container_id,
            cmd: request.cmd,
            tty: request.tty,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
        });
        Ok(Response::new(ExecResponse { url: url.map_err(stream_status)? }))
    }

    async fn attach(&self, request: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        let request = request.into_inner();
        self.running(&request.container_id)?;
        let url = self.streaming()?.attach_url(tote_stream::AttachRequest {
            container_id: request.container_id,
            tty: request.tty,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
        });
        Ok(Response::new(AttachResponse { url: url.map_err(stream_status)? }))
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let request = request.into_inner();
        let pod = self.engine.pod(&request.pod_sandbox_id).map_err(status)?;
        if !pod.pod.as_ref().is_some_and(|p| p.ready) {
            return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", pod.id)));
        }
        let mut ports = Vec::with_capacity(request.port.len());
        for port in request.port {
            ports.push(
                u16::try_from(port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Status::invalid_argument(format!("{port} is not a port number (1-65535)")))?,
            );
        }
        let url = self.streaming()?.port_forward_url(tote_stream::PortForwardRequest { pod_sandbox_id: pod.id, ports });
        Ok(Response::new(PortForwardResponse { url: url.map_err(stream_status)? }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // toted answers, so the runtime is up: containers that need no pod
        // network can run.
        let runtime = RuntimeCondition { r#type: RUNTIME_READY.into(), status: true, ..Default::default() };
        let network = match self.engine.network_readiness() {
            NetworkReadiness::Ready => {
                RuntimeCondition { r#type: NETWORK_READY.into(), status: true, ..Default::default() }
            }
            NetworkReadiness::NotReady(message) => RuntimeCondition {
                r#type: NETWORK_READY.into(),
                status: false,
                reason: NETWORK_NOT_READY_REASON.into(),
                message,
            },
        };
        let mut info = HashMap::new();
        if request.into_inner().verbose {
            info.insert("config".to_string(), self.verbose_config());
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions: vec![runtime, network] }),
            info,
            // One handler, the default (""): tote-shim. Recursive read-only
            // mounts (mount_setattr) and SupplementalGroupsPolicy work;
            // pods' own user namespaces too, except under a rootless toted.
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: true,
                    user_namespaces: !self.engine.config.privilege.is_rootless(),
                }),
            }],
            features: Some(RuntimeFeatures { supplemental_groups_policy: true, user_namespaces_host_network: false }),
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        // toted only drives cgroups itself (config.rs refuses any other
        // driver), so the kubelet must lay pods out with cgroupfs too.
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration { cgroup_driver: CgroupDriver::Cgroupfs.into() }),
        }))
    }
}

impl Cri {
    /// The pods' containers (not the CLI's) that pass `filter`.
    fn pod_containers(&self, filter: &ContainerFilter) -> Vec<toted::containers::record::ContainerRecord> {
        self.engine
            .containers()
            .into_iter()
            .filter(|record| containers::matches(record, filter) && self.engine.is_pod(&record.sandbox))
            .collect()
    }

    /// Status's verbose `config`: what decides how pods run and where
    /// images come from, for a person debugging a node.
    fn verbose_config(&self) -> String {
        let config = &self.engine.config;
        // What the next pod gets, as the configuration directory is now.
        let pod_network = match self.engine.pod_network() {
            Ok(Some(list)) => serde_json::json!({ "name": list.name, "file": list.file }),
            Ok(None) => serde_json::json!({ "name": config.network.network_name, "file": null }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let mirrors: HashMap<&str, &[String]> =
            config.registries.iter().map(|(registry, host)| (registry.as_str(), host.mirrors.as_slice())).collect();
        serde_json::json!({
            "root": config.root,
            "stateDir": config.state_dir,
            "cgroupDriver": config.cgroup_driver,
            "cgroupParent": config.cgroup_parent,
            "cni": {
                "networkName": config.network.network_name,
                "pluginDirs": config.network.plugin_dirs,
                "bridge": config.network.bridge,
                "subnet": config.network.subnet,
                "confDir": config.cri.cni_conf_dir,
                "podNetwork": config.cri.pod_network.to_string(),
                "podNetworkInUse": pod_network,
            },
            "registryMirrors": mirrors,
            "pinnedImages": config.cri.pinned_images,
            "podCidr": *self.pod_cidr.lock().expect("pod cidr lock"),
        })
        .to_string()
    }
}

impl Cri {
    fn streaming(&self) -> Result<&tote_stream::server::ServerHandle, Status> {
        self.stream.as_deref().ok_or_else(|| Status::unavailable("toted runs no streaming server"))
    }

    /// A session needs a running container (as the kubelet's runtimes
    /// check before they hand out a URL).
    fn running(&self, id: &str) -> Result<(), Status> {
        let container = self.engine.container(id).map_err(status)?;
        if !container.state.status().is_live() {
            return Err(Status::failed_precondition(format!("container {} is not running", container.id)));
        }
        Ok(())
    }
}

fn stream_status(error: tote_stream::server::Error) -> Status {
    if error.is_invalid_argument() {
        Status::invalid_argument(error.to_string())
    } else {
        Status::resource_exhausted(error.to_string())
    }
}
