//! A blocking client of a monitor's socket, for tools and tests (toted has
//! its own, asynchronous one).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::protocol::{FrameKind, MAX_REQUEST, Reply, Request, write_frame};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("monitor socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("monitor at {path} sent a bad reply: {detail}")]
    BadReply { path: PathBuf, detail: String },
}

pub struct MonitorClient {
    socket: PathBuf,
}

/// A connection turned into a frame stream by `attach` or `exec`.
pub struct Streaming {
    pub pid: i32,
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Streaming {
    pub fn send(&mut self, kind: FrameKind, payload: &[u8]) -> std::io::Result<()> {
        write_frame(&mut self.writer, kind, payload)
    }
}

impl MonitorClient {
    /// The client of the monitor whose directory is `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { socket: dir.join(super::SOCKET) }
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
        |source| ClientError::Io { path: self.socket.clone(), source }
    }

    fn exchange(&self, request: &Request) -> Result<(Reply, BufReader<UnixStream>), ClientError> {
        let mut stream = UnixStream::connect(&self.socket).map_err(self.io())?;
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        stream.write_all(&line).map_err(self.io())?;
        let mut reader = BufReader::new(stream);
        let mut reply = String::new();
        (&mut reader).take(MAX_REQUEST as u64).read_line(&mut reply).map_err(self.io())?;
        let reply = serde_json::from_str(&reply)
            .map_err(|e| ClientError::BadReply { path: self.socket.clone(), detail: format!("{e}: {reply:?}") })?;
        Ok((reply, reader))
    }

    /// One request, one reply (`Wait` blocks until the container ends).
    pub fn request(&self, request: &Request) -> Result<Reply, ClientError> {
        self.exchange(request).map(|(reply, _)| reply)
    }

    /// `Attach` or `Exec`: the reply, and the frame stream when accepted.
    pub fn stream(&self, request: &Request) -> Result<Result<Streaming, Reply>, ClientError> {
        let (reply, reader) = self.exchange(request)?;
        match reply {
            Reply::Streaming { pid } => {
                let writer = reader.get_ref().try_clone().map_err(self.io())?;
                Ok(Ok(Streaming { pid, reader, writer }))
            }
            other => Ok(Err(other)),
        }
    }
}
