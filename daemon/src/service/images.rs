//! Image requests: pull with progress, list, inspect, remove, tag, load,
//! save and prune.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tote_api::v1::*;

use super::containers::{chunk_stream, unix_seconds};
use super::{Streamed, status};
use crate::digest::Digest;
use crate::engine::Engine;
use crate::engine::images::{RemoveOptions, RemoveScope, repo_digest, short};
use crate::images::{Progress, PullOptions};
use crate::registry::Credentials;

fn credentials(auth: &str) -> Result<Option<Credentials>, Status> {
    if auth.is_empty() {
        return Ok(None);
    }
    match auth.split_once(':') {
        Some((user, password)) => Ok(Some(Credentials { username: user.into(), password: password.into() })),
        None => Err(Status::invalid_argument("pull: auth must be user:password")),
    }
}

pub fn pull(engine: Arc<Engine>, request: PullImageRequest) -> Result<Streamed<PullProgress>, Status> {
    let mut options = PullOptions { credentials: credentials(&request.auth)?, ..PullOptions::default() };
    if !request.platform.is_empty() {
        options.platform = crate::manifest::Platform::parse(&request.platform).ok_or_else(|| {
            Status::invalid_argument(format!("bad platform {:?}: use os/arch[/variant]", request.platform))
        })?;
    }
    let (out, receiver) = mpsc::channel::<Result<PullProgress, Status>>(64);
    let progress_out = out.clone();
    options.progress = Some(Arc::new(move |event: &Progress| {
        let message = match event {
            Progress::Resolved { name, digest } => PullProgress {
                status: format!("Pulling from {name}"),
                digest: digest.to_string(),
                ..Default::default()
            },
            Progress::Layer { digest, done, total } => PullProgress {
                id: short(&digest.to_string()),
                status: "Downloading".into(),
                current: *done,
                total: *total,
                ..Default::default()
            },
            Progress::LayerReady { digest, reused } => PullProgress {
                id: short(&digest.to_string()),
                status: if *reused { "Already exists".into() } else { "Pull complete".into() },
                ..Default::default()
            },
        };
        // Progress may be dropped when the client reads slowly; the end is not.
        let _ = progress_out.try_send(Ok(message));
    }));
    let reference = request.reference;
    tokio::spawn(async move {
        let last = match engine.pull_image(&reference, &options).await {
            Ok(image) => Ok(PullProgress {
                status: format!("Downloaded image for {}", image.name),
                digest: image.target.to_string(),
                image_id: image.config.to_string(),
                ..Default::default()
            }),
            Err(e) => Err(status(e)),
        };
        let _ = out.send(last).await;
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

/// docker's image list: one row per image id; a tagged name adds its tag
/// and `repository@digest`, a name pulled by digest adds itself.
pub fn list(engine: &Engine) -> Result<ListImagesReply, Status> {
    let images = engine.list_images().map_err(status)?;
    Ok(ListImagesReply {
        images: images
            .into_iter()
            .map(|image| {
                let mut summary = ImageSummary {
                    id: image.id.to_string(),
                    created: image.created().map_or(0, unix_seconds),
                    size: image.size(),
                    ..Default::default()
                };
                for record in &image.records {
                    if record.name.contains('@') {
                        summary.repo_digests.push(record.name.clone());
                    } else {
                        summary.repo_tags.push(record.name.clone());
                        summary.repo_digests.push(repo_digest(record));
                    }
                }
                summary
            })
            .collect(),
    })
}

pub fn inspect(engine: &Engine, reference: &str) -> Result<JsonReply, Status> {
    let found = engine.find_image(reference).map_err(status)?;
    let record = &found.matched;
    let config = engine.image_config(record).map_err(status)?;
    let names: Vec<&str> = found.image.records.iter().map(|i| i.name.as_str()).collect();
    let document = json!({
        "Id": record.config.to_string(),
        "RepoTags": names,
        "RepoDigests": [repo_digest(record)],
        "Created": record.created,
        "Size": record.size(),
        "Architecture": config.architecture().to_string(),
        "Os": config.os().to_string(),
        "Config": config.config(),
        "RootFS": {"Type": "layers", "Layers": record.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        "Metadata": {"StoredAt": record.stored_at},
    });
    Ok(JsonReply { json: document.to_string() })
}

pub fn remove(engine: &Engine, request: RemoveImageRequest) -> Result<RemoveImageReply, Status> {
    let options = RemoveOptions { scope: RemoveScope::Reference, force: request.force };
    let removed = engine.remove_image(&request.reference, options).map_err(status)?;
    Ok(RemoveImageReply {
        untagged: removed.untagged,
        deleted: removed.deleted.iter().map(Digest::to_string).collect(),
    })
}

/// `image prune`: blocking work, off the async threads.
pub async fn prune(engine: Arc<Engine>, request: PruneImagesRequest) -> Result<PruneImagesReply, Status> {
    tokio::task::spawn_blocking(move || {
        let report = engine.prune_images(request.all).map_err(status)?;
        Ok(PruneImagesReply {
            untagged: report.untagged,
            deleted: report.deleted.iter().map(Digest::to_string).collect(),
            partial_downloads: report.partials.iter().map(|p| p.label()).collect(),
            space_reclaimed: report.reclaimed,
        })
    })
    .await
    .map_err(|e| Status::internal(format!("image prune: {e}")))?
}

pub fn tag(engine: &Engine, request: TagImageRequest) -> Result<(), Status> {
    engine.tag_image(&request.source, &request.target).map_err(status)?;
    Ok(())
}

pub async fn load(engine: &Engine, mut input: Streaming<Chunk>) -> Result<LoadImagesReply, Status> {
    let dir = engine.paths.root.join("tmp");
    std::fs::create_dir_all(&dir).map_err(|e| Status::internal(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("load-{}.tar", crate::engine::new_id().map_err(status)?));
    let result = async {
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| Status::internal(e.to_string()))?;
        while let Some(chunk) = input.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk?.data)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| Status::internal(e.to_string()))?;
        let images = crate::archive::import(&engine.images, &path, None)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        for image in &images {
            engine.events.publish("image", "load", &image.name, &[]);
        }
        Ok(LoadImagesReply { loaded: images.into_iter().map(|i| i.name).collect() })
    }
    .await;
    let _ = std::fs::remove_file(&path);
    result
}

pub fn save(engine: Arc<Engine>, request: SaveImagesRequest) -> Result<Streamed<Chunk>, Status> {
    if request.references.is_empty() {
        return Err(Status::invalid_argument("save: name at least one image"));
    }
    let mut names = Vec::new();
    for reference in &request.references {
        names.push(engine.images.resolve(reference).map_err(|e| status(e.into()))?.name);
    }
    Ok(chunk_stream(move |writer| crate::archive::export(&engine.images, &names, writer).map_err(|e| e.to_string())))
}
