//! The container config `run` and `create` send: built from their flags,
//! with the client-side checks docker makes before asking the daemon.

use std::collections::HashMap;

use tote_api::v1::{ContainerConfig, Device, Resources, RestartPolicy};

use crate::args::{ContainerFlags, ResourceFlags};
use crate::envfile::{self, EnvFileError};
use crate::units::{self, UnitError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Env(#[from] EnvFileError),
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("invalid restart policy {0:?}: use no, always, unless-stopped or on-failure[:max-retries]")]
    RestartPolicy(String),
    #[error("invalid restart policy {0:?}: the maximum retry count must be a non-negative integer")]
    RetryCount(String),
    #[error("maximum retry count cannot be used with restart policy '{0}'")]
    RetryNotAllowed(String),
    #[error("invalid label {0:?}: the key is empty")]
    Label(String),
    #[error("invalid log opt {0:?}: expected key=value")]
    LogOptSyntax(String),
    #[error("unknown log opt '{0}' for json-file log driver")]
    LogOptUnknown(String),
    #[error("invalid value {0:?} for log opt max-file: a positive integer")]
    LogMaxFile(String),
    #[error("Conflicting options: --restart and --rm")]
    RestartWithRemove,
    #[error(
        "invalid --device {0:?}: use HOST_PATH[:CONTAINER_PATH][:PERMISSIONS], paths absolute, permissions of r, w and m"
    )]
    Device(String),
}

/// One `--log-opt`; tote's log is docker's json-file with rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOpt {
    MaxSize(u64),
    MaxFiles(u32),
}

/// `no`, `always`, `unless-stopped` or `on-failure[:N]`.
pub fn parse_restart(value: &str) -> Result<RestartPolicy, ConfigError> {
    let (name, retries) = match value.split_once(':') {
        Some((name, retries)) => (name, Some(retries)),
        None => (value, None),
    };
    match (name, retries) {
        ("no" | "always" | "unless-stopped", None) => Ok(policy(name, 0)),
        ("no" | "always" | "unless-stopped", Some(_)) => Err(ConfigError::RetryNotAllowed(name.to_string())),
        ("on-failure", None) => Ok(policy(name, 0)),
        ("on-failure", Some(count)) => {
            let count = count.parse().map_err(|_| ConfigError::RetryCount(value.to_string()))?;
            Ok(policy(name, count))
        }
        _ => Err(ConfigError::RestartPolicy(value.to_string())),
    }
}

fn policy(name: &str, maximum_retry_count: u32) -> RestartPolicy {
    RestartPolicy { name: name.to_string(), maximum_retry_count }
}

/// docker's `--device`: `HOST[:CONTAINER][:PERMISSIONS]`, where a second
/// field made only of r, w and m is the permissions (as docker reads it).
pub fn parse_device(value: &str) -> Result<Device, ConfigError> {
    let bad = || ConfigError::Device(value.to_string());
    let is_mode = |p: &str| !p.is_empty() && p.chars().all(|c| "rwm".contains(c));
    let fields: Vec<&str> = value.split(':').collect();
    let (host, container, permissions) = match fields.as_slice() {
        [host] => (*host, "", ""),
        [host, mode] if is_mode(mode) => (*host, "", *mode),
        [host, container] => (*host, *container, ""),
        [host, container, mode] if is_mode(mode) => (*host, *container, *mode),
        _ => return Err(bad()),
    };
    if !host.starts_with('/') || !(container.is_empty() || container.starts_with('/')) {
        return Err(bad());
    }
    Ok(Device { host_path: host.into(), container_path: container.into(), permissions: permissions.into() })
}

/// `key=value`, or `key` alone for an empty value.
pub fn parse_label(value: &str) -> Result<(String, String), ConfigError> {
    let (key, value_part) = value.split_once('=').unwrap_or((value, ""));
    if key.is_empty() {
        return Err(ConfigError::Label(value.to_string()));
    }
    Ok((key.to_string(), value_part.to_string()))
}

/// `max-size=10m` or `max-file=3`.
pub fn parse_log_opt(value: &str) -> Result<LogOpt, ConfigError> {
    let (key, option) = value.split_once('=').ok_or_else(|| ConfigError::LogOptSyntax(value.to_string()))?;
    match key {
        "max-size" => {
            let bytes = units::parse_memory(option)?;
            Ok(LogOpt::MaxSize(u64::try_from(bytes).unwrap_or(0)))
        }
        "max-file" => match option.parse::<u32>() {
            Ok(files) if files > 0 => Ok(LogOpt::MaxFiles(files)),
            _ => Err(ConfigError::LogMaxFile(option.to_string())),
        },
        _ => Err(ConfigError::LogOptUnknown(key.to_string())),
    }
}

/// The config for `image` running `cmd`, from the run/create flags.
/// `lookup` reads the client's environment (for `-e KEY`).
pub fn container_config(
    flags: &ContainerFlags,
    image: &str,
    cmd: &[String],
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<ContainerConfig, ConfigError> {
    let restart = flags.restart.clone();
    if flags.rm && restart.as_ref().is_some_and(|policy| policy.name != "no") {
        return Err(ConfigError::RestartWithRemove);
    }
    let (log_max_size, log_max_files) = log_rotation(&flags.log_opts);
    Ok(ContainerConfig {
        image: image.to_string(),
        entrypoint: flags.entrypoint.iter().filter(|e| !e.is_empty()).cloned().collect(),
        entrypoint_set: flags.entrypoint.is_some(),
        cmd: cmd.to_vec(),
        env: environment(&flags.env_files, &flags.env, lookup)?,
        working_dir: flags.workdir.clone().unwrap_or_default(),
        user: flags.user.clone().unwrap_or_default(),
        hostname: flags.hostname.clone().unwrap_or_default(),
        tty: flags.tty,
        open_stdin: flags.interactive,
        labels: flags.labels.iter().cloned().collect::<HashMap<_, _>>(),
        mounts: flags.volumes.clone(),
        resources: Some(flags.resources.to_resources()),
        network: flags.network.clone().unwrap_or_default(),
        publish: flags.publish.clone(),
        read_only: flags.read_only,
        cap_add: flags.cap_add.clone(),
        cap_drop: flags.cap_drop.clone(),
        privileged: flags.privileged,
        security_opt: flags.security_opt.clone(),
        restart,
        auto_remove: flags.rm,
        stop_signal: flags.stop_signal.clone().unwrap_or_default(),
        stop_timeout: flags.stop_timeout.unwrap_or(0),
        log_max_size,
        log_max_files,
        devices: flags.devices.clone(),
    })
}

/// Env files first, then `-e` flags, so a flag overrides a file (docker's order).
pub fn environment(
    files: &[std::path::PathBuf],
    flags: &[String],
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ConfigError> {
    let mut env = Vec::new();
    for file in files {
        env.extend(envfile::read(file, lookup)?);
    }
    for flag in flags {
        env.extend(envfile::resolve(flag, lookup)?);
    }
    Ok(env)
}

fn log_rotation(opts: &[LogOpt]) -> (u64, u32) {
    opts.iter().fold((0, 0), |(size, files), opt| match opt {
        LogOpt::MaxSize(bytes) => (*bytes, files),
        LogOpt::MaxFiles(count) => (size, *count),
    })
}

impl ResourceFlags {
    /// The limits as the API takes them: 0 leaves a limit unset.
    pub fn to_resources(&self) -> Resources {
        Resources {
            memory: self.memory.unwrap_or(0),
            memory_swap: self.memory_swap.unwrap_or(0),
            nano_cpus: self.cpus.unwrap_or(0),
            cpu_shares: self.cpu_shares.unwrap_or(0),
            pids_limit: self.pids_limit.unwrap_or(0),
            cpuset_cpus: self.cpuset_cpus.clone().unwrap_or_default(),
        }
    }

    /// The limits for an update, where 0 means "unchanged": docker's
    /// `--pids-limit 0` (unlimited) becomes the API's -1.
    pub fn to_update(&self) -> Resources {
        let mut resources = self.to_resources();
        if self.pids_limit == Some(0) {
            resources.pids_limit = -1;
        }
        resources
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.memory_swap.is_none()
            && self.cpus.is_none()
            && self.cpu_shares.is_none()
            && self.pids_limit.is_none()
            && self.cpuset_cpus.is_none()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};
    use crate::mounts;

    fn lookup(name: &str) -> Option<String> {
        (name == "FOO").then(|| "from-client".to_string())
    }

    /// The config `tote create ARGS` would send.
    fn config_of(args: &[&str]) -> Result<ContainerConfig, ConfigError> {
        let cli = Cli::try_parse_from(["tote", "create"].iter().chain(args)).expect("parses");
        let Some(Command::Create(create)) = cli.command else { panic!("not a create") };
        let (image, cmd) = create.image_and_command.split_first().expect("image");
        container_config(&create.flags, image, cmd, &lookup)
    }

    #[test]
    fn devices_as_docker_reads_them() {
        let device =
            |h: &str, c: &str, p: &str| Device { host_path: h.into(), container_path: c.into(), permissions: p.into() };
        assert_eq!(parse_device("/dev/fuse").unwrap(), device("/dev/fuse", "", ""));
        assert_eq!(parse_device("/dev/sdc:rw").unwrap(), device("/dev/sdc", "", "rw"));
        assert_eq!(parse_device("/dev/sdc:/dev/xvdc").unwrap(), device("/dev/sdc", "/dev/xvdc", ""));
        assert_eq!(parse_device("/dev/sdc:/dev/xvdc:r").unwrap(), device("/dev/sdc", "/dev/xvdc", "r"));
        for bad in ["dev/sdc", "/dev/sdc:xvdc", "/dev/sdc:/dev/xvdc:rx", "/a:/b:r:w", ""] {
            assert!(parse_device(bad).unwrap_err().to_string().contains("--device"), "{bad}");
        }
        let config = config_of(&["--device", "/dev/null:/dev/n:r", "img"]).unwrap();
        assert_eq!(config.devices, [device("/dev/null", "/dev/n", "r")]);
    }

    #[test]
    fn restart_policies() {
        assert_eq!(parse_restart("no").unwrap(), policy("no", 0));
        assert_eq!(parse_restart("always").unwrap(), policy("always", 0));
        assert_eq!(parse_restart("unless-stopped").unwrap(), policy("unless-stopped", 0));
        assert_eq!(parse_restart("on-failure").unwrap(), policy("on-failure", 0));
        assert_eq!(parse_restart("on-failure:5").unwrap(), policy("on-failure", 5));
        assert!(matches!(parse_restart("always:3"), Err(ConfigError::RetryNotAllowed(_))));
        assert!(matches!(parse_restart("on-failure:-1"), Err(ConfigError::RetryCount(_))));
        assert!(matches!(parse_restart("on-failure:x"), Err(ConfigError::RetryCount(_))));
        assert!(matches!(parse_restart("sometimes"), Err(ConfigError::RestartPolicy(_))));
    }

    #[test]
    fn labels_and_log_opts() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("flag").unwrap(), ("flag".into(), String::new()));
        assert!(parse_label("=x").is_err());
        assert_eq!(parse_log_opt("max-size=10m").unwrap(), LogOpt::MaxSize(10 << 20));
        assert_eq!(parse_log_opt("max-file=3").unwrap(), LogOpt::MaxFiles(3));
        assert!(matches!(parse_log_opt("max-file=0"), Err(ConfigError::LogMaxFile(_))));
        assert!(matches!(parse_log_opt("compress=true"), Err(ConfigError::LogOptUnknown(_))));
        assert!(matches!(parse_log_opt("max-size"), Err(ConfigError::LogOptSyntax(_))));
    }

    #[test]
    fn run_flags_become_the_config() {
        let config = config_of(&[
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "FOO",
            "-e",
            "UNSET",
            "-m",
            "64m",
            "--memory-swap",
            "-1",
            "--cpus",
            "1.5",
            "--pids-limit",
            "-1",
            "-v",
            "/srv:/srv:ro",
            "-p",
            "8080:80",
            "--restart",
            "on-failure:3",
            "-l",
            "tier=web",
            "--log-opt",
            "max-size=10m",
            "--log-opt",
            "max-file=3",
            "--entrypoint",
            "",
            "-h",
            "box",
            "-it",
            "busybox",
            "sh",
            "-c",
            "echo -n hi",
        ])
        .unwrap();
        assert_eq!(config.image, "busybox");
        assert_eq!(config.cmd, ["sh", "-c", "echo -n hi"]);
        assert_eq!(config.env, ["A=1", "FOO=from-client"]);
        assert!(config.entrypoint_set && config.entrypoint.is_empty());
        assert!(config.tty && config.open_stdin);
        assert_eq!(config.hostname, "box");
        let resources = config.resources.unwrap();
        assert_eq!((resources.memory, resources.memory_swap, resources.nano_cpus), (64 << 20, -1, 1_500_000_000));
        assert_eq!(resources.pids_limit, -1);
        assert_eq!(config.mounts, [mounts::parse_volume("/srv:/srv:ro").unwrap()]);
        assert_eq!(config.publish, ["8080:80"]);
        assert_eq!(config.restart, Some(policy("on-failure", 3)));
        assert_eq!(config.labels.get("tier").map(String::as_str), Some("web"));
        assert_eq!((config.log_max_size, config.log_max_files), (10 << 20, 3));
    }

    #[test]
    fn an_entrypoint_is_one_word_and_unset_by_default() {
        let config = config_of(&["--entrypoint", "/bin/sh -c", "img"]).unwrap();
        assert_eq!(config.entrypoint, ["/bin/sh -c"]);
        let config = config_of(&["img"]).unwrap();
        assert!(!config.entrypoint_set);
    }

    #[test]
    fn restart_conflicts_with_rm() {
        assert!(matches!(config_of(&["--rm", "--restart", "always", "img"]), Err(ConfigError::RestartWithRemove)));
        assert!(config_of(&["--rm", "--restart", "no", "img"]).is_ok());
    }

    #[test]
    fn update_pids_limit_zero_means_unlimited() {
        let flags = ResourceFlags { pids_limit: Some(0), ..Default::default() };
        assert_eq!(flags.to_update().pids_limit, -1);
        assert!(ResourceFlags::default().is_empty());
    }
}
