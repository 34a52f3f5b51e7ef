//! Filesystem work of container setup that is not one kernel call: copying
//! a directory tree into a fresh tmpfs (`tmpcopyup`) and finding the mount
//! a path lives on.
//!
//! The copy works by descriptors, each entry opened relative to its parent
//! without following symlinks, so a symlink in the image cannot send it
//! anywhere else: what the image holds under the mount point is copied,
//! nothing more.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, fstatat, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, fchownat, symlinkat};

/// What failed: the path (relative to the copied directory), the operation
/// and the errno.
pub type CopyError = (PathBuf, &'static str, Errno);

/// The mount point of the mount `path` lives on: the longest mount point
/// in `mountinfo` that contains it, component by component. The last of
/// several mounts at one point is the one on top.
pub fn containing_mount(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    let mut best: Option<PathBuf> = None;
    for line in mountinfo.lines() {
        let Some(point) = line.split(' ').nth(4) else { continue };
        let point = PathBuf::from(unescape(point));
        let longer = best.as_ref().is_none_or(|b| point.components().count() >= b.components().count());
        if path.starts_with(&point) && longer {
            best = Some(point);
        }
    }
    best
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> std::ffi::OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsStr::from_bytes(&out).to_os_string()
}

fn owned(raw: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: every caller passes a descriptor just returned by the kernel
    // that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Copies the entries of directory `src` into directory `dst`, recursively,
/// as crun's tmpcopyup does: regular files (contents and extended
/// attributes), directories (extended attributes), symlinks, device nodes,
/// FIFOs and sockets, each with its owner and mode. Hard links become
/// separate copies; times are not kept. `rel` names `src` in errors.
pub fn copy_tree(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &Path) -> Result<(), CopyError> {
    let at = |op: &'static str, name: &OsStr| {
        let path = rel.join(name);
        move |errno| (path, op, errno)
    };
    let mut dir = nix::dir::Dir::openat(
        Some(src.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| (rel.to_path_buf(), "read directory", errno))?;
    let names: Vec<CString> = dir
        .iter()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| name.as_bytes() != b"." && name.as_bytes() != b"..")
        .collect();
    for name in names {
        let os_name = OsStr::from_bytes(name.as_bytes());
        let name = name.as_c_str();
        let stat = fstatat(Some(src.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(at("stat", os_name))?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let perm = Mode::from_bits_truncate(stat.st_mode & 0o7777);
        match kind {
            SFlag::S_IFREG => copy_file(src, dst, name).map_err(at("copy", os_name))?,
            SFlag::S_IFDIR => {
                mkdirat(Some(dst.as_raw_fd()), name, Mode::from_bits_truncate(0o700)).map_err(at("mkdir", os_name))?;
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let from = openat(Some(src.as_raw_fd()), name, flags, Mode::empty()).map_err(at("open", os_name))?;
                let to = openat(Some(dst.as_raw_fd()), name, flags, Mode::empty()).map_err(at("open", os_name))?;
                let (from, to) = (owned(from), owned(to));
                copy_xattrs(from.as_fd(), to.as_fd()).map_err(at("copy extended attributes of", os_name))?;
                copy_tree(from.as_fd(), to.as_fd(), &rel.join(os_name))?;
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(Some(src.as_raw_fd()), name).map_err(at("readlink", os_name))?;
                symlinkat(target.as_os_str(), Some(dst.as_raw_fd()), name).map_err(at("symlink", os_name))?;
            }
            _ => mknodat(Some(dst.as_raw_fd()), name, kind, perm, stat.st_rdev).map_err(at("mknod", os_name))?,
        }
        let (uid, gid) = (Uid::from_raw(stat.st_uid), Gid::from_raw(stat.st_gid));
        fchownat(Some(dst.as_raw_fd()), name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(at("chown", os_name))?;
        // A symlink's own mode means nothing on Linux (and cannot be set);
        // the mode goes last, as chown clears set-id bits.
        if kind != SFlag::S_IFLNK {
            fchmodat(Some(dst.as_raw_fd()), name, perm, FchmodatFlags::NoFollowSymlink)
                .map_err(at("chmod", os_name))?;
        }
    }
    Ok(())
}

fn copy_file(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<(), Errno> {
    let read = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let from = owned(openat(Some(src.as_raw_fd()), name, read, Mode::empty())?);
    let write = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let to = owned(openat(Some(dst.as_raw_fd()), name, write, Mode::from_bits_truncate(0o600))?);
    let (mut from, mut to) = (std::fs::File::from(from), std::fs::File::from(to));
    std::io::copy(&mut from, &mut to).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    copy_xattrs(from.as_fd(), to.as_fd())
}

/// Copies every extended attribute of `src` onto `dst`. One the target
/// filesystem cannot hold (EOPNOTSUPP: user.* on a tmpfs before Linux 6.6)
/// is left behind rather than failing the container.
fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<(), Errno> {
    let names = read_xattr(|buf, len| {
        // SAFETY: `buf` is valid for `len` bytes (or null with len 0, which
        // asks for the size).
        unsafe { libc::flistxattr(src.as_raw_fd(), buf.cast(), len) }
    })?;
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let value = read_xattr(|buf, len| {
            // SAFETY: `name` is NUL-terminated; `buf` is valid for `len` bytes.
            unsafe { libc::fgetxattr(src.as_raw_fd(), name.as_ptr(), buf.cast(), len) }
        })?;
        // SAFETY: `name` is NUL-terminated and `value` valid for its length.
        let ret = unsafe { libc::fsetxattr(dst.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if ret < 0 && Errno::last() != Errno::EOPNOTSUPP {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Calls a list/get-xattr function with a buffer big enough, retrying if
/// the value grew between the size query and the read.
fn read_xattr(call: impl Fn(*mut u8, usize) -> libc::ssize_t) -> Result<Vec<u8>, Errno> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return match Errno::last() {
                Errno::EOPNOTSUPP => Ok(vec![]),
                errno => Err(errno),
            };
        }
        let mut buf = vec![0u8; size.unsigned_abs()];
        let got = call(buf.as_mut_ptr(), buf.len());
        match got {
            n if n >= 0 => {
                buf.truncate(n.unsigned_abs());
                return Ok(buf);
            }
            _ if Errno::last() == Errno::ERANGE => continue,
            _ => return Err(Errno::last()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tote-copy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn open_dir(path: &Path) -> OwnedFd {
        owned(nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap())
    }

    #[test]
    fn a_tree_is_copied_with_modes_symlinks_and_xattrs() {
        let (src, dst) = (scratch("src"), scratch("dst"));
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::write(src.join("file"), "contents").unwrap();
        std::fs::write(src.join("sub/deeper/leaf"), "leaf").unwrap();
        std::fs::set_permissions(src.join("file"), std::fs::Permissions::from_mode(0o4751)).unwrap();
        std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o710)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        nix::unistd::mkfifo(&src.join("pipe"), Mode::from_bits_truncate(0o640)).unwrap();
        let name = CString::new("user.tote").unwrap();
        let path = CString::new(src.join("file").as_os_str().as_bytes()).unwrap();
        // SAFETY: both strings are NUL-terminated; the value is 3 bytes.
        let xattrs = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"yes".as_ptr().cast(), 3, 0) } == 0;

        copy_tree(open_dir(&src).as_fd(), open_dir(&dst).as_fd(), Path::new("")).unwrap();

        assert_eq!(std::fs::read_to_string(dst.join("file")).unwrap(), "contents");
        assert_eq!(std::fs::read_to_string(dst.join("sub/deeper/leaf")).unwrap(), "leaf");
        let mode = |p: &str| std::fs::symlink_metadata(dst.join(p)).unwrap().mode();
        assert_eq!(mode("file") & 0o7777, 0o4751);
        assert_eq!(mode("sub") & 0o7777, 0o710);
        assert_eq!(mode("pipe") & 0o170000, 0o010000);
        assert_eq!(std::fs::read_link(dst.join("link")).unwrap(), Path::new("/etc/passwd"));
        let uid = |p: &Path| std::fs::metadata(p.join("file")).unwrap().uid();
        assert_eq!(uid(&dst), uid(&src));
        if xattrs {
            let path = CString::new(dst.join("file").as_os_str().as_bytes()).unwrap();
            let mut value = [0u8; 8];
            // SAFETY: both strings are NUL-terminated and `value` holds 8 bytes.
            let got = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), 8) };
            assert_eq!(&value[..usize::try_from(got).unwrap()], b"yes");
        }
        std::fs::set_permissions(dst.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&dst);
    }

    #[test]
    fn the_longest_mount_point_holding_a_path_wins() {
        let mountinfo = "22 1 0:21 / / rw - ext4 /dev/vda rw
30 22 0:40 / /var/lib rw - ext4 /dev/vdb rw
31 30 0:41 / /var/lib/tote/overlay/abc/merged rw - overlay overlay rw
32 22 0:42 / /var/lib/tote\\040spaced rw - tmpfs tmpfs rw";
        let find = |p: &str| containing_mount(mountinfo, Path::new(p)).unwrap();
        assert_eq!(find("/var/lib/tote/overlay/abc/merged"), Path::new("/var/lib/tote/overlay/abc/merged"));
        assert_eq!(find("/var/lib/tote/bundles/x/rootfs"), Path::new("/var/lib"));
        // Component by component: /var/library is not under /var/lib.
        assert_eq!(find("/var/library/rootfs"), Path::new("/"));
        assert_eq!(find("/var/lib/tote spaced/rootfs"), Path::new("/var/lib/tote spaced"));
    }
}
