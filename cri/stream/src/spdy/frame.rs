//! SPDY/3.1 frames: parsing from and serialising to bytes. Header blocks
//! stay compressed here; `zlib` turns them into headers, in wire order.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) const VERSION: u16 = 3;

/// Every frame's length field is 24 bits.
pub(crate) const MAX_LENGTH: usize = 0xff_ffff;

pub(crate) const FLAG_FIN: u8 = 0x01;
pub(crate) const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub(crate) mod rst {
    pub(crate) const PROTOCOL_ERROR: u32 = 1;
    pub(crate) const INVALID_STREAM: u32 = 2;
    pub(crate) const REFUSED_STREAM: u32 = 3;
    pub(crate) const CANCEL: u32 = 5;
    pub(crate) const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub(crate) mod goaway {
    pub(crate) const OK: u32 = 0;
    pub(crate) const PROTOCOL_ERROR: u32 = 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        flags: u8,
        header_block: Bytes,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type this implementation does not know (NOOP,
    /// CREDENTIAL, or anything newer): skipped, as the spec asks.
    Unknown {
        frame_type: u16,
        flags: u8,
        length: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    UnsupportedVersion(u16),
    /// A control frame longer than this side accepts.
    TooLarge(usize),
    Malformed(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion(v) => write!(f, "unsupported SPDY version {v}"),
            Self::TooLarge(n) => write!(f, "control frame of {n} bytes is too large"),
            Self::Malformed(what) => write!(f, "malformed frame: {what}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses one frame off the front of `buf`, or returns `None` (consuming
/// nothing) if `buf` does not yet hold a whole frame. A control frame whose
/// payload exceeds `max_control` is an error before it is buffered.
pub(crate) fn parse(buf: &mut BytesMut, max_control: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&head) = buf.first_chunk::<8>() else { return Ok(None) };
    let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let length = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
    let control = word & 0x8000_0000 != 0;
    if control {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if length > max_control {
            return Err(FrameError::TooLarge(length));
        }
    }
    if buf.len() < 8 + length {
        buf.reserve(8 + length - buf.len());
        return Ok(None);
    }
    buf.advance(8);
    let mut payload = buf.split_to(length).freeze();
    if !control {
        let stream_id = word & 0x7fff_ffff;
        if stream_id == 0 {
            return Err(FrameError::Malformed("DATA frame on stream 0"));
        }
        return Ok(Some(Frame::Data { stream_id, flags, data: payload }));
    }
    let frame_type = u16::from_be_bytes([head[2], head[3]]);
    let p = &mut payload;
    let frame = match frame_type {
        TYPE_SYN_STREAM => {
            need(p, 10, "SYN_STREAM")?;
            let stream_id = stream_id(p)?;
            let associated_to = p.get_u32() & 0x7fff_ffff;
            let priority = p.get_u8() >> 5;
            let slot = p.get_u8();
            Frame::SynStream { stream_id, associated_to, priority, slot, flags, header_block: payload }
        }
        TYPE_SYN_REPLY => {
            need(p, 4, "SYN_REPLY")?;
            let stream_id = stream_id(p)?;
            Frame::SynReply { stream_id, flags, header_block: payload }
        }
        TYPE_RST_STREAM => {
            exact(p, 8, "RST_STREAM")?;
            let stream_id = stream_id(p)?;
            let status = p.get_u32();
            if status == 0 {
                return Err(FrameError::Malformed("RST_STREAM with status 0"));
            }
            Frame::RstStream { stream_id, status }
        }
        TYPE_SETTINGS => {
            need(p, 4, "SETTINGS")?;
            let count = p.get_u32() as usize;
            if p.len() / 8 != count || !p.len().is_multiple_of(8) {
                return Err(FrameError::Malformed("SETTINGS length does not match its count"));
            }
            let entries = (0..count)
                .map(|_| {
                    let word = p.get_u32();
                    Setting { flags: word.to_be_bytes()[0], id: word & 0xff_ffff, value: p.get_u32() }
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            exact(p, 4, "PING")?;
            Frame::Ping { id: p.get_u32() }
        }
        TYPE_GOAWAY => {
            exact(p, 8, "GOAWAY")?;
            let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
            Frame::GoAway { last_good_stream_id, status: p.get_u32() }
        }
        TYPE_HEADERS => {
            need(p, 4, "HEADERS")?;
            let stream_id = stream_id(p)?;
            Frame::Headers { stream_id, flags, header_block: payload }
        }
        TYPE_WINDOW_UPDATE => {
            exact(p, 8, "WINDOW_UPDATE")?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            Frame::WindowUpdate { stream_id, delta: p.get_u32() & 0x7fff_ffff }
        }
        frame_type => Frame::Unknown { frame_type, flags, length },
    };
    Ok(Some(frame))
}

fn need(p: &Bytes, n: usize, what: &'static str) -> Result<(), FrameError> {
    if p.len() < n { Err(FrameError::Malformed(what)) } else { Ok(()) }
}

fn exact(p: &Bytes, n: usize, what: &'static str) -> Result<(), FrameError> {
    if p.len() != n { Err(FrameError::Malformed(what)) } else { Ok(()) }
}

fn stream_id(p: &mut Bytes) -> Result<u32, FrameError> {
    match p.get_u32() & 0x7fff_ffff {
        0 => Err(FrameError::Malformed("stream id 0")),
        id => Ok(id),
    }
}

/// Appends `frame` to `out`. Fails only for a payload over the 24-bit
/// length, which callers prevent by chunking data.
pub(crate) fn encode(frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
    let control = |out: &mut BytesMut, frame_type: u16, flags: u8, length: usize| -> Result<(), FrameError> {
        let length =
            u32::try_from(length).ok().filter(|&l| l as usize <= MAX_LENGTH).ok_or(FrameError::TooLarge(length))?;
        out.reserve(8 + length as usize);
        out.put_u16(0x8000 | VERSION);
        out.put_u16(frame_type);
        out.put_u32(u32::from(flags) << 24 | length);
        Ok(())
    };
    match frame {
        Frame::SynStream { stream_id, associated_to, priority, slot, flags, header_block } => {
            control(out, TYPE_SYN_STREAM, *flags, 10 + header_block.len())?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_to & 0x7fff_ffff);
            out.put_u8((priority & 0x07) << 5);
            out.put_u8(*slot);
            out.put_slice(header_block);
        }
        Frame::SynReply { stream_id, flags, header_block } => {
            control(out, TYPE_SYN_REPLY, *flags, 4 + header_block.len())?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(header_block);
        }
        Frame::RstStream { stream_id, status } => {
            control(out, TYPE_RST_STREAM, 0, 8)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings { flags, entries } => {
            control(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len())?;
            out.put_u32(u32::try_from(entries.len()).map_err(|_| FrameError::TooLarge(entries.len()))?);
            for e in entries {
                out.put_u32(u32::from(e.flags) << 24 | (e.id & 0xff_ffff));
                out.put_u32(e.value);
            }
        }
        Frame::Ping { id } => {
            control(out, TYPE_PING, 0, 4)?;
            out.put_u32(*id);
        }
        Frame::GoAway { last_good_stream_id, status } => {
            control(out, TYPE_GOAWAY, 0, 8)?;
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Headers { stream_id, flags, header_block } => {
            control(out, TYPE_HEADERS, *flags, 4 + header_block.len())?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(header_block);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control(out, TYPE_WINDOW_UPDATE, 0, 8)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Data { stream_id, flags, data } => {
            let length = u32::try_from(data.len())
                .ok()
                .filter(|&l| l as usize <= MAX_LENGTH)
                .ok_or(FrameError::TooLarge(data.len()))?;
            out.reserve(8 + data.len());
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(u32::from(*flags) << 24 | length);
            out.put_slice(data);
        }
        Frame::Unknown { frame_type, flags, length } => {
            control(out, *frame_type, *flags, *length)?;
            out.put_bytes(0, *length);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf).unwrap();
        let wire = buf.clone();
        // Byte by byte: nothing is parsed until the frame is whole.
        let mut partial = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            assert_eq!(parse(&mut partial, 1 << 20).unwrap(), None, "parsed early at byte {i}");
            partial.put_u8(*b);
        }
        assert_eq!(parse(&mut partial, 1 << 20).unwrap(), Some(frame));
        assert!(partial.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        let block = Bytes::from_static(b"\x78\xf9compressed");
        round_trip(Frame::SynStream {
            stream_id: 7,
            associated_to: 3,
            priority: 5,
            slot: 2,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            header_block: block.clone(),
        });
        round_trip(Frame::SynReply { stream_id: 0x7fff_ffff, flags: FLAG_FIN, header_block: block.clone() });
        round_trip(Frame::RstStream { stream_id: 9, status: rst::CANCEL });
        round_trip(Frame::Settings {
            flags: 1,
            entries: vec![Setting { flags: 1, id: 7, value: 65536 }, Setting { flags: 0, id: 4, value: 100 }],
        });
        round_trip(Frame::Settings { flags: 0, entries: vec![] });
        round_trip(Frame::Ping { id: 0xffff_ffff });
        round_trip(Frame::GoAway { last_good_stream_id: 11, status: goaway::PROTOCOL_ERROR });
        round_trip(Frame::Headers { stream_id: 1, flags: 0, header_block: block });
        round_trip(Frame::WindowUpdate { stream_id: 0, delta: 32768 });
        round_trip(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() });
        round_trip(Frame::Data { stream_id: 3, flags: 0, data: Bytes::from(vec![0xab; 70_000]) });
        round_trip(Frame::Unknown { frame_type: 10, flags: 0, length: 3 });
    }

    #[test]
    fn wire_layout_matches_the_spec() {
        let mut buf = BytesMut::new();
        encode(&Frame::Ping { id: 1 }, &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01");
        buf.clear();
        encode(&Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::from_static(b"hi") }, &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x00\x00\x00\x05\x01\x00\x00\x02hi");
        buf.clear();
        encode(&Frame::RstStream { stream_id: 3, status: rst::REFUSED_STREAM }, &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x03");
        buf.clear();
        encode(
            &Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                header_block: Bytes::from_static(b"hb"),
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[..], b"\x80\x03\x00\x01\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00hb");
    }

    #[test]
    fn reserved_bits_are_ignored() {
        // The high bits of a WINDOW_UPDATE's stream id and delta are reserved.
        let mut buf = BytesMut::from(&b"\x80\x03\x00\x09\x00\x00\x00\x08\x80\x00\x00\x01\x80\x00\x10\x00"[..]);
        assert_eq!(parse(&mut buf, 1024).unwrap(), Some(Frame::WindowUpdate { stream_id: 1, delta: 0x1000 }));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            // Version 2.
            b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01",
            // PING of the wrong length.
            b"\x80\x03\x00\x06\x00\x00\x00\x03\x00\x00\x00",
            // SYN_STREAM too short for its fixed fields.
            b"\x80\x03\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01",
            // SYN_STREAM on stream 0.
            b"\x80\x03\x00\x01\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            // RST_STREAM with status 0.
            b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00",
            // SETTINGS claiming two entries, carrying one.
            b"\x80\x03\x00\x04\x00\x00\x00\x0c\x00\x00\x00\x02\x00\x00\x00\x07\x00\x01\x00\x00",
            // SETTINGS claiming 2^32-1 entries.
            b"\x80\x03\x00\x04\x00\x00\x00\x04\xff\xff\xff\xff",
            // GOAWAY of SPDY/2's length.
            b"\x80\x03\x00\x07\x00\x00\x00\x04\x00\x00\x00\x01",
            // DATA on stream 0.
            b"\x00\x00\x00\x00\x00\x00\x00\x01x",
            // SYN_REPLY with no stream id.
            b"\x80\x03\x00\x02\x00\x00\x00\x00",
        ];
        for case in cases {
            let mut buf = BytesMut::from(*case);
            assert!(parse(&mut buf, 1024).is_err(), "accepted {case:02x?}");
        }
        // A control frame over the limit is refused from its header alone.
        let mut buf = BytesMut::from(&b"\x80\x03\x00\x01\x00\xff\xff\xff"[..]);
        assert_eq!(parse(&mut buf, 1 << 20), Err(FrameError::TooLarge(0xff_ffff)));
        // Unknown types are skipped whole.
        let mut buf =
            BytesMut::from(&b"\x80\x03\x00\x0a\x00\x00\x00\x02zz\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x03"[..]);
        assert_eq!(parse(&mut buf, 1024).unwrap(), Some(Frame::Unknown { frame_type: 10, flags: 0, length: 2 }));
        assert_eq!(parse(&mut buf, 1024).unwrap(), Some(Frame::Ping { id: 3 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes, parsed until error or
        // exhaustion.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state.to_le_bytes()[0]);
            }
            // Bias towards control frames of version 3 with short lengths.
            bytes[0] |= 0x80;
            bytes[1] = 3;
            bytes[3] %= 12;
            bytes[5] = 0;
            bytes[6] = 0;
            bytes[7] %= 40;
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = parse(&mut buf, 1024) {}
        }
    }
}
