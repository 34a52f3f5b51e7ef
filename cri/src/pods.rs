//! Pod sandboxes: the CRI's messages to and from the engine's pods.

use std::collections::{BTreeMap, HashMap};

use tonic::Status;
use toted::containers::record::{DnsConfig, IdRange, NamespaceMode, ObjectMeta, SandboxRecord};
use toted::engine::{EngineError, PodFilter, PodRequest, UsernsRequest};
use toted::network::{PortMapping, Protocol};

use crate::api;
use crate::time::rfc3339_nanos;

fn mode(value: i32, what: &str) -> Result<NamespaceMode, Status> {
    match api::NamespaceMode::try_from(value) {
        Ok(api::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(api::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(api::NamespaceMode::Node) => Ok(NamespaceMode::Host),
        Ok(api::NamespaceMode::Target) => {
            Err(Status::invalid_argument(format!("namespace mode TARGET is not supported for the {what} namespace")))
        }
        Err(_) => Err(Status::invalid_argument(format!("unknown namespace mode {value} for the {what} namespace"))),
    }
}

fn api_mode(mode: NamespaceMode) -> i32 {
    match mode {
        NamespaceMode::Pod => api::NamespaceMode::Pod as i32,
        NamespaceMode::Container => api::NamespaceMode::Container as i32,
        NamespaceMode::Host => api::NamespaceMode::Node as i32,
    }
}

fn port(mapping: &api::PortMapping) -> Result<Option<PortMapping>, Status> {
    let protocol = match api::Protocol::try_from(mapping.protocol) {
        Ok(api::Protocol::Tcp) => Protocol::Tcp,
        Ok(api::Protocol::Udp) => Protocol::Udp,
        _ => {
            return Err(Status::invalid_argument(format!(
                "port mapping protocol {} is not supported",
                mapping.protocol
            )));
        }
    };
    // The kubelet passes container ports with no host port too: nothing
    // to publish.
    if mapping.host_port <= 0 {
        return Ok(None);
    }
    let number = |n: i32, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Status::invalid_argument(format!("port mapping {what} {n} is not a port number (1-65535)")))
    };
    let host_ip = match mapping.host_ip.as_str() {
        "" => None,
        ip => Some(
            ip.parse()
                .map_err(|_| Status::invalid_argument(format!("port mapping host_ip {ip:?} is not an IP address")))?,
        ),
    };
    Ok(Some(PortMapping {
        host_ip,
        host_port: number(mapping.host_port, "host_port")?,
        container_port: number(mapping.container_port, "container_port")?,
        protocol,
    }))
}

/// The pod's user namespace: the node's (no maps), or one of its own
/// (`POD`, with maps the engine checks). A container-scoped or target
/// user namespace would split a pod's containers apart: refused, as the
/// CRI says.
fn userns(options: Option<&api::UserNamespace>) -> Result<Option<UsernsRequest>, Status> {
    let Some(options) = options else { return Ok(None) };
    let ranges = |maps: &[api::IdMapping]| -> Vec<IdRange> {
        maps.iter().map(|m| IdRange { container_id: m.container_id, host_id: m.host_id, size: m.length }).collect()
    };
    match api::NamespaceMode::try_from(options.mode) {
        Ok(api::NamespaceMode::Node) if options.uids.is_empty() && options.gids.is_empty() => Ok(None),
        Ok(api::NamespaceMode::Node) => {
            Err(Status::invalid_argument("user namespace mode NODE takes no uid or gid mappings: the node's are used"))
        }
        Ok(api::NamespaceMode::Pod) => {
            Ok(Some(UsernsRequest { uids: ranges(&options.uids), gids: ranges(&options.gids) }))
        }
        Ok(other) => Err(Status::invalid_argument(format!(
            "user namespace mode {} is not supported: only POD and NODE are",
            other.as_str_name()
        ))),
        Err(_) => {
            Err(Status::invalid_argument(format!("unknown namespace mode {} for the user namespace", options.mode)))
        }
    }
}

pub(crate) fn request(request: api::RunPodSandboxRequest) -> Result<PodRequest, Status> {
    let config = request.config.ok_or_else(|| Status::invalid_argument("RunPodSandbox without a config"))?;
    let metadata = config.metadata.ok_or_else(|| Status::invalid_argument("the pod sandbox config has no metadata"))?;
    let linux = config.linux.unwrap_or_default();
    let namespaces = linux.security_context.as_ref().and_then(|s| s.namespace_options.clone()).unwrap_or_default();
    let network = mode(namespaces.network, "network")?;
    let mut ports = Vec::new();
    for mapping in &config.port_mappings {
        ports.extend(port(mapping)?);
    }
    Ok(PodRequest {
        metadata: ObjectMeta {
            name: metadata.name,
            uid: metadata.uid,
            namespace: metadata.namespace,
            attempt: metadata.attempt,
        },
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| DnsConfig { servers: d.servers, searches: d.searches, options: d.options }),
        ports,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        host_network: network == NamespaceMode::Host,
        pid: mode(namespaces.pid, "pid")?,
        ipc: mode(namespaces.ipc, "ipc")?,
        sysctls: linux.sysctls.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        runtime_handler: request.runtime_handler,
        userns: userns(namespaces.userns_options.as_ref())?,
    })
}

fn state(sandbox: &SandboxRecord) -> i32 {
    if sandbox.pod.as_ref().is_some_and(|p| p.ready) {
        api::PodSandboxState::SandboxReady as i32
    } else {
        api::PodSandboxState::SandboxNotready as i32
    }
}

fn metadata(sandbox: &SandboxRecord) -> Option<api::PodSandboxMetadata> {
    sandbox.pod.as_ref().map(|p| api::PodSandboxMetadata {
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        namespace: p.metadata.namespace.clone(),
        attempt: p.metadata.attempt,
    })
}

fn map(values: &BTreeMap<String, String>) -> HashMap<String, String> {
    values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn summary(sandbox: &SandboxRecord) -> api::PodSandbox {
    let pod = sandbox.pod.clone().unwrap_or_default();
    api::PodSandbox {
        id: sandbox.id.clone(),
        metadata: metadata(sandbox),
        state: state(sandbox),
        created_at: rfc3339_nanos(&sandbox.created),
        labels: map(&pod.labels),
        annotations: map(&pod.annotations),
        runtime_handler: pod.runtime_handler,
    }
}

pub(crate) fn status(sandbox: &SandboxRecord, verbose: bool) -> api::PodSandboxStatusResponse {
    let pod = sandbox.pod.clone().unwrap_or_default();
    let network = if pod.ready {
        sandbox.attachment.as_ref().map(|a| api::PodSandboxNetworkStatus {
            ip: a.ip.to_string(),
            additional_ips: a.additional_ips.iter().map(|ip| api::PodIp { ip: ip.to_string() }).collect(),
        })
    } else {
        None
    };
    let options = api::NamespaceOption {
        network: api_mode(if sandbox.netns.is_some() { NamespaceMode::Pod } else { NamespaceMode::Host }),
        pid: api_mode(pod.pid),
        ipc: api_mode(pod.ipc),
        userns_options: Some(match &pod.userns {
            Some(userns) => {
                let map = |r: IdRange| {
                    vec![api::IdMapping { host_id: r.host_id, container_id: r.container_id, length: r.size }]
                };
                api::UserNamespace {
                    mode: api::NamespaceMode::Pod as i32,
                    uids: map(userns.uids),
                    gids: map(userns.gids),
                }
            }
            None => api::UserNamespace { mode: api::NamespaceMode::Node as i32, ..Default::default() },
        }),
        ..Default::default()
    };
    let mut info = HashMap::new();
    if verbose {
        let document = serde_json::json!({
            "id": sandbox.id,
            "hostname": sandbox.hostname,
            "netns": sandbox.netns,
            "ipcns": pod.ipcns,
            "userns": pod.userns.as_ref().map(|u| &u.pin),
            "utsns": pod.utsns,
            "cgroupParent": pod.cgroup_parent,
            "containers": sandbox.containers,
            "ports": sandbox.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "sysctls": pod.sysctls,
            "logDirectory": pod.log_directory,
        });
        info.insert("info".to_string(), document.to_string());
    }
    api::PodSandboxStatusResponse {
        status: Some(api::PodSandboxStatus {
            id: sandbox.id.clone(),
            metadata: metadata(sandbox),
            state: state(sandbox),
            created_at: rfc3339_nanos(&sandbox.created),
            network,
            linux: Some(api::LinuxPodSandboxStatus { namespaces: Some(api::Namespace { options: Some(options) }) }),
            labels: map(&pod.labels),
            annotations: map(&pod.annotations),
            runtime_handler: pod.runtime_handler,
        }),
        info,
        ..Default::default()
    }
}

pub(crate) fn filter(filter: Option<api::PodSandboxFilter>) -> PodFilter {
    let Some(filter) = filter else { return PodFilter::default() };
    PodFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        ready: filter.state.map(|s| s.state == api::PodSandboxState::SandboxReady as i32),
        labels: filter.label_selector.into_iter().collect(),
    }
}

/// Stop and remove of a pod that is not there succeed: the CRI makes both
/// idempotent, and the kubelet calls them again after a restart.
pub(crate) fn gone_is_fine(result: Result<(), EngineError>) -> Result<(), Status> {
    match result {
        Err(EngineError::NotFound(_)) => Ok(()),
        other => other.map_err(crate::status),
    }
}
