//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry 2.8), started per test on 127.0.0.1, plus images
//! built in memory and pushed to it, a proxy that cuts downloads, and
//! deliberately broken manifests and blobs.
//!
//! Needs the Debian packages `docker-registry` and, for
//! [`Registry::start_with_auth`], `apache2-utils` (`htpasswd`); and the crates
//! serde_json, sha2, hex, tar, flate2, zstd, nix and libc.
//!
//! - [`Registry`]: `start()`, `start_with_auth(user, password)`, `addr()`,
//!   `url()`, `reference(repo, tag)`; raw `push_blob`, `put_manifest`,
//!   `request`; `inject_manifest`, `inject_blob`, `corrupt_blob` write
//!   straight into its storage. One process per `Registry`, killed by pid on
//!   drop; any number in parallel.
//! - [`CutProxy`]: in front of a registry; cuts the first (or every) blob
//!   download after N body bytes, records requests (`Range` included), and
//!   can serve canned responses for chosen paths.
//! - [`ImageBuilder`], [`Layer`], [`Entry`] build OCI or Docker schema2
//!   images ([`TestImage`]); [`IndexBuilder`] and [`multi_platform`] build
//!   OCI indexes and Docker manifest lists ([`TestIndex`]).
//! - [`bad`]: schema1 and made-up media types, artifacts, huge manifests,
//!   wrong layer sizes and digests, corrupt and truncated blobs.
//! - [`big_image`]: hundreds of MiB of deterministic data for benchmarks.
//!
//! ```ignore
//! #[path = "support/registry.rs"]
//! mod registry;
//! use registry::{Compression, CutProxy, Entry, ImageBuilder, Layer, Registry};
//!
//! let reg = Registry::start();
//! let image = ImageBuilder::new()
//!     .layer(Layer::new(Compression::Gzip, [
//!         Entry::dir("etc"),
//!         Entry::file("etc/motd", "hello\n").mode(0o600),
//!         Entry::symlink("motd", "etc/motd"),
//!     ]))
//!     .layer(Layer::new(Compression::Zstd, [Entry::whiteout("motd"), Entry::opaque("etc")]))
//!     .env("GREETING", "hi")
//!     .cmd(["/bin/sh"])
//!     .build();
//! let digest = image.push(&reg, "library/demo", "v1");
//! assert_eq!(digest, image.manifest_digest);
//! // Pull reg.reference("library/demo", "v1") = "127.0.0.1:PORT/library/demo:v1" over plain http.
//!
//! // Resume: the first download of each blob through the proxy breaks after 64 KiB.
//! let proxy = CutProxy::new(reg.addr(), 65_536);
//! // Pull "{proxy.addr()}/library/demo:v1", then check proxy.blob_requests(&image.layers[0].digest)[1].range.
//! ```
//!
//! Everything here is blocking (std threads and sockets); it is fine to call
//! from `#[tokio::test]` functions. Failures panic with context, and a
//! `Registry` dropped during a panic prints the tail of its log.

#![allow(dead_code)]

#[path = "registry/http.rs"]
pub mod http;
#[path = "registry/image.rs"]
mod image;
#[path = "registry/proxy.rs"]
mod proxy;

#[allow(unused_imports)] // each test file uses its own part
pub use image::{
    BuiltLayer, Compression, DEFAULT_MTIME, Entry, EntryKind, Format, ImageBuilder, IndexBuilder, Layer, Platform,
    TestImage, TestIndex, bad, big_image, big_image_with, media_types, multi_platform, tar_of,
};
#[allow(unused_imports)]
pub use proxy::{CannedResponse, CutProxy, ProxyRecord};

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";
/// The largest manifest docker-registry 2.8 accepts on PUT and serves on GET.
pub const REGISTRY_MAX_MANIFEST: usize = 4 * 1024 * 1024;

/// "sha256:<hex>" of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A running `docker-registry serve`, private to one test. Dropping it kills
/// that process (by its pid) and removes its directory.
pub struct Registry {
    child: Child,
    addr: String,
    dir: PathBuf,
    auth: Option<(String, String)>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Ports of this process's live registries, so two never race for one.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

impl Registry {
    /// An anonymous registry: anyone may push and pull.
    pub fn start() -> Registry {
        Self::launch(None)
    }

    /// A registry with htpasswd (HTTP basic) auth: every request, pulls
    /// included, needs `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::launch(Some((user.to_string(), password.to_string())))
    }

    fn launch(auth: Option<(String, String)>) -> Registry {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} is missing: apt-get install docker-registry");
        let root = std::env::temp_dir().join("tote-registry");
        remove_stale_dirs(&root);
        let dir = root.join(format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).unwrap();
        if let Some((user, password)) = &auth {
            write_htpasswd(&dir.join("htpasswd"), user, password);
        }
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = reserve_port();
            let addr = format!("127.0.0.1:{port}");
            fs::write(dir.join("config.yml"), config_yaml(&dir, &addr, auth.is_some())).unwrap();
            let log = fs::File::create(dir.join("registry.log")).unwrap();
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            // REGISTRY_* variables override the config file.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(name);
                }
            }
            let mut child = spawn_with_parent_death_signal(cmd).expect("spawn docker-registry");
            match wait_ready(&mut child, &addr, &dir, auth.is_some()) {
                Ok(()) => return Registry { child, addr, dir, auth },
                Err(log) => {
                    last_log = log;
                    let _ = child.kill();
                    let _ = child.wait();
                    release_port(port);
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    /// "127.0.0.1:PORT", the registry part of an image reference.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// "127.0.0.1:PORT/repo:tag", or "127.0.0.1:PORT/repo@sha256:..." when
    /// `tag_or_digest` is a digest.
    pub fn reference(&self, repo: &str, tag_or_digest: &str) -> String {
        let sep = if tag_or_digest.contains(':') { '@' } else { ':' };
        format!("{}/{repo}{sep}{tag_or_digest}", self.addr)
    }

    /// The user and password of a registry started with auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's own log (stdout and stderr, access log included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Where the filesystem storage driver keeps everything.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("data/docker/registry/v2")
    }

    /// A raw request, with the registry's credentials if it has auth.
    pub fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> http::Response {
        let auth = self.auth.as_ref().map(|(u, p)| http::basic_auth(u, p));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("Authorization", auth));
        }
        http::request(&self.addr, method, target, &all, body)
            .unwrap_or_else(|e| panic!("{method} {target} on {}: {e}\n{}", self.addr, self.log()))
    }

    /// Uploads a blob (unless the repository has it) and returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        if self.request("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], &[]).status == 200 {
            return digest;
        }
        let start = self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[]);
        assert_eq!(start.status, 202, "start upload to {repo}: {}", start.text());
        let location = start.header("location").expect("upload Location");
        // The Location is absolute (http://HOST/v2/...?_state=...): keep path and query.
        let target = match location.split_once("://") {
            Some((_, rest)) => &rest[rest.find('/').unwrap_or(rest.len())..],
            None => location,
        };
        let sep = if target.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{target}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            data,
        );
        assert_eq!(put.status, 201, "finish upload of {digest} to {repo}: {}", put.text());
        digest
    }

    /// PUTs a manifest under `reference` (a tag or its digest). Returns the
    /// digest the registry computed, or the registry's refusal.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<String, http::Response> {
        let resp =
            self.request("PUT", &format!("/v2/{repo}/manifests/{reference}"), &[("Content-Type", media_type)], body);
        if resp.status != 201 {
            return Err(resp);
        }
        Ok(resp.header("docker-content-digest").expect("Docker-Content-Digest").to_string())
    }

    /// Like [`Registry::put_manifest`], but panics on refusal and checks the
    /// registry's digest is the sha256 of `body`.
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let digest = self
            .put_manifest(repo, reference, media_type, body)
            .unwrap_or_else(|r| panic!("registry refused manifest {repo}:{reference}: {} {}", r.status, r.text()));
        assert_eq!(digest, sha256_digest(body), "registry digest of {repo}:{reference}");
        digest
    }

    /// The file that holds blob `digest` in storage (it exists once pushed).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage_dir().join("blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Replaces the stored content of blob `digest` behind the registry's
    /// back: it then serves `content` (with its length) under that digest.
    pub fn corrupt_blob(&self, digest: &str, content: &[u8]) {
        let path = self.blob_path(digest);
        assert!(path.exists(), "blob {digest} was never pushed");
        fs::write(path, content).unwrap();
    }

    /// Stores `content` as blob `digest` in `repo` straight into storage, with
    /// no check that they match.
    pub fn inject_blob(&self, repo: &str, digest: &str, content: &[u8]) {
        let path = self.blob_path(digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        let hex = &digest["sha256:".len()..];
        write_link(&self.storage_dir().join(format!("repositories/{repo}/_layers/sha256/{hex}/link")), digest);
    }

    /// Stores a manifest straight into storage and tags it, skipping every
    /// check the registry makes on PUT (media type, schema1 signatures,
    /// referenced blobs; not the 4 MiB limit, which it also applies when
    /// reading). Returns its digest. The registry serves it only if its GET
    /// handler can parse it: schema1 (served as `...manifest.v1+prettyjws`),
    /// docker schema2, OCI manifest and index, docker manifest list.
    pub fn inject_manifest(&self, repo: &str, tag: &str, content: &[u8]) -> String {
        let digest = sha256_digest(content);
        let hex = &digest["sha256:".len()..];
        let path = self.blob_path(&digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        let manifests = self.storage_dir().join(format!("repositories/{repo}/_manifests"));
        write_link(&manifests.join(format!("revisions/sha256/{hex}/link")), &digest);
        write_link(&manifests.join(format!("tags/{tag}/current/link")), &digest);
        write_link(&manifests.join(format!("tags/{tag}/index/sha256/{hex}/link")), &digest);
        digest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- docker-registry {} (pid {}) log tail ---\n{}",
                self.addr,
                self.child.id(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // Child::kill signals exactly the pid this Registry started.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(port) = self.addr.rsplit(':').next().and_then(|p| p.parse().ok()) {
            release_port(port);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the "listening on" log line (written only once the port is
/// bound, so it is this process that answers) and then for `/v2/`.
fn wait_ready(child: &mut Child, addr: &str, dir: &Path, auth: bool) -> Result<(), String> {
    let log = || fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}\n{}", log()));
        }
        if log().contains("listening on")
            && let Ok(resp) = http::request(addr, "GET", "/v2/", &[], &[])
        {
            let want = if auth { 401 } else { 200 };
            if resp.status == want {
                return Ok(());
            }
            return Err(format!("/v2/ answered {} (wanted {want})\n{}", resp.status, log()));
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after 30s\n{}", log()));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn write_link(path: &Path, digest: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, digest).unwrap();
}

fn config_yaml(dir: &Path, addr: &str, auth: bool) -> String {
    // No blob descriptor cache (so blobs changed behind its back are seen),
    // no upload purging, no health checks.
    let mut yaml = format!(
        "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: \"{data}\"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: \"{addr}\"
  secret: tote-test-secret
",
        data = dir.join("data").display()
    );
    if auth {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: tote-test\n    path: \"{}\"\n",
            dir.join("htpasswd").display()
        ));
    }
    yaml
}

fn write_htpasswd(path: &Path, user: &str, password: &str) {
    assert!(Path::new(HTPASSWD_BIN).exists(), "{HTPASSWD_BIN} is missing: apt-get install apache2-utils");
    // -B: bcrypt, the only scheme docker-registry accepts; -C 4: cheapest cost.
    let out = Command::new(HTPASSWD_BIN)
        .args(["-nbB", "-C", "4", user, password])
        .stdin(Stdio::null())
        .output()
        .expect("run htpasswd");
    assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    fs::write(path, out.stdout).unwrap();
}

fn reserve_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("find a free port");
        let port = listener.local_addr().unwrap().port();
        let mut ports = PORTS.lock().unwrap();
        if ports.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

fn release_port(port: u16) {
    if let Some(ports) = PORTS.lock().unwrap().as_mut() {
        ports.remove(&port);
    }
}

/// Removes, once per process, the directories of registries whose test
/// process is gone (killed before its Drop ran).
fn remove_stale_dirs(root: &Path) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = fs::read_dir(root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
            if gone {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// Spawns `cmd` with SIGKILL as its parent-death signal, so a registry never
/// outlives the test process (after an abort, or when it lives in a static).
/// The signal fires when the spawning *thread* ends, and the test harness
/// ends a test's thread with the test, so the spawn happens on one thread
/// kept for the life of the process.
fn spawn_with_parent_death_signal(mut cmd: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;

    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

    let parent = std::process::id();
    let in_child = move || {
        // SAFETY: PR_SET_PDEATHSIG with a valid signal number touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions.
        if u32::try_from(unsafe { libc::getppid() }).ok() != Some(parent) {
            return Err(io::Error::other("test process died before the registry started"));
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only makes the
    // async-signal-safe prctl and getppid system calls; it allocates only if
    // it fails, and then the child is discarded.
    unsafe {
        cmd.pre_exec(in_child);
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("registry-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the registry spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner.send((cmd, reply_tx)).map_err(|_| io::Error::other("registry spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("registry spawner thread is gone"))?
}
