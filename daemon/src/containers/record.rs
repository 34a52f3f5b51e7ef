//! What toted remembers about containers and their sandboxes, in the
//! metadata store. A sandbox owns what its containers share (the network
//! namespace, its address and published ports, the hostname); a container
//! run from the CLI is the only member of its own sandbox, and a pod (the
//! CRI's) is a sandbox with a lifecycle of its own that containers join.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::network::{Attachment, NetworkMode, PortMapping};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    /// Removal started but did not finish.
    Dead,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Has a monitor serving it.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure(u32),
    Always,
    UnlessStopped,
}

impl RestartPolicy {
    pub fn parse(name: &str, max_retries: u32) -> Result<Self, String> {
        match name {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure(max_retries)),
            other => Err(format!(
                "invalid restart policy {other:?}: use no, always, unless-stopped or on-failure[:max-retries]"
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure(_) => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    /// Whether a container that ended like this is started again.
    pub fn restarts(&self, exit_code: i32, restart_count: u32, manually_stopped: bool) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => !manually_stopped,
            RestartPolicy::OnFailure(max) => !manually_stopped && exit_code != 0 && (*max == 0 || restart_count < *max),
        }
    }
}

/// A mount as the container has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    /// bind or volume.
    pub kind: String,
    /// The volume's name, for a volume.
    pub name: Option<String>,
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
    /// Created for this container alone (removed by `rm -v`).
    pub anonymous: bool,
    /// `rprivate` (the default), `rslave` (host to container) or
    /// `rshared` (both ways).
    #[serde(default)]
    pub propagation: Propagation,
    /// Read-only all the way down, submounts included.
    #[serde(default)]
    pub recursive_read_only: bool,
    /// Seen through the pod's user namespace (an idmapped mount): files the
    /// host owns as the namespace's ids are the container's own ids.
    #[serde(default)]
    pub idmap: bool,
}

/// How mounts under a bind mount propagate (the CRI's MountPropagation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

impl Propagation {
    /// The OCI mount option.
    pub fn option(self) -> &'static str {
        match self {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        }
    }
}

/// What the user asked for at create time, normalised.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub tty: bool,
    pub open_stdin: bool,
    /// The container's stdin closes when the first attach that writes it
    /// ends (the CRI's `stdin_once`, docker's StdinOnce).
    #[serde(default)]
    pub stdin_once: bool,
    pub labels: BTreeMap<String, String>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub security_opt: Vec<String>,
    pub restart: RestartPolicy,
    pub auto_remove: bool,
    pub stop_signal: String,
    pub stop_timeout: u32,
    pub memory: i64,
    pub memory_swap: i64,
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub pids_limit: i64,
    pub cpuset_cpus: String,
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// Where the monitor writes the CRI-format log; empty: toted's own
    /// file in the container's directory (the kubelet names its own).
    #[serde(default)]
    pub log_path: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Who a pod's container is, as its orchestrator names it.
    #[serde(default)]
    pub metadata: Option<ObjectMeta>,
    /// Supplementary groups added to the user's (`--group-add`).
    #[serde(default)]
    pub group_add: Vec<u32>,
    /// Only `group_add`, not the groups the image's /etc/group gives the
    /// user (the CRI's SupplementalGroupsPolicy Strict).
    #[serde(default)]
    pub strict_groups: bool,
    /// Paths masked and made read-only instead of the defaults (the CRI
    /// passes its own lists).
    #[serde(default)]
    pub masked_paths: Option<Vec<String>>,
    #[serde(default)]
    pub readonly_paths: Option<Vec<String>>,
    /// The kernel's OOM preference for the container's processes (the
    /// kubelet's per-QoS value).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Host devices given to the container (`--device`, the CRI's devices).
    #[serde(default)]
    pub devices: Vec<DeviceMapping>,
}

/// A host device node, where the container sees it and what it may do
/// with it (`r`, `w`, `m`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMapping {
    pub host_path: String,
    pub container_path: String,
    pub permissions: String,
}

/// An orchestrator's identity for a pod or a container (the CRI's
/// PodSandboxMetadata and ContainerMetadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub attempt: u32,
}

/// Whether a pod's containers share one of its namespaces, get their own,
/// or use the host's (the CRI's NamespaceMode; TARGET is not offered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    #[default]
    Pod,
    Container,
    Host,
}

/// Name servers, search domains and options for a pod's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What a pod sandbox has beyond a container's own sandbox: an identity,
/// namespaces toted pins for its containers to join, and a lifecycle of its
/// own (ready from run until stop; its network outlives its containers).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodConfig {
    pub metadata: ObjectMeta,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The directory the kubelet keeps the pod's container logs in.
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub sysctls: BTreeMap<String, String>,
    /// The cgroup the pod's containers go under (the kubelet's
    /// `/kubepods/<qos>/pod<uid>`); empty: toted's own parent.
    pub cgroup_parent: String,
    /// The pinned IPC and UTS namespaces (none with the host's).
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// The PID namespace the containers share (PID mode `Pod`), pinned,
    /// and its PID 1 (`tote-shim pod-init`): pid and start time.
    #[serde(default)]
    pub pidns: Option<PathBuf>,
    #[serde(default)]
    pub init: Option<(i32, u64)>,
    /// The pod's own user namespace (user namespace mode `Pod`), if any:
    /// it owns the pod's other namespaces.
    #[serde(default)]
    pub userns: Option<PodUserns>,
    /// Ready from run until stop.
    pub ready: bool,
    /// The runtime handler asked for ("" is the default).
    pub runtime_handler: String,
}

/// One contiguous range of a user namespace's id map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdRange {
    /// The host id of `id` inside, if the range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        id.checked_sub(self.container_id).filter(|off| *off < self.size).map(|off| self.host_id + off)
    }
}

/// A pod's user namespace: pinned by toted, with the id ranges the kubelet
/// gave it (one each, container id 0 included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUserns {
    pub pin: PathBuf,
    pub uids: IdRange,
    pub gids: IdRange,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Option<Status>,
    pub pid: i32,
    pub monitor_pid: i32,
    /// The monitor's start time (clock ticks since boot), so a recycled
    /// pid is not mistaken for it.
    pub monitor_start: u64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: i32,
    pub oom_killed: bool,
    pub error: String,
    pub restart_count: u32,
    /// Stopped by a user: `unless-stopped` and `always` leave it alone.
    pub manually_stopped: bool,
}

impl State {
    pub fn status(&self) -> Status {
        self.status.unwrap_or(Status::Created)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub created: String,
    /// The image as the user named it, its canonical name and its id.
    pub image: String,
    pub image_name: String,
    pub image_id: String,
    pub path: String,
    pub args: Vec<String>,
    pub settings: Settings,
    pub mounts: Vec<MountPoint>,
    pub sandbox: String,
    pub state: State,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub name: String,
    pub created: String,
    pub hostname: String,
    pub network: NetworkMode,
    /// The network namespace toted keeps (bridge and none modes).
    pub netns: Option<PathBuf>,
    pub ports: Vec<PortMapping>,
    /// The bridge address, while the network is set up.
    pub attachment: Option<Attachment>,
    pub containers: Vec<String>,
    /// Set for a pod; a container's own sandbox has none.
    #[serde(default)]
    pub pod: Option<PodConfig>,
}

impl SandboxRecord {
    pub fn is_pod(&self) -> bool {
        self.pod.is_some()
    }
}

/// docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_decide_like_docker() {
        assert_eq!(RestartPolicy::parse("on-failure", 3).unwrap(), RestartPolicy::OnFailure(3));
        assert!(RestartPolicy::parse("sometimes", 0).unwrap_err().contains("sometimes"));
        let on_failure = RestartPolicy::OnFailure(2);
        assert!(on_failure.restarts(1, 0, false));
        assert!(on_failure.restarts(1, 1, false));
        assert!(!on_failure.restarts(1, 2, false));
        assert!(!on_failure.restarts(0, 0, false));
        assert!(RestartPolicy::OnFailure(0).restarts(3, 100, false));
        assert!(RestartPolicy::Always.restarts(0, 9, false));
        assert!(!RestartPolicy::Always.restarts(0, 9, true));
        assert!(!RestartPolicy::No.restarts(1, 0, false));
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
