//! What teardown needs to undo an attachment, one JSON file per container
//! in `<state_dir>/results/`. It is written before the first plugin runs
//! (so a crash midway still leaves something to DEL) and again with the
//! final result; always atomically, so a reader sees one or the other.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::NetworkError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CachedAttachment {
    pub container_id: String,
    pub if_name: String,
    /// The conflist ADD ran, not today's config: DEL must undo what was done.
    pub conflist: Value,
    /// The runtime config (`portMappings`) plugins were given.
    pub runtime_config: Value,
    /// The CNI_ARGS ADD was run with: DEL gets the same.
    #[serde(default)]
    pub cni_args: Vec<(String, String)>,
    /// Whether `lo` was brought up with the loopback plugin (as versions
    /// before `netns::create` did it themselves): DEL must run it too.
    #[serde(default)]
    pub loopback: bool,
    /// The final ADD result; `None` while ADD is under way.
    pub result: Option<Value>,
}

pub(crate) fn path(state_dir: &Path, container_id: &str) -> PathBuf {
    state_dir.join("results").join(format!("{container_id}.json"))
}

pub(crate) fn load(path: &Path) -> Result<Option<CachedAttachment>, NetworkError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NetworkError::io("read", path)(e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| NetworkError::Cache { path: path.to_path_buf(), source })
}

/// Writes `entry` to `path` by way of a synced temporary file and a rename.
pub(crate) fn store(path: &Path, entry: &CachedAttachment) -> Result<(), NetworkError> {
    let dir = path.parent().expect("cache files live in results/");
    std::fs::create_dir_all(dir).map_err(NetworkError::io("create", dir))?;
    let json = serde_json::to_vec_pretty(entry).map_err(|source| NetworkError::Cache { path: path.into(), source })?;
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let written =
        write_synced(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path).map_err(NetworkError::io("rename", &tmp)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself is durable only once the directory is synced.
    File::open(dir).and_then(|d| d.sync_all()).map_err(NetworkError::io("sync", dir))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), NetworkError> {
    let mut file = File::create(path).map_err(NetworkError::io("create", path))?;
    file.write_all(bytes).map_err(NetworkError::io("write", path))?;
    file.sync_all().map_err(NetworkError::io("sync", path))
}

pub(crate) fn remove(path: &Path) -> Result<(), NetworkError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetworkError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_loads_and_removes() {
        let dir = std::env::temp_dir().join(format!("tote-cache-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = path(&dir, "c1");
        assert_eq!(load(&file).unwrap(), None);
        let entry = CachedAttachment {
            container_id: "c1".into(),
            if_name: "eth0".into(),
            conflist: serde_json::json!({"name": "tote"}),
            runtime_config: serde_json::json!({}),
            cni_args: vec![("K8S_POD_NAME".into(), "web".into())],
            loopback: true,
            result: None,
        };
        store(&file, &entry).unwrap();
        assert_eq!(load(&file).unwrap(), Some(entry));
        assert_eq!(std::fs::read_dir(dir.join("results")).unwrap().count(), 1, "no temporary file is left");
        remove(&file).unwrap();
        remove(&file).unwrap();
        assert_eq!(load(&file).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
