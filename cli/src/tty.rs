//! The client's terminal: raw mode while a container owns it (restored on
//! every way out, panics included), its size, and detach keys.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Mutex, Once};

use nix::sys::termios::{self, SetArg, Termios};
use tote_api::v1::Resize;

#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("the input device is not a TTY")]
    NotATty,
    #[error("cannot put the terminal in raw mode: {0}")]
    Raw(nix::Error),
}

/// The settings to put back, also read by the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// stdin in raw mode until this is dropped: keys reach the container
/// unprocessed (Ctrl-C included), as docker's `-it` does.
pub struct RawMode {
    _private: (),
}

impl RawMode {
    pub fn enable() -> Result<Self, TtyError> {
        let stdin = std::io::stdin();
        let original = termios::tcgetattr(stdin.as_fd()).map_err(TtyError::Raw)?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
        install_panic_hook();
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).map_err(TtyError::Raw)?;
        Ok(RawMode { _private: () })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the saved settings back, once.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(original) = saved {
        // Nothing useful can be done if this fails on the way out.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &original);
    }
}

/// A panic in raw mode would leave the user's shell unusable: the hook
/// restores the terminal before the panic is reported (and before an
/// abort, where `Drop` never runs).
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The terminal's size: stdout's when it is a terminal (what docker
/// measures), else stdin's.
pub fn size() -> Option<Resize> {
    let stdout = std::io::stdout();
    let stdin = std::io::stdin();
    if stdout.is_terminal() { size_of(stdout.as_fd()) } else { size_of(stdin.as_fd()) }
}

fn size_of(fd: BorrowedFd<'_>) -> Option<Resize> {
    let mut size = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points at a live, properly aligned local for the whole call; the fd is
    // borrowed, so it stays open.
    let result = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCGWINSZ, &mut size) };
    if result != 0 || size.ws_row == 0 || size.ws_col == 0 {
        return None;
    }
    Some(Resize { rows: u32::from(size.ws_row), cols: u32::from(size.ws_col) })
}

/// docker's default detach keys: Ctrl-P Ctrl-Q.
pub const DEFAULT_DETACH_KEYS: [u8; 2] = [0x10, 0x11];

/// Watches typed bytes for the detach sequence. Bytes that might start it
/// are held back until the next byte shows whether they do.
#[derive(Debug, Clone)]
pub struct DetachKeys {
    sequence: Vec<u8>,
    matched: usize,
}

impl DetachKeys {
    pub fn new(sequence: &[u8]) -> Self {
        DetachKeys { sequence: sequence.to_vec(), matched: 0 }
    }

    /// The bytes to forward, and whether the sequence is now complete
    /// (then the rest of `input` is dropped, as docker drops it).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut forward = Vec::with_capacity(input.len());
        for &byte in input {
            if byte == self.sequence[self.matched] {
                self.matched += 1;
                if self.matched == self.sequence.len() {
                    self.matched = 0;
                    return (forward, true);
                }
                continue;
            }
            forward.extend_from_slice(&self.sequence[..self.matched]);
            self.matched = usize::from(byte == self.sequence[0]);
            if self.matched == 0 {
                forward.push(byte);
            }
        }
        (forward, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_pass_everything_else_through() {
        let mut keys = DetachKeys::new(&DEFAULT_DETACH_KEYS);
        assert_eq!(keys.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(keys.feed(b"a\x10"), (b"a".to_vec(), false));
        assert_eq!(keys.feed(b"b"), (b"\x10b".to_vec(), false));
        assert_eq!(keys.feed(b"\x10\x10"), (b"\x10".to_vec(), false));
        assert_eq!(keys.feed(b"\x11rest"), (Vec::new(), true));
        assert_eq!(keys.feed(b"x"), (b"x".to_vec(), false));
    }

    #[test]
    fn a_pipe_has_no_size() {
        let (reader, _writer) = std::io::pipe().unwrap();
        assert_eq!(size_of(reader.as_fd()), None);
    }
}
