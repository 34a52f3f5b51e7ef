//! The exit record: how the container ended, written durably before the
//! monitor goes away so that a daemon that was down at the time learns it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::protocol::ExitInfo;

pub const EXIT_FILE: &str = "exit.json";

#[derive(Debug, thiserror::Error)]
pub enum ExitFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an exit record: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExitFileError + '_ {
    move |source| ExitFileError::Io { path: path.to_path_buf(), source }
}

/// Writes `dir/exit.json` so that it is either absent or complete, even
/// across a power cut: temporary file, fsync, rename, fsync the directory.
pub fn write(dir: &Path, exit: &ExitInfo) -> Result<(), ExitFileError> {
    let path = dir.join(EXIT_FILE);
    let tmp = dir.join(".exit.json.tmp");
    let text = serde_json::to_vec(exit).expect("exit info serialises");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&text).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The exit record in `dir`, if the container has ended.
pub fn read(dir: &Path) -> Result<Option<ExitInfo>, ExitFileError> {
    let path = dir.join(EXIT_FILE);
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|source| ExitFileError::Malformed { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ExitFileError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_records_round_trip_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("tote-exit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read(&dir).unwrap().is_none());
        let exit = ExitInfo { code: 137, signal: Some(9), oom_killed: true, finished_at: "now".into() };
        write(&dir, &exit).unwrap();
        assert_eq!(read(&dir).unwrap(), Some(exit));
        assert!(!dir.join(".exit.json.tmp").exists());
        std::fs::write(dir.join(EXIT_FILE), "{").unwrap();
        let err = read(&dir).unwrap_err().to_string();
        assert!(err.contains("exit.json") && err.contains("not an exit record"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
