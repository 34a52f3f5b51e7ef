//! The last steps of every container process, the init and exec'd ones
//! alike: resource limits, identity, capabilities, no_new_privs, then,
//! right before execve, descriptors sealed and the seccomp filter last, so
//! a profile need allow nothing of what tote-shim itself does (runc and
//! crun order it the same way).
//!
//! Everything that allocates is prepared in [`ProcessPlan::new`], in the
//! parent, before the process is cloned.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{PosixRlimit, Process};

use crate::capabilities::CapabilityPlan;
use crate::seccomp::CompiledSeccomp;
use crate::syscall::{Syscall, SyscallError};

/// The PATH used when the process's environment has none, as runc does.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process.{field} contains a NUL byte")]
    Nul { field: &'static str },
    // runc's words (Go's exec.Error), which engines match: podman and
    // containerd tell "not found" (127) from "cannot run" (126) by them.
    #[error("exec: {name:?}: executable file not found in $PATH")]
    NotInPath { name: String, path: String },
    #[error("exec: {path:?}: stat {path}: no such file or directory", path = .0.display().to_string())]
    NotFound(PathBuf),
    #[error("exec: {path:?}: permission denied", path = .0.display().to_string())]
    NotExecutable(PathBuf),
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: SyscallError,
    },
    #[error("install the seccomp filter: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// runc fails too, writing the profile to /proc/self/attr/exec.
    #[error(
        "process.apparmorProfile {0:?} is set but AppArmor is not enabled on this host: \
         the container cannot be confined as asked"
    )]
    AppArmorDisabled(String),
}

fn step(step: &'static str) -> impl FnOnce(SyscallError) -> ProcessError {
    move |source| ProcessError::Step { step, source }
}

/// The process to become, in the form the final syscalls need.
#[derive(Debug, Clone)]
pub struct ProcessPlan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: PathBuf,
    pub uid: Uid,
    pub gid: Gid,
    pub additional_gids: Vec<Gid>,
    pub umask: Mode,
    pub caps: CapabilityPlan,
    pub no_new_privs: bool,
    pub rlimits: Vec<PosixRlimit>,
    pub terminal: bool,
    /// File descriptors 3..3+N passed on to the process.
    pub preserve_fds: i32,
    /// The AppArmor profile to run the program under.
    pub apparmor: Option<String>,
}

fn cstrings(items: &[String], field: &'static str) -> Result<Vec<CString>, ProcessError> {
    items.iter().map(|s| CString::new(s.as_bytes()).map_err(|_| ProcessError::Nul { field })).collect()
}

impl ProcessPlan {
    pub fn new(process: &Process, preserve_fds: i32) -> Result<Self, ProcessError> {
        let user = process.user();
        let apparmor = process.apparmor_profile().clone().filter(|p| !p.is_empty());
        if let Some(profile) = &apparmor
            && !apparmor_enabled()
        {
            return Err(ProcessError::AppArmorDisabled(profile.clone()));
        }
        Ok(Self {
            args: cstrings(process.args().as_deref().unwrap_or_default(), "args")?,
            env: cstrings(process.env().as_deref().unwrap_or_default(), "env")?,
            cwd: process.cwd().clone(),
            uid: Uid::from_raw(user.uid()),
            gid: Gid::from_raw(user.gid()),
            additional_gids: user.additional_gids().iter().flatten().map(|g| Gid::from_raw(*g)).collect(),
            umask: Mode::from_bits_truncate(user.umask().unwrap_or(0o022)),
            caps: CapabilityPlan::new(process.capabilities().as_ref()),
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            rlimits: process.rlimits().clone().unwrap_or_default(),
            terminal: process.terminal().unwrap_or(false),
            preserve_fds,
            apparmor,
        })
    }

    /// Whether CAP_SYS_ADMIN must be held past the capability change until
    /// the seccomp filter is in: without no_new_privs the kernel takes a
    /// filter only from a holder of CAP_SYS_ADMIN, and the filter goes in
    /// last, when the process has its own capabilities already.
    pub fn holds_admin_for_seccomp(&self, has_filter: bool) -> bool {
        has_filter && !self.no_new_privs && !self.caps.effective.contains(&caps::Capability::CAP_SYS_ADMIN)
    }

    fn env_path(&self) -> String {
        self.env
            .iter()
            .find_map(|e| e.to_bytes().strip_prefix(b"PATH=").map(|p| String::from_utf8_lossy(p).into_owned()))
            .unwrap_or_else(|| DEFAULT_PATH.to_string())
    }

    /// Finds args[0] the way execvp would, inside the container's root
    /// (so it runs after pivot_root and chdir to the working directory).
    pub fn resolve_executable(&self) -> Result<CString, ProcessError> {
        let name = self.args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
        if name.contains('/') {
            let path = PathBuf::from(&name);
            check_executable(&path)?;
            return Ok(self.args[0].clone());
        }
        let search = self.env_path();
        for dir in search.split(':').filter(|d| !d.is_empty()) {
            let candidate = Path::new(dir).join(&name);
            if check_executable(&candidate).is_ok() {
                return CString::new(candidate.as_os_str().as_bytes()).map_err(|_| ProcessError::Nul { field: "args" });
            }
        }
        Err(ProcessError::NotInPath { name, path: search })
    }

    /// Becomes the configured user with the configured capabilities (and
    /// CAP_SYS_ADMIN on top while `hold_admin`, see
    /// [`Self::holds_admin_for_seccomp`]).
    pub fn drop_privileges(
        &self,
        sys: &dyn Syscall,
        hold_admin: bool,
        can_setgroups: bool,
        warn: &mut dyn FnMut(String),
    ) -> Result<(), ProcessError> {
        if let Some(profile) = &self.apparmor {
            // Takes effect at execve, like runc's.
            sys.write_file(apparmor_exec_attr(), format!("exec {profile}").as_bytes())
                .map_err(step("set the AppArmor profile"))?;
        }
        crate::rlimits::apply(sys, &self.rlimits, warn).map_err(step("set resource limits"))?;
        self.caps.cut_bounding_set(sys).map_err(step("cut the capability bounding set"))?;
        sys.set_keep_caps(true).map_err(step("keep capabilities across the uid change"))?;
        if can_setgroups {
            sys.set_groups(&self.additional_gids).map_err(step("set supplementary groups"))?;
        }
        sys.set_ids(self.uid, self.gid).map_err(step("set uid and gid"))?;
        sys.set_keep_caps(false).map_err(step("reset keep-capabilities"))?;
        let mut caps = self.caps.clone();
        if hold_admin {
            caps.effective.insert(caps::Capability::CAP_SYS_ADMIN);
            caps.permitted.insert(caps::Capability::CAP_SYS_ADMIN);
        }
        caps.apply(sys, warn).map_err(step("set capabilities"))?;
        sys.chdir(&self.cwd).map_err(step("enter the working directory"))?;
        if self.no_new_privs {
            sys.set_no_new_privs().map_err(step("set no_new_privs"))?;
        }
        sys.umask(self.umask);
        Ok(())
    }

    /// The steps between the start gate and execve: descriptors sealed,
    /// then the seccomp filter, then (if it was held for the filter)
    /// CAP_SYS_ADMIN given up. Only that capset(2), which every profile
    /// runc can run under allows, and execve run under the filter.
    pub fn confine(
        &self,
        sys: &dyn Syscall,
        seccomp: Option<&CompiledSeccomp>,
        held_admin: bool,
    ) -> Result<(), ProcessError> {
        sys.seal_descriptors(self.preserve_fds).map_err(step("mark descriptors close-on-exec"))?;
        if let Some(filter) = seccomp {
            sys.install_seccomp(filter)?;
        }
        if held_admin {
            use caps::CapSet;
            sys.set_caps(CapSet::Effective, &self.caps.effective)
                .map_err(step("give up CAP_SYS_ADMIN after seccomp"))?;
            sys.set_caps(CapSet::Permitted, &self.caps.permitted)
                .map_err(step("give up CAP_SYS_ADMIN after seccomp"))?;
        }
        Ok(())
    }
}

/// Whether the kernel runs AppArmor (what runc asks too).
fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
}

/// Where a process asks for its next program's AppArmor profile: the
/// LSM-specific file where the kernel has it (5.8 and later), else the
/// shared one.
fn apparmor_exec_attr() -> &'static Path {
    let specific = Path::new("/proc/self/attr/apparmor/exec");
    if specific.exists() { specific } else { Path::new("/proc/self/attr/exec") }
}

fn check_executable(path: &Path) -> Result<(), ProcessError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(ProcessError::NotExecutable(path.to_path_buf())),
        Err(_) => Err(ProcessError::NotFound(path.to_path_buf())),
    }
}

/// Replaces this process with the container's program. Returns only on
/// failure, with the errno. [`ProcessPlan::confine`] comes right before.
pub fn execve(exe: &CString, plan: &ProcessPlan) -> Result<std::convert::Infallible, ProcessError> {
    let err = nix::unistd::execve(exe, &plan.args, &plan.env).unwrap_err();
    Err(ProcessError::Step { step: "execve", source: SyscallError::os("execve", exe.to_string_lossy(), err) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::{Call, RecordingSyscall};

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_user_process_drops_privileges_in_order() {
        let p = process(
            r#"{"cwd":"/work","args":["sh"],"user":{"uid":1000,"gid":100,"additionalGids":[10,20],"umask":63},
                "noNewPrivileges":true,"capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        );
        let plan = ProcessPlan::new(&p, 0).unwrap();
        let sys = RecordingSyscall::default();
        plan.drop_privileges(&sys, false, true, &mut |_| {}).unwrap();
        let calls: Vec<_> =
            sys.calls().into_iter().filter(|c| !matches!(c, Call::DropBounding(_) | Call::SetCaps(..))).collect();
        assert_eq!(
            calls,
            vec![
                Call::KeepCaps(true),
                Call::SetGroups(vec![10, 20]),
                Call::SetIds(1000, 100),
                Call::KeepCaps(false),
                Call::Chdir("/work".into()),
                Call::NoNewPrivs,
                Call::Umask(0o77),
            ]
        );
        // The bounding set is cut before the uid changes.
        let calls = sys.calls();
        let last_drop = calls.iter().rposition(|c| matches!(c, Call::DropBounding(_))).unwrap();
        let set_ids = calls.iter().position(|c| matches!(c, Call::SetIds(..))).unwrap();
        assert!(last_drop < set_ids);
        assert!(!calls.contains(&Call::DropBounding(caps::Capability::CAP_KILL)));
    }

    fn filter() -> CompiledSeccomp {
        let profile = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["close_range"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        crate::seccomp::compile(&profile).unwrap()
    }

    #[test]
    fn without_no_new_privs_cap_sys_admin_is_held_until_the_filter_is_in() {
        let p = process(
            r#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"noNewPrivileges":false,
                "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        );
        let plan = ProcessPlan::new(&p, 2).unwrap();
        assert!(plan.holds_admin_for_seccomp(true));
        assert!(!plan.holds_admin_for_seccomp(false));
        let sys = RecordingSyscall::default();
        plan.drop_privileges(&sys, true, true, &mut |_| {}).unwrap();
        let held = vec![caps::Capability::CAP_KILL, caps::Capability::CAP_SYS_ADMIN];
        assert!(sys.calls().contains(&Call::SetCaps("Effective".into(), held.clone())), "{:?}", sys.calls());
        assert!(sys.calls().contains(&Call::SetCaps("Permitted".into(), held)), "{:?}", sys.calls());

        let sys = RecordingSyscall::default();
        plan.confine(&sys, Some(&filter()), true).unwrap();
        let kill = vec![caps::Capability::CAP_KILL];
        assert_eq!(
            sys.calls(),
            vec![
                // close_range before the filter, which may not allow it.
                Call::SealDescriptors(2),
                Call::InstallSeccomp,
                Call::SetCaps("Effective".into(), kill.clone()),
                Call::SetCaps("Permitted".into(), kill),
            ]
        );
    }

    #[test]
    fn with_no_new_privs_the_filter_is_the_last_step() {
        let p = process(r#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"noNewPrivileges":true}"#);
        let plan = ProcessPlan::new(&p, 0).unwrap();
        assert!(!plan.holds_admin_for_seccomp(true));
        let sys = RecordingSyscall::default();
        plan.confine(&sys, Some(&filter()), false).unwrap();
        assert_eq!(sys.calls(), vec![Call::SealDescriptors(0), Call::InstallSeccomp]);
        // A container that keeps CAP_SYS_ADMIN needs nothing held.
        let p = process(
            r#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"capabilities":{"effective":["CAP_SYS_ADMIN"]}}"#,
        );
        assert!(!ProcessPlan::new(&p, 0).unwrap().holds_admin_for_seccomp(true));
    }

    #[test]
    fn groups_are_left_alone_where_setgroups_is_denied() {
        let plan = ProcessPlan::new(&process(r#"{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}"#), 0).unwrap();
        let sys = RecordingSyscall::default();
        plan.drop_privileges(&sys, false, false, &mut |_| {}).unwrap();
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::SetGroups(_))));
        assert!(sys.calls().contains(&Call::Umask(0o022)));
    }

    #[test]
    fn a_nul_in_the_arguments_is_refused() {
        let err =
            ProcessPlan::new(&process(r#"{"cwd":"/","args":["a\u0000b"],"user":{"uid":0,"gid":0}}"#), 0).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn the_executable_is_searched_in_the_process_path() {
        let plan = ProcessPlan::new(
            &process(r#"{"cwd":"/","args":["sh"],"env":["PATH=/nonexistent:/bin"],"user":{"uid":0,"gid":0}}"#),
            0,
        )
        .unwrap();
        assert_eq!(plan.resolve_executable().unwrap().to_str().unwrap(), "/bin/sh");
        let plan = ProcessPlan::new(&process(r#"{"cwd":"/","args":["no-such-program"],"user":{"uid":0,"gid":0}}"#), 0)
            .unwrap();
        let err = plan.resolve_executable().unwrap_err();
        assert_eq!(err.to_string(), r#"exec: "no-such-program": executable file not found in $PATH"#);
        let plan =
            ProcessPlan::new(&process(r#"{"cwd":"/","args":["/etc/passwd"],"user":{"uid":0,"gid":0}}"#), 0).unwrap();
        let err = plan.resolve_executable().unwrap_err();
        assert!(matches!(err, ProcessError::NotExecutable(_)));
        assert_eq!(err.to_string(), r#"exec: "/etc/passwd": permission denied"#);
        let plan =
            ProcessPlan::new(&process(r#"{"cwd":"/","args":["/no/such"],"user":{"uid":0,"gid":0}}"#), 0).unwrap();
        let err = plan.resolve_executable().unwrap_err();
        assert_eq!(err.to_string(), r#"exec: "/no/such": stat /no/such: no such file or directory"#);
    }
}
