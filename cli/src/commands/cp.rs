//! `tote cp`: files between the client and a container, as tar archives.
//!
//! From a container: toted sends a tar of the path; it is extracted into
//! DST when DST is an existing directory, else its top entry is renamed to
//! DST (whose parent must exist). `-` writes the tar to stdout.
//!
//! To a container: DST ending in `/` is a directory. Otherwise, as the API
//! cannot stat a container path, tote asks for DST's archive and reads only
//! its first header to learn whether DST is a directory, a file or missing.
//! A directory receives SRC under its own name; otherwise SRC is sent under
//! DST's name to DST's parent. Files arrive owned by root, modes and times
//! kept. `-` sends a tar from stdin into the directory DST.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use tote_api::v1::{Chunk, CopyFromRequest, CopyToInput, CopyToStart, copy_to_input};

use super::{Client, Ctx};
use crate::args::CpArgs;
use crate::errors::CliError;

/// The size of the chunks sent to toted.
const CHUNK: usize = 1 << 20;
/// How much of DST's archive is read at most to find its first header.
const PROBE_LIMIT: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("copying between containers is not supported")]
    BetweenContainers,
    #[error("must specify at least one container source")]
    NoContainer,
    #[error("cannot copy a directory to a file: {0}")]
    DirectoryOntoFile(String),
    #[error("destination directory {0} does not exist")]
    MissingDirectory(String),
    #[error("archive entry {0:?} would be written outside the destination")]
    Escapes(PathBuf),
    #[error("refusing to write through the symbolic link {0}")]
    ThroughSymlink(PathBuf),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("invalid archive: {0}")]
    Archive(io::Error),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CopyError {
    let path = path.to_path_buf();
    move |source| CopyError::Io { what, path, source }
}

pub async fn cp(ctx: &Ctx, args: CpArgs) -> Result<i32, CliError> {
    match (container_path(&args.source), container_path(&args.destination)) {
        (Some(_), Some(_)) => Err(CopyError::BetweenContainers.into()),
        (None, None) => Err(CopyError::NoContainer.into()),
        (Some((container, path)), None) => {
            let mut client = ctx.client().await?;
            copy_from(&mut client, container, path, &args.destination).await?;
            Ok(0)
        }
        (None, Some((container, path))) => {
            let mut client = ctx.client().await?;
            copy_to(&mut client, &args.source, container, path).await?;
            Ok(0)
        }
    }
}

/// `CONTAINER:PATH` split, or None for a local path (absolute and
/// dot-relative paths are always local, as in docker).
fn container_path(argument: &str) -> Option<(&str, &str)> {
    if argument.starts_with('/') || argument.starts_with('.') {
        return None;
    }
    let (container, path) = argument.split_once(':')?;
    (!container.is_empty()).then_some((container, path))
}

/// A container path made absolute: docker reads relative ones from `/`.
fn absolute(path: &str) -> String {
    if path.starts_with('/') { path.to_string() } else { format!("/{path}") }
}

async fn copy_from(client: &mut Client, container: &str, path: &str, destination: &str) -> Result<(), CliError> {
    let request = CopyFromRequest { id: container.to_string(), path: absolute(path) };
    let mut stream = client.copy_from_container(request).await?.into_inner();
    if destination == "-" {
        let mut stdout = io::stdout().lock();
        while let Some(chunk) = stream.message().await? {
            stdout.write_all(&chunk.data).map_err(|e| CliError::io("cannot write to stdout", e))?;
        }
        return stdout.flush().map_err(|e| CliError::io("cannot write to stdout", e));
    }
    let (into, rename) = extraction_target(Path::new(destination))?;
    let (sender, receiver) = mpsc::channel(8);
    let extractor = tokio::task::spawn_blocking(move || extract(ChunkReader::new(receiver), &into, rename.as_deref()));
    let streamed = forward(&mut stream, &sender).await;
    drop(sender);
    let extracted = extractor.await.map_err(|e| CliError::Protocol(format!("extraction task failed: {e}")))?;
    // toted's error explains a truncated archive better than tar does.
    streamed?;
    Ok(extracted?)
}

async fn forward(stream: &mut Streaming<Chunk>, sender: &mpsc::Sender<Vec<u8>>) -> Result<(), CliError> {
    while let Some(chunk) = stream.message().await? {
        if sender.send(chunk.data).await.is_err() {
            // The extractor stopped early; its error is reported.
            break;
        }
    }
    Ok(())
}

/// Where to extract, and the name the top entry takes there (None: keep).
fn extraction_target(destination: &Path) -> Result<(PathBuf, Option<OsString>), CopyError> {
    if destination.is_dir() {
        return Ok((destination.to_path_buf(), None));
    }
    let text = destination.to_string_lossy();
    if text.ends_with('/') {
        return Err(CopyError::MissingDirectory(text.into_owned()));
    }
    let parent = match destination.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(CopyError::MissingDirectory(parent.display().to_string()));
    }
    Ok((parent, destination.file_name().map(OsString::from)))
}

/// Extracts a tar into `into`, renaming its top entry to `rename`. Entries
/// may not leave `into`, by `..` or through a symlink the archive made.
pub fn extract(reader: impl Read, into: &Path, rename: Option<&std::ffi::OsStr>) -> Result<(), CopyError> {
    let mut archive = tar::Archive::new(reader);
    let mut top: Option<OsString> = None;
    for entry in archive.entries().map_err(CopyError::Archive)? {
        let mut entry = entry.map_err(CopyError::Archive)?;
        entry.set_preserve_permissions(true);
        entry.set_preserve_mtime(true);
        let path = entry.path().map_err(CopyError::Archive)?.into_owned();
        let Some(relative) = renamed(&path, &mut top, rename)? else { continue };
        let target = into.join(&relative);
        check_parents(into, &relative)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_error("cannot create", parent))?;
        }
        if entry.header().entry_type().is_dir() && target.exists() && !target.is_dir() {
            return Err(CopyError::DirectoryOntoFile(target.display().to_string()));
        }
        if entry.header().entry_type().is_hard_link() {
            let link = entry.link_name().map_err(CopyError::Archive)?.unwrap_or_default().into_owned();
            let Some(link) = renamed(&link, &mut top, rename)? else { continue };
            // The target, too, only by a path the archive made of plain
            // directories, and never a symlink itself: an archive from a
            // hostile container must not link a host file in.
            check_parents(into, &link)?;
            if fs::symlink_metadata(into.join(&link)).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(CopyError::ThroughSymlink(into.join(&link)));
            }
            let _ = fs::remove_file(&target);
            fs::hard_link(into.join(link), &target).map_err(io_error("cannot link", &target))?;
            continue;
        }
        entry.unpack(&target).map_err(io_error("cannot write", &target))?;
    }
    Ok(())
}

/// An entry's path inside the destination: `.` dropped, `..` and absolute
/// paths refused, the first component renamed when it is the top entry's.
fn renamed(
    path: &Path,
    top: &mut Option<OsString>,
    rename: Option<&std::ffi::OsStr>,
) -> Result<Option<PathBuf>, CopyError> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_os_string()),
            Component::CurDir => {}
            _ => return Err(CopyError::Escapes(path.to_path_buf())),
        }
    }
    let Some(first) = parts.first_mut() else { return Ok(None) };
    let top = top.get_or_insert_with(|| first.clone());
    if let Some(name) = rename
        && *first == *top
    {
        *first = name.to_os_string();
    }
    Ok(Some(parts.iter().collect()))
}

/// Refuses entries below a symlink: the archive could have planted it to
/// point anywhere.
fn check_parents(into: &Path, relative: &Path) -> Result<(), CopyError> {
    let mut current = into.to_path_buf();
    let parents: Vec<Component<'_>> = relative.components().collect();
    for component in parents.iter().take(parents.len().saturating_sub(1)) {
        current.push(component);
        if fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(CopyError::ThroughSymlink(current));
        }
    }
    Ok(())
}

/// A `Read` over chunks arriving on a channel (read on a blocking thread).
struct ChunkReader {
    receiver: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    position: usize,
}

impl ChunkReader {
    fn new(receiver: mpsc::Receiver<Vec<u8>>) -> Self {
        ChunkReader { receiver, chunk: Vec::new(), position: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.position == self.chunk.len() {
            match self.receiver.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.position = 0;
                }
                None => return Ok(0),
            }
        }
        let count = buffer.len().min(self.chunk.len() - self.position);
        buffer[..count].copy_from_slice(&self.chunk[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

/// What a container path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    File,
    Missing,
}

async fn copy_to(client: &mut Client, source: &str, container: &str, destination: &str) -> Result<(), CliError> {
    let destination = absolute(destination);
    let (directory, name) = if source == "-" {
        (destination.clone(), None)
    } else {
        let source_path = Path::new(source);
        let metadata = fs::symlink_metadata(source_path).map_err(io_error("cannot read", source_path))?;
        // A trailing slash names a directory (docker's rule): no probe.
        let kind =
            if destination.ends_with('/') { Kind::Directory } else { probe(client, container, &destination).await? };
        let (directory, name) = upload_target(&destination, kind, source_path, metadata.is_dir())?;
        (directory, Some(name))
    };
    let (sender, receiver) = mpsc::channel(4);
    let start = CopyToStart { id: container.to_string(), path: directory };
    // Cannot fail: the receiver is alive and the channel is empty.
    let _ = sender.send(CopyToInput { input: Some(copy_to_input::Input::Start(start)) }).await;
    let source = source.to_string();
    let mut producer = tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter { sender, buffer: Vec::with_capacity(CHUNK) };
        match &name {
            Some(name) => archive(Path::new(&source), Path::new(name), &mut writer)?,
            None => {
                io::copy(&mut io::stdin().lock(), &mut writer).map_err(io_error("cannot read", Path::new("stdin")))?;
            }
        }
        writer.flush().map_err(io_error("cannot send", Path::new(&source)))
    });
    let call = client.copy_to_container(ReceiverStream::new(receiver));
    tokio::pin!(call);
    let produced = tokio::select! {
        // A failed archive cancels the call (by dropping it) so toted
        // extracts nothing half-made.
        produced = &mut producer => produced,
        reply = &mut call => {
            reply?;
            producer.await
        }
    };
    produced.map_err(|e| CliError::Protocol(format!("archive task failed: {e}")))??;
    call.await?;
    Ok(())
}

/// The directory to extract into and the name SRC takes there.
fn upload_target(
    destination: &str,
    kind: Kind,
    source: &Path,
    source_is_dir: bool,
) -> Result<(String, String), CopyError> {
    // `.` and `..` have no name of their own: use the directory's.
    let source_name = source
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .or_else(|| source.canonicalize().ok().and_then(|p| p.file_name().map(std::ffi::OsStr::to_os_string)))
        .map_or_else(|| source.to_string_lossy().into_owned(), |n| n.to_string_lossy().into_owned());
    let (parent, own_name) = match destination.trim_end_matches('/').rsplit_once('/') {
        Some(("", name)) => ("/".to_string(), name.to_string()),
        Some((parent, name)) => (parent.to_string(), name.to_string()),
        None => ("/".to_string(), destination.to_string()),
    };
    let directory = match destination.trim_end_matches('/') {
        "" => "/".to_string(),
        trimmed => trimmed.to_string(),
    };
    match kind {
        Kind::Directory => Ok((directory, source_name)),
        Kind::File if source_is_dir => Err(CopyError::DirectoryOntoFile(destination.to_string())),
        Kind::Missing if destination.ends_with('/') => Err(CopyError::MissingDirectory(destination.to_string())),
        Kind::File | Kind::Missing => Ok((parent, own_name)),
    }
}

/// Whether a container path is a directory, a file or missing, from the
/// first header of its archive.
async fn probe(client: &mut Client, container: &str, path: &str) -> Result<Kind, CliError> {
    let request = CopyFromRequest { id: container.to_string(), path: path.to_string() };
    let mut stream = match client.copy_from_container(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::NotFound => return Ok(Kind::Missing),
        Err(status) => return Err(status.into()),
    };
    let mut head = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk.data),
            Ok(None) => return Ok(first_entry_kind(&head).unwrap_or(Kind::Missing)),
            Err(status) if status.code() == Code::NotFound => return Ok(Kind::Missing),
            Err(status) => return Err(status.into()),
        }
        if let Some(kind) = first_entry_kind(&head) {
            return Ok(kind);
        }
        if head.len() > PROBE_LIMIT {
            return Ok(Kind::File);
        }
    }
}

/// The kind of the first entry of a (possibly partial) tar. A symlink
/// cannot be followed from here; it counts as a directory because that
/// fails safe: toted refuses to extract into a link to a file, whereas
/// taking it for a file would replace the link's target directory.
fn first_entry_kind(head: &[u8]) -> Option<Kind> {
    let mut archive = tar::Archive::new(head);
    let entry = archive.entries().ok()?.next()?.ok()?;
    let kind = entry.header().entry_type();
    Some(if kind.is_dir() || kind.is_symlink() { Kind::Directory } else { Kind::File })
}

/// Sends what is written as 1 MiB data messages.
struct ChunkWriter {
    sender: mpsc::Sender<CopyToInput>,
    buffer: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let count = data.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&data[..count]);
        if self.buffer.len() == CHUNK {
            self.flush()?;
        }
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        let message = CopyToInput { input: Some(copy_to_input::Input::Data(data)) };
        self.sender
            .blocking_send(message)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "toted closed the copy"))
    }
}

/// A tar of `source` (a file, a symlink or a directory tree) under `name`,
/// owned by root as docker's copies are.
pub fn archive(source: &Path, name: &Path, out: impl Write) -> Result<(), CopyError> {
    let mut builder = tar::Builder::new(out);
    append(&mut builder, source, name)?;
    builder.into_inner().map_err(io_error("cannot finish the archive of", source))?;
    Ok(())
}

fn append<W: Write>(builder: &mut tar::Builder<W>, path: &Path, name: &Path) -> Result<(), CopyError> {
    let metadata = fs::symlink_metadata(path).map_err(io_error("cannot read", path))?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    header.set_uid(0);
    header.set_gid(0);
    let failed = io_error("cannot archive", path);
    if metadata.is_file() {
        let file = fs::File::open(path).map_err(io_error("cannot read", path))?;
        return builder.append_data(&mut header, name, file).map_err(failed);
    }
    header.set_size(0);
    if metadata.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(io_error("cannot read", path))?;
        return builder.append_link(&mut header, name, target).map_err(failed);
    }
    builder.append_data(&mut header, name, io::empty()).map_err(failed)?;
    if metadata.is_dir() {
        let mut children = fs::read_dir(path)
            .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
            .map_err(io_error("cannot list", path))?;
        children.sort_by_key(|child| child.file_name());
        for child in children {
            append(builder, &child.path(), &name.join(child.file_name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    /// A test's directory, removed when the test ends.
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tote-cp-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn tree(root: &Path) -> PathBuf {
        let source = root.join("src");
        fs::create_dir_all(source.join("sub")).unwrap();
        fs::write(source.join("a.txt"), "alpha").unwrap();
        fs::write(source.join("sub/b.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(source.join("sub/b.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("a.txt", source.join("link")).unwrap();
        source
    }

    #[test]
    fn container_paths_are_split_like_docker() {
        assert_eq!(container_path("web:/etc/hosts"), Some(("web", "/etc/hosts")));
        assert_eq!(container_path("web:rel"), Some(("web", "rel")));
        assert_eq!(container_path("/abs:path"), None);
        assert_eq!(container_path("./x:y"), None);
        assert_eq!(container_path("plain"), None);
        assert_eq!(container_path(":x"), None);
    }

    #[test]
    fn a_directory_round_trips_into_an_existing_directory() {
        let root = scratch("into");
        let source = tree(&root);
        let mut tar = Vec::new();
        archive(&source, Path::new("src"), &mut tar).unwrap();
        let into = root.join("out");
        fs::create_dir(&into).unwrap();
        extract(&tar[..], &into, None).unwrap();
        assert_eq!(fs::read_to_string(into.join("src/a.txt")).unwrap(), "alpha");
        let mode = fs::metadata(into.join("src/sub/b.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(fs::read_link(into.join("src/link")).unwrap(), Path::new("a.txt"));
    }

    #[test]
    fn the_top_entry_takes_the_destination_name() {
        let root = scratch("rename");
        let source = tree(&root);
        let mut tar = Vec::new();
        archive(&source, Path::new("src"), &mut tar).unwrap();
        let (into, rename) = extraction_target(&root.join("copy")).unwrap();
        extract(&tar[..], &into, rename.as_deref()).unwrap();
        assert_eq!(fs::read_to_string(root.join("copy/a.txt")).unwrap(), "alpha");
        assert!(extraction_target(&root.join("missing/copy")).is_err());
    }

    #[test]
    fn archives_cannot_escape() {
        let root = scratch("escape");
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "evil", "/etc").unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        builder.append_data(&mut header, "evil/passwd", &b"x"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        let err = extract(&tar[..], &root, None).unwrap_err();
        assert!(matches!(err, CopyError::ThroughSymlink(_)), "{err}");
        assert!(matches!(renamed(Path::new("../x"), &mut None, None), Err(CopyError::Escapes(_))));
    }

    #[test]
    fn uploads_go_where_docker_puts_them() {
        let file = Path::new("/etc/hostname");
        assert_eq!(upload_target("/tmp", Kind::Directory, file, false).unwrap(), ("/tmp".into(), "hostname".into()));
        assert_eq!(upload_target("/tmp/", Kind::Directory, file, false).unwrap(), ("/tmp".into(), "hostname".into()));
        assert_eq!(upload_target("/", Kind::Directory, file, false).unwrap(), ("/".into(), "hostname".into()));
        assert_eq!(upload_target("/tmp/new", Kind::Missing, file, false).unwrap(), ("/tmp".into(), "new".into()));
        assert_eq!(upload_target("/new", Kind::Missing, file, false).unwrap(), ("/".into(), "new".into()));
        assert_eq!(upload_target("/etc/hosts", Kind::File, file, false).unwrap(), ("/etc".into(), "hosts".into()));
        assert!(upload_target("/etc/hosts", Kind::File, Path::new("/etc"), true).is_err());
        assert!(upload_target("/nope/", Kind::Missing, file, false).is_err());
    }

    #[test]
    fn the_first_header_tells_the_kind() {
        let root = scratch("probe");
        let source = tree(&root);
        let mut tar = Vec::new();
        archive(&source, Path::new("src"), &mut tar).unwrap();
        assert_eq!(first_entry_kind(&tar[..1024]), Some(Kind::Directory));
        let mut tar = Vec::new();
        archive(&source.join("a.txt"), Path::new("a.txt"), &mut tar).unwrap();
        assert_eq!(first_entry_kind(&tar), Some(Kind::File));
        assert_eq!(first_entry_kind(&tar[..100]), None);
        let mut tar = Vec::new();
        archive(&source.join("link"), Path::new("link"), &mut tar).unwrap();
        assert_eq!(first_entry_kind(&tar), Some(Kind::Directory));
    }
}
