//! `tote-shim features`: what this runtime supports, in the runtime-spec's
//! features document (the JSON `runc features` prints), which containerd
//! and podman read to decide what they may ask for.
//!
//! Built from the code that does the work wherever it can be asked (the
//! mount options are those the option parser takes, the capabilities those
//! the kernel and `caps` know), so the document cannot claim more than the
//! runtime does.

use std::collections::HashMap;

use oci_spec::runtime::{Arch, Features, LinuxFeature, LinuxNamespaceType, LinuxSeccompAction, LinuxSeccompOperator};

use crate::rootfs::options;

/// Every mount option runc knows; the ones tote-shim applies are listed
/// (an unknown one is passed to the filesystem as mount data instead).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "idmap",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "ridmap",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "tmpcopyup",
    "unbindable",
];

const HOOKS: &[&str] = &["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

/// The features document of this build on this host.
pub fn features() -> Features {
    let mut mount_options: Vec<String> =
        MOUNT_OPTIONS.iter().filter(|o| options::is_known(o)).map(|o| o.to_string()).collect();
    mount_options.sort();
    let mut capabilities: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    capabilities.sort();

    let mut cgroup = oci_spec::runtime::Cgroup::default();
    cgroup.set_v1(Some(true));
    cgroup.set_v2(Some(true));
    cgroup.set_systemd(Some(false));
    cgroup.set_systemd_user(Some(false));

    let mut seccomp = oci_spec::runtime::Seccomp::default();
    seccomp.set_enabled(Some(true));
    // Every action but SCMP_ACT_NOTIFY, which needs a listener tote-shim
    // does not hand out.
    seccomp.set_actions(Some(vec![
        LinuxSeccompAction::ScmpActAllow,
        LinuxSeccompAction::ScmpActErrno,
        LinuxSeccompAction::ScmpActKill,
        LinuxSeccompAction::ScmpActKillProcess,
        LinuxSeccompAction::ScmpActKillThread,
        LinuxSeccompAction::ScmpActLog,
        LinuxSeccompAction::ScmpActTrace,
        LinuxSeccompAction::ScmpActTrap,
    ]));
    seccomp.set_operators(Some(
        [
            LinuxSeccompOperator::ScmpCmpEq,
            LinuxSeccompOperator::ScmpCmpGe,
            LinuxSeccompOperator::ScmpCmpGt,
            LinuxSeccompOperator::ScmpCmpLe,
            LinuxSeccompOperator::ScmpCmpLt,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            LinuxSeccompOperator::ScmpCmpNe,
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
    ));
    seccomp.set_archs(Some(seccomp_archs()));
    let flags: Vec<String> = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
        .map(String::from)
        .into();
    seccomp.set_known_flags(Some(flags.clone()));
    seccomp.set_supported_flags(Some(flags));

    let mut apparmor = oci_spec::runtime::Apparmor::default();
    apparmor.set_enabled(Some(false));
    let mut selinux = oci_spec::runtime::Selinux::default();
    selinux.set_enabled(Some(false));
    let mut intel_rdt = oci_spec::runtime::IntelRdt::default();
    intel_rdt.set_enabled(Some(false));

    let mut linux = LinuxFeature::default();
    linux.set_namespaces(Some(vec![
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Time,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Uts,
    ]));
    linux.set_capabilities(Some(capabilities));
    linux.set_cgroup(Some(cgroup));
    linux.set_seccomp(Some(seccomp));
    linux.set_apparmor(Some(apparmor));
    linux.set_selinux(Some(selinux));
    linux.set_intel_rdt(Some(intel_rdt));

    let mut features = Features::default();
    features.set_oci_version_min("1.0.0".to_string());
    features.set_oci_version_max("1.2.0".to_string());
    features.set_hooks(Some(HOOKS.iter().map(|h| h.to_string()).collect()));
    features.set_mount_options(Some(mount_options));
    features.set_linux(Some(linux));
    features.set_annotations(Some(HashMap::from([(
        "org.tote.tote-shim.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )])));
    features
}

/// The architectures a filter may name on this host (the host's own and
/// the ones its kernel also runs).
fn seccomp_archs() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86, Arch::ScmpArchX86_64, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
    } else if cfg!(target_arch = "riscv64") {
        vec![Arch::ScmpArchRiscv64]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_only_what_the_runtime_takes() {
        let features = features();
        let json = serde_json::to_value(&features).unwrap();
        assert_eq!(json["ociVersionMin"], "1.0.0");
        let options: Vec<&str> = json["mountOptions"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
        assert!(options.contains(&"rbind") && options.contains(&"rro"), "{options:?}");
        for option in &options {
            assert!(options::is_known(option), "{option} is listed but not applied");
        }
        assert!(!options.contains(&"idmap"), "idmap is refused by the parser");
        // Filesystem data is taken but is no mount option of the runtime's.
        assert!(options::MountOptions::parse(&["mode=755"]).is_ok() && !options.contains(&"mode=755"), "mount data");
        // ratime is applied (back to relatime) since it stopped being passed as data, as runc lists it.
        assert!(options.contains(&"ratime") && options.contains(&"rnostrictatime"), "{options:?}");
        assert_eq!(json["linux"]["cgroup"]["systemd"], false);
        assert!(json["linux"]["capabilities"].as_array().unwrap().iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert!(json["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n == "user"));
        assert!(json["linux"]["seccomp"]["actions"].as_array().unwrap().iter().all(|a| a != "SCMP_ACT_NOTIFY"));
        assert_eq!(json["hooks"].as_array().unwrap().len(), 6);
    }
}
