//! tote-shim: an OCI runtime command line with runc's argument shapes, so
//! containerd, podman or a person can run any bundle with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use oci_spec::runtime::Process;
use tote_shim::container::{self, CreateOptions, Error, ExecOptions, Runtime};

#[derive(Parser)]
#[command(name = "tote-shim", version, about = "Create and run OCI containers (runc-compatible command line)")]
struct Cli {
    /// Directory for container state.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Also write errors to this file (as containerd asks runc to).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// Accepted for runc compatibility; tote-shim manages cgroupfs paths.
    #[arg(long, global = true, hide = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, hide = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct CreateArgs {
    /// The bundle directory (config.json and the rootfs).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// A unix socket to send the pty master to when process.terminal is set.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Write the container's init pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root (for roots on initramfs).
    #[arg(long)]
    no_pivot: bool,
    /// Pass descriptors 3..3+N on to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    id: String,
}

impl CreateArgs {
    fn options(self) -> CreateOptions {
        CreateOptions {
            id: self.id,
            bundle: self.bundle,
            console_socket: self.console_socket,
            pid_file: self.pid_file,
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
            stdio: None,
            keep_pty: false,
        }
    }
}

#[derive(Args)]
struct ExecArgs {
    /// A process.json (an OCI `process` object) to run instead of COMMAND.
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Allocate a pty.
    #[arg(short, long)]
    tty: bool,
    /// Working directory inside the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[arg(short, long)]
    env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    user: Option<String>,
    /// Extra supplementary group ids.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// Capabilities to add (e.g. CAP_NET_ADMIN).
    #[arg(short, long)]
    cap: Vec<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    no_new_privs: bool,
    #[arg(short, long)]
    detach: bool,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct MonitorArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// The monitor's directory: its socket, the exit record, diagnostics.
    #[arg(long)]
    dir: PathBuf,
    /// The container's log file (CRI format, rotated by size).
    #[arg(long = "container-log")]
    container_log: Option<PathBuf>,
    /// Rotate the container log past this many bytes.
    #[arg(long, default_value_t = 10 << 20)]
    log_max_size: u64,
    /// Keep this many log files, the current one included.
    #[arg(long, default_value_t = 3)]
    log_max_files: u32,
    /// Give the container a stdin the daemon can write to.
    #[arg(long)]
    stdin: bool,
    /// Write one JSON line here once the container is created (or failed).
    #[arg(long)]
    ready_fd: Option<i32>,
    #[arg(long)]
    no_pivot: bool,
    id: String,
}

/// runc's `update` flags; values given here override `--resources`.
#[derive(Args)]
struct UpdateArgs {
    /// A JSON file of LinuxResources (runtime-spec), `-` for stdin.
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long)]
    blkio_weight: Option<u16>,
    #[arg(long)]
    cpu_period: Option<u64>,
    #[arg(long)]
    cpu_quota: Option<i64>,
    #[arg(long)]
    cpu_share: Option<u64>,
    #[arg(long)]
    cpu_rt_period: Option<u64>,
    #[arg(long)]
    cpu_rt_runtime: Option<i64>,
    #[arg(long)]
    cpuset_cpus: Option<String>,
    #[arg(long)]
    cpuset_mems: Option<String>,
    /// Bytes, or with a unit (k, m, g, t, p); -1 for unlimited.
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    memory_reservation: Option<String>,
    /// Memory plus swap; -1 for unlimited swap.
    #[arg(long, allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Accepted and ignored, as by runc since the kernel dropped it.
    #[arg(long, hide = true)]
    kernel_memory: Option<String>,
    #[arg(long, hide = true)]
    kernel_memory_tcp: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    #[arg(long)]
    l3_cache_schema: Option<String>,
    #[arg(long)]
    mem_bw_schema: Option<String>,
    id: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as runtime-spec JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container.
    Kill {
        /// Signal every process in the container's cgroup.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container (--force: a running one too).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create, start and wait for a container, then delete it.
    Run {
        /// Return once the container runs, leaving it behind.
        #[arg(short, long)]
        detach: bool,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Run another process inside a running container.
    Exec(ExecArgs),
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List containers.
    List {
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a container and stay with it as its monitor (how toted runs
    /// containers): detaches, then serves the container on DIR/sock.
    Monitor(MonitorArgs),
    /// The processes of a container: `ps` output for them (PS_ARGS, default
    /// -ef), or their pids as a JSON array.
    Ps {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Change a running container's resource limits.
    Update(UpdateArgs),
    /// Print what this runtime supports (the runtime-spec features document).
    Features,
    /// Write a default config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// For a container run by an unprivileged user.
        #[arg(long)]
        rootless: bool,
    },
}

fn default_root() -> PathBuf {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()).map(PathBuf::from);
    let euid_root = nix::unistd::Uid::effective().is_root();
    let in_initial = tote_shim::namespaces::in_initial_user_ns();
    let user = std::env::var_os("USER");
    choose_root(euid_root, in_initial, runtime_dir, user.as_deref().and_then(|u| u.to_str()))
}

/// runc's choice (shouldHonorXDGRuntimeDir): real root uses /run whatever
/// XDG_RUNTIME_DIR says (/run/user/0, for compatibility); an ordinary user
/// uses their runtime directory. Root of a user namespace (rootless podman
/// or toted running the runtime inside theirs) cannot write the host's /run,
/// so it too uses XDG_RUNTIME_DIR when it is set, unless USER says it is
/// root logged in there.
fn choose_root(euid_root: bool, in_initial_ns: bool, runtime_dir: Option<PathBuf>, user: Option<&str>) -> PathBuf {
    let honor_xdg = match &runtime_dir {
        None => false,
        Some(_) if !euid_root => true,
        Some(_) if in_initial_ns => false,
        Some(_) => user != Some("root"),
    };
    match runtime_dir {
        Some(dir) if honor_xdg => dir.join("tote-shim"),
        _ if euid_root => PathBuf::from("/run/tote-shim"),
        _ => std::env::temp_dir().join(format!("tote-shim-{}", nix::unistd::Uid::effective())).join("tote-shim"),
    }
}

/// Everything that follows is one of these: an exit code of our own, or the
/// container's.
enum Outcome {
    Done,
    ExitCode(i32),
}

fn main() -> ExitCode {
    // The serving half of a monitor lives as long as its container: it
    // skips the command-line parser and its allocations.
    let mut raw = std::env::args();
    if let (Some(_), Some(command), Some(json), None) = (raw.next(), raw.next(), raw.next(), raw.next())
        && command == "monitor-serve"
    {
        return ExitCode::from(u8::try_from(tote_shim::monitor::serve_main(&json)).unwrap_or(1));
    }
    // A pod's PID 1 (toted's, not runc's): no parser, no allocations kept.
    let raw: Vec<String> = std::env::args().skip(1).take(4).collect();
    match raw.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["pod-init"] => return ExitCode::from(u8::try_from(tote_shim::pod_init::main(None)).unwrap_or(1)),
        ["pod-init", userns] => {
            return ExitCode::from(u8::try_from(tote_shim::pod_init::main(Some(userns))).unwrap_or(1));
        }
        ["ns-holder"] => return ExitCode::from(u8::try_from(tote_shim::ns_holder::main(false)).unwrap_or(1)),
        ["ns-holder", "--adopt"] => {
            return ExitCode::from(u8::try_from(tote_shim::ns_holder::main(true)).unwrap_or(1));
        }
        ["pod-userns", kinds, hostname] => {
            return ExitCode::from(u8::try_from(tote_shim::pod_userns::main(kinds, hostname)).unwrap_or(1));
        }
        _ => {}
    }
    // A rootless container's published TCP ports, for as long as it runs.
    if raw.first().map(String::as_str) == Some("port-forward") {
        let args: Vec<String> = std::env::args().skip(2).collect();
        return ExitCode::from(u8::try_from(tote_shim::port_forward::main(&args)).unwrap_or(1));
    }
    let cli = Cli::parse();
    let runtime = Runtime::new(cli.root.clone().unwrap_or_else(default_root));
    match dispatch(&runtime, cli.command) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::ExitCode(code)) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX)),
        Err(err) => {
            report(&err, cli.log.as_deref(), &cli.log_format);
            ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1))
        }
    }
}

fn report(err: &Error, log: Option<&Path>, format: &str) {
    eprintln!("tote-shim: {err}");
    let Some(path) = log else { return };
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": err.to_string(), "time": tote_shim::state::now_rfc3339()})
            .to_string()
    } else {
        format!("error: {err}")
    };
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

fn dispatch(runtime: &Runtime, command: Command) -> Result<Outcome, Error> {
    match command {
        Command::Create(args) => {
            close_stray_descriptors(args.preserve_fds);
            protect_binary()?;
            runtime.create(&args.options())?;
        }
        Command::Start { id } => runtime.start(&id)?,
        Command::State { id } => print_json(&runtime.state(&id)?),
        Command::Kill { all, id, signal } => runtime.kill(&id, container::parse_signal(&signal)?, all)?,
        Command::Delete { force, id } => runtime.delete(&id, force)?,
        Command::Run { detach, create } => {
            close_stray_descriptors(create.preserve_fds);
            protect_binary()?;
            return Ok(Outcome::ExitCode(runtime.run(&create.options(), detach)?));
        }
        Command::Exec(args) => {
            close_stray_descriptors(args.preserve_fds);
            protect_binary()?;
            let id = args.id.clone();
            let opts = exec_options(runtime, args)?;
            return Ok(Outcome::ExitCode(runtime.exec(&id, &opts)?));
        }
        Command::Monitor(args) => return Ok(Outcome::ExitCode(monitor(runtime, args)?)),
        Command::Pause { id } => runtime.pause(&id)?,
        Command::Resume { id } => runtime.resume(&id)?,
        Command::List { quiet } => list(runtime, quiet)?,
        Command::Ps { format, id, ps_args } => ps(runtime, &id, &format, &ps_args)?,
        Command::Update(args) => {
            let id = args.id.clone();
            runtime.update(&id, &update_resources(args)?)?;
        }
        Command::Features => print_json(&tote_shim::features::features()),
        Command::Spec { bundle, rootless } => write_spec(&bundle, rootless)?,
    }
    Ok(Outcome::Done)
}

/// Closes whatever descriptors our caller leaked to us beyond stdio and the
/// ones it asked to pass on: none of them may reach a container.
fn close_stray_descriptors(preserve_fds: i32) {
    let first = 3 + preserve_fds.max(0).unsigned_abs();
    // SAFETY: close_range only closes descriptors of this process; nothing
    // has been opened yet that the code below relies on.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

fn monitor(runtime: &Runtime, args: MonitorArgs) -> Result<i32, Error> {
    // First, as a re-exec from a sealed copy repeats the arguments.
    protect_binary()?;
    // The ready descriptor becomes 3 and survives; every other stray closes.
    let ready_fd = match args.ready_fd {
        Some(fd) if fd != 3 => {
            nix::unistd::dup2(fd, 3).map_err(|errno| Error::Os {
                op: "dup2 the ready descriptor",
                path: "".into(),
                errno,
            })?;
            Some(3)
        }
        other => other,
    };
    close_stray_descriptors(i32::from(ready_fd.is_some()));
    let opts = tote_shim::monitor::MonitorOptions {
        id: args.id,
        bundle: std::path::absolute(&args.bundle).map_err(|source| Error::Io { path: args.bundle.clone(), source })?,
        root: runtime.store().root().to_path_buf(),
        dir: args.dir,
        log: args.container_log,
        rotation: tote_shim::monitor::log::Rotation { max_size: args.log_max_size, max_files: args.log_max_files },
        stdin: args.stdin,
        ready_fd,
        no_pivot: args.no_pivot,
    };
    Ok(tote_shim::monitor::spawn(&opts))
}

fn protect_binary() -> Result<(), Error> {
    tote_shim::exe_guard::ensure_protected().map(|_| ()).map_err(|e| Error::Usage(e.to_string()))
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("state serialises"));
}

fn list(runtime: &Runtime, quiet: bool) -> Result<(), Error> {
    let states = runtime.list()?;
    if quiet {
        states.iter().for_each(|s| println!("{}", s.id));
        return Ok(());
    }
    println!("{:<24} {:<8} {:<10} {:<40} CREATED", "ID", "PID", "STATUS", "BUNDLE");
    for s in states {
        println!("{:<24} {:<8} {:<10} {:<40} {}", s.id, s.pid, s.status, s.bundle.display(), s.created);
    }
    Ok(())
}

/// `ps`: the pids as JSON (what containerd's shim reads), or the lines of
/// `ps PS_ARGS` whose PID column is one of the container's, as runc prints.
fn ps(runtime: &Runtime, id: &str, format: &str, ps_args: &[String]) -> Result<(), Error> {
    let pids: Vec<i32> = runtime.pids(id)?.iter().map(|p| p.as_raw()).collect();
    match format {
        "json" => {
            println!("{}", serde_json::to_string(&pids).expect("pids serialise"));
            Ok(())
        }
        "table" => {
            let args: Vec<&str> =
                if ps_args.is_empty() { vec!["-ef"] } else { ps_args.iter().map(String::as_str).collect() };
            let output = std::process::Command::new("ps")
                .args(&args)
                .output()
                .map_err(|source| Error::Io { path: "ps".into(), source })?;
            let text = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                return Err(Error::Usage(format!(
                    "ps {}: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim(),
                    text.trim()
                )));
            }
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let column = header
                .split_whitespace()
                .position(|field| field == "PID")
                .ok_or_else(|| Error::Usage(format!("ps {}: its output has no PID column", args.join(" "))))?;
            println!("{header}");
            for line in lines {
                let pid = line.split_whitespace().nth(column).and_then(|f| f.parse::<i32>().ok());
                if pid.is_some_and(|pid| pids.contains(&pid)) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        other => Err(Error::Usage(format!("invalid format option {other:?}: use table or json"))),
    }
}

/// The limits `update` applies: `--resources`, then each flag over it.
fn update_resources(args: UpdateArgs) -> Result<oci_spec::runtime::LinuxResources, Error> {
    use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxPids, LinuxResources};
    let mut resources = match &args.resources {
        Some(path) => {
            let bytes = if path.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                    .map_err(|source| Error::Io { path: "stdin".into(), source })?;
                bytes
            } else {
                std::fs::read(path).map_err(|source| Error::Io { path: path.clone(), source })?
            };
            serde_json::from_slice::<LinuxResources>(&bytes)
                .map_err(|e| Error::Usage(format!("--resources {}: {e}", path.display())))?
        }
        None => LinuxResources::default(),
    };
    let memory_value = |flag: &str, value: &Option<String>| -> Result<Option<i64>, Error> {
        value.as_deref().map(|text| parse_memory(text).map_err(|e| Error::Usage(format!("--{flag}: {e}")))).transpose()
    };
    let (limit, reservation, swap) = (
        memory_value("memory", &args.memory)?,
        memory_value("memory-reservation", &args.memory_reservation)?,
        memory_value("memory-swap", &args.memory_swap)?,
    );
    if limit.is_some() || reservation.is_some() || swap.is_some() {
        let mut memory = resources.memory().unwrap_or_default();
        if limit.is_some() {
            memory.set_limit(limit);
        }
        if reservation.is_some() {
            memory.set_reservation(reservation);
        }
        if swap.is_some() {
            memory.set_swap(swap);
        }
        resources.set_memory(Some(memory));
    }
    let cpu_flags = [args.cpu_period.is_some(), args.cpu_quota.is_some(), args.cpu_share.is_some()];
    let rt_flags = [args.cpu_rt_period.is_some(), args.cpu_rt_runtime.is_some()];
    if cpu_flags.iter().chain(&rt_flags).any(|set| *set) || args.cpuset_cpus.is_some() || args.cpuset_mems.is_some() {
        let mut cpu = resources.cpu().clone().unwrap_or(LinuxCpu::default());
        if args.cpu_period.is_some() {
            cpu.set_period(args.cpu_period);
        }
        if args.cpu_quota.is_some() {
            cpu.set_quota(args.cpu_quota);
        }
        if args.cpu_share.is_some() {
            cpu.set_shares(args.cpu_share);
        }
        if args.cpu_rt_period.is_some() {
            cpu.set_realtime_period(args.cpu_rt_period);
        }
        if args.cpu_rt_runtime.is_some() {
            cpu.set_realtime_runtime(args.cpu_rt_runtime);
        }
        if args.cpuset_cpus.is_some() {
            cpu.set_cpus(args.cpuset_cpus.clone());
        }
        if args.cpuset_mems.is_some() {
            cpu.set_mems(args.cpuset_mems.clone());
        }
        resources.set_cpu(Some(cpu));
    }
    if let Some(limit) = args.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        resources.set_pids(Some(pids));
    }
    if let Some(weight) = args.blkio_weight {
        let mut block_io = resources.block_io().clone().unwrap_or(LinuxBlockIo::default());
        block_io.set_weight(Some(weight));
        resources.set_block_io(Some(block_io));
    }
    if args.l3_cache_schema.is_some() || args.mem_bw_schema.is_some() {
        return Err(Error::Usage("Intel RDT (--l3-cache-schema, --mem-bw-schema) is not supported".into()));
    }
    Ok(resources)
}

/// A memory size as runc's flags take it: bytes, or a number with a binary
/// unit (k, m, g, t, p, with an optional b; `64m`, `1.5g`); -1 is unlimited.
fn parse_memory(text: &str) -> Result<i64, String> {
    if text.trim() == "-1" {
        return Ok(-1);
    }
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let multiplier: f64 = match unit.trim().trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    let bytes = number * multiplier;
    if !(0.0..9.2e18).contains(&bytes) {
        return Err(format!("invalid size {text:?}"));
    }
    // In range by the check above, and sizes are whole bytes.
    #[allow(clippy::cast_possible_truncation)]
    Ok(bytes as i64)
}

fn write_spec(bundle: &Path, rootless: bool) -> Result<(), Error> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(Error::Io { path, source: std::io::Error::from(std::io::ErrorKind::AlreadyExists) });
    }
    let text = serde_json::to_string_pretty(&container::default_spec(rootless)).expect("spec serialises");
    std::fs::write(&path, text + "\n").map_err(|source| Error::Io { path, source })
}

/// The exec'd process: a process.json, or the container's own process
/// with the command line's changes.
fn exec_options(runtime: &Runtime, args: ExecArgs) -> Result<ExecOptions, Error> {
    let process = match &args.process {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.clone(), source })?;
            serde_json::from_slice::<Process>(&bytes).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
        }
        None => process_from_args(runtime, &args)?,
    };
    Ok(ExecOptions {
        process,
        console_socket: args.console_socket,
        pid_file: args.pid_file,
        detach: args.detach,
        preserve_fds: args.preserve_fds,
        stdio: None,
    })
}

fn process_from_args(runtime: &Runtime, args: &ExecArgs) -> Result<Process, Error> {
    let record = runtime.store().load(&args.id)?;
    let mut process = record.spec.process().clone().unwrap_or_default();
    if args.command.is_empty() {
        return Err(Error::Usage("exec needs a command (or --process)".into()));
    }
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    let mut env = process.env().clone().unwrap_or_default();
    for extra in &args.env {
        let key = extra.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(extra.clone());
    }
    process.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let parse = |s: &str| s.parse::<u32>().map_err(|_| Error::Usage(format!("--user {user:?} is not UID[:GID]")));
        let mut u = process.user().clone();
        u.set_uid(parse(uid)?);
        u.set_gid(parse(gid)?);
        process.set_user(u);
    }
    if !args.additional_gids.is_empty() {
        let mut u = process.user().clone();
        u.set_additional_gids(Some(args.additional_gids.clone()));
        process.set_user(u);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        add_capabilities(&mut process, &args.cap)?;
    }
    Ok(process)
}

fn add_capabilities(process: &mut Process, names: &[String]) -> Result<(), Error> {
    let mut caps = process.capabilities().clone().unwrap_or_default();
    for name in names {
        let json = format!("\"{}\"", name.to_ascii_uppercase());
        let cap: oci_spec::runtime::Capability =
            serde_json::from_str(&json).map_err(|_| Error::Usage(format!("--cap: unknown capability {name:?}")))?;
        let add = |get: Option<oci_spec::runtime::Capabilities>| {
            let mut s = get.unwrap_or_default();
            s.insert(cap);
            Some(s)
        };
        caps.set_bounding(add(caps.bounding().clone()));
        caps.set_effective(add(caps.effective().clone()));
        caps.set_permitted(add(caps.permitted().clone()));
        caps.set_inheritable(add(caps.inheritable().clone()));
        caps.set_ambient(add(caps.ambient().clone()));
    }
    process.set_capabilities(Some(caps));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_root_follows_runcs_choice() {
        let xdg = || Some(PathBuf::from("/run/user/1000"));
        // Real root: /run, even with XDG_RUNTIME_DIR set (/run/user/0).
        assert_eq!(choose_root(true, true, xdg(), Some("alice")), PathBuf::from("/run/tote-shim"));
        assert_eq!(choose_root(true, true, None, None), PathBuf::from("/run/tote-shim"));
        // An ordinary user: their runtime directory.
        assert_eq!(choose_root(false, true, xdg(), Some("alice")), PathBuf::from("/run/user/1000/tote-shim"));
        // Root of a user namespace: the runtime directory, unless USER=root.
        assert_eq!(choose_root(true, false, xdg(), Some("alice")), PathBuf::from("/run/user/1000/tote-shim"));
        assert_eq!(choose_root(true, false, xdg(), None), PathBuf::from("/run/user/1000/tote-shim"));
        assert_eq!(choose_root(true, false, xdg(), Some("root")), PathBuf::from("/run/tote-shim"));
        assert_eq!(choose_root(true, false, None, Some("alice")), PathBuf::from("/run/tote-shim"));
    }
}
