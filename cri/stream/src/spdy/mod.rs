//! SPDY/3.1 (draft-mbelshe-httpbis-spdy-00 as Kubernetes uses it): the
//! framing, zlib-compressed header blocks, and the remote-command and
//! port-forward protocols the kubelet's proxy and critest speak over it.
//!
//! The behaviour follows the kubelet's own streaming server
//! (`pkg/kubelet/cri/streaming/{remotecommand,portforward}/httpstream.go`)
//! and what client-go's SPDY executor and port forwarder expect of it.

#[cfg(feature = "client")]
pub mod client;
mod conn;
mod frame;
mod zlib;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Backend, Reader, RemoteCommandProtocol, Session, Streams, TerminalSize, Writer};
use conn::{Conn, Incoming, Limits, Stream, StreamReader};
use frame::{goaway, rst};

/// How long the client has to open every stream a session needs, or the
/// second stream of a port-forward pair (the kubelet's default
/// `StreamCreationTimeout`).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to keep reading after our GOAWAY for the client to close.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// Serves one exec or attach session on a connection already upgraded to
/// SPDY/3.1 (the server has sent its `101 Switching Protocols`).
pub async fn serve_remote_command<IO>(
    io: IO,
    protocol: RemoteCommandProtocol,
    session: Session,
    backend: Arc<dyn Backend>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_remote_command_within(io, protocol, session, backend, STREAM_CREATION_TIMEOUT).await;
}

/// The streams of a session, by `streamtype`.
#[derive(Default)]
struct SessionStreams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

async fn serve_remote_command_within<IO>(
    io: IO,
    protocol: RemoteCommandProtocol,
    session: Session,
    backend: Arc<dyn Backend>,
    creation_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (conn, mut incoming) = Conn::start(io, Limits::default());
    let tty = session.tty();
    // As the kubelet counts them: stderr is merged into the terminal, and
    // resizing exists from v3 on.
    let want_stdin = session.stdin();
    let want_stdout = session.stdout();
    let want_stderr = session.stderr() && !tty;
    let want_resize = tty && protocol >= RemoteCommandProtocol::V3;

    let mut got = SessionStreams::default();
    // Streams nobody asked for are still answered (the kubelet replies to
    // every stream) and closed at the end.
    let mut extra = Vec::new();
    let deadline = tokio::time::sleep(creation_timeout);
    tokio::pin!(deadline);
    let complete = loop {
        let complete = got.error.is_some()
            && (!want_stdin || got.stdin.is_some())
            && (!want_stdout || got.stdout.is_some())
            && (!want_stderr || got.stderr.is_some())
            && (!want_resize || got.resize.is_some());
        if complete {
            break true;
        }
        tokio::select! {
            offer = incoming.recv() => {
                let Some(offer) = offer else { break false };
                let stream = offer.accept();
                let slot = match stream.stream_type() {
                    "error" => Some(&mut got.error),
                    "stdin" if want_stdin => Some(&mut got.stdin),
                    "stdout" if want_stdout => Some(&mut got.stdout),
                    "stderr" if want_stderr => Some(&mut got.stderr),
                    "resize" if want_resize => Some(&mut got.resize),
                    _ => None,
                };
                match slot {
                    Some(slot @ None) => *slot = Some(stream),
                    _ => {
                        tracing::debug!(stream_type = stream.stream_type(), "unexpected SPDY stream for a session");
                        // Unread, its data is discarded rather than held.
                        let (_, writer) = stream.split();
                        extra.push(writer);
                    }
                }
            }
            () = &mut deadline => {
                tracing::warn!("timed out waiting for the client to create its streams");
                break false;
            }
        }
    };
    if !complete {
        drop((incoming, got, extra));
        conn.close(goaway::OK, CLOSE_DRAIN).await;
        return;
    }
    // Streams opened from here on are refused; the receiver ends when the
    // connection's read side does, that is when the client is gone.
    let client_gone = async move {
        while let Some(offer) = incoming.recv().await {
            offer.reject(rst::REFUSED_STREAM);
        }
    };

    let error = got.error.take().expect("checked complete");
    let error_closer = error.closer();
    // Clients never write on it; what they might is discarded.
    let (_, mut error) = error.split();
    let mut held = Vec::new();
    let mut closers = Vec::new();
    if protocol == RemoteCommandProtocol::V1 {
        // What 1.0 kubelets did and v1 clients expect: the error stream is
        // reset as soon as the streams are in (so v1 reports no errors), and
        // our half of stdin is closed.
        error_closer.reset(rst::CANCEL);
        if let Some(stdin) = &got.stdin {
            stdin.closer().close();
        }
    }
    let stdin = got.stdin.take().map(|s| {
        closers.push(s.closer());
        // Our write half stays open until the end: v2+ clients take its FIN
        // as the session ending and stop sending stdin.
        let (reader, writer) = s.split();
        held.push(writer);
        Box::new(reader) as Reader
    });
    let mut output = |s: Option<Stream>| {
        s.map(|s| {
            closers.push(s.closer());
            let (_, writer) = s.split();
            Box::new(writer) as Writer
        })
    };
    let stdout = output(got.stdout.take());
    let stderr = output(got.stderr.take());
    let resize = got.resize.take().map(|s| {
        closers.push(s.closer());
        let (reader, writer) = s.split();
        held.push(writer);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(forward_resizes(reader, tx));
        rx
    });

    let outcome = tokio::select! {
        outcome = session.run(&*backend, Streams { stdin, stdout, stderr, resize }) => outcome,
        // Dropping the session ends it (see `Backend`).
        () = client_gone => {
            drop((held, extra));
            conn.close(goaway::OK, CLOSE_DRAIN).await;
            return;
        }
    };

    // A backend may have left a copy task running with stdout: later writes
    // fail rather than trail the FIN.
    for closer in &closers {
        closer.close();
    }
    if protocol != RemoteCommandProtocol::V1 {
        if let Some(message) = protocol.error_stream_message(&outcome)
            && let Err(e) = error.write_all(&message).await
        {
            tracing::debug!("could not report the session's end to the client: {e}");
        }
        let _ = error.shutdown().await;
    }
    drop((held, extra));
    conn.close(goaway::OK, CLOSE_DRAIN).await;
}

/// Decodes the JSON `TerminalSize` objects client-go writes on the resize
/// stream (one per change, as `json.Encoder` does) until the stream ends
/// or holds something else, as the kubelet's decoder loop does.
async fn forward_resizes(mut reader: StreamReader, tx: mpsc::Sender<TerminalSize>) {
    // Resize events are tiny; a client sending more than this without
    // completing one is not sending resize events.
    const MAX_PENDING: usize = 64 * 1024;
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::select! {
            read = reader.read(&mut chunk) => read,
            // The session is over.
            () = tx.closed() => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut broken = false;
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&pending[consumed..]).into_iter::<serde_json::Value>();
            match values.next() {
                // Only whitespace left.
                None => break,
                Some(Ok(value)) => {
                    consumed += values.byte_offset();
                    match terminal_size(&value) {
                        Some(size) => sizes.push(size),
                        None => {
                            broken = true;
                            break;
                        }
                    }
                }
                // An event cut between frames: wait for the rest.
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    broken = true;
                    break;
                }
            }
        }
        pending.drain(..consumed);
        for size in sizes {
            if tx.send(size).await.is_err() {
                return;
            }
        }
        if broken || pending.len() > MAX_PENDING {
            tracing::debug!("resize stream holds something other than terminal sizes; ignoring the rest");
            return;
        }
    }
}

/// A `remotecommand.TerminalSize` as Go's decoder reads one: field names
/// match case-insensitively, absent fields are zero, and a value that is
/// not a uint16 is an error.
fn terminal_size(value: &serde_json::Value) -> Option<TerminalSize> {
    let object = match value {
        serde_json::Value::Object(object) => object,
        serde_json::Value::Null => return Some(TerminalSize { width: 0, height: 0 }),
        _ => return None,
    };
    let field = |name: &str| -> Option<u16> {
        match object.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            None => Some(0),
            Some((_, serde_json::Value::Null)) => Some(0),
            Some((_, v)) => v.as_u64().and_then(|n| u16::try_from(n).ok()),
        }
    };
    Some(TerminalSize { width: field("width")?, height: field("height")? })
}

/// Serves `portforward.k8s.io` on a connection already upgraded to
/// SPDY/3.1: each port the client asks for is a data and an error stream
/// pair sharing a `requestID`.
pub async fn serve_port_forward<IO>(io: IO, pod_sandbox_id: String, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    serve_port_forward_within(io, pod_sandbox_id, backend, STREAM_CREATION_TIMEOUT).await;
}

/// Half of a port-forward request, waiting for the other half.
struct Pair {
    deadline: Instant,
    error: Option<Stream>,
    data: Option<Stream>,
}

async fn serve_port_forward_within<IO>(
    io: IO,
    pod_sandbox_id: String,
    backend: Arc<dyn Backend>,
    creation_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (conn, mut incoming) = Conn::start(io, Limits::default());
    let pod: Arc<str> = pod_sandbox_id.into();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let next_expiry = pairs.values().map(|p| p.deadline).min();
        tokio::select! {
            offer = incoming.recv() => {
                // The client closed the connection (or broke the protocol).
                let Some(offer) = offer else { break };
                let Some((request_id, port, stream)) = accept_port_forward_stream(offer) else { continue };
                let pair = pairs.entry(request_id.clone()).or_insert_with(|| Pair {
                    deadline: Instant::now() + creation_timeout,
                    error: None,
                    data: None,
                });
                let slot = if stream.stream_type() == "error" { &mut pair.error } else { &mut pair.data };
                if slot.is_some() {
                    tracing::warn!(request_id, "port-forward request sent a second {} stream", stream.stream_type());
                    stream.closer().reset(rst::PROTOCOL_ERROR);
                    continue;
                }
                *slot = Some(stream);
                if let (Some(_), Some(_)) = (&pair.error, &pair.data) {
                    let (Some(error), Some(data)) = (pair.error.take(), pair.data.take()) else { continue };
                    pairs.remove(&request_id);
                    let port = port_of(&data).unwrap_or(port);
                    tasks.spawn(forward_port(pod.clone(), port, backend.clone(), error, data));
                }
            }
            () = tokio::time::sleep_until(next_expiry.unwrap_or_else(Instant::now)), if next_expiry.is_some() => {
                let now = Instant::now();
                let expired: Vec<String> =
                    pairs.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
                for request_id in expired {
                    let Some(pair) = pairs.remove(&request_id) else { continue };
                    tracing::warn!(request_id, "timed out waiting for the second stream of a port-forward request");
                    if let Some(mut error) = pair.error {
                        let message = format!("(request={request_id}) timed out waiting for streams");
                        tasks.spawn(async move {
                            let _ = error.write_all(message.as_bytes()).await;
                        });
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Forwarded connections end with the SPDY connection that carried them.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(pairs);
    conn.close(goaway::OK, CLOSE_DRAIN).await;
}

fn port_of(stream: &Stream) -> Option<u16> {
    stream.headers.get("port")?.parse::<u16>().ok().filter(|&p| p > 0)
}

/// Checks a port-forward stream's headers as the kubelet does (a port in
/// 1..=65535, a stream type of `error` or `data`), resetting it if they are
/// wrong, and replies to it otherwise.
fn accept_port_forward_stream(offer: Incoming) -> Option<(String, u16, Stream)> {
    let port = offer.headers.get("port").and_then(|p| p.parse::<u16>().ok()).filter(|&p| p > 0);
    let stream_type = offer.headers.get("streamtype").unwrap_or("");
    let Some(port) = port else {
        tracing::warn!(port = offer.headers.get("port"), "port-forward stream without a valid port");
        offer.reject(rst::CANCEL);
        return None;
    };
    if stream_type != "error" && stream_type != "data" {
        tracing::warn!(stream_type, "port-forward stream of unknown type");
        offer.reject(rst::CANCEL);
        return None;
    }
    let request_id = match offer.headers.get("requestid").filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        // Clients older than request ids send a pair as consecutive
        // streams, error first.
        None if stream_type == "error" => offer.id.to_string(),
        None => offer.id.saturating_sub(2).to_string(),
    };
    Some((request_id, port, offer.accept()))
}

/// Connects one pair to `port` in the pod and copies both ways until both
/// directions are done or the client resets the data stream; a connection
/// failure is reported on the error stream as the kubelet words it.
async fn forward_port(pod: Arc<str>, port: u16, backend: Arc<dyn Backend>, error: Stream, data: Stream) {
    // client-go half-closes the error stream at once and never writes on it.
    let (_, mut error) = error.split();
    let tcp = match backend.port_forward(&pod, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod {pod}, uid : {e}");
            tracing::warn!("{message}");
            let _ = error.write_all(message.as_bytes()).await;
            return;
        }
    };
    let (mut from_client, mut to_client) = data.split();
    let (from_pod, mut to_pod) = tcp.into_split();
    let upstream = async {
        let copied = tokio::io::copy(&mut from_client, &mut to_pod).await;
        // The client's FIN becomes the pod's: half-close, keep reading.
        let _ = to_pod.shutdown().await;
        copied
    };
    let downstream = async {
        let mut from_pod = tokio::io::BufReader::with_capacity(32 * 1024, from_pod);
        let copied = tokio::io::copy_buf(&mut from_pod, &mut to_client).await;
        let _ = to_client.shutdown().await;
        copied
    };
    tokio::pin!(upstream, downstream);
    let (mut up, mut down) = (false, false);
    while !(up && down) {
        tokio::select! {
            copied = &mut upstream, if !up => {
                up = true;
                // A reset data stream (client-go resets it once the pod's
                // side is done) or a dead pod socket ends both directions.
                if let Err(e) = copied {
                    tracing::debug!(port, "port-forward from the client ended: {e}");
                    break;
                }
            }
            copied = &mut downstream, if !down => {
                down = true;
                if let Err(e) = copied {
                    tracing::debug!(port, "port-forward to the client ended: {e}");
                    break;
                }
            }
        }
    }
}
