//! OCI and Docker manifests, indexes and image configs: what Tote accepts,
//! how a platform is chosen from an index, and layer chain ids.

use std::fmt;

use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type Tote asks registries for, most wanted first.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Manifests and indexes above this are refused (containerd uses the same bound).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Image configs above this are refused.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest of media type {0:?} is not supported (Tote reads OCI and Docker schema 2 manifests and indexes)")]
    Unsupported(String),
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("no image for {wanted} in the index; it has {available}")]
    NoPlatform { wanted: Platform, available: String },
    #[error("{what} is {size} bytes, above the {limit}-byte limit")]
    TooLarge { what: &'static str, size: u64, limit: u64 },
    #[error("layer {digest} has media type {media_type:?}, which Tote cannot unpack")]
    UnsupportedLayer { digest: Digest, media_type: String },
    #[error("the image config lists {diff_ids} layer diff ids but the manifest has {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform this process runs on, in OCI names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self { os: "linux".into(), architecture: architecture.into(), variant: variant.map(str::to_string) }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let (os, architecture) = (parts.next()?, parts.next()?);
        let variant = parts.next().map(str::to_string);
        (parts.next().is_none() && !os.is_empty() && !architecture.is_empty()).then(|| Self {
            os: os.into(),
            architecture: architecture.into(),
            variant,
        })
    }

    /// Whether an index entry for `other` runs here. The variant counts when
    /// both name one; arm64's v8 is what an entry without variant means.
    fn matches(&self, other: &Platform) -> bool {
        let normal = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && match (normal(self), normal(other)) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// A reference to content: what it is, its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone)]
pub enum Parsed {
    Index { media_type: String, manifests: Vec<Descriptor> },
    Manifest(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

fn malformed(what: &'static str) -> impl Fn(String) -> ManifestError {
    move |reason| ManifestError::Malformed { what, reason }
}

/// Parses a manifest or index. `content_type` is what the registry said it
/// sent; the document's own `mediaType` wins when present.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Parsed, ManifestError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { what: "manifest", size: bytes.len() as u64, limit: MAX_MANIFEST_BYTES });
    }
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| malformed("manifest")(e.to_string()))?;
    if raw.schema_version.is_some_and(|v| v != 2) {
        return Err(ManifestError::Unsupported(format!("schemaVersion {}", raw.schema_version.unwrap_or(0))));
    }
    let media_type = raw
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()))
        .filter(|m| !m.is_empty() && m != "application/json" && m != "application/octet-stream")
        .or_else(|| match (&raw.manifests, &raw.layers) {
            (Some(_), None) => Some(OCI_INDEX.to_string()),
            (None, Some(_)) => Some(OCI_MANIFEST.to_string()),
            _ => None,
        })
        .ok_or_else(|| ManifestError::Unsupported("(none)".into()))?;
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let manifests = raw.manifests.ok_or_else(|| malformed("index")("no `manifests`".into()))?;
            Ok(Parsed::Index { media_type, manifests })
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw.config.ok_or_else(|| malformed("manifest")("no `config`".into()))?;
            let layers = raw.layers.ok_or_else(|| malformed("manifest")("no `layers`".into()))?;
            Ok(Parsed::Manifest(Manifest { media_type, config, layers }))
        }
        other => Err(ManifestError::Unsupported(other.to_string())),
    }
}

/// The index entry for `wanted`.
pub fn select<'a>(manifests: &'a [Descriptor], wanted: &Platform) -> Result<&'a Descriptor, ManifestError> {
    let candidates =
        || manifests.iter().filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""));
    let exact = candidates().find(|d| d.platform.as_ref().is_some_and(|p| p == wanted));
    exact.or_else(|| candidates().find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))).ok_or_else(|| {
        let available: Vec<String> =
            manifests.iter().filter_map(|d| d.platform.as_ref().map(Platform::to_string)).collect();
        ManifestError::NoPlatform {
            wanted: wanted.clone(),
            available: if available.is_empty() { "no platforms".into() } else { available.join(", ") },
        }
    })
}

/// The parts of an image config Tote needs to unpack and describe an image.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ManifestError::TooLarge {
            what: "image config",
            size: bytes.len() as u64,
            limit: MAX_CONFIG_BYTES,
        });
    }
    let config: ImageConfig = serde_json::from_slice(bytes).map_err(|e| malformed("image config")(e.to_string()))?;
    if config.rootfs.kind != "layers" {
        return Err(malformed("image config")(format!("rootfs.type is {:?}, not \"layers\"", config.rootfs.kind)));
    }
    Ok(config)
}

/// The chain id of each layer: the first layer's is its diff id, each next
/// one's is sha256("<parent chain id> <diff id>"). A chain id names a layer
/// together with everything beneath it, which is what a snapshot is.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match chain.last() {
            None => diff.clone(),
            Some(parent) => Digest::sha256_of(format!("{parent} {diff}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn manifests_and_indexes_parse_by_media_type() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":7}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","digest":"{}","size":9}}]}}"#,
            d(1),
            d(2)
        );
        let Parsed::Manifest(manifest) = parse(None, m.as_bytes()).unwrap() else { panic!() };
        assert_eq!(manifest.layers.len(), 1);
        assert_eq!(manifest.config.size, 7);
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d(3)
        );
        assert!(matches!(parse(Some(OCI_INDEX), i.as_bytes()).unwrap(), Parsed::Index { .. }));
    }

    #[test]
    fn unsupported_and_malformed_manifests_are_refused() {
        let v1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(parse(None, v1.as_bytes()), Err(ManifestError::Unsupported(_))));
        let odd = r#"{"schemaVersion":2,"mediaType":"application/x-made-up","layers":[]}"#;
        assert!(parse(None, odd.as_bytes()).unwrap_err().to_string().contains("application/x-made-up"));
        let bad_digest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"sha256:zz","size":1}},"layers":[]}}"#
        );
        assert!(matches!(parse(None, bad_digest.as_bytes()), Err(ManifestError::Malformed { .. })));
        let huge = vec![b' '; usize::try_from(MAX_MANIFEST_BYTES + 1).unwrap()];
        assert!(matches!(parse(None, &huge), Err(ManifestError::TooLarge { .. })));
    }

    #[test]
    fn the_host_platform_is_chosen_with_variant_rules() {
        let entry = |platform: &str, n: u8| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d(n).parse().unwrap(),
            size: 1,
            platform: Platform::parse(platform),
        };
        let index =
            vec![entry("linux/arm/v6", 1), entry("linux/arm64", 2), entry("linux/amd64", 3), entry("linux/arm/v7", 4)];
        let pick = |p: &str| select(&index, &Platform::parse(p).unwrap()).map(|d| d.digest.to_string());
        assert_eq!(pick("linux/amd64").unwrap(), d(3));
        assert_eq!(pick("linux/arm64/v8").unwrap(), d(2));
        assert_eq!(pick("linux/arm/v7").unwrap(), d(4));
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(err.contains("linux/s390x") && err.contains("linux/arm/v6"), "{err}");
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let diffs: Vec<Digest> = vec![d(1).parse().unwrap(), d(2).parse().unwrap()];
        let chain = chain_ids(&diffs);
        assert_eq!(chain[0], diffs[0]);
        assert_eq!(chain[1], Digest::sha256_of(format!("{} {}", diffs[0], diffs[1]).as_bytes()));
    }

    #[test]
    fn configs_need_layer_diff_ids() {
        let ok =
            format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, d(1));
        assert_eq!(parse_config(ok.as_bytes()).unwrap().rootfs.diff_ids.len(), 1);
        assert!(parse_config(br#"{"architecture":"amd64","os":"linux"}"#).is_err());
    }
}
