//! One SPDY/3.1 connection, server side: a reader task that parses frames
//! and routes them to streams, a writer task that owns the socket's write
//! half and the header compressor, and stream handles that are `AsyncRead`
//! and `AsyncWrite`.
//!
//! Flow control. The peer in practice is Go's spdystream (client-go and the
//! kubelet's proxy), which neither sends WINDOW_UPDATE nor honours one, so
//! enforcing our send windows would stall every stream after 64 KiB; we do
//! not. We do send WINDOW_UPDATEs, per stream as the application consumes
//! and for the connection as frames arrive, so a peer that keeps windows
//! never waits on us. Against a peer that ignores windows, the backpressure
//! is TCP's: once a stream holds `stream_buffer` unread bytes, or the
//! connection `connection_buffer`, the reader stops reading the socket until
//! the application catches up, as spdystream itself does.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::frame::{self, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, goaway, rst};
use super::zlib::{HeaderCompressor, HeaderDecompressor, Headers};

/// What a hostile peer may make this side hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A header block's size once inflated.
    pub max_header_block: usize,
    /// A control frame's payload as sent (compressed header blocks).
    pub max_control_frame: usize,
    /// Streams open at once; more are refused.
    pub max_streams: usize,
    /// Unread bytes one stream may hold before the reader stops reading
    /// (a larger frame is still taken into an empty buffer).
    pub stream_buffer: usize,
    /// Unread bytes all streams together may hold, likewise.
    pub connection_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_block: 1 << 20,
            max_control_frame: 1 << 20,
            max_streams: 1024,
            // Twice the window a conforming peer may fill.
            stream_buffer: 128 * 1024,
            connection_buffer: 16 << 20,
        }
    }
}

/// SPDY/3.1's initial window, per stream and for the connection; we never
/// change ours with SETTINGS.
const INITIAL_WINDOW: u32 = 64 * 1024;
/// Credit the peer once half a window has been used, not per frame.
const WINDOW_UPDATE_AT: u32 = INITIAL_WINDOW / 2;
/// The largest DATA frame we send (what Go's io.Copy sends).
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Bytes of outgoing data queued for the writer before writers wait.
const OUTBOUND_BUDGET: usize = 1 << 20;
/// Frames the reader may queue in reply to the peer (pongs, refusals)
/// before it stops reading, so a peer that floods pings and never reads
/// cannot grow the queue.
const CONTROL_BUDGET: usize = 64;
/// How long the writer may take to flush what is queued when closing.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection's writer is handed: the server's, and tote-stream's
/// client's (feature `client`), which differ only in the frame that opens
/// a stream's headers.
pub(super) enum Out {
    /// With the budget its data holds until written.
    Frame(Frame, Option<OwnedSemaphorePermit>),
    /// A SYN_REPLY or SYN_STREAM; the writer compresses the headers, so
    /// that compression order is wire order.
    Headers { frame: HeaderFrame, headers: Headers },
    /// Flush, half-close the socket, stop.
    Shutdown,
}

/// The frame that carries a stream's headers.
#[derive(Debug, Clone, Copy)]
pub(super) enum HeaderFrame {
    /// The server's answer to a stream.
    Reply { stream_id: u32 },
    /// A client opening a stream.
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    Open { stream_id: u32 },
}

impl HeaderFrame {
    fn with(self, header_block: bytes::Bytes) -> Frame {
        match self {
            HeaderFrame::Reply { stream_id } => Frame::SynReply { stream_id, flags: 0, header_block },
            HeaderFrame::Open { stream_id } => {
                Frame::SynStream { stream_id, associated_to: 0, priority: 0, slot: 0, flags: 0, header_block }
            }
        }
    }
}

struct Shared {
    out: mpsc::UnboundedSender<Out>,
    streams: Mutex<HashMap<u32, Arc<StreamShared>>>,
    data_budget: Arc<Semaphore>,
    control_budget: Arc<Semaphore>,
    /// After our GOAWAY, new streams are refused.
    going_away: AtomicBool,
    last_peer_stream: AtomicU32,
    limits: Limits,
    /// Unread bytes across all streams.
    buffered: AtomicUsize,
    /// Signalled when the application frees buffer space (or stops
    /// reading a stream), for the reader waiting to deliver.
    space: Notify,
}

impl Shared {
    fn send(&self, out: Out) -> bool {
        self.out.send(out).is_ok()
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Arc<StreamShared>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a frame the reader owes the peer, waiting for room first.
    async fn send_control(&self, frame: Frame) {
        if let Ok(permit) = self.control_budget.clone().acquire_owned().await {
            self.send(Out::Frame(frame, Some(permit)));
        }
    }

    fn forget_if_done(&self, stream: &StreamShared) {
        let done = {
            let st = stream.state();
            st.local_closed && st.remote_closed
        };
        if done {
            self.streams().remove(&stream.id);
        }
    }
}

struct StreamShared {
    id: u32,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    queue: VecDeque<Bytes>,
    buffered: usize,
    /// The peer will send no more: FIN, RST, or the connection ended.
    remote_closed: bool,
    /// Reset by either side: reads and writes fail.
    reset: bool,
    /// The connection's read side ended before the peer closed the stream.
    aborted: bool,
    /// We sent FIN or RST.
    local_closed: bool,
    /// The application dropped its read half: data is discarded.
    reader_gone: bool,
    read_waker: Option<Waker>,
    /// Bytes consumed that we have not yet credited to the peer.
    unacked: u32,
}

impl StreamShared {
    fn state(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_reader(st: &mut StreamState) {
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
    }

    /// Drops unread data, returning its room to the connection.
    fn discard(st: &mut StreamState, shared: &Shared) -> usize {
        let dropped = st.buffered;
        st.queue.clear();
        st.buffered = 0;
        shared.buffered.fetch_sub(dropped, Ordering::SeqCst);
        shared.space.notify_one();
        dropped
    }

    /// Sends FIN unless this side already closed or reset the stream.
    fn close_local(&self, shared: &Shared) {
        {
            let mut st = self.state();
            if st.local_closed {
                return;
            }
            st.local_closed = true;
            // Under the lock, so no data can be queued behind the FIN.
            shared.send(Out::Frame(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }, None));
        }
        shared.forget_if_done(self);
    }

    fn reset_local(&self, shared: &Shared, status: u32) {
        {
            let mut st = self.state();
            if !st.local_closed || !st.remote_closed {
                shared.send(Out::Frame(Frame::RstStream { stream_id: self.id, status }, None));
            }
            Self::mark_reset(&mut st, shared);
        }
        shared.streams().remove(&self.id);
    }

    fn mark_reset(st: &mut StreamState, shared: &Shared) {
        st.reset = true;
        st.remote_closed = true;
        st.local_closed = true;
        Self::discard(st, shared);
        Self::wake_reader(st);
    }

    /// Credits `n` consumed bytes, sending a WINDOW_UPDATE when enough
    /// have gathered and the peer may still send.
    fn credit(&self, st: &mut StreamState, n: usize, shared: &Shared) {
        st.unacked = st.unacked.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if st.unacked >= WINDOW_UPDATE_AT && !st.remote_closed {
            let delta = st.unacked.min(0x7fff_ffff);
            st.unacked = 0;
            shared.send(Out::Frame(Frame::WindowUpdate { stream_id: self.id, delta }, None));
        }
    }
}

/// A stream the peer opened, not yet answered.
pub(crate) struct Incoming {
    pub id: u32,
    pub headers: Headers,
    stream: Arc<StreamShared>,
    shared: Arc<Shared>,
}

impl Incoming {
    /// Replies with an empty SYN_REPLY, as the kubelet does.
    pub(crate) fn accept(self) -> Stream {
        self.shared.send(Out::Headers { frame: HeaderFrame::Reply { stream_id: self.id }, headers: Headers::new() });
        let reader = StreamReader { stream: self.stream.clone(), shared: self.shared.clone() };
        let writer = StreamWriter { stream: self.stream, shared: self.shared, acquiring: None };
        Stream { headers: self.headers, reader, writer }
    }

    pub(crate) fn reject(self, status: u32) {
        self.stream.reset_local(&self.shared, status);
    }
}

/// An accepted stream. Dropping it (or its write half) sends FIN.
pub(crate) struct Stream {
    pub headers: Headers,
    reader: StreamReader,
    writer: StreamWriter,
}

impl Stream {
    pub(crate) fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }

    pub(crate) fn closer(&self) -> StreamCloser {
        StreamCloser { stream: self.writer.stream.clone(), shared: self.writer.shared.clone() }
    }

    pub(crate) fn stream_type(&self) -> &str {
        self.headers.get("streamtype").unwrap_or("")
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// Closes a stream from outside whoever holds its halves: data queued by a
/// write that already returned goes out first; later writes fail.
#[derive(Clone)]
pub(crate) struct StreamCloser {
    stream: Arc<StreamShared>,
    shared: Arc<Shared>,
}

impl StreamCloser {
    pub(crate) fn close(&self) {
        self.stream.close_local(&self.shared);
    }

    pub(crate) fn reset(&self, status: u32) {
        self.stream.reset_local(&self.shared, status);
    }
}

/// The peer's data on a stream: EOF at its FIN, `ConnectionReset` if the
/// stream is reset, `ConnectionAborted` if the connection ends first.
pub(crate) struct StreamReader {
    stream: Arc<StreamShared>,
    shared: Arc<Shared>,
}

impl AsyncRead for StreamReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let stream = &self.stream;
        let mut st = stream.state();
        if let Some(chunk) = st.queue.front_mut() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk.split_to(n));
            if chunk.is_empty() {
                st.queue.pop_front();
            }
            st.buffered -= n;
            self.shared.buffered.fetch_sub(n, Ordering::SeqCst);
            stream.credit(&mut st, n, &self.shared);
            self.shared.space.notify_one();
            return Poll::Ready(Ok(()));
        }
        if st.reset {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if st.aborted {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        if st.remote_closed {
            return Poll::Ready(Ok(()));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let mut st = self.stream.state();
        st.reader_gone = true;
        let dropped = StreamShared::discard(&mut st, &self.shared);
        self.stream.credit(&mut st, dropped, &self.shared);
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Our data on a stream, as DATA frames of at most 32 KiB. Shutdown (or
/// drop) sends FIN.
pub(crate) struct StreamWriter {
    stream: Arc<StreamShared>,
    shared: Arc<Shared>,
    acquiring: Option<Acquire>,
}

impl StreamWriter {
    fn closed(&self) -> bool {
        let st = self.stream.state();
        st.local_closed || st.reset
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.closed() {
            self.acquiring = None;
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want = buf.len().min(MAX_DATA_FRAME);
        let permit = match self.acquiring.as_mut() {
            Some(acquiring) => match acquiring.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => {
                    self.acquiring = None;
                    permit.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?
                }
            },
            None => {
                let n = u32::try_from(want).unwrap_or(u32::MAX);
                match self.shared.data_budget.clone().try_acquire_many_owned(n) {
                    Ok(permit) => permit,
                    Err(_) => {
                        let mut acquiring: Acquire = Box::pin(self.shared.data_budget.clone().acquire_many_owned(n));
                        match acquiring.as_mut().poll(cx) {
                            Poll::Pending => {
                                self.acquiring = Some(acquiring);
                                return Poll::Pending;
                            }
                            Poll::Ready(permit) => permit.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?,
                        }
                    }
                }
            }
        };
        // A write retried with a different buffer may be shorter than the
        // permit taken for the first.
        let n = want.min(permit.num_permits());
        let st = self.stream.state();
        if st.local_closed || st.reset {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = Bytes::copy_from_slice(&buf[..n]);
        let sent =
            self.shared.send(Out::Frame(Frame::Data { stream_id: self.stream.id, flags: 0, data }, Some(permit)));
        drop(st);
        if sent { Poll::Ready(Ok(n)) } else { Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())) }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.close_local(&self.shared);
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        self.stream.close_local(&self.shared);
    }
}

/// A running connection. Dropping it stops both tasks at once; `close`
/// ends it politely.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl Conn {
    /// Starts serving `io`; streams the peer opens arrive on the receiver,
    /// which ends when the connection's read side does.
    pub(crate) fn start<IO>(io: IO, limits: Limits) -> (Self, mpsc::UnboundedReceiver<Incoming>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            data_budget: Arc::new(Semaphore::new(OUTBOUND_BUDGET)),
            control_budget: Arc::new(Semaphore::new(CONTROL_BUDGET)),
            going_away: AtomicBool::new(false),
            last_peer_stream: AtomicU32::new(0),
            limits,
            buffered: AtomicUsize::new(0),
            space: Notify::new(),
        });
        let writer = tokio::spawn(write_loop(write_half, out_rx));
        let reader = tokio::spawn(read_loop(read_half, shared.clone(), incoming_tx));
        (Self { shared, reader: Some(reader), writer: Some(writer) }, incoming_rx)
    }

    /// Sends GOAWAY, flushes and half-closes the socket, then reads (and
    /// discards) until the peer closes or `drain` passes, so that closing
    /// with unread input does not reset the connection under data the
    /// peer has not read yet.
    pub(crate) async fn close(mut self, status: u32, drain: Duration) {
        if !self.shared.going_away.swap(true, Ordering::SeqCst) {
            let last_good_stream_id = self.shared.last_peer_stream.load(Ordering::SeqCst);
            self.shared.send(Out::Frame(Frame::GoAway { last_good_stream_id, status }, None));
        }
        self.shared.send(Out::Shutdown);
        if let Some(writer) = self.writer.take() {
            let abort = writer.abort_handle();
            if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer).await.is_err() {
                abort.abort();
            }
        }
        if let Some(reader) = self.reader.take() {
            let abort = reader.abort_handle();
            if tokio::time::timeout(drain, reader).await.is_err() {
                abort.abort();
            }
        }
        // The reader does this when it ends by itself, not when aborted.
        end_streams(&self.shared);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for task in [self.reader.take(), self.writer.take()].into_iter().flatten() {
            task.abort();
        }
        end_streams(&self.shared);
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(mut io: W, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut compressor = HeaderCompressor::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut permits = Vec::new();
    'serve: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut shutdown = false;
        // Batch what is already queued into one write.
        while let Some(out) = next.take() {
            let encoded = match out {
                Out::Frame(frame, permit) => {
                    permits.extend(permit);
                    frame::encode(&frame, &mut buf)
                }
                Out::Headers { frame, headers } => match compressor.compress(&headers) {
                    Ok(block) => frame::encode(&frame.with(block.into()), &mut buf),
                    Err(e) => {
                        tracing::warn!("SPDY header compression failed: {e}");
                        break 'serve;
                    }
                },
                Out::Shutdown => {
                    shutdown = true;
                    break;
                }
            };
            if let Err(e) = encoded {
                // Only an oversized frame fails, and we never build one.
                tracing::warn!("SPDY frame not sent: {e}");
            }
            if buf.len() >= 64 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if io.write_all(&buf).await.is_err() || io.flush().await.is_err() {
            break;
        }
        buf.clear();
        permits.clear();
        if shutdown {
            let _ = io.shutdown().await;
            break;
        }
    }
    // Writers see BrokenPipe from here on instead of queueing forever.
    rx.close();
}

enum ReadEnd {
    Eof,
    Io(io::Error),
    Protocol(String),
}

async fn read_loop<R: AsyncRead + Unpin>(mut io: R, shared: Arc<Shared>, incoming: mpsc::UnboundedSender<Incoming>) {
    let limits = shared.limits;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut headers = HeaderDecompressor::new(limits.max_header_block);
    let mut connection_unacked: u32 = 0;
    let end = loop {
        let frame = match frame::parse(&mut buf, limits.max_control_frame) {
            Ok(Some(frame)) => frame,
            Ok(None) => match io.read_buf(&mut buf).await {
                Ok(0) => break ReadEnd::Eof,
                Ok(_) => continue,
                Err(e) => break ReadEnd::Io(e),
            },
            Err(e) => break ReadEnd::Protocol(e.to_string()),
        };
        match frame {
            Frame::SynStream { stream_id, flags, header_block, .. } => {
                // Decoded even if the stream is refused: the zlib stream
                // must see every block.
                let decoded = match headers.decompress(&header_block) {
                    Ok(h) => h,
                    Err(e) => break ReadEnd::Protocol(e.to_string()),
                };
                let last = shared.last_peer_stream.load(Ordering::SeqCst);
                if stream_id % 2 == 0 || stream_id <= last {
                    shared.send_control(Frame::RstStream { stream_id, status: rst::PROTOCOL_ERROR }).await;
                    continue;
                }
                shared.last_peer_stream.store(stream_id, Ordering::SeqCst);
                if shared.going_away.load(Ordering::SeqCst) || shared.streams().len() >= limits.max_streams {
                    shared.send_control(Frame::RstStream { stream_id, status: rst::REFUSED_STREAM }).await;
                    continue;
                }
                let stream = Arc::new(StreamShared {
                    id: stream_id,
                    state: Mutex::new(StreamState {
                        remote_closed: flags & FLAG_FIN != 0,
                        local_closed: flags & FLAG_UNIDIRECTIONAL != 0,
                        ..StreamState::default()
                    }),
                });
                shared.streams().insert(stream_id, stream.clone());
                let offer = Incoming { id: stream_id, headers: decoded, stream, shared: shared.clone() };
                if let Err(mpsc::error::SendError(offer)) = incoming.send(offer) {
                    offer.reject(rst::REFUSED_STREAM);
                }
            }
            Frame::Data { stream_id, flags, data } => {
                connection_unacked = connection_unacked.saturating_add(u32::try_from(data.len()).unwrap_or(u32::MAX));
                if connection_unacked >= WINDOW_UPDATE_AT {
                    let delta = connection_unacked.min(0x7fff_ffff);
                    connection_unacked = 0;
                    shared.send_control(Frame::WindowUpdate { stream_id: 0, delta }).await;
                }
                let stream = shared.streams().get(&stream_id).cloned();
                match stream {
                    Some(stream) => deliver(&shared, &stream, data, flags & FLAG_FIN != 0).await,
                    None if stream_id % 2 == 1 && stream_id > shared.last_peer_stream.load(Ordering::SeqCst) => {
                        // Data before its SYN_STREAM.
                        shared.send_control(Frame::RstStream { stream_id, status: rst::INVALID_STREAM }).await;
                    }
                    // A stream already closed: late data after a reset is
                    // expected, so it is dropped quietly.
                    None => {}
                }
            }
            Frame::RstStream { stream_id, .. } => {
                let stream = shared.streams().remove(&stream_id);
                if let Some(stream) = stream {
                    StreamShared::mark_reset(&mut stream.state(), &shared);
                }
            }
            Frame::SynReply { header_block, .. } => {
                // We open no streams, so there is nothing to reply to; the
                // block still advances the zlib stream.
                if let Err(e) = headers.decompress(&header_block) {
                    break ReadEnd::Protocol(e.to_string());
                }
            }
            Frame::Headers { stream_id, flags, header_block } => {
                if let Err(e) = headers.decompress(&header_block) {
                    break ReadEnd::Protocol(e.to_string());
                }
                if flags & FLAG_FIN != 0 {
                    let stream = shared.streams().get(&stream_id).cloned();
                    if let Some(stream) = stream {
                        deliver(&shared, &stream, Bytes::new(), true).await;
                    }
                }
            }
            Frame::Ping { id } => {
                // Odd ids are the client's; even ones would answer pings we
                // never send.
                if id % 2 == 1 {
                    shared.send_control(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => {
                // The peer opens no more streams; those open carry on until
                // it closes the connection.
            }
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
    };
    match end {
        ReadEnd::Eof => {}
        ReadEnd::Io(e) => tracing::debug!("SPDY connection read failed: {e}"),
        ReadEnd::Protocol(e) => {
            tracing::warn!("SPDY protocol error from peer, closing: {e}");
            if !shared.going_away.swap(true, Ordering::SeqCst) {
                let last_good_stream_id = shared.last_peer_stream.load(Ordering::SeqCst);
                shared.send(Out::Frame(Frame::GoAway { last_good_stream_id, status: goaway::PROTOCOL_ERROR }, None));
            }
        }
    }
    end_streams(&shared);
}

/// Nothing more will arrive: every stream's read side ends, at its FIN if
/// that came, else with an error.
fn end_streams(shared: &Shared) {
    let streams: Vec<_> = shared.streams().drain().map(|(_, s)| s).collect();
    for stream in streams {
        let mut st = stream.state();
        if !st.remote_closed {
            st.remote_closed = true;
            st.aborted = true;
        }
        StreamShared::wake_reader(&mut st);
    }
}

/// Hands `data` (and FIN) to a stream, waiting while its buffer is full.
async fn deliver(shared: &Shared, stream: &StreamShared, data: Bytes, fin: bool) {
    let len = data.len();
    let mut data = Some(data).filter(|d| !d.is_empty());
    loop {
        let notified = shared.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let after_fin = {
            let mut st = stream.state();
            if st.remote_closed {
                true
            } else {
                match data.take() {
                    None => {}
                    Some(_) if st.reader_gone || st.reset => stream.credit(&mut st, len, shared),
                    Some(d)
                        if has_room(st.buffered, d.len(), shared.limits.stream_buffer)
                            && has_room(
                                shared.buffered.load(Ordering::SeqCst),
                                d.len(),
                                shared.limits.connection_buffer,
                            ) =>
                    {
                        st.buffered += d.len();
                        shared.buffered.fetch_add(d.len(), Ordering::SeqCst);
                        st.queue.push_back(d);
                    }
                    Some(d) => data = Some(d),
                }
                if data.is_none() {
                    if fin {
                        st.remote_closed = true;
                    }
                    StreamShared::wake_reader(&mut st);
                }
                false
            }
        };
        if after_fin {
            // Data after FIN: the stream is half-closed.
            shared.send_control(Frame::RstStream { stream_id: stream.id, status: rst::STREAM_ALREADY_CLOSED }).await;
            return;
        }
        if data.is_none() {
            if fin {
                shared.forget_if_done(stream);
            }
            return;
        }
        notified.await;
    }
}

/// Whether `len` more bytes fit a buffer holding `held` of `limit`; an
/// empty buffer takes any frame, or one larger than the limit would never
/// be delivered.
fn has_room(held: usize, len: usize, limit: usize) -> bool {
    held == 0 || held.saturating_add(len) <= limit
}
