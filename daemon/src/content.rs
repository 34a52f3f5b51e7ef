//! The content store: blobs addressed by digest under `<root>/blobs/<alg>/<hex>`.
//!
//! A blob only ever appears there complete and verified: it is written to
//! `<root>/ingest/`, checked against its expected size and digest, fsynced
//! and renamed into place. An interrupted download stays in `ingest/` and
//! the next pull resumes it; a wrong one is deleted. A lock on the ingest
//! file keeps two processes from downloading the same blob at once, and
//! marks it as being written: partial downloads are expired by age and by
//! total size ([`IngestPolicy`]) and pruned, but never while locked.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::{Digest, Hasher};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("content {expected}: the data has digest {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("content {digest} is larger than the {limit} bytes allowed for it")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("content {0} is not in the store")]
    NotFound(Digest),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContentError {
    let path = path.to_path_buf();
    move |source| ContentError::Io { path, source }
}

/// How much of interrupted downloads is kept for a later pull to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestPolicy {
    /// A partial download nobody wrote to for this long is removed.
    pub max_age: Duration,
    /// Beyond this many bytes of partial downloads in all, the oldest ones
    /// are removed.
    pub max_size: u64,
}

impl Default for IngestPolicy {
    /// A day's grace to resume, and at most 1 GiB waiting.
    fn default() -> Self {
        Self { max_age: Duration::from_secs(24 * 60 * 60), max_size: 1 << 30 }
    }
}

/// One file in `ingest/`: an interrupted (or running) download, or a
/// blob being imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The file's name in `ingest/`.
    pub name: String,
    /// The blob it is becoming, when the name says (imports of unknown
    /// content have none).
    pub digest: Option<Digest>,
    pub size: u64,
    /// When it was last written to.
    pub modified: SystemTime,
    /// A pull or an import is writing it (it holds the file's lock).
    pub active: bool,
}

impl Partial {
    /// The digest, or else the file name: what to show of it.
    pub fn label(&self) -> String {
        self.digest.as_ref().map_or_else(|| self.name.clone(), Digest::to_string)
    }
}

/// What a blob must be: its digest and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        for dir in ["blobs/sha256", "blobs/sha512", "ingest"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().name()).join(digest.hex())
    }

    fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(format!("{}-{}", digest.algorithm().name(), digest.hex()))
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.blob_path(digest)).ok().map(|m| m.len())
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, ContentError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ContentError::NotFound(digest.clone()),
            _ => io_err(&path)(e),
        })
    }

    /// Reads a small blob (a manifest, a config), refusing one above `limit`.
    pub fn read_capped(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, ContentError> {
        let file = self.open_blob(digest)?;
        let path = self.blob_path(digest);
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len > limit {
            return Err(ContentError::TooLarge { digest: digest.clone(), limit });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(limit).read_to_end(&mut bytes).map_err(io_err(&path))?;
        Ok(bytes)
    }

    /// Stores `bytes`, checking them against `expected` when given.
    pub fn put(&self, bytes: &[u8], expected: Option<&Expected>) -> Result<Digest, ContentError> {
        let digest = Digest::sha256_of(bytes);
        let expected = match expected {
            Some(e) => e.clone(),
            None => Expected { digest: digest.clone(), size: bytes.len() as u64 },
        };
        match self.begin(&expected)? {
            Begun::Present => Ok(expected.digest),
            Begun::Ingest(mut ingest) => {
                ingest.reset()?;
                ingest.write_all(bytes)?;
                ingest.commit()
            }
        }
    }

    /// Stores everything `reader` yields. With `expected`, the data must
    /// match it; without, its digest is computed on the way.
    pub fn put_reader(&self, reader: &mut dyn Read, expected: Option<&Expected>) -> Result<Digest, ContentError> {
        if let Some(expected) = expected {
            return match self.begin(expected)? {
                Begun::Present => Ok(expected.digest.clone()),
                Begun::Ingest(mut ingest) => {
                    ingest.reset()?;
                    let path = ingest.path.clone();
                    copy_into(reader, |chunk| ingest.write_all(chunk), &path)?;
                    ingest.commit()
                }
            };
        }
        let (tmp, mut file) = self.create_import()?;
        let mut hasher = Hasher::new(crate::digest::Algorithm::Sha256);
        let written = copy_into(
            reader,
            |chunk| {
                hasher.update(chunk);
                file.write_all(chunk).map_err(io_err(&tmp))
            },
            &tmp,
        );
        let digest = hasher.finish();
        let result = written.and_then(|_| file.sync_all().map_err(io_err(&tmp))).and_then(|()| {
            let dest = self.blob_path(&digest);
            std::fs::rename(&tmp, &dest).map_err(io_err(&dest))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| digest)
    }

    /// A new file in `ingest/` for content whose digest is not known yet,
    /// locked like a download so that nothing expires it meanwhile.
    fn create_import(&self) -> Result<(PathBuf, Flock<File>), ContentError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = self.root.join("ingest").join(format!("tmp-{}-{n}", std::process::id()));
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let file = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| io_err(&tmp)(std::io::Error::from(errno)))?;
            // Between create and lock a prune may have taken it for abandoned.
            if still_linked(&file, &tmp)? {
                return Ok((tmp, file));
            }
        }
    }

    /// Starts (or resumes) writing the blob `expected`. Blocks while another
    /// process writes the same blob; returns [`Begun::Present`] if that
    /// other writer (or an earlier pull) already stored it.
    pub fn begin(&self, expected: &Expected) -> Result<Begun, ContentError> {
        if self.contains(&expected.digest) {
            return Ok(Begun::Present);
        }
        let path = self.ingest_path(&expected.digest);
        let file = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            let file = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| io_err(&path)(std::io::Error::from(errno)))?;
            // While this waited for the lock, the file may have been
            // expired or pruned (or committed and a new one begun): the
            // lock must be on the file the path names.
            if still_linked(&file, &path)? {
                break file;
            }
        };
        if self.contains(&expected.digest) {
            return Ok(Begun::Present);
        }
        let mut ingest = Ingest {
            file,
            path,
            final_path: self.blob_path(&expected.digest),
            hasher: Hasher::new(expected.digest.algorithm()),
            written: 0,
            expected: expected.clone(),
        };
        ingest.resume()?;
        Ok(Begun::Ingest(Box::new(ingest)))
    }

    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every blob in the store with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let mut blobs = Vec::new();
        for algorithm in ["sha256", "sha512"] {
            let dir = self.root.join("blobs").join(algorithm);
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let name = format!("{algorithm}:{}", entry.file_name().to_string_lossy());
                if let (Ok(digest), Ok(meta)) = (name.parse::<Digest>(), entry.metadata()) {
                    blobs.push((digest, meta.len()));
                }
            }
        }
        blobs.sort();
        Ok(blobs)
    }

    /// Every file in `ingest/`, oldest first, with whether it is being
    /// written. One readdir, and a stat and a non-blocking lock attempt per
    /// file.
    pub fn partials(&self) -> Result<Vec<Partial>, ContentError> {
        let dir = self.root.join("ingest");
        let mut partials = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let file = match File::open(&path) {
                Ok(file) => file,
                // Committed, discarded or removed since the readdir.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let meta = file.metadata().map_err(io_err(&path))?;
            if !meta.is_file() {
                continue;
            }
            let active = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(_unlocked_on_drop) => false,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
                Err((_, errno)) => return Err(io_err(&path)(std::io::Error::from(errno))),
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            partials.push(Partial {
                digest: name.replacen('-', ":", 1).parse().ok(),
                name,
                size: meta.len(),
                modified: meta.modified().map_err(io_err(&path))?,
                active,
            });
        }
        partials.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.name.cmp(&b.name)));
        Ok(partials)
    }

    /// Removes the partial download `name` unless something is writing it
    /// or (with `written_before`) it was written to since; whether it did.
    fn remove_partial(&self, name: &str, written_before: Option<SystemTime>) -> Result<bool, ContentError> {
        let path = self.root.join("ingest").join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(false),
            Err((_, errno)) => return Err(io_err(&path)(std::io::Error::from(errno))),
        };
        // Holding the lock, the path cannot change under us (writers only
        // rename or remove it with the lock held); check it still names
        // this file, then remove it before letting go.
        if !still_linked(&locked, &path)? {
            return Ok(false);
        }
        if let Some(cutoff) = written_before {
            let modified = locked.metadata().and_then(|m| m.modified()).map_err(io_err(&path))?;
            if modified > cutoff {
                return Ok(false);
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Applies `policy`: removes partial downloads nobody wrote to for
    /// longer than its age, then, while they take more than its size in
    /// all, the oldest ones. Never one being written (locked), nor one of
    /// `keep` (the layers of a pull that is starting and may resume them).
    /// Returns what it removed.
    pub fn expire_ingest(&self, policy: &IngestPolicy, keep: &HashSet<Digest>) -> Result<Vec<Partial>, ContentError> {
        let cutoff = SystemTime::now().checked_sub(policy.max_age).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = Vec::new();
        let mut total: u64 = 0;
        let mut remaining = Vec::new();
        for partial in self.partials()? {
            let kept = partial.active || partial.digest.as_ref().is_some_and(|d| keep.contains(d));
            if !kept && partial.modified < cutoff && self.remove_partial(&partial.name, Some(cutoff))? {
                removed.push(partial);
                continue;
            }
            total += partial.size;
            remaining.push((partial, kept));
        }
        // Oldest first, as `partials` sorts them.
        for (partial, kept) in remaining {
            if total <= policy.max_size {
                break;
            }
            if !kept && self.remove_partial(&partial.name, None)? {
                total = total.saturating_sub(partial.size);
                removed.push(partial);
            }
        }
        Ok(removed)
    }

    /// Removes every partial download nobody is writing (`image prune`).
    pub fn clean_ingest(&self) -> Result<Vec<Partial>, ContentError> {
        let mut removed = Vec::new();
        for partial in self.partials()? {
            if !partial.active && self.remove_partial(&partial.name, None)? {
                removed.push(partial);
            }
        }
        Ok(removed)
    }
}

/// Whether `path` still names the open (locked) `file`: not removed or
/// replaced since it was opened.
fn still_linked(file: &File, path: &Path) -> Result<bool, ContentError> {
    let open = file.metadata().map_err(io_err(path))?;
    match std::fs::symlink_metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Feeds `reader` to `sink` in large chunks; returns the byte count.
fn copy_into(
    reader: &mut dyn Read,
    mut sink: impl FnMut(&[u8]) -> Result<(), ContentError>,
    path: &Path,
) -> Result<u64, ContentError> {
    let mut buf = vec![0u8; 1 << 18];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        sink(&buf[..n])?;
        total += n as u64;
    }
}

pub enum Begun {
    /// The blob is already in the store.
    Present,
    /// Write the rest of it here, from `offset()` on.
    Ingest(Box<Ingest>),
}

/// A blob being written: verified on commit, resumable if abandoned.
pub struct Ingest {
    file: Flock<File>,
    path: PathBuf,
    final_path: PathBuf,
    hasher: Hasher,
    written: u64,
    expected: Expected,
}

impl Ingest {
    /// Bytes already there from an interrupted earlier download.
    pub fn offset(&self) -> u64 {
        self.written
    }

    pub fn expected(&self) -> &Expected {
        &self.expected
    }

    /// The bytes written so far (by an earlier, interrupted download), to be
    /// processed again before new ones.
    pub fn partial_reader(&self) -> Result<std::io::Take<File>, ContentError> {
        let file = File::open(&self.path).map_err(io_err(&self.path))?;
        Ok(file.take(self.written))
    }

    /// Picks up a partial download: hashes what is there, or starts over
    /// when it is longer than the blob can be.
    fn resume(&mut self) -> Result<(), ContentError> {
        let len = self.file.metadata().map_err(io_err(&self.path))?.len();
        if len > self.expected.size {
            return self.reset();
        }
        self.file.seek(SeekFrom::Start(0)).map_err(io_err(&self.path))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.file.read(&mut buf).map_err(io_err(&self.path))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
        }
        Ok(())
    }

    /// Throws away what was written (a server that ignored a Range request
    /// sends the whole blob again).
    pub fn reset(&mut self) -> Result<(), ContentError> {
        self.file.set_len(0).map_err(io_err(&self.path))?;
        self.file.seek(SeekFrom::Start(0)).map_err(io_err(&self.path))?;
        self.hasher = Hasher::new(self.expected.digest.algorithm());
        self.written = 0;
        Ok(())
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), ContentError> {
        let total = self.written + bytes.len() as u64;
        if total > self.expected.size {
            let err = ContentError::SizeMismatch {
                digest: self.expected.digest.clone(),
                expected: self.expected.size,
                actual: total,
            };
            self.discard();
            return Err(err);
        }
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.hasher.update(bytes);
        self.written = total;
        Ok(())
    }

    /// Verifies size and digest and moves the blob into the store. A blob
    /// that fails is deleted, never kept.
    pub fn commit(mut self) -> Result<Digest, ContentError> {
        if self.written != self.expected.size {
            let err = ContentError::SizeMismatch {
                digest: self.expected.digest.clone(),
                expected: self.expected.size,
                actual: self.written,
            };
            self.discard();
            return Err(err);
        }
        let actual = self.hasher.clone().finish();
        if actual != self.expected.digest {
            self.discard();
            return Err(ContentError::DigestMismatch { expected: self.expected.digest.clone(), actual });
        }
        self.file.sync_all().map_err(io_err(&self.path))?;
        std::fs::rename(&self.path, &self.final_path).map_err(io_err(&self.final_path))?;
        if let Some(dir) = self.final_path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(actual)
    }

    fn discard(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (ContentStore, PathBuf) {
        let root = std::env::temp_dir().join(format!("tote-content-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        (ContentStore::open(&root).unwrap(), root)
    }

    fn expected(bytes: &[u8]) -> Expected {
        Expected { digest: Digest::sha256_of(bytes), size: bytes.len() as u64 }
    }

    #[test]
    fn a_blob_is_stored_under_its_digest() {
        let (store, root) = store("put");
        let digest = store.put(b"hello", None).unwrap();
        assert_eq!(store.read_capped(&digest, 100).unwrap(), b"hello");
        assert_eq!(store.list().unwrap(), vec![(digest.clone(), 5)]);
        assert!(matches!(store.read_capped(&digest, 4), Err(ContentError::TooLarge { .. })));
        store.delete(&digest).unwrap();
        assert!(!store.contains(&digest));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_digest_mismatch_keeps_nothing() {
        let (store, root) = store("mismatch");
        let wanted = expected(b"good data");
        let Begun::Ingest(mut ingest) = store.begin(&wanted).unwrap() else { panic!() };
        ingest.write_all(b"evil data").unwrap();
        assert!(matches!(ingest.commit(), Err(ContentError::DigestMismatch { .. })));
        assert!(!store.contains(&wanted.digest));
        assert_eq!(std::fs::read_dir(root.join("ingest")).unwrap().count(), 0, "unverified data kept");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn truncated_and_oversized_data_are_refused() {
        let (store, root) = store("sizes");
        let wanted = expected(b"0123456789");
        let Begun::Ingest(mut ingest) = store.begin(&wanted).unwrap() else { panic!() };
        ingest.write_all(b"01234").unwrap();
        assert!(matches!(ingest.commit(), Err(ContentError::SizeMismatch { actual: 5, .. })));
        let Begun::Ingest(mut ingest) = store.begin(&wanted).unwrap() else { panic!() };
        assert!(matches!(ingest.write_all(b"0123456789abc"), Err(ContentError::SizeMismatch { .. })));
        assert!(!store.contains(&wanted.digest));
        std::fs::remove_dir_all(root).unwrap();
    }

    /// Leaves an interrupted download of `data` with `written` bytes, last
    /// written to `age` ago.
    fn abandon(store: &ContentStore, data: &[u8], written: usize, age: Duration) -> Digest {
        let wanted = expected(data);
        let Begun::Ingest(mut ingest) = store.begin(&wanted).unwrap() else { panic!() };
        ingest.write_all(&data[..written]).unwrap();
        drop(ingest);
        let path = store.ingest_path(&wanted.digest);
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        wanted.digest
    }

    fn names(partials: &[Partial]) -> Vec<String> {
        partials.iter().map(Partial::label).collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn partial_downloads_are_listed_oldest_first_with_their_state() {
        let (store, root) = store("partials");
        let old = abandon(&store, &[1; 100], 40, 2 * HOUR);
        let new = abandon(&store, &[2; 100], 60, HOUR);
        let running = expected(&[3; 100]);
        let Begun::Ingest(mut ingest) = store.begin(&running).unwrap() else { panic!() };
        ingest.write_all(&[3; 10]).unwrap();
        let partials = store.partials().unwrap();
        assert_eq!(names(&partials), [old.to_string(), new.to_string(), running.digest.to_string()]);
        assert_eq!(
            partials.iter().map(|p| (p.size, p.active)).collect::<Vec<_>>(),
            [(40, false), (60, false), (10, true)]
        );
        // Prune takes what nobody writes, and only that.
        let removed = store.clean_ingest().unwrap();
        assert_eq!(names(&removed), [old.to_string(), new.to_string()]);
        assert_eq!(names(&store.partials().unwrap()), [running.digest.to_string()]);
        // The running download goes on as if nothing happened.
        ingest.write_all(&[3; 90]).unwrap();
        assert_eq!(ingest.commit().unwrap(), running.digest);
        assert!(store.partials().unwrap().is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn expiry_by_age_spares_running_and_kept_downloads() {
        let (store, root) = store("age");
        let stale = abandon(&store, &[1; 100], 50, 25 * HOUR);
        let kept = abandon(&store, &[2; 100], 50, 25 * HOUR);
        let fresh = abandon(&store, &[3; 100], 50, HOUR);
        let running = expected(&[4; 100]);
        abandon(&store, &[4; 100], 50, 25 * HOUR);
        let Begun::Ingest(held) = store.begin(&running).unwrap() else { panic!() };
        let removed = store.expire_ingest(&IngestPolicy::default(), &HashSet::from([kept.clone()])).unwrap();
        assert_eq!(names(&removed), [stale.to_string()]);
        let left = names(&store.partials().unwrap());
        assert_eq!(left.len(), 3, "{left:?}");
        assert!([kept, fresh, running.digest.clone()].iter().all(|d| left.contains(&d.to_string())), "{left:?}");
        assert_eq!(held.offset(), 50, "the running download kept its bytes");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn expiry_by_size_removes_the_oldest_first() {
        let (store, root) = store("size");
        let oldest = abandon(&store, &[1; 100], 100, 3 * HOUR);
        let middle = abandon(&store, &[2; 100], 100, 2 * HOUR);
        let newest = abandon(&store, &[3; 100], 100, HOUR);
        let policy = IngestPolicy { max_size: 150, ..IngestPolicy::default() };
        // Under the cap already: nothing goes.
        let roomy = IngestPolicy { max_size: 300, ..IngestPolicy::default() };
        assert!(store.expire_ingest(&roomy, &HashSet::new()).unwrap().is_empty());
        // A pull about to resume the oldest keeps it; the next ones go.
        let removed = store.expire_ingest(&policy, &HashSet::from([oldest.clone()])).unwrap();
        assert_eq!(names(&removed), [middle.to_string(), newest.to_string()]);
        assert_eq!(names(&store.partials().unwrap()), [oldest.to_string()]);
        std::fs::remove_dir_all(root).unwrap();

        let (store, root) = self::store("size2");
        let oldest = abandon(&store, &[1; 100], 100, 3 * HOUR);
        let middle = abandon(&store, &[2; 100], 100, 2 * HOUR);
        let newest = abandon(&store, &[3; 100], 100, HOUR);
        let removed = store.expire_ingest(&policy, &HashSet::new()).unwrap();
        assert_eq!(names(&removed), [oldest.to_string(), middle.to_string()]);
        assert_eq!(names(&store.partials().unwrap()), [newest.to_string()]);
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A pull waiting for an ingest lock while the file is removed (pruned,
    /// or discarded by its writer) must not write into the removed file.
    #[test]
    fn a_download_waiting_for_a_removed_file_starts_a_new_one() {
        let (store, root) = store("relock");
        let data = b"waited for the lock";
        let wanted = expected(data);
        let path = store.ingest_path(&wanted.digest);
        std::fs::write(&path, b"stale").unwrap();
        let holder = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        let waiter = {
            let (store, wanted) = (store.clone(), wanted.clone());
            std::thread::spawn(move || {
                let Begun::Ingest(mut ingest) = store.begin(&wanted).unwrap() else { panic!() };
                ingest.reset().unwrap();
                ingest.write_all(data).unwrap();
                ingest.commit()
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        std::fs::remove_file(&path).unwrap();
        drop(holder);
        assert_eq!(waiter.join().unwrap().unwrap(), wanted.digest);
        assert_eq!(store.read_capped(&wanted.digest, 100).unwrap(), data);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_interrupted_write_resumes_where_it_stopped() {
        let (store, root) = store("resume");
        let data = b"the quick brown fox jumps over the lazy dog";
        let wanted = expected(data);
        {
            let Begun::Ingest(mut ingest) = store.begin(&wanted).unwrap() else { panic!() };
            ingest.write_all(&data[..10]).unwrap();
            // Dropped without commit: the connection was cut.
        }
        let Begun::Ingest(mut ingest) = store.begin(&wanted).unwrap() else { panic!() };
        assert_eq!(ingest.offset(), 10);
        ingest.write_all(&data[10..]).unwrap();
        assert_eq!(ingest.commit().unwrap(), wanted.digest);
        assert!(matches!(store.begin(&wanted).unwrap(), Begun::Present));
        std::fs::remove_dir_all(root).unwrap();
    }
}
