//! The new mount API calls (open_tree, mount_setattr, move_mount) that
//! tote-shim and toted both make: libc has their numbers but no wrappers.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// Ids seen through a user namespace (`MountAttr::userns_fd`).
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// mount_setattr(2) on `path` relative to `dirfd` (`AT_EMPTY_PATH` in
/// `flags` with an empty path: `dirfd` itself).
pub fn mount_setattr(dirfd: RawFd, path: &CStr, flags: libc::c_int, attr: &MountAttr) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and `attr` a mount_attr that
    // outlives the call, with its size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// open_tree(2): with `OPEN_TREE_CLONE`, a detached copy of the mount at
/// `path`.
pub fn open_tree(path: &CStr, flags: libc::c_uint) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is NUL-terminated; the result is a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if raw < 0 {
        return Err(Errno::last());
    }
    let fd = RawFd::try_from(raw).map_err(|_| Errno::EBADF)?;
    // SAFETY: open_tree returned a descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// move_mount(2) of the detached mount `mount` onto `target`.
pub fn move_mount(mount: BorrowedFd<'_>, target: &CStr) -> Result<(), Errno> {
    // SAFETY: the empty path and `target` are NUL-terminated strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}
