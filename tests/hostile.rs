//! Tote against its adversaries, as root through the real CLI and toted:
//! another local user reading the store, a container racing `tote cp`,
//! planting FIFOs for toted to read, a non-root process keeping
//! capabilities, and ports someone else holds.

#[path = "support/daemon.rs"]
mod daemon;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{Daemon, Ran};

const LONG: Duration = Duration::from_secs(20);

/// Runs a command as `nobody` (uid and gid 65534, no groups).
fn as_nobody(args: &[&str]) -> Ran {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

fn id_of(d: &Daemon, name: &str) -> String {
    d.inspect(name)["Id"].as_str().unwrap().to_string()
}

/// Runs `tote args...`, failing the test if it takes longer than `limit`
/// (a hung toted would otherwise hang the test).
fn tote_within(d: &Daemon, limit: Duration, args: &[&str]) -> Ran {
    let mut child = d.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (mut stdout, mut stderr) = (String::new(), String::new());
            child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            return Ran { code: status.code().unwrap_or(-1), stdout, stderr };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tote {args:?} took more than {limit:?}: toted hangs; log:\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CVE-2021-41091: another user can neither read a container's secrets nor
/// run its setuid binaries from the host.
#[test]
fn other_users_cannot_reach_the_store() {
    let d = Daemon::start();
    let script = "cp /bin/busybox /suid && chmod 4755 /suid && echo secret-in-log && exec sleep 1000";
    d.tote(&["run", "-d", "--name", "vault", "-e", "SECRET=hunter2", "busybox", "sh", "-c", script]).ok();
    d.eventually(LONG, "the container to log", || d.tote(&["logs", "vault"]).stdout.contains("secret-in-log"));
    let id = id_of(&d, "vault");
    let container = d.root.join("containers").join(&id);
    let config = container.join("bundle/config.json");
    let log = container.join("container.log");
    let suid = d.root.join(format!("snapshots/rw-{id}/fs/suid"));
    let monitor_socket = d.state.join("m").join(&id[..12]).join("sock");
    // The way in is closed (root can see all of it is there).
    assert!(std::fs::read_to_string(&config).unwrap().contains("hunter2"));
    assert!(suid.exists() && mode(&suid) & 0o4000 != 0, "the setuid binary is in the snapshot");
    assert_eq!(mode(&d.root), 0o710, "the root");
    assert_eq!(mode(&d.state), 0o711, "the state dir");
    for dir in ["containers", "snapshots", "content"] {
        assert_eq!(mode(&d.root.join(dir)), 0o700, "{dir}");
    }
    for dir in ["m", "netns", "runtime"] {
        assert_eq!(mode(&d.state.join(dir)), 0o700, "{dir}");
    }
    assert_eq!(mode(&d.root.join("metadata.db")), 0o600, "metadata.db");
    assert_eq!(mode(&config), 0o600, "config.json");
    assert_eq!(mode(&log), 0o640, "the container's log");

    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    for file in [&config, &log, &d.root.join("metadata.db")] {
        let read = as_nobody(&["cat", &path(file)]);
        assert_ne!(read.code, 0, "nobody read {}: {read:?}", file.display());
        assert!(!read.stdout.contains("hunter2") && !read.stdout.contains("secret-in-log"));
    }
    for dir in [&d.root, &d.state, &d.root.join("containers")] {
        let listed = as_nobody(&["ls", &path(dir)]);
        assert_ne!(listed.code, 0, "nobody listed {}: {listed:?}", dir.display());
    }
    let escalated = as_nobody(&[&path(&suid), "id", "-u"]);
    assert_ne!(escalated.code, 0, "nobody ran the container's setuid binary: {escalated:?}");
    assert!(!escalated.stdout.starts_with('0'), "{escalated:?}");
    assert!(monitor_socket.exists());
    let monitor = as_nobody(&["stat", &path(&monitor_socket)]);
    assert_ne!(monitor.code, 0, "nobody reached the monitor's socket: {monitor:?}");
    d.tote(&["rm", "-f", "vault"]).ok();
    d.assert_nothing_left();
}

/// CVE-2022-24769: a process running as another user than root has no
/// capabilities, in `run -u` and in `exec -u`; root keeps docker's set but
/// nothing inheritable or ambient.
#[test]
fn non_root_processes_have_no_capabilities() {
    let d = Daemon::start();
    let caps = |out: &str| -> Vec<(String, u64)> {
        out.lines()
            .filter_map(|l| l.strip_prefix("Cap"))
            .map(|l| {
                let (set, hex) = l.split_once(':').unwrap();
                (set.to_string(), u64::from_str_radix(hex.trim(), 16).unwrap())
            })
            .collect()
    };
    let root = d.tote(&["run", "--rm", "busybox", "grep", "^Cap", "/proc/self/status"]);
    for (set, value) in caps(root.ok()) {
        match set.as_str() {
            "Inh" | "Amb" => assert_eq!(value, 0, "root's Cap{set}"),
            _ => assert_ne!(value, 0, "root's Cap{set}"),
        }
    }
    let user = d.tote(&["run", "--rm", "-u", "1000", "busybox", "grep", "^Cap", "/proc/self/status"]);
    for (set, value) in caps(user.ok()) {
        if set != "Bnd" {
            assert_eq!(value, 0, "uid 1000's Cap{set}: {user:?}");
        }
    }
    let bind = d.tote(&["run", "--rm", "-u", "1000", "busybox", "nc", "-l", "-p", "80"]);
    assert_ne!(bind.code, 0, "uid 1000 bound port 80: {bind:?}");
    assert!(bind.stderr.contains("ermission denied"), "{bind:?}");
    d.tote(&["run", "-d", "--name", "capped", "busybox", "sleep", "1000"]).ok();
    let exec = d.tote(&["exec", "-u", "1000", "capped", "grep", "^Cap", "/proc/self/status"]);
    for (set, value) in caps(exec.ok()) {
        if set != "Bnd" {
            assert_eq!(value, 0, "exec -u 1000: Cap{set}: {exec:?}");
        }
    }
    d.tote(&["rm", "-f", "capped"]).ok();
    d.assert_nothing_left();
}

/// A container's /etc/passwd as a FIFO, /etc/group as a device node: toted
/// refuses to read them, and keeps answering everyone.
#[test]
fn special_files_in_a_container_do_not_hang_toted() {
    let d = Daemon::start();
    let script =
        "rm /etc/passwd /etc/group && mkfifo /etc/passwd && mknod /etc/group c 1 5 && echo planted && exec sleep 1000";
    d.tote(&["run", "-d", "--name", "trap", "busybox", "sh", "-c", script]).ok();
    d.eventually(LONG, "the FIFO to be planted", || d.tote(&["logs", "trap"]).stdout.contains("planted"));
    for _ in 0..4 {
        let exec = tote_within(&d, Duration::from_secs(10), &["exec", "-u", "nobody", "trap", "id"]);
        assert_ne!(exec.code, 0, "{exec:?}");
        assert!(exec.stderr.contains("/etc/passwd") && exec.stderr.contains("not a regular file"), "{exec:?}");
    }
    tote_within(&d, Duration::from_secs(5), &["ps"]).ok();
    // Numeric ids need no lookup; the group file is refused just the same.
    let numeric = tote_within(&d, Duration::from_secs(10), &["exec", "-u", "1000:1000", "trap", "id"]);
    assert_ne!(numeric.code, 0, "{numeric:?}");
    d.tote(&["rm", "-f", "trap"]).ok();
    d.assert_nothing_left();
}

/// A static program for the container that swaps two paths for ever, by
/// renameat2(RENAME_EXCHANGE): a directory and a symlink trade places
/// millions of times a second, so any path resolved twice by the host
/// meets the symlink. Built at test time with the host's gcc.
fn build_swapper(dir: &Path) -> PathBuf {
    let source = dir.join("swapper.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/fs.h>
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    for (;;) syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE);
}
"#,
    )
    .unwrap();
    let binary = dir.join("swapper");
    let built = Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&binary).arg(&source).output().unwrap();
    assert!(built.status.success(), "gcc: {}", String::from_utf8_lossy(&built.stderr));
    binary
}

/// CVE-2018-15664: a container swapping a directory for a symlink to a
/// host path while `tote cp` runs gets nothing written to, nor read from,
/// the host.
#[test]
fn cp_stays_inside_a_container_that_swaps_paths() {
    let d = Daemon::start();
    let tools = d.dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    build_swapper(&tools);
    // Host directories the container's symlinks name: a copy resolved on
    // the host would write into `sink` or read `secret`.
    let sink = d.dir.join("host-sink");
    let secret_dir = d.dir.join("host-secret");
    std::fs::create_dir_all(&sink).unwrap();
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret-file"), "host secret").unwrap();
    let (sink_path, secret_path) = (sink.to_str().unwrap(), secret_dir.to_str().unwrap());
    let script = format!(
        "mkdir -p /in/tree/sub /out/sub && ln -s {sink_path} /in/tree/link && ln -s {secret_path} /out/link && \
         for i in $(seq 100); do echo inside > /out/sub/file$i; done && \
         /tools/swapper /in/tree/sub /in/tree/link & /tools/swapper /out/sub /out/link & echo racing; wait"
    );
    let volume = format!("{}:/tools:ro", tools.display());
    d.tote(&["run", "-d", "--name", "racer", "-v", &volume, "busybox", "sh", "-c", &script]).ok();
    d.eventually(LONG, "the race to begin", || d.tote(&["logs", "racer"]).stdout.contains("racing"));
    // What goes in: many files under the directory the container swaps.
    let tree = d.dir.join("upload/tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..100 {
        std::fs::write(tree.join(format!("sub/payload{i}")), "payload").unwrap();
    }
    let (mut copied_in, mut copied_out) = (0, 0);
    for _ in 0..20 {
        let ran = d.tote(&["cp", tree.to_str().unwrap(), "racer:/in/"]);
        copied_in += usize::from(ran.code == 0);
        let leaked = Daemon::names_in(&sink);
        assert!(leaked.is_empty(), "tote cp wrote onto the host: {leaked:?}");
        let out = d.command(&["cp", "racer:/out", "-"]).stderr(Stdio::null()).output().unwrap();
        copied_out += usize::from(out.status.success());
        let mut archive = tar::Archive::new(out.stdout.as_slice());
        if let Ok(entries) = archive.entries() {
            for entry in entries.flatten() {
                let name = entry.path().unwrap().display().to_string();
                assert!(!name.contains("secret-file"), "tote cp archived a host file: {name}");
            }
        }
    }
    // Copies still work through the race (the ones that meet the symlink
    // are refused).
    assert!(copied_in > 0 && copied_out > 0, "copies in: {copied_in}/20, out: {copied_out}/20");
    assert_eq!(Daemon::names_in(&secret_dir), ["secret-file"]);
    d.tote(&["rm", "-f", "racer"]).ok();
    d.assert_nothing_left();
}

/// As with docker: a read-only container takes no files, and a copy never
/// replaces a directory of the container by a file (nor the reverse).
#[test]
fn cp_refuses_read_only_containers_and_kind_changes() {
    let d = Daemon::start();
    let file = d.dir.join("etc");
    std::fs::write(&file, "not a directory").unwrap();
    d.tote(&["run", "-d", "--read-only", "--name", "frozen", "busybox", "sleep", "1000"]).ok();
    let refused = d.tote(&["cp", file.to_str().unwrap(), "frozen:/tmp/"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("container rootfs is marked read-only"), "{refused:?}");

    d.tote(&["run", "-d", "--name", "open", "busybox", "sleep", "1000"]).ok();
    let over_dir = d.tote(&["cp", file.to_str().unwrap(), "open:/"]);
    assert_ne!(over_dir.code, 0, "{over_dir:?}");
    assert!(over_dir.stderr.contains("cannot overwrite directory"), "{over_dir:?}");
    assert!(d.tote(&["exec", "open", "ls", "/etc/passwd"]).code == 0, "/etc is still there");
    // `.wh.` names are plain files to cp.
    let whiteout = d.dir.join(".wh.passwd");
    std::fs::write(&whiteout, "just a file").unwrap();
    d.tote(&["cp", whiteout.to_str().unwrap(), "open:/etc/"]).ok();
    assert_eq!(d.tote(&["exec", "open", "cat", "/etc/.wh.passwd"]).ok(), "just a file");
    assert!(d.tote(&["exec", "open", "cat", "/etc/passwd"]).ok().starts_with("root:"));
    // Out of the container: a FIFO is archived as one, never read.
    d.tote(&["exec", "open", "mkfifo", "/tmp/pipe"]).ok();
    let out = tote_within(&d, Duration::from_secs(10), &["cp", "open:/tmp", "-"]);
    assert_eq!(out.code, 0, "{out:?}");
    for name in ["frozen", "open"] {
        d.tote(&["rm", "-f", name]).ok();
    }
    d.assert_nothing_left();
}

/// docker's "port is already allocated": for a port a host service
/// listens on, and for one another container publishes.
#[test]
fn published_ports_are_never_taken_twice() {
    let d = Daemon::start();
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = service.local_addr().unwrap().port();
    let clash = d.tote(&["run", "--rm", "-p", &format!("127.0.0.1:{taken}:80"), "busybox", "true"]);
    assert_eq!(clash.code, 125, "{clash:?}");
    assert!(
        clash.stderr.contains(&format!("Bind for 127.0.0.1:{taken} failed: port is already allocated")),
        "{clash:?}"
    );
    // `run --rm` whose start failed leaves nothing.
    assert_eq!(d.tote(&["ps", "-aq"]).ok(), "");
    drop(service);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:80");
    d.tote(&["run", "-d", "--name", "first", "-p", &publish, "busybox", "sleep", "1000"]).ok();
    let second = d.tote(&["run", "-d", "--name", "second", "-p", &publish, "busybox", "sleep", "1000"]);
    assert_eq!(second.code, 125, "{second:?}");
    assert!(second.stderr.contains("port is already allocated"), "{second:?}");
    // Nor may a host program take it while the container publishes it.
    let host = std::net::TcpListener::bind(("127.0.0.1", port));
    assert!(host.is_err(), "a host program took a published port");
    d.tote(&["rm", "-f", "first"]).ok();
    d.eventually(LONG, "the port to be free again", || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    d.tote(&["start", "second"]).ok();
    d.tote(&["rm", "-f", "second"]).ok();
    d.assert_nothing_left();
}

/// A flood of connections that never send anything: toted, with few
/// descriptors, still handles a container's exit meanwhile, and answers at
/// once when the flood ends.
#[test]
fn a_connection_flood_does_not_starve_toted() {
    let mut d = Daemon::start();
    d.stop();
    d.launch_with_nofile(256);
    d.tote(&["run", "-d", "--name", "ticker", "-p", "127.0.0.1::80", "busybox", "sh", "-c", "sleep 2; exit 7"]).ok();
    // Well past toted's 256 descriptors, within the socket's backlog.
    let flood: Vec<std::os::unix::net::UnixStream> =
        (0..600).map(|_| std::os::unix::net::UnixStream::connect(&d.socket).unwrap()).collect();
    // The exit is handled in full during the flood: the network released
    // (the CNI plugins need descriptors to run).
    d.eventually(LONG, "the exit's network teardown", || {
        Daemon::names_in(&d.state.join("cni/results")).is_empty() && Daemon::names_in(&d.state.join("netns")).is_empty()
    });
    drop(flood);
    let answered = tote_within(&d, Duration::from_secs(2), &["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert_eq!(answered.ok(), "ticker exited\n");
    assert_eq!(d.inspect("ticker")["State"]["ExitCode"], 7, "the exit during the flood was recorded");
    assert_eq!(tote_within(&d, LONG, &["run", "--rm", "busybox", "echo", "after"]).ok(), "after\n");
    d.tote(&["rm", "ticker"]).ok();
    d.assert_nothing_left();
}

/// What toted accepts, the CLI reads back: a container with a 40 MB
/// environment can be inspected.
#[test]
fn a_big_record_can_be_read_back() {
    let d = Daemon::start();
    let value = "x".repeat(100_000);
    let env: String = (0..400).map(|i| format!("BIG{i}={value}\n")).collect();
    let file = d.dir.join("big.env");
    std::fs::write(&file, env).unwrap();
    d.tote(&["create", "--name", "bulky", "--env-file", file.to_str().unwrap(), "busybox", "true"]).ok();
    let env = d.inspect("bulky")["Config"]["Env"].as_array().unwrap().len();
    assert!(env >= 400, "{env} variables came back");
    d.tote(&["rm", "bulky"]).ok();
    d.assert_nothing_left();
}
