//! Image policy over the image store: pulls, lookups by any name an API
//! may use, removal (with the in-use check and what is kept for running
//! containers), prune, tags, and the events each of them publishes. The
//! store itself knows names and blobs; what an image *is* to a user (one
//! id, several names) and when it may go is decided here, once, for both
//! `tote.v1` and the CRI.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use super::{ContainerFilter, Engine, EngineError};
use crate::digest::Digest;
use crate::images::{PruneReport, PullOptions};
use crate::metadata::ImageRecord;
use crate::reference;

/// One image: the content with one config digest (its id), under every
/// name it is stored by.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config digest.
    pub id: Digest,
    /// Every name, sorted: `registry/repository:tag`, or
    /// `registry/repository@digest` when pulled by digest.
    pub records: Vec<ImageRecord>,
}

impl Image {
    fn first(&self) -> &ImageRecord {
        &self.records[0]
    }

    /// The bytes of its layers as distributed.
    pub fn size(&self) -> u64 {
        self.first().size()
    }

    /// The image's own creation time (RFC 3339), from its config.
    pub fn created(&self) -> Option<&str> {
        self.first().created.as_deref()
    }

    /// Its tagged names (`registry/repository:tag`).
    pub fn tags(&self) -> Vec<String> {
        self.records.iter().filter(|r| !r.name.contains('@')).map(|r| r.name.clone()).collect()
    }

    /// `repository@digest` for each name, the digest being what the name
    /// resolved to when pulled (an index or a manifest), without repeats.
    pub fn repo_digests(&self) -> Vec<String> {
        let mut digests: Vec<String> = Vec::new();
        for record in &self.records {
            let pinned = repo_digest(record);
            if !digests.contains(&pinned) {
                digests.push(pinned);
            }
        }
        digests
    }

    /// A representative record: the first name's.
    pub fn record(&self) -> &ImageRecord {
        self.first()
    }
}

/// `repository@digest` of one stored name.
pub fn repo_digest(record: &ImageRecord) -> String {
    if record.name.contains('@') {
        return record.name.clone();
    }
    format!("{}@{}", repository(&record.name), record.target)
}

/// `registry/repository` of a stored (canonical) name.
fn repository(name: &str) -> String {
    match reference::parse(name) {
        Ok(r) => format!("{}/{}", r.registry(), r.repository()),
        // Stored names are canonical; this is only a fallback.
        Err(_) => name.rsplit_once(':').map_or(name, |(r, _)| r).to_string(),
    }
}

/// An image found by a reference, with the stored name it matched.
#[derive(Debug, Clone)]
pub struct FoundImage {
    /// The record the reference named (for an id: the image's first name).
    pub matched: ImageRecord,
    pub image: Image,
    pub matched_by: MatchedBy,
}

/// What kind of reference found an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// One of its stored names.
    Name,
    /// Its id, or a prefix of it.
    Id,
    /// `repository@digest`, the digest one of its names was pulled as.
    PulledDigest,
}

/// Which names a removal takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveScope {
    /// docker's `rmi`: a name removes that name only, an id every name.
    Reference,
    /// The CRI's RemoveImage: every name of the image, whatever named it.
    AllNames,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoveOptions {
    pub scope: RemoveScope,
    /// Remove names even when containers use the image; its content stays
    /// until they are gone.
    pub force: bool,
}

/// What a removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemovedImage {
    /// Names removed.
    pub untagged: Vec<String>,
    /// The image id, when the image itself went (its last name, and no
    /// container uses it).
    pub deleted: Option<Digest>,
}

/// What the image store takes on its filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFsUsage {
    /// The directory whose filesystem holds the layers and containers'
    /// writable layers (the snapshots).
    pub mountpoint: PathBuf,
    /// Blobs and unpacked layers: what images take.
    pub images: DirUsage,
    /// Containers' writable layers.
    pub containers: DirUsage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirUsage {
    /// Bytes of disk blocks allocated.
    pub bytes: u64,
    /// Distinct inodes (hard links counted once).
    pub inodes: u64,
}

impl Engine {
    /// Pulls `reference` (through the configured mirrors) and publishes
    /// the `pull` event.
    pub async fn pull_image(&self, reference: &str, options: &PullOptions) -> Result<ImageRecord, EngineError> {
        let image = self.images.pull(reference, options).await?;
        self.events.publish("image", "pull", &image.name, &[]);
        Ok(image)
    }

    /// Every image, grouped by id, newest first (by the config's creation
    /// time), names sorted within each.
    pub fn list_images(&self) -> Result<Vec<Image>, EngineError> {
        // Keyed by the id's text: ties in creation time keep the order
        // `tote images` has always had.
        let mut by_id: BTreeMap<String, Vec<ImageRecord>> = BTreeMap::new();
        for record in self.images.list()? {
            by_id.entry(record.config.to_string()).or_default().push(record);
        }
        let mut images: Vec<Image> =
            by_id.into_values().map(|records| Image { id: records[0].config.clone(), records }).collect();
        images.sort_by_key(|i| std::cmp::Reverse(i.created().map_or(0, seconds)));
        Ok(images)
    }

    /// The image `reference` means: a name (short names normalised as
    /// docker's), the image id or a unique prefix of it (with or without
    /// `sha256:`), or `repository@digest` where the digest is what one of
    /// the image's names was pulled as (an index or a manifest).
    pub fn find_image(&self, reference: &str) -> Result<FoundImage, EngineError> {
        let (found, matched_by) = match self.images.resolve(reference) {
            Ok(record) => {
                let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
                let by_id = hex.bytes().all(|b| b.is_ascii_hexdigit()) && record.config.hex().starts_with(hex);
                (record, if by_id { MatchedBy::Id } else { MatchedBy::Name })
            }
            Err(crate::images::ImageError::NotFound(name)) => match self.by_repo_digest(reference)? {
                Some(record) => (record, MatchedBy::PulledDigest),
                None => return Err(EngineError::NotFound(format!("No such image: {name}"))),
            },
            Err(e) => return Err(e.into()),
        };
        let records: Vec<ImageRecord> = self.images.list()?.into_iter().filter(|r| r.config == found.config).collect();
        Ok(FoundImage { image: Image { id: found.config.clone(), records }, matched: found, matched_by })
    }

    /// A name stored by tag whose pulled digest `reference` pins.
    fn by_repo_digest(&self, reference: &str) -> Result<Option<ImageRecord>, EngineError> {
        let parsed = reference::parse(reference).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let Some(digest) = parsed.digest() else { return Ok(None) };
        let wanted = format!("{}/{}", parsed.registry(), parsed.repository());
        Ok(self.images.list()?.into_iter().find(|r| {
            (r.target.to_string() == digest || r.manifest.to_string() == digest) && repository(&r.name) == wanted
        }))
    }

    /// The image's configuration (user, entrypoint, env, ...).
    pub fn image_config(&self, record: &ImageRecord) -> Result<oci_spec::image::ImageConfiguration, EngineError> {
        Ok(self.images.config(record)?)
    }

    /// Removes names of the image `reference` means, then the image itself
    /// once its last name is gone, unless containers use it: then the
    /// removal is refused (without `force`), or (with it) the content stays
    /// for them, nameless, until they are removed.
    pub fn remove_image(&self, reference: &str, options: RemoveOptions) -> Result<RemovedImage, EngineError> {
        let found = self.find_image(reference)?;
        let id = found.image.id.to_string();
        let names: Vec<String> = match (options.scope, found.matched_by) {
            (RemoveScope::AllNames, _) | (_, MatchedBy::Id) => {
                found.image.records.iter().map(|r| r.name.clone()).collect()
            }
            // Every name of that repository pulled as that digest.
            (_, MatchedBy::PulledDigest) => {
                let pinned = repo_digest(&found.matched);
                found.image.records.iter().filter(|r| repo_digest(r) == pinned).map(|r| r.name.clone()).collect()
            }
            (_, MatchedBy::Name) => vec![found.matched.name.clone()],
        };
        let last_name = names.len() == found.image.records.len();
        let users = self.image_users(&id);
        if last_name && !users.is_empty() && !options.force {
            return Err(EngineError::Conflict(format!(
                "conflict: unable to remove repository reference \"{reference}\" (must force) - container {} is using its referenced image {}",
                users.join(", "),
                short(&id)
            )));
        }
        let in_use = self.images_in_use();
        let mut removed = RemovedImage::default();
        for name in names {
            self.images.remove_keeping(&name, &in_use)?;
            self.events.publish("image", "untag", &name, &[]);
            removed.untagged.push(name);
        }
        if last_name && users.is_empty() {
            self.events.publish("image", "delete", &id, &[]);
            removed.deleted = Some(found.image.id);
        }
        Ok(removed)
    }

    /// Gives the image `source` means the additional name `target`.
    pub fn tag_image(&self, source: &str, target: &str) -> Result<ImageRecord, EngineError> {
        let source = self.images.resolve(source)?;
        let tagged = self.images.tag(&source.name, target)?;
        self.events.publish("image", "tag", &tagged.name, &[]);
        Ok(tagged)
    }

    /// `image prune`: what no image name needs (with `all`, also images no
    /// container uses), sparing what containers use; publishes untag and
    /// delete events per image and one prune event. Blocking: it walks the
    /// store.
    pub fn prune_images(&self, all: bool) -> Result<PruneReport, EngineError> {
        let report = self.images.prune(all, &self.images_in_use())?;
        for name in &report.untagged {
            self.events.publish("image", "untag", name, &[]);
        }
        for id in &report.deleted_images {
            self.events.publish("image", "delete", &id.to_string(), &[]);
        }
        self.events.publish("image", "prune", "", &[("reclaimed", &report.reclaimed.to_string())]);
        Ok(report)
    }

    /// The ids of the images containers were created from: what removal
    /// and prune must leave on disk, what `system df` counts as active.
    pub fn images_in_use(&self) -> HashSet<Digest> {
        let containers = self.list(&ContainerFilter { all: true, filters: Vec::new() });
        containers.into_iter().filter_map(|row| row.record.image_id.parse().ok()).collect()
    }

    /// What the image store and the containers' writable layers take on
    /// disk. Blocking: it walks the directories (as containerd's CRI does
    /// for ImageFsInfo), so the figures are what the filesystem holds, not
    /// what the records say.
    pub fn image_fs_usage(&self) -> ImageFsUsage {
        let snapshots = self.images.snapshots().root().to_path_buf();
        let mut images = DirUsage::default();
        let mut containers = DirUsage::default();
        let mut seen = HashSet::new();
        walk(&self.paths.root.join("content"), &mut images, &mut seen);
        for entry in std::fs::read_dir(&snapshots).into_iter().flatten().flatten() {
            let writable = entry.file_name().to_string_lossy().starts_with("rw-");
            walk(&entry.path(), if writable { &mut containers } else { &mut images }, &mut seen);
        }
        ImageFsUsage { mountpoint: snapshots, images, containers }
    }
}

/// Adds what `path` takes (and everything under it) to `usage`, each inode
/// once. Symlinks are not followed; unreadable entries are skipped: a
/// usage report must not fail on a file removed while it runs.
fn walk(path: &std::path::Path, usage: &mut DirUsage, seen: &mut HashSet<(u64, u64)>) {
    use std::os::unix::fs::MetadataExt;
    let mut pending = vec![path.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
        }
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.bytes += meta.blocks() * 512;
        usage.inodes += 1;
    }
}

fn seconds(time: &str) -> i64 {
    super::parse_rfc3339(time).and_then(|(secs, _)| i64::try_from(secs).ok()).unwrap_or(0)
}

/// The first 12 hex digits of an id, as docker shows them.
pub fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex[..hex.len().min(12)].to_string()
}
