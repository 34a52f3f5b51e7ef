//! Keeps containers away from the host's tote-shim binary.
//!
//! A container process created by tote-shim is a fork of it, so until it
//! execs, /proc/<pid>/exe names the host binary; a container whose program
//! is `/proc/self/exe` even runs that binary inside the container. If the
//! container could open that file for writing it could replace tote-shim
//! for every later container (runc's CVE-2019-5736).
//!
//! Two protections, checked on every `create`, `run` and `exec`:
//! - tote-shim runs from a read-only mount (the installer bind-mounts it
//!   read-only over itself): writes through /proc/<pid>/exe then fail with
//!   EROFS, and the container cannot remount a mount of the host's
//!   namespace. This costs one statvfs(2).
//! - otherwise tote-shim copies itself into a sealed memfd and re-executes
//!   from it, as runc and crun do on every start; the container can then
//!   reach only the sealed copy.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use nix::errno::Errno;
use nix::sys::statvfs::{FsFlags, statvfs};

const SELF_EXE: &str = "/proc/self/exe";
const SEALS: libc::c_int = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    ReadOnlyMount,
    SealedCopy,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("protect the tote-shim binary: {step}: {errno}")]
    Os { step: &'static str, errno: Errno },
    #[error("protect the tote-shim binary: copy it into a memfd: {0}")]
    Copy(std::io::Error),
}

fn os(step: &'static str) -> impl FnOnce(Errno) -> GuardError {
    move |errno| GuardError::Os { step, errno }
}

/// How the running binary is protected right now, if it is.
pub fn current_protection() -> Option<Protection> {
    if statvfs(SELF_EXE).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY)) {
        return Some(Protection::ReadOnlyMount);
    }
    let file = std::fs::File::open(SELF_EXE).ok()?;
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    (seals >= 0 && seals & libc::F_SEAL_WRITE != 0).then_some(Protection::SealedCopy)
}

/// Returns when the binary is protected; otherwise re-executes tote-shim
/// from a sealed copy with the same arguments and environment (and so
/// returns only on error).
pub fn ensure_protected() -> Result<Protection, GuardError> {
    if let Some(protection) = current_protection() {
        return Ok(protection);
    }
    let copy = sealed_copy()?;
    reexec(&copy)
}

fn sealed_copy() -> Result<OwnedFd, GuardError> {
    // SAFETY: the name is a valid C string; the returned descriptor is ours.
    let raw = unsafe { libc::memfd_create(c"tote-shim".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(os("memfd_create")(Errno::last()));
    }
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut source = std::fs::File::open(SELF_EXE).map_err(GuardError::Copy)?;
    let mut dest = std::fs::File::from(memfd.try_clone().map_err(GuardError::Copy)?);
    std::io::copy(&mut source, &mut dest).map_err(GuardError::Copy)?;
    // F_SEAL_WRITE fails with EBUSY while the kernel sees references to
    // the memfd's pages it cannot account for (it waits a little, then
    // gives up). Seen once here, on a 2-core host loaded with parallel
    // builds, with nothing else holding the memfd: so a few more tries,
    // with pauses doubling up to 64 ms, before it is an error.
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        // SAFETY: F_ADD_SEALS takes an integer and only changes the memfd's seals.
        if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } == 0 {
            return Ok(memfd);
        }
        let errno = Errno::last();
        if errno != Errno::EBUSY || pause > std::time::Duration::from_millis(64) {
            return Err(os("seal the memfd")(errno));
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
}

fn to_cstrings(items: impl Iterator<Item = OsString>) -> Vec<CString> {
    items.filter_map(|s| CString::new(s.into_vec()).ok()).collect()
}

fn reexec(copy: &OwnedFd) -> Result<Protection, GuardError> {
    let args = to_cstrings(std::env::args_os());
    let env = to_cstrings(std::env::vars_os().map(|(k, v)| {
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        kv
    }));
    let err = nix::unistd::execveat(Some(copy.as_raw_fd()), c"", &args, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH)
        .unwrap_err();
    Err(os("re-execute from the sealed copy")(err))
}
