//! Learning how a container ended, and what follows: the record, events,
//! the network released, then a restart or an automatic removal.

use std::sync::Arc;
use std::time::Duration;

use tote_shim::monitor::exit;
use tote_shim::monitor::protocol::{ExitInfo, Reply, Request};

use super::{Engine, Entry};
use crate::containers::record::Status;
use crate::monitor::Pending;

/// What became of a container whose monitor is gone.
pub(crate) enum Ending {
    Exited(ExitInfo),
    /// The monitor died without recording an exit.
    MonitorLost {
        monitor_pid: i32,
    },
}

impl Engine {
    /// Waits for the container's exit through its monitor, then handles it.
    /// `waiting` is a Wait sent already: one sent before the container
    /// starts gets its answer however soon the container ends (a monitor
    /// that has answered everyone exits, and asking it then finds nobody).
    pub(crate) async fn supervise(self: Arc<Self>, entry: Arc<Entry>, mut waiting: Option<Pending>) {
        let record = entry.snapshot();
        let client = self.monitor_client(&record.id);
        let ending = loop {
            let replied = match waiting.take() {
                Some(pending) => pending.reply().await,
                None => client.call(&Request::Wait).await,
            };
            match replied {
                Ok(Reply::Exited { exit }) => break Ending::Exited(exit),
                _ => {
                    // The connection broke: the monitor is gone (its exit
                    // record says how the container ended) or was busy.
                    if let Some(ending) = self.ending_without_monitor(&entry) {
                        break ending;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        self.on_exit(&entry, ending).await;
    }

    /// The ending of a container whose monitor no longer runs, or `None`
    /// while it still does.
    pub(crate) fn ending_without_monitor(&self, entry: &Entry) -> Option<Ending> {
        let record = entry.snapshot();
        if tote_shim::state::is_alive(record.state.monitor_pid, record.state.monitor_start) {
            return None;
        }
        match exit::read(&self.paths.monitor_dir(&record.id)) {
            Ok(Some(exit)) => Some(Ending::Exited(exit)),
            Ok(None) => Some(Ending::MonitorLost { monitor_pid: record.state.monitor_pid }),
            Err(e) => {
                tracing::warn!(container = %record.id, "{e}");
                Some(Ending::MonitorLost { monitor_pid: record.state.monitor_pid })
            }
        }
    }

    pub(crate) async fn on_exit(self: &Arc<Self>, entry: &Arc<Entry>, ending: Ending) {
        let record = entry.snapshot();
        if !record.state.status().is_live() {
            return;
        }
        let id = record.id.clone();
        let (code, oom, finished, error) = match ending {
            Ending::Exited(exit) => (exit.code, exit.oom_killed, exit.finished_at, String::new()),
            Ending::MonitorLost { monitor_pid } => {
                // Nothing may outlive its monitor: the container's processes
                // and cgroup go too.
                let runtime = self.runtime();
                let cleanup = tokio::task::spawn_blocking(move || runtime.delete(&id, true)).await;
                if let Ok(Err(e)) = cleanup {
                    tracing::warn!(container = %record.id, "clean up after the lost monitor: {e}");
                }
                let message = format!(
                    "the container's monitor (tote-shim, pid {monitor_pid}) died without recording an exit; the container was killed"
                );
                tracing::warn!(container = %record.id, "{message}");
                (255, false, tote_shim::state::now_rfc3339(), message)
            }
        };
        let id = record.id.clone();
        // Taken before the exit shows: whoever sees the container exited
        // and starts it again waits for this run's network to be released.
        let network_lock = self.network_lock(&record.sandbox);
        let network = network_lock.lock().await;
        let updated = self.update(entry, |r| {
            r.state.status = Some(Status::Exited);
            r.state.exit_code = code;
            r.state.oom_killed = oom;
            r.state.finished_at = Some(finished);
            r.state.error = error;
            r.state.pid = 0;
        });
        if let Err(e) = updated {
            tracing::error!(container = %id, "record the exit: {e}");
        }
        if oom {
            self.events.publish("container", "oom", &id, &[("name", &record.name)]);
        }
        self.events.publish("container", "die", &id, &[("name", &record.name), ("exitCode", &code.to_string())]);
        tracing::debug!(container = %id, code, "exited");
        if self.owns_network(&record) {
            tokio::task::block_in_place(|| self.release_network(&record.sandbox));
        }
        drop(network);
        self.after_exit(entry).await;
    }

    /// `--rm` removes; a restart policy may start it again.
    async fn after_exit(self: &Arc<Self>, entry: &Arc<Entry>) {
        // A removal under way wins over `--rm` and over restart policies.
        if entry.is_removing() {
            return;
        }
        let record = entry.snapshot();
        if record.settings.auto_remove {
            let engine = self.clone();
            let entry = entry.clone();
            // Not under this task: remove may wait for the operation lock a
            // stop holds while it waits for this very exit.
            tokio::spawn(async move {
                let _op = entry.op.lock().await;
                if let Err(e) = engine.remove_locked(&entry, true, true).await {
                    tracing::warn!(container = %entry.snapshot().id, "remove after exit: {e}");
                }
            });
            return;
        }
        let state = &record.state;
        if !record.settings.restart.restarts(state.exit_code, state.restart_count, state.manually_stopped) {
            return;
        }
        self.schedule_restart(entry.clone());
    }

    /// Starts the container again after docker's back-off: 100 ms, doubling
    /// with each restart in a row, at most a minute.
    pub(crate) fn schedule_restart(self: &Arc<Self>, entry: Arc<Entry>) {
        if entry.is_removing() {
            return;
        }
        let count = entry.snapshot().state.restart_count;
        let delay = Duration::from_millis(100u64.saturating_mul(1 << count.min(10))).min(Duration::from_secs(60));
        if self.update(&entry, |r| r.state.status = Some(Status::Restarting)).is_err() {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _op = entry.op.lock().await;
            if entry.is_removing() {
                return;
            }
            let record = entry.snapshot();
            // Removed, stopped or started by someone meanwhile.
            if record.state.status() != Status::Restarting || record.state.manually_stopped {
                if record.state.status() == Status::Restarting {
                    let _ = engine.update(&entry, |r| r.state.status = Some(Status::Exited));
                }
                return;
            }
            let _ = engine.update(&entry, |r| r.state.restart_count += 1);
            if let Err(e) = engine.start_locked(&entry).await {
                tracing::warn!(container = %record.id, "restart: {e}");
                let _ = engine.update(&entry, |r| r.state.status = Some(Status::Exited));
            }
        });
    }
}
