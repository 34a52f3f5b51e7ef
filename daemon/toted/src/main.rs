//! toted, the Tote daemon: serves Tote's management API and the Kubernetes
//! CRI v1 on one unix socket and supervises containers through their
//! monitors. Stopping toted (SIGTERM, or even SIGKILL) leaves every
//! container running; the next toted reconnects to them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tokio::net::UnixListener;
use toted::config::{Config, DEFAULT_CONFIG};
use toted::delegation::Delegation;
use toted::engine::Engine;
use toted::privilege::{Privilege, RootlessDirs, StateLock};
use toted::service::ToteService;

#[derive(Parser)]
#[command(name = "toted", version, about = "The Tote container daemon")]
struct Flags {
    /// The configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where images, containers and volumes are kept.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Where sockets, monitors and network namespaces are kept (tmpfs).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The API socket: unix:///path.
    #[arg(long, short = 'H')]
    listen: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long)]
    log_level: Option<String>,
    /// Run as an ordinary user in a user namespace (the default when toted
    /// is not started by root): directories after $XDG_DATA_HOME,
    /// $XDG_RUNTIME_DIR and $XDG_CONFIG_HOME.
    #[arg(long)]
    rootless: bool,
    /// Rootless: map only your own uid and gid (no /etc/subuid range, no
    /// newuidmap); every file of an image belongs to you, and containers
    /// cannot switch to another user.
    #[arg(long)]
    single_id: bool,
}

fn load_config(flags: Flags) -> Result<Config, String> {
    let rootless = flags.rootless || !nix::unistd::Uid::effective().is_root();
    if flags.single_id && !rootless {
        return Err("toted: --single-id is for a rootless toted (run it as an ordinary user, or add --rootless)".into());
    }
    let (defaults, default_path, no_state) = if rootless {
        let dirs = RootlessDirs::from_env()?;
        let mut defaults = Config {
            root: dirs.data.clone(),
            state_dir: dirs.state.clone().unwrap_or_default(),
            listen: dirs.listen().unwrap_or_default(),
            ..Config::default()
        };
        // /etc/cni/net.d is the host's pod networks, whose plugins need
        // the host's root; a user's own go in their config directory, as
        // rootless podman keeps them.
        if let Some(config_home) = dirs.config.parent().and_then(Path::parent) {
            defaults.cri.cni_conf_dir = config_home.join("cni/net.d");
        }
        (defaults, dirs.config, dirs.state.err())
    } else {
        (Config::default(), PathBuf::from(DEFAULT_CONFIG), None)
    };
    let (path, optional) = match &flags.config {
        Some(path) => (path.clone(), false),
        None => (default_path, true),
    };
    let mut config = Config::load_with_defaults(&path, optional, defaults).map_err(|e| e.to_string())?;
    if let Some(root) = flags.root {
        config.root = root;
    }
    if let Some(state) = flags.state_dir {
        config.state_dir = state;
    }
    if let Some(listen) = flags.listen {
        config.listen = listen;
    }
    if let Some(level) = flags.log_level {
        config.log_level = level;
    }
    // XDG_RUNTIME_DIR matters only where the state dir or socket follow it.
    if let Some(problem) = no_state
        && (config.state_dir.as_os_str().is_empty() || config.listen.is_empty())
    {
        return Err(format!("toted: {problem}"));
    }
    config.validate().map_err(|e| format!("toted: {e}"))?;
    if rootless {
        config.privilege =
            Privilege::rootless(flags.single_id || config.rootless_single_id).map_err(|e| format!("toted: {e}"))?;
    }
    Ok(config)
}

/// tote-shim: configured, else beside toted, else the installed one.
fn shim_path(config: &Config) -> PathBuf {
    if let Some(shim) = &config.runtime.shim {
        return shim.clone();
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("tote-shim")));
    beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("/usr/local/bin/tote-shim"))
}

fn listen(config: &Config) -> Result<UnixListener, String> {
    let path = tote_api::socket_path(&config.listen).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(format!("another toted is already serving {}", path.display()));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("listen on {}: {e}", path.display()))?;
    let mode = config.socket_mode_bits()?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    if let Some(group) = &config.socket_group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| format!("socket_group {group:?}: no such group"))?
            .gid;
        nix::unistd::chown(&path, None, Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(listener)
}

async fn serve(config: Config, shim: PathBuf) -> Result<(), String> {
    let listener = listen(&config)?;
    let engine = Engine::open(config.clone(), shim.clone()).map_err(|e| format!("toted: {e}"))?;
    let running = engine.restore().await;
    tracing::info!(root = %config.root.display(), state = %config.state_dir.display(), listen = %config.listen,
        shim = %shim.display(), restored = running, privilege = %config.privilege.describe(), "toted ready");
    let service = tote_api::v1::tote_server::ToteServer::new(ToteService { engine: engine.clone() })
        .max_decoding_message_size(tote_api::MAX_REQUEST_BYTES);
    // The kubelet's CRI and tote.v1 on one socket: gRPC routes by service
    // name (`/runtime.v1.RuntimeService/...`, `/tote.v1.Tote/...`).
    let stream_address = std::net::SocketAddr::new(config.cri.stream_address, config.cri.stream_port);
    let cri = tote_cri::Cri::with_streaming(engine.clone(), stream_address)
        .await
        .map_err(|e| format!("toted: the CRI streaming server on {stream_address}: {e}"))?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let mut int =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down; containers keep running");
    };
    let limit = toted::connections::limit_for(raise_nofile());
    tonic::transport::Server::builder()
        .add_service(service)
        .add_service(cri.runtime_service())
        .add_service(cri.image_service())
        .serve_with_incoming_shutdown(toted::connections::incoming(listener, limit), shutdown)
        .await
        .map_err(|e| format!("toted: serve: {e}"))?;
    if let Ok(path) = tote_api::socket_path(&config.listen) {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// What toted does before it starts any thread: finds tote-shim, locks the
/// state dir against a second toted, and, rootless, joins its user and
/// mount namespaces (setns into a user namespace needs a single-threaded
/// process, so this runs before the tokio runtime is built).
fn prepare(mut config: Config) -> Result<(Config, PathBuf, StateLock), String> {
    let shim = shim_path(&config);
    if !shim.exists() {
        return Err(format!("tote-shim not found at {} (set [runtime] shim in the config)", shim.display()));
    }
    let lock = StateLock::take(&config.state_dir).map_err(|e| format!("toted: {e}"))?;
    if let Privilege::Rootless(rootless) = &mut config.privilege {
        // Before the user namespace: access(2) checks the cgroup files as
        // the host sees the user.
        rootless.cgroups = toted::delegation::of_this_process();
        match &rootless.cgroups {
            Delegation::Delegated { parent, controllers } => {
                tracing::info!(parent, controllers = controllers.join(" "), "containers' cgroups: delegated");
                config.cgroup_parent.clone_from(parent);
            }
            Delegation::Unavailable(why) => tracing::warn!("containers get no cgroup and no limits: {why}"),
        }
        let joined = toted::rootless::enter(&config.state_dir, &shim, rootless).map_err(|e| format!("toted: {e}"))?;
        if (&joined.uids, &joined.gids) != (&rootless.uids, &rootless.gids) {
            tracing::warn!(
                holder = joined.holder,
                "the user namespace kept by the namespace holder has other maps than toted would make now \
                 (/etc/subuid or /etc/subgid changed, or --single-id): it is used as it is while it lives"
            );
        }
        rootless.single_id = joined.uids.len() == 1 && joined.uids[0].size == 1;
        rootless.uids = joined.uids;
        rootless.gids = joined.gids;
        match joined.adopted_from {
            Some(monitor) => tracing::warn!(
                holder = joined.holder,
                monitor,
                "the namespace holder was gone while containers still ran: joined their namespaces through a \
                 monitor and started a new holder in them"
            ),
            None => {
                tracing::info!(holder = joined.holder, created = joined.created, "joined the rootless user namespace")
            }
        }
        // In the namespaces, as every container mount will be; before
        // serving, so that a toted that cannot mount roots does not start.
        let snapshots = config.root.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(|e| format!("toted: create {}: {e}", snapshots.display()))?;
        let host = toted::fuse_overlay::RealHost { snapshots: &snapshots };
        let choice = toted::fuse_overlay::choose(config.storage.rootless_overlay, &snapshots, &host)
            .map_err(|e| format!("toted: {e}"))?;
        tracing::info!(driver = choice.driver.name(), why = %choice.why, "containers' roots");
        rootless.overlay = choice.driver;
    }
    Ok((config, shim, lock))
}

/// toted's descriptor limit, its soft limit raised to the hard one first
/// (systemd and shells often start daemons with a soft limit of 1024).
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

fn main() -> ExitCode {
    heap::limit_arenas();
    let config = match load_config(Flags::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!("toted={0},tote={0}", config.log_level)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (config, shim, _lock) = match prepare(config) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    // Two workers: toted mostly waits on sockets; the blocking pool takes
    // the slow file system and network work. Its threads come and go with
    // the load (each retires after 10 s idle); when one retires, the memory
    // freed during the burst it served goes back to the system.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_stop(heap::release_free_memory)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("toted: tokio: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config, shim)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// glibc's malloc keeps what a program frees for reuse. Each thread that
/// allocates gets an arena of its own (up to 8 per core), every arena
/// grows to the most it ever held, and it shrinks only from its top. After
/// 2,000 runs, half of them 20 at a time, toted's blocking pool had grown
/// to 28 threads and `malloc_stats` showed 16 arenas holding 13.8 MB with
/// 1.6 MB in use: RSS 23 MiB, three times its idle size, and no way back.
mod heap {
    /// Two arenas, one per worker thread: the blocking pool's threads share
    /// them instead of each keeping its own.
    pub fn limit_arenas() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets one of malloc's parameters; it runs
        // first thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }

    /// Hands the free pages of every arena back to the system.
    pub fn release_free_memory() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let started = std::time::Instant::now();
            // SAFETY: malloc_trim takes each arena's lock in turn and only
            // madvises pages that no allocation uses; any thread may call it.
            let released = unsafe { libc::malloc_trim(0) } == 1;
            tracing::debug!(released, took_us = started.elapsed().as_micros(), "free memory returned");
        }
    }
}
