//! Layers whose tar stream stops right after the last entry's content.
//!
//! A tar archive pads each entry's content to a 512-byte block and ends
//! with two zero blocks. `umoci insert` of umoci 0.4.7 (Debian 12's; fixed
//! upstream in 2024 by opencontainers/umoci#534) never closed its tar
//! writer, so its layers stop at the last byte of the last file: no padding,
//! no end blocks. Go's archive/tar, and with it docker, containerd, CRI-O
//! and podman, reads an end of stream there as the end of the archive (and
//! only there: a stream ending inside content, padding or a header is
//! truncated). [`Unpadded`] does the same for the tar reader: an end of
//! stream exactly where the current entry's content ends reads as the zero
//! padding up to the block boundary, after which the reader finds the end.
//!
//! The padding is invented on the reading side only: whatever hashes the
//! layer for its diff id sees the stream as it is.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

const BLOCK: u64 = 512;

/// Where the content of the entry being applied ends in the stream, as the
/// applier tells [`Unpadded`]; `NONE` while it is unknown.
#[derive(Debug, Clone)]
pub(crate) struct ContentEnd(Rc<Cell<u64>>);

impl ContentEnd {
    const NONE: u64 = u64::MAX;

    pub(crate) fn new() -> Self {
        Self(Rc::new(Cell::new(Self::NONE)))
    }

    pub(crate) fn set(&self, end: Option<u64>) {
        self.0.set(end.unwrap_or(Self::NONE));
    }

    fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A tar stream that may lack the padding after its last entry.
pub(crate) struct Unpadded<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    pos: u64,
    content_end: ContentEnd,
    /// Zero bytes still to give once `inner` ended at `content_end`.
    padding: Option<u64>,
}

impl<R: Read> Unpadded<R> {
    pub(crate) fn new(inner: R, content_end: ContentEnd) -> Self {
        Self { inner, pos: 0, content_end, padding: None }
    }
}

impl<R: Read> Read for Unpadded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = &mut self.padding {
            let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            buf[..n].fill(0);
            *left -= n as u64;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.pos == self.content_end.get() && !self.pos.is_multiple_of(BLOCK) {
            self.padding = Some(BLOCK - self.pos % BLOCK);
            return self.read(buf);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(data: &[u8], end: Option<u64>) -> Vec<u8> {
        let content_end = ContentEnd::new();
        content_end.set(end);
        let mut out = Vec::new();
        Unpadded::new(data, content_end).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn an_end_at_the_content_end_is_padded_to_the_block() {
        let data = vec![7u8; 512 + 5];
        let out = read_all(&data, Some(517));
        assert_eq!(out.len(), 1024);
        assert_eq!(&out[..517], &data[..]);
        assert!(out[517..].iter().all(|&b| b == 0));
    }

    #[test]
    fn other_ends_are_left_alone() {
        let data = vec![7u8; 517];
        // Inside the content, inside the padding, or unknown: truncated.
        for end in [Some(600), Some(516), None] {
            assert_eq!(read_all(&data, end), data, "{end:?}");
        }
        // On a block boundary nothing is missing.
        assert_eq!(read_all(&data[..512], Some(512)).len(), 512);
    }
}
