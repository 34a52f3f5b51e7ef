//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) turned into the overlayfs
//! form of [`WhiteoutStyle`].

use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::WhiteoutStyle;
use super::sys;

/// Prefix of an OCI whiteout name.
pub(crate) const PREFIX: &[u8] = b".wh.";
/// Prefix of AUFS metadata names; ignored, except for the opaque marker.
const META_PREFIX: &[u8] = b".wh..wh.";
/// The OCI opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

const TRUSTED_OPAQUE: &CStr = c"trusted.overlay.opaque";
const USER_OPAQUE: &CStr = c"user.overlay.opaque";
const USER_WHITEOUT: &CStr = c"user.overlay.whiteout";

/// What the last component of an entry path says about whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker<'a> {
    /// An ordinary name.
    None,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Whiteout(&'a [u8]),
    /// Another `.wh..wh.` name: AUFS metadata, ignored.
    Meta,
}

pub(crate) fn classify(name: &[u8]) -> Marker<'_> {
    if name == OPAQUE_MARKER {
        Marker::Opaque
    } else if name.starts_with(META_PREFIX) {
        Marker::Meta
    } else if let Some(target) = name.strip_prefix(PREFIX) {
        Marker::Whiteout(target)
    } else {
        Marker::None
    }
}

/// Whiteouts and opaque markers of one layer.
///
/// The xattr form keeps no bookkeeping of its own: a directory's
/// `user.overlay.opaque` says it all (`y`: opaque, no whiteouts needed in
/// it; `x`: holds xattr whiteouts), however the directory was reached.
pub(crate) struct Whiteouts {
    style: WhiteoutStyle,
    /// `mknod` of the 0:0 device was refused: whiteouts are xattr-marked
    /// empty files from now on (only ever with [`WhiteoutStyle::UserXattr`]).
    xattr_form: bool,
    /// The same for [`WhiteoutStyle::FuseOverlayfs`]: whiteouts are
    /// `.wh.NAME` files from now on.
    oci_names: bool,
}

impl Whiteouts {
    pub(crate) fn new(style: WhiteoutStyle, force_fallback: bool) -> Self {
        Self {
            style,
            xattr_form: force_fallback && style == WhiteoutStyle::UserXattr,
            oci_names: force_fallback && style == WhiteoutStyle::FuseOverlayfs,
        }
    }

    fn opaque_xattr(&self) -> &'static CStr {
        match self.style {
            // (Literal writes no markers; it never gets here.)
            WhiteoutStyle::Trusted | WhiteoutStyle::Literal => TRUSTED_OPAQUE,
            WhiteoutStyle::UserXattr | WhiteoutStyle::FuseOverlayfs => USER_OPAQUE,
        }
    }

    /// Writes a whiteout named `name` into `dir` (an `O_PATH` descriptor of
    /// a directory), where nothing may exist any more.
    pub(crate) fn whiteout(&mut self, dir: RawFd, name: &[u8]) -> nix::Result<()> {
        if !self.xattr_form && !self.oci_names {
            match nix::sys::stat::mknodat(Some(dir), name, SFlag::S_IFCHR, Mode::empty(), 0) {
                Ok(()) => return Ok(()),
                Err(Errno::EPERM | Errno::EOPNOTSUPP) if self.style == WhiteoutStyle::UserXattr => {
                    self.xattr_form = true;
                }
                Err(Errno::EPERM | Errno::EOPNOTSUPP) if self.style == WhiteoutStyle::FuseOverlayfs => {
                    self.oci_names = true;
                }
                Err(e) => return Err(e),
            }
        }
        if self.oci_names {
            return oci_marker(dir, &[PREFIX, name].concat());
        }
        let marked = sys::reopen_dir(dir)?;
        let mark = opaque_mark(marked.as_raw_fd())?;
        if mark == Some(b'y') {
            // An opaque directory hides everything below it already, and
            // overlayfs does not look for xattr whiteouts in it.
            return Ok(());
        }
        // Writable by its owner: setting a user.* xattr needs write access.
        let mode = Mode::from_bits_truncate(0o600);
        let file = sys::open_at(dir, name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, mode)?;
        sys::fsetxattr(file.as_raw_fd(), USER_WHITEOUT, b"y")?;
        if mark != Some(b'x') {
            // overlayfs only checks entries for `overlay.whiteout` in
            // directories marked `overlay.opaque=x`.
            sys::fsetxattr(marked.as_raw_fd(), USER_OPAQUE, b"x")?;
        }
        Ok(())
    }

    /// Makes a directory opaque; `dir` is a descriptor of it opened for
    /// reading.
    pub(crate) fn make_opaque(&mut self, dir: RawFd) -> nix::Result<()> {
        if self.style == WhiteoutStyle::FuseOverlayfs {
            return match sys::fsetxattr(dir, USER_OPAQUE, b"y") {
                // A filesystem without user xattrs: the marker file, which
                // fuse-overlayfs looks for where it finds no xattr. (1.10
                // hides the lower entries from a listing of such a
                // directory, but not always from a lookup by name once its
                // parent, holding a whiteout, was listed: the xattr is
                // the one form it honours throughout.)
                Err(Errno::EOPNOTSUPP) => oci_marker(dir, OPAQUE_MARKER),
                done => done,
            };
        }
        let had_xwhiteouts = self.style == WhiteoutStyle::UserXattr && opaque_mark(dir)? == Some(b'x');
        sys::fsetxattr(dir, self.opaque_xattr(), b"y")?;
        if had_xwhiteouts {
            // `opaque=y` replaces the `x` mark, so overlayfs would show the
            // xattr whiteouts in here as files: they go, being useless now.
            let mut names = Vec::new();
            let mut entries = Dir::from(sys::reopen_dir(dir)?)?;
            for entry in entries.iter() {
                let entry = entry?;
                if matches!(entry.file_type(), Some(Type::File) | None) {
                    names.push(entry.file_name().to_owned());
                }
            }
            for name in names {
                if is_xattr_whiteout(dir, name.to_bytes()) {
                    match nix::unistd::unlinkat(Some(dir), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the existing entry `name` in `dir`, whose `lstat` is `stat`,
    /// is a whiteout this layer wrote.
    pub(crate) fn is_whiteout(&self, dir: RawFd, name: &[u8], stat: &FileStat) -> bool {
        if self.style == WhiteoutStyle::Literal {
            return false;
        }
        match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFCHR => stat.st_rdev == 0,
            SFlag::S_IFREG => self.xattr_form && stat.st_size == 0 && is_xattr_whiteout(dir, name),
            _ => false,
        }
    }
}

/// An empty file named `name` in `dir` (any descriptor of it): an OCI
/// marker kept as it is, for fuse-overlayfs. One already there (a layer
/// naming the same whiteout twice) will do.
fn oci_marker(dir: RawFd, name: &[u8]) -> nix::Result<()> {
    match sys::open_at(dir, name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, Mode::from_bits_truncate(0o600)) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The first byte of the directory's `user.overlay.opaque`, if it has one.
fn opaque_mark(dir: RawFd) -> nix::Result<Option<u8>> {
    let mut value = [0u8; 1];
    match sys::fgetxattr(dir, USER_OPAQUE, &mut value) {
        Ok(0) => Ok(Some(0)),
        Ok(_) => Ok(Some(value[0])),
        Err(Errno::ENODATA) => Ok(None),
        // A longer value is nothing we wrote.
        Err(Errno::ERANGE) => Ok(Some(0)),
        Err(e) => Err(e),
    }
}

/// Whether `name` in `dir` is an empty regular file marked as a whiteout.
fn is_xattr_whiteout(dir: RawFd, name: &[u8]) -> bool {
    let Ok(stat) = nix::sys::stat::fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return false;
    };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG || stat.st_size != 0 {
        return false;
    }
    let mut value = [0u8; 1];
    sys::lgetxattr_at(dir, name, USER_WHITEOUT, &mut value).is_ok()
}
