//! The Kubernetes CRI v1 (`runtime.v1.RuntimeService` and
//! `runtime.v1.ImageService`) over toted's engine. This crate converts
//! between the CRI's messages and the engine's requests and typed results,
//! and maps engine errors to the gRPC codes the kubelet expects; what a pod,
//! a container or an image is, and every policy about them, is the
//! engine's.

mod containers;
mod events;
mod image;
mod pods;
mod runtime;
mod stats;
pub mod streaming;
mod time;

use std::sync::Arc;

use toted::engine::{Engine, EngineError};

#[allow(clippy::all, clippy::pedantic, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

/// The CRI's own name for its API version, answered by `Version`.
pub const CRI_API_VERSION: &str = "v1";

/// Both CRI services share one engine; toted serves them on its socket
/// beside `tote.v1`.
#[derive(Clone)]
pub struct Cri {
    engine: Arc<Engine>,
    /// The pod CIDR the kubelet last gave (UpdateRuntimeConfig), shown by
    /// verbose Status; the CNI configuration decides addresses.
    pod_cidr: Arc<std::sync::Mutex<String>>,
    /// The streaming server handing out Exec/Attach/PortForward URLs; none:
    /// those calls answer Unavailable.
    stream: Option<Arc<tote_stream::server::ServerHandle>>,
}

impl Cri {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine, pod_cidr: Arc::default(), stream: None }
    }

    /// Starts the streaming server on `address` (port 0: any free port) in
    /// front of the engine, and serves its URLs.
    pub async fn with_streaming(engine: Arc<Engine>, address: std::net::SocketAddr) -> std::io::Result<Self> {
        let backend = Arc::new(streaming::EngineBackend::new(engine.clone()));
        let server = tote_stream::server::Server::bind(tote_stream::server::Config::new(address), backend).await?;
        tracing::info!(address = %server.local_addr(), "CRI streaming server listening");
        Ok(Self { stream: Some(Arc::new(server.spawn())), ..Self::new(engine) })
    }

    pub fn runtime_service(&self) -> api::runtime_service_server::RuntimeServiceServer<Self> {
        api::runtime_service_server::RuntimeServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn image_service(&self) -> api::image_service_server::ImageServiceServer<Self> {
        api::image_service_server::ImageServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Items per message of the Stream* calls (the kubelet's CRIListStreaming):
/// far below the message limit even for large items.
pub(crate) const STREAM_CHUNK: usize = 100;

/// `items` as a Stream* reply: messages of at most [`STREAM_CHUNK`] items,
/// none when there are none.
pub(crate) fn in_chunks<T: Clone, R: Send + 'static>(
    items: &[T],
    wrap: impl Fn(Vec<T>) -> R,
) -> tonic::codegen::BoxStream<R> {
    let messages: Vec<Result<R, tonic::Status>> = items.chunks(STREAM_CHUNK).map(|c| Ok(wrap(c.to_vec()))).collect();
    Box::pin(tokio_stream::iter(messages))
}

/// The kubelet's own limit for CRI messages (16 MiB): a node with many
/// pods lists more than tonic's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// An engine error as the CRI expects it.
pub(crate) fn status(error: EngineError) -> tonic::Status {
    use tonic::Status;
    match error {
        EngineError::NotFound(message) => Status::not_found(message),
        EngineError::MissingImage(name) => Status::not_found(format!("image {name:?} is not present")),
        EngineError::Conflict(message) => Status::failed_precondition(message),
        EngineError::Invalid(message) => Status::invalid_argument(message),
        EngineError::Exec { message, .. } => Status::failed_precondition(message),
        EngineError::Timeout(message) => Status::deadline_exceeded(message),
        EngineError::Internal(message) => Status::internal(message),
    }
}
