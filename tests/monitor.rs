//! tote-shim as a container's monitor, on real containers: it detaches,
//! relays output to attached clients and into the log, runs exec sessions,
//! answers wait/kill/state/stats, records the exit durably and cleans up.

mod support;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use support::TestContainer;
use tote_shim::monitor::client::{MonitorClient, Streaming};
use tote_shim::monitor::log::{Stream, read_all};
use tote_shim::monitor::protocol::{ExitInfo, FrameKind, Phase, Reply, Request, read_frame};
use tote_shim::monitor::{Startup, exit};

/// A container run by a monitor, and where its files are.
struct Monitored {
    container: TestContainer,
    dir: PathBuf,
    log: PathBuf,
    startup: Startup,
}

impl Monitored {
    fn start(container: TestContainer, extra: &[&str]) -> Self {
        container.write_config();
        let dir = container.bundle.join("monitor");
        std::fs::create_dir_all(&dir).unwrap();
        let log = container.bundle.join("container.log");
        // Inherited by tote-shim (no close-on-exec), as toted hands it over.
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let (bundle, dir_arg, log_arg) =
            (container.bundle.display().to_string(), dir.display().to_string(), log.display().to_string());
        let fd = write.as_raw_fd().to_string();
        let mut args =
            vec!["monitor", "--bundle", &bundle, "--dir", &dir_arg, "--container-log", &log_arg, "--ready-fd", &fd];
        args.extend_from_slice(extra);
        args.push(&container.id);
        let status = container.shim(&args).status().unwrap();
        assert!(status.success(), "tote-shim monitor returns at once in the caller");
        drop(write);
        let mut line = String::new();
        BufReader::new(std::fs::File::from(read)).read_line(&mut line).unwrap();
        let startup = serde_json::from_str(&line).unwrap_or_else(|e| panic!("startup line {line:?}: {e}"));
        Self { container, dir, log, startup }
    }

    fn client(&self) -> MonitorClient {
        MonitorClient::new(&self.dir)
    }

    fn pids(&self) -> (i32, i32) {
        match self.startup {
            Startup::Ready { pid, monitor_pid } => (pid, monitor_pid),
            ref other => panic!("monitor did not start the container: {other:?}"),
        }
    }

    fn request(&self, request: Request) -> Reply {
        self.client().request(&request).unwrap()
    }

    fn attach(&self, stdin: bool) -> Streaming {
        match self.client().stream(&Request::Attach { stdin }).unwrap() {
            Ok(stream) => stream,
            Err(reply) => panic!("attach refused: {reply:?}"),
        }
    }

    /// Waits for the monitor process to be gone.
    fn wait_gone(&self) {
        let (_, monitor) = self.pids();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{monitor}")).exists() {
            assert!(Instant::now() < deadline, "monitor {monitor} did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Monitored {
    fn drop(&mut self) {
        if let Startup::Ready { monitor_pid, .. } = self.startup
            && std::path::Path::new(&format!("/proc/{monitor_pid}")).exists()
        {
            let _ = self.client().request(&Request::Kill { signal: 9, all: true });
        }
    }
}

/// Reads frames to the end: stdout, stderr and the exit.
fn collect(stream: &mut Streaming) -> (String, String, ExitInfo) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match read_frame(&mut stream.reader).unwrap() {
            Some((FrameKind::Stdout, data)) => out.extend(data),
            Some((FrameKind::Stderr, data)) => err.extend(data),
            Some((FrameKind::Exit, data)) => {
                let exit = serde_json::from_slice(&data).unwrap();
                return (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), exit);
            }
            Some(other) => panic!("unexpected frame {other:?}"),
            None => panic!("stream ended without an exit; so far {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

fn ok(reply: Reply) {
    assert!(matches!(reply, Reply::Ok), "{reply:?}");
}

#[test]
fn the_monitor_relays_output_logs_it_and_records_the_exit() {
    let m = Monitored::start(TestContainer::new("mon-out").sh("echo out; echo err >&2; exit 3"), &[]);
    let (pid, monitor) = m.pids();
    // Detached: its own session, not our child.
    let stat = std::fs::read_to_string(format!("/proc/{monitor}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    assert_eq!(fields[3], monitor.to_string(), "the monitor leads its own session");
    assert_ne!(fields[1], std::process::id().to_string());
    assert!(matches!(m.request(Request::State), Reply::State { phase: Phase::Created, pid: p, .. } if p == pid));

    let mut stream = m.attach(false);
    ok(m.request(Request::Start));
    let (out, err, exit) = collect(&mut stream);
    assert_eq!((out.as_str(), err.as_str(), exit.code, exit.oom_killed), ("out\n", "err\n", 3, false));

    m.wait_gone();
    assert_eq!(exit::read(&m.dir).unwrap().unwrap().code, 3, "the exit is on disk");
    let records = read_all(&m.log).unwrap();
    let lines: Vec<(Stream, &[u8])> = records.iter().map(|r| (r.stream, r.text.as_slice())).collect();
    assert_eq!(lines, vec![(Stream::Stdout, &b"out"[..]), (Stream::Stderr, &b"err"[..])]);
    assert!(!m.container.root.join(&m.container.id).exists(), "runtime state removed");
    assert!(m.container.cgroup_dirs().is_empty(), "cgroup removed: {:?}", m.container.cgroup_dirs());
    assert!(!m.dir.join("sock").exists(), "socket removed");
}

#[test]
fn an_exit_nobody_watched_is_still_recorded() {
    let m = Monitored::start(TestContainer::new("mon-alone").sh("exit 42"), &[]);
    ok(m.request(Request::Start));
    m.wait_gone();
    let exit = exit::read(&m.dir).unwrap().expect("exit.json");
    assert_eq!((exit.code, exit.signal), (42, None));
}

#[test]
fn wait_returns_when_the_container_is_killed() {
    let m = Monitored::start(TestContainer::new("mon-kill").args(&["sleep", "60"]), &[]);
    ok(m.request(Request::Start));
    assert!(matches!(m.request(Request::State), Reply::State { phase: Phase::Running, .. }));
    let client = m.client();
    let waiter = std::thread::spawn(move || client.request(&Request::Wait).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    ok(m.request(Request::Kill { signal: 9, all: false }));
    match waiter.join().unwrap() {
        Reply::Exited { exit } => assert_eq!((exit.code, exit.signal), (137, Some(9))),
        other => panic!("{other:?}"),
    }
    m.wait_gone();
}

#[test]
fn exec_runs_with_input_and_reports_its_exit_code() {
    let m = Monitored::start(TestContainer::new("mon-exec").args(&["sleep", "60"]), &[]);
    ok(m.request(Request::Start));
    let mut process: oci_spec::runtime::Process =
        serde_json::from_value(m.container.config["process"].clone()).unwrap();
    process.set_args(Some(vec!["sh".into(), "-c".into(), "read x; echo got $x; echo e >&2; exit 5".into()]));
    let mut stream =
        match m.client().stream(&Request::Exec { process: Box::new(process.clone()), stdin: true }).unwrap() {
            Ok(stream) => stream,
            Err(reply) => panic!("{reply:?}"),
        };
    stream.send(FrameKind::Stdin, b"hello\n").unwrap();
    stream.send(FrameKind::StdinClose, b"").unwrap();
    let (out, err, exit) = collect(&mut stream);
    assert_eq!((out.as_str(), err.as_str(), exit.code), ("got hello\n", "e\n", 5));

    process.set_args(Some(vec!["/no/such/program".into()]));
    match m.client().stream(&Request::Exec { process: Box::new(process), stdin: false }).unwrap() {
        Err(Reply::Error { message, exit_code }) => {
            assert_eq!(exit_code, Some(127), "{message}");
            assert!(message.contains("/no/such/program"), "{message}");
        }
        other => panic!("{:?}", other.map(|s| s.pid)),
    }
    // The container itself was not disturbed.
    assert!(matches!(m.request(Request::State), Reply::State { phase: Phase::Running, .. }));
}

#[test]
fn stdin_reaches_the_container_and_closing_it_ends_cat() {
    let m = Monitored::start(TestContainer::new("mon-stdin").args(&["cat"]), &["--stdin"]);
    let mut stream = m.attach(true);
    ok(m.request(Request::Start));
    stream.send(FrameKind::Stdin, b"abc\n").unwrap();
    stream.send(FrameKind::StdinClose, b"").unwrap();
    let (out, _, exit) = collect(&mut stream);
    assert_eq!((out.as_str(), exit.code), ("abc\n", 0));
}

#[test]
fn a_terminal_container_is_served_through_its_pty() {
    let container = TestContainer::new("mon-tty")
        .sh("stty size; read line; echo got:$line")
        .with(|c| c["process"]["terminal"] = json!(true));
    let m = Monitored::start(container, &["--stdin"]);
    ok(m.request(Request::Resize { rows: 33, cols: 101 }));
    let mut stream = m.attach(true);
    ok(m.request(Request::Start));
    stream.send(FrameKind::Stdin, b"typed\r").unwrap();
    let (out, _, exit) = collect(&mut stream);
    assert_eq!(exit.code, 0, "{out}");
    assert!(out.contains("33 101"), "{out:?}");
    assert!(out.contains("got:typed"), "{out:?}");
}

#[test]
fn stats_pids_pause_and_resume() {
    let m = Monitored::start(TestContainer::new("mon-stats").args(&["sleep", "60"]), &[]);
    ok(m.request(Request::Start));
    let (pid, _) = m.pids();
    match m.request(Request::Pids) {
        Reply::Pids { pids } => assert_eq!(pids, vec![pid]),
        other => panic!("{other:?}"),
    }
    match m.request(Request::Stats) {
        Reply::Stats { stats } => {
            assert_eq!(stats.pids, 1);
            assert!(stats.memory_usage > 0, "{stats:?}");
        }
        other => panic!("{other:?}"),
    }
    ok(m.request(Request::Pause));
    assert!(matches!(m.request(Request::State), Reply::State { phase: Phase::Paused, .. }));
    ok(m.request(Request::Resume));
    assert!(matches!(m.request(Request::State), Reply::State { phase: Phase::Running, .. }));
}

#[test]
fn a_program_that_does_not_exist_fails_creation_with_127_and_leaves_nothing() {
    let m = Monitored::start(TestContainer::new("mon-noprog").args(&["/nope"]), &[]);
    match &m.startup {
        Startup::Failed { message, exit_code } => {
            assert_eq!(*exit_code, Some(127), "{message}");
            assert!(message.contains("/nope"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!m.container.root.join(&m.container.id).exists());
    assert!(m.container.cgroup_dirs().is_empty());
}

#[test]
fn bad_requests_get_clear_errors() {
    let m = Monitored::start(TestContainer::new("mon-bad").args(&["sleep", "60"]), &[]);
    use std::io::Write;
    let mut raw = std::os::unix::net::UnixStream::connect(m.dir.join("sock")).unwrap();
    raw.write_all(b"{\"op\":\"explode\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(raw).read_line(&mut line).unwrap();
    assert!(line.contains("bad request") && line.contains("explode"), "{line}");
    match m.request(Request::Resize { rows: 1, cols: 1 }) {
        Reply::Error { message, .. } => assert!(message.contains("no terminal"), "{message}"),
        other => panic!("{other:?}"),
    }
    match m.request(Request::Kill { signal: 999, all: false }) {
        Reply::Error { message, .. } => assert!(message.contains("999"), "{message}"),
        other => panic!("{other:?}"),
    }
}
