//! A [`Syscall`] double that records every call instead of making it, so
//! tests can assert what container setup would do, in what order.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::{MountPoint, NodeKind, Result, SeccompError, Syscall, SyscallError};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    MountSetattr {
        target: PathBuf,
        recursive: bool,
        set: u64,
        clear: u64,
    },
    Umount {
        target: PathBuf,
    },
    PivotRoot(PathBuf),
    MoveRoot(PathBuf),
    MountPoint {
        path: PathBuf,
        kind: NodeKind,
    },
    Mknod {
        path: PathBuf,
        kind: SFlag,
        perm: u32,
        dev: u64,
    },
    Symlink {
        link: PathBuf,
        target: PathBuf,
    },
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    Chdir(PathBuf),
    Hostname(String),
    Domainname(String),
    Unshare(CloneFlags),
    Setns(CloneFlags),
    SetIds(u32, u32),
    SetGroups(Vec<u32>),
    KeepCaps(bool),
    NoNewPrivs,
    DropBounding(Capability),
    /// The set's name (`CapSet` has no equality) and its members.
    SetCaps(String, Vec<Capability>),
    RaiseAmbient(Capability),
    Rlimit(Resource, u64, u64),
    WriteFile(PathBuf, String),
    Umask(u32),
    Chroot(PathBuf),
    LinkUp(String),
    CopyTree {
        from: PathBuf,
        to: PathBuf,
    },
    SealDescriptors(i32),
    InstallSeccomp,
    OwnFdDir,
    ReopenForWrite(i32),
}

/// Picks the calls that should fail.
pub type CallMatcher = fn(&Call) -> bool;

/// Records calls; `existing` says which paths "exist" for `node_kind`, and
/// `fail_on` makes a matching call fail with an errno.
pub struct RecordingSyscall {
    calls: RefCell<Vec<Call>>,
    pub existing: HashMap<PathBuf, NodeKind>,
    pub fail_on: Option<(CallMatcher, Errno)>,
    /// What `mount_flags` reports.
    pub locked_flags: MsFlags,
    /// What `get_rlimit` reports for every resource.
    pub current_rlimit: (u64, u64),
    /// What `mount_containing` reports for every path.
    pub containing_mount: PathBuf,
}

impl Default for RecordingSyscall {
    fn default() -> Self {
        Self {
            calls: RefCell::default(),
            existing: HashMap::new(),
            fail_on: None,
            locked_flags: MsFlags::empty(),
            current_rlimit: (1024, 4096),
            containing_mount: PathBuf::from("/"),
        }
    }
}

impl RecordingSyscall {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn record(&self, call: Call) -> Result<()> {
        let fail = self.fail_on.filter(|(matches, _)| matches(&call)).map(|(_, errno)| errno);
        let text = format!("{call:?}");
        self.calls.borrow_mut().push(call);
        match fail {
            Some(errno) => Err(SyscallError::os("recorded", text, errno)),
            None => Ok(()),
        }
    }
}

fn join(root: &Path, dest: &Path) -> PathBuf {
    root.join(dest.strip_prefix("/").unwrap_or(dest))
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        self.record(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }

    fn mount_setattr(&self, target: &Path, recursive: bool, set: u64, clear: u64) -> Result<()> {
        self.record(Call::MountSetattr { target: target.to_path_buf(), recursive, set, clear })
    }

    fn umount(&self, target: &Path, _flags: MntFlags) -> Result<()> {
        self.record(Call::Umount { target: target.to_path_buf() })
    }

    fn mount_flags(&self, _target: &Path) -> Result<MsFlags> {
        Ok(self.locked_flags)
    }

    fn pivot_root(&self, new_root: &Path) -> Result<()> {
        self.record(Call::PivotRoot(new_root.to_path_buf()))
    }

    fn move_root(&self, new_root: &Path) -> Result<()> {
        self.record(Call::MoveRoot(new_root.to_path_buf()))
    }

    fn mount_point(&self, root: &Path, dest: &Path, kind: NodeKind) -> Result<MountPoint> {
        let path = join(root, dest);
        self.record(Call::MountPoint { path: path.clone(), kind })?;
        Ok(MountPoint::new(path, None))
    }

    fn node_kind(&self, root: &Path, dest: &Path) -> Result<Option<NodeKind>> {
        Ok(self.existing.get(&join(root, dest)).copied())
    }

    fn mknod(&self, root: &Path, dest: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<()> {
        self.record(Call::Mknod { path: join(root, dest), kind, perm: perm.bits(), dev })
    }

    fn symlink(&self, root: &Path, link: &Path, target: &Path) -> Result<()> {
        self.record(Call::Symlink { link: join(root, link), target: target.to_path_buf() })
    }

    fn chown(&self, root: &Path, dest: &Path, uid: Uid, gid: Gid) -> Result<()> {
        self.record(Call::Chown { path: join(root, dest), uid: uid.as_raw(), gid: gid.as_raw() })
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        self.record(Call::Chdir(path.to_path_buf()))
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        self.record(Call::Hostname(name.to_string()))
    }

    fn setdomainname(&self, name: &str) -> Result<()> {
        self.record(Call::Domainname(name.to_string()))
    }

    fn unshare(&self, flags: CloneFlags) -> Result<()> {
        self.record(Call::Unshare(flags))
    }

    fn setns(&self, _fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<()> {
        self.record(Call::Setns(nstype))
    }

    fn set_ids(&self, uid: Uid, gid: Gid) -> Result<()> {
        self.record(Call::SetIds(uid.as_raw(), gid.as_raw()))
    }

    fn set_groups(&self, gids: &[Gid]) -> Result<()> {
        self.record(Call::SetGroups(gids.iter().map(|g| g.as_raw()).collect()))
    }

    fn set_keep_caps(&self, keep: bool) -> Result<()> {
        self.record(Call::KeepCaps(keep))
    }

    fn set_no_new_privs(&self) -> Result<()> {
        self.record(Call::NoNewPrivs)
    }

    fn drop_bounding_cap(&self, cap: Capability) -> Result<()> {
        self.record(Call::DropBounding(cap))
    }

    fn set_caps(&self, set: CapSet, caps: &CapsHashSet) -> Result<()> {
        let mut sorted: Vec<Capability> = caps.iter().copied().collect();
        sorted.sort_by_key(|c| c.index());
        self.record(Call::SetCaps(format!("{set:?}"), sorted))
    }

    fn raise_ambient(&self, cap: Capability) -> Result<()> {
        self.record(Call::RaiseAmbient(cap))
    }

    fn set_rlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<()> {
        self.record(Call::Rlimit(resource, soft, hard))
    }

    fn get_rlimit(&self, _resource: Resource) -> Result<(u64, u64)> {
        Ok(self.current_rlimit)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        self.record(Call::WriteFile(path.to_path_buf(), String::from_utf8_lossy(data).into_owned()))
    }

    fn umask(&self, mask: Mode) {
        self.calls.borrow_mut().push(Call::Umask(mask.bits()));
    }

    fn chroot(&self, path: &Path) -> Result<()> {
        self.record(Call::Chroot(path.to_path_buf()))
    }

    fn set_link_up(&self, name: &str) -> Result<()> {
        self.record(Call::LinkUp(name.to_string()))
    }

    fn mount_containing(&self, _path: &Path) -> Result<PathBuf> {
        Ok(self.containing_mount.clone())
    }

    fn copy_tree(&self, from: &MountPoint, to: &MountPoint) -> Result<()> {
        self.record(Call::CopyTree { from: from.path.clone(), to: to.path.clone() })
    }

    fn seal_descriptors(&self, preserve_fds: i32) -> Result<()> {
        self.record(Call::SealDescriptors(preserve_fds))
    }

    fn install_seccomp(&self, _filter: &crate::seccomp::CompiledSeccomp) -> std::result::Result<(), SeccompError> {
        self.record(Call::InstallSeccomp).map_err(|e| SeccompError::Internal(e.to_string()))
    }

    fn own_fd_dir(&self) -> Result<OwnedFd> {
        self.record(Call::OwnFdDir)?;
        stand_in()
    }

    fn reopen_for_write(&self, _fd_dir: BorrowedFd<'_>, fd: RawFd) -> Result<OwnedFd> {
        self.record(Call::ReopenForWrite(fd))?;
        stand_in()
    }
}

/// A real descriptor (of /dev/null) where the double must return one.
fn stand_in() -> Result<OwnedFd> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| SyscallError::os("open", "/dev/null", Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
}
