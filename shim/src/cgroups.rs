//! The container's cgroup, through `libcgroups`: cgroup v2 where the host
//! has it, the v1 controllers on legacy and hybrid hosts.
//!
//! Tote owns only the cgroups it creates: by default `/tote/<id>` in each
//! hierarchy, so nothing else on the host is touched.
//!
//! A bundle's `linux.cgroupsPath` is a cgroupfs path, as runc takes it
//! without `--systemd-cgroup`: any string is a path, so containerd's
//! `<parent>.slice:cri-containerd:<id>` is just a directory name. An
//! absolute path is from the hierarchy root; a relative one from
//! tote-shim's own cgroup on a cgroup v2 host (as runc), and from the
//! hierarchy root on a v1 or hybrid host, where runc would nest it under
//! its own cgroup of each controller separately, which one path cannot say.
//! No path may climb with `..`.

use std::path::{Path, PathBuf};

use libcgroups::common::{
    AnyCgroupManager, AnyManagerError, CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt, CreateCgroupSetupError,
    DEFAULT_CGROUP_ROOT, FreezerState,
};
use libcgroups::v2::manager::V2ManagerError;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

/// Where container cgroups go when the bundle does not say.
pub const DEFAULT_PARENT: &str = "/tote";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Setup {
        path: PathBuf,
        #[source]
        source: Box<CreateCgroupSetupError>,
    },
    #[error("cgroup {path}: {op}: {source}")]
    Manager {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Box<AnyManagerError>,
    },
    #[error("cgroup path {0:?} contains `..`: a container's cgroup may not climb out of where it is placed")]
    Climbs(PathBuf),
    #[error("cgroup path {0:?} names no cgroup of the container's own (a hierarchy's root, or tote-shim's own)")]
    NotItsOwn(PathBuf),
    #[error(
        "cgroup path {path:?} is relative to tote-shim's own cgroup, which /proc/self/cgroup does not name: {reason}"
    )]
    OwnCgroup { path: PathBuf, reason: String },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// Pure cgroup v2.
    Unified,
    /// The v1 controllers (legacy or hybrid hosts).
    Legacy,
}

/// How tote-shim may manage a container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// As root of the initial user namespace: any cgroup, every controller.
    Host,
    /// Rootless, in a cgroup v2 subtree delegated to the user (the cgroup,
    /// or the one it is made in, is writable): the limits of the controllers
    /// enabled there, and no device rules. An unprivileged process cannot
    /// load the eBPF device filter, and needs none: in a user namespace
    /// mknod is refused and device nodes are only what the user may open.
    Delegated,
}

/// Whether, and how, tote-shim may manage the cgroup at `path` (already
/// resolved): root of the initial user namespace (a rootless toted's
/// namespace root owns no cgroup directory) manages any; anyone else only
/// on cgroup v2, where the cgroup or its parent is writable to them.
fn control_of(path: &Path, hierarchy: Hierarchy) -> Option<Control> {
    if nix::unistd::Uid::effective().is_root() && crate::namespaces::in_initial_user_ns() {
        return Some(Control::Host);
    }
    if hierarchy != Hierarchy::Unified {
        return None;
    }
    let dir = Path::new(DEFAULT_CGROUP_ROOT).join(path.strip_prefix("/").ok()?);
    let writable = |dir: &Path| {
        let w = nix::unistd::AccessFlags::W_OK;
        nix::unistd::access(dir, w).is_ok() && nix::unistd::access(&dir.join("cgroup.procs"), w).is_ok()
    };
    if dir.is_dir() {
        return writable(&dir).then_some(Control::Delegated);
    }
    let parent = dir.parent()?;
    (parent != Path::new(DEFAULT_CGROUP_ROOT) && parent.is_dir() && writable(parent)).then_some(Control::Delegated)
}

/// The cgroup path for a container: the bundle's `linux.cgroupsPath`, or
/// `/tote/<id>`. A relative path stays relative here; [`ContainerCgroup::open`]
/// resolves it, knowing the host's hierarchy.
pub fn container_path(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf, CgroupError> {
    match cgroups_path {
        Some(path) if path.components().any(|c| c == std::path::Component::ParentDir) => {
            Err(CgroupError::Climbs(path.to_path_buf()))
        }
        Some(path) if !path.as_os_str().is_empty() => {
            // `./x` and `x/` name the same cgroup as `x`.
            let clean: PathBuf = path.components().filter(|c| *c != std::path::Component::CurDir).collect();
            // Deleting the container removes its cgroup and kills what is
            // left in it: never a hierarchy's root or the runtime's own.
            if clean.as_os_str().is_empty() || clean == Path::new("/") {
                return Err(CgroupError::NotItsOwn(path.to_path_buf()));
            }
            Ok(clean)
        }
        _ => Ok(Path::new(DEFAULT_PARENT).join(id)),
    }
}

/// Where a relative cgroup path is placed: under tote-shim's own cgroup on
/// cgroup v2 (the `0::` line of /proc/self/cgroup), at the hierarchy root
/// on v1 (see the module's documentation).
fn resolve_relative(path: &Path, hierarchy: Hierarchy, own_cgroups: &str) -> Result<PathBuf, CgroupError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    match hierarchy {
        Hierarchy::Legacy => Ok(Path::new("/").join(path)),
        Hierarchy::Unified => {
            let own = own_cgroups.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| {
                CgroupError::OwnCgroup { path: path.to_path_buf(), reason: "it has no `0::` line".into() }
            })?;
            let own = Path::new(own.trim());
            if !own.is_absolute() || own.components().any(|c| c == std::path::Component::ParentDir) {
                // A cgroup outside our cgroup namespace shows as `/../..`.
                let reason = format!("tote-shim's cgroup {own:?} is outside its cgroup namespace");
                return Err(CgroupError::OwnCgroup { path: path.to_path_buf(), reason });
            }
            Ok(own.join(path))
        }
    }
}

pub fn host_hierarchy() -> Result<Hierarchy, CgroupError> {
    let setup = libcgroups::common::get_cgroup_setup().map_err(|e| CgroupError::Setup {
        path: DEFAULT_CGROUP_ROOT.into(),
        source: Box::new(match e {
            libcgroups::common::GetCgroupSetupError::WrappedIo(io) => CreateCgroupSetupError::WrappedIo(io),
            libcgroups::common::GetCgroupSetupError::NonDefault => CreateCgroupSetupError::NonDefault,
            libcgroups::common::GetCgroupSetupError::FailedToDetect => CreateCgroupSetupError::FailedToDetect,
        }),
    })?;
    Ok(match setup {
        CgroupSetup::Unified => Hierarchy::Unified,
        CgroupSetup::Legacy | CgroupSetup::Hybrid => Hierarchy::Legacy,
    })
}

/// The v1 controllers libcgroups manages (and so makes directories in);
/// named hierarchies such as `name=systemd` are not among them.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// One container's cgroup.
pub struct ContainerCgroup {
    path: PathBuf,
    hierarchy: Hierarchy,
    /// Made on first use: libcgroups' v1 manager finds each controller's
    /// hierarchy by re-reading mountinfo through a fresh procfs handle, ~2
    /// ms of CPU per manager, which reading the stats or the OOM count at a
    /// container's exit has no need for.
    manager: std::cell::OnceCell<AnyCgroupManager>,
    control: Control,
}

impl std::fmt::Debug for ContainerCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerCgroup").field("path", &self.path).finish()
    }
}

impl ContainerCgroup {
    /// A handle on the cgroup at `path` (a relative path is resolved as
    /// the module says); nothing is created until [`Self::join`].
    fn open(path: &Path) -> Result<Self, CgroupError> {
        let hierarchy = host_hierarchy()?;
        if hierarchy == Hierarchy::Legacy {
            // Read once here, before any clone(2), so the container's init
            // (a fork) inherits the answer.
            legacy_mounts();
        }
        let path = if path.is_relative() {
            let file = Path::new("/proc/self/cgroup");
            let own = std::fs::read_to_string(file)
                .map_err(|source| CgroupError::Read { path: file.to_path_buf(), source })?;
            resolve_relative(path, hierarchy, &own)?
        } else {
            path.to_path_buf()
        };
        // open_managed decides the control.
        Ok(Self { path, hierarchy, manager: std::cell::OnceCell::new(), control: Control::Host })
    }

    /// The cgroup at `path` when tote-shim may manage it (see [`Control`]);
    /// `None` when it may not: the container runs in the caller's cgroup.
    pub fn open_managed(path: &Path) -> Result<Option<Self>, CgroupError> {
        let cgroup = Self::open(path)?;
        Ok(control_of(&cgroup.path, cgroup.hierarchy).map(|control| Self { control, ..cgroup }))
    }

    fn manager(&self) -> Result<&AnyCgroupManager, CgroupError> {
        if let Some(manager) = self.manager.get() {
            return Ok(manager);
        }
        let config =
            CgroupConfig { cgroup_path: self.path.clone(), systemd_cgroup: false, container_name: String::new() };
        let manager = libcgroups::common::create_cgroup_manager(config)
            .map_err(|source| CgroupError::Setup { path: self.path.clone(), source: Box::new(source) })?;
        Ok(self.manager.get_or_init(|| manager))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hierarchy(&self) -> Hierarchy {
        self.hierarchy
    }

    fn manager_err(&self, op: &'static str) -> impl FnOnce(AnyManagerError) -> CgroupError {
        let path = self.path.clone();
        move |source| CgroupError::Manager { path, op, source: Box::new(source) }
    }

    /// Moves `pid` into the cgroup, creating it in every hierarchy first.
    pub fn join(&self, pid: Pid) -> Result<(), CgroupError> {
        if self.control == Control::Delegated
            && let Some(dir) = self.unified_dir()
        {
            // Made here so that libcgroups, finding it, only attaches: on
            // creating one it writes every controller into the
            // subtree_control of each ancestor it may write, and those
            // above the delegated one belong to the user's service manager.
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Write { path: dir, source }),
            }
        }
        self.manager()?.add_task(pid).map_err(self.manager_err("add process"))
    }

    /// Writes the bundle's resource limits.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let (resources, io_weight) = self.split_io_weight(resources);
        let opts = ControllerOpt {
            resources: &resources,
            disable_oom_killer: resources.memory().as_ref().and_then(|m| m.disable_oom_killer()).unwrap_or(false),
            oom_score_adj: None,
            freezer_state: None,
        };
        match self.manager()?.apply(&opts) {
            Ok(()) => {}
            // libcgroups 0.7 applies the controllers in turn, then loads
            // the eBPF device filter (refused to an unprivileged process),
            // then the unified map: in a delegated cgroup the filter's
            // failure leaves only the unified map to do.
            Err(AnyManagerError::V2(V2ManagerError::DevicesController(_))) if self.control == Control::Delegated => {
                self.write_unified(&resources)?;
            }
            Err(e) => return Err(self.manager_err("apply resources")(e)),
        }
        match io_weight {
            Some(weight) => self.write_io_weight(weight),
            None => Ok(()),
        }
    }

    /// `linux.resources.unified`: each key a file of the cgroup's.
    fn write_unified(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        for (key, value) in resources.unified().iter().flatten() {
            if key.contains('/') || key.starts_with('.') {
                return Err(CgroupError::Write {
                    path: key.into(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a cgroup file name"),
                });
            }
            let file = self.unified_file(key).unwrap_or_default();
            std::fs::write(&file, value).map_err(|source| CgroupError::Write { path: file, source })?;
        }
        Ok(())
    }

    /// On cgroup v2 the blkio weight is written here rather than by
    /// libcgroups: its v1-to-v2 conversion multiplies in u16, which
    /// overflows for any weight above 16 (a panic in debug builds, a wrong
    /// weight in release ones).
    fn split_io_weight(&self, resources: &LinuxResources) -> (LinuxResources, Option<u16>) {
        let mut resources = resources.clone();
        let weight = match (self.hierarchy, resources.block_io().clone()) {
            (Hierarchy::Unified, Some(mut blkio)) => {
                let weight = blkio.weight().filter(|w| *w > 0);
                blkio.set_weight(None);
                resources.set_block_io(Some(blkio));
                weight
            }
            _ => None,
        };
        (resources, weight)
    }

    /// Like runc: io.bfq.weight takes the blkio weight as it is; io.weight
    /// takes it scaled linearly from [10, 1000] to [1, 10000].
    fn write_io_weight(&self, weight: u16) -> Result<(), CgroupError> {
        let bfq = self.unified_file("io.bfq.weight");
        let (file, value) = match bfq.filter(|f| f.exists()) {
            Some(file) => (file, u32::from(weight)),
            None => (self.unified_file("io.weight").unwrap_or_default(), scale_io_weight(weight)),
        };
        std::fs::write(&file, value.to_string()).map_err(|source| CgroupError::Write { path: file, source })
    }

    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.manager()?.freeze(FreezerState::Frozen).map_err(self.manager_err("freeze"))
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.manager()?.freeze(FreezerState::Thawed).map_err(self.manager_err("thaw"))
    }

    pub fn pids(&self) -> Result<Vec<Pid>, CgroupError> {
        self.manager()?.get_all_pids().map_err(self.manager_err("list processes"))
    }

    /// Kills what is left inside and removes the cgroup from every hierarchy.
    /// On v1 without libcgroups' manager: the hierarchies are known already,
    /// and this runs on the exit path of every container.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        match self.hierarchy {
            Hierarchy::Unified => self.manager()?.remove().map_err(self.manager_err("remove")),
            Hierarchy::Legacy => {
                let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
                let managed = legacy_mounts()
                    .iter()
                    .filter(|m| m.controllers.iter().any(|c| V1_CONTROLLERS.contains(&c.as_str())));
                // Every hierarchy is tried; the first failure is reported.
                let mut outcome = Ok(());
                for mount in managed {
                    let removed = remove_cgroup_dir(&mount.path.join(relative));
                    outcome = outcome.and(removed);
                }
                outcome
            }
        }
    }

    /// Whether the freezer holds the cgroup frozen.
    pub fn is_frozen(&self) -> bool {
        let (file, frozen) = match self.hierarchy {
            Hierarchy::Unified => (self.unified_file("cgroup.freeze"), "1"),
            Hierarchy::Legacy => (self.legacy_file("freezer", "freezer.state"), "FROZEN"),
        };
        file.and_then(|f| std::fs::read_to_string(f).ok()).is_some_and(|s| s.trim() == frozen)
    }

    /// CPU, memory and pids use now, read straight from the controllers'
    /// files (libcgroups' stats read every controller in full).
    pub fn stats(&self) -> crate::monitor::protocol::Stats {
        let read = |file: Option<PathBuf>| file.and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        let number = |text: String| text.trim().parse::<u64>().ok();
        match self.hierarchy {
            Hierarchy::Unified => crate::monitor::protocol::Stats {
                cpu_usage_ns: read(self.unified_file("cpu.stat"))
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok()))
                    .unwrap_or(0)
                    * 1000,
                memory_usage: number(read(self.unified_file("memory.current"))).unwrap_or(0),
                memory_limit: number(read(self.unified_file("memory.max"))),
                pids: number(read(self.unified_file("pids.current"))).unwrap_or(0),
            },
            Hierarchy::Legacy => crate::monitor::protocol::Stats {
                cpu_usage_ns: number(read(self.legacy_file("cpuacct", "cpuacct.usage"))).unwrap_or(0),
                memory_usage: number(read(self.legacy_file("memory", "memory.usage_in_bytes"))).unwrap_or(0),
                // v1 says "no limit" with a huge number.
                memory_limit: number(read(self.legacy_file("memory", "memory.limit_in_bytes")))
                    .filter(|l| *l < (1 << 62)),
                pids: number(read(self.legacy_file("pids", "pids.current"))).unwrap_or(0),
            },
        }
    }

    /// How many times the kernel's OOM killer killed a process of this
    /// cgroup; zero when the memory controller is not there.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let file = match self.hierarchy {
            Hierarchy::Unified => self.unified_file("memory.events"),
            Hierarchy::Legacy => self.legacy_file("memory", "memory.oom_control"),
        };
        let Some(file) = file else { return Ok(0) };
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(parse_oom_kills(&text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(CgroupError::Read { path: file, source }),
        }
    }

    fn unified_dir(&self) -> Option<PathBuf> {
        Some(Path::new(DEFAULT_CGROUP_ROOT).join(self.path.strip_prefix("/").ok()?))
    }

    fn unified_file(&self, name: &str) -> Option<PathBuf> {
        Some(self.unified_dir()?.join(name))
    }

    fn legacy_file(&self, controller: &str, name: &str) -> Option<PathBuf> {
        let mount = legacy_mounts().iter().find(|m| m.controllers.iter().any(|c| c == controller))?;
        Some(mount.path.join(self.path.strip_prefix("/").ok()?).join(name))
    }
}

/// One v1 hierarchy: where it is mounted and which controllers it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMount {
    pub path: PathBuf,
    pub controllers: Vec<String>,
}

/// The host's v1 hierarchies, read from /proc/self/mountinfo once per
/// process. (libcgroups re-reads mountinfo for every controller it looks
/// up; a container start would read it a dozen times.)
pub fn legacy_mounts() -> &'static [LegacyMount] {
    static MOUNTS: std::sync::OnceLock<Vec<LegacyMount>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| parse_legacy_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()))
}

fn parse_legacy_mounts(mountinfo: &str) -> Vec<LegacyMount> {
    let mut mounts: Vec<LegacyMount> = mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if fields.get(sep + 1) != Some(&"cgroup") {
                return None;
            }
            let controllers = fields
                .get(sep + 3)?
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent="))
                .map(str::to_string)
                .collect();
            Some(LegacyMount { path: PathBuf::from(fields.get(4)?.replace("\\040", " ")), controllers })
        })
        .collect();
    mounts.sort_by(|a, b| a.path.cmp(&b.path));
    mounts
}

/// SIGKILLs the processes left in the cgroup directory `dir` and removes it,
/// retrying while the kernel still counts the dying ones. Gone already is
/// fine.
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    let listed = match std::fs::read_to_string(&procs) {
        Ok(listed) => listed,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CgroupError::Read { path: procs, source }),
    };
    for pid in listed.lines().filter_map(|line| line.trim().parse().ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    // A task just reaped can keep the directory busy for a moment: the
    // first retries come quickly (1 ms, doubling: ~1 s in all).
    let mut delay = std::time::Duration::from_millis(1);
    let mut attempts = 1;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) if attempts == 11 => return Err(CgroupError::Remove { path: dir.to_path_buf(), source }),
            Err(_) => std::thread::sleep(delay),
        }
        attempts += 1;
        delay *= 2;
    }
}

/// The blkio weight range [10, 1000] mapped onto io.weight's [1, 10000].
fn scale_io_weight(weight: u16) -> u32 {
    1 + u32::from(weight.saturating_sub(10)) * 9999 / 990
}

/// The `oom_kill N` line of memory.events (v2) or memory.oom_control (v1).
fn parse_oom_kills(text: &str) -> u64 {
    text.lines().filter_map(|line| line.strip_prefix("oom_kill ")).find_map(|n| n.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_default_to_the_tote_parent() {
        assert_eq!(container_path(None, "abc").unwrap(), Path::new("/tote/abc"));
        assert_eq!(container_path(Some(Path::new("")), "abc").unwrap(), Path::new("/tote/abc"));
    }

    #[test]
    fn a_bundle_path_is_kept_as_written() {
        assert_eq!(container_path(Some(Path::new("pods/x")), "abc").unwrap(), Path::new("pods/x"));
        assert_eq!(container_path(Some(Path::new("./pods/x/")), "abc").unwrap(), Path::new("pods/x"));
        assert_eq!(container_path(Some(Path::new("/a/b")), "abc").unwrap(), Path::new("/a/b"));
    }

    #[test]
    fn a_containerd_slice_name_is_one_directory() {
        let path = container_path(Some(Path::new("kubepods-pod1.slice:cri-containerd:abc")), "abc").unwrap();
        assert_eq!(path, Path::new("kubepods-pod1.slice:cri-containerd:abc"));
        assert_eq!(path.components().count(), 1);
    }

    #[test]
    fn the_root_and_our_own_cgroup_are_refused() {
        for path in ["/", ".", "./", "/./"] {
            let err = container_path(Some(Path::new(path)), "abc").unwrap_err();
            assert!(err.to_string().contains("no cgroup of the container's own"), "{err}");
        }
    }

    #[test]
    fn paths_that_climb_are_refused() {
        for path in ["../x", "/a/../../x", "a/.."] {
            let err = container_path(Some(Path::new(path)), "abc").unwrap_err();
            assert!(err.to_string().contains(path) && err.to_string().contains(".."), "{err}");
        }
    }

    #[test]
    fn relative_paths_nest_under_our_own_cgroup_on_v2_only() {
        let own = "0::/system.slice/containerd.service\n";
        let rel = Path::new("k.slice:cri-containerd:abc");
        assert_eq!(
            resolve_relative(rel, Hierarchy::Unified, own).unwrap(),
            Path::new("/system.slice/containerd.service/k.slice:cri-containerd:abc")
        );
        assert_eq!(
            resolve_relative(rel, Hierarchy::Unified, "0::/\n").unwrap(),
            Path::new("/k.slice:cri-containerd:abc")
        );
        let hybrid = "4:memory:/process_api/x\n0::/\n";
        assert_eq!(resolve_relative(rel, Hierarchy::Legacy, hybrid).unwrap(), Path::new("/k.slice:cri-containerd:abc"));
        assert_eq!(resolve_relative(Path::new("/abs"), Hierarchy::Unified, "").unwrap(), Path::new("/abs"));
        let err = resolve_relative(rel, Hierarchy::Unified, "0::/../../elsewhere\n").unwrap_err();
        assert!(err.to_string().contains("outside its cgroup namespace"), "{err}");
        assert!(resolve_relative(rel, Hierarchy::Unified, "1:name=systemd:/\n").is_err());
    }

    #[test]
    fn blkio_weights_scale_onto_io_weight_without_overflow() {
        assert_eq!(scale_io_weight(10), 1);
        assert_eq!(scale_io_weight(500), 4950);
        assert_eq!(scale_io_weight(1000), 10000);
    }

    #[test]
    fn v1_hierarchies_are_read_from_mountinfo() {
        let mountinfo = "25 18 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 25 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd";
        let mounts = parse_legacy_mounts(mountinfo);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].path, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(mounts[1].controllers, ["memory"]);
    }

    #[test]
    fn oom_kills_are_read_from_either_format() {
        assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n"), 1);
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"), 4);
        assert_eq!(parse_oom_kills("low 0\n"), 0);
    }
}
