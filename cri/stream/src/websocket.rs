//! The Kubernetes channel protocols over WebSocket: exec/attach
//! (`*.channel.k8s.io`), the kubelet's port-forward (`v4.channel.k8s.io`
//! with one data and one error channel per port), and the byte-stream
//! adapter client-go tunnels SPDY through (`SPDY/3.1+portforward.k8s.io`).
//!
//! Each connection has one reader task, which routes incoming messages to
//! the session (stdin, resize, port data), and one writer task, which
//! sends what the session's writers queued. The queues are bounded so
//! that a slow side holds the other back instead of buffering without
//! limit. When the reader stops (the client closed, vanished or idled
//! out) the writer stops too, so the session sees stdin EOF and failing
//! writes, the two signals a `Backend` is told to watch.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::{CancellationToken, PollSender};

use crate::{Backend, Reader, RemoteCommandProtocol, Session, Streams, TerminalSize, Writer};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5's close signal: its payload's first byte names the channel the
/// client has finished sending on.
const CLOSE_SIGNAL: u8 = 255;

/// Messages queued for the client; small, since each may hold a chunk.
const OUT_QUEUE: usize = 16;
/// Messages queued for one inbound stream (stdin, a forwarded port).
const IN_QUEUE: usize = 16;
const RESIZE_QUEUE: usize = 8;
/// One outgoing message carries at most this much of a write, so one
/// stream cannot monopolise the connection and stdout and stderr
/// interleave at a fine grain.
const MAX_CHUNK: usize = 32 * 1024;
/// A resize stream that buffers more than this without forming a JSON
/// object is not sending terminal sizes.
const MAX_RESIZE_BUFFER: usize = 4096;
/// How long the close handshake may take once the session is over.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// At most 2 channels per port fit in a channel byte.
pub(crate) const MAX_PORTS: usize = 128;

/// How channel numbers and payloads are put in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Binary messages, the channel as the first byte.
    Binary,
    /// `base64.channel.k8s.io`: text messages, the channel as an ASCII
    /// digit, the payload in standard base64.
    Base64,
}

impl Codec {
    fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Codec::Binary => {
                let mut frame = BytesMut::with_capacity(data.len() + 1);
                frame.extend_from_slice(&[channel]);
                frame.extend_from_slice(data);
                Message::Binary(frame.freeze())
            }
            Codec::Base64 => {
                let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
                text.push(char::from(b'0'.wrapping_add(channel)));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::text(text)
            }
        }
    }

    /// The channel and payload of an incoming message. Either message type
    /// is accepted in either codec, as the kubelet does.
    fn decode(self, mut frame: Bytes) -> Option<(u8, Bytes)> {
        if frame.is_empty() {
            return None;
        }
        let first = frame.get_u8();
        match self {
            Codec::Binary => Some((first, frame)),
            Codec::Base64 => {
                let data = base64::engine::general_purpose::STANDARD.decode(&frame).ok()?;
                Some((first.wrapping_sub(b'0'), Bytes::from(data)))
            }
        }
    }
}

/// The last time the connection moved a message either way, for the
/// idle timeout.
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0) })
    }

    pub(crate) fn touch(&self) {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(elapsed, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`; never for a zero `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Aborts a task when the session that owns it ends, however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the reader sends what arrives on each channel.
enum Router {
    RemoteCommand {
        stdin: Option<mpsc::Sender<Bytes>>,
        resize: Option<(mpsc::Sender<TerminalSize>, ResizeDecoder)>,
        close_signal: bool,
    },
    PortForward {
        /// Indexed by port; the data channel of port `i` is `2 * i`.
        data: Vec<Option<mpsc::Sender<Bytes>>>,
    },
}

impl Router {
    async fn deliver(&mut self, channel: u8, data: Bytes) {
        match self {
            Router::RemoteCommand { stdin, resize, close_signal } => match channel {
                STDIN => {
                    if let Some(tx) = stdin
                        && !data.is_empty()
                        && tx.send(data).await.is_err()
                    {
                        // The backend stopped reading stdin; later input
                        // has nowhere to go.
                        *stdin = None;
                    }
                }
                RESIZE => {
                    let Some((tx, decoder)) = resize else { return };
                    let sizes = match decoder.push(&data) {
                        Ok(sizes) => sizes,
                        Err(()) => {
                            // Like the kubelet, a malformed resize stream
                            // ends resizing, not the session.
                            *resize = None;
                            return;
                        }
                    };
                    for size in sizes {
                        if tx.send(size).await.is_err() {
                            *resize = None;
                            return;
                        }
                    }
                }
                CLOSE_SIGNAL if *close_signal && data.first() == Some(&STDIN) => *stdin = None,
                _ => {}
            },
            Router::PortForward { data: ports } => {
                if !channel.is_multiple_of(2) {
                    // Error channels are written by the server only.
                    return;
                }
                let Some(slot) = ports.get_mut(usize::from(channel / 2)) else { return };
                if let Some(tx) = slot
                    && tx.send(data).await.is_err()
                {
                    *slot = None;
                }
            }
        }
    }
}

/// Splits the resize stream into the JSON `TerminalSize` objects it
/// carries, which may straddle or share messages (the kubelet reads it
/// with a streaming JSON decoder).
#[derive(Default)]
struct ResizeDecoder {
    buffer: Vec<u8>,
}

impl ResizeDecoder {
    fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, ()> {
        self.buffer.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut values = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<serde_json::Value>();
        loop {
            match values.next() {
                Some(Ok(value)) => {
                    sizes.push(terminal_size(&value).ok_or(())?);
                    consumed = values.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return Err(()),
                None => {
                    consumed = self.buffer.len();
                    break;
                }
            }
        }
        self.buffer.drain(..consumed);
        if self.buffer.len() > MAX_RESIZE_BUFFER {
            return Err(());
        }
        Ok(sizes)
    }
}

/// A `remotecommand.TerminalSize`: Go matches its untagged `Width` and
/// `Height` fields case-insensitively; a missing field is zero.
fn terminal_size(value: &serde_json::Value) -> Option<TerminalSize> {
    let object = value.as_object()?;
    let field = |name: &str| -> Option<u16> {
        match object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            None => Some(0),
            Some((_, v)) => u16::try_from(v.as_u64()?).ok(),
        }
    };
    Some(TerminalSize { width: field("width")?, height: field("height")? })
}

/// The reader half: routes messages until the client closes, fails or
/// idles out, then cancels `gone`. Dropping the router on the way out
/// gives stdin and forwarded ports their EOF.
async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    codec: Codec,
    mut router: Router,
    idle: Duration,
    activity: Arc<Activity>,
    gone: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = activity.idle_for(idle) => {
                tracing::debug!("closing an idle streaming connection");
                break;
            }
        };
        let frame = match next {
            None => break,
            Some(Err(e)) => {
                tracing::debug!("streaming connection read: {e}");
                break;
            }
            Some(Ok(message)) => {
                activity.touch();
                match message {
                    Message::Binary(frame) => frame,
                    Message::Text(text) => Bytes::from(text),
                    // Keep reading: the next poll flushes tungstenite's
                    // reply and then ends the stream.
                    Message::Close(_) => continue,
                    // Pongs to pings are queued and sent by tungstenite.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                }
            }
        };
        if let Some((channel, data)) = codec.decode(frame) {
            router.deliver(channel, data).await;
        }
    }
    drop(router);
    gone.cancel();
}

/// The writer half: sends queued messages until a close frame was sent,
/// the queue's senders are gone, a write fails, or the client is gone.
/// Returning drops the queue, so every stream writer fails from then on.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut out: mpsc::Receiver<Message>,
    idle: Duration,
    activity: Arc<Activity>,
    gone: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = tokio::select! {
            biased;
            () = gone.cancelled() => break,
            message = out.recv() => message,
        };
        let Some(message) = message else {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
            break;
        };
        let closing = matches!(message, Message::Close(_));
        let sent = tokio::select! {
            biased;
            () = gone.cancelled() => break,
            () = activity.idle_for(idle) => {
                tracing::debug!("a streaming client stopped reading");
                break;
            }
            sent = sink.send(message) => sent,
        };
        if let Err(e) = sent {
            tracing::debug!("streaming connection write: {e}");
            break;
        }
        activity.touch();
        if closing {
            break;
        }
    }
    drop(out);
    gone.cancel();
}

/// One upgraded WebSocket, split into its reader and writer tasks.
struct Connection {
    out: mpsc::Sender<Message>,
    gone: CancellationToken,
    reader: AbortOnDrop,
    writer: AbortOnDrop,
    codec: Codec,
}

impl Connection {
    fn start<S>(ws: WebSocketStream<S>, codec: Codec, router: Router, idle: Duration) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sink, stream) = ws.split();
        let activity = Activity::new();
        let gone = CancellationToken::new();
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let writer = tokio::spawn(write_loop(sink, out_rx, idle, activity.clone(), gone.clone()));
        let reader = tokio::spawn(read_loop(stream, codec, router, idle, activity, gone.clone()));
        Connection { out, gone, reader: AbortOnDrop(reader), writer: AbortOnDrop(writer), codec }
    }

    fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter { tx: PollSender::new(self.out.clone()), channel, codec: self.codec }
    }

    async fn send(&self, channel: u8, data: &[u8]) {
        let _ = self.out.send(self.codec.encode(channel, data)).await;
    }

    /// Sends a normal close, then lets the client answer it before the
    /// tasks are torn down.
    async fn finish(mut self) {
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = self.out.send(Message::Close(Some(close))).await;
        drop(self.out);
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut self.writer.0).await;
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut self.reader.0).await;
    }
}

/// An exec or attach session over a `*.channel.k8s.io` WebSocket.
pub(crate) async fn serve_remote_command<S>(
    ws: WebSocketStream<S>,
    codec: Codec,
    protocol: RemoteCommandProtocol,
    session: Session,
    backend: Arc<dyn Backend>,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (stdin_tx, stdin) = if session.stdin() {
        let (tx, rx) = mpsc::channel(IN_QUEUE);
        (Some(tx), Some(Box::new(ChannelReader::new(rx)) as Reader))
    } else {
        (None, None)
    };
    let (resize_tx, resize) = if session.tty() {
        let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
        (Some((tx, ResizeDecoder::default())), Some(rx))
    } else {
        (None, None)
    };
    let router = Router::RemoteCommand {
        stdin: stdin_tx,
        resize: resize_tx,
        close_signal: protocol >= RemoteCommandProtocol::V5,
    };
    let conn = Connection::start(ws, codec, router, idle);

    let stdout = session.stdout();
    // A terminal merges stderr into stdout; validation refuses both.
    let stderr = session.stderr() && !session.tty();
    // An empty message on the lowest channel the client reads tells it
    // the streams are ready, as the kubelet does.
    let ready = if stdout {
        STDOUT
    } else if stderr {
        STDERR
    } else {
        ERROR
    };
    conn.send(ready, &[]).await;

    let streams = Streams {
        stdin,
        stdout: stdout.then(|| Box::new(conn.writer(STDOUT)) as Writer),
        stderr: stderr.then(|| Box::new(conn.writer(STDERR)) as Writer),
        resize,
    };
    let outcome = tokio::select! {
        outcome = session.run(&*backend, streams) => outcome,
        // The client left: dropping the session ends it (see `Backend`).
        () = conn.gone.cancelled() => return,
    };
    if let Some(message) = protocol.error_stream_message(&outcome) {
        conn.send(ERROR, &message).await;
    }
    conn.finish().await;
}

/// The kubelet's own WebSocket port forwarding: for the `i`th port, data
/// on channel `2i` both ways and errors on `2i + 1`; the server opens
/// each channel with the port number (2 bytes, little-endian).
pub(crate) async fn serve_port_forward<S>(
    ws: WebSocketStream<S>,
    codec: Codec,
    pod_sandbox_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut inbound = Vec::with_capacity(ports.len());
    let mut senders = Vec::with_capacity(ports.len());
    for _ in &ports {
        let (tx, rx) = mpsc::channel(IN_QUEUE);
        senders.push(Some(tx));
        inbound.push(rx);
    }
    let conn = Connection::start(ws, codec, Router::PortForward { data: senders }, idle);

    let mut forwards = Vec::with_capacity(ports.len());
    for ((index, port), rx) in ports.iter().copied().enumerate().zip(inbound) {
        let Ok(data_channel) = u8::try_from(2 * index) else { break };
        let error_channel = data_channel + 1;
        conn.send(data_channel, &port.to_le_bytes()).await;
        conn.send(error_channel, &port.to_le_bytes()).await;
        forwards.push(forward_port(
            &*backend,
            &pod_sandbox_id,
            port,
            rx,
            conn.writer(data_channel),
            conn.writer(error_channel),
            conn.gone.clone(),
        ));
    }
    futures_util::future::join_all(forwards).await;
    conn.finish().await;
}

/// Copies between one port's channels and a connection to the port in
/// the pod, until the pod's side reaches EOF or the client is gone.
async fn forward_port(
    backend: &dyn Backend,
    pod_sandbox_id: &str,
    port: u16,
    mut inbound: mpsc::Receiver<Bytes>,
    mut data: ChannelWriter,
    mut errors: ChannelWriter,
    gone: CancellationToken,
) {
    let connected = tokio::select! {
        () = gone.cancelled() => return,
        connected = backend.port_forward(pod_sandbox_id, port) => connected,
    };
    let stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            // The kubelet's message; the pod's UID is not known here.
            let message = format!("error forwarding port {port} to pod {pod_sandbox_id}, uid : {e}");
            let _ = errors.write_all(message.as_bytes()).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = stream.into_split();
    let upstream = async move {
        while let Some(chunk) = inbound.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client is gone: half-close so the pod's side sees EOF.
        let _ = to_pod.shutdown().await;
    };
    let downstream = tokio::io::copy(&mut from_pod, &mut data);
    tokio::pin!(upstream, downstream);
    let mut upstream_done = false;
    let copied = loop {
        tokio::select! {
            () = gone.cancelled() => return,
            () = &mut upstream, if !upstream_done => upstream_done = true,
            copied = &mut downstream => break copied,
        }
    };
    if let Err(e) = copied
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        let message = format!("error forwarding port {port} to pod {pod_sandbox_id}, uid : {e}");
        let _ = errors.write_all(message.as_bytes()).await;
    }
}

/// A stream's output: each write becomes one message (or a few, for large
/// writes) on the connection's queue. Fails with `BrokenPipe` once the
/// client is gone.
pub(crate) struct ChannelWriter {
    tx: PollSender<Message>,
    channel: u8,
    codec: Codec,
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(client_gone()));
        }
        let n = buf.len().min(MAX_CHUNK);
        let message = self.codec.encode(self.channel, &buf[..n]);
        match self.tx.send_item(message) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(client_gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing to tell the client: no protocol version has a close
        // signal from the server, and the connection's end is the EOF.
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

fn client_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the streaming client has gone")
}

/// Stdin as the reader task delivers it; EOF when the client closes
/// stdin (v5) or leaves.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader { rx, pending: Bytes::new() }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => self.pending = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// A WebSocket as a byte stream, for SPDY tunnelled through it the way
/// client-go's `TunnelingConnection` does: each write is one binary
/// message, reads concatenate binary messages, a close is EOF.
///
/// Writes are queued in tungstenite's buffer and pushed out eagerly; a
/// write that could not be pushed completely is finished by the next
/// write, `flush` or `shutdown`, so callers flush as with any buffered
/// writer.
pub(crate) struct WebSocketIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
}

impl<S> WebSocketIo<S> {
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        WebSocketIo { ws, pending: Bytes::new(), eof: false }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::Error::new(io::ErrorKind::BrokenPipe, e),
        e => io::Error::other(e),
    }
}

impl<S> AsyncRead for WebSocketIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message in a SPDY tunnel",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncWrite for WebSocketIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // The previous message goes out before a new one is taken: that
        // is the backpressure on the writer.
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io_error)?;
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut self.ws).start_send(Message::binary(Bytes::copy_from_slice(buf))).map_err(io_error)?;
        if let Poll::Ready(Err(e)) = Pin::new(&mut self.ws).poll_flush(cx) {
            return Poll::Ready(Err(io_error(e)));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_objects_may_straddle_and_share_messages() {
        let mut decoder = ResizeDecoder::default();
        assert_eq!(decoder.push(br#"{"Width":80,"Hei"#), Ok(vec![]));
        assert_eq!(
            decoder.push(br#"ght":24}{"width":100,"height":50} "#),
            Ok(vec![TerminalSize { width: 80, height: 24 }, TerminalSize { width: 100, height: 50 }])
        );
        assert_eq!(decoder.push(br#"{"Height":7}"#), Ok(vec![TerminalSize { width: 0, height: 7 }]));
        assert_eq!(decoder.push(b"not json"), Err(()));
        assert_eq!(ResizeDecoder::default().push(br#"{"Width":70000}"#), Err(()));
    }

    #[test]
    fn codecs_frame_channels() {
        assert_eq!(Codec::Binary.encode(1, b"hi"), Message::binary(vec![1, b'h', b'i']));
        assert_eq!(Codec::Base64.encode(1, b"hi\n"), Message::text("1aGkK"));
        assert_eq!(Codec::Base64.decode(Bytes::from_static(b"0aGkK")), Some((0, Bytes::from_static(b"hi\n"))));
        assert_eq!(Codec::Binary.decode(Bytes::from_static(&[4, b'{'])), Some((4, Bytes::from_static(b"{"))));
        assert_eq!(Codec::Binary.decode(Bytes::new()), None);
        assert_eq!(Codec::Base64.decode(Bytes::from_static(b"0!!")), None);
    }
}
