//! Terminals: a pty made inside the container (from its own devpts) for a
//! process with `terminal: true`, and, on the tote-shim side, handing the
//! master to a console socket or relaying it to our own stdio.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, dup2, setsid};

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("{step}: {errno}")]
    Os { step: &'static str, errno: Errno },
    #[error("console socket {path}: {source}")]
    ConsoleSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn os(step: &'static str) -> impl FnOnce(Errno) -> TerminalError {
    move |errno| TerminalError::Os { step, errno }
}

/// A new pty pair from the devpts at /dev/pts of the current root.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub slave_path: PathBuf,
}

/// Opens a pty through /dev/ptmx (inside the container: its own devpts
/// instance), owned by the process's user so it can use its terminal.
pub fn open_pty(owner: Uid, group: Gid, size: Option<(u16, u16)>) -> Result<Pty, TerminalError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(os("open /dev/ptmx"))?;
    grantpt(&master).map_err(os("grantpt"))?;
    unlockpt(&master).map_err(os("unlockpt"))?;
    let slave_path = PathBuf::from(ptsname_r(&master).map_err(os("ptsname"))?);
    let raw = open(&slave_path, OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(os("open the pty slave"))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(raw) };
    nix::unistd::fchown(slave.as_raw_fd(), Some(owner), Some(group)).map_err(os("chown the pty slave"))?;
    // SAFETY: `posix_openpt` returned a valid master; ownership moves into the OwnedFd.
    let master = unsafe { OwnedFd::from_raw_fd(master_into_raw(master)) };
    if let Some((rows, cols)) = size {
        resize(master.as_fd(), rows, cols)?;
    }
    Ok(Pty { master, slave, slave_path })
}

fn master_into_raw(master: nix::pty::PtyMaster) -> RawFd {
    use std::os::fd::IntoRawFd;
    master.into_raw_fd()
}

/// Makes `slave` the controlling terminal and the stdio of this process.
pub fn become_controlling(slave: BorrowedFd<'_>) -> Result<(), TerminalError> {
    setsid().map_err(os("setsid"))?;
    // SAFETY: TIOCSCTTY takes an integer argument and touches no memory.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(os("make the pty the controlling terminal")(Errno::last()));
    }
    for fd in 0..=2 {
        dup2(slave.as_raw_fd(), fd).map_err(os("dup the pty onto stdio"))?;
    }
    Ok(())
}

pub fn resize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), TerminalError> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(os("set the terminal size")(Errno::last()));
    }
    Ok(())
}

/// The size of the terminal on `fd`, if it is one.
pub fn size_of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize struct we own.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (ret == 0).then_some((size.ws_row, size.ws_col))
}

/// Sends the pty master to whoever listens on `path`, as runc does for
/// `--console-socket`.
pub fn send_to_console_socket(path: &Path, master: BorrowedFd<'_>) -> Result<(), TerminalError> {
    let err = |source| TerminalError::ConsoleSocket { path: path.to_path_buf(), source };
    let stream = UnixStream::connect(path).map_err(err)?;
    let name = b"/dev/ptmx";
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| err(std::io::Error::from(e)))?;
    Ok(())
}

/// Puts our own terminal (if stdin is one) in raw mode for as long as the
/// guard lives, so keystrokes reach the container unprocessed.
pub struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    pub fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else { return Self { saved: None } };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        Self { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// Copies what is readable from `from` to `to`; false at end-of-file.
pub fn pump(from: BorrowedFd<'_>, to: &mut dyn Write) -> bool {
    let mut buf = [0u8; 8192];
    // SAFETY: the borrowed descriptor stays open for the duration of the
    // read; ManuallyDrop keeps the temporary File from closing it.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(from.as_raw_fd()) });
    match file.read(&mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => to.write_all(&buf[..n]).and_then(|()| to.flush()).is_ok(),
    }
}
