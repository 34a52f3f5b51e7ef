//! Tote under faults, as root through the real CLI and toted: toted
//! SIGKILLed at each step of create, start and remove; removal racing a
//! restart policy; restart from every state.

#[path = "support/daemon.rs"]
mod daemon;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use daemon::Daemon;

const LONG: Duration = Duration::from_secs(20);

/// toted dies (SIGKILL, by a crash point of its debug build) at `point`
/// while running `args`; a new toted starts on the same directories.
fn crash_during(d: &mut Daemon, point: &str, args: &[&str]) {
    d.stop();
    d.launch_with_env(&[("TOTE_CRASH_AT", point)]);
    let ran = d.tote(args);
    assert_ne!(ran.code, 0, "{point}: {args:?} succeeded though toted died: {ran:?}");
    let status = d.wait_for_exit(LONG);
    assert_eq!(status.signal(), Some(9), "{point}: toted was to die by SIGKILL: {status:?}");
    d.launch();
}

/// Whatever step toted died at, the container it was making can be started
/// (and then works: exec, its published port) or is gone, and removing it
/// leaves nothing behind: no monitor, process, mount, cgroup, network
/// namespace, veth, CNI attachment or snapshot.
#[test]
fn toted_killed_at_each_step_of_create_and_start_recovers() {
    let mut d = Daemon::start();
    for point in ["create:mounted", "start:network-attached", "start:monitor-ready", "start:started"] {
        let name = format!("victim-{}", point.replace(':', "-"));
        let run = ["run", "-d", "--name", &name, "-p", "127.0.0.1::80", "busybox", "sleep", "1000"];
        crash_during(&mut d, point, &run);
        let listed = d.tote(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]).ok().to_string();
        if point == "create:mounted" {
            assert_eq!(listed, "", "{point}: a create cut short is forgotten");
            d.assert_nothing_left();
            continue;
        }
        assert!(listed.starts_with(&name), "{point}: {listed:?}");
        assert!(!listed.contains("running"), "{point}: a start toted did not record is not running: {listed:?}");
        if point == "start:started" {
            let error = d.inspect(&name)["State"]["Error"].as_str().unwrap_or_default().to_string();
            assert!(error.contains("toted stopped while starting"), "{point}: {error:?}");
        }
        // No monitor or process of the interrupted run survives.
        d.eventually(LONG, "the interrupted run to end", || d.processes().is_empty());
        d.tote(&["start", &name]).ok();
        assert_eq!(d.status(&name), "running", "{point}");
        d.tote(&["exec", &name, "true"]).ok();
        let port = d.tote(&["port", &name]).ok().to_string();
        assert!(port.contains("80/tcp -> 127.0.0.1:"), "{point}: {port:?}");
        d.tote(&["rm", "-f", &name]).ok();
        d.assert_nothing_left();
    }
}

/// `rm -f` of a created container whose start was cut short ends its
/// monitor too, before anything is started again.
#[test]
fn rm_f_ends_a_monitor_its_record_does_not_know() {
    let mut d = Daemon::start();
    d.tote(&["create", "--name", "pending", "busybox", "sleep", "1000"]).ok();
    crash_during(&mut d, "start:monitor-ready", &["start", "pending"]);
    d.tote(&["rm", "-f", "pending"]).ok();
    d.assert_nothing_left();
}

/// toted dies in the middle of a removal, its container killed: the next
/// toted shows it exited (the marking for removal is not synced to disk,
/// to keep `rm` fast), and a second `rm` removes everything.
#[test]
fn a_removal_cut_short_can_be_finished() {
    let mut d = Daemon::start();
    d.tote(&["run", "-d", "--name", "doomed", "busybox", "sleep", "1000"]).ok();
    crash_during(&mut d, "remove:dead", &["rm", "-f", "doomed"]);
    d.eventually(LONG, "the killed container to be seen exited", || {
        let listed = d.tote(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]).ok().to_string();
        listed.is_empty() || listed == "doomed exited\n"
    });
    d.tote(&["rm", "-f", "doomed"]).ok();
    d.assert_nothing_left();
}

/// A removal wins over a restart policy: nothing comes back, whether the
/// container was running or between two restarts.
#[test]
fn rm_f_wins_over_restart_policies() {
    let d = Daemon::start();
    for i in 0..5 {
        let name = format!("phoenix{i}");
        d.tote(&["run", "-d", "--restart", "always", "--name", &name, "busybox", "sleep", "1000"]).ok();
        d.tote(&["rm", "-f", &name]).ok();
        let crashing = format!("crasher{i}");
        d.tote(&["run", "-d", "--restart", "always", "--name", &crashing, "busybox", "sh", "-c", "exit 3"]).ok();
        std::thread::sleep(Duration::from_millis(50 * i));
        d.tote(&["rm", "-f", &crashing]).ok();
    }
    // Longer than the first restart back-off (100 ms).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(d.tote(&["ps", "-aq"]).ok(), "", "a removed container came back");
    d.assert_nothing_left();
}

/// `restart` works from every state, in every network mode, and on a
/// container found running by a restarted toted.
#[test]
fn restart_works_from_any_state() {
    let mut d = Daemon::start();
    let pid = |d: &Daemon, name: &str| d.inspect(name)["State"]["Pid"].as_i64().unwrap();
    d.tote(&["run", "-d", "--name", "bridged", "-p", "127.0.0.1::80", "busybox", "sleep", "1000"]).ok();
    d.tote(&["run", "-d", "--name", "isolated", "--network", "none", "busybox", "sleep", "1000"]).ok();
    d.tote(&["create", "--name", "fresh", "busybox", "sleep", "1000"]).ok();
    d.tote(&["run", "-d", "--name", "finished", "busybox", "sleep", "1000"]).ok();
    d.tote(&["stop", "-t", "1", "finished"]).ok();
    for name in ["bridged", "isolated", "fresh", "finished"] {
        for round in 0..3 {
            let before = pid(&d, name);
            let restarted = d.tote(&["restart", "-t", "1", name]);
            assert_eq!(restarted.code, 0, "{name}, round {round}: {restarted:?}; log:\n{}", d.log());
            assert_eq!(d.status(name), "running", "{name}, round {round}");
            assert_ne!(pid(&d, name), before, "{name}, round {round}: the same process");
            d.tote(&["exec", name, "true"]).ok();
        }
    }
    let bridged = d.inspect("bridged");
    assert!(bridged["NetworkSettings"]["IPAddress"].as_str().is_some_and(|ip| !ip.is_empty()), "{bridged}");
    d.kill_hard();
    d.launch();
    for name in ["bridged", "isolated"] {
        d.tote(&["restart", "-t", "1", name]).ok();
        assert_eq!(d.status(name), "running", "{name} after a live restore");
    }
    d.tote(&["stop", "-t", "1", "bridged"]).ok();
    d.tote(&["start", "bridged"]).ok();
    for name in ["bridged", "isolated", "fresh", "finished"] {
        d.tote(&["rm", "-f", name]).ok();
    }
    d.assert_nothing_left();
}

/// After a reboot (the container's root no longer mounted), a container
/// whose image has lost its name (`rmi -f`) starts on that image's layers
/// and its own changes, never on an empty root.
#[test]
fn a_container_starts_on_its_layers_after_its_image_lost_its_name() {
    let mut d = Daemon::start();
    d.tote(&["run", "-d", "--name", "orphan", "busybox", "sh", "-c", "echo kept > /marker; exec sleep 1000"]).ok();
    d.eventually(LONG, "the marker", || d.tote(&["exec", "orphan", "cat", "/marker"]).stdout == "kept\n");
    d.tote(&["stop", "-t", "1", "orphan"]).ok();
    d.tote(&["rmi", "-f", "busybox"]).ok();
    assert!(d.tote(&["images", "-q"]).ok().trim().is_empty(), "the image still has a name");
    let id = d.inspect("orphan")["Id"].as_str().unwrap().to_string();
    // A reboot: toted gone, the root unmounted.
    d.stop();
    let rootfs = d.root.join("containers").join(&id).join("bundle/rootfs");
    nix::mount::umount2(&rootfs, nix::mount::MntFlags::empty()).unwrap();
    d.launch();
    d.tote(&["start", "orphan"]).ok();
    assert_eq!(d.tote(&["exec", "orphan", "cat", "/marker"]).ok(), "kept\n");
    d.tote(&["exec", "orphan", "ls", "/bin/busybox"]).ok();
    d.tote(&["rm", "-f", "orphan"]).ok();
    d.assert_nothing_left();
}
