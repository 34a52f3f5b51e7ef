//! `tote pull`, and the pull `run` makes for a missing image: per-layer
//! progress bars on a terminal, docker's plain lines otherwise.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tote_api::v1::{PullImageRequest, PullProgress};

use super::{Client, Ctx};
use crate::args::PullArgs;
use crate::errors::CliError;
use crate::output::outln;
use crate::tty;

pub async fn pull(ctx: &Ctx, args: PullArgs) -> Result<i32, CliError> {
    let reference = Reference::parse(&args.name);
    if !args.quiet && reference.tag_defaulted {
        eprintln!("Using default tag: latest");
    }
    let mut client = ctx.client().await?;
    let display = if args.quiet { Display::Quiet } else { Display::for_stderr() };
    pull_image(&mut client, &args.name, args.platform.as_deref().unwrap_or(""), display).await?;
    outln!("{}", reference.full());
    Ok(0)
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// indicatif bars, one per layer.
    Bars,
    /// One line per layer step, as docker prints without a terminal.
    Lines,
    Quiet,
}

impl Display {
    /// Bars when indicatif can draw on stderr (a terminal that is not
    /// `TERM=dumb`), else lines.
    pub fn for_stderr() -> Self {
        let drawable = tty::stderr_is_tty() && !ProgressDrawTarget::stderr().is_hidden();
        if drawable { Display::Bars } else { Display::Lines }
    }
}

/// Pulls `reference`, showing progress on stderr.
pub async fn pull_image(
    client: &mut Client,
    reference: &str,
    platform: &str,
    display: Display,
) -> Result<(), CliError> {
    let request =
        PullImageRequest { reference: reference.to_string(), auth: String::new(), platform: platform.to_string() };
    let mut stream = client.pull_image(request).await?.into_inner();
    let mut progress = Progress::new(display);
    while let Some(message) = stream.message().await.inspect_err(|_| progress.abandon())? {
        progress.update(&message);
    }
    progress.finish(&Reference::parse(reference).familiar());
    Ok(())
}

/// Statuses that carry a byte count worth a bar.
fn is_transfer(message: &PullProgress) -> bool {
    message.total > 0 && matches!(message.status.as_str(), "Downloading" | "Extracting")
}

/// Statuses after which a layer has nothing more to show.
fn is_final(status: &str) -> bool {
    matches!(status, "Pull complete" | "Already exists")
}

struct Progress {
    display: Display,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    last_status: HashMap<String, String>,
    digest: String,
    printed_digest: bool,
    printed_status: bool,
    downloaded: bool,
}

impl Progress {
    fn new(display: Display) -> Self {
        let target = if display == Display::Bars { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Progress {
            display,
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
            last_status: HashMap::new(),
            digest: String::new(),
            printed_digest: false,
            printed_status: false,
            downloaded: false,
        }
    }

    fn update(&mut self, message: &PullProgress) {
        if !message.digest.is_empty() {
            self.digest = message.digest.clone();
        }
        if matches!(message.status.as_str(), "Downloading" | "Download complete" | "Pull complete" | "Extracting") {
            self.downloaded = true;
        }
        if !message.image_id.is_empty() {
            // The last message: its status is toted's summary; the closing
            // lines are docker's, printed by `finish`.
            if message.status.starts_with("Status:") || message.status.starts_with("Digest:") {
                self.image_line(message);
            }
        } else if message.id.is_empty() {
            self.image_line(message);
        } else {
            self.layer(message);
        }
    }

    /// A message about the image as a whole: one line, with docker's wording
    /// for the bare "Digest" and "Status" statuses.
    fn image_line(&mut self, message: &PullProgress) {
        let line = match message.status.as_str() {
            "Digest" if message.digest.is_empty() => return,
            "Digest" => format!("Digest: {}", message.digest),
            "Status" => return,
            "" => return,
            status => status.to_string(),
        };
        self.printed_digest |= line.starts_with("Digest:");
        self.printed_status |= line.starts_with("Status:");
        self.line(&line);
    }

    fn layer(&mut self, message: &PullProgress) {
        match self.display {
            Display::Quiet => {}
            Display::Lines => {
                let changed = self.last_status.get(&message.id) != Some(&message.status);
                if changed && !is_transfer(message) {
                    self.last_status.insert(message.id.clone(), message.status.clone());
                    eprintln!("{}: {}", message.id, message.status);
                }
            }
            Display::Bars => self.draw_layer(message),
        }
    }

    fn draw_layer(&mut self, message: &PullProgress) {
        let multi = &self.multi;
        let bar = self.bars.entry(message.id.clone()).or_insert_with(|| {
            // Styled before it is added, so its first frame is not the default bar.
            multi.add(ProgressBar::new(0).with_style(style("{prefix}: {msg}")).with_prefix(message.id.clone()))
        });
        if bar.is_finished() {
            return;
        }
        if is_transfer(message) {
            bar.set_style(style("{prefix}: {msg} [{bar:40}] {decimal_bytes}/{decimal_total_bytes}"));
            bar.set_length(message.total);
            bar.set_position(message.current);
        } else {
            bar.set_style(style("{prefix}: {msg}"));
        }
        bar.set_message(message.status.clone());
        if is_final(&message.status) {
            bar.finish();
        } else {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }

    fn line(&self, line: &str) {
        match self.display {
            Display::Quiet => {}
            Display::Lines => eprintln!("{line}"),
            // Printed above the bars, which stay at the bottom.
            Display::Bars => {
                let _ = self.multi.println(line);
            }
        }
    }

    /// The closing lines docker prints, unless toted sent them.
    fn finish(&mut self, familiar: &str) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
        if !self.printed_digest && !self.digest.is_empty() {
            self.line(&format!("Digest: {}", self.digest));
        }
        if !self.printed_status {
            let status = if self.downloaded { "Downloaded newer image for" } else { "Image is up to date for" };
            self.line(&format!("Status: {status} {familiar}"));
        }
    }

    /// Leaves the bars as they are when the pull fails.
    fn abandon(&self) {
        for bar in self.bars.values() {
            bar.abandon();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// An image reference split as docker reads it, for display only: toted
/// does the real resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    /// `:tag` or `@digest`.
    pub suffix: String,
    pub tag_defaulted: bool,
}

impl Reference {
    pub fn parse(reference: &str) -> Self {
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(colon) => (&name[..last_slash + colon], Some(&name[last_slash + colon + 1..])),
            None => (name, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest.to_string()),
            _ => ("docker.io", name.to_string()),
        };
        let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
        let (suffix, tag_defaulted) = match (tag, digest) {
            (_, Some(digest)) => (format!("@{digest}"), false),
            (Some(tag), None) => (format!(":{tag}"), false),
            (None, None) => (":latest".to_string(), true),
        };
        Reference { domain: domain.to_string(), path, suffix, tag_defaulted }
    }

    /// `docker.io/library/busybox:latest`.
    pub fn full(&self) -> String {
        format!("{}/{}{}", self.domain, self.path, self.suffix)
    }

    /// `busybox:latest`, as docker shows references.
    pub fn familiar(&self) -> String {
        format!("{}{}", familiar_name(&format!("{}/{}", self.domain, self.path)), self.suffix)
    }
}

/// A repository name without docker.io's implicit parts.
pub fn familiar_name(name: &str) -> String {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let name = name.strip_prefix("library/").filter(|rest| !rest.contains('/')).unwrap_or(name);
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let busybox = Reference::parse("busybox");
        assert!(busybox.tag_defaulted);
        assert_eq!(busybox.full(), "docker.io/library/busybox:latest");
        assert_eq!(busybox.familiar(), "busybox:latest");
        assert_eq!(Reference::parse("user/app:1.0").full(), "docker.io/user/app:1.0");
        assert_eq!(Reference::parse("user/app:1.0").familiar(), "user/app:1.0");
        assert_eq!(Reference::parse("localhost:5000/app").full(), "localhost:5000/app:latest");
        assert_eq!(Reference::parse("ghcr.io/o/app@sha256:ab").full(), "ghcr.io/o/app@sha256:ab");
        assert_eq!(Reference::parse("docker.io/library/alpine:3").familiar(), "alpine:3");
        assert_eq!(familiar_name("docker.io/library/busybox"), "busybox");
        assert_eq!(familiar_name("quay.io/x/y"), "quay.io/x/y");
    }

    #[test]
    fn only_sized_downloads_get_bars() {
        let message =
            |status: &str, total| PullProgress { id: "a".into(), status: status.into(), total, ..Default::default() };
        assert!(is_transfer(&message("Downloading", 10)));
        assert!(!is_transfer(&message("Downloading", 0)));
        assert!(!is_transfer(&message("Pull complete", 10)));
    }
}
