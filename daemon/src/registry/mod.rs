//! Talking to OCI registries: endpoints (mirrors first), credentials, and
//! fetching manifests and blobs with oci-client.

pub mod config;
