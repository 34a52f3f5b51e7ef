//! Running a container process in the foreground (`run`, `exec`): signals
//! sent to tote-shim go to the process, its terminal is relayed to our
//! stdio, and its exit status becomes ours.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::terminal;

/// How a container process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(Signal),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128+N for signal N.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(sig) => 128 + sig as i32,
        }
    }
}

/// The signals relayed to the container process. SIGCHLD is ours.
fn relayed() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        Signal::SIGALRM,
    ] {
        set.add(sig);
    }
    set
}

/// Blocks the relayed signals and SIGCHLD so none is lost between clone(2)
/// and [`supervise`]. The container process unblocks them for itself.
pub fn block_signals() -> Result<(), Errno> {
    let mut set = relayed();
    set.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

/// Waits for `pid` to exit, relaying signals and (with `pty`) the terminal.
pub fn supervise(pid: Pid, pty: Option<OwnedFd>) -> Result<ExitStatus, Errno> {
    let mut set = relayed();
    set.add(Signal::SIGCHLD);
    let sigfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let _raw = pty.as_ref().map(|_| terminal::RawMode::enter());
    if let (Some(master), Some((rows, cols))) = (&pty, terminal::size_of(std::io::stdin().as_fd())) {
        let _ = terminal::resize(master.as_fd(), rows, cols);
    }
    let mut stdin_open = pty.is_some();
    let mut status = None;
    loop {
        if let Some(status) = status {
            if let Some(master) = &pty {
                drain(master.as_fd());
            }
            return Ok(status);
        }
        let stdin = std::io::stdin();
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if let Some(master) = &pty {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        if ready[0] {
            status = handle_signals(&sigfd, pid, pty.as_ref())?;
        }
        if let Some(master) = &pty {
            if ready.get(1).copied().unwrap_or(false) && !terminal::pump(master.as_fd(), &mut std::io::stdout()) {
                // The pty hung up: the process has closed its terminal.
                if status.is_none() {
                    status = Some(wait_for(pid)?);
                }
            }
            if stdin_open && ready.get(2).copied().unwrap_or(false) {
                let mut to_pty = MasterWriter(master.as_fd());
                stdin_open = terminal::pump(stdin.as_fd(), &mut to_pty);
            }
        }
    }
}

struct MasterWriter<'a>(BorrowedFd<'a>);

impl Write for MasterWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        nix::unistd::write(self.0, buf).map_err(std::io::Error::from)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Relays pending signals; returns the exit status once `pid` is reaped.
fn handle_signals(sigfd: &SignalFd, pid: Pid, pty: Option<&OwnedFd>) -> Result<Option<ExitStatus>, Errno> {
    let mut exited = None;
    while let Some(info) = sigfd.read_signal()? {
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
        match sig {
            Signal::SIGCHLD => {
                if let Some(status) = reap(pid)? {
                    exited = Some(status);
                }
            }
            Signal::SIGWINCH => {
                if let (Some(master), Some((rows, cols))) = (pty, terminal::size_of(std::io::stdin().as_fd())) {
                    let _ = terminal::resize(master.as_fd(), rows, cols);
                }
            }
            other => {
                let _ = kill(pid, other);
            }
        }
    }
    Ok(exited)
}

/// Reaps every exited child (tote-shim may have inherited others); returns
/// `pid`'s status if it was among them.
fn reap(pid: Pid) -> Result<Option<ExitStatus>, Errno> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => found = Some(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => found = Some(ExitStatus::Signaled(sig)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(found),
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
}

/// Blocks until `pid` exits.
pub fn wait_for(pid: Pid) -> Result<ExitStatus, Errno> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitStatus::Signaled(sig)),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
}

/// Copies what the process wrote to its terminal before exiting.
fn drain(master: BorrowedFd<'_>) {
    loop {
        let mut fds = [PollFd::new(master, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) => {
                if !terminal::pump(master, &mut std::io::stdout()) {
                    return;
                }
            }
            _ => return,
        }
    }
}
