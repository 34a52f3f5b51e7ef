//! A rootless toted, as an ordinary user these tests create (with
//! subordinate id ranges in /etc/subuid and /etc/subgid) and remove, with
//! private XDG directories: the user namespace it makes and joins again
//! after a restart, its maps in `tote info`, containers across a restart,
//! and the clear errors (no range, no newuidmap, a second toted, no
//! XDG_RUNTIME_DIR). Run as root: creating users needs it.

#[path = "support/daemon.rs"]
mod daemon;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use daemon::Ran;

/// /etc/subuid and /etc/subgid are shared: one test edits them at a time.
static SUBID_FILES: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);
const SUBID_FILE_NAMES: [&str; 2] = ["/etc/subuid", "/etc/subgid"];
const RANGE: u32 = 65536;

/// The subordinate id files as they were, put back on drop (a test that
/// panics unwinds through it).
struct SubidBackup(Vec<(PathBuf, Option<Vec<u8>>)>);

impl SubidBackup {
    fn take() -> Self {
        Self(SUBID_FILE_NAMES.iter().map(|p| (PathBuf::from(p), std::fs::read(p).ok())).collect())
    }
}

impl Drop for SubidBackup {
    fn drop(&mut self) {
        for (path, content) in &self.0 {
            match content {
                Some(bytes) => {
                    if std::fs::read(path).ok().as_ref() != Some(bytes) {
                        std::fs::write(path, bytes).unwrap_or_else(|e| eprintln!("restore {}: {e}", path.display()));
                    }
                }
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// An ordinary user with private XDG directories, removed with everything
/// it ran on drop.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    dir: PathBuf,
    bin: PathBuf,
    /// The subordinate range written for it (none: the user has none).
    range: Option<u32>,
    toted: Option<Child>,
    // Dropped last: the files are restored after the user is gone.
    _subids: SubidBackup,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl User {
    /// A new user; with `subids`, a range of 65536 uids and gids for it.
    fn create(subids: bool) -> Self {
        assert!(nix::unistd::Uid::effective().is_root(), "the rootless tests create users and need root");
        let lock = SUBID_FILES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let backup = SubidBackup::take();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("tote-rl-{pid}-{n}");
        let added = Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", &name]).output().unwrap();
        assert!(added.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&added.stderr));
        let entry = nix::unistd::User::from_name(&name).unwrap().expect("the new user");
        // Ranges of their own, above what useradd hands out by default.
        let start = 1_000_000_000 + (pid % 1000) * 8 * RANGE + u32::try_from(n).unwrap() * RANGE;
        for path in SUBID_FILE_NAMES {
            // useradd may have given the user a range already: only ours counts.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let mut kept: String =
                text.lines().filter(|l| !l.starts_with(&format!("{name}:"))).map(|l| format!("{l}\n")).collect();
            if subids {
                kept.push_str(&format!("{name}:{start}:{RANGE}\n"));
            }
            std::fs::write(path, kept).unwrap();
        }
        let dir = PathBuf::from(format!("/tmp/tote-tests/rootless-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        for sub in ["run", "data", "config", "bin"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let user = Self {
            name,
            uid: entry.uid.as_raw(),
            gid: entry.gid.as_raw(),
            dir,
            bin,
            range: subids.then_some(start),
            toted: None,
            _subids: backup,
            _lock: lock,
        };
        std::fs::set_permissions("/tmp/tote-tests", std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["", "run", "data", "config"] {
            let path = user.dir.join(sub);
            nix::unistd::chown(&path, Some(entry.uid), Some(entry.gid)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::set_permissions(&user.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The binaries where the user reaches them (the target directory may
        // be under a home only root may enter): linked, else copied.
        for name in ["toted", "tote-shim", "tote", "tote-image"] {
            let (from, to) = (daemon::binary(name), user.bin.join(name));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).unwrap();
            }
        }
        user
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn state_dir(&self) -> PathBuf {
        self.runtime_dir().join("tote")
    }

    fn data_root(&self) -> PathBuf {
        self.dir.join("data/tote")
    }

    /// A command run as the user, with only the environment a login
    /// session gives (and the XDG directories of this test).
    fn command(&self, program: &str) -> Command {
        // By its path: a test may give toted a PATH without it.
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| Path::new(p).exists());
        let mut command = Command::new(setpriv.unwrap_or("setpriv"));
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(self.bin.join(program))
            .env_clear()
            .env("HOME", format!("/home/{}", self.name))
            .env("USER", &self.name)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .stdin(Stdio::null());
        command
    }

    /// `tote ARGS` as the user, with no -H: it must find the user's toted.
    fn tote(&self, args: &[&str]) -> Ran {
        Ran::from(self.command("tote").args(args).output().unwrap())
    }

    /// toted run to its end (for the ones that must refuse to start).
    fn toted_fails(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut command = self.command("toted");
        command.args(args).envs(env.iter().copied());
        let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = wait_output(child, Duration::from_secs(20));
        assert_ne!(out.code, 0, "toted should have refused to start: {out:?}");
        out
    }

    /// Starts the user's toted and waits until it answers.
    fn start_toted(&mut self, args: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("toted.log")).unwrap();
        let child = self.command("toted").args(args).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.toted = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.tote(&["version"]).code != 0 {
            if let Some(status) = self.toted.as_mut().unwrap().try_wait().unwrap() {
                self.toted = None;
                panic!("toted exited with {status}; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "toted did not come up; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as a person or systemd stops it; containers keep running.
    fn stop_toted(&mut self) {
        if let Some(mut child) = self.toted.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "toted did not stop on SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn toted_pid(&self) -> u32 {
        self.toted.as_ref().expect("toted runs").id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("toted.log")).unwrap_or_default()
    }

    fn holder_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.state_dir().join("ns-holder.pid")).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Every process of this user's: its uid, or in its user namespace
    /// (containers run as subordinate ids).
    fn processes(&self) -> Vec<i32> {
        let holder_ns = std::fs::read_to_string(self.state_dir().join("ns-holder.pid"))
            .ok()
            .and_then(|t| t.split_whitespace().next().map(str::to_string))
            .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/ns/user")).ok());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let owned = entry.metadata().is_ok_and(|m| m.uid() == self.uid);
            let in_ns = holder_ns.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() == holder_ns;
            if owned || in_ns {
                found.push(pid);
            }
        }
        found
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("toted's log:\n{}", self.log());
        }
        if let Some(mut child) = self.toted.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The holder, monitors and containers: all started by this test.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() > deadline {
                if !left.is_empty() {
                    eprintln!("processes of {} still there: {left:?}", self.name);
                }
                break;
            }
            for pid in left {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its mount namespace went with its last process, and the
        // container mounts with it.
        let removed = Command::new("userdel").args(["--remove", &self.name]).output();
        if let Ok(out) = removed
            && !out.status.success()
        {
            eprintln!("userdel {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("remove {}: {e}", self.dir.display());
        }
    }
}

fn wait_output(mut child: Child, limit: Duration) -> Ran {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ran::from(child.wait_with_output().unwrap())
}

fn user_ns(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap()
}

#[test]
fn rootless_toted_maps_the_users_ranges_and_joins_its_namespace_again_after_a_restart() {
    let mut user = User::create(true);
    user.start_toted(&[]);
    let start = user.range.unwrap();
    let info = user.tote(&["info"]);
    let text = info.ok();
    assert!(text.contains(" Rootless: true\n"), "{text}");
    assert!(!text.contains("Cgroup Parent"), "containers get no cgroup: {text}");
    let map = |own| format!("0-0 -> {own}-{own}, 1-{RANGE} -> {start}-{}", start + RANGE - 1);
    assert!(text.contains(&format!(" UID Map: {}\n", map(user.uid))), "{text}");
    assert!(text.contains(&format!(" GID Map: {}\n", map(user.gid))), "{text}");
    assert!(text.contains(&format!(" Tote Root Dir: {}\n", user.data_root().display())), "{text}");
    assert!(text.contains(&format!(" Tote State Dir: {}\n", user.state_dir().display())), "{text}");
    assert!(user.log().contains("privilege=rootless"), "the startup line says so:\n{}", user.log());

    let holder = user.holder_pid();
    let ns = user_ns(holder);
    assert_ne!(ns, user_ns(std::process::id()), "a user namespace of its own");
    assert_eq!(user_ns(user.toted_pid()), ns, "toted is in the holder's namespace");
    let uid_map = std::fs::read_to_string(format!("/proc/{holder}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &user.uid.to_string(), "1", "1", &start.to_string(), &RANGE.to_string()],
        "{uid_map}"
    );

    // A second toted on the same state dir stops before touching it.
    let second = user.toted_fails(&[], &[]);
    let lock = user.state_dir().join("toted.lock");
    assert!(
        second.stderr.contains("another toted") && second.stderr.contains(&lock.display().to_string()),
        "{second:?}"
    );
    assert!(second.stderr.contains(&user.toted_pid().to_string()), "it names the one running: {second:?}");

    user.stop_toted();
    assert_eq!(user_ns(holder), ns, "the holder outlives toted");
    user.start_toted(&[]);
    assert_eq!(user.holder_pid(), holder, "no second holder");
    assert_eq!(user_ns(user.toted_pid()), ns, "the restarted toted joined the same user namespace");
    assert!(user.tote(&["info"]).ok().contains(&format!(" UID Map: {}\n", map(user.uid))));
}

#[test]
fn rootless_containers_run_and_survive_a_toted_restart() {
    let mut user = User::create(true);
    let built = user.command("tote-image").arg("--root").arg(user.data_root()).arg("busybox").output().unwrap();
    assert!(built.status.success(), "build busybox: {}", String::from_utf8_lossy(&built.stderr));
    user.start_toted(&[]);
    let ran = user.tote(&["run", "--rm", "--network", "none", "busybox", "sh", "-c", "echo hi; id -u"]);
    assert_eq!(ran.ok(), "hi\n0\n");
    // No cgroup, so no limit: said, not silently ignored.
    let limited = user.tote(&["run", "--rm", "--network", "none", "--memory", "64m", "busybox", "true"]);
    let err = limited.fails(125);
    assert!(err.contains("--memory") && err.contains("rootless"), "{err}");

    // Files of other ids land in the subordinate range on the host.
    let start = user.range.unwrap();
    user.tote(&["volume", "create", "vol"]).ok();
    let script = "echo x > /v/f && chown 1000:1000 /v/f && stat -c %u:%g /v/f";
    let ran = user.tote(&["run", "--rm", "--network", "none", "-v", "vol:/v", "busybox", "sh", "-c", script]);
    assert_eq!(ran.ok(), "1000:1000\n");
    let path = user.tote(&["volume", "inspect", "-f", "{{.Mountpoint}}", "vol"]).ok().trim().to_string();
    let meta = std::fs::metadata(Path::new(&path).join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (start + 999, start + 999));

    user.tote(&["run", "-d", "--name", "keep", "--network", "none", "busybox", "sleep", "1000"]).ok();
    user.stop_toted();
    user.start_toted(&[]);
    assert!(user.tote(&["ps"]).ok().contains("keep"), "live restore");
    assert_eq!(user.tote(&["exec", "keep", "echo", "still"]).ok(), "still\n");
    user.tote(&["rm", "-f", "keep"]).ok();
    assert!(!user.tote(&["ps", "-a"]).ok().contains("keep"));
}

#[test]
fn a_user_without_a_subordinate_range_is_told_about_etc_subuid_unless_single_id() {
    let mut user = User::create(false);
    let refused = user.toted_fails(&[], &[]);
    assert!(refused.stderr.contains("/etc/subuid") && refused.stderr.contains(&user.name), "{refused:?}");
    assert!(refused.stderr.contains("--single-id"), "it says what else to do: {refused:?}");

    // Asked for, one id is enough.
    user.start_toted(&["--single-id"]);
    let info = user.tote(&["info"]);
    assert!(info.ok().contains(&format!(" UID Map: 0-0 -> {0}-{0}\n", user.uid)), "{info:?}");
    assert!(user.log().contains("rootless (single id)"), "{}", user.log());
}

#[test]
fn missing_newuidmap_and_runtime_dir_are_named() {
    let user = User::create(true);
    // No newuidmap on PATH, as where Debian's uidmap is not installed.
    let refused = user.toted_fails(&[], &[("PATH", "/nonexistent")]);
    assert!(refused.stderr.contains("newuidmap") && refused.stderr.contains("uidmap"), "{refused:?}");
    assert!(!user.state_dir().join("ns-holder.pid").exists(), "no holder recorded");
    assert!(user.processes().is_empty(), "the half-made holder is gone: {:?}", user.processes());

    if Path::new(&format!("/run/user/{}", user.uid)).exists() {
        return; // toted would take that as the runtime directory
    }
    let mut command = user.command("toted");
    command.env_remove("XDG_RUNTIME_DIR");
    let out = wait_output(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(), LONG);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("XDG_RUNTIME_DIR") && out.stderr.contains(&format!("/run/user/{}", user.uid)),
        "{out:?}"
    );
}

const LONG: Duration = Duration::from_secs(20);
