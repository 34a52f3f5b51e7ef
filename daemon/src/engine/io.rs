//! A container's streams: attach, exec and its logs.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tote_shim::monitor::log::{Record, log_files, parse_record};
use tote_shim::monitor::protocol::{FrameKind, Request};

use super::{Engine, EngineError, Entry, PendingAttach};
use crate::containers::record::Status;
use crate::containers::spec;
use crate::monitor::Stream;

/// An attach that is live now, or will be once the container starts.
pub enum Attached {
    Now(Stream),
    AtStart(oneshot::Receiver<Result<Stream, EngineError>>),
}

#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub tty: bool,
    pub stdin: bool,
    pub privileged: bool,
    pub size: Option<(u16, u16)>,
}

/// What [`Engine::exec_sync`] collected.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

fn append_capped(buffer: &mut Vec<u8>, data: &[u8], max: usize) {
    let room = max.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Records from the end; `None` for all.
    pub tail: Option<usize>,
    /// RFC 3339 bounds, normalised by [`normalise_time`].
    pub since: Option<String>,
    pub until: Option<String>,
    pub stdout: bool,
    pub stderr: bool,
}

impl Engine {
    pub async fn attach(&self, reference: &str, stdin: bool) -> Result<Attached, EngineError> {
        let entry = self.entry(reference)?;
        let record = entry.snapshot();
        if stdin && !record.settings.open_stdin {
            return Err(EngineError::Invalid(format!(
                "container {} was created without -i: its stdin is closed",
                record.name
            )));
        }
        match record.state.status() {
            Status::Running | Status::Paused => {
                Ok(Attached::Now(self.monitor_client(&record.id).stream(&Request::Attach { stdin }).await?))
            }
            Status::Dead => Err(EngineError::Conflict(format!("container {} is being removed", record.id))),
            _ => {
                let (reply, receiver) = oneshot::channel();
                entry.pending_attach.lock().expect("attach lock").push(PendingAttach { stdin, reply });
                Ok(Attached::AtStart(receiver))
            }
        }
    }

    pub async fn exec(&self, reference: &str, request: ExecRequest) -> Result<Stream, EngineError> {
        let entry = self.entry(reference)?;
        let record = entry.snapshot();
        match record.state.status() {
            Status::Running => {}
            Status::Paused => {
                return Err(EngineError::Conflict(format!(
                    "Container {} is paused, unpause the container before exec",
                    record.id
                )));
            }
            _ => return Err(EngineError::Conflict(format!("Container {} is not running", record.id))),
        }
        if request.cmd.is_empty() {
            return Err(EngineError::Invalid("exec needs a command".into()));
        }
        let path = self.paths.bundle(&record.id).join("config.json");
        let oci = oci_spec::runtime::Spec::load(&path)
            .map_err(|e| EngineError::Internal(format!("{}: {e}", path.display())))?;
        let base =
            oci.process().clone().ok_or_else(|| EngineError::Internal(format!("{} has no process", path.display())))?;
        let user = if request.user.is_empty() {
            None
        } else {
            // Off the async workers: the files are the container's to make
            // slow (see `spec::resolve_user`).
            let (rootfs, user) = (self.paths.rootfs(&record.id), request.user.clone());
            let resolved = tokio::task::spawn_blocking(move || spec::resolve_user(&rootfs, &user))
                .await
                .map_err(|e| EngineError::Internal(format!("resolve the user: {e}")))??;
            // In toted's own user namespace unless a pod has one of its own.
            let pod_userns = self.sandbox(&record.sandbox).and_then(|s| s.pod).is_some_and(|p| p.userns.is_some());
            if let (crate::privilege::Privilege::Rootless(rootless), false) = (&self.config.privilege, pod_userns) {
                let asked = format!("exec --user {}", request.user);
                spec::check_rootless_ids(&asked, resolved.uid, resolved.gid, &resolved.additional_gids, rootless)?;
            }
            Some(resolved)
        };
        let process = spec::exec_process(
            &base,
            request.cmd.clone(),
            &request.env,
            user,
            &request.working_dir,
            request.tty,
            request.privileged,
        )?;
        let mut stream = self
            .monitor_client(&record.id)
            .stream(&Request::Exec { process: Box::new(process), stdin: request.stdin })
            .await?;
        if let (true, Some((rows, cols))) = (request.tty, request.size) {
            let mut size = rows.to_be_bytes().to_vec();
            size.extend_from_slice(&cols.to_be_bytes());
            let _ = stream.writer.send(FrameKind::Resize, &size).await;
        }
        self.events.publish(
            "container",
            &format!("exec_start: {}", request.cmd.join(" ")),
            &record.id,
            &[("name", &record.name)],
        );
        Ok(stream)
    }

    /// Runs a command in the container to its end and returns its output
    /// (each stream cut at `max_output` bytes) and exit code: the CRI's
    /// ExecSync. Past `timeout` the process is killed and the result is
    /// [`EngineError::Timeout`].
    pub async fn exec_sync(
        &self,
        reference: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
        max_output: usize,
    ) -> Result<ExecOutput, EngineError> {
        let request = ExecRequest { cmd, ..ExecRequest::default() };
        let stream = self.exec(reference, request).await?;
        let pid = stream.pid;
        let mut reader = stream.reader;
        // Kept open to the end: the monitor closes the process's stdin
        // only when asked, and an exec without stdin gets /dev/null.
        let _writer = stream.writer;
        let mut output = ExecOutput::default();
        let collect = async {
            loop {
                match reader.next().await {
                    Ok(Some((FrameKind::Stdout, data))) => append_capped(&mut output.stdout, &data, max_output),
                    Ok(Some((FrameKind::Stderr, data))) => append_capped(&mut output.stderr, &data, max_output),
                    Ok(Some((FrameKind::Exit, data))) => {
                        let exit: tote_shim::monitor::protocol::ExitInfo = serde_json::from_slice(&data)
                            .map_err(|e| EngineError::Internal(format!("the monitor's exit frame: {e}")))?;
                        return Ok(exit.code);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(EngineError::Internal("the monitor closed the exec stream before its exit".into()));
                    }
                    Err(e) => return Err(EngineError::Internal(format!("exec stream: {e}"))),
                }
            }
        };
        let code = match timeout {
            None => collect.await?,
            Some(limit) => match tokio::time::timeout(limit, collect).await {
                Ok(code) => code?,
                Err(_) => {
                    // The process this exec started, by the pid the monitor
                    // gave for it.
                    if pid > 0 {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                    }
                    return Err(EngineError::Timeout(format!(
                        "command timed out after {}s and was killed",
                        limit.as_secs_f64()
                    )));
                }
            },
        };
        output.exit_code = code;
        Ok(output)
    }

    /// Has the container's monitor open its log file again (the CRI's
    /// ReopenContainerLog, after the kubelet renamed the file).
    pub async fn reopen_log(&self, reference: &str) -> Result<(), EngineError> {
        let record = self.entry(reference)?.snapshot();
        if !record.state.status().is_live() {
            return Err(EngineError::Conflict(format!("container {} is not running", record.id)));
        }
        Ok(self.monitor_client(&record.id).call_ok(&Request::ReopenLog).await?)
    }

    /// Resizes a running container's terminal.
    pub async fn resize(&self, reference: &str, rows: u16, cols: u16) -> Result<(), EngineError> {
        let record = self.entry(reference)?.snapshot();
        Ok(self.monitor_client(&record.id).call_ok(&Request::Resize { rows, cols }).await?)
    }

    /// The container's log records, oldest first, then (with `follow`) new
    /// ones until the container stops.
    pub fn logs(&self, reference: &str, options: LogOptions) -> Result<mpsc::Receiver<Record>, EngineError> {
        let entry = self.entry(reference)?;
        let path = self.paths.log(&entry.snapshot().id);
        let (sender, receiver) = mpsc::channel(256);
        tokio::task::spawn_blocking(move || read_logs(&entry, &path, &options, &sender));
        Ok(receiver)
    }
}

fn wanted(record: &Record, options: &LogOptions) -> bool {
    let stream_ok = match record.stream {
        tote_shim::monitor::log::Stream::Stdout => options.stdout,
        tote_shim::monitor::log::Stream::Stderr => options.stderr,
    };
    stream_ok
        && options.since.as_ref().is_none_or(|since| record.time.as_str() >= since.as_str())
        && options.until.as_ref().is_none_or(|until| record.time.as_str() <= until.as_str())
}

fn read_logs(entry: &Arc<Entry>, path: &Path, options: &LogOptions, sender: &mpsc::Sender<Record>) {
    let mut records: Vec<Record> = Vec::new();
    let files = log_files(path);
    for file in &files {
        if let Ok(file) = std::fs::File::open(file) {
            let mut reader = BufReader::new(file);
            read_lines(&mut reader, |r| {
                if wanted(&r, options) {
                    records.push(r);
                }
            });
        }
    }
    let skip = options.tail.map_or(0, |tail| records.len().saturating_sub(tail));
    for record in records.into_iter().skip(skip) {
        if sender.blocking_send(record).is_err() {
            return;
        }
    }
    if options.follow {
        follow(entry, path, options, sender);
    }
}

fn read_lines(reader: &mut impl BufRead, mut each: impl FnMut(Record)) -> u64 {
    let mut consumed = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(n) if n > 0 && line.ends_with(b"\n") => {
                consumed += n as u64;
                if let Some(record) = parse_record(&line) {
                    each(record);
                }
            }
            // A line still being written is read again next time.
            _ => return consumed,
        }
    }
}

/// Follows the current log file by polling, across rotations.
fn follow(entry: &Arc<Entry>, path: &Path, options: &LogOptions, sender: &mpsc::Sender<Record>) {
    let open = |path: &PathBuf| std::fs::File::open(path).ok().map(|f| (f.metadata().map(|m| m.ino()).unwrap_or(0), f));
    let path = path.to_path_buf();
    let mut current = open(&path);
    let mut offset = current.as_ref().and_then(|(_, f)| f.metadata().ok()).map_or(0, |m| m.len());
    loop {
        let live = {
            let record = entry.record.lock().expect("record lock");
            record.state.status().is_live() || record.state.status() == Status::Restarting
        };
        let rotated = std::fs::metadata(&path).map(|m| m.ino()).ok() != current.as_ref().map(|(ino, _)| *ino);
        if let Some((_, file)) = &mut current {
            let _ = file.seek(SeekFrom::Start(offset));
            let mut reader = BufReader::new(&*file);
            let mut closed = false;
            offset += read_lines(&mut reader, |r| {
                if wanted(&r, options) && sender.blocking_send(r).is_err() {
                    closed = true;
                }
            });
            if closed {
                return;
            }
        }
        if rotated {
            current = open(&path);
            offset = 0;
            continue;
        }
        if !live || sender.is_closed() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `--since`/`--until` value as a log timestamp: RFC 3339 (`Z`), unix
/// seconds (with a fraction), or a duration before now (`10m`, `1h30m`).
pub fn normalise_time(text: &str, now: std::time::SystemTime) -> Result<String, EngineError> {
    let bad = || {
        EngineError::Invalid(format!(
            "invalid time {text:?}: use RFC 3339 (2026-01-02T15:04:05Z), unix seconds or a duration like 10m"
        ))
    };
    let since_epoch = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    if let Ok(seconds) = text.parse::<f64>() {
        let duration = Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        return Ok(tote_shim::state::rfc3339(duration.as_secs(), duration.subsec_nanos()));
    }
    if let Some(duration) = parse_duration(text) {
        let at = since_epoch.checked_sub(duration).ok_or_else(bad)?;
        return Ok(tote_shim::state::rfc3339(at.as_secs(), at.subsec_nanos()));
    }
    parse_rfc3339(text).map(|(secs, nanos)| tote_shim::state::rfc3339(secs, nanos)).ok_or_else(bad)
}

fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut number = String::new();
    let mut seen = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += value * unit;
        seen = true;
    }
    (seen && number.is_empty()).then(|| Duration::from_secs_f64(total))
}

/// Seconds and nanoseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
pub fn parse_rfc3339(text: &str) -> Option<(u64, u32)> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let nanos: u32 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").get(..9)?.parse().ok()? };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some((u64::try_from(secs).ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_normalise_to_log_timestamps() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(normalise_time("2027-01-15T08:00:00Z", now).unwrap(), "2027-01-15T08:00:00.000000000Z");
        assert_eq!(normalise_time("2027-01-15T08:00:00.5Z", now).unwrap(), "2027-01-15T08:00:00.500000000Z");
        assert_eq!(normalise_time("1800000000", now).unwrap(), tote_shim::state::rfc3339(1_800_000_000, 0));
        assert_eq!(normalise_time("10m", now).unwrap(), tote_shim::state::rfc3339(1_800_000_000 - 600, 0));
        assert_eq!(normalise_time("1h30m", now).unwrap(), tote_shim::state::rfc3339(1_800_000_000 - 5400, 0));
        assert!(normalise_time("yesterday", now).unwrap_err().to_string().contains("yesterday"));
        assert!(normalise_time("2027-13-01T00:00:00Z", now).is_err());
    }
}
