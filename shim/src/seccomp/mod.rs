//! Seccomp for containers: compiles the OCI runtime-spec `linux.seccomp` section into classic
//! BPF with seccompiler and installs it with seccomp(2).
//!
//! [`compile()`] runs in the runtime before any container process exists and does all the work
//! that can fail on account of the profile; [`CompiledSeccomp::install`] runs in the container's
//! single-threaded child right before execve and only makes the seccomp(2) calls.
//!
//! Semantics follow runc with libseccomp (see `compile.rs` for how several actions are
//! composed from single-action seccompiler filters). What cannot be honoured is an error,
//! never silently dropped: `SCMP_ACT_NOTIFY`, `listenerPath`, and the
//! `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` flag.

mod arch;
mod bpf;
mod compile;
mod error;
mod install;
pub mod profiles;

#[cfg(test)]
mod interp;
#[cfg(test)]
mod tests;

pub use error::SeccompError;

use oci_spec::runtime::LinuxSeccomp;

/// A profile compiled for this host: the BPF programs to install, in order, and the seccomp(2)
/// flags to install them with.
#[derive(Clone, Debug)]
pub struct CompiledSeccomp {
    programs: Vec<Vec<seccompiler::sock_filter>>,
    flags: libc::c_ulong,
}

impl CompiledSeccomp {
    /// The programs [`install`](Self::install) loads, in order. Each is at most
    /// `BPF_MAXINSNS` (4096) instructions long.
    pub fn programs(&self) -> &[Vec<seccompiler::sock_filter>] {
        &self.programs
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits passed with every program.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

/// Compiles `spec` for the architecture this runtime runs on.
///
/// Every error a profile can cause is reported here: unsupported actions (`SCMP_ACT_NOTIFY`),
/// `listenerPath`, unsupported flags, syscall names unknown on every architecture, argument
/// indexes above 5, errno values that do not fit 16 bits, and filters too large for the kernel.
/// Architectures this host cannot execute (e.g. `SCMP_ARCH_PPC64` on x86_64) are ignored; calls
/// of an executable ABI the profile does not list are killed.
pub fn compile(spec: &LinuxSeccomp) -> Result<CompiledSeccomp, SeccompError> {
    let host = arch::Host::current().ok_or(SeccompError::UnsupportedHost { arch: std::env::consts::ARCH })?;
    compile::compile_for(spec, host)
}
