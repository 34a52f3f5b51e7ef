//! A rootless toted, as an ordinary user these tests create (with
//! subordinate id ranges in /etc/subuid and /etc/subgid) and remove, with
//! private XDG directories: the user namespace it makes and joins again
//! after a restart, its maps in `tote info`, containers across a restart,
//! the default network (slirp4netns, or pasta when configured: a server on
//! the host's loopback reached from a container, `-p` on the host's
//! loopback, the helper process gone with the container and kept across a
//! restart), containers' roots on fuse-overlayfs (`[storage]
//! rootless_overlay`: writes, deletions of image files and an upper
//! layer's whiteouts hidden, the mount and its process kept across a
//! restart and gone with `rm`), limits in a delegated cgroup v2 subtree, a
//! killed namespace holder replaced, and the clear errors (no range, no
//! newuidmap, no fuse-overlayfs, a second toted, no XDG_RUNTIME_DIR, a port
//! below net.ipv4.ip_unprivileged_port_start); the run flags as rootless
//! podman answers them: host devices the user may open bound in (others
//! refused naming --device), --privileged and --cap-add giving every
//! capability of the user namespace, --security-opt as root, --network
//! host as the host's.
//! Run as root: creating users needs it.

#[path = "support/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use daemon::Ran;

/// /etc/subuid and /etc/subgid are shared: one test edits them at a time.
static SUBID_FILES: Mutex<()> = Mutex::new(());
/// ... and one test process (another checkout's suite may run alongside):
/// they and the modes of /dev/net/tun and /dev/fuse are put back by whoever changed them, so
/// no two may interleave.
const HOST_LOCK: &str = "/tmp/tote-rootless-tests.lock";

/// An exclusive flock on [`HOST_LOCK`], held while a User lives (released
/// when dropped).
struct HostLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl HostLock {
    fn take() -> Self {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(HOST_LOCK).unwrap();
        let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive);
        Self(locked.unwrap_or_else(|(_, e)| panic!("flock {HOST_LOCK}: {e}")))
    }
}
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

/// A device usable by every user (crw-rw-rw-, udev's default rule for
/// /dev/net/tun, which user-mode networking needs, and for /dev/fuse,
/// which fuse-overlayfs needs); a host without udev may have it 0600. The
/// mode it had is put back on drop. One test at a time changes it (held
/// under the subordinate id files' lock, as a User holds it).
struct DeviceAccess(&'static str, Option<u32>);

impl DeviceAccess {
    fn ensure(path: &'static str) -> Self {
        // Not there (the cgroup v2 VM has no tun module loaded): the
        // tests that need it say so themselves; the others need none.
        let Ok(meta) = std::fs::metadata(path) else { return Self(path, None) };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o006 == 0o006 {
            return Self(path, None);
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        Self(path, Some(mode))
    }
}

impl Drop for DeviceAccess {
    fn drop(&mut self) {
        if let Some(mode) = self.1 {
            let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(mode));
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
    // Dropped last: the files and the device's mode are restored after the
    // user is gone, and before the next test may take the lock.
    _tun: DeviceAccess,
    _subids: SubidBackup,
    _host: HostLock,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl User {
    /// A new user; with `subids`, a range of 65536 uids and gids for it.
    fn create(subids: bool) -> Self {
        assert!(nix::unistd::Uid::effective().is_root(), "the rootless tests create users and need root");
        let lock = SUBID_FILES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let host = HostLock::take();
        let backup = SubidBackup::take();
        let tun = DeviceAccess::ensure("/dev/net/tun");
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
            _tun: tun,
            _subids: backup,
            _host: host,
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

    /// The offline busybox image in the user's store (toted not running).
    fn build_busybox(&self) {
        let built = self.command("tote-image").arg("--root").arg(self.data_root()).arg("busybox").output().unwrap();
        assert!(built.status.success(), "build busybox: {}", String::from_utf8_lossy(&built.stderr));
    }

    /// A PATH dir with newuidmap and newgidmap and nothing else (no
    /// fuse-overlayfs).
    fn path_without_fuse_overlayfs(&self) -> PathBuf {
        let path = self.dir.join("path");
        std::fs::create_dir_all(&path).unwrap();
        for helper in ["newuidmap", "newgidmap"] {
            let found = ["/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(helper)).find(|p| p.exists()).unwrap();
            std::os::unix::fs::symlink(found, path.join(helper)).unwrap();
        }
        path
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
        let mut command = self.command("toted");
        command.args(args);
        self.spawn_toted(command);
    }

    fn spawn_toted(&mut self, mut command: Command) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("toted.log")).unwrap();
        let child = command.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
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
    assert!(text.contains(" Storage Driver: overlayfs\n"), "the kernel can here: {text}");
    assert!(user.log().contains("the kernel mounts overlayfs with userxattr"), "{}", user.log());
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
    user.build_busybox();
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

    let id = user.tote(&["run", "-d", "--name", "keep", "busybox", "sleep", "1000"]).ok().trim().to_string();
    user.stop_toted();
    user.start_toted(&[]);
    assert!(user.tote(&["ps"]).ok().contains("keep"), "live restore");
    assert_eq!(user.tote(&["exec", "keep", "echo", "still"]).ok(), "still\n");
    user.tote(&["rm", "-f", "keep"]).ok();
    assert!(!user.tote(&["ps", "-a"]).ok().contains("keep"));

    // Nothing of it is left: processes (monitor, container, network
    // helper), mounts, state and data files.
    let (toted, holder) = (i32::try_from(user.toted_pid()).unwrap(), i32::try_from(user.holder_pid()).unwrap());
    let deadline = Instant::now() + LONG;
    loop {
        let left: Vec<i32> = user.processes().into_iter().filter(|p| ![toted, holder].contains(p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left after rm -f: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mounts = std::fs::read_to_string(format!("/proc/{holder}/mountinfo")).unwrap();
    assert!(!mounts.contains(&id[..12]), "mounts left after rm -f:\n{mounts}");
    let state = user.state_dir();
    for dir in [state.join("m"), state.join("netns"), state.join("usernet"), user.data_root().join("containers")] {
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(entries.is_empty(), "{} after rm -f: {entries:?}", dir.display());
    }
    let runtime: Vec<_> = std::fs::read_dir(state.join("runtime")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!runtime.iter().any(|name| name.to_string_lossy().contains(&id[..12])), "{runtime:?}");
}

#[test]
fn a_user_without_a_subordinate_range_is_told_about_etc_subuid_unless_single_id() {
    let mut user = User::create(false);
    let refused = user.toted_fails(&[], &[]);
    assert!(refused.stderr.contains("/etc/subuid") && refused.stderr.contains(&user.name), "{refused:?}");
    assert!(refused.stderr.contains("--single-id"), "it says what else to do: {refused:?}");

    // Asked for, one id is enough.
    user.build_busybox();
    user.start_toted(&["--single-id"]);
    let info = user.tote(&["info"]);
    assert!(info.ok().contains(&format!(" UID Map: 0-0 -> {0}-{0}\n", user.uid)), "{info:?}");
    assert!(user.log().contains("rootless (single id)"), "{}", user.log());
    // Root runs; any other user is refused naming the flag.
    assert_eq!(user.tote(&["run", "--rm", "--network", "none", "busybox", "id", "-u"]).ok(), "0\n");
    let err = user.tote(&["run", "--rm", "--network", "none", "-u", "1", "busybox", "true"]).fails(125).to_string();
    assert!(err.contains("--user 1: uid 1 is not mapped") && err.contains("--single-id"), "{err}");
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

/// A cgroup v2 subtree delegated to a user as systemd's `Delegate=yes`
/// does it (the directory, `cgroup.procs`, `cgroup.subtree_control` and
/// `cgroup.threads` theirs), with `supervisor` for toted inside, under an
/// outer cgroup that hands it only `controllers`. Everything in it is
/// killed and the cgroups removed on drop (cgroup.kill: only this test's
/// processes are in there).
struct DelegatedCgroup {
    outer: PathBuf,
}

impl DelegatedCgroup {
    fn new(user: &User, controllers: &[&str]) -> Self {
        let outer = PathBuf::from(format!("/sys/fs/cgroup/{}.outer", user.name));
        std::fs::create_dir(&outer).unwrap();
        let made = Self { outer };
        for controller in controllers {
            std::fs::write(made.outer.join("cgroup.subtree_control"), format!("+{controller}")).unwrap();
        }
        let base = made.base();
        std::fs::create_dir_all(base.join("supervisor")).unwrap();
        let owner = (Some(nix::unistd::Uid::from_raw(user.uid)), Some(nix::unistd::Gid::from_raw(user.gid)));
        for dir in [base.clone(), base.join("supervisor")] {
            for file in ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
                nix::unistd::chown(&dir.join(file), owner.0, owner.1).unwrap();
            }
        }
        made
    }

    fn base(&self) -> PathBuf {
        self.outer.join("delegated")
    }

    /// The cgroup path (as /proc/PID/cgroup has it) of `dir`.
    fn cgroup_path(dir: &Path) -> String {
        format!("/{}", dir.strip_prefix("/sys/fs/cgroup").unwrap().display())
    }
}

impl Drop for DelegatedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.outer.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Deepest first; a cgroup goes once its last process is reaped.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.outer.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.outer.exists() {
            eprintln!("could not remove cgroup {}", self.outer.display());
        }
    }
}

impl User {
    /// Starts the user's toted with its process in `cgroup` first (as
    /// systemd's DelegateSubgroup= puts a service's main process).
    fn start_toted_in(&mut self, cgroup: &Path, args: &[&str]) {
        let inner = self.command("toted");
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(cgroup.join("cgroup.procs"))
            .arg(inner.get_program())
            .args(inner.get_args())
            .args(args)
            .env_clear()
            .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(Stdio::null());
        self.spawn_toted(command);
    }
}

fn cgroup_v2_host() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Limits on a delegated cgroup v2 subtree (run in the cgroup v2 VM by
/// tests/run); on a v1 or hybrid host, the reason there are none.
#[test]
fn rootless_limits_are_enforced_in_a_delegated_cgroup_v2_subtree() {
    let mut user = User::create(true);
    // In the VM the data dir is a tmpfs, which has no user xattrs before
    // Linux 6.6: toted takes fuse-overlayfs there (tests/run loads fuse).
    let _fuse = DeviceAccess::ensure("/dev/fuse");
    user.build_busybox();
    if !cgroup_v2_host() {
        user.start_toted(&[]);
        let info = user.tote(&["info"]);
        assert!(info.stdout.contains("no limits") && info.stdout.contains("v1"), "{info:?}");
        let refused = user.tote(&["run", "--rm", "--network", "none", "--pids-limit", "5", "busybox", "true"]);
        let err = refused.fails(125);
        assert!(err.contains("--pids-limit") && err.contains("delegated cgroup"), "{err}");
        return;
    }
    let cgroup = DelegatedCgroup::new(&user, &["memory", "pids"]);
    let base = cgroup.base();
    user.start_toted_in(&base.join("supervisor"), &[]);
    assert!(user.log().contains("delegated"), "{}", user.log());
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", user.toted_pid())).unwrap();
    assert_eq!(own.trim(), format!("0::{}/supervisor", DelegatedCgroup::cgroup_path(&base)));
    let parent = format!("{}/containers", DelegatedCgroup::cgroup_path(&base));
    let info = user.tote(&["info"]);
    assert!(info.ok().contains(&format!(" Cgroup Parent: {parent}\n")), "{info:?}");
    assert!(!info.stdout.contains("no limits"), "{info:?}");

    // Limits written, and enforced: pids.
    let id = user
        .tote(&["run", "-d", "--network", "none", "--memory", "32m", "--pids-limit", "8", "busybox", "sleep", "1000"])
        .ok()
        .trim()
        .to_string();
    let dir = base.join("containers").join(&id);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(read("memory.max").trim(), (32u64 << 20).to_string());
    assert_eq!(read("pids.max").trim(), "8");
    let pid = user.tote(&["inspect", "-f", "{{.State.Pid}}", &id]).ok().trim().to_string();
    let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(in_cgroup.trim(), format!("0::{parent}/{id}"));
    let forks = "i=0; while [ $i -lt 20 ]; do sleep 100 & i=$((i+1)); done; wait";
    let ran = user.tote(&["exec", &id, "sh", "-c", forks]);
    assert!(ran.stderr.contains("can't fork"), "the ninth process is refused: {ran:?}");
    let events = read("pids.events");
    assert!(events.lines().any(|l| l.strip_prefix("max ").is_some_and(|n| n != "0")), "{events}");
    let stats = user.tote(&["stats", "--no-stream", &id]).ok().to_string();
    assert!(stats.contains("32MiB"), "the limit in stats: {stats}");

    // ... and memory: the OOM killer, recorded.
    let hog = user.tote(&[
        "run",
        "--name",
        "hog",
        "--network",
        "none",
        "--memory",
        "32m",
        "--memory-swap",
        "32m",
        "busybox",
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail",
    ]);
    assert_eq!(hog.code, 137, "{hog:?}");
    assert_eq!(user.tote(&["inspect", "-f", "{{.State.OOMKilled}}", "hog"]).ok().trim(), "true");
    user.tote(&["rm", "hog"]).ok();

    // What is not delegated is refused, naming the controller.
    let cpu = user.tote(&["run", "--rm", "--network", "none", "--cpus", "0.5", "busybox", "true"]);
    let err = cpu.fails(125);
    assert!(err.contains("--cpus") && err.contains("cpu controller") && err.contains("memory, pids"), "{err}");

    // Live restore in the same cgroups, then nothing left.
    user.stop_toted();
    user.start_toted_in(&base.join("supervisor"), &[]);
    user.tote(&["update", "--pids-limit", "16", &id]).ok();
    assert_eq!(read("pids.max").trim(), "16", "update after a restart");
    user.tote(&["pause", &id]).ok();
    assert_eq!(read("cgroup.freeze").trim(), "1");
    assert_eq!(user.tote(&["inspect", "-f", "{{.State.Status}}", &id]).ok().trim(), "paused");
    user.tote(&["unpause", &id]).ok();
    assert_eq!(user.tote(&["exec", &id, "echo", "thawed"]).ok(), "thawed\n");
    user.tote(&["rm", "-f", &id]).ok();
    assert!(!dir.exists(), "the container's cgroup is removed with it");
    drop(cgroup);
}

/// SIGKILL (the only signal it takes) and wait until it is gone.
fn kill_and_wait(pid: u32) {
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + LONG;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "pid {pid} did not go");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_namespace_holder_is_replaced_in_the_namespaces_its_containers_still_run_in() {
    let mut user = User::create(true);
    user.build_busybox();
    user.start_toted(&[]);
    let id = user.tote(&["run", "-d", "--network", "none", "busybox", "sleep", "1000"]).ok().trim().to_string();
    let pid: u32 = user.tote(&["inspect", "-f", "{{.State.Pid}}", &id]).ok().trim().parse().unwrap();
    let holder = user.holder_pid();
    let (userns, mntns) = (user_ns(holder), std::fs::read_link(format!("/proc/{holder}/ns/mnt")).unwrap());

    // Killed while toted runs, which notices nothing; its next start would
    // make new namespaces, where the container's mounts are not.
    kill_and_wait(holder);
    user.stop_toted();
    user.start_toted(&[]);
    let adopted = user.holder_pid();
    assert_ne!(adopted, holder);
    assert_eq!(user_ns(adopted), userns, "the new holder keeps the namespace the container runs in");
    assert_eq!(std::fs::read_link(format!("/proc/{adopted}/ns/mnt")).unwrap(), mntns);
    assert_eq!(user_ns(user.toted_pid()), userns);
    assert_eq!(user_ns(pid), userns);
    assert!(user.log().contains("holder was gone"), "{}", user.log());
    assert_eq!(user.tote(&["exec", &id, "echo", "still"]).ok(), "still\n");
    assert_eq!(user.tote(&["run", "--rm", "--network", "none", "busybox", "echo", "new"]).ok(), "new\n");
    user.tote(&["rm", "-f", &id]).ok();
    let mounts = std::fs::read_to_string(format!("/proc/{adopted}/mountinfo")).unwrap();
    assert!(!mounts.contains(&id), "the container's root is unmounted in the adopted namespace:\n{mounts}");

    // With nothing running in them, a lost holder's namespaces are simply
    // made anew.
    kill_and_wait(adopted);
    user.stop_toted();
    user.start_toted(&[]);
    assert_ne!(user_ns(user.holder_pid()), userns);
    assert_eq!(user.tote(&["run", "--rm", "--network", "none", "busybox", "echo", "fresh"]).ok(), "fresh\n");
}

const LONG: Duration = Duration::from_secs(20);

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET / from a server on the host's 127.0.0.1:port: its body, or why not.
fn http_get(port: u16) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(|e| format!("read: {e}"))?;
    reply.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).ok_or_else(|| format!("no body in {reply:?}"))
}

/// GET / until it answers (the server starts after `run -d` returns).
#[track_caller]
fn http_get_soon(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(port) {
            Ok(body) if !body.is_empty() => return body,
            other if Instant::now() > deadline => panic!("nothing answered on 127.0.0.1:{port}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A busybox httpd serving `text` on port 80 of a container publishing it
/// as 127.0.0.1:`port`.
fn run_web(user: &User, name: &str, port: u16, text: &str) -> String {
    let publish = format!("127.0.0.1:{port}:80");
    let script = format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www");
    let id = user
        .tote(&["run", "-d", "--name", name, "-p", &publish, "busybox", "sh", "-c", &script])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id:?}");
    id
}

/// The network helper toted recorded for the container `id` (the pid file
/// of its sandbox, `pid start`), checked to be that program and running.
#[track_caller]
fn helper_of(user: &User, id: &str, program: &str) -> (i32, u64) {
    recorded(user, &id[..12], program)
}

/// Its port forwarder (tote-shim port-forward), likewise.
#[track_caller]
fn forwarder_of(user: &User, id: &str) -> (i32, u64) {
    recorded(user, &format!("{}.fwd", &id[..12]), "tote-shim")
}

#[track_caller]
fn recorded(user: &User, name: &str, program: &str) -> (i32, u64) {
    let file = user.state_dir().join("usernet").join(name);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    let (pid, start) = (i32::try_from(fields.next().unwrap()).unwrap(), fields.next().expect("a start time"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let comm = &stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()];
    // pasta runs as passt.avx2 (or passt) after re-executing itself.
    assert!(comm == program || (program == "pasta" && comm.starts_with("passt")), "pid {pid} is {comm}");
    assert!(helper_alive(pid, start), "{program} (pid {pid}) runs");
    (pid, start)
}

/// Whether that process (pid and start time) still runs: a zombie left for
/// init to reap holds nothing and does not count.
fn helper_alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
    fields[0] != "Z" && fields[19].parse::<u64>().ok() == Some(start)
}

#[test]
fn rootless_default_network_reaches_the_hosts_loopback_and_publishes_ports() {
    let mut user = User::create(true);
    user.build_busybox();
    user.start_toted(&[]);
    let info = user.tote(&["info"]);
    assert!(info.ok().contains(" Network Driver: slirp4netns ("), "{info:?}");

    // A server on the host's 127.0.0.1, reached through the gateway: it
    // reads what the container sends (nc then closes its side) and answers.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serving = std::thread::spawn(move || {
        let (mut stream, peer) = server.accept().unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        stream.write_all(b"pong-from-the-host\n").unwrap();
        (got, peer)
    });
    let script = format!("ip route; echo ping-from-the-container | nc 10.0.2.2 {port}");
    let ran = user.tote(&["run", "--rm", "busybox", "sh", "-c", &script]);
    let out = ran.ok();
    assert!(out.contains("default via 10.0.2.2 dev eth0"), "{out}");
    assert!(out.ends_with("pong-from-the-host\n"), "the answer, once: {out:?}");
    let (got, peer) = serving.join().unwrap();
    assert_eq!(got, "ping-from-the-container\n");
    assert!(peer.ip().is_loopback(), "{peer}");

    // -p on the host's loopback, served by busybox httpd.
    let port = free_port();
    let id = run_web(&user, "web", port, "hello-from-rootless");
    assert_eq!(http_get_soon(port), "hello-from-rootless\n");
    assert_eq!(user.tote(&["port", "web"]).ok(), format!("80/tcp -> 127.0.0.1:{port}\n"));
    // Other containers reach it at its address on the bridge (eth1).
    let ip = user.tote(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]).ok().trim().to_string();
    assert!(ip.starts_with("10.88."), "an address on the bridge: {ip}");
    let fetch = format!("ip -4 addr show eth1; ip route; wget -qO- http://{ip}/");
    let fetched = user.tote(&["run", "--rm", "busybox", "sh", "-c", &fetch]).ok().to_string();
    assert!(fetched.ends_with("hello-from-rootless\n"), "{fetched}");
    assert!(fetched.contains("default via 10.0.2.2 dev eth0"), "the way out is still the helper's: {fetched}");
    assert!(fetched.contains("inet 10.88."), "{fetched}");
    let taken = user.tote(&["run", "--rm", "-p", &format!("127.0.0.1:{port}:80"), "busybox", "true"]);
    assert!(taken.fails(125).contains("port is already allocated"), "{taken:?}");

    // The helper and the port forwarder outlive toted, and the next one
    // keeps them.
    let (pid, start) = helper_of(&user, &id, "slirp4netns");
    let forwarder = forwarder_of(&user, &id);
    user.stop_toted();
    assert_eq!(http_get(port), Ok("hello-from-rootless\n".into()), "served while toted is down");
    user.start_toted(&[]);
    assert_eq!(http_get_soon(port), "hello-from-rootless\n");
    assert_eq!(helper_of(&user, &id, "slirp4netns"), (pid, start), "the same helper");
    assert_eq!(forwarder_of(&user, &id), forwarder, "the same forwarder");
    // Killed meanwhile, each is started again by the next toted.
    for (victim, what) in [(forwarder, "the forwarder"), ((pid, start), "the helper")] {
        user.stop_toted();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.0), nix::sys::signal::Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + LONG;
        while helper_alive(victim.0, victim.1) {
            assert!(Instant::now() < deadline, "{what} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
        if what == "the forwarder" {
            assert!(http_get(port).is_err(), "nothing serves the port without the forwarder");
        }
        user.start_toted(&[]);
        assert_eq!(http_get_soon(port), "hello-from-rootless\n", "after {what} was killed");
    }
    let (again, again_start) = helper_of(&user, &id, "slirp4netns");
    assert_ne!((again, again_start), (pid, start));
    let after = user.tote(&["run", "--rm", "busybox", "wget", "-qO-", &format!("http://{ip}/")]);
    assert_eq!(after.ok(), "hello-from-rootless\n", "the bridge after toted's restarts");
    let forwarder = forwarder_of(&user, &id);

    // rm -f: the forwarder goes, and the port with it, before rm returns;
    // the helper is killed too (toted does not wait out its exit, which
    // unregisters its tap device).
    user.tote(&["rm", "-f", "web"]).ok();
    assert!(!helper_alive(forwarder.0, forwarder.1), "forwarder {} still runs after rm -f", forwarder.0);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still answers");
    let deadline = Instant::now() + Duration::from_secs(5);
    while helper_alive(again, again_start) {
        assert!(Instant::now() < deadline, "helper {again} still runs 5 s after rm -f");
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = std::fs::read_dir(user.state_dir().join("usernet")).unwrap().count();
    assert_eq!(left, 0, "the helper's pid file, log and socket are gone");
    let lease = user.state_dir().join("cni/ipam/tote").join(&ip);
    assert!(!lease.exists(), "the bridge address is released: {}", lease.display());
}

#[test]
fn rootless_ports_below_the_unprivileged_start_are_refused_naming_the_sysctl() {
    let start: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap().trim().parse().unwrap();
    if start <= 1 {
        eprintln!("net.ipv4.ip_unprivileged_port_start is {start}: every port is unprivileged here; nothing to refuse");
        return;
    }
    let mut user = User::create(true);
    user.build_busybox();
    user.start_toted(&[]);
    let low = (start - 1).min(80);
    let refused = user.tote(&["run", "--rm", "-p", &format!("127.0.0.1:{low}:80"), "busybox", "true"]);
    let err = refused.fails(125);
    assert!(err.contains(&format!("port {low} is below net.ipv4.ip_unprivileged_port_start ({start})")), "{err}");
    assert!(user.tote(&["ps", "-a", "-q"]).ok().is_empty(), "nothing was created");
    // Published with --network none, ports are dropped with docker's
    // warning, and nothing is refused.
    let none = user.tote(&["run", "--rm", "--network", "none", "-p", &format!("{low}:80"), "busybox", "true"]);
    assert_eq!(none.code, 0, "{none:?}");
}

#[test]
fn rootless_pasta_publishes_and_goes_with_its_container() {
    if !Path::new("/usr/bin/pasta").exists() {
        panic!("pasta is not installed: apt-get install passt (in scripts/packages)");
    }
    let mut user = User::create(true);
    user.build_busybox();
    let config = user.dir.join("config/tote");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("toted.toml"), "[network]\nrootless_driver = \"pasta\"\n").unwrap();
    std::os::unix::fs::chown(&config, Some(user.uid), Some(user.gid)).unwrap();
    user.start_toted(&[]);
    let info = user.tote(&["info"]);
    assert!(info.ok().contains(" Network Driver: pasta ("), "{info:?}");

    // The host's loopback through the gateway. The container never closes
    // its side first (nc's stdin stays open until the server has closed):
    // Debian 12's pasta mishandles that (see network::usernet).
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = server.local_addr().unwrap().port();
    let serving = std::thread::spawn(move || {
        let (mut stream, _) = server.accept().unwrap();
        stream.write_all(b"pong-via-pasta\n").unwrap();
    });
    let ran = user.tote(&["run", "--rm", "busybox", "sh", "-c", &format!("sleep 2 | nc 10.0.2.2 {host_port}")]);
    assert_eq!(ran.ok(), "pong-via-pasta\n");
    serving.join().unwrap();

    let port = free_port();
    let id = run_web(&user, "web", port, "hello-from-pasta");
    assert_eq!(http_get_soon(port), "hello-from-pasta\n");
    let (pid, start) = helper_of(&user, &id, "pasta");
    user.stop_toted();
    user.start_toted(&[]);
    assert_eq!(http_get_soon(port), "hello-from-pasta\n");
    assert_eq!(helper_of(&user, &id, "pasta"), (pid, start), "the same pasta after a restart");
    user.tote(&["rm", "-f", "web"]).ok();
    assert!(!helper_alive(pid, start), "pasta {pid} still runs after rm -f");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still answers");
}

/// A user with busybox in their store and their toted running.
fn user_with_busybox() -> User {
    let mut user = User::create(true);
    user.build_busybox();
    user.start_toted(&[]);
    user
}

/// A character device node at `path` with the numbers of /dev/zero (1:5).
fn zero_node(path: &Path, owner: u32, group: u32, mode: u32) {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 5)).unwrap();
    std::os::unix::fs::chown(path, Some(owner), Some(group)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn rootless_devices_the_user_may_open_are_bound_and_others_refused_naming_the_flag() {
    let user = user_with_busybox();
    // Nodes of /dev/zero's numbers, in a directory the user may search.
    let (mine, roots, readable) = (user.dir.join("mine"), user.dir.join("roots"), user.dir.join("readable"));
    zero_node(&mine, user.uid, user.gid, 0o600);
    zero_node(&roots, 0, 0, 0o600);
    zero_node(&readable, 0, 0, 0o644);

    // The user's own node: the same device inside, read and written.
    let device = format!("{}:/dev/myzero", mine.display());
    let script = "stat -c %t:%T /dev/myzero; head -c 4 /dev/myzero | od -An -tx1; echo x > /dev/myzero && echo wrote";
    let ran = user.tote(&["run", "--rm", "--network", "none", "--device", &device, "busybox", "sh", "-c", script]);
    let lines: Vec<&str> = ran.ok().lines().map(str::trim).collect();
    assert_eq!(lines, ["1:5", "00 00 00 00", "wrote"], "{ran:?}");

    // Root's 0600 node cannot be opened by the user: refused up front,
    // naming the flag and the node, and nothing is created.
    let device = format!("{}:/dev/z", roots.display());
    let refused = user.tote(&["run", "--rm", "--network", "none", "--device", &device, "busybox", "true"]);
    let err = refused.fails(125);
    assert!(err.contains(&format!("--device {}", roots.display())) && err.contains("cannot read and write"), "{err}");
    assert!(err.contains("mode 600, owner host uid not the user's, gid not the user's"), "{err}");
    assert!(user.tote(&["ps", "-a", "-q"]).ok().is_empty(), "nothing was created");

    // Read-only access is enough for `r`, with a warning that the
    // permissions are the node's own (no device cgroup rootless).
    let device = format!("{}:/dev/z:r", readable.display());
    let script = "head -c 2 /dev/z | od -An -tx1";
    let ran = user.tote(&["run", "--rm", "--network", "none", "--device", &device, "busybox", "sh", "-c", script]);
    assert_eq!(ran.ok().trim(), "00 00");
    assert!(ran.stderr.contains("not enforced by a rootless toted"), "{ran:?}");
    let device = format!("{}:/dev/z:rw", readable.display());
    let err =
        user.tote(&["run", "--rm", "--network", "none", "--device", &device, "busybox", "true"]).fails(125).to_string();
    assert!(err.contains("--device") && err.contains("cannot read and write"), "{err}");

    // Not a device at all.
    let device = format!("{}:/dev/z", user.dir.join("bin").display());
    let err =
        user.tote(&["run", "--rm", "--network", "none", "--device", &device, "busybox", "true"]).fails(125).to_string();
    assert!(err.contains("--device") && err.contains("not a device node"), "{err}");
}

/// The capability and seccomp lines of /proc/self/status.
fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("no {field} in {status}")).trim()
}

#[test]
fn rootless_privileged_caps_and_security_opts_give_what_the_user_namespace_allows() {
    let user = user_with_busybox();
    let status = "cat /proc/self/status; echo keys=$(ls -l /proc/keys | cut -c1); grep ' /sys ' /proc/mounts";
    let run = |flags: &[&str], script: &str| {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(flags);
        args.extend(["busybox", "sh", "-c", script]);
        user.tote(&args)
    };
    // Every capability the kernel has: a new user namespace's root gets
    // them all there, whatever the host withholds from its own root.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
    let all = format!("{:016x}", (1u64 << (last + 1)) - 1);

    // --privileged: every capability (in the user namespace), no seccomp,
    // nothing masked, /sys writable.
    let privileged = run(&["--privileged"], status);
    let out = privileged.ok();
    assert_eq!(status_field(out, "CapEff:"), all, "{out}");
    assert_eq!(status_field(out, "Seccomp:"), "0", "{out}");
    assert_eq!(status_field(out, "keys="), "-", "/proc/keys is not masked (a file): {out}");
    assert!(out.contains(" /sys sysfs rw,"), "{out}");
    // ... and the host's devices its user may open (bound: /dev/net/tun
    // is 0666 for these tests), not the others.
    let devices = run(&["--privileged"], "ls /dev; stat -c %t:%T /dev/net/tun");
    let seen: Vec<&str> = devices.ok().lines().collect();
    assert_eq!(seen.last(), Some(&"a:c8"), "/dev/net/tun is the host's 10:200: {devices:?}");
    for (name, mode) in daemon::host_top_devices() {
        let usable = mode & 0o006 != 0;
        assert_eq!(seen.contains(&name.as_str()), usable, "/dev/{name} (mode {mode:o}) in the container: {seen:?}");
    }
    // The default: docker's capabilities, its seccomp profile, masked paths.
    let plain = run(&[], status);
    let out = plain.ok();
    assert_eq!(status_field(out, "CapEff:"), "00000000a80425fb", "{out}");
    assert_eq!(status_field(out, "Seccomp:"), "2", "{out}");
    assert_eq!(status_field(out, "keys="), "c", "/proc/keys is masked (/dev/null over it): {out}");
    assert!(out.contains(" /sys sysfs ro,"), "{out}");

    // --cap-add ALL is every capability; an added one is usable where the
    // user namespace owns what it governs (the container's network
    // namespace).
    assert_eq!(status_field(run(&["--cap-add", "ALL"], "cat /proc/self/status").ok(), "CapEff:"), all);
    let mtu = "ip link set lo mtu 1280 && cat /sys/class/net/lo/mtu";
    assert_eq!(run(&["--cap-add", "NET_ADMIN"], mtu).ok(), "1280\n");
    let denied = run(&[], mtu);
    assert_ne!(denied.code, 0, "without CAP_NET_ADMIN: {denied:?}");

    // --security-opt as root: unconfined, no-new-privileges, a profile
    // file read by toted as the user, an unknown option refused.
    let unconfined = run(&["--security-opt", "seccomp=unconfined"], "cat /proc/self/status");
    assert_eq!(status_field(unconfined.ok(), "Seccomp:"), "0");
    let nnp = run(&["--security-opt", "no-new-privileges"], "cat /proc/self/status");
    assert_eq!(status_field(nnp.ok(), "NoNewPrivs:"), "1");
    let profile = user.dir.join("profile.json");
    let rule = r#"{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}"#;
    std::fs::write(&profile, format!(r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{rule}]}}"#)).unwrap();
    let option = format!("seccomp={}", profile.display());
    let filtered = run(&["--security-opt", &option], "mkdir /tmp/d");
    assert!(filtered.fails(1).contains("Operation not permitted"), "the profile refuses mkdir: {filtered:?}");
    run(&[], "mkdir /tmp/d").ok();
    let err = run(&["--security-opt", "apparmor=x"], "true").fails(125).to_string();
    assert!(err.contains("--security-opt") && err.contains("apparmor"), "{err}");
}

#[test]
fn rootless_host_network_is_the_hosts_and_named_networks_are_refused() {
    let user = user_with_busybox();
    let mut host: Vec<String> =
        std::fs::read_dir("/sys/class/net").unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    host.sort();
    let ran = user.tote(&["run", "--rm", "--network", "host", "busybox", "sh", "-c", "ls /sys/class/net"]);
    let mut seen: Vec<String> = ran.ok().split_whitespace().map(str::to_string).collect();
    seen.sort();
    assert_eq!(seen, host, "the host's interfaces");
    let named = user.tote(&["run", "--rm", "--network", "mynet", "busybox", "true"]);
    let err = named.fails(125);
    assert!(err.contains("\"mynet\"") && err.contains("bridge, host or none"), "{err}");
}

#[test]
fn tote_image_as_the_user_uses_a_rootless_toteds_directories() {
    let mut user = User::create(true);
    // A registries.toml in the user's XDG config directory is read (here
    // refused: it is not TOML), not /etc/tote's.
    let config = user.dir.join("config/tote");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("registries.toml"), "not = [toml\n").unwrap();
    std::os::unix::fs::chown(&config, Some(user.uid), Some(user.gid)).unwrap();
    let refused = Ran::from(user.command("tote-image").arg("ls").output().unwrap());
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains(&config.join("registries.toml").display().to_string()), "{refused:?}");
    std::fs::remove_file(config.join("registries.toml")).unwrap();

    // Without --root, the store is the one the user's toted opens.
    let built = Ran::from(user.command("tote-image").arg("busybox").output().unwrap());
    assert_eq!(built.code, 0, "{built:?}");
    user.start_toted(&[]);
    assert!(user.tote(&["images"]).ok().contains("busybox"), "the image is in the rootless toted's store");
    assert_eq!(user.tote(&["run", "--rm", "--network", "none", "busybox", "echo", "ok"]).ok(), "ok\n");
}

#[test]
fn rootless_users_exec_and_update_work_or_name_the_unmapped_id() {
    let user = user_with_busybox();
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--network", "none"];
        all.extend_from_slice(args);
        user.tote(&all)
    };
    // Any id of the namespace's maps (0 and the 65536 of the range).
    assert_eq!(run(&["-u", "65536:65536", "busybox", "id", "-u"]).ok(), "65536\n");
    // One beyond: said before anything runs, naming the flag and the id.
    let err = run(&["-u", "70000", "busybox", "true"]).fails(125).to_string();
    assert!(err.contains("--user 70000: uid 70000 is not mapped") && err.contains("uids 0-0, 1-65536"), "{err}");
    let err = run(&["-u", "0:70000", "busybox", "true"]).fails(125).to_string();
    assert!(err.contains("gid 70000 is not mapped") && err.contains("/etc/subgid"), "{err}");
    assert!(user.tote(&["ps", "-a", "-q"]).ok().is_empty(), "nothing was created");

    user.tote(&["run", "-d", "--name", "sl", "--network", "none", "busybox", "sleep", "1000"]).ok();
    assert_eq!(user.tote(&["exec", "-u", "1000", "sl", "id", "-u"]).ok(), "1000\n");
    let err = user.tote(&["exec", "-u", "70000", "sl", "true"]).fails(125).to_string();
    assert!(err.contains("exec --user 70000: uid 70000 is not mapped"), "{err}");
    // exec --privileged: every capability of the user namespace.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
    let caps = user.tote(&["exec", "--privileged", "sl", "grep", "CapEff", "/proc/self/status"]);
    assert_eq!(caps.ok(), format!("CapEff:\t{:016x}\n", (1u64 << (last + 1)) - 1));
    // A restart policy is toted's, not the (absent) cgroup's.
    user.tote(&["update", "--restart", "always", "sl"]).ok();
    let policy = user.tote(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", "sl"]);
    assert_eq!(policy.ok().trim(), "always");
    user.tote(&["rm", "-f", "sl"]).ok();
}

/// The user's toted configured to mount containers' roots with
/// fuse-overlayfs (`[storage] rootless_overlay`), in the user's
/// `$XDG_CONFIG_HOME/tote/toted.toml`.
fn force_fuse_overlayfs(user: &User) {
    let dir = user.dir.join("config/tote");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("toted.toml"), "[storage]\nrootless_overlay = \"fuse-overlayfs\"\n").unwrap();
    for path in [&dir, &dir.join("toted.toml")] {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .unwrap();
    }
}

/// The user's fuse-overlayfs processes.
fn fuse_overlayfs_processes(user: &User) -> Vec<i32> {
    let comm = |pid: &i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    user.processes().into_iter().filter(|pid| comm(pid).trim_end() == "fuse-overlayfs").collect()
}

/// Fields 5 and 6 of /proc/PID/stat: the process group and the session.
fn group_and_session(pid: i32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// The fuse-overlayfs mounts in the holder's mount namespace (toted's).
fn fuse_mounts(user: &User) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{}/mountinfo", user.holder_pid())).unwrap();
    text.lines().filter(|l| l.contains(" - fuse.fuse-overlayfs ")).map(str::to_string).collect()
}

#[test]
fn rootless_fuse_overlayfs_roots_serve_containers_across_a_restart_and_go_with_rm() {
    let mut user = User::create(true);
    let _fuse = DeviceAccess::ensure("/dev/fuse");
    user.build_busybox();
    force_fuse_overlayfs(&user);
    user.start_toted(&[]);
    let info = user.tote(&["info"]).ok().to_string();
    assert!(info.contains(" Storage Driver: fuse-overlayfs\n"), "{info}");
    assert!(user.log().contains("rootless_overlay = \"fuse-overlayfs\" asks for it"), "why, logged:\n{}", user.log());
    assert!(fuse_overlayfs_processes(&user).is_empty(), "no mount before a container");

    user.tote(&["run", "-d", "--name", "keep", "--network", "none", "busybox", "sleep", "1000"]).ok();
    let id = user.tote(&["inspect", "-f", "{{.Id}}", "keep"]).ok().trim().to_string();
    let mounts = fuse_mounts(&user);
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert!(mounts[0].contains(&id), "the container's root: {mounts:?}");
    let fuse = fuse_overlayfs_processes(&user);
    assert_eq!(fuse.len(), 1, "one fuse-overlayfs for one root: {fuse:?}");
    let toted = i32::try_from(user.toted_pid()).unwrap();
    let (group, session) = group_and_session(fuse[0]);
    let (toted_group, toted_session) = group_and_session(toted);
    assert!(group != toted_group && session != toted_session, "fuse-overlayfs must not go with toted's session");

    // Writes land in the container's layer; an image file deleted is gone.
    let script = "echo hello > /made && rm /bin/ls && cat /made && test ! -e /bin/ls && echo deleted";
    assert_eq!(user.tote(&["exec", "keep", "sh", "-c", script]).ok(), "hello\ndeleted\n");
    // Another user of the container: the kernel's permission checks apply.
    assert_eq!(user.tote(&["exec", "-u", "1000", "keep", "cat", "/made"]).ok(), "hello\n");
    let denied = user.tote(&["exec", "-u", "1000", "keep", "sh", "-c", "echo x > /made"]);
    assert_ne!(denied.code, 0, "uid 1000 wrote root's 0644 file: {denied:?}");
    assert!(denied.stderr.contains("denied"), "{denied:?}");
    // The image is untouched: a new container has /bin/ls.
    let fresh =
        user.tote(&["run", "--rm", "--network", "none", "busybox", "sh", "-c", "test -e /bin/ls && echo there"]);
    assert_eq!(fresh.ok(), "there\n");
    wait_for_fuse_processes(&user, &fuse);

    // Live restore: the mount and its process outlive toted.
    user.stop_toted();
    assert!(Path::new(&format!("/proc/{}", fuse[0])).exists(), "fuse-overlayfs died with toted");
    user.start_toted(&[]);
    assert!(user.tote(&["ps"]).ok().contains("keep"), "live restore");
    assert_eq!(
        user.tote(&["exec", "keep", "sh", "-c", "cat /made; test -e /bin/ls || echo still-gone"]).ok(),
        "hello\nstill-gone\n"
    );
    assert_eq!(fuse_overlayfs_processes(&user), fuse, "the same fuse-overlayfs serves the root");

    user.tote(&["rm", "-f", "keep"]).ok();
    assert!(fuse_mounts(&user).is_empty(), "rm left a mount: {:?}", fuse_mounts(&user));
    wait_for_fuse_processes(&user, &[]);
}

/// Waits (10 s at most) until the user's fuse-overlayfs processes are
/// `want`: one exits soon after its mount goes, not at once.
fn wait_for_fuse_processes(user: &User, want: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fuse_overlayfs_processes(user);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "fuse-overlayfs processes {now:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A docker save archive of two layers: the lower with busybox, /data/gone,
/// /data/kept and /opq/old; the upper deleting /data/gone and making /opq
/// opaque with /opq/new in it.
fn whiteout_image(path: &Path) {
    fn tar_of(entries: &[(&str, &[u8], u32, Option<&str>)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes, mode, link) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_mode(*mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            if let Some(target) = link {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, name, target).unwrap();
            } else if name.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, name, &[][..]).unwrap();
            } else {
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, name, *bytes).unwrap();
            }
        }
        tar.into_inner().unwrap()
    }
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static's /bin/busybox");
    let lower = tar_of(&[
        ("bin/", b"", 0o755, None),
        ("bin/busybox", &busybox, 0o755, None),
        ("bin/sh", b"", 0o777, Some("busybox")),
        ("data/", b"", 0o755, None),
        ("data/gone", b"gone\n", 0o644, None),
        ("data/kept", b"kept\n", 0o644, None),
        ("opq/", b"", 0o755, None),
        ("opq/old", b"old\n", 0o644, None),
    ]);
    let upper = tar_of(&[
        ("data/", b"", 0o755, None),
        ("data/.wh.gone", b"", 0o644, None),
        ("opq/", b"", 0o755, None),
        ("opq/.wh..wh..opq", b"", 0o644, None),
        ("opq/new", b"new\n", 0o644, None),
    ]);
    let diff_id = |layer: &[u8]| {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(layer)))
    };
    let config = serde_json::json!({
        "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", other => other },
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id(&lower), diff_id(&upper)]},
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]}
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": ["whiteouts:v1"], "Layers": ["1/layer.tar", "2/layer.tar"]
    }])
    .to_string();
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", config.as_bytes()),
        ("1/layer.tar", lower.as_slice()),
        ("2/layer.tar", upper.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    }
    tar.finish().unwrap();
}

#[test]
fn rootless_fuse_overlayfs_hides_what_an_upper_layer_deletes() {
    let mut user = User::create(true);
    let _fuse = DeviceAccess::ensure("/dev/fuse");
    force_fuse_overlayfs(&user);
    user.start_toted(&[]);
    let archive = user.dir.join("whiteouts.tar");
    whiteout_image(&archive);
    nix::unistd::chown(&archive, Some(nix::unistd::Uid::from_raw(user.uid)), None).unwrap();
    user.tote(&["load", "-i", archive.to_str().unwrap()]).ok();
    let script = "busybox ls /data /opq; busybox cat /data/kept /opq/new; busybox test -e /data/gone || echo no-gone";
    let ran = user.tote(&["run", "--rm", "--network", "none", "whiteouts:v1", "sh", "-c", script]);
    assert_eq!(ran.ok(), "/data:\nkept\n\n/opq:\nnew\nkept\nnew\nno-gone\n");
}

#[test]
fn rootless_toted_forced_to_fuse_overlayfs_without_it_names_the_package() {
    let user = User::create(true);
    force_fuse_overlayfs(&user);
    // newuidmap and newgidmap, but no fuse-overlayfs, on PATH.
    let path = user.path_without_fuse_overlayfs();
    let refused = user.toted_fails(&[], &[("PATH", path.to_str().unwrap())]);
    for needle in
        ["fuse-overlayfs is not on PATH", path.to_str().unwrap(), "rootless_overlay", "Debian's fuse-overlayfs"]
    {
        assert!(refused.stderr.contains(needle), "{needle:?} missing: {refused:?}");
    }
    assert!(!user.state_dir().join("tote.sock").exists(), "it did not serve");
}

/// A ramfs on the user's data directory: a filesystem without user xattrs,
/// where the kernel's overlayfs cannot serve. Unmounted (detached: the
/// holder's mount namespace has its own copy) on drop.
struct RamfsData(PathBuf);

impl RamfsData {
    fn mount(user: &User) -> Self {
        let dir = user.dir.join("data");
        nix::mount::mount(Some("ramfs"), &dir, Some("ramfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(dir)
    }
}

impl Drop for RamfsData {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn rootless_auto_takes_fuse_overlayfs_where_the_kernel_cannot_or_names_the_package() {
    let mut user = User::create(true);
    let _fuse = DeviceAccess::ensure("/dev/fuse");
    let _ramfs = RamfsData::mount(&user);
    // No fuse-overlayfs on PATH: the trial's error and the package named.
    let path = user.path_without_fuse_overlayfs();
    let refused = user.toted_fails(&[], &[("PATH", path.to_str().unwrap())]);
    for needle in ["fuse-overlayfs is not on PATH", "cannot mount overlayfs with userxattr", "EOPNOTSUPP", "Debian's"] {
        assert!(refused.stderr.contains(needle), "{needle:?} missing: {refused:?}");
    }

    // With it: containers run on it.
    user.build_busybox();
    user.start_toted(&[]);
    assert!(user.tote(&["info"]).ok().contains(" Storage Driver: fuse-overlayfs\n"));
    let script = "echo hi > /f && rm /bin/ls && cat /f && test ! -e /bin/ls && echo deleted";
    assert_eq!(user.tote(&["run", "--rm", "--network", "none", "busybox", "sh", "-c", script]).ok(), "hi\ndeleted\n");
    assert!(fuse_mounts(&user).is_empty(), "{:?}", fuse_mounts(&user));
    wait_for_fuse_processes(&user, &[]);
}
