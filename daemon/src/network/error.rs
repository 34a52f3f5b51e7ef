//! Everything that can go wrong attaching a container to a network. Each
//! variant names what failed (the file, the plugin, the port spec) and why.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use nix::errno::Errno;

use super::ports::{PortMapping, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("unknown network mode {0:?}: use bridge, host or none")]
    UnknownMode(String),

    #[error("bad port spec {spec:?}: {reason}")]
    BadPortSpec { spec: String, reason: String },

    #[error("find a free {protocol} port on {ip}: {source}")]
    AllocatePort {
        ip: IpAddr,
        protocol: Protocol,
        #[source]
        source: std::io::Error,
    },

    /// docker's words, which scripts look for.
    #[error("Bind for {address} failed: port is already allocated")]
    PortAllocated { address: SocketAddr, protocol: Protocol },

    #[error("port mapping {0} has no host port: reserve_ports picks one")]
    UnallocatedPort(PortMapping),

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{op} network namespace {path}: {errno}")]
    Namespace { op: &'static str, path: PathBuf, errno: Errno },

    #[error("the thread that went to {op} network namespace {path} panicked")]
    NamespaceThread { op: &'static str, path: PathBuf },

    #[error("network config: {0}")]
    Config(String),

    #[error(
        "container id {0:?} cannot name a CNI attachment: use letters, digits, '_', '.' and '-', starting with a letter or digit"
    )]
    BadContainerId(String),

    #[error("hostname {0:?} is not valid: use letters, digits, '-' and '.', at most 253 characters")]
    BadHostname(String),

    #[error("DNS configuration {0} is not valid: a server, search domain or option holds white space or NUL")]
    BadDns(String),

    #[error("CNI_ARGS {key}={value:?}: a value holding ';' or '=' cannot be passed to CNI plugins")]
    BadCniArg { key: &'static str, value: String },

    #[error("{0}")]
    NoNetworkConfig(String),

    #[error("container {container_id} is attached already ({cache} exists): tear it down first")]
    AlreadyAttached { container_id: String, cache: PathBuf },

    #[error(
        "CNI plugin {plugin:?} is not in {dirs}: install containernetworking-plugins or set plugin_dirs under [network]"
    )]
    PluginNotFound { plugin: String, dirs: String },

    #[error("run CNI plugin {plugin}: {source}")]
    PluginSpawn {
        plugin: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The plugin reported an error the way the CNI spec says: a JSON
    /// object with `code`, `msg` and `details` on stdout.
    #[error("CNI plugin {plugin} {command} for container {container_id}: {msg}{details} (CNI error code {code})")]
    Plugin { plugin: String, command: &'static str, container_id: String, code: u64, msg: String, details: String },

    /// The plugin failed without a CNI error object (crashed, killed).
    #[error("CNI plugin {plugin} {command} for container {container_id} exited with {status}: {stderr}")]
    PluginExit { plugin: String, command: &'static str, container_id: String, status: String, stderr: String },

    #[error(
        "CNI plugin {plugin} {command} for container {container_id} printed a result that is not CNI JSON: {reason}"
    )]
    PluginResult { plugin: String, command: &'static str, container_id: String, reason: String },

    #[error("CNI result for container {container_id} has no IP address on {interface}")]
    NoAddress { container_id: String, interface: String },

    #[error("CNI cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{error}; undoing the partial setup also failed, run teardown again: {rollback}")]
    Rollback { error: Box<NetworkError>, rollback: Box<NetworkError> },

    #[error("run {program}: {source}")]
    CommandSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{command} exited with {status}: {stderr}")]
    Command { command: String, status: String, stderr: String },

    /// A rootless toted publishes through sockets of the user's.
    #[error(
        "port {port} is below {sysctl} ({start}): a rootless toted cannot publish it; publish a port of {start} \
         or above, or lower the sysctl as root (sysctl {sysctl}={port})"
    )]
    PrivilegedPort { port: u16, start: u16, sysctl: &'static str },

    #[error(
        "{helper} not found: a rootless toted's default network needs it (install Debian's {package} package, or \
         set [network] rootless_driver to the other helper), or run the container with --network none or \
         --network host"
    )]
    HelperMissing { helper: &'static str, package: &'static str },

    #[error("{helper} failed ({status}): {stderr} [{command}]")]
    Helper { helper: super::usernet::Helper, command: String, status: String, stderr: String },

    #[error("stop the network helper (pid {pid}): {reason}")]
    HelperStop { pid: i32, reason: String },
}

impl NetworkError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| NetworkError::Io { op, path, source }
    }
}
