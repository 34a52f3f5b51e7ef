//! The container's filesystem view: root propagation, the bundle's mounts,
//! /dev, pivot_root, then masked and read-only paths.
//!
//! [`prepare`] runs in the container's new mount namespace before the root
//! changes; [`enter`] switches root; [`finish`] runs inside the new root.
//! Every mount target is resolved inside the rootfs without following
//! symlinks out of it (see [`Syscall::mount_point`]).

pub mod devices;
pub mod options;

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use oci_spec::runtime::{Mount, Spec};

use crate::cgroups::Hierarchy;
use crate::syscall::{NodeKind, Syscall, SyscallError};
use options::{MountOptions, OptionError};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {dest} (type {typ}): {source}")]
    Mount {
        dest: PathBuf,
        typ: String,
        #[source]
        source: SyscallError,
    },
    #[error("mount {dest}: {source}")]
    Options {
        dest: PathBuf,
        #[source]
        source: OptionError,
    },
    #[error("bind mount {dest}: source {source_path}: {source}")]
    BindSource {
        dest: PathBuf,
        source_path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create device {path}: {source}")]
    Device {
        path: PathBuf,
        #[source]
        source: SyscallError,
    },
    #[error("enter the rootfs {rootfs}: {source}{hint}")]
    Pivot {
        rootfs: PathBuf,
        hint: &'static str,
        #[source]
        source: SyscallError,
    },
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: SyscallError,
    },
}

fn step(step: &'static str) -> impl FnOnce(SyscallError) -> RootfsError {
    move |source| RootfsError::Step { step, source }
}

/// What rootfs setup needs beyond the spec.
#[derive(Debug, Clone)]
pub struct RootfsConfig<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// Relative bind-mount sources are resolved against the bundle.
    pub bundle: &'a Path,
    /// The container's cgroup, for the `cgroup` mount.
    pub cgroup: Option<(&'a Path, Hierarchy)>,
    pub in_user_ns: bool,
    pub new_cgroup_ns: bool,
    pub no_pivot: bool,
}

impl RootfsConfig<'_> {
    fn mounts(&self) -> &[Mount] {
        self.spec.mounts().as_deref().unwrap_or_default()
    }

    fn dev_is_bind_mounted(&self) -> bool {
        self.mounts().iter().any(|m| {
            m.destination() == Path::new("/dev")
                && (m.typ().as_deref() == Some("bind")
                    || m.options().iter().flatten().any(|o| o == "bind" || o == "rbind"))
        })
    }

    fn propagation(&self) -> Option<MsFlags> {
        let linux = self.spec.linux().as_ref()?;
        match linux.rootfs_propagation().as_deref()? {
            "shared" | "rshared" => Some(MsFlags::MS_SHARED),
            "slave" | "rslave" => Some(MsFlags::MS_SLAVE),
            "private" | "rprivate" => Some(MsFlags::MS_PRIVATE),
            "unbindable" | "runbindable" => Some(MsFlags::MS_UNBINDABLE),
            _ => None,
        }
    }
}

/// Everything before the root changes: propagation, the rootfs bind mount,
/// the bundle's mounts, device nodes and /dev symlinks.
pub fn prepare(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    // Nothing mounted from here on may propagate back to the host, except
    // when the bundle asks for a shared root (Kubernetes' Bidirectional
    // mounts, CSI drivers): then, as with runc, every mount stays in the
    // host's peer group, so a bind mount of a shared host mount is that
    // mount's peer and what the container mounts under it reaches the host.
    // Only the mount holding the rootfs leaves its group, so the rootfs bind
    // below, and all mounted inside it, is the container's alone (and
    // pivot_root, which refuses a shared parent, works). The shared root
    // itself is re-applied by `finish`, after pivot_root.
    let initial = match cfg.propagation() {
        Some(p) if p == MsFlags::MS_PRIVATE || p == MsFlags::MS_SHARED => p,
        _ => MsFlags::MS_SLAVE,
    };
    sys.mount(None, Path::new("/"), None, initial | MsFlags::MS_REC, None).map_err(step("set the propagation of /"))?;
    if initial == MsFlags::MS_SHARED {
        let parent = sys.mount_containing(cfg.rootfs).map_err(step("find the mount holding the rootfs"))?;
        sys.mount(None, &parent, None, MsFlags::MS_PRIVATE, None)
            .map_err(step("make the mount holding the rootfs private"))?;
    }
    // pivot_root needs the new root to be a mount point.
    sys.mount(Some(cfg.rootfs), cfg.rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
        .map_err(step("bind the rootfs onto itself"))?;
    for mount in cfg.mounts() {
        mount_entry(sys, cfg, mount)?;
    }
    if !cfg.dev_is_bind_mounted() {
        let devices = cfg.spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default();
        devices::create_devices(sys, cfg.rootfs, &devices, cfg.in_user_ns)
            .map_err(|(path, source)| RootfsError::Device { path, source })?;
        devices::create_symlinks(sys, cfg.rootfs).map_err(step("create the /dev symlinks"))?;
    }
    Ok(())
}

/// Makes the rootfs the root of the container's mount namespace.
pub fn enter(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    let result = if cfg.no_pivot { sys.move_root(cfg.rootfs) } else { sys.pivot_root(cfg.rootfs) };
    result.map_err(|source| {
        let hint = match source.errno() {
            Some(Errno::EINVAL) if !cfg.no_pivot => {
                " (pivot_root cannot leave an initramfs or ramfs root; rerun with --no-pivot)"
            }
            _ => "",
        };
        RootfsError::Pivot { rootfs: cfg.rootfs.to_path_buf(), hint, source }
    })
}

/// Everything inside the new root: masked and read-only paths, a read-only
/// root, and the requested root propagation.
pub fn finish(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    let root = Path::new("/");
    let linux = cfg.spec.linux().as_ref();
    for path in linux.and_then(|l| l.masked_paths().as_ref()).into_iter().flatten() {
        mask_path(sys, Path::new(path)).map_err(step("mask a path"))?;
    }
    for path in linux.and_then(|l| l.readonly_paths().as_ref()).into_iter().flatten() {
        readonly_path(sys, Path::new(path)).map_err(step("make a path read-only"))?;
    }
    if cfg.spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        remount_bind(sys, root, MsFlags::MS_RDONLY).map_err(step("make the root read-only"))?;
    }
    if let Some(propagation) = cfg.propagation().filter(|p| *p != MsFlags::MS_PRIVATE) {
        sys.mount(None, root, None, propagation | MsFlags::MS_REC, None).map_err(step("set the rootfs propagation"))?;
    }
    Ok(())
}

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a
/// directory. Paths the container does not have are skipped.
fn mask_path(sys: &dyn Syscall, path: &Path) -> Result<(), SyscallError> {
    let root = Path::new("/");
    match sys.node_kind(root, path)? {
        None => Ok(()),
        Some(NodeKind::Dir) => {
            let target = sys.mount_point(root, path, NodeKind::Dir)?;
            sys.mount(Some(Path::new("tmpfs")), &target.path, Some("tmpfs"), MsFlags::MS_RDONLY, None)
        }
        Some(NodeKind::File) => {
            let target = sys.mount_point(root, path, NodeKind::File)?;
            sys.mount(Some(Path::new("/dev/null")), &target.path, None, MsFlags::MS_BIND, None)
        }
    }
}

fn readonly_path(sys: &dyn Syscall, path: &Path) -> Result<(), SyscallError> {
    let root = Path::new("/");
    let Some(kind) = sys.node_kind(root, path)? else { return Ok(()) };
    let target = sys.mount_point(root, path, kind)?;
    sys.mount(Some(&target.path), &target.path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    // Re-resolve: the first handle names the node under the new mount.
    let mounted = sys.mount_point(root, path, kind)?;
    remount_bind(sys, &mounted.path, MsFlags::MS_RDONLY | MsFlags::MS_REC)
}

/// Changes the flags of a bind mount. In a user namespace the kernel locks
/// the flags a mount was created with (nosuid, nodev, noexec, atime), so on
/// EPERM the remount is retried keeping the mount's current flags.
fn remount_bind(sys: &dyn Syscall, target: &Path, flags: MsFlags) -> Result<(), SyscallError> {
    let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    match sys.mount(None, target, None, remount, None) {
        Err(err) if err.errno() == Some(Errno::EPERM) => {
            let locked = sys.mount_flags(target)?;
            sys.mount(None, target, None, remount | locked, None)
        }
        other => other,
    }
}

fn mount_entry(sys: &dyn Syscall, cfg: &RootfsConfig, mount: &Mount) -> Result<(), RootfsError> {
    let dest = Path::new("/").join(mount.destination());
    let typ = mount.typ().clone().unwrap_or_default();
    let options = MountOptions::parse(mount.options().as_deref().unwrap_or_default())
        .map_err(|source| RootfsError::Options { dest: dest.clone(), source })?;
    let mount_err = |source| RootfsError::Mount { dest: dest.clone(), typ: typ.clone(), source };
    let kind = if typ == "bind" || options.is_bind() {
        bind_mount(sys, cfg, mount, &dest, &options)?
    } else if typ == "cgroup" || typ == "cgroup2" {
        cgroup_mount(sys, cfg, &dest, &options).map_err(mount_err)?;
        NodeKind::Dir
    } else {
        plain_mount(sys, cfg, mount, &dest, &typ, &options).map_err(mount_err)?;
        NodeKind::Dir
    };
    if options.propagation.is_empty() && options.attr_set == 0 && options.attr_clear == 0 {
        return Ok(());
    }
    let target = sys.mount_point(cfg.rootfs, &dest, kind).map_err(mount_err)?;
    for propagation in &options.propagation {
        sys.mount(None, &target.path, None, *propagation, None).map_err(mount_err)?;
    }
    if options.attr_set != 0 || options.attr_clear != 0 {
        sys.mount_setattr(&target.path, true, options.attr_set, options.attr_clear).map_err(mount_err)?;
    }
    Ok(())
}

/// Mounts a host path; returns what kind of node it sits on.
fn bind_mount(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    mount: &Mount,
    dest: &Path,
    options: &MountOptions,
) -> Result<NodeKind, RootfsError> {
    let source = cfg.bundle.join(mount.source().clone().unwrap_or_default());
    let meta = std::fs::metadata(&source).map_err(|err| RootfsError::BindSource {
        dest: dest.to_path_buf(),
        source_path: source.clone(),
        source: err,
    })?;
    let kind = if meta.is_dir() { NodeKind::Dir } else { NodeKind::File };
    let mount_err = |source| RootfsError::Mount { dest: dest.to_path_buf(), typ: "bind".into(), source };
    let target = sys.mount_point(cfg.rootfs, dest, kind).map_err(mount_err)?;
    let recursive = options.flags & MsFlags::MS_REC;
    sys.mount(Some(&source), &target.path, None, MsFlags::MS_BIND | recursive, None).map_err(mount_err)?;
    let flags = options.remount_flags();
    if !flags.is_empty() {
        let mounted = sys.mount_point(cfg.rootfs, dest, kind).map_err(mount_err)?;
        remount_bind(sys, &mounted.path, flags).map_err(mount_err)?;
    }
    Ok(kind)
}

/// proc, sysfs, tmpfs, devpts, mqueue and any other filesystem type.
fn plain_mount(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    mount: &Mount,
    dest: &Path,
    typ: &str,
    options: &MountOptions,
) -> Result<(), SyscallError> {
    let target = sys.mount_point(cfg.rootfs, dest, NodeKind::Dir)?;
    let source = mount.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let data = options.data();
    if options.copy_up && typ == "tmpfs" {
        return tmpfs_copy_up(sys, cfg, &target, &source, dest, options);
    }
    let result = sys.mount(Some(&source), &target.path, Some(typ), options.flags, data.as_deref());
    match (result, typ) {
        (Ok(()), _) => {}
        // A devpts gid= that is not mapped in the user namespace is EINVAL:
        // the kernel's default group is the right fallback.
        (Err(err), "devpts") if err.errno() == Some(Errno::EINVAL) && data.is_some() => {
            let without_gid: Vec<_> = options.data.iter().filter(|o| !o.starts_with("gid=")).cloned().collect();
            let data = without_gid.join(",");
            sys.mount(Some(&source), &target.path, Some(typ), options.flags, Some(&data))?;
        }
        // A user namespace without its own network namespace may not mount
        // sysfs, nor mqueue without its own ipc one, nor proc without its
        // own pid one (a rootless container with the host's): bind the
        // host's instead, as podman does.
        (Err(err), "sysfs" | "mqueue" | "proc") if cfg.in_user_ns && err.errno() == Some(Errno::EPERM) => {
            let host = match typ {
                "sysfs" => "/sys",
                "proc" => "/proc",
                _ => "/dev/mqueue",
            };
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            match sys.mount(Some(Path::new(host)), &target.path, None, bind, None) {
                Ok(()) => {}
                // A host with no /dev/mqueue mounted (no systemd) has none
                // to give: message queues work without it (mq_open is a
                // system call), only listing them does not.
                Err(err) if typ == "mqueue" && err.errno() == Some(Errno::ENOENT) => return Ok(()),
                Err(err) => return Err(err),
            }
            let flags = options.remount_flags();
            if !flags.is_empty() {
                let mounted = sys.mount_point(cfg.rootfs, dest, NodeKind::Dir)?;
                remount_bind(sys, &mounted.path, flags)?;
            }
        }
        (Err(err), _) => return Err(err),
    }
    Ok(())
}

/// `tmpcopyup`: the tmpfs starts with a copy of what the rootfs holds at
/// `dest`. `lower` still names that directory once the tmpfs covers it;
/// the copy is made into the writable tmpfs before a requested `ro` is
/// applied. (Any filesystem type but tmpfs ignores the option, as crun does.)
fn tmpfs_copy_up(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    lower: &crate::syscall::MountPoint,
    source: &Path,
    dest: &Path,
    options: &MountOptions,
) -> Result<(), SyscallError> {
    let writable = options.flags - MsFlags::MS_RDONLY;
    sys.mount(Some(source), &lower.path, Some("tmpfs"), writable, options.data().as_deref())?;
    let upper = sys.mount_point(cfg.rootfs, dest, NodeKind::Dir)?;
    sys.copy_tree(lower, &upper)?;
    if options.flags.contains(MsFlags::MS_RDONLY) {
        sys.mount(None, &upper.path, None, MsFlags::MS_REMOUNT | options.flags, options.data().as_deref())?;
    }
    Ok(())
}

/// The `cgroup` mount shows the container its own cgroup. With a cgroup
/// namespace on a v2 host a fresh cgroup2 mount does that; otherwise the
/// container's cgroup directories are bind-mounted from the host.
fn cgroup_mount(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    dest: &Path,
    options: &MountOptions,
) -> Result<(), SyscallError> {
    let target = sys.mount_point(cfg.rootfs, dest, NodeKind::Dir)?;
    let Some((cgroup, hierarchy)) = cfg.cgroup else {
        // No cgroup of its own (e.g. rootless without delegation): an empty
        // read-only directory rather than a view of the host's hierarchy.
        let flags = options.flags | MsFlags::MS_RDONLY;
        return sys.mount(Some(Path::new("tmpfs")), &target.path, Some("tmpfs"), flags, Some("mode=755"));
    };
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    match hierarchy {
        Hierarchy::Unified if cfg.new_cgroup_ns => {
            sys.mount(Some(Path::new("cgroup2")), &target.path, Some("cgroup2"), options.flags, None)?;
        }
        Hierarchy::Unified => {
            let host = Path::new("/sys/fs/cgroup").join(relative);
            bind_host_dir(sys, cfg.rootfs, &host, dest, options.flags)?;
        }
        Hierarchy::Legacy => {
            let tmpfs_flags = options.flags - MsFlags::MS_RDONLY;
            sys.mount(Some(Path::new("tmpfs")), &target.path, Some("tmpfs"), tmpfs_flags, Some("mode=755"))?;
            for mount_point in crate::cgroups::legacy_mounts().iter().map(|m| &m.path) {
                let Some(name) = mount_point.file_name() else { continue };
                let host = mount_point.join(relative);
                if !host.is_dir() {
                    continue; // a hierarchy the container has no cgroup in
                }
                bind_host_dir(sys, cfg.rootfs, &host, &dest.join(name), options.flags)?;
                comount_symlinks(sys, cfg.rootfs, dest, name)?;
            }
            if options.flags.contains(MsFlags::MS_RDONLY) {
                let mounted = sys.mount_point(cfg.rootfs, dest, NodeKind::Dir)?;
                let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs_flags;
                sys.mount(None, &mounted.path, None, flags, None)?;
            }
        }
    }
    Ok(())
}

/// Bind-mounts a host directory at `dest` and applies `flags` to it.
fn bind_host_dir(
    sys: &dyn Syscall,
    rootfs: &Path,
    host: &Path,
    dest: &Path,
    flags: MsFlags,
) -> Result<(), SyscallError> {
    let target = sys.mount_point(rootfs, dest, NodeKind::Dir)?;
    sys.mount(Some(host), &target.path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    let flags = flags - MsFlags::MS_BIND - MsFlags::MS_REC;
    if flags.is_empty() {
        return Ok(());
    }
    // The handle above still names the directory under the new mount.
    let mounted = sys.mount_point(rootfs, dest, NodeKind::Dir)?;
    remount_bind(sys, &mounted.path, flags)
}

/// `cpu,cpuacct` is also reachable as `cpu` and `cpuacct`, as on the host.
fn comount_symlinks(sys: &dyn Syscall, rootfs: &Path, dest: &Path, name: &std::ffi::OsStr) -> Result<(), SyscallError> {
    let name = name.to_string_lossy();
    if !name.contains(',') {
        return Ok(());
    }
    for single in name.split(',') {
        sys.symlink(rootfs, &dest.join(single), Path::new(name.as_ref()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
