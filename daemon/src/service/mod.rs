//! Tote's management API (tote.v1) over the engine: request and reply
//! conversion, streams, and errors as gRPC statuses the CLI understands.

mod containers;
mod images;
mod streams;
mod system;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tote_api::v1::tote_server::Tote;
use tote_api::v1::*;

use crate::engine::{Engine, EngineError};

pub type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct ToteService {
    pub engine: Arc<Engine>,
}

/// An engine error as the CLI expects it: the code says what kind, the
/// message is what the user reads, and metadata carries exit codes and
/// missing images.
pub fn status(error: EngineError) -> Status {
    match error {
        EngineError::NotFound(message) => Status::not_found(message),
        EngineError::Conflict(message) => Status::failed_precondition(message),
        EngineError::Invalid(message) => Status::invalid_argument(message),
        EngineError::Internal(message) => Status::internal(message),
        EngineError::Timeout(message) => Status::deadline_exceeded(message),
        EngineError::MissingImage(name) => {
            let mut status = Status::not_found(format!("No such image: {name}"));
            if let Ok(value) = name.parse() {
                status.metadata_mut().insert(tote_api::MISSING_IMAGE_METADATA, value);
            }
            status
        }
        EngineError::Exec { message, exit_code } => {
            let mut status = Status::failed_precondition(message);
            if let Ok(value) = exit_code.to_string().parse() {
                status.metadata_mut().insert(tote_api::EXIT_CODE_METADATA, value);
            }
            status
        }
    }
}

#[tonic::async_trait]
impl Tote for ToteService {
    async fn version(&self, _: Request<Empty>) -> Result<Response<VersionReply>, Status> {
        Ok(Response::new(system::version()))
    }

    async fn info(&self, _: Request<Empty>) -> Result<Response<InfoReply>, Status> {
        Ok(Response::new(system::info(&self.engine)))
    }

    async fn events(&self, request: Request<EventsRequest>) -> Result<Response<Streamed<Event>>, Status> {
        Ok(Response::new(system::events(&self.engine, request.into_inner())?))
    }

    async fn disk_usage(&self, _: Request<Empty>) -> Result<Response<DiskUsageReply>, Status> {
        Ok(Response::new(system::disk_usage(self.engine.clone()).await?))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerReply>, Status> {
        let request = containers::create_request(request.into_inner())?;
        let (id, warnings) = self.engine.create(request).await.map_err(status)?;
        Ok(Response::new(CreateContainerReply { id, warnings }))
    }

    async fn start_container(&self, request: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        self.engine.start(&request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn stop_container(&self, request: Request<StopContainerRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.engine.stop(&request.id, u32::try_from(request.timeout).ok()).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn restart_container(&self, request: Request<StopContainerRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.engine.restart(&request.id, u32::try_from(request.timeout).ok()).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn kill_container(&self, request: Request<KillContainerRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.engine.kill(&request.id, &request.signal).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn remove_container(&self, request: Request<RemoveContainerRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.engine.remove(&request.id, request.force, request.volumes).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersReply>, Status> {
        Ok(Response::new(containers::list(&self.engine, request.into_inner())?))
    }

    async fn inspect_container(&self, request: Request<ContainerRef>) -> Result<Response<JsonReply>, Status> {
        let document = self.engine.inspect(&request.into_inner().id).map_err(status)?;
        Ok(Response::new(JsonReply { json: document.to_string() }))
    }

    async fn wait_container(&self, request: Request<ContainerRef>) -> Result<Response<WaitReply>, Status> {
        let (exit_code, oom_killed) = self.engine.wait(&request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(WaitReply { exit_code, oom_killed, error: String::new() }))
    }

    async fn pause_container(&self, request: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        self.engine.pause(&request.into_inner().id, true).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn unpause_container(&self, request: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        self.engine.pause(&request.into_inner().id, false).await.map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn rename_container(&self, request: Request<RenameContainerRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        self.engine.rename(&request.id, &request.new_name).map_err(status)?;
        Ok(Response::new(Empty {}))
    }

    async fn update_container(&self, request: Request<UpdateContainerRequest>) -> Result<Response<Empty>, Status> {
        containers::update(&self.engine, request.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn top_container(&self, request: Request<ContainerRef>) -> Result<Response<TopReply>, Status> {
        let (titles, rows) = self.engine.top(&request.into_inner().id).await.map_err(status)?;
        let processes = rows.into_iter().map(|fields| TopProcess { fields }).collect();
        Ok(Response::new(TopReply { titles, processes }))
    }

    async fn container_stats(&self, request: Request<StatsRequest>) -> Result<Response<Streamed<StatsReply>>, Status> {
        Ok(Response::new(streams::stats(self.engine.clone(), request.into_inner()).await?))
    }

    async fn container_logs(&self, request: Request<LogsRequest>) -> Result<Response<Streamed<LogEntry>>, Status> {
        Ok(Response::new(streams::logs(&self.engine, request.into_inner())?))
    }

    async fn attach(&self, request: Request<Streaming<AttachInput>>) -> Result<Response<Streamed<IoOutput>>, Status> {
        Ok(Response::new(streams::attach(self.engine.clone(), request.into_inner()).await?))
    }

    async fn exec(&self, request: Request<Streaming<ExecInput>>) -> Result<Response<Streamed<IoOutput>>, Status> {
        Ok(Response::new(streams::exec(self.engine.clone(), request.into_inner()).await?))
    }

    async fn copy_from_container(
        &self,
        request: Request<CopyFromRequest>,
    ) -> Result<Response<Streamed<Chunk>>, Status> {
        Ok(Response::new(containers::copy_from(&self.engine, request.into_inner())?))
    }

    async fn copy_to_container(&self, request: Request<Streaming<CopyToInput>>) -> Result<Response<Empty>, Status> {
        containers::copy_to(&self.engine, request.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Result<Response<Streamed<PullProgress>>, Status> {
        Ok(Response::new(images::pull(self.engine.clone(), request.into_inner())?))
    }

    async fn list_images(&self, _: Request<Empty>) -> Result<Response<ListImagesReply>, Status> {
        Ok(Response::new(images::list(&self.engine)?))
    }

    async fn inspect_image(&self, request: Request<ImageRef>) -> Result<Response<JsonReply>, Status> {
        Ok(Response::new(images::inspect(&self.engine, &request.into_inner().reference)?))
    }

    async fn remove_image(&self, request: Request<RemoveImageRequest>) -> Result<Response<RemoveImageReply>, Status> {
        Ok(Response::new(images::remove(&self.engine, request.into_inner())?))
    }

    async fn tag_image(&self, request: Request<TagImageRequest>) -> Result<Response<Empty>, Status> {
        images::tag(&self.engine, request.into_inner())?;
        Ok(Response::new(Empty {}))
    }

    async fn load_images(&self, request: Request<Streaming<Chunk>>) -> Result<Response<LoadImagesReply>, Status> {
        Ok(Response::new(images::load(&self.engine, request.into_inner()).await?))
    }

    async fn save_images(&self, request: Request<SaveImagesRequest>) -> Result<Response<Streamed<Chunk>>, Status> {
        Ok(Response::new(images::save(self.engine.clone(), request.into_inner())?))
    }

    async fn prune_images(&self, request: Request<PruneImagesRequest>) -> Result<Response<PruneImagesReply>, Status> {
        Ok(Response::new(images::prune(self.engine.clone(), request.into_inner()).await?))
    }

    async fn create_volume(&self, request: Request<CreateVolumeRequest>) -> Result<Response<Volume>, Status> {
        Ok(Response::new(system::create_volume(&self.engine, request.into_inner())?))
    }

    async fn list_volumes(&self, _: Request<Empty>) -> Result<Response<ListVolumesReply>, Status> {
        Ok(Response::new(system::list_volumes(&self.engine)?))
    }

    async fn inspect_volume(&self, request: Request<VolumeRef>) -> Result<Response<Volume>, Status> {
        Ok(Response::new(system::inspect_volume(&self.engine, &request.into_inner().name)?))
    }

    async fn remove_volume(&self, request: Request<RemoveVolumeRequest>) -> Result<Response<Empty>, Status> {
        system::remove_volume(&self.engine, request.into_inner())?;
        Ok(Response::new(Empty {}))
    }
}
