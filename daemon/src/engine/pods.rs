//! Pod sandboxes: the CRI's unit of scheduling, first-class in the engine.
//!
//! A pod owns what its containers share: a network namespace attached
//! through CNI with its published ports, IPC and UTS namespaces (pinned by
//! toted on files, as the network namespace is, so no pause process holds
//! them), its hostname, `/etc/hosts` and `resolv.conf`, sysctls and a
//! cgroup parent. It is ready from run until stop; its containers join it
//! and come and go without touching its network. Stop kills its containers
//! and releases the network; remove takes the containers and the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::lifecycle::{PendingNetwork, millis};
use super::{Engine, EngineError, internal};
use crate::containers::record::{DnsConfig, IdRange, NamespaceMode, ObjectMeta, PodConfig, PodUserns, SandboxRecord};
use crate::network::netns::{self, PodNamespace};
use crate::network::{self, NetworkMode, PortMapping};

/// What a pod is run with (the CRI's PodSandboxConfig, normalised).
#[derive(Debug, Clone, Default)]
pub struct PodRequest {
    pub metadata: ObjectMeta,
    /// Empty: the node's.
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub ports: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub sysctls: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub runtime_handler: String,
    /// A user namespace of the pod's own (the CRI's user namespace mode
    /// `Pod`) with these id maps; none: the host's.
    pub userns: Option<UsernsRequest>,
}

/// The id maps a pod's user namespace is asked with.
#[derive(Debug, Clone, Default)]
pub struct UsernsRequest {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// The one range of each map a pod's user namespace may have (what the
/// kubelet gives, and what the idmapped layers of its containers can
/// follow), with container id 0 in it; never with the host's network,
/// PID or IPC namespace, which the pod's root would not own.
fn check_userns(request: &PodRequest) -> Result<Option<(IdRange, IdRange)>, EngineError> {
    let Some(userns) = &request.userns else { return Ok(None) };
    let shared: Vec<&str> = [
        (request.host_network, "network"),
        (request.pid == NamespaceMode::Host, "PID"),
        (request.ipc == NamespaceMode::Host, "IPC"),
    ]
    .into_iter()
    .filter_map(|(host, name)| host.then_some(name))
    .collect();
    if !shared.is_empty() {
        return Err(EngineError::Invalid(format!(
            "a pod with its own user namespace cannot use the host's {} namespace",
            shared.join(" and ")
        )));
    }
    let one = |maps: &[IdRange], what: &str| -> Result<IdRange, EngineError> {
        let [range] = maps else {
            return Err(EngineError::Invalid(format!(
                "the pod's user namespace needs exactly one {what} mapping, got {}",
                maps.len()
            )));
        };
        if range.container_id != 0 {
            return Err(EngineError::Invalid(format!(
                "the pod's {what} mapping must map container id 0 (it starts at {})",
                range.container_id
            )));
        }
        if range.size == 0 || range.host_id.checked_add(range.size).is_none() {
            return Err(EngineError::Invalid(format!(
                "the pod's {what} mapping {} {} {} is not a valid range",
                range.container_id, range.host_id, range.size
            )));
        }
        if range.host_id == 0 {
            return Err(EngineError::Invalid(format!(
                "the pod's {what} mapping maps the host's root into the pod: use the host's user namespace instead"
            )));
        }
        Ok(*range)
    };
    Ok(Some((one(&userns.uids, "uid")?, one(&userns.gids, "gid")?)))
}

/// Which pods a listing wants; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    /// A full id or a unique prefix.
    pub id: Option<String>,
    pub ready: Option<bool>,
    pub labels: BTreeMap<String, String>,
}

/// Sysctls a pod may set: those of the namespaces it has of its own (the
/// kubelet's "safe and namespaced" set, which runc enforces too).
fn check_sysctls(sysctls: &BTreeMap<String, String>, host_network: bool, host_ipc: bool) -> Result<(), EngineError> {
    for key in sysctls.keys() {
        let ipc = key.starts_with("kernel.shm")
            || key.starts_with("kernel.msg")
            || key == "kernel.sem"
            || key.starts_with("fs.mqueue.");
        let net = key.starts_with("net.");
        let allowed = (ipc && !host_ipc) || (net && !host_network);
        if !allowed {
            let why = if ipc || net {
                "the pod uses the host's namespace for it"
            } else {
                "it is not in a namespace the pod has of its own"
            };
            return Err(EngineError::Invalid(format!("sysctl {key:?} cannot be set for the pod: {why}")));
        }
    }
    Ok(())
}

/// A pod's metadata claimed while it is being run (see `reserve_pod`).
struct PodReservation<'a> {
    engine: &'a Engine,
    meta: ObjectMeta,
}

impl Drop for PodReservation<'_> {
    fn drop(&mut self) {
        self.engine.pods_starting.lock().expect("pods starting lock").remove(&self.meta);
    }
}

/// Undoes a half-made pod.
struct PodRollback<'a> {
    engine: &'a Engine,
    id: String,
    pins: Vec<PathBuf>,
    init: Option<(i32, u64)>,
    network: bool,
    armed: bool,
}

impl Drop for PodRollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.network {
            self.engine.release_network(&self.id);
        }
        if let Some(init) = self.init {
            kill_init(init);
        }
        for pin in &self.pins {
            let _ = netns::remove(pin);
        }
        let _ = std::fs::remove_dir_all(self.engine.paths.sandbox_dir(&self.id));
        let _ = self.engine.forget_sandbox(&self.id);
    }
}

impl Engine {
    /// Runs a pod: its namespaces, files and network; ready when this
    /// returns. Nothing is pulled and no process is started.
    pub async fn run_pod(self: &Arc<Self>, request: PodRequest) -> Result<String, EngineError> {
        let engine = self.clone();
        let began = Instant::now();
        let ran = tokio::task::spawn_blocking(move || engine.run_pod_blocking(request))
            .await
            .map_err(|e| EngineError::Internal(format!("run pod: {e}")))?;
        if let Ok(id) = &ran {
            tracing::debug!(pod = %id, ms = millis(began), "pod ready");
            self.events.publish("pod", "start", id, &[]);
        }
        ran
    }

    fn run_pod_blocking(&self, request: PodRequest) -> Result<String, EngineError> {
        let meta = &request.metadata;
        if meta.name.is_empty() {
            return Err(EngineError::Invalid("the pod's metadata has no name".into()));
        }
        if !request.runtime_handler.is_empty() {
            return Err(EngineError::Invalid(format!(
                "runtime handler {:?} is not configured: Tote has only the default one (\"\")",
                request.runtime_handler
            )));
        }
        check_sysctls(&request.sysctls, request.host_network, request.ipc == NamespaceMode::Host)?;
        let id_maps = check_userns(&request)?;
        if id_maps.is_some() && self.config.privilege.is_rootless() {
            // The kubelet's maps are host ids; toted's own namespace maps
            // only the user and their subordinate range, and a nested map
            // of host ids is refused by the kernel (EPERM on uid_map).
            return Err(EngineError::Invalid(
                "a rootless toted cannot give a pod a user namespace of its own: its ids are the kubelet's host \
                 ids, which toted's own user namespace does not map (the pod's containers are in that namespace \
                 already)"
                    .into(),
            ));
        }
        if request.host_network && !request.ports.is_empty() {
            // Host networking publishes nothing: the ports are the host's.
            tracing::debug!(pod = %meta.name, "port mappings of a host-network pod are ignored");
        }
        let _starting = self.reserve_pod(meta)?;
        let id = self.unique_id()?;
        let mode = if request.host_network { NetworkMode::Host } else { NetworkMode::Bridge };
        // No hostname: the node's, as containerd and CRI-O give (the
        // kubelet always sets one; a pod's name need not be a valid one).
        let hostname = if request.hostname.is_empty() {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| id[..12].into())
        } else {
            request.hostname.clone()
        };
        let mut rollback =
            PodRollback { engine: self, id: id.clone(), pins: Vec::new(), init: None, network: false, armed: true };
        let dir = self.paths.sandbox_dir(&id);
        let etc = network::write_etc_files(&dir, &hostname, mode, None)?;
        if let Some(dns) = request.dns.as_ref().filter(|d| !d.servers.is_empty() || !d.searches.is_empty()) {
            network::etc::write_resolv_conf(&etc.resolv_conf, &dns.servers, &dns.searches, &dns.options)?;
        }
        let ipcns = (request.ipc != NamespaceMode::Host).then(|| self.paths.pod_namespace(&id, "ipc"));
        let utsns = (!request.host_network).then(|| self.paths.pod_namespace(&id, "uts"));
        let netns_pin = mode.has_own_netns().then(|| self.paths.netns(&id));
        let userns = if let Some((uids, gids)) = id_maps {
            let pin = self.paths.pod_namespace(&id, "user");
            let mut pins = vec![("user", pin.clone())];
            pins.extend(netns_pin.clone().map(|p| ("net", p)));
            pins.extend(ipcns.clone().map(|p| ("ipc", p)));
            pins.extend(utsns.clone().map(|p| ("uts", p)));
            rollback.pins.extend(pins.iter().map(|(_, p)| p.clone()));
            self.start_pod_userns(&pins, uids, gids, &hostname)?;
            Some(PodUserns { pin, uids, gids })
        } else {
            if let Some(path) = &ipcns {
                netns::create_pod_namespace(path, PodNamespace::Ipc)?;
                rollback.pins.push(path.clone());
            }
            if let Some(path) = &utsns {
                netns::create_pod_namespace(path, PodNamespace::Uts { hostname: &hostname })?;
                rollback.pins.push(path.clone());
            }
            None
        };
        let (pidns, init) = if request.pid == NamespaceMode::Pod {
            let path = self.paths.pod_namespace(&id, "pid");
            let init = self.start_pod_init(&path, userns.as_ref().map(|u| u.pin.as_path()))?;
            rollback.init = Some(init);
            rollback.pins.push(path.clone());
            (Some(path), Some(init))
        } else {
            (None, None)
        };
        let pod = PodConfig {
            metadata: meta.clone(),
            labels: request.labels,
            annotations: request.annotations,
            log_directory: request.log_directory,
            dns: request.dns,
            pid: request.pid,
            ipc: request.ipc,
            sysctls: request.sysctls,
            cgroup_parent: request.cgroup_parent,
            ipcns,
            utsns,
            pidns,
            init,
            userns,
            ready: false,
            runtime_handler: request.runtime_handler,
        };
        crate::crashpoint::reached("pod:pinned");
        let mut sandbox = SandboxRecord {
            id: id.clone(),
            name: meta.name.clone(),
            created: tote_shim::state::now_rfc3339(),
            hostname,
            network: mode,
            netns: netns_pin,
            ports: if request.host_network { Vec::new() } else { request.ports },
            attachment: None,
            containers: Vec::new(),
            pod: Some(pod),
        };
        self.save_sandbox(&sandbox)?;
        if let Some(path) = sandbox.netns.clone() {
            rollback.network = true;
            // A pod with a user namespace has its network namespace already,
            // made in (and owned by) that user namespace.
            if sandbox.pod.as_ref().is_none_or(|p| p.userns.is_none()) {
                netns::create(&path)?;
            }
            self.attach_network(PendingNetwork { hosts: etc.hosts.clone(), sandbox: sandbox.clone(), netns: path })?;
            sandbox = self.sandbox(&id).unwrap_or(sandbox);
        }
        if let Some(pod) = sandbox.pod.as_mut() {
            pod.ready = true;
        }
        self.save_sandbox(&sandbox)?;
        rollback.armed = false;
        Ok(id)
    }

    /// Claims `meta` for a pod being run, until the guard drops: refused
    /// if a pod of that metadata exists or is being run.
    fn reserve_pod(&self, meta: &ObjectMeta) -> Result<PodReservation<'_>, EngineError> {
        let mut starting = self.pods_starting.lock().expect("pods starting lock");
        let same = |s: &SandboxRecord| s.pod.as_ref().is_some_and(|p| &p.metadata == meta);
        let existing = self.sandboxes.lock().expect("sandboxes lock").values().find(|s| same(s)).map(|s| s.id.clone());
        if existing.is_some() || starting.contains(meta) {
            return Err(EngineError::Conflict(format!(
                "a pod named {:?} (namespace {:?}, uid {:?}, attempt {}) exists already{}",
                meta.name,
                meta.namespace,
                meta.uid,
                meta.attempt,
                existing.map_or_else(|| " (being run)".to_string(), |id| format!(": {id}"))
            )));
        }
        starting.insert(meta.clone());
        Ok(PodReservation { engine: self, meta: meta.clone() })
    }

    /// The pod a reference names: a full id or a unique prefix.
    pub fn pod(&self, reference: &str) -> Result<SandboxRecord, EngineError> {
        let sandboxes = self.sandboxes.lock().expect("sandboxes lock");
        if let Some(found) = sandboxes.get(reference).filter(|s| s.is_pod()) {
            return Ok(found.clone());
        }
        let matches: Vec<&SandboxRecord> = if reference.is_empty() {
            Vec::new()
        } else {
            sandboxes.values().filter(|s| s.is_pod() && s.id.starts_with(reference)).collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NotFound(format!("pod sandbox {reference:?} not found"))),
            _ => Err(EngineError::Invalid(format!("pod sandbox id {reference:?} is ambiguous: give more of it"))),
        }
    }

    /// Whether `id` is a pod's (cheaper than [`Engine::pod`]: no copy).
    pub fn is_pod(&self, id: &str) -> bool {
        self.sandboxes.lock().expect("sandboxes lock").get(id).is_some_and(SandboxRecord::is_pod)
    }

    pub fn pods(&self, filter: &PodFilter) -> Vec<SandboxRecord> {
        self.sandboxes
            .lock()
            .expect("sandboxes lock")
            .values()
            .filter(|s| {
                let Some(pod) = &s.pod else { return false };
                filter.id.as_deref().is_none_or(|id| s.id.starts_with(id))
                    && filter.ready.is_none_or(|ready| pod.ready == ready)
                    && filter.labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            })
            .cloned()
            .collect()
    }

    /// Kills the pod's containers and releases its network; the pod stays
    /// listed, not ready, until removed. Stopping a stopped pod is fine.
    pub async fn stop_pod(self: &Arc<Self>, reference: &str) -> Result<(), EngineError> {
        let pod = self.pod(reference)?;
        for id in &pod.containers {
            let Ok(entry) = self.entry(id) else { continue };
            let _op = entry.op.lock().await;
            // The kubelet gave its containers their grace period already.
            self.stop_locked(&entry, Some(0)).await?;
        }
        self.teardown_network(&pod.id).await;
        if let Some(init) = pod.pod.as_ref().and_then(|p| p.init) {
            kill_init(init);
        }
        let lock = self.network_lock(&pod.id);
        let _network = lock.lock().await;
        if let Some(mut sandbox) = self.sandbox(&pod.id)
            && let Some(config) = sandbox.pod.as_mut()
            && config.ready
        {
            config.ready = false;
            self.save_sandbox(&sandbox)?;
            self.events.publish("pod", "stop", &pod.id, &[]);
        }
        Ok(())
    }

    /// Removes the pod and its containers (stopping it first if needed).
    pub async fn remove_pod(self: &Arc<Self>, reference: &str) -> Result<(), EngineError> {
        let pod = self.pod(reference)?;
        self.stop_pod(&pod.id).await?;
        for id in &pod.containers {
            let Ok(entry) = self.entry(id) else { continue };
            let _op = entry.op.lock().await;
            self.remove_locked(&entry, true, true).await?;
        }
        let pod = self.pod(&pod.id)?;
        if let Some(config) = &pod.pod {
            let userns = config.userns.as_ref().map(|u| &u.pin);
            for pin in config.ipcns.iter().chain(config.utsns.iter()).chain(config.pidns.iter()).chain(userns) {
                netns::remove(pin)?;
            }
        }
        let dir = self.paths.sandbox_dir(&pod.id);
        std::fs::remove_dir_all(&dir).or_else(ignore_missing).map_err(internal(&dir.display().to_string()))?;
        self.forget_sandbox(&pod.id)?;
        self.events.publish("pod", "destroy", &pod.id, &[]);
        Ok(())
    }

    /// A pod whose namespaces did not survive (a reboot) is not ready: its
    /// network is released and the kubelet runs a new one.
    pub(crate) async fn restore_pods(&self) {
        for pod in self.pods(&PodFilter { ready: Some(true), ..PodFilter::default() }) {
            let config = pod.pod.as_ref().expect("pods have a pod config");
            let userns = config.userns.as_ref().map(|u| &u.pin);
            let pins = pod
                .netns
                .iter()
                .chain(config.ipcns.iter())
                .chain(config.utsns.iter())
                .chain(config.pidns.iter())
                .chain(userns);
            let mut lost: Vec<&PathBuf> = pins.filter(|p| !netns::exists(p)).collect();
            let init_alive = config.init.is_none_or(|(pid, start)| tote_shim::state::is_alive(pid, start));
            if let (false, Some(pidns)) = (init_alive, &config.pidns) {
                lost.push(pidns);
            }
            if lost.is_empty() {
                self.hold_ports_again(&pod.id);
                continue;
            }
            tracing::info!(pod = %pod.id, ?lost, "pod's namespaces are gone: it is no longer ready");
            self.teardown_network(&pod.id).await;
            if let Some(mut sandbox) = self.sandbox(&pod.id) {
                if let Some(config) = sandbox.pod.as_mut() {
                    config.ready = false;
                }
                let _ = self.save_sandbox(&sandbox);
            }
        }
    }

    /// Starts the pod's PID 1 in a new PID namespace and pins that
    /// namespace at `pin`: its pid and start time.
    fn start_pod_init(&self, pin: &Path, userns: Option<&Path>) -> Result<(i32, u64), EngineError> {
        let output = std::process::Command::new(&self.shim)
            .arg("pod-init")
            .args(userns)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| EngineError::Internal(format!("start {} pod-init: {e}", self.shim.display())))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let pid: i32 = match (output.status.success(), text.trim().parse()) {
            (true, Ok(pid)) => pid,
            _ => {
                return Err(EngineError::Internal(format!(
                    "the pod's init did not start: {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
        };
        let start = tote_shim::state::proc_stat(pid).map_or(0, |s| s.start_time);
        let init = (pid, start);
        let pinned = netns::pin_existing(Path::new(&format!("/proc/{pid}/ns/pid")), pin);
        if let Err(e) = pinned {
            kill_init(init);
            return Err(e.into());
        }
        Ok(init)
    }

    /// Makes the pod's user namespace with `tote-shim pod-userns` (see
    /// there: toted, multithreaded, cannot) and the namespaces in `pins`
    /// inside it, and pins them all. On failure the caller's rollback
    /// removes the pins.
    fn start_pod_userns(
        &self,
        pins: &[(&str, PathBuf)],
        uids: IdRange,
        gids: IdRange,
        hostname: &str,
    ) -> Result<(), EngineError> {
        use std::io::{BufRead, Write};
        use std::process::Stdio;
        let kinds: Vec<&str> = pins.iter().map(|(kind, _)| *kind).filter(|k| *k != "user").collect();
        let mut child = std::process::Command::new(&self.shim)
            .arg("pod-userns")
            .arg(kinds.join(","))
            .arg(hostname)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EngineError::Internal(format!("start {} pod-userns: {e}", self.shim.display())))?;
        let pid = child.id();
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EngineError::Internal("pod-userns has no pipes".into()));
        };
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut expect = |want: &str| match lines.next() {
            Some(Ok(line)) if line == want => Ok(()),
            other => Err(format!("expected {want:?} from pod-userns, got {other:?}")),
        };
        let made = (|| -> Result<(), String> {
            expect("userns")?;
            for (file, range) in [("uid_map", uids), ("gid_map", gids)] {
                let path = format!("/proc/{pid}/{file}");
                let text = format!("{} {} {}\n", range.container_id, range.host_id, range.size);
                std::fs::write(&path, text).map_err(|e| format!("write {path}: {e}"))?;
            }
            writeln!(stdin, "mapped").map_err(|e| format!("tell pod-userns: {e}"))?;
            expect("ready")?;
            for (kind, pin) in pins {
                netns::pin_existing(Path::new(&format!("/proc/{pid}/ns/{kind}")), pin).map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        drop(stdin);
        if made.is_err() {
            let _ = child.kill();
        }
        let output = child.wait_with_output();
        made.map_err(|problem| {
            let stderr = output.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default();
            EngineError::Internal(format!("the pod's user namespace: {problem} {stderr}").trim_end().to_string())
        })
    }

    /// A TCP connection to `port` on the pod's loopback, made inside its
    /// network namespace (the host's, for a host-network pod): what the
    /// CRI's PortForward carries. Blocking: call it off the async workers.
    pub fn pod_connect(&self, reference: &str, port: u16) -> Result<std::net::TcpStream, EngineError> {
        let pod = self.pod(reference)?;
        if !pod.pod.as_ref().is_some_and(|p| p.ready) {
            return Err(EngineError::Conflict(format!("pod sandbox {} is not ready", pod.id)));
        }
        let connect = move || {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(10))
        };
        let connected = match &pod.netns {
            Some(path) => netns::enter(path, connect)?,
            None => connect(),
        };
        connected.map_err(|e| {
            EngineError::Internal(format!(
                "error forwarding port {port} to pod {}: connect to 127.0.0.1:{port}: {e}",
                pod.id
            ))
        })
    }

    /// Adds a container to its pod's list, or takes it off.
    pub(crate) fn pod_member(&self, pod: &str, container: &str, member: bool) -> Result<(), EngineError> {
        let Some(mut sandbox) = self.sandbox(pod) else { return Ok(()) };
        sandbox.containers.retain(|c| c != container);
        if member {
            sandbox.containers.push(container.to_string());
        }
        self.save_sandbox(&sandbox)
    }
}

/// Ends a pod's PID 1 (and with it every process in its PID namespace),
/// if it is still the process toted started.
fn kill_init((pid, start): (i32, u64)) {
    if pid > 0 && tote_shim::state::is_alive(pid, start) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

/// The files of a pod's hosts, hostname and resolv.conf.
pub(crate) fn pod_etc(dir: &Path) -> network::EtcFiles {
    network::EtcFiles { hosts: dir.join("hosts"), resolv_conf: dir.join("resolv.conf"), hostname: dir.join("hostname") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_of_the_pods_own_namespaces_only() {
        let set = |k: &str| BTreeMap::from([(k.to_string(), "1".to_string())]);
        assert!(check_sysctls(&set("net.ipv4.ip_forward"), false, false).is_ok());
        assert!(check_sysctls(&set("kernel.shm_rmid_forced"), false, false).is_ok());
        assert!(check_sysctls(&set("kernel.msgmax"), true, false).is_ok());
        let err = check_sysctls(&set("net.ipv4.ip_forward"), true, false).unwrap_err().to_string();
        assert!(err.contains("net.ipv4.ip_forward") && err.contains("host"), "{err}");
        assert!(check_sysctls(&set("kernel.shmmax"), false, true).is_err());
        let err = check_sysctls(&set("vm.swappiness"), false, false).unwrap_err().to_string();
        assert!(err.contains("vm.swappiness") && err.contains("namespace"), "{err}");
    }
}
