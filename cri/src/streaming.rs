//! The engine behind the CRI's streaming URLs: exec and attach sessions
//! run through the container's monitor (the same streams `tote exec` and
//! `tote attach` use; the streaming server is only a front end), and
//! port-forward connections opened in the pod's network namespace.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tote_shim::monitor::protocol::{ExitInfo, FrameKind};
use tote_stream::{AttachRequest, Backend, BoxFuture, ExecRequest, Outcome, Streams};
use toted::engine::{Attached, Engine, ExecRequest as EngineExec};
use toted::monitor::Stream;

pub struct EngineBackend {
    engine: Arc<Engine>,
}

impl EngineBackend {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl Backend for EngineBackend {
    fn exec(&self, request: ExecRequest, streams: Streams) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let exec = EngineExec { cmd: request.cmd, tty: request.tty, stdin: request.stdin, ..EngineExec::default() };
            match self.engine.exec(&request.container_id, exec).await {
                // A client gone mid-session takes its process with it:
                // nobody is left to read what it prints or to stop it.
                Ok(stream) => pump(stream, streams, Role::Exec).await,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        })
    }

    fn attach(&self, request: AttachRequest, streams: Streams) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let stdin_once = self.engine.container(&request.container_id).is_ok_and(|c| c.settings.stdin_once);
            let stream = match self.engine.attach(&request.container_id, request.stdin).await {
                Ok(Attached::Now(stream)) => stream,
                Ok(Attached::AtStart(started)) => match started.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return Outcome::Failed(e.to_string()),
                    Err(_) => return Outcome::Failed("the container did not start".into()),
                },
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            pump(stream, streams, Role::Attach { stdin_once }).await
        })
    }

    fn port_forward(&self, pod_sandbox_id: &str, port: u16) -> BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
        let pod = pod_sandbox_id.to_string();
        Box::pin(async move {
            let engine = self.engine.clone();
            let connected = tokio::task::spawn_blocking(move || engine.pod_connect(&pod, port))
                .await
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            connected.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(connected)
        })
    }
}

/// What a session is to the process it reaches.
#[derive(Clone, Copy)]
enum Role {
    /// The session's own process: its stdin ends with the client's, and it
    /// is killed if the client leaves first.
    Exec,
    /// The container's main process: its stdin ends with the client's only
    /// if the container says so (`stdin_once`); a client that leaves only
    /// detaches.
    Attach { stdin_once: bool },
}

/// Carries a session between the client's streams and the monitor's
/// frames until the process exits (its code) or the client goes away.
async fn pump(stream: Stream, streams: Streams, role: Role) -> Outcome {
    let kill_when_gone = matches!(role, Role::Exec);
    let close_stdin = !matches!(role, Role::Attach { stdin_once: false });
    let Stream { pid, mut reader, mut writer } = stream;
    // Armed until the process's exit is seen: a session that ends before
    // (the client gone, its future dropped) ends the process too.
    let mut process = EndUnlessExited { pid: if kill_when_gone { pid } else { 0 } };
    let Streams { stdin, mut stdout, mut stderr, resize } = streams;
    // Input and resizes in a task of their own: the monitor's socket is
    // full duplex, and output must not wait for input.
    let input = tokio::spawn(async move {
        let mut stdin = stdin;
        let mut resize = resize;
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                read = async { match stdin.as_mut() { Some(s) => s.read(&mut buffer).await, None => std::future::pending().await } } => {
                    match read {
                        Ok(0) | Err(_) => {
                            stdin = None;
                            if close_stdin && writer.send(FrameKind::StdinClose, &[]).await.is_err() {
                                return;
                            }
                        }
                        Ok(n) => {
                            if writer.send(FrameKind::Stdin, &buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                size = async { match resize.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    match size {
                        Some(size) => {
                            let mut frame = size.height.to_be_bytes().to_vec();
                            frame.extend_from_slice(&size.width.to_be_bytes());
                            if writer.send(FrameKind::Resize, &frame).await.is_err() {
                                return;
                            }
                        }
                        None => resize = None,
                    }
                }
                else => {
                    // Nothing more can come: keep the writer (closing it
                    // would end the session) until the output side ends.
                    std::future::pending::<()>().await;
                }
            }
        }
    });
    let outcome = loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Outcome::Failed("the container's monitor closed the stream".into()),
            Err(e) => break Outcome::Failed(format!("the container's monitor: {e}")),
        };
        let (kind, data) = frame;
        let target = match kind {
            FrameKind::Stdout => stdout.as_mut(),
            // With a terminal there is no stderr: everything is on stdout.
            FrameKind::Stderr => stderr.as_mut().or(stdout.as_mut()),
            FrameKind::Exit => {
                process.pid = 0;
                break match serde_json::from_slice::<ExitInfo>(&data) {
                    Ok(exit) => Outcome::Exited(exit.code),
                    Err(e) => Outcome::Failed(format!("the monitor's exit frame: {e}")),
                };
            }
            _ => continue,
        };
        if let Some(out) = target
            && (out.write_all(&data).await.is_err() || out.flush().await.is_err())
        {
            break Outcome::Failed("the client went away".into());
        }
    };
    input.abort();
    for out in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = out.shutdown().await;
    }
    outcome
}

/// SIGKILLs an exec's process when dropped, unless its pid was cleared.
struct EndUnlessExited {
    pid: i32,
}

impl Drop for EndUnlessExited {
    fn drop(&mut self) {
        if self.pid > 0 {
            tracing::debug!(pid = self.pid, "ending an exec whose client left");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::SIGKILL);
        }
    }
}
