//! The container lifecycle as runc's command line has it: create, start,
//! state, kill, delete, run and exec, with state under a root directory.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, Uid};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::Serialize;

use crate::cgroups::{self, CgroupError, ContainerCgroup};
use crate::foreground::{self, ExitStatus};
use crate::hooks::{self, Phase};
use crate::init::{Gate, InitConfig, Role};
use crate::launch::{self, Launch, LaunchError, Launched};
use crate::namespaces::{NamespaceError, NamespacePlan};
use crate::process::{ProcessError, ProcessPlan};
use crate::rootfs::devices;
use crate::seccomp::{self, CompiledSeccomp, SeccompError};
use crate::spec::{Bundle, SpecError};
use crate::state::{self, EXEC_FIFO, Record, StateError, StateStore, Status};
use crate::terminal::{self, TerminalError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error("container {id} is {status}: {action} needs it {wanted}")]
    WrongStatus { id: String, status: Status, action: &'static str, wanted: &'static str },
    #[error("container {0} did not stop within 10 s of SIGKILL")]
    WontDie(String),
    /// runc's words: containerd's shim reads them as "it has exited".
    #[error("container {id}: container not running")]
    NotRunning { id: String },
    #[error("process.terminal is set, so {0} needs --console-socket to hand the terminal to")]
    NeedsConsoleSocket(&'static str),
    #[error("--preserve-fds {count}: descriptor {fd} is not open")]
    PreserveFds { count: i32, fd: i32 },
    /// A command-line mistake.
    #[error("{0}")]
    Usage(String),
    #[error("unknown signal {0:?}")]
    Signal(String),
    #[error("{op} {path}: {errno}")]
    Os { op: &'static str, path: PathBuf, errno: Errno },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The exit code a shell user expects: 127 when the program does not
    /// exist, 126 when it cannot be run, 1 for every other failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Launch(LaunchError::Exec { errno, .. }) => {
                if *errno == Errno::ENOENT {
                    127
                } else {
                    126
                }
            }
            _ => 1,
        }
    }
}

/// Options of `create` and `run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// The container's stdin, stdout and stderr (default: tote-shim's own).
    pub stdio: Option<[RawFd; 3]>,
    /// Return the pty master to the caller instead of needing a console socket.
    pub keep_pty: bool,
}

/// A container process that has been created (and, for exec, started).
#[derive(Debug)]
pub struct Created {
    pub pid: Pid,
    /// The pty master, when the process has a terminal and the caller kept it.
    pub pty: Option<OwnedFd>,
}

/// Options of `exec`.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: i32,
    /// The process's stdin, stdout and stderr (default: tote-shim's own).
    pub stdio: Option<[RawFd; 3]>,
}

/// The runtime-spec state, with runc's extra fields and Tote's `oomKilled`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: std::collections::HashMap<String, String>,
    pub oom_killed: bool,
}

/// Everything a bundle turns into before any process exists. Building it
/// has no side effects, so a bad bundle fails here cleanly.
struct Prepared {
    bundle: Bundle,
    namespaces: NamespacePlan,
    process: ProcessPlan,
    seccomp: Option<CompiledSeccomp>,
    cgroup: Option<ContainerCgroup>,
    resources: LinuxResources,
}

impl Prepared {
    fn new(bundle_dir: &Path, id: &str, preserve_fds: i32) -> Result<Self, Error> {
        let bundle = Bundle::load(bundle_dir)?;
        let spec = &bundle.spec;
        let linux = crate::spec::linux_section(spec);
        let namespaces = NamespacePlan::new(linux.namespaces().as_deref().unwrap_or_default())?;
        let process = ProcessPlan::new(spec.process().as_ref().expect("validated"), preserve_fds)?;
        let seccomp = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
        let cgroup = open_cgroup(linux.cgroups_path().as_deref(), id)?;
        let mut resources = linux.resources().clone().unwrap_or_default();
        let mut rules = resources.devices().clone().unwrap_or_default();
        rules.extend(devices::allow_rules(linux.devices().as_deref().unwrap_or_default()));
        resources.set_devices(Some(rules));
        Ok(Self { bundle, namespaces, process, seccomp, cgroup, resources })
    }

    fn init_config<'a>(&'a self, id: &'a str, gate: Gate, no_pivot: bool, stdio: Option<[RawFd; 3]>) -> InitConfig<'a> {
        InitConfig {
            role: Role::Init,
            id,
            spec: &self.bundle.spec,
            rootfs: &self.bundle.rootfs,
            bundle: &self.bundle.dir,
            namespaces: &self.namespaces,
            process: &self.process,
            seccomp: self.seccomp.as_ref(),
            cgroup: self.cgroup.as_ref().map(|c| (c.path(), c.hierarchy())),
            gate,
            no_pivot,
            direct: !self.namespaces.needs_stage(),
            stdio,
        }
    }

    fn launch(&self, id: &str, gate: Gate, opts: &CreateOptions) -> Result<Launched, Error> {
        let linux = crate::spec::linux_section(&self.bundle.spec);
        let runtime_hooks = |pid: Pid| {
            let container = self.hook_target(id, pid.as_raw());
            hooks::run(Phase::Prestart, container)?;
            hooks::run(Phase::CreateRuntime, container)
        };
        let launch = Launch {
            init: self.init_config(id, gate, opts.no_pivot, opts.stdio),
            cgroup: self.cgroup.as_ref(),
            resources: Some(&self.resources),
            uid_maps: linux.uid_mappings().as_deref().unwrap_or_default(),
            gid_maps: linux.gid_mappings().as_deref().unwrap_or_default(),
            runtime_hooks: Some(&runtime_hooks),
        };
        Ok(launch::launch(&launch, &mut warn)?)
    }

    fn hook_target<'a>(&'a self, id: &'a str, pid: i32) -> hooks::Container<'a> {
        hooks::Container { id, spec: &self.bundle.spec, bundle: &self.bundle.dir, pid }
    }
}

fn record_hook_target(record: &Record) -> hooks::Container<'_> {
    hooks::Container { id: &record.id, spec: &record.spec, bundle: &record.bundle, pid: record.pid }
}

/// Containers get a cgroup when tote-shim may create one (as root of the
/// host, or rootless in a delegated cgroup v2 subtree); otherwise a
/// rootless container runs in the caller's cgroup.
fn open_cgroup(path: Option<&Path>, id: &str) -> Result<Option<ContainerCgroup>, Error> {
    let path = cgroups::container_path(path, id)?;
    Ok(ContainerCgroup::open_managed(&path)?)
}

fn warn(text: String) {
    eprintln!("tote-shim: warning: {text}");
}

/// Undoes a half-made container unless disarmed: kills its process,
/// removes its cgroup and its state directory.
struct Rollback<'a> {
    store: &'a StateStore,
    id: String,
    cgroup: Option<&'a ContainerCgroup>,
    pid: Option<Pid>,
    armed: bool,
}

impl Rollback<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }

    /// Removes the container now (once): what `run` does when it ends.
    fn remove(&mut self) {
        if !std::mem::replace(&mut self.armed, false) {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(cgroup) = self.cgroup {
            let _ = cgroup.destroy();
        }
        let _ = self.store.remove(&self.id);
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Checks that descriptors 3..3+count are open before tote-shim opens any
/// of its own, which would otherwise land there and leak into the container.
pub fn check_preserved_fds(count: i32) -> Result<(), Error> {
    for fd in 3..3 + count.max(0) {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            return Err(Error::PreserveFds { count, fd });
        }
    }
    Ok(())
}

pub struct Runtime {
    store: StateStore,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { store: StateStore::new(root) }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Sets the container up with its init waiting on exec.fifo for `start`.
    pub fn create(&self, opts: &CreateOptions) -> Result<Created, Error> {
        check_preserved_fds(opts.preserve_fds)?;
        let prepared = Prepared::new(&opts.bundle, &opts.id, opts.preserve_fds)?;
        if prepared.process.terminal && opts.console_socket.is_none() && !opts.keep_pty {
            return Err(Error::NeedsConsoleSocket("create"));
        }
        let dir = self.store.reserve(&opts.id)?;
        let mut rollback = self.rollback(&opts.id, prepared.cgroup.as_ref());
        let fifo = make_exec_fifo(&dir)?;
        let mut launched = prepared.launch(&opts.id, Gate::Fifo(fifo.as_raw_fd()), opts)?;
        rollback.pid = Some(launched.pid);
        self.hand_over_terminal(&launched, opts.console_socket.as_deref())?;
        self.record(&opts.id, &prepared, launched.pid, opts.pid_file.as_deref())?;
        rollback.disarm();
        let pty = if opts.keep_pty { launched.pty.take() } else { None };
        Ok(Created { pid: launched.pid, pty })
    }

    /// Lets a created container's init exec its program.
    pub fn start(&self, id: &str) -> Result<(), Error> {
        let record = self.store.load(id)?;
        let status = self.status(&record);
        if status != Status::Created {
            return Err(Error::WrongStatus { id: id.into(), status, action: "start", wanted: "created" });
        }
        let fifo = self.store.dir(id).join(EXEC_FIFO);
        open_fifo_for_start(&fifo, &record)?;
        let _ = std::fs::remove_file(&fifo);
        hooks::run_warning(Phase::Poststart, record_hook_target(&record), &mut warn);
        Ok(())
    }

    /// create + start + wait, removing the container afterwards. Returns
    /// the container's exit code (128+N when killed by signal N).
    pub fn run(&self, opts: &CreateOptions, detach: bool) -> Result<i32, Error> {
        check_preserved_fds(opts.preserve_fds)?;
        let prepared = Prepared::new(&opts.bundle, &opts.id, opts.preserve_fds)?;
        if prepared.process.terminal && detach && opts.console_socket.is_none() {
            return Err(Error::NeedsConsoleSocket("run --detach"));
        }
        self.store.reserve(&opts.id)?;
        let mut rollback = self.rollback(&opts.id, prepared.cgroup.as_ref());
        if !detach {
            foreground::block_signals().map_err(|errno| Error::Os { op: "block signals", path: "".into(), errno })?;
        }
        let launched = prepared.launch(&opts.id, Gate::Channel, opts)?;
        rollback.pid = Some(launched.pid);
        self.record(&opts.id, &prepared, launched.pid, opts.pid_file.as_deref())?;
        if detach {
            self.hand_over_terminal(&launched, opts.console_socket.as_deref())?;
        }
        launch::start(&launched.channel, &mut warn)?;
        hooks::run_warning(Phase::Poststart, prepared.hook_target(&opts.id, launched.pid.as_raw()), &mut warn);
        if detach {
            rollback.disarm();
            return Ok(0);
        }
        let pty = if opts.console_socket.is_some() {
            self.hand_over_terminal(&launched, opts.console_socket.as_deref())?;
            None
        } else {
            launched.pty
        };
        let status = foreground::supervise(launched.pid, pty).map_err(|errno| Error::Os {
            op: "wait for",
            path: opts.id.clone().into(),
            errno,
        })?;
        rollback.pid = None;
        self.report_oom(&opts.id, prepared.cgroup.as_ref(), status);
        rollback.remove();
        hooks::run_warning(Phase::Poststop, prepared.hook_target(&opts.id, launched.pid.as_raw()), &mut warn);
        Ok(status.code())
    }

    /// Runs another process in a running container, in the foreground
    /// (or detached), returning its exit code.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32, Error> {
        if !opts.detach {
            foreground::block_signals().map_err(|errno| Error::Os { op: "block signals", path: "".into(), errno })?;
        }
        let created = self.exec_process(id, opts)?;
        if opts.detach {
            return Ok(0);
        }
        let pty = if opts.console_socket.is_some() { None } else { created.pty };
        let status = foreground::supervise(created.pid, pty).map_err(|errno| Error::Os {
            op: "wait for exec in",
            path: id.into(),
            errno,
        })?;
        Ok(status.code())
    }

    /// Starts another process in a running container and returns it; the
    /// caller reaps it (a monitor, or `exec` in the foreground).
    pub fn exec_process(&self, id: &str, opts: &ExecOptions) -> Result<Created, Error> {
        check_preserved_fds(opts.preserve_fds)?;
        let record = self.store.load(id)?;
        let status = self.status(&record);
        if status != Status::Running {
            return Err(Error::WrongStatus { id: id.into(), status, action: "exec", wanted: "running" });
        }
        let process = ProcessPlan::new(&opts.process, opts.preserve_fds)?;
        if process.terminal && opts.detach && opts.console_socket.is_none() {
            return Err(Error::NeedsConsoleSocket("exec --detach"));
        }
        let linux = crate::spec::linux_section(&record.spec);
        let seccomp = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
        let namespaces = NamespacePlan::of_process(record.pid)?;
        let cgroup = match &record.cgroup {
            Some(path) => ContainerCgroup::open_managed(path)?,
            None => None,
        };
        let launch = Launch {
            init: InitConfig {
                role: Role::Exec,
                id,
                spec: &record.spec,
                rootfs: &record.rootfs,
                bundle: &record.bundle,
                namespaces: &namespaces,
                process: &process,
                seccomp: seccomp.as_ref(),
                cgroup: None,
                gate: Gate::Channel,
                no_pivot: false,
                direct: false,
                stdio: opts.stdio,
            },
            cgroup: cgroup.as_ref(),
            resources: None,
            uid_maps: &[],
            gid_maps: &[],
            runtime_hooks: None,
        };
        let mut launched = launch::launch(&launch, &mut warn)?;
        if let Some(path) = &opts.pid_file {
            write_pid_file(path, launched.pid)?;
        }
        if opts.console_socket.is_some() {
            self.hand_over_terminal(&launched, opts.console_socket.as_deref())?;
        }
        launch::start(&launched.channel, &mut warn)?;
        Ok(Created { pid: launched.pid, pty: launched.pty.take() })
    }

    pub fn state(&self, id: &str) -> Result<StateReport, Error> {
        let record = self.store.load(id)?;
        let status = self.status(&record);
        let oom_killed = self.cgroup_of(&record).and_then(|c| c.oom_kills().ok()).unwrap_or(0) > 0;
        Ok(StateReport {
            oci_version: record.spec.version().clone(),
            id: record.id.clone(),
            status,
            pid: if status == Status::Stopped { 0 } else { record.pid },
            bundle: record.bundle.clone(),
            rootfs: record.rootfs.clone(),
            created: record.created.clone(),
            owner: nix::unistd::User::from_uid(Uid::from_raw(record.owner))
                .ok()
                .flatten()
                .map_or_else(|| record.owner.to_string(), |u| u.name),
            annotations: record.annotations(),
            oom_killed,
        })
    }

    /// Sends `signal` to the container's init, or with `all` to every
    /// process in its cgroup.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), Error> {
        let record = self.store.load(id)?;
        let status = self.status(&record);
        let cgroup = self.cgroup_of(&record);
        if status == Status::Stopped {
            // One signal to a stopped container's init is an error, in the
            // words containerd's shim matches to learn the container exited
            // (never sent: its pid may be another's by now). `--all` still
            // signals what is left in its cgroup, as runc does: without a
            // pid namespace of its own (the host's, or a pod's joined by
            // path) the init's children outlive it, and containerd's shim
            // kills them with `kill --all` once the init exited. Left
            // alone they kept running and held the container's stdout, so
            // containerd cut its log short ("Failed to pipe stdout").
            if !all {
                return Err(Error::NotRunning { id: id.into() });
            }
            for pid in cgroup.as_ref().map(|c| c.pids()).transpose()?.unwrap_or_default() {
                let _ = kill(pid, signal);
            }
            return Ok(());
        }
        if all {
            for pid in cgroup.as_ref().map(|c| c.pids()).transpose()?.unwrap_or_default() {
                let _ = kill(pid, signal);
            }
        }
        kill(Pid::from_raw(record.pid), signal)
            .or_else(|e| if e == Errno::ESRCH { Ok(()) } else { Err(e) })
            .map_err(|errno| Error::Os { op: "signal", path: id.into(), errno })?;
        // A frozen process only dies once thawed.
        if let (Status::Paused, Signal::SIGKILL, Some(cgroup)) = (status, signal, &cgroup) {
            cgroup.thaw()?;
        }
        Ok(())
    }

    /// Removes a stopped (or created) container; `force` kills a running one first.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        let record = match self.store.load(id) {
            Err(StateError::NotFound(_)) if force => return Ok(()),
            other => other?,
        };
        let status = self.status(&record);
        if matches!(status, Status::Running | Status::Paused) && !force {
            return Err(Error::WrongStatus {
                id: id.into(),
                status,
                action: "delete",
                wanted: "stopped (or use --force)",
            });
        }
        if status != Status::Stopped {
            self.kill(id, Signal::SIGKILL, true)?;
            self.wait_until_dead(&record)?;
        }
        if let Some(cgroup) = self.cgroup_of(&record) {
            cgroup.destroy()?;
        }
        hooks::run_warning(Phase::Poststop, record_hook_target(&record), &mut warn);
        self.store.remove(id)?;
        Ok(())
    }

    pub fn pause(&self, id: &str) -> Result<(), Error> {
        let record = self.store.load(id)?;
        let status = self.status(&record);
        if status != Status::Running {
            return Err(Error::WrongStatus { id: id.into(), status, action: "pause", wanted: "running" });
        }
        Ok(self.require_cgroup(&record)?.freeze()?)
    }

    pub fn resume(&self, id: &str) -> Result<(), Error> {
        let record = self.store.load(id)?;
        let status = self.status(&record);
        if status != Status::Paused {
            return Err(Error::WrongStatus { id: id.into(), status, action: "resume", wanted: "paused" });
        }
        Ok(self.require_cgroup(&record)?.thaw()?)
    }

    /// CPU, memory and pids use of a container's cgroup.
    pub fn stats(&self, id: &str) -> Result<crate::monitor::protocol::Stats, Error> {
        let record = self.store.load(id)?;
        Ok(self.require_cgroup(&record)?.stats())
    }

    /// The processes in a container's cgroup (host pids); just the init when
    /// it has no cgroup of its own.
    pub fn pids(&self, id: &str) -> Result<Vec<Pid>, Error> {
        let record = self.store.load(id)?;
        match self.cgroup_of(&record) {
            Some(cgroup) => Ok(cgroup.pids()?),
            None => Ok(vec![Pid::from_raw(record.pid)]),
        }
    }

    /// Applies new limits to a container's cgroup, and keeps them in its
    /// recorded config (as runc does), so that `state` and later readers
    /// see them. Only what `resources` sets changes.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), Error> {
        let mut record = self.store.load(id)?;
        if self.status(&record) == Status::Stopped {
            return Err(Error::NotRunning { id: id.into() });
        }
        self.require_cgroup(&record)?.apply(resources)?;
        let mut linux = record.spec.linux().clone().unwrap_or_default();
        let mut merged = linux.resources().clone().unwrap_or_default();
        crate::spec::merge_resources(&mut merged, resources);
        linux.set_resources(Some(merged));
        record.spec.set_linux(Some(linux));
        Ok(self.store.save(&record)?)
    }

    pub fn list(&self) -> Result<Vec<StateReport>, Error> {
        self.store.list()?.iter().map(|id| self.state(id)).collect()
    }

    pub fn status(&self, record: &Record) -> Status {
        if !state::is_alive(record.pid, record.pid_start) {
            Status::Stopped
        } else if self.store.dir(&record.id).join(EXEC_FIFO).exists() {
            Status::Created
        } else if self.cgroup_of(record).is_some_and(|c| c.is_frozen()) {
            Status::Paused
        } else {
            Status::Running
        }
    }

    fn cgroup_of(&self, record: &Record) -> Option<ContainerCgroup> {
        let path = record.cgroup.as_ref()?;
        ContainerCgroup::open_managed(path).ok().flatten()
    }

    fn require_cgroup(&self, record: &Record) -> Result<ContainerCgroup, Error> {
        match &record.cgroup {
            Some(path) => ContainerCgroup::open_managed(path)?.ok_or_else(|| {
                Error::Usage(format!(
                    "container {}'s cgroup {} is not one this user may manage (not delegated to it)",
                    record.id,
                    path.display()
                ))
            }),
            None => Err(Error::Usage(format!(
                "container {} has no cgroup of its own (it was created without privileges), so it has no limits, stats or freezer",
                record.id
            ))),
        }
    }

    fn rollback<'a>(&'a self, id: &str, cgroup: Option<&'a ContainerCgroup>) -> Rollback<'a> {
        Rollback { store: &self.store, id: id.to_string(), cgroup, pid: None, armed: true }
    }

    fn record(&self, id: &str, prepared: &Prepared, pid: Pid, pid_file: Option<&Path>) -> Result<(), Error> {
        let start = state::proc_stat(pid.as_raw())
            .ok_or(Error::Os {
                op: "read the start time of",
                path: format!("/proc/{pid}").into(),
                errno: Errno::ESRCH,
            })?
            .start_time;
        let record = Record {
            id: id.to_string(),
            bundle: prepared.bundle.dir.clone(),
            rootfs: prepared.bundle.rootfs.clone(),
            pid: pid.as_raw(),
            pid_start: start,
            created: state::now_rfc3339(),
            cgroup: prepared.cgroup.as_ref().map(|c| c.path().to_path_buf()),
            owner: Uid::effective().as_raw(),
            spec: prepared.bundle.spec.clone(),
        };
        self.store.save(&record)?;
        if let Some(path) = pid_file {
            write_pid_file(path, pid)?;
        }
        Ok(())
    }

    fn hand_over_terminal(&self, launched: &Launched, socket: Option<&Path>) -> Result<(), Error> {
        if let (Some(master), Some(socket)) = (&launched.pty, socket) {
            terminal::send_to_console_socket(socket, master.as_fd())?;
        }
        Ok(())
    }

    fn wait_until_dead(&self, record: &Record) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while state::is_alive(record.pid, record.pid_start) {
            if Instant::now() > deadline {
                return Err(Error::WontDie(record.id.clone()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// After `run`: say whether the OOM killer struck, then remove the container.
    fn report_oom(&self, id: &str, cgroup: Option<&ContainerCgroup>, status: ExitStatus) {
        let oom = cgroup.and_then(|c| c.oom_kills().ok()).unwrap_or(0);
        if oom > 0 {
            eprintln!(
                "tote-shim: container {id} was killed by the kernel's OOM killer ({oom} kill(s)); exit status {}",
                status.code()
            );
        }
    }
}

fn make_exec_fifo(dir: &Path) -> Result<OwnedFd, Error> {
    let path = dir.join(EXEC_FIFO);
    // 0622: the container process opens it for writing after dropping to
    // its own user.
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o622)).map_err(|errno| Error::Os {
        op: "mkfifo",
        path: path.clone(),
        errno,
    })?;
    nix::sys::stat::fchmodat(
        None,
        &path,
        Mode::from_bits_truncate(0o622),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|errno| Error::Os { op: "chmod", path: path.clone(), errno })?;
    let raw = open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| Error::Os {
        op: "open",
        path: path.clone(),
        errno,
    })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens exec.fifo for reading, which releases the init blocked opening it
/// for writing, and reads what it writes: "0", then nothing more once its
/// descriptor closes at a successful exec, or the reason it failed after
/// the gate (a startContainer hook, the exec itself). Polls rather than
/// blocking so an init that died meanwhile cannot hang `start`.
fn open_fifo_for_start(fifo: &Path, record: &Record) -> Result<(), Error> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let raw = open(fifo, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|errno| Error::Os { op: "open", path: fifo.to_path_buf(), errno })?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stopped =
        || Error::WrongStatus { id: record.id.clone(), status: Status::Stopped, action: "start", wanted: "created" };
    let mut written = Vec::new();
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(Errno::EINTR) => {
                // A dead init that never opened its end leaves no end-of-file.
                if written.is_empty() && !state::is_alive(record.pid, record.pid_start) {
                    return Err(stopped());
                }
            }
            Ok(_) => {
                let mut buf = [0u8; 4096];
                match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => written.extend_from_slice(&buf[..n]),
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(errno) => return Err(Error::Os { op: "read", path: fifo.to_path_buf(), errno }),
                }
            }
            Err(errno) => return Err(Error::Os { op: "poll", path: fifo.to_path_buf(), errno }),
        }
    }
    match written.split_first() {
        Some((b'0', [])) => Ok(()),
        Some((b'0', reason)) => Err(Error::Launch(LaunchError::Child(format!(
            "container {} failed after start: {}",
            record.id,
            String::from_utf8_lossy(reason)
        )))),
        _ => Err(stopped()),
    }
}

fn write_pid_file(path: &Path, pid: Pid) -> Result<(), Error> {
    let tmp = path.with_extension("tote-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(|source| Error::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

/// Parses `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse_signal(text: &str) -> Result<Signal, Error> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::Signal(text.to_string()));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse().map_err(|_| Error::Signal(text.to_string()))
}

/// The config `tote-shim spec` writes: a runc-like default for a root
/// container, or one for an unprivileged user with its id mapped to root.
/// The mapped ids are the effective ones, as runc's: a user namespace's
/// creator may map only its effective uid and gid onto itself.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = if rootless {
        Spec::rootless(Uid::effective().as_raw(), nix::unistd::Gid::effective().as_raw())
    } else {
        Spec::default()
    };
    spec.set_version("1.2.0".to_string());
    spec.set_hostname(Some("tote".to_string()));
    // Like `runc spec`: no device access beyond the default nodes.
    if let Some(mut linux) = spec.linux().clone() {
        let mut resources = linux.resources().clone().unwrap_or_default();
        let deny_all = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("static device rule");
        resources.set_devices(Some(vec![deny_all]));
        linux.set_resources(Some(resources));
        spec.set_linux(Some(linux));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn the_default_spec_is_valid() {
        crate::spec::validate(&default_spec(false)).unwrap();
        crate::spec::validate(&default_spec(true)).unwrap();
    }

    #[test]
    fn exec_failures_map_to_shell_exit_codes() {
        let not_found = Error::Launch(LaunchError::Exec { errno: Errno::ENOENT, message: String::new() });
        let denied = Error::Launch(LaunchError::Exec { errno: Errno::EACCES, message: String::new() });
        assert_eq!(not_found.exit_code(), 127);
        assert_eq!(denied.exit_code(), 126);
        assert_eq!(Error::Signal("x".into()).exit_code(), 1);
    }
}
