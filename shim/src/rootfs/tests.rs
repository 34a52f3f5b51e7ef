use super::*;
use crate::syscall::recording::{Call, RecordingSyscall};

fn spec(mounts: &str, extra: &str) -> Spec {
    let json = format!(
        r#"{{"ociVersion":"1.2.0","process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}},
           "root":{{"path":"rootfs"}},"mounts":[{mounts}]{extra}}}"#
    );
    crate::spec::parse_spec(json.as_bytes()).expect("test spec parses")
}

fn cfg<'a>(spec: &'a Spec) -> RootfsConfig<'a> {
    RootfsConfig {
        spec,
        rootfs: Path::new("/r"),
        bundle: Path::new("/b"),
        cgroup: None,
        in_user_ns: false,
        new_cgroup_ns: false,
        no_pivot: false,
    }
}

fn mount_call(source: Option<&str>, target: &str, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Call {
    Call::Mount {
        source: source.map(PathBuf::from),
        target: target.into(),
        fstype: fstype.map(str::to_string),
        flags,
        data: data.map(str::to_string),
    }
}

const STANDARD: &str = r#"
    {"destination":"/proc","type":"proc","source":"proc"},
    {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
    {"destination":"/dev/pts","type":"devpts","source":"devpts","options":["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]}"#;

#[test]
fn the_root_stops_propagating_before_anything_is_mounted() {
    let spec = spec(STANDARD, "");
    let sys = RecordingSyscall::default();
    prepare(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    assert_eq!(calls[0], mount_call(None, "/", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None));
    assert_eq!(calls[1], mount_call(Some("/r"), "/r", None, MsFlags::MS_BIND | MsFlags::MS_REC, None));
}

#[test]
fn standard_mounts_get_their_type_flags_and_data() {
    let spec = spec(STANDARD, "");
    let sys = RecordingSyscall::default();
    prepare(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    assert!(calls.contains(&mount_call(Some("proc"), "/r/proc", Some("proc"), MsFlags::empty(), None)));
    assert!(calls.contains(&mount_call(
        Some("tmpfs"),
        "/r/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )));
    assert!(calls.contains(&mount_call(
        Some("devpts"),
        "/r/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )));
    // Devices come after /dev is mounted, and /dev/ptmx points into devpts.
    let dev_mount =
        calls.iter().position(|c| matches!(c, Call::Mount { target, .. } if target == Path::new("/r/dev"))).unwrap();
    let first_node = calls.iter().position(|c| matches!(c, Call::Mknod { .. })).unwrap();
    assert!(dev_mount < first_node);
    assert!(calls.contains(&Call::Symlink { link: "/r/dev/ptmx".into(), target: "pts/ptmx".into() }));
    assert!(calls.contains(&Call::Symlink { link: "/r/dev/fd".into(), target: "/proc/self/fd".into() }));
}

#[test]
fn a_read_only_bind_mount_is_remounted() {
    let spec = spec(r#"{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","ro","nosuid"]}"#, "");
    let sys = RecordingSyscall::default();
    prepare(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    let bind = mount_call(Some("/tmp"), "/r/data", None, MsFlags::MS_BIND | MsFlags::MS_REC, None);
    let remount = mount_call(
        None,
        "/r/data",
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        None,
    );
    let b = calls.iter().position(|c| *c == bind).expect("bind mount");
    let r = calls.iter().position(|c| *c == remount).expect("read-only remount");
    assert!(b < r);
    assert!(calls.contains(&Call::MountPoint { path: "/r/data".into(), kind: NodeKind::Dir }));
}

#[test]
fn a_locked_remount_is_retried_with_the_mounts_own_flags() {
    let spec = spec(r#"{"destination":"/data","type":"bind","source":"/tmp","options":["bind","ro"]}"#, "");
    let mut sys = RecordingSyscall::default();
    sys.locked_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    sys.fail_on = Some((
        |c| matches!(c, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_REMOUNT) && !flags.contains(MsFlags::MS_NODEV)),
        Errno::EPERM,
    ));
    prepare(&sys, &cfg(&spec)).unwrap();
    let expected = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    assert_eq!(sys.calls().iter().filter(|c| matches!(c, Call::Mount { flags, .. } if *flags == expected)).count(), 1);
}

#[test]
fn devpts_without_a_mapped_gid_is_retried_without_it() {
    let spec = spec(STANDARD, "");
    let mut sys = RecordingSyscall::default();
    sys.fail_on = Some((|c| matches!(c, Call::Mount { data: Some(d), .. } if d.contains("gid=5")), Errno::EINVAL));
    prepare(&sys, &cfg(&spec)).unwrap();
    assert!(sys.calls().contains(&mount_call(
        Some("devpts"),
        "/r/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )));
}

#[test]
fn a_bind_mounted_dev_gets_no_device_nodes() {
    let spec = spec(r#"{"destination":"/dev","type":"bind","source":"/dev","options":["rbind"]}"#, "");
    let sys = RecordingSyscall::default();
    prepare(&sys, &cfg(&spec)).unwrap();
    assert!(!sys.calls().iter().any(|c| matches!(c, Call::Mknod { .. } | Call::Symlink { .. })));
}

#[test]
fn a_missing_bind_source_is_named() {
    let spec = spec(r#"{"destination":"/data","type":"bind","source":"/nonexistent/tote-src","options":["bind"]}"#, "");
    let err = prepare(&RecordingSyscall::default(), &cfg(&spec)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/nonexistent/tote-src") && text.contains("/data"), "{text}");
}

#[test]
fn unsupported_mount_options_fail_the_mount() {
    let spec = spec(r#"{"destination":"/data","type":"bind","source":"/tmp","options":["bind","idmap"]}"#, "");
    let err = prepare(&RecordingSyscall::default(), &cfg(&spec)).unwrap_err();
    assert!(err.to_string().contains("idmap"), "{err}");
}

#[test]
fn propagation_and_recursive_attributes_follow_the_mount() {
    let spec = spec(r#"{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","rro","rshared"]}"#, "");
    let sys = RecordingSyscall::default();
    prepare(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    assert!(calls.contains(&mount_call(None, "/r/data", None, MsFlags::MS_SHARED | MsFlags::MS_REC, None)));
    assert!(calls.contains(&Call::MountSetattr {
        target: "/r/data".into(),
        recursive: true,
        set: options::MOUNT_ATTR_RDONLY,
        clear: 0,
    }));
}

#[test]
fn masked_paths_hide_files_and_directories_and_skip_missing_ones() {
    let spec = spec("", r#","linux":{"maskedPaths":["/proc/kcore","/proc/acpi","/proc/missing"]}"#);
    let mut sys = RecordingSyscall::default();
    sys.existing.insert("/proc/kcore".into(), NodeKind::File);
    sys.existing.insert("/proc/acpi".into(), NodeKind::Dir);
    finish(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    assert!(calls.contains(&mount_call(Some("/dev/null"), "/proc/kcore", None, MsFlags::MS_BIND, None)));
    assert!(calls.contains(&mount_call(Some("tmpfs"), "/proc/acpi", Some("tmpfs"), MsFlags::MS_RDONLY, None)));
    assert!(!calls.iter().any(|c| matches!(c, Call::MountPoint { path, .. } if path == Path::new("/proc/missing"))));
}

#[test]
fn readonly_paths_and_root_are_remounted_read_only() {
    let spec = spec("", r#","linux":{"readonlyPaths":["/proc/sys"]}"#);
    let mut spec = spec;
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let mut sys = RecordingSyscall::default();
    sys.existing.insert("/proc/sys".into(), NodeKind::Dir);
    finish(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    assert!(calls.contains(&mount_call(
        Some("/proc/sys"),
        "/proc/sys",
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None
    )));
    assert!(calls.contains(&mount_call(
        None,
        "/proc/sys",
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None,
    )));
    assert_eq!(
        calls.last(),
        Some(&mount_call(None, "/", None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None))
    );
}

#[test]
fn a_failed_pivot_root_on_initramfs_suggests_no_pivot() {
    let spec = spec("", "");
    let mut sys = RecordingSyscall::default();
    sys.fail_on = Some((|c| matches!(c, Call::PivotRoot(_)), Errno::EINVAL));
    let err = enter(&sys, &cfg(&spec)).unwrap_err();
    assert!(err.to_string().contains("--no-pivot"), "{err}");
    let sys = RecordingSyscall::default();
    let mut no_pivot = cfg(&spec);
    no_pivot.no_pivot = true;
    enter(&sys, &no_pivot).unwrap();
    assert_eq!(sys.calls(), vec![Call::MoveRoot("/r".into())]);
}

#[test]
fn a_shared_root_keeps_the_hosts_peer_groups_but_not_for_the_rootfs() {
    let spec = spec(
        r#"{"destination":"/data","type":"bind","source":"/tmp","options":["rbind","rshared"]}"#,
        r#","linux":{"rootfsPropagation":"rshared"}"#,
    );
    let mut sys = RecordingSyscall::default();
    sys.containing_mount = "/var/lib/tote".into();
    prepare(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    // Shared, not slave: a bind of a shared host mount stays its peer.
    assert_eq!(calls[0], mount_call(None, "/", None, MsFlags::MS_SHARED | MsFlags::MS_REC, None));
    // The mount holding the rootfs leaves the group before the rootfs is bound.
    assert_eq!(calls[1], mount_call(None, "/var/lib/tote", None, MsFlags::MS_PRIVATE, None));
    assert_eq!(calls[2], mount_call(Some("/r"), "/r", None, MsFlags::MS_BIND | MsFlags::MS_REC, None));
    assert!(calls.contains(&mount_call(None, "/r/data", None, MsFlags::MS_SHARED | MsFlags::MS_REC, None)));
    let sys = RecordingSyscall::default();
    finish(&sys, &cfg(&spec)).unwrap();
    assert_eq!(sys.calls(), vec![mount_call(None, "/", None, MsFlags::MS_SHARED | MsFlags::MS_REC, None)]);
}

#[test]
fn a_slave_root_needs_no_private_parent() {
    for propagation in ["rslave", "runbindable"] {
        let spec = spec("", &format!(r#","linux":{{"rootfsPropagation":"{propagation}"}}"#));
        let sys = RecordingSyscall::default();
        prepare(&sys, &cfg(&spec)).unwrap();
        assert_eq!(sys.calls()[0], mount_call(None, "/", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None));
        assert_eq!(sys.calls()[1], mount_call(Some("/r"), "/r", None, MsFlags::MS_BIND | MsFlags::MS_REC, None));
    }
}

#[test]
fn tmpcopyup_copies_the_lower_directory_before_a_read_only_remount() {
    let spec = spec(
        r#"{"destination":"/etc/conf","type":"tmpfs","source":"tmpfs","options":["tmpcopyup","ro","nosuid","mode=755"]}"#,
        "",
    );
    let sys = RecordingSyscall::default();
    prepare(&sys, &cfg(&spec)).unwrap();
    let calls = sys.calls();
    let at =
        |wanted: &Call| calls.iter().position(|c| c == wanted).unwrap_or_else(|| panic!("no {wanted:?} in {calls:?}"));
    let mount = at(&mount_call(Some("tmpfs"), "/r/etc/conf", Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=755")));
    let copy = at(&Call::CopyTree { from: "/r/etc/conf".into(), to: "/r/etc/conf".into() });
    let remount = at(&mount_call(
        None,
        "/r/etc/conf",
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        Some("mode=755"),
    ));
    assert!(mount < copy && copy < remount, "{calls:?}");
}

#[test]
fn proc_of_a_pid_namespace_not_its_own_is_the_hosts_bound_in_a_user_namespace() {
    // A rootless container sharing the host's PID namespace may not mount
    // proc (its user namespace does not own that PID namespace).
    let spec = spec(STANDARD, "");
    let mut sys = RecordingSyscall::default();
    sys.fail_on = Some((|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"), Errno::EPERM));
    let mut config = cfg(&spec);
    config.in_user_ns = true;
    prepare(&sys, &config).unwrap();
    let bind = mount_call(Some("/proc"), "/r/proc", None, MsFlags::MS_BIND | MsFlags::MS_REC, None);
    assert!(sys.calls().contains(&bind), "{:?}", sys.calls());
    // Outside a user namespace the failure is the caller's to see.
    let mut sys = RecordingSyscall::default();
    sys.fail_on = Some((|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"), Errno::EPERM));
    assert!(prepare(&sys, &cfg(&spec)).is_err());
}
