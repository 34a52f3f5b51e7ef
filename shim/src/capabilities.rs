//! The five capability sets of the container process.
//!
//! The bounding set is cut while the process is still fully privileged;
//! permitted, inheritable, effective and ambient are set after the uid
//! change (which PR_SET_KEEPCAPS lets the permitted set survive).

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::syscall::{Syscall, SyscallError};

/// The capabilities to give, already limited to what the running kernel knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
    /// Every capability the kernel supports, for cutting the bounding set.
    supported: CapsHashSet,
}

/// Every capability the running kernel knows: those numbered up to
/// /proc/sys/kernel/cap_last_cap (one read, where probing each capability
/// would take a prctl(2) per capability).
fn kernel_capabilities() -> CapsHashSet {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse::<u8>().ok());
    match last {
        Some(last) => caps::all().into_iter().filter(|c| c.index() <= last).collect(),
        None => caps::runtime::thread_all_supported(),
    }
}

/// Maps an OCI capability onto the `caps` crate's type. Both name the same
/// kernel constants; the OCI side was validated when config.json was parsed.
fn convert(set: Option<&Capabilities>, supported: &CapsHashSet) -> CapsHashSet {
    set.into_iter()
        .flatten()
        .filter_map(|cap| Capability::from_str(&format!("CAP_{cap}")).ok())
        // A capability newer than this kernel cannot be granted; runc skips it too.
        .filter(|cap| supported.contains(cap))
        .collect()
}

impl CapabilityPlan {
    pub fn new(spec: Option<&LinuxCapabilities>) -> Self {
        Self::with_supported(spec, kernel_capabilities())
    }

    fn with_supported(spec: Option<&LinuxCapabilities>, supported: CapsHashSet) -> Self {
        let set = |get: fn(&LinuxCapabilities) -> &Option<Capabilities>| {
            convert(spec.and_then(|s| get(s).as_ref()), &supported)
        };
        Self {
            bounding: set(LinuxCapabilities::bounding),
            effective: set(LinuxCapabilities::effective),
            permitted: set(LinuxCapabilities::permitted),
            inheritable: set(LinuxCapabilities::inheritable),
            ambient: set(LinuxCapabilities::ambient),
            supported,
        }
    }

    /// Drops every capability outside the bounding set. Needs CAP_SETPCAP,
    /// so it runs before the uid change.
    pub fn cut_bounding_set(&self, sys: &dyn Syscall) -> Result<(), SyscallError> {
        let mut dropped: Vec<_> = self.supported.difference(&self.bounding).copied().collect();
        dropped.sort_by_key(|c| c.index());
        for cap in dropped {
            sys.drop_bounding_cap(cap)?;
        }
        Ok(())
    }

    /// Sets the sets in the one order the kernel accepts, since each
    /// capset(2) keeps the other sets as they are: inheritable while
    /// CAP_SETPCAP is still effective, then effective (it must stay within
    /// permitted), then permitted, then ambient (within both).
    ///
    /// An ambient capability outside permitted or inheritable cannot be
    /// raised; like runc, that is a warning, not a failure (`runc spec`
    /// itself lists ambient capabilities but no inheritable ones).
    pub fn apply(&self, sys: &dyn Syscall, warn: &mut dyn FnMut(String)) -> Result<(), SyscallError> {
        sys.set_caps(CapSet::Inheritable, &self.inheritable)?;
        sys.set_caps(CapSet::Effective, &self.effective)?;
        sys.set_caps(CapSet::Permitted, &self.permitted)?;
        let mut ambient: Vec<_> = self.ambient.iter().copied().collect();
        ambient.sort_by_key(|c| c.index());
        for cap in ambient {
            if !self.permitted.contains(&cap) || !self.inheritable.contains(&cap) {
                warn(format!("ambient capability {cap} is not both permitted and inheritable; not raised"));
                continue;
            }
            sys.raise_ambient(cap)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::{Call, RecordingSyscall};

    fn caps_spec(json: &str) -> LinuxCapabilities {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn oci_names_map_onto_kernel_capabilities() {
        let spec = caps_spec(r#"{"bounding":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],"effective":["CAP_CHOWN"]}"#);
        let plan = CapabilityPlan::new(Some(&spec));
        assert_eq!(plan.bounding, [Capability::CAP_CHOWN, Capability::CAP_NET_BIND_SERVICE].into());
        assert_eq!(plan.effective, [Capability::CAP_CHOWN].into());
        assert!(plan.ambient.is_empty());
    }

    #[test]
    fn capabilities_the_kernel_lacks_are_left_out() {
        let spec = caps_spec(r#"{"bounding":["CAP_CHOWN","CAP_CHECKPOINT_RESTORE"]}"#);
        let plan = CapabilityPlan::with_supported(Some(&spec), [Capability::CAP_CHOWN].into());
        assert_eq!(plan.bounding, [Capability::CAP_CHOWN].into());
    }

    #[test]
    fn everything_outside_the_bounding_set_is_dropped() {
        let spec = caps_spec(r#"{"bounding":["CAP_CHOWN"]}"#);
        let supported = [Capability::CAP_CHOWN, Capability::CAP_SYS_ADMIN, Capability::CAP_KILL].into();
        let plan = CapabilityPlan::with_supported(Some(&spec), supported);
        let sys = RecordingSyscall::default();
        plan.cut_bounding_set(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            vec![Call::DropBounding(Capability::CAP_KILL), Call::DropBounding(Capability::CAP_SYS_ADMIN)]
        );
    }

    #[test]
    fn sets_are_applied_in_an_order_the_kernel_accepts() {
        let spec = caps_spec(
            r#"{"permitted":["CAP_KILL"],"inheritable":["CAP_KILL"],"effective":["CAP_KILL"],"ambient":["CAP_KILL"]}"#,
        );
        let sys = RecordingSyscall::default();
        CapabilityPlan::new(Some(&spec)).apply(&sys, &mut |w| panic!("{w}")).unwrap();
        let order: Vec<_> = sys
            .calls()
            .into_iter()
            .map(|c| match c {
                Call::SetCaps(set, _) => set,
                Call::RaiseAmbient(cap) => format!("Ambient {cap}"),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(order, vec!["Inheritable", "Effective", "Permitted", "Ambient CAP_KILL"]);
    }

    #[test]
    fn an_ambient_capability_that_cannot_be_raised_is_a_warning() {
        // runc spec's default: ambient capabilities, no inheritable ones.
        let spec = caps_spec(r#"{"permitted":["CAP_KILL"],"effective":["CAP_KILL"],"ambient":["CAP_KILL"]}"#);
        let sys = RecordingSyscall::default();
        let mut warnings = vec![];
        CapabilityPlan::new(Some(&spec)).apply(&sys, &mut |w| warnings.push(w)).unwrap();
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::RaiseAmbient(_))));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("CAP_KILL"), "{}", warnings[0]);
    }

    #[test]
    fn no_capabilities_section_means_no_capabilities() {
        let plan = CapabilityPlan::new(None);
        assert!(plan.bounding.is_empty() && plan.effective.is_empty() && plan.permitted.is_empty());
    }
}
