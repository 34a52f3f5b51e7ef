//! `runtime.v1.RuntimeService`.

use tonic::{Request, Response, Status};

use crate::api::runtime_service_server::RuntimeService;
use crate::api::*;
use crate::{CRI_API_VERSION, Cri};

/// The name the CRI's Version answers with, as containerd's is
/// "containerd" and CRI-O's "cri-o".
pub const RUNTIME_NAME: &str = "tote";

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, _: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }
}
