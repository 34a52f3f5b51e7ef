//! `tote cp`: files in and out of a container's root filesystem.
//!
//! The container's processes may change its files while a copy runs, and
//! will if they are hostile: swap a directory being copied for a symlink
//! to the host's `/` (CVE-2018-15664). So no path under the root is ever
//! resolved as a string on the host. The path the user named is resolved
//! by the kernel inside the root (openat2 with `RESOLVE_IN_ROOT`); from
//! that descriptor on, every entry is reached relative to its parent's
//! descriptor and never through a symlink:
//!
//! - out of the container, the tree is walked by directory descriptors
//!   (`openat` with `O_NOFOLLOW`), each file read from the descriptor that
//!   was checked to be a regular file, symlinks archived as symlinks;
//! - into it, the layer applier writes under the destination's
//!   descriptor, where no entry may lead outside (see `unpack`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use super::{Engine, EngineError};
use crate::containers::record::Status;
use crate::unpack::{DevicePolicy, UnpackError, UnpackOptions, WhiteoutStyle};

/// How deep a copied tree may go: each level holds a directory descriptor
/// open, and a container could make a tree deeper than toted has
/// descriptors.
const MAX_DEPTH: usize = 256;

/// A path in a container, resolved inside its root and held open.
pub struct ContainerPath {
    fd: OwnedFd,
    /// The name its archive entry gets.
    name: String,
}

impl Engine {
    /// What `cp CONTAINER:PATH ...` archives: `path` resolved inside the
    /// container's root (a symlink on the way or at the end is followed
    /// there, as the container itself would).
    pub fn copy_source(&self, reference: &str, path: &str) -> Result<ContainerPath, EngineError> {
        let rootfs = self.mounted_rootfs(reference)?;
        let fd = open_in_container(&rootfs, path)?;
        let name = Path::new(path).file_name().map_or_else(|| "root".into(), |n| n.to_string_lossy().into_owned());
        Ok(ContainerPath { fd, name })
    }

    /// Where `cp ... CONTAINER:DIR` extracts: the directory `dir` inside the
    /// container's root. A read-only container takes nothing, as with
    /// docker.
    pub fn copy_destination(&self, reference: &str, dir: &str) -> Result<ContainerPath, EngineError> {
        let entry = self.entry(reference)?;
        if entry.snapshot().settings.read_only {
            return Err(EngineError::Conflict("container rootfs is marked read-only".into()));
        }
        let rootfs = self.mounted_rootfs(reference)?;
        let fd = open_in_container(&rootfs, dir)?;
        let stat = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| EngineError::Internal(format!("stat {dir} in the container: {e}")))?;
        if !is_kind(&stat, SFlag::S_IFDIR) {
            return Err(EngineError::Invalid(format!("copy: {dir} is not a directory in the container")));
        }
        Ok(ContainerPath { fd, name: String::new() })
    }

    fn mounted_rootfs(&self, reference: &str) -> Result<PathBuf, EngineError> {
        let record = self.entry(reference)?.snapshot();
        if record.state.status() == Status::Dead {
            return Err(EngineError::Conflict(format!("container {} is being removed", record.id)));
        }
        let rootfs = self.paths.rootfs(&record.id);
        if !super::is_mountpoint(&rootfs) {
            return Err(EngineError::Conflict(format!("container {reference} has no mounted filesystem")));
        }
        Ok(rootfs)
    }
}

fn open_in_container(rootfs: &Path, path: &str) -> Result<OwnedFd, EngineError> {
    let root = tote_shim::syscall::beneath::open_root(rootfs)
        .map_err(|e| EngineError::Internal(format!("open {}: {e}", rootfs.display())))?;
    tote_shim::syscall::beneath::open_in_root(root.as_fd(), Path::new(path), OFlag::O_PATH)
        .map_err(|e| EngineError::NotFound(format!("Could not find the file {path} in container: {}", e.desc())))
}

/// Writes a tar of `source` (a file, a directory with everything in it, a
/// symlink or a special file) to `out`. Blocking.
pub fn write_archive(source: ContainerPath, out: impl Write) -> io::Result<()> {
    let mut archive = Archiver { tar: tar::Builder::new(out), links: HashMap::new() };
    let stat = nix::sys::stat::fstat(source.fd.as_raw_fd())?;
    let name = PathBuf::from(&source.name);
    if is_kind(&stat, SFlag::S_IFDIR) {
        let dir = reopen(&source.fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        archive.append_dir(&dir, &stat, &name, 0)?;
    } else if is_kind(&stat, SFlag::S_IFREG) {
        let file = reopen(&source.fd, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)?;
        archive.append_open_file(file, &stat, &name)?;
    } else {
        // A special file: its header says all (it is never opened).
        archive.append_special(&stat, &name, None)?;
    }
    archive.tar.finish()?;
    archive.tar.into_inner()?.flush()
}

/// Extracts the tar `input` into `destination` (from
/// [`Engine::copy_destination`]): owned by root, modes and times kept,
/// `.wh.` names as plain files, and a directory never replaced by a file
/// nor the reverse (docker's rules for `cp`). Blocking.
pub fn extract_archive(destination: ContainerPath, input: impl Read) -> Result<(), UnpackError> {
    let options = UnpackOptions {
        whiteouts: WhiteoutStyle::Literal,
        devices: DevicePolicy::Create,
        preserve_owners: false,
        keep_kinds: true,
    };
    crate::unpack::apply_layer_at(input, destination.fd, &options).map(drop)
}

/// A descriptor of what `fd` (an `O_PATH` one) holds, opened for real.
/// Through the magic link of the very inode, so nothing can be swapped in.
fn reopen(fd: &OwnedFd, flags: OFlag) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let raw = nix::fcntl::open(path.as_str(), flags | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn is_kind(stat: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind
}

struct Archiver<W: Write> {
    tar: tar::Builder<W>,
    /// Files with more than one link already archived, by (device, inode):
    /// their later names become hardlink entries, as docker writes them.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Archiver<W> {
    fn header(stat: &FileStat, kind: tar::EntryType) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(stat.st_mode & 0o7777);
        header.set_uid(u64::from(stat.st_uid));
        header.set_gid(u64::from(stat.st_gid));
        header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
        header.set_size(0);
        header
    }

    /// A directory (open for reading) and, depth first, what is in it.
    fn append_dir(&mut self, dir: &OwnedFd, stat: &FileStat, path: &Path, depth: usize) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!("{}: more than {MAX_DEPTH} directories deep", path.display())));
        }
        let mut header = Self::header(stat, tar::EntryType::Directory);
        self.tar.append_data(&mut header, path, io::empty())?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut listing = Dir::from_fd(nix::unistd::dup(dir.as_raw_fd())?)?;
        for entry in listing.iter() {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            self.append_entry(dir.as_raw_fd(), &name, &path.join(OsStr::from_bytes(&name)), depth)?;
        }
        Ok(())
    }

    /// One entry of a directory, looked at without following it. Entries
    /// that vanish or change kind meanwhile (the container is running) are
    /// left out.
    fn append_entry(&mut self, dir: RawFd, name: &[u8], path: &Path, depth: usize) -> io::Result<()> {
        let stat = match nix::sys::stat::fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        match kind {
            SFlag::S_IFDIR => {
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let child = match nix::fcntl::openat(Some(dir), name, flags, Mode::empty()) {
                    // SAFETY: `openat` just returned this descriptor.
                    Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                    // Gone, or swapped for something else (a symlink).
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let stat = nix::sys::stat::fstat(child.as_raw_fd())?;
                self.append_dir(&child, &stat, path, depth + 1)
            }
            SFlag::S_IFREG => {
                let flags =
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
                let file = match nix::fcntl::openat(Some(dir), name, flags, Mode::empty()) {
                    // SAFETY: `openat` just returned this descriptor.
                    Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                    Err(Errno::ENOENT | Errno::ELOOP) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                // What was opened is what counts: a FIFO or device swapped
                // in after the fstatat is not read.
                let stat = nix::sys::stat::fstat(file.as_raw_fd())?;
                if !is_kind(&stat, SFlag::S_IFREG) {
                    return Ok(());
                }
                self.append_open_file(file, &stat, path)
            }
            SFlag::S_IFLNK => {
                let target = match nix::fcntl::readlinkat(Some(dir), name) {
                    Ok(target) => target,
                    Err(Errno::ENOENT | Errno::EINVAL) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let mut header = Self::header(&stat, tar::EntryType::Symlink);
                self.tar.append_link(&mut header, path, Path::new(&target))
            }
            SFlag::S_IFSOCK => Ok(()),
            _ => self.append_special(&stat, path, Some(kind)),
        }
    }

    /// A regular file from its open descriptor: exactly the size its
    /// header gives, whatever the container does to it meanwhile (cut
    /// short, it is padded with zeros; grown, the rest is left out).
    fn append_open_file(&mut self, file: OwnedFd, stat: &FileStat, path: &Path) -> io::Result<()> {
        if stat.st_nlink > 1 {
            let key = (stat.st_dev, stat.st_ino);
            if let Some(first) = self.links.get(&key) {
                let mut header = Self::header(stat, tar::EntryType::Link);
                let first = first.clone();
                return self.tar.append_link(&mut header, path, &first);
            }
            self.links.insert(key, path.to_path_buf());
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let mut header = Self::header(stat, tar::EntryType::Regular);
        header.set_size(size);
        let content = ExactSize { inner: std::fs::File::from(file).take(size), left: size };
        self.tar.append_data(&mut header, path, content)
    }

    /// A FIFO or device node: a header, never opened.
    fn append_special(&mut self, stat: &FileStat, path: &Path, kind: Option<SFlag>) -> io::Result<()> {
        let kind = kind.unwrap_or(SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT);
        let entry = match kind {
            SFlag::S_IFIFO => tar::EntryType::Fifo,
            SFlag::S_IFCHR => tar::EntryType::Char,
            SFlag::S_IFBLK => tar::EntryType::Block,
            _ => return Err(io::Error::other(format!("{}: cannot be archived", path.display()))),
        };
        let mut header = Self::header(stat, entry);
        if matches!(kind, SFlag::S_IFCHR | SFlag::S_IFBLK) {
            header.set_device_major(libc::major(stat.st_rdev))?;
            header.set_device_minor(libc::minor(stat.st_rdev))?;
        }
        self.tar.append_data(&mut header, path, io::empty())
    }
}

/// Reads exactly `left` bytes: the file's, then zeros if it ends early.
struct ExactSize<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let mut n = match self.inner.read(&mut buf[..want]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            other => other?,
        };
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tote-copy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn source(path: &Path, name: &str) -> ContainerPath {
        let fd = tote_shim::syscall::beneath::open_root(path).unwrap();
        ContainerPath { fd, name: name.into() }
    }

    /// (path, kind, link target, content) of every entry.
    fn entries(archive: &[u8]) -> Vec<(String, tar::EntryType, String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in tar::Archive::new(archive).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let link = entry.link_name().unwrap().map(|l| l.display().to_string()).unwrap_or_default();
            let kind = entry.header().entry_type();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, kind, link, data));
        }
        out
    }

    #[test]
    fn a_tree_is_archived_by_descriptors_with_links_as_links() {
        let root = scratch("tree");
        let outside = scratch("outside");
        std::fs::write(outside.join("secret"), "host").unwrap();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/file"), "content").unwrap();
        std::fs::hard_link(root.join("d/file"), root.join("d/e/again")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d/escape")).unwrap();
        nix::unistd::mkfifo(&root.join("d/pipe"), Mode::from_bits_truncate(0o600)).unwrap();
        let mut archive = Vec::new();
        write_archive(source(&root.join("d"), "d"), &mut archive).unwrap();
        let found = entries(&archive);
        let names: Vec<&str> = found.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["d", "d/e", "d/e/again", "d/escape", "d/file", "d/pipe"], "{found:?}");
        let by_name = |name: &str| found.iter().find(|e| e.0 == name).unwrap();
        assert_eq!(by_name("d/e/again").3, b"content");
        assert_eq!((by_name("d/file").1, by_name("d/file").2.as_str()), (tar::EntryType::Link, "d/e/again"));
        assert_eq!(by_name("d/escape").1, tar::EntryType::Symlink);
        assert_eq!(by_name("d/escape").2, outside.display().to_string());
        assert_eq!(by_name("d/pipe").1, tar::EntryType::Fifo, "a FIFO is archived, never read");
        assert!(!found.iter().any(|e| e.0.contains("secret")), "the symlink was followed");
        std::fs::remove_dir_all(root).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn a_single_file_takes_the_name_given() {
        let root = scratch("single");
        std::fs::write(root.join("f"), "one").unwrap();
        let fd = tote_shim::syscall::beneath::open_in_root(
            tote_shim::syscall::beneath::open_root(&root).unwrap().as_fd(),
            Path::new("/f"),
            OFlag::O_PATH,
        )
        .unwrap();
        let mut archive = Vec::new();
        write_archive(ContainerPath { fd, name: "f".into() }, &mut archive).unwrap();
        let found = entries(&archive);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].0.as_str(), found[0].3.as_slice()), ("f", b"one".as_slice()));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_file_cut_short_while_read_is_padded_to_its_header_size() {
        let mut padded = ExactSize { inner: &b"abc"[..], left: 6 };
        let mut out = Vec::new();
        padded.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0\0");
        let mut cut = ExactSize { inner: &b"abcdef"[..], left: 2 };
        let mut out = Vec::new();
        cut.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }

    #[test]
    fn deep_trees_are_refused_not_followed_to_the_descriptor_limit() {
        let root = scratch("deep");
        let mut path = root.join("t");
        for _ in 0..=MAX_DEPTH + 1 {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        let err = write_archive(source(&root.join("t"), "t"), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("directories deep"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
