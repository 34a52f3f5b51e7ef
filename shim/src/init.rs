//! What runs inside a new container process, between clone(2) and
//! execve(2). It is a forked copy of tote-shim, so it reads its whole
//! configuration from memory the parent prepared; nothing is re-executed.
//!
//! The sequence, for the init of a new container:
//! 1. (stage, only when joining namespaces or creating a time namespace)
//!    join, unshare, and fork the real init;
//! 2. wait until the parent has written the id maps and placed the process
//!    in its cgroup;
//! 3. cgroup namespace, loopback up, hostname, rootfs, pivot_root (or,
//!    without a mount namespace, chroot), sysctls, terminal, masked and
//!    read-only paths;
//! 4. drop privileges, report ready, wait to be started;
//! 5. startContainer hooks, seal descriptors, seccomp, execve.
//!
//! A failure up to 4 reaches `create` (or `run`, `exec`) over the channel;
//! a failure in 5, after `start` opened exec.fifo, is written into the fifo
//! for `start` to report, so no failure of the init is a silent success.
//!
//! An exec'd process takes the same path minus the container-wide setup.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::Spec;

use crate::cgroups::Hierarchy;
use crate::hooks::{self, Phase};
use crate::namespaces::{CLONE_NEWTIME, NamespacePlan};
use crate::process::{ProcessError, ProcessPlan};
use crate::rootfs::{self, RootfsConfig, RootfsError};
use crate::seccomp::CompiledSeccomp;
use crate::sync::{Channel, ExpectError, Message};
use crate::syscall::{NodeKind, Syscall, SyscallError};
use crate::terminal::{self, TerminalError};

/// How the process learns it may exec.
#[derive(Debug, Clone, Copy)]
pub enum Gate {
    /// `create`: block opening the container's exec.fifo (an O_PATH
    /// descriptor) for writing until `start` opens it for reading.
    Fifo(RawFd),
    /// `run` and `exec`: a Start message on the channel.
    Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The container's first process: sets the container up.
    Init,
    /// A process exec'd into a running container.
    Exec,
}

/// Everything the child needs, prepared by the parent before clone(2).
pub struct InitConfig<'a> {
    pub role: Role,
    pub id: &'a str,
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub namespaces: &'a NamespacePlan,
    pub process: &'a ProcessPlan,
    pub seccomp: Option<&'a CompiledSeccomp>,
    pub cgroup: Option<(&'a Path, Hierarchy)>,
    pub gate: Gate,
    pub no_pivot: bool,
    /// Whether the parent cloned straight into the namespaces (no stage).
    pub direct: bool,
    /// Descriptors to become the process's stdin, stdout and stderr (a
    /// monitor's pipes); `None` keeps tote-shim's own.
    pub stdio: Option<[RawFd; 3]>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Channel(#[from] ExpectError),
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: SyscallError,
    },
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("terminal: {0}")]
    Terminal(#[from] TerminalError),
    #[error("{step}: {errno}")]
    Os { step: &'static str, errno: Errno },
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
}

fn step(step: &'static str) -> impl FnOnce(SyscallError) -> InitError {
    move |source| InitError::Step { step, source }
}

fn os(step: &'static str) -> impl FnOnce(Errno) -> InitError {
    move |errno| InitError::Os { step, errno }
}

impl From<crate::sync::ChannelError> for InitError {
    fn from(err: crate::sync::ChannelError) -> Self {
        Self::Channel(err.into())
    }
}

/// The child's entry point. Never returns: it execs the container's
/// program or exits, after telling the parent what went wrong.
pub fn child_main(cfg: &InitConfig, chan: &Channel) -> ! {
    let sys = crate::syscall::LinuxSyscall;
    let code = match run(cfg, chan, &sys) {
        Ok(never) => match never {},
        Err(Exit::Stage) => 0,
        Err(Exit::Failed(err)) => match exec_errno(&err) {
            Some(errno) => {
                let _ = chan.send(&Message::ExecFailed(errno as i32, err.to_string()));
                if errno == Errno::ENOENT { 127 } else { 126 }
            }
            None => {
                let _ = chan.send(&Message::Error(err.to_string()));
                1
            }
        },
    };
    // SAFETY: _exit ends this forked process without running the parent's
    // atexit handlers or flushing its stdio buffers a second time.
    unsafe { libc::_exit(code) }
}

/// The errno of a failure to run the program itself, as opposed to a
/// failure to set the container up.
fn exec_errno(err: &InitError) -> Option<Errno> {
    match err {
        InitError::Process(ProcessError::NotInPath { .. } | ProcessError::NotFound(_)) => Some(Errno::ENOENT),
        InitError::Process(ProcessError::NotExecutable(_)) => Some(Errno::EACCES),
        InitError::Process(ProcessError::Step { step: "execve", source }) => Some(source.errno().unwrap_or(Errno::EIO)),
        _ => None,
    }
}

enum Exit {
    /// The stage process handed over to the init it forked.
    Stage,
    Failed(InitError),
}

impl<E: Into<InitError>> From<E> for Exit {
    fn from(err: E) -> Self {
        Exit::Failed(err.into())
    }
}

fn run(cfg: &InitConfig, chan: &Channel, sys: &dyn Syscall) -> Result<std::convert::Infallible, Exit> {
    reset_signals();
    if let Some(stdio) = cfg.stdio {
        for (target, fd) in stdio.into_iter().enumerate() {
            let target = i32::try_from(target).expect("0..3");
            if fd != target {
                nix::unistd::dup2(fd, target).map_err(os("set up stdio"))?;
            }
        }
    }
    if !cfg.direct && stage(cfg, chan, sys)? {
        return Err(Exit::Stage);
    }
    let mut warn = |text: String| {
        let _ = chan.send(&Message::Warning(text));
    };
    // From here on this process may sit in a namespace shared with the
    // container's own processes: keep them from reading our memory or
    // /proc/self/exe (the host's tote-shim) through /proc. A direct child
    // shares no namespace with anything yet, and its parent may still be
    // writing its id maps, which an unprivileged parent can do only while
    // the child is dumpable (otherwise the map files belong to root); so it
    // waits for the parent first.
    if cfg.direct {
        chan.expect(&Message::Continue, &mut warn)?;
        set_dumpable(false)?;
    } else {
        set_dumpable(false)?;
        chan.expect(&Message::Continue, &mut warn)?;
    }
    if cfg.namespaces.has_user() {
        sys.set_ids(Uid::from_raw(0), Gid::from_raw(0)).map_err(step("become root in the user namespace"))?;
    }
    // `create`'s init reopens exec.fifo for writing through
    // /proc/self/fd/N once it is ready. The root it ends up in may have no
    // /proc of its own (chrooted without a mount namespace, or a config
    // without a /proc mount), where that open failed after `create` had
    // already succeeded and the container died unseen: the descriptor
    // directory is taken now, from the /proc the process starts with.
    let fd_dir = match cfg.gate {
        Gate::Fifo(_) => Some(sys.own_fd_dir().map_err(step("open the descriptor directory for exec.fifo"))?),
        Gate::Channel => None,
    };
    let mut host_pid = 0;
    if cfg.role == Role::Init {
        host_pid = setup_container(cfg, chan, sys, &mut warn)?;
    } else if cfg.process.terminal {
        attach_terminal(cfg, chan, sys, false)?;
    }
    sys.chdir(&cfg.process.cwd).map_err(step("enter the working directory"))?;
    verify_cwd_inside_root(&cfg.process.cwd)?;
    let exe = cfg.process.resolve_executable()?;
    let hold_admin = cfg.process.holds_admin_for_seccomp(cfg.seccomp.is_some());
    cfg.process.drop_privileges(sys, hold_admin, can_setgroups(), &mut warn)?;
    verify_cwd_inside_root(&cfg.process.cwd)?;
    // Ready only now, so a failure to become the container's user and
    // capabilities fails `create` itself, as with runc.
    chan.send(&Message::Ready)?;
    let started = wait_for_start(cfg.gate, fd_dir, chan, sys)?;
    let Err(failure) = start_and_exec(cfg, sys, host_pid, &exe, hold_admin);
    if let Some(fifo) = started {
        // `start` reads this after the "0"; it sees end-of-file alone when
        // the exec succeeds and the descriptor closes with it.
        let _ = nix::unistd::write(fifo.as_fd(), failure.to_string().as_bytes());
    }
    Err(Exit::Failed(failure))
}

/// What follows the start gate; returns only on failure.
fn start_and_exec(
    cfg: &InitConfig,
    sys: &dyn Syscall,
    host_pid: i32,
    exe: &std::ffi::CString,
    hold_admin: bool,
) -> Result<std::convert::Infallible, InitError> {
    if cfg.role == Role::Init {
        let container = hooks::Container { id: cfg.id, spec: cfg.spec, bundle: cfg.bundle, pid: host_pid };
        hooks::run(Phase::StartContainer, container)?;
    }
    cfg.process.confine(sys, cfg.seccomp, hold_admin)?;
    Ok(crate::process::execve(exe, cfg.process)?)
}

/// The stage process: enters and creates namespaces, then forks the init
/// when a pid or time namespace only applies to children. Returns true in
/// the stage process once the init exists.
fn stage(cfg: &InitConfig, chan: &Channel, sys: &dyn Syscall) -> Result<bool, Exit> {
    let ns = cfg.namespaces;
    ns.join_all(sys).map_err(step("join namespaces"))?;
    if ns.creates(CloneFlags::CLONE_NEWUSER) {
        sys.unshare(CloneFlags::CLONE_NEWUSER).map_err(step("create the user namespace"))?;
        chan.send(&Message::IdMapRequest)?;
        chan.expect(&Message::IdMapDone, &mut |_| {})?;
    }
    ns.unshare_rest(sys).map_err(step("create namespaces"))?;
    if ns.creates(CLONE_NEWTIME) {
        write_time_offsets(cfg.spec, sys)?;
    }
    if !ns.init_needs_fork() {
        chan.send(&Message::InitPid(0))?;
        return Ok(false);
    }
    // CLONE_PARENT: the init becomes tote-shim's child, not ours, so the
    // parent can wait for it after this stage exits.
    match crate::launch::clone3(CloneFlags::CLONE_PARENT).map_err(os("fork the init"))? {
        None => Ok(false),
        Some(init) => {
            chan.send(&Message::InitPid(init.as_raw()))?;
            Ok(true)
        }
    }
}

fn write_time_offsets(spec: &Spec, sys: &dyn Syscall) -> Result<(), InitError> {
    let offsets = spec.linux().as_ref().and_then(|l| l.time_offsets().clone()).unwrap_or_default();
    let text: String = offsets
        .iter()
        .map(|(clock, off)| format!("{clock} {} {}\n", off.secs().unwrap_or(0), off.nanosecs().unwrap_or(0)))
        .collect();
    if !text.is_empty() {
        sys.write_file(Path::new("/proc/self/timens_offsets"), text.as_bytes())
            .map_err(step("set the time namespace offsets"))?;
    }
    Ok(())
}

/// Container-wide setup, done once by the init. Returns the init's pid as
/// the host sees it (what hooks are told).
fn setup_container(
    cfg: &InitConfig,
    chan: &Channel,
    sys: &dyn Syscall,
    warn: &mut dyn FnMut(String),
) -> Result<i32, InitError> {
    let ns = cfg.namespaces;
    // Device nodes and mount points get exactly the modes asked for; the
    // process's own umask is set just before exec.
    sys.umask(Mode::empty());
    if ns.creates(CloneFlags::CLONE_NEWCGROUP) {
        sys.unshare(CloneFlags::CLONE_NEWCGROUP).map_err(step("create the cgroup namespace"))?;
    }
    // A new network namespace has only `lo`, down; runc brings it up (a
    // joined namespace is its owner's to configure).
    if ns.creates(CloneFlags::CLONE_NEWNET) {
        sys.set_link_up("lo").map_err(step("bring up the loopback interface"))?;
    }
    if let Some(name) = cfg.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sys.sethostname(name).map_err(step("set the hostname"))?;
    }
    if let Some(name) = cfg.spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        sys.setdomainname(name).map_err(step("set the domain name"))?;
    }
    let rootfs_cfg = RootfsConfig {
        spec: cfg.spec,
        rootfs: cfg.rootfs,
        bundle: cfg.bundle,
        cgroup: cfg.cgroup,
        // Made for this container, or inherited from a rootless toted.
        in_user_ns: ns.has_user() || !crate::namespaces::in_initial_user_ns(),
        new_cgroup_ns: ns.creates(CloneFlags::CLONE_NEWCGROUP),
        no_pivot: cfg.no_pivot,
    };
    // Before pivot_root the host's /proc is still ours: its "self" is the
    // init's pid in the host's pid namespace.
    let host_pid = host_pid()?;
    // A mount namespace joined by path is set up like a new one, inside it
    // (what runc does); without one the process is only chrooted.
    let new_root = ns.creates(CloneFlags::CLONE_NEWNS) || ns.joins(CloneFlags::CLONE_NEWNS);
    if new_root {
        rootfs::prepare(sys, &rootfs_cfg)?;
        // Like runc, a missing working directory is created.
        sys.mount_point(cfg.rootfs, &cfg.process.cwd, NodeKind::Dir).map_err(step("create the working directory"))?;
    }
    run_creation_hooks(cfg, chan, host_pid)?;
    if new_root {
        rootfs::enter(sys, &rootfs_cfg)?;
    } else {
        sys.chroot(cfg.rootfs).map_err(step("enter the rootfs (no mount namespace of its own: chroot)"))?;
    }
    set_personality(cfg.spec)?;
    write_sysctls(cfg.spec, sys)?;
    if cfg.process.terminal {
        attach_terminal(cfg, chan, sys, new_root)?;
    }
    if new_root {
        rootfs::finish(sys, &rootfs_cfg)?;
    }
    set_oom_score_adj(cfg.spec, sys, warn)?;
    Ok(host_pid)
}

fn host_pid() -> Result<i32, InitError> {
    let link = std::fs::read_link("/proc/self").map_err(|_| os("read /proc/self")(Errno::ENOENT))?;
    link.to_string_lossy().parse().map_err(|_| os("read /proc/self")(Errno::EINVAL))
}

/// prestart and createRuntime (run by tote-shim, in its namespaces), then
/// createContainer (run here, in the container's), all before pivot_root.
fn run_creation_hooks(cfg: &InitConfig, chan: &Channel, host_pid: i32) -> Result<(), InitError> {
    if hooks::has(cfg.spec, Phase::Prestart) || hooks::has(cfg.spec, Phase::CreateRuntime) {
        chan.send(&Message::RuntimeHooks)?;
        chan.expect(&Message::RuntimeHooksDone, &mut |_| {})?;
    }
    let container = hooks::Container { id: cfg.id, spec: cfg.spec, bundle: cfg.bundle, pid: host_pid };
    Ok(hooks::run(Phase::CreateContainer, container)?)
}

fn write_sysctls(spec: &Spec, sys: &dyn Syscall) -> Result<(), InitError> {
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().clone()).unwrap_or_default();
    for (key, value) in sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        sys.write_file(&path, value.as_bytes()).map_err(step("set a sysctl"))?;
    }
    Ok(())
}

/// Lowering oom_score_adj below tote-shim's own needs CAP_SYS_RESOURCE.
/// Without it the container keeps the inherited score and a warning says
/// so, as containerd's restrict_oom_score_adj does.
fn set_oom_score_adj(spec: &Spec, sys: &dyn Syscall, warn: &mut dyn FnMut(String)) -> Result<(), InitError> {
    let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) else { return Ok(()) };
    let path = Path::new("/proc/self/oom_score_adj");
    match sys.write_file(path, adj.to_string().as_bytes()) {
        Err(err) if matches!(err.errno(), Some(Errno::EACCES | Errno::EPERM)) => {
            let current = std::fs::read_to_string(path).unwrap_or_default();
            warn(format!(
                "oom_score_adj {adj} is below the runtime's own {} and lowering it needs CAP_SYS_RESOURCE; \
                 the container keeps {}",
                current.trim(),
                current.trim()
            ));
            Ok(())
        }
        other => other.map_err(step("set oom_score_adj")),
    }
}

fn set_personality(spec: &Spec) -> Result<(), InitError> {
    use oci_spec::runtime::LinuxPersonalityDomain;
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) else { return Ok(()) };
    let persona = match p.domain() {
        LinuxPersonalityDomain::PerLinux32 => nix::sys::personality::Persona::from_bits_retain(0x0008),
        LinuxPersonalityDomain::PerLinux => nix::sys::personality::Persona::empty(),
    };
    nix::sys::personality::set(persona).map_err(os("set the personality"))?;
    Ok(())
}

/// Gives the process a pty from the container's own devpts and sends the
/// master to tote-shim. The init also gets it as /dev/console.
fn attach_terminal(cfg: &InitConfig, chan: &Channel, sys: &dyn Syscall, console: bool) -> Result<(), InitError> {
    let clamp = |n: u64| u16::try_from(n).unwrap_or(u16::MAX);
    let size =
        cfg.spec.process().as_ref().and_then(|p| p.console_size()).map(|b| (clamp(b.height()), clamp(b.width())));
    let pty = terminal::open_pty(cfg.process.uid, cfg.process.gid, size)?;
    if console {
        let target = sys
            .mount_point(Path::new("/"), Path::new("/dev/console"), NodeKind::File)
            .map_err(step("create /dev/console"))?;
        sys.mount(Some(&pty.slave_path), &target.path, None, MsFlags::MS_BIND, None)
            .map_err(step("bind the pty to /dev/console"))?;
    }
    chan.send_with_fd(&Message::Pty, Some(pty.master.as_raw_fd()))?;
    drop(pty.master);
    terminal::become_controlling(pty.slave.as_fd())?;
    Ok(())
}

/// Waits for `start`. Through exec.fifo (reopened through `fd_dir`, which
/// is closed here, before anything of the container runs), returns the
/// fifo's write end, held open (close-on-exec) until the exec.
fn wait_for_start(
    gate: Gate,
    fd_dir: Option<OwnedFd>,
    chan: &Channel,
    sys: &dyn Syscall,
) -> Result<Option<OwnedFd>, InitError> {
    match gate {
        Gate::Channel => {
            chan.expect(&Message::Start, &mut |_| {})?;
            Ok(None)
        }
        Gate::Fifo(fd) => {
            let dir = fd_dir.ok_or(InitError::Os { step: "wait on exec.fifo", errno: Errno::EBADF })?;
            // Blocks until `start` opens the other end.
            let fifo = sys.reopen_for_write(dir.as_fd(), fd).map_err(step("wait on exec.fifo"))?;
            drop(dir);
            nix::unistd::write(fifo.as_fd(), b"0").map_err(os("signal start through exec.fifo"))?;
            Ok(Some(fifo))
        }
    }
}

/// A working directory given as a magic link such as /proc/self/fd/N
/// could land outside the container's root through a descriptor still open
/// in this process (runc's CVE-2024-21626). The kernel cannot name such a
/// directory from inside the root: getcwd(2) fails with ENOENT.
fn verify_cwd_inside_root(cwd: &Path) -> Result<(), InitError> {
    match nix::unistd::getcwd() {
        Ok(path) if path.is_absolute() => Ok(()),
        _ => Err(InitError::Step {
            step: "check the working directory",
            source: SyscallError::os_detail(
                "getcwd",
                cwd.display(),
                " (it is outside the container's root)".into(),
                Errno::EPERM,
            ),
        }),
    }
}

/// Signal dispositions and the blocked mask survive execve; the container
/// starts with the defaults, not with whatever tote-shim (which ignores
/// SIGPIPE, as every Rust program does) or its caller had.
fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring SIG_DFL installs no handler code; signals the
        // kernel reserves just return EINVAL, which is ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

fn set_dumpable(dumpable: bool) -> Result<(), InitError> {
    // SAFETY: PR_SET_DUMPABLE takes an integer and touches no memory.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(dumpable), 0, 0, 0) };
    if ret < 0 {
        return Err(os("prctl(PR_SET_DUMPABLE)")(Errno::last()));
    }
    Ok(())
}

/// setgroups(2) is refused in a user namespace whose parent wrote "deny"
/// (an unprivileged mapping).
fn can_setgroups() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
}
