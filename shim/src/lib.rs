//! tote-shim's container-creation core: turns an OCI bundle into a running,
//! isolated container, and manages it through runc's lifecycle.
//!
//! Every privileged kernel operation of container setup goes through the
//! [`syscall::Syscall`] seam, so the mount, namespace and process logic is
//! tested without root; the real containers are tested in `tests/`.

pub mod capabilities;
pub mod cgroups;
pub mod container;
pub mod exe_guard;
pub mod features;
pub mod foreground;
mod helper_proc;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod launch;
pub mod monitor;
pub mod namespaces;
pub mod ns_holder;
pub mod pod_init;
pub mod pod_userns;
pub mod port_forward;
pub mod process;
pub mod rlimits;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sync;
pub mod syscall;
pub mod terminal;
