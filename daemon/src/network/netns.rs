//! Persistent network namespaces: a namespace stays alive, with no process
//! in it, while its nsfs file is bind-mounted on a file of ours (as
//! `ip netns add` does). CNI plugins and the shim find it by that path.
//! Its `lo` is up from the start, as docker has it in every mode: that is
//! one ioctl here rather than a run of the CNI loopback plugin (a Go
//! program started on every ADD and DEL, ~4 ms each, for one flag).
//!
//! Each namespace switch happens in a fresh thread that then exits, so no
//! thread of the daemon is ever left in a container's namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::NSFS_MAGIC;

use super::NetworkError;

/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Creates a new network namespace with only `lo`, up, and pins it at
/// `path` (an empty file, created with its parent directories; it must not
/// exist).
pub fn create(path: &Path) -> Result<(), NetworkError> {
    pin_at(path, || {
        in_fresh_thread("create", path, || {
            unshare_netns().map_err(|errno| namespace_error("unshare", path, errno))?;
            loopback_up().map_err(|errno| namespace_error("bring up lo in", path, errno))?;
            bind_thread_netns(path).map_err(|errno| namespace_error("bind-mount", path, errno))
        })
    })
}

/// Makes the empty file `path` (with its parent directories; it must not
/// exist), then has `pin` bind-mount a namespace on it. If that fails the
/// file goes: it holds no namespace, and must not look like one.
fn pin_at(path: &Path, pin: impl FnOnce() -> Result<(), NetworkError>) -> Result<(), NetworkError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(NetworkError::io("create", parent))?;
    }
    File::options().write(true).create_new(true).open(path).map_err(NetworkError::io("create", path))?;
    let pinned = pin();
    if pinned.is_err() {
        let _ = std::fs::remove_file(path);
    }
    pinned
}

/// The namespaces besides the network's that toted pins for a pod, so that
/// its containers join them by path and no process has to hold them.
#[derive(Debug, Clone, Copy)]
pub enum PodNamespace<'a> {
    Ipc,
    /// With the pod's hostname set in it.
    Uts {
        hostname: &'a str,
    },
}

/// Creates a new IPC or UTS namespace and pins it at `path`, like
/// [`create`] does a network namespace.
pub fn create_pod_namespace(path: &Path, kind: PodNamespace<'_>) -> Result<(), NetworkError> {
    pin_at(path, || {
        in_fresh_thread("create", path, || {
            let (flag, own) = match kind {
                PodNamespace::Ipc => (CloneFlags::CLONE_NEWIPC, "/proc/thread-self/ns/ipc"),
                PodNamespace::Uts { .. } => (CloneFlags::CLONE_NEWUTS, "/proc/thread-self/ns/uts"),
            };
            nix::sched::unshare(flag).map_err(|errno| namespace_error("unshare", path, errno))?;
            if let PodNamespace::Uts { hostname } = kind {
                nix::unistd::sethostname(hostname)
                    .map_err(|errno| namespace_error("set the hostname of", path, errno))?;
            }
            bind(Path::new(own), path)
        })
    })
}

/// Pins an existing namespace file (`/proc/<pid>/ns/<kind>`) at `path`.
pub fn pin_existing(namespace: &Path, path: &Path) -> Result<(), NetworkError> {
    pin_at(path, || bind(namespace, path))
}

/// Bind-mounts the namespace file `namespace` on `path`.
fn bind(namespace: &Path, path: &Path) -> Result<(), NetworkError> {
    nix::mount::mount(Some(namespace), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|errno| namespace_error("bind-mount", path, errno))
}

/// Unpins the namespace at `path` and deletes the file. The namespace
/// itself goes when nothing else (a process, an open fd) holds it. A
/// missing file, or one with nothing mounted on it, is fine.
pub fn remove(path: &Path) -> Result<(), NetworkError> {
    match detach(path) {
        // EINVAL: not a mount point, so nothing to unpin.
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(errno) => return Err(namespace_error("unmount", path, errno)),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetworkError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Runs `f` in a fresh thread inside the namespace at `path`.
pub fn enter<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetworkError> {
    let netns = File::open(path).map_err(NetworkError::io("open", path))?;
    in_fresh_thread("enter", path, move || {
        set_thread_netns(&netns).map_err(|errno| namespace_error("enter", path, errno))?;
        Ok(f())
    })
}

/// Whether `path` holds a namespace (is a pinned or /proc nsfs file).
pub fn exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

fn in_fresh_thread<T: Send>(
    op: &'static str,
    path: &Path,
    f: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    thread::scope(|scope| scope.spawn(f).join())
        .unwrap_or_else(|_| Err(NetworkError::NamespaceThread { op, path: path.to_path_buf() }))
}

fn namespace_error(op: &'static str, path: &Path, errno: Errno) -> NetworkError {
    NetworkError::Namespace { op, path: PathBuf::from(path), errno }
}

// The privileged calls, one each.

fn unshare_netns() -> nix::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace (the
/// socket belongs to the namespace it is created in).
fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data, for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    request.ifr_name[0] = b'l' as libc::c_char;
    request.ifr_name[1] = b'o' as libc::c_char;
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes the
    // flags into the ifreq, which lives across the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) })?;
    let up = libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP is 1");
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= up };
    // SAFETY: SIOCSIFFLAGS only reads the ifreq, which lives across the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &request) })?;
    Ok(())
}

fn bind_thread_netns(target: &Path) -> nix::Result<()> {
    nix::mount::mount(Some(THREAD_NETNS), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
}

fn set_thread_netns(netns: &File) -> nix::Result<()> {
    nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
}

fn detach(target: &Path) -> nix::Result<()> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tote-netns-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn removing_a_missing_namespace_is_fine() {
        let dir = scratch("missing");
        remove(&dir.join("nope")).unwrap();
        assert!(!exists(&dir.join("nope")));
    }

    #[test]
    fn removing_a_plain_file_deletes_it() {
        let dir = scratch("plain");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ns");
        std::fs::write(&file, "").unwrap();
        assert!(!exists(&file));
        remove(&file).unwrap();
        assert!(!file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entering_a_missing_namespace_names_the_path() {
        let err = enter(Path::new("/nonexistent/tote-ns"), || ()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tote-ns"), "{err}");
    }
}
