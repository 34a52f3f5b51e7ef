//! A pod's containers: the CRI's messages to and from the engine's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tonic::Status;
use toted::containers::record::{
    ContainerRecord, DeviceMapping, IdRange, ObjectMeta, Propagation, SandboxRecord, Settings, Status as State,
};
use toted::engine::{CreateRequest, Engine, MountRequest};

use crate::api;
use crate::time::rfc3339_nanos;

/// The engine's name for a pod's container: unique per pod and attempt, as
/// the kubelet expects a name to be reserved (containerd's scheme).
pub(crate) fn engine_name(meta: &ObjectMeta, pod: &SandboxRecord) -> String {
    let pod_meta = pod.pod.as_ref().map(|p| p.metadata.clone()).unwrap_or_default();
    format!("{}_{}_{}_{}_{}", meta.name, pod_meta.name, pod_meta.namespace, pod_meta.uid, meta.attempt)
}

/// An idmapped mount's maps (the CRI Mount's uid and gid mappings): none,
/// or one range each, which the engine checks against the pod's user
/// namespace.
fn id_maps(mount: &api::Mount) -> Result<Option<(IdRange, IdRange)>, Status> {
    let range = |m: &api::IdMapping| IdRange { container_id: m.container_id, host_id: m.host_id, size: m.length };
    match (mount.uid_mappings.as_slice(), mount.gid_mappings.as_slice()) {
        ([], []) => Ok(None),
        ([uids], [gids]) => Ok(Some((range(uids), range(gids)))),
        _ => Err(Status::invalid_argument(format!(
            "mount at {:?}: an idmapped mount takes one uid and one gid mapping",
            mount.container_path
        ))),
    }
}

fn propagation(value: i32) -> Result<Propagation, Status> {
    match api::MountPropagation::try_from(value) {
        Ok(api::MountPropagation::PropagationPrivate) => Ok(Propagation::Private),
        Ok(api::MountPropagation::PropagationHostToContainer) => Ok(Propagation::HostToContainer),
        Ok(api::MountPropagation::PropagationBidirectional) => Ok(Propagation::Bidirectional),
        Err(_) => Err(Status::invalid_argument(format!("unknown mount propagation {value}"))),
    }
}

/// The seccomp profile a security context asks for, as the engine's
/// `seccomp=` option: none set means unconfined, as with containerd and
/// CRI-O (the kubelet sends RuntimeDefault when a pod asks for it).
fn seccomp(context: &api::LinuxContainerSecurityContext) -> Result<Option<String>, Status> {
    use api::security_profile::ProfileType;
    if let Some(profile) = &context.seccomp {
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(None),
            Ok(ProfileType::Unconfined) => Ok(Some("seccomp=unconfined".into())),
            Ok(ProfileType::Localhost) => localhost_profile(&profile.localhost_ref),
            Err(_) => Err(Status::invalid_argument(format!("unknown seccomp profile type {}", profile.profile_type))),
        };
    }
    // Older kubelets set only the deprecated path.
    #[allow(deprecated)]
    let path = context.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(Some("seccomp=unconfined".into())),
        "runtime/default" | "docker/default" => Ok(None),
        path => match path.strip_prefix("localhost/") {
            Some(file) => localhost_profile(file),
            None => Err(Status::invalid_argument(format!(
                "seccomp profile {path:?} is not known: use runtime/default, unconfined or localhost/<path>"
            ))),
        },
    }
}

fn localhost_profile(path: &str) -> Result<Option<String>, Status> {
    if !Path::new(path).is_absolute() {
        return Err(Status::invalid_argument(format!("seccomp Localhost profile {path:?} is not an absolute path")));
    }
    Ok(Some(format!("seccomp={path}")))
}

fn user(context: &api::LinuxContainerSecurityContext) -> String {
    let group = context.run_as_group.as_ref().map(|g| format!(":{}", g.value)).unwrap_or_default();
    if let Some(uid) = &context.run_as_user {
        format!("{}{group}", uid.value)
    } else if !context.run_as_username.is_empty() {
        format!("{}{group}", context.run_as_username)
    } else {
        String::new()
    }
}

fn capability_names(names: &[String]) -> Vec<String> {
    names.iter().map(|n| if n.eq_ignore_ascii_case("all") { "ALL".into() } else { n.clone() }).collect()
}

pub(crate) fn request(engine: &Engine, request: api::CreateContainerRequest) -> Result<CreateRequest, Status> {
    let pod = engine.pod(&request.pod_sandbox_id).map_err(crate::status)?;
    let config = request.config.ok_or_else(|| Status::invalid_argument("CreateContainer without a config"))?;
    let metadata = config.metadata.ok_or_else(|| Status::invalid_argument("the container config has no metadata"))?;
    if metadata.name.is_empty() {
        return Err(Status::invalid_argument("the container's metadata has no name"));
    }
    let image = config
        .image
        .map(|i| i.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("the container config names no image"))?;
    let meta = ObjectMeta { name: metadata.name, attempt: metadata.attempt, ..ObjectMeta::default() };
    let linux = config.linux.unwrap_or_default();
    let context = linux.security_context.unwrap_or_default();
    let resources = linux.resources.unwrap_or_default();
    let mut security_opt = Vec::new();
    if let Some(option) = seccomp(&context)? {
        security_opt.push(option);
    }
    if context.no_new_privs {
        security_opt.push("no-new-privileges".into());
    }
    let capabilities = context.capabilities.clone().unwrap_or_default();
    if context.run_as_group.is_some() && context.run_as_user.is_none() && context.run_as_username.is_empty() {
        return Err(Status::invalid_argument("run_as_group is set without run_as_user or run_as_username"));
    }
    let mut group_add = Vec::new();
    for gid in &context.supplemental_groups {
        group_add.push(
            u32::try_from(*gid)
                .map_err(|_| Status::invalid_argument(format!("supplemental group {gid} is not a group id")))?,
        );
    }
    let strict_groups = match api::SupplementalGroupsPolicy::try_from(context.supplemental_groups_policy) {
        Ok(api::SupplementalGroupsPolicy::Merge) => false,
        Ok(api::SupplementalGroupsPolicy::Strict) => true,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown supplemental groups policy {}",
                context.supplemental_groups_policy
            )));
        }
    };
    let env = config.envs.into_iter().map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value))).collect();
    let limits = limits(&resources);
    let log_directory = pod.pod.as_ref().map(|p| p.log_directory.clone()).unwrap_or_default();
    let log_path = if config.log_path.is_empty() || log_directory.is_empty() {
        String::new()
    } else {
        Path::new(&log_directory).join(&config.log_path).display().to_string()
    };
    let settings = Settings {
        entrypoint: (!config.command.is_empty()).then_some(config.command),
        cmd: config.args,
        env,
        working_dir: config.working_dir,
        user: user(&context),
        tty: config.tty,
        open_stdin: config.stdin,
        stdin_once: config.stdin_once,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        read_only: context.readonly_rootfs,
        cap_add: capability_names(&capabilities.add_capabilities),
        cap_drop: capability_names(&capabilities.drop_capabilities),
        privileged: context.privileged,
        security_opt,
        log_path,
        metadata: Some(meta.clone()),
        group_add,
        strict_groups,
        // The kubelet's lists (empty for an unmasked /proc), as containerd
        // takes them.
        masked_paths: Some(context.masked_paths.clone()),
        readonly_paths: Some(context.readonly_paths.clone()),
        oom_score_adj: Some(i32::try_from(resources.oom_score_adj).map_err(|_| {
            Status::invalid_argument(format!("oom_score_adj {} is out of range", resources.oom_score_adj))
        })?),
        devices: config
            .devices
            .iter()
            .map(|d| DeviceMapping {
                host_path: d.host_path.clone(),
                container_path: d.container_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        ..limits
    };
    let mut mounts = Vec::new();
    for mount in config.mounts {
        if mount.container_path.is_empty() || mount.host_path.is_empty() {
            return Err(Status::invalid_argument(format!(
                "mount {:?} -> {:?}: both the host and the container path are needed",
                mount.host_path, mount.container_path
            )));
        }
        if mount.image.is_some() {
            return Err(Status::invalid_argument(format!(
                "mount at {:?}: image volumes are not supported",
                mount.container_path
            )));
        }
        let propagation = propagation(mount.propagation)?;
        if mount.recursive_read_only && (!mount.readonly || propagation != Propagation::Private) {
            return Err(Status::invalid_argument(format!(
                "mount at {:?}: recursive read-only needs readonly and private propagation",
                mount.container_path
            )));
        }
        let id_maps = id_maps(&mount)?;
        mounts.push(MountRequest {
            kind: "bind".into(),
            source: mount.host_path,
            destination: mount.container_path,
            read_only: mount.readonly,
            propagation,
            recursive_read_only: mount.recursive_read_only,
            id_maps,
        });
    }
    Ok(CreateRequest {
        name: engine_name(&meta, &pod),
        image,
        settings,
        mounts,
        network: String::new(),
        publish: Vec::new(),
        pod: pod.id,
    })
}

/// The limits an UpdateContainerResources sets (0 or empty: unchanged).
pub(crate) fn limits(resources: &api::LinuxContainerResources) -> Settings {
    let nano_cpus = if resources.cpu_quota > 0 && resources.cpu_period > 0 {
        resources.cpu_quota.saturating_mul(1_000_000_000) / resources.cpu_period
    } else {
        0
    };
    Settings {
        memory: resources.memory_limit_in_bytes,
        // The kubelet's limit is memory alone: no swap beyond it.
        memory_swap: if resources.memory_swap_limit_in_bytes > 0 {
            resources.memory_swap_limit_in_bytes
        } else {
            resources.memory_limit_in_bytes
        },
        nano_cpus,
        cpu_shares: resources.cpu_shares,
        cpuset_cpus: resources.cpuset_cpus.clone(),
        ..Settings::default()
    }
}

fn state(record: &ContainerRecord) -> i32 {
    match record.state.status() {
        State::Created => api::ContainerState::ContainerCreated as i32,
        State::Running | State::Paused | State::Restarting => api::ContainerState::ContainerRunning as i32,
        State::Exited | State::Dead => api::ContainerState::ContainerExited as i32,
    }
}

fn metadata(record: &ContainerRecord) -> Option<api::ContainerMetadata> {
    let meta = record.settings.metadata.clone().unwrap_or_default();
    Some(api::ContainerMetadata { name: meta.name, attempt: meta.attempt })
}

fn map(values: &BTreeMap<String, String>) -> HashMap<String, String> {
    values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The images' repo digests by name and id, read from the store once per
/// request (a ListContainers covers every container, every second).
pub(crate) struct ImageRefs(HashMap<(String, String), String>);

impl ImageRefs {
    pub(crate) fn of(engine: &Engine) -> Self {
        let images = engine.images.list().unwrap_or_default();
        Self(
            images
                .into_iter()
                .map(|i| {
                    let repository = i.name.rsplit_once(['@', ':']).map_or(i.name.as_str(), |(r, _)| r);
                    let reference = format!("{repository}@{}", i.target);
                    ((i.name, i.config.to_string()), reference)
                })
                .collect(),
        )
    }

    /// The image a container was created from, as ListImages names it: a
    /// repo digest of it where one is known, else its id.
    fn of_container(&self, record: &ContainerRecord) -> String {
        let key = (record.image_name.clone(), record.image_id.clone());
        self.0.get(&key).cloned().unwrap_or_else(|| record.image_id.clone())
    }
}

fn image_spec(record: &ContainerRecord) -> Option<api::ImageSpec> {
    Some(api::ImageSpec {
        image: record.image_name.clone(),
        user_specified_image: record.image.clone(),
        ..Default::default()
    })
}

pub(crate) fn summary(images: &ImageRefs, record: &ContainerRecord) -> api::Container {
    api::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.sandbox.clone(),
        metadata: metadata(record),
        image: image_spec(record),
        image_ref: images.of_container(record),
        state: state(record),
        created_at: rfc3339_nanos(&record.created),
        labels: map(&record.settings.labels),
        annotations: map(&record.settings.annotations),
        image_id: record.image_id.clone(),
    }
}

pub(crate) fn status(engine: &Engine, record: &ContainerRecord, verbose: bool) -> api::ContainerStatusResponse {
    let exited = state(record) == api::ContainerState::ContainerExited as i32;
    let reason = if !exited {
        String::new()
    } else if record.state.oom_killed {
        "OOMKilled".into()
    } else if record.state.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    let mounts = record
        .mounts
        .iter()
        .map(|m| api::Mount {
            container_path: m.destination.clone(),
            host_path: m.source.display().to_string(),
            readonly: m.read_only,
            recursive_read_only: m.recursive_read_only,
            propagation: match m.propagation {
                Propagation::Private => api::MountPropagation::PropagationPrivate as i32,
                Propagation::HostToContainer => api::MountPropagation::PropagationHostToContainer as i32,
                Propagation::Bidirectional => api::MountPropagation::PropagationBidirectional as i32,
            },
            ..Default::default()
        })
        .collect();
    let mut info = HashMap::new();
    if verbose {
        let document = serde_json::json!({
            "pid": record.state.pid,
            "sandboxID": record.sandbox,
            "name": record.name,
            "path": record.path,
            "args": record.args,
            "status": record.state.status().name(),
            "restartCount": record.state.restart_count,
        });
        info.insert("info".to_string(), document.to_string());
    }
    api::ContainerStatusResponse {
        status: Some(api::ContainerStatus {
            id: record.id.clone(),
            metadata: metadata(record),
            state: state(record),
            created_at: rfc3339_nanos(&record.created),
            started_at: record.state.started_at.as_deref().map_or(0, rfc3339_nanos),
            finished_at: if exited { record.state.finished_at.as_deref().map_or(0, rfc3339_nanos) } else { 0 },
            exit_code: if exited { record.state.exit_code } else { 0 },
            image: image_spec(record),
            image_ref: ImageRefs::of(engine).of_container(record),
            reason,
            message: record.state.error.clone(),
            labels: map(&record.settings.labels),
            annotations: map(&record.settings.annotations),
            mounts,
            log_path: record.settings.log_path.clone(),
            image_id: record.image_id.clone(),
            user: engine.container_user(&record.id).map(|(uid, gid, groups)| api::ContainerUser {
                linux: Some(api::LinuxContainerUser {
                    uid: i64::from(uid),
                    gid: i64::from(gid),
                    supplemental_groups: groups.into_iter().map(i64::from).collect(),
                }),
            }),
            ..Default::default()
        }),
        info,
    }
}

/// Whether a container passes a ListContainers filter.
pub(crate) fn matches(record: &ContainerRecord, filter: &api::ContainerFilter) -> bool {
    (filter.id.is_empty() || record.id.starts_with(&filter.id))
        && (filter.pod_sandbox_id.is_empty() || record.sandbox.starts_with(&filter.pod_sandbox_id))
        && filter.state.as_ref().is_none_or(|s| s.state == state(record))
        && filter.label_selector.iter().all(|(k, v)| record.settings.labels.get(k) == Some(v))
}
