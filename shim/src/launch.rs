//! The parent side of starting a container process: clone(2) it, write its
//! id maps, put it in its cgroup, and wait until it reports ready.
//!
//! The child is a fork of this process and runs [`crate::init::child_main`];
//! the two talk over a [`Channel`].

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxResources};

use crate::cgroups::{CgroupError, ContainerCgroup};
use crate::idmap::{IdMapError, write_mappings};
use crate::init::{InitConfig, child_main};
use crate::sync::{Channel, ChannelError, Message};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("clone the container process: {0}")]
    Clone(Errno),
    #[error("write the user namespace maps: {0}")]
    IdMap(#[from] IdMapError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The child's own account of what failed.
    #[error("{0}")]
    Child(String),
    /// The program could not be executed (errno ENOENT: it does not exist).
    #[error("{message}")]
    Exec { errno: Errno, message: String },
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error("container process: unexpected message {0}")]
    Unexpected(String),
}

#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3(2) without a new stack: like fork(2), but able to create
/// namespaces (including a time namespace) in the same call. Returns `None`
/// in the child.
pub fn clone3(flags: CloneFlags) -> Result<Option<Pid>, Errno> {
    // With CLONE_PARENT the kernel requires exit_signal 0 and uses ours,
    // SIGCHLD: the init then reports to tote-shim like any child.
    let exit_signal = if flags.contains(CloneFlags::CLONE_PARENT) { 0 } else { libc::SIGCHLD.unsigned_abs().into() };
    let args = CloneArgs {
        flags: u64::from(flags.bits().unsigned_abs()),
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    // SAFETY: `args` is a valid clone_args of the size passed. With a zero
    // stack the child runs on a copy of this stack, exactly as after fork(2);
    // tote-shim is single-threaded, so no lock is held by a thread that
    // would not exist in the child.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        // A pid always fits: the kernel's pid_max is below 2^22.
        pid => Ok(Some(Pid::from_raw(i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?))),
    }
}

/// Kills and reaps processes unless disarmed, so a failed launch leaves
/// nothing running.
struct ChildGuard(Vec<Pid>);

impl ChildGuard {
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(*pid, Signal::SIGKILL);
            let _ = waitpid(*pid, None);
        }
    }
}

pub struct Launch<'a> {
    pub init: InitConfig<'a>,
    pub cgroup: Option<&'a ContainerCgroup>,
    /// Limits to write once the process is in its cgroup (init only).
    pub resources: Option<&'a LinuxResources>,
    pub uid_maps: &'a [LinuxIdMapping],
    pub gid_maps: &'a [LinuxIdMapping],
    /// Runs the prestart and createRuntime hooks when the init asks.
    pub runtime_hooks: Option<&'a dyn Fn(Pid) -> Result<(), crate::hooks::HookError>>,
}

/// A container process that is set up and waiting at its start gate.
pub struct Launched {
    pub pid: Pid,
    pub pty: Option<OwnedFd>,
    pub channel: Channel,
}

pub fn launch(l: &Launch, warn: &mut dyn FnMut(String)) -> Result<Launched, LaunchError> {
    let (ours, theirs) = Channel::pair()?;
    let flags = if l.init.direct { l.init.namespaces.direct_clone_flags() } else { CloneFlags::empty() };
    let first = match clone3(flags).map_err(LaunchError::Clone)? {
        None => {
            drop(ours);
            child_main(&l.init, &theirs)
        }
        Some(pid) => pid,
    };
    drop(theirs);
    let mut guard = ChildGuard(vec![first]);
    let pid = if l.init.direct {
        if l.init.namespaces.creates(CloneFlags::CLONE_NEWUSER) {
            write_mappings(first, l.uid_maps, l.gid_maps)?;
        }
        first
    } else {
        let pid = follow_stage(&ours, first, l, warn)?;
        // A reaped stage's pid may already belong to someone else: the
        // guard must only ever signal the init from here on.
        guard.0 = vec![pid];
        pid
    };
    if let Some(cgroup) = l.cgroup {
        cgroup.join(pid)?;
        if let Some(resources) = l.resources {
            cgroup.apply(resources)?;
        }
    }
    ours.send(&Message::Continue)?;
    let pty = wait_ready(&ours, pid, l.runtime_hooks, warn)?;
    guard.disarm();
    Ok(Launched { pid, pty, channel: ours })
}

/// Serves the stage process until it names the init; reaps the stage.
fn follow_stage(chan: &Channel, stage: Pid, l: &Launch, warn: &mut dyn FnMut(String)) -> Result<Pid, LaunchError> {
    loop {
        match chan.recv()?.0 {
            Message::IdMapRequest => {
                write_mappings(stage, l.uid_maps, l.gid_maps)?;
                chan.send(&Message::IdMapDone)?;
            }
            Message::InitPid(0) => return Ok(stage),
            Message::InitPid(pid) => {
                // The stage exits right after saying so; collect it.
                let _ = waitpid(stage, None);
                return Ok(Pid::from_raw(pid));
            }
            Message::Warning(text) => warn(text),
            Message::Error(text) => return Err(LaunchError::Child(text)),
            other => return Err(LaunchError::Unexpected(format!("{other:?}"))),
        }
    }
}

fn wait_ready(
    chan: &Channel,
    pid: Pid,
    runtime_hooks: Option<&dyn Fn(Pid) -> Result<(), crate::hooks::HookError>>,
    warn: &mut dyn FnMut(String),
) -> Result<Option<OwnedFd>, LaunchError> {
    let mut pty = None;
    loop {
        match chan.recv()? {
            (Message::Ready, _) => return Ok(pty),
            (Message::RuntimeHooks, _) => {
                if let Some(run) = runtime_hooks {
                    run(pid)?;
                }
                chan.send(&Message::RuntimeHooksDone)?;
            }
            (Message::Pty, fd) => pty = fd,
            (Message::Warning(text), _) => warn(text),
            (Message::Error(text), _) => return Err(LaunchError::Child(text)),
            (Message::ExecFailed(errno, message), _) => {
                return Err(LaunchError::Exec { errno: Errno::from_raw(errno), message });
            }
            (other, _) => return Err(LaunchError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Lets a ready process exec and waits to learn how that went. If the
/// process already failed after reporting ready (dropping privileges), the
/// Start message cannot be delivered, but its report is still waiting in
/// the socket; reading it gives the real error.
pub fn start(chan: &Channel, warn: &mut dyn FnMut(String)) -> Result<(), LaunchError> {
    match chan.send(&Message::Start) {
        Ok(()) | Err(ChannelError::Closed) => wait_exec(chan, warn),
        Err(err) => Err(err.into()),
    }
}

/// What became of the exec after the Start message: the channel closes
/// on a successful execve (it is close-on-exec), or reports the failure.
/// Warnings from the last steps (resource limits) arrive on the way.
fn wait_exec(chan: &Channel, warn: &mut dyn FnMut(String)) -> Result<(), LaunchError> {
    loop {
        match chan.recv() {
            Err(ChannelError::Closed) => return Ok(()),
            Err(err) => return Err(err.into()),
            Ok((Message::Warning(text), _)) => warn(text),
            Ok((Message::ExecFailed(errno, message), _)) => {
                return Err(LaunchError::Exec { errno: Errno::from_raw(errno), message });
            }
            Ok((Message::Error(text), _)) => return Err(LaunchError::Child(text)),
            Ok((other, _)) => return Err(LaunchError::Unexpected(format!("{other:?}"))),
        }
    }
}
