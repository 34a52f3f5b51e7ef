//! Tote end to end: the tote CLI against a real toted running real
//! containers from the built-in busybox image, as root.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/registry.rs"]
mod registry;

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime};

use daemon::Daemon;
use registry::{Compression, CutProxy, Entry, ImageBuilder, Layer, Registry};

const LONG: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn run_rm_prints_hi_and_leaves_nothing_behind() {
    let d = Daemon::start();
    let ran = d.tote(&["run", "--rm", "busybox", "echo", "hi"]);
    assert_eq!(ran.ok(), "hi\n");
    d.assert_nothing_left();
}

/// As with docker: `lo` is up whatever the mode; `none` has nothing else.
#[test]
fn lo_is_up_in_bridge_and_none_mode() {
    let d = Daemon::start();
    let script = "nc -l -p 7777 -e echo pong & \
                  for i in 1 2 3 4 5 6 7 8 9 10; do nc 127.0.0.1 7777 </dev/null && break; sleep 0.2; done; \
                  echo flags=$(cat /sys/class/net/lo/flags); echo links=$(ls /sys/class/net)";
    for (mode, links) in [("bridge", "eth0 lo"), ("none", "lo")] {
        let ran = d.tote(&["run", "--rm", "--network", mode, "busybox", "sh", "-c", script]);
        let out = ran.ok();
        assert!(out.starts_with("pong\n"), "{mode}: a server on 127.0.0.1 answers: {out}");
        let flags = out.lines().find_map(|l| l.strip_prefix("flags=0x")).unwrap();
        assert_eq!(u32::from_str_radix(flags, 16).unwrap() & 1, 1, "{mode}: lo is IFF_UP: {out}");
        assert!(out.contains(&format!("links={links}\n")), "{mode}: {out}");
    }
    d.assert_nothing_left();
}

#[test]
fn exit_codes_are_dockers() {
    let d = Daemon::start();
    assert_eq!(d.tote(&["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"]).code, 3);
    let ran = d.tote(&["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!((ran.stdout.as_str(), ran.stderr.as_str()), ("out\n", "err\n"));
    let missing = d.tote(&["run", "--rm", "busybox", "/no/such/program"]);
    assert!(missing.fails(127).contains("/no/such/program"), "{missing:?}");
    let not_exec = d.tote(&["run", "--rm", "busybox", "/etc/passwd"]);
    not_exec.fails(126);
    let flag = d.tote(&["run", "--no-such-flag", "busybox", "true"]);
    flag.fails(125);
    d.assert_nothing_left();
}

#[test]
fn bad_input_gets_clear_errors_and_leaks_nothing() {
    let d = Daemon::start();
    let image = d.tote(&["run", "--rm", "no-such-image-here", "true"]);
    assert_eq!(image.code, 125, "{image:?}");
    assert!(image.stderr.contains("no-such-image-here"), "{image:?}");
    let port = d.tote(&["run", "--rm", "-p", "99999:80", "busybox", "true"]);
    assert!(port.fails(125).contains("99999"), "{port:?}");
    let volume = d.tote(&["run", "--rm", "-v", "/no/such/dir:/data", "busybox", "true"]);
    assert!(volume.fails(125).contains("/no/such/dir"), "{volume:?}");
    let network = d.tote(&["run", "--rm", "--network", "carrier-pigeon", "busybox", "true"]);
    assert!(network.fails(125).contains("carrier-pigeon"), "{network:?}");
    d.tote(&["create", "--name", "taken", "busybox", "true"]).ok();
    let taken = d.tote(&["create", "--name", "taken", "busybox", "true"]);
    assert!(taken.fails(125).contains("already in use"), "{taken:?}");
    let unknown = d.tote(&["start", "nonexistent-container"]);
    assert!(unknown.stderr.contains("No such container: nonexistent-container"), "{unknown:?}");
    assert_ne!(unknown.code, 0);
    d.tote(&["rm", "taken"]).ok();
    d.assert_nothing_left();
}

#[test]
fn detached_containers_log_follow_stop_and_kill() {
    let d = Daemon::start();
    let script = "trap 'echo got TERM; exit 0' TERM; echo started; echo oops >&2; while true; do sleep 0.1; done";
    let id = d.tote(&["run", "-d", "--name", "web", "busybox", "sh", "-c", script]).ok().trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the id: {id}");
    d.eventually(LONG, "the first log lines", || d.tote(&["logs", "web"]).stdout.contains("started"));
    let logs = d.tote(&["logs", "web"]);
    assert_eq!((logs.stdout.as_str(), logs.stderr.as_str()), ("started\n", "oops\n"));
    let stamped = d.tote(&["logs", "-t", "web"]);
    assert!(stamped.stdout.starts_with("20") && stamped.stdout.contains("Z started"), "{stamped:?}");
    assert!(d.tote(&["ps"]).ok().contains("web"));
    assert!(d.tote(&["ps", "-q"]).ok().contains(&id[..12]));

    let mut follow = d
        .command(&["logs", "-f", "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    d.tote(&["stop", "-t", "5", "web"]).ok();
    assert!(started.elapsed() < Duration::from_secs(4), "stop waited for its timeout though the container exited");
    let mut followed = String::new();
    follow.stdout.take().unwrap().read_to_string(&mut followed).unwrap();
    assert!(follow.wait().unwrap().success());
    assert!(followed.contains("got TERM"), "logs -f ends with the container: {followed:?}");
    assert_eq!(d.inspect("web")["State"]["ExitCode"], 0);

    // A process that ignores SIGTERM is killed after the timeout.
    d.tote(&["run", "-d", "--name", "stubborn", "busybox", "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])
        .ok();
    let started = Instant::now();
    d.tote(&["stop", "-t", "1", "stubborn"]).ok();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(8), "stop took {took:?}");
    assert_eq!(d.inspect("stubborn")["State"]["ExitCode"], 137);

    // The container's init gets the signal (and, as pid 1, only the ones it handles).
    let script = "trap 'echo usr1; exit 42' USR1; echo ready; while true; do sleep 0.1; done";
    d.tote(&["run", "-d", "--name", "target", "busybox", "sh", "-c", script]).ok();
    // A signal before the trap is set would be ignored (pid 1 has no
    // default actions).
    d.eventually(LONG, "the trap to be set", || d.tote(&["logs", "target"]).stdout.contains("ready"));
    d.tote(&["kill", "-s", "USR1", "target"]).ok();
    d.eventually(LONG, "SIGUSR1 to end the container", || d.status("target") == "exited");
    assert_eq!(d.inspect("target")["State"]["ExitCode"], 42);
    assert_eq!(d.tote(&["wait", "target"]).ok().trim(), "42");
    d.tote(&["run", "-d", "--name", "killed", "busybox", "sleep", "100"]).ok();
    d.tote(&["kill", "killed"]).ok();
    assert_eq!(d.tote(&["wait", "killed"]).ok().trim(), "137", "kill sends SIGKILL by default");
    let not_running = d.tote(&["kill", "killed"]);
    assert!(not_running.stderr.contains("not running"), "{not_running:?}");
    for name in ["web", "stubborn", "target", "killed"] {
        d.tote(&["rm", name]).ok();
    }
    d.assert_nothing_left();
}

#[test]
fn exec_it_runs_on_a_terminal() {
    let d = Daemon::start();
    d.tote(&["run", "-d", "--name", "box", "busybox", "sleep", "100"]).ok();
    let plain =
        d.tote(&["exec", "-e", "GREETING=hey", "-w", "/tmp", "box", "sh", "-c", "echo $GREETING $(pwd); exit 4"]);
    assert_eq!((plain.code, plain.stdout.as_str()), (4, "hey /tmp\n"));
    let user = d.tote(&["exec", "-u", "nobody", "box", "id", "-u"]);
    assert_eq!(user.ok().trim(), "65534");

    // -it through a real pty, as a person at a terminal would use it.
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = d
        .command(&["exec", "-it", "box", "sh", "-c", "tty; echo term=$TERM; read line; echo got:$line; exit 3"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut seen = String::new();
    let deadline = Instant::now() + LONG;
    let mut sent = false;
    let mut buf = [0u8; 4096];
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&master),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    while !seen.contains("got:typed") {
        assert!(Instant::now() < deadline, "exec -it output so far: {seen:?}");
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
        if !sent && seen.contains("term=") {
            master.write_all(b"typed\r").unwrap();
            sent = true;
        }
    }
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert!(seen.contains("/dev/pts/"), "the process has a terminal: {seen:?}");
    assert!(seen.contains("term=xterm"), "{seen:?}");
    d.tote(&["rm", "-f", "box"]).ok();
    d.assert_nothing_left();
}

#[test]
fn restart_policies_are_honoured() {
    let d = Daemon::start();
    d.tote(&["run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 1"]).ok();
    d.eventually(LONG, "two restarts, then rest", || {
        let doc = d.inspect("flaky");
        doc["RestartCount"] == 2 && doc["State"]["Status"] == "exited"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.inspect("flaky")["RestartCount"], 2, "on-failure:2 stops after two restarts");

    d.tote(&["run", "-d", "--name", "phoenix", "--restart", "always", "busybox", "sh", "-c", "sleep 0.2; exit 0"]).ok();
    d.eventually(LONG, "always to restart a clean exit", || d.inspect("phoenix")["RestartCount"].as_u64() >= Some(2));
    d.tote(&["stop", "-t", "1", "phoenix"]).ok();
    let count = d.inspect("phoenix")["RestartCount"].clone();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(d.inspect("phoenix")["RestartCount"], count, "a stopped container stays stopped");
    assert_eq!(d.status("phoenix"), "exited");

    d.tote(&["run", "-d", "--name", "nope", "busybox", "sh", "-c", "exit 5"]).ok();
    d.eventually(LONG, "exit", || d.status("nope") == "exited");
    assert_eq!(d.inspect("nope")["RestartCount"], 0);
    for name in ["flaky", "phoenix", "nope"] {
        d.tote(&["rm", "-f", name]).ok();
    }
    d.assert_nothing_left();
}

#[test]
fn pause_and_unpause_freeze_the_container() {
    let d = Daemon::start();
    d.tote(&["run", "-d", "--name", "ticker", "busybox", "sh", "-c", "while true; do date +%s%N; sleep 0.05; done"])
        .ok();
    d.eventually(LONG, "output", || !d.tote(&["logs", "ticker"]).stdout.is_empty());
    d.tote(&["pause", "ticker"]).ok();
    assert_eq!(d.status("ticker"), "paused");
    let before = d.tote(&["logs", "ticker"]).stdout.lines().count();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(d.tote(&["logs", "ticker"]).stdout.lines().count(), before, "a paused container runs nothing");
    d.tote(&["unpause", "ticker"]).ok();
    assert_eq!(d.status("ticker"), "running");
    d.eventually(LONG, "output to resume", || d.tote(&["logs", "ticker"]).stdout.lines().count() > before);
    d.tote(&["rm", "-f", "ticker"]).ok();
    d.assert_nothing_left();
}

#[test]
fn published_ports_are_reachable_on_loopback() {
    let d = Daemon::start();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let script = "mkdir -p /www && echo hello-from-tote > /www/index.html && exec httpd -f -p 8080 -h /www";
    d.tote(&["run", "-d", "--name", "http", "-p", &publish, "busybox", "sh", "-c", script]).ok();
    let mut body = String::new();
    d.eventually(LONG, "the published port to answer", || {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        body.clear();
        let _ = stream.read_to_string(&mut body);
        body.contains("hello-from-tote")
    });
    let ports = d.tote(&["port", "http"]);
    assert!(ports.ok().contains(&format!("8080/tcp -> 127.0.0.1:{port}")), "{ports:?}");
    let ip = d.inspect("http")["NetworkSettings"]["IPAddress"].as_str().unwrap().to_string();
    assert!(!ip.is_empty());
    let hosts = d.tote(&["exec", "http", "cat", "/etc/hosts"]);
    assert!(hosts.ok().contains(&ip), "the container's /etc/hosts names its address: {hosts:?}");
    d.tote(&["rm", "-f", "http"]).ok();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is released");
    d.assert_nothing_left();
}

#[test]
fn volumes_persist_across_containers() {
    let d = Daemon::start();
    d.tote(&["volume", "create", "keep"]).ok();
    d.tote(&["run", "--rm", "-v", "keep:/data", "busybox", "sh", "-c", "echo persisted > /data/f"]).ok();
    assert_eq!(d.tote(&["run", "--rm", "-v", "keep:/data:ro", "busybox", "cat", "/data/f"]).ok(), "persisted\n");
    let ro = d.tote(&["run", "--rm", "-v", "keep:/data:ro", "busybox", "sh", "-c", "echo x > /data/g"]);
    assert_ne!(ro.code, 0, "a read-only volume refuses writes");
    assert!(d.tote(&["volume", "ls"]).ok().contains("keep"));

    let host = d.dir.join("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    let bind = format!("{}:/mnt", host.display());
    d.tote(&["run", "--rm", "-v", &bind, "busybox", "sh", "-c", "echo from-container > /mnt/out"]).ok();
    assert_eq!(std::fs::read_to_string(host.join("out")).unwrap(), "from-container\n");

    d.tote(&["run", "-d", "--name", "user", "-v", "keep:/data", "busybox", "sleep", "100"]).ok();
    let busy = d.tote(&["volume", "rm", "keep"]);
    assert!(busy.stderr.contains("in use"), "{busy:?}");
    d.tote(&["rm", "-f", "user"]).ok();
    d.tote(&["volume", "rm", "keep"]).ok();
    assert!(!d.tote(&["volume", "ls", "-q"]).ok().contains("keep"));
    d.assert_nothing_left();
}

#[test]
fn memory_and_pids_limits_take_effect() {
    let d = Daemon::start();
    // A shell variable of 64 MiB in a 16 MiB container.
    let hog = d.tote(&[
        "run",
        "--name",
        "hog",
        "-m",
        "16m",
        "--memory-swap",
        "16m",
        "busybox",
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}",
    ]);
    assert_eq!(hog.code, 137, "{hog:?}");
    assert_eq!(d.inspect("hog")["State"]["OOMKilled"], true);
    d.tote(&["rm", "hog"]).ok();

    let forks = d.tote(&[
        "run",
        "--rm",
        "--pids-limit",
        "4",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done 2>/dev/null; wait; echo done",
    ]);
    let more = d.tote(&[
        "run",
        "--rm",
        "--pids-limit",
        "4",
        "busybox",
        "sh",
        "-c",
        "n=0; for i in 1 2 3 4 5 6 7 8; do sleep 2 & [ $? = 0 ] && n=$((n+1)); done; echo forked; wait",
    ]);
    assert!(forks.stderr.contains("fork") || more.stderr.contains("fork"), "{forks:?} {more:?}");
    d.assert_nothing_left();
}

#[test]
fn inspect_top_stats_rename_and_cp() {
    let d = Daemon::start();
    d.tote(&["run", "-d", "--name", "first", "-l", "team=tote", "busybox", "sleep", "100"]).ok();
    assert_eq!(d.inspect("first")["Config"]["Labels"]["team"], "tote");
    assert!(d.tote(&["ps", "--filter", "label=team=tote", "-q"]).ok().trim().len() >= 12);
    assert!(d.tote(&["top", "first"]).ok().contains("sleep 100"));
    let stats = d.tote(&["stats", "--no-stream", "first"]);
    assert!(stats.ok().contains("first"), "{stats:?}");
    d.tote(&["rename", "first", "second"]).ok();
    assert_eq!(d.inspect("second")["Name"], "/second");
    let file = d.dir.join("copied-in");
    std::fs::write(&file, "payload").unwrap();
    d.tote(&["cp", file.to_str().unwrap(), "second:/tmp/"]).ok();
    assert_eq!(d.tote(&["exec", "second", "cat", "/tmp/copied-in"]).ok(), "payload");
    let out = d.dir.join("copied-out");
    d.tote(&["cp", "second:/etc/passwd", out.to_str().unwrap()]).ok();
    assert!(std::fs::read_to_string(&out).unwrap().starts_with("root:"));
    d.tote(&["rm", "-f", "second"]).ok();
    d.assert_nothing_left();
}

/// Ten containers, toted killed hard, two exit while it is down: the new
/// toted finds eight running and manageable and two exited with the
/// right codes.
#[test]
fn containers_survive_a_daemon_killed_with_sigkill() {
    let mut d = Daemon::start();
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            d.tote(&["run", "-d", "--name", &format!("steady{i}"), "busybox", "sleep", "1000"]).ok().trim().to_string(),
        );
    }
    for (name, code) in [("leaver7", "7"), ("leaver9", "9")] {
        let script = format!("while [ ! -e /go ]; do sleep 0.05; done; exit {code}");
        ids.push(d.tote(&["run", "-d", "--name", name, "busybox", "sh", "-c", &script]).ok().trim().to_string());
    }
    // Removed before the crash: must not come back.
    d.tote(&["run", "-d", "--name", "gone", "busybox", "sleep", "1000"]).ok();
    d.tote(&["rm", "-f", "gone"]).ok();
    d.tote(&["run", "--rm", "busybox", "true"]).ok();
    let pids: Vec<i64> = ids.iter().map(|id| d.inspect(id)["State"]["Pid"].as_i64().unwrap()).collect();
    d.kill_hard();
    for name_index in [8, 9] {
        std::fs::write(d.root.join("containers").join(&ids[name_index]).join("bundle/rootfs/go"), "").unwrap();
    }
    // Both exit, and their monitors record it, while no daemon runs.
    let deadline = Instant::now() + LONG;
    for pid in &pids[8..] {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "container {pid} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for pid in &pids[..8] {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "container {pid} died with toted");
    }
    d.launch();
    // A monitor may still be finishing its last steps; the exit is learnt
    // from it, or from its exit record once it is gone.
    d.eventually(Duration::from_secs(5), "8 running containers", || d.tote(&["ps", "-q"]).ok().lines().count() == 8);
    assert_eq!(d.tote(&["ps", "-aq"]).ok().lines().count(), 10, "{}", d.tote(&["ps", "-a"]).stdout);
    assert_eq!(d.inspect("leaver7")["State"]["ExitCode"], 7);
    assert_eq!(d.inspect("leaver9")["State"]["ExitCode"], 9);
    assert_eq!(d.status("leaver7"), "exited");
    assert_eq!(d.inspect("steady3")["State"]["Pid"].as_i64(), Some(pids[3]), "the same process, not a restart");
    assert_eq!(d.tote(&["exec", "steady3", "echo", "still", "here"]).ok(), "still here\n");
    d.tote(&["stop", "-t", "1", "steady0"]).ok();
    assert_eq!(d.status("steady0"), "exited");
    for id in &ids {
        d.tote(&["rm", "-f", id]).ok();
    }
    d.assert_nothing_left();
}

#[test]
fn a_killed_monitor_marks_its_container_exited_with_the_reason() {
    let d = Daemon::start();
    d.tote(&["run", "-d", "--name", "orphan", "busybox", "sleep", "1000"]).ok();
    let doc = d.inspect("orphan");
    let monitor = doc["State"]["MonitorPid"].as_i64().unwrap();
    let pid = doc["State"]["Pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(monitor).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.eventually(LONG, "the container to be marked exited", || d.status("orphan") == "exited");
    let state = d.inspect("orphan")["State"].clone();
    assert!(state["Error"].as_str().unwrap().contains("monitor"), "{state}");
    d.eventually(LONG, "the container's process to be gone", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    d.tote(&["rm", "orphan"]).ok();
    d.assert_nothing_left();
}

#[test]
fn a_full_state_dir_is_a_clear_error() {
    let d = Daemon::start_with(|d| {
        std::fs::create_dir_all(&d.state).unwrap();
        nix::mount::mount(Some("tmpfs"), &d.state, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
            .unwrap();
    });
    let filler = d.state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=64k"])
        .stderr(std::process::Stdio::null())
        .status();
    let ran = d.tote(&["run", "--rm", "busybox", "true"]);
    assert_eq!(ran.code, 125, "{ran:?}");
    assert!(ran.stderr.contains("No space left on device"), "{ran:?}");
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(d.tote(&["run", "--rm", "busybox", "echo", "ok"]).ok(), "ok\n");
    d.assert_nothing_left();
}

/// `system df`'s row of one type, as `TOTAL ACTIVE SIZE RECLAIMABLE`.
fn df_row(d: &Daemon, kind: &str) -> String {
    let ran = d.tote(&["system", "df", "--format", "{{.Type}}|{{.TotalCount}} {{.Active}} {{.Size}} {{.Reclaimable}}"]);
    let out = ran.ok();
    let row = out.lines().find_map(|line| line.strip_prefix(&format!("{kind}|")));
    row.unwrap_or_else(|| panic!("no {kind} row: {out}")).to_string()
}

/// The files in toted's `content/ingest` and their sizes.
fn partial_downloads(d: &Daemon) -> Vec<(String, u64)> {
    let dir = d.root.join("content/ingest");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect()
}

/// A pull cut midway leaves its download to resume: `system df` counts it,
/// `image prune` removes it, and one left alone for over a day goes when
/// toted starts.
#[test]
fn partial_downloads_are_counted_pruned_and_expired() {
    let reg = Registry::start();
    // Incompressible, so the blob is as big as its content.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    let image = ImageBuilder::new().layer(Layer::new(Compression::Gzip, [Entry::file("big", noise)]).level(1)).build();
    image.push(&reg, "test/big", "v1");
    let layer = image.layers[0].digest.clone();
    let cut = CutProxy::always(reg.addr(), 100_000);
    let name = format!("{}/test/big:v1", cut.addr());
    let mut d = Daemon::start();

    let pull = d.tote(&["pull", &name]);
    assert_eq!(pull.code, 125, "the cut pull fails: {pull:?}");
    let partials = partial_downloads(&d);
    assert_eq!(partials.len(), 1, "{partials:?}");
    let (file, size) = partials[0].clone();
    assert_eq!(file, layer.replacen(':', "-", 1));
    // Cuts come every 100 kB: the size prints as docker's "NkB".
    assert!(size > 0 && size % 100_000 == 0 && size < 1 << 20, "{size}");
    assert_eq!(df_row(&d, "Partial Downloads"), format!("1 0 {0}kB {0}kB (100%)", size / 1000));

    let prune = d.tote(&["image", "prune", "-f"]);
    let out = prune.ok();
    assert!(out.contains(&format!("Deleted Partial Downloads:\ndeleted: {layer}\n")), "{out}");
    // The failed pull's manifest and config were dangling: they went too.
    assert!(out.contains("Deleted Images:\ndeleted: sha256:"), "{out}");
    assert!(out.contains("Total reclaimed space: "), "{out}");
    assert!(partial_downloads(&d).is_empty());
    assert_eq!(df_row(&d, "Partial Downloads"), "0 0 0B 0B");
    assert!(!d.tote(&["images", "-q"]).ok().trim().is_empty(), "busybox is named: prune left it");

    // `-a` takes every image no container uses, so a container keeps busybox.
    d.tote(&["create", "--name", "keeper", "busybox", "true"]).ok();
    assert!(df_row(&d, "Images").starts_with("1 1 "), "{}", df_row(&d, "Images"));
    assert_eq!(df_row(&d, "Containers"), "1 0 0B 0B", "created, not running: reclaimable");
    let prune = d.tote(&["image", "prune", "-a", "-f"]);
    assert_eq!(prune.ok(), "Total reclaimed space: 0B\n");
    d.tote(&["start", "-a", "keeper"]).ok();
    d.tote(&["rm", "keeper"]).ok();

    // Cut again, then left for 25 hours: the next toted expires it.
    d.tote(&["pull", &name]);
    assert_eq!(partial_downloads(&d).len(), 1);
    d.stop();
    let path = d.root.join("content/ingest").join(&file);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(25 * 3600))
        .unwrap();
    d.launch();
    assert!(partial_downloads(&d).is_empty(), "not expired at start; log:\n{}", d.log());
    assert_eq!(df_row(&d, "Partial Downloads"), "0 0 0B 0B");
    assert!(d.log().contains("removed expired partial downloads"), "{}", d.log());
}

/// `--device` as root: the node is made in the container (mknod) with the
/// host's numbers, and a device cgroup rule lets it be used as asked.
#[test]
fn devices_are_given_as_root() {
    let d = Daemon::start();
    let script = "stat -c %t:%T /dev/myzero; head -c 3 /dev/myzero | od -An -tx1";
    let ran = d.tote(&["run", "--rm", "--device", "/dev/zero:/dev/myzero", "busybox", "sh", "-c", script]);
    let lines: Vec<&str> = ran.ok().lines().map(str::trim).collect();
    assert_eq!(lines, ["1:5", "00 00 00"], "{ran:?}");
    let missing = d.tote(&["run", "--rm", "--device", "/dev/no-such-device", "busybox", "true"]);
    assert!(missing.fails(125).contains("/dev/no-such-device"), "{missing:?}");
    let bad = d.tote(&["run", "--rm", "--device", "/dev/zero:/dev/z:rx", "busybox", "true"]);
    assert!(bad.fails(125).contains("invalid --device"), "{bad:?}");
    d.assert_nothing_left();
}

/// `--privileged` as root, as docker: every host device, nothing masked.
#[test]
fn privileged_gets_the_hosts_devices_and_nothing_masked() {
    let d = Daemon::start();
    let script = "ls /dev; echo keys=$(ls -l /proc/keys | cut -c1)";
    let out = d.tote(&["run", "--rm", "--privileged", "busybox", "sh", "-c", script]).ok().to_string();
    let seen: Vec<&str> = out.lines().collect();
    let host = daemon::host_top_devices();
    assert!(!host.is_empty(), "the host has devices");
    for (name, _) in &host {
        assert!(seen.contains(&name.as_str()), "/dev/{name} in the container: {out}");
    }
    assert!(seen.contains(&"keys=-"), "/proc/keys is not masked: {out}");
    let plain = d.tote(&["run", "--rm", "busybox", "sh", "-c", script]).ok().to_string();
    let seen: Vec<&str> = plain.lines().collect();
    assert!(host.iter().all(|(name, _)| !seen.contains(&name.as_str())), "no host device without it: {plain}");
    assert!(seen.contains(&"keys=c"), "/proc/keys is masked: {plain}");
    d.assert_nothing_left();
}
