//! Whether the engine can run what a kubelet asks of it: the readiness a
//! CRI `Status` reports, and which network pods get (`[cri] pod_network`).

use std::path::PathBuf;

use super::Engine;
use crate::config::PodNetwork;
use crate::network::NetworkError;
use crate::network::cni::{NetworkList, conf};

/// Whether pods can be given a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkReadiness {
    Ready,
    /// What is missing, for a person to fix.
    NotReady(String),
}

impl Engine {
    /// The network configuration a pod started now is attached with:
    /// `None` for Tote's own bridge. The configuration directory is read
    /// on each call, so a file dropped in (or changed) is used by the next
    /// pod without restarting toted; pods already attached keep what they
    /// got, and are detached with it.
    pub fn pod_network(&self) -> Result<Option<NetworkList>, NetworkError> {
        let cri = &self.config.cri;
        if cri.pod_network == PodNetwork::Tote {
            return Ok(None);
        }
        let found = conf::load_dir(&cri.cni_conf_dir)?;
        match found.chosen {
            Some(list) => Ok(Some(list)),
            None if cri.pod_network == PodNetwork::Auto => Ok(None),
            None => Err(NetworkError::NoNetworkConfig(format!(
                "{}; [cri] pod_network = \"cni\" uses only that directory (\"auto\" would fall back to Tote's own bridge)",
                found.describe_missing(&cri.cni_conf_dir)
            ))),
        }
    }

    /// Ready when [`Engine::pod_network`] has a network and every plugin
    /// its configuration list runs directly, IPAM included, is an
    /// executable file in the plugin dirs. Checked on each call, so
    /// installing the plugins or the configuration makes the node ready
    /// without restarting toted.
    pub fn network_readiness(&self) -> NetworkReadiness {
        let (conflist, network) = match self.pod_network() {
            Ok(Some(list)) => (list.conflist, format!("the network {:?} of {}", list.name, list.file.display())),
            Ok(None) => (
                self.cni.conflist(),
                format!("Tote's own network {:?} ([network] in toted.toml)", self.cni.config().network_name),
            ),
            Err(e) => return NetworkReadiness::NotReady(e.to_string()),
        };
        let dirs = &self.cni.config().plugin_dirs;
        let missing: Vec<String> =
            conf::plugin_binaries(&conflist).into_iter().filter(|kind| find_executable(dirs, kind).is_none()).collect();
        if missing.is_empty() {
            return NetworkReadiness::Ready;
        }
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        NetworkReadiness::NotReady(format!(
            "CNI plugin{} {} not found in {} ({network} needs them; install Debian's containernetworking-plugins or set [network] plugin_dirs)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            dirs.join(":"),
        ))
    }
}

fn find_executable(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
