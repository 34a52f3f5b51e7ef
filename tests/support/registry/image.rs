//! Images built in memory: tar layers from entry lists, OCI and Docker
//! schema2 manifests and configs, OCI indexes and Docker manifest lists,
//! broken variants, and a big deterministic image for benchmarks.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde_json::{Value, json};

use super::{CannedResponse, CutProxy, REGISTRY_MAX_MANIFEST, Registry, sha256_digest};

/// Media types, as registries and clients spell them.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// containerd's name; Docker itself uses the OCI zstd type.
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
    /// Signed schema1, which docker-registry 2.8 refuses on PUT.
    pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// A manifest type nobody supports.
    pub const MADE_UP: &str = "application/vnd.tote.test.made-up+json";
    /// A config type of an artifact that is not a container image.
    pub const ARTIFACT_CONFIG: &str = "application/vnd.tote.test.artifact.config+json";
    /// A layer type that is not a tar.
    pub const ARTIFACT_LAYER: &str = "application/vnd.tote.test.artifact.layer";
}
use media_types as mt;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Which family of media types a manifest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest / index.
    Oci,
    /// Docker schema2 manifest / manifest list.
    Docker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform { os: os.into(), architecture: architecture.into(), variant: variant.map(Into::into) }
    }

    /// This machine's platform in OCI terms (x86_64 is amd64, aarch64 is arm64).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Platform::new("linux", arch, None)
    }

    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    pub fn linux_arm64_v8() -> Platform {
        Platform::new("linux", "arm64", Some("v8"))
    }

    /// "linux/amd64", "linux/arm64/v8".
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// The `platform` object of an index entry.
    pub fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    /// A hard link to an earlier entry's path.
    Hardlink(String),
    Fifo,
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
}

/// One tar entry. Paths and link targets are written verbatim, not
/// normalized or checked: "../x" and "/x" go into the tar as given, so
/// hostile layers are possible. Parents are not added implicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The mtime entries get unless told otherwise (2020-09-13T12:26:40Z).
pub const DEFAULT_MTIME: u64 = 1_600_000_000;

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry { path: path.into(), kind, mode, uid: 0, gid: 0, mtime: DEFAULT_MTIME, xattrs: Vec::new() }
    }

    /// A regular file, mode 0644.
    pub fn file(path: &str, content: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, EntryKind::File(content.into()), 0o644)
    }

    /// A directory, mode 0755 (written with a trailing '/').
    pub fn dir(path: &str) -> Entry {
        Entry::new(path, EntryKind::Dir, 0o755)
    }

    /// `path` -> `target`.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// `path` is a hard link to `target`, an earlier entry's path.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.into()), 0o644)
    }

    /// Deletes `path` of lower layers: an empty file "<dir>/.wh.<name>".
    pub fn whiteout(path: &str) -> Entry {
        let path = path.trim_end_matches('/');
        let whiteout = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        Entry::new(&whiteout, EntryKind::File(Vec::new()), 0o644)
    }

    /// Hides everything lower layers have in `dir`: "<dir>/.wh..wh..opq".
    pub fn opaque(dir: &str) -> Entry {
        let dir = dir.trim_end_matches('/');
        let path = if dir.is_empty() { ".wh..wh..opq".to_string() } else { format!("{dir}/.wh..wh..opq") };
        Entry::new(&path, EntryKind::File(Vec::new()), 0o644)
    }

    pub fn fifo(path: &str) -> Entry {
        Entry::new(path, EntryKind::Fifo, 0o644)
    }

    pub fn char_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    pub fn block_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::BlockDevice { major, minor }, 0o660)
    }

    /// Permission bits, setuid/setgid/sticky included (e.g. 0o4755).
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Entry {
        self.xattrs.push((name.into(), value.into()));
        self
    }
}

/// Builds an uncompressed tar (ending in the two zero blocks) from entries.
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        append_entry(&mut builder, entry).expect("append to an in-memory tar");
    }
    builder.into_inner().expect("finish an in-memory tar")
}

fn set_raw(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// PAX extended header records: "<len> <key>=<value>\n", len counting itself.
fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn append_entry(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry) -> io::Result<()> {
    use tar::EntryType;
    let mut path = entry.path.clone();
    let (entry_type, data, link): (EntryType, &[u8], Option<&str>) = match &entry.kind {
        EntryKind::File(content) => (EntryType::Regular, content, None),
        EntryKind::Dir => {
            if !path.ends_with('/') {
                path.push('/');
            }
            (EntryType::Directory, &[], None)
        }
        EntryKind::Symlink(target) => (EntryType::Symlink, &[], Some(target)),
        EntryKind::Hardlink(target) => (EntryType::Link, &[], Some(target)),
        EntryKind::Fifo => (EntryType::Fifo, &[], None),
        EntryKind::CharDevice { .. } => (EntryType::Char, &[], None),
        EntryKind::BlockDevice { .. } => (EntryType::Block, &[], None),
    };

    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if path.len() > 100 {
        pax.push(("path".into(), path.clone().into_bytes()));
    }
    if let Some(link) = link.filter(|l| l.len() > 100) {
        pax.push(("linkpath".into(), link.as_bytes().to_vec()));
    }
    for (name, value) in &entry.xattrs {
        pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
    }
    if !pax.is_empty() {
        let records = pax_records(&pax);
        let mut header = tar::Header::new_ustar();
        let base = path.trim_end_matches('/').rsplit('/').next().unwrap_or("entry");
        set_raw(&mut header.as_ustar_mut().unwrap().name, format!("PaxHeaders.0/{base}").as_bytes());
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_mtime(entry.mtime);
        header.set_size(records.len() as u64);
        header.set_cksum();
        builder.append(&header, records.as_slice())?;
    }

    let mut header = tar::Header::new_ustar();
    {
        let ustar = header.as_ustar_mut().unwrap();
        set_raw(&mut ustar.name, path.as_bytes());
        if let Some(link) = link {
            set_raw(&mut ustar.linkname, link.as_bytes());
        }
    }
    header.set_entry_type(entry_type);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(entry.mtime);
    header.set_size(data.len() as u64);
    if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } = entry.kind {
        header.set_device_major(major)?;
        header.set_device_minor(minor)?;
    }
    header.set_cksum();
    builder.append(&header, data)
}

/// A layer: a tar (built from entries, or given raw) and how to compress it.
#[derive(Debug, Clone)]
pub struct Layer {
    tar: Vec<u8>,
    compression: Compression,
    level: Option<i32>,
    media_type: Option<String>,
}

impl Layer {
    pub fn new(compression: Compression, entries: impl IntoIterator<Item = Entry>) -> Layer {
        let entries: Vec<Entry> = entries.into_iter().collect();
        Layer::from_tar(compression, tar_of(&entries))
    }

    /// Any bytes as the uncompressed layer (need not even be a tar).
    pub fn from_tar(compression: Compression, tar: Vec<u8>) -> Layer {
        Layer { tar, compression, level: None, media_type: None }
    }

    /// Compression level (gzip 0-9, default 6; zstd 1-22, default 3).
    pub fn level(mut self, level: i32) -> Layer {
        self.level = Some(level);
        self
    }

    /// Overrides the descriptor's media type.
    pub fn media_type(mut self, media_type: &str) -> Layer {
        self.media_type = Some(media_type.into());
        self
    }

    pub fn tar(&self) -> &[u8] {
        &self.tar
    }

    fn build(&self, format: Format) -> BuiltLayer {
        let blob = compress(&self.tar, self.compression, self.level);
        let default_type = match (format, self.compression) {
            (Format::Oci, Compression::None) => mt::OCI_LAYER,
            (Format::Oci, Compression::Gzip) => mt::OCI_LAYER_GZIP,
            (Format::Oci, Compression::Zstd) => mt::OCI_LAYER_ZSTD,
            (Format::Docker, Compression::None) => mt::DOCKER_LAYER,
            (Format::Docker, Compression::Gzip) => mt::DOCKER_LAYER_GZIP,
            (Format::Docker, Compression::Zstd) => mt::DOCKER_LAYER_ZSTD,
        };
        BuiltLayer {
            media_type: self.media_type.clone().unwrap_or_else(|| default_type.into()),
            compression: self.compression,
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&self.tar),
            blob,
            tar: self.tar.clone(),
        }
    }
}

fn compress(data: &[u8], compression: Compression, level: Option<i32>) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let level = u32::try_from(level.unwrap_or(6)).expect("gzip level 0-9");
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, level.unwrap_or(3)).unwrap(),
    }
}

/// A layer as pushed: its blob, digest and the diff_id of its tar.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub media_type: String,
    pub compression: Compression,
    /// The compressed blob.
    pub blob: Vec<u8>,
    /// sha256 of `blob`.
    pub digest: String,
    /// sha256 of `tar`, as listed in the config's rootfs.diff_ids.
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

impl BuiltLayer {
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.blob.len() })
    }
}

type ConfigEdit = Box<dyn FnOnce(&mut Value)>;

/// Builds one image. Defaults: OCI, this machine's platform, PATH in Env,
/// created 2024-01-01, one history entry per layer.
pub struct ImageBuilder {
    format: Format,
    platform: Platform,
    layers: Vec<Layer>,
    history: Vec<(String, bool)>,
    env: Vec<(String, String)>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    created: String,
    config_edits: Vec<ConfigEdit>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            format: Format::Oci,
            platform: Platform::host(),
            layers: Vec::new(),
            history: Vec::new(),
            env: vec![("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())],
            cmd: None,
            entrypoint: None,
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            created: "2024-01-01T00:00:00Z".into(),
            config_edits: Vec::new(),
        }
    }

    /// A Docker schema2 image.
    pub fn docker() -> ImageBuilder {
        ImageBuilder::new().format(Format::Docker)
    }

    pub fn format(mut self, format: Format) -> ImageBuilder {
        self.format = format;
        self
    }

    pub fn platform(mut self, platform: Platform) -> ImageBuilder {
        self.platform = platform;
        self
    }

    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.history.push((format!("layer {}", self.layers.len()), false));
        self.layers.push(layer);
        self
    }

    /// A history entry with `empty_layer: true` (like an ENV step), placed
    /// after the layers added so far.
    pub fn empty_layer_history(mut self, created_by: &str) -> ImageBuilder {
        self.history.push((created_by.into(), true));
        self
    }

    /// Sets (or replaces) one Env variable.
    pub fn env(mut self, key: &str, value: &str) -> ImageBuilder {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cmd<S: Into<String>>(mut self, cmd: impl IntoIterator<Item = S>) -> ImageBuilder {
        self.cmd = Some(cmd.into_iter().map(Into::into).collect());
        self
    }

    pub fn entrypoint<S: Into<String>>(mut self, entrypoint: impl IntoIterator<Item = S>) -> ImageBuilder {
        self.entrypoint = Some(entrypoint.into_iter().map(Into::into).collect());
        self
    }

    pub fn working_dir(mut self, dir: &str) -> ImageBuilder {
        self.working_dir = Some(dir.into());
        self
    }

    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.user = Some(user.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// An annotation on the manifest.
    pub fn annotation(mut self, key: &str, value: &str) -> ImageBuilder {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn created(mut self, rfc3339: &str) -> ImageBuilder {
        self.created = rfc3339.into();
        self
    }

    /// Changes the config JSON after it is built, before it is hashed (e.g.
    /// a wrong diff_id: `c["rootfs"]["diff_ids"][0] = json!("sha256:00...")`).
    pub fn edit_config(mut self, edit: impl FnOnce(&mut Value) + 'static) -> ImageBuilder {
        self.config_edits.push(Box::new(edit));
        self
    }

    pub fn build(self) -> TestImage {
        let format = self.format;
        let layers: Vec<BuiltLayer> = std::thread::scope(|s| {
            let handles: Vec<_> = self.layers.iter().map(|l| s.spawn(move || l.build(format))).collect();
            handles.into_iter().map(|h| h.join().expect("build a layer")).collect()
        });

        let mut container = serde_json::Map::new();
        container.insert("Env".into(), json!(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()));
        if let Some(cmd) = &self.cmd {
            container.insert("Cmd".into(), json!(cmd));
        }
        if let Some(entrypoint) = &self.entrypoint {
            container.insert("Entrypoint".into(), json!(entrypoint));
        }
        if let Some(dir) = &self.working_dir {
            container.insert("WorkingDir".into(), json!(dir));
        }
        if let Some(user) = &self.user {
            container.insert("User".into(), json!(user));
        }
        if !self.labels.is_empty() {
            container.insert("Labels".into(), json!(self.labels));
        }
        let history: Vec<Value> = self
            .history
            .iter()
            .map(|(created_by, empty)| {
                let mut h = json!({ "created": self.created, "created_by": created_by });
                if *empty {
                    h["empty_layer"] = json!(true);
                }
                h
            })
            .collect();
        let mut config = json!({
            "created": self.created,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": container,
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
            "history": history,
        });
        if let Some(variant) = &self.platform.variant {
            config["variant"] = json!(variant);
        }
        for edit in self.config_edits {
            edit(&mut config);
        }
        let config = serde_json::to_vec(&config).unwrap();

        let (media_type, config_media_type) = match format {
            Format::Oci => (mt::OCI_MANIFEST, mt::OCI_CONFIG),
            Format::Docker => (mt::DOCKER_MANIFEST, mt::DOCKER_CONFIG),
        };
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": { "mediaType": config_media_type, "digest": sha256_digest(&config), "size": config.len() },
            "layers": layers.iter().map(BuiltLayer::descriptor).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        let manifest = serde_json::to_vec(&manifest).unwrap();
        TestImage {
            format,
            platform: self.platform,
            media_type: media_type.into(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config_digest: sha256_digest(&config),
            config,
            layers,
        }
    }
}

/// A built image: every byte that gets pushed, and its digests.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub format: Format,
    pub platform: Platform,
    /// The manifest's media type.
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<BuiltLayer>,
}

impl TestImage {
    pub fn manifest_json(&self) -> Value {
        serde_json::from_slice(&self.manifest).unwrap()
    }

    pub fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config).unwrap()
    }

    /// This manifest's entry in an index (with its platform).
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
            "platform": self.platform.to_json(),
        })
    }

    /// Rewrites the manifest (and its digest). The blobs stay as they were.
    pub fn edit_manifest(mut self, edit: impl FnOnce(&mut Value)) -> TestImage {
        let mut manifest = self.manifest_json();
        edit(&mut manifest);
        self.manifest = serde_json::to_vec(&manifest).unwrap();
        self.manifest_digest = sha256_digest(&self.manifest);
        self
    }

    /// Uploads the config and layer blobs.
    pub fn push_blobs(&self, registry: &Registry, repo: &str) {
        registry.push_blob(repo, &self.config);
        for layer in &self.layers {
            registry.push_blob(repo, &layer.blob);
        }
    }

    /// Pushes the blobs and the manifest under `tag`; returns the manifest digest.
    pub fn push(&self, registry: &Registry, repo: &str, tag: &str) -> String {
        self.push_blobs(registry, repo);
        registry.push_manifest(repo, tag, &self.media_type, &self.manifest)
    }

    /// Pushes the blobs and the manifest by digest only (no tag).
    pub fn push_untagged(&self, registry: &Registry, repo: &str) -> String {
        self.push_blobs(registry, repo);
        registry.push_manifest(repo, &self.manifest_digest, &self.media_type, &self.manifest)
    }
}

/// Builds an OCI index or a Docker manifest list.
pub struct IndexBuilder {
    format: Format,
    images: Vec<TestImage>,
}

impl IndexBuilder {
    pub fn new(format: Format) -> IndexBuilder {
        IndexBuilder { format, images: Vec::new() }
    }

    pub fn image(mut self, image: TestImage) -> IndexBuilder {
        self.images.push(image);
        self
    }

    pub fn build(self) -> TestIndex {
        let media_type = match self.format {
            Format::Oci => mt::OCI_INDEX,
            Format::Docker => mt::DOCKER_MANIFEST_LIST,
        };
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": self.images.iter().map(TestImage::descriptor).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&index).unwrap();
        TestIndex {
            format: self.format,
            media_type: media_type.into(),
            digest: sha256_digest(&manifest),
            manifest,
            images: self.images,
        }
    }
}

/// A built index or manifest list and its images.
#[derive(Debug, Clone)]
pub struct TestIndex {
    pub format: Format,
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub digest: String,
    pub images: Vec<TestImage>,
}

impl TestIndex {
    /// Pushes every image by digest, then the index under `tag`; returns
    /// the index digest.
    pub fn push(&self, registry: &Registry, repo: &str, tag: &str) -> String {
        for image in &self.images {
            image.push_untagged(registry, repo);
        }
        registry.push_manifest(repo, tag, &self.media_type, &self.manifest)
    }

    /// The image for `architecture` ("amd64", "arm64").
    pub fn image_for(&self, architecture: &str) -> &TestImage {
        self.images
            .iter()
            .find(|i| i.platform.architecture == architecture)
            .unwrap_or_else(|| panic!("no {architecture} image in this index"))
    }
}

/// A two-platform index (OCI index, or Docker manifest list of schema2
/// images): linux/amd64 and linux/arm64/v8. Each image has one gzip layer
/// with a file `/platform` holding its platform name and a newline
/// ("linux/amd64\n", "linux/arm64/v8\n"), and `PLATFORM=<name>` in Env.
pub fn multi_platform(format: Format) -> TestIndex {
    let mut index = IndexBuilder::new(format);
    for platform in [Platform::linux_amd64(), Platform::linux_arm64_v8()] {
        let name = platform.name();
        index = index.image(
            ImageBuilder::new()
                .format(format)
                .platform(platform)
                .layer(Layer::new(Compression::Gzip, [Entry::file("platform", format!("{name}\n"))]))
                .env("PLATFORM", &name)
                .cmd(["/bin/sh"])
                .build(),
        );
    }
    index.build()
}

/// A multi-layer OCI image of about `total_mb` MiB (uncompressed) of
/// deterministic, mostly incompressible data (3/4 xorshift noise, 1/4 text)
/// in files of 1 KiB to 2 MiB (mostly small: about 4000 files per 300 MiB)
/// under /data/lNN/dMM/, 32 files a directory, plus a symlink and a
/// hard link per layer. Layers are gzip level 1 and built in parallel.
pub fn big_image(total_mb: usize, layers: usize) -> TestImage {
    big_image_with(total_mb, layers, Compression::Gzip)
}

/// [`big_image`] with another compression (gzip level 1, zstd level 1).
pub fn big_image_with(total_mb: usize, layers: usize, compression: Compression) -> TestImage {
    assert!(layers > 0, "big_image needs at least one layer");
    let per_layer = total_mb * 1024 * 1024 / layers;
    let built: Vec<Layer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..layers)
            .map(|index| {
                s.spawn(move || {
                    let tar = big_layer_tar(index, per_layer);
                    let level = if compression == Compression::None { None } else { Some(1) };
                    Layer { tar, compression, level, media_type: None }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("build a big layer")).collect()
    });
    let mut image = ImageBuilder::new().label("org.tote.test.big-image", &format!("{total_mb}MiB/{layers}"));
    for layer in built {
        image = image.layer(layer);
    }
    image.cmd(["/bin/true"]).build()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn big_layer_tar(index: usize, budget: usize) -> Vec<u8> {
    const TEXT: &[u8] = b"Tote benchmark data: the quick brown fox jumps over the lazy dog. 0123456789\n";
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut builder = tar::Builder::new(Vec::with_capacity(budget + budget / 8));
    let root = format!("data/l{index:02}");
    let mut add = |entry: Entry| append_entry(&mut builder, &entry).expect("append to an in-memory tar");
    add(Entry::dir("data"));
    add(Entry::dir(&root));
    let mut written = 0usize;
    let mut file = 0usize;
    let mut first_file = None;
    while written < budget {
        if file.is_multiple_of(32) {
            add(Entry::dir(&format!("{root}/d{:02}", file / 32)));
        }
        // 1 KiB << 0..=10, skewed to small files (mean about 75 KiB), doubled at most.
        let shift = rng.below(11).min(rng.below(11));
        let size = usize::try_from((1024u64 << shift) + rng.below(1024 << shift)).unwrap_or(usize::MAX);
        let size = size.min(budget - written).max(1);
        let mut content = vec![0u8; size];
        for (block, chunk) in content.chunks_mut(4096).enumerate() {
            if block % 4 == 3 {
                for (i, byte) in chunk.iter_mut().enumerate() {
                    *byte = TEXT[i % TEXT.len()];
                }
            } else {
                for word in chunk.chunks_mut(8) {
                    let bytes = rng.next().to_le_bytes();
                    word.copy_from_slice(&bytes[..word.len()]);
                }
            }
        }
        let path = format!("{root}/d{:02}/f{file:04}.bin", file / 32);
        let mode = if file.is_multiple_of(7) { 0o755 } else { 0o644 };
        add(Entry::file(&path, content).mode(mode));
        first_file.get_or_insert(path);
        written += size;
        file += 1;
    }
    if let Some(first) = first_file {
        add(Entry::symlink(&format!("{root}/first"), &first[root.len() + 1..]));
        add(Entry::hardlink(&format!("{root}/first.hardlink"), &first));
    }
    builder.into_inner().expect("finish an in-memory tar")
}

/// Broken images and manifests, for testing that a client refuses them.
pub mod bad {
    use super::*;

    /// A one-layer image to break.
    pub fn small_image(format: Format) -> TestImage {
        ImageBuilder::new()
            .format(format)
            .layer(Layer::new(
                Compression::Gzip,
                [Entry::dir("etc"), Entry::file("etc/hello", "hello from a broken image\n".repeat(200))],
            ))
            .cmd(["/bin/sh"])
            .build()
    }

    /// A schema1 manifest (`application/vnd.docker.distribution.manifest.v1+prettyjws`,
    /// which docker-registry 2.8 refuses on PUT) stored behind the registry's
    /// back under `tag`. Only its unsigned payload is stored: the registry
    /// signs schema1 manifests itself (with a key of its own) each time it
    /// serves one. Returns the digest the registry gives it, which as
    /// schema1 requires is the sha256 of the payload, not of the signed body
    /// it serves (so a client checking the body's digest sees a mismatch).
    pub fn schema1(registry: &Registry, repo: &str, tag: &str) -> String {
        let image = small_image(Format::Docker);
        image.push_blobs(registry, repo);
        let payload = serde_json::to_string_pretty(&json!({
            "schemaVersion": 1,
            "name": repo,
            "tag": tag,
            "architecture": "amd64",
            "fsLayers": [{ "blobSum": image.layers[0].digest }],
            "history": [{ "v1Compatibility": "{\"id\":\"0000000000000000000000000000000000000000000000000000000000000001\",\"os\":\"linux\",\"architecture\":\"amd64\"}" }],
        }))
        .unwrap();
        registry.inject_manifest(repo, tag, payload.as_bytes())
    }

    /// An OCI manifest of an artifact that is not a container image: config
    /// of type [`media_types::ARTIFACT_CONFIG`], one layer of type
    /// [`media_types::ARTIFACT_LAYER`] that is not a tar. The registry takes it.
    pub fn artifact(registry: &Registry, repo: &str, tag: &str) -> TestImage {
        let image = ImageBuilder::new()
            .layer(Layer::from_tar(Compression::None, b"not a tar".to_vec()).media_type(mt::ARTIFACT_LAYER))
            .build()
            .edit_manifest(|m| {
                m["config"]["mediaType"] = json!(mt::ARTIFACT_CONFIG);
                m["artifactType"] = json!(mt::ARTIFACT_CONFIG);
            });
        image.push(registry, repo, tag);
        image
    }

    /// A manifest of a made-up media type ([`media_types::MADE_UP`]), served
    /// by `proxy` for `repo:tag` and `repo@digest` (docker-registry refuses
    /// to store or serve unknown types). Returns its digest.
    pub fn made_up_media_type(proxy: &CutProxy, repo: &str, tag: &str) -> String {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": mt::MADE_UP,
            "config": { "mediaType": mt::OCI_CONFIG, "digest": sha256_digest(b"{}"), "size": 2 },
            "layers": [],
        }))
        .unwrap();
        serve(proxy, repo, tag, mt::MADE_UP, body)
    }

    fn serve(proxy: &CutProxy, repo: &str, tag: &str, media_type: &str, body: Vec<u8>) -> String {
        let digest = sha256_digest(&body);
        let canned = CannedResponse::manifest(media_type, body);
        proxy.respond(&format!("/v2/{repo}/manifests/{tag}"), canned.clone());
        proxy.respond(&format!("/v2/{repo}/manifests/{digest}"), canned);
        digest
    }

    /// `image` with its manifest padded (by an annotation) to exactly `size` bytes.
    pub fn padded(image: TestImage, size: usize) -> TestImage {
        const KEY: &str = "org.tote.test.padding";
        let base = image.clone().edit_manifest(|m| m["annotations"][KEY] = json!("")).manifest.len();
        assert!(size >= base, "a manifest cannot be padded to {size} bytes: it has {base} already");
        let padded = image.edit_manifest(|m| m["annotations"][KEY] = json!("a".repeat(size - base)));
        assert_eq!(padded.manifest.len(), size);
        padded
    }

    /// A valid image whose manifest is `size` bytes, pushed under `tag`.
    /// docker-registry refuses manifests over [`REGISTRY_MAX_MANIFEST`] (4 MiB);
    /// for bigger ones use [`serve_huge_manifest`].
    pub fn push_huge_manifest(registry: &Registry, repo: &str, tag: &str, size: usize) -> TestImage {
        assert!(size <= REGISTRY_MAX_MANIFEST, "docker-registry refuses manifests over 4 MiB: use serve_huge_manifest");
        let image = padded(small_image(Format::Oci), size);
        image.push(registry, repo, tag);
        image
    }

    /// A valid image whose manifest is `size` bytes (any size), its blobs
    /// pushed to `registry` and its manifest served by `proxy` (which must be
    /// in front of `registry`) for `repo:tag` and `repo@digest`.
    pub fn serve_huge_manifest(proxy: &CutProxy, registry: &Registry, repo: &str, tag: &str, size: usize) -> TestImage {
        let image = padded(small_image(Format::Oci), size);
        image.push_blobs(registry, repo);
        serve(proxy, repo, tag, &image.media_type, image.manifest.clone());
        image
    }

    /// An image whose manifest gives layer 0 a size off by `delta` bytes
    /// (the registry does not check sizes). Positive: the blob looks
    /// truncated; negative: it is longer than declared.
    pub fn wrong_layer_size(registry: &Registry, repo: &str, tag: &str, delta: i64) -> TestImage {
        let image = small_image(Format::Oci);
        let size = i64::try_from(image.layers[0].blob.len()).unwrap() + delta;
        assert!(size >= 0, "delta makes the size negative");
        let image = image.edit_manifest(|m| m["layers"][0]["size"] = json!(size));
        image.push(registry, repo, tag);
        image
    }

    /// An image whose manifest names layer 0 by a digest that is not the
    /// sha256 of its content: the real blob is stored under that wrong
    /// digest behind the registry's back, which then serves it. The
    /// `TestImage` keeps the true blob; its manifest has the wrong digest.
    pub fn wrong_layer_digest(registry: &Registry, repo: &str, tag: &str) -> TestImage {
        let image = small_image(Format::Oci);
        let wrong = sha256_digest(b"this is not the layer");
        registry.inject_blob(repo, &wrong, &image.layers[0].blob);
        let image = image.edit_manifest(|m| m["layers"][0]["digest"] = json!(wrong));
        image.push(registry, repo, tag);
        image
    }

    /// A pushed image whose layer 0 blob is then corrupted in storage: the
    /// registry serves bytes of the right length but the wrong digest (gzip
    /// header intact, deflate stream altered midway).
    pub fn corrupt_layer(registry: &Registry, repo: &str, tag: &str) -> TestImage {
        let image = small_image(Format::Oci);
        image.push(registry, repo, tag);
        let mut corrupted = image.layers[0].blob.clone();
        let mid = corrupted.len() / 2;
        corrupted[mid] ^= 0xFF;
        registry.corrupt_blob(&image.layers[0].digest, &corrupted);
        image
    }

    /// A pushed image whose layer 0 blob is then cut to its first `keep`
    /// bytes in storage: the registry serves the short blob (with a matching
    /// Content-Length), while the manifest declares the full size.
    pub fn truncated_layer(registry: &Registry, repo: &str, tag: &str, keep: usize) -> TestImage {
        let image = small_image(Format::Oci);
        assert!(keep < image.layers[0].blob.len(), "keep fewer bytes than the blob's {}", image.layers[0].blob.len());
        image.push(registry, repo, tag);
        registry.corrupt_blob(&image.layers[0].digest, &image.layers[0].blob[..keep]);
        image
    }
}
