//! Which namespaces a container creates and which it joins by path.
//!
//! The plan is built in the parent, before any process exists: every
//! namespace path is opened (and its type checked) up front, so a bad path
//! fails the create cleanly and the child only has to call setns(2).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::syscall::{Syscall, SyscallError};

/// CLONE_NEWTIME, which nix does not name.
pub const CLONE_NEWTIME: CloneFlags = CloneFlags::from_bits_retain(0x80);

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("open {typ} namespace {path}: {errno}")]
    Open { typ: &'static str, path: PathBuf, errno: nix::errno::Errno },
    #[error("{path} is a {actual} namespace, but the bundle lists it as {expected}")]
    WrongType { path: PathBuf, expected: &'static str, actual: &'static str },
}

/// Whether this process is in the host's (initial) user namespace, whose
/// uid_map is the identity over every id. Inside a rootless toted's user
/// namespace tote-shim is uid 0 but owns no device, cgroup or host file.
pub fn in_initial_user_ns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|map| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

pub fn flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CLONE_NEWTIME,
    }
}

/// The name the kernel uses under /proc/<pid>/ns/.
pub fn proc_name(flag: CloneFlags) -> &'static str {
    match flag {
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWNET => "net",
        f if f == CLONE_NEWTIME => "time",
        _ => "unknown",
    }
}

/// The order namespaces are joined in: the user namespace first, because it
/// grants the capabilities needed to join namespaces it owns; the mount
/// namespace last, because joining it changes how every later path resolves.
const JOIN_ORDER: [CloneFlags; 8] = [
    CloneFlags::CLONE_NEWUSER,
    CloneFlags::CLONE_NEWIPC,
    CloneFlags::CLONE_NEWUTS,
    CloneFlags::CLONE_NEWNET,
    CloneFlags::CLONE_NEWPID,
    CloneFlags::CLONE_NEWCGROUP,
    CLONE_NEWTIME,
    CloneFlags::CLONE_NEWNS,
];

/// An existing namespace the container enters.
#[derive(Debug)]
pub struct JoinedNamespace {
    pub flag: CloneFlags,
    pub path: PathBuf,
    pub fd: OwnedFd,
}

#[derive(Debug)]
pub struct NamespacePlan {
    /// Namespaces to create.
    pub create: CloneFlags,
    /// Namespaces to join, in [`JOIN_ORDER`].
    pub join: Vec<JoinedNamespace>,
}

impl Default for NamespacePlan {
    fn default() -> Self {
        Self { create: CloneFlags::empty(), join: Vec::new() }
    }
}

impl NamespacePlan {
    pub fn new(namespaces: &[LinuxNamespace]) -> Result<Self, NamespaceError> {
        let mut plan = Self::default();
        for ns in namespaces {
            let flag = flag(ns.typ());
            match ns.path() {
                None => plan.create |= flag,
                Some(path) => plan.join.push(JoinedNamespace { flag, path: path.clone(), fd: open_ns(flag, path)? }),
            }
        }
        plan.join.sort_by_key(|ns| JOIN_ORDER.iter().position(|f| *f == ns.flag));
        Ok(plan)
    }

    /// Joins every namespace of a running process (for exec), in order.
    /// Only namespaces that differ from ours are joined: setns(2) into our
    /// own user namespace fails.
    pub fn of_process(pid: i32) -> Result<Self, NamespaceError> {
        let mut plan = Self::default();
        for flag in JOIN_ORDER {
            let name = proc_name(flag);
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
            let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
                continue; // the kernel lacks this namespace type
            };
            use std::os::unix::fs::MetadataExt;
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                plan.join.push(JoinedNamespace { flag, fd: open_ns(flag, &theirs)?, path: theirs });
            }
        }
        Ok(plan)
    }

    pub fn creates(&self, flag: CloneFlags) -> bool {
        self.create.contains(flag)
    }

    pub fn joins(&self, flag: CloneFlags) -> bool {
        self.join.iter().any(|ns| ns.flag == flag)
    }

    /// Whether the container gets a user namespace, new or joined.
    pub fn has_user(&self) -> bool {
        self.creates(CloneFlags::CLONE_NEWUSER) || self.joins(CloneFlags::CLONE_NEWUSER)
    }

    /// The common case (every namespace new, no time namespace) is a single
    /// clone(2) straight into the namespaces; anything else goes through a
    /// short-lived stage process that joins, unshares, then forks the init.
    pub fn needs_stage(&self) -> bool {
        !self.join.is_empty() || self.creates(CLONE_NEWTIME)
    }

    /// Flags for a direct clone. The cgroup namespace is left out: it is
    /// unshared only after the process sits in its cgroup, so that cgroup
    /// becomes the namespace's root.
    pub fn direct_clone_flags(&self) -> CloneFlags {
        self.create - CloneFlags::CLONE_NEWCGROUP
    }

    /// Stage step 1: enter every joined namespace, user first.
    pub fn join_all(&self, sys: &dyn Syscall) -> Result<(), SyscallError> {
        for ns in &self.join {
            sys.setns(ns.fd.as_fd(), ns.flag)?;
        }
        Ok(())
    }

    /// Stage step 2: create the new namespaces other than user and cgroup.
    /// A new pid or time namespace only applies to children, which is why
    /// the stage forks the init afterwards.
    pub fn unshare_rest(&self, sys: &dyn Syscall) -> Result<(), SyscallError> {
        let flags = self.create - CloneFlags::CLONE_NEWUSER - CloneFlags::CLONE_NEWCGROUP;
        if !flags.is_empty() {
            sys.unshare(flags)?;
        }
        Ok(())
    }

    /// Whether the init must be a child of the stage process.
    pub fn init_needs_fork(&self) -> bool {
        let for_children = CloneFlags::CLONE_NEWPID | CLONE_NEWTIME;
        self.create.intersects(for_children) || self.join.iter().any(|ns| for_children.contains(ns.flag))
    }
}

const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn open_ns(flag: CloneFlags, path: &Path) -> Result<OwnedFd, NamespaceError> {
    let expected = proc_name(flag);
    let raw = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| NamespaceError::Open {
        typ: expected,
        path: path.to_path_buf(),
        errno,
    })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: NS_GET_NSTYPE takes no argument and only inspects the descriptor.
    let typ = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    if typ < 0 {
        let actual = "non-namespace file";
        return Err(NamespaceError::WrongType { path: path.to_path_buf(), expected, actual });
    }
    let actual = proc_name(CloneFlags::from_bits_retain(typ));
    if actual != expected {
        return Err(NamespaceError::WrongType { path: path.to_path_buf(), expected, actual });
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::{Call, RecordingSyscall};
    use oci_spec::runtime::LinuxNamespaceBuilder;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn new_namespaces_clone_directly_except_cgroup() {
        let plan = NamespacePlan::new(&[
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Cgroup, None),
        ])
        .unwrap();
        assert!(!plan.needs_stage());
        assert_eq!(plan.direct_clone_flags(), CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS);
    }

    #[test]
    fn joined_namespaces_are_entered_user_first_and_mount_last() {
        let plan = NamespacePlan::new(&[
            ns(LinuxNamespaceType::Mount, Some("/proc/self/ns/mnt")),
            ns(LinuxNamespaceType::Network, Some("/proc/self/ns/net")),
            ns(LinuxNamespaceType::User, Some("/proc/self/ns/user")),
            ns(LinuxNamespaceType::Pid, None),
        ])
        .unwrap();
        assert!(plan.needs_stage());
        assert!(plan.init_needs_fork());
        let sys = RecordingSyscall::default();
        plan.join_all(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Setns(CloneFlags::CLONE_NEWUSER),
                Call::Setns(CloneFlags::CLONE_NEWNET),
                Call::Setns(CloneFlags::CLONE_NEWNS),
            ]
        );
        plan.unshare_rest(&sys).unwrap();
        assert_eq!(sys.calls().last(), Some(&Call::Unshare(CloneFlags::CLONE_NEWPID)));
    }

    #[test]
    fn a_missing_namespace_path_is_named() {
        let err = NamespacePlan::new(&[ns(LinuxNamespaceType::Network, Some("/nonexistent/ns"))]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
    }

    #[test]
    fn a_namespace_of_the_wrong_type_is_refused() {
        let err = NamespacePlan::new(&[ns(LinuxNamespaceType::Network, Some("/proc/self/ns/uts"))]).unwrap_err();
        assert!(err.to_string().contains("is a uts namespace"), "{err}");
        let err = NamespacePlan::new(&[ns(LinuxNamespaceType::Ipc, Some("/proc/self/status"))]).unwrap_err();
        assert!(err.to_string().contains("non-namespace"), "{err}");
    }
}
