//! SPDY/3 header blocks: the name/value block and its zlib compression.
//!
//! Each direction of a connection is one zlib stream, primed with the
//! SPDY/3 dictionary and sync-flushed at the end of every block, so the
//! compressor and decompressor live as long as the connection and every
//! header-carrying frame must pass through them in wire order (a frame we
//! ignore still has to be decompressed, or the next block will not decode).

use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Header names of SPDY/3's dictionary, each prefixed on the wire by its
/// 32-bit length.
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's tail: common values, concatenated without lengths.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The Adler-32 of the dictionary, which a zlib stream names in its header
/// (`FDICT`); a peer primed with anything else is not speaking SPDY/3.
pub(crate) const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

pub(crate) fn dictionary() -> Vec<u8> {
    let mut dict = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        push_len(&mut dict, word.len());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
}

/// A decoded name/value block. Names are lowercased (SPDY/3 requires
/// lowercase names; Go's http.Header canonicalises them before sending, and
/// spdystream lowercases them again on the wire, so matching is
/// case-insensitive either way). A value holding NULs is several values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Headers(Vec<(String, String)>);

impl Headers {
    pub(crate) fn new() -> Self {
        Self(Vec::new())
    }

    #[cfg(any(test, feature = "client"))]
    pub(crate) fn with(mut self, name: &str, value: &str) -> Self {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The first value of `name`, matched case-insensitively.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The uncompressed block: a count, then length-prefixed names and
    /// values, repeated names joined into one NUL-separated value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &self.0 {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let mut out = Vec::new();
        push_len(&mut out, names.len());
        for name in names {
            let values: Vec<&str> = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
            let value = values.join("\0");
            push_len(&mut out, name.len());
            out.extend_from_slice(name.as_bytes());
            push_len(&mut out, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// Parses an uncompressed block, which must be exactly one block.
    pub(crate) fn decode(mut block: &[u8]) -> Result<Self, HeaderError> {
        let count = take_u32(&mut block)?;
        // Each pair needs at least its two lengths: a count beyond that is
        // a lie, and trusting it would size an allocation.
        if u64::from(count) * 8 > block.len() as u64 {
            return Err(HeaderError::Malformed("header count exceeds the block"));
        }
        let mut headers = Vec::new();
        for _ in 0..count {
            let name = take_str(&mut block)?;
            if name.is_empty() {
                return Err(HeaderError::Malformed("empty header name"));
            }
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let value = take_str(&mut block)?;
            for v in value.split(|&b| b == 0) {
                headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
            }
        }
        if !block.is_empty() {
            return Err(HeaderError::Malformed("trailing bytes after the header block"));
        }
        Ok(Self(headers))
    }
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    // Names and values come from this crate and are short; a length that
    // does not fit 32 bits would be a bug, not peer input.
    let len = u32::try_from(len).expect("header field under 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
}

fn take_u32(block: &mut &[u8]) -> Result<u32, HeaderError> {
    let (head, rest) = block.split_first_chunk::<4>().ok_or(HeaderError::Malformed("truncated header block"))?;
    *block = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_str<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], HeaderError> {
    let len = take_u32(block)? as usize;
    if len > block.len() {
        return Err(HeaderError::Malformed("header field runs past the block"));
    }
    let (field, rest) = block.split_at(len);
    *block = rest;
    Ok(field)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Malformed(&'static str),
    TooLarge,
    Zlib(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed header block: {what}"),
            Self::TooLarge => write!(f, "header block too large"),
            Self::Zlib(e) => write!(f, "header block compression: {e}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// The sending side's zlib stream.
pub(crate) struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    pub(crate) fn new() -> Self {
        let mut zlib = Compress::new(Compression::best(), true);
        // Fails only if called after compressing, which cannot happen here.
        zlib.set_dictionary(&dictionary()).expect("dictionary on a fresh zlib stream");
        Self { zlib }
    }

    /// Compresses one block, sync-flushed so the peer can decode it without
    /// the blocks that follow.
    pub(crate) fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        let input = headers.encode();
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut consumed = 0;
        loop {
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            consumed += usize::try_from(self.zlib.total_in() - before).unwrap_or(usize::MAX);
            // zlib has finished a sync flush once it leaves output space
            // unused with all input taken.
            if consumed >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(256));
        }
    }
}

/// The receiving side's zlib stream, with a bound on how much one block may
/// inflate to.
pub(crate) struct HeaderDecompressor {
    zlib: Decompress,
    limit: usize,
}

impl HeaderDecompressor {
    pub(crate) fn new(limit: usize) -> Self {
        Self { zlib: Decompress::new(true), limit }
    }

    /// Inflates one block (all of `block` must be consumed) and parses it.
    pub(crate) fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let raw = self.inflate(block)?;
        Headers::decode(&raw)
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out: Vec<u8> = Vec::with_capacity((block.len() * 4).clamp(64, 16 * 1024).min(self.limit + 1));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > self.limit {
                    return Err(HeaderError::TooLarge);
                }
                let grow = out.capacity().max(256).min(self.limit + 1 - out.len());
                out.reserve_exact(grow);
            }
            let in_before = self.zlib.total_in();
            let out_before = out.len();
            let mut primed = false;
            match self.zlib.decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync) {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => {
                    // A finished zlib stream cannot carry the next block.
                    return Err(HeaderError::Zlib("peer ended its header stream".into()));
                }
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ADLER32) => {
                        self.zlib.set_dictionary(&dictionary()).map_err(|e| HeaderError::Zlib(e.to_string()))?;
                        primed = true;
                    }
                    Some(other) => {
                        return Err(HeaderError::Zlib(format!("peer uses dictionary {other:#010x}, not SPDY/3's")));
                    }
                    None => return Err(HeaderError::Zlib(e.to_string())),
                },
            }
            let consumed = usize::try_from(self.zlib.total_in() - in_before).unwrap_or(usize::MAX);
            pos = pos.saturating_add(consumed);
            if out.len() > self.limit {
                return Err(HeaderError::TooLarge);
            }
            // Done once zlib has taken all input and still had room to
            // write: a sync-flushed block leaves nothing pending.
            if pos >= block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !primed && consumed == 0 && out.len() == out_before {
                return Err(HeaderError::Zlib("header block does not decode".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_spdy3s() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        let mut zlib = Compress::new(Compression::best(), true);
        assert_eq!(zlib.set_dictionary(&dict).unwrap(), DICTIONARY_ADLER32);
    }

    #[test]
    fn blocks_share_one_zlib_stream_each_way() {
        let mut tx = HeaderCompressor::new();
        let mut rx = HeaderDecompressor::new(1 << 20);
        let blocks = [
            Headers::new().with("streamtype", "error").with("port", "8080").with("requestid", "0"),
            Headers::new().with("streamtype", "data").with("port", "8080").with("requestid", "0"),
            Headers::new(),
            Headers::new().with("streamtype", "stdout").with("x-multi", "a").with("x-multi", "b"),
        ];
        let mut sizes = Vec::new();
        for block in &blocks {
            let wire = tx.compress(block).unwrap();
            // Every block ends on a sync flush marker.
            assert!(wire.ends_with(&[0x00, 0x00, 0xff, 0xff]), "{wire:02x?}");
            sizes.push(wire.len());
            assert_eq!(&rx.decompress(&wire).unwrap(), block);
        }
        // The first block carries the zlib header naming the dictionary.
        let first = HeaderCompressor::new().compress(&blocks[0]).unwrap();
        assert_eq!(&first[..2], &[0x78, 0xf9]);
        assert_eq!(&first[2..6], &DICTIONARY_ADLER32.to_be_bytes());
        // The second block is the first with one value changed: history
        // carried over, so it compresses far better than a fresh stream.
        assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
    }

    #[test]
    fn decodes_header_blocks_written_by_spdystream() {
        // Three frames from one Go spdystream Framer (whose zlib writer is
        // level 9 with the dictionary): SYN_STREAMs for `streamtype: error`
        // and `streamtype: stdout`, then the empty SYN_REPLY it answers
        // streams with. The later blocks only decode with the history of
        // the earlier ones.
        let frames = [
            "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff",
            "800300010000001900000001000000000000c22ac5565c92925f5a02000000ffff",
            "800300020000000e000000016260606000000000ffff",
        ];
        let mut rx = HeaderDecompressor::new(1 << 20);
        let mut decoded = Vec::new();
        for hex in frames {
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            let mut buf = bytes::BytesMut::from(&bytes[..]);
            let block = match super::super::frame::parse(&mut buf, 1 << 20).unwrap().unwrap() {
                super::super::frame::Frame::SynStream { header_block, stream_id: 1, .. }
                | super::super::frame::Frame::SynReply { header_block, stream_id: 1, .. } => header_block,
                other => panic!("{other:?}"),
            };
            decoded.push(rx.decompress(&block).unwrap());
        }
        assert_eq!(decoded[0], Headers::new().with("streamtype", "error"));
        assert_eq!(decoded[1], Headers::new().with("streamtype", "stdout"));
        assert_eq!(decoded[2], Headers::new());
        // Out of order, the second block is gibberish to a fresh stream.
        let second = &frames[1][36..];
        let second: Vec<u8> =
            (0..second.len()).step_by(2).map(|i| u8::from_str_radix(&second[i..i + 2], 16).unwrap()).collect();
        assert!(HeaderDecompressor::new(1 << 20).decompress(&second).is_err());
    }

    #[test]
    fn repeated_names_travel_as_one_nul_joined_value() {
        let headers = Headers::new().with("a", "1").with("B", "2").with("a", "3");
        let raw = headers.encode();
        let expected: &[u8] = b"\0\0\0\x02\0\0\0\x01a\0\0\0\x031\x003\0\0\0\x01b\0\0\0\x012";
        assert_eq!(raw, expected);
        let back = Headers::decode(&raw).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), vec![("a", "1"), ("a", "3"), ("b", "2")]);
        assert_eq!(Headers::decode(b"\0\0\0\x01\0\0\0\x04Port\0\0\0\x0280").unwrap().get("PORT"), Some("80"));
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(Headers::decode(b"").is_err());
        assert!(Headers::decode(b"\xff\xff\xff\xff").is_err());
        assert!(Headers::decode(b"\0\0\0\x01\0\0\0\x09ab").is_err());
        assert!(Headers::decode(b"\0\0\0\x01\0\0\0\0\0\0\0\0").is_err());
        assert!(Headers::decode(b"\0\0\0\0junk").is_err());

        let mut rx = HeaderDecompressor::new(1024);
        assert!(rx.decompress(b"not zlib at all").is_err());

        // Primed with another dictionary.
        let mut other = Compress::new(Compression::best(), true);
        other.set_dictionary(b"some other dictionary").unwrap();
        let mut wire = Vec::with_capacity(256);
        other.compress_vec(&Headers::new().encode(), &mut wire, FlushCompress::Sync).unwrap();
        let err = HeaderDecompressor::new(1024).decompress(&wire).unwrap_err();
        assert!(matches!(err, HeaderError::Zlib(ref m) if m.contains("dictionary")), "{err}");
    }

    #[test]
    fn inflation_is_bounded() {
        let mut tx = HeaderCompressor::new();
        let big = Headers::new().with("x", &"a".repeat(100_000));
        let wire = tx.compress(&big).unwrap();
        assert!(wire.len() < 2_000, "{}", wire.len());
        assert_eq!(HeaderDecompressor::new(1000).decompress(&wire), Err(HeaderError::TooLarge));
        let mut tx = HeaderCompressor::new();
        let wire = tx.compress(&big).unwrap();
        assert_eq!(HeaderDecompressor::new(1 << 20).decompress(&wire).unwrap(), big);
    }
}
