//! Errors of seccomp compilation and installation.

use std::path::PathBuf;

/// Why a `linux.seccomp` section could not be compiled or installed.
///
/// Compilation errors name the offending syscall, action, architecture or flag; they are all
/// raised by [`compile()`](super::compile()), before any container process exists.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `SCMP_ACT_NOTIFY` needs a user-notification listener, which Tote does not implement.
    #[error(
        "seccomp action SCMP_ACT_NOTIFY ({context}) is not supported: Tote cannot hand \
         seccomp user notifications to a listener"
    )]
    NotifyUnsupported {
        /// `defaultAction` or the syscalls of the offending rule.
        context: String,
    },

    /// `listenerPath` only serves `SCMP_ACT_NOTIFY`, which Tote does not implement.
    #[error(
        "seccomp listenerPath {path:?} is not supported: Tote cannot hand seccomp user \
         notifications to a listener"
    )]
    ListenerUnsupported {
        /// The configured socket path.
        path: PathBuf,
    },

    /// A filter flag Tote will not pass to the kernel.
    #[error("seccomp flag {flag} is not supported: {reason}")]
    UnsupportedFlag {
        /// The OCI name of the flag.
        flag: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A syscall name found in no architecture's syscall table.
    #[error("unknown syscall {name:?} in the seccomp profile (it is in no architecture's syscall table)")]
    UnknownSyscall {
        /// The name as written in the profile.
        name: String,
    },

    /// A condition on an argument a syscall cannot have.
    #[error(
        "seccomp rule for {syscalls}: argument index {index} is out of range (syscalls have \
         6 arguments, indexes 0 to 5)"
    )]
    ArgIndexOutOfRange {
        /// The syscall names of the offending rule.
        syscalls: String,
        /// The index given.
        index: usize,
    },

    /// An `errnoRet` / `defaultErrnoRet` that does not fit `SECCOMP_RET_DATA` (16 bits).
    #[error(
        "seccomp {context}: {action} value {value} does not fit the 16-bit data of a \
         seccomp return value"
    )]
    ReturnDataOutOfRange {
        /// `defaultAction` or the syscalls of the offending rule.
        context: String,
        /// The OCI action name.
        action: &'static str,
        /// The value given.
        value: u32,
    },

    /// Tote only generates filters for x86_64, aarch64 and riscv64 hosts.
    #[error("seccomp filters cannot be generated for this host architecture ({arch})")]
    UnsupportedHost {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },

    /// One architecture's part of a filter exceeds the kernel's program size limit.
    #[error(
        "seccomp filter for {arch} needs {len} BPF instructions, more than the kernel's \
         limit of {max}"
    )]
    FilterTooLarge {
        /// The `SCMP_ARCH_*` name of the architecture.
        arch: &'static str,
        /// Instructions needed.
        len: usize,
        /// `BPF_MAXINSNS`.
        max: usize,
    },

    /// All filters together exceed the kernel's per-syscall instruction budget.
    #[error(
        "seccomp filters need {total} BPF instructions in all, more than the kernel's limit \
         of {max}"
    )]
    TooManyInstructions {
        /// Instructions of all programs plus the kernel's per-filter penalty.
        total: usize,
        /// `MAX_INSNS_PER_PATH`.
        max: usize,
    },

    /// seccompiler refused a filter built from the profile.
    #[error("seccompiler could not build the filter for {arch}: {source}")]
    Backend {
        /// The `SCMP_ARCH_*` name of the architecture.
        arch: &'static str,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },

    /// A broken invariant of the code generator (e.g. seccompiler emitting code this module
    /// does not expect); never caused by the profile.
    #[error("internal error generating the seccomp filter: {0}")]
    Internal(String),

    /// seccomp(2) refused a filter.
    #[error("installing seccomp filter {index} of {count} failed: {source}")]
    Install {
        /// 1-based position of the refused filter.
        index: usize,
        /// How many filters were to be installed.
        count: usize,
        /// The errno.
        #[source]
        source: std::io::Error,
    },

    /// `SECCOMP_FILTER_FLAG_TSYNC` could not move another thread onto the new filter.
    #[error("seccomp SECCOMP_FILTER_FLAG_TSYNC failed: thread {tid} could not be synchronised")]
    ThreadSync {
        /// The thread that could not be synchronised.
        tid: libc::c_long,
    },
}
