//! What toted and a container's monitor say to each other over the
//! monitor's unix socket.
//!
//! A connection starts with one JSON request line and gets one JSON reply
//! line. `exec` and `attach`, once accepted, turn the connection into a
//! stream of frames: `[kind: u8][length: u32, big-endian][payload]`.

use std::io::{Read, Write};

use oci_spec::runtime::{LinuxResources, Process};
use serde::{Deserialize, Serialize};

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;
/// The largest frame payload accepted.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Let the created container run.
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    /// Answered once the container has exited.
    Wait,
    State,
    Stats,
    Pause,
    Resume,
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Applies new resource limits to the container's cgroup.
    Update {
        resources: Box<LinuxResources>,
    },
    /// The processes of the container (pids as the host sees them).
    Pids,
    /// Closes the container's stdin (the end of `-i` input).
    CloseStdin,
    /// Runs another process in the container; the connection then carries
    /// its frames.
    Exec {
        process: Box<Process>,
        stdin: bool,
    },
    /// The container's live output (and stdin, if it has one) as frames.
    Attach {
        stdin: bool,
    },
    /// Writes what is pending and opens the log file again by its path
    /// (the kubelet renamed it to rotate it: the CRI's ReopenContainerLog).
    ReopenLog,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Created,
    Running,
    Paused,
    Exited,
}

/// How a container (or exec'd process) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, or 128+N when killed by signal N.
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    pub memory_limit: Option<u64>,
    pub pids: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Error {
        message: String,
        /// 126 or 127 when a process could not be run, as a shell says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    State {
        phase: Phase,
        pid: i32,
        exit: Option<ExitInfo>,
    },
    Exited {
        exit: ExitInfo,
    },
    Stats {
        stats: Stats,
    },
    Pids {
        pids: Vec<i32>,
    },
    /// An exec or attach stream follows.
    Streaming {
        pid: i32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Stdout = 1,
    Stderr = 2,
    /// Payload: an [`ExitInfo`] as JSON. The last frame of a stream.
    Exit = 3,
    /// Client to monitor: input for the process.
    Stdin = 4,
    /// Client to monitor: no more input.
    StdinClose = 5,
    /// Client to monitor: rows and columns, two big-endian u16.
    Resize = 6,
}

impl FrameKind {
    pub fn from_u8(kind: u8) -> Option<Self> {
        Some(match kind {
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Exit,
            4 => Self::Stdin,
            5 => Self::StdinClose,
            6 => Self::Resize,
            _ => return None,
        })
    }
}

pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frames are bounded");
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind as u8);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn write_frame(out: &mut impl Write, kind: FrameKind, payload: &[u8]) -> std::io::Result<()> {
    for chunk in payload.chunks(MAX_FRAME).chain(payload.is_empty().then_some(&[][..])) {
        out.write_all(&encode_frame(kind, chunk))?;
    }
    Ok(())
}

/// The size of a frame's header: kind and payload length.
pub const HEADER: usize = 5;

/// A frame's kind and payload length, checked, from its header.
pub fn parse_header(header: &[u8; HEADER]) -> Result<(FrameKind, usize), String> {
    let kind = FrameKind::from_u8(header[0]).ok_or_else(|| format!("unknown frame kind {}", header[0]))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes"));
    }
    Ok((kind, len))
}

/// [`parse_header`] for a reader: a bad header is invalid data.
pub fn parse_header_io(header: &[u8; HEADER]) -> std::io::Result<(FrameKind, usize)> {
    parse_header(header).map_err(|problem| std::io::Error::new(std::io::ErrorKind::InvalidData, problem))
}

/// Reads one frame; `None` at a clean end of stream.
pub fn read_frame(input: &mut impl Read) -> std::io::Result<Option<(FrameKind, Vec<u8>)>> {
    let mut header = [0u8; HEADER];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = parse_header_io(&header)?;
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// Splits complete frames off the front of `buf` (a nonblocking reader's
/// accumulation); what is left is an incomplete frame.
pub fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<(FrameKind, Vec<u8>)>, String> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER {
        let header: &[u8; HEADER] = buf[at..at + HEADER].try_into().expect("HEADER bytes");
        let (kind, len) = parse_header(header)?;
        if buf.len() - at - HEADER < len {
            break;
        }
        frames.push((kind, buf[at + HEADER..at + HEADER + len].to_vec()));
        at += HEADER + len;
    }
    buf.drain(..at);
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_json_lines() {
        let text = serde_json::to_string(&Request::Kill { signal: 9, all: true }).unwrap();
        assert_eq!(text, r#"{"op":"kill","signal":9,"all":true}"#);
        let reply: Reply = serde_json::from_str(r#"{"reply":"error","message":"no"}"#).unwrap();
        assert!(matches!(reply, Reply::Error { message, exit_code: None } if message == "no"));
    }

    #[test]
    fn frames_round_trip_whole_and_in_pieces() {
        let mut wire = Vec::new();
        write_frame(&mut wire, FrameKind::Stdout, b"hello").unwrap();
        write_frame(&mut wire, FrameKind::StdinClose, b"").unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(read_frame(&mut reader).unwrap(), Some((FrameKind::Stdout, b"hello".to_vec())));
        assert_eq!(read_frame(&mut reader).unwrap(), Some((FrameKind::StdinClose, vec![])));
        assert_eq!(read_frame(&mut reader).unwrap(), None);
        let mut partial = wire[..7].to_vec();
        assert!(take_frames(&mut partial).unwrap().is_empty());
        partial.extend_from_slice(&wire[7..]);
        assert_eq!(take_frames(&mut partial).unwrap().len(), 2);
        assert!(partial.is_empty());
        assert!(take_frames(&mut vec![9, 0, 0, 0, 0]).is_err());
    }
}
