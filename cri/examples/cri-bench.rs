//! A CRI client for timing pod start and teardown against any CRI runtime
//! (toted, containerd's CRI plugin, ...), driven by `bench/cri/run`.
//!
//! ```text
//! cri-bench --endpoint unix:///run/x.sock version
//! cri-bench --endpoint unix:///run/x.sock pull IMAGE...
//! cri-bench --endpoint unix:///run/x.sock cycle --runs N [OPTIONS]
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
use std::time::Instant;

use serde_json::{Value, json};
use tonic::transport::Channel;
use tote_cri::api;
use tote_cri::api::image_service_client::ImageServiceClient;
use tote_cri::api::runtime_service_client::RuntimeServiceClient;

const LABEL: &str = "tote-bench-cri";
const DEFAULT_IMAGE: &str = "127.0.0.1:5000/e2e-test-images/busybox:1.29-2";

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
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn usage() -> ! {
    eprintln!(
        "usage: cri-bench --endpoint unix:///SOCK [--image REF] [--cgroup-parent /P] [--log-dir DIR] \
         [--prefix NAME] [--runs N] version|pull IMAGE...|cycle|serve|cleanup"
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

    fn container_config(&self) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata { name: "sleep".into(), attempt: 0 }),
            image: Some(api::ImageSpec { image: self.opts.image.clone(), ..Default::default() }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: "sleep/0.log".into(),
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

    /// RunPodSandbox + CreateContainer + StartContainer; returns the
    /// sandbox id and the timings.
    async fn start_pod(&mut self) -> Result<(String, Value), Error> {
        let config = self.sandbox_config()?;
        let container = self.container_config();
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
        if let Err(e) = self.runtime.start_container(api::StartContainerRequest { container_id: id }).await {
            self.teardown(&pod).await.ok();
            return Err(e.into());
        }
        let start_ms = ms(t);
        let total = ms(t0);
        Ok((pod, json!({ "run_pod_ms": run_ms, "create_ms": create_ms, "start_ms": start_ms, "pod_start_ms": total })))
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
                _ => Err(format!("unknown command {line:?}").into()),
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
            served
        }
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("cri-bench: {}", error_text(e.as_ref()));
        std::process::exit(1);
    }
}
