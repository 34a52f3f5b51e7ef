//! Container requests: conversion to the engine's terms, listing, update
//! and copying files in and out.

use std::io::Write;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tote_api::v1::*;

use super::{Streamed, status};
use crate::containers::record::{DeviceMapping, RestartPolicy, Settings};
use crate::engine::{ContainerFilter, CreateRequest, Engine, MountRequest};

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

fn restart_policy(policy: Option<&tote_api::v1::RestartPolicy>) -> Result<Option<RestartPolicy>, Status> {
    match policy {
        Some(p) if !p.name.is_empty() => {
            RestartPolicy::parse(&p.name, p.maximum_retry_count).map(Some).map_err(invalid)
        }
        _ => Ok(None),
    }
}

fn limits(resources: Option<&Resources>) -> Settings {
    let r = resources.cloned().unwrap_or_default();
    Settings {
        memory: r.memory,
        memory_swap: r.memory_swap,
        nano_cpus: r.nano_cpus,
        cpu_shares: r.cpu_shares,
        pids_limit: r.pids_limit,
        cpuset_cpus: r.cpuset_cpus,
        ..Settings::default()
    }
}

pub fn create_request(request: CreateContainerRequest) -> Result<CreateRequest, Status> {
    let config = request.config.ok_or_else(|| invalid("create: no container config".into()))?;
    if config.image.is_empty() {
        return Err(invalid("create: no image given".into()));
    }
    let resources = limits(config.resources.as_ref());
    if resources.memory < 0 || resources.nano_cpus < 0 || resources.cpu_shares < 0 {
        return Err(invalid("memory, cpus and cpu shares cannot be negative".into()));
    }
    if resources.memory > 0 && resources.memory < 6 << 20 {
        return Err(invalid("Minimum memory limit allowed is 6MB".into()));
    }
    if config.stop_timeout < 0 {
        return Err(invalid(format!("invalid stop timeout {}", config.stop_timeout)));
    }
    let settings = Settings {
        entrypoint: config.entrypoint_set.then(|| config.entrypoint.clone()),
        cmd: config.cmd,
        env: config.env,
        working_dir: config.working_dir,
        user: config.user,
        hostname: config.hostname,
        tty: config.tty,
        open_stdin: config.open_stdin,
        labels: config.labels.into_iter().collect(),
        read_only: config.read_only,
        cap_add: config.cap_add,
        cap_drop: config.cap_drop,
        privileged: config.privileged,
        security_opt: config.security_opt,
        restart: restart_policy(config.restart.as_ref())?.unwrap_or_default(),
        auto_remove: config.auto_remove,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout.unsigned_abs(),
        log_max_size: config.log_max_size,
        log_max_files: config.log_max_files,
        devices: config
            .devices
            .into_iter()
            .map(|d| DeviceMapping {
                host_path: d.host_path,
                container_path: d.container_path,
                permissions: d.permissions,
            })
            .collect(),
        ..resources
    };
    if settings.auto_remove && settings.restart != RestartPolicy::No {
        return Err(invalid("conflicting options: --restart and --rm".into()));
    }
    let mounts = config
        .mounts
        .into_iter()
        .map(|m| MountRequest {
            kind: m.r#type,
            source: m.source,
            destination: m.destination,
            read_only: m.read_only,
            propagation: Default::default(),
            recursive_read_only: false,
            id_maps: None,
        })
        .collect();
    Ok(CreateRequest {
        name: request.name,
        image: config.image,
        settings,
        mounts,
        network: config.network,
        publish: config.publish,
        pod: String::new(),
    })
}

pub fn list(engine: &Engine, request: ListContainersRequest) -> Result<ListContainersReply, Status> {
    let filter = ContainerFilter::parse(request.all, &request.filters).map_err(status)?;
    let containers = engine
        .list(&filter)
        .into_iter()
        .map(|row| {
            let record = row.record;
            let command =
                std::iter::once(record.path.clone()).chain(record.args.iter().cloned()).collect::<Vec<_>>().join(" ");
            ContainerSummary {
                id: record.id,
                name: record.name,
                image: record.image,
                image_id: record.image_id,
                command,
                created: unix_seconds(&record.created),
                state: record.state.status().name().into(),
                status: row.status_text,
                ports: row
                    .ports
                    .iter()
                    .map(|p| PortBinding {
                        host_ip: p.host_ip.map_or_else(|| "0.0.0.0".into(), |ip| ip.to_string()),
                        host_port: u32::from(p.host_port),
                        container_port: u32::from(p.container_port),
                        protocol: p.protocol.to_string(),
                    })
                    .collect(),
                labels: record.settings.labels.into_iter().collect(),
                exit_code: record.state.exit_code,
                network: row.network,
                ip_address: row.ip.unwrap_or_default(),
            }
        })
        .collect();
    Ok(ListContainersReply { containers })
}

/// Unix seconds of an RFC 3339 UTC time as toted writes them (0 if not).
pub fn unix_seconds(time: &str) -> i64 {
    crate::engine::parse_rfc3339(time).and_then(|(secs, _)| i64::try_from(secs).ok()).unwrap_or(0)
}

pub async fn update(engine: &Engine, request: UpdateContainerRequest) -> Result<(), Status> {
    let restart = restart_policy(request.restart.as_ref())?;
    engine.update_container(&request.id, limits(request.resources.as_ref()), restart).await.map_err(status)
}

/// Sends what a blocking writer writes as chunks.
pub struct ChunkWriter {
    sender: mpsc::Sender<Result<Chunk, Status>>,
    buffer: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buffer);
        self.sender
            .blocking_send(Ok(Chunk { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

pub fn chunk_stream(produce: impl FnOnce(&mut ChunkWriter) -> Result<(), String> + Send + 'static) -> Streamed<Chunk> {
    let (sender, receiver) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter { sender: sender.clone(), buffer: Vec::new() };
        let result = produce(&mut writer).and_then(|()| writer.flush().map_err(|e| e.to_string()));
        if let Err(message) = result {
            let _ = sender.blocking_send(Err(Status::internal(message)));
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

pub fn copy_from(engine: &Engine, request: CopyFromRequest) -> Result<Streamed<Chunk>, Status> {
    let source = engine.copy_source(&request.id, &request.path).map_err(status)?;
    Ok(chunk_stream(move |writer| crate::engine::write_archive(source, writer).map_err(|e| e.to_string())))
}

pub async fn copy_to(engine: &Arc<Engine>, mut input: Streaming<CopyToInput>) -> Result<(), Status> {
    let start = match input.next().await {
        Some(Ok(CopyToInput { input: Some(copy_to_input::Input::Start(start)) })) => start,
        Some(Err(e)) => return Err(e),
        _ => return Err(invalid("copy: the first message must name the container and path".into())),
    };
    let destination = engine.copy_destination(&start.id, &start.path).map_err(status)?;
    let (sender, receiver) = mpsc::channel::<bytes::Bytes>(8);
    let unpack = tokio::task::spawn_blocking(move || {
        let reader = crate::images::ChannelReader::new(receiver);
        crate::engine::extract_archive(destination, reader).map_err(|e| {
            let mut message = format!("copy into the container: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            message
        })
    });
    while let Some(message) = input.next().await {
        match message?.input {
            Some(copy_to_input::Input::Data(data)) => {
                if sender.send(bytes::Bytes::from(data)).await.is_err() {
                    break;
                }
            }
            _ => return Err(invalid("copy: only data may follow the first message".into())),
        }
    }
    drop(sender);
    unpack.await.map_err(|e| Status::internal(e.to_string()))?.map_err(Status::invalid_argument)
}
