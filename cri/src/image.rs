//! `runtime.v1.ImageService`.

use tonic::{Request, Response, Status};

use crate::Cri;
use crate::api::image_service_server::ImageService;
use crate::api::*;

#[tonic::async_trait]
impl ImageService for Cri {
    // Placeholder until the image service lands: clients validate the
    // image API with this call before any other.
    async fn list_images(&self, _: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(ListImagesResponse { images: Vec::new() }))
    }

    async fn image_status(&self, _: Request<ImageStatusRequest>) -> Result<Response<ImageStatusResponse>, Status> {
        Ok(Response::new(ImageStatusResponse::default()))
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(ImageFsInfoResponse::default()))
    }
}
