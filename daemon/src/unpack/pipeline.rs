//! Applying a compressed layer with the decompression on a thread of its
//! own, overlapping with the filesystem work: with gzip the decoder is most
//! of the cost.

use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use super::compression::{Compression, decompress};
use super::{LayerStats, UnpackError, UnpackOptions, apply_layer};

/// Decompressed data travels in chunks this big…
const CHUNK: usize = 256 * 1024;
/// …at most this many of them between the threads (bounded memory).
const CHUNKS_IN_FLIGHT: usize = 8;

/// Applies a layer blob compressed with `compression` into `root`, like
/// `apply_layer(decompress(blob, compression)?, root, opts)` (same results,
/// same errors), but with the decompression on a scoped helper thread so
/// that it overlaps with the filesystem work on this one. `observe` runs on
/// the helper too and sees every decompressed byte in order, the whole
/// stream when this returns `Ok` (the applier reads on to its end): the
/// place to compute the layer's diff id.
///
/// When the layer fails, the helper stops at its next chunk (or once its
/// current read of `blob` returns) before this returns.
pub fn apply_layer_pipelined<R, F>(
    blob: R,
    compression: Compression,
    root: &Path,
    opts: &UnpackOptions,
    mut observe: F,
) -> Result<LayerStats, UnpackError>
where
    R: Read + Send,
    F: FnMut(&[u8]) + Send,
{
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let (empty_tx, empty_rx) = mpsc::channel();
        scope.spawn(move || decode(blob, compression, &mut observe, &full_tx, &empty_rx));
        apply_layer(ChunkReader { chunks: full_rx, recycle: empty_tx, current: Vec::new(), pos: 0 }, root, opts)
    })
}

/// The helper thread: decodes `blob` into chunks until the end, an error,
/// or the receiving side going away.
fn decode<R: Read>(
    blob: R,
    compression: Compression,
    observe: &mut impl FnMut(&[u8]),
    chunks: &SyncSender<io::Result<Vec<u8>>>,
    recycled: &Receiver<Vec<u8>>,
) {
    let mut reader = match decompress(blob, compression) {
        Ok(reader) => reader,
        Err(e) => {
            let _ = chunks.send(Err(e));
            return;
        }
    };
    loop {
        let mut chunk = recycled.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            match reader.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // What was decoded before the error still goes first.
                    if filled > 0 {
                        chunk.truncate(filled);
                        observe(&chunk);
                        let _ = chunks.send(Ok(chunk));
                    }
                    let _ = chunks.send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        chunk.truncate(filled);
        observe(&chunk);
        if chunks.send(Ok(chunk)).is_err() {
            return;
        }
    }
}

/// Reads the chunks the helper sends; the end of the stream is the helper
/// hanging up.
struct ChunkReader {
    chunks: Receiver<io::Result<Vec<u8>>>,
    recycle: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.current.capacity() > 0 {
                let _ = self.recycle.send(std::mem::take(&mut self.current));
            }
            self.pos = 0;
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
