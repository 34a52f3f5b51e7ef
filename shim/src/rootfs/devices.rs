//! Device nodes and the /dev symlinks every container expects.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag, makedev};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use crate::syscall::{NodeKind, Syscall, SyscallError};

/// The nodes the runtime spec says every Linux container gets.
pub fn default_devices() -> Vec<LinuxDevice> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(path, major, minor)| {
        LinuxDeviceBuilder::default()
            .path(path)
            .typ(LinuxDeviceType::C)
            .major(major)
            .minor(minor)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .expect("static device description")
    })
    .collect()
}

/// Device-cgroup rules allowing the nodes the container is given: the
/// defaults, the pty devices and the bundle's own `linux.devices`. Without
/// them a bundle that denies all devices could not open its own /dev/null.
/// A FIFO is no device to the kernel: the device cgroup has no rule for it
/// (v1's devices.allow refuses `p`) and never stops its use.
pub fn allow_rules(devices: &[LinuxDevice]) -> Vec<LinuxDeviceCgroup> {
    let rule = |typ, major: Option<i64>, minor: Option<i64>| {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(true).typ(typ).access("rwm");
        if let Some(major) = major {
            b = b.major(major);
        }
        if let Some(minor) = minor {
            b = b.minor(minor);
        }
        b.build().expect("static device rule")
    };
    let mut rules: Vec<_> = default_devices()
        .iter()
        .chain(devices)
        .filter(|d| d.typ() != LinuxDeviceType::P)
        .map(|d| rule(d.typ(), Some(d.major()), Some(d.minor())))
        .collect();
    // /dev/pts/* and /dev/ptmx, so a container can have a terminal.
    rules.push(rule(LinuxDeviceType::C, Some(136), None));
    rules.push(rule(LinuxDeviceType::C, Some(5), Some(2)));
    rules
}

fn node_type(typ: LinuxDeviceType) -> SFlag {
    match typ {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    }
}

/// Creates `device` inside `rootfs`. In a user namespace mknod(2) of a
/// device is not allowed, so the host's node is bind-mounted instead; a
/// FIFO needs no privilege and is always made.
pub fn create_device(
    sys: &dyn Syscall,
    rootfs: &Path,
    device: &LinuxDevice,
    in_user_ns: bool,
) -> Result<(), SyscallError> {
    let path = device.path();
    if in_user_ns && device.typ() != LinuxDeviceType::P {
        let target = sys.mount_point(rootfs, path, NodeKind::File)?;
        return sys.mount(Some(path), &target.path, None, MsFlags::MS_BIND, None);
    }
    let mode = Mode::from_bits_truncate(device.file_mode().unwrap_or(0o666));
    let dev = makedev(device.major().unsigned_abs(), device.minor().unsigned_abs());
    sys.mknod(rootfs, path, node_type(device.typ()), mode, dev)?;
    let uid = Uid::from_raw(device.uid().unwrap_or(0));
    let gid = Gid::from_raw(device.gid().unwrap_or(0));
    sys.chown(rootfs, path, uid, gid)
}

/// Creates the default nodes and the bundle's devices; a bundle device
/// replaces a default one at the same path.
pub fn create_devices(
    sys: &dyn Syscall,
    rootfs: &Path,
    devices: &[LinuxDevice],
    in_user_ns: bool,
) -> Result<(), (PathBuf, SyscallError)> {
    let defaults = default_devices();
    let wanted = defaults.iter().filter(|d| !devices.iter().any(|own| own.path() == d.path())).chain(devices);
    for device in wanted {
        create_device(sys, rootfs, device, in_user_ns).map_err(|e| (device.path().clone(), e))?;
    }
    Ok(())
}

/// /dev/fd, /dev/std{in,out,err} and /dev/ptmx (pointing at the container's
/// own devpts instance).
pub fn create_symlinks(sys: &dyn Syscall, rootfs: &Path) -> Result<(), SyscallError> {
    let links = [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ];
    for (link, target) in links {
        sys.symlink(rootfs, Path::new(link), Path::new(target))?;
    }
    if Path::new("/proc/kcore").exists() {
        sys.symlink(rootfs, Path::new("/dev/core"), Path::new("/proc/kcore"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::{Call, RecordingSyscall};

    #[test]
    fn default_nodes_are_made_with_mknod_as_root() {
        let sys = RecordingSyscall::default();
        create_devices(&sys, Path::new("/r"), &[], false).unwrap();
        let calls = sys.calls();
        assert!(calls.contains(&Call::Mknod {
            path: "/r/dev/null".into(),
            kind: SFlag::S_IFCHR,
            perm: 0o666,
            dev: makedev(1, 3),
        }));
        assert!(calls.contains(&Call::Chown { path: "/r/dev/tty".into(), uid: 0, gid: 0 }));
        assert_eq!(calls.iter().filter(|c| matches!(c, Call::Mknod { .. })).count(), 6);
    }

    #[test]
    fn in_a_user_namespace_host_nodes_are_bind_mounted() {
        let sys = RecordingSyscall::default();
        create_devices(&sys, Path::new("/r"), &[], true).unwrap();
        let calls = sys.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::Mknod { .. })));
        assert!(calls.contains(&Call::Mount {
            source: Some("/dev/zero".into()),
            target: "/r/dev/zero".into(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        }));
    }

    #[test]
    fn a_bundle_device_replaces_the_default_at_its_path() {
        let own = LinuxDeviceBuilder::default()
            .path("/dev/null")
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .file_mode(0o600u32)
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .unwrap();
        let sys = RecordingSyscall::default();
        create_devices(&sys, Path::new("/r"), &[own], false).unwrap();
        let nulls: Vec<_> = sys
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Mknod { path, .. } if path == Path::new("/r/dev/null")))
            .collect();
        assert_eq!(nulls.len(), 1);
        assert!(matches!(nulls[0], Call::Mknod { perm: 0o600, .. }));
        assert!(sys.calls().contains(&Call::Chown { path: "/r/dev/null".into(), uid: 1000, gid: 1000 }));
    }

    #[test]
    fn a_fifo_is_made_with_mknod_and_gets_no_cgroup_rule() {
        let fifo = LinuxDeviceBuilder::default()
            .path("/dev/pipe")
            .typ(LinuxDeviceType::P)
            .file_mode(0o600u32)
            .build()
            .unwrap();
        assert!(allow_rules(std::slice::from_ref(&fifo)).iter().all(|r| r.typ() != Some(LinuxDeviceType::P)));
        let sys = RecordingSyscall::default();
        create_device(&sys, Path::new("/r"), &fifo, true).unwrap();
        assert_eq!(
            sys.calls()[0],
            Call::Mknod { path: "/r/dev/pipe".into(), kind: SFlag::S_IFIFO, perm: 0o600, dev: makedev(0, 0) }
        );
    }

    #[test]
    fn allow_rules_cover_defaults_ptys_and_bundle_devices() {
        let rules = allow_rules(&[]);
        assert!(rules.iter().all(|r| r.allow()));
        assert!(rules.iter().any(|r| r.major() == Some(1) && r.minor() == Some(3)));
        assert!(rules.iter().any(|r| r.major() == Some(136) && r.minor().is_none()));
    }
}
