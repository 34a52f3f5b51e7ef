//! SPDY/3.1 (draft-mbelshe-httpbis-spdy-00 as Kubernetes uses it): the
//! framing, zlib-compressed header blocks, and the remote-command and
//! port-forward protocols the kubelet's proxy and critest speak over it.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Backend, RemoteCommandProtocol, Session};

/// Serves one exec or attach session on a connection already upgraded to
/// SPDY/3.1 (the server has sent its `101 Switching Protocols`).
pub async fn serve_remote_command<IO>(
    io: IO,
    protocol: RemoteCommandProtocol,
    session: Session,
    backend: Arc<dyn Backend>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let _ = (io, protocol, session, backend);
    tracing::warn!("SPDY remote command is not built yet");
}

/// Serves `portforward.k8s.io` on a connection already upgraded to
/// SPDY/3.1: each port the client asks for is a data and an error stream
/// pair sharing a `requestID`.
pub async fn serve_port_forward<IO>(io: IO, pod_sandbox_id: String, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let _ = (io, pod_sandbox_id, backend);
    tracing::warn!("SPDY port forwarding is not built yet");
}
