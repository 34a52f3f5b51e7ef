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
}

impl Cri {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
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
