//! Image requests: pull with progress, list, inspect, remove, tag, load,
//! save and prune.

use std::collections::{BTreeMap, HashSet};
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
use crate::engine::{ContainerFilter, Engine, EngineError};
use crate::images::{Progress, PullOptions};
use crate::registry::Credentials;

fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex[..hex.len().min(12)].to_string()
}

/// The ids of the images containers were created from: what `rmi` and
/// `image prune` must leave on disk, what `system df` counts as active.
pub fn images_in_use(engine: &Engine) -> HashSet<Digest> {
    let containers = engine.list(&ContainerFilter { all: true, filters: Vec::new() });
    containers.into_iter().filter_map(|row| row.record.image_id.parse().ok()).collect()
}

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
        let result = engine.images.pull(&reference, &options).await;
        let last = match result {
            Ok(image) => {
                engine.events.publish("image", "pull", &image.name, &[]);
                Ok(PullProgress {
                    status: format!("Downloaded image for {}", image.name),
                    digest: image.target.to_string(),
                    image_id: image.config.to_string(),
                    ..Default::default()
                })
            }
            Err(e) => Err(status(e.into())),
        };
        let _ = out.send(last).await;
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

pub fn list(engine: &Engine) -> Result<ListImagesReply, Status> {
    let records = engine.images.list().map_err(|e| status(e.into()))?;
    let mut by_id: BTreeMap<String, ImageSummary> = BTreeMap::new();
    for record in records {
        let id = record.config.to_string();
        let summary = by_id.entry(id.clone()).or_insert_with(|| ImageSummary {
            id,
            created: record.created.as_deref().map_or(0, unix_seconds),
            size: record.size(),
            ..Default::default()
        });
        if record.name.contains('@') {
            summary.repo_digests.push(record.name.clone());
        } else {
            summary.repo_tags.push(record.name.clone());
            let repository = record.name.rsplit_once(':').map_or(record.name.as_str(), |(r, _)| r);
            summary.repo_digests.push(format!("{repository}@{}", record.target));
        }
    }
    let mut images: Vec<ImageSummary> = by_id.into_values().collect();
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    Ok(ListImagesReply { images })
}

pub fn inspect(engine: &Engine, reference: &str) -> Result<JsonReply, Status> {
    let record = engine.images.resolve(reference).map_err(|e| status(e.into()))?;
    let config = engine.images.config(&record).map_err(|e| status(e.into()))?;
    let tags: Vec<String> = engine
        .images
        .list()
        .map_err(|e| status(e.into()))?
        .into_iter()
        .filter(|i| i.config == record.config)
        .map(|i| i.name)
        .collect();
    let document = json!({
        "Id": record.config.to_string(),
        "RepoTags": tags,
        "RepoDigests": [format!("{}@{}", record.name.rsplit_once(':').map_or(record.name.as_str(), |(r, _)| r), record.target)],
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
    let record = engine.images.resolve(&request.reference).map_err(|e| status(e.into()))?;
    let id = record.config.to_string();
    let by_id = request.reference.trim_start_matches("sha256:").chars().all(|c| c.is_ascii_hexdigit())
        && id.contains(request.reference.trim_start_matches("sha256:"));
    let names: Vec<String> = if by_id {
        engine
            .images
            .list()
            .map_err(|e| status(e.into()))?
            .into_iter()
            .filter(|i| i.config == record.config)
            .map(|i| i.name)
            .collect()
    } else {
        vec![record.name.clone()]
    };
    let all_names =
        engine.images.list().map_err(|e| status(e.into()))?.into_iter().filter(|i| i.config == record.config).count();
    let last_name = names.len() == all_names;
    let users = engine.image_users(&id);
    if last_name && !users.is_empty() && !request.force {
        return Err(status(EngineError::Conflict(format!(
            "conflict: unable to remove repository reference \"{}\" (must force) - container {} is using its referenced image {}",
            request.reference,
            users.join(", "),
            short(&id)
        ))));
    }
    // With force, an image that containers use loses its names but keeps
    // its content (docker leaves it dangling) until they are gone.
    let in_use = images_in_use(engine);
    let mut reply = RemoveImageReply::default();
    for name in names {
        engine.images.remove_keeping(&name, &in_use).map_err(|e| status(e.into()))?;
        engine.events.publish("image", "untag", &name, &[]);
        reply.untagged.push(name);
    }
    if last_name && users.is_empty() {
        engine.events.publish("image", "delete", &id, &[]);
        reply.deleted.push(id);
    }
    Ok(reply)
}

/// `image prune`: the image store decides what goes; this finds what
/// containers use and reports. Blocking work, off the async threads.
pub async fn prune(engine: Arc<Engine>, request: PruneImagesRequest) -> Result<PruneImagesReply, Status> {
    tokio::task::spawn_blocking(move || {
        let report = engine.images.prune(request.all, &images_in_use(&engine)).map_err(|e| status(e.into()))?;
        for name in &report.untagged {
            engine.events.publish("image", "untag", name, &[]);
        }
        for id in &report.deleted_images {
            engine.events.publish("image", "delete", &id.to_string(), &[]);
        }
        engine.events.publish("image", "prune", "", &[("reclaimed", &report.reclaimed.to_string())]);
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
    let source = engine.images.resolve(&request.source).map_err(|e| status(e.into()))?;
    let tagged = engine.images.tag(&source.name, &request.target).map_err(|e| status(e.into()))?;
    engine.events.publish("image", "tag", &tagged.name, &[]);
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
