//! The CRI streaming server.
//!
//! A kubelet answers `kubectl exec/attach/port-forward` by asking the
//! runtime for a URL (the CRI `Exec`, `Attach` and `PortForward` RPCs) and
//! proxying the client's upgraded connection to it. This crate serves those
//! URLs: it hands out single-use, expiring tokens, negotiates WebSocket
//! (the `*.channel.k8s.io` subprotocols) or SPDY/3.1, and drives a
//! [`Backend`] that the engine implements. It does not know toted's engine,
//! so it builds and is tested on its own; toted links it into the CRI.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size the client asked for (columns and rows, as
/// `remotecommand.TerminalSize` sends them on the resize channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// A CRI `ExecRequest`, as the server stored it behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A CRI `AttachRequest`, as the server stored it behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A CRI `PortForwardRequest`, as the server stored it behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    /// The ports the kubelet named; a client may still ask for others (as
    /// with the kubelet's own server, the request's list is advisory).
    pub ports: Vec<u16>,
}

/// The client's side of a session, as the transport decoded it. A stream
/// the client did not ask for is `None`. With a tty, stderr is `None`
/// (merged into stdout by the terminal) and resizes arrive on `resize`.
pub struct Streams {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    pub stderr: Option<Writer>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// How an exec or attach session ended, for the error channel: the
/// process's exit code (0 is success; anything else is reported as
/// `NonZeroExitCode` with its code, as the kubelet does), or a failure to
/// run it at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// What the engine provides. Each call runs until the session ends; the
/// transport closes the client's streams afterwards. When the client goes
/// away first, the transport drops the call's future: the backend must then
/// end what it started (an exec's process), since nobody is left to see
/// its output or stop it.
pub trait Backend: Send + Sync + 'static {
    /// Runs `request.cmd` in the container with `streams` as its stdio.
    fn exec(&self, request: ExecRequest, streams: Streams) -> BoxFuture<'_, Outcome>;

    /// Attaches `streams` to the container's main process until it exits
    /// or the client leaves.
    fn attach(&self, request: AttachRequest, streams: Streams) -> BoxFuture<'_, Outcome>;

    /// A TCP connection to `port` on the pod's loopback, opened inside the
    /// pod's network namespace.
    fn port_forward(&self, pod_sandbox_id: &str, port: u16) -> BoxFuture<'_, std::io::Result<tokio::net::TcpStream>>;
}

pub mod server;
pub mod spdy;
pub mod token;
mod websocket;

pub use server::{Config, Error, Server, ServerHandle};
pub use token::TokenError;

/// An exec or attach session behind a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Session {
    pub fn tty(&self) -> bool {
        match self {
            Session::Exec(r) => r.tty,
            Session::Attach(r) => r.tty,
        }
    }
    pub fn stdin(&self) -> bool {
        match self {
            Session::Exec(r) => r.stdin,
            Session::Attach(r) => r.stdin,
        }
    }
    pub fn stdout(&self) -> bool {
        match self {
            Session::Exec(r) => r.stdout,
            Session::Attach(r) => r.stdout,
        }
    }
    pub fn stderr(&self) -> bool {
        match self {
            Session::Exec(r) => r.stderr,
            Session::Attach(r) => r.stderr,
        }
    }

    /// Runs the session on `backend`.
    pub async fn run(self, backend: &dyn Backend, streams: Streams) -> Outcome {
        match self {
            Session::Exec(r) => backend.exec(r, streams).await,
            Session::Attach(r) => backend.attach(r, streams).await,
        }
    }
}

/// The remote-command protocol versions (`X-Stream-Protocol-Version` over
/// SPDY, `Sec-WebSocket-Protocol` over WebSocket), newest last. What they
/// change: v2 drops the initial "ready" handshake; v3 adds the resize
/// stream; v4 reports the exit as a JSON `metav1.Status` on the error
/// stream (v1–v3 send a plain message); v5 (WebSocket only) adds the
/// close signal that half-closes stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteCommandProtocol {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl RemoteCommandProtocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "channel.k8s.io",
            Self::V2 => "v2.channel.k8s.io",
            Self::V3 => "v3.channel.k8s.io",
            Self::V4 => "v4.channel.k8s.io",
            Self::V5 => "v5.channel.k8s.io",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::V1, Self::V2, Self::V3, Self::V4, Self::V5].into_iter().find(|p| p.name() == name)
    }

    /// What the error stream carries when the session ends, if anything:
    /// v4+ always send a `metav1.Status` (success too); older versions send
    /// only a failure's message.
    pub fn error_stream_message(self, outcome: &Outcome) -> Option<Vec<u8>> {
        if self >= Self::V4 {
            return Some(status_json(outcome).into_bytes());
        }
        match outcome {
            Outcome::Exited(0) => None,
            Outcome::Exited(code) => {
                Some(format!("command terminated with non-zero exit code: exit status {code}").into_bytes())
            }
            Outcome::Failed(message) => Some(message.clone().into_bytes()),
        }
    }
}

/// The `metav1.Status` the kubelet writes on the error stream for v4+:
/// `Success`, or `Failure` with reason `NonZeroExitCode` and an `ExitCode`
/// cause (client-go turns that into its exit-code error), or
/// `InternalError` when the command could not run.
pub fn status_json(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
        Outcome::Exited(code) => format!(
            r#"{{"metadata":{{}},"status":"Failure","message":"command terminated with non-zero exit code: exit status {code}","reason":"NonZeroExitCode","details":{{"causes":[{{"reason":"ExitCode","message":"{code}"}}]}}}}"#
        ),
        Outcome::Failed(message) => {
            let message = json_string(message);
            format!(r#"{{"metadata":{{}},"status":"Failure","message":{message},"reason":"InternalError","code":500}}"#)
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_the_status_client_go_parses() {
        assert_eq!(status_json(&Outcome::Exited(0)), r#"{"metadata":{},"status":"Success"}"#);
        let failed = status_json(&Outcome::Exited(3));
        assert!(
            failed.contains(r#""reason":"NonZeroExitCode""#)
                && failed.contains(r#"{"reason":"ExitCode","message":"3"}"#),
            "{failed}"
        );
        let internal = status_json(&Outcome::Failed("no \"such\"\ncontainer".into()));
        assert!(internal.contains(r#""message":"no \"such\"\u000acontainer""#), "{internal}");
    }

    #[test]
    fn old_protocols_report_only_failures() {
        assert_eq!(RemoteCommandProtocol::V3.error_stream_message(&Outcome::Exited(0)), None);
        assert!(RemoteCommandProtocol::V4.error_stream_message(&Outcome::Exited(0)).is_some());
        assert_eq!(RemoteCommandProtocol::from_name("v4.channel.k8s.io"), Some(RemoteCommandProtocol::V4));
        assert_eq!(RemoteCommandProtocol::from_name("v9.channel.k8s.io"), None);
    }
}
