//! Resource limits through real cgroups, on whichever hierarchy the host
//! runs: the v1 controllers on a hybrid host, cgroup v2 in the VM
//! (integration/vm/run). Set TOTE_EXPECT_CGROUP=v1 or v2 to make the suite
//! fail unless it runs on that hierarchy.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use support::TestContainer;
use tote_shim::cgroups::{Hierarchy, host_hierarchy};

fn hierarchy() -> Hierarchy {
    let found = host_hierarchy().expect("detect the cgroup hierarchy");
    match std::env::var("TOTE_EXPECT_CGROUP").as_deref() {
        Ok("v2") => assert_eq!(found, Hierarchy::Unified, "expected a pure cgroup v2 host"),
        Ok("v1") => assert_eq!(found, Hierarchy::Legacy, "expected v1 controllers"),
        _ => {}
    }
    found
}

/// The file of a controller for `c`: `<root>/<controller>/<cgroup>/<file>`
/// on v1, `<root>/<cgroup>/<file>` on v2.
fn cgroup_file(c: &TestContainer, v1_controller: &str, file: &str) -> PathBuf {
    let name = format!("tote-test-{}", c.id);
    match hierarchy() {
        Hierarchy::Unified => PathBuf::from("/sys/fs/cgroup").join(name).join(file),
        Hierarchy::Legacy => PathBuf::from("/sys/fs/cgroup").join(v1_controller).join(name).join(file),
    }
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_string()
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{key} "))).and_then(|v| v.trim().parse().ok())
}

const MIB: i64 = 1024 * 1024;

#[test]
fn a_memory_limit_ends_in_an_oom_kill_that_is_reported() {
    hierarchy();
    let c = TestContainer::new("oom")
        // dd's block buffer alone is far above the limit.
        .args(&["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"])
        .with(|cfg| cfg["linux"]["resources"]["memory"] = json!({"limit": 32 * MIB, "swap": 32 * MIB}));
    let ran = c.run();
    assert_eq!(ran.code, 137, "{ran:?}");
    assert!(ran.stderr.contains("OOM killer"), "the OOM kill was not reported: {ran:?}");

    // Through create/start the state reports it, until delete.
    c.create().ok();
    let limit = cgroup_file(
        &c,
        "memory",
        if hierarchy() == Hierarchy::Unified { "memory.max" } else { "memory.limit_in_bytes" },
    );
    assert_eq!(read(&limit), (32 * MIB).to_string());
    assert_eq!(c.state()["oomKilled"], false);
    c.start().ok();
    c.wait_status("stopped");
    assert_eq!(c.state()["oomKilled"], true);
    c.delete(false).ok();
}

#[test]
fn a_pids_limit_stops_a_fork_bomb() {
    hierarchy();
    let c = TestContainer::new("forkbomb")
        // The shell gives up at the first refused fork; the subshell keeps the
        // outer shell alive to report it.
        .sh("(i=0; while [ $i -lt 50 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; echo bombed > /tmp/bombed; exec sleep 60")
        .with(|cfg| cfg["linux"]["resources"]["pids"] = json!({"limit": 10}));
    c.create().ok();
    c.start().ok();
    let marker = c.rootfs().join("tmp/bombed");
    for _ in 0..500 {
        if marker.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(marker.exists(), "the fork loop never finished");
    assert_eq!(read(&cgroup_file(&c, "pids", "pids.max")), "10");
    let current: u64 = read(&cgroup_file(&c, "pids", "pids.current")).parse().unwrap();
    assert!(current <= 10, "{current} processes despite pids.max 10");
    let events = read(&cgroup_file(&c, "pids", "pids.events"));
    assert!(keyed(&events, "max").unwrap_or(0) > 0, "no fork was refused: {events}");
    c.delete(true).ok();
}

#[test]
fn cpu_quota_and_weight_are_written() {
    hierarchy();
    let c = TestContainer::new("cpu")
        .args(&["sleep", "60"])
        .with(|cfg| cfg["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000, "shares": 512}));
    c.create().ok();
    match hierarchy() {
        Hierarchy::Unified => {
            assert_eq!(read(&cgroup_file(&c, "cpu", "cpu.max")), "50000 100000");
            // runc 1.3.2's quadratic mapping of shares 512 onto cpu.weight.
            assert_eq!(read(&cgroup_file(&c, "cpu", "cpu.weight")), "59");
        }
        Hierarchy::Legacy => {
            assert_eq!(read(&cgroup_file(&c, "cpu", "cpu.cfs_quota_us")), "50000");
            assert_eq!(read(&cgroup_file(&c, "cpu", "cpu.cfs_period_us")), "100000");
            assert_eq!(read(&cgroup_file(&c, "cpu", "cpu.shares")), "512");
        }
    }
    c.delete(true).ok();
}

#[test]
fn a_cpuset_pins_the_container() {
    hierarchy();
    let c = TestContainer::new("cpuset")
        .sh("grep Cpus_allowed_list /proc/self/status")
        .with(|cfg| cfg["linux"]["resources"]["cpu"] = json!({"cpus": "0", "mems": "0"}));
    let ran = c.run();
    ran.ok();
    assert!(ran.stdout.contains("Cpus_allowed_list:\t0\n"), "{ran:?}");
}

#[test]
fn io_weight_is_written() {
    hierarchy();
    let c = TestContainer::new("io")
        .args(&["sleep", "60"])
        .with(|cfg| cfg["linux"]["resources"]["blockIO"] = json!({"weight": 500}));
    let created = c.create();
    if created.code != 0 {
        // A kernel without a weight-based I/O scheduler has no weight file to write.
        assert!(created.stderr.contains("weight"), "{created:?}");
        return;
    }
    let candidates: Vec<PathBuf> = match hierarchy() {
        Hierarchy::Unified => vec![cgroup_file(&c, "", "io.bfq.weight"), cgroup_file(&c, "", "io.weight")],
        Hierarchy::Legacy => {
            vec![cgroup_file(&c, "blkio", "blkio.bfq.weight"), cgroup_file(&c, "blkio", "blkio.weight")]
        }
    };
    // io.bfq.weight takes 500 as it is; io.weight takes it scaled to 4950.
    let written = candidates.iter().filter(|p| p.exists()).map(read).collect::<Vec<_>>();
    assert!(
        written.iter().any(|w| w.contains("500") || w.contains("4950")),
        "weight 500 not in {candidates:?}: {written:?}"
    );
    c.delete(true).ok();
}

#[test]
fn the_freezer_pauses_every_process() {
    hierarchy();
    let c = TestContainer::new("freezer").sh("sleep 60 & sleep 60");
    c.create().ok();
    c.start().ok();
    c.shim_ran(&["pause", &c.id]).ok();
    match hierarchy() {
        Hierarchy::Unified => {
            assert_eq!(read(&cgroup_file(&c, "", "cgroup.freeze")), "1");
            for _ in 0..100 {
                if keyed(&read(&cgroup_file(&c, "", "cgroup.events")), "frozen") == Some(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(keyed(&read(&cgroup_file(&c, "", "cgroup.events")), "frozen"), Some(1));
        }
        Hierarchy::Legacy => assert_eq!(read(&cgroup_file(&c, "freezer", "freezer.state")), "FROZEN"),
    }
    let procs = read(&cgroup_file(&c, "freezer", "cgroup.procs"));
    for pid in procs.lines() {
        let state = tote_shim::state::proc_stat(pid.parse().unwrap()).unwrap().state;
        // A frozen task sleeps in the freezer (D on v1 and S on v2 kernels).
        assert!(matches!(state, 'D' | 'S'), "pid {pid} is {state} while frozen");
    }
    c.shim_ran(&["resume", &c.id]).ok();
    assert_eq!(c.status(), "running");
    c.delete(true).ok();
}

#[test]
fn delete_removes_the_cgroup_from_every_hierarchy() {
    hierarchy();
    let c = TestContainer::new("removal").sh("sleep 60 & sleep 60");
    c.create().ok();
    c.start().ok();
    assert!(!c.cgroup_dirs().is_empty());
    c.delete(true).ok();
    assert!(c.cgroup_dirs().is_empty(), "left behind: {:?}", c.cgroup_dirs());
}

#[test]
fn the_container_sees_its_own_cgroup_as_the_root() {
    hierarchy();
    let ran = TestContainer::new("cgroupns")
        .sh("cat /proc/self/cgroup; ls /sys/fs/cgroup")
        .with(|cfg| {
            let ns = cfg["linux"]["namespaces"].as_array_mut().unwrap();
            if !ns.iter().any(|n| n["type"] == "cgroup") {
                ns.push(json!({"type": "cgroup"}));
            }
        })
        .run();
    ran.ok();
    match hierarchy() {
        Hierarchy::Unified => {
            assert!(ran.stdout.starts_with("0::/\n"), "{ran:?}");
            assert!(ran.stdout.contains("cgroup.procs"), "{ran:?}");
        }
        Hierarchy::Legacy => {
            assert!(ran.stdout.contains(":memory:/\n"), "{ran:?}");
            assert!(ran.stdout.contains("memory") && ran.stdout.contains("pids"), "{ran:?}");
        }
    }
}

#[test]
fn the_device_allow_list_is_enforced() {
    hierarchy();
    // v1 enforces it with the devices controller, v2 with an eBPF program.
    let ran = TestContainer::new("devices-cgroup")
        .sh("mknod /tmp/sda b 8 0; head -c 1 /tmp/sda > /dev/null 2>&1 && echo sda=opened || echo sda=refused; \
             echo x > /dev/null && echo null=ok; head -c 1 /dev/urandom > /dev/null && echo urandom=ok")
        .with(|cfg| {
            for set in ["bounding", "effective", "permitted", "inheritable", "ambient"] {
                cfg["process"]["capabilities"][set] = json!(["CAP_MKNOD"]);
            }
            cfg["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
        })
        .run();
    ran.ok();
    assert_eq!(ran.field("sda"), "refused");
    assert_eq!(ran.field("null"), "ok");
    assert_eq!(ran.field("urandom"), "ok");
}

/// containerd writes `<parent>.slice:cri-containerd:<id>` whenever the
/// parent's name ends in `.slice`, even with SystemdCgroup=false; runc in
/// cgroupfs mode takes the whole string as one directory name, relative to
/// the runtime's own cgroup. tote-shim: relative to its own cgroup on v2,
/// to the hierarchy root on v1 (README, "cgroups").
#[test]
fn a_systemd_style_path_is_a_cgroupfs_directory_name() {
    let c = TestContainer::new("colon").args(&["sleep", "60"]);
    let name = format!("tote-test-{}.slice:cri-containerd:{}", c.id, c.id);
    let c = c.with(|cfg| cfg["linux"]["cgroupsPath"] = json!(name));
    c.create().ok();
    let pid = c.state()["pid"].as_i64().unwrap();
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let dir = match hierarchy() {
        Hierarchy::Unified => {
            let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            let base = ours.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_end_matches('/').to_string();
            let expected = format!("0::{base}/{name}");
            assert!(theirs.lines().any(|l| l == expected), "{expected:?} not in {theirs}");
            PathBuf::from(format!("/sys/fs/cgroup{base}/{name}"))
        }
        Hierarchy::Legacy => {
            assert!(theirs.lines().any(|l| l.ends_with(&format!(":pids:/{name}"))), "{theirs}");
            PathBuf::from("/sys/fs/cgroup/pids").join(&name)
        }
    };
    assert!(dir.is_dir(), "{} is missing", dir.display());
    c.start().ok();
    c.delete(true).ok();
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// `update`, as containerd, CRI-O and podman call it: limits from flags and
/// from `--resources -` (JSON on stdin) reach the cgroup and the recorded
/// config, and what is not named stays.
#[test]
fn update_changes_the_limits_of_a_running_container() {
    hierarchy();
    let c = TestContainer::new("update").args(&["sleep", "60"]).with(|cfg| {
        cfg["linux"]["resources"]["memory"] = json!({"limit": 64 * MIB});
        cfg["linux"]["resources"]["pids"] = json!({"limit": 50});
    });
    c.create().ok();
    c.start().ok();
    let memory = cgroup_file(
        &c,
        "memory",
        if hierarchy() == Hierarchy::Unified { "memory.max" } else { "memory.limit_in_bytes" },
    );
    c.shim_ran(&["update", "--memory", "128m", &c.id]).ok();
    assert_eq!(read(&memory), (128 * MIB).to_string());
    assert_eq!(read(&cgroup_file(&c, "pids", "pids.max")), "50", "the pids limit was not named");

    let mut update = c.shim(&["update", "--resources", "-", &c.id]);
    update.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = update.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), br#"{"pids":{"limit":20}}"#).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(read(&cgroup_file(&c, "pids", "pids.max")), "20");
    assert_eq!(read(&memory), (128 * MIB).to_string());

    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.root.join(&c.id).join("state.json")).expect("the recorded state"),
    )
    .unwrap();
    let resources = &recorded["spec"]["linux"]["resources"];
    assert_eq!(
        (resources["memory"]["limit"].as_i64(), resources["pids"]["limit"].as_i64()),
        (Some(128 * MIB), Some(20))
    );

    let bad = c.shim_ran(&["update", "--memory", "lots", &c.id]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("--memory") && bad.stderr.contains("lots"), "{bad:?}");
    c.kill("KILL").ok();
    c.wait_status("stopped");
    let stopped = c.shim_ran(&["update", "--memory", "64m", &c.id]);
    assert!(stopped.stderr.contains("container not running"), "{stopped:?}");
    c.delete(false).ok();
}
