//! Descriptor-relative filesystem primitives the unpacker is built from.
//! Nothing here resolves a path from a string join: every lookup is
//! relative to a directory descriptor, and only `open_dir_beneath` follows
//! symlinks, confined beneath the descriptor it starts from.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// Takes ownership of a descriptor a successful open just returned.
pub(crate) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and nothing
    // else owns it, so the OwnedFd becomes its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens the directory `path` (relative, non-empty) beneath `root` as an
/// `O_PATH` descriptor. Symlinks are followed only while they stay beneath
/// `root`: an absolute symlink, or one whose `..` climbs above `root`, fails
/// with `EXDEV`; magic links (`/proc/…/fd/…`) fail with `ELOOP`.
pub(crate) fn open_dir_beneath(root: RawFd, path: &[u8]) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(root, path, how) {
            Ok(fd) => return Ok(owned(fd)),
            // openat2 asks for a retry when a concurrent rename or mount
            // could have raced with the `..` checks.
            Err(Errno::EAGAIN | Errno::EINTR) if tries < 64 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Opens `name` in `dir` with `flags | O_NOFOLLOW | O_CLOEXEC`.
pub(crate) fn open_at(dir: RawFd, name: &[u8], flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(Some(dir), name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, mode).map(owned)
}

/// Reopens a directory held as an `O_PATH` descriptor for reading, as
/// `fsetxattr` and `fchmod` need.
pub(crate) fn reopen_dir(dir: RawFd) -> nix::Result<OwnedFd> {
    open_at(dir, b".", OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
}

pub(crate) fn fsetxattr(fd: RawFd, name: &CStr, value: &[u8]) -> nix::Result<()> {
    // SAFETY: `name` is NUL-terminated and `value` points to `value.len()`
    // readable bytes; both outlive the call, which only reads them.
    let res = unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(res).map(drop)
}

/// Reads xattr `name` of `fd` (opened for reading) into `buf`; returns its
/// length.
pub(crate) fn fgetxattr(fd: RawFd, name: &CStr, buf: &mut [u8]) -> nix::Result<usize> {
    // SAFETY: `name` is NUL-terminated and `buf` is `buf.len()` writable
    // bytes; the kernel writes at most that many.
    let res = unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(res).map(|n| n.unsigned_abs())
}

/// `/proc/self/fd/<dir>/<name>`: a path to `name` in the directory `dir`
/// for the calls that have no descriptor-relative form. The magic link
/// leads to exactly the directory the descriptor holds; `name` is one
/// component, never followed by the `l*` calls it is used with.
fn proc_path(dir: RawFd, name: &[u8]) -> nix::Result<CString> {
    let mut path = Vec::with_capacity(32 + name.len());
    write!(path, "/proc/self/fd/{dir}/").map_err(|_| Errno::ENOMEM)?;
    path.extend_from_slice(name);
    CString::new(path).map_err(|_| Errno::EINVAL)
}

/// Sets xattr `xattr` on `name` in `dir` without following `name` if it is
/// a symlink (`lsetxattr`), for entries that cannot be opened (symlinks,
/// devices, fifos).
pub(crate) fn lsetxattr_at(dir: RawFd, name: &[u8], xattr: &CStr, value: &[u8]) -> nix::Result<()> {
    let path = proc_path(dir, name)?;
    // SAFETY: `path` and `xattr` are NUL-terminated, `value` points to
    // `value.len()` readable bytes; all outlive the call.
    let res = unsafe { libc::lsetxattr(path.as_ptr(), xattr.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(res).map(drop)
}

/// Reads xattr `xattr` of `name` in `dir` into `buf` without following
/// `name` if it is a symlink (`lgetxattr`); returns its length.
pub(crate) fn lgetxattr_at(dir: RawFd, name: &[u8], xattr: &CStr, buf: &mut [u8]) -> nix::Result<usize> {
    let path = proc_path(dir, name)?;
    // SAFETY: `path` and `xattr` are NUL-terminated and `buf` is
    // `buf.len()` writable bytes; the kernel writes at most that many.
    let res = unsafe { libc::lgetxattr(path.as_ptr(), xattr.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(res).map(|n| n.unsigned_abs())
}

/// Removes `name` from `dir`, whatever it is; a directory with everything
/// in it. Symlinks are removed, never followed.
pub(crate) fn remove_all_at(dir: RawFd, name: &[u8]) -> nix::Result<()> {
    match nix::unistd::unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
        Err(Errno::EISDIR) => remove_dir_all_at(dir, name),
        other => other,
    }
}

fn remove_dir_all_at(parent: RawFd, name: &[u8]) -> nix::Result<()> {
    let mut dir = Dir::from(open_at(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?)?;
    let fd = dir.as_raw_fd();
    let mut children: Vec<(CString, bool)> = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let child = entry.file_name();
        if child.to_bytes() != b"." && child.to_bytes() != b".." {
            children.push((child.to_owned(), entry.file_type() == Some(Type::Directory)));
        }
    }
    for (child, is_dir) in &children {
        let child = child.to_bytes();
        if *is_dir {
            remove_dir_all_at(fd, child)?;
        } else {
            match remove_all_at(fd, child) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    nix::unistd::unlinkat(Some(parent), name, UnlinkatFlags::RemoveDir)
}
