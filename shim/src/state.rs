//! Container state under `--root`: one directory per container holding
//! `state.json` (what tote-shim needs to manage it later) and, until it is
//! started, the `exec.fifo` its init waits on.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.'")]
    InvalidId(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, source }
}

/// A container id must be usable as a directory and cgroup name.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok { Ok(()) } else { Err(StateError::InvalidId(id.to_string())) }
}

/// The lifecycle states of the runtime spec, plus runc's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.pad(&text)
    }
}

/// What tote-shim remembers about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The init's pid in tote-shim's pid namespace.
    pub pid: i32,
    /// The init's start time (clock ticks after boot), so a recycled pid
    /// is never mistaken for the container.
    pub pid_start: u64,
    pub created: String,
    pub cgroup: Option<PathBuf>,
    pub owner: u32,
    /// The config as created, so exec and delete do not depend on the
    /// bundle staying unchanged.
    pub spec: Spec,
}

impl Record {
    pub fn annotations(&self) -> HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }
}

/// The directory of all containers.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Claims `id`: creating its directory is atomic, so two creates of the
    /// same id cannot both succeed.
    pub fn reserve(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(&self.root).map_err(io_err(&self.root))?;
        let dir = self.dir(id);
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Err(StateError::Exists(id.to_string())),
            Err(err) => Err(io_err(&dir)(err)),
        }
    }

    pub fn load(&self, id: &str) -> Result<Record, StateError> {
        validate_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(StateError::NotFound(id.to_string())),
            Err(err) => return Err(io_err(&path)(err)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the record atomically: a crash leaves the old one or the new one.
    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        let dir = self.dir(&record.id);
        let tmp = dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec(record).map_err(|source| StateError::Corrupt { path: tmp.clone(), source })?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        let path = dir.join(STATE_FILE);
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io_err(&dir)(err)),
            _ => Ok(()),
        }
    }

    /// Ids of every container with state here.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(err) => return Err(io_err(&self.root)(err)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// The two fields of /proc/<pid>/stat that tell whether a pid is still the
/// process we started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // The command name may contain spaces and parentheses; fields resume
    // after the last ')'. What follows is field 3 (state) onwards.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat { state: fields.first()?.chars().next()?, start_time: fields.get(19)?.parse().ok()? })
}

/// Whether the process recorded as `pid`/`start` is alive (not a zombie).
pub fn is_alive(pid: i32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|s| s.start_time == start && !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Now, as RFC 3339 in UTC with nanoseconds, like runc's `created`.
pub fn now_rfc3339() -> String {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_nanos())
}

/// A time as RFC 3339 in UTC with nanoseconds.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let time = i64::try_from(secs).ok().and_then(|secs| chrono::DateTime::from_timestamp(secs, nanos));
    time.unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["abc", "a.b_c-d+e", "0123456789abcdef"] {
            validate_id(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "../x", "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn proc_stat_survives_odd_command_names() {
        let line = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_proc_stat(line), Some(ProcStat { state: 'S', start_time: 123456 }));
    }

    #[test]
    fn our_own_process_is_alive() {
        let me = std::process::id() as i32;
        let stat = proc_stat(me).unwrap();
        assert!(is_alive(me, stat.start_time));
        assert!(!is_alive(me, stat.start_time + 1));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn an_id_can_be_reserved_once() {
        let root = std::env::temp_dir().join(format!("tote-state-test-{}", std::process::id()));
        let store = StateStore::new(&root);
        store.reserve("one").unwrap();
        assert!(matches!(store.reserve("one"), Err(StateError::Exists(_))));
        assert!(matches!(store.load("one"), Err(StateError::NotFound(_))));
        assert!(matches!(store.load("two"), Err(StateError::NotFound(_))));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
