//! The layer applier: one pass over the archive, every entry created
//! relative to a descriptor of its parent directory.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tar::{Archive, Entry, EntryType};

use super::path::{self, display};
use super::sys;
use super::unpadded::{ContentEnd, Unpadded};
use super::whiteout::{self, Marker, Whiteouts};
use super::{DevicePolicy, LayerStats, UnpackError, UnpackOptions, WhiteoutStyle};

/// File content is copied through a buffer this big.
const COPY_BUFFER: usize = 256 * 1024;
/// The archive is read through a buffer this big (headers come 512 bytes at
/// a time; bigger content reads bypass it).
const ARCHIVE_BUFFER: usize = 64 * 1024;

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Applies one uncompressed layer tar stream into `root`, an existing
/// (usually empty) directory. See the [module documentation](super) for
/// what is written and what is refused.
///
/// Stops at the first bad entry; what was written until then stays in
/// `root` (callers unpack into a scratch directory and discard it). Nothing
/// is fsynced.
pub fn apply_layer<R: Read>(tar: R, root: &Path, opts: &UnpackOptions) -> Result<LayerStats, UnpackError> {
    apply_layer_with(tar, root, opts, false)
}

/// [`apply_layer`], optionally writing [`super::WhiteoutStyle::UserXattr`]
/// whiteouts in their xattr form from the start (as if `mknod` had been
/// refused), so that tests running as root can exercise it.
pub(crate) fn apply_layer_with<R: Read>(
    tar: R,
    root: &Path,
    opts: &UnpackOptions,
    force_xattr_whiteouts: bool,
) -> Result<LayerStats, UnpackError> {
    let root_fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map(sys::owned)
        .map_err(|e| UnpackError::Root { root: root.to_path_buf(), source: e.into() })?;
    apply_into(tar, root_fd, opts, force_xattr_whiteouts)
}

/// [`apply_layer`] into a directory held open (any descriptor of it, an
/// `O_PATH` one will do): nothing is written outside it, whatever happens
/// to the path it was opened by.
pub fn apply_layer_at<R: Read>(tar: R, root: OwnedFd, opts: &UnpackOptions) -> Result<LayerStats, UnpackError> {
    apply_into(tar, root, opts, false)
}

fn apply_into<R: Read>(
    tar: R,
    root_fd: OwnedFd,
    opts: &UnpackOptions,
    force_xattr_whiteouts: bool,
) -> Result<LayerStats, UnpackError> {
    let content_end = ContentEnd::new();
    let mut applier = Applier {
        root: root_fd,
        content_end: content_end.clone(),
        opts,
        whiteouts: Whiteouts::new(opts.whiteouts, force_xattr_whiteouts),
        stats: LayerStats::default(),
        raw: Vec::new(),
        path: Vec::new(),
        link: Vec::new(),
        cache: None,
        xattr_data: Vec::new(),
        xattrs: Vec::new(),
        dirs: Vec::new(),
        dir_paths: Vec::new(),
        buf: vec![0; COPY_BUFFER],
    };
    let mut archive = Archive::new(BufReader::with_capacity(ARCHIVE_BUFFER, Unpadded::new(tar, content_end)));
    let entries = archive.entries().map_err(|source| UnpackError::Archive { after: None, source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Archive { after: applier.last_entry(), source })?;
        applier.apply(&mut entry)?;
    }
    applier.finish_dirs()?;
    // Read on past the end-of-archive blocks to the end of the stream, so a
    // decompressor gets to verify its trailer (gzip's CRC and length).
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|source| UnpackError::Archive { after: applier.last_entry(), source })?;
    Ok(applier.stats)
}

/// An entry's metadata, as it is to be applied.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
}

/// A directory whose mode and times are set once the layer is written.
struct DirMeta {
    path: Range<usize>,
    mode: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
}

/// The parent directory of the previous entry, kept open for the next one.
struct CachedDir {
    path: Vec<u8>,
    fd: OwnedFd,
    /// Cleared when anything is removed from the layer: the path could now
    /// lead elsewhere. (The descriptor stays open until replaced, as the
    /// current entry may still be using it.)
    valid: bool,
}

/// What an entry creates.
#[derive(Debug, Clone, Copy)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Node(SFlag),
}

struct Applier<'o> {
    root: OwnedFd,
    /// Where the current entry's content ends in the stream, for [`Unpadded`].
    content_end: ContentEnd,
    opts: &'o UnpackOptions,
    whiteouts: Whiteouts,
    stats: LayerStats,
    /// The current entry's path as the archive spells it, for messages.
    raw: Vec<u8>,
    /// Its normalized form (see [`path::normalize`]).
    path: Vec<u8>,
    /// A hardlink's normalized target.
    link: Vec<u8>,
    cache: Option<CachedDir>,
    /// The current entry's xattrs: NUL-terminated names and values, back to
    /// back in `xattr_data`; `xattrs` has (name, value) ranges.
    xattr_data: Vec<u8>,
    xattrs: Vec<(Range<usize>, Range<usize>)>,
    dirs: Vec<DirMeta>,
    /// The paths of `dirs`, back to back.
    dir_paths: Vec<u8>,
    buf: Vec<u8>,
}

fn io_error(raw: &[u8], op: &'static str, errno: Errno) -> UnpackError {
    UnpackError::Io { path: display(raw), op, source: errno.into() }
}

fn invalid(raw: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::InvalidHeader { path: display(raw), reason: reason.into() }
}

fn unsafe_path(raw: &[u8], reason: &'static str) -> UnpackError {
    UnpackError::UnsafePath { path: display(raw), reason }
}

/// Whether a component of the (normalized) `parent` is a whiteout name.
fn under_whiteout(parent: &[u8]) -> bool {
    parent.starts_with(whiteout::PREFIX) || parent.windows(5).any(|w| w == b"/.wh.")
}

fn is_type(stat: &nix::sys::stat::FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind
}

/// Parses a PAX time (`-?[0-9]*(.[0-9]*)?`, seconds since the epoch).
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let (negative, value) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (int, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let mut secs: i64 = 0;
    for &digit in int {
        secs = secs.checked_mul(10)?.checked_add(i64::from(digit - b'0'))?;
    }
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |&digit| i64::from(digit - b'0'));
    }
    if negative {
        if nanos > 0 {
            secs = -secs - 1;
            nanos = 1_000_000_000 - nanos;
        } else {
            secs = -secs;
        }
    }
    Some(TimeSpec::new(secs, nanos))
}

impl Applier<'_> {
    fn last_entry(&self) -> Option<String> {
        (self.stats.entries > 0).then(|| display(&self.raw))
    }

    fn apply<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        // A sparse entry's size is its expanded one, not what the stream holds.
        let contiguous = entry.header().entry_type() != EntryType::GNUSparse;
        self.content_end.set(contiguous.then(|| entry.raw_file_position().saturating_add(entry.size())));
        self.raw.clear();
        self.raw.extend_from_slice(&entry.path_bytes());
        if entry.header().entry_type() == EntryType::XGlobalHeader {
            return Ok(());
        }
        // The normalized path is moved out of `self` for the duration, so
        // that parts of it can be borrowed across `&mut self` calls.
        let mut path = std::mem::take(&mut self.path);
        let result = self.apply_at(entry, &mut path);
        self.path = path;
        result
    }

    fn apply_at<R: Read>(&mut self, entry: &mut Entry<'_, R>, path: &mut Vec<u8>) -> Result<(), UnpackError> {
        path::normalize(&self.raw, path).map_err(|reason| unsafe_path(&self.raw, reason))?;
        if path.is_empty() {
            // The layer root itself: its metadata is not the layer's to set.
            return Ok(());
        }
        let (parent, name) = path::split(path);
        if self.opts.whiteouts != WhiteoutStyle::Literal {
            if under_whiteout(parent) {
                // Beneath AUFS metadata (`.wh..wh.plnk/…`) or a whiteout
                // name: nothing there is ever a file.
                return Ok(());
            }
            match whiteout::classify(name) {
                Marker::None => {}
                Marker::Meta => return Ok(()),
                Marker::Opaque => return self.opaque(parent),
                Marker::Whiteout(target) => return self.whiteout(parent, target),
            }
        }

        let header = entry.header();
        let type_flag = header.entry_type();
        let kind = match type_flag {
            // A pre-POSIX regular file named with a trailing slash is a directory.
            EntryType::Regular if header.as_old().linkflag[0] == 0 && self.raw.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char | EntryType::Block => {
                let (flag, what) = if type_flag == EntryType::Char {
                    (SFlag::S_IFCHR, "character")
                } else {
                    (SFlag::S_IFBLK, "block")
                };
                match self.opts.devices {
                    DevicePolicy::Create => Kind::Node(flag),
                    DevicePolicy::Skip => return Ok(()),
                    DevicePolicy::Refuse => {
                        return Err(UnpackError::DeviceRefused { path: display(&self.raw), kind: what });
                    }
                }
            }
            EntryType::Fifo => Kind::Node(SFlag::S_IFIFO),
            other => {
                return Err(UnpackError::Unsupported {
                    path: display(&self.raw),
                    type_flag: char::from(other.as_byte()),
                });
            }
        };

        if let Kind::Hardlink = kind {
            let Some(target) = entry.link_name_bytes() else {
                return Err(invalid(&self.raw, "hardlink without a target"));
            };
            let mut link = std::mem::take(&mut self.link);
            let result = path::normalize(&target, &mut link)
                .map_err(|reason| self.hardlink_error(&target, reason))
                .and_then(|()| self.hardlink(path, parent, name, &target, &link));
            self.link = link;
            return result;
        }

        let meta = self.read_meta(entry)?;
        let dir = self.parent_dir(parent)?;
        match kind {
            Kind::File => self.file(entry, dir, name, &meta),
            Kind::Dir => self.dir(dir, path, name, &meta),
            Kind::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default();
                self.symlink(dir, name, &target, &meta)
            }
            Kind::Node(flag) => {
                let dev = if flag == SFlag::S_IFIFO { 0 } else { self.device_number(entry.header())? };
                self.node(dir, name, flag, dev, &meta)
            }
            Kind::Hardlink => unreachable!("handled above"),
        }
    }

    /// The device number of a character or block device entry. Blank
    /// fields (all NUL or space, as some writers leave them) count as 0,
    /// as Go's archive/tar reads them.
    fn device_number(&self, header: &tar::Header) -> Result<libc::dev_t, UnpackError> {
        let fields = header
            .as_ustar()
            .map(|h| (h.dev_major, h.dev_minor))
            .or(header.as_gnu().map(|h| (h.dev_major, h.dev_minor)));
        let blank = |field: &[u8; 8]| field.iter().all(|&b| b == 0 || b == b' ');
        let (major, minor) = match fields {
            Some((major, minor)) => (
                if blank(&major) { Ok(Some(0)) } else { header.device_major() },
                if blank(&minor) { Ok(Some(0)) } else { header.device_minor() },
            ),
            None => (Ok(None), Ok(None)),
        };
        let major = major.map_err(|e| invalid(&self.raw, format!("device major: {e}")))?.unwrap_or(0);
        let minor = minor.map_err(|e| invalid(&self.raw, format!("device minor: {e}")))?.unwrap_or(0);
        Ok(libc::makedev(major, minor))
    }

    /// Reads the metadata of `entry`, its xattrs into `self.xattrs`.
    fn read_meta<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<Meta, UnpackError> {
        let raw = &self.raw;
        let header = entry.header();
        let mode = header.mode().map_err(|e| invalid(raw, format!("mode: {e}")))? & 0o7777;
        let (mut uid, mut gid) = (0, 0);
        if self.opts.preserve_owners {
            // (u32::MAX would mean "unchanged" to chown.)
            let id = |id: io::Result<u64>, what: &str| {
                let id = id.map_err(|e| invalid(raw, format!("{what}: {e}")))?;
                u32::try_from(id)
                    .ok()
                    .filter(|&id| id != u32::MAX)
                    .ok_or_else(|| invalid(raw, format!("{what} {id} out of range")))
            };
            uid = id(header.uid(), "uid")?;
            gid = id(header.gid(), "gid")?;
        }
        let mtime = header.mtime().map_err(|e| invalid(raw, format!("mtime: {e}")))?;
        let mut mtime = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        let mut atime = None;

        self.xattrs.clear();
        self.xattr_data.clear();
        let extensions = entry.pax_extensions().map_err(|e| invalid(raw, format!("PAX records: {e}")))?;
        for record in extensions.into_iter().flatten() {
            let record = record.map_err(|e| invalid(raw, format!("PAX records: {e}")))?;
            let key = record.key_bytes();
            if let Some(xattr) = key.strip_prefix(XATTR_PREFIX) {
                if xattr.is_empty() || xattr.contains(&0) {
                    return Err(invalid(raw, "PAX xattr record with an empty or NUL-containing name"));
                }
                let start = self.xattr_data.len();
                // Overlayfs' own xattrs are stored escaped, as overlayfs
                // presents them: `trusted.overlay.X` → `trusted.overlay.overlay.X`.
                let escape = [&b"trusted."[..], b"user."]
                    .into_iter()
                    .find(|ns| xattr.strip_prefix(*ns).is_some_and(|rest| rest.starts_with(b"overlay.")));
                if let Some(namespace) = escape {
                    self.xattr_data.extend_from_slice(namespace);
                    self.xattr_data.extend_from_slice(b"overlay.");
                    self.xattr_data.extend_from_slice(&xattr[namespace.len()..]);
                } else {
                    self.xattr_data.extend_from_slice(xattr);
                }
                self.xattr_data.push(0);
                let value_start = self.xattr_data.len();
                self.xattr_data.extend_from_slice(record.value_bytes());
                self.xattrs.push((start..value_start, value_start..self.xattr_data.len()));
            } else if key == b"mtime" {
                mtime = parse_pax_time(record.value_bytes()).ok_or_else(|| invalid(raw, "unreadable PAX mtime"))?;
            } else if key == b"atime" {
                atime = Some(parse_pax_time(record.value_bytes()).ok_or_else(|| invalid(raw, "unreadable PAX atime"))?);
            }
        }
        Ok(Meta { uid, gid, mode, atime: atime.unwrap_or(mtime), mtime })
    }

    /// The directory `parent` (normalized; empty for the root) as a
    /// descriptor, created with its missing ancestors if need be. The
    /// descriptor is valid until the next call.
    fn parent_dir(&mut self, parent: &[u8]) -> Result<RawFd, UnpackError> {
        if parent.is_empty() {
            return Ok(self.root.as_raw_fd());
        }
        if let Some(cache) = &self.cache
            && cache.valid
            && cache.path == parent
        {
            return Ok(cache.fd.as_raw_fd());
        }
        let fd = match sys::open_dir_beneath(self.root.as_raw_fd(), parent) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.make_parents(parent)?,
            Err(e) => return Err(self.parent_error(parent, e)),
        };
        let raw = fd.as_raw_fd();
        match &mut self.cache {
            Some(cache) => {
                cache.path.clear();
                cache.path.extend_from_slice(parent);
                cache.fd = fd;
                cache.valid = true;
            }
            None => self.cache = Some(CachedDir { path: parent.to_vec(), fd, valid: true }),
        }
        Ok(raw)
    }

    fn parent_error(&self, parent: &[u8], errno: Errno) -> UnpackError {
        match errno {
            Errno::EXDEV => UnpackError::OutsideRoot { path: display(&self.raw), parent: display(parent) },
            _ => UnpackError::Parent { path: display(&self.raw), parent: display(parent), source: errno.into() },
        }
    }

    /// Creates the missing directories of `parent` (mode 0755, like docker
    /// and containerd), each beneath the one before.
    fn make_parents(&mut self, parent: &[u8]) -> Result<OwnedFd, UnpackError> {
        let root = self.root.as_raw_fd();
        let mut current: Option<OwnedFd> = None;
        let mut start = 0;
        while start < parent.len() {
            let end = parent[start..].iter().position(|&b| b == b'/').map_or(parent.len(), |i| start + i);
            let prefix = &parent[..end];
            let component = &parent[start..end];
            let fd = match sys::open_dir_beneath(root, prefix) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let at = current.as_ref().map_or(root, AsRawFd::as_raw_fd);
                    let mode = Mode::from_bits_truncate(0o755);
                    match nix::sys::stat::mkdirat(Some(at), component, mode) {
                        // Just created here, so no symlink to follow; the
                        // chmod only undoes the umask.
                        Ok(()) => nix::sys::stat::fchmodat(Some(at), component, mode, FchmodatFlags::FollowSymlink)
                            .map_err(|e| self.parent_error(prefix, e))?,
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.parent_error(prefix, e)),
                    }
                    sys::open_dir_beneath(root, prefix).map_err(|e| self.parent_error(prefix, e))?
                }
                Err(e) => return Err(self.parent_error(prefix, e)),
            };
            current = Some(fd);
            start = end + 1;
        }
        current.ok_or_else(|| self.parent_error(parent, Errno::ENOENT))
    }

    /// Removes what is at `name` in `dir` for an entry to take its place;
    /// with [`UnpackOptions::keep_kinds`], only if both are directories or
    /// neither is.
    fn replace(&mut self, dir: RawFd, name: &[u8], entry_is_dir: bool) -> Result<(), UnpackError> {
        if self.opts.keep_kinds {
            let existing_is_dir = match nix::sys::stat::fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => is_type(&stat, SFlag::S_IFDIR),
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(io_error(&self.raw, "inspecting what is there", e)),
            };
            if existing_is_dir != entry_is_dir {
                let kind = |dir: bool| if dir { "directory" } else { "non-directory" };
                return Err(UnpackError::KindChange {
                    path: display(&self.raw),
                    existing: kind(existing_is_dir),
                    entry: kind(entry_is_dir),
                });
            }
        }
        self.remove(dir, name)
    }

    /// Removes whatever is at `name` in `dir`, all of it.
    fn remove(&mut self, dir: RawFd, name: &[u8]) -> Result<(), UnpackError> {
        match sys::remove_all_at(dir, name) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(io_error(&self.raw, "removing what is there", e)),
        }
        if let Some(cache) = &mut self.cache {
            cache.valid = false;
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: &[u8], target: &[u8]) -> Result<(), UnpackError> {
        if target.is_empty() || target == b"." || target == b".." {
            return Err(unsafe_path(&self.raw, "a whiteout must name a file"));
        }
        let dir = self.parent_dir(parent)?;
        self.remove(dir, target)?;
        self.whiteouts.whiteout(dir, target).map_err(|e| io_error(&self.raw, "creating the whiteout", e))
    }

    fn opaque(&mut self, parent: &[u8]) -> Result<(), UnpackError> {
        let dir = self.parent_dir(parent)?;
        let dir = sys::reopen_dir(dir).map_err(|e| io_error(&self.raw, "opening the opaque directory", e))?;
        self.whiteouts.make_opaque(dir.as_raw_fd()).map_err(|e| io_error(&self.raw, "marking the directory opaque", e))
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        dir: RawFd,
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let mode = Mode::from_bits_truncate(0o600);
        let fd = match sys::open_at(dir, name, flags, mode) {
            Err(Errno::EEXIST) => {
                self.replace(dir, name, false)?;
                sys::open_at(dir, name, flags, mode)
            }
            other => other,
        };
        let mut file = File::from(fd.map_err(|e| io_error(&self.raw, "creating the file", e))?);
        let expected = entry.size();
        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(UnpackError::Data { path: display(&self.raw), source }),
            };
            file.write_all(&self.buf[..n]).map_err(|source| UnpackError::Io {
                path: display(&self.raw),
                op: "writing the file",
                source,
            })?;
            written += n as u64;
        }
        if written != expected {
            return Err(UnpackError::Truncated { path: display(&self.raw), expected, written });
        }
        self.stats.bytes += written;

        // Owner, then xattrs (chown drops security.capability), then mode
        // (chown drops setuid/setgid), then times.
        let fd = file.as_raw_fd();
        if self.opts.preserve_owners {
            nix::unistd::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
                .map_err(|e| io_error(&self.raw, "changing the owner", e))?;
        }
        self.set_xattrs(XattrTarget::Fd(fd))?;
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| io_error(&self.raw, "changing the mode", e))?;
        nix::sys::stat::futimens(fd, &meta.atime, &meta.mtime).map_err(|e| io_error(&self.raw, "setting the times", e))
    }

    fn dir(&mut self, dir: RawFd, path: &[u8], name: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        // Owner-only until the end: the mode and times come last.
        let mode = Mode::from_bits_truncate(0o700);
        let mut replaced_whiteout = false;
        match nix::sys::stat::mkdirat(Some(dir), name, mode) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let stat = nix::sys::stat::fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io_error(&self.raw, "inspecting what is there", e))?;
                // A directory merges with the one there; anything else goes.
                if !is_type(&stat, SFlag::S_IFDIR) {
                    replaced_whiteout = self.whiteouts.is_whiteout(dir, name, &stat);
                    self.replace(dir, name, true)?;
                    nix::sys::stat::mkdirat(Some(dir), name, mode)
                        .map_err(|e| io_error(&self.raw, "creating the directory", e))?;
                }
            }
            Err(e) => return Err(io_error(&self.raw, "creating the directory", e)),
        }
        if self.opts.preserve_owners {
            let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
            nix::unistd::fchownat(Some(dir), name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io_error(&self.raw, "changing the owner", e))?;
        }
        if !self.xattrs.is_empty() || replaced_whiteout {
            let fd = sys::open_at(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                .map_err(|e| io_error(&self.raw, "opening the directory", e))?;
            self.set_xattrs(XattrTarget::Fd(fd.as_raw_fd()))?;
            if replaced_whiteout {
                // Deleted and created again in one layer: what the layers
                // below had there stays hidden.
                self.whiteouts
                    .make_opaque(fd.as_raw_fd())
                    .map_err(|e| io_error(&self.raw, "marking the directory opaque", e))?;
            }
        }
        let start = self.dir_paths.len();
        self.dir_paths.extend_from_slice(path);
        self.dirs.push(DirMeta {
            path: start..self.dir_paths.len(),
            mode: meta.mode,
            atime: meta.atime,
            mtime: meta.mtime,
        });
        Ok(())
    }

    fn symlink(&mut self, dir: RawFd, name: &[u8], target: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        if target.is_empty() {
            return Err(invalid(&self.raw, "symlink with an empty target"));
        }
        if target.contains(&0) {
            return Err(invalid(&self.raw, "symlink target contains a NUL byte"));
        }
        let created = match nix::unistd::symlinkat(target, Some(dir), name) {
            Err(Errno::EEXIST) => {
                self.replace(dir, name, false)?;
                nix::unistd::symlinkat(target, Some(dir), name)
            }
            other => other,
        };
        created.map_err(|e| io_error(&self.raw, "creating the symlink", e))?;
        self.node_meta(dir, name, meta, false)
    }

    fn node(&mut self, dir: RawFd, name: &[u8], kind: SFlag, dev: libc::dev_t, meta: &Meta) -> Result<(), UnpackError> {
        let mode = Mode::from_bits_truncate(0o600);
        let created = match nix::sys::stat::mknodat(Some(dir), name, kind, mode, dev) {
            Err(Errno::EEXIST) => {
                self.replace(dir, name, false)?;
                nix::sys::stat::mknodat(Some(dir), name, kind, mode, dev)
            }
            other => other,
        };
        created.map_err(|e| io_error(&self.raw, "creating the node", e))?;
        self.node_meta(dir, name, meta, true)
    }

    /// Metadata of an entry that is not opened (symlink, device, fifo):
    /// applied to `name` in `dir` without following it.
    fn node_meta(&mut self, dir: RawFd, name: &[u8], meta: &Meta, chmod: bool) -> Result<(), UnpackError> {
        if self.opts.preserve_owners {
            let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
            nix::unistd::fchownat(Some(dir), name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io_error(&self.raw, "changing the owner", e))?;
        }
        self.set_xattrs(XattrTarget::At(dir, name))?;
        if chmod {
            // A device or fifo this entry just created: not a symlink, so
            // following is moot (Linux cannot chmod without following).
            nix::sys::stat::fchmodat(
                Some(dir),
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_error(&self.raw, "changing the mode", e))?;
        }
        nix::sys::stat::utimensat(Some(dir), name, &meta.atime, &meta.mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| io_error(&self.raw, "setting the times", e))
    }

    /// Sets the current entry's xattrs. Ones the filesystem does not
    /// support are skipped, as are `user.*` ones on nodes other than files
    /// and directories (which Linux refuses); any other failure is an error.
    fn set_xattrs(&self, target: XattrTarget<'_>) -> Result<(), UnpackError> {
        for (name, value) in &self.xattrs {
            let name = CStr::from_bytes_with_nul(&self.xattr_data[name.clone()])
                .map_err(|_| invalid(&self.raw, "xattr name contains a NUL byte"))?;
            let value = &self.xattr_data[value.clone()];
            let result = match target {
                XattrTarget::Fd(fd) => sys::fsetxattr(fd, name, value),
                XattrTarget::At(dir, entry) => sys::lsetxattr_at(dir, entry, name, value),
            };
            let user_on_node = matches!(target, XattrTarget::At(..));
            match result {
                Ok(()) | Err(Errno::EOPNOTSUPP) => {}
                Err(Errno::EPERM) if user_on_node && name.to_bytes().starts_with(b"user.") => {}
                Err(e) => {
                    return Err(UnpackError::Xattr {
                        path: display(&self.raw),
                        xattr: name.to_string_lossy().into_owned(),
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn hardlink_error(&self, target: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Hardlink { path: display(&self.raw), target: display(target), reason: reason.into() }
    }

    /// Links `path` to `target` (normalized in `link`; `raw_target` as the
    /// archive spells it). The target must exist in the layer, is resolved
    /// beneath the root like any parent, and a symlink there is linked
    /// itself, never followed.
    fn hardlink(
        &mut self,
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        raw_target: &[u8],
        link: &[u8],
    ) -> Result<(), UnpackError> {
        if link.is_empty() {
            return Err(self.hardlink_error(raw_target, "the target is the layer root"));
        }
        if link == path {
            return Err(self.hardlink_error(raw_target, "the entry links to itself"));
        }
        let (target_parent, target_name) = path::split(link);
        let target_dir: Option<OwnedFd> = if target_parent.is_empty() || target_parent == parent {
            None
        } else {
            match sys::open_dir_beneath(self.root.as_raw_fd(), target_parent) {
                Ok(fd) => Some(fd),
                Err(Errno::EXDEV) => {
                    return Err(
                        self.hardlink_error(raw_target, "the target leads outside the layer (through a symlink)")
                    );
                }
                Err(Errno::ENOENT) => return Err(self.hardlink_error(raw_target, "the target does not exist")),
                Err(e) => return Err(self.hardlink_error(raw_target, format!("the target's directory: {e}"))),
            }
        };
        let dir = self.parent_dir(parent)?;
        let target_dir = match &target_dir {
            Some(fd) => fd.as_raw_fd(),
            None if target_parent.is_empty() => self.root.as_raw_fd(),
            None => dir,
        };
        let link_at = || nix::unistd::linkat(Some(target_dir), target_name, Some(dir), name, AtFlags::empty());
        let linked = match link_at() {
            Err(Errno::EEXIST) => {
                self.replace(dir, name, false)?;
                link_at()
            }
            other => other,
        };
        match linked {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => {
                Err(self.hardlink_error(raw_target, "the target does not exist (it must come earlier in the layer)"))
            }
            Err(Errno::EPERM) => Err(self.hardlink_error(raw_target, "the target cannot be hardlinked (a directory?)")),
            Err(e) => Err(self.hardlink_error(raw_target, e.desc())),
        }
    }

    /// Gives the directories of the layer their modes and times, now that
    /// nothing is created in them any more. Directories removed or replaced
    /// by later entries are passed over.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        let paths = std::mem::take(&mut self.dir_paths);
        let root = self.root.as_raw_fd();
        let mut parent_fd: Option<(Range<usize>, OwnedFd)> = None;
        for dir in &dirs {
            let path = &paths[dir.path.clone()];
            let (parent, name) = path::split(path);
            let at = if parent.is_empty() {
                root
            } else {
                let cached = parent_fd.as_ref().filter(|(range, _)| &paths[range.clone()] == parent);
                match cached {
                    Some((_, fd)) => fd.as_raw_fd(),
                    None => match sys::open_dir_beneath(root, parent) {
                        Ok(fd) => {
                            let at = fd.as_raw_fd();
                            parent_fd = Some((dir.path.start..dir.path.start + parent.len(), fd));
                            at
                        }
                        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::EXDEV | Errno::ELOOP) => continue,
                        Err(e) => return Err(io_error(path, "opening the directory to set its mode", e)),
                    },
                }
            };
            let fd = match sys::open_at(at, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(io_error(path, "opening the directory to set its mode", e)),
            };
            nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(dir.mode))
                .map_err(|e| io_error(path, "changing the mode", e))?;
            nix::sys::stat::futimens(fd.as_raw_fd(), &dir.atime, &dir.mtime)
                .map_err(|e| io_error(path, "setting the times", e))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    /// An open file or directory.
    Fd(RawFd),
    /// A name in a directory, not followed.
    At(RawFd, &'a [u8]),
}
