//! Named volumes: directories under `<root>/volumes/<name>/_data` that
//! outlive the containers using them, recorded in the metadata store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::containers::record::valid_name;
use crate::metadata::{Metadata, MetadataError, Table};
use crate::usage::Usage;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("invalid volume name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]+")]
    BadName(String),
    #[error("volume {name} is in use by container(s) {containers}")]
    InUse { name: String, containers: String },
    #[error("volume {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    /// Made for one container's `-v /path`; `rm -v` removes it.
    pub anonymous: bool,
}

pub struct Volumes {
    dir: PathBuf,
    meta: Arc<Metadata>,
}

impl Volumes {
    pub fn new(root: &Path, meta: Arc<Metadata>) -> Self {
        Self { dir: root.join("volumes"), meta }
    }

    /// `system df`'s row: every volume and its content, in use when
    /// `in_use` says so.
    pub fn disk_usage(&self, in_use: impl Fn(&str) -> bool) -> Result<Usage, VolumeError> {
        let mut usage = Usage::default();
        for record in self.list()? {
            usage.add(crate::usage::content_size(&self.mountpoint(&record.name)), in_use(&record.name));
        }
        Ok(usage)
    }

    /// Where a volume's data is.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    /// Creates the volume, or returns it when it exists (docker's `volume
    /// create` and `-v name:/path` both do that).
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<VolumeRecord, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::BadName(name.into()));
        }
        if let Some(existing) = self.meta.record::<VolumeRecord>(Table::Volumes, name)? {
            return Ok(existing);
        }
        let data = self.mountpoint(name);
        std::fs::create_dir_all(&data).map_err(|source| VolumeError::Io { path: data.clone(), source })?;
        let record = VolumeRecord { name: name.into(), created_at: tote_shim::state::now_rfc3339(), labels, anonymous };
        self.meta.put_record(Table::Volumes, name, &record)?;
        Ok(record)
    }

    pub fn get(&self, name: &str) -> Result<VolumeRecord, VolumeError> {
        self.meta.record(Table::Volumes, name)?.ok_or_else(|| VolumeError::NotFound(name.into()))
    }

    pub fn list(&self) -> Result<Vec<VolumeRecord>, VolumeError> {
        let mut all: Vec<VolumeRecord> = self.meta.records(Table::Volumes)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Removes a volume no container uses (`users` are the ones that do).
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), VolumeError> {
        self.get(name)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse { name: name.into(), containers: users.join(", ") });
        }
        let dir = self.dir.join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(VolumeError::Io { path: dir, source: e }),
            _ => {}
        }
        self.meta.remove_record(Table::Volumes, name)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_created_once_listed_and_removed_when_unused() {
        let dir = std::env::temp_dir().join(format!("tote-volumes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = Arc::new(Metadata::open(&dir.join("meta.db")).unwrap());
        let volumes = Volumes::new(&dir, meta);
        let made = volumes.create("data", BTreeMap::new(), false).unwrap();
        std::fs::write(volumes.mountpoint("data").join("f"), "kept").unwrap();
        assert_eq!(volumes.create("data", BTreeMap::new(), false).unwrap(), made);
        assert_eq!(std::fs::read_to_string(volumes.mountpoint("data").join("f")).unwrap(), "kept");
        assert_eq!(volumes.list().unwrap().len(), 1);
        assert!(volumes.create("../x", BTreeMap::new(), false).unwrap_err().to_string().contains("../x"));
        let busy = volumes.remove("data", &["web".into()]).unwrap_err().to_string();
        assert!(busy.contains("in use") && busy.contains("web"), "{busy}");
        volumes.remove("data", &[]).unwrap();
        assert!(!volumes.mountpoint("data").exists());
        assert!(volumes.get("data").unwrap_err().to_string().contains("no such volume"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
