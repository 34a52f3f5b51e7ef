//! toted's core: containers and their sandboxes, from create to remove,
//! over the image store, the monitors, the network and the volumes. The
//! API services (Tote's own, later CRI) are thin layers on top.
//!
//! Every container has an [`Entry`]: its record (persisted on each change),
//! a watch channel that fires on every change (wait, stop), and an
//! operation lock so that start/stop/remove of one container never
//! interleave. Exits are handled without the operation lock, since a stop
//! holds it while it waits for the exit.

mod copy;
mod exits;
pub mod images;
mod inspect;
mod io;
mod lifecycle;
mod pods;
pub mod readiness;
mod restore;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::containers::record::{ContainerRecord, SandboxRecord};
use crate::events::Events;
use crate::images::{ImageError, ImageStore};
use crate::metadata::{Metadata, MetadataError, Table};
use crate::monitor::{MonitorError, Stream};
use crate::network::usernet::{self, Helper};
use crate::network::{Cni, NetworkError, PortReservation};
use crate::volumes::{VolumeError, Volumes};

pub use copy::{ContainerPath, extract_archive, write_archive};
pub use inspect::{ContainerFilter, Summary};
pub use io::{Attached, ExecOutput, ExecRequest, LogOptions, normalise_time, parse_rfc3339};
pub use lifecycle::{CreateRequest, MountRequest};
pub use pods::{PodFilter, PodRequest, UsernsRequest};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The image is not in the store; `run` pulls it and tries again.
    #[error("No such image: {0}")]
    MissingImage(String),
    /// The container's program could not be run (126) or found (127).
    #[error("{message}")]
    Exec { message: String, exit_code: i32 },
    /// A deadline the caller set passed (the CRI's ExecSync timeout).
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl From<MetadataError> for EngineError {
    fn from(e: MetadataError) -> Self {
        EngineError::Internal(e.to_string())
    }
}

impl From<ImageError> for EngineError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NotFound(name) => EngineError::NotFound(format!("No such image: {name}")),
            // No registry or mirror has it: as much "not found" as a
            // missing local image, for the CRI's NotFound.
            ImageError::Registry(e @ crate::registry::RegistryError::NotFound { .. }) => {
                EngineError::NotFound(e.to_string())
            }
            ImageError::Reference(e) => EngineError::Invalid(e.to_string()),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

impl From<VolumeError> for EngineError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::NotFound(_) => EngineError::NotFound(e.to_string()),
            VolumeError::BadName(_) => EngineError::Invalid(e.to_string()),
            VolumeError::InUse { .. } => EngineError::Conflict(e.to_string()),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

impl From<NetworkError> for EngineError {
    fn from(e: NetworkError) -> Self {
        match e {
            NetworkError::BadPortSpec { .. }
            | NetworkError::UnknownMode(_)
            | NetworkError::BadHostname(_)
            | NetworkError::BadDns(_)
            | NetworkError::BadCniArg { .. }
            | NetworkError::PrivilegedPort { .. } => EngineError::Invalid(e.to_string()),
            // The node's network is not ready (the CRI's FailedPrecondition).
            NetworkError::PortAllocated { .. }
            | NetworkError::NoNetworkConfig(_)
            | NetworkError::HelperMissing { .. } => EngineError::Conflict(e.to_string()),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

impl From<MonitorError> for EngineError {
    fn from(e: MonitorError) -> Self {
        match e {
            MonitorError::Create { message, exit_code: Some(code) }
            | MonitorError::Refused { message, exit_code: Some(code) } => {
                EngineError::Exec { message, exit_code: code }
            }
            MonitorError::Refused { message, .. } => EngineError::Conflict(message),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

impl From<crate::containers::spec::SpecError> for EngineError {
    fn from(e: crate::containers::spec::SpecError) -> Self {
        match e {
            crate::containers::spec::SpecError::Build(_) => EngineError::Internal(e.to_string()),
            other => EngineError::Invalid(other.to_string()),
        }
    }
}

impl From<crate::snapshots::SnapshotError> for EngineError {
    fn from(e: crate::snapshots::SnapshotError) -> Self {
        EngineError::Internal(e.to_string())
    }
}

pub fn internal(context: &str) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Internal(format!("{context}: {e}"))
}

/// Where everything of a container lives.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("bundle")
    }

    pub fn rootfs(&self, id: &str) -> PathBuf {
        self.bundle(id).join("rootfs")
    }

    pub fn log(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("container.log")
    }

    /// Short, so the socket path stays under the 108 bytes unix allows.
    pub fn monitor_dir(&self, id: &str) -> PathBuf {
        self.state.join("m").join(&id[..12])
    }

    pub fn netns(&self, sandbox: &str) -> PathBuf {
        self.state.join("netns").join(&sandbox[..12])
    }

    /// The pid file of a rootless sandbox's network helper; its log and
    /// API socket are beside it (see `network::usernet`).
    pub fn usernet(&self, sandbox: &str) -> PathBuf {
        self.state.join("usernet").join(&sandbox[..12])
    }

    /// A pod's hosts, hostname and resolv.conf.
    pub fn sandbox_dir(&self, pod: &str) -> PathBuf {
        self.root.join("sandboxes").join(pod)
    }

    /// Where a pod's pinned IPC or UTS namespace (`kind`) is.
    pub fn pod_namespace(&self, pod: &str, kind: &str) -> PathBuf {
        self.state.join("podns").join(format!("{}-{kind}", &pod[..12]))
    }

    /// tote-shim's own state root.
    pub fn runtime_root(&self) -> PathBuf {
        self.state.join("runtime")
    }
}

/// A stream waiting for a created container to start.
pub(crate) struct PendingAttach {
    pub stdin: bool,
    pub reply: oneshot::Sender<Result<Stream, EngineError>>,
}

pub(crate) struct Entry {
    pub record: Mutex<ContainerRecord>,
    pub changed: watch::Sender<u64>,
    pub op: tokio::sync::Mutex<()>,
    pub pending_attach: Mutex<Vec<PendingAttach>>,
    /// Set when a removal begins: no restart policy may start the
    /// container again after that, whatever the exit that follows.
    pub removing: AtomicBool,
    /// True once the record is deleted from the store. Held across every
    /// write of the record, so that a write racing the removal (an exit
    /// handled meanwhile) cannot bring the record back.
    persist: Mutex<bool>,
}

impl Entry {
    fn new(record: ContainerRecord) -> Arc<Self> {
        Arc::new(Self {
            record: Mutex::new(record),
            changed: watch::channel(0).0,
            op: tokio::sync::Mutex::new(()),
            pending_attach: Mutex::new(Vec::new()),
            removing: AtomicBool::new(false),
            persist: Mutex::new(false),
        })
    }

    pub fn is_removing(&self) -> bool {
        self.removing.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> ContainerRecord {
        self.record.lock().expect("record lock").clone()
    }
}

pub struct Engine {
    pub config: Config,
    pub paths: Paths,
    pub images: Arc<ImageStore>,
    pub volumes: Volumes,
    pub events: Events,
    meta: Arc<Metadata>,
    cni: Cni,
    shim: PathBuf,
    /// A rootless toted's network helper and its binary (see
    /// `network::usernet`), when it is installed; `None` as root.
    usernet: Option<(Helper, PathBuf)>,
    /// The nofile limit containers get: docker's 1048576, or what toted
    /// itself may give when it lacks CAP_SYS_RESOURCE.
    nofile: u64,
    containers: Mutex<BTreeMap<String, Arc<Entry>>>,
    sandboxes: Mutex<BTreeMap<String, SandboxRecord>>,
    /// The host ports of each attached sandbox, held while it is.
    ports: Mutex<BTreeMap<String, PortReservation>>,
    network_locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pods being run, by their metadata: a second RunPodSandbox of the
    /// same pod meanwhile is a conflict, not a second pod.
    pods_starting: Mutex<std::collections::BTreeSet<crate::containers::record::ObjectMeta>>,
}

impl Engine {
    /// Opens the stores under the configured directories and loads the
    /// records; [`Engine::restore`] then reconnects to running containers.
    pub fn open(config: Config, shim: PathBuf) -> Result<Arc<Self>, EngineError> {
        let paths = Paths { root: config.root.clone(), state: config.state_dir.clone() };
        for dir in [
            paths.root.join("containers"),
            paths.root.join("sandboxes"),
            paths.state.join("m"),
            paths.state.join("netns"),
            paths.state.join("podns"),
            paths.state.join("usernet"),
            paths.runtime_root(),
        ] {
            std::fs::create_dir_all(&dir).map_err(internal(&dir.display().to_string()))?;
        }
        let images = Arc::new(
            ImageStore::open_with(
                &paths.root,
                config.registry_config(),
                config.ingest_policy(),
                crate::images::Unpacking::of(&config.privilege),
            )?
            .with_overlay(config.privilege.overlay()),
        );
        restrict_access(&paths)?;
        let meta = images.shared_metadata();
        let volumes = Volumes::new(&paths.root, meta.clone());
        // Rootless, the plugins attach containers to a bridge in a network
        // namespace of toted's own (see `network::userbridge`).
        let cni = if config.privilege.is_rootless() {
            let namespace = paths.state.join(crate::network::userbridge::NAMESPACE);
            Cni::with_exec(config.cni_config(), Box::new(crate::network::userbridge::InNamespace::new(namespace)))?
        } else {
            Cni::new(config.cni_config())?
        };
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_err(|e| EngineError::Internal(format!("getrlimit: {e}")))?;
        let nofile = hard.min(1_048_576);
        let helper = config.network.rootless_driver;
        let usernet =
            if config.privilege.is_rootless() { usernet::find(helper).map(|path| (helper, path)) } else { None };
        if config.privilege.is_rootless() && usernet.is_none() {
            tracing::warn!(
                "{helper} not found on PATH: containers can only use --network none or host (install Debian's {})",
                helper.package()
            );
        }
        let engine = Arc::new(Self {
            config,
            paths,
            images,
            volumes,
            events: Events::default(),
            meta,
            cni,
            shim,
            usernet,
            nofile,
            containers: Mutex::new(BTreeMap::new()),
            sandboxes: Mutex::new(BTreeMap::new()),
            ports: Mutex::new(BTreeMap::new()),
            network_locks: Mutex::new(BTreeMap::new()),
            pods_starting: Mutex::new(std::collections::BTreeSet::new()),
        });
        for sandbox in engine.meta.records::<SandboxRecord>(Table::Sandboxes)? {
            engine.sandboxes.lock().expect("sandboxes lock").insert(sandbox.id.clone(), sandbox);
        }
        for record in engine.meta.records::<ContainerRecord>(Table::Containers)? {
            engine.containers.lock().expect("containers lock").insert(record.id.clone(), Entry::new(record));
        }
        Ok(engine)
    }

    pub fn nofile(&self) -> u64 {
        self.nofile
    }

    /// What connects containers of the default network: the CNI bridge as
    /// root, a user-mode helper rootless (with where it is, or that it is
    /// missing).
    pub fn network_driver(&self) -> String {
        let helper = self.config.network.rootless_driver;
        match (&self.usernet, self.config.privilege.is_rootless()) {
            (_, false) => format!("bridge ({}, CNI)", self.config.network.bridge),
            (Some((helper, path)), true) => format!("{helper} ({})", path.display()),
            (None, true) => format!("{helper} (not installed: install Debian's {})", helper.package()),
        }
    }

    /// Whether the sandbox's network is a user-mode helper of its own: a
    /// rootless toted's default network, for containers and for pods on
    /// Tote's own network (no CNI configuration chosen: a configured one
    /// is run as it is, in the bridge's namespace). A pod attached already
    /// is known by its helper's pid file, whatever the configuration
    /// directory holds now.
    pub(crate) fn uses_usernet(&self, sandbox: &SandboxRecord) -> bool {
        if !self.config.privilege.is_rootless() || sandbox.network != crate::network::NetworkMode::Bridge {
            return false;
        }
        if !sandbox.is_pod() {
            return true;
        }
        if sandbox.attachment.is_some() {
            return self.usernet_files(&sandbox.id).pid.exists();
        }
        matches!(self.pod_network(), Ok(None))
    }

    /// The files of a sandbox's user-mode helper.
    pub(crate) fn usernet_files(&self, sandbox: &str) -> usernet::Files {
        usernet::Files::at(&self.paths.usernet(sandbox))
    }

    /// The container a user means: a full id, a name (with or without the
    /// leading `/`), or a unique id prefix.
    pub(crate) fn entry(&self, reference: &str) -> Result<Arc<Entry>, EngineError> {
        let containers = self.containers.lock().expect("containers lock");
        if let Some(entry) = containers.get(reference) {
            return Ok(entry.clone());
        }
        let name = reference.strip_prefix('/').unwrap_or(reference);
        if let Some(entry) = containers.values().find(|e| e.record.lock().expect("record lock").name == name) {
            return Ok(entry.clone());
        }
        let matches: Vec<&Arc<Entry>> = if reference.is_empty() {
            Vec::new()
        } else {
            containers
                .range(reference.to_string()..)
                .take_while(|(id, _)| id.starts_with(reference))
                .map(|(_, e)| e)
                .collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NotFound(format!("No such container: {reference}"))),
            _ => Err(EngineError::Conflict(format!(
                "multiple containers match {reference:?}: use more of the id or the name"
            ))),
        }
    }

    /// The record of the container a reference names (see `entry`).
    pub fn container(&self, reference: &str) -> Result<ContainerRecord, EngineError> {
        Ok(self.entry(reference)?.snapshot())
    }

    /// Every container's record.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.entries().iter().map(|e| e.snapshot()).collect()
    }

    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.containers.lock().expect("containers lock").values().cloned().collect()
    }

    pub(crate) fn sandbox(&self, id: &str) -> Option<SandboxRecord> {
        self.sandboxes.lock().expect("sandboxes lock").get(id).cloned()
    }

    pub(crate) fn save_sandbox(&self, sandbox: &SandboxRecord) -> Result<(), EngineError> {
        // Not synced: what matters after a crash (the CNI cache, the netns
        // file) is on disk by other means, and the next durable write
        // carries this one.
        self.meta.put_record_with(false, Table::Sandboxes, &sandbox.id, sandbox)?;
        self.sandboxes.lock().expect("sandboxes lock").insert(sandbox.id.clone(), sandbox.clone());
        Ok(())
    }

    fn forget_sandbox(&self, id: &str) -> Result<(), EngineError> {
        self.meta.remove_record_with(false, Table::Sandboxes, id)?;
        self.sandboxes.lock().expect("sandboxes lock").remove(id);
        self.network_locks.lock().expect("network locks").remove(id);
        Ok(())
    }

    /// Changes a container's record, writes it to disk, and wakes whoever
    /// watches it.
    pub(crate) fn update(
        &self,
        entry: &Entry,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord, EngineError> {
        let (record, durable) = {
            let mut record = entry.record.lock().expect("record lock");
            let monitor = record.state.monitor_pid;
            change(&mut record);
            // Only a new monitor must survive a crash at once: live restore
            // finds containers by it. Everything else a restarted toted can
            // learn again (exits from the monitors' exit records), so it is
            // written without an fsync of its own.
            (record.clone(), record.state.monitor_pid != monitor)
        };
        {
            let removed = entry.persist.lock().expect("persist lock");
            if !*removed {
                self.meta.put_record_with(durable, Table::Containers, &record.id, &record)?;
            }
        }
        entry.changed.send_modify(|n| *n += 1);
        Ok(record)
    }

    /// Deletes the container's record for good: later writes of it are
    /// dropped (see [`Entry::persist`]).
    fn delete_record(&self, entry: &Entry, id: &str) -> Result<(), EngineError> {
        let mut removed = entry.persist.lock().expect("persist lock");
        // Not synced: a removal lost to a crash leaves a record whose files
        // are gone, which the next start forgets (`forget_removed`).
        self.meta.remove_record_with(false, Table::Containers, id)?;
        *removed = true;
        Ok(())
    }

    /// The lock that orders the set-up and the tear-down of a sandbox's
    /// network: a start waits for the tear-down of the run before it, so
    /// it never finds a namespace or a CNI attachment about to vanish.
    pub(crate) fn network_lock(&self, sandbox: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.network_locks.lock().expect("network locks").entry(sandbox.to_string()).or_default().clone()
    }

    /// Containers (names) using the volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.entries()
            .iter()
            .map(|e| e.snapshot())
            .filter(|r| r.mounts.iter().any(|m| m.name.as_deref() == Some(name)))
            .map(|r| r.name)
            .collect()
    }

    /// Containers (names) created from the image with this id.
    pub fn image_users(&self, image_id: &str) -> Vec<String> {
        self.entries().iter().map(|e| e.snapshot()).filter(|r| r.image_id == image_id).map(|r| r.name).collect()
    }

    fn runtime(&self) -> tote_shim::container::Runtime {
        tote_shim::container::Runtime::new(self.paths.runtime_root())
    }

    fn monitor_client(&self, id: &str) -> crate::monitor::MonitorClient {
        crate::monitor::MonitorClient::new(id, &self.paths.monitor_dir(id))
    }
}

/// Keeps other local users out of what toted stores (CVE-2021-41091): the
/// containers' root filesystems (with their setuid binaries), their specs
/// (with their environment), logs and records, the monitors' sockets.
/// The root is 0710, as docker's: only root, and root's group, may pass.
/// Every directory in it, and the state dir's, is root's alone. The state
/// dir itself stays 0711 so that the API socket in it can be reached by
/// whoever its own mode and group admit. Applied at every start, so an
/// older store is tightened too; containers see their files through
/// mounts made by root, never through these paths.
fn restrict_access(paths: &Paths) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &Path, mode: u32| match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(internal(&path.display().to_string())),
    };
    chmod(&paths.root, 0o710)?;
    chmod(&paths.state, 0o711)?;
    // Only what toted itself makes: the directories may be shared with
    // other software (a state dir of /run, say).
    for dir in ["containers", "sandboxes", "content", "snapshots", "volumes", "tmp"] {
        chmod(&paths.root.join(dir), 0o700)?;
    }
    chmod(&paths.root.join("metadata.db"), 0o600)?;
    for dir in ["m", "netns", "podns", "usernet", "runtime", "cni"] {
        chmod(&paths.state.join(dir), 0o700)?;
    }
    Ok(())
}

/// Writes a file only root may read (a container's spec holds its
/// environment, secrets included).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(internal(&path.display().to_string()))
}

/// A new container id: 64 hex digits from the kernel's random pool.
pub fn new_id() -> Result<String, EngineError> {
    let mut bytes = [0u8; 32];
    let mut file = std::fs::File::open("/dev/urandom").map_err(internal("/dev/urandom"))?;
    std::io::Read::read_exact(&mut file, &mut bytes).map_err(internal("/dev/urandom"))?;
    Ok(hex::encode(bytes))
}

/// A docker-like random name: adjective_surname.
pub fn random_name(id: &str) -> String {
    const ADJECTIVES: &[&str] = &[
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty", "proud",
        "quiet", "swift", "tender", "witty",
    ];
    const NAMES: &[&str] = &[
        "babbage", "curie", "dijkstra", "euler", "fermat", "gauss", "hopper", "knuth", "lamport", "lovelace",
        "noether", "pascal", "ritchie", "shannon", "thompson", "turing",
    ];
    let byte = |i: usize| usize::from(u8::from_str_radix(&id[i * 2..i * 2 + 2], 16).unwrap_or(0));
    format!("{}_{}_{}", ADJECTIVES[byte(0) % 16], NAMES[byte(1) % 16], &id[4..8])
}

/// Whether something is mounted exactly at `path`.
/// What is mounted at or under `dir`, deepest first, as
/// /proc/self/mountinfo tells (a bind mount of a directory of the same
/// file system is invisible to a device comparison).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mountinfo(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(code) =
                std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), path.parent().map(std::fs::metadata)) {
        (Ok(here), Some(Ok(parent))) => here.dev() != parent.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape_mountinfo(r"/plain/\04"), r"/plain/\04");
        assert_eq!(unescape_mountinfo("/ünï\\040x"), "/ünï x");
    }

    #[test]
    fn mounts_under_a_directory_are_found_and_siblings_are_not() {
        let under = mounts_under(Path::new("/proc"));
        assert!(under.contains(&PathBuf::from("/proc")), "{under:?}");
        assert!(mounts_under(Path::new("/pro")).is_empty());
    }
}
