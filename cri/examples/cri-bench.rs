//! A CRI client for timing pod start and teardown, exec and port-forward
//! against any CRI runtime (toted, containerd's CRI plugin, ...), driven by
//! `bench/cri/run`.
//!
//! ```text
//! cri-bench --endpoint unix:///run/x.sock version
//! cri-bench --endpoint unix:///run/x.sock pull IMAGE...
//! cri-bench --endpoint unix:///run/x.sock cycle --runs N [OPTIONS]
//! cri-bench --endpoint unix:///run/x.sock exec-sync|exec|port-forward BYTES --runs N [OPTIONS]
//! cri-bench --endpoint unix:///run/x.sock serve [OPTIONS]
//! cri-bench --endpoint unix:///run/x.sock cleanup
//! ```
//!
//! One *cycle* is what the kubelet does to start a one-container pod whose
//! image is present, and to tear it down:
//! pod start = RunPodSandbox (pod network, PID namespace per container) +
//! CreateContainer (`sleep 3600`) + StartContainer; teardown =
//! StopPodSandbox + RemovePodSandbox. Each call is timed on the client
//! (from the request being sent until its answer), and every cycle prints
//! one JSON line with the milliseconds of each call and the two sums.
//!
//! `serve` reads commands from stdin, one per line, so that a driver can
//! interleave runtimes on warm connections: `cycle` (one cycle, one JSON
//! line), `hold N` (start N pods and keep them; one JSON line when all
//! run), `release` (tear the held pods down; one JSON line), `quit`.
//!
//! The streaming commands use one *stream pod* (a busybox container running
//! `nc -ll -p 8080 -e sh -c SINK`, started by the first of them or by
//! `stream-pod`, torn down by `stream-done` or at exit), each answering one
//! JSON line:
//!
//! - `exec-sync`: ExecSync of `true`, timed per call;
//! - `exec`: an Exec session as `kubectl exec POD -- true` runs it: the Exec
//!   RPC, its URL upgraded to SPDY/3.1 (remote-command v4), the error,
//!   stdout and stderr streams opened, and all three read to their end (the
//!   exit status is checked), timed from the RPC on;
//! - `port-forward BYTES`: the PortForward RPC, its URL upgraded to SPDY
//!   (`portforward.k8s.io`), a data/error stream pair to port 8080, then
//!   `BYTES\n` and BYTES zeros on the data stream; the pod's SINK reads
//!   exactly BYTES and answers `ok`, which ends the timed transfer (MiB/s);
//!   then FIN and the stream's end (timed apart: containerd closes the
//!   pod's side up to a second after the client's FIN, as the kubelet did).
//!
//! Both runtimes get the same client code: tote-stream's SPDY client.
//!
//! Options: `--image` (default
//! `127.0.0.1:5000/e2e-test-images/busybox:1.29-2`), `--cgroup-parent`
//! (the pods' parent cgroup; each pod gets `<parent>/pod<uid>` as the
//! kubelet's cgroupfs layout does), `--log-dir` (each pod's log
//! directory is made under it, as the kubelet makes it), `--prefix` (pod
//! names). Every pod carries the label `tote-bench-cri=1`; `cleanup` stops
//! and removes every pod with it.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::transport::Channel;
use tote_cri::api;
use tote_cri::api::image_service_client::ImageServiceClient;
use tote_cri::api::runtime_service_client::RuntimeServiceClient;
use tote_stream::spdy::client as spdy;

const LABEL: &str = "tote-bench-cri";
const DEFAULT_IMAGE: &str = "127.0.0.1:5000/e2e-test-images/busybox:1.29-2";
/// The stream pod's port, and the same in /proc/net/tcp's hex (busybox nc
/// listens on IPv6, so it is in tcp6).
const SINK_PORT: u16 = 8080;
const SINK_PORT_HEX: &str = "1F90";
/// Per port-forward connection: reads the byte count, swallows exactly
/// that many bytes and says so; nothing waits for the client's FIN, so
/// runtimes that close the pod's side late are not timed for it.
const SINK: &str = "read n; dd of=/dev/null bs=1048576 count=$n iflag=count_bytes,fullblock 2>/dev/null; echo ok";
/// What client-go's SPDY executor offers, newest first.
const REMOTE_COMMAND: [&str; 4] = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

type Error = Box<dyn std::error::Error>;

struct Options {
    endpoint: String,
    image: String,
    cgroup_parent: String,
    log_dir: PathBuf,
    prefix: String,
    runs: usize,
}

struct Bench {
    opts: Options,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Pods started so far, for unique names.
    started: usize,
    held: Vec<String>,
    /// The stream pod and its container, once started.
    stream: Option<(String, String)>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn usage() -> ! {
    eprintln!(
        "usage: cri-bench --endpoint unix:///SOCK [--image REF] [--cgroup-parent /P] [--log-dir DIR] \
         [--prefix NAME] [--runs N] version|pull IMAGE...|cycle|exec-sync|exec|port-forward BYTES|serve|cleanup"
    );
    std::process::exit(2)
}

fn parse() -> (Options, String, Vec<String>) {
    let mut opts = Options {
        endpoint: String::new(),
        image: DEFAULT_IMAGE.into(),
        cgroup_parent: String::new(),
        log_dir: std::env::temp_dir().join("cri-bench-logs"),
        prefix: "bench".into(),
        runs: 1,
    };
    let mut args = std::env::args().skip(1);
    let mut command = None;
    let mut rest = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--endpoint" => opts.endpoint = value(),
            "--image" => opts.image = value(),
            "--cgroup-parent" => opts.cgroup_parent = value(),
            "--log-dir" => opts.log_dir = value().into(),
            "--prefix" => opts.prefix = value(),
            "--runs" => opts.runs = value().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => usage(),
            _ if command.is_none() => command = Some(arg),
            _ => rest.push(arg),
        }
    }
    let command = command.unwrap_or_else(|| usage());
    if opts.endpoint.is_empty() {
        usage();
    }
    (opts, command, rest)
}

fn namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Bench {
    fn sandbox_config(&mut self) -> Result<api::PodSandboxConfig, Error> {
        self.started += 1;
        let name = format!("{}-{}-{}", self.opts.prefix, std::process::id(), self.started);
        let uid = format!("{:08x}-{:04x}-4000-8000-{:012x}", std::process::id(), self.started, self.started);
        let log_directory = self.opts.log_dir.join(format!("default_{name}_{uid}"));
        std::fs::create_dir_all(&log_directory)?;
        let cgroup_parent = if self.opts.cgroup_parent.is_empty() {
            String::new()
        } else {
            format!("{}/pod{uid}", self.opts.cgroup_parent)
        };
        Ok(api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.clone(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name,
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: HashMap::from([(LABEL.to_string(), "1".to_string())]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn container_config(&self, name: &str, command: &[&str]) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(api::ImageSpec { image: self.opts.image.clone(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([(LABEL.to_string(), "1".to_string())]),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox + CreateContainer + StartContainer of `sleep 3600`;
    /// returns the sandbox id and the timings.
    async fn start_pod(&mut self) -> Result<(String, Value), Error> {
        self.start_pod_with("sleep", &["sleep", "3600"]).await.map(|(pod, _, timings)| (pod, timings))
    }

    /// RunPodSandbox + CreateContainer + StartContainer; returns the
    /// sandbox and container ids and the timings.
    async fn start_pod_with(&mut self, name: &str, command: &[&str]) -> Result<(String, String, Value), Error> {
        let config = self.sandbox_config()?;
        let container = self.container_config(name, command);
        let t0 = Instant::now();
        let t = Instant::now();
        let pod = self
            .runtime
            .run_pod_sandbox(api::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let run_ms = ms(t);
        let t = Instant::now();
        let created = self
            .runtime
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container),
                sandbox_config: Some(config),
            })
            .await;
        let id = match created {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                self.teardown(&pod).await.ok();
                return Err(e.into());
            }
        };
        let create_ms = ms(t);
        let t = Instant::now();
        if let Err(e) = self.runtime.start_container(api::StartContainerRequest { container_id: id.clone() }).await {
            self.teardown(&pod).await.ok();
            return Err(e.into());
        }
        let start_ms = ms(t);
        let total = ms(t0);
        let timings =
            json!({ "run_pod_ms": run_ms, "create_ms": create_ms, "start_ms": start_ms, "pod_start_ms": total });
        Ok((pod, id, timings))
    }

    /// StopPodSandbox + RemovePodSandbox.
    async fn teardown(&mut self, pod: &str) -> Result<Value, Error> {
        let t0 = Instant::now();
        self.runtime.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: pod.into() }).await?;
        let stop_ms = ms(t0);
        let t = Instant::now();
        self.runtime.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: pod.into() }).await?;
        let remove_ms = ms(t);
        Ok(json!({ "stop_pod_ms": stop_ms, "remove_pod_ms": remove_ms, "teardown_ms": ms(t0) }))
    }

    async fn cycle(&mut self) -> Result<Value, Error> {
        let (pod, mut start) = self.start_pod().await?;
        let down = self.teardown(&pod).await?;
        start.as_object_mut().expect("an object").extend(down.as_object().expect("an object").clone());
        Ok(start)
    }

    /// The stream pod, started (and its server listening) on first use.
    async fn stream_pod(&mut self) -> Result<(String, String), Error> {
        if let Some(pod) = &self.stream {
            return Ok(pod.clone());
        }
        let port = SINK_PORT.to_string();
        let (pod, container, _) =
            self.start_pod_with("sink", &["nc", "-ll", "-p", &port, "-e", "sh", "-c", SINK]).await?;
        self.stream = Some((pod.clone(), container.clone()));
        let listening = format!("grep -q ':{SINK_PORT_HEX} [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let request = api::ExecSyncRequest {
                container_id: container.clone(),
                cmd: vec!["sh".into(), "-c".into(), listening.clone()],
                timeout: 10,
            };
            if self.runtime.exec_sync(request).await?.into_inner().exit_code == 0 {
                return Ok((pod, container));
            }
            if Instant::now() > deadline {
                return Err(format!("nothing listens on port {SINK_PORT} in the stream pod after 20 s").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stream_done(&mut self) -> Result<Value, Error> {
        match self.stream.take() {
            Some((pod, _)) => self.teardown(&pod).await,
            None => Ok(json!({})),
        }
    }

    /// ExecSync of `true`.
    async fn exec_sync(&mut self) -> Result<Value, Error> {
        let (_, container) = self.stream_pod().await?;
        let request = api::ExecSyncRequest { container_id: container, cmd: vec!["true".into()], timeout: 0 };
        let t = Instant::now();
        let answer = self.runtime.exec_sync(request).await?.into_inner();
        let exec_sync_ms = ms(t);
        if answer.exit_code != 0 {
            return Err(format!("`true` exited with {}", answer.exit_code).into());
        }
        Ok(json!({ "exec_sync_ms": exec_sync_ms }))
    }

    /// `kubectl exec POD -- true` as the kubelet proxies it: Exec, then
    /// its URL over SPDY, to the exit status.
    async fn exec_session(&mut self) -> Result<Value, Error> {
        let (_, container) = self.stream_pod().await?;
        let request = api::ExecRequest {
            container_id: container,
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        };
        let t0 = Instant::now();
        let url = self.runtime.exec(request).await?.into_inner().url;
        let rpc_ms = ms(t0);
        let t = Instant::now();
        let conn = spdy::connect(&url, &REMOTE_COMMAND).await?;
        if conn.protocol() != REMOTE_COMMAND[0] {
            return Err(format!("the server chose {}, not {}", conn.protocol(), REMOTE_COMMAND[0]).into());
        }
        let upgrade_ms = ms(t);
        let mut error = conn.open(&[("streamtype", "error")]).await?;
        let mut stdout = conn.open(&[("streamtype", "stdout")]).await?;
        let mut stderr = conn.open(&[("streamtype", "stderr")]).await?;
        let session = async { tokio::try_join!(error.read_to_end(), stdout.read_to_end(), stderr.read_to_end()) };
        let (status, _, _) = tokio::time::timeout(Duration::from_secs(60), session).await??;
        let session_ms = ms(t0);
        conn.close().await;
        let status: Value = serde_json::from_slice(&status)?;
        if status["status"] != "Success" {
            return Err(format!("`true` did not succeed: {status}").into());
        }
        Ok(json!({ "exec_rpc_ms": rpc_ms, "exec_upgrade_ms": upgrade_ms, "exec_session_ms": session_ms }))
    }

    /// `bytes` through a port-forward to the stream pod's sink.
    async fn port_forward(&mut self, bytes: u64) -> Result<Value, Error> {
        let (pod, _) = self.stream_pod().await?;
        let t0 = Instant::now();
        let request = api::PortForwardRequest { pod_sandbox_id: pod, port: vec![i32::from(SINK_PORT)] };
        let url = self.runtime.port_forward(request).await?.into_inner().url;
        let conn = spdy::connect(&url, &["portforward.k8s.io"]).await?;
        let port = SINK_PORT.to_string();
        // client-go's pair: error, then data; it closes its side of the
        // error stream at once.
        let mut error = conn.open(&[("streamtype", "error"), ("port", &port), ("requestid", "0")]).await?;
        error.finish()?;
        let data = conn.open(&[("streamtype", "data"), ("port", &port), ("requestid", "0")]).await?;
        let setup_ms = ms(t0);
        let (mut from_pod, mut to_pod) = data.split();
        let block = spdy::Bytes::from(vec![0u8; 1 << 20]);
        let t = Instant::now();
        // Sending and reading at once: the pod's side may end early (no
        // server, or it failed), and then nothing reads what we send.
        let (sent, got) = {
            let send = async {
                to_pod.write(format!("{bytes}\n")).await?;
                let mut left = bytes;
                while left > 0 {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
                    to_pod.write(block.slice(..n)).await?;
                    left -= n as u64;
                }
                Ok::<_, spdy::Error>(())
            };
            let ack = async {
                let mut got = Vec::new();
                while let Some(chunk) = from_pod.read().await? {
                    got.extend_from_slice(&chunk);
                    if got.ends_with(b"\n") {
                        break;
                    }
                }
                Ok::<_, spdy::Error>(got)
            };
            tokio::pin!(send, ack);
            let mut sent = false;
            let transfer = async {
                loop {
                    tokio::select! {
                        done = &mut send, if !sent => {
                            done?;
                            sent = true;
                        }
                        got = &mut ack => break got,
                    }
                }
            };
            let got = tokio::time::timeout(Duration::from_secs(600), transfer).await??;
            (sent, got)
        };
        let transfer_ms = ms(t);
        if !sent || got != b"ok\n" {
            let message = error.read_to_end().await.unwrap_or_default();
            return Err(format!(
                "the pod's side answered {:?} (error stream: {:?})",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&message)
            )
            .into());
        }
        let t = Instant::now();
        to_pod.finish()?;
        let rest = tokio::time::timeout(Duration::from_secs(30), from_pod.read_to_end()).await??;
        let message = error.read_to_end().await?;
        let end_ms = ms(t);
        conn.close().await;
        if !rest.is_empty() || !message.is_empty() {
            return Err(
                format!("after the transfer: {rest:?}, error stream {:?}", String::from_utf8_lossy(&message)).into()
            );
        }
        let mib_s = bytes as f64 / f64::from(1 << 20) / (transfer_ms / 1000.0);
        Ok(json!({ "bytes": bytes, "pf_setup_ms": setup_ms, "pf_transfer_ms": transfer_ms, "pf_mib_s": mib_s,
                   "pf_end_ms": end_ms }))
    }

    /// One streaming command, by its words.
    async fn stream_command(&mut self, words: &[&str]) -> Option<Result<Value, Error>> {
        Some(match words {
            ["stream-pod"] => {
                self.stream_pod().await.map(|(pod, container)| json!({ "pod": pod, "container": container }))
            }
            ["stream-done"] => self.stream_done().await,
            ["exec-sync"] => self.exec_sync().await,
            ["exec"] => self.exec_session().await,
            ["port-forward", bytes] => match bytes.parse() {
                Ok(bytes) => self.port_forward(bytes).await,
                Err(_) => Err(format!("port-forward takes a byte count, not {bytes:?}").into()),
            },
            _ => return None,
        })
    }

    async fn hold(&mut self, n: usize) -> Result<Value, Error> {
        let t0 = Instant::now();
        for _ in 0..n {
            let (pod, _) = self.start_pod().await?;
            self.held.push(pod);
        }
        let listed = self.list_ours().await?.len();
        Ok(json!({ "held": self.held.len(), "listed": listed, "seconds": t0.elapsed().as_secs_f64() }))
    }

    async fn release(&mut self) -> Result<Value, Error> {
        let t0 = Instant::now();
        let pods = std::mem::take(&mut self.held);
        for pod in &pods {
            self.teardown(pod).await?;
        }
        Ok(json!({ "released": pods.len(), "seconds": t0.elapsed().as_secs_f64() }))
    }

    async fn list_ours(&mut self) -> Result<Vec<String>, Error> {
        let filter = api::PodSandboxFilter {
            label_selector: HashMap::from([(LABEL.to_string(), "1".to_string())]),
            ..Default::default()
        };
        let items = self
            .runtime
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: Some(filter) })
            .await?
            .into_inner()
            .items;
        Ok(items.into_iter().map(|p| p.id).collect())
    }

    async fn cleanup(&mut self) -> Result<Value, Error> {
        let pods = self.list_ours().await?;
        let mut failed = Vec::new();
        for pod in &pods {
            if let Err(e) = self.teardown(pod).await {
                failed.push(format!("{pod}: {e}"));
            }
        }
        Ok(json!({ "removed": pods.len() - failed.len(), "failed": failed }))
    }

    async fn version(&mut self) -> Result<Value, Error> {
        let v = self.runtime.version(api::VersionRequest { version: String::new() }).await?.into_inner();
        Ok(json!({ "runtime_name": v.runtime_name, "runtime_version": v.runtime_version,
                   "runtime_api_version": v.runtime_api_version }))
    }

    async fn pull(&mut self, refs: &[String]) -> Result<Value, Error> {
        let mut out = Vec::new();
        for image in refs {
            let t = Instant::now();
            let image_ref = self
                .images
                .pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec { image: image.clone(), ..Default::default() }),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .image_ref;
            out.push(json!({ "image": image, "image_ref": image_ref, "ms": ms(t) }));
        }
        Ok(Value::Array(out))
    }

    async fn serve(&mut self) -> Result<(), Error> {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["cycle"] => self.cycle().await,
                ["hold", n] => match n.parse() {
                    Ok(n) => self.hold(n).await,
                    Err(_) => Err(format!("hold takes a number, not {n:?}").into()),
                },
                ["release"] => self.release().await,
                ["cleanup"] => self.cleanup().await,
                ["quit"] | [] => break,
                words => match self.stream_command(words).await {
                    Some(answer) => answer,
                    None => Err(format!("unknown command {line:?}").into()),
                },
            };
            print_answer(answer);
        }
        Ok(())
    }
}

fn print_answer(answer: Result<Value, Error>) {
    let value = answer.unwrap_or_else(|e| json!({ "error": error_text(e.as_ref()) }));
    println!("{value}");
}

fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return format!("{:?}: {}", status.code(), status.message());
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (opts, command, rest) = parse();
    let channel = match tote_api::connect(&opts.endpoint).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cri-bench: {}", error_text(&e));
            std::process::exit(1);
        }
    };
    let mut bench = Bench {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
        opts,
        started: 0,
        held: Vec::new(),
        stream: None,
    };
    let result = match command.as_str() {
        "version" => bench.version().await.map(|v| println!("{v}")),
        "pull" => bench.pull(&rest).await.map(|v| println!("{v}")),
        "cleanup" => bench.cleanup().await.map(|v| println!("{v}")),
        "cycle" => {
            let mut failed = false;
            for _ in 0..bench.opts.runs {
                let answer = bench.cycle().await;
                failed |= answer.is_err();
                print_answer(answer);
            }
            if failed { Err("a cycle failed".into()) } else { Ok(()) }
        }
        "serve" => {
            let served = bench.serve().await;
            // Whatever is still held when stdin ends goes too.
            if !bench.held.is_empty() {
                print_answer(bench.release().await);
            }
            if bench.stream.is_some() {
                print_answer(bench.stream_done().await);
            }
            served
        }
        "exec-sync" | "exec" | "port-forward" => {
            let words: Vec<&str> = std::iter::once(command.as_str()).chain(rest.iter().map(String::as_str)).collect();
            let mut failed = false;
            for _ in 0..bench.opts.runs {
                let answer = bench.stream_command(&words).await.unwrap_or_else(|| usage());
                failed |= answer.is_err();
                print_answer(answer);
            }
            if bench.stream.is_some() {
                print_answer(bench.stream_done().await);
            }
            if failed { Err("a run failed".into()) } else { Ok(()) }
        }
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("cri-bench: {}", error_text(e.as_ref()));
        std::process::exit(1);
    }
}
