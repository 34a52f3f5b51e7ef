//! OCI mount options (`"ro"`, `"nosuid"`, `"rbind"`, `"rslave"`, `"rro"`,
//! `"mode=755"`, ...) turned into mount(2) flags, propagation changes,
//! mount_setattr(2) attributes and filesystem data.

use nix::mount::MsFlags;

/// mount_setattr(2) attribute bits (linux/mount.h).
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// MS_NOSYMFOLLOW (Linux 5.10), which nix does not name.
const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(256);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2) itself.
    pub flags: MsFlags,
    /// Propagation changes applied after mounting, each its own mount(2).
    pub propagation: Vec<MsFlags>,
    /// Recursive attributes (`rro`, `rnosuid`, ...) set and cleared with
    /// mount_setattr(2) on the whole tree.
    pub attr_set: u64,
    pub attr_clear: u64,
    /// Everything else, handed to the filesystem as comma-separated data.
    pub data: Vec<String>,
    /// `tmpcopyup` (podman's, crun's): a tmpfs starts with a copy of what
    /// the rootfs has at its mount point.
    pub copy_up: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("mount option {0:?} is not supported by tote-shim yet")]
    Unsupported(String),
}

enum Effect {
    Set(MsFlags),
    Clear(MsFlags),
    Propagation(MsFlags),
    Attr { set: u64, clear: u64 },
    CopyUp,
    Unsupported,
}

fn effect(option: &str) -> Option<Effect> {
    use Effect::*;
    let rec = MsFlags::MS_REC;
    Some(match option {
        "defaults" => Set(MsFlags::empty()),
        "ro" => Set(MsFlags::MS_RDONLY),
        "rw" => Clear(MsFlags::MS_RDONLY),
        "nosuid" => Set(MsFlags::MS_NOSUID),
        "suid" => Clear(MsFlags::MS_NOSUID),
        "nodev" => Set(MsFlags::MS_NODEV),
        "dev" => Clear(MsFlags::MS_NODEV),
        "noexec" => Set(MsFlags::MS_NOEXEC),
        "exec" => Clear(MsFlags::MS_NOEXEC),
        "sync" => Set(MsFlags::MS_SYNCHRONOUS),
        "async" => Clear(MsFlags::MS_SYNCHRONOUS),
        "dirsync" => Set(MsFlags::MS_DIRSYNC),
        "remount" => Set(MsFlags::MS_REMOUNT),
        "mand" => Set(MsFlags::MS_MANDLOCK),
        "nomand" => Clear(MsFlags::MS_MANDLOCK),
        "noatime" => Set(MsFlags::MS_NOATIME),
        "atime" => Clear(MsFlags::MS_NOATIME),
        "nodiratime" => Set(MsFlags::MS_NODIRATIME),
        "diratime" => Clear(MsFlags::MS_NODIRATIME),
        "relatime" => Set(MsFlags::MS_RELATIME),
        "norelatime" => Clear(MsFlags::MS_RELATIME),
        "strictatime" => Set(MsFlags::MS_STRICTATIME),
        "nostrictatime" => Clear(MsFlags::MS_STRICTATIME),
        "nosymfollow" => Set(MS_NOSYMFOLLOW),
        "symfollow" => Clear(MS_NOSYMFOLLOW),
        "bind" => Set(MsFlags::MS_BIND),
        "rbind" => Set(MsFlags::MS_BIND | rec),
        "private" => Propagation(MsFlags::MS_PRIVATE),
        "rprivate" => Propagation(MsFlags::MS_PRIVATE | rec),
        "shared" => Propagation(MsFlags::MS_SHARED),
        "rshared" => Propagation(MsFlags::MS_SHARED | rec),
        "slave" => Propagation(MsFlags::MS_SLAVE),
        "rslave" => Propagation(MsFlags::MS_SLAVE | rec),
        "unbindable" => Propagation(MsFlags::MS_UNBINDABLE),
        "runbindable" => Propagation(MsFlags::MS_UNBINDABLE | rec),
        "rro" => Attr { set: MOUNT_ATTR_RDONLY, clear: 0 },
        "rrw" => Attr { set: 0, clear: MOUNT_ATTR_RDONLY },
        "rnosuid" => Attr { set: MOUNT_ATTR_NOSUID, clear: 0 },
        "rsuid" => Attr { set: 0, clear: MOUNT_ATTR_NOSUID },
        "rnodev" => Attr { set: MOUNT_ATTR_NODEV, clear: 0 },
        "rdev" => Attr { set: 0, clear: MOUNT_ATTR_NODEV },
        "rnoexec" => Attr { set: MOUNT_ATTR_NOEXEC, clear: 0 },
        "rexec" => Attr { set: 0, clear: MOUNT_ATTR_NOEXEC },
        "rnodiratime" => Attr { set: MOUNT_ATTR_NODIRATIME, clear: 0 },
        "rdiratime" => Attr { set: 0, clear: MOUNT_ATTR_NODIRATIME },
        "rrelatime" => Attr { set: MOUNT_ATTR_RELATIME, clear: MOUNT_ATTR_ATIME_MASK },
        "rnoatime" => Attr { set: MOUNT_ATTR_NOATIME, clear: MOUNT_ATTR_ATIME_MASK },
        "rstrictatime" => Attr { set: MOUNT_ATTR_STRICTATIME, clear: MOUNT_ATTR_ATIME_MASK },
        // runc's negations of the atime modes. The kernel has one atime
        // mode per mount, so undoing any of them is its default, relatime.
        "ratime" | "rnorelatime" | "rnostrictatime" => Attr { set: MOUNT_ATTR_RELATIME, clear: MOUNT_ATTR_ATIME_MASK },
        "rnosymfollow" => Attr { set: MOUNT_ATTR_NOSYMFOLLOW, clear: 0 },
        "rsymfollow" => Attr { set: 0, clear: MOUNT_ATTR_NOSYMFOLLOW },
        "tmpcopyup" => CopyUp,
        // Id-mapped mounts need machinery tote-shim does not have yet;
        // refusing is better than mounting something else.
        "idmap" | "ridmap" => Unsupported,
        _ => return None,
    })
}

/// Whether `option` is one tote-shim applies itself (rather than one it
/// would pass to the filesystem as mount data).
pub fn is_known(option: &str) -> bool {
    matches!(effect(option), Some(Effect::Set(_) | Effect::Clear(_) | Effect::Propagation(_) | Effect::Attr { .. }))
}

impl Default for MountOptions {
    fn default() -> Self {
        Self { flags: MsFlags::empty(), propagation: vec![], attr_set: 0, attr_clear: 0, data: vec![], copy_up: false }
    }
}

impl MountOptions {
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Result<Self, OptionError> {
        let mut parsed = Self::default();
        for option in options {
            let option = option.as_ref();
            match effect(option) {
                Some(Effect::Set(flags)) => parsed.flags |= flags,
                Some(Effect::Clear(flags)) => parsed.flags -= flags,
                Some(Effect::Propagation(flags)) => parsed.propagation.push(flags),
                Some(Effect::Attr { set, clear }) => {
                    // The atime bits are one field: setting one needs the
                    // whole field in attr_clr, so only the others cancel.
                    parsed.attr_clear = (parsed.attr_clear & !(set & !MOUNT_ATTR_ATIME_MASK)) | clear;
                    parsed.attr_set = (parsed.attr_set & !clear) | set;
                }
                Some(Effect::CopyUp) => parsed.copy_up = true,
                Some(Effect::Unsupported) => return Err(OptionError::Unsupported(option.to_string())),
                None => parsed.data.push(option.to_string()),
            }
        }
        Ok(parsed)
    }

    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// The data argument of mount(2), if any.
    pub fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }

    /// Flags that a bind mount only honours on a second, remount pass.
    pub fn remount_flags(&self) -> MsFlags {
        self.flags - MsFlags::MS_BIND - MsFlags::MS_REC - MsFlags::MS_REMOUNT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_propagation_and_data_are_separated() {
        let o = MountOptions::parse(&["nosuid", "noexec", "nodev", "mode=755", "size=65536k", "rslave"]).unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV);
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data().as_deref(), Some("mode=755,size=65536k"));
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = MountOptions::parse(&["ro", "rw"]).unwrap();
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn rbind_ro_needs_a_remount_pass() {
        let o = MountOptions::parse(&["rbind", "ro", "nosuid"]).unwrap();
        assert!(o.is_bind());
        assert_eq!(o.remount_flags(), MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
    }

    #[test]
    fn recursive_attributes_go_to_mount_setattr() {
        let o = MountOptions::parse(&["rbind", "rro", "rnoatime"]).unwrap();
        assert_eq!(o.attr_set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME);
        assert_eq!(o.attr_clear, MOUNT_ATTR_ATIME_MASK);
    }

    #[test]
    fn runcs_atime_negations_undo_the_mode_before_them() {
        for undo in ["ratime", "rnorelatime", "rnostrictatime"] {
            assert!(is_known(undo), "{undo}");
            let o = MountOptions::parse(&["rbind", "rnoatime", undo]).unwrap();
            assert_eq!((o.attr_set, o.attr_clear), (MOUNT_ATTR_RELATIME, MOUNT_ATTR_ATIME_MASK), "{undo}");
            assert!(o.data().is_none(), "{undo} went to the filesystem");
        }
    }

    #[test]
    fn tmpcopyup_is_an_instruction_not_filesystem_data() {
        let o = MountOptions::parse(&["tmpcopyup", "mode=755"]).unwrap();
        assert!(o.copy_up);
        assert_eq!(o.data().as_deref(), Some("mode=755"));
    }

    #[test]
    fn unsupported_options_are_refused_not_dropped() {
        assert_eq!(MountOptions::parse(&["bind", "idmap"]).unwrap_err(), OptionError::Unsupported("idmap".into()));
    }
}
