//! The OCI runtime spec of a container: the image's defaults, the user's
//! settings on top, and docker's defaults where neither says anything
//! (capabilities, seccomp profile, masked paths, standard mounts).

use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, Process, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use super::record::{ContainerRecord, MountPoint, Propagation, SandboxRecord, Settings};
use crate::network::{EtcFiles, NetworkMode};

/// docker's default capabilities.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("unable to find user {user}: no matching entries in passwd file")]
    NoSuchUser { user: String },
    #[error("unable to find group {group}: no matching entries in group file")]
    NoSuchGroup { group: String },
    #[error("build the OCI spec: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> SpecError {
    SpecError::Build(e.to_string())
}

/// The command a container runs: entrypoint + cmd, with the user's
/// replacing the image's as docker does.
pub fn command(settings: &Settings, image: Option<&ImageConfig>) -> Result<Vec<String>, SpecError> {
    let entrypoint = match &settings.entrypoint {
        Some(entrypoint) => entrypoint.clone(),
        None => image.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
    };
    let cmd = if !settings.cmd.is_empty() {
        settings.cmd.clone()
    } else if settings.entrypoint.is_some() {
        // A new entrypoint drops the image's cmd.
        Vec::new()
    } else {
        image.and_then(|c| c.cmd().clone()).unwrap_or_default()
    };
    let command: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if command.is_empty() {
        return Err(SpecError::Invalid("no command specified: the image has none and none was given".into()));
    }
    Ok(command)
}

/// The environment: PATH by default, the image's, HOSTNAME and TERM, then
/// the user's (a later KEY replaces an earlier one).
pub fn environment(settings: &Settings, image: Option<&ImageConfig>, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = vec![DEFAULT_PATH.to_string(), format!("HOSTNAME={hostname}")];
    if settings.tty {
        env.push("TERM=xterm".into());
    }
    let image_env = image.and_then(|c| c.env().clone()).unwrap_or_default();
    for entry in image_env.into_iter().chain(settings.env.iter().cloned()) {
        set_env(&mut env, entry);
    }
    env
}

pub fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split('=').next().unwrap_or_default().to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(entry);
}

/// A user as the process runs: numeric ids, with supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Resolves `user[:group]` (names or ids) against the container's own
/// /etc/passwd and /etc/group, read without following links out of it.
/// Blocking (file system reads): call it off the async workers.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, SpecError> {
    let passwd = read_in_root(rootfs, "/etc/passwd")?;
    let group = read_in_root(rootfs, "/etc/group")?;
    resolve_user_from(user, &passwd, &group)
}

/// /etc/passwd and /etc/group bigger than this are refused.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// A regular file of the container's root as text; empty if it is missing.
///
/// The image and the container's processes own that root, so the file may
/// be anything: a FIFO that never answers (which would hang the thread
/// reading it), a device node of the host's disk, a huge file. It is first
/// opened `O_PATH`, which opens nothing behind it, and read only if fstat
/// says it is a regular file of bounded size; the read then goes through
/// the same inode, so nothing can be swapped in between.
fn read_in_root(rootfs: &Path, path: &str) -> Result<String, SpecError> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let unreadable = |why: String| SpecError::Invalid(format!("cannot read {path} in the container: {why}"));
    let root = tote_shim::syscall::beneath::open_root(rootfs).map_err(|e| unreadable(e.desc().into()))?;
    let fd = match tote_shim::syscall::beneath::open_in_root(root.as_fd(), Path::new(path), nix::fcntl::OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return Ok(String::new()),
        Err(e) => return Err(unreadable(e.desc().into())),
    };
    let stat = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| unreadable(e.desc().into()))?;
    let kind = nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode) & nix::sys::stat::SFlag::S_IFMT;
    if kind != nix::sys::stat::SFlag::S_IFREG {
        return Err(unreadable("it is not a regular file".into()));
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > MAX_ACCOUNT_FILE {
        return Err(unreadable(format!("it is {size} bytes, more than the {MAX_ACCOUNT_FILE} Tote reads")));
    }
    // O_NONBLOCK as well, though a regular file never blocks.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| unreadable(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_ACCOUNT_FILE).read_to_end(&mut bytes).map_err(|e| unreadable(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn resolve_user_from(user: &str, passwd: &str, groups: &str) -> Result<ResolvedUser, SpecError> {
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let entries: Vec<Vec<&str>> =
        passwd.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 4).collect();
    let name = if name.is_empty() { "0" } else { name };
    let (uid, mut gid, user_name) = match name.parse::<u32>() {
        Ok(uid) => {
            let entry = entries.iter().find(|f| f[2] == name);
            (uid, entry.and_then(|f| f[3].parse().ok()).unwrap_or(0), entry.map(|f| f[0].to_string()))
        }
        Err(_) => {
            let entry =
                entries.iter().find(|f| f[0] == name).ok_or_else(|| SpecError::NoSuchUser { user: name.into() })?;
            let uid = entry[2].parse().map_err(|_| SpecError::NoSuchUser { user: name.into() })?;
            (uid, entry[3].parse().unwrap_or(0), Some(name.to_string()))
        }
    };
    let group_entries: Vec<Vec<&str>> =
        groups.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 3).collect();
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == group)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| SpecError::NoSuchGroup { group: group.into() })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let (Some(user_name), None) = (&user_name, group) {
        for entry in &group_entries {
            let members = entry.get(3).copied().unwrap_or_default();
            if members.split(',').any(|m| m == user_name)
                && let Ok(g) = entry[2].parse::<u32>()
                && g != gid
            {
                additional_gids.push(g);
            }
        }
    }
    Ok(ResolvedUser { uid, gid, additional_gids })
}

/// `CAP_NET_ADMIN`, `NET_ADMIN` or `net_admin` (oci-spec parses the bare name).
fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).parse().ok()
}

fn capability(name: &str) -> Result<Capability, SpecError> {
    parse_capability(name).ok_or_else(|| SpecError::Invalid(format!("unknown capability {name:?}")))
}

/// Every capability toted itself may pass on: those of its bounding set
/// that oci-spec knows. A host that withholds some (CAP_SYS_RESOURCE here)
/// gives privileged containers the rest, as containerd and CRI-O do,
/// rather than failing them.
fn all_capabilities() -> Vec<Capability> {
    let ours = caps::read(None, caps::CapSet::Bounding).unwrap_or_else(|_| caps::all());
    caps::all().into_iter().filter(|c| ours.contains(c)).filter_map(|c| parse_capability(&c.to_string())).collect()
}

/// docker's `--cap-add`/`--cap-drop` over its default set (`ALL` allowed).
pub fn capabilities(settings: &Settings) -> Result<Vec<Capability>, SpecError> {
    if settings.privileged {
        return Ok(all_capabilities());
    }
    // Drops apply to the defaults, then adds: `--cap-drop ALL --cap-add X`
    // (and Kubernetes' drop ALL, add X) leaves X, as with docker.
    let mut set: Vec<Capability> = DEFAULT_CAPS.iter().map(|c| capability(c).expect("known capability")).collect();
    for drop in &settings.cap_drop {
        if drop.eq_ignore_ascii_case("all") {
            set.clear();
        } else {
            let cap = capability(drop)?;
            set.retain(|c| *c != cap);
        }
    }
    for add in &settings.cap_add {
        if add.eq_ignore_ascii_case("all") {
            set = all_capabilities();
        } else {
            let cap = capability(add)?;
            if !set.contains(&cap) {
                set.push(cap);
            }
        }
    }
    Ok(set)
}

/// The process of an `exec` into this container: its own process with the
/// exec's command, environment, user and directory.
pub fn exec_process(
    base: &Process,
    cmd: Vec<String>,
    env: &[String],
    user: Option<ResolvedUser>,
    cwd: &str,
    tty: bool,
    privileged: bool,
) -> Result<Process, SpecError> {
    let mut process = base.clone();
    process.set_args(Some(cmd));
    let mut all_env = process.env().clone().unwrap_or_default();
    if tty && !all_env.iter().any(|e| e.starts_with("TERM=")) {
        all_env.push("TERM=xterm".into());
    }
    for entry in env {
        set_env(&mut all_env, entry.clone());
    }
    process.set_env(Some(all_env));
    if let Some(user) = user {
        process.set_user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()
                .map_err(build_err)?,
        );
    }
    if !cwd.is_empty() {
        process.set_cwd(cwd.into());
    }
    process.set_terminal(Some(tty));
    process.set_console_size(None);
    if privileged {
        process.set_capabilities(Some(capability_sets(all_capabilities())?));
    }
    Ok(process)
}

/// The process's capability sets: `caps` bounding, permitted and
/// effective; inheritable and ambient empty (oci-spec's builder would fill
/// them with its defaults). With nothing inheritable or ambient, a process
/// that runs as a non-root user loses every capability at its execve, as
/// in docker since 20.10.14 (CVE-2022-24769).
fn capability_sets(caps: Vec<Capability>) -> Result<oci_spec::runtime::LinuxCapabilities, SpecError> {
    let caps: std::collections::HashSet<Capability> = caps.into_iter().collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .map_err(build_err)
}

/// Everything [`build`] needs besides the records.
pub struct Inputs<'a> {
    pub image: Option<&'a ImageConfig>,
    pub rootfs: &'a Path,
    pub etc: &'a EtcFiles,
    pub cgroup_parent: &'a str,
    pub user: ResolvedUser,
    /// The nofile limit to give (docker: 1048576; capped by what toted may set).
    pub nofile: u64,
    /// A rootless toted's container: host devices are bind-mounted from
    /// their host paths (mknod of a device is refused in a user namespace,
    /// and the runtime's own fallback binds the container path, which the
    /// host need not have), and get no device cgroup rule (no cgroup).
    pub rootless: bool,
}

pub fn build(container: &ContainerRecord, sandbox: &SandboxRecord, inputs: &Inputs<'_>) -> Result<Spec, SpecError> {
    let settings = &container.settings;
    let mut spec = tote_shim::container::default_spec(false);
    let hostname = &sandbox.hostname;
    let cwd = if settings.working_dir.is_empty() {
        inputs.image.and_then(|c| c.working_dir().clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| "/".into())
    } else {
        settings.working_dir.clone()
    };
    if !cwd.starts_with('/') {
        return Err(SpecError::Invalid(format!("the working directory {cwd:?} is not an absolute path")));
    }
    let capabilities = capability_sets(capabilities(settings)?)?;
    let no_new_privileges =
        settings.security_opt.iter().any(|o| o == "no-new-privileges" || o == "no-new-privileges:true");
    let process = ProcessBuilder::default()
        .terminal(settings.tty)
        .args(std::iter::once(container.path.clone()).chain(container.args.iter().cloned()).collect::<Vec<_>>())
        .env(environment(settings, inputs.image, hostname))
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(inputs.user.uid)
                .gid(inputs.user.gid)
                .additional_gids(groups(settings, &inputs.user))
                .build()
                .map_err(build_err)?,
        )
        .capabilities(capabilities)
        .no_new_privileges(no_new_privileges)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(inputs.nofile)
                .soft(inputs.nofile)
                .build()
                .map_err(build_err)?,
        ])
        .build()
        .map_err(build_err)?;
    let mut process = process;
    // Only when asked (the kubelet always asks): docker leaves it alone.
    process.set_oom_score_adj(settings.oom_score_adj);
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default().path(inputs.rootfs).readonly(settings.read_only).build().map_err(build_err)?,
    ));
    // A pod's UTS namespace has its hostname already, and a joined
    // namespace is not the runtime's to change.
    spec.set_hostname((sandbox.network != NetworkMode::Host && !sandbox.is_pod()).then(|| hostname.clone()));
    spec.set_mounts(Some(mounts(spec.mounts().clone().unwrap_or_default(), container, sandbox, inputs)?));
    spec.set_linux(Some(linux(&spec, container, sandbox, inputs)?));
    Ok(spec)
}

/// The process's supplementary groups: the image's groups of its user
/// and the ones asked for (docker's `--group-add`, the CRI's
/// supplemental groups), or, with the strict policy, the asked ones only.
/// The primary group is one of them, as with docker, containerd and
/// CRI-O; the list is sorted, as the kubelet reports it.
pub fn groups(settings: &Settings, user: &ResolvedUser) -> Vec<u32> {
    let mut groups = vec![user.gid];
    if !settings.strict_groups {
        groups.extend(&user.additional_gids);
    }
    groups.extend(&settings.group_add);
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Result<Mount, SpecError> {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if read_only {
        options.push("ro".into());
    }
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(build_err)
}

fn mounts(
    defaults: Vec<Mount>,
    container: &ContainerRecord,
    sandbox: &SandboxRecord,
    inputs: &Inputs<'_>,
) -> Result<Vec<Mount>, SpecError> {
    let settings = &container.settings;
    let mut mounts: Vec<Mount> = defaults
        .into_iter()
        .map(|mut m| {
            // A privileged container gets a writable /sys; others see it read-only.
            if settings.privileged && m.destination() == Path::new("/sys") {
                m.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into()]));
            }
            m
        })
        .filter(|m| {
            // /sys of the host's network namespace is refused by the kernel;
            // host networking keeps /sys as the host's.
            !(sandbox.network == NetworkMode::Host && m.destination() == Path::new("/sys"))
        })
        .collect();
    if sandbox.network == NetworkMode::Host {
        mounts.push(bind(Path::new("/sys"), "/sys", !settings.privileged)?);
    }
    let user_paths: Vec<&str> = container.mounts.iter().map(|m| m.destination.as_str()).collect();
    for (file, destination) in [
        (&inputs.etc.hosts, "/etc/hosts"),
        (&inputs.etc.resolv_conf, "/etc/resolv.conf"),
        (&inputs.etc.hostname, "/etc/hostname"),
    ] {
        if !user_paths.contains(&destination) {
            mounts.push(bind(file, destination, settings.read_only)?);
        }
    }
    for mount in &container.mounts {
        mounts.push(user_mount(mount)?);
    }
    if inputs.rootless {
        for device in &settings.devices {
            mounts.push(device_bind(device)?);
        }
        if settings.privileged {
            for (path, _) in host_devices(Path::new("/dev"), settings, true) {
                let path = path.to_string_lossy().into_owned();
                let device = super::record::DeviceMapping { host_path: path, ..Default::default() };
                mounts.push(device_bind(&device)?);
            }
        }
    }
    Ok(mounts)
}

/// Directories of /dev whose nodes are no host device to give: the
/// container has its own (runc's HostDevices skips the same).
const NOT_HOST_DEVICE_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The host's device nodes a `--privileged` container gets, as docker
/// gives them: every character and block device under `dev` but the ones
/// the container has of its own (its console, its devpts' ptmx, the
/// default nodes) and those a `--device` already puts at the same path.
/// Rootless, only those its user may open for reading or writing: the
/// nodes are bind-mounted (mknod is refused in a user namespace), and one
/// it may not open would be there for nothing, as rootless podman leaves
/// them out.
fn host_devices(dev: &Path, settings: &Settings, rootless: bool) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    use std::os::unix::fs::FileTypeExt;
    let own =
        ["/dev/console", "/dev/ptmx", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];
    let asked: Vec<&str> = settings
        .devices
        .iter()
        .map(|d| if d.container_path.is_empty() { d.host_path.as_str() } else { d.container_path.as_str() })
        .collect();
    let mut found = Vec::new();
    let mut dirs = vec![dev.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        // A directory gone or unreadable meanwhile has nothing to give.
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            // Not followed: a link points at a node listed in its own place.
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let kind = meta.file_type();
            if kind.is_dir() {
                if dir != dev || !NOT_HOST_DEVICE_DIRS.iter().any(|d| entry.file_name() == *d) {
                    dirs.push(path);
                }
                continue;
            }
            if !(kind.is_char_device() || kind.is_block_device()) {
                continue;
            }
            let text = path.to_string_lossy();
            if own.contains(&text.as_ref()) || asked.contains(&text.as_ref()) {
                continue;
            }
            let usable = || {
                [nix::unistd::AccessFlags::R_OK, nix::unistd::AccessFlags::W_OK]
                    .into_iter()
                    .any(|how| nix::unistd::access(&path, how).is_ok())
            };
            if rootless && !usable() {
                continue;
            }
            found.push((path, meta));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// A host device node bound where the container sees it, as rootless
/// podman gives one. The mount's flags cannot narrow what the node allows
/// (a read-only mount still lets a device be written): that is its mode's.
fn device_bind(device: &super::record::DeviceMapping) -> Result<Mount, SpecError> {
    let destination =
        if device.container_path.is_empty() { device.host_path.as_str() } else { device.container_path.as_str() };
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(&device.host_path)
        .options(vec!["bind".to_string(), "rprivate".to_string(), "nosuid".to_string(), "noexec".to_string()])
        .build()
        .map_err(build_err)
}

fn user_mount(mount: &MountPoint) -> Result<Mount, SpecError> {
    let mut built = bind(&mount.source, &mount.destination, mount.read_only)?;
    let mut options: Vec<String> = built
        .options()
        .iter()
        .flatten()
        .map(|o| if o == "rprivate" { mount.propagation.option().to_string() } else { o.clone() })
        .collect();
    if mount.recursive_read_only {
        // Every mount under it read-only too (mount_setattr, Linux 5.12).
        options.push("rro".into());
    }
    built.set_options(Some(options));
    Ok(built)
}

fn linux(
    spec: &Spec,
    container: &ContainerRecord,
    sandbox: &SandboxRecord,
    inputs: &Inputs<'_>,
) -> Result<oci_spec::runtime::Linux, SpecError> {
    let settings = &container.settings;
    let base = spec.linux().clone().unwrap_or_default();
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if let Some(pod) = &sandbox.pod {
        // A pod's containers join what toted pinned for it; the host's
        // namespaces are the ones they are in already.
        use crate::containers::record::NamespaceMode;
        match (pod.pid, &pod.pidns) {
            (NamespaceMode::Host, _) => {}
            (NamespaceMode::Pod, Some(path)) => namespaces.push(namespace(LinuxNamespaceType::Pid, Some(path))),
            _ => namespaces.push(namespace(LinuxNamespaceType::Pid, None)),
        }
        match (pod.ipc, &pod.ipcns) {
            (NamespaceMode::Host, _) => {}
            (_, path) => namespaces.push(namespace(LinuxNamespaceType::Ipc, path.as_deref())),
        }
        if let Some(path) = &pod.utsns {
            namespaces.push(namespace(LinuxNamespaceType::Uts, Some(path)));
        }
        if let Some(path) = &sandbox.netns {
            namespaces.push(namespace(LinuxNamespaceType::Network, Some(path)));
        }
        // Joined first by tote-shim; its maps are the namespace's own.
        if let Some(userns) = &pod.userns {
            namespaces.push(namespace(LinuxNamespaceType::User, Some(&userns.pin)));
        }
    } else {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
        namespaces.push(namespace(LinuxNamespaceType::Ipc, None));
    }
    match (sandbox.network, &sandbox.netns) {
        _ if sandbox.is_pod() => {}
        (NetworkMode::Host, _) => {}
        (_, Some(path)) => {
            namespaces.push(namespace(LinuxNamespaceType::Uts, None));
            namespaces.push(namespace(LinuxNamespaceType::Network, Some(path)));
        }
        (_, None) => {
            namespaces.push(namespace(LinuxNamespaceType::Uts, None));
            namespaces.push(namespace(LinuxNamespaceType::Network, None));
        }
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(format!("{}/{}", inputs.cgroup_parent.trim_end_matches('/'), container.id))
        .resources(resources(settings, &base)?)
        .build()
        .map_err(build_err)?;
    // A mount that propagates from the host needs the root to receive
    // (rslave); one that propagates both ways needs it shared (rshared).
    let propagations = container.mounts.iter().map(|m| m.propagation);
    let root_propagation = propagations.max_by_key(|p| match p {
        Propagation::Private => 0,
        Propagation::HostToContainer => 1,
        Propagation::Bidirectional => 2,
    });
    match root_propagation {
        Some(Propagation::Bidirectional) => {
            linux.set_rootfs_propagation(Some("rshared".into()));
        }
        Some(Propagation::HostToContainer) => {
            linux.set_rootfs_propagation(Some("rslave".into()));
        }
        _ => {}
    }
    if let Some(pod) = sandbox.pod.as_ref().filter(|p| !p.sysctls.is_empty()) {
        linux.set_sysctl(Some(pod.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
    }
    if !settings.devices.is_empty() && !inputs.rootless {
        let (nodes, rules) = devices(&settings.devices)?;
        let mut all = linux.devices().clone().unwrap_or_default();
        all.extend(nodes);
        linux.set_devices(Some(all));
        if let Some(resources) = linux.resources_mut() {
            let mut allowed = resources.devices().clone().unwrap_or_default();
            allowed.extend(rules);
            resources.set_devices(Some(allowed));
        }
    }
    if settings.privileged {
        // docker's --privileged masks nothing and leaves /proc/sys and the
        // rest writable; the base spec's own lists (oci-spec's defaults:
        // /proc/keys, /proc/sys...) would otherwise still apply.
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
        // And every host device, made in the container (a rootless one's
        // are bind-mounted: see `mounts`); its cgroup allows them all.
        if !inputs.rootless {
            let mut all = linux.devices().clone().unwrap_or_default();
            for (path, meta) in host_devices(Path::new("/dev"), settings, false) {
                all.push(host_node(&path, &meta)?);
            }
            linux.set_devices(Some(all));
        }
    } else {
        let defaults = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        linux.set_masked_paths(Some(settings.masked_paths.clone().unwrap_or_else(|| defaults(MASKED_PATHS))));
        linux.set_readonly_paths(Some(settings.readonly_paths.clone().unwrap_or_else(|| defaults(READONLY_PATHS))));
        linux.set_seccomp(seccomp(&settings.security_opt)?);
    }
    Ok(linux)
}

/// The device nodes to make in the container and the cgroup rules that
/// let it use them, from the host's nodes (stat'ed now: type, numbers,
/// mode). Only character and block devices; a missing one or anything
/// else is an error naming it.
fn devices(
    mappings: &[super::record::DeviceMapping],
) -> Result<(Vec<oci_spec::runtime::LinuxDevice>, Vec<oci_spec::runtime::LinuxDeviceCgroup>), SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for mapping in mappings {
        let meta = std::fs::metadata(&mapping.host_path)
            .map_err(|e| SpecError::Invalid(format!("device {}: {e}", mapping.host_path)))?;
        let kind = if meta.file_type().is_char_device() {
            oci_spec::runtime::LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            oci_spec::runtime::LinuxDeviceType::B
        } else {
            return Err(SpecError::Invalid(format!("device {}: not a device node", mapping.host_path)));
        };
        let permissions = if mapping.permissions.is_empty() { "rwm" } else { mapping.permissions.as_str() };
        if !permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(SpecError::Invalid(format!(
                "device {}: permissions {permissions:?}: use r, w and m",
                mapping.host_path
            )));
        }
        let container_path =
            if mapping.container_path.is_empty() { &mapping.host_path } else { &mapping.container_path };
        if !container_path.starts_with('/') {
            return Err(SpecError::Invalid(format!("device path {container_path:?} in the container is not absolute")));
        }
        let rdev = meta.rdev();
        let number = |n: u64| {
            i64::try_from(n).map_err(|_| SpecError::Invalid(format!("device {}: number {n}", mapping.host_path)))
        };
        let (major, minor) = (number(nix::sys::stat::major(rdev))?, number(nix::sys::stat::minor(rdev))?);
        nodes.push(
            oci_spec::runtime::LinuxDeviceBuilder::default()
                .path(container_path)
                .typ(kind)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(build_err)?,
        );
        rules.push(
            oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(kind)
                .major(major)
                .minor(minor)
                .access(permissions)
                .build()
                .map_err(build_err)?,
        );
    }
    Ok((nodes, rules))
}

/// A rootless toted's checks of `--device`s, made before anything is
/// created: each must be a host device node that the user running toted
/// may open as asked (r: read, w: write), since the container gets the
/// node itself, bind-mounted, with no device cgroup in front of it. The
/// returned warnings say where asked-for permissions cannot be enforced.
pub fn check_rootless_devices(
    mappings: &[super::record::DeviceMapping],
    rootless: &crate::privilege::Rootless,
) -> Result<Vec<String>, SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut warnings = Vec::new();
    for mapping in mappings {
        let path = &mapping.host_path;
        let refuse = |why: String| SpecError::Invalid(format!("--device {path}: {why}"));
        let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
        if !(meta.file_type().is_char_device() || meta.file_type().is_block_device()) {
            return Err(refuse("not a device node".into()));
        }
        let permissions = if mapping.permissions.is_empty() { "rwm" } else { mapping.permissions.as_str() };
        let mut wanted = nix::unistd::AccessFlags::empty();
        if permissions.contains('r') {
            wanted |= nix::unistd::AccessFlags::R_OK;
        }
        if permissions.contains('w') {
            wanted |= nix::unistd::AccessFlags::W_OK;
        }
        // Asked as toted, root of the user namespace: what the container's
        // root gets through the bind mount.
        if !wanted.is_empty()
            && let Err(e) = nix::unistd::access(Path::new(path), wanted)
        {
            let how = match (
                wanted.contains(nix::unistd::AccessFlags::R_OK),
                wanted.contains(nix::unistd::AccessFlags::W_OK),
            ) {
                (true, true) => "read and write",
                (true, false) => "read",
                _ => "write",
            };
            return Err(refuse(format!(
                "a rootless toted gives a container the host's node itself (mknod is not allowed in a user \
                 namespace), and its user cannot {how} this one (mode {:o}, owner {}): {}; give the user \
                 access (its group or a udev rule) or run toted as root",
                meta.mode() & 0o7777,
                host_owner(meta.uid(), meta.gid(), rootless),
                e.desc()
            )));
        }
        if permissions != "rwm" && !permissions.is_empty() {
            warnings.push(format!(
                "--device {path}: permissions {permissions:?} are not enforced by a rootless toted (no device \
                 cgroup): the container may do what the node's mode lets its user do"
            ));
        }
    }
    Ok(warnings)
}

/// A rootless toted's check that a container's user and groups are ids
/// its user namespace maps, made before anything is started: the process
/// could not switch to another (setresuid and setgroups fail with EINVAL
/// deep in the runtime). `asked` names where the user came from. With a
/// single id, setgroups(2) is denied in the namespace and the runtime
/// leaves supplementary groups alone (Alpine's root is in several), so
/// only the uid and the primary gid must be mapped.
pub fn check_rootless_ids(
    asked: &str,
    uid: u32,
    gid: u32,
    additional_gids: &[u32],
    rootless: &crate::privilege::Rootless,
) -> Result<(), SpecError> {
    let supplementary: &[u32] = if rootless.single_id { &[] } else { additional_gids };
    let gids: Vec<u32> = std::iter::once(gid).chain(supplementary.iter().copied()).collect();
    let mapped = |id: u32, ranges: &[crate::privilege::IdRange]| {
        ranges.iter().any(|r| id >= r.container && id - r.container < r.size)
    };
    let list = |ranges: &[crate::privilege::IdRange]| {
        ranges.iter().map(|r| format!("{}-{}", r.container, r.container + (r.size - 1))).collect::<Vec<_>>().join(", ")
    };
    let unmapped = if !mapped(uid, &rootless.uids) {
        Some(format!("uid {uid}"))
    } else {
        gids.iter().find(|g| !mapped(**g, &rootless.gids)).map(|g| format!("gid {g}"))
    };
    let Some(id) = unmapped else { return Ok(()) };
    let wider = if rootless.single_id {
        "toted runs with --single-id, which maps only the user's own ids as 0"
    } else {
        "the user's ranges in /etc/subuid and /etc/subgid are what it maps beyond 0"
    };
    Err(SpecError::Invalid(format!(
        "{asked}: {id} is not mapped in a rootless toted's user namespace (uids {}; gids {}): {wider}, and the \
         container cannot switch to an id outside them",
        list(&rootless.uids),
        list(&rootless.gids)
    )))
}

/// A file's owner as the host sees it, from toted's user namespace's view:
/// the kernel shows an id the namespace does not map (the host's root, say)
/// as the overflow id, which is then no host id to name.
fn host_owner(uid: u32, gid: u32, rootless: &crate::privilege::Rootless) -> String {
    let overflow = |file: &str| std::fs::read_to_string(file).ok().and_then(|t| t.trim().parse::<u32>().ok());
    let host = |id: u32, ranges: &[crate::privilege::IdRange], unmapped: Option<u32>| {
        let mapped = ranges.iter().find(|r| id >= r.container && id - r.container < r.size);
        match mapped {
            Some(r) if Some(id) != unmapped => (r.host + (id - r.container)).to_string(),
            _ => "not the user's".to_string(),
        }
    };
    format!(
        "host uid {}, gid {}",
        host(uid, &rootless.uids, overflow("/proc/sys/kernel/overflowuid")),
        host(gid, &rootless.gids, overflow("/proc/sys/kernel/overflowgid"))
    )
}

/// The node to make in the container for a host device, as the host has it.
fn host_node(path: &Path, meta: &std::fs::Metadata) -> Result<oci_spec::runtime::LinuxDevice, SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let kind = if meta.file_type().is_block_device() {
        oci_spec::runtime::LinuxDeviceType::B
    } else {
        oci_spec::runtime::LinuxDeviceType::C
    };
    let number =
        |n: u64| i64::try_from(n).map_err(|_| SpecError::Invalid(format!("device {}: number {n}", path.display())));
    oci_spec::runtime::LinuxDeviceBuilder::default()
        .path(path)
        .typ(kind)
        .major(number(nix::sys::stat::major(meta.rdev()))?)
        .minor(number(nix::sys::stat::minor(meta.rdev()))?)
        .file_mode(meta.mode() & 0o777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .map_err(build_err)
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// The profile a `seccomp=` option asks for: `None` without one,
/// `Some(None)` for unconfined.
fn chosen_seccomp(options: &[String]) -> Result<Option<Option<oci_spec::runtime::LinuxSeccomp>>, SpecError> {
    let Some(value) = options.iter().find_map(|o| o.strip_prefix("seccomp=").or_else(|| o.strip_prefix("seccomp:")))
    else {
        return Ok(None);
    };
    if value == "unconfined" {
        return Ok(Some(None));
    }
    let text = std::fs::read(value).map_err(|e| SpecError::Invalid(format!("--security-opt seccomp={value}: {e}")))?;
    let profile = serde_json::from_slice(&text)
        .map_err(|e| SpecError::Invalid(format!("--security-opt seccomp={value}: not an OCI seccomp profile: {e}")))?;
    Ok(Some(Some(profile)))
}

/// The container's seccomp profile: the chosen one, else docker's default.
fn seccomp(options: &[String]) -> Result<Option<oci_spec::runtime::LinuxSeccomp>, SpecError> {
    Ok(chosen_seccomp(options)?.unwrap_or_else(|| Some(tote_shim::seccomp::profiles::docker_default())))
}

/// Checks `--security-opt` values up front.
pub fn check_security_opts(options: &[String]) -> Result<(), SpecError> {
    for option in options {
        let known = option == "no-new-privileges"
            || option == "no-new-privileges:true"
            || option == "no-new-privileges:false"
            || option.starts_with("seccomp=")
            || option.starts_with("seccomp:");
        if !known {
            return Err(SpecError::Invalid(format!(
                "invalid --security-opt {option:?}: use seccomp=unconfined|PROFILE.json or no-new-privileges"
            )));
        }
    }
    // Only a chosen profile needs checking; docker's default is built once,
    // with the spec.
    chosen_seccomp(options).map(|_| ())
}

fn resources(
    settings: &Settings,
    base: &oci_spec::runtime::Linux,
) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let mut builder = LinuxResourcesBuilder::default();
    if let Some(devices) = base.resources().as_ref().and_then(|r| r.devices().clone()) {
        let devices = if settings.privileged {
            vec![
                oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .access("rwm")
                    .build()
                    .map_err(build_err)?,
            ]
        } else {
            devices
        };
        builder = builder.devices(devices);
    }
    if settings.memory > 0 || settings.memory_swap != 0 {
        let mut memory = LinuxMemoryBuilder::default();
        if settings.memory > 0 {
            memory = memory.limit(settings.memory);
            // docker: no --memory-swap means as much swap as memory.
            let swap = match settings.memory_swap {
                0 => settings.memory * 2,
                other => other,
            };
            memory = memory.swap(swap);
        }
        builder = builder.memory(memory.build().map_err(build_err)?);
    }
    if settings.nano_cpus > 0 || settings.cpu_shares > 0 || !settings.cpuset_cpus.is_empty() {
        let mut cpu = LinuxCpuBuilder::default();
        if settings.nano_cpus > 0 {
            let period: u64 = 100_000;
            cpu = cpu.period(period).quota(settings.nano_cpus * 100_000 / 1_000_000_000);
        }
        if settings.cpu_shares > 0 {
            cpu = cpu.shares(settings.cpu_shares.unsigned_abs());
        }
        if !settings.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(settings.cpuset_cpus.clone());
        }
        builder = builder.cpu(cpu.build().map_err(build_err)?);
    }
    if settings.pids_limit > 0 {
        builder = builder.pids(LinuxPidsBuilder::default().limit(settings.pids_limit).build().map_err(build_err)?);
    }
    builder.build().map_err(build_err)
}

/// The cgroup limits `settings` ask for: each `run` flag with the cgroup
/// v2 controller that enforces it.
pub fn cgroup_limits(settings: &Settings) -> Vec<(&'static str, &'static str)> {
    [
        (settings.memory > 0, "--memory", "memory"),
        (settings.memory_swap != 0, "--memory-swap", "memory"),
        (settings.nano_cpus > 0, "--cpus", "cpu"),
        (settings.cpu_shares > 0, "--cpu-shares", "cpu"),
        (!settings.cpuset_cpus.is_empty(), "--cpuset-cpus", "cpuset"),
        (settings.pids_limit > 0, "--pids-limit", "pids"),
    ]
    .into_iter()
    .filter_map(|(asked, flag, controller)| asked.then_some((flag, controller)))
    .collect()
}

/// The resources of an `update`: only what is set changes.
pub fn update_resources(settings: &Settings) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    resources(settings, &oci_spec::runtime::Linux::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ntote:x:1000:1000::/home/tote:/bin/sh\n";

    #[test]
    fn cgroup_limits_are_named_by_their_flags() {
        assert!(cgroup_limits(&Settings::default()).is_empty());
        let settings = Settings { memory: 1 << 26, pids_limit: 10, ..Default::default() };
        assert_eq!(cgroup_limits(&settings), [("--memory", "memory"), ("--pids-limit", "pids")]);
    }
    const GROUP: &str = "root:x:0:\nwheel:x:10:tote\ntote:x:1000:\n";

    #[test]
    fn users_resolve_by_name_or_id_with_groups() {
        let user = |u: &str| resolve_user_from(u, PASSWD, GROUP);
        assert_eq!(user("").unwrap(), ResolvedUser { uid: 0, gid: 0, additional_gids: vec![] });
        assert_eq!(user("tote").unwrap(), ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![10] });
        assert_eq!(user("1000").unwrap().gid, 1000);
        assert_eq!(user("4242").unwrap(), ResolvedUser { uid: 4242, gid: 0, additional_gids: vec![] });
        assert_eq!(user("tote:wheel").unwrap(), ResolvedUser { uid: 1000, gid: 10, additional_gids: vec![] });
        assert_eq!(user("5:6").unwrap(), ResolvedUser { uid: 5, gid: 6, additional_gids: vec![] });
        assert!(user("nobody").unwrap_err().to_string().contains("nobody"));
        assert!(user("tote:nogroup").unwrap_err().to_string().contains("nogroup"));
    }

    #[test]
    fn commands_combine_entrypoint_and_cmd_like_docker() {
        let image: ImageConfig = serde_json::from_value(serde_json::json!({
            "Entrypoint": ["/init"], "Cmd": ["serve"]
        }))
        .unwrap();
        let mut settings = Settings::default();
        assert_eq!(command(&settings, Some(&image)).unwrap(), ["/init", "serve"]);
        settings.cmd = vec!["x".into()];
        assert_eq!(command(&settings, Some(&image)).unwrap(), ["/init", "x"]);
        settings.cmd.clear();
        settings.entrypoint = Some(vec!["sh".into()]);
        assert_eq!(command(&settings, Some(&image)).unwrap(), ["sh"]);
        settings.entrypoint = Some(vec![]);
        assert!(command(&settings, Some(&image)).unwrap_err().to_string().contains("no command"));
    }

    #[test]
    fn groups_hold_the_primary_one_and_merge_or_not() {
        let user = ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![50000, 10] };
        let mut settings = Settings { group_add: vec![1234, 10], ..Default::default() };
        assert_eq!(groups(&settings, &user), vec![10, 1000, 1234, 50000]);
        settings.strict_groups = true;
        assert_eq!(groups(&settings, &user), vec![10, 1000, 1234]);
        assert_eq!(groups(&Settings::default(), &ResolvedUser { uid: 0, gid: 0, additional_gids: vec![] }), vec![0]);
    }

    #[test]
    fn capabilities_add_and_drop_over_dockers_defaults() {
        let mut settings =
            Settings { cap_add: vec!["net_admin".into()], cap_drop: vec!["CAP_CHOWN".into()], ..Default::default() };
        let caps = capabilities(&settings).unwrap();
        assert!(caps.contains(&Capability::NetAdmin));
        assert!(!caps.contains(&Capability::Chown));
        assert!(caps.contains(&Capability::Kill));
        settings.cap_add = vec!["bogus".into()];
        assert!(capabilities(&settings).unwrap_err().to_string().contains("bogus"));
        settings.cap_add.clear();
        settings.cap_drop = vec!["all".into()];
        assert!(capabilities(&settings).unwrap().is_empty());
        settings.cap_add = vec!["NET_BIND_SERVICE".into()];
        assert_eq!(capabilities(&settings).unwrap(), vec![Capability::NetBindService], "drop ALL, then add");
        settings.privileged = true;
        assert!(capabilities(&settings).unwrap().len() > 38, "privileged gets every capability");
    }

    #[test]
    fn a_rootless_containers_ids_must_be_mapped() {
        use crate::privilege::{IdRange, Rootless};
        let map =
            vec![IdRange { container: 0, host: 1000, size: 1 }, IdRange { container: 1, host: 100_000, size: 65536 }];
        let rootless = Rootless::new(1000, 1000, None, (map.clone(), map), false);
        check_rootless_ids("--user 1000", 1000, 1000, &[65536], &rootless).unwrap();
        let err = check_rootless_ids("--user 70000", 70000, 0, &[], &rootless).unwrap_err().to_string();
        assert!(err.starts_with("--user 70000: uid 70000 is not mapped") && err.contains("uids 0-0, 1-65536"), "{err}");
        let err = check_rootless_ids("--user 0:70000", 0, 70000, &[], &rootless).unwrap_err().to_string();
        assert!(err.contains("gid 70000") && err.contains("/etc/subgid"), "{err}");
        let err = check_rootless_ids("--user 0", 0, 0, &[70000], &rootless).unwrap_err().to_string();
        assert!(err.contains("gid 70000"), "a supplementary group too: {err}");
        let single = Rootless {
            uids: vec![IdRange { container: 0, host: 1000, size: 1 }],
            gids: vec![IdRange { container: 0, host: 1000, size: 1 }],
            single_id: true,
            ..rootless
        };
        let err = check_rootless_ids("--user 1", 1, 0, &[], &single).unwrap_err().to_string();
        assert!(err.contains("--single-id"), "{err}");
        // Supplementary groups are left alone there (setgroups is denied).
        check_rootless_ids("--user 0", 0, 0, &[1, 10], &single).unwrap();
    }

    #[test]
    fn environment_layers_image_then_user() {
        let image: ImageConfig = serde_json::from_value(serde_json::json!({"Env": ["PATH=/img", "A=1"]})).unwrap();
        let settings = Settings { env: vec!["A=2".into(), "B=3".into()], tty: true, ..Default::default() };
        let env = environment(&settings, Some(&image), "h");
        assert_eq!(env, ["HOSTNAME=h", "TERM=xterm", "PATH=/img", "A=2", "B=3"]);
        assert!(check_security_opts(&["apparmor=x".into()]).unwrap_err().to_string().contains("apparmor"));
        assert!(
            check_security_opts(&["seccomp=/no/such.json".into()]).unwrap_err().to_string().contains("/no/such.json")
        );
    }
}
