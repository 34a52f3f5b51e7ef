//! Bad bundles and bad commands: each gets an error naming the problem and
//! leaves no state, cgroup, mount or process behind.

mod support;

use serde_json::json;
use support::{Ran, TestContainer};

/// Nothing of the container exists any more.
#[track_caller]
fn assert_nothing_left(c: &TestContainer) {
    assert!(!c.root.join(&c.id).exists(), "state directory left behind");
    assert!(c.cgroup_dirs().is_empty(), "cgroups left behind: {:?}", c.cgroup_dirs());
    let bundle = c.bundle.to_string_lossy().into_owned();
    assert!(support::host_mounts_containing(&bundle).is_empty(), "mounts left behind");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(root) = std::fs::read_link(entry.path().join("root")) {
            assert!(!root.starts_with(&c.bundle), "process {:?} still runs in the rootfs", entry.file_name());
        }
    }
}

/// `create` fails and its message contains every one of `needles`.
#[track_caller]
fn create_fails_with(c: &TestContainer, needles: &[&str]) -> Ran {
    let ran = c.create();
    assert_ne!(ran.code, 0, "create succeeded");
    for needle in needles {
        assert!(ran.stderr.contains(needle), "error does not mention {needle:?}: {}", ran.stderr);
    }
    assert_nothing_left(c);
    ran
}

#[test]
fn a_missing_config_json() {
    let c = TestContainer::new("no-config");
    let bundle = c.bundle.to_string_lossy().into_owned();
    let ran = c.shim_ran(&["create", "--bundle", &bundle, &c.id]);
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("no config.json"), "{}", ran.stderr);
    assert_nothing_left(&c);
}

#[test]
fn a_malformed_config_json() {
    let c = TestContainer::new("malformed");
    std::fs::write(c.bundle.join("config.json"), "{\"ociVersion\": \"1.2.0\", \"process\": ").unwrap();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let ran = c.shim_ran(&["create", "--bundle", &bundle, &c.id]);
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("config.json") && ran.stderr.contains("line 1"), "{}", ran.stderr);
    assert_nothing_left(&c);
}

#[test]
fn an_unknown_namespace_type() {
    let c = TestContainer::new("bad-ns")
        .with(|cfg| cfg["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "bogus"})));
    create_fails_with(&c, &["linux.namespaces", "bogus"]);
}

#[test]
fn an_unknown_capability() {
    let c = TestContainer::new("bad-cap")
        .with(|cfg| cfg["process"]["capabilities"]["bounding"] = json!(["CAP_KILL", "CAP_FLY"]));
    create_fails_with(&c, &["process.capabilities.bounding", "CAP_FLY"]);
}

#[test]
fn an_unknown_syscall_name() {
    let c = TestContainer::new("bad-syscall").with(|cfg| {
        cfg["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid", "not_a_syscall"], "action": "SCMP_ACT_ERRNO"}]
        });
    });
    create_fails_with(&c, &["not_a_syscall"]);
}

#[test]
fn a_seccomp_action_that_cannot_be_honoured() {
    let c = TestContainer::new("notify").with(|cfg| {
        cfg["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    create_fails_with(&c, &["NOTIFY"]);
}

#[test]
fn a_rootfs_that_does_not_exist() {
    let c = TestContainer::new("no-rootfs").with(|cfg| cfg["root"]["path"] = json!("missing-rootfs"));
    create_fails_with(&c, &["missing-rootfs"]);
}

#[test]
fn a_namespace_path_that_does_not_exist() {
    let c = TestContainer::new("bad-ns-path").with(|cfg| {
        let ns = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "network", "path": "/proc/999999999/ns/net"}));
    });
    create_fails_with(&c, &["/proc/999999999/ns/net"]);
}

#[test]
fn nothing_to_run() {
    let c = TestContainer::new("no-args").with(|cfg| cfg["process"]["args"] = json!([]));
    create_fails_with(&c, &["process.args"]);
}

#[test]
fn a_mount_that_fails_mid_setup_is_rolled_back() {
    let c = TestContainer::new("bad-mount").with(|cfg| {
        cfg["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": "/nonexistent/tote-source", "options": ["bind"]
        }));
    });
    create_fails_with(&c, &["/nonexistent/tote-source", "/data"]);
}

#[test]
fn a_program_that_does_not_exist() {
    let c = TestContainer::new("no-program").args(&["/bin/no-such-program"]);
    let ran = c.run();
    assert_eq!(ran.code, 127, "{ran:?}");
    assert!(ran.stderr.contains("/bin/no-such-program"), "{}", ran.stderr);
    assert_nothing_left(&c);
    let c = TestContainer::new("not-executable").args(&["/etc/passwd"]);
    let ran = c.run();
    assert_eq!(ran.code, 126, "{ran:?}");
    assert_nothing_left(&c);
}

#[test]
fn an_id_already_in_use_leaves_the_first_container_alone() {
    let first = TestContainer::new("taken").args(&["sleep", "60"]);
    first.create().ok();
    first.start().ok();
    let again = first.create();
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(first.status(), "running");
    assert!(!first.cgroup_dirs().is_empty(), "the first container lost its cgroup");
    first.delete(true).ok();
}

#[test]
fn an_invalid_id() {
    let c = TestContainer::new("invalid-id");
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let ran = c.shim_ran(&["create", "--bundle", &bundle, "../escape"]);
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("invalid container id"), "{}", ran.stderr);
    assert!(!c.root.parent().unwrap().join("escape").exists());
}

#[test]
fn commands_on_a_container_that_does_not_exist() {
    let c = TestContainer::new("ghost");
    for args in [
        vec!["state", "ghost-x"],
        vec!["start", "ghost-x"],
        vec!["kill", "ghost-x", "KILL"],
        vec!["delete", "ghost-x"],
        vec!["exec", "ghost-x", "true"],
    ] {
        let ran = c.shim_ran(&args);
        assert_ne!(ran.code, 0, "{args:?}");
        assert!(ran.stderr.contains("\"ghost-x\" does not exist"), "{args:?}: {}", ran.stderr);
    }
    // Like runc, a forced delete of nothing is not an error.
    c.shim_ran(&["delete", "--force", "ghost-x"]).ok();
}

#[test]
fn an_unknown_signal() {
    let c = TestContainer::new("bad-signal").args(&["sleep", "60"]);
    c.create().ok();
    let ran = c.kill("SIGNOPE");
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("unknown signal \"SIGNOPE\""), "{}", ran.stderr);
    assert_eq!(c.status(), "created");
    c.delete(true).ok();
}

#[test]
fn a_terminal_without_a_console_socket() {
    let c = TestContainer::new("no-console").with(|cfg| cfg["process"]["terminal"] = json!(true));
    create_fails_with(&c, &["--console-socket"]);
}

/// A cgroup path may be any directory name (runc's cgroupfs mode), but it
/// may not climb out of where it is resolved.
#[test]
fn a_cgroup_path_that_climbs_out() {
    let c = TestContainer::new("cgroup-escape").with(|cfg| cfg["linux"]["cgroupsPath"] = json!("a/../../escape"));
    create_fails_with(&c, &["a/../../escape", ".."]);
    assert!(support::cgroup_dirs_named("escape").is_empty());
}

/// A failure of the init after it reported its namespaces ready (here
/// setresuid to a uid the user namespace does not map) fails `create`, on
/// stderr and in `--log` as JSON, as containerd and podman read it.
#[test]
fn an_init_failure_while_dropping_privileges_fails_create() {
    let c = TestContainer::new("unmapped-uid").with(|cfg| {
        cfg["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
        cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 1000}]);
        cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 1000}]);
        cfg["process"]["user"] = json!({"uid": 5000, "gid": 0});
    });
    c.write_config();
    let log = c.bundle.join("shim.log");
    let bundle = c.bundle.to_string_lossy().into_owned();
    let ran =
        c.shim_ran(&["--log", &log.to_string_lossy(), "--log-format", "json", "create", "--bundle", &bundle, &c.id]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("setresuid"), "{ran:?}");
    let logged: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(logged["level"], "error");
    assert!(logged["msg"].as_str().unwrap().contains("setresuid"), "{logged}");
    assert_nothing_left(&c);
}

/// runc refuses an AppArmor profile on a host without AppArmor (its init
/// fails writing /proc/self/attr/exec); ignoring the profile would run the
/// container less confined than asked.
#[test]
fn an_apparmor_profile_on_a_host_without_apparmor() {
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").unwrap_or_default();
    if enabled.trim() == "Y" {
        eprintln!("skipped: AppArmor is enabled on this host");
        return;
    }
    let c = TestContainer::new("apparmor").with(|cfg| cfg["process"]["apparmorProfile"] = json!("tote-test-profile"));
    create_fails_with(&c, &["AppArmor", "tote-test-profile"]);
}
