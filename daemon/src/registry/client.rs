//! Fetching manifests and blobs over the distribution API with oci-client,
//! from each of a registry's endpoints (mirrors first) in turn.

use futures_util::stream::BoxStream;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::config::{Endpoint, RegistryConfig, RequestAuth};
use crate::digest::Digest;
use crate::manifest::{ACCEPTED, Descriptor};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference}: not found ({tried})")]
    NotFound { reference: String, tried: String },
    #[error("{reference}: {endpoint} refused access: {message}")]
    Unauthorized { reference: String, endpoint: String, message: String },
    #[error("{reference}: {endpoint}: {message}")]
    Fetch { reference: String, endpoint: String, message: String },
    #[error("{reference}: the registry sent a manifest with digest {actual}, not the {expected} asked for")]
    ManifestDigest { reference: String, expected: Digest, actual: Digest },
}

/// One endpoint, ready to fetch from.
pub struct Source {
    pub endpoint: Endpoint,
    /// The image reference as this endpoint serves it.
    pub reference: Reference,
    client: Client,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("endpoint", &self.endpoint).finish()
    }
}

fn oci_client(endpoint: &Endpoint) -> Client {
    static TLS: std::sync::Once = std::sync::Once::new();
    TLS.call_once(|| {
        // A process-wide TLS provider; another part of the process may have set one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    Client::new(ClientConfig {
        protocol: if endpoint.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
}

fn registry_auth(auth: Option<RequestAuth>) -> RegistryAuth {
    match auth {
        Some(RequestAuth::Basic(c)) => RegistryAuth::Basic(c.username, c.password),
        Some(RequestAuth::Bearer(token)) => RegistryAuth::Bearer(token),
        None => RegistryAuth::Anonymous,
    }
}

/// The endpoints that serve `reference`, mirrors first. `auth` overrides
/// the configured credentials for the registry itself.
pub fn sources(config: &RegistryConfig, reference: &Reference, auth: Option<&RequestAuth>) -> Vec<Source> {
    let configured = |host: &str| config.credentials(host).map(RequestAuth::Basic);
    config
        .endpoints(reference.registry())
        .into_iter()
        .map(|endpoint| {
            let mut r = reference.clone();
            let creds = if endpoint.mirror {
                r.set_mirror_registry(endpoint.host.clone());
                configured(&endpoint.host)
            } else {
                auth.cloned().or_else(|| configured(reference.registry()))
            };
            Source { client: oci_client(&endpoint), auth: registry_auth(creds), reference: r, endpoint }
        })
        .collect()
}

/// How a failed request should be reported, and whether another endpoint is worth trying.
fn classify(reference: &Reference, endpoint: &Endpoint, err: OciDistributionError) -> RegistryError {
    let (name, host) = (reference.whole(), endpoint.host.clone());
    let message = err.to_string();
    match &err {
        OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound { reference: name, tried: host },
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => {
            RegistryError::Unauthorized { reference: name, endpoint: host, message }
        }
        OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound { reference: name, tried: host },
        OciDistributionError::ServerError { code: 401 | 403, .. } => {
            RegistryError::Unauthorized { reference: name, endpoint: host, message }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                )
            }) =>
        {
            RegistryError::NotFound { reference: name, tried: host }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::Unauthorized | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            RegistryError::Unauthorized { reference: name, endpoint: host, message }
        }
        _ => RegistryError::Fetch { reference: name, endpoint: host, message },
    }
}

/// A manifest as a registry sent it.
#[derive(Debug)]
pub struct FetchedManifest {
    /// Which of the sources answered.
    pub source: usize,
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

/// Fetches the manifest `reference` names (by digest or tag), trying the
/// sources in order. Verifies it against the digest asked for, if any.
pub async fn fetch_manifest(sources: &[Source], reference: &Reference) -> Result<FetchedManifest, RegistryError> {
    let mut errors = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        match fetch_manifest_from(source, reference.digest()).await {
            Ok((bytes, digest)) => return Ok(FetchedManifest { source: index, bytes, digest }),
            Err(err @ RegistryError::ManifestDigest { .. }) => return Err(err),
            Err(err) => errors.push(err),
        }
    }
    Err(combine(reference, errors))
}

/// Fetches a manifest by digest (an index's entry) from one source.
pub async fn fetch_manifest_by_digest(source: &Source, digest: &Digest) -> Result<Vec<u8>, RegistryError> {
    fetch_manifest_from(source, Some(&digest.to_string())).await.map(|(bytes, _)| bytes)
}

async fn fetch_manifest_from(source: &Source, digest: Option<&str>) -> Result<(Vec<u8>, Digest), RegistryError> {
    let reference = match digest {
        Some(d) => source.reference.clone_with_digest(d.to_string()),
        None => source.reference.clone(),
    };
    let (bytes, _) = source
        .client
        .pull_manifest_raw(&reference, &source.auth, ACCEPTED)
        .await
        .map_err(|e| classify(&reference, &source.endpoint, e))?;
    if bytes.len() as u64 > crate::manifest::MAX_MANIFEST_BYTES {
        return Err(RegistryError::Fetch {
            reference: reference.whole(),
            endpoint: source.endpoint.host.clone(),
            message: format!(
                "manifest of {} bytes is above the {}-byte limit",
                bytes.len(),
                crate::manifest::MAX_MANIFEST_BYTES
            ),
        });
    }
    // What the bytes are is the only digest that counts, whatever headers said.
    let actual = Digest::sha256_of(&bytes);
    if let Some(expected) = digest.and_then(|d| d.parse::<Digest>().ok())
        && expected != actual
    {
        return Err(RegistryError::ManifestDigest { reference: reference.whole(), expected, actual });
    }
    Ok((bytes.to_vec(), actual))
}

fn combine(reference: &Reference, errors: Vec<RegistryError>) -> RegistryError {
    if !errors.is_empty() && errors.iter().all(|e| matches!(e, RegistryError::NotFound { .. })) {
        let tried: Vec<String> = errors
            .iter()
            .filter_map(|e| match e {
                RegistryError::NotFound { tried, .. } => Some(tried.clone()),
                _ => None,
            })
            .collect();
        return RegistryError::NotFound { reference: reference.whole(), tried: format!("tried {}", tried.join(", ")) };
    }
    // The most telling failure: anything but "not found" on some mirror.
    errors
        .into_iter()
        .rev()
        .find(|e| !matches!(e, RegistryError::NotFound { .. }))
        .unwrap_or(RegistryError::NotFound { reference: reference.whole(), tried: "no endpoint".into() })
}

/// A blob's bytes from `offset` on. `resumed` is false when the registry
/// sent the whole blob anyway (it ignored the Range request).
pub struct BlobStream {
    pub resumed: bool,
    pub stream: BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
}

/// Opens the blob `descriptor` from `source`, from byte `offset`. A range
/// request is used even from offset 0: registries answer it with 206 and
/// oci-client then does not hash the stream a second time (Tote verifies
/// it while storing it).
pub async fn blob(source: &Source, descriptor: &Descriptor, offset: u64) -> Result<BlobStream, RegistryError> {
    let digest = descriptor.digest.to_string();
    let length = descriptor.size.saturating_sub(offset);
    let response = source
        .client
        .pull_blob_stream_partial(&source.reference, digest.as_str(), offset, Some(length))
        .await
        .map_err(|e| classify(&source.reference.clone_with_digest(digest.clone()), &source.endpoint, e))?;
    Ok(match response {
        BlobResponse::Full(s) => BlobStream { resumed: false, stream: s.stream },
        BlobResponse::Partial(s) => BlobStream { resumed: true, stream: s.stream },
    })
}
