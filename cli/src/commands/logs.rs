//! `tote logs`: the container's log, stdout entries to stdout and stderr
//! entries to stderr, optionally with each line's timestamp.

use std::io::Write;

use tote_api::v1::{LogEntry, LogsRequest};

use super::Ctx;
use crate::args::LogsArgs;
use crate::errors::CliError;

pub async fn logs(ctx: &Ctx, args: LogsArgs) -> Result<i32, CliError> {
    let request = LogsRequest {
        id: args.container.clone(),
        follow: args.follow,
        tail: parse_tail(&args.tail)?,
        since: args.since.clone().unwrap_or_default(),
        until: args.until.clone().unwrap_or_default(),
        stdout: true,
        stderr: true,
    };
    let mut client = ctx.client().await?;
    let mut entries = client.container_logs(request).await?.into_inner();
    let mut writer = LogWriter::new(args.timestamps);
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(entry) = entries.message().await? {
        writer
            .write(&entry, &mut stdout.lock(), &mut stderr.lock())
            .map_err(|e| CliError::io("cannot write logs", e))?;
    }
    Ok(0)
}

/// `--tail`: "all" (or negative) for every line, else a count.
fn parse_tail(tail: &str) -> Result<i64, CliError> {
    if tail == "all" {
        return Ok(-1);
    }
    let count: i64 = tail.parse().map_err(|_| CliError::refused(format!("invalid value for --tail: {tail:?}")))?;
    Ok(if count < 0 { -1 } else { count })
}

/// Writes entries, keeping track per stream of whether the next entry
/// starts a line (only then does a timestamp go in front).
struct LogWriter {
    timestamps: bool,
    stdout_at_line_start: bool,
    stderr_at_line_start: bool,
}

impl LogWriter {
    fn new(timestamps: bool) -> Self {
        LogWriter { timestamps, stdout_at_line_start: true, stderr_at_line_start: true }
    }

    fn write(&mut self, entry: &LogEntry, stdout: &mut impl Write, stderr: &mut impl Write) -> std::io::Result<()> {
        let (out, at_line_start): (&mut dyn Write, &mut bool) = if entry.stream == "stderr" {
            (stderr, &mut self.stderr_at_line_start)
        } else {
            (stdout, &mut self.stdout_at_line_start)
        };
        if self.timestamps && *at_line_start {
            write!(out, "{} ", entry.time)?;
        }
        out.write_all(&entry.text)?;
        if entry.complete {
            out.write_all(b"\n")?;
        }
        *at_line_start = entry.complete;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stream: &str, text: &str, complete: bool) -> LogEntry {
        LogEntry { time: "T".into(), stream: stream.into(), text: text.as_bytes().to_vec(), complete }
    }

    #[test]
    fn streams_split_and_partial_lines_join() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut writer = LogWriter::new(true);
        for e in [entry("stdout", "hel", false), entry("stderr", "oops", true), entry("stdout", "lo", true)] {
            writer.write(&e, &mut out, &mut err).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "T hello\n");
        assert_eq!(String::from_utf8(err).unwrap(), "T oops\n");
    }

    #[test]
    fn without_timestamps_text_is_verbatim() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut writer = LogWriter::new(false);
        writer.write(&entry("stdout", "a", true), &mut out, &mut err).unwrap();
        writer.write(&entry("stdout", "prompt> ", false), &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a\nprompt> ");
    }

    #[test]
    fn tail_values() {
        assert_eq!(parse_tail("all").unwrap(), -1);
        assert_eq!(parse_tail("10").unwrap(), 10);
        assert_eq!(parse_tail("-5").unwrap(), -1);
        assert!(parse_tail("many").is_err());
    }
}
