//! Disk usage as `system df` reports it.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One row of `system df`: how many objects of a kind there are, how many
/// are in use, the bytes they take, and the bytes removing the unused ones
/// would free.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub total: u64,
    pub active: u64,
    pub size: u64,
    pub reclaimable: u64,
}

impl Usage {
    /// Counts one object of `size` bytes that nothing else shares.
    pub fn add(&mut self, size: u64, active: bool) {
        self.total += 1;
        self.size += size;
        if active {
            self.active += 1;
        } else {
            self.reclaimable += size;
        }
    }
}

/// The bytes of content under `path`: the sizes of its files and symlinks,
/// each inode once, directories counting nothing (so an untouched
/// container layer is 0B, as docker shows it). What cannot be read counts
/// nothing: a container may be changing its files meanwhile.
pub fn content_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
            continue;
        }
        if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if meta.is_file() || meta.file_type().is_symlink() {
            total += meta.len();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_what_is_unused_as_reclaimable() {
        let mut usage = Usage::default();
        usage.add(100, true);
        usage.add(30, false);
        usage.add(0, false);
        assert_eq!(usage, Usage { total: 3, active: 1, size: 130, reclaimable: 30 });
    }

    #[test]
    fn content_counts_files_and_links_once() {
        let dir = std::env::temp_dir().join(format!("tote-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        assert_eq!(content_size(&dir), 0, "empty directories take nothing");
        std::fs::write(dir.join("a/b/file"), [0u8; 1000]).unwrap();
        std::fs::hard_link(dir.join("a/b/file"), dir.join("a/hard")).unwrap();
        std::os::unix::fs::symlink("b/file", dir.join("a/link")).unwrap();
        assert_eq!(content_size(&dir), 1000 + "b/file".len() as u64);
        assert_eq!(content_size(&dir.join("missing")), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
