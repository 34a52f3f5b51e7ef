//! Path resolution inside a container's root, done by the kernel:
//! openat2(2) with RESOLVE_IN_ROOT treats the root as "/" for every
//! component, so no symlink or ".." in an image can lead outside it, and
//! magic links are refused outright.
//!
//! Written here rather than taken from pathrs (which libcgroups uses):
//! pathrs re-verifies procfs on each operation, about 50 µs per mount
//! target, and a container start resolves some forty of them. Inside a
//! fresh mount namespace that nothing else can enter yet, the kernel's own
//! guarantee is the one that matters.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstring(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn openat2(dir: BorrowedFd<'_>, path: &Path, flags: OFlag, mode: u32, resolve: u64) -> Result<OwnedFd, Errno> {
    let path = cstring(path)?;
    let how =
        OpenHow { flags: u64::from((flags | OFlag::O_CLOEXEC).bits().unsigned_abs()), mode: u64::from(mode), resolve };
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a properly sized
        // open_how; both outlive the call. The result is a new descriptor.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                size_of::<OpenHow>(),
            )
        };
        match ret {
            -1 if Errno::last() == Errno::EAGAIN || Errno::last() == Errno::EINTR => continue,
            -1 => return Err(Errno::last()),
            // SAFETY: openat2 returned a descriptor we now own.
            fd => return Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(|_| Errno::EBADF)?) }),
        }
    }
}

/// The path relative to the root, without leading "/" or "." components.
fn relative(path: &Path) -> &Path {
    let mut rel = path;
    while let Ok(rest) = rel.strip_prefix("/").or_else(|_| rel.strip_prefix(".")) {
        if rest == rel {
            break;
        }
        rel = rest;
    }
    rel
}

/// Opens the root directory itself.
pub fn open_root(root: &Path) -> Result<OwnedFd, Errno> {
    let raw = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens `path` inside `root`, following symlinks only within it.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    let rel = relative(path);
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    openat2(root, rel, flags, 0, libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS)
}

/// Splits `path` into its parent and a final plain name. Refuses `..` and
/// the root itself, which have no name to create.
fn parent_and_name(path: &Path) -> Result<(&Path, &std::ffi::OsStr), Errno> {
    let rel = relative(path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Errno::EINVAL);
    }
    let name = rel.file_name().ok_or(Errno::EINVAL)?;
    Ok((rel.parent().unwrap_or(Path::new("")), name))
}

/// How many symlinks a creation may pass through, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: u32 = 40;

/// The directory `path` inside `root`, created (with its parents, mode
/// 0755) where missing; like `mkdir -p`, but never outside the root. A
/// symlink on the way is followed within the root, as the kernel would,
/// so a mount target under a dangling `/var/run -> /run` lands in `/run`.
pub fn ensure_dir(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    ensure_dir_within(root, path, MAX_SYMLINKS)
}

fn ensure_dir_within(root: BorrowedFd<'_>, path: &Path, links_left: u32) -> Result<OwnedFd, Errno> {
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match open_in_root(root, path, dir_flags) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let (parent_path, name) = parent_and_name(path)?;
    let parent = ensure_dir_within(root, parent_path, links_left)?;
    let cname = cstring(Path::new(name))?;
    // SAFETY: `cname` is NUL-terminated; mkdirat touches only the filesystem.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o755) } < 0 && Errno::last() != Errno::EEXIST {
        return Err(Errno::last());
    }
    // Opened without following anything: a symlink found here (there
    // before, or swapped in) is resolved below, inside the root.
    let nofollow = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH;
    match openat2(parent.as_fd_ref(), Path::new(name), dir_flags | OFlag::O_NOFOLLOW, 0, nofollow) {
        Err(Errno::ELOOP | Errno::ENOTDIR) if links_left > 0 => {
            let target = nix::fcntl::readlinkat(Some(parent.as_raw_fd()), name).map_err(|_| Errno::ENOTDIR)?;
            let next = lexically_within_root(&real_path_in_root(root, &parent)?, Path::new(&target));
            ensure_dir_within(root, &next, links_left - 1)
        }
        other => other,
    }
}

/// Where `dir` is, inside the root: the kernel's name for it relative to
/// the root's own, so it has no symlinks left to resolve.
fn real_path_in_root(root: BorrowedFd<'_>, dir: &OwnedFd) -> Result<std::path::PathBuf, Errno> {
    let name = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|_| Errno::ENOENT);
    let (root_path, dir_path) = (name(root.as_raw_fd())?, name(dir.as_raw_fd())?);
    Ok(Path::new("/").join(dir_path.strip_prefix(&root_path).map_err(|_| Errno::EXDEV)?))
}

/// `base` joined with a symlink `target`, with `.` and `..` applied by
/// hand and `..` stopping at the root; correct because `base` has no
/// symlinks in it.
fn lexically_within_root(base: &Path, target: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::from("/");
    let start = if target.is_absolute() { Path::new("/") } else { base };
    for component in start.components().chain(target.components()) {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The directory holding `path` (created if missing) and the final name.
pub fn parent_dir<'p>(root: BorrowedFd<'_>, path: &'p Path) -> Result<(OwnedFd, &'p std::ffi::OsStr), Errno> {
    let (parent, name) = parent_and_name(path)?;
    Ok((ensure_dir(root, parent)?, name))
}

/// The regular file `path` inside `root`, created empty (mode 0644) if missing.
pub fn ensure_file(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    match open_in_root(root, path, OFlag::O_PATH) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let (parent, name) = parent_dir(root, path)?;
    let flags = OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_RDONLY;
    openat2(parent.as_fd_ref(), Path::new(name), flags, 0o644, libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH)
}

/// Borrowing an owned descriptor without the `AsFd` import at every call.
trait AsFdRef {
    fn as_fd_ref(&self) -> BorrowedFd<'_>;
}

impl AsFdRef for OwnedFd {
    fn as_fd_ref(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tote-beneath-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn directories_are_created_inside_the_root() {
        let root = scratch("mkdir");
        let fd = open_root(&root).unwrap();
        ensure_dir(fd.as_fd(), Path::new("/a/b/c")).unwrap();
        assert!(root.join("a/b/c").is_dir());
        // Existing ones are simply opened.
        ensure_dir(fd.as_fd(), Path::new("a/b")).unwrap();
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn symlinks_resolve_within_the_root() {
        let root = scratch("symlink");
        let outside = scratch("outside");
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        let fd = open_root(&root).unwrap();
        ensure_dir(fd.as_fd(), Path::new("/escape/made")).unwrap();
        assert!(!outside.join("made").exists(), "created outside the root");
        assert!(root.join(outside.strip_prefix("/").unwrap()).join("made").is_dir());
        ensure_file(fd.as_fd(), Path::new("/up/file")).unwrap();
        assert!(root.join("file").is_file(), "`..` left the root");
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn magic_links_are_refused() {
        let root = scratch("magic");
        std::os::unix::fs::symlink("/proc/self/root", root.join("hostroot")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        let fd = open_root(&root).unwrap();
        // Within the root, /proc/self/root is just a missing path.
        assert_eq!(open_in_root(fd.as_fd(), Path::new("hostroot/etc"), OFlag::O_PATH).unwrap_err(), Errno::ENOENT);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn relative_symlinks_are_followed_when_creating() {
        let root = scratch("relative");
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("../run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("var/deep")).unwrap();
        let fd = open_root(&root).unwrap();
        ensure_dir(fd.as_fd(), Path::new("/var/run/lock")).unwrap();
        assert!(root.join("run/lock").is_dir());
        ensure_dir(fd.as_fd(), Path::new("/var/deep/top")).unwrap();
        assert!(root.join("top").is_dir(), "`..` in a symlink left the root");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_symlink_loop_ends_in_an_error() {
        let root = scratch("loop");
        std::os::unix::fs::symlink("b", root.join("a")).unwrap();
        std::os::unix::fs::symlink("a", root.join("b")).unwrap();
        let fd = open_root(&root).unwrap();
        assert!(ensure_dir(fd.as_fd(), Path::new("/a/x")).is_err());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn symlink_targets_are_joined_within_the_root() {
        assert_eq!(lexically_within_root(Path::new("/var"), Path::new("../run")), Path::new("/run"));
        assert_eq!(lexically_within_root(Path::new("/var"), Path::new("/etc/x")), Path::new("/etc/x"));
        assert_eq!(lexically_within_root(Path::new("/a"), Path::new("../../../x")), Path::new("/x"));
    }

    #[test]
    fn dot_dot_names_cannot_be_created() {
        assert_eq!(parent_and_name(Path::new("a/../b")).unwrap_err(), Errno::EINVAL);
        assert_eq!(parent_and_name(Path::new("/")).unwrap_err(), Errno::EINVAL);
        assert_eq!(parent_and_name(Path::new("/dev/null")).unwrap(), (Path::new("dev"), std::ffi::OsStr::new("null")));
    }
}
