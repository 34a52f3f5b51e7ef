//! The tote binary against a fake toted: a tonic server on a unix socket
//! that answers the calls these tests make and records them in order.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tote_api::v1::tote_server::{Tote, ToteServer};
use tote_api::v1::{
    AttachInput, ContainerConfig, ContainerRef, ContainerSummary, CreateContainerReply, CreateContainerRequest,
    DiskUsageReply, Empty, ExitStatus, IoOutput, ListContainersReply, ListContainersRequest, LogEntry, LogsRequest,
    PruneImagesReply, PruneImagesRequest, PullImageRequest, PullProgress, RemoveContainerRequest, UsageSummary,
    attach_input, io_output,
};
use tote_api::{EXIT_CODE_METADATA, MISSING_IMAGE_METADATA};

const ID: &str = "4f1c2a9d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a10";

/// What the fake saw, shared with the test.
#[derive(Default)]
struct Seen {
    calls: Vec<String>,
    configs: Vec<ContainerConfig>,
    pulled: bool,
    image: String,
}

#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    started: Arc<Notify>,
}

impl Fake {
    fn record(&self, call: &str) {
        self.seen.lock().unwrap().calls.push(call.to_string());
    }
}

fn with_metadata(mut status: Status, key: &'static str, value: &'static str) -> Status {
    status.metadata_mut().insert(key, MetadataValue::from_static(value));
    status
}

fn output(output: io_output::Output) -> Result<IoOutput, Status> {
    Ok(IoOutput { output: Some(output) })
}

#[tonic::async_trait]
impl Tote for Fake {
    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerReply>, Status> {
        self.record("Create");
        let config = request.into_inner().config.unwrap_or_default();
        let mut seen = self.seen.lock().unwrap();
        seen.image = config.image.clone();
        seen.configs.push(config.clone());
        match config.image.as_str() {
            "missing" if !seen.pulled => Err(with_metadata(
                Status::not_found("No such image: missing:latest"),
                MISSING_IMAGE_METADATA,
                "docker.io/library/missing:latest",
            )),
            "broken" => Err(Status::internal("no space left on device")),
            _ => Ok(Response::new(CreateContainerReply { id: ID.to_string(), warnings: vec![] })),
        }
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<BoxStream<PullProgress>>, Status> {
        self.record("Pull");
        assert_eq!(request.into_inner().reference, "docker.io/library/missing:latest");
        self.seen.lock().unwrap().pulled = true;
        let progress =
            |id: &str, status: &str| PullProgress { id: id.into(), status: status.into(), ..Default::default() };
        let messages = vec![
            Ok(progress("", "latest: Pulling from library/missing")),
            Ok(progress("9ad63333ebc9", "Pulling fs layer")),
            Ok(PullProgress { current: 10, total: 100, ..progress("9ad63333ebc9", "Downloading") }),
            Ok(progress("9ad63333ebc9", "Pull complete")),
            Ok(PullProgress {
                digest: "sha256:feed".into(),
                image_id: "sha256:beef".into(),
                ..progress("", "Downloaded image for docker.io/library/missing:latest")
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn attach(&self, request: Request<Streaming<AttachInput>>) -> Result<Response<BoxStream<IoOutput>>, Status> {
        self.record("Attach");
        if self.seen.lock().unwrap().image == "noattach" {
            return Err(Status::unavailable("the container's monitor is not reachable"));
        }
        let mut inputs = request.into_inner();
        let first = inputs.message().await?.and_then(|input| input.input);
        let Some(attach_input::Input::Start(start)) = first else {
            return Err(Status::invalid_argument("the first message must be start"));
        };
        let image = self.seen.lock().unwrap().image.clone();
        let started = self.started.clone();
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            let _ = sender.send(output(io_output::Output::Ready(true))).await;
            started.notified().await;
            if image == "echo" {
                // Echo stdin until it is closed, then exit 0.
                assert!(start.stdin, "echo needs stdin attached");
                while let Ok(Some(input)) = inputs.message().await {
                    match input.input {
                        Some(attach_input::Input::Stdin(bytes)) => {
                            let _ = sender.send(output(io_output::Output::Stdout(bytes))).await;
                        }
                        Some(attach_input::Input::CloseStdin(_)) => break,
                        _ => {}
                    }
                }
                let _ = sender.send(output(io_output::Output::Exit(ExitStatus { code: 0, oom_killed: false }))).await;
                return;
            }
            let _ = sender.send(output(io_output::Output::Stdout(b"hello from the container\n".to_vec()))).await;
            let _ = sender.send(output(io_output::Output::Stderr(b"oops\n".to_vec()))).await;
            let _ = sender.send(output(io_output::Output::Exit(ExitStatus { code: 3, oom_killed: false }))).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn remove_container(&self, request: Request<RemoveContainerRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        assert_eq!(request.id, ID);
        self.record(if request.force { "RemoveForce" } else { "Remove" });
        Ok(Response::new(Empty {}))
    }

    async fn start_container(&self, request: Request<ContainerRef>) -> Result<Response<Empty>, Status> {
        self.record("Start");
        assert_eq!(request.into_inner().id, ID);
        if self.seen.lock().unwrap().image == "nocmd" {
            let status = Status::failed_precondition("exec: \"nope\": executable file not found in $PATH");
            return Err(with_metadata(status, EXIT_CODE_METADATA, "127"));
        }
        self.started.notify_one();
        Ok(Response::new(Empty {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersReply>, Status> {
        self.record("List");
        let all = request.into_inner().all;
        let container = |id: &str, name: &str, state: &str, created| ContainerSummary {
            id: id.into(),
            created,
            name: name.into(),
            image: "busybox".into(),
            command: "sleep 1000".into(),
            state: state.into(),
            labels: HashMap::new(),
            ..Default::default()
        };
        // Oldest first: tote sorts newest first, as docker does.
        let mut containers = vec![container(ID, "web", "running", 2000)];
        if all {
            containers.insert(0, container("0123456789abcdef0123456789abcdef", "/old", "exited", 1000));
        }
        Ok(Response::new(ListContainersReply { containers }))
    }

    async fn disk_usage(&self, _: Request<Empty>) -> Result<Response<DiskUsageReply>, Status> {
        self.record("DiskUsage");
        let usage = |total, active, size, reclaimable| Some(UsageSummary { total, active, size, reclaimable });
        Ok(Response::new(DiskUsageReply {
            images: usage(2, 1, 5_000_000, 1_000_000),
            containers: usage(1, 1, 0, 0),
            volumes: usage(0, 0, 0, 0),
            build_cache: usage(0, 0, 0, 0),
            partial_downloads: usage(1, 0, 100_000, 100_000),
        }))
    }

    async fn prune_images(&self, request: Request<PruneImagesRequest>) -> Result<Response<PruneImagesReply>, Status> {
        let all = request.into_inner().all;
        self.record(if all { "PruneAll" } else { "Prune" });
        Ok(Response::new(PruneImagesReply {
            untagged: if all { vec!["docker.io/library/alpine:3.20".into()] } else { vec![] },
            deleted: vec!["sha256:feed".into()],
            partial_downloads: vec!["sha256:beef".into()],
            space_reclaimed: 1_100_000,
        }))
    }

    async fn container_logs(&self, request: Request<LogsRequest>) -> Result<Response<BoxStream<LogEntry>>, Status> {
        self.record("Logs");
        let request = request.into_inner();
        assert!(request.stdout && request.stderr);
        assert_eq!(request.tail, -1);
        let entry = |time: &str, stream: &str, text: &str, complete| LogEntry {
            time: time.into(),
            stream: stream.into(),
            text: text.as_bytes().to_vec(),
            complete,
        };
        let entries = vec![
            Ok(entry("2024-01-02T15:04:05.000000001Z", "stdout", "first line", true)),
            Ok(entry("2024-01-02T15:04:06.000000002Z", "stderr", "an error", true)),
            Ok(entry("2024-01-02T15:04:07.000000003Z", "stdout", "split ", false)),
            Ok(entry("2024-01-02T15:04:07.000000004Z", "stdout", "line", true)),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(entries))))
    }
}

/// A test's directory, removed when the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a fake toted on a fresh socket; returns it, the host to pass and
/// the socket's directory.
fn serve() -> (Fake, String, Scratch) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir =
        std::env::temp_dir().join(format!("tote-fake-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("tote.sock");
    let fake = Fake::default();
    let served = fake.clone();
    let (ready, listening) = std::sync::mpsc::channel();
    let path = socket.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            ready.send(()).unwrap();
            tonic::transport::Server::builder()
                .add_service(ToteServer::new(served))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    listening.recv().unwrap();
    (fake, format!("unix://{}", socket.display()), Scratch(dir))
}

fn tote(host: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tote"));
    command.arg("-H").arg(host).args(args).env_remove("TOTE_HOST").stdin(Stdio::null());
    command
}

fn run(host: &str, args: &[&str]) -> Output {
    tote(host, args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn calls(fake: &Fake) -> Vec<String> {
    fake.seen.lock().unwrap().calls.clone()
}

#[test]
fn run_pulls_a_missing_image_then_forwards_output_and_the_exit_code() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["run", "missing"]);
    assert_eq!(calls(&fake), ["Create", "Pull", "Create", "Attach", "Start"]);
    assert_eq!(text(&out.stdout), "hello from the container\n");
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("Unable to find image 'missing:latest' locally\n"), "{stderr}");
    assert!(stderr.contains("9ad63333ebc9: Pull complete\n"), "{stderr}");
    assert!(stderr.contains("Digest: sha256:feed\nStatus: Downloaded newer image for missing:latest\n"), "{stderr}");
    assert!(!stderr.contains("Downloaded image for"), "toted's own summary is replaced by docker's: {stderr}");
    assert!(!stderr.contains("Downloading"), "no byte counts without a terminal: {stderr}");
    assert!(stderr.ends_with("oops\n"), "{stderr}");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn run_detached_prints_the_id() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["run", "-d", "--name", "web", "busybox", "sleep", "1000"]);
    assert_eq!(text(&out.stdout), format!("{ID}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(calls(&fake), ["Create", "Start"]);
    let config = fake.seen.lock().unwrap().configs[0].clone();
    assert_eq!(config.cmd, ["sleep", "1000"]);
}

#[test]
fn stdin_is_forwarded_and_closed() {
    let (_fake, host, _dir) = serve();
    let mut child = tote(&host, &["run", "-i", "echo"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "ping\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["run", "--no-such-flag", "busybox"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("--no-such-flag"));
    assert!(calls(&fake).is_empty());
    let out = run(&host, &["--help"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn daemon_errors_are_passed_through_with_125() {
    let (_fake, host, _dir) = serve();
    let out = run(&host, &["run", "broken"]);
    assert_eq!(text(&out.stderr), "Error response from daemon: no space left on device\n");
    assert_eq!(out.status.code(), Some(125));
}

/// `run --rm` that fails before the start leaves no created container.
#[test]
fn run_rm_removes_what_it_created_when_the_attach_fails() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["run", "--rm", "noattach"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not reachable"), "{}", text(&out.stderr));
    assert_eq!(calls(&fake), ["Create", "Attach", "Remove"]);
    let (fake, host, _dir) = serve();
    assert_eq!(run(&host, &["run", "noattach"]).status.code(), Some(125));
    assert_eq!(calls(&fake), ["Create", "Attach"], "without --rm the container stays, as docker's");
}

#[test]
fn a_command_that_cannot_run_exits_127() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["run", "nocmd", "nope"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("executable file not found"), "{}", text(&out.stderr));
    assert_eq!(calls(&fake), ["Create", "Attach", "Start"]);
}

#[test]
fn a_missing_daemon_is_reported() {
    let out = run("unix:///nonexistent/tote.sock", &["ps"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("cannot connect to toted at /nonexistent/tote.sock"), "{}", text(&out.stderr));
}

#[test]
fn ps_formats_with_templates() {
    let (_fake, host, _dir) = serve();
    let out = run(&host, &["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.State}}"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "4f1c2a9d8e7b web running\n0123456789ab old exited\n");
    let out = run(&host, &["ps", "-q"]);
    assert_eq!(text(&out.stdout), "4f1c2a9d8e7b\n");
    let out = run(&host, &["ps"]);
    assert!(text(&out.stdout).starts_with("CONTAINER ID   IMAGE     COMMAND        CREATED"), "{}", text(&out.stdout));
}

#[test]
fn logs_split_streams_and_show_timestamps() {
    let (_fake, host, _dir) = serve();
    let out = run(&host, &["logs", "-t", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "2024-01-02T15:04:05.000000001Z first line\n2024-01-02T15:04:07.000000003Z split line\n"
    );
    assert_eq!(text(&out.stderr), "2024-01-02T15:04:06.000000002Z an error\n");
    let out = run(&host, &["logs", "web"]);
    assert_eq!(text(&out.stdout), "first line\nsplit line\n");
}

#[test]
fn environment_comes_from_flags_files_and_the_client() {
    let (fake, host, dir) = serve();
    let env_file: PathBuf = dir.0.join("app.env");
    std::fs::write(&env_file, "# settings\n\nFROM_FILE=1\nPASSED_THROUGH\nNOT_SET_ANYWHERE\n").unwrap();
    let out = tote(
        &host,
        &[
            "run",
            "-d",
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "FOO",
            "-e",
            "BAR=2",
            "-e",
            "UNSET_TOO",
            "busybox",
        ],
    )
    .env("FOO", "from the client")
    .env("PASSED_THROUGH", "yes")
    .env_remove("NOT_SET_ANYWHERE")
    .env_remove("UNSET_TOO")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = fake.seen.lock().unwrap().configs[0].clone();
    assert_eq!(config.env, ["FROM_FILE=1", "PASSED_THROUGH=yes", "FOO=from the client", "BAR=2"]);
}

#[test]
fn dash_it_needs_a_terminal() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["run", "-it", "busybox", "sh"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(text(&out.stderr), "the input device is not a TTY\n");
    assert!(calls(&fake).is_empty());
}

/// With stderr on a terminal, the pull draws indicatif bars; it must still
/// end, and the container's output and code must still come through.
#[test]
fn pull_progress_bars_on_a_terminal() {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    let (fake, host, _dir) = serve();
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child =
        tote(&host, &["run", "missing"]).stdout(Stdio::piped()).stderr(std::fs::File::from(pty.slave)).spawn().unwrap();
    let mut master = std::fs::File::from(pty.master);
    nix::fcntl::fcntl(master.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut screen = Vec::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let _ = master.read_to_end(&mut screen);
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "tote run did not end");
        // Keep the terminal drained so tote never blocks writing to it.
        let mut buffer = [0u8; 4096];
        if let Ok(read) = master.read(&mut buffer) {
            screen.extend_from_slice(&buffer[..read]);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert_eq!(stdout, "hello from the container\n");
    assert_eq!(status.code(), Some(3));
    assert_eq!(calls(&fake), ["Create", "Pull", "Create", "Attach", "Start"]);
    let screen = text(&screen);
    assert!(screen.contains("9ad63333ebc9: Pull complete"), "{screen:?}");
    assert!(screen.contains("Status: Downloaded newer image for missing:latest"), "{screen:?}");
}

#[test]
fn system_df_prints_dockers_rows_and_partial_downloads() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["system", "df"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "TYPE                TOTAL     ACTIVE    SIZE      RECLAIMABLE\n\
         Images              2         1         5MB       1MB (20%)\n\
         Containers          1         1         0B        0B\n\
         Local Volumes       0         0         0B        0B\n\
         Build Cache         0         0         0B        0B\n\
         Partial Downloads   1         0         100kB     100kB (100%)\n"
    );
    let out = run(&host, &["system", "df", "--format", "{{json .}}"]);
    let last = text(&out.stdout).lines().last().unwrap().to_string();
    let row: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(row["Type"], "Partial Downloads");
    assert_eq!(row["TotalCount"], "1");
    assert_eq!(calls(&fake), ["DiskUsage", "DiskUsage"]);
}

#[test]
fn image_prune_asks_first_and_no_means_nothing_is_removed() {
    let (fake, host, _dir) = serve();
    // stdin is empty: no answer is a no, and tote ends with 0 as docker does.
    let out = run(&host, &["image", "prune"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "WARNING! This will remove all dangling images.\n\
         It will also remove the partial downloads of interrupted pulls.\n\
         Are you sure you want to continue? [y/N] "
    );
    assert!(calls(&fake).is_empty());

    let mut child =
        tote(&host, &["image", "prune", "-a"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("WARNING! This will remove all images without at least one container"), "{stdout}");
    assert!(stdout.ends_with("Total reclaimed space: 1.1MB\n"), "{stdout}");
    assert_eq!(calls(&fake), ["PruneAll"]);
}

#[test]
fn image_prune_force_prints_what_went() {
    let (fake, host, _dir) = serve();
    let out = run(&host, &["image", "prune", "-f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "Deleted Images:\ndeleted: sha256:feed\n\n\
         Deleted Partial Downloads:\ndeleted: sha256:beef\n\n\
         Total reclaimed space: 1.1MB\n"
    );
    let out = run(&host, &["image", "prune", "-af"]);
    assert!(text(&out.stdout).starts_with("Deleted Images:\nuntagged: alpine:3.20\n"), "{}", text(&out.stdout));
    assert_eq!(calls(&fake), ["Prune", "PruneAll"]);
    let out = run(&host, &["image", "prune", "extra"]);
    assert_eq!(out.status.code(), Some(125), "a usage error");
}
