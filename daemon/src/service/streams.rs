//! The streaming calls: attach, exec, logs and stats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tote_api::v1::*;
use tote_shim::monitor::protocol::{ExitInfo, FrameKind};

use super::{Streamed, status};
use crate::engine::{Attached, Engine, ExecRequest, LogOptions};
use crate::monitor::{FrameReader, FrameWriter, Stream};

type Output = mpsc::Sender<Result<IoOutput, Status>>;

fn output(kind: io_output::Output) -> Result<IoOutput, Status> {
    Ok(IoOutput { output: Some(kind) })
}

/// Relays the monitor's frames to the client until the exit frame.
async fn relay_output(mut reader: FrameReader, out: &Output) -> Option<ExitInfo> {
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            _ => return None,
        };
        let message = match frame {
            (FrameKind::Stdout, data) => io_output::Output::Stdout(data),
            (FrameKind::Stderr, data) => io_output::Output::Stderr(data),
            (FrameKind::Exit, data) => return serde_json::from_slice(&data).ok(),
            _ => continue,
        };
        if out.send(output(message)).await.is_err() {
            return None;
        }
    }
}

/// What the client sends after its first message, for the process.
enum Input {
    Stdin(Vec<u8>),
    Close,
    Resize(u16, u16),
}

fn clamp(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

async fn relay_input<T>(
    mut input: Streaming<T>,
    mut writer: FrameWriter,
    convert: impl Fn(T) -> Option<Input>,
    // Without one, resizes go to the process as frames.
    resize: Option<Box<dyn Fn(u16, u16) + Send>>,
) {
    while let Some(Ok(message)) = input.next().await {
        let sent = match convert(message) {
            Some(Input::Stdin(data)) => writer.send(FrameKind::Stdin, &data).await,
            Some(Input::Close) => writer.send(FrameKind::StdinClose, &[]).await,
            Some(Input::Resize(rows, cols)) => match &resize {
                Some(resize) => {
                    resize(rows, cols);
                    Ok(())
                }
                None => {
                    let mut size = rows.to_be_bytes().to_vec();
                    size.extend_from_slice(&cols.to_be_bytes());
                    writer.send(FrameKind::Resize, &size).await
                }
            },
            None => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

pub async fn attach(engine: Arc<Engine>, mut input: Streaming<AttachInput>) -> Result<Streamed<IoOutput>, Status> {
    let start = match input.next().await {
        Some(Ok(AttachInput { input: Some(attach_input::Input::Start(start)) })) => start,
        Some(Err(e)) => return Err(e),
        _ => return Err(Status::invalid_argument("attach: the first message must name the container")),
    };
    let attached = engine.attach(&start.id, start.stdin).await.map_err(status)?;
    let (out, receiver) = mpsc::channel(64);
    let id = start.id.clone();
    tokio::spawn(async move {
        let _ = out.send(output(io_output::Output::Ready(true))).await;
        let stream: Stream = match attached {
            Attached::Now(stream) => stream,
            Attached::AtStart(pending) => match pending.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let _ = out.send(Err(status(e))).await;
                    return;
                }
                // The container was removed before it started.
                Err(_) => return,
            },
        };
        let resize_engine = engine.clone();
        let resize_id = id.clone();
        let relay = tokio::spawn(relay_input(
            input,
            stream.writer,
            |message: AttachInput| match message.input? {
                attach_input::Input::Stdin(data) => Some(Input::Stdin(data)),
                attach_input::Input::CloseStdin(_) => Some(Input::Close),
                attach_input::Input::Resize(size) => Some(Input::Resize(clamp(size.rows), clamp(size.cols))),
                attach_input::Input::Start(_) => None,
            },
            // The container's terminal is resized through its monitor,
            // whether or not this client sends input.
            Some(Box::new(move |rows, cols| {
                let engine = resize_engine.clone();
                let id = resize_id.clone();
                tokio::spawn(async move {
                    let _ = engine.resize(&id, rows, cols).await;
                });
            })),
        ));
        let exit = relay_output(stream.reader, &out).await;
        relay.abort();
        let (code, oom_killed) = match exit {
            Some(exit) => (exit.code, exit.oom_killed),
            // The stream broke: the engine knows how the container ended.
            None => engine.wait(&id).await.unwrap_or((255, false)),
        };
        // As docker's CLI does: once `run` returns, the exit is recorded and
        // a `--rm` container is gone.
        engine.settled(&id, Duration::from_secs(10)).await;
        let _ = out.send(output(io_output::Output::Exit(ExitStatus { code, oom_killed }))).await;
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

pub async fn exec(engine: Arc<Engine>, mut input: Streaming<ExecInput>) -> Result<Streamed<IoOutput>, Status> {
    let config = match input.next().await {
        Some(Ok(ExecInput { input: Some(exec_input::Input::Start(config)) })) => config,
        Some(Err(e)) => return Err(e),
        _ => return Err(Status::invalid_argument("exec: the first message must be the exec config")),
    };
    let request = ExecRequest {
        cmd: config.cmd,
        env: config.env,
        user: config.user,
        working_dir: config.working_dir,
        tty: config.tty,
        stdin: config.stdin,
        privileged: config.privileged,
        size: config.size.map(|s| (clamp(s.rows), clamp(s.cols))),
    };
    let stream = engine.exec(&config.id, request).await.map_err(status)?;
    let (out, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let _ = out.send(output(io_output::Output::Ready(true))).await;
        let relay = tokio::spawn(relay_input(
            input,
            stream.writer,
            |message: ExecInput| match message.input? {
                exec_input::Input::Stdin(data) => Some(Input::Stdin(data)),
                exec_input::Input::CloseStdin(_) => Some(Input::Close),
                exec_input::Input::Resize(size) => Some(Input::Resize(clamp(size.rows), clamp(size.cols))),
                exec_input::Input::Start(_) => None,
            },
            None,
        ));
        let exit = relay_output(stream.reader, &out).await;
        relay.abort();
        let (code, oom_killed) = exit.map_or((255, false), |e| (e.code, e.oom_killed));
        let _ = out.send(output(io_output::Output::Exit(ExitStatus { code, oom_killed }))).await;
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

pub fn logs(engine: &Engine, request: LogsRequest) -> Result<Streamed<LogEntry>, Status> {
    let now = std::time::SystemTime::now();
    let time = |text: &str| -> Result<Option<String>, Status> {
        if text.is_empty() {
            return Ok(None);
        }
        crate::engine::normalise_time(text, now).map(Some).map_err(status)
    };
    let both = !request.stdout && !request.stderr;
    let options = LogOptions {
        follow: request.follow,
        tail: usize::try_from(request.tail).ok(),
        since: time(&request.since)?,
        until: time(&request.until)?,
        stdout: request.stdout || both,
        stderr: request.stderr || both,
    };
    let records = engine.logs(&request.id, options).map_err(status)?;
    let entries = ReceiverStream::new(records).map(|record| {
        Ok(LogEntry {
            time: record.time,
            stream: match record.stream {
                tote_shim::monitor::log::Stream::Stdout => "stdout".into(),
                tote_shim::monitor::log::Stream::Stderr => "stderr".into(),
            },
            text: record.text,
            complete: record.full,
        })
    });
    Ok(Box::pin(entries))
}

pub async fn stats(engine: Arc<Engine>, request: StatsRequest) -> Result<Streamed<StatsReply>, Status> {
    // The first sample now, so a stopped container is an error at once.
    let first = engine.stats(&request.id).await.map_err(status)?;
    let (out, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut previous = (first.1.cpu_usage_ns, Instant::now());
        let interval = if request.no_stream { Duration::from_millis(500) } else { Duration::from_secs(1) };
        loop {
            tokio::time::sleep(interval).await;
            let Ok((record, stats, rx, tx)) = engine.stats(&request.id).await else { return };
            let now = Instant::now();
            let wall = now.duration_since(previous.1).as_nanos().max(1) as f64;
            let cpu = stats.cpu_usage_ns.saturating_sub(previous.0) as f64;
            previous = (stats.cpu_usage_ns, now);
            let reply = StatsReply {
                id: record.id,
                name: record.name,
                cpu_percent: cpu / wall * 100.0,
                memory_usage: stats.memory_usage,
                memory_limit: stats.memory_limit.unwrap_or(0),
                pids: stats.pids,
                net_rx: rx,
                net_tx: tx,
            };
            if out.send(Ok(reply)).await.is_err() || request.no_stream {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}
