//! Container and pod statistics as the kubelet reads them.

use std::collections::HashMap;
use std::sync::Arc;

use toted::containers::record::ContainerRecord;
use toted::engine::Engine;

use crate::api;

fn now_nanos() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

fn value(v: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value: v })
}

fn attributes(record: &ContainerRecord) -> api::ContainerAttributes {
    let meta = record.settings.metadata.clone().unwrap_or_default();
    api::ContainerAttributes {
        id: record.id.clone(),
        metadata: Some(api::ContainerMetadata { name: meta.name, attempt: meta.attempt }),
        labels: record.settings.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        annotations: record.settings.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A container's statistics: CPU and memory while it runs (from its
/// cgroup, through its monitor), its writable layer's use always.
pub(crate) async fn container(engine: &Arc<Engine>, record: &ContainerRecord) -> api::ContainerStats {
    let timestamp = now_nanos();
    let (cpu, memory) = match engine.stats(&record.id).await {
        Ok((_, stats, _, _)) => (
            Some(api::CpuUsage { timestamp, usage_core_nano_seconds: value(stats.cpu_usage_ns), ..Default::default() }),
            Some(api::MemoryUsage {
                timestamp,
                working_set_bytes: value(stats.memory_usage),
                usage_bytes: value(stats.memory_usage),
                available_bytes: stats
                    .memory_limit
                    .map(|l| api::UInt64Value { value: l.saturating_sub(stats.memory_usage) }),
                ..Default::default()
            }),
        ),
        Err(_) => (None, None),
    };
    let (owned, id) = (engine.clone(), record.id.clone());
    let used = tokio::task::spawn_blocking(move || owned.images.snapshots().writable_size(&id)).await.unwrap_or(0);
    api::ContainerStats {
        attributes: Some(attributes(record)),
        cpu,
        memory,
        writable_layer: Some(api::FilesystemUsage {
            timestamp,
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: engine.images.snapshots().root().display().to_string(),
            }),
            used_bytes: value(used),
            inodes_used: None,
        }),
        ..Default::default()
    }
}

/// A pod's statistics: the sums of its running containers', and their
/// own.
pub(crate) async fn pod(engine: &Arc<Engine>, pod: &toted::containers::record::SandboxRecord) -> api::PodSandboxStats {
    let timestamp = now_nanos();
    let mut containers = Vec::new();
    for id in &pod.containers {
        if let Ok(record) = engine.container(id) {
            containers.push(container(engine, &record).await);
        }
    }
    let sum = |f: &dyn Fn(&api::ContainerStats) -> Option<u64>| containers.iter().filter_map(f).sum::<u64>();
    let cpu = sum(&|c| c.cpu.as_ref().and_then(|u| u.usage_core_nano_seconds.as_ref()).map(|v| v.value));
    let memory = sum(&|c| c.memory.as_ref().and_then(|u| u.working_set_bytes.as_ref()).map(|v| v.value));
    let config = pod.pod.clone().unwrap_or_default();
    let map = |m: &std::collections::BTreeMap<String, String>| -> HashMap<String, String> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    api::PodSandboxStats {
        attributes: Some(api::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(api::PodSandboxMetadata {
                name: config.metadata.name.clone(),
                uid: config.metadata.uid.clone(),
                namespace: config.metadata.namespace.clone(),
                attempt: config.metadata.attempt,
            }),
            labels: map(&config.labels),
            annotations: map(&config.annotations),
        }),
        linux: Some(api::LinuxPodSandboxStats {
            cpu: Some(api::CpuUsage { timestamp, usage_core_nano_seconds: value(cpu), ..Default::default() }),
            memory: Some(api::MemoryUsage { timestamp, working_set_bytes: value(memory), ..Default::default() }),
            containers,
            ..Default::default()
        }),
        ..Default::default()
    }
}
