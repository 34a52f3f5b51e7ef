//! Starting a container's monitor (`tote-shim monitor`) and talking to it.
//!
//! The monitor forks itself away from toted at once, so toted never reaps
//! it and a dead daemon leaves it running. It says whether the container
//! was created on a pipe handed over as descriptor 3; afterwards toted
//! reaches it on `<dir>/sock`, or, once it is gone, reads `<dir>/exit.json`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tote_shim::monitor::protocol::{
    FrameKind, HEADER, MAX_FRAME, MAX_REQUEST, Reply, Request, encode_frame, parse_header_io,
};
use tote_shim::monitor::{SOCKET, Startup};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("start tote-shim ({shim}): {source}")]
    Spawn {
        shim: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tote-shim monitor for {id} ended without saying whether the container started (see {log})")]
    Silent { id: String, log: PathBuf },
    #[error("{message}")]
    Create { message: String, exit_code: Option<i32> },
    #[error("the monitor of {id} is not reachable: {source}")]
    Unreachable {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the monitor of {id} sent a bad reply: {detail}")]
    BadReply { id: String, detail: String },
    #[error("{message}")]
    Refused { message: String, exit_code: Option<i32> },
}

/// How to start one container's monitor.
pub struct Launch<'a> {
    pub shim: &'a Path,
    pub runtime_root: &'a Path,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub dir: &'a Path,
    pub log: &'a Path,
    pub log_max_size: u64,
    pub log_max_files: u32,
    pub stdin: bool,
}

/// Starts the monitor and waits until the container is created (its
/// process waits for `start`); returns the container's and monitor's pids.
pub async fn launch(launch: &Launch<'_>) -> Result<(i32, i32), MonitorError> {
    std::fs::create_dir_all(launch.dir).map_err(|source| MonitorError::Spawn { shim: launch.shim.into(), source })?;
    // Close-on-exec, so that no other child toted spawns meanwhile keeps
    // the write end open; the monitor gets its copy as descriptor 3.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| MonitorError::Spawn { shim: launch.shim.into(), source: e.into() })?;
    let mut command = std::process::Command::new(launch.shim);
    command
        .arg("--root")
        .arg(launch.runtime_root)
        .arg("monitor")
        .arg("--bundle")
        .arg(launch.bundle)
        .arg("--dir")
        .arg(launch.dir)
        .arg("--container-log")
        .arg(launch.log)
        .arg("--log-max-size")
        .arg(launch.log_max_size.to_string())
        .arg("--log-max-files")
        .arg(launch.log_max_files.to_string())
        .arg("--ready-fd")
        .arg("3")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if launch.stdin {
        command.arg("--stdin");
    }
    command.arg(launch.id);
    let write_fd = write.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only calls dup2
    // and fcntl, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let ret = if write_fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(write_fd, 3) };
            if ret < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let shim = launch.shim.to_path_buf();
    let (read, write): (OwnedFd, OwnedFd) = (read, write);
    let startup = tokio::task::spawn_blocking(move || {
        // The first tote-shim process exits as soon as it has forked the
        // monitor; reaping it here keeps toted free of zombies.
        let status = command.status();
        drop(write);
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(std::fs::File::from(read)), &mut line);
        (status, line)
    })
    .await
    .expect("the launch task does not panic");
    let (status, line) = startup;
    status.map_err(|source| MonitorError::Spawn { shim, source })?;
    match serde_json::from_str::<Startup>(&line) {
        Ok(Startup::Ready { pid, monitor_pid }) => Ok((pid, monitor_pid)),
        Ok(Startup::Failed { message, exit_code }) => Err(MonitorError::Create { message, exit_code }),
        Err(_) => {
            Err(MonitorError::Silent { id: launch.id.into(), log: launch.dir.join(tote_shim::monitor::DIAGNOSTICS) })
        }
    }
}

/// A client of one monitor.
#[derive(Clone)]
pub struct MonitorClient {
    id: String,
    socket: PathBuf,
}

/// A request the monitor has been sent, its reply still to come.
pub struct Pending {
    id: String,
    reader: BufReader<UnixStream>,
}

impl Pending {
    /// The reply; a refusal becomes an error.
    pub async fn reply(mut self) -> Result<Reply, MonitorError> {
        match read_reply(&self.id, &mut self.reader).await? {
            Reply::Error { message, exit_code } => Err(MonitorError::Refused { message, exit_code }),
            reply => Ok(reply),
        }
    }
}

async fn read_reply(id: &str, reader: &mut BufReader<UnixStream>) -> Result<Reply, MonitorError> {
    let unreachable = |source| MonitorError::Unreachable { id: id.to_string(), source };
    let mut reply = String::new();
    reader.take(MAX_REQUEST as u64).read_line(&mut reply).await.map_err(unreachable)?;
    if reply.is_empty() {
        return Err(unreachable(std::io::ErrorKind::UnexpectedEof.into()));
    }
    serde_json::from_str(&reply)
        .map_err(|e| MonitorError::BadReply { id: id.to_string(), detail: format!("{e}: {reply:?}") })
}

/// An attach or exec stream, split for use from two tasks.
pub struct Stream {
    pub pid: i32,
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

/// What came after the reply line in the same read, then the socket.
type FrameSource = tokio::io::Chain<std::io::Cursor<Vec<u8>>, tokio::net::unix::OwnedReadHalf>;

pub struct FrameReader {
    inner: BufReader<FrameSource>,
}

pub struct FrameWriter {
    inner: tokio::net::unix::OwnedWriteHalf,
}

impl FrameReader {
    /// The next frame; `None` when the monitor closed the stream.
    pub async fn next(&mut self) -> std::io::Result<Option<(FrameKind, Vec<u8>)>> {
        let mut header = [0u8; HEADER];
        match self.inner.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (kind, len) = parse_header_io(&header)?;
        let mut payload = vec![0u8; len];
        self.inner.read_exact(&mut payload).await?;
        Ok(Some((kind, payload)))
    }
}

impl FrameWriter {
    pub async fn send(&mut self, kind: FrameKind, payload: &[u8]) -> std::io::Result<()> {
        for chunk in payload.chunks(MAX_FRAME) {
            self.inner.write_all(&encode_frame(kind, chunk)).await?;
        }
        if payload.is_empty() {
            self.inner.write_all(&encode_frame(kind, &[])).await?;
        }
        Ok(())
    }
}

impl MonitorClient {
    pub fn new(id: &str, dir: &Path) -> Self {
        Self { id: id.into(), socket: dir.join(SOCKET) }
    }

    async fn send(&self, request: &Request) -> Result<BufReader<UnixStream>, MonitorError> {
        let unreachable = |source| MonitorError::Unreachable { id: self.id.clone(), source };
        let mut stream = UnixStream::connect(&self.socket).await.map_err(unreachable)?;
        let mut line = serde_json::to_vec(request).expect("requests serialise");
        line.push(b'\n');
        stream.write_all(&line).await.map_err(unreachable)?;
        Ok(BufReader::new(stream))
    }

    async fn exchange(&self, request: &Request) -> Result<(Reply, BufReader<UnixStream>), MonitorError> {
        let mut reader = self.send(request).await?;
        let reply = read_reply(&self.id, &mut reader).await?;
        Ok((reply, reader))
    }

    /// One request and its reply; a refusal becomes an error.
    pub async fn call(&self, request: &Request) -> Result<Reply, MonitorError> {
        self.request(request).await?.reply().await
    }

    /// Sends `request` now; its reply is read later, with [`Pending::reply`].
    pub async fn request(&self, request: &Request) -> Result<Pending, MonitorError> {
        Ok(Pending { id: self.id.clone(), reader: self.send(request).await? })
    }

    /// Expects a plain `Ok`.
    pub async fn call_ok(&self, request: &Request) -> Result<(), MonitorError> {
        match self.call(request).await? {
            Reply::Ok => Ok(()),
            other => Err(MonitorError::BadReply { id: self.id.clone(), detail: format!("{other:?}") }),
        }
    }

    /// Attach or exec.
    pub async fn stream(&self, request: &Request) -> Result<Stream, MonitorError> {
        let (reply, reader) = self.exchange(request).await?;
        match reply {
            Reply::Streaming { pid } => {
                // Frames may already sit in the buffer behind the reply.
                let early = reader.buffer().to_vec();
                let (read, write) = reader.into_inner().into_split();
                let source = std::io::Cursor::new(early).chain(read);
                Ok(Stream {
                    pid,
                    reader: FrameReader { inner: BufReader::new(source) },
                    writer: FrameWriter { inner: write },
                })
            }
            Reply::Error { message, exit_code } => Err(MonitorError::Refused { message, exit_code }),
            other => Err(MonitorError::BadReply { id: self.id.clone(), detail: format!("{other:?}") }),
        }
    }
}
