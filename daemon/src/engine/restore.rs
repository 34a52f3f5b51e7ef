//! Live restore: a daemon that starts finds its containers' monitors still
//! running and supervises them again; exits that happened while it was
//! down are read from the monitors' exit records. Whatever a killed toted
//! left half-done (a monitor launched but its start not recorded, a
//! container directory without a record) is ended and cleared, so that
//! every container can be started and removed again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tote_shim::monitor::exit;
use tote_shim::monitor::protocol::{Phase, Reply, Request};

use super::{Engine, Entry, is_mountpoint};
use crate::containers::record::{RestartPolicy, Status};
use crate::snapshots;

/// How long a monitor may take to answer toted at its start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Engine {
    /// Reconnects to every container after a daemon (re)start. Returns how
    /// many were found running.
    pub async fn restore(self: &Arc<Self>) -> usize {
        self.forget_removed();
        self.clear_orphans().await;
        self.restore_pods().await;
        let mut running = 0;
        for entry in self.entries() {
            let record = entry.snapshot();
            match record.state.status() {
                Status::Running | Status::Paused => match self.ending_without_monitor(&entry) {
                    None => {
                        running += 1;
                        if self.owns_network(&record) {
                            self.hold_ports_again(&record.sandbox);
                        }
                        let engine = self.clone();
                        let entry = entry.clone();
                        tokio::spawn(async move { engine.supervise(entry, None).await });
                    }
                    Some(ending) => {
                        tracing::info!(container = %record.id, "exited while toted was down");
                        self.on_exit(&entry, ending).await;
                    }
                },
                Status::Dead => {
                    let _op = entry.op.lock().await;
                    if let Err(e) = self.remove_locked(&entry, true, false).await {
                        tracing::warn!(container = %record.id, "finish removing: {e}");
                    }
                }
                status => {
                    self.end_interrupted_start(&entry).await;
                    let record = entry.snapshot();
                    match status {
                        Status::Restarting => self.schedule_restart(entry.clone()),
                        // As docker does when it starts: `always` containers
                        // run again, `unless-stopped` ones unless a user
                        // stopped them.
                        _ if record.state.status() == Status::Exited => {
                            let restart = match record.settings.restart {
                                RestartPolicy::Always => true,
                                RestartPolicy::UnlessStopped => !record.state.manually_stopped,
                                _ => false,
                            };
                            if restart {
                                let _ = self.update(&entry, |r| r.state.manually_stopped = false);
                                self.schedule_restart(entry.clone());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        running
    }

    /// A container not running by its record whose monitor still serves:
    /// toted was killed between launching the monitor and recording the
    /// start. The run is ended (the client that asked for it was told
    /// nothing good); one that got as far as running is recorded as
    /// exited, with why, so restart policies apply. Its network goes too.
    async fn end_interrupted_start(&self, entry: &Arc<Entry>) {
        let record = entry.snapshot();
        let dir = self.paths.monitor_dir(&record.id);
        if dir.join(tote_shim::monitor::SOCKET).exists() {
            let phase = match tokio::time::timeout(PROBE_TIMEOUT, self.monitor_client(&record.id).call(&Request::State))
                .await
            {
                Ok(Ok(Reply::State { phase, .. })) => Some(phase),
                _ => None,
            };
            tracing::info!(container = %record.id, ?phase, "ending a run whose start toted did not record");
            self.end_unrecorded_run(&record.id).await;
            if matches!(phase, Some(Phase::Running | Phase::Paused | Phase::Exited)) {
                let exit = exit::read(&dir).ok().flatten();
                let message = "toted stopped while starting the container; it was killed".to_string();
                let updated = self.update(entry, |r| {
                    r.state.status = Some(Status::Exited);
                    r.state.exit_code = exit.as_ref().map_or(137, |e| e.code);
                    r.state.finished_at = Some(exit.map_or_else(tote_shim::state::now_rfc3339, |e| e.finished_at));
                    r.state.error = message;
                    r.state.pid = 0;
                });
                if let Err(e) = updated {
                    tracing::warn!(container = %record.id, "record the exit: {e}");
                }
            }
        }
        // A pod's network is the pod's, whatever its containers did.
        let leftover = self.sandbox(&record.sandbox).is_some_and(|sandbox| {
            !sandbox.is_pod()
                && (sandbox.attachment.is_some()
                    || self.cni.is_attached(&sandbox.id)
                    || sandbox.netns.as_deref().is_some_and(crate::network::netns::exists))
        });
        if leftover {
            self.teardown_network(&record.sandbox).await;
        }
    }

    /// Ends a run that no record tells of: its monitor is told to kill the
    /// container (it then records the exit and leaves), and whatever the
    /// runtime still holds of it (processes, cgroup, state) goes.
    pub(crate) async fn end_unrecorded_run(&self, id: &str) {
        let socket = self.paths.monitor_dir(id).join(tote_shim::monitor::SOCKET);
        let killed =
            tokio::time::timeout(PROBE_TIMEOUT, self.monitor_client(id).call(&Request::Kill { signal: 9, all: true }))
                .await;
        if matches!(killed, Ok(Ok(_))) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while socket.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let runtime = self.runtime();
        let owned = id.to_string();
        match tokio::task::spawn_blocking(move || runtime.delete(&owned, true)).await {
            Ok(Err(e)) => tracing::warn!(container = %id, "clear the runtime's state: {e}"),
            Err(e) => tracing::warn!(container = %id, "clear the runtime's state: {e}"),
            Ok(Ok(())) => {}
        }
        let _ = std::fs::remove_file(&socket);
    }

    /// Takes the host ports of a running sandbox again: the reservation
    /// died with the previous toted. A port someone took meanwhile is
    /// logged; the container's traffic still reaches it through the rules.
    pub(crate) fn hold_ports_again(&self, sandbox_id: &str) {
        let Some(sandbox) = self.sandbox(sandbox_id) else { return };
        if self.uses_usernet(&sandbox) {
            self.adopt_usernet(&sandbox);
            return;
        }
        if sandbox.attachment.is_none() || sandbox.ports.is_empty() {
            return;
        }
        let mut ports = sandbox.ports.clone();
        match crate::network::reserve_ports(&mut ports) {
            Ok(reservation) => {
                self.ports.lock().expect("ports lock").insert(sandbox.id.clone(), reservation);
            }
            Err(e) => tracing::warn!(sandbox = %sandbox.id, "hold the published ports again: {e}"),
        }
    }

    /// A running rootless container's network helper (and port forwarder)
    /// outlived the previous toted and hold its ports: they are left as
    /// they are. One that died meanwhile (killed by hand, say) is started
    /// again for the same namespace and ports, so the container is not
    /// left without its network.
    fn adopt_usernet(&self, sandbox: &crate::containers::record::SandboxRecord) {
        use crate::network::usernet;
        let (Some((helper, program)), Some(netns)) = (&self.usernet, &sandbox.netns) else { return };
        if sandbox.attachment.is_none() || !crate::network::netns::exists(netns) {
            return;
        }
        let files = self.usernet_files(&sandbox.id);
        let forwarding =
            !usernet::needs_forwarder(*helper, &sandbox.ports) || usernet::forwarder_running(&files, netns).is_some();
        match usernet::running(&files, netns) {
            Some(pid) if forwarding => tracing::debug!(sandbox = %sandbox.id, pid, "its network helper still runs"),
            Some(_) => {
                tracing::warn!(sandbox = %sandbox.id, "its port forwarder is gone: starting it again");
                if let Err(e) = usernet::start_forwarder(&self.shim, netns, &sandbox.ports, &files) {
                    tracing::warn!(sandbox = %sandbox.id, "start the port forwarder again: {e}");
                }
            }
            None => {
                tracing::warn!(sandbox = %sandbox.id, "its network helper is gone: starting {helper} again");
                let restarted = usernet::stop(&files, netns)
                    .and_then(|()| usernet::start(*helper, program, &self.shim, netns, &sandbox.ports, &files));
                if let Err(e) = restarted {
                    tracing::warn!(sandbox = %sandbox.id, "start {helper} again: {e}");
                }
            }
        }
    }

    /// Removals are written without an fsync of their own: a record whose
    /// container directory is gone was removed before a crash.
    fn forget_removed(&self) {
        for entry in self.entries() {
            let record = entry.snapshot();
            if self.paths.container_dir(&record.id).exists() {
                continue;
            }
            tracing::info!(container = %record.id, "removed before toted stopped; forgetting its record");
            let _ = self.meta.remove_record(crate::metadata::Table::Containers, &record.id);
            if self.owns_network(&record) {
                let _ = self.forget_sandbox(&record.sandbox);
            } else {
                let _ = self.pod_member(&record.sandbox, &record.id, false);
            }
            self.containers.lock().expect("containers lock").remove(&record.id);
        }
    }

    /// What a create or a removal cut short by a crash left without a
    /// record: container directories (with their mounted root and
    /// writable snapshot), monitors, the runtime's state, sandboxes.
    async fn clear_orphans(&self) {
        let ids: std::collections::BTreeSet<String> =
            self.entries().iter().map(|e| e.record.lock().expect("record lock").id.clone()).collect();
        let known = |name: &str| ids.contains(name);
        let short_known = |name: &str| ids.iter().any(|id| id.starts_with(name));

        let containers = self.paths.root.join("containers");
        for name in dir_names(&containers) {
            if known(&name) || !is_container_id(&name) {
                continue;
            }
            tracing::info!(container = %name, "clearing a container toted did not finish creating");
            self.release_userns_view(&name);
            let rootfs = self.paths.rootfs(&name);
            if is_mountpoint(&rootfs)
                && let Err(e) = snapshots::unmount(&rootfs)
            {
                tracing::warn!(container = %name, "unmount its root: {e}");
                continue;
            }
            if let Err(e) = self.images.snapshots().remove_writable(&name) {
                tracing::warn!(container = %name, "remove its snapshot: {e}");
            }
            let _ = std::fs::remove_dir_all(containers.join(&name));
        }
        for name in dir_names(&self.paths.state.join("m")) {
            if short_known(&name) {
                continue;
            }
            // Named by the first 12 digits; the runtime knows the full id.
            tracing::info!(monitor = %name, "ending a monitor of no container");
            let full = self.runtime_ids().into_iter().find(|id| id.starts_with(&name));
            let client = crate::monitor::MonitorClient::new(&name, &self.paths.state.join("m").join(&name));
            let _ = tokio::time::timeout(PROBE_TIMEOUT, client.call(&Request::Kill { signal: 9, all: true })).await;
            if let Some(full) = full {
                self.end_unrecorded_run(&full).await;
            }
            let _ = std::fs::remove_dir_all(self.paths.state.join("m").join(&name));
        }
        for id in self.runtime_ids() {
            if !known(&id) {
                self.end_unrecorded_run(&id).await;
            }
        }
        let orphaned: Vec<String> = self
            .sandboxes
            .lock()
            .expect("sandboxes lock")
            .values()
            // A pod is there without containers too.
            .filter(|s| !s.is_pod() && !s.containers.iter().any(|c| known(c)))
            .map(|s| s.id.clone())
            .collect();
        for sandbox in orphaned {
            tracing::info!(%sandbox, "clearing a sandbox of no container");
            self.teardown_network(&sandbox).await;
            let _ = self.forget_sandbox(&sandbox);
        }
        self.clear_orphan_pins();
        self.clear_orphan_helpers();
        for name in dir_names(&self.paths.root.join("sandboxes")) {
            if self.sandbox(&name).is_none() {
                let _ = std::fs::remove_dir_all(self.paths.sandbox_dir(&name));
            }
        }
    }

    /// Namespaces pinned for sandboxes toted has no record of (a create or
    /// a removal cut short, records lost): unpinned, so the kernel frees
    /// them. Names start with the first 12 digits of the sandbox's id.
    fn clear_orphan_pins(&self) {
        let sandboxes: Vec<String> = self.sandboxes.lock().expect("sandboxes lock").keys().cloned().collect();
        for dir in [self.paths.state.join("netns"), self.paths.state.join("podns")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let short = name.split('-').next().unwrap_or_default();
                if short.len() == 12 && sandboxes.iter().any(|id| id.starts_with(short)) {
                    continue;
                }
                tracing::info!(pin = %entry.path().display(), "unpinning a namespace of no sandbox");
                if name.ends_with("-pid") {
                    kill_namespace_init(&entry.path());
                }
                if let Err(e) = crate::network::netns::remove(&entry.path()) {
                    tracing::warn!(pin = %entry.path().display(), "unpin: {e}");
                }
            }
        }
    }

    /// Network helpers of sandboxes toted has no record of (started, then
    /// toted died before recording the sandbox's network): killed by their
    /// pid files, named by the first 12 digits of the sandbox's id, as
    /// their namespaces are.
    fn clear_orphan_helpers(&self) {
        let sandboxes: Vec<String> = self.sandboxes.lock().expect("sandboxes lock").keys().cloned().collect();
        let Ok(entries) = std::fs::read_dir(self.paths.state.join("usernet")) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let short = name.split('.').next().unwrap_or_default().to_string();
            if short.len() == 12 && sandboxes.iter().any(|id| id.starts_with(&short)) {
                continue;
            }
            let files = crate::network::usernet::Files::at(&self.paths.state.join("usernet").join(&short));
            tracing::info!(pid_file = %files.pid.display(), "stopping a network helper of no sandbox");
            if let Err(e) = crate::network::usernet::stop(&files, &self.paths.state.join("netns").join(&short)) {
                tracing::warn!(pid_file = %files.pid.display(), "{e}");
            }
        }
    }

    /// The containers tote-shim keeps state for under toted's runtime root.
    fn runtime_ids(&self) -> Vec<String> {
        dir_names(&self.paths.runtime_root()).into_iter().filter(|n| is_container_id(n)).collect()
    }
}

/// Kills the PID 1 of the PID namespace pinned at `pin` (a pod's
/// `pod-init`, which toted started; the kernel then kills every process in
/// that namespace). Found by the namespace's inode among /proc's processes.
fn kill_namespace_init(pin: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(pinned) = std::fs::metadata(pin) else { return };
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let same = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .is_ok_and(|ns| ns.ino() == pinned.ino() && ns.dev() == pinned.dev());
        // Only the namespace's init: its own pid there is 1.
        let init = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
            status.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
        });
        if same && init {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

fn dir_names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// toted's ids: 64 lowercase hex digits.
fn is_container_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
