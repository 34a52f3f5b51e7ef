//! End-to-end tests: a small SPDY client, written against the frame and
//! header codecs, drives the server over an in-memory pipe.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::frame::{self, FLAG_FIN, Frame, goaway, rst};
use super::zlib::{HeaderCompressor, HeaderDecompressor, Headers};
use super::*;
use crate::{AttachRequest, BoxFuture, ExecRequest, Outcome};

const WAIT: Duration = Duration::from_secs(10);

/// What the client saw on one stream.
#[derive(Debug, Default, Clone)]
struct StreamLog {
    replied: bool,
    data: Vec<u8>,
    fin: bool,
    rst: Option<u32>,
}

#[derive(Debug, Default)]
struct Transcript {
    streams: HashMap<u32, StreamLog>,
    goaway: Option<(u32, u32)>,
    pings: Vec<u32>,
    windows: Vec<(u32, u32)>,
    /// Streams in the order their FIN arrived.
    fins: Vec<u32>,
    eof: bool,
}

impl Transcript {
    fn stream(&self, id: u32) -> StreamLog {
        self.streams.get(&id).cloned().unwrap_or_default()
    }
    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.stream(id).data).into_owned()
    }
}

struct ClientWriter {
    io: WriteHalf<DuplexStream>,
    headers: HeaderCompressor,
    next_id: u32,
}

impl ClientWriter {
    async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        frame::encode(&frame, &mut buf).unwrap();
        self.io.write_all(&buf).await.unwrap();
    }

    async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let block = headers.iter().fold(Headers::new(), |h, (n, v)| h.with(n, v));
        let header_block = self.headers.compress(&block).unwrap().into();
        self.send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, slot: 0, flags: 0, header_block })
            .await;
        id
    }

    /// Half-closes the connection, as a client leaving does.
    async fn close(mut self) {
        self.io.shutdown().await.unwrap();
    }

    async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
        let flags = if fin { FLAG_FIN } else { 0 };
        self.send(Frame::Data { stream_id, flags, data: Bytes::copy_from_slice(data) }).await;
    }
}

struct ClientReader {
    io: ReadHalf<DuplexStream>,
    buf: BytesMut,
    headers: HeaderDecompressor,
    seen: Transcript,
}

impl ClientReader {
    /// Reads one frame into the transcript; false at EOF.
    async fn step(&mut self) -> bool {
        loop {
            if let Some(frame) = frame::parse(&mut self.buf, 1 << 24).expect("server sent a malformed frame") {
                self.record(frame);
                return true;
            }
            let Ok(read) = tokio::time::timeout(WAIT, self.io.read_buf(&mut self.buf)).await else {
                panic!("server went quiet; so far: {:?}", self.seen);
            };
            let n = read.unwrap_or(0);
            if n == 0 {
                self.seen.eof = true;
                return false;
            }
        }
    }

    fn record(&mut self, frame: Frame) {
        let seen = &mut self.seen;
        match frame {
            Frame::SynReply { stream_id, header_block, .. } => {
                self.headers.decompress(&header_block).expect("server's header block");
                seen.streams.entry(stream_id).or_default().replied = true;
            }
            Frame::Data { stream_id, flags, data } => {
                let log = seen.streams.entry(stream_id).or_default();
                assert!(log.replied, "data on stream {stream_id} before its SYN_REPLY");
                assert!(!log.fin, "data on stream {stream_id} after its FIN");
                log.data.extend_from_slice(&data);
                if flags & FLAG_FIN != 0 {
                    log.fin = true;
                    seen.fins.push(stream_id);
                }
            }
            Frame::RstStream { stream_id, status } => seen.streams.entry(stream_id).or_default().rst = Some(status),
            Frame::GoAway { last_good_stream_id, status } => seen.goaway = Some((last_good_stream_id, status)),
            Frame::Ping { id } => seen.pings.push(id),
            Frame::WindowUpdate { stream_id, delta } => seen.windows.push((stream_id, delta)),
            Frame::SynStream { .. } => panic!("the server opened a stream"),
            Frame::Headers { header_block, .. } => {
                self.headers.decompress(&header_block).expect("server's header block");
            }
            Frame::Settings { .. } | Frame::Unknown { .. } => {}
        }
    }

    async fn until(&mut self, done: impl Fn(&Transcript) -> bool) {
        while !done(&self.seen) {
            assert!(self.step().await, "connection ended early: {:?}", self.seen);
        }
    }

    /// Everything up to the server's GOAWAY and half-close.
    async fn until_closed(mut self) -> Transcript {
        while self.step().await {}
        self.seen
    }
}

fn client(io: DuplexStream) -> (ClientWriter, ClientReader) {
    let (rd, wr) = tokio::io::split(io);
    (
        ClientWriter { io: wr, headers: HeaderCompressor::new(), next_id: 1 },
        ClientReader {
            io: rd,
            buf: BytesMut::new(),
            headers: HeaderDecompressor::new(1 << 20),
            seen: Transcript::default(),
        },
    )
}

/// A backend whose commands are tests' scripts.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
}

impl Fake {
    async fn run(&self, cmd: Vec<String>, mut streams: Streams) -> Outcome {
        self.calls.lock().unwrap().push(cmd.join(" "));
        match cmd[0].as_str() {
            // echo OUT ERR CODE
            "echo" => {
                if let Some(out) = streams.stdout.as_mut() {
                    out.write_all(cmd[1].as_bytes()).await.unwrap();
                }
                if let Some(err) = streams.stderr.as_mut() {
                    err.write_all(cmd[2].as_bytes()).await.unwrap();
                }
                Outcome::Exited(cmd[3].parse().unwrap())
            }
            "cat" => {
                let mut stdin = streams.stdin.take().expect("stdin");
                let mut stdout = streams.stdout.take().expect("stdout");
                let n = tokio::io::copy(&mut stdin, &mut stdout).await;
                // Output ends with the command, as a process's would.
                stdout.shutdown().await.unwrap();
                match n {
                    Ok(_) => Outcome::Exited(0),
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
            // resize N: report N terminal sizes on stdout
            "resize" => {
                let want: usize = cmd[1].parse().unwrap();
                let mut resize = streams.resize.take().expect("resize channel");
                let mut seen = Vec::new();
                while seen.len() < want {
                    let Some(size) = resize.recv().await else { break };
                    seen.push(format!("{}x{}", size.width, size.height));
                }
                let mut stdout = streams.stdout.take().expect("stdout");
                stdout.write_all(seen.join(" ").as_bytes()).await.unwrap();
                Outcome::Exited(0)
            }
            "fail" => Outcome::Failed("no such container".into()),
            other => panic!("unknown test command {other}"),
        }
    }
}

impl Backend for Fake {
    fn exec(&self, request: ExecRequest, streams: Streams) -> BoxFuture<'_, Outcome> {
        Box::pin(self.run(request.cmd, streams))
    }

    fn attach(&self, _request: AttachRequest, streams: Streams) -> BoxFuture<'_, Outcome> {
        Box::pin(self.run(vec!["cat".into()], streams))
    }

    fn port_forward(&self, pod: &str, port: u16) -> BoxFuture<'_, io::Result<TcpStream>> {
        self.calls.lock().unwrap().push(format!("forward {pod} {port}"));
        Box::pin(TcpStream::connect(("127.0.0.1", port)))
    }
}

fn exec(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Session {
    Session::Exec(ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    })
}

fn start_exec(
    protocol: RemoteCommandProtocol,
    session: Session,
    creation_timeout: Duration,
) -> (ClientWriter, ClientReader, Arc<Fake>, JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let fake = Arc::new(Fake::default());
    let server = tokio::spawn(serve_remote_command_within(theirs, protocol, session, fake.clone(), creation_timeout));
    let (w, r) = client(ours);
    (w, r, fake, server)
}

/// Leaves as client-go does after the server's GOAWAY, then waits for the
/// server to finish.
async fn leave(w: ClientWriter, server: JoinHandle<()>) {
    w.close().await;
    finished(server).await;
}

async fn finished(server: JoinHandle<()>) {
    tokio::time::timeout(WAIT, server).await.expect("server did not finish").expect("server panicked");
}

#[tokio::test]
async fn exec_v4_streams_output_and_reports_success() {
    let session = exec(&["echo", "to stdout", "to stderr", "0"], false, true, true, false);
    let (mut w, r, fake, server) = start_exec(RemoteCommandProtocol::V4, session, WAIT);
    // client-go's order: error first, then stdout, stderr.
    let error = w.open(&[("streamtype", "error")]).await;
    let stdout = w.open(&[("StreamType", "stdout")]).await;
    let stderr = w.open(&[("streamtype", "stderr")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;

    for id in [error, stdout, stderr] {
        let log = seen.stream(id);
        assert!(log.replied && log.fin && log.rst.is_none(), "stream {id}: {log:?}");
    }
    assert_eq!(seen.text(stdout), "to stdout");
    assert_eq!(seen.text(stderr), "to stderr");
    assert_eq!(seen.text(error), r#"{"metadata":{},"status":"Success"}"#);
    assert_eq!(seen.goaway, Some((stderr, goaway::OK)));
    assert!(seen.eof);
    assert_eq!(*fake.calls.lock().unwrap(), ["echo to stdout to stderr 0"]);
}

#[tokio::test]
async fn exec_v4_reports_a_non_zero_exit_as_status_json() {
    let session = exec(&["echo", "", "oops", "3"], false, false, true, false);
    let (mut w, r, _fake, server) = start_exec(RemoteCommandProtocol::V4, session, WAIT);
    let error = w.open(&[("streamtype", "error")]).await;
    let stderr = w.open(&[("streamtype", "stderr")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;

    assert_eq!(seen.text(stderr), "oops");
    let status: serde_json::Value = serde_json::from_slice(&seen.stream(error).data).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert!(seen.stream(error).fin);
}

#[tokio::test]
async fn exec_v3_reports_failures_as_plain_text_and_success_as_nothing() {
    let session = exec(&["echo", "out", "", "3"], false, true, false, false);
    let (mut w, r, _fake, server) = start_exec(RemoteCommandProtocol::V3, session, WAIT);
    let error = w.open(&[("streamtype", "error")]).await;
    let stdout = w.open(&[("streamtype", "stdout")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert_eq!(seen.text(stdout), "out");
    assert_eq!(seen.text(error), "command terminated with non-zero exit code: exit status 3");
    assert!(seen.stream(error).fin);

    let session = exec(&["echo", "out", "", "0"], false, true, false, false);
    let (mut w, r, _fake, server) = start_exec(RemoteCommandProtocol::V3, session, WAIT);
    let error = w.open(&[("streamtype", "error")]).await;
    w.open(&[("streamtype", "stdout")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    let log = seen.stream(error);
    assert!(log.data.is_empty() && log.fin, "{log:?}");
}

#[tokio::test]
async fn exec_v2_reports_a_backend_failure() {
    let session = exec(&["fail"], false, true, false, false);
    let (mut w, r, _fake, server) = start_exec(RemoteCommandProtocol::V2, session, WAIT);
    let error = w.open(&[("streamtype", "error")]).await;
    w.open(&[("streamtype", "stdout")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert_eq!(seen.text(error), "no such container");
}

#[tokio::test]
async fn stdin_is_echoed_until_the_client_half_closes() {
    let session = exec(&["cat"], true, true, false, false);
    let (mut w, mut r, _fake, server) = start_exec(RemoteCommandProtocol::V4, session, WAIT);
    let error = w.open(&[("streamtype", "error")]).await;
    let stdin = w.open(&[("streamtype", "stdin")]).await;
    let stdout = w.open(&[("streamtype", "stdout")]).await;
    r.until(|t| [error, stdin, stdout].iter().all(|id| t.stream(*id).replied)).await;

    // More than a window and a stream buffer, in Go-sized frames, while the
    // reader runs: the server must neither stall on windows spdystream
    // never opens nor lose order.
    let input: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let reading = tokio::spawn(r.until_closed());
    for chunk in input.chunks(32 * 1024) {
        w.data(stdin, chunk, false).await;
    }
    w.data(stdin, b"", true).await;
    let seen = tokio::time::timeout(WAIT, reading).await.unwrap().unwrap();
    leave(w, server).await;

    assert_eq!(seen.stream(stdout).data.len(), input.len());
    assert!(seen.stream(stdout).data == input, "stdout differs from stdin");
    assert!(seen.stream(stdout).fin);
    // Our half of stdin is closed only at the end: v2+ clients stop
    // sending stdin when it closes.
    let fin_at = |id| seen.fins.iter().position(|&s| s == id).unwrap();
    assert!(fin_at(stdin) > fin_at(stdout), "{:?}", seen.fins);
    assert_eq!(seen.text(error), r#"{"metadata":{},"status":"Success"}"#);
    // We credited both the stream and the connection as data was consumed.
    let credited = |id| seen.windows.iter().filter(|(s, _)| *s == id).map(|(_, d)| u64::from(*d)).sum::<u64>();
    assert!(credited(stdin) >= 500_000, "{:?}", seen.windows);
    assert!(credited(0) >= 500_000, "{:?}", seen.windows);
}

#[tokio::test]
async fn attach_with_a_tty_delivers_resizes() {
    let session = exec(&["resize", "3"], false, true, true, true);
    let (mut w, mut r, _fake, server) = start_exec(RemoteCommandProtocol::V4, session, WAIT);
    let error = w.open(&[("streamtype", "error")]).await;
    let stdout = w.open(&[("streamtype", "stdout")]).await;
    // No stderr with a tty: the session starts once resize is here.
    let resize = w.open(&[("streamtype", "resize")]).await;
    r.until(|t| t.stream(resize).replied).await;
    // As json.Encoder writes them, one event split across two frames, and
    // Go's case-insensitive field names.
    w.data(resize, b"{\"Width\":80,\"Height\":24}\n{\"Width\":1", false).await;
    w.data(resize, b"00,\"Height\":50}\n{\"width\":7,\"height\":9}\n", false).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert_eq!(seen.text(stdout), "80x24 100x50 7x9");
    assert!(seen.stream(resize).fin);
    assert_eq!(seen.text(error), r#"{"metadata":{},"status":"Success"}"#);
}

#[test]
fn terminal_sizes_decode_as_go_decodes_them() {
    let size = |s: &str| terminal_size(&serde_json::from_str(s).unwrap());
    assert_eq!(size(r#"{"Width":80,"Height":24}"#), Some(TerminalSize { width: 80, height: 24 }));
    assert_eq!(size(r#"{"HEIGHT":5}"#), Some(TerminalSize { width: 0, height: 5 }));
    assert_eq!(size(r#"{"Width":70000,"Height":24}"#), None);
    assert_eq!(size(r#"{"Width":-1,"Height":24}"#), None);
    assert_eq!(size(r#""80x24""#), None);
}

#[tokio::test]
async fn v1_resets_the_error_stream_and_closes_stdin_at_once() {
    let session = exec(&["cat"], true, true, false, false);
    let (mut w, mut r, _fake, server) = start_exec(RemoteCommandProtocol::V1, session, WAIT);
    let error = w.open(&[("streamtype", "error")]).await;
    let stdin = w.open(&[("streamtype", "stdin")]).await;
    let stdout = w.open(&[("streamtype", "stdout")]).await;
    // Before any input: the 1.0 kubelet's handshake.
    r.until(|t| t.stream(error).rst.is_some() && t.stream(stdin).fin).await;
    assert_eq!(r.seen.stream(error).rst, Some(rst::CANCEL));
    w.data(stdin, b"v1 input", true).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert_eq!(seen.text(stdout), "v1 input");
    assert!(seen.stream(error).data.is_empty());
}

#[tokio::test]
async fn missing_streams_time_out_without_running_the_session() {
    let session = exec(&["echo", "x", "y", "0"], false, true, true, false);
    let (mut w, r, fake, server) = start_exec(RemoteCommandProtocol::V4, session, Duration::from_millis(200));
    let error = w.open(&[("streamtype", "error")]).await;
    w.open(&[("streamtype", "stdout")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert!(fake.calls.lock().unwrap().is_empty());
    assert!(seen.stream(error).data.is_empty());
    assert_eq!(seen.goaway, Some((3, goaway::OK)));
}

#[tokio::test]
async fn pings_are_echoed_and_unknown_frames_skipped() {
    let session = exec(&["echo", "x", "", "0"], false, true, false, false);
    let (mut w, mut r, _fake, server) = start_exec(RemoteCommandProtocol::V4, session, WAIT);
    w.send(Frame::Unknown { frame_type: 10, flags: 0, length: 12 }).await;
    w.send(Frame::Settings { flags: 0, entries: vec![frame::Setting { flags: 0, id: 7, value: 1 << 20 }] }).await;
    w.send(Frame::WindowUpdate { stream_id: 0, delta: 1000 }).await;
    w.send(Frame::Ping { id: 1 }).await;
    w.send(Frame::Ping { id: 2 }).await;
    w.send(Frame::Ping { id: 3 }).await;
    r.until(|t| t.pings.len() == 2).await;
    assert_eq!(r.seen.pings, [1, 3]);
    w.open(&[("streamtype", "error")]).await;
    let stdout = w.open(&[("streamtype", "stdout")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert_eq!(seen.text(stdout), "x");
}

/// Sends raw bytes as the client and returns what the server answered.
async fn hostile(bytes: &[u8]) -> Transcript {
    let session = exec(&["echo", "x", "", "0"], false, true, false, false);
    let (mut w, r, fake, server) = start_exec(RemoteCommandProtocol::V4, session, WAIT);
    w.io.write_all(bytes).await.unwrap();
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert!(fake.calls.lock().unwrap().is_empty());
    seen
}

#[tokio::test]
async fn malformed_input_ends_the_connection_with_a_protocol_error() {
    // Garbage as a control frame of version 2.
    let seen = hostile(b"\x80\x02\x00\x01\x00\x00\x00\x04abcd").await;
    assert_eq!(seen.goaway, Some((0, goaway::PROTOCOL_ERROR)));

    // A SYN_STREAM whose header block is not zlib.
    let seen = hostile(b"\x80\x03\x00\x01\x00\x00\x00\x0e\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00junk").await;
    assert_eq!(seen.goaway, Some((0, goaway::PROTOCOL_ERROR)));

    // A header block that inflates past the limit.
    let mut tx = HeaderCompressor::new();
    let bomb = Headers::new().with("streamtype", &"e".repeat(2 << 20));
    let header_block = tx.compress(&bomb).unwrap().into();
    let mut wire = BytesMut::new();
    let syn = Frame::SynStream { stream_id: 1, associated_to: 0, priority: 0, slot: 0, flags: 0, header_block };
    frame::encode(&syn, &mut wire).unwrap();
    let seen = hostile(&wire).await;
    assert_eq!(seen.goaway, Some((0, goaway::PROTOCOL_ERROR)));
    assert!(!seen.stream(1).replied);

    // A control frame claiming 16 MiB.
    let seen = hostile(b"\x80\x03\x00\x08\x00\xff\xff\xff").await;
    assert_eq!(seen.goaway, Some((0, goaway::PROTOCOL_ERROR)));
}

#[tokio::test]
async fn bad_stream_ids_are_reset_without_ending_the_connection() {
    let session = exec(&["echo", "fine", "", "0"], false, true, false, false);
    let (mut w, mut r, _fake, server) = start_exec(RemoteCommandProtocol::V4, session, WAIT);
    w.next_id = 5;
    let error = w.open(&[("streamtype", "error")]).await;
    // Going backwards, and a server-side (even) id.
    w.next_id = 3;
    w.open(&[("streamtype", "stdout")]).await;
    w.next_id = 8;
    w.open(&[("streamtype", "stdout")]).await;
    r.until(|t| t.stream(3).rst.is_some() && t.stream(8).rst.is_some()).await;
    assert_eq!(r.seen.stream(3).rst, Some(rst::PROTOCOL_ERROR));
    // Data for a stream never opened.
    w.data(21, b"?", false).await;
    r.until(|t| t.stream(21).rst.is_some()).await;
    assert_eq!(r.seen.stream(21).rst, Some(rst::INVALID_STREAM));
    w.next_id = 23;
    let stdout = w.open(&[("streamtype", "stdout")]).await;
    let seen = r.until_closed().await;
    leave(w, server).await;
    assert_eq!(seen.text(stdout), "fine");
    assert!(seen.stream(error).fin);
}

#[tokio::test]
async fn the_stream_count_is_bounded() {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let limits = Limits { max_streams: 3, ..Limits::default() };
    let (conn, mut incoming) = Conn::start(theirs, limits);
    let (mut w, mut r) = client(ours);
    for _ in 0..5 {
        w.open(&[("streamtype", "data")]).await;
    }
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(tokio::time::timeout(WAIT, incoming.recv()).await.unwrap().unwrap().accept());
    }
    r.until(|t| t.stream(7).rst.is_some() && t.stream(9).rst.is_some()).await;
    assert_eq!(r.seen.stream(9).rst, Some(rst::REFUSED_STREAM));
    // Closing one both ways frees its place.
    drop(accepted.remove(0));
    w.data(1, b"", true).await;
    r.until(|t| t.stream(1).fin).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let eleven = w.open(&[("streamtype", "data")]).await;
    let offer = tokio::time::timeout(WAIT, incoming.recv()).await.unwrap().unwrap();
    assert_eq!(offer.id, eleven);
    drop(offer);
    drop(accepted);
    drop(w);
    conn.close(goaway::OK, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn unread_data_holds_the_reader_back_within_the_connection_budget() {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let limits = Limits { stream_buffer: 1 << 20, connection_buffer: 64 * 1024, ..Limits::default() };
    let (conn, mut incoming) = Conn::start(theirs, limits);
    let (mut w, _r) = client(ours);
    let a = w.open(&[("streamtype", "a")]).await;
    let b = w.open(&[("streamtype", "b")]).await;
    let mut accept = async || tokio::time::timeout(WAIT, incoming.recv()).await.unwrap().unwrap().accept();
    let (mut from_a, _to_a) = accept().await.split();
    let (mut from_b, _to_b) = accept().await.split();
    w.data(a, &[1; 40_000], false).await;
    w.data(a, &[2; 40_000], true).await;
    w.data(b, b"later", true).await;
    // The second frame for a does not fit beside the first, so b's data
    // behind it waits too.
    let mut buf = [0u8; 16];
    assert!(tokio::time::timeout(Duration::from_millis(200), from_b.read(&mut buf)).await.is_err());
    let mut got_a = Vec::new();
    from_a.read_to_end(&mut got_a).await.unwrap();
    assert_eq!(got_a.len(), 80_000);
    assert!(got_a[..40_000].iter().all(|&x| x == 1) && got_a[40_000..].iter().all(|&x| x == 2));
    let mut got_b = Vec::new();
    tokio::time::timeout(WAIT, from_b.read_to_end(&mut got_b)).await.unwrap().unwrap();
    assert_eq!(got_b, b"later");
    drop(w);
    conn.close(goaway::OK, Duration::from_millis(100)).await;
}

/// A pod-side service: reads until the client half-closes, then answers
/// with what it got, reversed, and closes.
async fn reverser() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                got.reverse();
                conn.write_all(b"reversed:").await.unwrap();
                conn.write_all(&got).await.unwrap();
            });
        }
    });
    (port, task)
}

fn start_port_forward(creation_timeout: Duration) -> (ClientWriter, ClientReader, Arc<Fake>, JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let fake = Arc::new(Fake::default());
    let server = tokio::spawn(serve_port_forward_within(theirs, "pod-1".into(), fake.clone(), creation_timeout));
    let (w, r) = client(ours);
    (w, r, fake, server)
}

#[tokio::test]
async fn port_forward_carries_two_ports_at_once_with_half_close() {
    let (port_a, _a) = reverser().await;
    let (port_b, _b) = reverser().await;
    let (mut w, mut r, fake, server) = start_port_forward(WAIT);
    let (pa, pb) = (port_a.to_string(), port_b.to_string());
    // client-go's order per connection: error, then data; two interleaved.
    let err_a = w.open(&[("streamtype", "error"), ("port", &pa), ("requestid", "0")]).await;
    let err_b = w.open(&[("streamtype", "error"), ("port", &pb), ("requestid", "1")]).await;
    let data_b = w.open(&[("streamtype", "data"), ("port", &pb), ("requestid", "1")]).await;
    let data_a = w.open(&[("streamtype", "data"), ("port", &pa), ("requestid", "0")]).await;
    // client-go closes its half of the error streams at once.
    w.data(err_a, b"", true).await;
    w.data(err_b, b"", true).await;
    w.data(data_a, b"hello ", false).await;
    w.data(data_b, b"other port", true).await;
    w.data(data_a, b"world", true).await;

    r.until(|t| t.stream(data_a).fin && t.stream(data_b).fin).await;
    // The answers prove the services saw our FIN while their reply could
    // still travel back: the half-close went through both ways.
    assert_eq!(r.seen.text(data_a), "reversed:dlrow olleh");
    assert_eq!(r.seen.text(data_b), "reversed:trop rehto");
    // As client-go does once the remote side is done: reset data, then wait
    // for the error stream to end.
    w.send(Frame::RstStream { stream_id: data_a, status: rst::CANCEL }).await;
    w.send(Frame::RstStream { stream_id: data_b, status: rst::CANCEL }).await;
    r.until(|t| t.stream(err_a).fin && t.stream(err_b).fin).await;
    assert!(r.seen.stream(err_a).data.is_empty() && r.seen.stream(err_b).data.is_empty());

    // The connection lives on for more requests until the client leaves.
    let err_c = w.open(&[("streamtype", "error"), ("port", &pa), ("requestid", "2")]).await;
    let data_c = w.open(&[("streamtype", "data"), ("port", &pa), ("requestid", "2")]).await;
    w.data(data_c, b"abc", true).await;
    r.until(|t| t.stream(data_c).fin && t.stream(err_c).fin).await;
    assert_eq!(r.seen.text(data_c), "reversed:cba");

    w.close().await;
    let seen = r.until_closed().await;
    finished(server).await;
    assert!(seen.eof);
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.contains(&format!("forward pod-1 {port_a}")) && calls.contains(&format!("forward pod-1 {port_b}")));
}

#[tokio::test]
async fn port_forward_reports_a_refused_connection_on_the_error_stream() {
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let (mut w, mut r, _fake, server) = start_port_forward(WAIT);
    let port = closed_port.to_string();
    let error = w.open(&[("streamtype", "error"), ("port", &port), ("requestid", "0")]).await;
    let data = w.open(&[("streamtype", "data"), ("port", &port), ("requestid", "0")]).await;
    r.until(|t| t.stream(error).fin && t.stream(data).fin).await;
    let message = r.seen.text(error);
    assert!(message.starts_with(&format!("error forwarding port {closed_port} to pod pod-1, uid : ")), "{message}");
    assert!(r.seen.stream(data).data.is_empty());
    w.close().await;
    r.until_closed().await;
    finished(server).await;
}

#[tokio::test]
async fn port_forward_checks_headers_and_times_out_half_pairs() {
    let (port, _svc) = reverser().await;
    let (mut w, mut r, fake, server) = start_port_forward(Duration::from_millis(200));
    let port = port.to_string();
    let no_port = w.open(&[("streamtype", "data"), ("requestid", "9")]).await;
    let port_zero = w.open(&[("streamtype", "data"), ("port", "0"), ("requestid", "9")]).await;
    let bad_type = w.open(&[("streamtype", "stdin"), ("port", &port), ("requestid", "9")]).await;
    let lonely = w.open(&[("streamtype", "error"), ("port", &port), ("requestid", "5")]).await;
    r.until(|t| [no_port, port_zero, bad_type].iter().all(|id| t.stream(*id).rst.is_some())).await;
    r.until(|t| t.stream(lonely).replied).await;
    r.until(|t| !t.stream(lonely).data.is_empty()).await;
    assert_eq!(r.seen.text(lonely), "(request=5) timed out waiting for streams");
    r.until(|t| t.stream(lonely).fin).await;

    // Without request ids (old clients), a pair is consecutive streams.
    let error = w.open(&[("streamtype", "error"), ("port", &port)]).await;
    let data = w.open(&[("streamtype", "data"), ("port", &port)]).await;
    w.data(data, b"old", true).await;
    r.until(|t| t.stream(data).fin && t.stream(error).fin).await;
    assert_eq!(r.seen.text(data), "reversed:dlo");
    w.close().await;
    r.until_closed().await;
    finished(server).await;
    assert_eq!(fake.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn port_forward_ends_open_forwards_when_the_client_leaves() {
    // A service that never closes: only the SPDY connection's end can stop
    // the forward.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 16];
        // Ends when the forwarder closes our connection.
        while conn.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let (mut w, mut r, _fake, server) = start_port_forward(WAIT);
    let port = port.to_string();
    w.open(&[("streamtype", "error"), ("port", &port), ("requestid", "0")]).await;
    let data = w.open(&[("streamtype", "data"), ("port", &port), ("requestid", "0")]).await;
    w.data(data, b"ping", false).await;
    r.until(|t| t.stream(data).replied).await;
    drop(w);
    drop(r);
    finished(server).await;
    tokio::time::timeout(WAIT, service).await.expect("forward left open").unwrap();
}
