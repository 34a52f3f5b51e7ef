//! Terminals: `run` relaying a pty to its own terminal, `create
//! --console-socket` handing the pty master over, and `exec --tty`.

mod support;

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use serde_json::json;
use support::TestContainer;

/// Reads from `fd` until `want` shows up (or 10 s pass); returns all read.
fn read_until(fd: &OwnedFd, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains(want) {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let pty = nix::pty::openpty(None, None).unwrap();
    (pty.master, pty.slave)
}

/// Spawns `cmd` with a pty's slave as its stdin and stdout; returns the
/// child and the master to talk to it through.
fn spawn_on_pty(mut cmd: std::process::Command) -> (std::process::Child, OwnedFd) {
    let (master, slave) = openpty();
    let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let child = cmd.stdin(stdio(&slave)).stdout(stdio(&slave)).stderr(Stdio::piped()).spawn().unwrap();
    (child, master)
}

#[test]
fn run_relays_a_terminal_both_ways() {
    let c = TestContainer::new("tty-run")
        .sh("read line; echo got=$line; echo tty=$(tty); echo console=$(readlink -f /dev/console)")
        .with(|cfg| cfg["process"]["terminal"] = json!(true));
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let (mut child, master) = spawn_on_pty(c.shim(&["run", "--bundle", &bundle, &c.id]));
    c.wait_status("running");
    let mut writer = std::fs::File::from(master.try_clone().unwrap());
    writer.write_all(b"hello\r").unwrap();
    let out = read_until(&master, "console=");
    let status = child.wait().unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("got=hello"), "input did not reach the container: {out:?}");
    assert!(out.contains("tty=/dev/pts/0"), "no controlling terminal: {out:?}");
}

/// Receives one descriptor sent over `listener` with SCM_RIGHTS.
fn receive_fd(listener: &UnixListener) -> OwnedFd {
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: SCM_RIGHTS installed this descriptor for us.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no descriptor received");
}

#[test]
fn create_hands_the_pty_to_the_console_socket() {
    let c = TestContainer::new("tty-socket").sh("echo tty=$(tty); echo size=$(stty size); sleep 60").with(|cfg| {
        cfg["process"]["terminal"] = json!(true);
        cfg["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    });
    c.write_config();
    let socket = c.bundle.join("console.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let sock = socket.to_string_lossy().into_owned();
    let creator = std::thread::spawn({
        let cmd = c.shim(&["create", "--bundle", &bundle, "--console-socket", &sock, &c.id]).output();
        move || cmd
    });
    let master = receive_fd(&listener);
    let created = creator.join().unwrap().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    c.start().ok();
    // Waits for the full answer; a wrong size shows in the assertion below.
    let out = read_until(&master, "size=30 100");
    assert!(out.contains("tty=/dev/pts/0"), "{out:?}");
    assert!(out.contains("size=30 100"), "console size not applied: {out:?}");
    c.delete(true).ok();
}

#[test]
fn exec_with_a_tty() {
    let c = TestContainer::new("tty-exec").args(&["sleep", "60"]);
    c.create().ok();
    c.start().ok();
    let (mut child, master) = spawn_on_pty(c.shim(&[
        "exec",
        "--tty",
        &c.id,
        "sh",
        "-c",
        "echo tty=$(tty); test -t 0 && echo stdin=terminal",
    ]));
    let out = read_until(&master, "stdin=");
    assert!(child.wait().unwrap().success(), "{out}");
    assert!(out.contains("tty=/dev/pts/"), "{out:?}");
    assert!(out.contains("stdin=terminal"), "{out:?}");
    c.delete(true).ok();
}
