//! The CRI suite: a tonic client against a real toted on a private socket,
//! images served by a real registry (Debian's docker-registry) through
//! toted's mirror configuration, as the kubelet and critest meet them.
//!
//! Run as root, after `cargo build --workspace` (toted and tote-shim are
//! started from the target directory).

mod pods;
#[path = "../../tests/support/registry.rs"]
mod registry;
mod streaming;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use registry::{Compression, Entry, ImageBuilder, Layer, Registry, TestImage};
use support::{Toted, mirrors};
use tonic::Code;
use tote_cri::api::*;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.to_string(), ..Default::default() })
}

/// A one-layer image whose config names `user`; `marker` makes its
/// digests its own.
fn image(user: &str, marker: &str) -> TestImage {
    ImageBuilder::new()
        .layer(Layer::new(Compression::Gzip, [Entry::dir("etc"), Entry::file("etc/marker", format!("{marker}\n"))]))
        .user(user)
        .cmd(["/pause"])
        .build()
}

async fn status_of(toted: &Toted, reference: &str, verbose: bool) -> ImageStatusResponse {
    let request = ImageStatusRequest { image: spec(reference), verbose };
    toted.images().await.image_status(request).await.unwrap().into_inner()
}

async fn pull(toted: &Toted, reference: &str) -> Result<String, tonic::Status> {
    let request = PullImageRequest { image: spec(reference), ..Default::default() };
    toted.images().await.pull_image(request).await.map(|r| r.into_inner().image_ref)
}

async fn list(toted: &Toted, filter: Option<&str>) -> Vec<Image> {
    let filter = filter.map(|f| ImageFilter { image: spec(f) });
    toted.images().await.list_images(ListImagesRequest { filter }).await.unwrap().into_inner().images
}

async fn remove(toted: &Toted, reference: &str) -> Result<(), tonic::Status> {
    toted.images().await.remove_image(RemoveImageRequest { image: spec(reference) }).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn version_runtime_config_and_status_follow_the_cni_plugins() {
    let plugins = std::path::PathBuf::from(format!("/tmp/tote-tests/cri-plugins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&plugins);
    std::fs::create_dir_all(&plugins).unwrap();
    // The support config's last table is [network].
    let toted = Toted::start(&format!("plugin_dirs = [\"{}\"]\n", plugins.display()));
    let mut runtime = toted.runtime().await;

    let version = runtime.version(VersionRequest::default()).await.unwrap().into_inner();
    assert_eq!((version.runtime_name.as_str(), version.runtime_api_version.as_str()), ("tote", "v1"));
    let config = runtime.runtime_config(RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(config.linux.unwrap().cgroup_driver(), CgroupDriver::Cgroupfs);

    let status = runtime.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    let conditions = status.status.unwrap().conditions;
    assert!(conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status), "{conditions:?}");
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").expect("a NetworkReady condition");
    assert!(!network.status, "no plugins in {}: {network:?}", plugins.display());
    assert_eq!(network.reason, "NetworkPluginNotReady");
    for needed in ["bridge", "host-local", "portmap", &plugins.display().to_string()] {
        assert!(network.message.contains(needed), "{needed} not named: {}", network.message);
    }
    assert!(status.info.is_empty(), "info only when verbose: {:?}", status.info);
    assert_eq!(status.runtime_handlers.len(), 1);
    assert_eq!(status.runtime_handlers[0].name, "", "the default handler");

    // Readiness follows the plugin dirs, without a restart.
    for plugin in ["bridge", "host-local", "portmap"] {
        let path = plugins.join(plugin);
        std::fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let status = runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let conditions = status.status.unwrap().conditions;
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(network.status && network.reason.is_empty(), "{network:?}");
    let info: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(info["cgroupDriver"], "cgroupfs");
    assert_eq!(info["cni"]["pluginDirs"][0], plugins.display().to_string());
    assert_eq!(info["cni"]["podNetwork"], "auto");
    assert_eq!(info["cni"]["podNetworkInUse"]["file"], serde_json::Value::Null, "Tote's bridge: the dir is empty");

    // "auto": a configuration dropped into the directory is the pods'
    // network from the next Status on, its plugins the ones needed.
    let file = toted.cni_conf_dir().join("50-pods.conf");
    std::fs::write(&file, r#"{"cniVersion":"0.4.0","name":"pods","type":"ptp","ipam":{"type":"host-local"}}"#).unwrap();
    let status = runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let conditions = status.status.unwrap().conditions;
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!network.status, "{network:?}");
    for needed in ["ptp", &file.display().to_string()] {
        assert!(network.message.contains(needed), "{needed} not named: {}", network.message);
    }
    let info: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(info["cni"]["podNetworkInUse"]["file"], file.display().to_string());
    std::fs::remove_dir_all(&plugins).unwrap();
}

/// critest's case: `registry.k8s.io/pause:3.9` and `k8s.gcr.io/pause:3.9`
/// both come from the mirror's `pause:3.9`: one image, one id, two names,
/// and removing it by id takes both.
#[tokio::test(flavor = "multi_thread")]
async fn one_image_pulled_under_two_names_through_mirrors_has_one_id() {
    let reg = Registry::start();
    let pause = image("65535", "pause");
    let manifest = pause.push(&reg, "pause", "3.9");
    let config = format!(
        "{}[cri]\npinned_images = [\"registry.k8s.io/pause:3.9\"]\n",
        mirrors(&["registry.k8s.io", "k8s.gcr.io"], &reg.url())
    );
    let toted = Toted::start(&config);

    let first = pull(&toted, "registry.k8s.io/pause:3.9").await.unwrap();
    assert_eq!(first, pause.config_digest, "image_ref is the image id");
    let images = list(&toted, None).await;
    assert_eq!(images.len(), 1, "{images:?}");
    let listed = &images[0];
    assert_eq!(listed.id, pause.config_digest);
    assert_eq!(listed.repo_tags, ["registry.k8s.io/pause:3.9"]);
    assert_eq!(listed.repo_digests, [format!("registry.k8s.io/pause@{manifest}")]);
    assert_eq!(listed.size, pause.layers.iter().map(|l| l.blob.len() as u64).sum::<u64>());
    assert_eq!(listed.uid, Some(Int64Value { value: 65535 }));
    assert_eq!(listed.username, "");
    assert_eq!(listed.spec.as_ref().unwrap().image, pause.config_digest);
    assert!(listed.pinned, "[cri] pinned_images names it");

    let second = pull(&toted, "k8s.gcr.io/pause:3.9").await.unwrap();
    assert_eq!(second, first, "the same image under another name");
    let images = list(&toted, None).await;
    assert_eq!(images.len(), 1, "one image, not two: {images:?}");
    assert_eq!(images[0].repo_tags, ["k8s.gcr.io/pause:3.9", "registry.k8s.io/pause:3.9"]);
    assert_eq!(
        images[0].repo_digests,
        [format!("k8s.gcr.io/pause@{manifest}"), format!("registry.k8s.io/pause@{manifest}")]
    );

    // Status by every name, the id and a pulled digest: the same image.
    for reference in [
        "k8s.gcr.io/pause:3.9".to_string(),
        pause.config_digest.clone(),
        pause.config_digest.trim_start_matches("sha256:").to_string(),
        format!("registry.k8s.io/pause@{manifest}"),
    ] {
        let status = status_of(&toted, &reference, false).await;
        let found = status.image.unwrap_or_else(|| panic!("{reference} not found"));
        assert_eq!(found.id, first, "{reference}");
        assert_eq!(found.repo_tags.len(), 2, "{reference}");
        assert!(status.info.is_empty(), "info only when verbose");
    }
    assert_eq!(list(&toted, Some("k8s.gcr.io/pause:3.9")).await.len(), 1);
    assert!(list(&toted, Some("k8s.gcr.io/pause:3.10")).await.is_empty());

    remove(&toted, &first).await.unwrap();
    assert!(list(&toted, None).await.is_empty(), "both names went with the id");
    let status = status_of(&toted, "registry.k8s.io/pause:3.9", true).await;
    assert!(status.image.is_none() && status.info.is_empty(), "a missing image is no image, not an error");
    // Removing what is gone succeeds, by id and by name.
    remove(&toted, &first).await.unwrap();
    remove(&toted, "k8s.gcr.io/pause:3.9").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_one_name_removes_every_name_and_the_content() {
    let reg = Registry::start();
    let app = image("nobody", "app");
    app.push(&reg, "team/app", "v1");
    app.push(&reg, "team/app", "stable");
    let toted = Toted::start(&mirrors(&["docker.io"], &reg.url()));
    let id = pull(&toted, "docker.io/team/app:v1").await.unwrap();
    pull(&toted, "team/app:stable").await.unwrap();
    let listed = list(&toted, None).await;
    assert_eq!(listed[0].repo_tags, ["docker.io/team/app:stable", "docker.io/team/app:v1"]);
    assert_eq!(listed[0].repo_digests.len(), 1, "one repository, one digest: {:?}", listed[0].repo_digests);
    assert_eq!((listed[0].uid, listed[0].username.as_str()), (None, "nobody"), "a user name is no uid");
    let blobs = toted.root.join("content/blobs/sha256").join(id.trim_start_matches("sha256:"));
    assert!(blobs.exists(), "the config blob is at {}", blobs.display());

    remove(&toted, "team/app:v1").await.unwrap();
    assert!(list(&toted, None).await.is_empty());
    assert!(!blobs.exists(), "the content of an image no name or container needs is deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_verbose_carries_the_image_config_and_chain_id() {
    let reg = Registry::start();
    let app = ImageBuilder::new()
        .layer(Layer::new(Compression::Gzip, [Entry::file("a", "a\n")]))
        .layer(Layer::new(Compression::Zstd, [Entry::file("b", "b\n")]))
        .env("GREETING", "hi")
        .user("1000:1000")
        .build();
    app.push(&reg, "library/app", "1");
    let toted = Toted::start(&mirrors(&["docker.io"], &reg.url()));
    pull(&toted, "app:1").await.unwrap();

    let status = status_of(&toted, "docker.io/library/app:1", true).await;
    let found = status.image.unwrap();
    assert_eq!(found.uid, Some(Int64Value { value: 1000 }), "the user before ':' is the uid");
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "1000:1000");
    let env = info["imageSpec"]["config"]["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "GREETING=hi"), "{env:?}");
    let diff_ids = app.config_json()["rootfs"]["diff_ids"].clone();
    assert_eq!(info["imageSpec"]["rootfs"]["diff_ids"], diff_ids);
    let chain_id = info["chainID"].as_str().unwrap();
    assert!(chain_id.starts_with("sha256:") && chain_id != diff_ids[1], "the chain id of two layers: {chain_id}");
    assert_eq!(info["manifest"], app.manifest_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_references_are_invalid_arguments_and_missing_images_not_found() {
    let reg = Registry::start();
    let toted = Toted::start(&mirrors(&["docker.io"], &reg.url()));
    for bad in ["UPPER/case:1", "app:bad tag", "app@sha256:123"] {
        let err = pull(&toted, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains(bad), "{bad} not named: {}", err.message());
        let request = ImageStatusRequest { image: spec(bad), verbose: false };
        let err = toted.images().await.image_status(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "ImageStatus {bad}: {err:?}");
    }
    let err = pull(&toted, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("names no image"), "{}", err.message());

    // Neither the mirror nor (offline) the registry has it.
    let missing = format!("{}/nothing/here:1", reg.addr());
    let err = pull(&toted, &missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("nothing/here"), "{}", err.message());
    remove(&toted, &missing).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_uses_the_kubelets_credentials() {
    let reg = Registry::start_with_auth("tote", "s3cret");
    image("0", "private").push(&reg, "private/app", "v1");
    let toted = Toted::start("");
    let name = reg.reference("private/app", "v1");
    let with = |auth: AuthConfig| PullImageRequest { image: spec(&name), auth: Some(auth), ..Default::default() };

    let err = pull(&toted, &name).await.unwrap_err();
    assert!(err.message().contains("refused access"), "anonymous: {err:?}");
    let wrong = AuthConfig { username: "tote".into(), password: "nope".into(), ..Default::default() };
    assert!(toted.images().await.pull_image(with(wrong)).await.is_err());
    let elsewhere = AuthConfig {
        username: "tote".into(),
        password: "s3cret".into(),
        server_address: "other.example".into(),
        ..Default::default()
    };
    assert!(toted.images().await.pull_image(with(elsewhere)).await.is_err(), "credentials for another server");

    let basic = AuthConfig { username: "tote".into(), password: "s3cret".into(), ..Default::default() };
    toted.images().await.pull_image(with(basic)).await.unwrap();
    remove(&toted, &name).await.unwrap();
    // base64("tote:s3cret"), for this registry by URL.
    let encoded = AuthConfig { auth: "dG90ZTpzM2NyZXQ=".into(), server_address: reg.url(), ..Default::default() };
    toted.images().await.pull_image(with(encoded)).await.unwrap();
    assert_eq!(list(&toted, None).await[0].repo_tags, std::slice::from_ref(&name));
}

#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_reports_the_snapshots_filesystem() {
    let reg = Registry::start();
    let big = ImageBuilder::new()
        .layer(Layer::new(Compression::Gzip, (0..20).map(|i| Entry::file(&format!("f{i}"), vec![b'x'; 64 * 1024]))))
        .build();
    big.push(&reg, "library/big", "1");
    let toted = Toted::start(&mirrors(&["docker.io"], &reg.url()));
    let mut images = toted.images().await;
    let empty = images.image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();
    pull(&toted, "big:1").await.unwrap();
    let full = images.image_fs_info(ImageFsInfoRequest {}).await.unwrap().into_inner();

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    for (before, after) in [
        (&empty.image_filesystems, &full.image_filesystems),
        (&empty.container_filesystems, &full.container_filesystems),
    ] {
        assert_eq!((before.len(), after.len()), (1, 1));
        let usage = &after[0];
        let mountpoint = &usage.fs_id.as_ref().unwrap().mountpoint;
        assert_eq!(mountpoint, &toted.root.join("snapshots").display().to_string());
        let taken = i64::try_from(now.as_nanos()).unwrap() - usage.timestamp;
        let minute = i64::try_from(Duration::from_secs(60).as_nanos()).unwrap();
        assert!((0..minute).contains(&taken), "a timestamp in ns: {taken}");
    }
    let used = |fs: &[FilesystemUsage]| (fs[0].used_bytes.unwrap().value, fs[0].inodes_used.unwrap().value);
    let (bytes, inodes) = used(&full.image_filesystems);
    let (bytes_before, inodes_before) = used(&empty.image_filesystems);
    assert!(bytes >= bytes_before + 20 * 64 * 1024, "20 files of 64 KiB unpacked: {bytes_before} -> {bytes}");
    assert!(inodes >= inodes_before + 20, "20 files: {inodes_before} -> {inodes}");
    assert_eq!(used(&full.container_filesystems), (0, 0), "no container has written anything");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_images_sends_each_image_once() {
    let reg = Registry::start();
    for n in 0..3 {
        image("0", &format!("s{n}")).push(&reg, "library/s", &n.to_string());
    }
    let toted = Toted::start(&mirrors(&["docker.io"], &reg.url()));
    for n in 0..3 {
        pull(&toted, &format!("s:{n}")).await.unwrap();
    }
    let mut stream = toted.images().await.stream_images(StreamImagesRequest::default()).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        assert!(!message.images.is_empty(), "each message carries at least one image");
        ids.extend(message.images.into_iter().map(|i| i.id));
    }
    let mut listed: Vec<String> = list(&toted, None).await.into_iter().map(|i| i.id).collect();
    ids.sort();
    listed.sort();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids, listed);
}
