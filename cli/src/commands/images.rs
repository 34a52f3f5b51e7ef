//! Image commands besides pull: images, rmi, tag, load, save, image prune.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tote_api::v1::{
    Chunk, Empty, ImageSummary, PruneImagesReply, PruneImagesRequest, RemoveImageRequest, SaveImagesRequest,
    TagImageRequest,
};

use super::pull::familiar_name;
use super::{Ctx, for_each_target};
use crate::args::{ImagesArgs, LoadArgs, PruneArgs, RmiArgs, SaveArgs, TagArgs};
use crate::errors::CliError;
use crate::format::{self, Listing};
use crate::output::{out, outln};
use crate::template::{Methods, NoMethods};
use crate::tty;

const DEFAULT_TABLE: &str = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}";
/// The size of the chunks `load` sends.
const CHUNK: usize = 1 << 20;

pub async fn images(ctx: &Ctx, args: ImagesArgs) -> Result<i32, CliError> {
    let listing = Listing::new(args.format.as_deref(), DEFAULT_TABLE)?;
    let mut client = ctx.client().await?;
    let mut images = client.list_images(Empty {}).await?.into_inner().images;
    images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    let now = format::now_unix();
    let rows: Vec<Value> = images
        .iter()
        .flat_map(|image| rows(image, args.no_trunc, now))
        .filter(|row| matches_filter(row, args.repository.as_deref()))
        .collect();
    if args.quiet {
        let mut seen = HashSet::new();
        for row in &rows {
            let id = row["ID"].as_str().unwrap_or_default();
            if seen.insert(id.to_string()) {
                outln!("{id}");
            }
        }
        return Ok(0);
    }
    let rows: Vec<(Value, &dyn Methods)> = rows.into_iter().map(|row| (row, &NoMethods as &dyn Methods)).collect();
    out!("{}", listing.render(&header(), &rows)?);
    Ok(0)
}

fn header() -> Value {
    json!({
        "ID": "IMAGE ID",
        "Repository": "REPOSITORY",
        "Tag": "TAG",
        "Digest": "DIGEST",
        "CreatedSince": "CREATED",
        "CreatedAt": "CREATED AT",
        "Size": "SIZE",
    })
}

/// One row per tag (one `<none>` row for an untagged image).
fn rows(image: &ImageSummary, no_trunc: bool, now: i64) -> Vec<Value> {
    let names: Vec<(String, String)> = if image.repo_tags.is_empty() {
        vec![("<none>".to_string(), "<none>".to_string())]
    } else {
        image.repo_tags.iter().map(|tag| split_tag(tag)).collect()
    };
    let digest = image.repo_digests.first().and_then(|d| d.split_once('@')).map_or("<none>", |(_, digest)| digest);
    let id = if no_trunc { image.id.clone() } else { format::short_id(&image.id, false) };
    names
        .into_iter()
        .map(|(repository, tag)| {
            json!({
                "ID": id,
                "Repository": repository,
                "Tag": tag,
                "Digest": digest,
                // docker's "N/A" for images that record no creation time.
                "CreatedSince": if image.created > 0 { format::ago(image.created, now) } else { "N/A".to_string() },
                "CreatedAt": format::utc_time(image.created),
                "Size": format::human_size(image.size),
            })
        })
        .collect()
}

/// `docker.io/library/busybox:latest` as ("busybox", "latest").
fn split_tag(reference: &str) -> (String, String) {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(colon) => {
            let (name, tag) = reference.split_at(last_slash + colon);
            (familiar_name(name), tag[1..].to_string())
        }
        None => (familiar_name(reference), "<none>".to_string()),
    }
}

/// `tote images REPOSITORY[:TAG]`.
fn matches_filter(row: &Value, filter: Option<&str>) -> bool {
    let Some(filter) = filter else { return true };
    let (repository, tag) = split_tag(filter);
    row["Repository"] == repository.as_str() && (tag == "<none>" || row["Tag"] == tag.as_str())
}

pub async fn rmi(ctx: &Ctx, args: RmiArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    Ok(for_each_target(&args.images, async |image| {
        let request = RemoveImageRequest { reference: image.to_string(), force: args.force };
        let reply = client.remove_image(request).await?.into_inner();
        let untagged = reply.untagged.iter().map(|name| format!("Untagged: {}", familiar(name)));
        let deleted = reply.deleted.iter().map(|id| format!("Deleted: {id}"));
        let lines: Vec<String> = untagged.chain(deleted).collect();
        Ok((!lines.is_empty()).then(|| lines.join("\n")))
    })
    .await)
}

pub async fn tag(ctx: &Ctx, args: TagArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    client.tag_image(TagImageRequest { source: args.source, target: args.target }).await?;
    Ok(0)
}

pub async fn load(ctx: &Ctx, args: LoadArgs) -> Result<i32, CliError> {
    let reader: Box<dyn Read + Send> = match &args.input {
        Some(path) => Box::new(fs::File::open(path).map_err(|e| CliError::io(format!("open {}", path.display()), e))?),
        None if tty::stdin_is_tty() => {
            return Err(CliError::refused("requested load from stdin, but stdin is empty"));
        }
        None => Box::new(io::stdin()),
    };
    let mut client = ctx.client().await?;
    let (chunks, mut reading) = spawn_chunks(reader);
    let call = client.load_images(chunks);
    tokio::pin!(call);
    let reply = tokio::select! {
        // A read error cancels the call, so toted loads no truncated archive.
        read = &mut reading => {
            read.map_err(|e| CliError::Protocol(format!("reader task failed: {e}")))?
                .map_err(|e| CliError::io("cannot read the archive", e))?;
            call.await?
        }
        reply = &mut call => reply?,
    };
    for loaded in &reply.into_inner().loaded {
        match loaded.strip_prefix("sha256:") {
            Some(_) => outln!("Loaded image ID: {loaded}"),
            None => outln!("Loaded image: {}", familiar(loaded)),
        }
    }
    Ok(0)
}

/// docker's warnings, and what Tote prunes besides.
const PRUNE_DANGLING_WARNING: &str = "WARNING! This will remove all dangling images.";
const PRUNE_ALL_WARNING: &str =
    "WARNING! This will remove all images without at least one container associated to them.";
const PRUNE_PARTIAL_WARNING: &str = "It will also remove the partial downloads of interrupted pulls.";

/// `tote image prune [-a] [-f]`: asks first (a "no" ends it quietly with
/// 0, as docker does), then prints what went and the space reclaimed.
pub async fn prune(ctx: &Ctx, args: PruneArgs) -> Result<i32, CliError> {
    if !args.force {
        let warning = if args.all { PRUNE_ALL_WARNING } else { PRUNE_DANGLING_WARNING };
        out!("{warning}\n{PRUNE_PARTIAL_WARNING}\nAre you sure you want to continue? [y/N] ");
        if !confirmed(&mut io::stdin().lock()) {
            return Ok(0);
        }
    }
    let mut client = ctx.client().await?;
    let reply = client.prune_images(PruneImagesRequest { all: args.all }).await?.into_inner();
    out!("{}", prune_output(&reply));
    Ok(0)
}

/// docker's answer check: `y` or `Y`, anything else (or nothing) is no.
fn confirmed(input: &mut impl BufRead) -> bool {
    let _ = io::stdout().flush();
    let mut answer = String::new();
    input.read_line(&mut answer).is_ok() && answer.trim().eq_ignore_ascii_case("y")
}

fn prune_output(reply: &PruneImagesReply) -> String {
    let mut out = String::new();
    if !reply.untagged.is_empty() || !reply.deleted.is_empty() {
        out.push_str("Deleted Images:\n");
        for name in &reply.untagged {
            out.push_str(&format!("untagged: {}\n", familiar(name)));
        }
        for digest in &reply.deleted {
            out.push_str(&format!("deleted: {digest}\n"));
        }
        out.push('\n');
    }
    if !reply.partial_downloads.is_empty() {
        out.push_str("Deleted Partial Downloads:\n");
        for partial in &reply.partial_downloads {
            out.push_str(&format!("deleted: {partial}\n"));
        }
        out.push('\n');
    }
    out.push_str(&format!("Total reclaimed space: {}\n", format::human_size_4(reply.space_reclaimed)));
    out
}

/// A reference as docker shows it, e.g. `busybox:latest` or
/// `busybox@sha256:...`.
fn familiar(reference: &str) -> String {
    if let Some((name, digest)) = reference.split_once('@') {
        return format!("{}@{digest}", familiar_name(name));
    }
    let (name, tag) = split_tag(reference);
    if tag == "<none>" { name } else { format!("{name}:{tag}") }
}

/// Reads `reader` on a blocking thread into 1 MiB chunks.
fn spawn_chunks(
    mut reader: impl Read + Send + 'static,
) -> (ReceiverStream<Chunk>, tokio::task::JoinHandle<io::Result<()>>) {
    let (sender, receiver) = mpsc::channel(4);
    let reading = tokio::task::spawn_blocking(move || {
        loop {
            let mut data = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match reader.read(&mut data[filled..]) {
                    Ok(0) => break,
                    Ok(read) => filled += read,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            data.truncate(filled);
            if sender.blocking_send(Chunk { data }).is_err() {
                return Ok(());
            }
        }
    });
    (ReceiverStream::new(receiver), reading)
}

pub async fn save(ctx: &Ctx, args: SaveArgs) -> Result<i32, CliError> {
    if args.output.is_none() && tty::stdout_is_tty() {
        return Err(CliError::refused("cowardly refusing to save to a terminal. Use the -o flag or redirect"));
    }
    let mut client = ctx.client().await?;
    let mut stream = client.save_images(SaveImagesRequest { references: args.images.clone() }).await?.into_inner();
    let Some(output) = &args.output else {
        let mut stdout = io::stdout().lock();
        while let Some(chunk) = stream.message().await? {
            stdout.write_all(&chunk.data).map_err(|e| CliError::io("cannot write to stdout", e))?;
        }
        return stdout.flush().map(|()| 0).map_err(|e| CliError::io("cannot write to stdout", e));
    };
    // Written beside the target and renamed at the end, so a failed save
    // leaves no partial archive under the requested name.
    let partial = partial_path(output);
    let written = async {
        let mut file =
            fs::File::create(&partial).map_err(|e| CliError::io(format!("create {}", partial.display()), e))?;
        while let Some(chunk) = stream.message().await? {
            file.write_all(&chunk.data).map_err(|e| CliError::io(format!("write {}", partial.display()), e))?;
        }
        file.sync_all().map_err(|e| CliError::io(format!("write {}", partial.display()), e))?;
        fs::rename(&partial, output).map_err(|e| CliError::io(format!("rename to {}", output.display()), e))
    }
    .await;
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written.map(|()| 0)
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tote-partial-{}", std::process::id()));
    output.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_into_familiar_repositories() {
        assert_eq!(split_tag("docker.io/library/busybox:latest"), ("busybox".into(), "latest".into()));
        assert_eq!(split_tag("localhost:5000/app:v1"), ("localhost:5000/app".into(), "v1".into()));
        assert_eq!(split_tag("localhost:5000/app"), ("localhost:5000/app".into(), "<none>".into()));
        assert_eq!(familiar("docker.io/library/alpine:3.20"), "alpine:3.20");
        assert_eq!(familiar("docker.io/library/alpine@sha256:ab"), "alpine@sha256:ab");
    }

    #[test]
    fn prune_prints_dockers_report_and_the_partial_downloads() {
        let reply = PruneImagesReply {
            untagged: vec!["docker.io/library/busybox:latest".into()],
            deleted: vec!["sha256:aaaa".into(), "sha256:bbbb".into()],
            partial_downloads: vec!["sha256:cccc".into()],
            space_reclaimed: 4_261_000,
        };
        assert_eq!(
            prune_output(&reply),
            "Deleted Images:\nuntagged: busybox:latest\ndeleted: sha256:aaaa\ndeleted: sha256:bbbb\n\n\
             Deleted Partial Downloads:\ndeleted: sha256:cccc\n\n\
             Total reclaimed space: 4.261MB\n"
        );
        assert_eq!(prune_output(&PruneImagesReply::default()), "Total reclaimed space: 0B\n");
        for (answer, yes) in
            [("y\n", true), ("Y\n", true), (" y \n", true), ("yes\n", false), ("\n", false), ("", false)]
        {
            assert_eq!(confirmed(&mut answer.as_bytes()), yes, "{answer:?}");
        }
    }

    #[test]
    fn the_default_table_matches_docker() {
        let image = ImageSummary {
            id: "sha256:0123456789abcdef".into(),
            repo_tags: vec!["docker.io/library/busybox:latest".into(), "busybox:1.36".into()],
            repo_digests: vec![],
            created: 1000,
            size: 4_261_000,
        };
        let rows: Vec<(Value, &dyn Methods)> =
            rows(&image, false, 1000 + 3 * 7 * 86_400).into_iter().map(|r| (r, &NoMethods as &dyn Methods)).collect();
        let out = Listing::new(None, DEFAULT_TABLE).unwrap().render(&header(), &rows).unwrap();
        assert_eq!(
            out,
            "REPOSITORY   TAG       IMAGE ID       CREATED       SIZE\n\
             busybox      latest    0123456789ab   3 weeks ago   4.26MB\n\
             busybox      1.36      0123456789ab   3 weeks ago   4.26MB\n"
        );
        assert!(matches_filter(&rows[0].0, Some("busybox")));
        assert!(matches_filter(&rows[0].0, Some("busybox:latest")));
        assert!(!matches_filter(&rows[0].0, Some("busybox:1.36")));
        assert!(!matches_filter(&rows[0].0, Some("alpine")));
        let undated = ImageSummary { created: 0, ..image };
        assert_eq!(super::rows(&undated, false, 1000)[0]["CreatedSince"], "N/A");
    }
}
