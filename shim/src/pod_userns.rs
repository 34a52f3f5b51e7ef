//! `tote-shim pod-userns KINDS HOSTNAME`: makes a pod's user namespace and,
//! inside it, the pod's other namespaces (KINDS: a comma-separated subset of
//! `net`, `ipc`, `uts`), so that the user namespace owns them. That
//! ownership is what lets the pod's containers, root only in their user
//! namespace, mount sysfs and mqueue and configure their network.
//!
//! toted cannot do this itself: a multithreaded process may not enter or
//! create a user namespace. The protocol, over stdin and stdout, one line
//! each way:
//!
//! 1. this process creates the user namespace and prints `userns`;
//! 2. toted writes the id maps (it is root in the parent namespace) and
//!    sends `mapped`;
//! 3. this process creates the other namespaces (hostname set, `lo` up),
//!    prints `ready` and waits;
//! 4. toted pins `/proc/<pid>/ns/*` on its files and closes stdin, on which
//!    this process exits.
//!
//! Anything unexpected ends it with a message on stderr and a non-zero
//! code; toted then removes whatever it pinned.

use nix::sched::CloneFlags;

use crate::helper_proc::{Lines, new_user_namespace};
use crate::syscall::{LinuxSyscall, Syscall};

/// What the KINDS argument asks for.
fn flags(kinds: &str) -> Result<CloneFlags, String> {
    let mut flags = CloneFlags::empty();
    for kind in kinds.split(',').filter(|k| !k.is_empty()) {
        flags |= match kind {
            "net" => CloneFlags::CLONE_NEWNET,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "uts" => CloneFlags::CLONE_NEWUTS,
            other => return Err(format!("unknown namespace kind {other:?} (net, ipc or uts)")),
        };
    }
    Ok(flags)
}

/// Runs the command; returns its exit code.
pub fn main(kinds: &str, hostname: &str) -> i32 {
    match run(kinds, hostname) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tote-shim pod-userns: {message}");
            1
        }
    }
}

fn run(kinds: &str, hostname: &str) -> Result<(), String> {
    let flags = flags(kinds)?;
    let mut lines = Lines::new();
    new_user_namespace(&mut lines)?;
    nix::sched::unshare(flags).map_err(|e| format!("create the pod's namespaces: {e}"))?;
    let sys = LinuxSyscall;
    if flags.contains(CloneFlags::CLONE_NEWUTS) && !hostname.is_empty() {
        sys.sethostname(hostname).map_err(|e| format!("set the hostname: {e}"))?;
    }
    if flags.contains(CloneFlags::CLONE_NEWNET) {
        sys.set_link_up("lo").map_err(|e| format!("bring up lo: {e}"))?;
    }
    lines.say("ready")?;
    // Until toted has pinned the namespaces and closes stdin.
    lines.until_closed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_checked() {
        assert_eq!(flags("net,uts").unwrap(), CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS);
        assert_eq!(flags("").unwrap(), CloneFlags::empty());
        assert!(flags("net,pid").unwrap_err().contains("\"pid\""));
    }
}
