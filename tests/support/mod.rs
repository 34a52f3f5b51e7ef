//! Fixtures for tests that run real containers with tote-shim, as root.
//!
//! Every container gets its own bundle (a copy of a busybox rootfs built
//! from Debian's busybox-static), its own id and its own cgroup
//! (`/tote-test-<id>`), and is force-deleted when the test ends, so tests
//! run in parallel and leave nothing behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

pub const SHIM: &str = env!("CARGO_BIN_EXE_tote-shim");
const BUSYBOX: &str = "/bin/busybox";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Where this test process keeps bundles and state.
pub fn scratch() -> PathBuf {
    PathBuf::from(format!("/tmp/tote-tests/{}", std::process::id()))
}

pub fn require_root() {
    assert!(nix::unistd::Uid::effective().is_root(), "these tests run real containers and need root");
}

/// A busybox root filesystem, built once per test process.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = scratch().join("template");
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/tote"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: apt-get install busybox-static");
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ntote:x:1000:1000:tote:/home/tote:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\ntty:x:5:\ntote:x:1000:\nnogroup:x:65534:\n").unwrap();
        std::fs::set_permissions(root.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        root
    })
}

/// What a tote-shim command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Self {
        use std::os::unix::process::ExitStatusExt;
        let code = out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Self {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    /// The value of a `key=value` line the container printed.
    #[track_caller]
    pub fn field(&self, key: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= line in\n{}\nstderr: {}", self.stdout, self.stderr))
            .trim()
            .to_string()
    }
}

/// One container's bundle, state root and lifecycle commands.
pub struct TestContainer {
    pub id: String,
    pub bundle: PathBuf,
    pub root: PathBuf,
    pub config: Value,
    /// Run tote-shim from a read-only bind mount of itself (in a private
    /// mount namespace per command), as an installed tote-shim runs.
    pub readonly_binary: bool,
    /// Run tote-shim as this unprivileged uid (and gid), rootless.
    pub run_as: Option<u32>,
}

impl TestContainer {
    pub fn new(name: &str) -> Self {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{name}-{}-{n}", std::process::id());
        let bundle = scratch().join(&id);
        std::fs::create_dir_all(&bundle).unwrap();
        let status = Command::new("cp").arg("-a").arg(template()).arg(bundle.join("rootfs")).status().unwrap();
        assert!(status.success(), "copy the busybox rootfs");
        let mut config = serde_json::to_value(tote_shim::container::default_spec(false)).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["true"]);
        config["linux"]["cgroupsPath"] = json!(format!("/tote-test-{id}"));
        // Tests write into the rootfs; the read-only root has its own test.
        config["root"]["readonly"] = json!(false);
        Self { id, bundle, root: scratch().join("state"), config, readonly_binary: false, run_as: None }
    }

    /// Runs `script` with busybox sh.
    pub fn sh(mut self, script: &str) -> Self {
        self.config["process"]["args"] = json!(["sh", "-c", script]);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.config["process"]["args"] = json!(args);
        self
    }

    pub fn with(mut self, change: impl FnOnce(&mut Value)) -> Self {
        change(&mut self.config);
        self
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    pub fn write_config(&self) {
        std::fs::write(self.bundle.join("config.json"), serde_json::to_vec_pretty(&self.config).unwrap()).unwrap();
    }

    /// `tote-shim --root <root> ARGS`, ready to run.
    pub fn shim(&self, args: &[&str]) -> Command {
        let mut cmd = if let Some(uid) = self.run_as {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}")).arg("--clear-groups").arg(SHIM);
            cmd
        } else if self.readonly_binary {
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$0" "$@""#)
                .arg(SHIM);
            cmd
        } else {
            Command::new(SHIM)
        };
        cmd.arg("--root").arg(&self.root).args(args).stdin(Stdio::null());
        cmd
    }

    /// Makes this a rootless container run by `uid`: the bundle is theirs,
    /// the config is `tote-shim spec --rootless` for them, state is theirs.
    pub fn rootless(mut self, uid: u32) -> Self {
        let status = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(&self.bundle).status().unwrap();
        assert!(status.success());
        let spec = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .args([SHIM, "spec", "--rootless", "--bundle"])
            .arg(&self.bundle)
            .status()
            .unwrap();
        assert!(spec.success(), "tote-shim spec --rootless");
        let path = self.bundle.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = self.config["process"]["args"].clone();
        config["root"]["readonly"] = json!(false);
        self.config = config;
        self.root = scratch().join(format!("state-{uid}"));
        self.run_as = Some(uid);
        std::fs::create_dir_all(&self.root).unwrap();
        let status = Command::new("chown").arg(format!("{uid}:{uid}")).arg(&self.root).status().unwrap();
        assert!(status.success());
        self
    }

    pub fn shim_ran(&self, args: &[&str]) -> Ran {
        Ran::from(self.shim(args).output().expect("run tote-shim"))
    }

    /// `tote-shim run` in the foreground.
    pub fn run(&self) -> Ran {
        self.write_config();
        let bundle = self.bundle.to_string_lossy().into_owned();
        self.shim_ran(&["run", "--bundle", &bundle, &self.id])
    }

    /// `tote-shim create`; the container's stdio goes to files in the bundle.
    pub fn create(&self) -> Ran {
        self.write_config();
        let bundle = self.bundle.to_string_lossy().into_owned();
        let out = std::fs::File::create(self.bundle.join("stdout")).unwrap();
        let err = std::fs::File::create(self.bundle.join("stderr")).unwrap();
        let status = self
            .shim(&["create", "--bundle", &bundle, &self.id])
            .stdout(out)
            .stderr(err)
            .status()
            .expect("run tote-shim create");
        Ran {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: std::fs::read_to_string(self.bundle.join("stderr")).unwrap_or_default(),
        }
    }

    /// What the created container has written to its stdout so far.
    pub fn container_stdout(&self) -> String {
        std::fs::read_to_string(self.bundle.join("stdout")).unwrap_or_default()
    }

    pub fn start(&self) -> Ran {
        self.shim_ran(&["start", &self.id])
    }

    pub fn state(&self) -> Value {
        let ran = self.shim_ran(&["state", &self.id]);
        serde_json::from_str(ran.ok()).unwrap()
    }

    pub fn status(&self) -> String {
        self.state()["status"].as_str().unwrap().to_string()
    }

    /// The status, or `None` while the container does not exist (yet).
    pub fn status_if_any(&self) -> Option<String> {
        let ran = self.shim_ran(&["state", &self.id]);
        let state: Value = serde_json::from_str(&ran.stdout).ok()?;
        state["status"].as_str().map(str::to_string)
    }

    /// Runs a tote-shim command that leaves a process behind (`--detach`):
    /// its stdio must not be pipes we wait on.
    pub fn shim_detached(&self, args: &[&str]) -> i32 {
        let status = self.shim(args).stdout(Stdio::null()).stderr(Stdio::inherit()).status().unwrap();
        status.code().unwrap_or(-1)
    }

    pub fn exec(&self, args: &[&str]) -> Ran {
        let mut all = vec!["exec", &self.id];
        all.extend_from_slice(args);
        self.shim_ran(&all)
    }

    pub fn kill(&self, signal: &str) -> Ran {
        self.shim_ran(&["kill", &self.id, signal])
    }

    pub fn delete(&self, force: bool) -> Ran {
        if force { self.shim_ran(&["delete", "--force", &self.id]) } else { self.shim_ran(&["delete", &self.id]) }
    }

    /// Polls the container's status until it is `wanted` (at most 10 s).
    #[track_caller]
    pub fn wait_status(&self, wanted: &str) {
        for _ in 0..1000 {
            if self.status_if_any().as_deref() == Some(wanted) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("container {} never became {wanted}", self.id);
    }

    /// Host directories of this container's cgroup that exist now.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_dirs_named(&format!("tote-test-{}", self.id))
    }
}

/// Every cgroup directory called `name` directly under a hierarchy root.
pub fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let mut dirs = vec![];
    let base = Path::new("/sys/fs/cgroup");
    if base.join(name).is_dir() {
        dirs.push(base.join(name));
    }
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let dir = entry.path().join(name);
        if dir.is_dir() {
            dirs.push(dir);
        }
    }
    dirs
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = self.shim(&["delete", "--force", &self.id]).stderr(Stdio::null()).status();
        for dir in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// Mount points of this (the test's) mount namespace that contain `needle`.
pub fn host_mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}
