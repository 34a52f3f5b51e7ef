//! The HTTP front of the streaming server: hands out `/exec`, `/attach`
//! and `/portforward` URLs behind single-use tokens, and upgrades the
//! connections that come back to WebSocket or SPDY/3.1, as the kubelet's
//! `k8s.io/kubelet/pkg/cri/streaming` server does.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::token::{self, TokenCache, TokenError};
use crate::websocket::{self, Activity, Codec, WebSocketIo};
use crate::{AttachRequest, Backend, ExecRequest, PortForwardRequest, RemoteCommandProtocol, Session};

/// What the streaming server listens on and how long it waits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port 0 picks a free port; [`Server::local_addr`] tells which.
    pub address: SocketAddr,
    /// How long a URL stays usable (the kubelet's: one minute).
    pub token_ttl: Duration,
    /// URLs handed out and not yet used, at most (the kubelet's
    /// `maxInFlight`); past it the URL functions fail with
    /// [`Error::Token`].
    pub max_pending: usize,
    /// Connections served at once, sessions included; further clients
    /// wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take from connecting to a completed upgrade.
    pub handshake_timeout: Duration,
    /// How long a WebSocket session may move nothing either way before it
    /// is closed (the kubelet's `StreamIdleTimeout`); zero for never.
    pub stream_idle_timeout: Duration,
}

impl Config {
    pub fn new(address: SocketAddr) -> Self {
        Config {
            address,
            token_ttl: token::DEFAULT_TTL,
            max_pending: token::DEFAULT_CAPACITY,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(4 * 60 * 60),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Why a URL was not handed out. [`Error::Token`] is the kubelet's
/// `ResourceExhausted` (or an internal error, if the OS has no
/// randomness); the others are `InvalidArgument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("missing required container_id")]
    MissingContainerId,
    #[error("missing required pod_sandbox_id")]
    MissingPodSandboxId,
    #[error("cmd must not be empty")]
    EmptyCommand,
    #[error("one of stdin, stdout, or stderr must be set")]
    NoStreams,
    #[error("tty and stderr cannot both be true")]
    TtyWithStderr,
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl Error {
    /// Whether the request itself was wrong (gRPC `InvalidArgument`).
    pub fn is_invalid_argument(&self) -> bool {
        !matches!(self, Error::Token(_))
    }
}

/// What a token stands for.
enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

/// The exec/attach protocols over SPDY, newest first: the kubelet's
/// `SupportedStreamingProtocols` (v5 exists only over WebSocket).
const SPDY_REMOTE_COMMAND: [RemoteCommandProtocol; 4] =
    [RemoteCommandProtocol::V4, RemoteCommandProtocol::V3, RemoteCommandProtocol::V2, RemoteCommandProtocol::V1];
const SPDY_PORT_FORWARD: &str = "portforward.k8s.io";
/// client-go's `WebsocketsSPDYTunnelingPrefix` plus the port-forward
/// protocol: SPDY frames carried in binary WebSocket messages.
const TUNNELED_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
const STREAM_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
const ACCEPTED_STREAM_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";

/// The exec/attach WebSocket subprotocols, newest first.
const WS_REMOTE_COMMAND: [(&str, RemoteCommandProtocol, Codec); 7] = [
    ("v5.channel.k8s.io", RemoteCommandProtocol::V5, Codec::Binary),
    ("v4.channel.k8s.io", RemoteCommandProtocol::V4, Codec::Binary),
    ("v4.base64.channel.k8s.io", RemoteCommandProtocol::V4, Codec::Base64),
    ("v3.channel.k8s.io", RemoteCommandProtocol::V3, Codec::Binary),
    ("v2.channel.k8s.io", RemoteCommandProtocol::V2, Codec::Binary),
    ("channel.k8s.io", RemoteCommandProtocol::V1, Codec::Binary),
    ("base64.channel.k8s.io", RemoteCommandProtocol::V1, Codec::Base64),
];

/// The port-forward WebSocket subprotocols, newest first.
#[derive(Clone, Copy)]
enum WsPortForward {
    Tunnel,
    Channels(Codec),
}
const WS_PORT_FORWARD: [(&str, WsPortForward); 3] = [
    (TUNNELED_PORT_FORWARD, WsPortForward::Tunnel),
    ("v4.channel.k8s.io", WsPortForward::Channels(Codec::Binary)),
    ("v4.base64.channel.k8s.io", WsPortForward::Channels(Codec::Base64)),
];

/// Frames and messages larger than any client sends: SPDY frames,
/// stdin chunks and resize objects are all far smaller.
const MAX_WS_MESSAGE: usize = 4 << 20;
/// Request heads are a line and a few headers.
const MAX_HEAD: usize = 16 * 1024;

struct Shared {
    config: Config,
    local_addr: SocketAddr,
    tokens: TokenCache<Pending>,
    backend: Arc<dyn Backend>,
    connections: Arc<Semaphore>,
}

impl Shared {
    fn url(&self, kind: &str, pending: Pending) -> Result<String, Error> {
        let token = self.tokens.insert(pending)?;
        Ok(format!("{}/{kind}/{token}", base_url(self.local_addr)))
    }

    fn exec_url(&self, request: ExecRequest) -> Result<String, Error> {
        if request.container_id.is_empty() {
            return Err(Error::MissingContainerId);
        }
        if request.cmd.is_empty() {
            return Err(Error::EmptyCommand);
        }
        check_streams(request.tty, request.stdin, request.stdout, request.stderr)?;
        self.url("exec", Pending::Exec(request))
    }

    fn attach_url(&self, request: AttachRequest) -> Result<String, Error> {
        if request.container_id.is_empty() {
            return Err(Error::MissingContainerId);
        }
        check_streams(request.tty, request.stdin, request.stdout, request.stderr)?;
        self.url("attach", Pending::Attach(request))
    }

    fn port_forward_url(&self, request: PortForwardRequest) -> Result<String, Error> {
        if request.pod_sandbox_id.is_empty() {
            return Err(Error::MissingPodSandboxId);
        }
        self.url("portforward", Pending::PortForward(request))
    }

    fn open_connections(&self) -> usize {
        self.config.max_connections - self.connections.available_permits()
    }
}

fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Error> {
    // A terminal has one output stream; there is nothing to demultiplex
    // stderr from.
    if tty && stderr {
        return Err(Error::TtyWithStderr);
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::NoStreams);
    }
    Ok(())
}

/// `http://host:port`; `SocketAddr` already brackets IPv6 hosts.
fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A bound streaming server, not yet serving; [`Server::spawn`] runs it
/// and gives the handle that hands out URLs.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl Server {
    pub async fn bind(config: Config, backend: Arc<dyn Backend>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.address).await?;
        let local_addr = listener.local_addr()?;
        let config = Config { max_connections: config.max_connections.max(1), ..config };
        let shared = Shared {
            tokens: TokenCache::new(config.token_ttl, config.max_pending),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
            local_addr,
            backend,
        };
        Ok(Server { shared: Arc::new(shared), listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Serves on the current Tokio runtime until the handle shuts it down
    /// or is dropped.
    pub fn spawn(self) -> ServerHandle {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ctx = Ctx { shared: self.shared.clone(), cancel: cancel.clone(), tracker: tracker.clone() };
        tracker.spawn(accept_loop(self.listener, ctx));
        ServerHandle { shared: self.shared, cancel, tracker }
    }
}

/// A running server: hands out URLs and stops the server when shut down
/// or dropped.
pub struct ServerHandle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The URL for a CRI `ExecResponse`.
    pub fn exec_url(&self, request: ExecRequest) -> Result<String, Error> {
        self.shared.exec_url(request)
    }

    /// The URL for a CRI `AttachResponse`.
    pub fn attach_url(&self, request: AttachRequest) -> Result<String, Error> {
        self.shared.attach_url(request)
    }

    /// The URL for a CRI `PortForwardResponse`.
    pub fn port_forward_url(&self, request: PortForwardRequest) -> Result<String, Error> {
        self.shared.port_forward_url(request)
    }

    /// Connections open now, upgraded sessions included.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections()
    }

    /// Stops listening, drops every connection and session (a backend's
    /// exec or attach future is dropped mid-way), and waits for their
    /// tasks to end.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Ctx {
    /// Runs `future` as a server task that shutdown ends.
    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = future => {}
            }
        });
    }
}

async fn accept_loop(listener: TcpListener, ctx: Ctx) {
    loop {
        let accepted = tokio::select! {
            () = ctx.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: pause rather than spin.
                tracing::warn!("streaming server accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // At the limit, this connection waits here and later ones in the
        // listen backlog.
        let permit = tokio::select! {
            () = ctx.cancel.cancelled() => return,
            permit = ctx.shared.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        ctx.spawn(serve_connection(ctx.clone(), stream, permit));
    }
}

async fn serve_connection(ctx: Ctx, stream: TcpStream, permit: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    let permit = Arc::new(permit);
    let handshake_timeout = ctx.shared.config.handshake_timeout;
    let service_ctx = ctx.clone();
    let service = service_fn(move |request| {
        let ctx = service_ctx.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(route(ctx, request, permit).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    // Bounds the connection's whole life before an upgrade, kept-alive
    // requests included: each URL is good for one request anyway. (Turning
    // keep-alive off would add `close` to the 101's `Connection: Upgrade`,
    // which WebSocket clients refuse.)
    match tokio::time::timeout(handshake_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("streaming connection: {e}"),
        Err(_) => tracing::debug!("streaming connection: no request within {handshake_timeout:?}"),
    }
}

type Body = Full<Bytes>;

fn plain(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn not_found() -> Response<Body> {
    // Go's `http.NotFound`, which the kubelet answers any bad token with.
    plain(StatusCode::NOT_FOUND, "404 page not found")
}

async fn route(ctx: Ctx, request: Request<Incoming>, permit: Arc<OwnedSemaphorePermit>) -> Response<Body> {
    let path = request.uri().path();
    let Some((kind, token)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return not_found();
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/') {
        return not_found();
    }
    if request.method() != Method::GET && request.method() != Method::POST {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        return response;
    }
    // Consumed even when it turns out to be for another endpoint, as with
    // the kubelet: a token is good for one try.
    let pending = ctx.shared.tokens.consume(token);
    match (kind, pending) {
        ("exec", Some(Pending::Exec(exec))) => remote_command(ctx, request, permit, Session::Exec(exec)),
        ("attach", Some(Pending::Attach(attach))) => remote_command(ctx, request, permit, Session::Attach(attach)),
        ("portforward", Some(Pending::PortForward(pf))) => port_forward(ctx, request, permit, pf),
        _ => not_found(),
    }
}

/// Every value of every `name` header, split at commas.
fn header_list<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

fn connection_upgrade(headers: &HeaderMap) -> bool {
    header_list(headers, header::CONNECTION.as_str()).iter().any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn upgrade_is(headers: &HeaderMap, protocol: &str) -> bool {
    connection_upgrade(headers)
        && header_list(headers, header::UPGRADE.as_str()).iter().any(|t| t.eq_ignore_ascii_case(protocol))
}

/// Go's `%v` of a string slice.
fn go_list(items: &[&str]) -> String {
    format!("[{}]", items.join(" "))
}

fn remote_command(
    ctx: Ctx,
    mut request: Request<Incoming>,
    permit: Arc<OwnedSemaphorePermit>,
    session: Session,
) -> Response<Body> {
    let headers = request.headers();
    if upgrade_is(headers, "websocket") {
        let offered = header_list(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
        let chosen = if offered.is_empty() {
            // No subprotocol is the original `channel.k8s.io`.
            None
        } else {
            match WS_REMOTE_COMMAND.iter().find(|(name, ..)| offered.contains(name)) {
                Some(&entry) => Some(entry),
                None => return ws_no_common_protocol(&offered, WS_REMOTE_COMMAND.map(|(name, ..)| name).as_slice()),
            }
        };
        let (name, protocol, codec) = chosen.unwrap_or(("", RemoteCommandProtocol::V1, Codec::Binary));
        let idle = ctx.shared.config.stream_idle_timeout;
        let backend = ctx.shared.backend.clone();
        return websocket_upgrade(&ctx, &mut request, permit, name, move |ws| {
            websocket::serve_remote_command(ws, codec, protocol, session, backend, idle)
        });
    }

    let supported = SPDY_REMOTE_COMMAND.map(RemoteCommandProtocol::name);
    let chosen = match spdy_handshake(headers, &supported) {
        Ok(chosen) => chosen,
        Err(response) => return *response,
    };
    let Some(protocol) = RemoteCommandProtocol::from_name(chosen) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "negotiated an unknown protocol");
    };
    let backend = ctx.shared.backend.clone();
    spdy_upgrade(&ctx, &mut request, permit, chosen, move |io| {
        crate::spdy::serve_remote_command(io, protocol, session, backend)
    })
}

fn port_forward(
    ctx: Ctx,
    mut request: Request<Incoming>,
    permit: Arc<OwnedSemaphorePermit>,
    pf: PortForwardRequest,
) -> Response<Body> {
    let headers = request.headers();
    let backend = ctx.shared.backend.clone();
    let pod = pf.pod_sandbox_id;
    if upgrade_is(headers, "websocket") {
        let offered = header_list(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
        let (name, mode) = if offered.is_empty() {
            // No subprotocol is the kubelet's binary channel framing.
            ("", WsPortForward::Channels(Codec::Binary))
        } else {
            match WS_PORT_FORWARD.iter().find(|(name, _)| offered.contains(name)) {
                Some(&entry) => entry,
                None => return ws_no_common_protocol(&offered, WS_PORT_FORWARD.map(|(name, _)| name).as_slice()),
            }
        };
        return match mode {
            WsPortForward::Tunnel => websocket_upgrade(&ctx, &mut request, permit, name, move |ws| {
                crate::spdy::serve_port_forward(WebSocketIo::new(ws), pod, backend)
            }),
            WsPortForward::Channels(codec) => {
                let ports = match query_ports(request.uri().query(), &pf.ports) {
                    Ok(ports) => ports,
                    Err(message) => return plain(StatusCode::BAD_REQUEST, message),
                };
                let idle = ctx.shared.config.stream_idle_timeout;
                websocket_upgrade(&ctx, &mut request, permit, name, move |ws| {
                    websocket::serve_port_forward(ws, codec, pod, ports, backend, idle)
                })
            }
        };
    }

    let chosen = match spdy_handshake(headers, &[SPDY_PORT_FORWARD]) {
        Ok(chosen) => chosen,
        Err(response) => return *response,
    };
    spdy_upgrade(&ctx, &mut request, permit, chosen, move |io| crate::spdy::serve_port_forward(io, pod, backend))
}

/// The ports of a WebSocket port-forward: the `port` query parameters
/// (each may list several, comma-separated), else the CRI request's.
fn query_ports(query: Option<&str>, requested: &[u16]) -> Result<Vec<u16>, String> {
    let values: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(key, _)| *key == "port")
        .map(|(_, value)| percent_decode(value))
        .collect();
    let ports = if values.is_empty() {
        requested.to_vec()
    } else {
        let mut ports = Vec::new();
        for value in &values {
            if value.is_empty() {
                return Err(r#"query parameter "port" cannot be empty"#.to_string());
            }
            for p in value.split(',') {
                let port: u16 = p.parse().map_err(|e| format!("unable to parse {value:?} as a port: {e}"))?;
                if port == 0 {
                    return Err(format!("port {value:?} must be > 0"));
                }
                ports.push(port);
            }
        }
        ports
    };
    if ports.is_empty() {
        return Err(r#"query parameter "port" is required"#.to_string());
    }
    if ports.len() > websocket::MAX_PORTS {
        return Err(format!("at most {} ports can be forwarded on one connection", websocket::MAX_PORTS));
    }
    Ok(ports)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let hex = |i: usize| bytes.get(i).and_then(|&b| char::from(b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `X-Stream-Protocol-Version` negotiation as `httpstream.Handshake` does
/// it (but preferring the newest protocol the server supports), then the
/// SPDY upgrade headers as the SPDY response upgrader checks them.
fn spdy_handshake(headers: &HeaderMap, supported: &[&'static str]) -> Result<&'static str, Box<Response<Body>>> {
    let offered = header_list(headers, STREAM_PROTOCOL_VERSION);
    if offered.is_empty() {
        if !connection_upgrade(headers) {
            return Err(Box::new(plain(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing upgrade headers in request",
            )));
        }
        let message = format!("unable to upgrade: {STREAM_PROTOCOL_VERSION} is required");
        return Err(Box::new(plain(StatusCode::BAD_REQUEST, message)));
    }
    let Some(&chosen) = supported.iter().find(|p| offered.contains(p)) else {
        let message = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {}, server accepts {}",
            go_list(&offered),
            go_list(supported)
        );
        let mut response = plain(StatusCode::FORBIDDEN, message);
        for protocol in supported {
            response.headers_mut().append(ACCEPTED_STREAM_PROTOCOL_VERSIONS, HeaderValue::from_static(protocol));
        }
        return Err(Box::new(response));
    };
    if !upgrade_is(headers, "SPDY/3.1") {
        return Err(Box::new(plain(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request")));
    }
    Ok(chosen)
}

fn spdy_upgrade<F, Fut>(
    ctx: &Ctx,
    request: &mut Request<Incoming>,
    permit: Arc<OwnedSemaphorePermit>,
    protocol: &'static str,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(Watched<TokioIo<Upgraded>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(request);
    // A SPDY session that moves no byte either way for the idle timeout is
    // dropped, as a WebSocket one is (the kubelet's StreamIdleTimeout).
    let idle = ctx.shared.config.stream_idle_timeout;
    let serve = move |io: TokioIo<Upgraded>| {
        let activity = Activity::new();
        let session = serve(Watched { inner: io, activity: activity.clone() });
        async move {
            tokio::select! {
                () = session => {}
                () = activity.idle_for(idle) => tracing::debug!("closing an idle SPDY streaming connection"),
            }
        }
    };
    spawn_upgraded(ctx, on_upgrade, permit, serve);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    headers.insert(STREAM_PROTOCOL_VERSION, HeaderValue::from_static(protocol));
    response
}

fn ws_no_common_protocol(offered: &[&str], supported: &[&str]) -> Response<Body> {
    // golang.org/x/net/websocket, which the kubelet uses, refuses with 403.
    plain(
        StatusCode::FORBIDDEN,
        format!("requested protocol(s) are not supported: {}; supports {}", go_list(offered), go_list(supported)),
    )
}

/// The RFC 6455 server handshake; `protocol` is the chosen subprotocol,
/// empty for none.
fn websocket_upgrade<F, Fut>(
    ctx: &Ctx,
    request: &mut Request<Incoming>,
    permit: Arc<OwnedSemaphorePermit>,
    protocol: &'static str,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(WebSocketStream<TokioIo<Upgraded>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if request.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade must be a GET");
    }
    let headers = request.headers();
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        let mut response = plain(StatusCode::UPGRADE_REQUIRED, "unsupported WebSocket version");
        response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().trim_ascii());
    let key_ok = key.is_some_and(|k| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(k).is_ok_and(|raw| raw.len() == 16)
    });
    let Some(key) = key.filter(|_| key_ok) else {
        return plain(StatusCode::BAD_REQUEST, "missing or malformed Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key);

    let on_upgrade = hyper::upgrade::on(&mut *request);
    let config = WebSocketConfig::default().max_message_size(Some(MAX_WS_MESSAGE)).max_frame_size(Some(MAX_WS_MESSAGE));
    spawn_upgraded(ctx, on_upgrade, permit, move |io| async move {
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        serve(ws).await;
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if !protocol.is_empty() {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    response
}

/// Runs `serve` on the connection once hyper has sent the 101 and handed
/// it over. The session keeps the connection's slot until it ends.
fn spawn_upgraded<F, Fut>(ctx: &Ctx, on_upgrade: OnUpgrade, permit: Arc<OwnedSemaphorePermit>, serve: F)
where
    F: FnOnce(TokioIo<Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handshake_timeout = ctx.shared.config.handshake_timeout;
    ctx.spawn(async move {
        let _permit = permit;
        match tokio::time::timeout(handshake_timeout, on_upgrade).await {
            Ok(Ok(upgraded)) => serve(TokioIo::new(upgraded)).await,
            Ok(Err(e)) => tracing::debug!("streaming upgrade: {e}"),
            Err(_) => tracing::debug!("streaming upgrade timed out"),
        }
    });
}

/// An upgraded connection whose every byte read or written counts as
/// activity for the idle timeout.
pub(crate) struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_bracket_ipv6_hosts() {
        assert_eq!(base_url("127.0.0.1:10010".parse().unwrap()), "http://127.0.0.1:10010");
        assert_eq!(base_url("[::1]:10010".parse().unwrap()), "http://[::1]:10010");
    }

    #[test]
    fn ports_come_from_the_query_or_the_request() {
        assert_eq!(query_ports(Some("port=80&port=443,8080"), &[1]), Ok(vec![80, 443, 8080]));
        assert_eq!(query_ports(Some("port=80%2C81"), &[]), Ok(vec![80, 81]));
        assert_eq!(query_ports(None, &[22]), Ok(vec![22]));
        assert_eq!(query_ports(Some("other=1"), &[]), Err(r#"query parameter "port" is required"#.into()));
        assert!(query_ports(Some("port=0"), &[]).unwrap_err().contains("must be > 0"));
        assert!(query_ports(Some("port=http"), &[]).unwrap_err().contains("unable to parse"));
        assert!(query_ports(Some("port="), &[]).unwrap_err().contains("cannot be empty"));
    }

    #[test]
    fn go_formats_lists_with_spaces() {
        assert_eq!(go_list(&["a", "b"]), "[a b]");
    }
}
