//! `runtime.v1.ImageService`.

use crate::Cri;
use crate::api::image_service_server::ImageService;

#[tonic::async_trait]
impl ImageService for Cri {}
