//! Which overlay mounts a rootless toted's container roots, and
//! fuse-overlayfs for where the kernel cannot.
//!
//! A rootless toted mounts the kernel's overlayfs with `userxattr` (Linux
//! 5.11+) on the data root's filesystem, which must take `user.*` xattrs
//! (tmpfs only since 6.6; overlayfs itself not). Whether it can is tried at
//! each start ([`probe_kernel`]: an overlay of empty directories mounted
//! and unmounted at once) and never remembered, since a kernel or the data
//! root's filesystem may change between two starts. Where it cannot,
//! fuse-overlayfs (Debian's package) mounts them instead ([`mount`]).
//! `[storage] rootless_overlay` forces either.
//!
//! fuse-overlayfs runs as toted's child in toted's user and mount
//! namespaces, where it mounts FUSE with mount(2) as the namespace's root
//! (adding `allow_other` and `default_permissions` itself, as it does for
//! root, so containers' other users get the kernel's permission checks).
//! It daemonizes once the mount is in place (libfuse's `fuse_daemonize`:
//! fork, `setsid`, standard streams on /dev/null), so its exit status says
//! whether the mount worked, and the process that serves the mount is in a
//! session of its own: it outlives a toted stopped or killed (the
//! containers' roots keep serving for the next toted to restore). It exits
//! when its mount goes: unmounting (as [`crate::snapshots::unmount`] does)
//! ends the FUSE connection and with it the process.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::RootlessOverlay;
use crate::snapshots::{self, OverlayDriver, SnapshotError, WritableSnapshot};

/// The program, looked for on PATH.
pub const PROGRAM: &str = "fuse-overlayfs";
/// The device fuse-overlayfs opens.
pub const FUSE_DEVICE: &str = "/dev/fuse";

#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    #[error(
        "[storage] rootless_overlay = \"kernel\", but the kernel cannot mount overlayfs with userxattr on the \
         filesystem of {dir}: {source} (Linux 5.11+ and a filesystem with user xattrs are needed; \
         rootless_overlay = \"fuse-overlayfs\" or \"auto\" uses fuse-overlayfs instead)"
    )]
    KernelCannot {
        dir: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error("{PROGRAM} is not on PATH ({path}), and {why}: install Debian's fuse-overlayfs package")]
    NotInstalled { path: String, why: String },
    #[error("a trial overlay mount in {dir}: {source}")]
    Probe {
        dir: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error(
        "{PROGRAM} ({why}) needs {FUSE_DEVICE} readable and writable by this user: {source} (give it mode \
         0666, as udev does)"
    )]
    NoFuseDevice {
        why: String,
        #[source]
        source: std::io::Error,
    },
}

/// What [`choose`] asks of the host; a seam for tests.
pub trait Host {
    /// Mounts and unmounts an overlay with `userxattr` of empty
    /// directories on the data root's filesystem.
    fn kernel_overlay(&self) -> Result<(), SnapshotError>;
    /// fuse-overlayfs on PATH.
    fn find_fuse_overlayfs(&self) -> Option<PathBuf>;
    /// The PATH searched, for the error.
    fn path(&self) -> String;
    /// Opens /dev/fuse for reading and writing, as fuse-overlayfs will.
    fn open_fuse_device(&self) -> std::io::Result<()>;
}

/// The real host: probes under `snapshots` (the snapshot root).
pub struct RealHost<'a> {
    pub snapshots: &'a Path,
}

impl Host for RealHost<'_> {
    fn kernel_overlay(&self) -> Result<(), SnapshotError> {
        probe_kernel(self.snapshots)
    }

    fn find_fuse_overlayfs(&self) -> Option<PathBuf> {
        find_on_path(std::env::var_os("PATH").as_deref())
    }

    fn path(&self) -> String {
        std::env::var("PATH").unwrap_or_default()
    }

    fn open_fuse_device(&self) -> std::io::Result<()> {
        std::fs::OpenOptions::new().read(true).write(true).open(FUSE_DEVICE).map(drop)
    }
}

/// The overlay a rootless toted uses, and why (for its log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub driver: OverlayDriver,
    pub why: String,
}

/// Decides as `[storage] rootless_overlay` says (see
/// [`RootlessOverlay`]); `dir` is where the trial mount is made, for
/// messages.
pub fn choose(setting: RootlessOverlay, dir: &Path, host: &dyn Host) -> Result<Choice, ChoiceError> {
    let fuse = |why: String| -> Result<Choice, ChoiceError> {
        let Some(program) = host.find_fuse_overlayfs() else {
            return Err(ChoiceError::NotInstalled { path: host.path(), why });
        };
        host.open_fuse_device().map_err(|source| ChoiceError::NoFuseDevice { why: why.clone(), source })?;
        Ok(Choice { driver: OverlayDriver::Fuse(program), why })
    };
    match setting {
        RootlessOverlay::FuseOverlayfs => fuse("[storage] rootless_overlay = \"fuse-overlayfs\" asks for it".into()),
        RootlessOverlay::Kernel => match host.kernel_overlay() {
            Ok(()) => {
                Ok(Choice { driver: OverlayDriver::Kernel, why: "[storage] rootless_overlay = \"kernel\"".into() })
            }
            Err(source @ SnapshotError::Io { .. }) => Err(ChoiceError::Probe { dir: dir.to_path_buf(), source }),
            Err(source) => Err(ChoiceError::KernelCannot { dir: dir.to_path_buf(), source }),
        },
        RootlessOverlay::Auto => match host.kernel_overlay() {
            Ok(()) => Ok(Choice {
                driver: OverlayDriver::Kernel,
                why: format!("the kernel mounts overlayfs with userxattr on the filesystem of {}", dir.display()),
            }),
            // Not the kernel's refusal: a data root toted cannot write.
            Err(source @ SnapshotError::Io { .. }) => Err(ChoiceError::Probe { dir: dir.to_path_buf(), source }),
            Err(refused) => fuse(format!(
                "the kernel cannot mount overlayfs with userxattr on the filesystem of {} ({refused})",
                dir.display()
            )),
        },
    }
}

/// `fuse-overlayfs` in a directory of `path` (a PATH value), executable.
pub fn find_on_path(path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(PROGRAM))
        .find(|file| std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Mounts an overlay with `userxattr` of empty directories made under
/// `snapshots` and unmounts it at once; the directories go either way.
/// Named `tmp-*`, so that one a crash left is removed when the snapshot
/// root is opened.
pub fn probe_kernel(snapshots: &Path) -> Result<(), SnapshotError> {
    let dir = snapshots.join(format!("tmp-overlay-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let snapshot = WritableSnapshot {
        key: "overlay-probe".into(),
        lowers: vec![dir.join("lower")],
        upper: dir.join("upper"),
        work: dir.join("work"),
        userxattr: true,
        driver: OverlayDriver::Kernel,
    };
    let target = dir.join("merged");
    for d in [&snapshot.lowers[0], &snapshot.upper, &snapshot.work, &target] {
        std::fs::create_dir_all(d).map_err(|source| SnapshotError::Io { op: "create", path: d.clone(), source })?;
    }
    // The kernel mounts an overlay on an upper without user xattrs all
    // the same (it only warns), but then can mark no opaque directory, nor
    // could the unpacker: that is a filesystem it cannot use either.
    let mounted = user_xattr(&snapshot.upper)
        .map_err(|errno| SnapshotError::Mount { target: snapshot.upper.clone(), step: "set a user.* xattr", errno })
        .and_then(|()| snapshots::mount(&snapshot, &target))
        .and_then(|()| {
            // Mounted read-only (overlayfs does so when it cannot make its
            // work directory) is no use either.
            let file = target.join("probe");
            let written = std::fs::write(&file, b"").and_then(|()| std::fs::remove_file(&file));
            let unmounted = snapshots::unmount(&target);
            written.map_err(|e| SnapshotError::Mount {
                target: target.clone(),
                step: "write through the overlay",
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
            unmounted
        });
    let removed = std::fs::remove_dir_all(&dir).map_err(|source| SnapshotError::Io { op: "remove", path: dir, source });
    mounted.and(removed)
}

/// Sets and removes a `user.*` xattr on `dir`.
fn user_xattr(dir: &Path) -> Result<(), nix::errno::Errno> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let name = c"user.tote.probe";
    // SAFETY: the path and the name are NUL-terminated, the value is one
    // readable byte; all outlive the call, which only reads them.
    if unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) } != 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: as above; removexattr reads the two strings only.
    if unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) } != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// fuse-overlayfs's `-o` value for `snapshot`. Its options are split at
/// commas and its layers at colons: a path with either cannot be given.
fn options(snapshot: &WritableSnapshot) -> Result<String, String> {
    let mut paths = Vec::with_capacity(snapshot.lowers.len() + 2);
    for path in snapshot.lowers.iter().chain([&snapshot.upper, &snapshot.work]) {
        let text = path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
        if text.contains([',', ':']) {
            return Err(format!("{text} has a comma or a colon, which fuse-overlayfs options cannot carry"));
        }
        paths.push(text);
    }
    let (upper, work) = (paths[paths.len() - 2], paths[paths.len() - 1]);
    let lowers = paths[..paths.len() - 2].join(":");
    Ok(format!("lowerdir={lowers},upperdir={upper},workdir={work}"))
}

/// Mounts `snapshot` at `target` with fuse-overlayfs (`program`); returns
/// once the mount is in place.
pub fn mount(program: &Path, snapshot: &WritableSnapshot, target: &Path) -> Result<(), SnapshotError> {
    let fail = |problem: String| SnapshotError::Fuse { target: target.to_path_buf(), problem };
    let options = options(snapshot).map_err(fail)?;
    let output = Command::new(program)
        .arg("-o")
        .arg(&options)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| fail(format!("run {}: {e}", program.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!("{} -o {options} failed ({}): {}", program.display(), output.status, stderr.trim())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    struct FakeHost {
        kernel: fn() -> Result<(), SnapshotError>,
        installed: bool,
        device: bool,
    }

    impl Host for FakeHost {
        fn kernel_overlay(&self) -> Result<(), SnapshotError> {
            (self.kernel)()
        }
        fn find_fuse_overlayfs(&self) -> Option<PathBuf> {
            self.installed.then(|| PathBuf::from("/usr/bin/fuse-overlayfs"))
        }
        fn path(&self) -> String {
            "/usr/local/bin:/bin".into()
        }
        fn open_fuse_device(&self) -> std::io::Result<()> {
            if self.device { Ok(()) } else { Err(std::io::Error::from_raw_os_error(libc::EACCES)) }
        }
    }

    fn able() -> Result<(), SnapshotError> {
        Ok(())
    }

    fn refused() -> Result<(), SnapshotError> {
        Err(SnapshotError::Mount { target: "/d/merged".into(), step: "userxattr", errno: Errno::EINVAL })
    }

    fn unwritable() -> Result<(), SnapshotError> {
        Err(SnapshotError::Io { op: "create", path: "/d/lower".into(), source: std::io::Error::from_raw_os_error(13) })
    }

    fn fuse() -> OverlayDriver {
        OverlayDriver::Fuse("/usr/bin/fuse-overlayfs".into())
    }

    fn host(kernel: fn() -> Result<(), SnapshotError>, installed: bool) -> FakeHost {
        FakeHost { kernel, installed, device: true }
    }

    const DIR: &str = "/home/a/.local/share/tote/snapshots";

    #[test]
    fn auto_takes_the_kernel_when_it_can_else_fuse_overlayfs() {
        let dir = Path::new(DIR);
        assert_eq!(choose(RootlessOverlay::Auto, dir, &host(able, true)).unwrap().driver, OverlayDriver::Kernel);
        assert_eq!(choose(RootlessOverlay::Auto, dir, &host(able, false)).unwrap().driver, OverlayDriver::Kernel);
        let chosen = choose(RootlessOverlay::Auto, dir, &host(refused, true)).unwrap();
        assert_eq!(chosen.driver, fuse());
        assert!(chosen.why.contains(DIR) && chosen.why.contains("EINVAL"), "the log says why: {}", chosen.why);
    }

    #[test]
    fn a_kernel_that_cannot_and_no_fuse_overlayfs_names_the_package_and_the_probes_error() {
        let err = choose(RootlessOverlay::Auto, Path::new(DIR), &host(refused, false)).unwrap_err().to_string();
        for needle in ["fuse-overlayfs is not on PATH (/usr/local/bin:/bin)", "Debian's fuse-overlayfs", "EINVAL", DIR]
        {
            assert!(err.contains(needle), "{needle:?} missing: {err}");
        }
    }

    #[test]
    fn a_forced_choice_is_kept_or_refused_clearly() {
        let dir = Path::new(DIR);
        // Forced fuse-overlayfs: even where the kernel could; not probed.
        assert_eq!(choose(RootlessOverlay::FuseOverlayfs, dir, &host(able, true)).unwrap().driver, fuse());
        let err = choose(RootlessOverlay::FuseOverlayfs, dir, &host(able, false)).unwrap_err().to_string();
        assert!(err.contains("rootless_overlay = \"fuse-overlayfs\"") && err.contains("Debian's"), "{err}");
        // Forced kernel: never fuse-overlayfs.
        assert_eq!(choose(RootlessOverlay::Kernel, dir, &host(able, true)).unwrap().driver, OverlayDriver::Kernel);
        let err = choose(RootlessOverlay::Kernel, dir, &host(refused, true)).unwrap_err();
        assert!(matches!(err, ChoiceError::KernelCannot { .. }), "{err}");
        assert!(err.to_string().contains("EINVAL") && err.to_string().contains(DIR), "{err}");
    }

    #[test]
    fn an_unwritable_data_root_is_no_reason_for_fuse_overlayfs() {
        for setting in [RootlessOverlay::Auto, RootlessOverlay::Kernel] {
            let err = choose(setting, Path::new(DIR), &host(unwritable, true)).unwrap_err();
            assert!(matches!(err, ChoiceError::Probe { .. }), "{setting}: {err}");
            assert!(err.to_string().contains("/d/lower"), "{err}");
        }
    }

    #[test]
    fn an_unusable_dev_fuse_is_named() {
        let no_device = FakeHost { kernel: refused, installed: true, device: false };
        let err = choose(RootlessOverlay::Auto, Path::new(DIR), &no_device).unwrap_err().to_string();
        assert!(err.contains("/dev/fuse") && err.contains("0666") && err.contains("Permission denied"), "{err}");
    }

    #[test]
    fn fuse_overlayfs_is_found_on_path_only_as_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("tote-fuse-path-{}", std::process::id()));
        let (empty, plain, bin) = (base.join("empty"), base.join("plain"), base.join("bin"));
        for d in [&empty, &plain, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(plain.join(PROGRAM), "").unwrap(); // not executable
        std::fs::create_dir_all(empty.join(PROGRAM).join("x")).unwrap(); // a directory
        std::fs::write(bin.join(PROGRAM), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join(PROGRAM), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&empty, &plain, &bin]).unwrap();
        assert_eq!(find_on_path(Some(&path)), Some(bin.join(PROGRAM)));
        let without = std::env::join_paths([&empty, &plain]).unwrap();
        assert_eq!(find_on_path(Some(&without)), None);
        assert_eq!(find_on_path(None), None);
        assert_eq!(find_on_path(Some(OsStr::new("relative/bin"))), None, "a relative PATH entry is skipped");
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// The real trial, as root: able on the temp dir's filesystem (ext4 or
    /// tmpfs 6.6+), not on a ramfs (no user xattrs), and nothing left.
    #[test]
    fn the_trial_mount_tells_a_filesystem_without_user_xattrs() {
        assert!(nix::unistd::geteuid().is_root(), "the trial mount needs root: run the daemon's tests as root");
        let base = std::env::temp_dir().join(format!("tote-overlay-probe-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let thread_base = base.clone();
        std::thread::spawn(move || {
            // SAFETY: unshare takes no pointers; it moves this thread into
            // a mount namespace of its own, where the ramfs goes with it.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0, "{}", std::io::Error::last_os_error());
            use nix::mount::MsFlags;
            nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .unwrap();
            probe_kernel(&thread_base).unwrap();
            assert_eq!(std::fs::read_dir(&thread_base).unwrap().count(), 0, "the trial's directories are gone");
            let ramfs = thread_base.join("ramfs");
            std::fs::create_dir(&ramfs).unwrap();
            nix::mount::mount(Some("ramfs"), &ramfs, Some("ramfs"), MsFlags::empty(), None::<&str>).unwrap();
            let err = probe_kernel(&ramfs).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Mount { step: "set a user.* xattr", errno: Errno::EOPNOTSUPP, .. }),
                "{err}"
            );
            assert_eq!(std::fs::read_dir(&ramfs).unwrap().count(), 0, "the trial's directories are gone");
            nix::mount::umount(&ramfs).unwrap();
        })
        .join()
        .unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn options_list_layers_top_first_and_refuse_separators() {
        let mut snapshot = WritableSnapshot {
            key: "k".into(),
            lowers: vec!["/s/2/fs".into(), "/s/1/fs".into()],
            upper: "/s/rw-k/fs".into(),
            work: "/s/rw-k/work".into(),
            userxattr: true,
            driver: fuse(),
        };
        assert_eq!(options(&snapshot).unwrap(), "lowerdir=/s/2/fs:/s/1/fs,upperdir=/s/rw-k/fs,workdir=/s/rw-k/work");
        snapshot.upper = "/s/a,b/fs".into();
        assert!(options(&snapshot).unwrap_err().contains("/s/a,b/fs"));
        snapshot.upper = "/s/rw-k/fs".into();
        snapshot.lowers[1] = "/s/x:y".into();
        assert!(options(&snapshot).unwrap_err().contains("/s/x:y"));
    }
}
