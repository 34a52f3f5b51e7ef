//! `tote-shim pod-init`: the PID 1 of a pod whose containers share one PID
//! namespace (the CRI's NamespaceMode POD for PID, Kubernetes'
//! shareProcessNamespace). It does what a pause container's process does
//! and nothing more: it holds the namespace open, reaps the orphans that
//! the kernel hands to it, and ignores every signal sent from inside the
//! pod (PID 1 gets only those it handles). toted pins the namespace and
//! kills this process when the pod stops.
//!
//! It is started by toted, creates the namespace (`unshare(CLONE_NEWPID)`
//! makes the next child the namespace's PID 1), forks that child, prints
//! its pid in toted's namespace and exits; the child detaches.

use std::io::Write;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

/// Runs the command; returns the exit code of the process toted waits for.
/// With `userns`, the pinned user namespace of the pod, which is to own the
/// PID namespace: it is entered first.
pub fn main(userns: Option<&str>) -> i32 {
    if let Some(path) = userns {
        let entered = std::fs::File::open(path)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|ns| nix::sched::setns(ns, CloneFlags::CLONE_NEWUSER));
        if let Err(errno) = entered {
            eprintln!("tote-shim pod-init: enter the user namespace {path}: {errno}");
            return 1;
        }
    }
    if let Err(errno) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("tote-shim pod-init: create a PID namespace: {errno}");
        return 1;
    }
    // SAFETY: tote-shim is single-threaded here (nothing has spawned a
    // thread before this command), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => {
            let mut out = std::io::stdout();
            if writeln!(out, "{child}").and_then(|()| out.flush()).is_err() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                return 1;
            }
            0
        }
        Ok(ForkResult::Child) => reap_forever(),
        Err(errno) => {
            eprintln!("tote-shim pod-init: fork: {errno}");
            1
        }
    }
}

fn reap_forever() -> ! {
    crate::helper_proc::detach();
    // Every signal is blocked and only SIGCHLD is waited for: the others
    // stay pending, unhandled. SIGKILL from toted still ends it.
    let all = SigSet::all();
    let _ = all.thread_block();
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    loop {
        let _ = children.wait();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
