//! Live restore: a daemon that starts finds its containers' monitors still
//! running and supervises them again; exits that happened while it was
//! down are read from the monitors' exit records.

use std::sync::Arc;

use super::Engine;
use crate::containers::record::{RestartPolicy, Status};

impl Engine {
    /// Reconnects to every container after a daemon (re)start. Returns how
    /// many were found running.
    pub async fn restore(self: &Arc<Self>) -> usize {
        self.forget_removed();
        let mut running = 0;
        for entry in self.entries() {
            let record = entry.snapshot();
            match record.state.status() {
                Status::Running | Status::Paused => match self.ending_without_monitor(&entry) {
                    None => {
                        running += 1;
                        let engine = self.clone();
                        let entry = entry.clone();
                        tokio::spawn(async move { engine.supervise(entry, None).await });
                    }
                    Some(ending) => {
                        tracing::info!(container = %record.id, "exited while toted was down");
                        self.on_exit(&entry, ending).await;
                    }
                },
                Status::Restarting => self.schedule_restart(entry.clone()),
                Status::Dead => {
                    let _op = entry.op.lock().await;
                    if let Err(e) = self.remove_locked(&entry, true, false).await {
                        tracing::warn!(container = %record.id, "finish removing: {e}");
                    }
                }
                Status::Exited => {
                    // As docker does when it starts: `always` containers run
                    // again, `unless-stopped` ones unless a user stopped them.
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
                Status::Created => {}
            }
        }
        running
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
            let _ = self.forget_sandbox(&record.sandbox);
            self.containers.lock().expect("containers lock").remove(&record.id);
        }
    }
}
