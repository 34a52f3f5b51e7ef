//! `runtime.v1.ImageService` over the engine's image API.
//!
//! An image's id (and every `image_ref` the CRI returns for it) is
//! `sha256:<config digest>`, so one image pulled under several names (say
//! `registry.k8s.io/pause:3.9` and `k8s.gcr.io/pause:3.9` through a
//! mirror) is one image with several `repo_tags`.

use std::collections::HashMap;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};
use toted::engine::EngineError;
use toted::engine::images::{DirUsage, Image as EngineImage, RemoveOptions, RemoveScope};
use toted::images::PullOptions;
use toted::registry::Credentials;

use crate::api::image_service_server::ImageService;
use crate::api::*;
use crate::{Cri, status};

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request.into_inner().filter;
        Ok(Response::new(ListImagesResponse { images: self.images(filter.as_ref())? }))
    }

    async fn stream_images(
        &self,
        request: Request<StreamImagesRequest>,
    ) -> Result<Response<BoxStream<StreamImagesResponse>>, Status> {
        let filter = request.into_inner().filter;
        let images = self.images(filter.as_ref())?;
        Ok(Response::new(crate::in_chunks(&images, |images| StreamImagesResponse { images })))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let reference = image_name(request.image.as_ref(), "ImageStatus")?;
        let engine = self.engine.clone();
        let found = match engine.find_image(reference) {
            Ok(found) => found,
            // Not an error: the CRI answers a missing image with no image.
            Err(EngineError::NotFound(_)) => return Ok(Response::new(ImageStatusResponse::default())),
            Err(e) => return Err(status(e)),
        };
        let config = engine.image_config(&found.matched).map_err(status)?;
        let mut info = HashMap::new();
        if request.verbose {
            info.insert("info".to_string(), verbose_info(&found.image, &config));
        }
        let image = self.cri_image(&found.image, &config);
        Ok(Response::new(ImageStatusResponse { image: Some(image), info }))
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let reference = image_name(request.image.as_ref(), "PullImage")?;
        let parsed = toted::reference::parse(reference).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The sandbox config (pulls in a pod's context) changes nothing
        // here: every pull goes through the same mirrors and store.
        let mut options = PullOptions::default();
        if let Some(auth) = &request.auth
            && applies_to(auth, parsed.registry())
        {
            apply_auth(auth, &mut options)?;
        }
        let image = self.engine.pull_image(reference, &options).await.map_err(status)?;
        Ok(Response::new(PullImageResponse { image_ref: image.config.to_string() }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let reference = image_name(request.image.as_ref(), "RemoveImage")?;
        // Every name goes, as the CRI says. Containers that use the image
        // keep its content until they are removed (containerd's CRI also
        // removes an image in use; the kubelet's garbage collection only
        // asks for images it sees unused).
        let options = RemoveOptions { scope: RemoveScope::AllNames, force: true };
        match self.engine.remove_image(reference, options) {
            // Removing what is not there succeeds: the call is idempotent.
            Ok(_) | Err(EngineError::NotFound(_)) => Ok(Response::new(RemoveImageResponse {})),
            Err(e) => Err(status(e)),
        }
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Result<Response<ImageFsInfoResponse>, Status> {
        let engine = self.engine.clone();
        let usage = tokio::task::spawn_blocking(move || engine.image_fs_usage())
            .await
            .map_err(|e| Status::internal(format!("ImageFsInfo: {e}")))?;
        let timestamp = now_ns();
        let mountpoint = usage.mountpoint.display().to_string();
        // Images and containers' writable layers share the snapshots
        // directory, so both report its mountpoint: the kubelet sees one
        // filesystem, not a split image store.
        let make = |dir: DirUsage| FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier { mountpoint: mountpoint.clone() }),
            used_bytes: Some(UInt64Value { value: dir.bytes }),
            inodes_used: Some(UInt64Value { value: dir.inodes }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![make(usage.images)],
            container_filesystems: vec![make(usage.containers)],
        }))
    }
}

impl Cri {
    /// Every image as the CRI shows it, or only the one `filter` names
    /// (none when it names no image).
    fn images(&self, filter: Option<&ImageFilter>) -> Result<Vec<Image>, Status> {
        let wanted = filter.and_then(|f| f.image.as_ref()).map(|spec| spec.image.as_str()).filter(|i| !i.is_empty());
        let images = match wanted {
            Some(reference) => match self.engine.find_image(reference) {
                Ok(found) => vec![found.image],
                Err(EngineError::NotFound(_)) => Vec::new(),
                Err(e) => return Err(status(e)),
            },
            None => self.engine.list_images().map_err(status)?,
        };
        Ok(images
            .iter()
            .map(|image| match self.engine.image_config(image.record()) {
                Ok(config) => self.cri_image(image, &config),
                // One unreadable config must not hide every image from the
                // kubelet: this one is listed without its user.
                Err(e) => {
                    tracing::warn!(image = %image.id, "ListImages: image config: {e}");
                    self.cri_image(image, &oci_spec::image::ImageConfiguration::default())
                }
            })
            .collect())
    }

    fn cri_image(&self, image: &EngineImage, config: &oci_spec::image::ImageConfiguration) -> Image {
        let id = image.id.to_string();
        let user = config.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
        let (uid, username) = image_user(&user);
        Image {
            repo_tags: image.tags(),
            repo_digests: image.repo_digests(),
            size: image.size(),
            uid,
            username,
            spec: Some(ImageSpec { image: id.clone(), ..Default::default() }),
            pinned: self.is_pinned(image),
            id,
        }
    }

    /// Whether `[cri] pinned_images` names the image (by any of its names,
    /// normalised, or by its id).
    fn is_pinned(&self, image: &EngineImage) -> bool {
        let id = image.id.to_string();
        self.engine.config.cri.pinned_images.iter().any(|pinned| {
            if *pinned == id {
                return true;
            }
            let Ok(reference) = toted::reference::parse(pinned) else { return false };
            let canonical = toted::reference::canonical(&reference);
            image.records.iter().any(|r| r.name == canonical)
        })
    }
}

/// The user an image's config names: a number is a uid, anything else a
/// user name to look up in the container; a group after `:` is not the
/// CRI's concern here.
fn image_user(user: &str) -> (Option<Int64Value>, String) {
    let user = user.split_once(':').map_or(user, |(u, _)| u);
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// ImageStatus's verbose `info`: the image config and the top layer's chain
/// id, under containerd's key names so that tools reading them (crictl
/// inspecti) find them; then Tote's own view of the image.
fn verbose_info(image: &EngineImage, config: &oci_spec::image::ImageConfiguration) -> String {
    let record = image.record();
    serde_json::json!({
        "imageSpec": config,
        "chainID": record.top_chain_id().map(ToString::to_string).unwrap_or_default(),
        "manifest": record.manifest.to_string(),
        "target": {"digest": record.target.to_string(), "mediaType": record.target_media_type},
        "platform": record.platform,
        "names": image.records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The image a request names; a request without one is malformed.
fn image_name<'a>(spec: Option<&'a ImageSpec>, call: &str) -> Result<&'a str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(image) if !image.is_empty() => Ok(image),
        _ => Err(Status::invalid_argument(format!("{call}: the image spec names no image"))),
    }
}

/// Whether the kubelet's credentials are for `registry`: they say which
/// server they are for (a host, or a URL as docker's config keys are), and
/// are not sent to any other, as containerd does.
fn applies_to(auth: &AuthConfig, registry: &str) -> bool {
    if auth.server_address.is_empty() {
        return true;
    }
    let host = auth.server_address.split_once("://").map_or(auth.server_address.as_str(), |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    let docker_hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || (docker_hub(host) && docker_hub(registry))
}

/// The kubelet's credentials as pull options: a registry token as a
/// bearer token; a user and password, given as such or as `auth`
/// (base64 of `user:password`), for basic auth or the registry's token
/// exchange. An identity token (an OAuth2 refresh token, exchanged at the
/// registry's token service) is refused: Tote's registry client cannot
/// make that exchange, and pulling without it would fail less clearly.
fn apply_auth(auth: &AuthConfig, options: &mut PullOptions) -> Result<(), Status> {
    if !auth.registry_token.is_empty() {
        options.registry_token = Some(auth.registry_token.clone());
        return Ok(());
    }
    if !auth.username.is_empty() || !auth.password.is_empty() {
        options.credentials = Some(Credentials { username: auth.username.clone(), password: auth.password.clone() });
        return Ok(());
    }
    if !auth.auth.is_empty() {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("PullImage: auth is not base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Status::invalid_argument("PullImage: auth is not base64 of UTF-8 user:password"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("PullImage: auth is not base64 of user:password"))?;
        options.credentials = Some(Credentials { username: username.into(), password: password.into() });
        return Ok(());
    }
    if !auth.identity_token.is_empty() {
        return Err(Status::unimplemented(
            "PullImage: identity_token (an OAuth2 refresh token) is not supported; \
             give username and password, auth, or registry_token",
        ));
    }
    Ok(())
}

fn now_ns() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numeric_user_is_a_uid_and_a_name_a_username() {
        assert_eq!(image_user("1000"), (Some(Int64Value { value: 1000 }), String::new()));
        assert_eq!(image_user("0:0"), (Some(Int64Value { value: 0 }), String::new()));
        assert_eq!(image_user("nobody:nogroup"), (None, "nobody".to_string()));
        assert_eq!(image_user(""), (None, String::new()));
    }

    #[test]
    fn credentials_come_from_each_form_the_kubelet_sends() {
        let mut options = PullOptions::default();
        let auth = AuthConfig { auth: "dXNlcjpwYTpzcw==".into(), ..Default::default() };
        apply_auth(&auth, &mut options).unwrap();
        let credentials = options.credentials.clone().unwrap();
        assert_eq!((credentials.username.as_str(), credentials.password.as_str()), ("user", "pa:ss"));

        let mut options = PullOptions::default();
        let auth = AuthConfig { registry_token: "tok".into(), username: "u".into(), ..Default::default() };
        apply_auth(&auth, &mut options).unwrap();
        assert_eq!(options.registry_token.as_deref(), Some("tok"));
        assert!(options.credentials.is_none(), "the token wins");

        let bad = AuthConfig { auth: "not base64!".into(), ..Default::default() };
        assert_eq!(apply_auth(&bad, &mut PullOptions::default()).unwrap_err().code(), tonic::Code::InvalidArgument);
        let identity = AuthConfig { identity_token: "refresh".into(), ..Default::default() };
        let err = apply_auth(&identity, &mut PullOptions::default()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(err.message().contains("identity_token"), "{}", err.message());
    }

    #[test]
    fn credentials_go_only_to_the_server_they_name() {
        let for_host = |server: &str| AuthConfig { server_address: server.into(), ..Default::default() };
        assert!(applies_to(&for_host(""), "ghcr.io"));
        assert!(applies_to(&for_host("ghcr.io"), "ghcr.io"));
        assert!(applies_to(&for_host("https://index.docker.io/v1/"), "docker.io"));
        assert!(!applies_to(&for_host("quay.io"), "ghcr.io"));
    }
}
