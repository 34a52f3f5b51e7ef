//! What tote-shim's small commands for toted (`pod-init`, `pod-userns`,
//! `ns-holder`) share: the line protocol over stdin and stdout, the first
//! step of making a user namespace whose maps toted writes, and detaching
//! a process that outlives its caller.

use std::io::{BufRead, StdinLock, StdoutLock, Write};

use nix::sched::CloneFlags;

/// One line each way with toted.
pub(crate) struct Lines {
    stdin: StdinLock<'static>,
    stdout: StdoutLock<'static>,
}

impl Lines {
    pub(crate) fn new() -> Self {
        Self { stdin: std::io::stdin().lock(), stdout: std::io::stdout().lock() }
    }

    pub(crate) fn say(&mut self, what: &str) -> Result<(), String> {
        writeln!(self.stdout, "{what}").and_then(|()| self.stdout.flush()).map_err(|e| e.to_string())
    }

    /// Reads one line, which must be `word`.
    pub(crate) fn expect(&mut self, word: &str) -> Result<(), String> {
        let mut line = String::new();
        self.stdin.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim_end() != word {
            return Err(format!("expected {word:?} from toted, got {line:?}"));
        }
        Ok(())
    }

    /// Waits until toted closes stdin.
    pub(crate) fn until_closed(&mut self) {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut self.stdin, &mut rest);
    }
}

/// Creates a user namespace, says `userns`, and waits for toted's
/// `mapped`: toted writes the maps from the parent namespace in between
/// (a process cannot map its own namespace beyond its own id).
pub(crate) fn new_user_namespace(lines: &mut Lines) -> Result<(), String> {
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("create a user namespace: {e}"))?;
    lines.say("userns")?;
    lines.expect("mapped")
}

/// Leaves the caller behind: an own session, `/` as the working directory,
/// stdio on /dev/null and no other descriptor (toted reads the helper's
/// stdout until every writer is gone).
pub(crate) fn detach() {
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::chdir("/");
    if let Ok(null) = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null, fd);
        }
        if null > 2 {
            let _ = nix::unistd::close(null);
        }
    }
    // SAFETY: close_range only closes descriptors of this process; it
    // touches no memory.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}
