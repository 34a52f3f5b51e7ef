//! The seam between the container-creation logic and the kernel.
//!
//! Every privileged operation the container's init performs (mounts,
//! pivot_root, namespaces, ids, capabilities, rlimits, device nodes) goes
//! through [`Syscall`]. [`LinuxSyscall`] makes the real calls; the
//! recording double in `recording` (tests only) logs them so the mount,
//! namespace and process logic can be unit-tested without root.

pub mod beneath;
mod copy;
mod linux;
pub mod mount_api;
#[cfg(test)]
pub mod recording;

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

pub use linux::LinuxSyscall;

use crate::seccomp::SeccompError;

/// A failed kernel operation: what was attempted, on what, and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum SyscallError {
    #[error("{op} {target}{detail}: {errno}")]
    Os {
        op: &'static str,
        target: String,
        detail: String,
        #[source]
        errno: Errno,
    },
    #[error("{op} {cap}: {source}")]
    Capability {
        op: &'static str,
        cap: String,
        #[source]
        source: caps::errors::CapsError,
    },
}

impl SyscallError {
    pub fn os(op: &'static str, target: impl std::fmt::Display, errno: Errno) -> Self {
        Self::Os { op, target: target.to_string(), detail: String::new(), errno }
    }

    pub fn os_detail(op: &'static str, target: impl std::fmt::Display, detail: String, errno: Errno) -> Self {
        Self::Os { op, target: target.to_string(), detail, errno }
    }

    /// The errno behind the failure, when the kernel gave one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Os { errno, .. } => Some(*errno),
            Self::Capability { .. } => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, SyscallError>;

/// What kind of inode a mount needs as its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
}

/// A mount target resolved inside a root without following symlinks out of
/// it. `path` is what to hand to mount(2): a `/proc/self/fd/N` magic link
/// for the real implementation, so a symlink swapped in later cannot
/// redirect the mount.
#[derive(Debug)]
pub struct MountPoint {
    pub path: PathBuf,
    _handle: Option<OwnedFd>,
}

impl MountPoint {
    pub fn new(path: PathBuf, handle: Option<OwnedFd>) -> Self {
        Self { path, _handle: handle }
    }
}

/// The privileged kernel operations of container creation.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    /// mount_setattr(2): change attributes of a mount (and its children
    /// when `recursive`); how `rro` and friends are applied.
    fn mount_setattr(&self, target: &Path, recursive: bool, set: u64, clear: u64) -> Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<()>;
    /// The flags `target`'s mount carries now (statvfs), other than
    /// read-only: those the kernel keeps locked in a user namespace.
    fn mount_flags(&self, target: &Path) -> Result<MsFlags>;
    /// Makes `new_root` the root of the mount namespace and detaches the old one.
    fn pivot_root(&self, new_root: &Path) -> Result<()>;
    /// The fallback for roots that cannot be pivoted (initramfs): MS_MOVE + chroot.
    fn move_root(&self, new_root: &Path) -> Result<()>;
    /// Resolves `dest` inside `root`, creating it (and its parents) as a
    /// directory or an empty file when missing.
    fn mount_point(&self, root: &Path, dest: &Path, kind: NodeKind) -> Result<MountPoint>;
    /// What `dest` inside `root` is, or `None` when it does not exist.
    fn node_kind(&self, root: &Path, dest: &Path) -> Result<Option<NodeKind>>;
    fn mknod(&self, root: &Path, dest: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<()>;
    fn symlink(&self, root: &Path, link: &Path, target: &Path) -> Result<()>;
    fn chown(&self, root: &Path, dest: &Path, uid: Uid, gid: Gid) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn sethostname(&self, name: &str) -> Result<()>;
    fn setdomainname(&self, name: &str) -> Result<()>;
    fn unshare(&self, flags: CloneFlags) -> Result<()>;
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<()>;
    fn set_ids(&self, uid: Uid, gid: Gid) -> Result<()>;
    fn set_groups(&self, gids: &[Gid]) -> Result<()>;
    fn set_keep_caps(&self, keep: bool) -> Result<()>;
    fn set_no_new_privs(&self) -> Result<()>;
    fn drop_bounding_cap(&self, cap: Capability) -> Result<()>;
    /// Replaces one capability set (not ambient, which is raised one by one).
    fn set_caps(&self, set: CapSet, caps: &CapsHashSet) -> Result<()>;
    fn raise_ambient(&self, cap: Capability) -> Result<()>;
    fn set_rlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<()>;
    fn get_rlimit(&self, resource: Resource) -> Result<(u64, u64)>;
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()>;
    fn umask(&self, mask: Mode);
    /// chroot(2) and chdir("/"): how a container without a mount namespace
    /// of its own enters its rootfs (runc does the same).
    fn chroot(&self, path: &Path) -> Result<()>;
    /// Sets the IFF_UP flag of a network interface of our namespace.
    fn set_link_up(&self, name: &str) -> Result<()>;
    /// The mount point of the mount `path` is on (from /proc/self/mountinfo).
    fn mount_containing(&self, path: &Path) -> Result<PathBuf>;
    /// Copies the contents of directory `from` into directory `to`: files,
    /// directories, symlinks and special files, with their owners, modes and
    /// extended attributes (`tmpcopyup`).
    fn copy_tree(&self, from: &MountPoint, to: &MountPoint) -> Result<()>;
    /// Marks every descriptor from 3 + `preserve_fds` up close-on-exec and
    /// clears the flag on the preserved ones.
    fn seal_descriptors(&self, preserve_fds: i32) -> Result<()>;
    /// Loads the container's seccomp filter into this thread.
    fn install_seccomp(&self, filter: &crate::seccomp::CompiledSeccomp) -> std::result::Result<(), SeccompError>;
    /// A handle (O_PATH, close-on-exec) on this process's descriptor
    /// directory, `/proc/self/fd` of the /proc mounted now: it reaches the
    /// process's descriptors after its root changed, whether or not the new
    /// root has a /proc.
    fn own_fd_dir(&self) -> Result<OwnedFd>;
    /// Opens descriptor `fd` anew, write-only and close-on-exec, through its
    /// magic link in `fd_dir` (from [`Syscall::own_fd_dir`]): how an O_PATH
    /// descriptor of a FIFO becomes a writer, blocking until a reader comes.
    fn reopen_for_write(&self, fd_dir: BorrowedFd<'_>, fd: RawFd) -> Result<OwnedFd>;
}
