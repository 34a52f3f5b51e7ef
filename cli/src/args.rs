//! tote's command line, docker's flags and names. Values that are clearly
//! client-side (sizes, CPUs, volume specs, restart policies, labels, log
//! options) are parsed here, so a bad one is a usage error (exit 125).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use tote_api::v1::{Mount, RestartPolicy};

use crate::config::{self, LogOpt};
use crate::{mounts, units};

#[derive(Debug, Parser)]
#[command(name = "tote", about = "A self-sufficient runtime for containers", disable_version_flag = true)]
pub struct Cli {
    /// Daemon socket to connect to (default: $TOTE_HOST, else unix:///run/tote/tote.sock for root and
    /// unix://$XDG_RUNTIME_DIR/tote/tote.sock, a rootless toted's, for other users)
    #[arg(short = 'H', long)]
    pub host: Option<String>,
    /// Enable debug mode
    #[arg(short = 'D', long)]
    pub debug: bool,
    /// Print version information and quit
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and run a new container from an image
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Create a new container
    #[command(disable_help_flag = true)]
    Create(CreateArgs),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Kill one or more running containers
    Kill(KillArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// Pause all processes within one or more containers
    Pause(Targets),
    /// Unpause all processes within one or more containers
    Unpause(Targets),
    /// Block until one or more containers stop, then print their exit codes
    Wait(Targets),
    /// Rename a container
    Rename(RenameArgs),
    /// Update configuration of one or more containers
    Update(UpdateArgs),
    /// List containers
    Ps(PsArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Execute a command in a running container
    Exec(ExecArgs),
    /// Attach local standard input, output, and error streams to a running container
    Attach(AttachArgs),
    /// Return low-level information on containers or images
    Inspect(InspectArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// Display a live stream of container(s) resource usage statistics
    Stats(StatsArgs),
    /// List port mappings or a specific mapping for the container
    Port(PortArgs),
    /// Copy files/folders between a container and the local filesystem
    Cp(CpArgs),
    /// List images
    Images(ImagesArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    Save(SaveArgs),
    /// Manage images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Manage Tote
    #[command(subcommand)]
    System(SystemCommand),
    /// Display system-wide information
    Info,
    /// Show the tote version information
    Version,
    /// Get real time events from the server
    Events(EventsArgs),
}

/// The limits `run`, `create` and `update` share.
#[derive(Debug, Clone, Default, Args)]
pub struct ResourceFlags {
    /// Memory limit (e.g. 64m, 1g)
    #[arg(short = 'm', long, value_parser = units::parse_memory)]
    pub memory: Option<i64>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap
    #[arg(long = "memory-swap", value_parser = units::parse_memory_swap, allow_hyphen_values = true)]
    pub memory_swap: Option<i64>,
    /// Number of CPUs (e.g. 1.5)
    #[arg(long, value_parser = units::parse_nano_cpus)]
    pub cpus: Option<i64>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long = "cpu-shares")]
    pub cpu_shares: Option<i64>,
    /// Tune container pids limit (-1 for unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// CPUs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
}

/// The flags `run` and `create` share.
#[derive(Debug, Clone, Default, Args)]
pub struct ContainerFlags {
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=value, or KEY to copy it from here)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Bind mount a volume (/host:/ctr[:ro], name:/ctr[:ro] or /ctr)
    #[arg(short = 'v', long = "volume", value_name = "VOLUME", value_parser = mounts::parse_volume)]
    pub volumes: Vec<Mount>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container host name
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image ("" clears it)
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    #[command(flatten)]
    pub resources: ResourceFlags,
    /// Connect a container to a network (bridge, host, none)
    #[arg(long, visible_alias = "net")]
    pub network: Option<String>,
    /// Publish a container's port(s) to the host ([ip:][hostPort:]containerPort[/proto])
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Add Linux capabilities
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Give extended privileges to this container
    #[arg(long)]
    pub privileged: bool,
    /// Security options (seccomp=unconfined|PATH, no-new-privileges)
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Add a host device to the container (HOST[:CONTAINER][:PERMISSIONS], permissions of r, w, m)
    #[arg(long = "device", value_parser = config::parse_device)]
    pub devices: Vec<tote_api::v1::Device>,
    /// Restart policy (no, always, unless-stopped, on-failure[:max-retries])
    #[arg(long, value_parser = config::parse_restart)]
    pub restart: Option<RestartPolicy>,
    /// Set meta data on a container (key=value)
    #[arg(short = 'l', long = "label", value_parser = config::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Signal to stop the container
    #[arg(long = "stop-signal")]
    pub stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container
    #[arg(long = "stop-timeout", allow_hyphen_values = true)]
    pub stop_timeout: Option<i32>,
    /// Log driver options (max-size=10m, max-file=3)
    #[arg(long = "log-opt", value_parser = config::parse_log_opt)]
    pub log_opts: Vec<LogOpt>,
    /// Print help (-h is --hostname, as in docker)
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// Everything after IMAGE is the command, flags included, as docker reads it.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Proxy received signals to the process
    #[arg(long = "sig-proxy", default_value_t = true, action = ArgAction::Set)]
    pub sig_proxy: bool,
    #[command(flatten)]
    pub flags: ContainerFlags,
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, value_names = ["IMAGE", "COMMAND"])]
    pub image_and_command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub flags: ContainerFlags,
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, value_names = ["IMAGE", "COMMAND"])]
    pub image_and_command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct Targets {
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Attach container's STDIN
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", visible_alias = "timeout", allow_hyphen_values = true)]
    pub time: Option<i32>,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove anonymous volumes associated with the container
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RenameArgs {
    pub container: String,
    pub new_name: String,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub resources: ResourceFlags,
    /// Restart policy to apply when a container exits
    #[arg(long, value_parser = config::parse_restart)]
    pub restart: Option<RestartPolicy>,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Filter output based on conditions provided (key=value)
    #[arg(short = 'f', long = "filter")]
    pub filters: Vec<String>,
    /// Format output using a template ("table", "json" or e.g. '{{.ID}}\t{{.Names}}')
    #[arg(long)]
    pub format: Option<String>,
    /// Show n last created containers (includes all states)
    #[arg(short = 'n', long = "last", allow_hyphen_values = true, default_value_t = -1)]
    pub last: i64,
    /// Show the latest created container (includes all states)
    #[arg(short = 'l', long)]
    pub latest: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs ("all" or a number)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m)
    #[arg(long)]
    pub since: Option<String>,
    /// Show logs before a timestamp or relative (e.g. 42m)
    #[arg(long)]
    pub until: Option<String>,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    pub privileged: bool,
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, value_names = ["CONTAINER", "COMMAND"])]
    pub container_and_command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Do not attach STDIN
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    /// Proxy all received signals to the process
    #[arg(long = "sig-proxy", default_value_t = true, action = ArgAction::Set)]
    pub sig_proxy: bool,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a template (e.g. '{{.State.Status}}')
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// Return JSON for a specified type (container or image)
    #[arg(long = "type", value_parser = ["container", "image"])]
    pub kind: Option<String>,
    #[arg(required = true, value_name = "NAME|ID")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    pub container: String,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Disable streaming stats and only pull the first result
    #[arg(long = "no-stream")]
    pub no_stream: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    #[arg(value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    pub container: String,
    /// PRIVATE_PORT[/PROTO]
    pub private_port: Option<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// CONTAINER:SRC_PATH, a local path, or - (a tar archive on STDIN)
    pub source: String,
    /// CONTAINER:DEST_PATH, a local path, or - (a tar archive to STDOUT)
    pub destination: String,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Format output using a template
    #[arg(long)]
    pub format: Option<String>,
    /// REPOSITORY[:TAG]
    pub repository: Option<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Suppress verbose output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Set platform if server is multi-platform capable (e.g. linux/arm64)
    #[arg(long)]
    pub platform: Option<String>,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short = 'i', long)]
    pub input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Remove unused images and the partial downloads of interrupted pulls
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show tote disk usage
    Df {
        /// Format output using a template ("table", "json" or e.g. '{{.Type}}\t{{.Size}}')
        #[arg(long)]
        format: Option<String>,
    },
    /// Display system-wide information
    Info,
    /// Get real time events from the server
    Events(EventsArgs),
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    Create {
        /// Set metadata for a volume
        #[arg(short = 'l', long = "label", value_parser = config::parse_label)]
        labels: Vec<(String, String)>,
        name: Option<String>,
    },
    /// List volumes
    #[command(visible_alias = "list")]
    Ls {
        /// Only display volume names
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Format output using a template
        #[arg(long)]
        format: Option<String>,
    },
    /// Display detailed information on one or more volumes
    Inspect {
        /// Format output using a template
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true, value_name = "VOLUME")]
        names: Vec<String>,
    },
    /// Remove one or more volumes
    #[command(visible_alias = "remove")]
    Rm {
        /// Force the removal of one or more volumes
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true, value_name = "VOLUME")]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Show all events created since timestamp
    #[arg(long)]
    pub since: Option<String>,
    /// Filter output based on conditions provided (type=, container=, event=, image=)
    #[arg(short = 'f', long = "filter")]
    pub filters: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tote").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn everything_after_the_image_is_the_command() {
        let cli = parse(&["run", "-d", "busybox", "ls", "-d", "--help", "-e", "x"]).unwrap();
        let Some(Command::Run(run)) = cli.command else { panic!() };
        assert!(run.detach);
        assert_eq!(run.image_and_command, ["busybox", "ls", "-d", "--help", "-e", "x"]);
    }

    #[test]
    fn dash_h_is_the_hostname_for_run() {
        let cli = parse(&["run", "-h", "box", "img"]).unwrap();
        let Some(Command::Run(run)) = cli.command else { panic!() };
        assert_eq!(run.flags.hostname.as_deref(), Some("box"));
        assert_eq!(parse(&["run", "--help"]).unwrap_err().kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse(&["run", "-m", "64x", "img"]).is_err());
        assert!(parse(&["run", "--cpus", "x", "img"]).is_err());
        assert!(parse(&["run", "-v", "./rel:/x", "img"]).is_err());
        assert!(parse(&["run", "--restart", "sometimes", "img"]).is_err());
        assert!(parse(&["run", "--bogus", "img"]).is_err());
        assert!(parse(&["exec", "ctr"]).is_err());
    }

    #[test]
    fn image_prune_and_system_df_parse() {
        let cli = parse(&["image", "prune", "-af"]).unwrap();
        let Some(Command::Image(ImageCommand::Prune(prune))) = cli.command else { panic!() };
        assert!(prune.all && prune.force);
        let cli = parse(&["system", "df", "--format", "{{.Type}}"]).unwrap();
        let Some(Command::System(SystemCommand::Df { format })) = cli.command else { panic!() };
        assert_eq!(format.as_deref(), Some("{{.Type}}"));
        assert!(parse(&["image", "prune", "busybox"]).is_err(), "prune takes no arguments");
    }

    #[test]
    fn exec_takes_the_container_then_the_command() {
        let cli = parse(&["exec", "-it", "web", "sh", "-c", "ls -l"]).unwrap();
        let Some(Command::Exec(exec)) = cli.command else { panic!() };
        assert!(exec.interactive && exec.tty);
        assert_eq!(exec.container_and_command, ["web", "sh", "-c", "ls -l"]);
    }
}
