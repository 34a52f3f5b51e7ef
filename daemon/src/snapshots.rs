//! Overlayfs snapshots: one read-only directory per unpacked layer, keyed by
//! chain id and shared by every image that has that layer stack, and one
//! writable snapshot per container (its own upper and work directories
//! over the chain).
//!
//! Layers are unpacked into `tmp-*` directories and renamed to their
//! numeric id only when complete and verified; leftovers of a crash are
//! deleted on open, so nothing half-unpacked ever looks complete. Ids are
//! short numbers so that even a very long chain fits in one mount.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

use crate::digest::Digest;
use crate::metadata::{Metadata, MetadataError, SnapshotRecord};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("no snapshot for chain {0}")]
    Missing(Digest),
    #[error("mount overlayfs on {target}: {step}: {errno}")]
    Mount { target: PathBuf, step: &'static str, errno: Errno },
    #[error("{layers} layers do not fit in one overlayfs mount on this kernel (no lowerdir+ support)")]
    TooManyLayers { layers: usize },
    #[error("mount fuse-overlayfs on {target}: {problem}")]
    Fuse { target: PathBuf, problem: String },
    #[error(
        "mount {target}: a container in a user namespace of its own needs idmapped layers, which only the \
         kernel's overlayfs takes, and this toted uses fuse-overlayfs"
    )]
    IdmapOnFuse { target: PathBuf },
}

/// What mounts containers' roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OverlayDriver {
    /// The kernel's overlayfs (with `userxattr` when rootless).
    #[default]
    Kernel,
    /// fuse-overlayfs, this program (see [`crate::fuse_overlay`]).
    Fuse(PathBuf),
}

impl OverlayDriver {
    /// Its name for `tote info`'s "Storage Driver".
    pub fn name(&self) -> &'static str {
        match self {
            OverlayDriver::Kernel => "overlayfs",
            OverlayDriver::Fuse(_) => "fuse-overlayfs",
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

pub struct Snapshotter {
    root: PathBuf,
    meta: Arc<Metadata>,
    userxattr: bool,
    driver: OverlayDriver,
}

/// A layer directory being unpacked; removed unless committed.
#[derive(Debug)]
pub struct TempLayer {
    dir: PathBuf,
    committed: bool,
}

impl TempLayer {
    /// Where to unpack the layer.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for TempLayer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A container's writable snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritableSnapshot {
    pub key: String,
    /// Top-most first, as overlayfs wants them.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Mounted with `userxattr`: overlayfs reads and writes
    /// `user.overlay.*` (the layers were unpacked so), as it must in a user
    /// namespace, where `trusted.*` xattrs are out of reach.
    pub userxattr: bool,
    pub driver: OverlayDriver,
}

impl Snapshotter {
    pub fn open(root: &Path, meta: Arc<Metadata>) -> Result<Self, SnapshotError> {
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        for entry in std::fs::read_dir(root).map_err(io("read", root))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Self { root: root.to_path_buf(), meta, userxattr: false, driver: OverlayDriver::Kernel })
    }

    /// Whether containers' overlay mounts take `userxattr`.
    pub fn with_userxattr(mut self, userxattr: bool) -> Self {
        self.userxattr = userxattr;
        self
    }

    /// What mounts containers' roots.
    pub fn with_driver(mut self, driver: OverlayDriver) -> Self {
        self.driver = driver;
        self
    }

    pub fn driver(&self) -> &OverlayDriver {
        &self.driver
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layer_dir(&self, snapshot: &SnapshotRecord) -> PathBuf {
        self.root.join(snapshot.id.to_string()).join("fs")
    }

    pub fn get(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>, SnapshotError> {
        let record = self.meta.snapshot(chain_id)?;
        // A record whose directory is gone is no snapshot.
        Ok(record.filter(|r| self.layer_dir(r).is_dir()))
    }

    /// A fresh directory to unpack one layer into.
    pub fn begin_layer(&self) -> Result<TempLayer, SnapshotError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join(format!("tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let fs = dir.join("fs");
        std::fs::create_dir_all(&fs).map_err(io("create", &fs))?;
        Ok(TempLayer { dir, committed: false })
    }

    /// Makes an unpacked layer a snapshot: syncs it to disk, gives it its
    /// id and records it. If another pull committed the same chain first,
    /// this copy is dropped and that one returned.
    pub fn commit_layer(
        &self,
        mut temp: TempLayer,
        chain_id: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
        size: u64,
    ) -> Result<SnapshotRecord, SnapshotError> {
        if let Some(existing) = self.get(chain_id)? {
            return Ok(existing);
        }
        syncfs(&temp.dir)?;
        let id = self.meta.next_id("snapshot")?;
        let dest = self.root.join(id.to_string());
        std::fs::rename(&temp.dir, &dest).map_err(io("rename", &dest))?;
        temp.committed = true;
        let record =
            SnapshotRecord { chain_id: chain_id.clone(), parent: parent.cloned(), id, diff_id: diff_id.clone(), size };
        self.meta.put_snapshot(&record)?;
        Ok(record)
    }

    /// The layer directories of a chain, top-most first.
    pub fn lowers(&self, top: &Digest) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut dirs = Vec::new();
        let mut next = Some(top.clone());
        while let Some(chain_id) = next {
            let record = self.get(&chain_id)?.ok_or(SnapshotError::Missing(chain_id))?;
            dirs.push(self.layer_dir(&record));
            next = record.parent;
        }
        Ok(dirs)
    }

    /// Deletes a layer snapshot (its files, then its record).
    pub fn remove(&self, chain_id: &Digest) -> Result<(), SnapshotError> {
        if let Some(record) = self.meta.snapshot(chain_id)? {
            let dir = self.root.join(record.id.to_string());
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &dir)(e)),
                _ => {}
            }
            self.meta.remove_snapshot(chain_id)?;
        }
        Ok(())
    }

    /// Creates a container's writable snapshot over the chain `top`
    /// (no chain: an empty root).
    pub fn prepare_writable(&self, key: &str, top: Option<&Digest>) -> Result<WritableSnapshot, SnapshotError> {
        let dir = self.writable_dir(key);
        let (upper, work) = (dir.join("fs"), dir.join("work"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
        }
        let lowers = match top {
            Some(top) => self.lowers(top)?,
            None => {
                // overlayfs needs a lower layer: an empty image gets an empty one.
                let empty = dir.join("empty");
                std::fs::create_dir_all(&empty).map_err(io("create", &empty))?;
                vec![empty]
            }
        };
        Ok(WritableSnapshot {
            key: key.to_string(),
            lowers,
            upper,
            work,
            userxattr: self.userxattr,
            driver: self.driver.clone(),
        })
    }

    fn writable_dir(&self, key: &str) -> PathBuf {
        self.root.join(format!("rw-{key}"))
    }

    pub fn remove_writable(&self, key: &str) -> Result<(), SnapshotError> {
        let dir = self.writable_dir(key);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// Bytes a container wrote into its writable snapshot (`system df`).
    pub fn writable_size(&self, key: &str) -> u64 {
        crate::usage::content_size(&self.writable_dir(key).join("fs"))
    }

    /// Bytes on disk under the snapshot root.
    pub fn disk_usage(&self) -> u64 {
        disk_usage(&self.root)
    }
}

/// Flushes the filesystem holding `path`, once for a whole layer rather
/// than a fsync per file.
fn syncfs(path: &Path) -> Result<(), SnapshotError> {
    let dir = std::fs::File::open(path).map_err(io("open", path))?;
    // SAFETY: syncfs only takes a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } < 0 {
        return Err(io("syncfs", path)(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| disk_usage(&e.path())).sum::<u64>()
}

fn cstr(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Mounts the snapshot at `target` with the new mount API, adding layers
/// one by one with `lowerdir+` so a long chain never hits the one-page
/// limit of mount(2)'s data; kernels without it get a classic mount.
pub fn mount(snapshot: &WritableSnapshot, target: &Path) -> Result<(), SnapshotError> {
    if let OverlayDriver::Fuse(program) = &snapshot.driver {
        return crate::fuse_overlay::mount(program, snapshot, target);
    }
    let err = |step| move |errno| SnapshotError::Mount { target: target.to_path_buf(), step, errno };
    match mount_with_fsconfig(snapshot, target) {
        Err((_, Errno::EINVAL | Errno::ENOSYS)) => mount_classic(snapshot, target),
        Err((step, errno)) => Err(err(step)(errno)),
        Ok(()) => Ok(()),
    }
}

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &Path) -> Result<(), Errno> {
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    let value = cstr(value)?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), libc::FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn mount_with_fsconfig(snapshot: &WritableSnapshot, target: &Path) -> Result<(), (&'static str, Errno)> {
    // SAFETY: the fs type is a NUL-terminated string; the result is a new descriptor.
    let raw = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) };
    if raw < 0 {
        return Err(("fsopen", Errno::last()));
    }
    // SAFETY: fsopen returned a descriptor we now own.
    let fs = unsafe { OwnedFd::from_raw_fd(i32::try_from(raw).map_err(|_| ("fsopen", Errno::EBADF))?) };
    for lower in &snapshot.lowers {
        fsconfig_string(&fs, "lowerdir+", lower).map_err(|e| ("lowerdir+", e))?;
    }
    fsconfig_string(&fs, "upperdir", &snapshot.upper).map_err(|e| ("upperdir", e))?;
    fsconfig_string(&fs, "workdir", &snapshot.work).map_err(|e| ("workdir", e))?;
    if snapshot.userxattr {
        // SAFETY: the key is a NUL-terminated string; a flag takes no value.
        let ret = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), libc::FSCONFIG_SET_FLAG, c"userxattr".as_ptr(), 0, 0)
        };
        if ret < 0 {
            return Err(("userxattr", Errno::last()));
        }
    }
    // SAFETY: FSCONFIG_CMD_CREATE takes no pointers.
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), libc::FSCONFIG_CMD_CREATE, 0, 0, 0) } < 0 {
        return Err(("create", Errno::last()));
    }
    // SAFETY: fsmount takes the fs context descriptor and flags only.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, 0) };
    if mnt < 0 {
        return Err(("fsmount", Errno::last()));
    }
    // SAFETY: fsmount returned a descriptor we now own.
    let mnt = unsafe { OwnedFd::from_raw_fd(i32::try_from(mnt).map_err(|_| ("fsmount", Errno::EBADF))?) };
    let target_c = cstr(target).map_err(|e| ("target", e))?;
    // SAFETY: the empty path and the target are NUL-terminated strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(("move_mount", Errno::last()));
    }
    Ok(())
}

fn mount_classic(snapshot: &WritableSnapshot, target: &Path) -> Result<(), SnapshotError> {
    let lowers: Vec<String> = snapshot.lowers.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}{}",
        lowers.join(":"),
        snapshot.upper.display(),
        snapshot.work.display(),
        if snapshot.userxattr { ",userxattr" } else { "" }
    );
    if data.len() >= 4096 {
        return Err(SnapshotError::TooManyLayers { layers: lowers.len() });
    }
    nix::mount::mount(Some("overlay"), target, Some("overlay"), nix::mount::MsFlags::empty(), Some(data.as_str()))
        .map_err(|errno| SnapshotError::Mount { target: target.to_path_buf(), step: "mount", errno })
}

/// How a container in its own user namespace sees its root: every lower
/// layer through an idmapped mount (Linux 5.19+ overlayfs takes idmapped
/// layers; the overlay mount itself cannot be idmapped), so a file the
/// image owns as uid N is the namespace's uid N, and the upper directory
/// owned by the namespace's root, where the container's writes land with
/// their host ids.
#[derive(Debug, Clone)]
pub struct Idmap {
    /// The user namespace's pinned file.
    pub userns: PathBuf,
    /// The host ids of the namespace's root.
    pub root_uid: u32,
    pub root_gid: u32,
}

/// A detached copy of the mount at `path`, idmapped through `userns`.
fn idmapped_tree(path: &Path, userns: &std::fs::File) -> Result<OwnedFd, (&'static str, Errno)> {
    use tote_shim::syscall::mount_api::{MOUNT_ATTR_IDMAP, MountAttr, mount_setattr, open_tree};
    let path_c = cstr(path).map_err(|e| ("idmap layer path", e))?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    let tree = open_tree(&path_c, flags).map_err(|e| ("open_tree", e))?;
    let userns_fd = u64::try_from(userns.as_raw_fd()).map_err(|_| ("mount_setattr", Errno::EBADF))?;
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, userns_fd, ..MountAttr::default() };
    mount_setattr(tree.as_raw_fd(), c"", libc::AT_EMPTY_PATH, &attr).map_err(|e| ("mount_setattr idmap", e))?;
    Ok(tree)
}

/// Mounts the snapshot at `target` as seen from the user namespace of
/// `idmap` (see [`Idmap`]). The idmapped layers are detached trees that
/// overlayfs reaches through `/proc/self/fd`; it holds them once mounted,
/// so their descriptors close when this returns.
pub fn mount_idmapped(snapshot: &WritableSnapshot, target: &Path, idmap: &Idmap) -> Result<(), SnapshotError> {
    let err = |step| move |errno| SnapshotError::Mount { target: target.to_path_buf(), step, errno };
    if let OverlayDriver::Fuse(_) = snapshot.driver {
        // fuse-overlayfs, another process, cannot reach the detached
        // trees through this process's descriptors.
        return Err(SnapshotError::IdmapOnFuse { target: target.to_path_buf() });
    }
    let userns = std::fs::File::open(&idmap.userns).map_err(io("open", &idmap.userns))?;
    let mut trees = Vec::with_capacity(snapshot.lowers.len());
    for lower in &snapshot.lowers {
        trees.push(idmapped_tree(lower, &userns).map_err(|(step, errno)| err(step)(errno))?);
    }
    for dir in [&snapshot.upper, &snapshot.work] {
        std::os::unix::fs::lchown(dir, Some(idmap.root_uid), Some(idmap.root_gid)).map_err(io("chown", dir))?;
    }
    let through_fds = WritableSnapshot {
        key: snapshot.key.clone(),
        lowers: trees.iter().map(|t| PathBuf::from(format!("/proc/self/fd/{}", t.as_raw_fd()))).collect(),
        upper: snapshot.upper.clone(),
        work: snapshot.work.clone(),
        userxattr: snapshot.userxattr,
        driver: OverlayDriver::Kernel,
    };
    mount(&through_fds, target)
}

/// Binds `source` (recursively) on `target` as seen through the user
/// namespace pinned at `userns`: an idmapped mount.
pub fn bind_idmapped(source: &Path, target: &Path, userns: &Path) -> Result<(), SnapshotError> {
    let err = |step| move |errno| SnapshotError::Mount { target: target.to_path_buf(), step, errno };
    let userns = std::fs::File::open(userns).map_err(io("open", userns))?;
    let tree = idmapped_tree(source, &userns).map_err(|(step, errno)| err(step)(errno))?;
    let target_c = cstr(target).map_err(err("target"))?;
    tote_shim::syscall::mount_api::move_mount(tree.as_fd(), &target_c).map_err(err("move_mount"))
}

pub fn unmount(target: &Path) -> Result<(), SnapshotError> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|errno| SnapshotError::Mount {
        target: target.to_path_buf(),
        step: "umount",
        errno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
    }

    fn snapshotter(name: &str) -> (Snapshotter, PathBuf) {
        let root = std::env::temp_dir().join(format!("tote-snap-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let meta = Arc::new(Metadata::open(&root.join("meta.db")).unwrap());
        (Snapshotter::open(&root.join("snapshots"), meta).unwrap(), root)
    }

    #[test]
    fn a_committed_layer_gets_a_short_id_and_an_uncommitted_one_vanishes() {
        let (snaps, root) = snapshotter("commit");
        let temp = snaps.begin_layer().unwrap();
        std::fs::write(temp.fs().join("a"), "1").unwrap();
        let record = snaps.commit_layer(temp, &digest(1), None, &digest(1), 1).unwrap();
        assert_eq!(record.id, 1);
        assert_eq!(std::fs::read_to_string(snaps.layer_dir(&record).join("a")).unwrap(), "1");
        let abandoned = snaps.begin_layer().unwrap();
        let path = abandoned.fs();
        drop(abandoned);
        assert!(!path.exists(), "a half-unpacked layer was left");
        // The same chain committed twice keeps the first copy.
        let again = snaps.begin_layer().unwrap();
        assert_eq!(snaps.commit_layer(again, &digest(1), None, &digest(1), 1).unwrap().id, 1);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_on_open() {
        let (snaps, root) = snapshotter("crash");
        let temp = snaps.begin_layer().unwrap();
        let dir = temp.fs();
        std::mem::forget(temp); // as if the process died mid-unpack
        let meta = Arc::new(Metadata::open(&root.join("meta2.db")).unwrap());
        Snapshotter::open(snaps.root(), meta).unwrap();
        assert!(!dir.exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_chain_lists_its_layers_top_first() {
        let (snaps, root) = snapshotter("chain");
        let lower = snaps.commit_layer(snaps.begin_layer().unwrap(), &digest(1), None, &digest(1), 0).unwrap();
        let upper =
            snaps.commit_layer(snaps.begin_layer().unwrap(), &digest(2), Some(&digest(1)), &digest(9), 0).unwrap();
        assert_eq!(snaps.lowers(&digest(2)).unwrap(), vec![snaps.layer_dir(&upper), snaps.layer_dir(&lower)]);
        assert!(matches!(snaps.lowers(&digest(3)), Err(SnapshotError::Missing(_))));
        std::fs::remove_dir_all(root).unwrap();
    }
}
