//! Whether the engine can run what a kubelet asks of it: the readiness a
//! CRI `Status` reports.

use std::path::PathBuf;

use super::Engine;

/// Whether pods can be given a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkReadiness {
    Ready,
    /// What is missing, for a person to fix.
    NotReady(String),
}

impl Engine {
    /// Pods are attached with Tote's own CNI network (the `[network]`
    /// section): it is ready when every plugin its configuration list
    /// runs, IPAM included, is an executable file in the plugin dirs.
    /// Checked on each call, so installing the plugins makes the node
    /// ready without restarting toted.
    pub fn network_readiness(&self) -> NetworkReadiness {
        let conflist = self.cni.conflist();
        let plugins = conflist["plugins"].as_array().cloned().unwrap_or_default();
        let mut wanted: Vec<String> = Vec::new();
        for plugin in &plugins {
            for kind in [&plugin["type"], &plugin["ipam"]["type"]] {
                if let Some(kind) = kind.as_str()
                    && !wanted.iter().any(|w| w == kind)
                {
                    wanted.push(kind.to_string());
                }
            }
        }
        let dirs = &self.cni.config().plugin_dirs;
        let missing: Vec<String> = wanted.into_iter().filter(|kind| find_executable(dirs, kind).is_none()).collect();
        if missing.is_empty() {
            return NetworkReadiness::Ready;
        }
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        NetworkReadiness::NotReady(format!(
            "CNI plugin{} {} not found in {} (the network \"{}\" needs them; install Debian's containernetworking-plugins or set [network] plugin_dirs)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            dirs.join(":"),
            self.cni.config().network_name,
        ))
    }
}

fn find_executable(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
