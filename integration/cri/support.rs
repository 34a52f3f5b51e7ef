//! A real toted for the CRI suite: its own root, state dir, socket,
//! cgroup parent and bridge, configured by the test (registry mirrors,
//! CNI plugin dirs, pinned images), with a tonic CRI client on its socket.
//! Dropping it stops that toted (by its pid) and deletes its directories.

#[path = "../../tests/support/host.rs"]
mod host;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tote_cri::api::image_service_client::ImageServiceClient;
use tote_cri::api::runtime_service_client::RuntimeServiceClient;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A binary of this workspace, built beside this test's own executable
/// (`target/<profile>/deps/cri-…` → `target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    path
}

pub struct Toted {
    pub dir: PathBuf,
    /// Its own bridge, subnet and network name (in toted's masquerade
    /// rule), deleted with it.
    bridge: String,
    subnet: String,
    network: String,
    cgroup_parent: String,
    pub root: PathBuf,
    pub socket: PathBuf,
    child: Child,
}

impl Toted {
    /// Starts toted with `extra` appended to a toml config that keeps it
    /// apart from every other toted on the host.
    pub fn start(extra: &str) -> Toted {
        Self::start_inner(extra, false, None)
    }

    fn start_inner(extra: &str, busybox: bool, crash_at: Option<&str>) -> Toted {
        assert!(nix::unistd::Uid::effective().is_root(), "the CRI suite runs a real toted and needs root");
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/tote-tests/cri-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("toted.toml");
        let bridge = format!("totc{}x{n}", pid % 100_000);
        let subnet = format!("10.{}.{}.0/24", 150 + pid % 40, n % 250);
        let network = format!("tote-cri-{pid}-{n}");
        let cgroup_parent = format!("/tote-cri-{pid}-{n}");
        // Its own CNI configuration directory, empty unless a test writes
        // to it: the host's /etc/cni/net.d (podman's, say) is not this
        // toted's business. Said in `extra`'s [cri] table if it has one.
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let conf_dir_key = format!("cni_conf_dir = \"{}\"\n", conf_dir.display());
        let (cri, extra) = match extra.split_once("[cri]\n") {
            Some((before, after)) => (String::new(), format!("{before}[cri]\n{conf_dir_key}{after}")),
            None => (format!("[cri]\n{conf_dir_key}"), extra.to_string()),
        };
        // Top-level keys first: `extra` may open tables. [network] is the
        // last table unless `extra` opens another.
        std::fs::write(
            &config,
            format!(
                "log_level = \"debug\"\ncgroup_parent = \"{cgroup_parent}\"\n{cri}[network]\nbridge = \"{bridge}\"\nsubnet = \"{subnet}\"\nnetwork_name = \"{network}\"\n{extra}",
            ),
        )
        .unwrap();
        let (root, socket) = (dir.join("root"), dir.join("tote.sock"));
        if busybox {
            // The offline busybox image, built into the store before toted
            // opens it (`docker.io/library/busybox:latest`).
            let built = Command::new(binary("tote-image")).arg("--root").arg(&root).arg("busybox").output().unwrap();
            assert!(built.status.success(), "build busybox: {}", String::from_utf8_lossy(&built.stderr));
        }
        let child = spawn(&dir, crash_at);
        let mut toted = Toted { dir, bridge, subnet, network, cgroup_parent, root, socket, child };
        toted.wait_ready();
        toted
    }

    /// Starts toted as [`Toted::start`] does, with busybox in its store.
    pub fn start_with_busybox(extra: &str) -> Toted {
        Self::start_inner(extra, true, None)
    }

    /// As [`Toted::start_with_busybox`], the toted dying at the debug
    /// build's crash point `at` (`TOTE_CRASH_AT`); restarts run without.
    pub fn start_crashing_at(at: &str) -> Toted {
        Self::start_inner("", true, Some(at))
    }

    /// SIGKILLs this toted (if it is still there) and starts another on
    /// the same root and state.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(&self.dir, None);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let toted = self;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&toted.socket).is_err() {
            if let Ok(Some(status)) = toted.child.try_wait() {
                panic!("toted exited with {status}; log:\n{}", toted.log());
            }
            assert!(Instant::now() < deadline, "toted did not come up; log:\n{}", toted.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The CNI configuration directory this toted reads (empty at start).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("toted.log")).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        tote_api::connect(&format!("unix://{}", self.socket.display())).await.expect("connect to toted")
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }
}

impl Toted {
    /// Removes every pod through the CRI, as a test that panicked left
    /// them: from a thread of its own, with a runtime of its own (a drop
    /// may run inside the test's runtime, which cannot be blocked on).
    fn remove_pods(&self) {
        let socket = self.socket.clone();
        let removed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let channel = tote_api::connect(&format!("unix://{}", socket.display())).await.ok()?;
                let mut rt = RuntimeServiceClient::new(channel);
                let request = tote_cri::api::ListPodSandboxRequest { filter: None };
                let pods = rt.list_pod_sandbox(request).await.ok()?.into_inner().items;
                for pod in pods {
                    let request = tote_cri::api::RemovePodSandboxRequest { pod_sandbox_id: pod.id };
                    let _ = rt.remove_pod_sandbox(request).await;
                }
                Some(())
            })
        });
        let _ = removed.join();
    }
}

impl Drop for Toted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.remove_pods();
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            eprintln!("toted log ({}):\n{}", self.dir.display(), self.log());
        }
        host::remove_network(&self.bridge, &self.subnet, &self.network);
        host::remove_cgroup_parent(&self.cgroup_parent);
        // The store's layers are plain directories; the pods and their
        // mounts went before this.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// toted on the files of `dir` (as [`Toted::start`] wrote them), its
/// output appended to `dir`/toted.log.
fn spawn(dir: &Path, crash_at: Option<&str>) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("toted.log")).unwrap();
    let mut command = Command::new(binary("toted"));
    if let Some(at) = crash_at {
        command.env("TOTE_CRASH_AT", at);
    }
    command
        .arg("--config")
        .arg(dir.join("toted.toml"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state-dir")
        .arg(dir.join("s"))
        .arg("--listen")
        .arg(format!("unix://{}", dir.join("tote.sock").display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `[registries."<name>"]` tables sending each of `registries` to `mirror`.
pub fn mirrors(registries: &[&str], mirror: &str) -> String {
    registries.iter().map(|r| format!("[registries.\"{r}\"]\nmirrors = [\"{mirror}\"]\n")).collect()
}
