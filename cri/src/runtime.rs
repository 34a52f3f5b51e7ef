//! `runtime.v1.RuntimeService`.

use std::collections::HashMap;

use tonic::{Request, Response, Status};
use toted::engine::readiness::NetworkReadiness;

use crate::api::runtime_service_server::RuntimeService;
use crate::api::*;
use crate::{CRI_API_VERSION, Cri};

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
            // mounts and user namespaces are not offered to pods yet; they
            // are reported as soon as CreateContainer honours them.
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures { recursive_read_only_mounts: false, user_namespaces: false }),
            }],
            features: Some(RuntimeFeatures { supplemental_groups_policy: false, user_namespaces_host_network: false }),
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
    /// Status's verbose `config`: what decides how pods run and where
    /// images come from, for a person debugging a node.
    fn verbose_config(&self) -> String {
        let config = &self.engine.config;
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
            },
            "registryMirrors": mirrors,
            "pinnedImages": config.cri.pinned_images,
        })
        .to_string()
    }
}
