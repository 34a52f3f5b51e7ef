//! Layer compression: which one a media type or the first bytes announce,
//! and streaming decoders for them.

use std::io::{self, BufReader, Read};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Input buffer of the decoders: big reads from the blob, few syscalls.
const INPUT_BUFFER: usize = 256 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Layer media types and their compression. OCI (`…layer.v1.tar[+gzip|+zstd]`,
/// also the deprecated `nondistributable` variants) and Docker schema 2
/// (`…rootfs.diff.tar.gzip`, its `foreign` variant, and the rarer
/// uncompressed and zstd spellings).
const MEDIA_TYPES: &[(&str, Compression)] = &[
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    ("application/vnd.oci.image.layer.v1.tar+gzip", Compression::Gzip),
    ("application/vnd.oci.image.layer.v1.tar+zstd", Compression::Zstd),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar", Compression::None),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression::Gzip),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Compression::Zstd),
    ("application/vnd.docker.image.rootfs.diff.tar", Compression::None),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression::Gzip),
    ("application/vnd.docker.image.rootfs.diff.tar.zstd", Compression::Zstd),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar", Compression::None),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression::Gzip),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.zstd", Compression::Zstd),
];

impl Compression {
    /// The compression an OCI or Docker layer media type announces; `None`
    /// for a type that is not a known layer type. Case and media-type
    /// parameters (`; foo=bar`) are ignored.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let essence = media_type.split(';').next().unwrap_or_default().trim();
        MEDIA_TYPES.iter().find(|(name, _)| name.eq_ignore_ascii_case(essence)).map(|&(_, compression)| compression)
    }

    /// The compression the first bytes of a blob show: gzip (`1f 8b`), zstd
    /// (`28 b5 2f fd`, or a zstd skippable frame `5? 2a 4d 18`), else
    /// [`Compression::None`]. For layers whose media type lies.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC) || matches!(head, [b, 0x2a, 0x4d, 0x18, ..] if b & 0xf0 == 0x50) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `reader` in a streaming decoder for `compression` (memory bounded
/// by the decoders' windows, not by the layer's size). Gzip streams may
/// consist of several members, zstd streams of several frames, as the
/// tools that write layers sometimes produce. Decoding errors (corrupt data,
/// a bad checksum, a truncated stream) surface as `io::Error`s from `read`.
pub fn decompress<'a, R: Read + 'a>(reader: R, compression: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => {
            Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(INPUT_BUFFER, reader)))
        }
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(INPUT_BUFFER, reader))?)
        }
    })
}

/// Like [`decompress`], with the compression taken from the stream's first
/// bytes ([`Compression::sniff`]) instead of a media type.
pub fn decompress_sniffed<'a, R: Read + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut len = 0;
    while len < head.len() {
        match reader.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let compression = Compression::sniff(&head[..len]);
    decompress(io::Cursor::new(head).take(len as u64).chain(reader), compression)
}
