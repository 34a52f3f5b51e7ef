//! The image store: pull, list, inspect, tag, remove and garbage-collect
//! images over the content store, the snapshots and the metadata.
//!
//! A pull resolves the name (an index picks the platform), fetches the
//! config, then fetches all layers concurrently (bounded). Each layer is
//! unpacked *while* it downloads: the bytes go to the content store and,
//! through a bounded channel, to an unpacker thread, so a layer is read
//! from the network once and never held whole in memory. A layer counts
//! only when both checks pass: the blob's digest and the unpacked tar's
//! diff id from the image config.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::content::{Begun, ContentError, ContentStore, Expected, Ingest, IngestPolicy, Partial};
use crate::digest::{Digest, Hasher};
use crate::manifest::{self, Descriptor, ImageConfig, ManifestError, Parsed, Platform};
use crate::metadata::{ImageRecord, LayerRecord, Metadata, MetadataError};
use crate::reference::{self, ReferenceError};
use crate::registry::{Credentials, RegistryConfig, RegistryError, RequestAuth, Source, client};
use crate::snapshots::{SnapshotError, Snapshotter, TempLayer};
use crate::unpack::{self, Compression, DevicePolicy, UnpackError, UnpackOptions, WhiteoutStyle};
use crate::usage::Usage;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {layer}: {source}")]
    Read {
        layer: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {layer}: its unpacked content has digest {actual}, but the image config says {expected}")]
    DiffId { layer: Digest, expected: Digest, actual: Digest },
    #[error("image {0:?} is not in the store")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

/// What a pull reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The name resolved to this manifest (or index).
    Resolved { name: String, digest: Digest },
    /// Bytes of a layer fetched so far.
    Layer { digest: Digest, done: u64, total: u64 },
    /// A layer is stored and unpacked (`reused`: it already was).
    LayerReady { digest: Digest, reused: bool },
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

#[derive(Clone)]
pub struct PullOptions {
    pub platform: Platform,
    /// Overrides the configured credentials for the image's registry.
    pub credentials: Option<Credentials>,
    /// A registry (bearer) token for the image's registry, used instead of
    /// `credentials` when both are given.
    pub registry_token: Option<String>,
    /// Layers fetched at once.
    pub concurrency: usize,
    pub progress: Option<ProgressFn>,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self { platform: Platform::host(), credentials: None, registry_token: None, concurrency: 3, progress: None }
    }
}

impl PullOptions {
    fn auth(&self) -> Option<RequestAuth> {
        match (&self.registry_token, &self.credentials) {
            (Some(token), _) => Some(RequestAuth::Bearer(token.clone())),
            (None, Some(credentials)) => Some(RequestAuth::Basic(credentials.clone())),
            (None, None) => None,
        }
    }

    fn report(&self, event: Progress) {
        if let Some(progress) = &self.progress {
            progress(&event);
        }
    }
}

/// How many times a cut download is resumed within one pull.
const RESUME_ATTEMPTS: u32 = 3;

pub struct ImageStore {
    content: ContentStore,
    meta: Arc<Metadata>,
    snapshots: Snapshotter,
    registries: RegistryConfig,
    /// One lock per layer blob: concurrent pulls of the same layer in this
    /// process wait for the first instead of fetching it again.
    layer_locks: std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Blobs and snapshots (chain ids) that running pulls have stored but
    /// not yet recorded in an image: garbage collection leaves them alone.
    pinned: std::sync::Mutex<HashMap<Digest, usize>>,
    unpacking: Unpacking,
    ingest: IngestPolicy,
    /// fuse-overlayfs mounts the layers: whiteouts in the form it reads.
    for_fuse: bool,
}

/// How layers are unpacked, after who unpacks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpacking {
    /// Real root: owners kept, devices made, `trusted.overlay.*` whiteouts.
    Root,
    /// Root of a rootless toted's user namespace with subordinate ids:
    /// owners kept (within the mapped range), no devices,
    /// `user.overlay.*` for overlayfs mounted with `userxattr`.
    MappedRange,
    /// A single id (an ordinary user, or a single-id rootless toted):
    /// every file belongs to the unpacker.
    SingleId,
}

impl Unpacking {
    pub fn of(privilege: &crate::privilege::Privilege) -> Self {
        match privilege {
            crate::privilege::Privilege::Root => Unpacking::Root,
            crate::privilege::Privilege::Rootless(r) if r.single_id => Unpacking::SingleId,
            crate::privilege::Privilege::Rootless(_) => Unpacking::MappedRange,
        }
    }

    /// For a process outside toted (tote-image), from what it is: real
    /// root; root of a user namespace (a rootless toted's, entered), which
    /// may give files the ids its maps hold but make no device and set no
    /// `trusted.*` xattr; or an ordinary user, one id.
    pub fn of_process() -> Self {
        let map = |file: &str| std::fs::read_to_string(file).map(|t| crate::privilege::parse_proc_map(&t));
        Self::of_ids(
            nix::unistd::Uid::effective().is_root(),
            tote_shim::namespaces::in_initial_user_ns(),
            &map("/proc/self/uid_map").unwrap_or_default(),
            &map("/proc/self/gid_map").unwrap_or_default(),
        )
    }

    fn of_ids(
        euid_root: bool,
        in_initial_ns: bool,
        uids: &[crate::privilege::IdRange],
        gids: &[crate::privilege::IdRange],
    ) -> Self {
        let ids = |map: &[crate::privilege::IdRange]| map.iter().map(|r| u64::from(r.size)).sum::<u64>();
        match (euid_root, in_initial_ns) {
            (false, _) => Unpacking::SingleId,
            (true, true) => Unpacking::Root,
            (true, false) if ids(uids) > 1 && ids(gids) > 1 => Unpacking::MappedRange,
            (true, false) => Unpacking::SingleId,
        }
    }
}

/// Pins what a pull stores until it is recorded; unpins on drop.
struct Pins<'a> {
    store: &'a ImageStore,
    digests: Vec<Digest>,
}

impl Pins<'_> {
    fn pin(&mut self, digest: &Digest) {
        *self.store.pinned.lock().expect("pins").entry(digest.clone()).or_default() += 1;
        self.digests.push(digest.clone());
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        let mut pinned = self.store.pinned.lock().expect("pins");
        for digest in &self.digests {
            if let Some(count) = pinned.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    pinned.remove(digest);
                }
            }
        }
    }
}

impl ImageStore {
    /// Opens (creating) a store under `root`: `content/`, `snapshots/` and
    /// `metadata.db`, with the default policy for partial downloads.
    pub fn open(root: &Path, registries: RegistryConfig) -> Result<Self, ImageError> {
        Self::open_with(root, registries, IngestPolicy::default(), Unpacking::of_process())
    }

    /// Opens (creating) a store under `root`, keeping partial downloads of
    /// interrupted pulls as `ingest` says; those it says are too old or too
    /// many go now.
    pub fn open_with(
        root: &Path,
        registries: RegistryConfig,
        ingest: IngestPolicy,
        unpacking: Unpacking,
    ) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root)
            .map_err(|e| ImageError::Content(ContentError::Io { path: root.to_path_buf(), source: e }))?;
        let meta = Arc::new(Metadata::open(&root.join("metadata.db"))?);
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots =
            Snapshotter::open(&root.join("snapshots"), meta.clone())?.with_userxattr(unpacking != Unpacking::Root);
        let store = Self {
            content,
            meta,
            snapshots,
            registries,
            layer_locks: std::sync::Mutex::new(HashMap::new()),
            pinned: std::sync::Mutex::new(HashMap::new()),
            unpacking,
            ingest,
            for_fuse: false,
        };
        store.expire_partials(&HashSet::new());
        Ok(store)
    }

    /// Containers' roots are mounted by `driver` (by default the kernel's
    /// overlayfs): snapshots say so, and layers are unpacked for it.
    pub fn with_overlay(mut self, driver: crate::snapshots::OverlayDriver) -> Self {
        self.for_fuse = matches!(driver, crate::snapshots::OverlayDriver::Fuse(_));
        self.snapshots = self.snapshots.with_driver(driver);
        self
    }

    /// Applies the partial-download policy, sparing `keep`. A failure is
    /// logged, not returned: housekeeping must not stop a start or a pull.
    fn expire_partials(&self, keep: &HashSet<Digest>) {
        match self.content.expire_ingest(&self.ingest, keep) {
            Ok(removed) if !removed.is_empty() => {
                let bytes: u64 = removed.iter().map(|p| p.size).sum();
                tracing::info!(count = removed.len(), bytes, "removed expired partial downloads");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("expiring partial downloads: {e}"),
        }
    }

    fn pins(&self) -> Pins<'_> {
        Pins { store: self, digests: Vec::new() }
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The metadata store, for the daemon's other records.
    pub fn shared_metadata(&self) -> Arc<Metadata> {
        self.meta.clone()
    }

    fn unpack_options(&self) -> UnpackOptions {
        // Layers are shared by every later toted, whichever overlay it
        // uses: the forms both read unless one fallback is needed (see
        // WhiteoutStyle::FuseOverlayfs).
        let rootless_whiteouts = if self.for_fuse { WhiteoutStyle::FuseOverlayfs } else { WhiteoutStyle::UserXattr };
        match self.unpacking {
            Unpacking::Root => UnpackOptions {
                whiteouts: WhiteoutStyle::Trusted,
                devices: DevicePolicy::Create,
                ..UnpackOptions::default()
            },
            Unpacking::MappedRange => UnpackOptions {
                whiteouts: rootless_whiteouts,
                devices: DevicePolicy::Skip,
                preserve_owners: true,
                keep_kinds: false,
            },
            Unpacking::SingleId => UnpackOptions {
                whiteouts: rootless_whiteouts,
                devices: DevicePolicy::Skip,
                preserve_owners: false,
                keep_kinds: false,
            },
        }
    }

    fn layer_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.layer_locks.lock().expect("layer lock table");
        locks.entry(digest.clone()).or_default().clone()
    }

    /// Pulls `name` from its registry (or a mirror) and unpacks it.
    pub async fn pull(self: &Arc<Self>, name: &str, opts: &PullOptions) -> Result<ImageRecord, ImageError> {
        let reference = reference::parse(name)?;
        let sources: Arc<Vec<Source>> = Arc::new(client::sources(&self.registries, &reference, opts.auth().as_ref()));
        let fetched = client::fetch_manifest(&sources, &reference).await?;
        opts.report(Progress::Resolved { name: reference.whole(), digest: fetched.digest.clone() });
        let mut pins = self.pins();
        pins.pin(&fetched.digest);
        let source = fetched.source;
        let target = fetched.digest.clone();
        let (target_media_type, manifest_bytes, manifest_digest) = match manifest::parse(None, &fetched.bytes)? {
            Parsed::Index { media_type, manifests } => {
                self.content.put(&fetched.bytes, None)?;
                let entry = manifest::select(&manifests, &opts.platform)?.clone();
                pins.pin(&entry.digest);
                let bytes = client::fetch_manifest_by_digest(&sources[source], &entry.digest).await?;
                (media_type, bytes, entry.digest)
            }
            Parsed::Manifest(m) => (m.media_type, fetched.bytes.clone(), fetched.digest.clone()),
        };
        let Parsed::Manifest(image_manifest) = manifest::parse(None, &manifest_bytes)? else {
            return Err(ManifestError::Unsupported("an index inside an index".into()).into());
        };
        pins.pin(&image_manifest.config.digest);
        for layer in &image_manifest.layers {
            pins.pin(&layer.digest);
        }
        self.content.put(
            &manifest_bytes,
            Some(&Expected { digest: manifest_digest.clone(), size: manifest_bytes.len() as u64 }),
        )?;
        let config_bytes = self.fetch_small_blob(&sources[source], &image_manifest.config).await?;
        let config = manifest::parse_config(&config_bytes)?;
        let jobs = layer_jobs(&image_manifest.layers, &config)?;
        for job in &jobs {
            pins.pin(&job.chain_id);
        }
        // Pulls are where partial downloads pile up: expire old ones as one
        // starts, sparing this image's layers, which it may resume.
        self.expire_partials(&jobs.iter().map(|job| job.descriptor.digest.clone()).collect());
        let layers = self.fetch_layers(sources, source, jobs, opts).await?;
        let target = Target { digest: target, media_type: target_media_type, manifest: manifest_digest };
        let record = image_record(&reference, target, &image_manifest.config.digest, &config, layers);
        self.meta.put_image(&record)?;
        Ok(record)
    }

    /// A config or similar small blob: from the store, or fetched, verified and stored.
    async fn fetch_small_blob(&self, source: &Source, descriptor: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let limit = manifest::MAX_CONFIG_BYTES;
        if descriptor.size > limit {
            return Err(ManifestError::TooLarge { what: "image config", size: descriptor.size, limit }.into());
        }
        if !self.content.contains(&descriptor.digest) {
            let mut stream = client::blob(source, descriptor, 0).await?;
            let mut bytes = Vec::with_capacity(usize::try_from(descriptor.size).unwrap_or(0));
            while let Some(chunk) = stream.stream.next().await {
                let chunk = chunk.map_err(|e| ImageError::Read { layer: descriptor.digest.clone(), source: e })?;
                if bytes.len() + chunk.len() > usize::try_from(descriptor.size).unwrap_or(usize::MAX) {
                    return Err(ContentError::SizeMismatch {
                        digest: descriptor.digest.clone(),
                        expected: descriptor.size,
                        actual: (bytes.len() + chunk.len()) as u64,
                    }
                    .into());
                }
                bytes.extend_from_slice(&chunk);
            }
            self.content.put(&bytes, Some(&Expected { digest: descriptor.digest.clone(), size: descriptor.size }))?;
        }
        Ok(self.content.read_capped(&descriptor.digest, limit)?)
    }

    async fn fetch_layers(
        self: &Arc<Self>,
        sources: Arc<Vec<Source>>,
        source: usize,
        jobs: Vec<LayerJob>,
        opts: &PullOptions,
    ) -> Result<Vec<LayerRecord>, ImageError> {
        let count = jobs.len();
        let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, job) in jobs.into_iter().enumerate() {
            let (store, sources, permits, opts) = (self.clone(), sources.clone(), permits.clone(), opts.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| ImageError::Internal(e.to_string()))?;
                store.fetch_layer(&sources, source, &job, &opts).await.map(|record| (index, record))
            });
        }
        let mut records: Vec<Option<LayerRecord>> = vec![None; count];
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined.map_err(|e| ImageError::Internal(format!("layer task: {e}"))).and_then(|r| r) {
                Ok((index, record)) => records[index] = Some(record),
                Err(err) => {
                    // The first failure is the one to report; the rest stop with it.
                    first_error.get_or_insert(err);
                    tasks.abort_all();
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        Ok(records.into_iter().map(|r| r.expect("every layer task reported")).collect())
    }

    /// Makes one layer present: blob in the content store, unpacked in a snapshot.
    async fn fetch_layer(
        &self,
        sources: &[Source],
        source: usize,
        job: &LayerJob,
        opts: &PullOptions,
    ) -> Result<LayerRecord, ImageError> {
        let layer = &job.descriptor;
        let lock = self.layer_lock(&layer.digest);
        let _held = lock.lock().await;
        let record = job.record();
        if self.content.contains(&layer.digest) && self.snapshots.get(&job.chain_id)?.is_some() {
            opts.report(Progress::LayerReady { digest: layer.digest.clone(), reused: true });
            return Ok(record);
        }
        let compression = job.compression()?;
        let expected = Expected { digest: layer.digest.clone(), size: layer.size };
        let content = self.content.clone();
        // The ingest lock can wait on another process: off the async threads.
        let begun = tokio::task::spawn_blocking(move || content.begin(&expected))
            .await
            .map_err(|e| ImageError::Internal(e.to_string()))??;
        let (temp, diff_id, bytes) = match begun {
            Begun::Present => self.unpack_stored(job, compression).await?,
            Begun::Ingest(ingest) => self.download_and_unpack(sources, source, job, *ingest, compression, opts).await?,
        };
        job.check_diff_id(diff_id)?;
        self.snapshots.commit_layer(temp, &job.chain_id, job.parent.as_ref(), &job.diff_id, bytes)?;
        opts.report(Progress::LayerReady { digest: layer.digest.clone(), reused: false });
        Ok(record)
    }

    /// Unpacks a layer whose blob is already stored (a snapshot was removed,
    /// or the same blob sits on another chain).
    async fn unpack_stored(
        &self,
        job: &LayerJob,
        compression: Compression,
    ) -> Result<(TempLayer, Digest, u64), ImageError> {
        let file = self.content.open_blob(&job.descriptor.digest)?;
        let temp = self.snapshots.begin_layer()?;
        let (fs, opts, layer) = (temp.fs(), self.unpack_options(), job.descriptor.digest.clone());
        let (diff_id, bytes) = tokio::task::spawn_blocking(move || {
            unpack_stream(std::io::BufReader::with_capacity(1 << 18, file), compression, &fs, &opts, &layer)
        })
        .await
        .map_err(|e| ImageError::Internal(e.to_string()))??;
        Ok((temp, diff_id, bytes))
    }

    /// Streams the blob from the registry into the content store and, at
    /// the same time, into the unpacker. A cut connection is resumed from
    /// where it stopped (HTTP Range), here or, if this pull gives up, by the
    /// next one.
    async fn download_and_unpack(
        &self,
        sources: &[Source],
        first_source: usize,
        job: &LayerJob,
        mut ingest: Ingest,
        compression: Compression,
        opts: &PullOptions,
    ) -> Result<(TempLayer, Digest, u64), ImageError> {
        let layer = job.descriptor.clone();
        let temp = self.snapshots.begin_layer()?;
        // What an earlier, interrupted pull already stored is unpacked first.
        let prefix = ingest.partial_reader()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(32);
        let (fs, unpack_opts, digest) = (temp.fs(), self.unpack_options(), layer.digest.clone());
        let unpacker = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::with_capacity(1 << 18, prefix.chain(ChannelReader::new(rx)));
            unpack_stream(reader, compression, &fs, &unpack_opts, &digest)
        });
        let download = self.download(sources, first_source, &layer, &mut ingest, &tx, opts).await;
        drop(tx);
        let unpacked = unpacker.await.map_err(|e| ImageError::Internal(e.to_string()))?;
        // A failed unpack explains a refused send better than the download does.
        let (diff_id, bytes) = match (download, unpacked) {
            (_, Err(unpack_err @ ImageError::Unpack { .. })) => return Err(unpack_err),
            (Err(download_err), _) => return Err(download_err),
            (Ok(()), unpacked) => unpacked?,
        };
        tokio::task::spawn_blocking(move || ingest.commit())
            .await
            .map_err(|e| ImageError::Internal(e.to_string()))??;
        Ok((temp, diff_id, bytes))
    }

    async fn download(
        &self,
        sources: &[Source],
        first_source: usize,
        layer: &Descriptor,
        ingest: &mut Ingest,
        tx: &tokio::sync::mpsc::Sender<bytes::Bytes>,
        opts: &PullOptions,
    ) -> Result<(), ImageError> {
        let mut failures = 0;
        let order: Vec<usize> =
            std::iter::once(first_source).chain((0..sources.len()).filter(|i| *i != first_source)).collect();
        let mut which = 0;
        while ingest.offset() < layer.size {
            let offset = ingest.offset();
            let attempt = async {
                let mut blob = client::blob(&sources[order[which]], layer, offset).await?;
                // A registry that ignored the Range sends everything again:
                // skip what is already stored (and already unpacked).
                let mut skip = if blob.resumed { 0 } else { offset };
                while let Some(chunk) = blob.stream.next().await {
                    let mut chunk = chunk.map_err(|e| ImageError::Read { layer: layer.digest.clone(), source: e })?;
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64);
                        skip -= n;
                        chunk = chunk.slice(usize::try_from(n).unwrap_or(chunk.len())..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    ingest.write_all(&chunk)?;
                    opts.report(Progress::Layer {
                        digest: layer.digest.clone(),
                        done: ingest.offset(),
                        total: layer.size,
                    });
                    if tx.send(chunk).await.is_err() {
                        // The unpacker stopped: its error is the one to report.
                        return Err(ImageError::Internal("unpacker stopped".into()));
                    }
                }
                Ok::<(), ImageError>(())
            };
            match attempt.await {
                Ok(()) if ingest.offset() < layer.size => {
                    failures += 1;
                    if failures > RESUME_ATTEMPTS {
                        return Err(ContentError::SizeMismatch {
                            digest: layer.digest.clone(),
                            expected: layer.size,
                            actual: ingest.offset(),
                        }
                        .into());
                    }
                }
                Ok(()) => {}
                Err(err @ (ImageError::Content(_) | ImageError::Internal(_))) => return Err(err),
                Err(ImageError::Registry(RegistryError::NotFound { .. })) if which + 1 < order.len() => which += 1,
                Err(err) => {
                    failures += 1;
                    if failures > RESUME_ATTEMPTS {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    /// Records `name` for an image whose manifest, config and layer blobs
    /// are all in the content store already (an import, a local build):
    /// unpacks what is not unpacked yet, checking every diff id.
    pub async fn register_stored(
        &self,
        name: &str,
        target: &Digest,
        target_media_type: &str,
        manifest_digest: &Digest,
    ) -> Result<ImageRecord, ImageError> {
        let reference = reference::parse(name)?;
        let manifest_bytes = self.content.read_capped(manifest_digest, manifest::MAX_MANIFEST_BYTES)?;
        let Parsed::Manifest(image_manifest) = manifest::parse(None, &manifest_bytes)? else {
            return Err(ManifestError::Unsupported("an index where a manifest belongs".into()).into());
        };
        let config_bytes = self.content.read_capped(&image_manifest.config.digest, manifest::MAX_CONFIG_BYTES)?;
        let config = manifest::parse_config(&config_bytes)?;
        let mut layers = Vec::new();
        for job in layer_jobs(&image_manifest.layers, &config)? {
            if self.snapshots.get(&job.chain_id)?.is_none() {
                let (temp, diff_id, bytes) = self.unpack_stored(&job, job.compression()?).await?;
                job.check_diff_id(diff_id)?;
                self.snapshots.commit_layer(temp, &job.chain_id, job.parent.as_ref(), &job.diff_id, bytes)?;
            }
            layers.push(job.record());
        }
        let target = Target {
            digest: target.clone(),
            media_type: target_media_type.to_string(),
            manifest: manifest_digest.clone(),
        };
        let record = image_record(&reference, target, &image_manifest.config.digest, &config, layers);
        self.meta.put_image(&record)?;
        Ok(record)
    }

    /// Every stored image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let mut images = self.meta.images()?;
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The image `name` (short names are normalised like docker's).
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let canonical = reference::canonical(&reference::parse(name)?);
        self.meta.image(&canonical)?.ok_or(ImageError::NotFound(canonical))
    }

    /// The image a user means by `name`: a name, or its image id (the
    /// config digest, with or without `sha256:`) or a unique prefix of it,
    /// as docker resolves them.
    pub fn resolve(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            let images = self.meta.images()?;
            let matching: Vec<&ImageRecord> = images.iter().filter(|i| i.config.hex().starts_with(hex)).collect();
            if let Some(first) = matching.first()
                && matching.iter().all(|i| i.config == first.config)
            {
                return Ok((*first).clone());
            }
        }
        self.get(name)
    }

    /// The top layer (chain id) of the image whose config is `image_id`,
    /// `None` for an image without layers. Found from the config blob when
    /// no name refers to the image any more (removed with force, or pulled
    /// again under its name) while a container still uses its layers,
    /// which garbage collection keeps for it.
    pub fn top_layer_of(&self, image_id: &str) -> Result<Option<Digest>, ImageError> {
        if let Ok(image) = self.resolve(image_id) {
            return Ok(image.top_chain_id().cloned());
        }
        let digest: Digest = image_id.parse().map_err(|_| ImageError::NotFound(image_id.to_string()))?;
        let bytes = self.content.read_capped(&digest, manifest::MAX_CONFIG_BYTES)?;
        let config = manifest::parse_config(&bytes)
            .map_err(|e| ImageError::Internal(format!("image config {image_id}: {e}")))?;
        Ok(manifest::chain_ids(&config.rootfs.diff_ids).pop())
    }

    /// The image's configuration (entrypoint, cmd, env, user, ...).
    pub fn config(&self, image: &ImageRecord) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
        let bytes = self.content.read_capped(&image.config, manifest::MAX_CONFIG_BYTES)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Internal(format!("image config {} of {}: {e}", image.config, image.name)))
    }

    /// Gives the image `source` the additional name `target`.
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageRecord, ImageError> {
        let mut image = self.get(source)?;
        image.name = reference::canonical(&reference::parse(target)?);
        self.meta.put_image(&image)?;
        Ok(image)
    }

    /// Removes the name `name`, then whatever no image needs any more.
    pub fn remove(&self, name: &str) -> Result<GcReport, ImageError> {
        self.remove_keeping(name, &HashSet::new())
    }

    /// Removes the name `name`, then whatever neither an image name nor the
    /// images `in_use` (ids that containers run) need.
    pub fn remove_keeping(&self, name: &str, in_use: &HashSet<Digest>) -> Result<GcReport, ImageError> {
        let canonical = reference::canonical(&reference::parse(name)?);
        if !self.meta.remove_image(&canonical)? {
            return Err(ImageError::NotFound(canonical));
        }
        self.collect(in_use)
    }

    /// Deletes blobs and snapshots no image refers to.
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        self.collect(&HashSet::new())
    }

    /// Deletes the blobs and snapshots that no image name, no image in
    /// `in_use` and no running pull needs.
    pub fn collect(&self, in_use: &HashSet<Digest>) -> Result<GcReport, ImageError> {
        let live = self.live(&self.meta.images()?, in_use)?;
        let mut report = GcReport::default();
        for snapshot in self.meta.snapshots()? {
            if !live.chains.contains(&snapshot.chain_id) {
                self.snapshots.remove(&snapshot.chain_id)?;
                report.snapshots += 1;
                report.snapshot_bytes += snapshot.size;
            }
        }
        // An index's blob may be shared by images of other platforms.
        for (digest, size) in self.content.list()? {
            if !live.blobs.contains(&digest) {
                self.content.delete(&digest)?;
                report.blobs += 1;
                report.bytes += size;
                report.deleted.push(digest);
            }
        }
        Ok(report)
    }

    /// What `images` (named) and the images `in_use` need, and what running
    /// pulls hold.
    ///
    /// An image in use may have lost its last name (pulled again under it,
    /// or removed with force) while a container still runs on its layers:
    /// its config blob says which snapshots those are, and its manifest
    /// (found among the small blobs no name refers to) which blobs.
    fn live(&self, images: &[ImageRecord], in_use: &HashSet<Digest>) -> Result<Live, ImageError> {
        let mut live = Live::default();
        for image in images {
            live.blobs.extend([image.target.clone(), image.manifest.clone(), image.config.clone()]);
            for layer in &image.layers {
                live.blobs.insert(layer.digest.clone());
                live.chains.insert(layer.chain_id.clone());
            }
        }
        let named: HashSet<&Digest> = images.iter().map(|i| &i.config).collect();
        let unnamed: HashSet<&Digest> = in_use.iter().filter(|id| !named.contains(id)).collect();
        for &id in &unnamed {
            live.blobs.insert(id.clone());
            let config = self.content.read_capped(id, manifest::MAX_CONFIG_BYTES).ok();
            if let Some(config) = config.and_then(|bytes| manifest::parse_config(&bytes).ok()) {
                live.chains.extend(manifest::chain_ids(&config.rootfs.diff_ids));
            }
        }
        if !unnamed.is_empty() {
            for (digest, size) in self.content.list()? {
                if live.blobs.contains(&digest) || size > manifest::MAX_MANIFEST_BYTES {
                    continue;
                }
                let Ok(bytes) = self.content.read_capped(&digest, manifest::MAX_MANIFEST_BYTES) else { continue };
                if !bytes.starts_with(b"{") {
                    continue;
                }
                if let Ok(Parsed::Manifest(m)) = manifest::parse(None, &bytes)
                    && unnamed.contains(&m.config.digest)
                {
                    live.blobs.insert(digest);
                    live.blobs.extend(m.layers.into_iter().map(|l| l.digest));
                }
            }
        }
        for digest in self.pinned.lock().expect("pins").keys() {
            live.blobs.insert(digest.clone());
            live.chains.insert(digest.clone());
        }
        Ok(live)
    }

    /// `image prune`: the content no image name needs (with `all`, also the
    /// images no container uses, names and all), keeping what the images
    /// `in_use` need; and every partial download no pull is writing.
    pub fn prune(&self, all: bool, in_use: &HashSet<Digest>) -> Result<PruneReport, ImageError> {
        let mut report = PruneReport::default();
        let mut unused_ids = Vec::new();
        if all {
            for image in self.meta.images()? {
                if !in_use.contains(&image.config) && self.meta.remove_image(&image.name)? {
                    report.untagged.push(image.name);
                    unused_ids.push(image.config);
                }
            }
        }
        let gc = self.collect(in_use)?;
        // Image ids first, as docker lists them, then the other blobs.
        let (ids, others): (Vec<Digest>, Vec<Digest>) = gc.deleted.into_iter().partition(|d| unused_ids.contains(d));
        report.deleted_images = ids.clone();
        report.deleted = ids.into_iter().chain(others).collect();
        report.snapshots = gc.snapshots;
        report.partials = self.content.clean_ingest()?;
        report.reclaimed = gc.bytes + gc.snapshot_bytes + report.partials.iter().map(|p| p.size).sum::<u64>();
        Ok(report)
    }

    /// `system df`'s rows for images and for partial downloads. Images'
    /// size is their blobs and unpacked layers (what they take here, shared
    /// ones once); what `image prune -a` would free is reclaimable.
    pub fn space_usage(&self, in_use: &HashSet<Digest>) -> Result<SpaceUsage, ImageError> {
        let images = self.meta.images()?;
        let mut ids: HashSet<&Digest> = images.iter().map(|i| &i.config).collect();
        ids.extend(in_use.iter().filter(|id| self.content.contains(id)));
        let used: Vec<ImageRecord> = images.iter().filter(|i| in_use.contains(&i.config)).cloned().collect();
        let live = self.live(&used, in_use)?;
        let mut usage = Usage {
            total: ids.len() as u64,
            active: ids.iter().filter(|id| in_use.contains(id)).count() as u64,
            ..Usage::default()
        };
        for (digest, size) in self.content.list()? {
            usage.size += size;
            if !live.blobs.contains(&digest) {
                usage.reclaimable += size;
            }
        }
        for snapshot in self.meta.snapshots()? {
            usage.size += snapshot.size;
            if !live.chains.contains(&snapshot.chain_id) {
                usage.reclaimable += snapshot.size;
            }
        }
        let mut partials = Usage::default();
        for partial in self.content.partials()? {
            partials.add(partial.size, partial.active);
        }
        Ok(SpaceUsage { images: usage, partial_downloads: partials })
    }

    pub fn disk_usage(&self) -> Result<DiskUsage, ImageError> {
        let blobs: u64 = self.content.list()?.iter().map(|(_, size)| size).sum();
        let partials: u64 = self.content.partials()?.iter().map(|p| p.size).sum();
        Ok(DiskUsage {
            images: self.meta.images()?.len(),
            blobs,
            snapshots: self.snapshots.disk_usage(),
            partial_downloads: partials,
        })
    }
}

/// What an image store still needs: blobs, and snapshots by chain id.
#[derive(Debug, Default)]
struct Live {
    blobs: HashSet<Digest>,
    chains: HashSet<Digest>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: usize,
    /// Bytes of the blobs deleted.
    pub bytes: u64,
    pub snapshots: usize,
    /// Bytes of file content in the snapshots deleted.
    pub snapshot_bytes: u64,
    /// The blobs deleted.
    pub deleted: Vec<Digest>,
}

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Names removed (unused images, with `all`).
    pub untagged: Vec<String>,
    /// Image ids (config digests) that went with their names.
    pub deleted_images: Vec<Digest>,
    /// Every blob deleted, image ids first.
    pub deleted: Vec<Digest>,
    pub snapshots: usize,
    /// Partial downloads removed.
    pub partials: Vec<Partial>,
    /// Bytes freed: blobs, unpacked layers' content, partial downloads.
    pub reclaimed: u64,
}

/// `system df`'s rows from the image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceUsage {
    pub images: Usage,
    pub partial_downloads: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUsage {
    pub images: usize,
    /// Bytes of blobs in the content store.
    pub blobs: u64,
    /// Bytes on disk under the snapshots.
    pub snapshots: u64,
    /// Bytes of interrupted (or running) downloads in `content/ingest`.
    pub partial_downloads: u64,
}

/// One layer to make present, with what the image config says of it.
struct LayerJob {
    descriptor: Descriptor,
    diff_id: Digest,
    chain_id: Digest,
    parent: Option<Digest>,
}

impl LayerJob {
    fn record(&self) -> LayerRecord {
        LayerRecord {
            digest: self.descriptor.digest.clone(),
            media_type: self.descriptor.media_type.clone(),
            size: self.descriptor.size,
            diff_id: self.diff_id.clone(),
            chain_id: self.chain_id.clone(),
        }
    }

    fn compression(&self) -> Result<Compression, ImageError> {
        let d = &self.descriptor;
        Compression::from_media_type(&d.media_type).ok_or_else(|| {
            ManifestError::UnsupportedLayer { digest: d.digest.clone(), media_type: d.media_type.clone() }.into()
        })
    }

    /// The unpacked tar must be the one the config names.
    fn check_diff_id(&self, actual: Digest) -> Result<(), ImageError> {
        if actual != self.diff_id {
            let (layer, expected) = (self.descriptor.digest.clone(), self.diff_id.clone());
            return Err(ImageError::DiffId { layer, expected, actual });
        }
        Ok(())
    }
}

/// A manifest's layers paired with the config's diff ids and chain ids.
fn layer_jobs(layers: &[Descriptor], config: &ImageConfig) -> Result<Vec<LayerJob>, ImageError> {
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(ManifestError::LayerCount { diff_ids: diff_ids.len(), layers: layers.len() }.into());
    }
    let chain_ids = manifest::chain_ids(diff_ids);
    Ok(layers
        .iter()
        .enumerate()
        .map(|(i, descriptor)| LayerJob {
            descriptor: descriptor.clone(),
            diff_id: diff_ids[i].clone(),
            chain_id: chain_ids[i].clone(),
            parent: i.checked_sub(1).map(|p| chain_ids[p].clone()),
        })
        .collect())
}

/// What an image name points at: an index or a manifest, and the manifest used.
struct Target {
    digest: Digest,
    media_type: String,
    manifest: Digest,
}

fn image_record(
    reference: &oci_client::Reference,
    target: Target,
    config_digest: &Digest,
    config: &ImageConfig,
    layers: Vec<LayerRecord>,
) -> ImageRecord {
    let platform =
        Platform { os: config.os.clone(), architecture: config.architecture.clone(), variant: config.variant.clone() };
    ImageRecord {
        name: reference::canonical(reference),
        target: target.digest,
        target_media_type: target.media_type,
        manifest: target.manifest,
        config: config_digest.clone(),
        layers,
        platform: platform.to_string(),
        created: config.created.clone(),
        stored_at: tote_shim::state::now_rfc3339(),
    }
}

/// Decompresses and applies a layer, hashing the uncompressed tar for its
/// diff id. Decompression runs on a helper thread beside the filesystem
/// work, and reads the stream to its end even after the tar's end marker:
/// for the hash, and so the feeding side never blocks on a full channel.
fn unpack_stream(
    reader: impl Read + Send,
    compression: Compression,
    dest: &Path,
    opts: &UnpackOptions,
    layer: &Digest,
) -> Result<(Digest, u64), ImageError> {
    let mut hasher = Hasher::new(crate::digest::Algorithm::Sha256);
    let stats = unpack::apply_layer_pipelined(reader, compression, dest, opts, |chunk| hasher.update(chunk))
        .map_err(|source| ImageError::Unpack { layer: layer.clone(), source })?;
    Ok((hasher.finish(), stats.bytes))
}

/// Reads the chunks an async task sends (a download, an upload), blocking:
/// it runs on a blocking thread.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        Self { rx, current: bytes::Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacking_follows_who_unpacks() {
        use crate::privilege::IdRange;
        let own = [IdRange { container: 0, host: 1000, size: 1 }];
        let range = [own[0], IdRange { container: 1, host: 100_000, size: 65536 }];
        assert_eq!(Unpacking::of_ids(true, true, &[], &[]), Unpacking::Root);
        assert_eq!(Unpacking::of_ids(false, true, &[], &[]), Unpacking::SingleId);
        // Root of a rootless toted's namespace: not the host's root.
        assert_eq!(Unpacking::of_ids(true, false, &range, &range), Unpacking::MappedRange);
        assert_eq!(Unpacking::of_ids(true, false, &own, &own), Unpacking::SingleId);
        assert_eq!(Unpacking::of_ids(true, false, &range, &own), Unpacking::SingleId);
    }

    #[test]
    fn a_channel_reader_yields_chunks_in_order_then_eof() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let writer = std::thread::spawn(move || {
            for part in ["hello ", "", "world"] {
                tx.blocking_send(bytes::Bytes::from(part)).unwrap();
            }
        });
        let mut out = String::new();
        ChannelReader::new(rx).read_to_string(&mut out).unwrap();
        writer.join().unwrap();
        assert_eq!(out, "hello world");
    }
}
