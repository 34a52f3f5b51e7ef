//! Image and snapshot records in an embedded, crash-safe store (redb):
//! a write either lands whole or not at all, so a crash never leaves an
//! image pointing at half its layers.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// Tables of the daemon's own records (JSON by key), beside the images'.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    Containers,
    Sandboxes,
    Volumes,
}

impl Table {
    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Containers => TableDefinition::new("containers"),
            Table::Sandboxes => TableDefinition::new("sandboxes"),
            Table::Volumes => TableDefinition::new("volumes"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("metadata store {path}: record {key:?} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One layer of an image as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The blob as distributed (usually compressed).
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
    /// This layer and all beneath it: the snapshot that holds it unpacked.
    pub chain_id: Digest,
}

/// An image name and what it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Canonical name, `registry/repository:tag` or `registry/repository@digest`.
    pub name: String,
    /// What the name resolved to: an index or a manifest.
    pub target: Digest,
    pub target_media_type: String,
    /// The platform's manifest.
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    pub platform: String,
    /// The image's own creation time, from its config.
    pub created: Option<String>,
    /// When Tote stored it.
    pub stored_at: String,
}

impl ImageRecord {
    /// The bytes the image's blobs take: config and layers as distributed.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    pub fn top_chain_id(&self) -> Option<&Digest> {
        self.layers.last().map(|l| &l.chain_id)
    }
}

/// An unpacked layer on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    /// The directory name under `snapshots/`: short, so many layers fit in
    /// one overlayfs mount.
    pub id: u64,
    pub diff_id: Digest,
    /// Bytes of file content unpacked.
    pub size: u64,
}

pub struct Metadata {
    db: Database,
    path: PathBuf,
}

impl Metadata {
    pub fn open(path: &Path) -> Result<Self, MetadataError> {
        // The records are small and few: a small page cache keeps toted's
        // memory small (redb's default lets the cache grow to 1 GiB).
        let db =
            Database::builder().set_cache_size(2 << 20).create(path).map_err(|e| Self::store_err(path, e.into()))?;
        let meta = Self { db, path: path.to_path_buf() };
        // Create the tables so readers never see them missing.
        meta.write(|txn| {
            txn.open_table(IMAGES)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(COUNTERS)?;
            for table in [Table::Containers, Table::Sandboxes, Table::Volumes] {
                txn.open_table(table.definition())?;
            }
            Ok(())
        })?;
        Ok(meta)
    }

    fn store_err(path: &Path, source: redb::Error) -> MetadataError {
        MetadataError::Store { path: path.to_path_buf(), source: Box::new(source) }
    }

    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>) -> Result<T, MetadataError> {
        self.write_with(true, f)
    }

    /// A write that is on disk when it returns (`durable`), or one that
    /// reaches the disk with the next durable write: cheaper (no fsync), and
    /// after a crash the store is as of the last durable write.
    fn write_with<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, MetadataError> {
        let err = |e: redb::Error| Self::store_err(&self.path, e);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(|e| err(redb::Error::from(e)))?;
        }
        let value = f(&txn).map_err(err)?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(value)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, MetadataError> {
        let err = |e: redb::Error| Self::store_err(&self.path, e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(table).map_err(|e| err(e.into()))?;
        let Some(value) = table.get(key).map_err(|e| err(e.into()))? else { return Ok(None) };
        serde_json::from_slice(value.value()).map(Some).map_err(|source| MetadataError::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            source,
        })
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>, MetadataError> {
        let err = |e: redb::Error| Self::store_err(&self.path, e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(table).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err(e.into()))? {
            let (key, value) = entry.map_err(|e| err(e.into()))?;
            out.push(serde_json::from_slice(value.value()).map_err(|source| MetadataError::Corrupt {
                path: self.path.clone(),
                key: key.value().to_string(),
                source,
            })?);
        }
        Ok(out)
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, MetadataError> {
        self.get(IMAGES, name)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, MetadataError> {
        self.all(IMAGES)
    }

    pub fn put_image(&self, image: &ImageRecord) -> Result<(), MetadataError> {
        let bytes = serde_json::to_vec(image).expect("image record serialises");
        self.write(|txn| {
            txn.open_table(IMAGES)?.insert(image.name.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Removes the name; returns whether it existed.
    pub fn remove_image(&self, name: &str) -> Result<bool, MetadataError> {
        self.write(|txn| Ok(txn.open_table(IMAGES)?.remove(name)?.is_some()))
    }

    pub fn snapshot(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>, MetadataError> {
        self.get(SNAPSHOTS, &chain_id.to_string())
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, MetadataError> {
        self.all(SNAPSHOTS)
    }

    pub fn put_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), MetadataError> {
        let bytes = serde_json::to_vec(snapshot).expect("snapshot record serialises");
        let key = snapshot.chain_id.to_string();
        self.write(|txn| {
            txn.open_table(SNAPSHOTS)?.insert(key.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    pub fn remove_snapshot(&self, chain_id: &Digest) -> Result<(), MetadataError> {
        let key = chain_id.to_string();
        self.write(|txn| {
            txn.open_table(SNAPSHOTS)?.remove(key.as_str())?;
            Ok(())
        })
    }

    pub fn record<T: for<'de> Deserialize<'de>>(&self, table: Table, key: &str) -> Result<Option<T>, MetadataError> {
        self.get(table.definition(), key)
    }

    pub fn records<T: for<'de> Deserialize<'de>>(&self, table: Table) -> Result<Vec<T>, MetadataError> {
        self.all(table.definition())
    }

    /// Writes a record; it is on disk when this returns.
    pub fn put_record<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), MetadataError> {
        self.put_record_with(true, table, key, value)
    }

    /// Writes a record, durably or not (see `write_with`).
    pub fn put_record_with<T: Serialize>(
        &self,
        durable: bool,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<(), MetadataError> {
        let bytes = serde_json::to_vec(value).expect("records serialise");
        self.write_with(durable, |txn| {
            txn.open_table(table.definition())?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    pub fn remove_record(&self, table: Table, key: &str) -> Result<bool, MetadataError> {
        self.remove_record_with(true, table, key)
    }

    pub fn remove_record_with(&self, durable: bool, table: Table, key: &str) -> Result<bool, MetadataError> {
        self.write_with(durable, |txn| Ok(txn.open_table(table.definition())?.remove(key)?.is_some()))
    }

    /// The next value of a named counter (snapshot directory ids).
    pub fn next_id(&self, counter: &str) -> Result<u64, MetadataError> {
        self.write(|txn| {
            let mut table = txn.open_table(COUNTERS)?;
            let next = table.get(counter)?.map_or(1, |v| v.value() + 1);
            table.insert(counter, next)?;
            Ok(next)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
    }

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("tote-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.db");
        let image = ImageRecord {
            name: "docker.io/library/busybox:latest".into(),
            target: digest(1),
            target_media_type: crate::manifest::OCI_INDEX.into(),
            manifest: digest(2),
            config: digest(3),
            layers: vec![LayerRecord {
                digest: digest(4),
                media_type: "x".into(),
                size: 10,
                diff_id: digest(5),
                chain_id: digest(5),
            }],
            platform: "linux/amd64".into(),
            created: None,
            stored_at: "now".into(),
        };
        {
            let meta = Metadata::open(&path).unwrap();
            meta.put_image(&image).unwrap();
            assert_eq!(meta.next_id("snapshot").unwrap(), 1);
            assert_eq!(meta.next_id("snapshot").unwrap(), 2);
        }
        let meta = Metadata::open(&path).unwrap();
        assert_eq!(meta.image(&image.name).unwrap(), Some(image.clone()));
        assert_eq!(meta.images().unwrap().len(), 1);
        assert_eq!(meta.next_id("snapshot").unwrap(), 3);
        assert!(meta.remove_image(&image.name).unwrap());
        assert!(!meta.remove_image(&image.name).unwrap());
        assert!(meta.image(&image.name).unwrap().is_none());
        meta.put_record(Table::Volumes, "data", &serde_json::json!({"name": "data"})).unwrap();
        let volumes: Vec<serde_json::Value> = meta.records(Table::Volumes).unwrap();
        assert_eq!(volumes, vec![serde_json::json!({"name": "data"})]);
        assert!(meta.remove_record(Table::Volumes, "data").unwrap());
        assert!(meta.record::<serde_json::Value>(Table::Containers, "x").unwrap().is_none());
        drop(meta);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
