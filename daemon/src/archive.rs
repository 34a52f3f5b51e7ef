//! Images without a registry: loading `docker save` tarballs and OCI image
//! layouts (directories or tars), saving images as an archive both docker
//! and OCI tools load, and building a busybox image from Debian's
//! busybox-static so a machine with no network still has an image.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;

use crate::content::{ContentError, Expected};
use crate::digest::Digest;
use crate::images::{ImageError, ImageStore};
use crate::manifest::{
    self, Descriptor, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST, Parsed, Platform,
};
use crate::metadata::ImageRecord;
use crate::unpack::Compression;

/// JSON files in an archive above this size are refused.
const MAX_JSON_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{archive}: {problem}")]
    Invalid { archive: PathBuf, problem: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Content(#[from] ContentError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { path, source }
}

/// What one pass over an archive found.
#[derive(Default)]
struct Scan {
    /// Small JSON files by path (manifest.json, index.json, configs).
    json: HashMap<String, Vec<u8>>,
    /// Every other file, stored in the content store, by path.
    blobs: HashMap<String, (Digest, u64)>,
    /// Symlinks by path (docker save links duplicate layers).
    links: HashMap<String, String>,
}

impl Scan {
    fn blob(&self, path: &str) -> Option<(Digest, u64)> {
        let path = clean(path);
        let path = self.links.get(&path).map(|t| resolve_link(&path, t)).unwrap_or(path);
        self.blobs.get(&path).cloned()
    }

    /// A JSON document by path, or a blob read back from the store.
    fn json(&self, store: &ImageStore, path: &str) -> Option<Vec<u8>> {
        let path = clean(path);
        if let Some(bytes) = self.json.get(&path) {
            return Some(bytes.clone());
        }
        let (digest, _) = self.blob(&path)?;
        store.content().read_capped(&digest, MAX_JSON_BYTES).ok()
    }
}

fn clean(path: &str) -> String {
    path.trim_start_matches("./").trim_start_matches('/').to_string()
}

fn resolve_link(path: &str, target: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Loads every image in `archive` (a tar file or an OCI layout directory).
/// `name` names an image the archive leaves unnamed.
pub async fn import(store: &ImageStore, archive: &Path, name: Option<&str>) -> Result<Vec<ImageRecord>, ArchiveError> {
    let scan = if archive.is_dir() { scan_dir(store, archive)? } else { scan_tar(store, archive)? };
    let invalid = |problem: String| ArchiveError::Invalid { archive: archive.to_path_buf(), problem };
    let images = if let Some(manifest) = scan.json.get("manifest.json") {
        docker_images(store, &scan, manifest).map_err(invalid)?
    } else if let Some(index) = scan.json.get("index.json") {
        oci_images(store, index).map_err(invalid)?
    } else {
        return Err(invalid("neither a docker save archive (manifest.json) nor an OCI layout (index.json)".into()));
    };
    if images.is_empty() {
        return Err(invalid("it holds no image".into()));
    }
    let mut records = Vec::new();
    for image in images {
        let names = if image.names.is_empty() {
            vec![
                name.map(str::to_string)
                    .ok_or_else(|| invalid(format!("image {} has no name; give it one", image.manifest)))?,
            ]
        } else {
            image.names
        };
        for n in names {
            records.push(store.register_stored(&n, &image.manifest, OCI_MANIFEST, &image.manifest).await?);
        }
    }
    Ok(records)
}

struct Found {
    names: Vec<String>,
    manifest: Digest,
}

fn scan_tar(store: &ImageStore, archive: &Path) -> Result<Scan, ArchiveError> {
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(std::io::BufReader::with_capacity(1 << 18, file));
    let mut scan = Scan::default();
    for entry in tar.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        let path = clean(&entry.path().map_err(io(archive))?.to_string_lossy());
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            if let Some(target) = entry.link_name().map_err(io(archive))? {
                scan.links.insert(path, target.to_string_lossy().into_owned());
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.size();
        record_file(store, &mut scan, &path, &mut entry, size, archive)?;
    }
    Ok(scan)
}

fn scan_dir(store: &ImageStore, dir: &Path) -> Result<Scan, ArchiveError> {
    let mut scan = Scan::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).map_err(io(&current))?.flatten() {
            let path = entry.path();
            let meta = entry.metadata().map_err(io(&path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
                let mut file = std::fs::File::open(&path).map_err(io(&path))?;
                record_file(store, &mut scan, &rel, &mut file, meta.len(), dir)?;
            }
        }
    }
    Ok(scan)
}

fn is_json_document(path: &str) -> bool {
    matches!(path, "manifest.json" | "index.json" | "oci-layout" | "repositories")
        || (!path.starts_with("blobs/") && path.ends_with(".json"))
}

/// Keeps a JSON document in memory or streams a blob into the store.
/// A blob under `blobs/<alg>/<hex>` must have that digest.
fn record_file(
    store: &ImageStore,
    scan: &mut Scan,
    path: &str,
    reader: &mut dyn Read,
    size: u64,
    archive: &Path,
) -> Result<(), ArchiveError> {
    if is_json_document(path) {
        if size > MAX_JSON_BYTES {
            return Err(ArchiveError::Invalid {
                archive: archive.to_path_buf(),
                problem: format!("{path} is {size} bytes, too large"),
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader.read_to_end(&mut bytes).map_err(io(archive))?;
        scan.json.insert(path.to_string(), bytes);
        return Ok(());
    }
    let named = path.strip_prefix("blobs/").and_then(|rest| rest.replacen('/', ":", 1).parse::<Digest>().ok());
    let digest = match named {
        Some(digest) => {
            store.content().put_reader(reader, Some(&Expected { digest: digest.clone(), size }))?;
            digest
        }
        None => store.content().put_reader(reader, None)?,
    };
    scan.blobs.insert(path.to_string(), (digest, size));
    Ok(())
}

fn layer_media_type(store: &ImageStore, digest: &Digest) -> Result<&'static str, String> {
    let mut head = [0u8; 8];
    let mut file = store.content().open_blob(digest).map_err(|e| e.to_string())?;
    let n = file.read(&mut head).map_err(|e| e.to_string())?;
    Ok(match Compression::sniff(&head[..n]) {
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
        Compression::None => OCI_LAYER,
    })
}

/// Writes an OCI manifest for a config and layers that are in the store.
fn store_manifest(store: &ImageStore, config: (&Digest, u64), layers: &[(Digest, u64)]) -> Result<Digest, String> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(digest, size)| {
            Ok(json!({"mediaType": layer_media_type(store, digest)?, "digest": digest.to_string(), "size": size}))
        })
        .collect::<Result<_, String>>()?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0.to_string(), "size": config.1},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    store.content().put(&bytes, None).map_err(|e| e.to_string())
}

fn docker_images(store: &ImageStore, scan: &Scan, manifest_json: &[u8]) -> Result<Vec<Found>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(manifest_json).map_err(|e| format!("manifest.json: {e}"))?;
    let mut found = Vec::new();
    for entry in entries {
        let config_bytes = scan
            .json(store, &entry.config)
            .ok_or_else(|| format!("manifest.json names {} but the archive lacks it", entry.config))?;
        let config_digest = store.content().put(&config_bytes, None).map_err(|e| e.to_string())?;
        let layers = entry
            .layers
            .iter()
            .map(|l| scan.blob(l).ok_or_else(|| format!("manifest.json names layer {l} but the archive lacks it")))
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = store_manifest(store, (&config_digest, config_bytes.len() as u64), &layers)?;
        found.push(Found { names: entry.repo_tags.unwrap_or_default(), manifest });
    }
    Ok(found)
}

fn oci_images(store: &ImageStore, index_json: &[u8]) -> Result<Vec<Found>, String> {
    let Parsed::Index { manifests, .. } =
        manifest::parse(Some(OCI_INDEX), index_json).map_err(|e| format!("index.json: {e}"))?
    else {
        return Err("index.json is not an index".into());
    };
    let raw: serde_json::Value = serde_json::from_slice(index_json).map_err(|e| format!("index.json: {e}"))?;
    let mut found = Vec::new();
    for (i, descriptor) in manifests.iter().enumerate() {
        let annotations = &raw["manifests"][i]["annotations"];
        let name = annotations["io.containerd.image.name"]
            .as_str()
            .or_else(|| {
                annotations["org.opencontainers.image.ref.name"].as_str().filter(|n| n.contains('/') || n.contains(':'))
            })
            .map(str::to_string);
        let manifest = platform_manifest(store, descriptor)?;
        found.push(Found { names: name.into_iter().collect(), manifest });
    }
    Ok(found)
}

/// The manifest for this machine behind `descriptor`, descending into an index.
fn platform_manifest(store: &ImageStore, descriptor: &Descriptor) -> Result<Digest, String> {
    let bytes =
        store.content().read_capped(&descriptor.digest, manifest::MAX_MANIFEST_BYTES).map_err(|e| e.to_string())?;
    match manifest::parse(Some(&descriptor.media_type), &bytes).map_err(|e| e.to_string())? {
        Parsed::Manifest(_) => Ok(descriptor.digest.clone()),
        Parsed::Index { manifests, .. } => {
            let entry = manifest::select(&manifests, &Platform::host()).map_err(|e| e.to_string())?;
            platform_manifest(store, entry)
        }
    }
}

/// Writes `names` as one archive both `docker load` and OCI tools read: an
/// OCI layout (oci-layout, index.json, blobs/) plus docker's manifest.json
/// pointing into the same blobs.
pub fn export(store: &ImageStore, names: &[String], out: impl Write) -> Result<(), ArchiveError> {
    let images: Vec<ImageRecord> = names.iter().map(|n| store.get(n)).collect::<Result<_, _>>()?;
    let mut tar = tar::Builder::new(out);
    let here = PathBuf::from("<archive>");
    let add = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| -> Result<(), ArchiveError> {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes).map_err(io(&here))
    };
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut written = std::collections::HashSet::new();
    let mut index = Vec::new();
    let mut docker = Vec::new();
    for image in &images {
        let manifest_size = store.content().size(&image.manifest).unwrap_or(0);
        index.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest.to_string(),
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": image.name,
                "org.opencontainers.image.ref.name": image.name.rsplit_once(':').map_or("latest", |(_, tag)| tag),
            }
        }));
        let blob_path = |d: &Digest| format!("blobs/{}/{}", d.algorithm().name(), d.hex());
        docker.push(json!({
            "Config": blob_path(&image.config),
            "RepoTags": [familiar(&image.name)],
            "Layers": image.layers.iter().map(|l| blob_path(&l.digest)).collect::<Vec<_>>(),
        }));
        let blobs = [image.manifest.clone(), image.config.clone()]
            .into_iter()
            .chain(image.layers.iter().map(|l| l.digest.clone()));
        for digest in blobs {
            if !written.insert(digest.clone()) {
                continue;
            }
            let mut file = store.content().open_blob(&digest)?;
            let size = file.metadata().map_err(io(&store.content().blob_path(&digest)))?.len();
            let mut header = tar::Header::new_ustar();
            header.set_size(size);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, blob_path(&digest), &mut file).map_err(io(&here))?;
        }
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index});
    add(&mut tar, "index.json", &serde_json::to_vec(&index).expect("index serialises"))?;
    add(&mut tar, "manifest.json", &serde_json::to_vec(&docker).expect("manifest serialises"))?;
    tar.into_inner().and_then(|mut w| w.flush()).map_err(io(&here))
}

/// `docker.io/library/busybox:latest` as docker writes it: `busybox:latest`.
fn familiar(name: &str) -> String {
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    short.strip_prefix("library/").unwrap_or(short).to_string()
}

/// Builds a one-layer image from a static busybox binary (Debian's
/// busybox-static puts it at /bin/busybox) and stores it as `name`.
/// Reproducible: the same binary always makes the same image digest.
pub async fn build_busybox(store: &ImageStore, busybox: &Path, name: &str) -> Result<ImageRecord, ArchiveError> {
    let layer = busybox_layer(busybox)?;
    let diff_id = store.content().put(&layer, None)?;
    let platform = Platform::host();
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{"created_by": format!("tote: busybox from {}", busybox.display())}],
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = json!(variant);
    }
    let config = serde_json::to_vec(&config).expect("config serialises");
    let config_digest = store.content().put(&config, None)?;
    let manifest = store_manifest(store, (&config_digest, config.len() as u64), &[(diff_id, layer.len() as u64)])
        .map_err(|problem| ArchiveError::Invalid { archive: busybox.to_path_buf(), problem })?;
    Ok(store.register_stored(name, &manifest, OCI_MANIFEST, &manifest).await?)
}

/// The busybox root filesystem as an uncompressed layer tar (about 2 MB).
fn busybox_layer(busybox: &Path) -> Result<Vec<u8>, ArchiveError> {
    let binary = std::fs::read(busybox).map_err(io(busybox))?;
    let applets = std::process::Command::new(busybox).arg("--list").output().map_err(io(busybox))?;
    if !applets.status.success() {
        return Err(ArchiveError::Invalid {
            archive: busybox.to_path_buf(),
            problem: "`busybox --list` failed".into(),
        });
    }
    let mut tar = tar::Builder::new(Vec::with_capacity(binary.len() + (1 << 20)));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    let here = busybox.to_path_buf();
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, dir, std::io::empty()).map_err(io(&here))?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice()).map_err(io(&here))?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox").map_err(io(&here))?;
    }
    for (path, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"),
        ("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes()).map_err(io(&here))?;
    }
    tar.into_inner().map_err(io(&here))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_are_made_familiar() {
        assert_eq!(familiar("docker.io/library/busybox:latest"), "busybox:latest");
        assert_eq!(familiar("docker.io/user/app:v1"), "user/app:v1");
        assert_eq!(familiar("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
    }

    #[test]
    fn symlinks_in_docker_archives_resolve_relative_to_their_directory() {
        assert_eq!(resolve_link("abc/layer.tar", "../def/layer.tar"), "def/layer.tar");
        assert_eq!(resolve_link("abc/layer.tar", "other.tar"), "abc/other.tar");
    }
}
