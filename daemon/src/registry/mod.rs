//! Talking to OCI registries: endpoints (mirrors first), credentials, and
//! fetching manifests and blobs with oci-client.

pub mod client;
pub mod config;

pub use client::{BlobStream, FetchedManifest, RegistryError, Source};
pub use config::{ConfigError, Credentials, Endpoint, RegistryConfig, RequestAuth};
