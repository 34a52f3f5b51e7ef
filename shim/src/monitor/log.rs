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

/// Appends records to a container's log, rotating it as it grows.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    /// Text of a stream that has not ended its line yet.
    pending: [Vec<u8>; 2],
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
        Ok(Self { path: path.to_path_buf(), file, size, rotation, pending: [Vec::new(), Vec::new()] })
    }

    /// Writes what a stream produced: a record per complete line; a line
    /// longer than 16 KiB is split into partial records, as CRI does.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        const MAX_LINE: usize = 16 * 1024;
        let index = stream as usize;
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let mut line = std::mem::take(&mut self.pending[index]);
                    line.extend_from_slice(&data[..end]);
                    self.record(stream, &line, true)?;
                    data = &data[end + 1..];
                }
                None => {
                    self.pending[index].extend_from_slice(data);
                    data = &[];
                }
            }
            while self.pending[index].len() >= MAX_LINE {
                let rest = self.pending[index].split_off(MAX_LINE);
                let part = std::mem::replace(&mut self.pending[index], rest);
                self.record(stream, &part, false)?;
            }
        }
        Ok(())
    }

    /// Writes out any unfinished line (the stream closed without a newline).
    pub fn flush_partial(&mut self) -> std::io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let part = std::mem::take(&mut self.pending[stream as usize]);
            if !part.is_empty() {
                self.record(stream, &part, false)?;
            }
        }
        Ok(())
    }

    fn record(&mut self, stream: Stream, text: &[u8], full: bool) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(crate::state::now_rfc3339().as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.name().as_bytes());
        line.extend_from_slice(if full { b" F " } else { b" P " });
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.size + line.len() as u64 > self.rotation.max_size && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
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
