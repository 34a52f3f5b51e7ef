//! The monitor's event loop: one thread and poll(2) over the signalfd, the
//! socket, the container's output and the connected clients. Nothing here
//! blocks for long, so a slow client never stalls the container's output.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use super::exit;
use super::log::{LogWriter, Stream};
use super::protocol::{ExitInfo, FrameKind, MAX_REQUEST, Phase, Reply, Request, encode_frame, take_frames};
use super::stdio::{self, ProcessIo};
use crate::container::{Error as RuntimeError, ExecOptions, Runtime};
use crate::foreground::ExitStatus;
use crate::state::Status;

/// How long output may keep coming after a process exited (a grandchild
/// outside its pid namespace can hold the pipe open forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// How long clients get to read the last replies once the container is gone.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// Input held for a process before the client is made to wait.
const INPUT_LIMIT: usize = 1 << 20;
/// Output held for a client; an attached client that falls further behind
/// is dropped (the log still has everything), an exec client holds the
/// process's output back instead.
const OUTPUT_LIMIT: usize = 8 << 20;

/// A process the monitor supervises: the container's init or an exec.
struct Supervised {
    pid: Pid,
    io: ProcessIo,
    status: Option<(ExitStatus, Instant)>,
}

enum Role {
    /// Sending its request line.
    Request,
    /// Gets `Exited` when the container ends.
    Waiting,
    /// Gets the container's output as frames; may send input.
    Attached { stdin: bool },
    /// Owns the exec'd process with this pid.
    Exec { pid: Pid },
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    role: Role,
    /// Close once `output` is written.
    closing: bool,
    broken: bool,
}

impl Client {
    fn reply(&mut self, reply: &Reply) {
        let mut line = serde_json::to_vec(reply).expect("replies serialise");
        line.push(b'\n');
        self.output.extend_from_slice(&line);
    }

    fn frame(&mut self, kind: FrameKind, payload: &[u8]) {
        self.output.extend_from_slice(&encode_frame(kind, payload));
    }

    fn flush(&mut self) {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
    }

    fn finished(&self) -> bool {
        self.broken || (self.closing && self.output.is_empty())
    }
}

/// What a poll entry stands for.
#[derive(Clone, Copy)]
enum Slot {
    Signals,
    Listener,
    Output { pid: Pid, index: usize },
    Input { pid: Pid },
    Client(usize),
}

pub struct Monitor {
    runtime: Runtime,
    id: String,
    dir: PathBuf,
    listener: UnixListener,
    signals: SignalFd,
    init: Supervised,
    execs: Vec<Supervised>,
    clients: Vec<Client>,
    log: Option<LogWriter>,
    exit: Option<ExitInfo>,
    flush_deadline: Option<Instant>,
    diagnostics: Box<dyn FnMut(String)>,
}

impl Monitor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Runtime,
        id: String,
        dir: PathBuf,
        listener: UnixListener,
        signals: SignalFd,
        pid: Pid,
        io: ProcessIo,
        log: Option<LogWriter>,
        diagnostics: Box<dyn FnMut(String)>,
    ) -> Self {
        Self {
            runtime,
            id,
            dir,
            listener,
            signals,
            init: Supervised { pid, io, status: None },
            execs: Vec::new(),
            clients: Vec::new(),
            log,
            exit: None,
            flush_deadline: None,
            diagnostics,
        }
    }

    /// Serves until the container has ended, its exit is recorded and the
    /// clients have had their last replies.
    pub fn run(mut self) {
        loop {
            let (slots, ready) = match self.poll_once() {
                Ok(found) => found,
                Err(errno) => {
                    (self.diagnostics)(format!("poll: {errno}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            for (slot, events) in slots.into_iter().zip(ready) {
                if !events.is_empty() {
                    self.dispatch(slot, events);
                }
            }
            self.settle_execs();
            self.settle_init();
            for client in &mut self.clients {
                client.flush();
            }
            self.clients.retain(|c| !c.finished());
            if let Some(deadline) = self.flush_deadline
                && (self.clients.is_empty() || Instant::now() > deadline)
            {
                return;
            }
        }
    }

    fn poll_once(&self) -> Result<(Vec<Slot>, Vec<PollFlags>), Errno> {
        let mut slots = Vec::new();
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        fn add<'a>(slots: &mut Vec<Slot>, fds: &mut Vec<PollFd<'a>>, slot: Slot, fd: BorrowedFd<'a>, flags: PollFlags) {
            slots.push(slot);
            fds.push(PollFd::new(fd, flags));
        }
        add(&mut slots, &mut fds, Slot::Signals, self.signals.as_fd(), PollFlags::POLLIN);
        if self.flush_deadline.is_none() {
            add(&mut slots, &mut fds, Slot::Listener, self.listener.as_fd(), PollFlags::POLLIN);
        }
        let exec_blocked = |pid: Pid| self.exec_client(pid).is_some_and(|c| c.output.len() > OUTPUT_LIMIT);
        for process in std::iter::once(&self.init).chain(&self.execs) {
            if !exec_blocked(process.pid) {
                for (index, (_, fd)) in process.io.outputs.iter().enumerate() {
                    add(&mut slots, &mut fds, Slot::Output { pid: process.pid, index }, fd.as_fd(), PollFlags::POLLIN);
                }
            }
            if let (Some(input), false) = (&process.io.input, process.io.pending_input.is_empty()) {
                add(&mut slots, &mut fds, Slot::Input { pid: process.pid }, input.as_fd(), PollFlags::POLLOUT);
            }
        }
        for (index, client) in self.clients.iter().enumerate() {
            let mut flags = PollFlags::empty();
            if !client.closing && self.accepts_input(client) {
                flags |= PollFlags::POLLIN;
            }
            if !client.output.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            add(&mut slots, &mut fds, Slot::Client(index), client.stream.as_fd(), flags);
        }
        // While a process drains, or the last replies flush, wake up to
        // check the deadlines.
        let draining = self.init.status.is_some() || self.execs.iter().any(|e| e.status.is_some());
        let timeout =
            if draining || self.flush_deadline.is_some() { PollTimeout::from(50u16) } else { PollTimeout::NONE };
        loop {
            match poll(&mut fds, timeout) {
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno),
                Ok(_) => break,
            }
        }
        let ready = fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        Ok((slots, ready))
    }

    fn accepts_input(&self, client: &Client) -> bool {
        match client.role {
            Role::Request => true,
            Role::Waiting => true,
            Role::Attached { stdin } => !stdin || self.init.io.pending_input.len() < INPUT_LIMIT,
            Role::Exec { pid } => self.process(pid).is_none_or(|p| p.io.pending_input.len() < INPUT_LIMIT),
        }
    }

    fn exec_client(&self, pid: Pid) -> Option<&Client> {
        self.clients.iter().find(|c| matches!(c.role, Role::Exec { pid: p } if p == pid))
    }

    fn process(&self, pid: Pid) -> Option<&Supervised> {
        std::iter::once(&self.init).chain(&self.execs).find(|p| p.pid == pid)
    }

    fn process_mut(&mut self, pid: Pid) -> Option<&mut Supervised> {
        std::iter::once(&mut self.init).chain(&mut self.execs).find(|p| p.pid == pid)
    }

    fn dispatch(&mut self, slot: Slot, events: PollFlags) {
        match slot {
            Slot::Signals => self.reap(),
            Slot::Listener => self.accept(),
            Slot::Output { pid, index } => self.read_output(pid, index),
            Slot::Input { pid } => {
                if let Some(process) = self.process_mut(pid) {
                    process.io.flush_input();
                }
            }
            Slot::Client(index) => {
                if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_client(index);
                }
            }
        }
    }

    fn reap(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signaled(signal)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(errno) => {
                    (self.diagnostics)(format!("waitpid: {errno}"));
                    return;
                }
            };
            if let Some(process) = self.process_mut(status.0) {
                process.status = Some((status.1, Instant::now()));
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.clients.push(Client {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            role: Role::Request,
                            closing: false,
                            broken: false,
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn read_output(&mut self, pid: Pid, index: usize) {
        let mut buf = [0u8; 8 * 1024];
        let Some(process) = self.process_mut(pid) else { return };
        let Some((stream, fd)) = process.io.outputs.get(index) else { return };
        let stream = *stream;
        let data = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => &buf[..n],
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            // End of file (EIO: the pty's last user is gone).
            Ok(_) | Err(Errno::EIO) => {
                process.io.outputs.remove(index);
                return;
            }
            Err(errno) => {
                process.io.outputs.remove(index);
                (self.diagnostics)(format!("read output of {pid}: {errno}"));
                return;
            }
        };
        let kind = match stream {
            Stream::Stdout => FrameKind::Stdout,
            Stream::Stderr => FrameKind::Stderr,
        };
        if pid == self.init.pid {
            if let Some(log) = &mut self.log
                && let Err(e) = log.write(stream, data)
            {
                (self.diagnostics)(format!("write the container log: {e}"));
            }
            for client in &mut self.clients {
                if matches!(client.role, Role::Attached { .. }) {
                    client.frame(kind, data);
                    if client.output.len() > OUTPUT_LIMIT {
                        client.broken = true;
                    }
                }
            }
        } else if let Some(client) =
            self.clients.iter_mut().find(|c| matches!(c.role, Role::Exec { pid: p } if p == pid))
        {
            client.frame(kind, data);
        }
    }

    fn read_client(&mut self, index: usize) {
        let mut buf = [0u8; 8 * 1024];
        let client = &mut self.clients[index];
        let hung_up = loop {
            match client.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    client.input.extend_from_slice(&buf[..n]);
                    if client.input.len() > MAX_REQUEST + 64 {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        match self.clients[index].role {
            Role::Request => self.take_request(index),
            Role::Attached { .. } | Role::Exec { .. } => self.take_frames(index),
            Role::Waiting => self.clients[index].input.clear(),
        }
        if hung_up {
            let client = &mut self.clients[index];
            client.closing = true;
            // An attached client that goes away closes nothing; the input
            // of an exec whose client left is closed.
            if let Role::Exec { pid } = client.role
                && let Some(process) = self.process_mut(pid)
            {
                process.io.close_input = true;
                process.io.flush_input();
            }
            if matches!(self.clients[index].role, Role::Request | Role::Waiting) {
                self.clients[index].broken = true;
            }
        }
    }

    fn take_request(&mut self, index: usize) {
        let client = &mut self.clients[index];
        let Some(end) = client.input.iter().position(|b| *b == b'\n') else {
            if client.input.len() > MAX_REQUEST {
                client.reply(&error_reply(format!("request longer than {MAX_REQUEST} bytes")));
                client.closing = true;
            }
            return;
        };
        let line: Vec<u8> = client.input.drain(..=end).collect();
        match serde_json::from_slice::<Request>(&line) {
            Ok(request) => self.handle(index, request),
            Err(e) => {
                client.reply(&error_reply(format!("bad request: {e}")));
                client.closing = true;
            }
        }
    }

    fn take_frames(&mut self, index: usize) {
        let frames = match take_frames(&mut self.clients[index].input) {
            Ok(frames) => frames,
            Err(message) => {
                (self.diagnostics)(format!("client sent a bad frame: {message}"));
                self.clients[index].broken = true;
                return;
            }
        };
        let target = match self.clients[index].role {
            Role::Attached { stdin: true } => self.init.pid,
            Role::Exec { pid } => pid,
            _ => return,
        };
        let Some(process) = self.process_mut(target) else { return };
        for (kind, payload) in frames {
            match kind {
                FrameKind::Stdin => process.io.pending_input.extend_from_slice(&payload),
                FrameKind::StdinClose => process.io.close_input = true,
                FrameKind::Resize if payload.len() == 4 => {
                    let rows = u16::from_be_bytes([payload[0], payload[1]]);
                    let cols = u16::from_be_bytes([payload[2], payload[3]]);
                    if let Some(pty) = &process.io.pty {
                        let _ = crate::terminal::resize(pty.as_fd(), rows, cols);
                    }
                }
                _ => {}
            }
        }
        process.io.flush_input();
    }

    fn handle(&mut self, index: usize, request: Request) {
        let reply = match request {
            Request::Wait => match &self.exit {
                Some(exit) if self.flush_deadline.is_some() => Reply::Exited { exit: exit.clone() },
                _ => {
                    self.clients[index].role = Role::Waiting;
                    return;
                }
            },
            Request::Attach { stdin } => self.attach(index, stdin),
            Request::Exec { process, stdin } => self.exec(index, *process, stdin),
            Request::State => self.state(),
            // An exited container's log can still be moved by the kubelet.
            Request::ReopenLog => match &mut self.log {
                Some(log) => match log.reopen() {
                    Ok(()) => Reply::Ok,
                    Err(e) => error_reply(format!("reopen the container log: {e}")),
                },
                None => error_reply(format!("container {} has no log file", self.id)),
            },
            other if self.init.status.is_some() => {
                error_reply(format!("container {} has exited; cannot {}", self.id, request_name(&other)))
            }
            Request::Start => ok_or_error(self.runtime.start(&self.id)),
            Request::Kill { signal, all } => match Signal::try_from(signal) {
                Ok(signal) => ok_or_error(self.runtime.kill(&self.id, signal, all)),
                Err(_) => error_reply(format!("unknown signal {signal}")),
            },
            Request::Stats => match self.runtime.stats(&self.id) {
                Ok(stats) => Reply::Stats { stats },
                Err(e) => error_reply(e.to_string()),
            },
            Request::Pause => ok_or_error(self.runtime.pause(&self.id)),
            Request::Resume => ok_or_error(self.runtime.resume(&self.id)),
            Request::Update { resources } => ok_or_error(self.runtime.update(&self.id, &resources)),
            Request::Pids => match self.runtime.pids(&self.id) {
                Ok(pids) => Reply::Pids { pids: pids.into_iter().map(Pid::as_raw).collect() },
                Err(e) => error_reply(e.to_string()),
            },
            Request::Resize { rows, cols } => match &self.init.io.pty {
                Some(pty) => match crate::terminal::resize(pty.as_fd(), rows, cols) {
                    Ok(()) => Reply::Ok,
                    Err(e) => error_reply(e.to_string()),
                },
                None => error_reply(format!("container {} has no terminal to resize", self.id)),
            },
            Request::CloseStdin => {
                self.init.io.close_input = true;
                self.init.io.flush_input();
                Reply::Ok
            }
        };
        let client = &mut self.clients[index];
        client.reply(&reply);
        if !matches!(client.role, Role::Attached { .. } | Role::Exec { .. }) {
            client.closing = true;
        }
    }

    fn state(&self) -> Reply {
        if let Some((status, _)) = self.init.status {
            let exit = self.exit.clone().unwrap_or_else(|| exit_info(status, false));
            return Reply::State { phase: Phase::Exited, pid: self.init.pid.as_raw(), exit: Some(exit) };
        }
        let phase = match self.runtime.state(&self.id).map(|s| s.status) {
            Ok(Status::Created) => Phase::Created,
            Ok(Status::Paused) => Phase::Paused,
            Ok(Status::Stopped) => Phase::Exited,
            _ => Phase::Running,
        };
        Reply::State { phase, pid: self.init.pid.as_raw(), exit: None }
    }

    fn attach(&mut self, index: usize, stdin: bool) -> Reply {
        let client = &mut self.clients[index];
        if let (Some(exit), Some(_)) = (&self.exit, self.flush_deadline) {
            client.reply(&Reply::Streaming { pid: self.init.pid.as_raw() });
            client.frame(FrameKind::Exit, &serde_json::to_vec(exit).expect("exit info serialises"));
            client.closing = true;
            return Reply::Ok;
        }
        if stdin && self.init.io.input.is_none() {
            return error_reply(format!("container {} was not created with an open stdin", self.id));
        }
        client.role = Role::Attached { stdin };
        Reply::Streaming { pid: self.init.pid.as_raw() }
    }

    fn exec(&mut self, index: usize, process: Process, stdin: bool) -> Reply {
        if self.init.status.is_some() {
            return error_reply(format!("container {} has exited; cannot exec", self.id));
        }
        let terminal = process.terminal().unwrap_or(false);
        let pipes = if terminal { None } else { Some(stdio::pipes(stdin)) };
        let (child, io) = match pipes.transpose() {
            Ok(Some((child, io))) => (Some(child), Some(io)),
            Ok(None) => (None, None),
            Err(errno) => return error_reply(format!("exec stdio: {errno}")),
        };
        let opts = ExecOptions {
            process,
            console_socket: None,
            pid_file: None,
            // The monitor keeps the terminal and reaps the process itself.
            detach: false,
            preserve_fds: 0,
            stdio: child.as_ref().map(|c| c.raw()),
        };
        let created = match self.runtime.exec_process(&self.id, &opts) {
            Ok(created) => created,
            Err(e) => return runtime_error_reply(&e),
        };
        drop(child);
        let io = match (io, created.pty) {
            (Some(io), _) => io,
            (None, Some(master)) => match stdio::pty(master, stdin) {
                Ok(io) => io,
                Err(errno) => return error_reply(format!("exec terminal: {errno}")),
            },
            (None, None) => return error_reply("exec: the runtime returned no terminal".into()),
        };
        self.execs.push(Supervised { pid: created.pid, io, status: None });
        self.clients[index].role = Role::Exec { pid: created.pid };
        Reply::Streaming { pid: created.pid.as_raw() }
    }

    /// Ends the streams of exec'd processes that exited and drained.
    fn settle_execs(&mut self) {
        let now = Instant::now();
        let mut index = 0;
        while index < self.execs.len() {
            let process = &self.execs[index];
            let done = process.status.is_some_and(|(_, at)| process.io.outputs_closed() || now - at > DRAIN_LIMIT);
            if !done {
                index += 1;
                continue;
            }
            let process = self.execs.remove(index);
            let (status, _) = process.status.expect("checked above");
            let exit = exit_info(status, false);
            if let Some(client) =
                self.clients.iter_mut().find(|c| matches!(c.role, Role::Exec { pid } if pid == process.pid))
            {
                client.frame(FrameKind::Exit, &serde_json::to_vec(&exit).expect("exit info serialises"));
                client.closing = true;
            }
        }
    }

    /// Once the container's init exited and its output drained: records the
    /// exit durably, tells everyone, and removes the container.
    fn settle_init(&mut self) {
        let Some((status, at)) = self.init.status else { return };
        if self.flush_deadline.is_some() || !(self.init.io.outputs_closed() || at.elapsed() > DRAIN_LIMIT) {
            return;
        }
        if let Some(log) = &mut self.log {
            let _ = log.flush_partial();
        }
        let oom_killed = self.runtime.state(&self.id).is_ok_and(|s| s.oom_killed);
        let exit = exit_info(status, oom_killed);
        if let Err(e) = exit::write(&self.dir, &exit) {
            (self.diagnostics)(format!("record the exit: {e}"));
        }
        if let Err(e) = self.runtime.delete(&self.id, true) {
            (self.diagnostics)(format!("delete container {}: {e}", self.id));
        }
        let payload = serde_json::to_vec(&exit).expect("exit info serialises");
        for client in &mut self.clients {
            match client.role {
                Role::Waiting => {
                    client.reply(&Reply::Exited { exit: exit.clone() });
                    client.closing = true;
                }
                Role::Attached { .. } => {
                    client.frame(FrameKind::Exit, &payload);
                    client.closing = true;
                }
                _ => {}
            }
        }
        self.exit = Some(exit);
        self.flush_deadline = Some(Instant::now() + FLUSH_LIMIT);
    }
}

fn exit_info(status: ExitStatus, oom_killed: bool) -> ExitInfo {
    let signal = match status {
        ExitStatus::Signaled(signal) => Some(signal as i32),
        ExitStatus::Exited(_) => None,
    };
    ExitInfo { code: status.code(), signal, oom_killed, finished_at: crate::state::now_rfc3339() }
}

fn error_reply(message: String) -> Reply {
    Reply::Error { message, exit_code: None }
}

fn runtime_error_reply(err: &RuntimeError) -> Reply {
    let code = err.exit_code();
    Reply::Error { message: err.to_string(), exit_code: (code != 1).then_some(code) }
}

fn ok_or_error(result: Result<(), RuntimeError>) -> Reply {
    match result {
        Ok(()) => Reply::Ok,
        Err(e) => runtime_error_reply(&e),
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Start => "start",
        Request::Kill { .. } => "kill",
        Request::Wait => "wait",
        Request::State => "state",
        Request::Stats => "stats",
        Request::Pause => "pause",
        Request::Resume => "resume",
        Request::Resize { .. } => "resize",
        Request::Update { .. } => "update",
        Request::Pids => "list processes",
        Request::CloseStdin => "close stdin",
        Request::Exec { .. } => "exec",
        Request::Attach { .. } => "attach",
        Request::ReopenLog => "reopen the log",
    }
}
