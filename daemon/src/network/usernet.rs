//! A rootless toted's default network: user-mode networking by a helper
//! process of the container's own, slirp4netns (the default) or pasta
//! (Debian's `passt`), chosen by `[network] rootless_driver`. iptables and
//! bridges need real root, so a rootless container's namespace (made and
//! pinned as in root mode, `lo` up, owned by toted's user namespace) is
//! connected instead by the helper: it runs in the host's network
//! namespace (toted's user namespace has none of its own), puts a tap
//! device `eth0` in the container's namespace and carries its traffic over
//! ordinary sockets of the user's. So, with either helper:
//!
//! - the container is 10.0.2.100/24; its outbound connections are the
//!   user's own connections on the host;
//! - the gateway, 10.0.2.2, is the host's loopback: a server on the host's
//!   127.0.0.1 is reachable from the container;
//! - a published port is a socket the helper binds on the host, so ports
//!   below net.ipv4.ip_unprivileged_port_start are refused.
//!
//! Why slirp4netns by default: Debian 12's pasta (2023-03-09) corrupts a
//! TCP connection the container half-closes (the peer's data arrives over
//! and over and the connection never ends: `echo hi | nc host port`), while
//! libslirp's TCP is sound.
//!
//! Published ports: pasta binds and forwards them itself (splicing
//! loopback connections in the kernel). With slirp4netns, TCP ports go
//! through `tote-shim port-forward` instead: toted binds and listens on
//! them, and the forwarder, inside the container's namespace, connects to
//! the container for each connection and splices the bytes both ways
//! (slirp4netns's own forwarding carries every byte through libslirp, at a
//! third of the speed); UDP ports are slirp4netns's (its API's
//! `add_hostfwd`).
//!
//! The helper and the forwarder outlive toted (own sessions, not toted's
//! children), so containers keep their network across toted restarts.
//! Their pids are in `<state>/usernet/<sandbox>` and `<sandbox>.fwd`
//! (written before they run: by pasta itself, or by toted's detached child
//! before it execs) with their start times, which toted adds once they
//! run, so that a recycled pid is never taken for one; beside them are
//! their log and (slirp4netns publishing UDP ports) its API socket. They
//! are killed by pid when the sandbox's network is torn down.

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Attachment, NetworkError, PortMapping, Protocol};

/// Which program connects rootless containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Helper {
    #[default]
    Slirp4netns,
    Pasta,
}

impl Helper {
    pub fn program(self) -> &'static str {
        match self {
            Helper::Slirp4netns => "slirp4netns",
            Helper::Pasta => "pasta",
        }
    }

    /// The Debian package that has it.
    pub fn package(self) -> &'static str {
        match self {
            Helper::Slirp4netns => "slirp4netns",
            Helper::Pasta => "passt",
        }
    }
}

impl std::fmt::Display for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.program())
    }
}

/// The container's address, gateway and interface: slirp4netns's defaults
/// (those of Docker's and Podman's rootless modes), given to pasta too, the
/// same for every container, each having a namespace and a helper of its
/// own.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const PREFIX: u8 = 24;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const INTERFACE: &str = "eth0";
/// Large frames on the tap: fewer trips through the helper per byte (the
/// largest slirp4netns takes; pasta's default).
const MTU: u32 = 65520;

/// Where the kernel keeps the lowest port an unprivileged process may bind
/// (per network namespace: toted's is the host's).
pub const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
const SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";

/// How long a helper may take to configure the namespace.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a killed helper may take to go.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The descriptor slirp4netns says "ready" on.
const READY_FD: RawFd = 3;

/// The helper's binary, found on PATH.
pub fn find(helper: Helper) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    find_in(helper.program(), &path)
}

fn find_in(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|dir| dir.join(program)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// What a container on the user-mode network is given.
pub fn attachment() -> Attachment {
    Attachment {
        ip: IpAddr::V4(ADDRESS),
        prefix: PREFIX,
        gateway: Some(IpAddr::V4(GATEWAY)),
        mac: None,
        interface: INTERFACE.into(),
        additional_ips: Vec::new(),
    }
}

/// A sandbox's helper files: the helper's pid file `base`, the port
/// forwarder's, their log and slirp4netns's API socket.
#[derive(Debug, Clone)]
pub struct Files {
    pub pid: PathBuf,
    pub forwarder: PathBuf,
    pub log: PathBuf,
    pub api: PathBuf,
}

impl Files {
    pub fn at(base: &Path) -> Self {
        Self {
            pid: base.to_path_buf(),
            forwarder: base.with_extension("fwd"),
            log: base.with_extension("log"),
            api: base.with_extension("sock"),
        }
    }
}

/// Whether `helper` needs `tote-shim port-forward` for `ports`: slirp4netns
/// publishing a TCP port.
pub fn needs_forwarder(helper: Helper, ports: &[PortMapping]) -> bool {
    helper == Helper::Slirp4netns && ports.iter().any(|m| m.protocol == Protocol::Tcp)
}

/// The lowest port an unprivileged process may bind on the host.
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string(UNPRIVILEGED_PORT_START).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(1024)
}

/// Refuses host ports below `start`: the helper, the user's, cannot bind
/// them.
pub fn check_unprivileged_ports(ports: &[PortMapping], start: u16) -> Result<(), NetworkError> {
    match ports.iter().find(|m| m.host_port != 0 && m.host_port < start) {
        Some(mapping) => Err(NetworkError::PrivilegedPort { port: mapping.host_port, start, sysctl: SYSCTL }),
        None => Ok(()),
    }
}

/// Starts `helper` (the binary `program`) for the namespace at `netns`,
/// publishing `ports` (their host ports chosen already; TCP ones through
/// tote-shim `shim`'s port forwarder where the helper needs one), and
/// returns its pid once the namespace is configured and the ports are
/// bound. On failure nothing of it is left.
pub fn start(
    helper: Helper,
    program: &Path,
    shim: &Path,
    netns: &Path,
    ports: &[PortMapping],
    files: &Files,
) -> Result<i32, NetworkError> {
    if let Some(dir) = files.pid.parent() {
        std::fs::create_dir_all(dir).map_err(NetworkError::io("create", dir))?;
    }
    for stale in [&files.pid, &files.forwarder, &files.log, &files.api] {
        let _ = std::fs::remove_file(stale);
    }
    let started = match helper {
        Helper::Pasta => start_pasta(program, netns, ports, files),
        Helper::Slirp4netns => start_slirp4netns(program, netns, ports, files),
    }
    .and_then(|pid| {
        if needs_forwarder(helper, ports) {
            start_forwarder(shim, netns, ports, files)?;
        }
        Ok(pid)
    });
    if started.is_err() {
        let _ = stop(files, netns);
    }
    started
}

/// Kills the forwarder and the helper the pid files name (those that still
/// run), waits until they are gone (their host ports are free again then)
/// and removes their files.
pub fn stop(files: &Files, netns: &Path) -> Result<(), NetworkError> {
    stop_waiting(files, netns, true)
}

/// [`stop`] of a sandbox's network as it ends: the helper is waited for
/// only when it holds host ports (pasta's published ones, slirp4netns's
/// UDP ones). Its
/// exit closes its tap device, and the kernel unregisters a device only
/// after an RCU grace period, in the closing process: ~17 ms here, which
/// every `run --rm` would wait out otherwise. The forwarder (the TCP
/// ports) goes at once and is always waited for.
pub fn release(helper: Helper, files: &Files, netns: &Path, ports: &[PortMapping]) -> Result<(), NetworkError> {
    let binds_ports = match helper {
        Helper::Pasta => !ports.is_empty(),
        Helper::Slirp4netns => ports.iter().any(|m| m.protocol == Protocol::Udp),
    };
    stop_waiting(files, netns, binds_ports)
}

fn stop_waiting(files: &Files, netns: &Path, wait_for_helper: bool) -> Result<(), NetworkError> {
    kill(&files.forwarder, netns, true)?;
    kill(&files.pid, netns, wait_for_helper)?;
    for file in [&files.pid, &files.forwarder, &files.log, &files.api] {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(NetworkError::io("remove", file)(e)),
            _ => {}
        }
    }
    Ok(())
}

fn kill(pid_file: &Path, netns: &Path, wait: bool) -> Result<(), NetworkError> {
    let Some(pid) = alive(pid_file, netns) else { return Ok(()) };
    let target = nix::unistd::Pid::from_raw(pid);
    match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(errno) => return Err(NetworkError::HelperStop { pid, reason: format!("kill: {errno}") }),
    }
    if !wait {
        return Ok(());
    }
    let began = Instant::now();
    while alive(pid_file, netns).is_some() {
        if began.elapsed() > STOP_TIMEOUT {
            return Err(NetworkError::HelperStop {
                pid,
                reason: format!("still there {} s after SIGKILL", STOP_TIMEOUT.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The helper the pid file names, if it still runs (see [`alive`]).
pub fn running(files: &Files, netns: &Path) -> Option<i32> {
    alive(&files.pid, netns)
}

/// The port forwarder the pid file names, if it still runs.
pub fn forwarder_running(files: &Files, netns: &Path) -> Option<i32> {
    alive(&files.forwarder, netns)
}

/// The process a pid file names, if it still runs: by its start time, or
/// (when toted stopped before adding that) by its command line naming the
/// namespace `netns`, which only that sandbox's helper and forwarder do.
fn alive(pid_file: &Path, netns: &Path) -> Option<i32> {
    let (pid, start) = read_pid_file(pid_file)?;
    let stat = tote_shim::state::proc_stat(pid)?;
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return None;
    }
    let same = match start {
        Some(start) => stat.start_time == start,
        None => std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let wanted = netns.as_os_str().as_bytes();
            cmdline.split(|b| *b == 0).any(|arg| arg == wanted)
        }),
    };
    same.then_some(pid)
}

// pasta

/// pasta's command line.
fn pasta_args(netns: &Path, ports: &[PortMapping], pid_file: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--config-net",
        "--quiet",
        "--address",
        &ADDRESS.to_string(),
        "--netmask",
        &PREFIX.to_string(),
        "--gateway",
        &GATEWAY.to_string(),
        "--ns-ifname",
        INTERFACE,
        "--mtu",
        &MTU.to_string(),
        // Nothing of the host's loopback is forwarded to the container's
        // own loopback (pasta's default, "auto", would forward every port
        // the host listens on, and keep watching them): the gateway
        // address reaches the host's loopback instead.
        "--tcp-ns",
        "none",
        "--udp-ns",
        "none",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    for (flag, protocol) in [("--tcp-ports", Protocol::Tcp), ("--udp-ports", Protocol::Udp)] {
        let specs: Vec<String> = ports.iter().filter(|m| m.protocol == protocol).map(pasta_port).collect();
        // Without a flag pasta would forward "auto": whatever the
        // container listens on.
        let specs = if specs.is_empty() { vec!["none".to_string()] } else { specs };
        for spec in specs {
            args.push(flag.into());
            args.push(spec.into());
        }
    }
    args.extend(["--pid".into(), pid_file.into(), "--netns".into(), netns.into()]);
    args
}

/// One published port as pasta's `-t`/`-u` take it: `[ADDR/]HOST:CONTAINER`.
fn pasta_port(mapping: &PortMapping) -> String {
    match mapping.host_ip {
        Some(ip) => format!("{ip}/{}:{}", mapping.host_port, mapping.container_port),
        None => format!("{}:{}", mapping.host_port, mapping.container_port),
    }
}

/// pasta configures the namespace, binds the ports, daemonizes (writing
/// its pid file) and then its first process exits: done when it has.
fn start_pasta(program: &Path, netns: &Path, ports: &[PortMapping], files: &Files) -> Result<i32, NetworkError> {
    let args = pasta_args(netns, ports, &files.pid);
    let failed = |status: String, log: &Path| NetworkError::Helper {
        helper: Helper::Pasta,
        status,
        stderr: explain(&std::fs::read_to_string(log).unwrap_or_default()),
        command: command_line(program, &args),
    };
    // Its messages go to a file, not a pipe, which its daemon could keep
    // open.
    let log = std::fs::File::create(&files.log).map_err(NetworkError::io("create", &files.log))?;
    let mut child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| spawn_error(Helper::Pasta, program, source))?;
    let began = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return Err(failed(status.to_string(), &files.log)),
            Ok(None) if began.elapsed() > START_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                let why = format!("it did not configure the namespace within {} s", START_TIMEOUT.as_secs());
                return Err(failed(why, &files.log));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(failed(format!("wait: {e}"), &files.log)),
        }
    }
    adopt(&files.pid).ok_or_else(|| failed("exit status 0, but its daemon is not running".into(), &files.log))
}

// slirp4netns

fn slirp4netns_args(netns: &Path, api: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--configure".into(),
        format!("--mtu={MTU}").into(),
        // Its own mount namespace, capabilities dropped, and a seccomp
        // filter: what Podman runs it with.
        "--enable-sandbox".into(),
        "--enable-seccomp".into(),
        "--netns-type=path".into(),
        format!("--ready-fd={READY_FD}").into(),
    ];
    if let Some(api) = api {
        let mut flag = OsString::from("--api-socket=");
        flag.push(api);
        args.push(flag);
    }
    args.extend([netns.into(), INTERFACE.into()]);
    args
}

/// slirp4netns stays in the foreground: it is started detached (see
/// [`detach`]), says "1" on its ready descriptor once the namespace is
/// configured, and is then told the ports to publish over its API socket.
fn start_slirp4netns(program: &Path, netns: &Path, ports: &[PortMapping], files: &Files) -> Result<i32, NetworkError> {
    // TCP ports go through the forwarder; UDP ones through its API.
    let udp: Vec<&PortMapping> = ports.iter().filter(|m| m.protocol == Protocol::Udp).collect();
    let api = (!udp.is_empty()).then_some(files.api.as_path());
    let args = slirp4netns_args(netns, api);
    let failed = |status: String| NetworkError::Helper {
        helper: Helper::Slirp4netns,
        status,
        stderr: explain(&std::fs::read_to_string(&files.log).unwrap_or_default()),
        command: command_line(program, &args),
    };
    let log = std::fs::File::create(&files.log).map_err(NetworkError::io("create", &files.log))?;
    let mut command = Command::new(program);
    command.args(&args);
    let pid = spawn_detached(command, log, &files.pid, &[]).map_err(|e| match e {
        Spawned::Missing(source) => spawn_error(Helper::Slirp4netns, program, source),
        Spawned::Failed(why) => failed(why),
    })?;
    for mapping in udp {
        add_hostfwd(&files.api, mapping).map_err(|why| failed(format!("publish {mapping}: {why}")))?;
    }
    Ok(pid)
}

/// `tote-shim port-forward` for the TCP ports: toted binds and listens on
/// the host's ports here (SO_REUSEADDR, as a server does), and hands the
/// sockets over (see `tote_shim::port_forward`); its pid once it is in the
/// container's namespace.
pub fn start_forwarder(shim: &Path, netns: &Path, ports: &[PortMapping], files: &Files) -> Result<i32, NetworkError> {
    let tcp: Vec<&PortMapping> = ports.iter().filter(|m| m.protocol == Protocol::Tcp).collect();
    let mut listeners = Vec::with_capacity(tcp.len());
    for mapping in &tcp {
        listeners.push(listen(mapping)?);
    }
    let mut command = Command::new(shim);
    command.arg("port-forward").arg(netns).arg(ADDRESS.to_string());
    command.args(tcp.iter().map(|m| m.container_port.to_string()));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .map_err(NetworkError::io("open", &files.log))?;
    let fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    let failed = |status: String| NetworkError::Helper {
        helper: Helper::Slirp4netns,
        status,
        stderr: explain(&std::fs::read_to_string(&files.log).unwrap_or_default()),
        command: command_line(shim, &[OsString::from("port-forward"), netns.into()]),
    };
    // The forwarder has them now; toted's copies go.
    spawn_detached(command, log, &files.forwarder, &fds).map_err(|e| match e {
        Spawned::Missing(source) => failed(format!("start {}: {source}", shim.display())),
        Spawned::Failed(why) => failed(format!("the port forwarder: {why}")),
    })
}

/// A listening socket on the mapping's host address and port.
fn listen(mapping: &PortMapping) -> Result<socket2::Socket, NetworkError> {
    use socket2::{Domain, Socket, Type};
    let ip = mapping.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let address = std::net::SocketAddr::new(ip, mapping.host_port);
    let error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            NetworkError::PortAllocated { address, protocol: mapping.protocol }
        } else {
            NetworkError::AllocatePort { ip, protocol: mapping.protocol, source }
        }
    };
    // socket2 opens it close-on-exec; the forwarder gets a copy made for it.
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    socket.listen(1024).map_err(error)?;
    Ok(socket)
}

enum Spawned {
    /// The program could not be run.
    Missing(std::io::Error),
    /// It ran, and did not say it was ready (why, from its log aside).
    Failed(String),
}

/// Runs `command` detached (see [`detach`]) with stdio to `log`, the ready
/// pipe at [`READY_FD`] and `fds` after it, and waits until it writes "1"
/// on the pipe; its pid (from `pid_file`, to which its start time is added).
fn spawn_detached(mut command: Command, log: std::fs::File, pid_file: &Path, fds: &[RawFd]) -> Result<i32, Spawned> {
    let log_out = log.try_clone().map_err(Spawned::Missing)?;
    let pid_path = CString::new(pid_file.as_os_str().as_bytes())
        .map_err(|_| Spawned::Failed(format!("{} holds a NUL byte", pid_file.display())))?;
    let (ready_read, ready_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| Spawned::Failed(format!("pipe: {errno}")))?;
    let mut passed = Vec::with_capacity(fds.len() + 1);
    passed.push(ready_write.as_raw_fd());
    passed.extend_from_slice(fds);
    // Filled in the child without allocating.
    let mut spare = vec![-1; passed.len()];
    command.stdin(Stdio::null()).stdout(log_out).stderr(log);
    // SAFETY: `detach` runs in the forked child before exec and makes
    // only async-signal-safe calls (fork, setsid, getpid, open, write,
    // close, fcntl, dup2, _exit) on memory prepared before the fork.
    unsafe { command.pre_exec(move || detach(&passed, &mut spare, &pid_path)) };
    // The child forks the process and exits at once; spawn returns once
    // that has exec'd (or failed to).
    let mut child = command.spawn().map_err(Spawned::Missing)?;
    drop(ready_write);
    let _ = child.wait();
    wait_ready(ready_read.as_fd()).map_err(Spawned::Failed)?;
    adopt(pid_file).ok_or_else(|| Spawned::Failed("it said it was ready, but it is not running".into()))
}

/// In the child between fork and exec: forks again so that the process is
/// no child of toted's (its parent exits here, and it is left to init or
/// the nearest subreaper), in a session of its own, with its pid written
/// to `pid_file` before it runs, and `fds` at [`READY_FD`] and up (moved
/// through `spare`, as long, first, so that none is overwritten before it
/// is moved).
fn detach(fds: &[RawFd], spare: &mut [RawFd], pid_file: &CString) -> std::io::Result<()> {
    let os_error = std::io::Error::last_os_error;
    // SAFETY: fork in a single-threaded child; the parent side only
    // exits.
    match unsafe { libc::fork() } {
        -1 => return Err(os_error()),
        0 => {}
        // SAFETY: _exit ends the intermediate child without running
        // anything of the parent's (no atexit handlers, no flushing).
        _ => unsafe { libc::_exit(0) },
    }
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } == -1 {
        return Err(os_error());
    }
    // SAFETY: getpid takes no arguments.
    let pid = unsafe { libc::getpid() };
    let mut text = [0u8; 12];
    let len = decimal(pid.unsigned_abs(), &mut text);
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(pid_file.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(os_error());
    }
    // SAFETY: writes `len` bytes of a live stack buffer to a descriptor
    // this function opened, then closes it.
    let written = unsafe { libc::write(fd, text.as_ptr().cast(), len) };
    // SAFETY: as above.
    unsafe { libc::close(fd) };
    if usize::try_from(written).ok() != Some(len) {
        return Err(os_error());
    }
    // Above every target first (close-on-exec copies, gone at the exec).
    let above = READY_FD + RawFd::try_from(fds.len()).unwrap_or(RawFd::MAX - READY_FD);
    for (from, to) in fds.iter().zip(spare.iter_mut()) {
        // SAFETY: duplicates a descriptor this process holds.
        *to = unsafe { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, above) };
        if *to == -1 {
            return Err(os_error());
        }
    }
    for (target, from) in (READY_FD..).zip(spare.iter()) {
        // SAFETY: dup2 of a descriptor this process holds onto a number
        // none of the copies has; the result is not close-on-exec.
        if unsafe { libc::dup2(*from, target) } == -1 {
            return Err(os_error());
        }
    }
    Ok(())
}

/// `n` in decimal with a newline at the start of `out`; its length.
fn decimal(mut n: u32, out: &mut [u8; 12]) -> usize {
    let mut digits = [0u8; 10];
    let mut count = 0;
    loop {
        digits[count] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..count {
        out[i] = digits[count - 1 - i];
    }
    out[count] = b'\n';
    count + 1
}

/// Waits for slirp4netns's "1" on the ready pipe; it closing the pipe
/// without it means it failed (its log says why).
fn wait_ready(ready: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let began = Instant::now();
    loop {
        let left = START_TIMEOUT.saturating_sub(began.elapsed());
        if left.is_zero() {
            return Err(format!("it did not configure the namespace within {} s", START_TIMEOUT.as_secs()));
        }
        let mut fds = [PollFd::new(ready, PollFlags::POLLIN)];
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(format!("poll its ready pipe: {errno}")),
        }
    }
    let mut byte = [0u8; 1];
    match nix::unistd::read(ready.as_raw_fd(), &mut byte) {
        Ok(1) if byte[0] == b'1' => Ok(()),
        Ok(1) => Err(format!("it said {:?} on its ready pipe", char::from(byte[0]))),
        Ok(_) => Err("it exited before the namespace was configured".into()),
        Err(errno) => Err(format!("read its ready pipe: {errno}")),
    }
}

/// One published port through slirp4netns's API (`add_hostfwd`, one
/// request per connection).
fn add_hostfwd(api: &Path, mapping: &PortMapping) -> Result<(), String> {
    let mut arguments = serde_json::json!({
        "proto": mapping.protocol.to_string(),
        "host_port": mapping.host_port,
        "guest_port": mapping.container_port,
    });
    if let Some(ip) = mapping.host_ip {
        arguments["host_addr"] = serde_json::Value::String(ip.to_string());
    }
    let request = serde_json::json!({ "execute": "add_hostfwd", "arguments": arguments });
    let mut socket =
        std::os::unix::net::UnixStream::connect(api).map_err(|e| format!("connect to {}: {e}", api.display()))?;
    socket.set_read_timeout(Some(START_TIMEOUT)).map_err(|e| e.to_string())?;
    socket.write_all(request.to_string().as_bytes()).map_err(|e| format!("write to {}: {e}", api.display()))?;
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let mut reply = String::new();
    socket.read_to_string(&mut reply).map_err(|e| format!("read from {}: {e}", api.display()))?;
    let reply: serde_json::Value =
        serde_json::from_str(&reply).map_err(|e| format!("its API answered {reply:?}: {e}"))?;
    match reply.get("error") {
        None if reply.get("return").is_some() => Ok(()),
        None => Err(format!("its API answered {reply}")),
        Some(error) => {
            Err(error.get("desc").and_then(|d| d.as_str()).map_or_else(|| error.to_string(), str::to_string))
        }
    }
}

// Both

/// Adds the start time to the pid file of a process that runs; its pid.
fn adopt(pid_file: &Path) -> Option<i32> {
    let (pid, _) = read_pid_file(pid_file)?;
    let stat = tote_shim::state::proc_stat(pid).filter(|s| !matches!(s.state, 'Z' | 'X' | 'x'))?;
    write_pid_file(pid_file, pid, stat.start_time).ok()?;
    Some(pid)
}

fn spawn_error(helper: Helper, program: &Path, source: std::io::Error) -> NetworkError {
    match source.kind() {
        std::io::ErrorKind::NotFound => {
            NetworkError::HelperMissing { helper: helper.program(), package: helper.package() }
        }
        _ => NetworkError::CommandSpawn { program: program.display().to_string(), source },
    }
}

fn command_line(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A helper's messages, without pasta's lines about a syslog it cannot
/// reach and slirp4netns's about its seccomp filter, and with what to do
/// about the usual cause.
fn explain(log: &str) -> String {
    let noise = |line: &str| line.starts_with("Failed to send") || line.starts_with("WARNING: Support for seccomp");
    let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty() && !noise(l)).collect();
    let mut text = lines.join("; ");
    if text.contains("tun") || text.contains("TUN") {
        text.push_str(&format!(
            " (user-mode networking needs /dev/net/tun, which is {}: it must be readable and writable by every \
             user, crw-rw-rw-, as udev's default rule makes it; as root: chmod 0666 /dev/net/tun)",
            tun_mode()
        ));
    }
    if text.is_empty() { "(no message)".into() } else { text }
}

fn tun_mode() -> String {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata("/dev/net/tun") {
        Ok(meta) => format!("mode {:04o}", meta.permissions().mode() & 0o7777),
        Err(e) => format!("not usable ({e})"),
    }
}

/// `pid start`: the start time says it is still the same process.
fn write_pid_file(path: &Path, pid: i32, start: u64) -> Result<(), NetworkError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid} {start}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(NetworkError::io("write", path))
}

/// The pid (and the start time, once toted added it) in a pid file.
fn read_pid_file(path: &Path) -> Option<(i32, Option<u64>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    let pid: i32 = fields.next()?.parse().ok()?;
    (pid > 0).then(|| (pid, fields.next().and_then(|s| s.parse().ok())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_ip: Option<&str>, host_port: u16, container_port: u16, protocol: Protocol) -> PortMapping {
        PortMapping { host_ip: host_ip.map(|ip| ip.parse().unwrap()), host_port, container_port, protocol }
    }

    fn words(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn pasta_publishes_each_port_with_its_address_and_nothing_else() {
        let ports = [
            mapping(Some("127.0.0.1"), 8080, 80, Protocol::Tcp),
            mapping(None, 9090, 90, Protocol::Tcp),
            mapping(Some("::1"), 5353, 53, Protocol::Udp),
        ];
        let args = words(&pasta_args(Path::new("/run/n/abc"), &ports, Path::new("/run/p/abc")));
        let pairs: Vec<(&str, &str)> =
            args.windows(2).map(|w| (w[0].as_str(), w[1].as_str())).filter(|(f, _)| f.starts_with("--")).collect();
        assert!(pairs.contains(&("--tcp-ports", "127.0.0.1/8080:80")), "{args:?}");
        assert!(pairs.contains(&("--tcp-ports", "9090:90")), "{args:?}");
        assert!(pairs.contains(&("--udp-ports", "::1/5353:53")), "{args:?}");
        assert!(pairs.contains(&("--tcp-ns", "none")) && pairs.contains(&("--udp-ns", "none")), "{args:?}");
        assert!(pairs.contains(&("--gateway", "10.0.2.2")) && pairs.contains(&("--address", "10.0.2.100")));
        assert_eq!(args[args.len() - 4..], ["--pid", "/run/p/abc", "--netns", "/run/n/abc"]);
        assert!(args.contains(&"--config-net".to_string()));
    }

    #[test]
    fn pasta_without_published_ports_forwards_none_rather_than_auto() {
        let args = words(&pasta_args(Path::new("/n"), &[], Path::new("/p")));
        for flag in ["--tcp-ports", "--udp-ports"] {
            let at = args.iter().position(|a| a == flag).unwrap();
            assert_eq!(args[at + 1], "none", "{args:?}");
            assert_eq!(args.iter().filter(|a| *a == flag).count(), 1);
        }
    }

    #[test]
    fn slirp4netns_gets_an_api_socket_only_to_publish() {
        let args = words(&slirp4netns_args(Path::new("/run/n/abc"), None));
        assert!(!args.iter().any(|a| a.starts_with("--api-socket")), "{args:?}");
        assert_eq!(args[args.len() - 2..], ["/run/n/abc", "eth0"]);
        assert!(args.contains(&"--netns-type=path".to_string()) && args.contains(&"--ready-fd=3".to_string()));
        let args = words(&slirp4netns_args(Path::new("/n"), Some(Path::new("/p.sock"))));
        assert!(args.contains(&"--api-socket=/p.sock".to_string()), "{args:?}");
        // The host's loopback stays reachable through the gateway.
        assert!(!args.iter().any(|a| a.contains("disable-host-loopback")), "{args:?}");
    }

    #[test]
    fn only_slirp4netns_publishing_tcp_needs_the_forwarder() {
        let tcp = [mapping(None, 8080, 80, Protocol::Tcp)];
        let udp = [mapping(None, 5353, 53, Protocol::Udp)];
        assert!(needs_forwarder(Helper::Slirp4netns, &tcp));
        assert!(!needs_forwarder(Helper::Slirp4netns, &udp));
        assert!(!needs_forwarder(Helper::Slirp4netns, &[]));
        assert!(!needs_forwarder(Helper::Pasta, &tcp), "pasta forwards its own");
        let files = Files::at(Path::new("/run/x/usernet/abc"));
        assert_eq!(files.forwarder, Path::new("/run/x/usernet/abc.fwd"));
    }

    #[test]
    fn pids_are_written_in_decimal_without_allocating() {
        let mut out = [0u8; 12];
        let len = decimal(4_194_304, &mut out);
        assert_eq!(&out[..len], b"4194304\n");
        let len = decimal(0, &mut out);
        assert_eq!(&out[..len], b"0\n");
        let len = decimal(u32::MAX, &mut out);
        assert_eq!(&out[..len], b"4294967295\n");
    }

    #[test]
    fn ports_below_the_unprivileged_start_are_refused_naming_the_sysctl() {
        let low = [mapping(None, 8080, 80, Protocol::Tcp), mapping(Some("127.0.0.1"), 80, 80, Protocol::Tcp)];
        let err = check_unprivileged_ports(&low, 1024).unwrap_err().to_string();
        assert!(err.contains("port 80 ") && err.contains("net.ipv4.ip_unprivileged_port_start (1024)"), "{err}");
        check_unprivileged_ports(&low, 80).unwrap();
        // Port 0 is "any free port", which the kernel picks high.
        check_unprivileged_ports(&[mapping(None, 0, 80, Protocol::Udp)], 1024).unwrap();
    }

    #[test]
    fn found_on_path_only_when_executable() {
        let dir = std::env::temp_dir().join(format!("tote-usernet-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = std::env::join_paths([dir.as_path(), Path::new("/nonexistent")]).unwrap();
        assert_eq!(find_in("pasta", &path), None);
        std::fs::write(dir.join("pasta"), "").unwrap();
        assert_eq!(find_in("pasta", &path), None, "not executable");
        std::fs::set_permissions(dir.join("pasta"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(find_in("pasta", &path), Some(dir.join("pasta")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pid_file_names_a_process_only_while_it_is_that_process() {
        let dir = std::env::temp_dir().join(format!("tote-usernet-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Files::at(&dir.join("sandbox"));
        let netns = Path::new("/nonexistent/netns/sandbox");
        let me = i32::try_from(std::process::id()).unwrap();
        let start = tote_shim::state::proc_stat(me).unwrap().start_time;
        write_pid_file(&files.pid, me, start).unwrap();
        assert_eq!(running(&files, netns), Some(me));
        write_pid_file(&files.pid, me, start + 1).unwrap();
        assert_eq!(running(&files, netns), None, "a recycled pid");
        // Only the pid (toted stopped before adding the start time): this
        // process's command line does not name the namespace.
        std::fs::write(&files.pid, format!("{me}\n")).unwrap();
        assert_eq!(running(&files, netns), None);
        assert_eq!(adopt(&files.pid), Some(me), "the start time is added");
        assert_eq!(running(&files, netns), Some(me));
        std::fs::write(&files.pid, "garbage").unwrap();
        assert_eq!(running(&files, netns), None);
        std::fs::write(&files.log, "x").unwrap();
        stop(&files, netns).unwrap();
        assert!(!files.pid.exists() && !files.log.exists());
        stop(&files, netns).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn syslog_noise_is_dropped_and_a_tun_problem_explained() {
        let said = "Failed to send 39 bytes to syslog\nWARNING: Support for seccomp is experimental\n\
                    Failed to open tun socket in namespace\n";
        let text = explain(said);
        assert!(text.starts_with("Failed to open tun socket in namespace"), "{text}");
        assert!(text.contains("/dev/net/tun") && text.contains("0666"), "{text}");
        assert_eq!(explain("Failed to send 1 bytes to syslog\n"), "(no message)");
    }

    #[test]
    fn helpers_by_their_config_names() {
        #[derive(Deserialize)]
        struct Section {
            driver: Helper,
        }
        let parse = |text: &str| toml::from_str::<Section>(text).map(|s| s.driver);
        assert_eq!(parse("driver = \"pasta\"").unwrap(), Helper::Pasta);
        assert_eq!(parse("driver = \"slirp4netns\"").unwrap(), Helper::Slirp4netns);
        assert!(parse("driver = \"vpnkit\"").is_err());
        assert_eq!(Helper::default(), Helper::Slirp4netns);
        assert_eq!((Helper::Pasta.program(), Helper::Pasta.package()), ("pasta", "passt"));
    }
}
