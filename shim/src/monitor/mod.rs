//! tote-shim as a container's monitor: the long-lived process toted starts
//! per container. It creates the container, holds its stdio, writes its log,
//! reaps it, records how it ended and serves the daemon on a unix socket.
//!
//! The monitor is detached from whoever started it (forked away, its own
//! session), so toted can die and come back: the container keeps running
//! and a new daemon finds the socket, or the exit record, in the monitor's
//! directory.

pub mod client;
pub mod exit;
pub mod log;
pub mod protocol;
mod server;
pub mod stdio;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{ForkResult, fork, setsid};
use serde::{Deserialize, Serialize};

use crate::container::{CreateOptions, Runtime};
use log::{LogWriter, Rotation};

/// The monitor's socket, in its directory.
pub const SOCKET: &str = "sock";
/// Where the monitor writes what went wrong for itself (not the container).
pub const DIAGNOSTICS: &str = "monitor.log";

/// What `tote-shim monitor` is told.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub id: String,
    pub bundle: PathBuf,
    /// The runtime's state root (as `tote-shim --root`).
    pub root: PathBuf,
    /// The monitor's own directory: socket, exit record, diagnostics.
    pub dir: PathBuf,
    /// The container log; none for a container whose output is discarded.
    pub log: Option<PathBuf>,
    pub rotation: Rotation,
    /// Give the container a stdin pipe (`-i`).
    pub stdin: bool,
    /// Where to say whether the container was created.
    pub ready_fd: Option<RawFd>,
    pub no_pivot: bool,
}

/// The one line the monitor writes to its ready descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Startup {
    Ready {
        /// The container's init, as the host sees it.
        pid: i32,
        monitor_pid: i32,
    },
    Failed {
        message: String,
        /// 126 or 127 when the container's program could not be run.
        exit_code: Option<i32>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {errno}")]
    Os { op: &'static str, errno: Errno },
    #[error(transparent)]
    Runtime(#[from] crate::container::Error),
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> MonitorError {
    move |errno| MonitorError::Os { op, errno }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MonitorError + 'a {
    move |source| MonitorError::Io { op, path: path.to_path_buf(), source }
}

/// Forks the monitor away and returns in the caller (whose exit code is
/// 0 once the fork worked); the monitor itself never returns.
pub fn spawn(opts: &MonitorOptions) -> i32 {
    // SAFETY: tote-shim is single-threaded here, so the child may run
    // arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => 0,
        Ok(ForkResult::Child) => {
            let code = match serve(opts) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{} monitor: {e}", crate::state::now_rfc3339());
                    1
                }
            };
            std::process::exit(code)
        }
        Err(errno) => {
            report(opts.ready_fd, &Startup::Failed { message: format!("fork the monitor: {errno}"), exit_code: None });
            1
        }
    }
}

fn serve(opts: &MonitorOptions) -> Result<(), MonitorError> {
    setsid().map_err(os("setsid"))?;
    redirect_stdio(&opts.dir)?;
    // Orphans of the container (a double-forking exec) come back to us to reap.
    nix::sys::prctl::set_child_subreaper(true).map_err(os("become a subreaper"))?;
    let signals = block_signals()?;
    let listener = listen(&opts.dir)?;
    // The log is opened again by the serving half; a log that cannot be
    // opened must fail the start here, before there is a container to
    // leave behind.
    if let Some(path) = &opts.log
        && let Err(e) = LogWriter::open(path, opts.rotation)
    {
        let e = io("open the log", path)(e);
        report(opts.ready_fd, &Startup::Failed { message: e.to_string(), exit_code: None });
        let _ = std::fs::remove_file(opts.dir.join(SOCKET));
        return Err(e);
    }
    match create(opts) {
        Ok((pid, process_io)) => {
            report(opts.ready_fd, &Startup::Ready { pid: pid.as_raw(), monitor_pid: nix::unistd::getpid().as_raw() });
            let handover = Handover { pid: pid.as_raw(), listener, io: process_io };
            // Serving from a fresh image drops what creating the container
            // left in memory; if that exec fails, serve from here.
            let handover = match reexec(opts, handover) {
                Ok(never) => match never {},
                Err((handover, errno)) => {
                    eprintln!("{} monitor: re-exec to serve: {errno}; serving in place", crate::state::now_rfc3339());
                    handover
                }
            };
            drop(signals);
            serve_container(opts, handover)
        }
        Err(e) => {
            let exit_code = match &e {
                MonitorError::Runtime(err) if err.exit_code() != 1 => Some(err.exit_code()),
                _ => None,
            };
            report(opts.ready_fd, &Startup::Failed { message: e.to_string(), exit_code });
            let _ = std::fs::remove_file(opts.dir.join(SOCKET));
            Err(e)
        }
    }
}

/// What the creating monitor hands to the serving one.
pub struct Handover {
    pub pid: i32,
    pub listener: UnixListener,
    pub io: stdio::ProcessIo,
}

/// The descriptors of a [`Handover`] as `monitor-serve` gets them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandoverFds {
    pub pid: i32,
    pub listener: RawFd,
    /// Pipes: stdout, stderr and (with `--stdin`) stdin's write end.
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    pub stdin: Option<RawFd>,
    /// A terminal: its master (input too, with `--stdin`).
    pub pty: Option<RawFd>,
}

/// Everything `monitor-serve` needs, as its one JSON argument: no
/// command-line parser runs in the long-lived process, so its memory is
/// only what serving takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeArgs {
    pub id: String,
    pub root: PathBuf,
    pub dir: PathBuf,
    pub log: Option<PathBuf>,
    pub rotation: Rotation,
    pub stdin: bool,
    pub fds: HandoverFds,
}

/// `tote-shim monitor-serve JSON`: the serving half of the monitor.
pub fn serve_main(json: &str) -> i32 {
    let args: ServeArgs = match serde_json::from_str(json) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tote-shim monitor-serve: bad arguments: {e}");
            return 2;
        }
    };
    let opts = MonitorOptions {
        id: args.id,
        bundle: PathBuf::new(),
        root: args.root,
        dir: args.dir,
        log: args.log,
        rotation: args.rotation,
        stdin: args.stdin,
        ready_fd: None,
        no_pivot: false,
    };
    match adopt(&args.fds, args.stdin).and_then(|handover| serve_container(&opts, handover)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{} monitor: {e}", crate::state::now_rfc3339());
            1
        }
    }
}

/// Serves the created container until it is gone.
pub fn serve_container(opts: &MonitorOptions, handover: Handover) -> Result<(), MonitorError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(os("become a subreaper"))?;
    let signals = block_signals()?;
    let log = match &opts.log {
        Some(path) => Some(LogWriter::open(path, opts.rotation).map_err(io("open the log", path))?),
        None => None,
    };
    let diagnostics = Box::new(|message: String| eprintln!("{} {message}", crate::state::now_rfc3339()));
    let runtime = Runtime::new(&opts.root);
    let pid = nix::unistd::Pid::from_raw(handover.pid);
    server::Monitor::new(
        runtime,
        opts.id.clone(),
        opts.dir.clone(),
        handover.listener,
        signals,
        pid,
        handover.io,
        log,
        diagnostics,
    )
    .run();
    let _ = std::fs::remove_file(opts.dir.join(SOCKET));
    Ok(())
}

/// Rebuilds the handover from inherited descriptors (`monitor-serve`).
pub fn adopt(fds: &HandoverFds, stdin: bool) -> Result<Handover, MonitorError> {
    // SAFETY: each descriptor was handed over by the creating monitor for
    // this process alone, and is taken exactly once.
    let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
    for fd in [Some(fds.listener), fds.stdout, fds.stderr, fds.stdin, fds.pty].into_iter().flatten() {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(os("take over descriptors"))?;
    }
    let listener = UnixListener::from(own(fds.listener));
    let io = match fds.pty {
        Some(master) => stdio::pty(own(master), stdin).map_err(os("take over the terminal"))?,
        None => stdio::ProcessIo {
            outputs: [(log::Stream::Stdout, fds.stdout), (log::Stream::Stderr, fds.stderr)]
                .into_iter()
                .filter_map(|(stream, fd)| fd.map(|fd| (stream, own(fd))))
                .collect(),
            input: fds.stdin.map(own),
            pty: None,
            pending_input: Vec::new(),
            close_input: false,
        },
    };
    Ok(Handover { pid: fds.pid, listener, io })
}

/// Replaces this process (same pid, so still the container's parent) with
/// `tote-shim monitor-serve`, passing the descriptors on.
fn reexec(opts: &MonitorOptions, handover: Handover) -> Result<std::convert::Infallible, (Handover, Errno)> {
    use std::ffi::CString;
    let mut fds = HandoverFds { pid: handover.pid, listener: handover.listener.as_raw_fd(), ..HandoverFds::default() };
    match &handover.io.pty {
        Some(master) => fds.pty = Some(master.as_raw_fd()),
        None => {
            for (stream, fd) in &handover.io.outputs {
                match stream {
                    log::Stream::Stdout => fds.stdout = Some(fd.as_raw_fd()),
                    log::Stream::Stderr => fds.stderr = Some(fd.as_raw_fd()),
                }
            }
            fds.stdin = handover.io.input.as_ref().map(AsRawFd::as_raw_fd);
        }
    }
    let inherited: Vec<RawFd> =
        [Some(fds.listener), fds.stdout, fds.stderr, fds.stdin, fds.pty].into_iter().flatten().collect();
    let serve = ServeArgs {
        id: opts.id.clone(),
        root: opts.root.clone(),
        dir: opts.dir.clone(),
        log: opts.log.clone(),
        rotation: opts.rotation,
        stdin: opts.stdin,
        fds,
    };
    let json = serde_json::to_string(&serve).expect("serve arguments serialise");
    let args = vec!["tote-shim".to_string(), "monitor-serve".to_string(), json];
    let Ok(args) = args.into_iter().map(CString::new).collect::<Result<Vec<_>, _>>() else {
        return Err((handover, Errno::EINVAL));
    };
    for fd in &inherited {
        if let Err(errno) = nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())) {
            return Err((handover, errno));
        }
    }
    // /proc/self/exe: the very image running now, the protected copy included.
    match nix::unistd::execv(c"/proc/self/exe", &args) {
        Ok(never) => match never {},
        Err(errno) => {
            for fd in &inherited {
                let _ = nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
            }
            Err((handover, errno))
        }
    }
}

fn create(opts: &MonitorOptions) -> Result<(nix::unistd::Pid, stdio::ProcessIo), MonitorError> {
    let (child, io) = stdio::pipes(opts.stdin).map_err(os("make the container's stdio"))?;
    let create = CreateOptions {
        id: opts.id.clone(),
        bundle: opts.bundle.clone(),
        no_pivot: opts.no_pivot,
        stdio: Some(child.raw()),
        keep_pty: true,
        ..CreateOptions::default()
    };
    let created = Runtime::new(&opts.root).create(&create)?;
    drop(child);
    let io = match created.pty {
        Some(master) => stdio::pty(master, opts.stdin).map_err(os("set up the container's terminal"))?,
        None => io,
    };
    Ok((created.pid, io))
}

/// The monitor reads nothing and prints nothing to its creator: stdin and
/// stdout are /dev/null, stderr its diagnostics file.
fn redirect_stdio(dir: &Path) -> Result<(), MonitorError> {
    let null =
        OpenOptions::new().read(true).write(true).open("/dev/null").map_err(io("open", Path::new("/dev/null")))?;
    let path = dir.join(DIAGNOSTICS);
    let diagnostics = OpenOptions::new().create(true).append(true).open(&path).map_err(io("open", &path))?;
    for (fd, target) in [(null.as_raw_fd(), 0), (null.as_raw_fd(), 1), (diagnostics.as_raw_fd(), 2)] {
        nix::unistd::dup2(fd, target).map_err(os("redirect stdio"))?;
    }
    Ok(())
}

/// SIGCHLD comes through a signalfd; the signals a terminal or a careless
/// `kill` would send are held, so only SIGKILL ends a monitor. SIGPIPE is
/// ignored: a client that went away is seen as a write error.
fn block_signals() -> Result<SignalFd, MonitorError> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        set.add(signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(os("block signals"))?;
    // SAFETY: SIG_IGN installs no handler code; the container's init resets
    // every disposition before it execs.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map_err(os("ignore SIGPIPE"))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(os("signalfd"))
}

fn listen(dir: &Path) -> Result<UnixListener, MonitorError> {
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io("listen on", &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &path))?;
    listener.set_nonblocking(true).map_err(io("make nonblocking", &path))?;
    Ok(listener)
}

fn report(fd: Option<RawFd>, startup: &Startup) {
    let Some(fd) = fd else { return };
    // SAFETY: the ready descriptor was handed to us for exactly this one
    // line; taking ownership closes it afterwards, which the reader sees.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut line = serde_json::to_vec(startup).expect("startup serialises");
    line.push(b'\n');
    let _ = file.write_all(&line);
}
