//! Each isolation feature, checked from inside a real container.

mod support;

use serde_json::json;
use support::TestContainer;

/// The capability bits of the default bundle: CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE.
const DEFAULT_CAPS: &str = "0000000020000420";

/// Gives the process exactly `caps` in all five sets.
fn set_caps(config: &mut serde_json::Value, caps: &[&str]) {
    for set in ["bounding", "effective", "permitted", "inheritable", "ambient"] {
        config["process"]["capabilities"][set] = json!(caps);
    }
}

fn status_field(ran: &support::Ran, name: &str) -> String {
    ran.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {ran:?}"))
        .trim()
        .to_string()
}

#[test]
fn the_process_is_pid_1_of_its_own_pid_namespace() {
    let ran = TestContainer::new("pidns")
        .sh("echo pid=$$; echo one=$(tr '\\0' ' ' < /proc/1/cmdline); echo highest=$(ls -d /proc/[0-9]* | sed 's,/proc/,,' | sort -n | tail -1)")
        .run();
    ran.ok();
    assert_eq!(ran.field("pid"), "1");
    assert!(ran.field("one").starts_with("sh -c echo pid="), "{ran:?}");
    // Only the shell and the few processes of its pipeline exist.
    assert!(ran.field("highest").parse::<u32>().unwrap() < 10, "{ran:?}");
}

#[test]
fn hostname_and_domainname_are_the_containers() {
    let ran = TestContainer::new("uts")
        .sh("echo host=$(hostname); echo domain=$(cat /proc/sys/kernel/domainname)")
        .with(|c| {
            c["hostname"] = json!("box");
            c["domainname"] = json!("example.test");
        })
        .run();
    assert_eq!(ran.field("host"), "box");
    assert_eq!(ran.field("domain"), "example.test");
}

#[test]
fn the_mount_table_holds_only_the_containers_mounts() {
    let ran = TestContainer::new("mounts").sh("cat /proc/self/mountinfo").run();
    let mounts: Vec<(String, String)> = ran
        .ok()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            (f[4].to_string(), f[sep + 1].to_string())
        })
        .collect();
    let fstype = |point: &str| mounts.iter().find(|(p, _)| p == point).map(|(_, t)| t.clone());
    assert_eq!(fstype("/proc").as_deref(), Some("proc"));
    assert_eq!(fstype("/dev").as_deref(), Some("tmpfs"));
    assert_eq!(fstype("/dev/pts").as_deref(), Some("devpts"));
    assert_eq!(fstype("/dev/shm").as_deref(), Some("tmpfs"));
    assert_eq!(fstype("/dev/mqueue").as_deref(), Some("mqueue"));
    assert_eq!(fstype("/sys").as_deref(), Some("sysfs"));
    assert!(fstype("/sys/fs/cgroup").is_some(), "no cgroup mount: {mounts:?}");
    // The root is the bundle's rootfs and no host mount point is visible.
    assert_eq!(mounts[0].0, "/");
    for (point, _) in &mounts {
        for host in ["/work", "/home", "/boot", "/run", "/tmp/tote-tests"] {
            assert!(!point.starts_with(host), "host mount {point} visible in the container");
        }
    }
}

#[test]
fn bind_mounts_honour_their_options() {
    let c = TestContainer::new("binds");
    let shared = support::scratch().join(format!("shared-{}", c.id));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the host\n").unwrap();
    let src = shared.to_string_lossy().into_owned();
    let ran = c
        .sh("cat /data/hello; echo x > /data/new && echo rw=yes; cat /ro/hello; echo x > /ro/new 2>/dev/null || echo ro=refused")
        .with(|cfg| {
            let mounts = cfg["mounts"].as_array_mut().unwrap();
            mounts.push(json!({"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "rw"]}));
            mounts.push(json!({"destination": "/ro", "type": "bind", "source": src, "options": ["bind", "ro", "nosuid"]}));
        })
        .run();
    assert_eq!(ran.field("rw"), "yes");
    assert_eq!(ran.field("ro"), "refused");
    assert_eq!(ran.stdout.matches("from the host").count(), 2, "{ran:?}");
    assert!(shared.join("new").exists(), "a write through the rw bind mount did not reach the host");
    std::fs::remove_dir_all(&shared).unwrap();
}

#[test]
fn default_capabilities_and_no_new_privileges() {
    let ran = TestContainer::new("caps")
        .sh("grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs):' /proc/self/status")
        .run();
    ran.ok();
    assert_eq!(status_field(&ran, "CapEff"), DEFAULT_CAPS);
    assert_eq!(status_field(&ran, "CapPrm"), DEFAULT_CAPS);
    assert_eq!(status_field(&ran, "CapBnd"), DEFAULT_CAPS);
    // Like `runc spec`, the default bundle also lists them as inheritable and ambient.
    assert_eq!(status_field(&ran, "CapInh"), DEFAULT_CAPS);
    assert_eq!(status_field(&ran, "CapAmb"), DEFAULT_CAPS);
    assert_eq!(status_field(&ran, "NoNewPrivs"), "1");
}

#[test]
fn all_five_capability_sets_are_set_for_a_non_root_user() {
    let ran = TestContainer::new("caps-user")
        .sh("grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs):' /proc/self/status; id")
        .with(|c| {
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            c["process"]["noNewPrivileges"] = json!(false);
            c["process"]["capabilities"] = json!({
                "bounding": ["CAP_NET_RAW", "CAP_CHOWN"],
                "permitted": ["CAP_NET_RAW"],
                "inheritable": ["CAP_NET_RAW"],
                "effective": ["CAP_NET_RAW"],
                "ambient": ["CAP_NET_RAW"]
            });
        })
        .run();
    ran.ok();
    let net_raw = "0000000000002000";
    assert_eq!(status_field(&ran, "CapEff"), net_raw);
    assert_eq!(status_field(&ran, "CapPrm"), net_raw);
    assert_eq!(status_field(&ran, "CapInh"), net_raw);
    assert_eq!(status_field(&ran, "CapAmb"), net_raw);
    assert_eq!(status_field(&ran, "CapBnd"), "0000000000002001");
    assert_eq!(status_field(&ran, "NoNewPrivs"), "0");
    assert!(ran.stdout.contains("uid=1000"), "{ran:?}");
}

#[test]
fn docker_default_seccomp_refuses_unshare_and_mount_and_allows_the_rest() {
    let profile = serde_json::to_value(tote_shim::seccomp::profiles::docker_default()).unwrap();
    let ran = TestContainer::new("seccomp")
        .sh("grep -E '^Seccomp:' /proc/self/status; \
             unshare -m true 2>/dev/null && echo unshare=allowed || echo unshare=refused; \
             mount -t tmpfs none /tmp 2>/dev/null && echo mount=allowed || echo mount=refused; \
             ls / > /dev/null && echo ls=ok; echo hi | sha256sum > /dev/null && echo pipe=ok")
        .with(|c| {
            c["linux"]["seccomp"] = profile;
            // With CAP_SYS_ADMIN the refusals below can only come from seccomp.
            set_caps(c, &["CAP_SYS_ADMIN", "CAP_KILL", "CAP_AUDIT_WRITE"]);
        })
        .run();
    ran.ok();
    assert_eq!(status_field(&ran, "Seccomp"), "2");
    assert_eq!(ran.field("unshare"), "refused");
    assert_eq!(ran.field("mount"), "refused");
    assert_eq!(ran.field("ls"), "ok");
    assert_eq!(ran.field("pipe"), "ok");
}

#[test]
fn without_seccomp_the_same_calls_succeed() {
    // The control for the test above: CAP_SYS_ADMIN alone does allow them.
    let ran = TestContainer::new("no-seccomp")
        .sh("unshare -m true && echo unshare=allowed; mount -t tmpfs none /tmp && echo mount=allowed")
        .with(|c| set_caps(c, &["CAP_SYS_ADMIN"]))
        .run();
    assert_eq!(ran.field("unshare"), "allowed");
    assert_eq!(ran.field("mount"), "allowed");
}

#[test]
fn seccomp_errno_and_conditions_are_honoured() {
    let ran = TestContainer::new("seccomp-errno")
        .sh("mkdir /tmp/a 2>&1; echo rc=$?; touch /tmp/f; chmod 600 /tmp/f && echo chmod600=ok; chmod 644 /tmp/f 2>&1 || echo chmod644=refused")
        .with(|c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 28},
                    {"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                     "args": [{"index": 1, "value": 420, "op": "SCMP_CMP_EQ"}]},
                    {"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                     "args": [{"index": 2, "value": 420, "op": "SCMP_CMP_EQ"}]}
                ]
            });
        })
        .run();
    assert!(ran.stdout.contains("No space left on device"), "errnoRet 28 (ENOSPC) not returned: {ran:?}");
    assert_eq!(ran.field("chmod600"), "ok");
    assert_eq!(ran.field("chmod644"), "refused");
}

#[test]
fn uid_gid_and_supplementary_groups() {
    let ran = TestContainer::new("ids")
        .sh("echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); echo umask=$(umask)")
        .with(|c| c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 65534], "umask": 63}))
        .run();
    assert_eq!(ran.field("uid"), "1000");
    assert_eq!(ran.field("gid"), "1000");
    assert_eq!(ran.field("groups"), "1000 5 65534");
    assert_eq!(ran.field("umask"), "0077");
}

#[test]
fn rlimits_are_applied() {
    let ran = TestContainer::new("rlimits")
        .sh("echo soft=$(ulimit -n); echo hard=$(ulimit -Hn); echo core=$(ulimit -c)")
        .with(|c| {
            c["process"]["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 2345},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
            ]);
        })
        .run();
    assert_eq!(ran.field("soft"), "1234");
    assert_eq!(ran.field("hard"), "2345");
    assert_eq!(ran.field("core"), "0");
}

#[test]
fn an_rlimit_above_the_hosts_hard_limit_is_capped_with_a_warning() {
    let (_, host_hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let wanted = 1u64 << 24; // above any host's nr_open default
    let ran = TestContainer::new("rlimit-cap")
        .sh("echo hard=$(ulimit -Hn)")
        .with(|c| c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": wanted, "hard": wanted}]))
        .run();
    ran.ok();
    let got: u64 = ran.field("hard").parse().unwrap();
    if got == wanted {
        // A host whose root may raise limits gives what was asked.
        assert!(!ran.stderr.contains("warning"), "{ran:?}");
    } else {
        assert_eq!(got, host_hard, "{ran:?}");
        assert!(ran.stderr.contains("CAP_SYS_RESOURCE"), "no warning about the capped limit: {ran:?}");
    }
}

#[test]
fn oom_score_adj_is_set_or_clearly_kept() {
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    let raised = (own + 100).min(1000);
    let ran = TestContainer::new("oom-adj")
        .sh("echo adj=$(cat /proc/self/oom_score_adj)")
        .with(|c| c["process"]["oomScoreAdj"] = json!(raised))
        .run();
    assert_eq!(ran.field("adj"), raised.to_string());

    let ran = TestContainer::new("oom-adj-low")
        .sh("echo adj=$(cat /proc/self/oom_score_adj)")
        .with(|c| c["process"]["oomScoreAdj"] = json!(-999))
        .run();
    ran.ok();
    if ran.field("adj") != "-999" {
        assert_eq!(ran.field("adj"), own.to_string());
        assert!(ran.stderr.contains("CAP_SYS_RESOURCE"), "no warning about the kept score: {ran:?}");
    }
}

#[test]
fn masked_paths_cannot_be_read() {
    let ran = TestContainer::new("masked")
        .sh("echo timers=$(wc -c < /proc/timer_list); echo keys=$(wc -c < /proc/keys); echo acpi=$(ls /proc/acpi | wc -l); \
             echo firmware=$(ls /sys/firmware | wc -l)")
        .run();
    // The host has all four (checked, so the test cannot pass vacuously).
    for path in ["/proc/timer_list", "/proc/keys", "/proc/acpi", "/sys/firmware"] {
        assert!(std::path::Path::new(path).exists(), "{path} missing on the host");
    }
    assert!(!std::fs::read_to_string("/proc/timer_list").unwrap().is_empty());
    assert_eq!(ran.field("timers"), "0");
    assert_eq!(ran.field("keys"), "0");
    assert_eq!(ran.field("acpi"), "0");
    assert_eq!(ran.field("firmware"), "0");
}

#[test]
fn readonly_paths_and_a_readonly_root_cannot_be_written() {
    let ran = TestContainer::new("readonly")
        .sh("echo 1 > /proc/sys/vm/overcommit_memory 2>/dev/null && echo sys=written || echo sys=refused; \
             echo x > /proc/sysrq-trigger 2>/dev/null && echo sysrq=written || echo sysrq=refused; \
             touch /newfile 2>/dev/null && echo root=written || echo root=refused; \
             echo x > /dev/shm/ok && echo shm=written")
        .with(|c| c["root"]["readonly"] = json!(true))
        .run();
    assert_eq!(ran.field("sys"), "refused");
    assert_eq!(ran.field("sysrq"), "refused");
    assert_eq!(ran.field("root"), "refused");
    assert_eq!(ran.field("shm"), "written");
}

#[test]
fn device_nodes_and_the_device_allow_list() {
    let ran = TestContainer::new("devices")
        .sh("ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty | awk '{print $1, $5, $6}'; \
             echo x > /dev/null && echo null=ok; echo fd=$(readlink /dev/fd); \
             mknod /tmp/sda b 8 0 && echo mknod=ok; head -c 1 /tmp/sda > /dev/null 2>&1 && echo sda=opened || echo sda=refused; \
             mknod /tmp/mem c 1 1; head -c 1 /tmp/mem > /dev/null 2>&1 && echo mem=opened || echo mem=refused")
        .with(|c| set_caps(c, &["CAP_MKNOD", "CAP_KILL"]))
        .run();
    ran.ok();
    for node in [
        "crw-rw-rw- 1, 3",
        "crw-rw-rw- 1, 5",
        "crw-rw-rw- 1, 7",
        "crw-rw-rw- 1, 8",
        "crw-rw-rw- 1, 9",
        "crw-rw-rw- 5, 0",
    ] {
        assert!(ran.stdout.contains(node), "missing node {node:?} in {ran:?}");
    }
    assert_eq!(ran.field("null"), "ok");
    assert_eq!(ran.field("fd"), "/proc/self/fd");
    assert_eq!(ran.field("mknod"), "ok");
    assert_eq!(ran.field("sda"), "refused");
    assert_eq!(ran.field("mem"), "refused");
}

#[test]
fn bundle_devices_are_created_and_allowed() {
    let ran = TestContainer::new("own-device")
        .sh("ls -ln /dev/net/tun | awk '{print $1, $3, $4, $5, $6}'; exec 3</dev/net/tun && echo open=ok")
        .with(|c| {
            // Not one of the default nodes, so only the bundle's entry allows it.
            c["linux"]["devices"] = json!([{"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 416, "uid": 0, "gid": 0}]);
        })
        .run();
    assert!(ran.stdout.contains("crw-r----- 0 0 10, 200"), "{ran:?}");
    assert_eq!(ran.field("open"), "ok", "{ran:?}");
}

#[test]
fn namespaced_sysctls_are_set() {
    let ran = TestContainer::new("sysctl")
        .sh("echo fwd=$(cat /proc/sys/net/ipv4/ip_forward); echo shmmni=$(cat /proc/sys/kernel/shmmni)")
        .with(|c| c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"}))
        .run();
    assert_eq!(ran.field("fwd"), "1");
    assert_eq!(ran.field("shmmni"), "1234");
}

#[test]
fn environment_and_working_directory() {
    let ran = TestContainer::new("env")
        .sh("echo foo=$FOO; echo cwd=$(pwd)")
        .with(|c| {
            c["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
            c["process"]["cwd"] = json!("/work/dir");
        })
        .run();
    assert_eq!(ran.field("foo"), "bar baz");
    assert_eq!(ran.field("cwd"), "/work/dir");
}

#[test]
fn a_user_namespace_maps_root_to_an_unprivileged_host_range() {
    let c = TestContainer::new("userns")
        .sh("echo uid=$(id -u); echo map=$(cat /proc/self/uid_map | tr -s ' '); echo gmap=$(cat /proc/self/gid_map | tr -s ' '); \
             echo x > /dev/null && echo null=ok; touch /tmp/owned")
        .with(|cfg| {
            cfg["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
            cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        });
    // The mapped root must be able to read its rootfs.
    let status = std::process::Command::new("chown").args(["-R", "100000:100000"]).arg(c.rootfs()).status().unwrap();
    assert!(status.success());
    let ran = c.run();
    assert_eq!(ran.field("uid"), "0");
    assert_eq!(ran.field("map"), "0 100000 65536");
    assert_eq!(ran.field("gmap"), "0 100000 65536");
    assert_eq!(ran.field("null"), "ok");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(c.rootfs().join("tmp/owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100000, 100000), "container root is not host uid 100000");
}

#[test]
fn an_unprivileged_user_runs_a_rootless_container() {
    let nobody = 65534;
    let c = TestContainer::new("rootless")
        .sh("echo uid=$(id -u); echo map=$(cat /proc/self/uid_map | tr -s ' '); echo host=$(hostname); touch /tmp/made")
        .rootless(nobody);
    let ran = c.run();
    ran.ok();
    assert_eq!(ran.field("uid"), "0");
    assert_eq!(ran.field("map"), format!("0 {nobody} 1"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(c.rootfs().join("tmp/made")).unwrap().uid(), nobody);
    // An unprivileged user gets no cgroup of its own, so none is made.
    assert!(support::cgroup_dirs_named("tote").iter().all(|d| !d.join(&c.id).exists()));
    assert!(!c.root.join(&c.id).exists());
}

#[test]
fn namespaces_can_be_joined_by_path() {
    let first = TestContainer::new("ns-owner").args(&["sleep", "60"]).with(|c| c["hostname"] = json!("shared-host"));
    first.create().ok();
    first.start().ok();
    let pid = first.state()["pid"].as_i64().unwrap();
    let ns = |name: &str| std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap().to_string_lossy().into_owned();
    let (net, uts, ipc, pidns) = (ns("net"), ns("uts"), ns("ipc"), ns("pid"));
    let ran = TestContainer::new("ns-joiner")
        .sh("echo host=$(hostname); echo net=$(readlink /proc/self/ns/net); echo uts=$(readlink /proc/self/ns/uts); \
             echo ipc=$(readlink /proc/self/ns/ipc); echo pidns=$(readlink /proc/self/ns/pid); echo sleeps=$(ps -o comm | grep -c '^sleep$')")
        .with(|c| {
            let namespaces = c["linux"]["namespaces"].as_array_mut().unwrap();
            namespaces.retain(|n| !["network", "uts", "ipc", "pid"].contains(&n["type"].as_str().unwrap()));
            for (typ, name) in [("network", "net"), ("uts", "uts"), ("ipc", "ipc"), ("pid", "pid")] {
                namespaces.push(json!({"type": typ, "path": format!("/proc/{pid}/ns/{name}")}));
            }
            c.as_object_mut().unwrap().remove("hostname");
        })
        .run();
    ran.ok();
    assert_eq!(ran.field("host"), "shared-host");
    assert_eq!(ran.field("net"), net);
    assert_eq!(ran.field("uts"), uts);
    assert_eq!(ran.field("ipc"), ipc);
    assert_eq!(ran.field("pidns"), pidns);
    assert_eq!(ran.field("sleeps"), "1", "the owner's sleep is not visible: {ran:?}");
    first.delete(true).ok();
}

/// runtime-tools' linux_devices: a FIFO in `linux.devices` is made with
/// mknod and needs (and gets) no device-cgroup rule, which `p` cannot be.
#[test]
fn a_fifo_device_is_created() {
    let ran = TestContainer::new("fifo-device")
        .sh("ls -ln /dev/tote-fifo | awk '{print $1, $3, $4}'")
        .with(|c| {
            c["linux"]["devices"] =
                json!([{"path": "/dev/tote-fifo", "type": "p", "fileMode": 384, "uid": 1000, "gid": 1000}]);
        })
        .run();
    ran.ok();
    assert_eq!(ran.stdout.trim(), "prw------- 1000 1000", "{ran:?}");
}

/// Kubernetes' Bidirectional propagation (and CSI drivers): with an rshared
/// root and an `rbind,rshared` bind mount, the container's mount is in the
/// host's own peer group, as runc has it, so a mount made inside appears on
/// the host. The "host" is a private mount namespace of the test's own, in
/// which the source directory is a shared mount.
#[test]
fn a_mount_inside_an_rshared_bind_mount_reaches_the_host() {
    let c = TestContainer::new("rshared");
    let source = support::scratch().join(format!("{}-shared", c.id));
    std::fs::create_dir_all(source.join("sub")).unwrap();
    let c = c.sh("mount -t tmpfs tote-rshared /mnt/sub && echo mounted=yes; grep ' /mnt ' /proc/self/mountinfo").with(
        |cfg| {
            set_caps(cfg, &["CAP_SYS_ADMIN"]);
            cfg["linux"]["rootfsPropagation"] = json!("rshared");
            cfg["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/mnt", "type": "bind", "source": source, "options": ["rbind", "rshared"]
            }));
        },
    );
    c.write_config();
    let script = r#"mount --bind "$1" "$1" && mount --make-shared "$1" || exit 99
        group=$(grep " $1 " /proc/self/mountinfo | grep -o 'shared:[0-9]*')
        echo host-group=$group
        "$2" --root "$3" run --bundle "$4" "$5"; echo rc=$?
        grep " $1/sub " /proc/self/mountinfo | grep -q ' - tmpfs tote-rshared ' && echo host-sees=yes || echo host-sees=no"#;
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&source)
        .arg(support::SHIM)
        .arg(&c.root)
        .arg(&c.bundle)
        .arg(&c.id)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&source);
    let ran = support::Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(ran.field("rc"), "0", "{ran:?}");
    assert_eq!(ran.field("mounted"), "yes", "{ran:?}");
    let group = ran.field("host-group");
    let inside = ran.stdout.lines().find(|l| l.contains(" /mnt ")).unwrap_or_default();
    assert!(
        inside.contains(&format!("{group} ")) && !inside.contains("master:"),
        "not the host's peer group {group}: {ran:?}"
    );
    assert_eq!(ran.field("host-sees"), "yes", "{ran:?}");
}

/// podman's `--read-only` and `--tmpfs` mounts: a tmpfs that starts with
/// a copy of what the image has at its mount point (owners, modes,
/// symlinks, subdirectories), while the image itself is left unchanged.
#[test]
fn tmpcopyup_fills_the_tmpfs_with_the_images_directory() {
    let c = TestContainer::new("tmpcopyup");
    let dir = c.rootfs().join("etc/conf.d");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    std::fs::write(dir.join("app.conf"), "setting=1\n").unwrap();
    std::fs::write(dir.join("nested/deep"), "deep\n").unwrap();
    std::os::unix::fs::symlink("app.conf", dir.join("link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    // Readable by others: the container's root has no CAP_DAC_OVERRIDE.
    std::fs::set_permissions(dir.join("app.conf"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::set_permissions(dir.join("nested"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(dir.join("app.conf"), Some(1000), Some(1000)).unwrap();
    let ran = c
        .sh("grep ' /etc/conf.d ' /proc/self/mountinfo | grep -q ' - tmpfs ' && echo tmpfs=yes; \
             echo conf=$(cat /etc/conf.d/link); echo deep=$(cat /etc/conf.d/nested/deep); \
             ls -ln /etc/conf.d | awk '{print $1, $3, $4, $9}'; echo new > /etc/conf.d/written && echo wrote=yes")
        .with(|cfg| {
            cfg["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/etc/conf.d", "type": "tmpfs", "source": "tmpfs",
                "options": ["tmpcopyup", "nosuid", "nodev", "mode=755"]
            }));
        })
        .run();
    ran.ok();
    assert_eq!(ran.field("tmpfs"), "yes", "{ran:?}");
    assert_eq!(ran.field("conf"), "setting=1");
    assert_eq!(ran.field("deep"), "deep");
    assert!(ran.stdout.contains("-rw----r-- 1000 1000 app.conf"), "{ran:?}");
    assert!(ran.stdout.contains("drwx------ 0 0 nested"), "{ran:?}");
    assert!(ran.stdout.contains("lrwxrwxrwx 0 0 link"), "{ran:?}");
    assert_eq!(ran.field("wrote"), "yes");
    assert!(!dir.join("written").exists(), "the write reached the image");
}

/// A new network namespace without a path (`--network none`) gets its
/// loopback interface up, as runc does.
#[test]
fn the_loopback_interface_is_up_in_a_new_network_namespace() {
    let ran = TestContainer::new("lo").sh("echo flags=$(cat /sys/class/net/lo/flags); ip -o addr show lo").run();
    ran.ok();
    let flags = u32::from_str_radix(ran.field("flags").trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down: {ran:?}");
    assert!(ran.stdout.contains("inet 127.0.0.1/8"), "{ran:?}");
}

/// runtime-tools' linux_ns_itype: without a mount namespace of its own the
/// container still runs in its bundle's root (runc chroots into it).
#[test]
fn without_a_mount_namespace_the_process_runs_in_the_rootfs() {
    let c = TestContainer::new("no-mntns").sh("cat /only-in-rootfs; ls /proc | grep -c . ; readlink /proc/self/ns/mnt");
    std::fs::write(c.rootfs().join("only-in-rootfs"), "marker=rootfs\n").unwrap();
    let c = c.with(|cfg| {
        cfg["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "mount");
    });
    let ran = c.run();
    assert_eq!(ran.field("marker"), "rootfs", "{ran:?}");
    // Nothing is mounted: the rootfs's /proc is the empty directory it is.
    assert!(ran.stdout.lines().nth(1) == Some("0"), "{ran:?}");
}

/// runtime-tools' linux_ns_itype creates (not runs) a container with no
/// namespace of its own and reads the namespaces of the pid `state` gives.
/// The init, chrooted into a rootfs with no /proc, used to reopen exec.fifo
/// through /proc/self/fd after `create` had returned 0 and died unseen:
/// `state` said stopped, pid 0. It stays created, and `start` runs it.
#[test]
fn without_a_mount_namespace_create_then_start_runs_the_process() {
    let c = TestContainer::new("no-mntns-create").sh("cat /only-in-rootfs");
    std::fs::write(c.rootfs().join("only-in-rootfs"), "marker=rootfs\n").unwrap();
    let c = c.with(|cfg| {
        cfg["linux"]["namespaces"] = json!([]);
        cfg.as_object_mut().unwrap().remove("hostname");
    });
    c.create().ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let state = c.state();
    assert_eq!(state["status"], "created", "{state}");
    let pid = state["pid"].as_i64().unwrap();
    assert!(pid > 0, "{state}");
    // No namespace of its own: the host's (ours), as linux_ns_itype checks.
    for ns in ["mnt", "pid", "net", "uts", "ipc"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_eq!(theirs, std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(), "{ns}");
    }
    c.start().ok();
    c.wait_status("stopped");
    assert_eq!(c.container_stdout(), "marker=rootfs\n");
}

/// The same with a mount namespace but no /proc among the mounts: the
/// pivoted root has no /proc/self/fd either.
#[test]
fn create_then_start_works_without_a_proc_mount() {
    let c = TestContainer::new("no-proc-create").sh("echo started; ls /proc | grep -c .");
    let c = c.with(|cfg| {
        cfg["mounts"].as_array_mut().unwrap().retain(|m| m["destination"] != "/proc");
        // masked and read-only paths are under /proc
        cfg["linux"].as_object_mut().unwrap().remove("maskedPaths");
        cfg["linux"].as_object_mut().unwrap().remove("readonlyPaths");
    });
    c.create().ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(c.status(), "created");
    c.start().ok();
    c.wait_status("stopped");
    assert_eq!(c.container_stdout(), "started\n0\n");
}

/// runtime-tools' linux_ns_path: joining a mount namespace by path, the
/// process runs in the bundle's root, set up inside that namespace (what
/// runc does).
#[test]
fn a_joined_mount_namespace_gets_the_bundles_root() {
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = holder.id();
    let mntns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    for _ in 0..200 {
        if mntns(&pid.to_string()) != mntns("self") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let c = TestContainer::new("join-mntns").sh("cat /only-in-rootfs; echo mnt=$(readlink /proc/self/ns/mnt)");
    std::fs::write(c.rootfs().join("only-in-rootfs"), "marker=rootfs\n").unwrap();
    let c = c.with(|cfg| {
        let namespaces = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|n| n["type"] != "mount");
        namespaces.push(json!({"type": "mount", "path": format!("/proc/{pid}/ns/mnt")}));
    });
    let ran = c.run();
    let expected = mntns(&pid.to_string());
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(ran.field("marker"), "rootfs", "{ran:?}");
    assert_eq!(ran.field("mnt"), expected.to_string_lossy(), "{ran:?}");
}
