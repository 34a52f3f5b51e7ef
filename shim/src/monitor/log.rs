//! Container logs in the CRI log format, one line per record:
//!
//! ```text
//! 2026-11-22T06:52:06.207504860Z stdout F hello world
//! 2026-11-22T06:52:06.307504860Z stderr P a partial line, continued in the next record
//! ```
//!
//! The stream stays apart from the text and every record has its time, so
//! `logs` can filter by stream and time and show timestamps. A file is
//! rotated once it passes its size limit: `log` → `log.1` → … → `log.N`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How big a log may grow and how many rotated files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self { max_size: 10 << 20, max_files: 3 }
    }
}

/// The longest text of one record: a longer line becomes partial records
/// of this size, as CRI does.
const MAX_LINE: usize = 16 * 1024;
/// Records are gathered up to this size and written with one write(2):
/// what one read of the container's output holds goes out in one call.
const BATCH: usize = 16 * 1024;

/// Appends records to a container's log, rotating it as it grows.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// The log's size, records not written yet included.
    size: u64,
    rotation: Rotation,
    /// Text of a stream that has not ended its line yet (at most MAX_LINE).
    pending: [Vec<u8>; 2],
    /// Records not written yet.
    out: Vec<u8>,
}

/// Opens (creating) a log file readable by root and its group only: what a
/// container prints may be secret.
fn open_log(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl LogWriter {
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Self> {
        let file = open_log(path)?;
        let size = file.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), file, size, rotation, pending: [Vec::new(), Vec::new()], out: Vec::new() })
    }

    /// Writes what a stream produced: a record per complete line, all with
    /// the time it was read; a line longer than MAX_LINE is split into
    /// partial records. The records reach the file before this returns.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        let time = crate::state::now_rfc3339();
        let recorded = self.lines(time.as_bytes(), stream, data);
        let written = self.flush_out();
        recorded.and(written)
    }

    fn lines(&mut self, time: &[u8], stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        let index = stream as usize;
        while !data.is_empty() {
            // How much more text fits in this stream's current record.
            let room = MAX_LINE - self.pending[index].len();
            let window = &data[..data.len().min(room + 1)];
            if let Some(end) = memchr::memchr(b'\n', window) {
                let pending = std::mem::take(&mut self.pending[index]);
                self.record(time, stream, &pending, &data[..end], true)?;
                self.pending[index] = reuse(pending);
                data = &data[end + 1..];
            } else if data.len() > room {
                let pending = std::mem::take(&mut self.pending[index]);
                self.record(time, stream, &pending, &data[..room], false)?;
                self.pending[index] = reuse(pending);
                data = &data[room..];
            } else {
                self.pending[index].extend_from_slice(data);
                data = &[];
            }
        }
        Ok(())
    }

    /// Writes out any unfinished line (the stream closed without a newline).
    pub fn flush_partial(&mut self) -> std::io::Result<()> {
        let time = crate::state::now_rfc3339();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let part = std::mem::take(&mut self.pending[stream as usize]);
            if !part.is_empty() {
                self.record(time.as_bytes(), stream, &part, &[], false)?;
            }
        }
        self.flush_out()
    }

    /// Adds one record, `head` and `tail` its text, to the batch.
    fn record(&mut self, time: &[u8], stream: Stream, head: &[u8], tail: &[u8], full: bool) -> std::io::Result<()> {
        let name = stream.name().as_bytes();
        let len = time.len() + 1 + name.len() + 3 + head.len() + tail.len() + 1;
        if self.size + len as u64 > self.rotation.max_size && self.size > 0 {
            self.flush_out()?;
            self.rotate()?;
        }
        if self.out.len() + len > BATCH {
            self.flush_out()?;
        }
        if self.out.capacity() == 0 {
            // Allocated once, the first time the container writes, and
            // never grown: a batch plus the longest record.
            self.out.reserve_exact(BATCH + MAX_LINE + 64);
        }
        self.out.extend_from_slice(time);
        self.out.push(b' ');
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(if full { b" F " } else { b" P " });
        self.out.extend_from_slice(head);
        self.out.extend_from_slice(tail);
        self.out.push(b'\n');
        self.size += len as u64;
        Ok(())
    }

    /// Writes the batch; on failure its records are dropped (the log is
    /// best effort, the container's output is never held back for it).
    fn flush_out(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.out);
        if written.is_err() {
            self.size = self.size.saturating_sub(self.out.len() as u64);
        }
        self.out.clear();
        written
    }

    /// Writes the batch, then opens the file at the log's path again,
    /// created if it was moved away; complete lines only go to the new
    /// file, a partial one stays pending for it.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        let flushed = self.flush_out();
        let file = open_log(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = file;
        flushed
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.rotation.max_files.max(1);
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(keep - 1));
        for n in (1..keep - 1).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if keep > 1 {
            std::fs::rename(&self.path, numbered(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = open_log(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// An emptied pending buffer, its allocation kept unless it grew large.
fn reuse(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    if buf.capacity() > 4096 { Vec::new() } else { buf }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: String,
    pub stream: Stream,
    /// false when the text continues in the next record of its stream.
    pub full: bool,
    pub text: Vec<u8>,
}

pub fn parse_record(line: &[u8]) -> Option<Record> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = parts.next()? == b"F";
    Some(Record { time, stream, full, text: parts.next().unwrap_or_default().to_vec() })
}

/// The log files of a container, oldest first.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for n in (1..1000).rev() {
        let rotated = PathBuf::from(format!("{}.{n}", path.display()));
        if rotated.exists() {
            files.push(rotated);
        }
    }
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// Every record in a container's logs, oldest first.
pub fn read_all(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for file in log_files(path) {
        let mut reader = BufReader::new(File::open(file)?);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            records.extend(parse_record(&line));
            line.clear();
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tote-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("log")
    }

    #[test]
    fn lines_are_recorded_per_stream_with_partials_joined() {
        let path = scratch("lines");
        let mut log = LogWriter::open(&path, Rotation::default()).unwrap();
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\n").unwrap();
        log.write(Stream::Stdout, b"no newline").unwrap();
        log.flush_partial().unwrap();
        let records = read_all(&path).unwrap();
        let texts: Vec<(Stream, bool, &[u8])> = records.iter().map(|r| (r.stream, r.full, r.text.as_slice())).collect();
        assert_eq!(
            texts,
            vec![
                (Stream::Stdout, true, &b"hello"[..]),
                (Stream::Stderr, true, &b"oops"[..]),
                (Stream::Stdout, true, &b"world"[..]),
                (Stream::Stdout, false, &b"no newline"[..]),
            ]
        );
        assert!(records[0].time.ends_with('Z') && records[0].time.contains('T'));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn reopen_continues_in_a_new_file_after_the_old_one_is_moved() {
        let path = scratch("reopen");
        let moved = path.with_extension("rotated");
        let mut log = LogWriter::open(&path, Rotation::default()).unwrap();
        log.write(Stream::Stdout, b"before\nhalf").unwrap();
        std::fs::rename(&path, &moved).unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b" line\nafter\n").unwrap();
        let texts = |p: &Path| read_all(p).unwrap().into_iter().map(|r| r.text).collect::<Vec<_>>();
        assert_eq!(texts(&moved), vec![b"before".to_vec()]);
        assert_eq!(texts(&path), vec![b"half line".to_vec(), b"after".to_vec()]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn long_lines_become_partial_records() {
        let path = scratch("long");
        let mut log = LogWriter::open(&path, Rotation::default()).unwrap();
        let long = vec![b'x'; 40 * 1024];
        log.write(Stream::Stdout, &long).unwrap();
        log.write(Stream::Stdout, b"\n").unwrap();
        let records = read_all(&path).unwrap();
        assert_eq!(records.iter().map(|r| r.full).collect::<Vec<_>>(), vec![false, false, true]);
        assert_eq!(records.iter().map(|r| r.text.len()).sum::<usize>(), long.len());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_full_record() {
        let path = scratch("exact");
        let mut log = LogWriter::open(&path, Rotation::default()).unwrap();
        let mut line = vec![b'y'; MAX_LINE];
        line.push(b'\n');
        // In two reads, the second ending just after the limit.
        log.write(Stream::Stderr, &line[..100]).unwrap();
        log.write(Stream::Stderr, &line[100..]).unwrap();
        let records = read_all(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert!(records[0].full && records[0].stream == Stream::Stderr);
        assert_eq!(records[0].text.len(), MAX_LINE);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn one_read_of_many_lines_is_in_the_file_when_write_returns() {
        let path = scratch("batch");
        let mut log = LogWriter::open(&path, Rotation::default()).unwrap();
        let mut data = Vec::new();
        for i in 0..5000 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        data.extend_from_slice(b"unfinished");
        log.write(Stream::Stdout, &data).unwrap();
        let records = read_all(&path).unwrap();
        assert_eq!(records.len(), 5000);
        assert!(records.iter().all(|r| r.full && r.time == records[0].time));
        assert_eq!(records[4999].text, b"line 4999");
        log.write(Stream::Stdout, b" now\n").unwrap();
        assert_eq!(read_all(&path).unwrap()[5000].text, b"unfinished now");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn one_read_rotates_where_the_limit_falls() {
        let path = scratch("rotate-batch");
        let mut log = LogWriter::open(&path, Rotation { max_size: 300, max_files: 2 }).unwrap();
        let data: Vec<u8> = (0..12).flat_map(|i| format!("line {i:03}\n").into_bytes()).collect();
        log.write(Stream::Stdout, &data).unwrap();
        let files = log_files(&path);
        assert_eq!(files.len(), 2, "{files:?}");
        for file in &files {
            assert!(std::fs::metadata(file).unwrap().len() <= 300);
        }
        let records = read_all(&path).unwrap();
        assert_eq!(records.last().unwrap().text, b"line 011");
        let numbers: Vec<u32> =
            records.iter().map(|r| String::from_utf8_lossy(&r.text)[5..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn logs_rotate_and_keep_a_bounded_number_of_files() {
        let path = scratch("rotate");
        let mut log = LogWriter::open(&path, Rotation { max_size: 200, max_files: 3 }).unwrap();
        for i in 0..40 {
            log.write(Stream::Stdout, format!("line {i:03}\n").as_bytes()).unwrap();
        }
        let files = log_files(&path);
        assert_eq!(files.len(), 3, "{files:?}");
        for file in &files {
            assert!(std::fs::metadata(file).unwrap().len() <= 200);
        }
        let records = read_all(&path).unwrap();
        assert_eq!(records.last().unwrap().text, b"line 039");
        // Oldest first, without gaps inside what was kept.
        let numbers: Vec<u32> =
            records.iter().map(|r| String::from_utf8_lossy(&r.text)[5..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
