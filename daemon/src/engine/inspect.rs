//! Describing containers: docker-style inspect documents, `ps` rows and
//! filters, `top` and `stats`.

use serde_json::{Value, json};
use tote_shim::monitor::protocol::{Reply, Request, Stats};

use super::{Engine, EngineError};
use crate::containers::record::{ContainerRecord, SandboxRecord, Status};
use crate::network::PortMapping;

/// One `ps` row.
#[derive(Debug, Clone)]
pub struct Summary {
    pub record: ContainerRecord,
    pub ports: Vec<PortMapping>,
    pub ip: Option<String>,
    pub network: String,
    pub status_text: String,
}

/// docker ps filters: id, name, label, status, exited, ancestor.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub all: bool,
    pub filters: Vec<(String, String)>,
}

impl ContainerFilter {
    pub fn parse(all: bool, filters: &[String]) -> Result<Self, EngineError> {
        let mut parsed = Vec::new();
        for filter in filters {
            let (key, value) = filter
                .split_once('=')
                .ok_or_else(|| EngineError::Invalid(format!("bad filter {filter:?}: use key=value")))?;
            if !["id", "name", "label", "status", "exited", "ancestor"].contains(&key) {
                return Err(EngineError::Invalid(format!(
                    "invalid filter {key:?}: use id, name, label, status, exited or ancestor"
                )));
            }
            parsed.push((key.to_string(), value.to_string()));
        }
        Ok(Self { all, filters: parsed })
    }

    fn matches(&self, record: &ContainerRecord) -> bool {
        let status = record.state.status();
        let has_status_filter = self.filters.iter().any(|(k, _)| k == "status" || k == "exited");
        if !self.all && !has_status_filter && !status.is_live() && status != Status::Restarting {
            return false;
        }
        // Filters of one key are alternatives; different keys must all match.
        let keys: std::collections::BTreeSet<&str> = self.filters.iter().map(|(k, _)| k.as_str()).collect();
        keys.into_iter().all(|key| {
            self.filters.iter().filter(|(k, _)| k == key).any(|(_, value)| match key {
                "id" => record.id.starts_with(value.as_str()),
                "name" => record.name.contains(value.as_str()),
                "label" => match value.split_once('=') {
                    Some((k, v)) => record.settings.labels.get(k).is_some_and(|have| have == v),
                    None => record.settings.labels.contains_key(value.as_str()),
                },
                "status" => status.name() == value,
                "exited" => status == Status::Exited && value.parse() == Ok(record.state.exit_code),
                "ancestor" => {
                    record.image == *value
                        || record.image_name.contains(value.as_str())
                        || record.image_id.contains(value.as_str())
                }
                _ => false,
            })
        })
    }
}

impl Engine {
    pub fn list(&self, filter: &ContainerFilter) -> Vec<Summary> {
        let mut rows: Vec<Summary> = self
            .entries()
            .iter()
            .map(|e| e.snapshot())
            .filter(|r| filter.matches(r))
            .map(|record| {
                let sandbox = self.sandbox(&record.sandbox);
                Summary {
                    ports: sandbox
                        .as_ref()
                        .filter(|_| record.state.status().is_live())
                        .map(|s| s.ports.clone())
                        .unwrap_or_default(),
                    ip: sandbox.as_ref().and_then(|s| s.attachment.as_ref()).map(|a| a.ip.to_string()),
                    network: sandbox.as_ref().map_or_else(String::new, |s| s.network.to_string()),
                    status_text: status_text(&record),
                    record,
                }
            })
            .collect();
        rows.sort_by(|a, b| b.record.created.cmp(&a.record.created));
        rows
    }

    pub fn inspect(&self, reference: &str) -> Result<Value, EngineError> {
        let record = self.entry(reference)?.snapshot();
        let sandbox = self.sandbox(&record.sandbox);
        Ok(inspect_document(&record, sandbox.as_ref(), &self.paths))
    }

    /// The user the container's process runs as, as its spec says: uid,
    /// gid and supplementary groups.
    pub fn container_user(&self, reference: &str) -> Option<(u32, u32, Vec<u32>)> {
        let record = self.entry(reference).ok()?.snapshot();
        let spec = oci_spec::runtime::Spec::load(self.paths.bundle(&record.id).join("config.json")).ok()?;
        let user = spec.process().as_ref()?.user().clone();
        Some((user.uid(), user.gid(), user.additional_gids().clone().unwrap_or_default()))
    }

    /// The container's processes as `top` shows them.
    pub async fn top(&self, reference: &str) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        let record = self.entry(reference)?.snapshot();
        if !record.state.status().is_live() {
            return Err(EngineError::Conflict(format!("Container {} is not running", record.id)));
        }
        let pids = match self.monitor_client(&record.id).call(&Request::Pids).await? {
            Reply::Pids { pids } => pids,
            other => return Err(EngineError::Internal(format!("unexpected reply {other:?}"))),
        };
        let titles = ["UID", "PID", "PPID", "STIME", "TIME", "CMD"].map(String::from).to_vec();
        let rows = pids.iter().filter_map(|pid| process_row(*pid)).collect();
        Ok((titles, rows))
    }

    /// CPU time, memory and pids now, plus network bytes (rx, tx).
    pub async fn stats(&self, reference: &str) -> Result<(ContainerRecord, Stats, u64, u64), EngineError> {
        let record = self.entry(reference)?.snapshot();
        if !record.state.status().is_live() {
            return Err(EngineError::Conflict(format!("Container {} is not running", record.id)));
        }
        let stats = match self.monitor_client(&record.id).call(&Request::Stats).await? {
            Reply::Stats { stats } => stats,
            other => return Err(EngineError::Internal(format!("unexpected reply {other:?}"))),
        };
        let (rx, tx) = net_bytes(record.state.pid);
        Ok((record, stats, rx, tx))
    }
}

/// docker's human durations: "Less than a second", "5 seconds",
/// "About a minute", "3 minutes", "About an hour", "2 hours", "3 days".
pub fn human_duration(seconds: u64) -> String {
    match seconds {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..60 => format!("{seconds} seconds"),
        60..120 => "About a minute".into(),
        120..3600 => format!("{} minutes", seconds / 60),
        3600..7200 => "About an hour".into(),
        7200..172_800 => format!("{} hours", seconds / 3600),
        _ => format!("{} days", seconds / 86_400),
    }
}

fn seconds_since(time: Option<&String>) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    time.and_then(|t| super::io::parse_rfc3339(t)).map_or(0, |(secs, _)| now.saturating_sub(secs))
}

fn status_text(record: &ContainerRecord) -> String {
    let state = &record.state;
    let up = || human_duration(seconds_since(state.started_at.as_ref()));
    match state.status() {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", up()),
        Status::Paused => format!("Up {} (Paused)", up()),
        Status::Restarting => {
            format!(
                "Restarting ({}) {} ago",
                state.exit_code,
                human_duration(seconds_since(state.finished_at.as_ref()))
            )
        }
        Status::Exited => {
            format!("Exited ({}) {} ago", state.exit_code, human_duration(seconds_since(state.finished_at.as_ref())))
        }
        Status::Dead => "Dead".into(),
    }
}

fn ports_document(ports: &[PortMapping]) -> Value {
    let mut map = serde_json::Map::new();
    for port in ports {
        let key = format!("{}/{}", port.container_port, port.protocol);
        let binding = json!({
            "HostIp": port.host_ip.map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string()),
            "HostPort": port.host_port.to_string(),
        });
        match map.get_mut(&key) {
            Some(Value::Array(list)) => list.push(binding),
            _ => {
                map.insert(key, json!([binding]));
            }
        }
    }
    Value::Object(map)
}

fn inspect_document(record: &ContainerRecord, sandbox: Option<&SandboxRecord>, paths: &super::Paths) -> Value {
    let state = &record.state;
    let status = state.status();
    let settings = &record.settings;
    let attachment = sandbox.and_then(|s| s.attachment.as_ref());
    let ports = sandbox.map(|s| s.ports.clone()).unwrap_or_default();
    json!({
        "Id": record.id,
        "Created": record.created,
        "Path": record.path,
        "Args": record.args,
        "State": {
            "Status": status.name(),
            "Running": status.is_live(),
            "Paused": status == Status::Paused,
            "Restarting": status == Status::Restarting,
            "OOMKilled": state.oom_killed,
            "Dead": status == Status::Dead,
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": state.started_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "FinishedAt": state.finished_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "MonitorPid": state.monitor_pid,
        },
        "Image": record.image_id,
        "Name": format!("/{}", record.name),
        "RestartCount": state.restart_count,
        "LogPath": paths.log(&record.id),
        "HostConfig": {
            "Binds": record.mounts.iter().filter(|m| m.kind == "bind").map(|m| format!("{}:{}{}", m.source.display(), m.destination, if m.read_only { ":ro" } else { "" })).collect::<Vec<_>>(),
            "NetworkMode": sandbox.map_or_else(String::new, |s| s.network.to_string()),
            "PortBindings": ports_document(&ports),
            "RestartPolicy": {
                "Name": settings.restart.name(),
                "MaximumRetryCount": match settings.restart { crate::containers::record::RestartPolicy::OnFailure(n) => n, _ => 0 },
            },
            "AutoRemove": settings.auto_remove,
            "Privileged": settings.privileged,
            "ReadonlyRootfs": settings.read_only,
            "CapAdd": settings.cap_add,
            "CapDrop": settings.cap_drop,
            "SecurityOpt": settings.security_opt,
            "Devices": settings.devices.iter().map(|d| serde_json::json!({
                "PathOnHost": d.host_path,
                "PathInContainer": if d.container_path.is_empty() { &d.host_path } else { &d.container_path },
                "CgroupPermissions": if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() },
            })).collect::<Vec<_>>(),
            "Memory": settings.memory,
            "MemorySwap": settings.memory_swap,
            "NanoCpus": settings.nano_cpus,
            "CpuShares": settings.cpu_shares,
            "PidsLimit": settings.pids_limit,
            "CpusetCpus": settings.cpuset_cpus,
            "LogConfig": {"Type": "cri-file", "Config": {"max-size": settings.log_max_size.to_string(), "max-file": settings.log_max_files.to_string()}},
        },
        "Mounts": record.mounts.iter().map(|m| json!({
            "Type": m.kind,
            "Name": m.name,
            "Source": m.source,
            "Destination": m.destination,
            "RW": !m.read_only,
        })).collect::<Vec<_>>(),
        "Config": {
            "Hostname": sandbox.map_or_else(String::new, |s| s.hostname.clone()),
            "User": settings.user,
            "Env": settings.env,
            "Cmd": settings.cmd,
            "Entrypoint": settings.entrypoint,
            "Image": record.image,
            "WorkingDir": settings.working_dir,
            "Labels": settings.labels,
            "Tty": settings.tty,
            "OpenStdin": settings.open_stdin,
            "StopSignal": settings.stop_signal,
            "StopTimeout": settings.stop_timeout,
        },
        "NetworkSettings": {
            "IPAddress": attachment.map_or_else(String::new, |a| a.ip.to_string()),
            "IPPrefixLen": attachment.map_or(0, |a| a.prefix),
            "Gateway": attachment.and_then(|a| a.gateway).map_or_else(String::new, |g| g.to_string()),
            "MacAddress": attachment.and_then(|a| a.mac.clone()).unwrap_or_default(),
            "Ports": if status.is_live() { ports_document(&ports) } else { json!({}) },
            "SandboxKey": sandbox.and_then(|s| s.netns.clone()),
        },
    })
}

fn process_row(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1);
    let ticks = u64::try_from(ticks).unwrap_or(100);
    let cpu: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let seconds = cpu / ticks;
    let start = fields.get(19)?.parse::<u64>().ok()? / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()).unwrap_or("?");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = String::from_utf8_lossy(&cmdline).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    Some(vec![
        uid.to_string(),
        pid.to_string(),
        fields.get(1)?.to_string(),
        format!("{}s after boot", start),
        format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60),
        cmd,
    ])
}

/// Bytes received and sent on the container's interfaces (lo excluded).
fn net_bytes(pid: i32) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else { return (0, 0) };
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let fields: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            Some((*fields.first()?, *fields.get(8)?))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}
