//! Tote's image library against a real registry (Debian's docker-registry
//! on 127.0.0.1), as root: pulls checked file by file through a mounted
//! snapshot, platforms, mirrors, auth, resume, concurrency, GC, partial
//! downloads (expiry, prune, disk usage), offline load/save, images made by
//! other tools, and every kind of bad input.

#[path = "support/registry.rs"]
mod registry;

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use registry::{Compression, CutProxy, Entry, Format, ImageBuilder, Layer, Registry, TestImage, bad, multi_platform};
use toted::content::IngestPolicy;
use toted::digest::Digest;
use toted::images::{ImageError, ImageStore, PullOptions, Unpacking};
use toted::manifest::Platform;
use toted::metadata::ImageRecord;
use toted::registry::{Credentials, RegistryConfig};
use toted::usage::Usage;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// An image store in its own directory, removed (after unmounting) at the end.
struct Store {
    root: PathBuf,
    store: Arc<ImageStore>,
}

impl Store {
    fn new() -> Self {
        Self::with_config(RegistryConfig::default())
    }

    fn with_config(config: RegistryConfig) -> Self {
        Self::with_policy(config, IngestPolicy::default())
    }

    fn with_policy(config: RegistryConfig, policy: IngestPolicy) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "these tests unpack layers and mount overlayfs: run them as root"
        );
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!("/tmp/tote-image-tests/{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store =
            Arc::new(ImageStore::open_with(&root.join("store"), config, policy, Unpacking::of_process()).unwrap());
        Self { root, store }
    }

    /// Closes the store and opens it again, as a restarted toted does.
    fn reopen(&mut self, policy: IngestPolicy) {
        // The metadata database allows one open handle: the old store must
        // be gone first, so a throw-away one stands in meanwhile.
        let placeholder =
            Arc::new(ImageStore::open(&self.root.join("placeholder"), RegistryConfig::default()).unwrap());
        drop(std::mem::replace(&mut self.store, placeholder));
        self.store = Arc::new(
            ImageStore::open_with(&self.root.join("store"), RegistryConfig::default(), policy, Unpacking::of_process())
                .unwrap(),
        );
    }

    /// The files in `content/ingest` and their sizes, by name.
    fn ingest(&self) -> Vec<(String, u64)> {
        let dir = self.root.join("store/content/ingest");
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        files.sort();
        files
    }

    async fn pull(&self, name: &str) -> Result<ImageRecord, ImageError> {
        self.store.pull(name, &PullOptions::default()).await
    }

    /// Mounts the image (a writable snapshot over its layers) for reading.
    fn mount(&self, image: &ImageRecord) -> Mounted {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let key = format!("test-{n}");
        let snapshot = self.store.snapshots().prepare_writable(&key, image.top_chain_id()).unwrap();
        let target = self.root.join(format!("mnt-{n}"));
        std::fs::create_dir_all(&target).unwrap();
        toted::snapshots::mount(&snapshot, &target).unwrap();
        Mounted { target }
    }

    fn blob_count(&self) -> usize {
        self.store.content().list().unwrap().len()
    }

    fn snapshot_count(&self) -> usize {
        self.store.metadata().snapshots().unwrap().len()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct Mounted {
    target: PathBuf,
}

impl Mounted {
    fn path(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = toted::snapshots::unmount(&self.target);
    }
}

fn multi_layer_image() -> registry::TestImage {
    ImageBuilder::new()
        .layer(Layer::new(
            Compression::Gzip,
            [
                Entry::dir("etc"),
                Entry::file("etc/motd", "hello\n").mode(0o600),
                Entry::hardlink("etc/motd-link", "etc/motd"),
                Entry::dir("usr"),
                Entry::dir("usr/bin"),
                Entry::file("usr/bin/tool", "#!/bin/sh\n").mode(0o4755),
                Entry::symlink("bin", "usr/bin"),
                Entry::dir("data"),
                Entry::file("data/a", "a"),
                Entry::file("data/b", "b"),
                Entry::dir("opaque"),
                Entry::file("opaque/x", "x"),
                Entry::file("opaque/y", "y"),
                Entry::file("owned", "o").owner(1000, 1001),
                Entry::file("tagged", "t").xattr("user.tote", "v"),
                Entry::fifo("fifo"),
            ],
        ))
        .layer(Layer::new(
            Compression::Zstd,
            [
                Entry::whiteout("data/a"),
                Entry::opaque("opaque"),
                Entry::file("opaque/z", "z"),
                Entry::file("etc/motd", "hello again\n").mode(0o644),
            ],
        ))
        .layer(Layer::new(Compression::None, [Entry::file("top", "3")]))
        .cmd(["/bin/sh"])
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_layer_image_unpacks_file_by_file() {
    let reg = Registry::start();
    let image = multi_layer_image();
    let digest = image.push(&reg, "test/multi", "v1");
    let store = Store::new();
    let record = store.pull(&reg.reference("test/multi", "v1")).await.unwrap();
    assert_eq!(record.target.to_string(), digest);
    assert_eq!(record.layers.len(), 3);
    let root = store.mount(&record);
    assert_eq!(root.read("etc/motd"), "hello again\n");
    assert_eq!(std::fs::metadata(root.path("etc/motd")).unwrap().permissions().mode() & 0o7777, 0o644);
    // The hardlink was to the first layer's file, which the upper layer replaced.
    assert_eq!(root.read("etc/motd-link"), "hello\n");
    assert_eq!(std::fs::metadata(root.path("usr/bin/tool")).unwrap().permissions().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::read_link(root.path("bin")).unwrap(), Path::new("usr/bin"));
    assert!(!root.path("data/a").exists(), "the whiteout did not hide data/a");
    assert_eq!(root.read("data/b"), "b");
    assert!(!root.path("opaque/x").exists() && !root.path("opaque/y").exists(), "the opaque dir shows lower files");
    assert_eq!(root.read("opaque/z"), "z");
    let owned = std::fs::metadata(root.path("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1001));
    assert_eq!(xattr(&root.path("tagged"), "user.tote").as_deref(), Some("v"));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(root.path("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(root.read("top"), "3");
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..usize::try_from(n).unwrap()]).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_picks_this_platform_or_the_one_asked_for() {
    for format in [Format::Oci, Format::Docker] {
        let reg = Registry::start();
        let index = multi_platform(format);
        let digest = index.push(&reg, "test/multi-arch", "v1");
        let name = reg.reference("test/multi-arch", "v1");
        let store = Store::new();
        let host = store.pull(&name).await.unwrap();
        assert_eq!(host.target.to_string(), digest, "the name should resolve to the index");
        assert_eq!(
            store.mount(&host).read("platform"),
            format!("{}\n", Platform::host()).replace("linux/arm64/v8", "linux/arm64/v8")
        );
        let arm = Store::new();
        let opts = PullOptions { platform: Platform::parse("linux/arm64").unwrap(), ..Default::default() };
        let record = arm.store.pull(&name, &opts).await.unwrap();
        assert_eq!(record.platform, "linux/arm64/v8");
        assert_eq!(arm.mount(&record).read("platform"), "linux/arm64/v8\n");
        let none = Store::new();
        let opts = PullOptions { platform: Platform::parse("linux/s390x").unwrap(), ..Default::default() };
        let err = none.store.pull(&name, &opts).await.unwrap_err().to_string();
        assert!(err.contains("linux/s390x") && err.contains("linux/amd64"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_schema2_image_pulls() {
    let reg = Registry::start();
    let image = ImageBuilder::docker().layer(Layer::new(Compression::Gzip, [Entry::file("hello", "docker\n")])).build();
    image.push(&reg, "test/docker", "v2");
    let store = Store::new();
    let record = store.pull(&reg.reference("test/docker", "v2")).await.unwrap();
    assert_eq!(record.target_media_type, toted::manifest::DOCKER_MANIFEST);
    assert_eq!(store.mount(&record).read("hello"), "docker\n");
}

fn mirror_config(registry: &str, mirrors: Vec<String>) -> RegistryConfig {
    toml::from_str(&format!("[registries.{registry:?}]\nmirrors = {mirrors:?}")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_are_tried_in_order_before_the_registry() {
    let reg = Registry::start();
    let image = ImageBuilder::new().layer(Layer::new(Compression::Gzip, [Entry::file("m", "mirrored\n")])).build();
    image.push(&reg, "library/busybox", "latest");
    // docker.io is unreachable here: only the mirror can serve it. The
    // first mirror refuses connections, so the second must be used.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let store = Store::with_config(mirror_config(
        "docker.io",
        vec![format!("http://{dead}"), format!("http://{}", reg.addr())],
    ));
    let record = store.pull("busybox").await.unwrap();
    assert_eq!(record.name, "docker.io/library/busybox:latest");
    assert_eq!(store.mount(&record).read("m"), "mirrored\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_from_the_request_or_the_config() {
    let reg = Registry::start_with_auth("tote", "s3cret");
    let image = ImageBuilder::new().layer(Layer::new(Compression::Gzip, [Entry::file("secret", "s\n")])).build();
    image.push(&reg, "private/app", "v1");
    let name = reg.reference("private/app", "v1");
    let anonymous = Store::new();
    let err = anonymous.pull(&name).await.unwrap_err().to_string();
    assert!(err.contains("refused access") || err.contains("401") || err.contains("uthoriz"), "{err}");
    assert_eq!(anonymous.blob_count(), 0, "something was stored without access");

    let per_request = Store::new();
    let opts = PullOptions {
        credentials: Some(Credentials { username: "tote".into(), password: "s3cret".into() }),
        ..Default::default()
    };
    per_request.store.pull(&name, &opts).await.unwrap();

    let config: RegistryConfig =
        toml::from_str(&format!("[registries.{:?}]\nusername = \"tote\"\npassword = \"s3cret\"", reg.addr())).unwrap();
    Store::with_config(config).pull(&name).await.unwrap();

    let wrong = Store::new();
    let opts = PullOptions {
        credentials: Some(Credentials { username: "tote".into(), password: "nope".into() }),
        ..Default::default()
    };
    assert!(wrong.store.pull(&name, &opts).await.is_err());
}

fn big_layer_image(bytes: usize) -> registry::TestImage {
    // Incompressible content, so the compressed blob is as big as the data.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state & 0xff) as u8
        })
        .collect();
    ImageBuilder::new().layer(Layer::new(Compression::Gzip, [Entry::file("big", data)]).level(1)).build()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_download_resumes_with_a_range_request() {
    let reg = Registry::start();
    let image = big_layer_image(1 << 20);
    image.push(&reg, "test/big", "v1");
    let proxy = CutProxy::new(reg.addr(), 65_536);
    let store = Store::new();
    let record = store.pull(&format!("{}/test/big:v1", proxy.addr())).await.unwrap();
    let requests = proxy.blob_requests(&image.layers[0].digest);
    assert!(requests[0].cut, "{requests:?}");
    // The resumed request starts where the cut one stopped.
    assert!(requests.last().unwrap().range.as_deref().unwrap_or("").starts_with("bytes=65536-"), "{requests:?}");
    assert_eq!(std::fs::metadata(store.mount(&record).path("big")).unwrap().len(), 1 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_pull_resumes_what_an_earlier_one_left() {
    let reg = Registry::start();
    let image = big_layer_image(1 << 20);
    image.push(&reg, "test/big", "v1");
    let store = Store::new();
    let always = CutProxy::always(reg.addr(), 100_000);
    let err = store.pull(&format!("{}/test/big:v1", always.addr())).await.unwrap_err();
    assert!(store.store.metadata().images().unwrap().is_empty(), "a failed pull recorded an image: {err}");
    assert_eq!(store.snapshot_count(), 0);
    // Nothing partial counts as content.
    assert!(!store.store.content().contains(&image.layers[0].digest.parse().unwrap()));
    let pass = CutProxy::passthrough(reg.addr());
    store.pull(&format!("{}/test/big:v1", pass.addr())).await.unwrap();
    let requests = pass.blob_requests(&image.layers[0].digest);
    let range = requests[0].range.as_deref().unwrap();
    let resumed_from: u64 = range.trim_start_matches("bytes=").split('-').next().unwrap().parse().unwrap();
    assert!(resumed_from >= 100_000, "the second pull started over: {requests:?}");
}

/// The name of a layer's partial download in `content/ingest`.
fn ingest_name(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_pull_leaves_a_partial_download_that_prune_removes() {
    let reg = Registry::start();
    let image = big_layer_image(1 << 20);
    image.push(&reg, "test/big", "v1");
    let store = Store::new();
    let always = CutProxy::always(reg.addr(), 100_000);
    store.pull(&format!("{}/test/big:v1", always.addr())).await.unwrap_err();
    let layer = &image.layers[0].digest;
    // What the pull got before it gave up (it resumes a few times).
    let [(name, partial)] = store.ingest().try_into().unwrap();
    assert_eq!(name, ingest_name(layer));
    assert!(partial >= 100_000 && partial < image.layers[0].blob.len() as u64, "{partial}");
    let usage = store.store.space_usage(&HashSet::new()).unwrap();
    assert_eq!(usage.partial_downloads, Usage { total: 1, active: 0, size: partial, reclaimable: partial });
    // The failed pull stored the manifest and the config: no image names them.
    let dangling: u64 = store.store.content().list().unwrap().iter().map(|(_, size)| size).sum();
    assert_eq!(dangling, (image.manifest.len() + image.config.len()) as u64);
    assert_eq!(usage.images, Usage { total: 0, active: 0, size: dangling, reclaimable: dangling });

    let report = store.store.prune(false, &HashSet::new()).unwrap();
    assert_eq!(report.partials.iter().map(|p| p.label()).collect::<Vec<_>>(), std::slice::from_ref(layer));
    assert_eq!(report.deleted.len(), 2, "{report:?}");
    assert_eq!(report.reclaimed, partial + dangling);
    assert!(store.ingest().is_empty());
    assert_eq!(store.blob_count(), 0);
    assert_eq!(store.store.space_usage(&HashSet::new()).unwrap().partial_downloads, Usage::default());
}

/// Sets a file's modification time `age` into the past.
fn age_file(path: &Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_downloads_expire_by_age_when_the_store_opens() {
    let reg = Registry::start();
    let old = big_layer_image(1 << 20);
    let recent = big_layer_image((1 << 20) + 1);
    old.push(&reg, "test/old", "v1");
    recent.push(&reg, "test/recent", "v1");
    let mut store = Store::new();
    let always = CutProxy::always(reg.addr(), 100_000);
    store.pull(&format!("{}/test/old:v1", always.addr())).await.unwrap_err();
    store.pull(&format!("{}/test/recent:v1", always.addr())).await.unwrap_err();
    let ingest = store.root.join("store/content/ingest");
    age_file(&ingest.join(ingest_name(&old.layers[0].digest)), Duration::from_secs(25 * 3600));
    age_file(&ingest.join(ingest_name(&recent.layers[0].digest)), Duration::from_secs(23 * 3600));
    store.reopen(IngestPolicy::default());
    let left: Vec<String> = store.ingest().into_iter().map(|(name, _)| name).collect();
    assert_eq!(left, [ingest_name(&recent.layers[0].digest)], "only the day-old one goes");
    store.reopen(IngestPolicy { max_age: Duration::from_secs(3600), ..IngestPolicy::default() });
    assert!(store.ingest().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_size_cap_applies_as_a_pull_starts_and_spares_its_own_layers() {
    let reg = Registry::start();
    let first = big_layer_image(1 << 20);
    let second = big_layer_image((1 << 20) + 1);
    first.push(&reg, "test/first", "v1");
    second.push(&reg, "test/second", "v1");
    let cap = 150_000;
    let store =
        Store::with_policy(RegistryConfig::default(), IngestPolicy { max_size: cap, ..IngestPolicy::default() });
    let always = CutProxy::always(reg.addr(), 25_000);
    store.pull(&format!("{}/test/first:v1", always.addr())).await.unwrap_err();
    // Under the cap when it starts; over it when it fails.
    store.pull(&format!("{}/test/second:v1", always.addr())).await.unwrap_err();
    let partials = store.ingest();
    let size = |digest: &str| partials.iter().find(|(name, _)| *name == ingest_name(digest)).map(|(_, size)| *size);
    let (first_size, second_size) = (size(&first.layers[0].digest).unwrap(), size(&second.layers[0].digest).unwrap());
    assert!(first_size <= cap && second_size <= cap && first_size + second_size > cap, "{partials:?}");
    // The next pull of `first` starts over the cap: the older partial is
    // its own, so the newer one goes, and `first` resumes where it stopped.
    let pass = CutProxy::passthrough(reg.addr());
    let record = store.pull(&format!("{}/test/first:v1", pass.addr())).await.unwrap();
    let range = pass.blob_requests(&first.layers[0].digest)[0].range.clone().unwrap_or_default();
    assert!(range.starts_with(&format!("bytes={first_size}-")), "did not resume: {range:?}");
    assert!(store.ingest().is_empty(), "{:?}", store.ingest());
    assert_eq!(std::fs::metadata(store.mount(&record).path("big")).unwrap().len(), 1 << 20);
}

/// test/one:v1 and test/two:v1 in `reg`: a shared base layer (a file
/// `base`), then a layer of their own (`one`, `two`).
fn two_images_sharing_a_base(reg: &Registry) -> (TestImage, TestImage) {
    let base = Layer::new(Compression::Gzip, [Entry::file("base", "shared\n")]);
    let one =
        ImageBuilder::new().layer(base.clone()).layer(Layer::new(Compression::Gzip, [Entry::file("one", "1")])).build();
    let two = ImageBuilder::new().layer(base).layer(Layer::new(Compression::Gzip, [Entry::file("two", "2")])).build();
    one.push(reg, "test/one", "v1");
    two.push(reg, "test/two", "v1");
    (one, two)
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_and_remove_keep_what_containers_use() {
    let reg = Registry::start();
    let (_one, two) = two_images_sharing_a_base(&reg);
    let store = Store::new();
    let used = store.pull(&reg.reference("test/one", "v1")).await.unwrap();
    let unused = store.pull(&reg.reference("test/two", "v1")).await.unwrap();
    let in_use: HashSet<Digest> = HashSet::from([used.config.clone()]);

    let usage = store.store.space_usage(&in_use).unwrap().images;
    assert_eq!((usage.total, usage.active), (2, 1));
    let two_only = (two.manifest.len() + two.config.len() + two.layers[1].blob.len()) as u64
        + store.store.snapshots().get(&unused.layers[1].chain_id).unwrap().unwrap().size;
    assert_eq!(usage.reclaimable, two_only, "what only the unused image has");

    let report = store.store.prune(true, &in_use).unwrap();
    assert_eq!(report.untagged, std::slice::from_ref(&unused.name));
    assert_eq!(report.deleted_images, std::slice::from_ref(&unused.config));
    assert_eq!(report.deleted[0], unused.config, "image ids come first");
    assert_eq!(report.reclaimed, two_only);
    assert_eq!(store.snapshot_count(), 2);
    assert_eq!(store.mount(&used).read("one"), "1");

    // Its last name removed (rmi -f), the image in use keeps its content.
    store.store.remove_keeping(&used.name, &in_use).unwrap();
    assert_eq!((store.blob_count(), store.snapshot_count()), (4, 2));
    assert_eq!(store.mount(&used).read("base"), "shared\n");
    let usage = store.store.space_usage(&in_use).unwrap().images;
    assert_eq!((usage.total, usage.active, usage.reclaimable), (1, 1, 0));
    assert!(store.store.prune(false, &in_use).unwrap().deleted.is_empty());
    // Once no container uses it, it is dangling: prune takes it.
    let report = store.store.prune(false, &HashSet::new()).unwrap();
    assert_eq!(report.deleted.len(), 4);
    assert_eq!((store.blob_count(), store.snapshot_count()), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_fetch_each_blob_once() {
    let reg = Registry::start();
    let image = multi_layer_image();
    image.push(&reg, "test/shared", "v1");
    let proxy = CutProxy::passthrough(reg.addr());
    let store = Store::new();
    let name = format!("{}/test/shared:v1", proxy.addr());
    let (a, b) = tokio::join!(store.pull(&name), store.pull(&name));
    assert_eq!(a.unwrap().layers, b.unwrap().layers);
    for layer in &image.layers {
        let gets = proxy.blob_requests(&layer.digest).into_iter().filter(|r| r.method == "GET").count();
        assert_eq!(gets, 1, "layer {} fetched {gets} times", layer.digest);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_images_collects_what_no_image_uses() {
    let reg = Registry::start();
    two_images_sharing_a_base(&reg);
    let store = Store::new();
    store.pull(&reg.reference("test/one", "v1")).await.unwrap();
    let kept = store.pull(&reg.reference("test/two", "v1")).await.unwrap();
    assert_eq!(store.snapshot_count(), 3, "the shared base layer is unpacked once");
    let report = store.store.remove(&reg.reference("test/one", "v1")).unwrap();
    assert_eq!((report.snapshots, report.blobs), (1, 3), "{report:?}"); // one's layer, manifest, config, layer blob
    assert_eq!(store.mount(&kept).read("base"), "shared\n");
    store.store.remove(&reg.reference("test/two", "v1")).unwrap();
    assert_eq!((store.blob_count(), store.snapshot_count()), (0, 0));
    let err = store.store.remove(&reg.reference("test/two", "v1")).unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
}

/// A failed pull leaves no image, no snapshot and no blob that looks valid.
async fn assert_pull_fails(store: &Store, name: &str, needles: &[&str]) -> String {
    let err = store.pull(name).await.unwrap_err().to_string();
    for needle in needles {
        assert!(err.contains(needle), "error does not mention {needle:?}: {err}");
    }
    assert!(store.store.metadata().images().unwrap().is_empty());
    assert_eq!(store.snapshot_count(), 0);
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_references_and_unknown_tags() {
    let store = Store::new();
    assert_pull_fails(&store, "Not A Reference", &["invalid image reference"]).await;
    let reg = Registry::start();
    assert_pull_fails(&store, &reg.reference("test/none", "missing"), &["not found", "test/none"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_manifests_are_refused() {
    let reg = Registry::start();
    bad::schema1(&reg, "test/old", "v1");
    let store = Store::new();
    let err = store.pull(&reg.reference("test/old", "v1")).await.unwrap_err().to_string();
    assert!(err.contains("not supported") || err.contains("schemaVersion") || err.contains("digest"), "{err}");
    let proxy = CutProxy::passthrough(reg.addr());
    bad::made_up_media_type(&proxy, "test/odd", "v1");
    assert_pull_fails(&store, &format!("{}/test/odd:v1", proxy.addr()), &["not supported"]).await;
    bad::serve_huge_manifest(&proxy, &reg, "test/huge", "v1", 5 << 20);
    assert_pull_fails(&store, &format!("{}/test/huge:v1", proxy.addr()), &["limit"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_and_truncated_layers_store_nothing() {
    let reg = Registry::start();
    let corrupt = bad::corrupt_layer(&reg, "test/corrupt", "v1");
    let truncated = bad::truncated_layer(&reg, "test/truncated", "v1", 100);
    let wrong_size = bad::wrong_layer_size(&reg, "test/size", "v1", 10);
    let store = Store::new();
    let err = assert_pull_fails(&store, &reg.reference("test/corrupt", "v1"), &[]).await;
    assert!(err.contains("digest") || err.contains("corrupt") || err.contains("invalid"), "{err}");
    assert_pull_fails(&store, &reg.reference("test/truncated", "v1"), &[]).await;
    assert_pull_fails(&store, &reg.reference("test/size", "v1"), &[]).await;
    for image in [corrupt, truncated, wrong_size] {
        assert!(
            !store.store.content().contains(&image.layers[0].digest.parse().unwrap()),
            "an unverified layer was kept"
        );
    }
    let ingest: Vec<_> = std::fs::read_dir(store.root.join("store/content/ingest")).unwrap().flatten().collect();
    let kept: Vec<_> = ingest.iter().filter(|e| e.metadata().unwrap().len() > 0).collect();
    // A digest mismatch deletes the download; only a short read may be kept to resume.
    assert!(kept.len() <= 2, "{kept:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_layers_write_nothing_outside_their_directory() {
    let sentinel_dir = PathBuf::from(format!("/tmp/tote-image-tests/outside-{}", std::process::id()));
    std::fs::create_dir_all(&sentinel_dir).unwrap();
    let outside = sentinel_dir.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("dot-dot", vec![Entry::file("../../../../../../..//tmp/tote-escape", "x")]),
        ("symlink", vec![Entry::symlink("evil", &outside), Entry::file("evil/through-symlink", "x")]),
        ("symlink-up", vec![Entry::symlink("up", "../../../../../../.."), Entry::file("up/tmp/tote-escape", "x")]),
        // An absolute target is the layer's /etc/passwd, which it does not have.
        ("hardlink", vec![Entry::hardlink("link", "/etc/passwd")]),
        ("hardlink-up", vec![Entry::hardlink("link", "../../../../../../../etc/passwd")]),
    ];
    let reg = Registry::start();
    for (name, entries) in cases {
        let image = ImageBuilder::new().layer(Layer::new(Compression::Gzip, entries)).build();
        image.push(&reg, &format!("evil/{name}"), "v1");
        let store = Store::new();
        let err = assert_pull_fails(&store, &reg.reference(&format!("evil/{name}"), "v1"), &[]).await;
        assert!(err.contains("layer"), "{name}: {err}");
        assert!(!Path::new("/tmp/tote-escape").exists(), "{name}: wrote /tmp/tote-escape");
        assert_eq!(std::fs::read_dir(&sentinel_dir).unwrap().count(), 0, "{name}: wrote into {outside}");
        let leftovers: Vec<_> = std::fs::read_dir(store.root.join("store/snapshots")).unwrap().flatten().collect();
        assert!(leftovers.is_empty(), "{name}: a half-unpacked layer was left: {leftovers:?}");
    }
    // An absolute name, even a host directory's, is inside the layer.
    let image =
        ImageBuilder::new().layer(Layer::new(Compression::Gzip, [Entry::file(&format!("{outside}/abs"), "x")])).build();
    image.push(&reg, "evil/absolute", "v1");
    let store = Store::new();
    let record = store.pull(&reg.reference("evil/absolute", "v1")).await.unwrap();
    assert_eq!(std::fs::read_dir(&sentinel_dir).unwrap().count(), 0, "absolute: wrote into {outside}");
    assert_eq!(store.mount(&record).read(&format!("{}/abs", outside.trim_start_matches('/'))), "x");
    std::fs::remove_dir_all(sentinel_dir).unwrap();
}

/// Runs a tool the test needs, failing with its output if it fails.
#[track_caller]
fn run_tool(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (install it: it is in scripts/packages)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An image as other tools make it: umoci (whose layers begin with a `/`
/// entry for the root; Debian's umoci 0.4.7 `insert` also ends them without
/// tar padding and end blocks, see unpack/unpadded.rs) and GNU tar with
/// absolute member names and an absolute hardlink target, pushed with
/// skopeo. A leading `/` names the layer root, as in docker, containerd,
/// CRI-O and podman.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_built_by_umoci_and_copied_by_skopeo_pulls() {
    let store = Store::new();
    let work = store.root.join("umoci");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "made by umoci\n").unwrap();
    let layout = work.join("layout");
    let image = format!("{}:v1", layout.display());
    run_tool("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    run_tool("umoci", &["new", "--image", &image]);
    run_tool("umoci", &["insert", "--image", &image, rootfs.to_str().unwrap(), "/"]);

    // A second layer with absolute names; its paths are unique to this run
    // so that a write outside the layer would show on the host.
    let unique = format!("tote-abs-{}", std::process::id());
    let abs = work.join("abs");
    std::fs::create_dir_all(abs.join(&unique).join("sub")).unwrap();
    std::fs::write(abs.join(&unique).join("file"), "absolute\n").unwrap();
    std::fs::hard_link(abs.join(&unique).join("file"), abs.join(&unique).join("sub/hard")).unwrap();
    std::os::unix::fs::symlink(format!("/{unique}/file"), abs.join(&unique).join("sub/link")).unwrap();
    let abs_tar = work.join("abs.tar");
    run_tool(
        "tar",
        &[
            "-C",
            abs.to_str().unwrap(),
            "-cPf",
            abs_tar.to_str().unwrap(),
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            // A `/` before every member name and hardlink target, not symlink targets.
            "--transform",
            "s,^,/,S",
            &unique,
        ],
    );
    run_tool("umoci", &["raw", "add-layer", "--image", &image, abs_tar.to_str().unwrap()]);

    let reg = Registry::start();
    let destination = format!("docker://{}", reg.reference("umoci/busybox", "v1"));
    run_tool(
        "skopeo",
        &["--insecure-policy", "copy", "--dest-tls-verify=false", &format!("oci:{image}"), &destination],
    );
    let record = store.pull(&reg.reference("umoci/busybox", "v1")).await.unwrap();
    assert_eq!(record.layers.len(), 2);

    let root = store.mount(&record);
    assert_eq!(std::fs::read(root.path("bin/busybox")).unwrap(), std::fs::read("/bin/busybox").unwrap());
    assert_eq!(std::fs::read_link(root.path("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(root.read("etc/motd"), "made by umoci\n");
    assert_eq!(root.read(&format!("{unique}/file")), "absolute\n");
    let file = std::fs::metadata(root.path(&format!("{unique}/file"))).unwrap();
    let hard = std::fs::metadata(root.path(&format!("{unique}/sub/hard"))).unwrap();
    assert_eq!(file.ino(), hard.ino(), "the absolute hardlink target is the layer's own file");
    assert_eq!(
        std::fs::read_link(root.path(&format!("{unique}/sub/link"))).unwrap(),
        Path::new(&format!("/{unique}/file"))
    );
    assert!(!Path::new(&format!("/{unique}")).exists(), "a layer wrote /{unique} on the host");
    let out = std::process::Command::new("chroot")
        .arg(&root.target)
        .args(["/bin/sh", "-c", &format!("busybox cat /etc/motd /{unique}/sub/link")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "made by umoci\nabsolute\n", "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn images_save_and_load_without_a_registry() {
    let reg = Registry::start();
    let image = multi_layer_image();
    image.push(&reg, "test/offline", "v1");
    let online = Store::new();
    let pulled = online.pull(&reg.reference("test/offline", "v1")).await.unwrap();
    drop(reg);
    let archive = online.root.join("saved.tar");
    toted::archive::export(&online.store, std::slice::from_ref(&pulled.name), std::fs::File::create(&archive).unwrap())
        .unwrap();
    let offline = Store::new();
    let loaded = toted::archive::import(&offline.store, &archive, None).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].name, pulled.name);
    assert_eq!(loaded[0].manifest, pulled.manifest);
    assert_eq!(loaded[0].layers, pulled.layers);
    assert_eq!(offline.mount(&loaded[0]).read("opaque/z"), "z");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_save_tarball_loads() {
    // docker save's layout: manifest.json, a config and one layer.tar per layer.
    let layer = registry::tar_of(&[Entry::file("from-docker", "yes\n")]);
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "config": {"Cmd": ["sh"]}
    })
    .to_string();
    let manifest =
        serde_json::json!([{"Config": "abc.json", "RepoTags": ["docker/saved:v1"], "Layers": ["0123/layer.tar"]}])
            .to_string();
    let store = Store::new();
    std::fs::create_dir_all(&store.root).unwrap();
    let archive = store.root.join("docker.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (path, bytes) in
        [("manifest.json", manifest.as_bytes()), ("abc.json", config.as_bytes()), ("0123/layer.tar", layer.as_slice())]
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes).unwrap();
    }
    tar.finish().unwrap();
    drop(tar);
    let loaded = toted::archive::import(&store.store, &archive, None).await.unwrap();
    assert_eq!(loaded[0].name, "docker.io/docker/saved:v1");
    assert_eq!(store.mount(&loaded[0]).read("from-docker"), "yes\n");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_busybox_image_builds_offline_and_runs() {
    let store = Store::new();
    let image = toted::archive::build_busybox(&store.store, Path::new("/bin/busybox"), "busybox:latest").await.unwrap();
    assert_eq!(image.name, "docker.io/library/busybox:latest");
    // The same binary makes the same image.
    let again = toted::archive::build_busybox(&store.store, Path::new("/bin/busybox"), "busybox:latest").await.unwrap();
    assert_eq!(again.manifest, image.manifest);
    let root = store.mount(&image);
    assert_eq!(std::fs::read_link(root.path("bin/sh")).unwrap(), Path::new("busybox"));
    let out = std::process::Command::new("chroot")
        .arg(&root.target)
        .args(["/bin/sh", "-c", "echo hi from $(busybox | head -1 | cut -d' ' -f1)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from BusyBox\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_reports_progress_per_layer() {
    let reg = Registry::start();
    let image = multi_layer_image();
    image.push(&reg, "test/progress", "v1");
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let opts = PullOptions {
        progress: Some(Arc::new(move |e: &toted::images::Progress| seen.lock().unwrap().push(e.clone()))),
        ..Default::default()
    };
    let store = Store::new();
    store.store.pull(&reg.reference("test/progress", "v1"), &opts).await.unwrap();
    let events = events.lock().unwrap();
    assert!(matches!(events[0], toted::images::Progress::Resolved { .. }));
    for layer in &image.layers {
        let digest: toted::digest::Digest = layer.digest.parse().unwrap();
        let last = events.iter().rev().find_map(|e| match e {
            toted::images::Progress::Layer { digest: d, done, total } if *d == digest => Some((*done, *total)),
            _ => None,
        });
        assert_eq!(last, Some((layer.blob.len() as u64, layer.blob.len() as u64)), "layer {}", layer.digest);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, toted::images::Progress::LayerReady { digest: d, reused: false } if *d == digest))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_list_inspect_and_disk_usage() {
    let reg = Registry::start();
    ImageBuilder::new().layer(Layer::new(Compression::Gzip, [Entry::file("f", "1")])).build().push(
        &reg,
        "test/tagged",
        "v1",
    );
    let store = Store::new();
    let pulled = store.pull(&reg.reference("test/tagged", "v1")).await.unwrap();
    let tagged = store.store.tag(&pulled.name, "mine/alias:2").unwrap();
    assert_eq!(tagged.name, "docker.io/mine/alias:2");
    assert_eq!(tagged.manifest, pulled.manifest);
    let names: Vec<String> = store.store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec![pulled.name.clone(), "docker.io/mine/alias:2".to_string()]);
    assert_eq!(store.store.get("mine/alias:2").unwrap().layers, pulled.layers);
    assert!(matches!(store.store.get("mine/other").unwrap_err(), ImageError::NotFound(_)));
    let usage = store.store.disk_usage().unwrap();
    assert_eq!(usage.images, 2);
    assert!(usage.blobs >= pulled.size() && usage.snapshots > 0, "{usage:?}");
    // Removing one name keeps what the other still uses.
    let report = store.store.remove("mine/alias:2").unwrap();
    assert_eq!((report.blobs, report.snapshots), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_with_many_layers_mounts() {
    // 200 layers: their paths are far more than the one page mount(2) takes.
    let reg = Registry::start();
    let mut builder = ImageBuilder::new();
    for i in 0..200 {
        builder = builder.layer(Layer::new(Compression::None, [Entry::file(&format!("layer-{i:03}"), format!("{i}"))]));
    }
    builder.build().push(&reg, "test/deep", "v1");
    let store = Store::new();
    let record = store
        .store
        .pull(&reg.reference("test/deep", "v1"), &PullOptions { concurrency: 8, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(record.layers.len(), 200);
    let root = store.mount(&record);
    assert_eq!(root.read("layer-000"), "0");
    assert_eq!(root.read("layer-199"), "199");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oci_layout_directory_loads() {
    let reg = Registry::start();
    ImageBuilder::new().layer(Layer::new(Compression::Zstd, [Entry::file("oci", "layout\n")])).build().push(
        &reg,
        "test/layout",
        "v1",
    );
    let online = Store::new();
    let pulled = online.pull(&reg.reference("test/layout", "v1")).await.unwrap();
    let archive = online.root.join("saved.tar");
    toted::archive::export(&online.store, std::slice::from_ref(&pulled.name), std::fs::File::create(&archive).unwrap())
        .unwrap();
    let layout = online.root.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    tar::Archive::new(std::fs::File::open(&archive).unwrap()).unpack(&layout).unwrap();
    std::fs::remove_file(layout.join("manifest.json")).unwrap(); // a pure OCI layout, no docker index
    let offline = Store::new();
    let loaded = toted::archive::import(&offline.store, &layout, None).await.unwrap();
    assert_eq!(loaded[0].name, pulled.name);
    assert_eq!(offline.mount(&loaded[0]).read("oci"), "layout\n");
}
