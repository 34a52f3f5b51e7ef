//! A SPDY/3.1 client for the streaming URLs, as client-go's SPDY executor
//! and port forwarder speak to them: for tests and benchmarks (the CRI
//! suite, `cri-bench`), against this crate's server or anyone else's (the
//! kubelet's, containerd's).
//!
//! [`connect`] upgrades an `http://host:port/path` URL with the
//! `X-Stream-Protocol-Version`s offered; [`Connection::open`] opens a
//! stream with the given headers (`streamtype: error`, `stdout`, ... for
//! exec and attach; `streamtype: data|error`, `port`, `requestid` for
//! port-forward) and waits for the server's SYN_REPLY before returning, as
//! client-go does, so streams are opened one at a time.
//!
//! Flow control is spdystream's: windows are credited to the server as data
//! is read, but the server's are not enforced (spdystream, the kubelet's
//! and containerd's server, never sends WINDOW_UPDATE, so a client waiting
//! for one would stall after 64 KiB). Each stream holds a bounded queue of
//! received data: a stream left unread holds the others up once its queue
//! is full, as with spdystream.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::conn::{HeaderFrame, Out, write_loop};
use super::frame::{self, FLAG_FIN, Frame, goaway, rst};
use super::zlib::{HeaderDecompressor, Headers};

/// What streams carry: callers can write shared buffers without a copy.
pub use bytes::Bytes;

/// From connecting to the 101's last header.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stream may wait for its SYN_REPLY (client-go's
/// `createStreamResponseTimeout`).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `close` waits for the server to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The response head of the upgrade, at most.
const MAX_HEAD: usize = 16 * 1024;
/// A control frame and an inflated header block, at most.
const MAX_CONTROL: usize = 1 << 20;
/// What Go's io.Copy writes per DATA frame.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Bytes of data queued for the socket before writers wait.
const OUTBOUND_BUDGET: usize = 1 << 20;
/// DATA frames received and not yet read, per stream, before the reader
/// stops reading the socket.
const STREAM_QUEUE: usize = 64;
/// Credit the server once half of SPDY/3.1's 64 KiB window is used.
const WINDOW_UPDATE_AT: u32 = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not an http://host:port/path URL")]
    Url(String),
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The server answered the upgrade with something other than 101.
    #[error("upgrade refused: {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// The server reset the stream (RST_STREAM with this status).
    #[error("stream reset by the server (status {0})")]
    Reset(u32),
    #[error("the SPDY connection ended")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

/// Upgrades `url` to SPDY/3.1 offering `protocols` (at least one, or the
/// streaming server refuses) and checks that the server chose one of them.
pub async fn connect(url: &str, protocols: &[&str]) -> Result<Connection, Error> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(url, protocols))
        .await
        .map_err(|_| Error::Timeout("the upgrade"))?
}

async fn handshake(url: &str, protocols: &[&str]) -> Result<Connection, Error> {
    let rest = url.strip_prefix("http://").ok_or_else(|| Error::Url(url.into()))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() || authority.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(Error::Url(url.into()));
    }
    let mut tcp = TcpStream::connect(authority).await?;
    tcp.set_nodelay(true)?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for protocol in protocols {
        request.push_str(&format!("X-Stream-Protocol-Version: {protocol}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;

    let mut buf = BytesMut::with_capacity(4096);
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::Protocol("the upgrade response's head is too large".into()));
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err(Error::Protocol("the server closed the connection without answering".into()));
        }
    };
    // What follows the head is already SPDY, kept for the reader.
    let head = buf.split_to(head_len);
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Error::Protocol(format!("not an HTTP response: {status_line:?}")))?;
    let headers: Vec<(String, &str)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    if status != 101 {
        let length = header("content-length").and_then(|l| l.parse::<usize>().ok()).unwrap_or(0).min(MAX_HEAD);
        // The body says why; a server that sends less than it announced
        // still gets its error reported.
        let body = async {
            while buf.len() < length {
                if tcp.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), body).await;
        let body = String::from_utf8_lossy(&buf[..buf.len().min(length)]).trim().to_string();
        return Err(Error::Refused { status, body });
    }
    if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        return Err(Error::Protocol(format!("upgraded to {:?}, not SPDY/3.1", header("upgrade"))));
    }
    let chosen = header("x-stream-protocol-version").unwrap_or("");
    if !protocols.contains(&chosen) {
        return Err(Error::Protocol(format!("the server chose protocol {chosen:?}, which was not offered")));
    }
    Ok(Connection::start(tcp, buf, chosen.to_string()))
}

struct Entry {
    /// Until the SYN_REPLY (or an RST_STREAM) comes.
    reply: Option<oneshot::Sender<Result<(), Error>>>,
    data: mpsc::Sender<Bytes>,
    state: Arc<StreamState>,
}

#[derive(Default)]
struct Streams {
    map: HashMap<u32, Entry>,
    /// The reader has stopped: nothing more will arrive.
    ended: bool,
}

struct Shared {
    out: mpsc::UnboundedSender<Out>,
    budget: Arc<Semaphore>,
    streams: Mutex<Streams>,
    /// The next stream id, locked while a stream waits for its reply.
    opening: tokio::sync::Mutex<u32>,
    /// The server sent GOAWAY: it takes no more streams.
    gone_away: AtomicBool,
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, out: Out) -> Result<(), Error> {
        self.out.send(out).map_err(|_| Error::Closed)
    }
}

/// What the reader task learnt of a stream's end, for its two halves.
#[derive(Default)]
struct StreamState {
    /// The server's FIN came (after all its data).
    fin: AtomicBool,
    /// The RST_STREAM status, 0 for none.
    reset: AtomicU32,
}

/// An upgraded connection. Dropping it drops the socket at once; `close`
/// ends it politely.
pub struct Connection {
    shared: Arc<Shared>,
    protocol: String,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl Connection {
    fn start(tcp: TcpStream, read_ahead: BytesMut, protocol: String) -> Self {
        let (read_half, write_half) = tcp.into_split();
        let (out, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out,
            budget: Arc::new(Semaphore::new(OUTBOUND_BUDGET)),
            streams: Mutex::new(Streams::default()),
            opening: tokio::sync::Mutex::new(1),
            gone_away: AtomicBool::new(false),
        });
        let writer = tokio::spawn(write_loop(write_half, out_rx));
        let reader = tokio::spawn(read_loop(read_half, read_ahead, shared.clone()));
        Self { shared, protocol, reader: Some(reader), writer: Some(writer) }
    }

    /// The `X-Stream-Protocol-Version` the server chose.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Opens a stream with `headers` and waits for the server to accept it.
    pub async fn open(&self, headers: &[(&str, &str)]) -> Result<Stream, Error> {
        let mut next_id = self.shared.opening.lock().await;
        if self.shared.gone_away.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let id = *next_id;
        // Client streams are odd, increasing, and 31 bits.
        *next_id = id.checked_add(2).filter(|&n| n < 0x8000_0000).ok_or(Error::Closed)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
        let state = Arc::new(StreamState::default());
        {
            let mut streams = self.shared.streams();
            if streams.ended {
                return Err(Error::Closed);
            }
            streams.map.insert(id, Entry { reply: Some(reply_tx), data: data_tx, state: state.clone() });
        }
        let block = headers.iter().fold(Headers::new(), |h, (name, value)| h.with(name, value));
        self.shared.send(Out::Headers { frame: HeaderFrame::Open { stream_id: id }, headers: block })?;
        match tokio::time::timeout(REPLY_TIMEOUT, reply_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                self.shared.streams().map.remove(&id);
                let _ = self.shared.send(Out::Frame(Frame::RstStream { stream_id: id, status: rst::CANCEL }, None));
                return Err(Error::Timeout("the server to accept a stream"));
            }
        }
        let reader = StreamReader { id, data: data_rx, state: state.clone(), shared: self.shared.clone(), unacked: 0 };
        let writer = StreamWriter { id, state, shared: self.shared.clone(), finished: false };
        Ok(Stream { reader, writer })
    }

    /// Sends GOAWAY, half-closes the socket and waits (a while) for the
    /// server to close its side, as client-go's Close does without the
    /// wait: waiting lets the server finish without a reset connection.
    pub async fn close(mut self) {
        let _ = self.shared.send(Out::Frame(Frame::GoAway { last_good_stream_id: 0, status: goaway::OK }, None));
        let _ = self.shared.send(Out::Shutdown);
        for task in [self.writer.take(), self.reader.take()].into_iter().flatten() {
            let abort = task.abort_handle();
            if tokio::time::timeout(CLOSE_TIMEOUT, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("protocol", &self.protocol).finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in [self.reader.take(), self.writer.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

/// One stream, both ways; `split` it to read and write from different
/// tasks.
pub struct Stream {
    reader: StreamReader,
    writer: StreamWriter,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.reader.id
    }

    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }

    pub async fn write(&mut self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.writer.write(data).await
    }

    pub fn finish(&mut self) -> Result<(), Error> {
        self.writer.finish()
    }

    pub async fn read(&mut self) -> Result<Option<Bytes>, Error> {
        self.reader.read().await
    }

    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, Error> {
        self.reader.read_to_end().await
    }

    pub fn reset_by_server(&self) -> Option<u32> {
        self.reader.reset_by_server()
    }
}

/// The server's data on a stream, to its FIN or RST_STREAM: spdystream
/// reads a reset stream to EOF, and the kubelet's streaming server (so
/// containerd's) ends every session by resetting its streams after the
/// last data, never sending FIN, so client-go takes a reset for an end
/// too. [`StreamReader::reset_by_server`] tells them apart.
pub struct StreamReader {
    id: u32,
    data: mpsc::Receiver<Bytes>,
    state: Arc<StreamState>,
    shared: Arc<Shared>,
    unacked: u32,
}

impl StreamReader {
    /// The next chunk, `None` after the server's FIN or reset; an error if
    /// the connection ended first.
    pub async fn read(&mut self) -> Result<Option<Bytes>, Error> {
        match self.data.recv().await {
            Some(chunk) => {
                self.unacked = self.unacked.saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
                if self.unacked >= WINDOW_UPDATE_AT && !self.state.fin.load(Ordering::SeqCst) {
                    let delta = self.unacked.min(0x7fff_ffff);
                    self.unacked = 0;
                    let _ = self.shared.send(Out::Frame(Frame::WindowUpdate { stream_id: self.id, delta }, None));
                }
                Ok(Some(chunk))
            }
            None if self.state.fin.load(Ordering::SeqCst) || self.reset_by_server().is_some() => Ok(None),
            None => Err(Error::Closed),
        }
    }

    /// The status of the server's RST_STREAM, if it reset the stream.
    pub fn reset_by_server(&self) -> Option<u32> {
        Some(self.state.reset.load(Ordering::SeqCst)).filter(|&status| status != 0)
    }

    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        while let Some(chunk) = self.read().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}

/// Our data on a stream. `finish`, or dropping it, sends FIN.
pub struct StreamWriter {
    id: u32,
    state: Arc<StreamState>,
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamWriter {
    /// Queues `data` as DATA frames of at most 32 KiB, waiting while a
    /// MiB is queued already.
    pub async fn write(&mut self, data: impl Into<Bytes>) -> Result<(), Error> {
        let mut data = data.into();
        while !data.is_empty() {
            if self.finished {
                return Err(Error::Io(io::ErrorKind::BrokenPipe.into()));
            }
            if let status @ 1.. = self.state.reset.load(Ordering::SeqCst) {
                return Err(Error::Reset(status));
            }
            let chunk = data.split_to(data.len().min(MAX_DATA_FRAME));
            let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let permit = self.shared.budget.clone().acquire_many_owned(n).await.map_err(|_| Error::Closed)?;
            self.shared.send(Out::Frame(Frame::Data { stream_id: self.id, flags: 0, data: chunk }, Some(permit)))?;
        }
        Ok(())
    }

    /// Half-closes the stream (FIN): the server reads EOF.
    pub fn finish(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        self.shared.send(Out::Frame(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }, None))
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if self.state.reset.load(Ordering::SeqCst) == 0 {
            let _ = self.finish();
        }
    }
}

async fn read_loop(mut io: OwnedReadHalf, mut buf: BytesMut, shared: Arc<Shared>) {
    let mut headers = HeaderDecompressor::new(MAX_CONTROL);
    let mut connection_unacked: u32 = 0;
    loop {
        let frame = match frame::parse(&mut buf, MAX_CONTROL) {
            Ok(Some(frame)) => frame,
            Ok(None) => match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!("SPDY client: {e}");
                break;
            }
        };
        match frame {
            Frame::SynReply { stream_id, header_block, .. } => {
                if headers.decompress(&header_block).is_err() {
                    break;
                }
                let reply = shared.streams().map.get_mut(&stream_id).and_then(|e| e.reply.take());
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Frame::Data { stream_id, flags, data } => {
                connection_unacked = connection_unacked.saturating_add(u32::try_from(data.len()).unwrap_or(u32::MAX));
                if connection_unacked >= WINDOW_UPDATE_AT {
                    let delta = connection_unacked.min(0x7fff_ffff);
                    connection_unacked = 0;
                    let _ = shared.send(Out::Frame(Frame::WindowUpdate { stream_id: 0, delta }, None));
                }
                deliver(&shared, stream_id, data, flags & FLAG_FIN != 0).await;
            }
            Frame::Headers { stream_id, flags, header_block } => {
                if headers.decompress(&header_block).is_err() {
                    break;
                }
                if flags & FLAG_FIN != 0 {
                    deliver(&shared, stream_id, Bytes::new(), true).await;
                }
            }
            Frame::RstStream { stream_id, status } => {
                let entry = shared.streams().map.remove(&stream_id);
                if let Some(entry) = entry {
                    entry.state.reset.store(status, Ordering::SeqCst);
                    if let Some(reply) = entry.reply {
                        let _ = reply.send(Err(Error::Reset(status)));
                    }
                }
            }
            Frame::SynStream { stream_id, header_block, .. } => {
                // Decoded only to keep the zlib stream in step: nothing
                // here serves streams the server opens.
                if headers.decompress(&header_block).is_err() {
                    break;
                }
                let _ = shared.send(Out::Frame(Frame::RstStream { stream_id, status: rst::REFUSED_STREAM }, None));
            }
            Frame::Ping { id } => {
                // Even ids are the server's own pings; odd ones would be
                // answers to ours, and we send none.
                if id % 2 == 0 {
                    let _ = shared.send(Out::Frame(Frame::Ping { id }, None));
                }
            }
            Frame::GoAway { .. } => shared.gone_away.store(true, Ordering::SeqCst),
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
    }
    // Dropping the entries ends every stream's data: those without a FIN
    // read as closed, and any stream waiting for its reply fails.
    let entries: Vec<Entry> = {
        let mut streams = shared.streams();
        streams.ended = true;
        streams.map.drain().map(|(_, e)| e).collect()
    };
    for entry in entries {
        if let Some(reply) = entry.reply {
            let _ = reply.send(Err(Error::Closed));
        }
    }
}

/// Hands `data` and FIN to a stream, waiting while its queue is full.
async fn deliver(shared: &Shared, stream_id: u32, data: Bytes, fin: bool) {
    let Some(tx) = shared.streams().map.get(&stream_id).map(|e| e.data.clone()) else {
        // Data for a stream reset or never opened: nobody reads it.
        return;
    };
    if !data.is_empty() {
        // Fails only once the stream's reader is gone, and then the data
        // has nowhere to go.
        let _ = tx.send(data).await;
    }
    if fin {
        let entry = shared.streams().map.remove(&stream_id);
        if let Some(entry) = entry {
            entry.state.fin.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::{AttachRequest, Backend, BoxFuture, Config, ExecRequest, Outcome, PortForwardRequest, Server, Streams};

    const WAIT: Duration = Duration::from_secs(10);

    /// `echo OUT ERR CODE` and `cat`; port-forwards reach 127.0.0.1.
    struct Fake;

    impl Backend for Fake {
        fn exec(&self, request: ExecRequest, mut streams: Streams) -> BoxFuture<'_, Outcome> {
            Box::pin(async move {
                let cmd = request.cmd;
                if cmd[0] == "cat" {
                    let mut stdin = streams.stdin.take().expect("stdin");
                    let mut stdout = streams.stdout.take().expect("stdout");
                    tokio::io::copy(&mut stdin, &mut stdout).await.unwrap();
                    return Outcome::Exited(0);
                }
                streams.stdout.as_mut().unwrap().write_all(cmd[1].as_bytes()).await.unwrap();
                streams.stderr.as_mut().unwrap().write_all(cmd[2].as_bytes()).await.unwrap();
                Outcome::Exited(cmd[3].parse().unwrap())
            })
        }

        fn attach(&self, _: AttachRequest, _: Streams) -> BoxFuture<'_, Outcome> {
            Box::pin(async { Outcome::Failed("no attach here".into()) })
        }

        fn port_forward(&self, _: &str, port: u16) -> BoxFuture<'_, io::Result<TcpStream>> {
            Box::pin(TcpStream::connect(("127.0.0.1", port)))
        }
    }

    async fn server() -> crate::ServerHandle {
        Server::bind(Config::default(), Arc::new(Fake)).await.unwrap().spawn()
    }

    fn exec(cmd: &[&str], stdin: bool) -> ExecRequest {
        ExecRequest {
            container_id: "c".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin,
            stdout: true,
            stderr: !stdin,
        }
    }

    const REMOTE_COMMAND: [&str; 2] = ["v4.channel.k8s.io", "v3.channel.k8s.io"];

    #[tokio::test]
    async fn exec_output_and_exit_status() {
        let server = server().await;
        let url = server.exec_url(exec(&["echo", "out", "err", "3"], false)).unwrap();
        let conn = connect(&url, &REMOTE_COMMAND).await.unwrap();
        assert_eq!(conn.protocol(), "v4.channel.k8s.io");
        let mut error = conn.open(&[("streamtype", "error")]).await.unwrap();
        let mut stdout = conn.open(&[("streamtype", "stdout")]).await.unwrap();
        let mut stderr = conn.open(&[("streamtype", "stderr")]).await.unwrap();
        assert_eq!((error.id(), stdout.id(), stderr.id()), (1, 3, 5));
        assert_eq!(stdout.read_to_end().await.unwrap(), b"out");
        assert_eq!(stderr.read_to_end().await.unwrap(), b"err");
        let status: serde_json::Value = serde_json::from_slice(&error.read_to_end().await.unwrap()).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        tokio::time::timeout(WAIT, conn.close()).await.unwrap();

        // A URL serves once; a protocol nobody speaks is refused.
        let again = connect(&url, &REMOTE_COMMAND).await;
        assert!(matches!(again, Err(Error::Refused { status: 404, .. })), "{again:?}");
        let url = server.exec_url(exec(&["echo", "", "", "0"], false)).unwrap();
        let refused = connect(&url, &["v9.channel.k8s.io"]).await;
        let Err(Error::Refused { status: 403, body }) = refused else { panic!("{refused:?}") };
        assert!(body.contains("unable to negotiate protocol"), "{body}");
        assert!(matches!(connect("https://x/", &[]).await, Err(Error::Url(_))));
    }

    #[tokio::test]
    async fn stdin_half_closed_and_echoed_in_large_chunks() {
        let server = server().await;
        let url = server.exec_url(exec(&["cat"], true)).unwrap();
        let conn = connect(&url, &REMOTE_COMMAND).await.unwrap();
        let mut error = conn.open(&[("streamtype", "error")]).await.unwrap();
        let stdin = conn.open(&[("streamtype", "stdin")]).await.unwrap();
        let stdout = conn.open(&[("streamtype", "stdout")]).await.unwrap();
        let (_, mut stdin) = stdin.split();
        let (mut stdout, _) = stdout.split();
        // More than the budget and every queue: reading and writing at once.
        let sent: Vec<u8> = (0..3_000_000u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let write = {
            let sent = Bytes::from(sent.clone());
            async move {
                stdin.write(sent).await.unwrap();
                stdin.finish().unwrap();
            }
        };
        let (got, ()) = tokio::join!(stdout.read_to_end(), write);
        assert!(got.unwrap() == sent, "stdin came back changed");
        let status = error.read_to_end().await.unwrap();
        assert_eq!(status, br#"{"metadata":{},"status":"Success"}"#);
        conn.close().await;
    }

    #[tokio::test]
    async fn port_forward_two_connections_at_once() {
        // Answers with what it got, reversed, once the client half-closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    conn.read_to_end(&mut got).await.unwrap();
                    got.reverse();
                    conn.write_all(&got).await.unwrap();
                });
            }
        });
        let server = server().await;
        let request = PortForwardRequest { pod_sandbox_id: "pod".into(), ports: vec![] };
        let url = server.port_forward_url(request).unwrap();
        let conn = connect(&url, &["portforward.k8s.io"]).await.unwrap();
        let mut pairs = Vec::new();
        for request_id in ["0", "1"] {
            let mut error =
                conn.open(&[("streamtype", "error"), ("port", &port), ("requestid", request_id)]).await.unwrap();
            error.finish().unwrap();
            let data = conn.open(&[("streamtype", "data"), ("port", &port), ("requestid", request_id)]).await.unwrap();
            pairs.push((error, data));
        }
        let (error_b, mut data_b) = pairs.pop().unwrap();
        let (error_a, mut data_a) = pairs.pop().unwrap();
        data_a.write(&b"hello"[..]).await.unwrap();
        data_b.write(&b"other"[..]).await.unwrap();
        data_b.finish().unwrap();
        assert_eq!(data_b.read_to_end().await.unwrap(), b"rehto");
        data_a.write(&b" world"[..]).await.unwrap();
        data_a.finish().unwrap();
        assert_eq!(data_a.read_to_end().await.unwrap(), b"dlrow olleh");
        for mut error in [error_a, error_b] {
            assert_eq!(error.read_to_end().await.unwrap(), b"");
        }
        conn.close().await;
    }

    /// A server that answers the upgrade and pings in the same write (the
    /// bytes after the 101 are SPDY), refuses the first stream, and ends
    /// the second with data and a reset, as the kubelet's server ends
    /// sessions.
    #[tokio::test]
    async fn pings_are_answered_and_resets_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let peer = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                assert!(tcp.read_buf(&mut buf).await.unwrap() > 0);
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            buf.clear();
            assert!(head.starts_with("POST /x HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("X-Stream-Protocol-Version: p1\r\nX-Stream-Protocol-Version: p2\r\n"), "{head}");
            let mut answer = BytesMut::from(
                &b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: spdy/3.1\r\n\
                   x-stream-protocol-version: p2\r\n\r\n"[..],
            );
            frame::encode(&Frame::Ping { id: 2 }, &mut answer).unwrap();
            tcp.write_all(&answer).await.unwrap();
            let mut seen = Vec::new();
            let mut compressor = crate::spdy::zlib::HeaderCompressor::new();
            loop {
                match frame::parse(&mut buf, MAX_CONTROL).unwrap() {
                    Some(Frame::SynStream { stream_id: 1, .. }) => {
                        seen.push("syn 1".to_string());
                        let mut out = BytesMut::new();
                        let refuse = Frame::RstStream { stream_id: 1, status: rst::REFUSED_STREAM };
                        frame::encode(&refuse, &mut out).unwrap();
                        tcp.write_all(&out).await.unwrap();
                    }
                    Some(Frame::SynStream { stream_id, .. }) => {
                        seen.push(format!("syn {stream_id}"));
                        let header_block = compressor.compress(&Headers::new()).unwrap().into();
                        let mut out = BytesMut::new();
                        for frame in [
                            Frame::SynReply { stream_id, flags: 0, header_block },
                            Frame::Data { stream_id, flags: 0, data: Bytes::from_static(b"last words") },
                            Frame::RstStream { stream_id, status: rst::CANCEL },
                        ] {
                            frame::encode(&frame, &mut out).unwrap();
                        }
                        tcp.write_all(&out).await.unwrap();
                    }
                    Some(Frame::Ping { id }) => seen.push(format!("ping {id}")),
                    Some(Frame::GoAway { .. }) => seen.push("goaway".into()),
                    Some(other) => seen.push(format!("{other:?}")),
                    None if tcp.read_buf(&mut buf).await.unwrap() == 0 => return seen,
                    None => {}
                }
            }
        });
        let conn = connect(&url, &["p1", "p2"]).await.unwrap();
        assert_eq!(conn.protocol(), "p2");
        let refused = conn.open(&[("streamtype", "error")]).await;
        assert!(matches!(refused, Err(Error::Reset(3))), "{:?}", refused.err());
        let mut stream = conn.open(&[("streamtype", "error")]).await.unwrap();
        assert_eq!(stream.read_to_end().await.unwrap(), b"last words");
        assert_eq!(stream.reset_by_server(), Some(rst::CANCEL));
        assert!(matches!(stream.write(&b"late"[..]).await, Err(Error::Reset(rst::CANCEL))));
        drop(stream);
        conn.close().await;
        let seen = tokio::time::timeout(WAIT, peer).await.unwrap().unwrap();
        // The pong and the first SYN_STREAM may go out in either order;
        // nothing (no FIN) follows the reset.
        assert!(seen.len() == 4 && seen.contains(&"ping 2".into()) && seen.contains(&"syn 1".into()), "{seen:?}");
        assert_eq!(seen[2..], ["syn 3", "goaway"]);
    }
}
