//! The io pump `run`, `start -a`, `attach` and `exec` share: the client's
//! stdin (and terminal size) up the stream, the container's stdout and
//! stderr down to the client's, until the exit status arrives.

use std::io::Read;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tote_api::v1::{
    AttachInput, AttachStart, ExecConfig, ExecInput, ExitStatus, IoOutput, KillContainerRequest, Resize, attach_input,
    exec_input, io_output,
};

use crate::commands::Client;
use crate::errors::CliError;
use crate::signals;
use crate::tty::{self, DEFAULT_DETACH_KEYS, DetachKeys};

/// What the client sends after the first message, for attach and exec alike.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(Resize),
}

impl From<Input> for AttachInput {
    fn from(input: Input) -> Self {
        let input = match input {
            Input::Stdin(bytes) => attach_input::Input::Stdin(bytes),
            Input::CloseStdin => attach_input::Input::CloseStdin(true),
            Input::Resize(size) => attach_input::Input::Resize(size),
        };
        AttachInput { input: Some(input) }
    }
}

impl From<Input> for ExecInput {
    fn from(input: Input) -> Self {
        let input = match input {
            Input::Stdin(bytes) => exec_input::Input::Stdin(bytes),
            Input::CloseStdin => exec_input::Input::CloseStdin(true),
            Input::Resize(size) => exec_input::Input::Resize(size),
        };
        ExecInput { input: Some(input) }
    }
}

/// How a pump ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Exited(ExitStatus),
    /// The user typed the detach keys; the container runs on.
    Detached,
    /// toted ended the stream without an exit status.
    Closed,
    /// tote itself was told to stop (SIGTERM/SIGHUP with a raw terminal).
    Interrupted(&'static str),
}

/// What to pump besides output.
#[derive(Clone, Default)]
pub struct PumpOptions {
    /// Forward the client's stdin, then close the container's at EOF.
    pub stdin: bool,
    /// The container has a terminal: send the client's size and its changes,
    /// watch for the detach keys.
    pub tty: bool,
    /// Forward tote's signals to this container (docker's `--sig-proxy`).
    pub proxy: Option<(Client, String)>,
}

/// An open Attach or Exec stream.
pub struct IoStream<T> {
    requests: mpsc::Sender<T>,
    replies: Streaming<IoOutput>,
}

/// Opens an Attach stream to a container.
pub async fn attach(client: &mut Client, id: &str, stdin: bool) -> Result<IoStream<AttachInput>, CliError> {
    let start = AttachStart { id: id.to_string(), stdin };
    let first = AttachInput { input: Some(attach_input::Input::Start(start)) };
    let (requests, receiver) = opened(first).await;
    let replies = client.attach(ReceiverStream::new(receiver)).await?.into_inner();
    Ok(IoStream { requests, replies })
}

/// Opens an Exec stream: the process starts when toted reads the config.
pub async fn exec(client: &mut Client, config: ExecConfig) -> Result<IoStream<ExecInput>, CliError> {
    let first = ExecInput { input: Some(exec_input::Input::Start(config)) };
    let (requests, receiver) = opened(first).await;
    let replies = client.exec(ReceiverStream::new(receiver)).await?.into_inner();
    Ok(IoStream { requests, replies })
}

/// A request channel with its first message already queued, so toted sees
/// it as soon as the call is made.
async fn opened<T>(first: T) -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
    let (sender, receiver) = mpsc::channel(16);
    // Cannot fail: the receiver is alive and the channel is empty.
    let _ = sender.send(first).await;
    (sender, receiver)
}

impl<T: From<Input> + Send + 'static> IoStream<T> {
    /// Waits for toted's `ready`: from then on no output is lost, so the
    /// container may be started.
    pub async fn wait_ready(&mut self) -> Result<(), CliError> {
        loop {
            match self.replies.message().await?.and_then(|reply| reply.output) {
                Some(io_output::Output::Ready(_)) => return Ok(()),
                Some(io_output::Output::Stdout(bytes)) => write_all(&mut tokio::io::stdout(), &bytes).await?,
                Some(io_output::Output::Stderr(bytes)) => write_all(&mut tokio::io::stderr(), &bytes).await?,
                Some(io_output::Output::Exit(status)) => {
                    return Err(CliError::Protocol(format!("the container exited ({}) before attaching", status.code)));
                }
                None => return Err(CliError::Protocol("the stream ended before it was ready".to_string())),
            }
        }
    }

    /// Sends one input message; a closed stream shows in the replies.
    pub async fn send(&self, input: Input) {
        let _ = self.requests.send(input.into()).await;
    }

    /// Sends the client's terminal size, when it has one.
    pub async fn send_size(&self) {
        if let Some(size) = tty::size() {
            self.send(Input::Resize(size)).await;
        }
    }

    /// Waits for the first reply without printing it: `exec -d` returns
    /// once toted shows the process runs (or failed).
    pub async fn first_reply(&mut self) -> Result<Option<io_output::Output>, CliError> {
        Ok(self.replies.message().await?.and_then(|reply| reply.output))
    }

    /// Copies io both ways until the exit status, a detach, or the end of
    /// the stream.
    pub async fn pump(mut self, options: PumpOptions) -> Result<Ended, CliError> {
        let mut stdin = options.stdin.then(|| spawn_stdin_reader(options.tty));
        let mut resizes = options.tty.then(signals::window_changes).transpose().map_err(signal_error)?;
        let mut proxied = options.proxy.is_some().then(signals::proxied).transpose().map_err(signal_error)?;
        // With a raw terminal and no proxy, SIGTERM/SIGHUP end the pump so
        // the terminal is restored before tote exits.
        let restore_first = options.tty && options.proxy.is_none();
        let mut terminating = restore_first.then(signals::terminating).transpose().map_err(signal_error)?;
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        loop {
            tokio::select! {
                reply = self.replies.message() => match reply?.and_then(|reply| reply.output) {
                    Some(io_output::Output::Stdout(bytes)) => write_all(&mut stdout, &bytes).await?,
                    Some(io_output::Output::Stderr(bytes)) => write_all(&mut stderr, &bytes).await?,
                    Some(io_output::Output::Exit(status)) => return Ok(Ended::Exited(status)),
                    Some(io_output::Output::Ready(_)) => {}
                    None => return Ok(Ended::Closed),
                },
                event = next(&mut stdin) => match event {
                    Some(StdinEvent::Data(bytes)) => self.send(Input::Stdin(bytes)).await,
                    Some(StdinEvent::Detach) => return Ok(Ended::Detached),
                    None => {
                        stdin = None;
                        self.send(Input::CloseStdin).await;
                    }
                },
                Some(()) = resized(&mut resizes) => self.send_size().await,
                Some(name) = next(&mut proxied) => {
                    if let Some((client, id)) = &options.proxy {
                        forward_signal(client.clone(), id.clone(), name);
                    }
                }
                Some(name) = next(&mut terminating) => return Ok(Ended::Interrupted(name)),
            }
        }
    }
}

fn signal_error(source: std::io::Error) -> CliError {
    CliError::io("cannot install a signal handler", source)
}

/// Kills the container with the signal in the background, as docker's
/// signal proxy does: the pump keeps copying meanwhile.
fn forward_signal(mut client: Client, id: String, signal: &'static str) {
    tokio::spawn(async move {
        let request = KillContainerRequest { id, signal: signal.to_string() };
        // The container may be gone already; its exit arrives on the stream.
        let _ = client.kill_container(request).await;
    });
}

async fn write_all<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> Result<(), CliError> {
    out.write_all(bytes).await.map_err(|e| CliError::io("cannot write output", e))?;
    out.flush().await.map_err(|e| CliError::io("cannot write output", e))
}

/// The next message of an optional channel; never, when there is none.
async fn next<T>(receiver: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn resized(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

enum StdinEvent {
    Data(Vec<u8>),
    Detach,
}

/// Reads stdin on a plain thread: a blocking read cannot be cancelled, and
/// a thread left blocked in it does not keep tote from exiting (a tokio
/// blocking task would). The channel closes at EOF.
fn spawn_stdin_reader(tty: bool) -> mpsc::Receiver<StdinEvent> {
    let (sender, receiver) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut detach = tty.then(|| DetachKeys::new(&DEFAULT_DETACH_KEYS));
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            let read = match stdin.read(&mut buffer) {
                Ok(0) => return,
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let (data, detached) = match detach.as_mut() {
                Some(keys) => keys.feed(&buffer[..read]),
                None => (buffer[..read].to_vec(), false),
            };
            if !data.is_empty() && sender.blocking_send(StdinEvent::Data(data)).is_err() {
                return;
            }
            if detached {
                let _ = sender.blocking_send(StdinEvent::Detach);
                return;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_map_onto_both_streams() {
        let resize = Resize { rows: 24, cols: 80 };
        let attach: AttachInput = Input::Resize(resize).into();
        assert_eq!(attach.input, Some(attach_input::Input::Resize(resize)));
        let exec: ExecInput = Input::Stdin(b"x".to_vec()).into();
        assert_eq!(exec.input, Some(exec_input::Input::Stdin(b"x".to_vec())));
        let close: AttachInput = Input::CloseStdin.into();
        assert_eq!(close.input, Some(attach_input::Input::CloseStdin(true)));
    }
}
