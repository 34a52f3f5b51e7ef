//! The stdio a monitor gives a container process (or an exec'd one): pipes
//! whose far ends become its descriptors 0–2, or its pty master.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::stat::Mode;
use nix::unistd::pipe2;

use super::log::Stream;

/// The process's ends, handed to the runtime and closed once it has them.
pub struct ChildEnds {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl ChildEnds {
    pub fn raw(&self) -> [RawFd; 3] {
        [self.stdin.as_raw_fd(), self.stdout.as_raw_fd(), self.stderr.as_raw_fd()]
    }
}

/// The monitor's ends of a process's stdio.
pub struct ProcessIo {
    /// What the process writes, per stream; an entry goes at end of file.
    pub outputs: Vec<(Stream, OwnedFd)>,
    /// Where its input goes, while it is open.
    pub input: Option<OwnedFd>,
    /// The pty master, for resizing.
    pub pty: Option<OwnedFd>,
    /// Input waiting for the process to read it.
    pub pending_input: Vec<u8>,
    /// Close the input once `pending_input` is written.
    pub close_input: bool,
}

/// Pipes for a process without a terminal; without `stdin` its input is
/// /dev/null.
pub fn pipes(stdin: bool) -> Result<(ChildEnds, ProcessIo), Errno> {
    let (input, child_stdin) = if stdin {
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        set_nonblocking(&write)?;
        (Some(write), read)
    } else {
        let null = open("/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        (None, unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(null) })
    };
    let (stdout_read, stdout_write) = pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_read, stderr_write) = pipe2(OFlag::O_CLOEXEC)?;
    set_nonblocking(&stdout_read)?;
    set_nonblocking(&stderr_read)?;
    let child = ChildEnds { stdin: child_stdin, stdout: stdout_write, stderr: stderr_write };
    let io = ProcessIo {
        outputs: vec![(Stream::Stdout, stdout_read), (Stream::Stderr, stderr_read)],
        input,
        pty: None,
        pending_input: Vec::new(),
        close_input: false,
    };
    Ok((child, io))
}

/// A terminal process: everything goes through its pty master.
pub fn pty(master: OwnedFd, stdin: bool) -> Result<ProcessIo, Errno> {
    set_nonblocking(&master)?;
    let input = if stdin {
        Some(master.try_clone().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?)
    } else {
        None
    };
    let output = master.try_clone().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    Ok(ProcessIo {
        outputs: vec![(Stream::Stdout, output)],
        input,
        pty: Some(master),
        pending_input: Vec::new(),
        close_input: false,
    })
}

pub fn set_nonblocking(fd: &impl AsFd) -> Result<(), Errno> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl ProcessIo {
    /// Writes as much pending input as the process takes now.
    pub fn flush_input(&mut self) {
        let Some(input) = &self.input else {
            self.pending_input.clear();
            return;
        };
        while !self.pending_input.is_empty() {
            match nix::unistd::write(input, &self.pending_input) {
                Ok(n) => {
                    self.pending_input.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                // The process closed its stdin: what is left is dropped.
                Err(_) => {
                    self.pending_input.clear();
                    self.input = None;
                    return;
                }
            }
        }
        if self.close_input && self.pty.is_none() {
            self.input = None;
        }
    }

    /// True once every output stream has reached end of file.
    pub fn outputs_closed(&self) -> bool {
        self.outputs.is_empty()
    }
}
