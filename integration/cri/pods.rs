//! Pods and their containers through the CRI, as a kubelet drives them:
//! real busybox containers in pods toted runs, shares and tears down.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use tote_cri::api::runtime_service_client::RuntimeServiceClient;
use tote_cri::api::*;

use crate::support::Toted;

const BUSYBOX: &str = "docker.io/library/busybox:latest";

pub(crate) type Runtime = RuntimeServiceClient<Channel>;

pub(crate) fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "tests".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: logs.display().to_string(),
        labels: HashMap::from([("suite".to_string(), "cri".to_string()), ("pod".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { pid: NamespaceMode::Container as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn container_config(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        ..Default::default()
    }
}

pub(crate) async fn run_pod(rt: &mut Runtime, config: &PodSandboxConfig) -> String {
    let request = RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() };
    rt.run_pod_sandbox(request).await.unwrap().into_inner().pod_sandbox_id
}

pub(crate) async fn create(
    rt: &mut Runtime,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    rt.create_container(request).await.unwrap().into_inner().container_id
}

pub(crate) async fn start(rt: &mut Runtime, id: &str) {
    rt.start_container(StartContainerRequest { container_id: id.into() }).await.unwrap();
}

pub(crate) async fn status(rt: &mut Runtime, id: &str) -> ContainerStatus {
    let request = ContainerStatusRequest { container_id: id.into(), verbose: false };
    rt.container_status(request).await.unwrap().into_inner().status.unwrap()
}

async fn pod_status(rt: &mut Runtime, id: &str) -> PodSandboxStatus {
    let request = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
    rt.pod_sandbox_status(request).await.unwrap().into_inner().status.unwrap()
}

pub(crate) async fn exec(
    rt: &mut Runtime,
    id: &str,
    script: &str,
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    let request =
        ExecSyncRequest { container_id: id.into(), cmd: vec!["sh".into(), "-c".into(), script.into()], timeout };
    rt.exec_sync(request).await.map(|r| r.into_inner())
}

pub(crate) async fn wait_exited(rt: &mut Runtime, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = status(rt, id).await;
        if found.state == ContainerState::ContainerExited as i32 {
            return found;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit: {found:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn remove_pod(rt: &mut Runtime, id: &str) {
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// What a removed pod must not leave: pinned namespaces, monitors,
/// container directories, sandbox files.
pub(crate) fn assert_nothing_left(toted: &Toted) {
    let state = toted.dir.join("s");
    for dir in [
        state.join("netns"),
        state.join("podns"),
        state.join("m"),
        toted.root.join("containers"),
        toted.root.join("sandboxes"),
    ] {
        assert!(entries(&dir).is_empty(), "{} still holds {:?}", dir.display(), entries(&dir));
    }
}

/// Two containers in one pod: one serves on the pod's 127.0.0.1, the
/// other reaches it; both see the pod's hostname; logs are in the CRI
/// format where the kubelet asked; the pod's network outlives a container
/// that exits; stop and remove are idempotent and leave nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_pods_containers_share_its_network_and_its_network_outlives_them() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let logs = toted.dir.join("logs/web");
    let config = pod_config("web", &logs);
    let pod = run_pod(&mut rt, &config).await;
    let found = pod_status(&mut rt, &pod).await;
    assert_eq!(found.state, PodSandboxState::SandboxReady as i32);
    let ip = found.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "the pod has an address: {found:?}");

    let server = create(
        &mut rt,
        &pod,
        &config,
        container_config("server", "echo serving; hostname > /tmp/h; httpd -f -p 127.0.0.1:8080 -h /tmp"),
    )
    .await;
    let client = create(&mut rt, &pod, &config, container_config("client", "echo once; exit 3")).await;
    let sleeper = create(&mut rt, &pod, &config, container_config("sleeper", "sleep 600")).await;
    for id in [&server, &client, &sleeper] {
        start(&mut rt, id).await;
    }
    let exited = wait_exited(&mut rt, &client).await;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (3, "Error"), "{exited:?}");
    assert!(exited.finished_at >= exited.started_at && exited.started_at >= exited.created_at, "{exited:?}");
    assert_eq!(exited.log_path, logs.join("client.log").display().to_string());

    // The client is gone; the pod's loopback and address still serve.
    let mut fetched = String::new();
    for _ in 0..100 {
        let out = exec(&mut rt, &sleeper, "wget -qO- http://127.0.0.1:8080/h", 10).await.unwrap();
        fetched = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetched, "web-host\n", "the pod's hostname, served on its loopback");
    let out = exec(&mut rt, &sleeper, "echo out; echo err >&2; exit 7", 0).await.unwrap();
    assert_eq!((out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code), (&b"out\n"[..], &b"err\n"[..], 7));
    let timed_out = exec(&mut rt, &sleeper, "sleep 30", 1).await.unwrap_err();
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");

    let log = std::fs::read_to_string(logs.join("server.log")).unwrap();
    let line = log.lines().next().unwrap_or_default();
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields[1..], ["stdout", "F", "serving"], "CRI log format: {line:?}");
    assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "{line:?}");

    // Listing by pod, by state and by label.
    let list = |filter: ContainerFilter| ListContainersRequest { filter: Some(filter) };
    let running = rt
        .list_containers(list(ContainerFilter {
            pod_sandbox_id: pod.clone(),
            state: Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    let mut ids: Vec<&str> = running.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![server.as_str(), sleeper.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let labelled = rt
        .list_containers(list(ContainerFilter {
            label_selector: HashMap::from([("container".to_string(), "client".to_string())]),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(labelled.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [client.as_str()]);
    assert_eq!(labelled[0].metadata.as_ref().unwrap().name, "client");

    // Stop: every container killed, the network released, listed not ready.
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(pod_status(&mut rt, &pod).await.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(status(&mut rt, &sleeper).await.state, ContainerState::ContainerExited as i32);
    assert!(entries(&toted.dir.join("s/netns")).is_empty(), "the network namespace went with the stop");
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);

    // Unknown ids: stop and remove succeed (the CRI makes them idempotent),
    // status is NotFound.
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    remove_pod(&mut rt, &pod).await;
    rt.stop_container(StopContainerRequest { container_id: "0123456789ab".into(), timeout: 0 }).await.unwrap();
    rt.remove_container(RemoveContainerRequest { container_id: "0123456789ab".into() }).await.unwrap();
    let missing = rt
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing =
        rt.container_status(ContainerStatusRequest { container_id: server, verbose: false }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// A shared PID namespace (Kubernetes' shareProcessNamespace): tote-shim
/// pod-init is PID 1 and each container sees the others' processes.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_sharing_its_pid_namespace_has_its_own_init() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let mut config = pod_config("shared", &toted.dir.join("logs/shared"));
    config.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid =
        NamespaceMode::Pod as i32;
    let pod = run_pod(&mut rt, &config).await;
    let a = create(&mut rt, &pod, &config, container_config("a", "sleep 600")).await;
    let b = create(&mut rt, &pod, &config, container_config("b", "sleep 601")).await;
    start(&mut rt, &a).await;
    start(&mut rt, &b).await;
    let out = exec(&mut rt, &b, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o args", 10).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("tote-shim pod-init") || text.lines().next().unwrap_or("").contains("pod-init"), "{text}");
    assert!(text.contains("sleep 600") && text.contains("sleep 601"), "{text}");
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    assert_eq!(status(&mut rt, &a).await.state, ContainerState::ContainerExited as i32);
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}

/// toted SIGKILLed with a pod running: the next toted lists the pod ready
/// and its containers with their true states, and exec still works.
#[tokio::test(flavor = "multi_thread")]
async fn pods_survive_a_toted_restart_with_their_true_state() {
    let mut toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let config = pod_config("restart", &toted.dir.join("logs/restart"));
    let pod = run_pod(&mut rt, &config).await;
    let long = create(&mut rt, &pod, &config, container_config("long", "sleep 600")).await;
    let short = create(&mut rt, &pod, &config, container_config("short", "exit 0")).await;
    start(&mut rt, &long).await;
    start(&mut rt, &short).await;
    wait_exited(&mut rt, &short).await;
    toted.kill_and_restart();
    let mut rt = toted.runtime().await;
    let pods = rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert_eq!(
        pods.iter().map(|p| (p.id.as_str(), p.state)).collect::<Vec<_>>(),
        [(pod.as_str(), PodSandboxState::SandboxReady as i32)]
    );
    assert_eq!(status(&mut rt, &long).await.state, ContainerState::ContainerRunning as i32);
    let done = status(&mut rt, &short).await;
    assert_eq!((done.state, done.reason.as_str()), (ContainerState::ContainerExited as i32, "Completed"));
    let out = exec(&mut rt, &long, "hostname", 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "restart-host\n");
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}

/// Bad input gets the CRI's codes, naming what is wrong, and leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_cris_codes_and_leaves_nothing() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let logs = toted.dir.join("logs/bad");
    let config = pod_config("bad", &logs);

    let mut unsafe_sysctl = config.clone();
    unsafe_sysctl.linux.as_mut().unwrap().sysctls = HashMap::from([("vm.swappiness".to_string(), "1".to_string())]);
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(unsafe_sysctl), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("vm.swappiness"), "{err:?}");
    assert_nothing_left(&toted);

    let pod = run_pod(&mut rt, &config).await;
    let attempt = |config: ContainerConfig, pod: &str| CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: None,
    };
    let err = rt.create_container(attempt(container_config("x", "true"), "feedfacefeed")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let mut missing_image = container_config("noimage", "true");
    missing_image.image = Some(ImageSpec { image: "docker.io/library/nothing-here:1".into(), ..Default::default() });
    let err = rt.create_container(attempt(missing_image, &pod)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("nothing-here"), "{err:?}");

    let mut bad_seccomp = container_config("seccomp", "true");
    bad_seccomp.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: security_profile::ProfileType::Localhost as i32,
                localhost_ref: toted.dir.join("no-such-profile.json").display().to_string(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rt.create_container(attempt(bad_seccomp, &pod)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("no-such-profile.json"), "{err:?}");

    let mut no_source = container_config("mount", "true");
    no_source.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: toted.dir.join("no-such-dir").display().to_string(),
        ..Default::default()
    }];
    let err = rt.create_container(attempt(no_source, &pod)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("no-such-dir"), "{err:?}");

    // A log directory that cannot be written: a file where it should be.
    let blocked = toted.dir.join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let mut blocked_config = config.clone();
    blocked_config.metadata.as_mut().unwrap().name = "blocked".into();
    blocked_config.log_directory = blocked.join("sub").display().to_string();
    let blocked_pod = run_pod(&mut rt, &blocked_config).await;
    let err = rt.create_container(attempt(container_config("log", "true"), &blocked_pod)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("log path"), "{err:?}");

    let listed = rt.list_containers(ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
    assert!(listed.is_empty(), "failed creates left {listed:?}");
    remove_pod(&mut rt, &pod).await;
    remove_pod(&mut rt, &blocked_pod).await;
    assert_nothing_left(&toted);
}

/// ReopenContainerLog after the kubelet renamed the file: the monitor
/// writes on into a new file at the path.
#[tokio::test(flavor = "multi_thread")]
async fn reopen_container_log_continues_in_a_new_file() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let logs = toted.dir.join("logs/rotate");
    let config = pod_config("rotate", &logs);
    let pod = run_pod(&mut rt, &config).await;
    let id =
        create(&mut rt, &pod, &config, container_config("ticker", "while true; do echo tick; sleep 0.05; done")).await;
    start(&mut rt, &id).await;
    let path: PathBuf = logs.join("ticker.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&path).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "nothing logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::rename(&path, logs.join("ticker.log.1")).unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest { container_id: id.clone() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path).map_or(true, |t| !t.contains("stdout F tick")) {
        assert!(Instant::now() < deadline, "nothing logged after the reopen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    remove_pod(&mut rt, &pod).await;
    let err = rt.reopen_container_log(ReopenContainerLogRequest { container_id: id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_nothing_left(&toted);
}

/// Resources and devices as the kubelet passes them: a memory limit ending
/// in an OOM kill reported as `OOMKilled` (exit 137), the kubelet's
/// oom_score_adj, and a host device under another name with its cgroup
/// rule.
#[tokio::test(flavor = "multi_thread")]
async fn oom_kills_oom_score_adj_and_devices() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let config = pod_config("limits", &toted.dir.join("logs/limits"));
    let pod = run_pod(&mut rt, &config).await;

    let mut hog = container_config("hog", "tail /dev/zero");
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 16 << 20, ..Default::default() }),
        ..Default::default()
    });
    let hog = create(&mut rt, &pod, &config, hog).await;
    start(&mut rt, &hog).await;
    let ended = wait_exited(&mut rt, &hog).await;
    assert_eq!((ended.exit_code, ended.reason.as_str()), (137, "OOMKilled"), "{ended:?}");

    let mut quiet = container_config("quiet", "sleep 600");
    quiet.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { oom_score_adj: 999, ..Default::default() }),
        ..Default::default()
    });
    quiet.devices =
        vec![Device { host_path: "/dev/null".into(), container_path: "/dev/sink".into(), permissions: "rw".into() }];
    let quiet = create(&mut rt, &pod, &config, quiet).await;
    start(&mut rt, &quiet).await;
    let out =
        exec(&mut rt, &quiet, "cat /proc/1/oom_score_adj; echo data > /dev/sink && echo wrote; ls -l /dev/sink", 10)
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"999"), "{text}");
    assert_eq!(lines.get(1), Some(&"wrote"), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(lines.get(2).is_some_and(|l| l.starts_with('c') && l.contains("1,") && l.contains(" 3 ")), "{text}");

    // A guaranteed pod's -997: lowering below toted's own needs
    // CAP_SYS_RESOURCE, which root lacks on these hosts; the container runs
    // anyway, at toted's value (tote-shim warns).
    let mut guaranteed = container_config("guaranteed", "sleep 600");
    guaranteed.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { oom_score_adj: -997, ..Default::default() }),
        ..Default::default()
    });
    let guaranteed = create(&mut rt, &pod, &config, guaranteed).await;
    start(&mut rt, &guaranteed).await;
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    let out = exec(&mut rt, &guaranteed, "cat /proc/1/oom_score_adj", 10).await.unwrap();
    let adj: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(adj == -997 || adj == own.max(-997), "oom_score_adj {adj} (ours {own})");

    let mut missing = container_config("nodevice", "true");
    missing.devices = vec![Device {
        host_path: "/dev/no-such-device".into(),
        container_path: "/dev/x".into(),
        permissions: "rwm".into(),
    }];
    let request = CreateContainerRequest { pod_sandbox_id: pod.clone(), config: Some(missing), sandbox_config: None };
    let err = rt.create_container(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/dev/no-such-device"), "{err:?}");
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}

/// toted killed between pinning a pod's namespaces (a PID namespace with
/// its `pod-init` too) and recording the pod: the next toted unpins what
/// no record tells of, kills that init, and the pod's files go.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_cut_short_by_a_crash_leaves_nothing_after_a_restart() {
    let mut toted = Toted::start_crashing_at("pod:pinned");
    let mut rt = toted.runtime().await;
    let mut config = pod_config("crash", &toted.dir.join("logs/crash"));
    config.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid =
        NamespaceMode::Pod as i32;
    let request = RunPodSandboxRequest { config: Some(config), ..Default::default() };
    assert!(rt.run_pod_sandbox(request).await.is_err(), "toted died at the crash point");
    let pins = entries(&toted.dir.join("s/podns"));
    assert_eq!(pins.len(), 3, "ipc, uts and pid pinned before the crash: {pins:?}");
    let pid_pin = toted.dir.join("s/podns").join(pins.iter().find(|p| p.ends_with("-pid")).unwrap());
    let init_ns = std::fs::metadata(&pid_pin).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    toted.kill_and_restart();
    // Answered once the restore is done (the socket is up before it).
    let pods = toted.runtime().await.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap();
    assert!(pods.into_inner().items.is_empty());
    assert_nothing_left(&toted);
    let in_ns = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::metadata(e.path().join("ns/pid"))
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == init_ns)
            })
            .map(|e| std::fs::read_to_string(e.path().join("status")).unwrap_or_default())
            .collect()
    };
    // SIGKILLed during the restore; its end (and the namespace's) follows.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !in_ns().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_ns().is_empty(), "processes of the lost pod's PID namespace are alive: {:?}", in_ns());
}

/// Deletes the bridge a test's CNI configuration made (the plugin leaves it).
struct ConfBridge(String);

impl Drop for ConfBridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "dev", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

async fn network_ready(rt: &mut Runtime) -> RuntimeCondition {
    let status = rt.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition")
}

/// `[cri] pod_network = "cni"`: with an empty configuration directory the
/// network is not ready and a pod is refused, leaving nothing; a conflist
/// dropped in makes it ready without a restart, and the pod gets an
/// address of that conflist's subnet, at which its container serves, to
/// the host and to itself. Stopping the pod after the file is gone and
/// toted restarted still undoes the attachment.
#[tokio::test(flavor = "multi_thread")]
async fn pods_get_the_network_of_the_cni_conf_dir() {
    let mut toted = Toted::start_with_busybox("[cri]\npod_network = \"cni\"\n");
    let mut rt = toted.runtime().await;
    let conf_dir = toted.cni_conf_dir();

    let condition = network_ready(&mut rt).await;
    assert!(!condition.status, "{condition:?}");
    assert_eq!(condition.reason, "NetworkPluginNotReady");
    assert!(condition.message.contains(&conf_dir.display().to_string()), "names the directory: {}", condition.message);
    let logs = toted.dir.join("logs/cnipod");
    let config = pod_config("cnipod", &logs);
    let request = RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() };
    let refused = rt.run_pod_sandbox(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(&conf_dir.display().to_string()), "{}", refused.message());
    assert_nothing_left(&toted);

    let pid = std::process::id();
    let bridge = format!("totp{}", pid % 100_000);
    let _bridge = ConfBridge(bridge.clone());
    let prefix = format!("10.{}.{}.", 230 + pid % 20, (pid / 20) % 250);
    let leases = toted.dir.join("pod-ipam");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cri-test-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "ipam": { "type": "host-local", "ranges": [[{ "subnet": format!("{prefix}0/24") }]], "dataDir": leases },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    std::fs::write(conf_dir.join("10-pods.conflist"), conflist.to_string()).unwrap();
    let condition = network_ready(&mut rt).await;
    assert!(condition.status && condition.reason.is_empty(), "{condition:?}");

    let pod = run_pod(&mut rt, &config).await;
    let found = pod_status(&mut rt, &pod).await;
    let ip = found.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    assert!(ip.starts_with(&prefix), "the pod's address {ip:?} is in {prefix}0/24: {found:?}");
    let leased: Vec<String> =
        entries(&leases.join("cri-test-pods")).into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert_eq!(leased, std::slice::from_ref(&ip));

    let server =
        create(&mut rt, &pod, &config, container_config("server", "hostname > /tmp/h; httpd -f -p 8080 -h /tmp")).await;
    start(&mut rt, &server).await;
    let url = format!("http://{ip}:8080/h");
    let mut fetched = String::new();
    for _ in 0..100 {
        let out = exec(&mut rt, &server, &format!("wget -qO- {url}"), 10).await.unwrap();
        fetched = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetched, "cnipod-host\n", "the container serves on the pod's address");
    // And from the host, through the conflist's bridge.
    let mut stream = std::net::TcpStream::connect((ip.parse::<std::net::IpAddr>().unwrap(), 8080)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /h HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.") && answer.ends_with("\r\n\r\ncnipod-host\n"), "from the host: {answer:?}");

    // Stop: DEL with what ADD ran, though the directory has changed since
    // and toted was killed and started again.
    std::fs::remove_file(conf_dir.join("10-pods.conflist")).unwrap();
    toted.kill_and_restart();
    let mut rt = toted.runtime().await;
    assert_eq!(pod_status(&mut rt, &pod).await.network.map(|n| n.ip), Some(ip.clone()), "still attached");
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let leased: Vec<String> =
        entries(&leases.join("cri-test-pods")).into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(leased.is_empty(), "the address is released: {leased:?}");
    let on_bridge = std::process::Command::new("ip").args(["-o", "link", "show", "master", &bridge]).output().unwrap();
    assert!(String::from_utf8_lossy(&on_bridge.stdout).trim().is_empty(), "no veth left on {bridge}");
    let rules = std::process::Command::new("iptables-save").output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.lines().any(|l| l.contains(&prefix) || l.contains(&pod)), "iptables rules left: {rules}");
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}

/// The kubelet's CRIListStreaming calls give what the List calls give, and
/// UpdateRuntimeConfig's pod CIDR is taken (verbose Status shows it).
#[tokio::test(flavor = "multi_thread")]
async fn stream_calls_match_the_lists_and_the_pod_cidr_is_taken() {
    use tokio_stream::StreamExt;
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let config = pod_config("streams", &toted.dir.join("logs/streams"));
    let pod = run_pod(&mut rt, &config).await;
    let id = create(&mut rt, &pod, &config, container_config("one", "sleep 600")).await;

    let mut pods = Vec::new();
    let mut stream = rt.stream_pod_sandboxes(StreamPodSandboxesRequest { filter: None }).await.unwrap().into_inner();
    while let Some(message) = stream.next().await {
        pods.extend(message.unwrap().pod_sandboxes.into_iter().map(|p| p.id));
    }
    assert_eq!(pods, std::slice::from_ref(&pod));
    let mut containers = Vec::new();
    let mut stream = rt.stream_containers(StreamContainersRequest { filter: None }).await.unwrap().into_inner();
    while let Some(message) = stream.next().await {
        containers.extend(message.unwrap().containers.into_iter().map(|c| c.id));
    }
    assert_eq!(containers, [id]);

    let cidr = RuntimeConfig { network_config: Some(NetworkConfig { pod_cidr: "10.244.7.0/24".into() }) };
    rt.update_runtime_config(UpdateRuntimeConfigRequest { runtime_config: Some(cidr) }).await.unwrap();
    let status = rt.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(info["podCidr"], "10.244.7.0/24");
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
}

/// The same pod run twice at once (a retrying client): one pod, the other
/// call refused naming it, and the same again once it exists.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_pod_run_twice_at_once_is_one_pod() {
    let toted = Toted::start_with_busybox("");
    let config = pod_config("twice", &toted.dir.join("logs/twice"));
    let (mut a, mut b) = (toted.runtime().await, toted.runtime().await);
    let request = || RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() };
    let (first, second) = tokio::join!(a.run_pod_sandbox(request()), b.run_pod_sandbox(request()));
    let (ok, refused): (Vec<_>, Vec<_>) = [first, second].into_iter().partition(Result::is_ok);
    assert_eq!((ok.len(), refused.len()), (1, 1), "ok {ok:?} refused {refused:?}");
    let refused = refused.into_iter().next().unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("twice"), "{refused:?}");
    let again = a.run_pod_sandbox(request()).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let pods = a.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert_eq!(pods.len(), 1, "{pods:?}");
    remove_pod(&mut a, &pods[0].id).await;
    assert_nothing_left(&toted);
}

fn namespace_options(config: &mut PodSandboxConfig) -> &mut NamespaceOption {
    config.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap()
}

/// A pod with a user namespace of its own (the CRI's mode POD; ids
/// 0–65535 are the host's 200000–265535): its containers are root only in
/// it, see the image's files as the image owns them (idmapped layers),
/// write files the host sees as 200000, administer the pod's network
/// namespace (which the user namespace owns), and share its PID namespace
/// with the pod's init. Bad maps and modes are refused and leave nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_with_its_own_user_namespace_maps_ids_and_owns_its_namespaces() {
    let toted = Toted::start_with_busybox("");
    let mut rt = toted.runtime().await;
    let mut config = pod_config("userns", &toted.dir.join("logs/userns"));
    let map = vec![IdMapping { host_id: 200_000, container_id: 0, length: 65_536 }];
    let options = namespace_options(&mut config);
    options.pid = NamespaceMode::Pod as i32;
    options.userns_options =
        Some(UserNamespace { mode: NamespaceMode::Pod as i32, uids: map.clone(), gids: map.clone() });
    let pod = run_pod(&mut rt, &config).await;
    let echoed = pod_status(&mut rt, &pod).await;
    let userns = echoed.linux.unwrap().namespaces.unwrap().options.unwrap().userns_options.unwrap();
    assert_eq!((userns.mode, userns.uids), (NamespaceMode::Pod as i32, map.clone()));
    // Two host directories owned by the host's root: one mounted idmapped
    // (with the pod's maps, as the kubelet asks), one plainly.
    let shared = |name: &str| {
        let dir = toted.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("host-file"), "from the host\n").unwrap();
        dir
    };
    let (mapped, plain) = (shared("mapped"), shared("plain"));
    let mut container = container_config("c", "echo hi > /written; sleep 600");
    container.mounts = vec![
        Mount {
            container_path: "/mapped".into(),
            host_path: mapped.display().to_string(),
            uid_mappings: map.clone(),
            gid_mappings: map.clone(),
            ..Default::default()
        },
        Mount { container_path: "/plain".into(), host_path: plain.display().to_string(), ..Default::default() },
    ];
    let mut mismatched = container.clone();
    mismatched.metadata.as_mut().unwrap().name = "mismatched".into();
    mismatched.mounts[0].uid_mappings = vec![IdMapping { host_id: 300_000, container_id: 0, length: 65_536 }];
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(mismatched),
        sandbox_config: Some(config.clone()),
    };
    let refused = rt.create_container(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("/mapped"), "{refused:?}");
    let c = create(&mut rt, &pod, &config, container);
    let c = c.await;
    start(&mut rt, &c).await;
    let out = exec(&mut rt, &c, "stat -c %u:%g /mapped/host-file /plain/host-file; echo new > /mapped/made", 10)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["0:0", "65534:65534"],
        "{text} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.exit_code,
        0,
        "the pod's root writes an idmapped host dir: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = std::fs::metadata(mapped.join("made")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&made), 0, "written as the host's root through the idmapped mount");
    let script = "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u:%g /bin/busybox /etc/passwd; \
                  tr '\\0' ' ' < /proc/1/cmdline; echo; hostname";
    let out = exec(&mut rt, &c, script, 10).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(fields[0], ["0", "200000", "65536"], "uid_map: {text}");
    assert_eq!(fields[1], ["0", "200000", "65536"], "gid_map: {text}");
    assert_eq!(fields[2], ["0"], "{text}");
    assert_eq!((fields[3].as_slice(), fields[4].as_slice()), (&["0:0"][..], &["0:0"][..]), "image files: {text}");
    assert!(text.lines().nth(5).unwrap_or("").contains("pod-init"), "{text}");
    assert_eq!(text.lines().nth(6), Some("userns-host"), "{text}");
    // The pod's network, IPC and UTS namespaces are its user namespace's
    // (NS_GET_USERNS on each gives the pinned user namespace).
    let pins = |dir: &str| -> Vec<PathBuf> {
        entries(&toted.dir.join("s").join(dir)).iter().map(|n| toted.dir.join("s").join(dir).join(n)).collect()
    };
    let user =
        pins("podns").into_iter().find(|p| p.to_string_lossy().ends_with("-user")).expect("a user namespace pin");
    let inode = |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
    let owned = pins("netns").into_iter().chain(pins("podns").into_iter().filter(|p| {
        let name = p.to_string_lossy();
        name.ends_with("-ipc") || name.ends_with("-uts")
    }));
    let owned: Vec<PathBuf> = owned.collect();
    assert_eq!(owned.len(), 3, "{owned:?}");
    for ns in owned {
        let file = std::fs::File::open(&ns).unwrap();
        // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor.
        let owner = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), 0xb701) };
        assert!(owner >= 0, "NS_GET_USERNS {}: {}", ns.display(), std::io::Error::last_os_error());
        let owner_inode =
            std::fs::metadata(format!("/proc/self/fd/{owner}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        // SAFETY: `owner` is a descriptor this test just got and owns.
        unsafe { libc::close(owner) };
        assert_eq!(owner_inode.unwrap(), inode(&user), "{} is not owned by the pod's user namespace", ns.display());
    }
    // What the container wrote is the host's 200000, in its own upper dir.
    let written = toted.root.join(format!("snapshots/rw-{c}/fs/written"));
    let meta = std::fs::metadata(&written).unwrap_or_else(|e| panic!("{}: {e}", written.display()));
    assert_eq!(
        (std::os::unix::fs::MetadataExt::uid(&meta), std::os::unix::fs::MetadataExt::gid(&meta)),
        (200_000, 200_000)
    );
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    remove_pod(&mut rt, &pod).await;
    assert_nothing_left(&toted);
    assert!(entries(&toted.dir.join("s/userns")).is_empty(), "{:?}", entries(&toted.dir.join("s/userns")));

    let refused = |name: &str, userns: UserNamespace, host_network: bool| {
        let mut config = pod_config(name, &toted.dir.join("logs/bad"));
        let options = namespace_options(&mut config);
        options.userns_options = Some(userns);
        if host_network {
            options.network = NamespaceMode::Node as i32;
        }
        config
    };
    let two = vec![map[0], IdMapping { host_id: 300_000, container_id: 65_536, length: 10 }];
    let not_root = vec![IdMapping { host_id: 200_000, container_id: 1, length: 65_536 }];
    let pod_mode = |uids: Vec<IdMapping>| UserNamespace { mode: NamespaceMode::Pod as i32, gids: uids.clone(), uids };
    for (config, wants) in [
        (refused("two-maps", pod_mode(two), false), "exactly one uid mapping"),
        (refused("not-root", pod_mode(not_root), false), "container id 0"),
        (refused("host-net", pod_mode(map.clone()), true), "host's network"),
        (
            refused(
                "container-mode",
                UserNamespace { mode: NamespaceMode::Container as i32, ..Default::default() },
                false,
            ),
            "CONTAINER",
        ),
        (
            refused("target-mode", UserNamespace { mode: NamespaceMode::Target as i32, ..Default::default() }, false),
            "TARGET",
        ),
    ] {
        let request = RunPodSandboxRequest { config: Some(config), ..Default::default() };
        let status = rt.run_pod_sandbox(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(wants), "{wants}: {status:?}");
    }
    let listed = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(listed.is_empty(), "{listed:?}");
    assert_nothing_left(&toted);
}
