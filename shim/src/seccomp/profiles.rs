//! Built-in seccomp profiles.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

use super::arch::Host;

/// Docker's default seccomp profile for this host, as Docker would pass it to the OCI runtime
/// for a container with Docker's default capabilities.
///
/// Transcribed from moby's `profiles/seccomp/default.json` (github.com/moby/profiles/seccomp
/// v0.2.3, the version vendored by moby master) and resolved the way moby's `setupSeccomp`
/// resolves it: the host's entry of the arch map, the base allow list, the entries included for
/// this host's architecture, kernel >= 4.8, and the capability-dependent entries for Docker's
/// default capability set (CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW, SETGID, SETUID,
/// SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE): `chroot` is allowed,
/// `clone` only without namespace flags, `clone3` fails with ENOSYS so libcs fall back to
/// `clone`, and the CAP_SYS_ADMIN / CAP_SYS_PTRACE / ... extras (mount, unshare, setns, bpf,
/// ...) are left to the default action, EPERM.
pub fn docker_default() -> LinuxSeccomp {
    docker_default_for(Host::current())
}

pub(crate) fn docker_default_for(host: Option<Host>) -> LinuxSeccomp {
    let mut syscalls = vec![
        allow(BASE_ALLOW),
        // Included by moby from kernel 4.8, where ptrace can no longer bypass seccomp.
        allow(&["process_vm_readv", "process_vm_writev", "ptrace"]),
    ];
    // socket(2) for every address family but AF_ALG (38) and AF_VSOCK (40).
    syscalls.push(allow_if("socket", 0, LinuxSeccompOperator::ScmpCmpLt, 38));
    syscalls.push(allow_if("socket", 0, LinuxSeccompOperator::ScmpCmpEq, 39));
    syscalls.push(allow_if("socket", 0, LinuxSeccompOperator::ScmpCmpGt, 40));
    // personality(2) only for PER_LINUX (0), PER_LINUX32 (8), UNAME26 (0x20000),
    // UNAME26|PER_LINUX32 and the query value 0xffffffff.
    for persona in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(allow_if("personality", 0, LinuxSeccompOperator::ScmpCmpEq, persona));
    }
    let arch_specific: &[&str] = match host {
        Some(Host::X86_64) => &["arch_prctl", "modify_ldt"],
        Some(Host::Aarch64) => {
            &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"]
        }
        Some(Host::Riscv64) => &["riscv_flush_icache"],
        None => &[],
    };
    if !arch_specific.is_empty() {
        syscalls.push(allow(arch_specific));
    }
    // CAP_SYS_CHROOT is in Docker's default capability set.
    syscalls.push(allow(&["chroot"]));
    // Without CAP_SYS_ADMIN: clone(2) only when no CLONE_NEW* flag is set (CLONE_NEWNS |
    // CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
    // CLONE_NEWNET = 0x7E020000), and clone3(2), whose flags live in memory seccomp cannot
    // read, fails with ENOSYS.
    syscalls.push(allow_if("clone", 0, LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS));
    let mut clone3 = LinuxSyscall::default();
    clone3
        .set_names(vec!["clone3".to_owned()])
        .set_action(LinuxSeccompAction::ScmpActErrno)
        .set_errno_ret(Some(libc::ENOSYS.unsigned_abs()));
    syscalls.push(clone3);

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(libc::EPERM.unsigned_abs()))
        .set_architectures(Some(architectures(host)))
        .set_syscalls(Some(syscalls));
    profile
}

/// moby's arch map entry for the host: the native architecture and its sub-architectures.
fn architectures(host: Option<Host>) -> Vec<Arch> {
    match host {
        Some(Host::X86_64) => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        Some(Host::Aarch64) => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        Some(Host::Riscv64) => vec![Arch::ScmpArchRiscv64],
        None => Vec::new(),
    }
}

/// 2114060288 in moby's profile.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

fn allow(names: &[&str]) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall.set_names(names.iter().map(|&name| name.to_owned()).collect()).set_action(LinuxSeccompAction::ScmpActAllow);
    syscall
}

fn allow_if(name: &str, index: usize, op: LinuxSeccompOperator, value: u64) -> LinuxSyscall {
    let arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value)
        .build()
        .expect("the builder defaults every field it is not given");
    let mut syscall = allow(&[name]);
    syscall.set_args(Some(vec![arg]));
    syscall
}

/// The unconditional allow list of moby's profile (its first entry), in moby's order. Names of
/// other architectures are harmless: each is only looked up in the tables of the ABIs filtered.
#[rustfmt::skip]
const BASE_ALLOW: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2",
    "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "getxattrat",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "ioctl", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
    "ioprio_set", "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr",
    "link", "linkat", "listen", "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack",
    "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
    "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd",
    "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat",
    "_newselect", "open", "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe",
    "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl",
    "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6",
    "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
    "remap_file_pages", "removexattr", "removexattrat", "rename", "renameat", "renameat2",
    "restart_syscall", "riscv_hwprobe", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl",
    "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64",
    "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid",
    "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid",
    "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid",
    "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statmount",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee",
    "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid",
    "write", "writev",
];
