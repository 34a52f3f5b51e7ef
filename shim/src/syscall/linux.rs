//! The real kernel calls behind [`Syscall`].

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::{Gid, Uid, chdir, chroot, fchdir, pivot_root, setgroups, setresgid, setresuid};

use super::mount_api::{self, MountAttr};
use super::{MountPoint, NodeKind, Result, SeccompError, Syscall, SyscallError, beneath};

/// Makes the calls for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn errno_of(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// An error about `dest` inside `root`.
fn in_root(op: &'static str, root: &Path, dest: &Path) -> impl FnOnce(Errno) -> SyscallError {
    let target = format!("{} inside {}", dest.display(), root.display());
    move |errno| SyscallError::os(op, target, errno)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn cname(name: &std::ffi::OsStr) -> std::result::Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        mount(source, target, fstype, flags, data).map_err(|errno| {
            let detail = format!(
                " (source {}, type {}, flags {:#x}, data {:?})",
                source.map_or("none".into(), |s| s.display().to_string()),
                fstype.unwrap_or("none"),
                flags.bits(),
                data.unwrap_or("")
            );
            SyscallError::os_detail("mount", target.display(), detail, errno)
        })
    }

    fn mount_setattr(&self, target: &Path, recursive: bool, set: u64, clear: u64) -> Result<()> {
        let attr = MountAttr { attr_set: set, attr_clr: clear, ..MountAttr::default() };
        let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
            .map_err(|_| SyscallError::os("mount_setattr", target.display(), Errno::EINVAL))?;
        let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
        mount_api::mount_setattr(libc::AT_FDCWD, &path, flags, &attr)
            .map_err(|errno| SyscallError::os("mount_setattr", target.display(), errno))
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<()> {
        umount2(target, flags).map_err(|errno| SyscallError::os("umount", target.display(), errno))
    }

    fn mount_flags(&self, target: &Path) -> Result<MsFlags> {
        use nix::sys::statvfs::{FsFlags, statvfs};
        let flags = statvfs(target).map_err(|errno| SyscallError::os("statvfs", target.display(), errno))?.flags();
        let pairs = [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ];
        Ok(pairs.iter().filter(|(st, _)| flags.contains(*st)).fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms))
    }

    fn pivot_root(&self, new_root: &Path) -> Result<()> {
        let os = |op, errno| SyscallError::os(op, new_root.display(), errno);
        let old = open("/", OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| os("open old root", e))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let old = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(old) };
        chdir(new_root).map_err(|e| os("chdir", e))?;
        // pivot_root(".", ".") stacks the old root on top of the new one, so
        // no put_old directory has to exist inside the container's rootfs.
        pivot_root(".", ".").map_err(|e| os("pivot_root", e))?;
        fchdir(old.as_raw_fd()).map_err(|e| os("fchdir old root", e))?;
        // The old root must not propagate its unmount back to the host.
        mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| os("make old root rslave", e))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(|e| os("detach old root", e))?;
        chdir("/").map_err(|e| os("chdir /", e))
    }

    fn move_root(&self, new_root: &Path) -> Result<()> {
        let os = |op, errno| SyscallError::os(op, new_root.display(), errno);
        chdir(new_root).map_err(|e| os("chdir", e))?;
        mount(Some(new_root), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| os("move root", e))?;
        chroot(".").map_err(|e| os("chroot", e))?;
        chdir("/").map_err(|e| os("chdir /", e))
    }

    fn mount_point(&self, root_path: &Path, dest: &Path, kind: NodeKind) -> Result<MountPoint> {
        let err = in_root("resolve", root_path, dest);
        let root = beneath::open_root(root_path).map_err(in_root("open", root_path, Path::new("/")))?;
        let fd = match kind {
            NodeKind::Dir => beneath::ensure_dir(root.as_fd(), dest),
            NodeKind::File => beneath::ensure_file(root.as_fd(), dest),
        }
        .map_err(err)?;
        Ok(MountPoint::new(fd_path(&fd), Some(fd)))
    }

    fn node_kind(&self, root_path: &Path, dest: &Path) -> Result<Option<NodeKind>> {
        let root = beneath::open_root(root_path).map_err(in_root("open", root_path, Path::new("/")))?;
        let fd = match beneath::open_in_root(root.as_fd(), dest, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(in_root("resolve", root_path, dest)(errno)),
        };
        let stat = fstat(fd.as_raw_fd()).map_err(in_root("stat", root_path, dest))?;
        let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        Ok(Some(if is_dir { NodeKind::Dir } else { NodeKind::File }))
    }

    fn mknod(&self, root_path: &Path, dest: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<()> {
        let err = in_root("mknod", root_path, dest);
        let root = beneath::open_root(root_path).map_err(in_root("open", root_path, Path::new("/")))?;
        let (dir, name) = beneath::parent_dir(root.as_fd(), dest).map_err(in_root("resolve", root_path, dest))?;
        let name = cname(name).map_err(in_root("mknod", root_path, dest))?;
        // SAFETY: `name` is NUL-terminated; mknodat never follows a final symlink.
        let ret = unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), kind.bits() | perm.bits(), dev) };
        if ret < 0 && Errno::last() != Errno::EEXIST {
            return Err(err(Errno::last()));
        }
        Ok(())
    }

    fn symlink(&self, root_path: &Path, link: &Path, target: &Path) -> Result<()> {
        let err = in_root("symlink", root_path, link);
        let root = beneath::open_root(root_path).map_err(in_root("open", root_path, Path::new("/")))?;
        let (dir, name) = beneath::parent_dir(root.as_fd(), link).map_err(in_root("resolve", root_path, link))?;
        let (name, target) = (cname(name), CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL));
        let (name, target) =
            (name.map_err(in_root("symlink", root_path, link))?, target.map_err(in_root("symlink", root_path, link))?);
        // SAFETY: both strings are NUL-terminated and outlive the call.
        let ret = unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) };
        if ret < 0 && Errno::last() != Errno::EEXIST {
            return Err(err(Errno::last()));
        }
        Ok(())
    }

    fn chown(&self, root_path: &Path, dest: &Path, uid: Uid, gid: Gid) -> Result<()> {
        let err = in_root("chown", root_path, dest);
        let root = beneath::open_root(root_path).map_err(in_root("open", root_path, Path::new("/")))?;
        let (dir, name) = beneath::parent_dir(root.as_fd(), dest).map_err(in_root("resolve", root_path, dest))?;
        let name = cname(name).map_err(in_root("chown", root_path, dest))?;
        // SAFETY: `name` is NUL-terminated; AT_SYMLINK_NOFOLLOW keeps the
        // call on the node itself.
        let ret = unsafe {
            libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid.as_raw(), gid.as_raw(), libc::AT_SYMLINK_NOFOLLOW)
        };
        if ret < 0 {
            return Err(err(Errno::last()));
        }
        Ok(())
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        chdir(path).map_err(|errno| SyscallError::os("chdir", path.display(), errno))
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).map_err(|errno| SyscallError::os("sethostname", name, errno))
    }

    fn setdomainname(&self, name: &str) -> Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes, which stay
        // alive for the whole call; the kernel copies them.
        let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        if ret < 0 {
            return Err(SyscallError::os("setdomainname", name, Errno::last()));
        }
        Ok(())
    }

    fn unshare(&self, flags: CloneFlags) -> Result<()> {
        unshare(flags).map_err(|errno| SyscallError::os("unshare", format!("{flags:?}"), errno))
    }

    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> Result<()> {
        setns(fd, nstype).map_err(|errno| SyscallError::os("setns", format!("{nstype:?}"), errno))
    }

    fn set_ids(&self, uid: Uid, gid: Gid) -> Result<()> {
        setresgid(gid, gid, gid).map_err(|e| SyscallError::os("setresgid", gid, e))?;
        setresuid(uid, uid, uid).map_err(|e| SyscallError::os("setresuid", uid, e))
    }

    fn set_groups(&self, gids: &[Gid]) -> Result<()> {
        setgroups(gids).map_err(|errno| SyscallError::os("setgroups", format!("{gids:?}"), errno))
    }

    fn set_keep_caps(&self, keep: bool) -> Result<()> {
        // SAFETY: PR_SET_KEEPCAPS takes one integer argument and touches no memory.
        let ret = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep), 0, 0, 0) };
        if ret < 0 {
            return Err(SyscallError::os("prctl", "PR_SET_KEEPCAPS", Errno::last()));
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> Result<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments and touches no memory.
        let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if ret < 0 {
            return Err(SyscallError::os("prctl", "PR_SET_NO_NEW_PRIVS", Errno::last()));
        }
        Ok(())
    }

    fn drop_bounding_cap(&self, cap: Capability) -> Result<()> {
        // One prctl per capability; caps::drop would read the set first.
        // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap.index()), 0, 0, 0) };
        if ret < 0 {
            return Err(SyscallError::os("drop from the bounding set", cap, Errno::last()));
        }
        Ok(())
    }

    fn set_caps(&self, set: CapSet, caps: &CapsHashSet) -> Result<()> {
        caps::set(None, set, caps).map_err(|source| SyscallError::Capability {
            op: "set capabilities",
            cap: format!("{set:?} {caps:?}"),
            source,
        })
    }

    fn raise_ambient(&self, cap: Capability) -> Result<()> {
        caps::raise(None, CapSet::Ambient, cap).map_err(|source| SyscallError::Capability {
            op: "raise the ambient capability",
            cap: cap.to_string(),
            source,
        })
    }

    fn set_rlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<()> {
        setrlimit(resource, soft, hard).map_err(|errno| {
            SyscallError::os_detail("setrlimit", format!("{resource:?}"), format!(" (soft {soft}, hard {hard})"), errno)
        })
    }

    fn get_rlimit(&self, resource: Resource) -> Result<(u64, u64)> {
        nix::sys::resource::getrlimit(resource)
            .map_err(|errno| SyscallError::os("getrlimit", format!("{resource:?}"), errno))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| SyscallError::os("open", path.display(), errno_of(&e)))?;
        file.write_all(data).map_err(|e| {
            let detail = format!(" ({:?})", String::from_utf8_lossy(data));
            SyscallError::os_detail("write", path.display(), detail, errno_of(&e))
        })
    }

    fn umask(&self, mask: Mode) {
        nix::sys::stat::umask(mask);
    }

    fn chroot(&self, path: &Path) -> Result<()> {
        chroot(path).map_err(|errno| SyscallError::os("chroot", path.display(), errno))?;
        chdir("/").map_err(|errno| SyscallError::os("chdir / in", path.display(), errno))
    }

    fn set_link_up(&self, name: &str) -> Result<()> {
        let err = |op: &'static str| move |errno| SyscallError::os(op, name, errno);
        // SAFETY: socket(2) takes integers and returns a new descriptor or -1.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(err("open a socket to configure")(Errno::last()));
        }
        // SAFETY: `raw` was just returned by socket(2) and nothing else owns it.
        let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= req.ifr_name.len() {
            return Err(err("name the interface")(Errno::ENAMETOOLONG));
        }
        for (slot, byte) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name of `req` and
        // writes its flags into `req`, which outlives the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(err("read the flags of interface")(Errno::last()));
        }
        let up = libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP is 1");
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= up };
        // SAFETY: SIOCSIFFLAGS only reads `req`, which outlives the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(err("bring up interface")(Errno::last()));
        }
        Ok(())
    }

    fn mount_containing(&self, path: &Path) -> Result<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| SyscallError::os("read", "/proc/self/mountinfo", errno_of(&e)))?;
        super::copy::containing_mount(&mountinfo, path)
            .ok_or_else(|| SyscallError::os("find the mount of", path.display(), Errno::ENOENT))
    }

    fn copy_tree(&self, from: &MountPoint, to: &MountPoint) -> Result<()> {
        let open_dir = |mp: &MountPoint| {
            open(&mp.path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|errno| SyscallError::os("open for tmpcopyup", mp.path.display(), errno))
                // SAFETY: `open` just returned this descriptor and nothing else owns it.
                .map(|raw| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
        };
        let (src, dst) = (open_dir(from)?, open_dir(to)?);
        super::copy::copy_tree(src.as_fd(), dst.as_fd(), Path::new(""))
            .map_err(|(path, op, errno)| SyscallError::os_detail(op, path.display(), " (tmpcopyup)".into(), errno))
    }

    fn seal_descriptors(&self, preserve_fds: i32) -> Result<()> {
        let first = 3 + preserve_fds.max(0).unsigned_abs();
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only flips flags on
        // descriptors of this process; it touches no memory.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
        if ret < 0 {
            return Err(SyscallError::os("close_range", format!("{first}.. (CLOSE_RANGE_CLOEXEC)"), Errno::last()));
        }
        for fd in 3..3 + preserve_fds.max(0) {
            // SAFETY: F_SETFD on a descriptor number touches no memory; an
            // unopened number just fails with EBADF, which is fine here.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        Ok(())
    }

    fn install_seccomp(&self, filter: &crate::seccomp::CompiledSeccomp) -> std::result::Result<(), SeccompError> {
        filter.install()
    }

    fn own_fd_dir(&self) -> Result<OwnedFd> {
        let raw = open("/proc/self/fd", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|errno| SyscallError::os("open", "/proc/self/fd", errno))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
    }

    fn reopen_for_write(&self, fd_dir: BorrowedFd<'_>, fd: RawFd) -> Result<OwnedFd> {
        let raw = nix::fcntl::openat(
            Some(fd_dir.as_raw_fd()),
            fd.to_string().as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| SyscallError::os("open for writing", format!("/proc/self/fd/{fd}"), errno))?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
    }
}
