//! Resource limits of the container process.
//!
//! Raising a hard limit above the runtime's own needs CAP_SYS_RESOURCE.
//! Where the runtime lacks it (rootless, or a restricted host) the limit is
//! capped at the current hard limit and a warning says so, rather than
//! failing a container over a limit the host cannot grant; podman and
//! containerd behave alike.

use nix::errno::Errno;
use nix::sys::resource::Resource;
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use crate::syscall::{Syscall, SyscallError};

pub fn resource(typ: PosixRlimitType) -> Resource {
    use PosixRlimitType as T;
    match typ {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Applies `rlimits`; each limit the host cannot grant is capped and
/// reported through `warn`.
pub fn apply(sys: &dyn Syscall, rlimits: &[PosixRlimit], warn: &mut dyn FnMut(String)) -> Result<(), SyscallError> {
    for limit in rlimits {
        let res = resource(limit.typ());
        let (soft, hard) = (limit.soft(), limit.hard());
        match sys.set_rlimit(res, soft, hard) {
            Err(err) if err.errno() == Some(Errno::EPERM) => {
                let (_, current_hard) = sys.get_rlimit(res)?;
                if hard <= current_hard {
                    return Err(err);
                }
                sys.set_rlimit(res, soft.min(current_hard), current_hard)?;
                warn(format!(
                    "{res:?}: hard limit {hard} is above this host's {current_hard} and raising it needs \
                     CAP_SYS_RESOURCE; the container gets soft {} hard {current_hard}",
                    soft.min(current_hard)
                ));
            }
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::{Call, RecordingSyscall};
    use oci_spec::runtime::PosixRlimitBuilder;

    fn nofile(soft: u64, hard: u64) -> PosixRlimit {
        PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).soft(soft).hard(hard).build().unwrap()
    }

    #[test]
    fn limits_within_reach_are_set_as_asked() {
        let sys = RecordingSyscall::default();
        let mut warnings = vec![];
        apply(&sys, &[nofile(1024, 4096)], &mut |w| warnings.push(w)).unwrap();
        assert_eq!(sys.calls(), vec![Call::Rlimit(Resource::RLIMIT_NOFILE, 1024, 4096)]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_hard_limit_above_the_host_is_capped_with_a_warning() {
        let mut sys = RecordingSyscall::default();
        sys.current_rlimit = (1024, 20000);
        sys.fail_on = Some((|c| matches!(c, Call::Rlimit(_, _, hard) if *hard > 20000), Errno::EPERM));
        let mut warnings = vec![];
        apply(&sys, &[nofile(1_048_576, 1_048_576)], &mut |w| warnings.push(w)).unwrap();
        assert_eq!(sys.calls().last(), Some(&Call::Rlimit(Resource::RLIMIT_NOFILE, 20000, 20000)));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("CAP_SYS_RESOURCE"), "{}", warnings[0]);
    }

    #[test]
    fn other_refusals_still_fail() {
        let mut sys = RecordingSyscall::default();
        sys.current_rlimit = (1024, 1_048_576);
        sys.fail_on = Some((|_| true, Errno::EPERM));
        assert!(apply(&sys, &[nofile(10, 20)], &mut |_| {}).is_err());
    }
}
