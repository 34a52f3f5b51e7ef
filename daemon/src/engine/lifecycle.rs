//! create, start, stop, kill, pause, remove, rename, update and wait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tote_shim::monitor::protocol::Request;

use super::{Engine, EngineError, Entry, internal, is_mountpoint, mounts_under, new_id, random_name, write_private};
use crate::containers::record::{
    ContainerRecord, IdRange, MountPoint, PodUserns, Propagation, SandboxRecord, Settings, State, Status, valid_name,
};
use crate::containers::spec::{self, Inputs};
use crate::delegation::Delegation;
use crate::metadata::Table;
use crate::monitor::{self, Launch};
use crate::network::{self, NetworkMode, PortMapping};
use crate::privilege::Privilege;
use crate::snapshots;

/// A sandbox whose namespace exists and whose plugins have yet to run.
pub(crate) struct PendingNetwork {
    /// The hosts file to give the sandbox's address.
    pub hosts: PathBuf,
    pub sandbox: SandboxRecord,
    pub netns: PathBuf,
}

/// A `-v`: a bind mount, a named volume or (no source) an anonymous one.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    pub propagation: Propagation,
    pub recursive_read_only: bool,
    /// The id maps an idmapped mount is asked with (the CRI's Mount
    /// uid/gid mappings): they must be the pod's user namespace's.
    pub id_maps: Option<(IdRange, IdRange)>,
}

#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub image: String,
    pub settings: Settings,
    pub mounts: Vec<MountRequest>,
    pub network: String,
    pub publish: Vec<String>,
    /// The pod to join (an id); empty: a sandbox of its own, as `tote run`.
    pub pod: String,
}

/// Undoes a half-made container.
struct CreateRollback<'a> {
    engine: &'a Engine,
    id: String,
    mounted: bool,
    volumes: Vec<String>,
    armed: bool,
}

impl Drop for CreateRollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let rootfs = self.engine.paths.rootfs(&self.id);
        if self.mounted {
            let _ = snapshots::unmount(&rootfs);
        }
        self.engine.release_userns_view(&self.id);
        let _ = self.engine.images.snapshots().remove_writable(&self.id);
        let _ = std::fs::remove_dir_all(self.engine.paths.container_dir(&self.id));
        for volume in &self.volumes {
            let _ = self.engine.volumes.remove(volume, &[]);
        }
    }
}

impl Engine {
    pub async fn create(self: &Arc<Self>, request: CreateRequest) -> Result<(String, Vec<String>), EngineError> {
        let engine = self.clone();
        let began = Instant::now();
        let created = tokio::task::spawn_blocking(move || engine.create_blocking(request))
            .await
            .map_err(|e| EngineError::Internal(format!("create: {e}")))?;
        if let Ok((id, _)) = &created {
            tracing::debug!(container = %id, ms = millis(began), "created");
        }
        created
    }

    fn create_blocking(&self, request: CreateRequest) -> Result<(String, Vec<String>), EngineError> {
        let mut warnings = Vec::new();
        let mut settings = request.settings;
        self.check_limits(&settings)?;
        let image = match self.images.resolve(&request.image) {
            Ok(image) => image,
            Err(crate::images::ImageError::NotFound(name)) => return Err(EngineError::MissingImage(name)),
            Err(e) => return Err(e.into()),
        };
        let image_config = self.images.config(&image)?.config().clone();
        let pod = if request.pod.is_empty() {
            None
        } else {
            let pod = self.pod(&request.pod)?;
            if !pod.pod.as_ref().is_some_and(|p| p.ready) {
                return Err(EngineError::Conflict(format!("pod sandbox {} is not ready", pod.id)));
            }
            Some(pod)
        };
        let pod_userns = pod.as_ref().and_then(|p| p.pod.as_ref()).and_then(|c| c.userns.as_ref());
        for mount in &request.mounts {
            let Some((uids, gids)) = mount.id_maps else { continue };
            match pod_userns {
                Some(userns) if userns.uids == uids && userns.gids == gids => {}
                Some(_) => {
                    return Err(EngineError::Invalid(format!(
                        "mount at {:?}: its id maps are not those of the pod's user namespace",
                        mount.destination
                    )));
                }
                None => {
                    return Err(EngineError::Invalid(format!(
                        "mount at {:?}: an idmapped mount needs a pod with a user namespace of its own",
                        mount.destination
                    )));
                }
            }
        }
        let mode: NetworkMode = match &pod {
            Some(pod) => pod.network,
            None if request.network.is_empty() => NetworkMode::Bridge,
            None => request.network.parse()?,
        };
        let mut ports = Vec::new();
        for publish in &request.publish {
            ports.extend(network::parse_publish(publish)?);
        }
        if !ports.is_empty() && pod.is_some() {
            warnings.push("a pod's container publishes no ports: the pod does".into());
            ports.clear();
        }
        if !ports.is_empty() && mode != NetworkMode::Bridge {
            warnings.push(format!("published ports are discarded when using {mode} network mode"));
            ports.clear();
        }
        // A rootless toted's default network is a user-mode helper of the
        // container's own, which binds the published ports as the user:
        // what it cannot do is said now, not at the start.
        if self.config.privilege.is_rootless() && pod.is_none() && mode == NetworkMode::Bridge {
            if self.usernet.is_none() {
                let helper = self.config.network.rootless_driver;
                return Err(network::NetworkError::HelperMissing {
                    helper: helper.program(),
                    package: helper.package(),
                }
                .into());
            }
            network::usernet::check_unprivileged_ports(&ports, network::usernet::unprivileged_port_start())?;
        }
        // Devices are bound from the host, not made: one the user cannot
        // open is said now, naming the flag, not at the start.
        if let crate::privilege::Privilege::Rootless(rootless) = &self.config.privilege {
            warnings.extend(spec::check_rootless_devices(&settings.devices, rootless)?);
        }
        spec::check_security_opts(&settings.security_opt)?;
        if !settings.stop_signal.is_empty() {
            tote_shim::container::parse_signal(&settings.stop_signal)
                .map_err(|_| EngineError::Invalid(format!("invalid stop signal {:?}", settings.stop_signal)))?;
        }
        spec::capabilities(&settings)?;
        let command = spec::command(&settings, image_config.as_ref())?;
        if settings.log_max_size == 0 || settings.log_max_files == 0 {
            let (size, files) = self.config.log_rotation();
            settings.log_max_size = if settings.log_max_size == 0 { size } else { settings.log_max_size };
            settings.log_max_files = if settings.log_max_files == 0 { files } else { settings.log_max_files };
        }
        if !settings.hostname.is_empty() && mode == NetworkMode::Host {
            warnings.push("the hostname is the host's with host networking".into());
        }

        if !settings.log_path.is_empty() {
            check_log_path(Path::new(&settings.log_path))?;
        }
        let id = self.unique_id()?;
        let name = if request.name.is_empty() { random_name(&id) } else { request.name.clone() };
        self.check_name(&name, None)?;
        let mut rollback =
            CreateRollback { engine: self, id: id.clone(), mounted: false, volumes: Vec::new(), armed: true };
        let mounts = self.make_mounts(&request.mounts, image_config.as_ref(), &mut rollback)?;

        let container_dir = self.paths.container_dir(&id);
        let rootfs = self.paths.rootfs(&id);
        std::fs::create_dir_all(&rootfs).map_err(internal(&rootfs.display().to_string()))?;
        let writable = self.images.snapshots().prepare_writable(&id, image.top_chain_id())?;
        let userns = pod.as_ref().and_then(|p| p.pod.as_ref()).and_then(|c| c.userns.clone());
        mount_root(&writable, &rootfs, userns.as_ref())?;
        rollback.mounted = true;
        crate::crashpoint::reached("create:mounted");

        let user = if settings.user.is_empty() {
            image_config.as_ref().and_then(|c| c.user().clone()).unwrap_or_default()
        } else {
            settings.user.clone()
        };
        let resolved = spec::resolve_user(&rootfs, &user)?;
        // A pod's own user namespace has maps of its own.
        if let (crate::privilege::Privilege::Rootless(rootless), None) = (&self.config.privilege, &userns) {
            let asked =
                if settings.user.is_empty() { format!("the image's USER {user:?}") } else { format!("--user {user}") };
            let groups = spec::groups(&settings, &resolved);
            spec::check_rootless_ids(&asked, resolved.uid, resolved.gid, &groups, rootless)?;
        }
        if !settings.working_dir.is_empty() {
            // Owned by the user as the host sees it in the pod's user namespace.
            let host_id = |range: Option<IdRange>, id: u32| range.map_or(Some(id), |r| r.to_host(id));
            let owner = spec::ResolvedUser {
                uid: host_id(userns.as_ref().map(|u| u.uids), resolved.uid).unwrap_or(resolved.uid),
                gid: host_id(userns.as_ref().map(|u| u.gids), resolved.gid).unwrap_or(resolved.gid),
                ..resolved.clone()
            };
            self.make_working_dir(&rootfs, &settings.working_dir, &owner)?;
        }
        let hostname = if let Some(pod) = &pod {
            pod.hostname.clone()
        } else if settings.hostname.is_empty() {
            if mode == NetworkMode::Host {
                nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| id[..12].into())
            } else {
                id[..12].to_string()
            }
        } else {
            settings.hostname.clone()
        };
        let (sandbox, etc) = match &pod {
            Some(pod) => (pod.clone(), super::pods::pod_etc(&self.paths.sandbox_dir(&pod.id))),
            None => {
                let sandbox = SandboxRecord {
                    id: id.clone(),
                    name: name.clone(),
                    created: tote_shim::state::now_rfc3339(),
                    hostname: hostname.clone(),
                    network: mode,
                    netns: mode.has_own_netns().then(|| self.paths.netns(&id)),
                    ports,
                    attachment: None,
                    containers: vec![id.clone()],
                    pod: None,
                };
                (sandbox, network::write_etc_files(&container_dir, &hostname, mode, None)?)
            }
        };
        let record = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            created: tote_shim::state::now_rfc3339(),
            image: request.image.clone(),
            image_name: image.name.clone(),
            image_id: image.config.to_string(),
            path: command[0].clone(),
            args: command[1..].to_vec(),
            settings,
            mounts,
            sandbox: sandbox.id.clone(),
            state: State { status: Some(Status::Created), ..State::default() },
        };
        // A pod's user namespace reaches its root and files only where
        // its root may search: not under toted's private root.
        let (rootfs, etc, spec_record) = match &userns {
            Some(userns) => {
                let view = self.userns_view(&id, &rootfs, Some(&etc), &record.mounts, userns)?;
                (view.rootfs, view.etc, ContainerRecord { mounts: view.mounts, ..record.clone() })
            }
            None => (rootfs, etc, record.clone()),
        };
        let inputs = Inputs {
            image: image_config.as_ref(),
            rootfs: &rootfs,
            etc: &etc,
            cgroup_parent: sandbox
                .pod
                .as_ref()
                .map(|p| p.cgroup_parent.as_str())
                .filter(|p| !p.is_empty())
                .unwrap_or(&self.config.cgroup_parent),
            user: resolved,
            nofile: self.nofile,
            rootless: self.config.privilege.is_rootless(),
        };
        let oci = spec::build(&spec_record, &sandbox, &inputs)?;
        let config_path = self.paths.bundle(&id).join("config.json");
        let text = serde_json::to_vec_pretty(&oci).map_err(|e| EngineError::Internal(format!("spec: {e}")))?;
        write_private(&config_path, &text)?;

        if sandbox.is_pod() {
            self.pod_member(&sandbox.id, &id, true)?;
        } else {
            self.save_sandbox(&sandbox)?;
        }
        self.meta.put_record(Table::Containers, &id, &record)?;
        rollback.armed = false;
        self.containers.lock().expect("containers lock").insert(id.clone(), Entry::new(record));
        self.events.publish("container", "create", &id, &[("name", &name), ("image", &request.image)]);
        Ok((id, warnings))
    }

    pub(crate) fn unique_id(&self) -> Result<String, EngineError> {
        loop {
            let id = new_id()?;
            // Monitor and netns paths use the first 12 digits.
            let taken = self.containers.lock().expect("containers lock").keys().any(|k| k[..12] == id[..12])
                || self.sandboxes.lock().expect("sandboxes lock").keys().any(|k| k[..12] == id[..12]);
            if !taken {
                return Ok(id);
            }
        }
    }

    pub(crate) fn check_name(&self, name: &str, except: Option<&str>) -> Result<(), EngineError> {
        if !valid_name(name) {
            return Err(EngineError::Invalid(format!(
                "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        for entry in self.entries() {
            let record = entry.snapshot();
            if record.name == name && Some(record.id.as_str()) != except {
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    record.id
                )));
            }
        }
        Ok(())
    }

    fn make_mounts(
        &self,
        requests: &[MountRequest],
        image: Option<&oci_spec::image::Config>,
        rollback: &mut CreateRollback<'_>,
    ) -> Result<Vec<MountPoint>, EngineError> {
        let mut mounts = Vec::new();
        for request in requests {
            let destination = clean_destination(&request.destination)?;
            if mounts.iter().any(|m: &MountPoint| m.destination == destination) {
                return Err(EngineError::Invalid(format!("duplicate mount point: {destination}")));
            }
            let mount = match request.kind.as_str() {
                "bind" => {
                    let source = PathBuf::from(&request.source);
                    if !source.is_absolute() {
                        return Err(EngineError::Invalid(format!(
                            "invalid mount config for type \"bind\": the source path {:?} is not absolute",
                            request.source
                        )));
                    }
                    if !source.exists() {
                        return Err(EngineError::Invalid(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            request.source
                        )));
                    }
                    MountPoint {
                        kind: "bind".into(),
                        name: None,
                        source,
                        destination,
                        read_only: request.read_only,
                        anonymous: false,
                        propagation: request.propagation,
                        recursive_read_only: request.recursive_read_only,
                        idmap: request.id_maps.is_some(),
                    }
                }
                "volume" => {
                    let (name, anonymous) =
                        if request.source.is_empty() { (new_id()?, true) } else { (request.source.clone(), false) };
                    let existed = self.volumes.get(&name).is_ok();
                    self.volumes.create(&name, BTreeMap::new(), anonymous)?;
                    if !existed {
                        rollback.volumes.push(name.clone());
                    }
                    MountPoint {
                        kind: "volume".into(),
                        source: self.volumes.mountpoint(&name),
                        name: Some(name),
                        destination,
                        read_only: request.read_only,
                        anonymous,
                        propagation: request.propagation,
                        recursive_read_only: request.recursive_read_only,
                        idmap: request.id_maps.is_some(),
                    }
                }
                other => return Err(EngineError::Invalid(format!("unknown mount type {other:?}: use bind or volume"))),
            };
            mounts.push(mount);
        }
        // The image's VOLUMEs get anonymous volumes, as docker gives them.
        let image_volumes = image.and_then(|c| c.volumes().clone()).unwrap_or_default();
        for destination in image_volumes {
            let destination = clean_destination(&destination)?;
            if mounts.iter().any(|m| m.destination == destination) {
                continue;
            }
            let name = new_id()?;
            self.volumes.create(&name, BTreeMap::new(), true)?;
            rollback.volumes.push(name.clone());
            mounts.push(MountPoint {
                kind: "volume".into(),
                source: self.volumes.mountpoint(&name),
                name: Some(name),
                destination,
                read_only: false,
                anonymous: true,
                propagation: Propagation::Private,
                recursive_read_only: false,
                idmap: false,
            });
        }
        Ok(mounts)
    }

    /// `-w` names a directory that may not exist yet: docker creates it.
    /// Where a container in a pod's user namespace finds its root and its
    /// hosts, hostname and resolv.conf: `<state>/userns/<id>`, owned by the
    /// namespace's root and closed to everyone else, on a path others may
    /// only search (the state dir and `userns/` are 0711). tote-shim mounts
    /// the root and binds the files after it joined the namespace, as runc
    /// does, so toted's root (0710) and its containers and sandboxes (0700)
    /// are out of its reach. The root is a bind of the overlay mount at the
    /// container's usual place; the files are copies (a pod's do not
    /// change). The container's bind mounts and volumes are bound there
    /// too, as `mounts/<n>`, through the pod's user namespace where they
    /// ask to be idmapped; the spec then takes them from there. `etc`
    /// None: the mounts again, not the files (after a reboot).
    fn userns_view(
        &self,
        id: &str,
        rootfs: &Path,
        etc: Option<&network::EtcFiles>,
        mounts: &[MountPoint],
        userns: &PodUserns,
    ) -> Result<UsernsView, EngineError> {
        use std::os::unix::fs::PermissionsExt;
        let parent = self.paths.state.join("userns");
        let dir = parent.join(id);
        if let Some(closed) = self.paths.state.ancestors().skip(1).find(|a| {
            std::fs::metadata(a).is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o001 == 0)
        }) {
            return Err(EngineError::Conflict(format!(
                "{} is not searchable by other users, so the root of a pod's user namespace cannot reach its containers under the state dir {}",
                closed.display(),
                self.paths.state.display()
            )));
        }
        let fail = |path: &Path| {
            let path = path.display().to_string();
            move |e: std::io::Error| EngineError::Internal(format!("{path}: {e}"))
        };
        std::fs::create_dir_all(&dir).map_err(fail(&dir))?;
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711)).map_err(fail(&parent))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(fail(&dir))?;
        let (uid, gid) = (userns.uids.to_host(0), userns.gids.to_host(0));
        std::os::unix::fs::chown(&dir, uid, gid).map_err(fail(&dir))?;
        let view = dir.join("rootfs");
        std::fs::create_dir_all(&view).map_err(fail(&view))?;
        if !is_mountpoint(&view) {
            rbind(rootfs, &view)?;
        }
        let mut seen = Vec::with_capacity(mounts.len());
        for (n, mount) in mounts.iter().enumerate() {
            let target = dir.join("mounts").join(n.to_string());
            if mounts_under(&target).is_empty() {
                // A mount point of the source's kind: a file on a file.
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(fail(parent))?;
                }
                if mount.source.is_dir() {
                    std::fs::create_dir_all(&target).map_err(fail(&target))?;
                } else {
                    std::fs::write(&target, b"").map_err(fail(&target))?;
                }
                if mount.idmap {
                    snapshots::bind_idmapped(&mount.source, &target, &userns.pin)?;
                } else {
                    rbind(&mount.source, &target)?;
                }
            }
            seen.push(MountPoint { source: target, ..mount.clone() });
        }
        let files = network::EtcFiles {
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            hostname: dir.join("hostname"),
        };
        if let Some(etc) = etc {
            for (from, to) in
                [(&etc.hosts, &files.hosts), (&etc.resolv_conf, &files.resolv_conf), (&etc.hostname, &files.hostname)]
            {
                std::fs::copy(from, to).map_err(fail(to))?;
                std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644)).map_err(fail(to))?;
            }
        }
        Ok(UsernsView { rootfs: view, etc: files, mounts: seen })
    }

    /// Undoes [`Engine::userns_view`] (nothing there is fine). The
    /// directory goes only once nothing is mounted under it: deleting
    /// through a bind mount would delete the host's files.
    pub(crate) fn release_userns_view(&self, id: &str) {
        let dir = self.paths.state.join("userns").join(id);
        // Every removal comes here: most containers have no view, and
        // reading the mount table for them would be work for nothing.
        if !dir.exists() {
            return;
        }
        for target in mounts_under(&dir) {
            if let Err(errno) = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(target = %target.display(), "unmount: {errno}");
            }
        }
        let left = mounts_under(&dir);
        if !left.is_empty() {
            tracing::warn!(dir = %dir.display(), ?left, "still mounted: the directory stays");
            return;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn make_working_dir(&self, rootfs: &Path, dir: &str, user: &spec::ResolvedUser) -> Result<(), EngineError> {
        use std::os::fd::AsFd;
        if !dir.starts_with('/') {
            return Err(EngineError::Invalid(format!("the working directory {dir:?} is not an absolute path")));
        }
        let root = tote_shim::syscall::beneath::open_root(rootfs)
            .map_err(|e| EngineError::Internal(format!("open {}: {e}", rootfs.display())))?;
        let made = tote_shim::syscall::beneath::ensure_dir(root.as_fd(), Path::new(dir.trim_start_matches('/')))
            .map_err(|e| EngineError::Invalid(format!("cannot create the working directory {dir}: {e}")))?;
        let _ = nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(&made),
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        );
        Ok(())
    }

    pub async fn start(self: &Arc<Self>, reference: &str) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let _op = entry.op.lock().await;
        self.start_locked(&entry).await
    }

    pub(crate) async fn start_locked(self: &Arc<Self>, entry: &Arc<Entry>) -> Result<(), EngineError> {
        let began = Instant::now();
        let record = entry.snapshot();
        match record.state.status() {
            Status::Running | Status::Paused => return Ok(()),
            Status::Dead => return Err(EngineError::Conflict(format!("container {} is being removed", record.id))),
            _ if entry.is_removing() => {
                return Err(EngineError::Conflict(format!("container {} is being removed", record.id)));
            }
            _ => {}
        }
        let started = match self.launch_monitor(&record).await {
            Ok(pids) => self.run_started(entry, &record, pids).await,
            Err(error) => Err(error),
        };
        let Err(error) = started else {
            tracing::debug!(container = %record.id, ms = millis(began), "started");
            return Ok(());
        };
        // Whatever failed, the container is not running (its monitor was
        // told to kill it): its network goes (a pod keeps its own), the
        // error is recorded.
        if self.owns_network(&record) {
            self.teardown_network(&record.sandbox).await;
        }
        let code = match &error {
            EngineError::Exec { exit_code, .. } => *exit_code,
            _ => 128,
        };
        let message = error.to_string();
        self.update(entry, |r| {
            r.state.error = message;
            r.state.exit_code = code;
        })?;
        // `run --rm` of a container that cannot start leaves nothing.
        if record.settings.auto_remove
            && let Err(e) = self.remove_locked(entry, true, true).await
        {
            tracing::warn!(container = %record.id, "remove after a failed start: {e}");
        }
        Err(error)
    }

    /// The root mounted, the network set up and the monitor holding the
    /// created container: its pid and the monitor's.
    async fn launch_monitor(self: &Arc<Self>, record: &ContainerRecord) -> Result<(i32, i32), EngineError> {
        let id = record.id.clone();
        let rootfs = self.paths.rootfs(&id);
        if !is_mountpoint(&rootfs) {
            // (After a reboot, say.) Never on an empty root: an image whose
            // layers cannot be found is an error.
            let image_top = self.images.top_layer_of(&record.image_id).map_err(|e| {
                EngineError::Internal(format!("the layers of image {} of the container: {e}", record.image_id))
            })?;
            let writable = self.images.snapshots().prepare_writable(&id, image_top.as_ref())?;
            let userns = self.sandbox(&record.sandbox).and_then(|s| s.pod).and_then(|p| p.userns);
            mount_root(&writable, &rootfs, userns.as_ref())?;
            if let Some(userns) = &userns {
                self.userns_view(&id, &rootfs, None, &record.mounts, userns)?;
            }
        }
        // A monitor still serving here belongs to a run no record tells of
        // (toted died between its launch and the start): it goes first.
        if self.paths.monitor_dir(&id).join(tote_shim::monitor::SOCKET).exists() {
            self.end_unrecorded_run(&id).await;
        }
        // Held until the network is set up: a tear-down of the previous
        // run finishes first.
        let network_lock = self.network_lock(&record.sandbox);
        let _network = network_lock.lock().await;
        // The container only needs its network once its program runs: the
        // plugins attach the namespace while the monitor creates the
        // container in it, and both are done before `start`.
        let network = tokio::task::block_in_place(|| self.begin_network(record))?;
        let engine = self.clone();
        let container = id.clone();
        let attach = async move {
            let began = Instant::now();
            let Some(pending) = network else { return Ok(()) };
            let attached = tokio::task::spawn_blocking(move || engine.attach_network(pending))
                .await
                .map_err(|e| EngineError::Internal(format!("network setup: {e}")))?;
            tracing::debug!(%container, ms = millis(began), "network attached");
            attached
        };
        let monitor_dir = self.paths.monitor_dir(&id);
        let _ = std::fs::remove_dir_all(&monitor_dir);
        let runtime_root = self.paths.runtime_root();
        let bundle = self.paths.bundle(&id);
        let log = if record.settings.log_path.is_empty() {
            self.paths.log(&id)
        } else {
            PathBuf::from(&record.settings.log_path)
        };
        let how = Launch {
            shim: &self.shim,
            runtime_root: &runtime_root,
            id: &id,
            bundle: &bundle,
            dir: &monitor_dir,
            log: &log,
            log_max_size: record.settings.log_max_size,
            log_max_files: record.settings.log_max_files,
            stdin: record.settings.open_stdin,
        };
        let launch = async {
            let began = Instant::now();
            let launched = monitor::launch(&how).await;
            tracing::debug!(container = %how.id, ms = millis(began), "monitor ready");
            launched
        };
        let (attached, launched) = tokio::join!(attach, launch);
        crate::crashpoint::reached("start:monitor-ready");
        match (attached, launched) {
            (Ok(()), Ok(pids)) => Ok(pids),
            (Err(error), Ok(_)) => {
                // The created container never ran: its monitor removes it.
                let _ = self.monitor_client(&id).call(&Request::Kill { signal: 9, all: true }).await;
                Err(error)
            }
            // A failed network is the cause when both failed.
            (Err(error), Err(_)) => Err(error),
            (Ok(()), Err(error)) => Err(error.into()),
        }
    }

    /// The sandbox's network namespace exists (cheap, so the container can
    /// be created in it); in bridge mode the plugins still have to attach
    /// it, in `attach_network`. The container is not running, so a
    /// namespace or an attachment found here is left from a run whose end
    /// toted did not see (it was killed): it is released, and the network
    /// made afresh, so a start works from any state.
    fn begin_network(&self, record: &ContainerRecord) -> Result<Option<PendingNetwork>, EngineError> {
        let Some(sandbox) = self.sandbox(&record.sandbox) else {
            return Err(EngineError::Internal(format!("container {} has no sandbox record", record.id)));
        };
        if let Some(pod) = &sandbox.pod {
            // The pod's network is the pod's: it is up while the pod is ready.
            if !pod.ready {
                return Err(EngineError::Conflict(format!("pod sandbox {} is not ready", sandbox.id)));
            }
            return Ok(None);
        }
        let Some(netns) = sandbox.netns.clone() else { return Ok(None) };
        if network::netns::exists(&netns) || sandbox.attachment.is_some() || self.cni.is_attached(&sandbox.id) {
            tracing::info!(sandbox = %sandbox.id, "releasing the network of an earlier run");
            self.release_network(&sandbox.id);
        }
        network::netns::create(&netns)?;
        if sandbox.network != NetworkMode::Bridge {
            return Ok(None);
        }
        let sandbox = self.sandbox(&record.sandbox).unwrap_or(sandbox);
        Ok(Some(PendingNetwork { hosts: self.paths.container_dir(&record.id).join("hosts"), sandbox, netns }))
    }

    /// An address on the bridge and the published ports, then /etc/hosts
    /// with the address (in place: the container has it bind-mounted).
    pub(crate) fn attach_network(&self, pending: PendingNetwork) -> Result<(), EngineError> {
        if self.uses_usernet(&pending.sandbox) {
            return self.attach_usernet(pending);
        }
        let PendingNetwork { hosts, mut sandbox, netns } = pending;
        let mut ports: Vec<PortMapping> = sandbox.ports.clone();
        // The host ports first: one taken is refused before anything is set up.
        let reservation = network::reserve_ports(&mut ports)?;
        // On failure the caller's teardown removes the namespace, once the
        // monitor no longer uses it.
        let attachment = match &sandbox.pod {
            // A pod: the network `[cri] pod_network` picks, with the
            // kubelet's CNI_ARGS naming the pod.
            Some(pod) => {
                let network = self.pod_network()?;
                let meta = &pod.metadata;
                let args = network::cni::conf::pod_args(&meta.namespace, &meta.name, &sandbox.id, &meta.uid)?;
                let used = network.as_ref().map_or_else(|| "tote".to_string(), |n| n.file.display().to_string());
                tracing::debug!(pod = %sandbox.id, network = %used, "attaching the pod");
                let options = network::cni::AttachOptions { network: network.as_ref(), args: &args, if_name: None };
                self.cni.attach(&sandbox.id, &netns, &ports, options)?
            }
            None => self.cni.setup(&sandbox.id, &netns, &ports)?,
        };
        crate::crashpoint::reached("start:network-attached");
        self.ports.lock().expect("ports lock").insert(sandbox.id.clone(), reservation);
        network::etc::rewrite_hosts(&hosts, &sandbox.hostname, Some(attachment.ip))?;
        sandbox.ports = ports;
        sandbox.attachment = Some(attachment);
        self.save_sandbox(&sandbox)
    }

    /// A rootless toted's default network: a user-mode helper of the
    /// sandbox's own connects its namespace and publishes its ports (see
    /// `network::usernet`); on failure the caller's teardown stops it.
    fn attach_usernet(&self, pending: PendingNetwork) -> Result<(), EngineError> {
        let PendingNetwork { hosts, mut sandbox, netns } = pending;
        let helper = self.config.network.rootless_driver;
        let (helper, program) = self
            .usernet
            .clone()
            .ok_or(network::NetworkError::HelperMissing { helper: helper.program(), package: helper.package() })?;
        let mut ports: Vec<PortMapping> = sandbox.ports.clone();
        // The sysctl may have changed since the create.
        network::usernet::check_unprivileged_ports(&ports, network::usernet::unprivileged_port_start())?;
        // Free host ports are picked for port 0, and a port taken is
        // docker's "already allocated", as in root mode; the helper binds
        // them itself, so toted holds none.
        network::check_ports_free(&mut ports)?;
        network::usernet::start(helper, &program, &self.shim, &netns, &ports, &self.usernet_files(&sandbox.id))?;
        // Then the bridge other containers reach it on, whose address is
        // the one `inspect` gives; the helper's stays its way out.
        let list = network::userbridge::network(self.cni.config());
        let options = network::cni::AttachOptions {
            network: Some(&list),
            args: &[],
            if_name: Some(network::userbridge::INTERFACE),
        };
        let bridged = self.cni.attach(&sandbox.id, &netns, &[], options)?;
        crate::crashpoint::reached("start:network-attached");
        let attachment = network::Attachment { gateway: network::usernet::attachment().gateway, ..bridged };
        network::etc::rewrite_hosts(&hosts, &sandbox.hostname, Some(attachment.ip))?;
        sandbox.ports = ports;
        sandbox.attachment = Some(attachment);
        self.save_sandbox(&sandbox)
    }

    /// Connects waiting attaches, lets the container run and supervises it.
    async fn run_started(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        record: &ContainerRecord,
        (pid, monitor_pid): (i32, i32),
    ) -> Result<(), EngineError> {
        let id = record.id.clone();
        let client = self.monitor_client(&id);
        let pending: Vec<super::PendingAttach> =
            std::mem::take(&mut *entry.pending_attach.lock().expect("attach lock"));
        for attach in pending {
            let stream = client.stream(&Request::Attach { stdin: attach.stdin }).await.map_err(EngineError::from);
            let _ = attach.reply.send(stream);
        }
        // Taken before the program is let go: one that exits at once must
        // not have finished (the monitor's clock) before it started.
        let started_at = tote_shim::state::now_rfc3339();
        // The Wait goes first so that its answer comes however soon the
        // container ends.
        let started = async {
            let waiting = client.request(&Request::Wait).await?;
            client.call_ok(&Request::Start).await?;
            Ok::<_, crate::monitor::MonitorError>(waiting)
        };
        let waiting = match started.await {
            Ok(waiting) => waiting,
            Err(e) => {
                let _ = client.call(&Request::Kill { signal: 9, all: true }).await;
                return Err(e.into());
            }
        };
        crate::crashpoint::reached("start:started");
        let monitor_start = tote_shim::state::proc_stat(monitor_pid).map_or(0, |s| s.start_time);
        let recorded = self.update(entry, |r| {
            r.state.status = Some(Status::Running);
            r.state.pid = pid;
            r.state.monitor_pid = monitor_pid;
            r.state.monitor_start = monitor_start;
            r.state.started_at = Some(started_at.clone());
            r.state.finished_at = None;
            r.state.exit_code = 0;
            r.state.oom_killed = false;
            r.state.error.clear();
            r.state.manually_stopped = false;
        });
        if let Err(e) = recorded {
            // Running unrecorded, it would outlive any supervision.
            let _ = client.call(&Request::Kill { signal: 9, all: true }).await;
            return Err(e);
        }
        self.events.publish("container", "start", &id, &[("name", &record.name), ("image", &record.image)]);
        let engine = self.clone();
        let watched = entry.clone();
        tokio::spawn(async move { engine.supervise(watched, Some(waiting)).await });
        Ok(())
    }

    /// Whether the container's sandbox is its own (a pod's network is the
    /// pod's, set up and torn down with it, not with its containers).
    pub(crate) fn owns_network(&self, record: &ContainerRecord) -> bool {
        self.sandbox(&record.sandbox).is_none_or(|s| !s.is_pod())
    }

    /// Releases the sandbox's address and ports and its namespace; what
    /// was published with port 0 gets a new port next time.
    pub(crate) async fn teardown_network(&self, sandbox_id: &str) {
        let lock = self.network_lock(sandbox_id);
        let _network = lock.lock().await;
        tokio::task::block_in_place(|| self.release_network(sandbox_id));
    }

    /// [`Engine::teardown_network`] for a caller holding the network lock.
    pub(crate) fn release_network(&self, sandbox_id: &str) {
        let Some(mut sandbox) = self.sandbox(sandbox_id) else { return };
        let Some(netns) = sandbox.netns.clone() else { return };
        let began = Instant::now();
        // A rootless sandbox's helper first: its host ports are free again
        // when it is gone.
        let stopped = if self.config.privilege.is_rootless() {
            let helper = self.config.network.rootless_driver;
            network::usernet::release(helper, &self.usernet_files(&sandbox.id), &netns, &sandbox.ports)
        } else {
            Ok(())
        };
        // Then the namespace, before the plugins run, and the kernel
        // deletes the veth pair with it, off this path: deleting the veth
        // in DEL waits out RCU grace periods (20-40 ms here), and the
        // plugins release the address and ports just as well without a
        // namespace. Nothing else holds it: the container's processes died
        // with its init (and the helper is gone).
        let removed = network::netns::remove(&netns);
        let torn = self.cni.teardown(&sandbox.id, None);
        if let Err(e) = stopped.and(torn).and(removed) {
            tracing::warn!(sandbox = %sandbox.id, "network teardown: {e}");
        }
        self.ports.lock().expect("ports lock").remove(&sandbox.id);
        tracing::debug!(sandbox = %sandbox.id, ms = millis(began), "network released");
        // Only a change is written: `run --rm` comes here at the exit and
        // again at the removal.
        if sandbox.attachment.take().is_some()
            && let Err(e) = self.save_sandbox(&sandbox)
        {
            tracing::warn!(sandbox = %sandbox.id, "record the released network: {e}");
        }
    }

    /// SIGTERM (or the stop signal), then SIGKILL after `timeout` seconds.
    pub async fn stop(self: &Arc<Self>, reference: &str, timeout: Option<u32>) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let _op = entry.op.lock().await;
        self.stop_locked(&entry, timeout).await
    }

    pub(crate) async fn stop_locked(&self, entry: &Arc<Entry>, timeout: Option<u32>) -> Result<(), EngineError> {
        let record = self.update(entry, |r| r.state.manually_stopped = true)?;
        if !record.state.status().is_live() {
            return Ok(());
        }
        let timeout =
            timeout.unwrap_or(if record.settings.stop_timeout > 0 { record.settings.stop_timeout } else { 10 });
        let signal = if record.settings.stop_signal.is_empty() { "SIGTERM" } else { &record.settings.stop_signal };
        let signal = tote_shim::container::parse_signal(signal).map_or(15, |s| s as i32);
        let client = self.monitor_client(&record.id);
        if record.state.status() == Status::Paused {
            let _ = client.call_ok(&Request::Resume).await;
        }
        let _ = client.call_ok(&Request::Kill { signal, all: false }).await;
        if !self.wait_not_live(entry, Duration::from_secs(u64::from(timeout))).await {
            let _ = client.call_ok(&Request::Kill { signal: 9, all: true }).await;
            if !self.wait_not_live(entry, Duration::from_secs(10)).await {
                return Err(EngineError::Internal(format!("container {} did not stop after SIGKILL", record.id)));
            }
        }
        self.events.publish("container", "stop", &record.id, &[("name", &record.name)]);
        Ok(())
    }

    /// Waits until the container's exit is handled; false on timeout.
    pub(crate) async fn wait_not_live(&self, entry: &Entry, timeout: Duration) -> bool {
        let mut changes = entry.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if !entry.record.lock().expect("record lock").state.status().is_live() {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        waited.await.is_ok()
    }

    pub async fn restart(self: &Arc<Self>, reference: &str, timeout: Option<u32>) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let _op = entry.op.lock().await;
        self.stop_locked(&entry, timeout).await?;
        self.start_locked(&entry).await?;
        let record = entry.snapshot();
        self.events.publish("container", "restart", &record.id, &[("name", &record.name)]);
        Ok(())
    }

    pub async fn kill(&self, reference: &str, signal: &str) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let record = entry.snapshot();
        let signal = if signal.is_empty() { "SIGKILL" } else { signal };
        let number = tote_shim::container::parse_signal(signal)
            .map_err(|_| EngineError::Invalid(format!("invalid signal: {signal}")))? as i32;
        if !record.state.status().is_live() {
            return Err(EngineError::Conflict(format!(
                "Cannot kill container: {}: container is not running",
                record.id
            )));
        }
        self.update(&entry, |r| r.state.manually_stopped = true)?;
        self.monitor_client(&record.id).call_ok(&Request::Kill { signal: number, all: false }).await?;
        self.events.publish(
            "container",
            "kill",
            &record.id,
            &[("name", &record.name), ("signal", &number.to_string())],
        );
        Ok(())
    }

    pub async fn pause(&self, reference: &str, pause: bool) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let _op = entry.op.lock().await;
        let record = entry.snapshot();
        let (wanted, request, next, action) = if pause {
            (Status::Running, Request::Pause, Status::Paused, "pause")
        } else {
            (Status::Paused, Request::Resume, Status::Running, "unpause")
        };
        if record.state.status() != wanted {
            return Err(EngineError::Conflict(format!(
                "container {} is {}, not {}",
                record.id,
                record.state.status().name(),
                wanted.name()
            )));
        }
        self.monitor_client(&record.id).call_ok(&request).await?;
        self.update(&entry, |r| r.state.status = Some(next))?;
        self.events.publish("container", action, &record.id, &[("name", &record.name)]);
        Ok(())
    }

    pub async fn remove(self: &Arc<Self>, reference: &str, force: bool, volumes: bool) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let _op = entry.op.lock().await;
        self.remove_locked(&entry, force, volumes).await
    }

    pub(crate) async fn remove_locked(
        &self,
        entry: &Arc<Entry>,
        force: bool,
        volumes: bool,
    ) -> Result<(), EngineError> {
        let record = entry.snapshot();
        let live = record.state.status().is_live();
        if live && !force {
            return Err(EngineError::Conflict(format!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                record.id
            )));
        }
        // From here the removal wins: the exit it causes starts nothing.
        entry.removing.store(true, std::sync::atomic::Ordering::SeqCst);
        if live {
            let client = self.monitor_client(&record.id);
            let _ = client.call_ok(&Request::Kill { signal: 9, all: true }).await;
            if !self.wait_not_live(entry, Duration::from_secs(10)).await {
                entry.removing.store(false, std::sync::atomic::Ordering::SeqCst);
                return Err(EngineError::Internal(format!("container {} did not die after SIGKILL", record.id)));
            }
        } else if self.paths.monitor_dir(&record.id).join(tote_shim::monitor::SOCKET).exists() {
            // A monitor its record does not know of (toted was killed
            // before recording the start) is ended all the same.
            self.end_unrecorded_run(&record.id).await;
        }
        let began = Instant::now();
        let record = self.update(entry, |r| r.state.status = Some(Status::Dead))?;
        crate::crashpoint::reached("remove:dead");
        let id = record.id.clone();
        let own_network = self.owns_network(&record);
        if own_network {
            self.teardown_network(&record.sandbox).await;
        }
        let rootfs = self.paths.rootfs(&id);
        self.release_userns_view(&id);
        if is_mountpoint(&rootfs) {
            snapshots::unmount(&rootfs)?;
        }
        self.images.snapshots().remove_writable(&id)?;
        let dir = self.paths.container_dir(&id);
        std::fs::remove_dir_all(&dir).or_else(ignore_missing).map_err(internal(&dir.display().to_string()))?;
        let _ = std::fs::remove_dir_all(self.paths.monitor_dir(&id));
        if own_network {
            self.forget_sandbox(&record.sandbox)?;
        } else {
            self.pod_member(&record.sandbox, &id, false)?;
        }
        // A removal lost to a crash leaves a record whose files are gone;
        // `rm` of it again finishes the job.
        self.delete_record(entry, &id)?;
        self.containers.lock().expect("containers lock").remove(&id);
        entry.changed.send_modify(|n| *n += 1);
        if volumes {
            for mount in record.mounts.iter().filter(|m| m.anonymous) {
                if let Some(name) = &mount.name
                    && let Err(e) = self.volumes.remove(name, &self.volume_users(name))
                {
                    tracing::warn!(container = %id, "remove volume {name}: {e}");
                }
            }
        }
        let mut attributes = vec![("name", record.name.as_str()), ("image", record.image.as_str())];
        if !own_network {
            // Its pod, for whoever follows a pod's containers (the CRI's
            // events): the record that tells it is gone.
            attributes.push(("pod", record.sandbox.as_str()));
        }
        self.events.publish("container", "destroy", &id, &attributes);
        tracing::debug!(container = %id, ms = millis(began), "removed");
        Ok(())
    }

    pub fn rename(&self, reference: &str, new_name: &str) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let new_name = new_name.strip_prefix('/').unwrap_or(new_name);
        let id = entry.snapshot().id;
        self.check_name(new_name, Some(&id))?;
        let old = entry.snapshot().name;
        self.update(&entry, |r| r.name = new_name.to_string())?;
        self.events.publish("container", "rename", &id, &[("name", new_name), ("oldName", &old)]);
        Ok(())
    }

    /// New limits (only what is set) and restart policy; a running
    /// container gets the limits at once.
    pub async fn update_container(
        &self,
        reference: &str,
        limits: Settings,
        restart: Option<crate::containers::record::RestartPolicy>,
    ) -> Result<(), EngineError> {
        let entry = self.entry(reference)?;
        let _op = entry.op.lock().await;
        let record = entry.snapshot();
        self.check_limits(&limits)?;
        // Only limits go to the running container's cgroup: a restart
        // policy alone is toted's, and a container with no cgroup (a
        // rootless toted's) must not be refused it.
        let l = &limits;
        let any_limit = [l.memory, l.memory_swap, l.nano_cpus, l.cpu_shares, l.pids_limit].iter().any(|v| *v != 0)
            || !l.cpuset_cpus.is_empty();
        if record.state.status().is_live() && any_limit {
            let resources = spec::update_resources(&limits)?;
            self.monitor_client(&record.id).call_ok(&Request::Update { resources: Box::new(resources) }).await?;
        }
        self.update(&entry, |r| {
            let s = &mut r.settings;
            if limits.memory != 0 {
                s.memory = limits.memory;
            }
            if limits.memory_swap != 0 {
                s.memory_swap = limits.memory_swap;
            }
            if limits.nano_cpus != 0 {
                s.nano_cpus = limits.nano_cpus;
            }
            if limits.cpu_shares != 0 {
                s.cpu_shares = limits.cpu_shares;
            }
            if limits.pids_limit != 0 {
                s.pids_limit = limits.pids_limit;
            }
            if !limits.cpuset_cpus.is_empty() {
                s.cpuset_cpus = limits.cpuset_cpus.clone();
            }
            if let Some(restart) = restart {
                s.restart = restart;
            }
        })?;
        self.rewrite_spec_resources(&entry)?;
        Ok(())
    }

    /// A rootless toted refuses the limits its containers' cgroups cannot
    /// have (none without a delegated subtree, or a controller not
    /// delegated) rather than accept them and apply nothing.
    fn check_limits(&self, settings: &Settings) -> Result<(), EngineError> {
        let Privilege::Rootless(rootless) = &self.config.privilege else { return Ok(()) };
        let limits = spec::cgroup_limits(settings);
        let missing: Vec<_> = limits.iter().filter(|(_, controller)| !rootless.cgroups.has(controller)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let flags = missing.iter().map(|(flag, _)| *flag).collect::<Vec<_>>().join(", ");
        Err(EngineError::Invalid(match &rootless.cgroups {
            Delegation::Unavailable(why) => {
                format!(
                    "{flags} cannot be applied: a rootless toted without a delegated cgroup gives containers none ({why})"
                )
            }
            Delegation::Delegated { parent, controllers } => {
                let wanted: std::collections::BTreeSet<_> = missing.iter().map(|(_, c)| *c).collect();
                format!(
                    "{flags} cannot be applied: the {} controller is not delegated to this rootless toted's cgroup {} \
                     (it has {})",
                    wanted.into_iter().collect::<Vec<_>>().join(" and "),
                    parent.trim_end_matches(crate::delegation::CONTAINERS).trim_end_matches('/'),
                    controllers.join(", ")
                )
            }
        }))
    }

    /// Keeps config.json's limits in step with the record, so the next
    /// start applies them.
    fn rewrite_spec_resources(&self, entry: &Entry) -> Result<(), EngineError> {
        let record = entry.snapshot();
        let path = self.paths.bundle(&record.id).join("config.json");
        let mut oci: oci_spec::runtime::Spec = oci_spec::runtime::Spec::load(&path)
            .map_err(|e| EngineError::Internal(format!("{}: {e}", path.display())))?;
        if let Some(mut linux) = oci.linux().clone() {
            let mut resources = spec::update_resources(&record.settings)?;
            if let Some(devices) = linux.resources().as_ref().and_then(|r| r.devices().clone()) {
                resources.set_devices(Some(devices));
            }
            linux.set_resources(Some(resources));
            oci.set_linux(Some(linux));
        }
        let text = serde_json::to_vec_pretty(&oci).map_err(|e| EngineError::Internal(format!("spec: {e}")))?;
        write_private(&path, &text)
    }

    /// Waits until the container's exit has been handled (and, for `--rm`,
    /// the container removed), at most `timeout`.
    pub async fn settled(&self, reference: &str, timeout: Duration) {
        let Ok(entry) = self.entry(reference) else { return };
        let mut changes = entry.changed.subscribe();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let record = entry.snapshot();
                let status = record.state.status();
                let exited = !status.is_live();
                let removed = !self.containers.lock().expect("containers lock").contains_key(&record.id);
                if removed || (exited && !record.settings.auto_remove) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Blocks while the container runs; its exit code and whether the OOM
    /// killer ended it.
    pub async fn wait(&self, reference: &str) -> Result<(i32, bool), EngineError> {
        let entry = self.entry(reference)?;
        let mut changes = entry.changed.subscribe();
        loop {
            let record = entry.snapshot();
            let status = record.state.status();
            if !status.is_live() && status != Status::Restarting {
                return Ok((record.state.exit_code, record.state.oom_killed));
            }
            if changes.changed().await.is_err() {
                return Ok((record.state.exit_code, record.state.oom_killed));
            }
        }
    }
}

/// Milliseconds since `began`, for the debug log's timings.
/// A log path the orchestrator chose: absolute, and its directory made if
/// missing (the kubelet makes it; other clients may not) and writable.
fn check_log_path(path: &Path) -> Result<(), EngineError> {
    let bad = |why: String| EngineError::Invalid(format!("log path {}: {why}", path.display()));
    if !path.is_absolute() {
        return Err(bad("not an absolute path".into()));
    }
    let dir = path.parent().ok_or_else(|| bad("has no directory".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    // The monitor's own mode: what a container prints may be secret.
    std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().append(true).create(true), 0o640)
        .open(path)
        .map(drop)
        .map_err(|e| bad(format!("cannot be written: {e}")))
}

pub(crate) fn millis(began: Instant) -> f64 {
    began.elapsed().as_secs_f64() * 1000.0
}

fn ignore_missing(e: std::io::Error) -> Result<(), std::io::Error> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

/// An absolute, normalised container path for a mount.
fn clean_destination(destination: &str) -> Result<String, EngineError> {
    if !destination.starts_with('/') {
        return Err(EngineError::Invalid(format!(
            "invalid mount destination {destination:?}: it must be an absolute path in the container"
        )));
    }
    let mut parts = Vec::new();
    for part in destination.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(EngineError::Invalid("invalid mount destination \"/\": the root cannot be a mount".into()));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Mounts a container's root, idmapped for a pod's user namespace.
fn mount_root(
    writable: &snapshots::WritableSnapshot,
    rootfs: &Path,
    userns: Option<&PodUserns>,
) -> Result<(), EngineError> {
    let Some(userns) = userns else { return Ok(snapshots::mount(writable, rootfs)?) };
    let (Some(root_uid), Some(root_gid)) = (userns.uids.to_host(0), userns.gids.to_host(0)) else {
        return Err(EngineError::Invalid("the pod's user namespace does not map root".into()));
    };
    let idmap = snapshots::Idmap { userns: userns.pin.clone(), root_uid, root_gid };
    Ok(snapshots::mount_idmapped(writable, rootfs, &idmap)?)
}

/// What a container in a pod's user namespace is given, from
/// [`Engine::userns_view`].
struct UsernsView {
    rootfs: PathBuf,
    etc: network::EtcFiles,
    mounts: Vec<MountPoint>,
}

/// Binds `source` (and everything mounted under it) on `target`.
fn rbind(source: &Path, target: &Path) -> Result<(), EngineError> {
    use nix::mount::MsFlags;
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|errno| EngineError::Internal(format!("bind {} on {}: {errno}", source.display(), target.display())))
}
