//! The streaming server over real TCP on 127.0.0.1, driven the way the
//! kubelet and client-go drive it, in front of a fake backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tote_stream::{
    AttachRequest, Backend, BoxFuture, Config, ExecRequest, Outcome, PortForwardRequest, Server, ServerHandle, Streams,
    TerminalSize,
};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous: only reached when the code under test is wrong.
const LIMIT: Duration = Duration::from_secs(10);

/// How a `hold` session ended: its backend call dropped by the transport
/// (what a client that leaves must cause), or returning by itself.
#[derive(Debug, Default, Clone, PartialEq)]
struct Held {
    dropped: bool,
}

/// Reports a `hold` session that is dropped before it returns.
struct ReportDrop(Option<mpsc::UnboundedSender<Held>>);

impl Drop for ReportDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Held { dropped: true });
        }
    }
}

#[derive(Default)]
struct Fake {
    held: Mutex<Option<mpsc::UnboundedSender<Held>>>,
}

impl Fake {
    /// Reports of `hold` sessions, sent when their backend call ends.
    fn watch_holds(&self) -> mpsc::UnboundedReceiver<Held> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.held.lock().unwrap() = Some(tx);
        rx
    }
}

async fn write(streams: &mut Streams, text: &str) {
    let stdout = streams.stdout.as_mut().expect("stdout");
    stdout.write_all(text.as_bytes()).await.unwrap();
}

impl Backend for Fake {
    fn exec(&self, request: ExecRequest, mut streams: Streams) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let cmd: Vec<&str> = request.cmd.iter().map(String::as_str).collect();
            match cmd.as_slice() {
                ["echo", words @ ..] => {
                    write(&mut streams, &format!("{}\n", words.join(" "))).await;
                    Outcome::Exited(0)
                }
                ["sh", "-c", script] => {
                    let code = script.strip_prefix("exit ").and_then(|c| c.parse().ok()).unwrap_or(127);
                    Outcome::Exited(code)
                }
                ["both"] => {
                    write(&mut streams, "out\n").await;
                    streams.stderr.as_mut().expect("stderr").write_all(b"err\n").await.unwrap();
                    Outcome::Exited(0)
                }
                ["cat"] => {
                    let mut stdin = streams.stdin.take().expect("stdin");
                    let stdout = streams.stdout.as_mut().expect("stdout");
                    match tokio::io::copy(&mut stdin, stdout).await {
                        Ok(_) => Outcome::Exited(0),
                        Err(e) => Outcome::Failed(e.to_string()),
                    }
                }
                ["sizes"] => {
                    // Resizes sent before stdin's close are queued by then:
                    // the server delivers one channel's messages in order.
                    let mut stdin = streams.stdin.take().expect("stdin");
                    let mut ignored = Vec::new();
                    stdin.read_to_end(&mut ignored).await.unwrap();
                    let mut resize = streams.resize.take().expect("a tty session has resize events");
                    let mut report = String::new();
                    while let Ok(TerminalSize { width, height }) = resize.try_recv() {
                        report.push_str(&format!("{width}x{height}\n"));
                    }
                    write(&mut streams, &report).await;
                    Outcome::Exited(0)
                }
                ["hold"] => {
                    let mut report = ReportDrop(self.held.lock().unwrap().clone());
                    let mut stdout = streams.stdout.take().expect("stdout");
                    while stdout.write_all(b"tick\n").await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if let Some(tx) = report.0.take() {
                        let _ = tx.send(Held { dropped: false });
                    }
                    Outcome::Exited(0)
                }
                ["sleep"] => {
                    std::future::pending::<()>().await;
                    Outcome::Exited(0)
                }
                _ => Outcome::Failed(format!("no such command {:?}", request.cmd)),
            }
        })
    }

    fn attach(&self, request: AttachRequest, mut streams: Streams) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            assert_eq!(request.container_id, "ctr-1");
            for i in 1..=3 {
                write(&mut streams, &format!("line {i}\n")).await;
            }
            if let Some(stderr) = streams.stderr.as_mut() {
                stderr.write_all(b"attached\n").await.unwrap();
            }
            Outcome::Exited(0)
        })
    }

    fn port_forward(&self, pod_sandbox_id: &str, port: u16) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        assert_eq!(pod_sandbox_id, "pod-1");
        Box::pin(TcpStream::connect(("127.0.0.1", port)))
    }
}

async fn start_with(config: Config) -> (ServerHandle, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let server = Server::bind(config, fake.clone()).await.unwrap();
    (server.spawn(), fake)
}

async fn start() -> (ServerHandle, Arc<Fake>) {
    start_with(Config::default()).await
}

fn exec(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: "ctr-1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
    }
}

fn with_stdin(request: ExecRequest) -> ExecRequest {
    ExecRequest { stdin: true, ..request }
}

/// Upgrades to WebSocket offering `protocols` (newest first, as client-go
/// does); returns the subprotocol the server chose.
async fn connect(url: &str, protocols: &[&str]) -> Result<(Client, Option<String>), WsError> {
    let mut request = url.replacen("http://", "ws://", 1).into_client_request()?;
    if !protocols.is_empty() {
        request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
    }
    let (ws, response) = tokio::time::timeout(LIMIT, connect_async(request)).await.expect("handshake timed out")?;
    let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

fn http_status(result: Result<(Client, Option<String>), WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP error, got {e}"),
        Ok((_, protocol)) => panic!("expected an HTTP error, got an upgrade to {protocol:?}"),
    }
}

/// Every binary message until the server closes, as (channel, payload).
/// Reading past the close frame sends tungstenite's reply, as a real
/// client's library does at once.
async fn collect(ws: &mut Client) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    loop {
        let next = tokio::time::timeout(LIMIT, ws.next()).await.expect("the server never closed");
        match next {
            None => return messages,
            Some(Ok(Message::Binary(data))) => messages.push((data[0], data[1..].to_vec())),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("read: {e}"),
        }
    }
}

fn on(messages: &[(u8, Vec<u8>)], channel: u8) -> Vec<u8> {
    messages.iter().filter(|(c, _)| *c == channel).flat_map(|(_, d)| d.clone()).collect()
}

fn status(messages: &[(u8, Vec<u8>)]) -> serde_json::Value {
    serde_json::from_slice(&on(messages, 3)).expect("a JSON status on the error channel")
}

async fn send(ws: &mut Client, channel: u8, data: &[u8]) {
    let mut frame = vec![channel];
    frame.extend_from_slice(data);
    ws.send(Message::binary(frame)).await.unwrap();
}

#[tokio::test]
async fn exec_over_v5_runs_the_command_and_reports_success() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let prefix = format!("http://{}/exec/", server.local_addr());
    assert!(url.starts_with(&prefix), "{url}");

    let (mut ws, protocol) = connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("v5.channel.k8s.io"));
    let messages = collect(&mut ws).await;
    // The kubelet's "streams are ready" signal comes first.
    assert_eq!(messages[0], (1, vec![]));
    assert_eq!(on(&messages, 1), b"hi\n");
    assert_eq!(status(&messages), serde_json::json!({"metadata": {}, "status": "Success"}));
}

#[tokio::test]
async fn the_newest_common_protocol_wins_whatever_the_client_order() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let (_ws, protocol) = connect(&url, &["channel.k8s.io", "v4.channel.k8s.io", "v9.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("v4.channel.k8s.io"));
}

#[tokio::test]
async fn exec_over_v4_reports_a_non_zero_exit_as_a_status() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["sh", "-c", "exit 3"])).unwrap();
    let (mut ws, protocol) = connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("v4.channel.k8s.io"));
    let status = status(&collect(&mut ws).await);
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
}

#[tokio::test]
async fn a_backend_failure_is_an_internal_error() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["no-such-command"])).unwrap();
    let (mut ws, _) = connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let status = status(&collect(&mut ws).await);
    assert_eq!(status["reason"], "InternalError");
    assert!(status["message"].as_str().unwrap().contains("no-such-command"), "{status}");
}

#[tokio::test]
async fn exec_over_channel_k8s_io_reports_only_failures_as_text() {
    let (server, _) = start().await;
    let failing = server.exec_url(exec(&["sh", "-c", "exit 3"])).unwrap();
    let (mut ws, _) = connect(&failing, &["channel.k8s.io"]).await.unwrap();
    assert_eq!(on(&collect(&mut ws).await, 3), b"command terminated with non-zero exit code: exit status 3");

    // No subprotocol at all is channel.k8s.io too, and success is silent.
    let succeeding = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let (mut ws, protocol) = connect(&succeeding, &[]).await.unwrap();
    assert_eq!(protocol, None);
    let messages = collect(&mut ws).await;
    assert_eq!(on(&messages, 1), b"hi\n");
    assert!(!messages.iter().any(|(c, _)| *c == 3), "{messages:?}");
}

#[tokio::test]
async fn base64_protocol_uses_text_messages() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let (mut ws, protocol) = connect(&url, &["base64.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("base64.channel.k8s.io"));
    let mut stdout = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                let (channel, data) = text.split_at(1);
                assert_eq!(channel, "1", "{text}");
                stdout.extend(base64::engine::general_purpose::STANDARD.decode(data).unwrap());
            }
            Some(Ok(Message::Binary(data))) => panic!("a binary message in base64 mode: {data:?}"),
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(stdout, b"hi\n");
}

#[tokio::test]
async fn stdout_and_stderr_arrive_on_their_channels() {
    let (server, _) = start().await;
    let url = server.exec_url(ExecRequest { stderr: true, ..exec(&["both"]) }).unwrap();
    let (mut ws, _) = connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let messages = collect(&mut ws).await;
    assert_eq!(on(&messages, 1), b"out\n");
    assert_eq!(on(&messages, 2), b"err\n");
}

#[tokio::test]
async fn v5_close_signal_ends_stdin_and_pings_are_answered() {
    let (server, _) = start().await;
    let url = server.exec_url(with_stdin(exec(&["cat"]))).unwrap();
    let (mut ws, protocol) = connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("v5.channel.k8s.io"));

    ws.send(Message::Ping(b"still there?".to_vec().into())).await.unwrap();
    let mut stdout = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"still there?");
                break;
            }
            Message::Binary(data) if data[0] == 1 => stdout.extend_from_slice(&data[1..]),
            other => panic!("unexpected {other:?}"),
        }
    }

    send(&mut ws, 0, b"hello ").await;
    send(&mut ws, 0, b"world\n").await;
    // client-go's v5 half-close of stdin.
    send(&mut ws, 255, &[0]).await;
    let messages = collect(&mut ws).await;
    stdout.extend(on(&messages, 1));
    assert_eq!(stdout, b"hello world\n");
    // cat only returns, with success, after its stdin reached EOF.
    assert_eq!(status(&messages)["status"], "Success");
}

#[tokio::test]
async fn resize_events_reach_a_tty_session() {
    let (server, _) = start().await;
    let request = ExecRequest { tty: true, ..with_stdin(exec(&["sizes"])) };
    let url = server.exec_url(request).unwrap();
    let (mut ws, _) = connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    send(&mut ws, 4, br#"{"Width":80,"Height":24}"#).await;
    // One object split over two messages, as a stream decoder allows.
    send(&mut ws, 4, br#"{"Width":132,"#).await;
    send(&mut ws, 4, br#""Height":43}"#).await;
    send(&mut ws, 255, &[0]).await;
    let messages = collect(&mut ws).await;
    assert_eq!(String::from_utf8(on(&messages, 1)).unwrap(), "80x24\n132x43\n");
}

#[tokio::test]
async fn attach_streams_the_containers_output() {
    let (server, _) = start().await;
    let request = AttachRequest { container_id: "ctr-1".into(), tty: false, stdin: false, stdout: true, stderr: true };
    let url = server.attach_url(request).unwrap();
    assert!(url.contains("/attach/"), "{url}");
    let (mut ws, _) = connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let messages = collect(&mut ws).await;
    assert_eq!(on(&messages, 1), b"line 1\nline 2\nline 3\n");
    assert_eq!(on(&messages, 2), b"attached\n");
    assert_eq!(status(&messages)["status"], "Success");
}

#[tokio::test]
async fn kubelet_style_port_forward_carries_each_port_on_its_channels() {
    let pod = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = pod.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut conn, _) = pod.accept().await.unwrap();
        let mut request = [0u8; 5];
        conn.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"ping\n");
        conn.write_all(b"PONG\n").await.unwrap();
        // Closing ends this port's forwarding, and with it the session.
    });
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };

    let (server, _) = start().await;
    let url = server.port_forward_url(PortForwardRequest { pod_sandbox_id: "pod-1".into(), ports: vec![] }).unwrap();
    let url = format!("{url}?port={open}&port={closed}");
    let (mut ws, protocol) = connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("v4.channel.k8s.io"));
    send(&mut ws, 0, b"ping\n").await;
    let messages = collect(&mut ws).await;

    let first = |channel: u8| messages.iter().find(|(c, _)| *c == channel).map(|(_, d)| d.clone());
    assert_eq!(first(0), Some(open.to_le_bytes().to_vec()));
    assert_eq!(first(1), Some(open.to_le_bytes().to_vec()));
    assert_eq!(first(2), Some(closed.to_le_bytes().to_vec()));
    assert_eq!(first(3), Some(closed.to_le_bytes().to_vec()));
    assert_eq!(&on(&messages, 0)[2..], b"PONG\n");
    assert_eq!(on(&messages, 1), open.to_le_bytes());
    let error = String::from_utf8(on(&messages, 3)[2..].to_vec()).unwrap();
    assert!(error.starts_with(&format!("error forwarding port {closed} to pod pod-1")), "{error}");
}

#[tokio::test]
async fn port_forward_over_websocket_needs_a_port() {
    let (server, _) = start().await;
    let url = server.port_forward_url(PortForwardRequest { pod_sandbox_id: "pod-1".into(), ports: vec![] }).unwrap();
    assert_eq!(http_status(connect(&url, &["v4.channel.k8s.io"]).await), 400);
}

#[tokio::test]
async fn port_forward_negotiates_the_spdy_tunnel_first() {
    let (server, _) = start().await;
    let url = server.port_forward_url(PortForwardRequest { pod_sandbox_id: "pod-1".into(), ports: vec![80] }).unwrap();
    let (_ws, protocol) = connect(&url, &["v4.channel.k8s.io", "SPDY/3.1+portforward.k8s.io"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("SPDY/3.1+portforward.k8s.io"));
}

#[tokio::test]
async fn a_token_is_good_for_one_connection() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let (mut ws, _) = connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(on(&collect(&mut ws).await, 1), b"hi\n");
    assert_eq!(http_status(connect(&url, &["v4.channel.k8s.io"]).await), 404);
}

#[tokio::test]
async fn an_expired_token_is_not_found() {
    // A zero TTL expires every token the moment it is issued.
    let (server, _) = start_with(Config { token_ttl: Duration::ZERO, ..Config::default() }).await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    assert_eq!(http_status(connect(&url, &["v4.channel.k8s.io"]).await), 404);
}

#[tokio::test]
async fn no_common_websocket_protocol_is_forbidden() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    assert_eq!(http_status(connect(&url, &["v9.channel.k8s.io"]).await), 403);
}

#[tokio::test]
async fn a_client_that_leaves_ends_the_session() {
    let (server, fake) = start().await;
    let mut holds = fake.watch_holds();
    let url = server.exec_url(with_stdin(exec(&["hold"]))).unwrap();
    let (mut ws, _) = connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    loop {
        match tokio::time::timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(data) if &data[..] == b"\x01tick\n" => break,
            _ => {}
        }
    }
    assert_eq!(server.open_connections(), 1);
    // Gone without a close frame, as a killed kubectl goes.
    drop(ws);

    let held = tokio::time::timeout(LIMIT, holds.recv()).await.expect("the backend call never ended").unwrap();
    assert_eq!(held, Held { dropped: true }, "the session must be dropped when its client leaves");
    // The session task held the connection's slot until it ended.
    tokio::time::timeout(LIMIT, async {
        while server.open_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the session task never ended");
}

#[tokio::test]
async fn shutdown_ends_sessions_and_stops_listening() {
    let (server, _) = start().await;
    let addr = server.local_addr();
    let url = server.exec_url(exec(&["sleep"])).unwrap();
    let (mut ws, _) = connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(tokio::time::timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap(), Message::binary(vec![1]));

    tokio::time::timeout(LIMIT, server.shutdown()).await.expect("shutdown hung on a session");
    // The session is gone: the client's stream ends without a status.
    loop {
        match tokio::time::timeout(LIMIT, ws.next()).await.expect("the session outlived shutdown") {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Binary(data))) => panic!("a message after shutdown: {data:?}"),
            Some(Ok(_)) => {}
        }
    }
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn urls_are_validated_as_the_kubelet_does() {
    let (server, _) = start_with(Config { max_pending: 1, ..Config::default() }).await;
    use tote_stream::Error;

    assert_eq!(server.exec_url(exec(&[])), Err(Error::EmptyCommand));
    assert_eq!(
        server.exec_url(ExecRequest { container_id: String::new(), ..exec(&["ls"]) }),
        Err(Error::MissingContainerId)
    );
    assert_eq!(server.exec_url(ExecRequest { stdout: false, ..exec(&["ls"]) }), Err(Error::NoStreams));
    let tty_stderr = ExecRequest { tty: true, stderr: true, ..exec(&["ls"]) };
    let err = server.exec_url(tty_stderr).unwrap_err();
    assert_eq!(err.to_string(), "tty and stderr cannot both be true");
    assert!(err.is_invalid_argument());
    let attach = AttachRequest { container_id: "ctr-1".into(), tty: true, stdin: true, stdout: true, stderr: true };
    assert_eq!(server.attach_url(attach), Err(Error::TtyWithStderr));
    let pf = PortForwardRequest { pod_sandbox_id: String::new(), ports: vec![80] };
    assert_eq!(server.port_forward_url(pf), Err(Error::MissingPodSandboxId));

    // Capacity 1: the next URL waits for this one to be used or expire.
    server.exec_url(exec(&["ls"])).unwrap();
    let full = server.exec_url(exec(&["ls"])).unwrap_err();
    assert_eq!(full, Error::Token(tote_stream::TokenError::Full));
    assert!(!full.is_invalid_argument());
}

/// Sends a raw HTTP request and returns the response's status, headers
/// (names lowercased) and, unless it is a 101, body.
async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(LIMIT, conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed before a full response head: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(received[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    let mut body = received[head_end + 4..].to_vec();
    if status != 101 {
        let length: usize = header(&headers, "content-length")[0].parse().unwrap();
        while body.len() < length {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(LIMIT, conn.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "connection closed mid-body");
            body.extend_from_slice(&buf[..n]);
        }
    }
    (status, headers, String::from_utf8(body).unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

fn path(url: &str) -> &str {
    &url[url.find("/exec/").or_else(|| url.find("/portforward/")).unwrap()..]
}

fn spdy_request(path: &str, versions: &[&str]) -> String {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
    for version in versions {
        request.push_str(&format!("X-Stream-Protocol-Version: {version}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    request
}

#[tokio::test]
async fn spdy_upgrade_negotiates_the_newest_remote_command_version() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    // client-go sends one header per version; commas work as well.
    let request = spdy_request(path(&url), &["channel.k8s.io, v2.channel.k8s.io", "v4.channel.k8s.io"]);
    let (status, headers, _) = raw(server.local_addr(), &request).await;
    assert_eq!(status, 101);
    assert_eq!(header(&headers, "connection"), ["Upgrade"]);
    assert_eq!(header(&headers, "upgrade"), ["SPDY/3.1"]);
    assert_eq!(header(&headers, "x-stream-protocol-version"), ["v4.channel.k8s.io"]);
}

#[tokio::test]
async fn spdy_port_forward_upgrade() {
    let (server, _) = start().await;
    let url = server.port_forward_url(PortForwardRequest { pod_sandbox_id: "pod-1".into(), ports: vec![80] }).unwrap();
    let (status, headers, _) = raw(server.local_addr(), &spdy_request(path(&url), &["portforward.k8s.io"])).await;
    assert_eq!(status, 101);
    assert_eq!(header(&headers, "x-stream-protocol-version"), ["portforward.k8s.io"]);
}

#[tokio::test]
async fn spdy_without_a_common_version_is_forbidden() {
    let (server, _) = start().await;
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    // v5 exists only over WebSocket.
    let request = spdy_request(path(&url), &["v5.channel.k8s.io"]);
    let (status, headers, body) = raw(server.local_addr(), &request).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "unable to upgrade: unable to negotiate protocol: client supports [v5.channel.k8s.io], server accepts \
         [v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io channel.k8s.io]\n"
    );
    assert_eq!(header(&headers, "x-accepted-stream-protocol-versions").len(), 4);
}

#[tokio::test]
async fn plain_requests_are_refused() {
    let (server, _) = start().await;
    let addr = server.local_addr();
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let request = format!("GET {} HTTP/1.1\r\nHost: localhost\r\n\r\n", path(&url));
    let (status, _, _) = raw(addr, &request).await;
    assert_eq!(status, 400);

    // The exec token was spent on that request, and an attach path never
    // takes an exec token.
    let url = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let wrong_kind = path(&url).replace("/exec/", "/attach/");
    let (status, _, body) = raw(addr, &format!("GET {wrong_kind} HTTP/1.1\r\nHost: localhost\r\n\r\n")).await;
    assert_eq!((status, body.as_str()), (404, "404 page not found\n"));
    let (status, _, _) = raw(addr, &format!("GET {} HTTP/1.1\r\nHost: localhost\r\n\r\n", path(&url))).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let config = Config { handshake_timeout: Duration::from_millis(200), ..Config::default() };
    let (server, _) = start_with(config).await;
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(LIMIT, conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a silent connection open");
    tokio::time::timeout(LIMIT, async {
        while server.open_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the connection's slot was never freed");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_slot() {
    let (server, _) = start_with(Config { max_connections: 1, ..Config::default() }).await;
    let first = server.exec_url(with_stdin(exec(&["cat"]))).unwrap();
    let (mut ws, _) = connect(&first, &["v5.channel.k8s.io"]).await.unwrap();

    let second = server.exec_url(exec(&["echo", "hi"])).unwrap();
    let mut waiting = Box::pin(connect(&second, &["v5.channel.k8s.io"]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(),
        "a second connection was served while the only slot was taken"
    );
    send(&mut ws, 255, &[0]).await;
    collect(&mut ws).await;
    let (mut ws, _) = waiting.await.unwrap();
    assert_eq!(on(&collect(&mut ws).await, 1), b"hi\n");
}

/// Reads from `conn` until the server closes it; false if it is still open
/// after `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 1024];
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    };
    tokio::time::timeout(within, drain).await.is_ok()
}

/// Upgrades to SPDY for a session of the never-ending `sleep` and returns
/// the connection, its 101 read.
async fn idle_spdy(server: &ServerHandle) -> TcpStream {
    let url = server.exec_url(exec(&["sleep"])).unwrap();
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(spdy_request(path(&url), &["v4.channel.k8s.io"]).as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tokio::time::timeout(LIMIT, conn.read(&mut byte)).await.unwrap().unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    conn
}

#[tokio::test]
async fn idle_sessions_are_closed_over_spdy_and_websocket() {
    let idle = Duration::from_millis(300);
    let (server, _) = start_with(Config { stream_idle_timeout: idle, ..Config::default() }).await;
    let mut conn = idle_spdy(&server).await;
    assert!(closed_within(&mut conn, LIMIT).await, "an idle SPDY connection stayed open");

    let url = server.exec_url(exec(&["sleep"])).unwrap();
    let (mut ws, _) = connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    let ended = tokio::time::timeout(LIMIT, async {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    });
    assert!(ended.await.is_ok(), "an idle WebSocket session stayed open");

    // Without the timeout the same SPDY connection stays up.
    let (patient, _) = start().await;
    let mut conn = idle_spdy(&patient).await;
    assert!(!closed_within(&mut conn, idle * 4).await, "a SPDY connection closed without being idle long enough");
}
