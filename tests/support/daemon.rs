//! A real toted per test, driven through the real tote CLI, as root.
//!
//! Each daemon has its own root, state dir, socket, cgroup parent, bridge
//! and subnet, so tests run in parallel and leave nothing behind: when the
//! fixture drops, its containers are removed, the daemon stops, its bridge
//! and mounts go, and its directories are deleted.

#![allow(dead_code)]

#[path = "host.rs"]
mod host;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The workspace's built binaries (tote, toted, tote-shim, tote-image sit
/// side by side in the target directory).
pub fn binary(name: &str) -> PathBuf {
    let path = binary_path(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    path
}

fn binary_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tote")).with_file_name(name)
}

/// What a CLI command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        &self.stdout
    }

    /// Asserts failure with `code` and returns stderr.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "unexpected exit: {self:?}");
        &self.stderr
    }
}

pub struct Daemon {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub bridge: String,
    pub subnet: String,
    pub network: String,
    pub cgroup_parent: String,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon with busybox:latest in its image store.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// As [`Daemon::start`], letting the test prepare the directories first.
    pub fn start_with(prepare: impl FnOnce(&Daemon)) -> Self {
        assert!(nix::unistd::Uid::effective().is_root(), "the end-to-end tests run real containers and need root");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/tote-tests/e2e-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Bridge names are at most 15 bytes; subnets are per test.
        let bridge = format!("tote{}x{n}", pid % 100_000);
        let subnet = format!("10.{}.{}.0/24", 200 + (pid % 50), n % 250);
        let cgroup_parent = format!("/tote-e2e-{pid}-{n}");
        let daemon = Self {
            root: dir.join("root"),
            state: dir.join("s"),
            socket: dir.join("tote.sock"),
            config: dir.join("toted.toml"),
            dir,
            bridge: bridge.clone(),
            subnet: subnet.clone(),
            network: format!("tote-e2e-{pid}-{n}"),
            cgroup_parent: cgroup_parent.clone(),
            child: None,
        };
        std::fs::write(
            &daemon.config,
            format!(
                "cgroup_parent = \"{cgroup_parent}\"\nlog_level = \"debug\"\n[network]\nbridge = \"{bridge}\"\nsubnet = \"{subnet}\"\nnetwork_name = \"tote-e2e-{pid}-{n}\"\n"
            ),
        )
        .unwrap();
        let built = Command::new(binary("tote-image")).arg("--root").arg(&daemon.root).arg("busybox").output().unwrap();
        assert!(built.status.success(), "build busybox:latest: {}", String::from_utf8_lossy(&built.stderr));
        prepare(&daemon);
        let mut daemon = daemon;
        daemon.launch();
        daemon
    }

    /// Starts toted (again) on the same directories.
    pub fn launch(&mut self) {
        self.launch_with_env(&[]);
    }

    /// [`Daemon::launch`] with variables added to toted's environment.
    pub fn launch_with_env(&mut self, env: &[(&str, &str)]) {
        self.launch_with(env, None);
    }

    /// [`Daemon::launch`] with a descriptor limit (soft and hard) for toted.
    pub fn launch_with_nofile(&mut self, nofile: u64) {
        self.launch_with(&[], Some(nofile));
    }

    fn launch_with(&mut self, env: &[(&str, &str)], nofile: Option<u64>) {
        if let Err(problem) = self.try_launch(env, nofile) {
            panic!("{problem}");
        }
    }

    /// Starts toted, or says why it did not come up. Never panics, so the
    /// fixture's `Drop` can use it while a failed test unwinds (a second
    /// panic there would abort the whole test binary).
    fn try_launch(&mut self, env: &[(&str, &str)], nofile: Option<u64>) -> Result<(), String> {
        let toted = binary_path("toted");
        if !toted.exists() {
            return Err(format!("{} is not built: run `cargo build --workspace` first", toted.display()));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("toted.log"))
            .map_err(|e| format!("open toted.log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("toted.log: {e}"))?;
        let mut command = Command::new(toted);
        if let Some(limit) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--listen")
            .arg(format!("unix://{}", self.socket.display()))
            .stdin(Stdio::null())
            .envs(env.iter().copied())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawn toted: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.tote(&["version"]).code != 0 {
            if Instant::now() >= deadline {
                return Err(format!("toted did not come up; log:\n{}", self.log()));
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("toted exited with {status}; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("toted.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("toted runs").id()).unwrap()
    }

    /// Waits until toted has exited by itself (a crash point); its status.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("toted runs");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "toted did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills toted with SIGKILL: no chance to clean anything up.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops toted with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("tote"));
        command.arg("-H").arg(format!("unix://{}", self.socket.display())).args(args);
        command.stdin(Stdio::null());
        command
    }

    pub fn tote(&self, args: &[&str]) -> Ran {
        Ran::from(self.command(args).output().unwrap())
    }

    /// `inspect` of one container, parsed.
    pub fn inspect(&self, container: &str) -> serde_json::Value {
        let out = self.tote(&["inspect", container]);
        let list: serde_json::Value =
            serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("inspect output: {e}: {out:?}"));
        list[0].clone()
    }

    pub fn status(&self, container: &str) -> String {
        self.inspect(container)["State"]["Status"].as_str().unwrap_or_default().to_string()
    }

    /// Polls until `check` holds, failing after `timeout`.
    #[track_caller]
    pub fn eventually(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; toted log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Processes whose command line mentions this daemon's directory.
    pub fn processes(&self) -> Vec<String> {
        let needle = self.dir.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            if Some(pid) == self.child.as_ref().map(|c| i32::try_from(c.id()).unwrap()) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
        found
    }

    /// Mount points of this daemon's directories.
    pub fn mounts(&self) -> Vec<String> {
        let needle = self.dir.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    /// The cgroup directories under this daemon's parent, in every hierarchy.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        let name = self.cgroup_parent.trim_start_matches('/');
        for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let parent = entry.path().join(name);
            if let Ok(children) = std::fs::read_dir(&parent) {
                dirs.extend(children.flatten().map(|c| c.path()).filter(|p| p.is_dir()));
            }
        }
        let unified = Path::new("/sys/fs/cgroup").join(name);
        if let Ok(children) = std::fs::read_dir(&unified) {
            dirs.extend(children.flatten().map(|c| c.path()).filter(|p| p.is_dir()));
        }
        dirs
    }

    /// Host network interfaces whose name starts with `prefix`.
    pub fn links(prefix: &str) -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// The names in a directory (none if it does not exist).
    pub fn names_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Nothing of this daemon's containers is left on the host.
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        let ps = self.tote(&["ps", "-aq"]);
        assert_eq!(ps.ok().trim(), "", "containers left");
        self.eventually(Duration::from_secs(5), "monitors to exit", || self.processes().is_empty());
        // The state dir itself may be a test's own tmpfs.
        let state = format!(" {} ", self.state.display());
        let mounts: Vec<String> = self.mounts().into_iter().filter(|m| !m.contains(&state)).collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
        assert!(self.cgroups().is_empty(), "cgroups left: {:?}", self.cgroups());
        for (dir, what) in [
            (self.state.join("netns"), "network namespaces"),
            (self.root.join("containers"), "container directories"),
            (self.state.join("runtime"), "runtime state"),
            (self.state.join("cni/results"), "CNI attachments"),
        ] {
            let left = Self::names_in(&dir);
            assert!(left.is_empty(), "{what} left in {}: {left:?}", dir.display());
        }
        let snapshots: Vec<String> =
            Self::names_in(&self.root.join("snapshots")).into_iter().filter(|n| n.starts_with("rw-")).collect();
        assert!(snapshots.is_empty(), "writable snapshots left: {snapshots:?}");
        // A monitor's directory goes with its container; the monitors
        // themselves were checked above.
        self.eventually(Duration::from_secs(5), "monitor directories to go", || {
            Self::names_in(&self.state.join("m")).is_empty()
        });
        // The kernel deletes a veth pair with the namespace it is in, in
        // the background, moments after toted unpinned it.
        let ports = || -> Vec<_> {
            std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        self.eventually(Duration::from_secs(5), &format!("the veths on {} to go", self.bridge), || ports().is_empty());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that killed toted: bring it back to clean up. Without a
        // toted the containers cannot be removed, but the rest still goes.
        let running = self.child.is_some() || {
            let launched = self.try_launch(&[], None);
            if let Err(problem) = &launched {
                eprintln!("cleanup: {problem}");
            }
            launched.is_ok()
        };
        if running {
            let ids = self.tote(&["ps", "-aq"]).stdout;
            for id in ids.split_whitespace() {
                let _ = self.tote(&["rm", "-f", "-v", id]);
            }
        }
        self.stop();
        host::remove_network(&self.bridge, &self.subnet, &self.network);
        for mount in self.mounts() {
            if let Some(point) = mount.split_whitespace().nth(4) {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        host::remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host's device nodes at the top of /dev (not a container's own
/// ones), with their modes.
pub fn host_top_devices() -> Vec<(String, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let own = ["console", "ptmx", "null", "zero", "full", "random", "urandom", "tty"];
    let mut found: Vec<(String, u32)> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let device = meta.file_type().is_char_device() || meta.file_type().is_block_device();
            (device && !own.contains(&name.as_str())).then_some((name, meta.mode()))
        })
        .collect();
    found.sort();
    found
}
