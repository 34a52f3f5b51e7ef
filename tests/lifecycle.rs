//! The runc lifecycle on real containers: create, start, state, kill,
//! delete, run (exit codes and signals) and exec.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::TestContainer;

#[test]
fn run_exits_with_the_containers_status() {
    let ran = TestContainer::new("exit7").sh("echo out; echo err >&2; exit 7").run();
    assert_eq!(ran.code, 7, "{ran:?}");
    assert_eq!(ran.stdout, "out\n");
    assert!(ran.stderr.contains("err"), "{ran:?}");
}

#[test]
fn run_leaves_no_state_or_cgroup_behind() {
    let c = TestContainer::new("clean").sh("echo hi");
    assert_eq!(c.run().ok(), "hi\n");
    assert!(!c.root.join(&c.id).exists(), "state directory left behind");
    assert!(c.cgroup_dirs().is_empty(), "cgroups left behind: {:?}", c.cgroup_dirs());
    let state = c.shim_ran(&["state", &c.id]);
    assert_ne!(state.code, 0);
    assert!(state.stderr.contains("does not exist"), "{state:?}");
}

#[test]
fn a_container_killed_by_a_signal_exits_128_plus_the_signal() {
    let c = TestContainer::new("killed").args(&["sleep", "60"]);
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let child = c.shim(&["run", "--bundle", &bundle, &c.id]).stdout(Stdio::null()).spawn().unwrap();
    c.wait_status("running");
    c.kill("KILL").ok();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137));
}

#[test]
fn signals_sent_to_run_reach_the_container() {
    let c = TestContainer::new("relay")
        .sh("trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.05; done");
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let child = c.shim(&["run", "--bundle", &bundle, &c.id]).stdout(Stdio::piped()).spawn().unwrap();
    c.wait_status("running");
    std::thread::sleep(Duration::from_millis(200)); // let the trap be installed
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42));
    assert!(String::from_utf8_lossy(&out.stdout).contains("got-term"));
}

#[test]
fn create_waits_for_start_and_the_state_follows_the_lifecycle() {
    let c = TestContainer::new("lifecycle").sh("echo started; exec sleep 60");
    c.create().ok();
    let state = c.state();
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], c.id.as_str());
    assert_eq!(state["bundle"], c.bundle.to_string_lossy().as_ref());
    let pid = state["pid"].as_i64().unwrap();
    assert!(pid > 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.container_stdout(), "", "the process ran before start");

    c.start().ok();
    assert_eq!(c.status(), "running");
    for _ in 0..100 {
        if c.container_stdout() == "started\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.container_stdout(), "started\n");
    let again = c.start();
    assert_ne!(again.code, 0, "a running container was started twice");
    assert!(again.stderr.contains("running"), "{again:?}");

    let refused = c.delete(false);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--force"), "{refused:?}");

    c.kill("KILL").ok();
    c.wait_status("stopped");
    assert_eq!(c.state()["pid"], 0);
    c.delete(false).ok();
    assert!(c.cgroup_dirs().is_empty());
    assert!(!c.root.join(&c.id).exists());
}

#[test]
fn delete_force_kills_a_running_container() {
    let c = TestContainer::new("force").args(&["sleep", "60"]);
    c.create().ok();
    c.start().ok();
    let pid = i32::try_from(c.state()["pid"].as_i64().unwrap()).unwrap();
    c.delete(true).ok();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
            || tote_shim::state::proc_stat(pid).is_some_and(|s| s.state == 'Z')
    );
    assert!(c.cgroup_dirs().is_empty());
}

#[test]
fn deleting_a_created_container_kills_its_waiting_process() {
    let c = TestContainer::new("created-delete").sh("echo never");
    c.create().ok();
    c.delete(false).ok();
    assert!(c.cgroup_dirs().is_empty());
    assert_eq!(c.container_stdout(), "");
}

#[test]
fn exec_runs_inside_the_containers_namespaces() {
    let c = TestContainer::new("exec").args(&["sleep", "60"]).with(|cfg| {
        cfg["hostname"] = "exec-box".into();
        cfg["process"]["env"] = serde_json::json!(["PATH=/bin", "FROM_CONFIG=yes"]);
    });
    c.create().ok();
    c.start().ok();
    let ran = c.exec(&["sh", "-c", "echo pid=$$; echo host=$(hostname); echo env=$FROM_CONFIG; echo extra=$EXTRA; echo cwd=$(pwd); ps -o pid,comm | grep -c sleep"]);
    ran.ok();
    assert_eq!(ran.field("host"), "exec-box");
    assert_eq!(ran.field("env"), "yes");
    assert_ne!(ran.field("pid"), "1");
    assert!(ran.stdout.ends_with("1\n"), "the container's sleep is not visible: {ran:?}");

    let with_opts = c.exec(&[
        "--env",
        "EXTRA=1",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        "sh",
        "-c",
        "echo extra=$EXTRA; echo cwd=$(pwd); echo uid=$(id -u)",
    ]);
    with_opts.ok();
    assert_eq!(with_opts.field("extra"), "1");
    assert_eq!(with_opts.field("cwd"), "/tmp");
    assert_eq!(with_opts.field("uid"), "1000");

    assert_eq!(c.exec(&["sh", "-c", "exit 3"]).code, 3);
    // runc's words, which podman and containerd map to 127 and 126.
    let missing = c.exec(&["no-such-program"]);
    assert_eq!(missing.code, 127, "{missing:?}");
    assert!(missing.stderr.contains(r#"exec: "no-such-program": executable file not found in $PATH"#), "{missing:?}");
    let absent = c.exec(&["/no/such/program"]);
    assert_eq!(absent.code, 127, "{absent:?}");
    assert!(absent.stderr.contains("no such file or directory"), "{absent:?}");
    let not_executable = c.exec(&["/etc/passwd"]);
    assert_eq!(not_executable.code, 126, "{not_executable:?}");
    assert!(not_executable.stderr.contains(r#"exec: "/etc/passwd": permission denied"#), "{not_executable:?}");
    c.delete(true).ok();
}

/// As runc, which containerd's shim relies on to learn a container exited:
/// `kill --all` of a stopped container succeeds, a plain `kill` says
/// "container not running".
#[test]
fn kill_of_a_stopped_container_answers_as_runc() {
    let c = TestContainer::new("kill-stopped").sh("exit 0");
    c.create().ok();
    c.start().ok();
    c.wait_status("stopped");
    c.shim_ran(&["kill", "--all", &c.id, "9"]).ok();
    let plain = c.kill("9");
    assert_eq!(plain.code, 1, "{plain:?}");
    assert!(plain.stderr.contains("container not running"), "{plain:?}");
    c.delete(false).ok();
}

/// Without a pid namespace of its own, the init's children outlive it in
/// its cgroup; containerd's shim then runs `kill --all` on the stopped
/// container, which must reach them (runc signals its cgroup). They used
/// to keep running and holding the container's stdout.
#[test]
fn kill_all_of_a_stopped_container_reaches_what_outlived_its_init() {
    let c = TestContainer::new("kill-all-survivors").sh("sleep 60 & echo child=$!; exit 0").with(|cfg| {
        cfg["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
    });
    c.create().ok();
    c.start().ok();
    c.wait_status("stopped");
    let mut child = String::new();
    for _ in 0..200 {
        child = c.container_stdout().lines().find_map(|l| l.strip_prefix("child=")).unwrap_or_default().to_string();
        if !child.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The forked shell may not have exec'd sleep yet.
    let is_sleep =
        || std::fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap_or_default() == "sleep\x0060\x00";
    let mut alive = false;
    for _ in 0..300 {
        alive = is_sleep();
        if alive {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(alive, "the child {child:?} outlived the init (host pid namespace)");
    c.shim_ran(&["kill", "--all", &c.id, "9"]).ok();
    let gone = (0..300).any(|_| {
        // Killed: gone, or a zombie until its reaper (init) collects it.
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let dead = stat.is_empty() || stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !dead {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        dead
    });
    assert!(gone, "kill --all left pid {child} running");
    c.delete(false).ok();
}

#[test]
fn exec_detached_writes_its_pid_and_keeps_running() {
    let c = TestContainer::new("exec-detach").args(&["sleep", "60"]);
    c.create().ok();
    c.start().ok();
    let pid_file = c.bundle.join("exec.pid");
    let code = c.shim_detached(&["exec", "--detach", "--pid-file", &pid_file.to_string_lossy(), &c.id, "sleep", "30"]);
    assert_eq!(code, 0);
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, "sleep\x0030\x00");
    c.delete(true).ok();
}

#[test]
fn run_detached_returns_while_the_container_runs() {
    let c = TestContainer::new("detach").args(&["sleep", "60"]);
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let pid_file = c.bundle.join("pid");
    let code =
        c.shim_detached(&["run", "--detach", "--bundle", &bundle, "--pid-file", &pid_file.to_string_lossy(), &c.id]);
    assert_eq!(code, 0);
    assert_eq!(c.status(), "running");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid.trim(), c.state()["pid"].to_string());
    c.delete(true).ok();
}

#[test]
fn list_shows_containers_with_their_status() {
    let c = TestContainer::new("listed").args(&["sleep", "60"]);
    c.create().ok();
    let listed = c.shim_ran(&["list"]);
    let line = listed.ok().lines().find(|l| l.starts_with(&c.id)).expect("container listed").to_string();
    assert!(line.contains("created"), "{line}");
    c.delete(true).ok();
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let c = TestContainer::new("pause").sh("i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.01; done");
    c.create().ok();
    c.start().ok();
    std::thread::sleep(Duration::from_millis(100));
    c.shim_ran(&["pause", &c.id]).ok();
    assert_eq!(c.status(), "paused");
    let count = || std::fs::read_to_string(c.rootfs().join("tmp/count")).unwrap_or_default();
    let frozen = count();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(), frozen, "the container kept running while paused");
    c.shim_ran(&["resume", &c.id]).ok();
    assert_eq!(c.status(), "running");
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(count(), frozen, "the container did not resume");
    c.delete(true).ok();
}

#[test]
fn the_default_cgroup_parent_is_tote() {
    let c = TestContainer::new("default-cgroup").args(&["sleep", "60"]).with(|cfg| {
        cfg["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    });
    c.create().ok();
    let dirs = support::cgroup_dirs_named("tote");
    assert!(dirs.iter().any(|d| d.join(&c.id).is_dir()), "no /tote/{} cgroup in {dirs:?}", c.id);
    c.delete(true).ok();
    assert!(!dirs.iter().any(|d| d.join(&c.id).exists()));
    // The shared parent is ours to tidy when empty; another test may still use it.
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

fn hook(phase: &str, log: &str) -> serde_json::Value {
    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo \"{phase} $(cat)\" >> {log}")]})
}

#[test]
fn hooks_run_in_order_with_the_containers_state() {
    let c = TestContainer::new("hooks");
    let log = support::scratch().join(format!("hooks-{}.log", c.id)).to_string_lossy().into_owned();
    let c = c.sh("echo main").with(|cfg| {
        cfg["hooks"] = serde_json::json!({
            "prestart": [hook("prestart", &log)],
            "createRuntime": [hook("createRuntime", &log)],
            "createContainer": [hook("createContainer", &log)],
            // Runs inside the container, after pivot_root: its /tmp is the rootfs's.
            "startContainer": [hook("startContainer", "/tmp/hooks.log")],
            "poststart": [hook("poststart", &log)],
            "poststop": [hook("poststop", &log)]
        });
    });
    assert_eq!(c.run().ok(), "main\n");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, serde_json::Value)> = text
        .lines()
        .map(|l| {
            let (phase, state) = l.split_once(' ').unwrap();
            (phase, serde_json::from_str(state).unwrap())
        })
        .collect();
    let phases: Vec<&str> = lines.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases, ["prestart", "createRuntime", "createContainer", "poststart", "poststop"]);
    let statuses: Vec<&str> = lines.iter().map(|(_, s)| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["created", "creating", "creating", "running", "stopped"]);
    let pid = &lines[0].1["pid"];
    assert!(pid.as_i64().unwrap() > 1);
    assert!(lines.iter().all(|(_, s)| s["pid"] == *pid && s["id"] == c.id.as_str()), "{text}");
    let inside = std::fs::read_to_string(c.rootfs().join("tmp/hooks.log")).unwrap();
    assert!(inside.starts_with("startContainer {"), "{inside}");
    assert!(inside.contains("\"status\":\"created\""), "{inside}");
    std::fs::remove_file(&log).unwrap();
}

#[test]
fn a_failing_creation_hook_fails_the_create_and_leaves_nothing() {
    let c = TestContainer::new("hook-fails").with(|cfg| {
        cfg["hooks"] = serde_json::json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 4"]}]
        });
    });
    let ran = c.create();
    assert_ne!(ran.code, 0);
    assert!(ran.stderr.contains("createRuntime") && ran.stderr.contains("no network for you"), "{}", ran.stderr);
    assert!(!c.root.join(&c.id).exists());
    assert!(c.cgroup_dirs().is_empty());
}

#[test]
fn a_bundle_written_by_runc_spec_runs_unchanged() {
    // Compatibility: runc's own default config, only made non-interactive.
    let c = TestContainer::new("runc-spec");
    std::fs::remove_file(c.bundle.join("config.json")).ok();
    let spec =
        std::process::Command::new("runc").arg("spec").current_dir(&c.bundle).status().expect("runc is installed");
    assert!(spec.success());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).unwrap()).unwrap();
    config["process"]["terminal"] = serde_json::json!(false);
    config["process"]["args"] = serde_json::json!(["sh", "-c", "echo ran=$(hostname)"]);
    let c = c.with(|cfg| *cfg = config);
    let ran = c.run();
    assert_eq!(ran.field("ran"), "runc");
}

/// Detached, as conmon runs it for `podman exec`: a program that cannot run
/// is still 127 or 126, with runc's words.
#[test]
fn exec_detached_of_a_missing_program_exits_127() {
    let c = TestContainer::new("exec-detach-missing").args(&["sleep", "60"]);
    c.create().ok();
    c.start().ok();
    let missing = c.shim_ran(&["exec", "--detach", &c.id, "no-such-program"]);
    assert_eq!(missing.code, 127, "{missing:?}");
    assert!(missing.stderr.contains("executable file not found in $PATH"), "{missing:?}");
    let not_executable = c.shim_ran(&["exec", "--detach", &c.id, "/etc/passwd"]);
    assert_eq!(not_executable.code, 126, "{not_executable:?}");
    c.delete(true).ok();
}

/// The runtime spec: a failing poststart or poststop hook is a warning, and
/// the remaining hooks and the lifecycle go on. (runc 1.1 instead kills the
/// container when a poststart hook fails and fails `run`.)
#[test]
fn failing_poststart_and_poststop_hooks_are_warnings_and_the_rest_run() {
    let c = TestContainer::new("hook-warn");
    let log = support::scratch().join(format!("hooks-{}.log", c.id)).to_string_lossy().into_owned();
    let failing = |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} >> {log}; echo {name} broke >&2; exit 3")]});
    let passing =
        |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} >> {log}")]});
    let c = c.sh("sleep 0.2; echo main-done").with(|cfg| {
        cfg["hooks"] = serde_json::json!({
            "poststart": [failing("poststart-1"), passing("poststart-2")],
            "poststop": [failing("poststop-1"), passing("poststop-2")]
        });
    });
    let ran = c.run();
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, "main-done\n");
    assert!(ran.stderr.contains("warning: poststart hook") && ran.stderr.contains("poststart-1 broke"), "{ran:?}");
    assert!(ran.stderr.contains("warning: poststop hook") && ran.stderr.contains("poststop-1 broke"), "{ran:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert_eq!(text, "poststart-1\npoststart-2\npoststop-1\npoststop-2\n");
}

/// A profile that does not allow close_range (the runtime-tools default,
/// older Docker profiles) or clone3 still runs the program, through
/// create and start, with no_new_privs on and off: the filter is the last
/// thing installed before execve.
#[test]
fn a_seccomp_profile_without_newer_syscalls_still_runs_the_program() {
    for no_new_privs in [true, false] {
        let c = TestContainer::new("seccomp-late").sh("echo ran").with(|cfg| {
            cfg["process"]["noNewPrivileges"] = serde_json::json!(no_new_privs);
            // A startContainer hook runs after the fifo: it too must not
            // run under the filter (its spawn would use clone3).
            cfg["hooks"] = serde_json::json!({"startContainer": [{"path": "/bin/true"}]});
            cfg["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["close_range", "clone3", "openat2"], "action": "SCMP_ACT_ERRNO"}]
            });
        });
        c.create().ok();
        let started = c.start();
        assert_eq!(started.code, 0, "no_new_privs {no_new_privs}: {started:?}");
        c.wait_status("stopped");
        assert_eq!(
            c.container_stdout(),
            "ran\n",
            "no_new_privs {no_new_privs}: {}",
            std::fs::read_to_string(c.bundle.join("stderr")).unwrap_or_default()
        );
        c.delete(false).ok();
    }
}

/// What fails in the init after `start` opened exec.fifo (a startContainer
/// hook, the exec itself) fails `start` with the reason, never a silent
/// success with a dead container.
#[test]
fn a_failure_after_start_is_reported_by_start() {
    let c = TestContainer::new("start-fails").sh("echo never").with(|cfg| {
        cfg["hooks"] = serde_json::json!({
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no start for you >&2; exit 5"]}]
        });
    });
    c.create().ok();
    let started = c.start();
    assert_ne!(started.code, 0, "{started:?}");
    assert!(started.stderr.contains("startContainer") && started.stderr.contains("no start for you"), "{started:?}");
    c.wait_status("stopped");
    assert_eq!(c.container_stdout(), "");
    c.delete(false).ok();
}

/// `ps`, as containerd's shim asks for its pids (`--format json`) and a
/// person reads it (a table of `ps` lines of the container's processes).
#[test]
fn ps_lists_the_containers_processes() {
    let c = TestContainer::new("ps").sh("sleep 61 & exec sleep 60");
    c.create().ok();
    c.start().ok();
    let init = c.state()["pid"].as_i64().unwrap();
    let mut pids: Vec<i64> = Vec::new();
    for _ in 0..100 {
        let json = c.shim_ran(&["ps", "--format", "json", &c.id]);
        pids = serde_json::from_str(json.ok().trim()).unwrap();
        if pids.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.contains(&init));
    let table = c.shim_ran(&["ps", &c.id]);
    let lines: Vec<&str> = table.ok().lines().collect();
    assert!(lines[0].contains("PID") && lines[0].contains("CMD"), "{lines:?}");
    assert_eq!(lines.len(), 3, "a header and the two sleeps: {lines:?}");
    assert!(lines[1..].iter().all(|l| l.contains("sleep 6")), "{lines:?}");
    let custom = c.shim_ran(&["ps", &c.id, "-o", "pid,comm"]);
    assert_eq!(custom.ok().lines().count(), 3, "{custom:?}");
    let bad = c.shim_ran(&["ps", "--format", "yaml", &c.id]);
    assert_ne!(bad.code, 0);
    c.delete(true).ok();
}

/// `features` prints runc's document: engines parse it.
#[test]
fn features_prints_the_runtime_spec_document() {
    let c = TestContainer::new("features");
    let out = c.shim_ran(&["features"]);
    let doc: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(doc["ociVersionMin"], "1.0.0");
    assert!(doc["hooks"].as_array().unwrap().iter().any(|h| h == "createRuntime"));
    assert!(doc["mountOptions"].as_array().unwrap().iter().any(|o| o == "rbind"));
    assert_eq!(doc["linux"]["seccomp"]["enabled"], true);
    assert_eq!(doc["linux"]["cgroup"]["v2"], true);
}
