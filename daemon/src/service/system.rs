//! Version, info, disk usage, events and volumes.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tote_api::v1::*;

use super::{Streamed, status};
use crate::containers::record::Status as ContainerStatus;
use crate::delegation::Delegation;
use crate::engine::{ContainerFilter, Engine, normalise_time};
use crate::privilege::{IdRange, Privilege, Rootless};
use crate::usage::Usage;

fn kernel() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn version() -> VersionReply {
    VersionReply {
        version: env!("CARGO_PKG_VERSION").into(),
        git_commit: option_env!("TOTE_GIT_COMMIT").unwrap_or("unknown").into(),
        api_version: tote_api::API_VERSION.into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        kernel: kernel(),
    }
}

pub fn info(engine: &Engine) -> InfoReply {
    let rows = engine.list(&crate::engine::ContainerFilter { all: true, filters: Vec::new() });
    let count = |wanted: &[ContainerStatus]| {
        u32::try_from(rows.iter().filter(|r| wanted.contains(&r.record.state.status())).count()).unwrap_or(u32::MAX)
    };
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").to_string()))
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    let cgroup = match tote_shim::cgroups::host_hierarchy() {
        Ok(tote_shim::cgroups::Hierarchy::Unified) => "2",
        _ => "1",
    };
    let mut warnings = Vec::new();
    if engine.nofile() < 1_048_576 {
        warnings.push(format!(
            "containers get a nofile limit of {} (toted's own hard limit; raising it needs CAP_SYS_RESOURCE)",
            engine.nofile()
        ));
    }
    if let Privilege::Rootless(Rootless { cgroups: Delegation::Unavailable(why), .. }) = &engine.config.privilege {
        warnings.push(format!("containers get no cgroup, so no limits: {why}"));
    }
    if engine.config.privilege.is_rootless() {
        let helper = engine.config.network.rootless_driver;
        if crate::network::usernet::find(helper).is_none() {
            warnings.push(format!(
                "{helper} is not installed: containers can only use --network none or host (install Debian's {})",
                helper.package()
            ));
        }
        // Not mapped in toted's user namespace, the device's owner grants
        // nothing: only its mode for others counts.
        if nix::unistd::access("/dev/net/tun", nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).is_err()
        {
            warnings.push(format!(
                "/dev/net/tun is not usable by this user: {helper} cannot connect containers (as root: chmod \
                 0666 /dev/net/tun, as udev's default rule has it)"
            ));
        }
    }
    InfoReply {
        version: env!("CARGO_PKG_VERSION").into(),
        containers: u32::try_from(rows.len()).unwrap_or(u32::MAX),
        running: count(&[ContainerStatus::Running, ContainerStatus::Restarting]),
        paused: count(&[ContainerStatus::Paused]),
        stopped: count(&[ContainerStatus::Created, ContainerStatus::Exited, ContainerStatus::Dead]),
        images: u32::try_from(engine.images.list().map(|l| l.len()).unwrap_or(0)).unwrap_or(u32::MAX),
        root_dir: engine.paths.root.display().to_string(),
        state_dir: engine.paths.state.display().to_string(),
        cgroup_version: cgroup.into(),
        // Rootless containers without a delegated cgroup get none: no
        // parent to show.
        cgroup_parent: match &engine.config.privilege {
            Privilege::Rootless(Rootless { cgroups: Delegation::Unavailable(_), .. }) => String::new(),
            _ => engine.config.cgroup_parent.clone(),
        },
        storage_driver: engine.images.snapshots().driver().name().into(),
        kernel: kernel(),
        os: std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_else(|| std::env::consts::OS.into()),
        cpus: u32::try_from(std::thread::available_parallelism().map_or(1, |n| n.get())).unwrap_or(1),
        memory,
        rootless: engine.config.privilege.is_rootless(),
        logging_driver: "cri-file".into(),
        warnings,
        uid_map: id_mappings(&engine.config.privilege, |r| &r.uids),
        gid_map: id_mappings(&engine.config.privilege, |r| &r.gids),
        network_driver: engine.network_driver(),
    }
}

fn id_mappings(privilege: &Privilege, which: impl Fn(&Rootless) -> &Vec<IdRange>) -> Vec<IdMapping> {
    let Privilege::Rootless(rootless) = privilege else { return Vec::new() };
    which(rootless).iter().map(|r| IdMapping { container_id: r.container, host_id: r.host, size: r.size }).collect()
}

fn summary(usage: Usage) -> Option<UsageSummary> {
    Some(UsageSummary { total: usage.total, active: usage.active, size: usage.size, reclaimable: usage.reclaimable })
}

/// `system df`. Sizes come from walking container layers and volumes:
/// blocking work, off the async threads.
pub async fn disk_usage(engine: Arc<Engine>) -> Result<DiskUsageReply, Status> {
    tokio::task::spawn_blocking(move || {
        let containers = engine.list(&ContainerFilter { all: true, filters: Vec::new() });
        let in_use = containers.iter().filter_map(|row| row.record.image_id.parse().ok()).collect();
        let images = engine.images.space_usage(&in_use).map_err(|e| status(e.into()))?;
        let mut layers = Usage::default();
        for row in &containers {
            // docker's active containers: running, paused or restarting.
            let active = matches!(
                row.record.state.status(),
                ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Restarting
            );
            layers.add(engine.images.snapshots().writable_size(&row.record.id), active);
        }
        let volumes =
            engine.volumes.disk_usage(|name| !engine.volume_users(name).is_empty()).map_err(|e| status(e.into()))?;
        Ok(DiskUsageReply {
            images: summary(images.images),
            containers: summary(layers),
            volumes: summary(volumes),
            // Tote builds no images.
            build_cache: summary(Usage::default()),
            partial_downloads: summary(images.partial_downloads),
        })
    })
    .await
    .map_err(|e| Status::internal(format!("system df: {e}")))?
}

fn event_message(event: &crate::events::Event) -> Event {
    let seconds = event.time_nanos / 1_000_000_000;
    let nanos = u32::try_from(event.time_nanos % 1_000_000_000).unwrap_or(0);
    Event {
        time: tote_shim::state::rfc3339(u64::try_from(seconds).unwrap_or(0), nanos),
        r#type: event.kind.into(),
        action: event.action.clone(),
        id: event.id.clone(),
        attributes: event.attributes.clone().into_iter().collect(),
    }
}

fn matches(event: &crate::events::Event, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(key, value)| match key.as_str() {
        "type" => event.kind == value,
        "event" => event.action == *value || event.action.starts_with(&format!("{value}:")),
        "container" => {
            event.kind == "container"
                && (event.id.starts_with(value.as_str()) || event.attributes.get("name") == Some(value))
        }
        "image" => {
            event.attributes.get("image") == Some(value) || (event.kind == "image" && event.id.contains(value.as_str()))
        }
        _ => false,
    })
}

pub fn events(engine: &Arc<Engine>, request: EventsRequest) -> Result<Streamed<Event>, Status> {
    let mut filters = Vec::new();
    for filter in &request.filters {
        let (key, value) = filter
            .split_once('=')
            .ok_or_else(|| Status::invalid_argument(format!("bad filter {filter:?}: use key=value")))?;
        if !["type", "event", "container", "image"].contains(&key) {
            return Err(Status::invalid_argument(format!(
                "invalid filter {key:?}: use type, event, container or image"
            )));
        }
        filters.push((key.to_string(), value.to_string()));
    }
    let since = if request.since.is_empty() {
        None
    } else {
        let text = normalise_time(&request.since, std::time::SystemTime::now()).map_err(status)?;
        Some(u128::try_from(super::containers::unix_seconds(&text)).unwrap_or(0) * 1_000_000_000)
    };
    let (past, mut live) = engine.events.subscribe(since);
    let (out, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        for event in past.iter().filter(|e| matches(e, &filters)) {
            if out.send(Ok(event_message(event))).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(event) if matches(&event, &filters) => {
                    if out.send(Ok(event_message(&event))).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

fn volume_message(engine: &Engine, record: crate::volumes::VolumeRecord) -> Volume {
    Volume {
        mountpoint: engine.volumes.mountpoint(&record.name).display().to_string(),
        used_by: engine.volume_users(&record.name),
        name: record.name,
        driver: "local".into(),
        created_at: record.created_at,
        labels: record.labels.into_iter().collect(),
    }
}

pub fn create_volume(engine: &Engine, request: CreateVolumeRequest) -> Result<Volume, Status> {
    let name = if request.name.is_empty() { crate::engine::new_id().map_err(status)? } else { request.name };
    let record =
        engine.volumes.create(&name, request.labels.into_iter().collect(), false).map_err(|e| status(e.into()))?;
    engine.events.publish("volume", "create", &name, &[]);
    Ok(volume_message(engine, record))
}

pub fn list_volumes(engine: &Engine) -> Result<ListVolumesReply, Status> {
    let records = engine.volumes.list().map_err(|e| status(e.into()))?;
    Ok(ListVolumesReply { volumes: records.into_iter().map(|r| volume_message(engine, r)).collect() })
}

pub fn inspect_volume(engine: &Engine, name: &str) -> Result<Volume, Status> {
    let record = engine.volumes.get(name).map_err(|e| status(e.into()))?;
    Ok(volume_message(engine, record))
}

pub fn remove_volume(engine: &Engine, request: RemoveVolumeRequest) -> Result<(), Status> {
    let users = engine.volume_users(&request.name);
    // docker refuses a volume in use even with --force; so does Tote.
    engine.volumes.remove(&request.name, &users).map_err(|e| status(e.into()))?;
    engine.events.publish("volume", "destroy", &request.name, &[]);
    Ok(())
}
