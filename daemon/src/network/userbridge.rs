//! Container-to-container networking for a rootless toted: a bridge in a
//! network namespace of its own (owned by toted's user namespace, where
//! toted is root, so no real privilege is needed), with each container on
//! the default network attached to it as `eth1` by the standard CNI
//! `bridge` and `host-local` plugins. Containers reach each other at their
//! bridge addresses (`NetworkSettings.IPAddress`), as on docker's default
//! bridge. Their outbound traffic and published ports stay with their own
//! user-mode helper on `eth0` (see `usernet`): the bridge is no gateway,
//! adds no route but its subnet's and needs no NAT, so no iptables.
//!
//! The plugins run inside that namespace (a `PluginExec` that enters it
//! before exec), which toted makes and pins at `<state>/userbridge` on
//! first use (not under netns/, where pins of no sandbox are cleared); it
//! lives as long as toted's mount namespace (the namespace holder's),
//! across toted restarts.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::cni::{CniConfig, NetworkList};
use super::netns;
use super::plugin::{ExecError, PluginExec, TOOL_PATH, feed, finish};

/// The container's side of its bridge veth (`eth0` is the helper's tap).
pub const INTERFACE: &str = "eth1";

/// Where the bridge's namespace is pinned, in the state dir.
pub const NAMESPACE: &str = "userbridge";

/// The network configuration list containers are attached with.
pub fn network(config: &CniConfig) -> NetworkList {
    NetworkList {
        file: PathBuf::new(),
        name: config.network_name.clone(),
        conflist: json!({
            "cniVersion": "1.0.0",
            "name": config.network_name,
            "plugins": [{
                "type": "bridge",
                "bridge": config.bridge,
                // Each container's default route is its helper's.
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": config.subnet }]],
                    "dataDir": config.state_dir.join("ipam"),
                },
            }],
        }),
    }
}

/// Runs plugins and tools inside the bridge's namespace, making it first
/// if it is not there.
#[derive(Debug)]
pub struct InNamespace {
    path: PathBuf,
    /// Serialises making the namespace.
    made: std::sync::Mutex<()>,
}

impl InNamespace {
    pub fn new(path: PathBuf) -> Self {
        Self { path, made: std::sync::Mutex::new(()) }
    }

    fn open(&self) -> Result<std::fs::File, ExecError> {
        let _made = self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !netns::exists(&self.path) {
            // A file left with nothing mounted on it (a crash in between).
            let _ = netns::remove(&self.path);
            netns::create(&self.path).map_err(|e| ExecError::Spawn(std::io::Error::other(e.to_string())))?;
        }
        std::fs::File::open(&self.path).map_err(ExecError::Spawn)
    }

    fn enter(command: &mut Command, netns: RawFd) {
        // SAFETY: the closure runs in the forked child before exec and
        // makes one async-signal-safe system call on a descriptor the
        // parent keeps open until the child has been spawned.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl PluginExec for InNamespace {
    fn exec(&self, plugin: &Path, env: &[(String, String)], stdin: &[u8]) -> Result<Vec<u8>, ExecError> {
        let netns = self.open()?;
        let mut command = Command::new(plugin);
        command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        Self::enter(&mut command, netns.as_raw_fd());
        finish(feed(command, stdin).map_err(ExecError::Spawn)?)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, ExecError> {
        let netns = self.open()?;
        let mut command = Command::new(program);
        command.args(args).env_clear().env("PATH", TOOL_PATH).env("LC_ALL", "C");
        Self::enter(&mut command, netns.as_raw_fd());
        finish(feed(command, b"").map_err(ExecError::Spawn)?)
    }
}
