//! `tote-shim ns-holder`: the process that keeps a rootless toted's user
//! namespace, and the mount namespace made inside it, alive. Containers,
//! their monitors and their overlay mounts live in those namespaces; a
//! toted that stops and starts again joins them (it finds this process
//! through its pid file), so running containers survive toted's restarts.
//!
//! toted cannot be this process: the namespaces must outlive it, and it
//! writes the id maps from the parent namespace with newuidmap/newgidmap,
//! which take the pid of a process already in the new namespace. The
//! protocol, over stdin and stdout, one line each way:
//!
//! 1. this process creates the user namespace and prints `userns`;
//! 2. toted writes the uid and gid maps and sends `mapped`;
//! 3. this process, root in the namespace now, creates the mount
//!    namespace, forks the holder, prints `holder PID` and exits.
//!
//! The holder detaches (own session, stdio on /dev/null, no other
//! descriptors) and sleeps with every signal blocked: only SIGKILL ends it.
//!
//! `tote-shim ns-holder --adopt` makes no namespace: toted, finding the
//! holder gone while containers of its namespaces still run, joins their
//! namespaces and runs this to hold them again. It forks the holder at
//! once and prints `holder PID`.
//! Anything unexpected before that ends this process with a message on
//! stderr and a non-zero code.

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::SigSet;
use nix::unistd::ForkResult;

use crate::helper_proc::{Lines, detach, new_user_namespace};

/// Runs the command (`adopt`: hold the namespaces it was started in);
/// returns its exit code.
pub fn main(adopt: bool) -> i32 {
    let held = if adopt { fork_holder(&mut Lines::new()) } else { run() };
    match held {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tote-shim ns-holder: {message}");
            1
        }
    }
}

fn run() -> Result<(), String> {
    let mut lines = Lines::new();
    new_user_namespace(&mut lines)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("create a mount namespace: {e}"))?;
    // Mounts made in here (container roots, pinned namespaces) stay in
    // here, and the host's later mounts still show up.
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| format!("make / a slave mount: {e}"))?;
    fork_holder(&mut lines)
}

fn fork_holder(lines: &mut Lines) -> Result<(), String> {
    // SAFETY: tote-shim is single-threaded here (this command runs before
    // anything spawns a thread), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => {
            lines.say(&format!("holder {child}")).inspect_err(|_| {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            })?;
            Ok(())
        }
        Ok(ForkResult::Child) => hold_forever(),
        Err(errno) => Err(format!("fork: {errno}")),
    }
}

fn hold_forever() -> ! {
    detach();
    // A blocked signal is never delivered, so pause() never returns: a
    // terminal's SIGHUP or a stray SIGTERM leaves the namespaces be.
    let _ = SigSet::all().thread_block();
    loop {
        nix::unistd::pause();
    }
}
