//! Tote's management API: the generated gRPC types and services, and how
//! the CLI reaches toted's unix socket.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, clippy::pedantic, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub mod v1 {
    tonic::include_proto!("tote.v1");
}

/// Where toted listens and the CLI looks by default.
pub const DEFAULT_HOST: &str = "unix:///run/tote/tote.sock";

/// The version of this API; the CLI and daemon compare it.
pub const API_VERSION: &str = "1";

/// gRPC status metadata set by toted when a container's command could not
/// run: "126" (found but not executable) or "127" (not found), the exit
/// codes docker gives.
pub const EXIT_CODE_METADATA: &str = "tote-exit-code";

/// gRPC status metadata set on `CreateContainer`'s NotFound when the image
/// is not present (the value is the normalised reference): `run` pulls it
/// and tries again, as docker does.
pub const MISSING_IMAGE_METADATA: &str = "tote-missing-image";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("bad host {0:?}: only unix:///path (or a plain socket path) is supported")]
    Unsupported(String),
    #[error("cannot connect to toted at {path}: {source} (is toted running?)")]
    Connect { path: PathBuf, source: tonic::transport::Error },
}

/// The socket path of a `-H`/`TOTE_HOST` value: `unix:///path` or `/path`.
pub fn socket_path(host: &str) -> Result<PathBuf, HostError> {
    match host.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        None if host.starts_with('/') => Ok(PathBuf::from(host)),
        _ => Err(HostError::Unsupported(host.to_string())),
    }
}

/// The largest request toted takes (a create with a big environment).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// The largest reply a client reads: what a request stored, and room for
/// what a reply adds around it (an inspect document around that env).
pub const MAX_REPLY_BYTES: usize = 2 * MAX_REQUEST_BYTES;

/// A gRPC channel to toted over its unix socket.
pub async fn connect(host: &str) -> Result<Channel, HostError> {
    let path = socket_path(host)?;
    let target = path.clone();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://toted")
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            async move { tokio::net::UnixStream::connect(target).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| HostError::Connect { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_unix_sockets() {
        assert_eq!(socket_path("unix:///run/tote/tote.sock").unwrap(), PathBuf::from("/run/tote/tote.sock"));
        assert_eq!(socket_path("/tmp/t.sock").unwrap(), PathBuf::from("/tmp/t.sock"));
        let err = socket_path("tcp://127.0.0.1:2375").unwrap_err();
        assert!(err.to_string().contains("tcp://127.0.0.1:2375"), "{err}");
        assert!(socket_path("unix://relative").is_err());
    }
}
