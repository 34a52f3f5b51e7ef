//! toted's configuration: a TOML file (default /etc/tote/toted.toml; for a
//! rootless toted `$XDG_CONFIG_HOME/tote/toted.toml`, whose defaults for
//! root, state_dir and listen follow the XDG directories), with
//! command-line flags on top. Every key is optional.
//!
//! ```toml
//! root = "/var/lib/tote"              # images, containers, volumes
//! state_dir = "/run/tote"             # sockets, monitors, netns: gone at boot
//! listen = "unix:///run/tote/tote.sock"
//! socket_mode = "0660"
//! socket_group = "tote"               # optional: who may use the CLI
//! log_level = "info"                  # error, warn, info, debug, trace
//! cgroup_parent = "/tote"
//! cgroup_driver = "cgroupfs"          # the only driver so far
//! rootless_single_id = false          # rootless: map only the user's own ids
//!
//! [container_log]                     # defaults for `run --log-opt`
//! max_size = "10m"
//! max_files = 3
//!
//! [runtime]
//! shim = "/usr/local/bin/tote-shim"
//!
//! [network]                           # the default bridge network (CNI)
//! bridge = "tote0"
//! subnet = "10.88.0.0/16"
//! rootless_driver = "slirp4netns"     # rootless: slirp4netns or pasta instead
//!
//! [storage]
//! rootless_overlay = "auto"           # rootless: auto, kernel or fuse-overlayfs
//!
//! [partial_downloads]                 # interrupted pulls' data, kept to resume
//! max_age = "24h"                     # removed when not written to for this long
//! max_size = "1g"                     # beyond this in all, the oldest go first
//!
//! auth_file = "/root/.docker/config.json"
//! [registries."docker.io"]
//! mirrors = ["http://127.0.0.1:5000"]
//!
//! [cri]                               # the Kubernetes CRI
//! pinned_images = ["registry.k8s.io/pause:3.10"]   # kept by the kubelet's image GC
//! cni_conf_dir = "/etc/cni/net.d"     # pods' CNI network configurations
//! pod_network = "auto"                # auto (that dir, else [network]), cni or tote
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::content::IngestPolicy;
use crate::network::CniConfig;
use crate::privilege::Privilege;
use crate::registry::RegistryConfig;
use crate::registry::config::RegistryHost;

pub const DEFAULT_CONFIG: &str = "/etc/tote/toted.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub listen: String,
    /// Octal permissions of the API socket.
    pub socket_mode: String,
    pub socket_group: Option<String>,
    pub log_level: String,
    pub cgroup_parent: String,
    pub cgroup_driver: String,
    pub container_log: LogDefaults,
    pub runtime: RuntimeConfig,
    pub network: NetworkSection,
    pub storage: StorageSection,
    pub partial_downloads: PartialDownloads,
    pub auth_file: Option<PathBuf>,
    pub registries: BTreeMap<String, RegistryHost>,
    pub cri: CriSection,
    /// Rootless only: map just the user's own uid and gid instead of their
    /// /etc/subuid and /etc/subgid ranges (no newuidmap needed; images'
    /// files all belong to the user, containers cannot change user).
    pub rootless_single_id: bool,
    /// Root or rootless: decided by toted when it starts, never read from
    /// the file.
    #[serde(skip)]
    pub privilege: Privilege,
}

/// Settings only the CRI uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriSection {
    /// Images the CRI reports as pinned, so that the kubelet's image
    /// garbage collection leaves them: names (normalised as references
    /// are) or image ids.
    pub pinned_images: Vec<String>,
    /// Where pods' CNI network configurations are looked for (the
    /// kubelet's and containerd's default). Read afresh for each pod and
    /// each Status, so a network add-on may drop its file in at any time.
    pub cni_conf_dir: PathBuf,
    /// Which network pods are attached to.
    pub pod_network: PodNetwork,
    /// Where the streaming server (the URLs of Exec, Attach and
    /// PortForward) listens: loopback by default, where the node's kubelet
    /// reaches it (containerd's default too); port 0 picks a free one.
    pub stream_address: std::net::IpAddr,
    pub stream_port: u16,
}

impl Default for CriSection {
    fn default() -> Self {
        Self {
            pinned_images: Vec::new(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            pod_network: PodNetwork::default(),
            stream_address: std::net::IpAddr::from([127, 0, 0, 1]),
            stream_port: 0,
        }
    }
}

/// `[cri] pod_network`: where a pod's network comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodNetwork {
    /// The configuration directory's first network when it has one, as a
    /// kubelet user expects; else Tote's own bridge, so that pods on a
    /// single node work with nothing installed.
    #[default]
    Auto,
    /// The configuration directory only: with nothing there, the network
    /// is not ready and pods other than host-network ones are refused.
    Cni,
    /// Tote's own bridge (`[network]`), whatever the directory holds.
    Tote,
}

impl std::fmt::Display for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodNetwork::Auto => "auto",
            PodNetwork::Cni => "cni",
            PodNetwork::Tote => "tote",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogDefaults {
    /// A size with docker's units: 10m, 512k, 1g.
    pub max_size: String,
    pub max_files: u32,
}

/// How containers' roots are mounted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Rootless only (real root always uses the kernel's overlayfs): which
    /// overlay mounts a container's root.
    pub rootless_overlay: RootlessOverlay,
}

/// `[storage] rootless_overlay`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootlessOverlay {
    /// The kernel's overlayfs with `userxattr` when a trial mount on the
    /// data root's filesystem works (Linux 5.11+, a filesystem with user
    /// xattrs), else fuse-overlayfs. Tried at each start: a kernel or
    /// filesystem may change between two.
    #[default]
    Auto,
    /// The kernel's overlayfs only: toted does not start if it cannot.
    Kernel,
    /// fuse-overlayfs (Debian's package of that name), even where the
    /// kernel could: toted does not start without it.
    FuseOverlayfs,
}

impl std::fmt::Display for RootlessOverlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RootlessOverlay::Auto => "auto",
            RootlessOverlay::Kernel => "kernel",
            RootlessOverlay::FuseOverlayfs => "fuse-overlayfs",
        })
    }
}

/// How long and how much of interrupted pulls' downloads is kept for the
/// next pull to resume (see [`IngestPolicy`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartialDownloads {
    /// A duration: 24h, 90m, 2d, 1h30m.
    pub max_age: String,
    /// A size with docker's units: 1g, 500m.
    pub max_size: String,
}

impl Default for PartialDownloads {
    fn default() -> Self {
        Self { max_age: "24h".into(), max_size: "1g".into() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// tote-shim; default: next to toted, else /usr/local/bin/tote-shim.
    pub shim: Option<PathBuf>,
}

/// The bridge network's settings; where CNI keeps its state follows the
/// state dir.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    pub plugin_dirs: Vec<PathBuf>,
    pub network_name: String,
    pub bridge: String,
    pub subnet: String,
    /// What connects a rootless toted's containers instead of the bridge.
    pub rootless_driver: crate::network::usernet::Helper,
}

impl Default for NetworkSection {
    fn default() -> Self {
        let cni = CniConfig::default();
        Self {
            plugin_dirs: cni.plugin_dirs,
            network_name: cni.network_name,
            bridge: cni.bridge,
            subnet: cni.subnet,
            rootless_driver: crate::network::usernet::Helper::default(),
        }
    }
}

impl Default for LogDefaults {
    fn default() -> Self {
        Self { max_size: "10m".into(), max_files: 3 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/tote"),
            state_dir: PathBuf::from("/run/tote"),
            listen: tote_api::DEFAULT_HOST.into(),
            socket_mode: "0660".into(),
            socket_group: None,
            log_level: "info".into(),
            cgroup_parent: "/tote".into(),
            cgroup_driver: "cgroupfs".into(),
            container_log: LogDefaults::default(),
            runtime: RuntimeConfig::default(),
            network: NetworkSection::default(),
            storage: StorageSection::default(),
            partial_downloads: PartialDownloads::default(),
            auth_file: None,
            registries: BTreeMap::new(),
            cri: CriSection::default(),
            rootless_single_id: false,
            privilege: Privilege::Root,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file is the defaults only when `optional`
    /// (the default path), a named one must exist.
    pub fn load(path: &Path, optional: bool) -> Result<Self, ConfigError> {
        Self::load_with_defaults(path, optional, Self::default())
    }

    /// As [`Config::load`], with `defaults`' root, state_dir, listen and
    /// cri.cni_conf_dir where the file does not set them (a rootless
    /// toted's directories).
    pub fn load_with_defaults(path: &Path, optional: bool, defaults: Self) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(defaults),
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        };
        let toml_error = |e| ConfigError::Toml { path: path.into(), source: Box::new(e) };
        let mut config: Self = toml::from_str(&text).map_err(toml_error)?;
        let keys: toml::Table = toml::from_str(&text).map_err(toml_error)?;
        if !keys.contains_key("root") {
            config.root = defaults.root;
        }
        if !keys.contains_key("state_dir") {
            config.state_dir = defaults.state_dir;
        }
        if !keys.contains_key("listen") {
            config.listen = defaults.listen;
        }
        let cri_keys = keys.get("cri").and_then(toml::Value::as_table);
        if !cri_keys.is_some_and(|cri| cri.contains_key("cni_conf_dir")) {
            config.cri.cni_conf_dir = defaults.cri.cni_conf_dir;
        }
        config.validate().map_err(|problem| ConfigError::Invalid { path: path.into(), problem })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cgroup_driver != "cgroupfs" {
            return Err(format!("cgroup_driver {:?}: only \"cgroupfs\" is supported", self.cgroup_driver));
        }
        if !self.cgroup_parent.starts_with('/') {
            return Err(format!("cgroup_parent {:?} must be an absolute cgroup path like /tote", self.cgroup_parent));
        }
        self.socket_mode_bits()?;
        parse_size(&self.container_log.max_size).map_err(|e| format!("container_log.max_size: {e}"))?;
        if self.container_log.max_files == 0 {
            return Err("container_log.max_files must be at least 1".into());
        }
        self.partial_downloads_policy()?;
        tote_api::socket_path(&self.listen).map_err(|e| e.to_string())?;
        if self.cri.cni_conf_dir.is_relative() {
            return Err(format!("cri.cni_conf_dir {:?} must be an absolute path", self.cri.cni_conf_dir));
        }
        for pinned in &self.cri.pinned_images {
            let is_id = pinned.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64);
            if !is_id {
                crate::reference::parse(pinned).map_err(|e| format!("cri.pinned_images: {e}"))?;
            }
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(format!("log_level {:?}: use error, warn, info, debug or trace", self.log_level));
        }
        Ok(())
    }

    pub fn socket_mode_bits(&self) -> Result<u32, String> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("socket_mode {:?} is not an octal mode like 0660", self.socket_mode))
    }

    /// The `[partial_downloads]` settings, checked: both must be more
    /// than zero (keeping nothing would make every cut pull start over).
    pub fn partial_downloads_policy(&self) -> Result<IngestPolicy, String> {
        let section = &self.partial_downloads;
        let max_age = parse_duration(&section.max_age).map_err(|e| format!("partial_downloads.max_age: {e}"))?;
        let max_size = parse_size(&section.max_size).map_err(|e| format!("partial_downloads.max_size: {e}"))?;
        if max_age.is_zero() {
            return Err(format!("partial_downloads.max_age {:?} must be more than 0 (e.g. 24h)", section.max_age));
        }
        if max_size == 0 {
            return Err(format!("partial_downloads.max_size {:?} must be more than 0 (e.g. 1g)", section.max_size));
        }
        Ok(IngestPolicy { max_age, max_size })
    }

    /// The partial-download policy of a validated config.
    pub fn ingest_policy(&self) -> IngestPolicy {
        self.partial_downloads_policy().unwrap_or_default()
    }

    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig { auth_file: self.auth_file.clone(), registries: self.registries.clone() }
    }

    pub fn cni_config(&self) -> CniConfig {
        CniConfig {
            plugin_dirs: self.network.plugin_dirs.clone(),
            network_name: self.network.network_name.clone(),
            bridge: self.network.bridge.clone(),
            subnet: self.network.subnet.clone(),
            state_dir: self.state_dir.join("cni"),
        }
    }

    /// The container log limits by default.
    pub fn log_rotation(&self) -> (u64, u32) {
        (parse_size(&self.container_log.max_size).unwrap_or(10 << 20), self.container_log.max_files)
    }
}

/// A duration as numbers with units, Go-style without the small ones:
/// "24h", "90m", "30s", "2d", "1h30m".
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration (use e.g. 24h, 90m, 30s, 2d or 1h30m)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut seconds: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = match rest.as_bytes()[digits] {
            b's' => 1,
            b'm' => 60,
            b'h' => 60 * 60,
            b'd' => 24 * 60 * 60,
            _ => return Err(bad()),
        };
        seconds = number
            .checked_mul(unit)
            .and_then(|n| seconds.checked_add(n))
            .ok_or_else(|| format!("{text:?} is out of range"))?;
        rest = &rest[digits + 1..];
    }
    Ok(std::time::Duration::from_secs(seconds))
}

/// A size with docker's units (b, k, m, g; case-insensitive, optional "b"
/// after the unit): "10m" → 10485760.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let unit: f64 = match unit.trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{text:?} is not a size (use a number with b, k, m or g)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (use a number with b, k, m or g)"))?;
    let bytes = value * unit;
    if !(bytes.is_finite() && (0.0..1.8e19).contains(&bytes)) {
        return Err(format!("{text:?} is out of range"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_docker_units() {
        assert_eq!(parse_size("10m").unwrap(), 10 << 20);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("ten").unwrap_err().contains("ten"));
        assert!(parse_size("5q").is_err());
    }

    #[test]
    fn durations_take_s_m_h_d() {
        use std::time::Duration;
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        for bad in ["", "24", "h", "1.5h", "10x", "-1h", "1h 30m"] {
            assert!(parse_duration(bad).unwrap_err().contains("not a duration"), "{bad:?}");
        }
    }

    #[test]
    fn partial_download_limits_are_checked() {
        let mut config = Config::default();
        assert_eq!(config.ingest_policy(), IngestPolicy::default());
        config.partial_downloads = PartialDownloads { max_age: "2h".into(), max_size: "64m".into() };
        assert_eq!(
            config.partial_downloads_policy().unwrap(),
            IngestPolicy { max_age: std::time::Duration::from_secs(7200), max_size: 64 << 20 }
        );
        for (age, size, needle) in [
            ("soon", "1g", "partial_downloads.max_age"),
            ("0h", "1g", "more than 0"),
            ("1h", "lots", "partial_downloads.max_size"),
            ("1h", "0", "more than 0"),
        ] {
            config.partial_downloads = PartialDownloads { max_age: age.into(), max_size: size.into() };
            let err = config.validate().unwrap_err();
            assert!(err.contains(needle), "{age} {size}: {err}");
        }
    }

    #[test]
    fn storage_rootless_overlay_takes_three_values_and_names_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("tote-config-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("toted.toml");
        assert_eq!(Config::default().storage.rootless_overlay, RootlessOverlay::Auto);
        std::fs::write(&path, "log_level = \"debug\"\n").unwrap();
        assert_eq!(Config::load(&path, false).unwrap().storage.rootless_overlay, RootlessOverlay::Auto);
        for (text, want) in [
            ("auto", RootlessOverlay::Auto),
            ("kernel", RootlessOverlay::Kernel),
            ("fuse-overlayfs", RootlessOverlay::FuseOverlayfs),
        ] {
            std::fs::write(&path, format!("[storage]\nrootless_overlay = \"{text}\"\n")).unwrap();
            let got = Config::load(&path, false).unwrap().storage.rootless_overlay;
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text, "shown as written");
        }
        for bad in ["fuse_overlayfs", "FUSE", "vfs"] {
            std::fs::write(&path, format!("[storage]\nrootless_overlay = \"{bad}\"\n")).unwrap();
            let err = Config::load(&path, false).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("fuse-overlayfs") && err.contains("toted.toml"), "{err}");
        }
        std::fs::write(&path, "[storage]\ndriver = \"overlay\"\n").unwrap();
        assert!(Config::load(&path, false).unwrap_err().to_string().contains("driver"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_config_file_overrides_defaults_and_bad_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("tote-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("toted.toml");
        std::fs::write(
            &path,
            "root = \"/srv/tote\"\n[container_log]\nmax_size = \"1m\"\n[registries.\"127.0.0.1:5000\"]\ninsecure = true\n",
        )
        .unwrap();
        let config = Config::load(&path, false).unwrap();
        assert_eq!(config.root, PathBuf::from("/srv/tote"));
        assert_eq!(config.state_dir, PathBuf::from("/run/tote"));
        assert_eq!(config.log_rotation(), (1 << 20, 3));
        assert!(config.registry_config().registries.contains_key("127.0.0.1:5000"));

        std::fs::write(&path, "rooot = \"/x\"\n").unwrap();
        let err = Config::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("rooot") && err.contains("toted.toml"), "{err}");
        std::fs::write(&path, "socket_mode = \"999\"\n").unwrap();
        assert!(Config::load(&path, false).unwrap_err().to_string().contains("socket_mode"));
        std::fs::write(&path, "cgroup_driver = \"systemd\"\n").unwrap();
        assert!(Config::load(&path, false).unwrap_err().to_string().contains("cgroupfs"));
        std::fs::write(&path, "[partial_downloads]\nmax_age = \"a day\"\n").unwrap();
        let err = Config::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("partial_downloads.max_age") && err.contains("toted.toml"), "{err}");
        std::fs::write(&path, "[partial_downloads]\nmax_ages = \"1d\"\n").unwrap();
        assert!(Config::load(&path, false).unwrap_err().to_string().contains("max_ages"));

        std::fs::write(&path, "[cri]\npinned_images = [\"registry.k8s.io/pause:3.10\"]\n").unwrap();
        assert_eq!(Config::load(&path, false).unwrap().cri.pinned_images, ["registry.k8s.io/pause:3.10"]);
        std::fs::write(&path, "[cri]\npinned_images = [\"Not A Reference\"]\n").unwrap();
        let err = Config::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("cri.pinned_images") && err.contains("Not A Reference"), "{err}");
        std::fs::write(&path, "[cri]\npod_network = \"cni\"\ncni_conf_dir = \"/srv/cni\"\n").unwrap();
        let cri = Config::load(&path, false).unwrap().cri;
        assert_eq!((cri.pod_network, cri.cni_conf_dir), (PodNetwork::Cni, PathBuf::from("/srv/cni")));
        assert_eq!(Config::default().cri.pod_network, PodNetwork::Auto);
        assert_eq!(Config::default().cri.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        std::fs::write(&path, "[cri]\npod_network = \"calico\"\n").unwrap();
        let err = Config::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("calico") && err.contains("auto"), "{err}");
        std::fs::write(&path, "[cri]\ncni_conf_dir = \"net.d\"\n").unwrap();
        let err = Config::load(&path, false).unwrap_err().to_string();
        assert!(err.contains("cri.cni_conf_dir") && err.contains("absolute"), "{err}");
        assert!(Config::load(&dir.join("missing.toml"), true).is_ok());

        let rootless = Config {
            root: "/home/a/.local/share/tote".into(),
            state_dir: "/run/user/1000/tote".into(),
            listen: "unix:///run/user/1000/tote/tote.sock".into(),
            cri: CriSection { cni_conf_dir: "/home/a/.config/cni/net.d".into(), ..CriSection::default() },
            ..Config::default()
        };
        let absent = Config::load_with_defaults(&dir.join("missing.toml"), true, rootless.clone()).unwrap();
        assert_eq!((absent.root, absent.listen), (rootless.root.clone(), rootless.listen.clone()));
        assert_eq!(absent.cri.cni_conf_dir, rootless.cri.cni_conf_dir);
        std::fs::write(&path, "[cri]\npod_network = \"tote\"\n").unwrap();
        let cri = Config::load_with_defaults(&path, false, rootless.clone()).unwrap().cri;
        assert_eq!((cri.pod_network, cri.cni_conf_dir), (PodNetwork::Tote, rootless.cri.cni_conf_dir.clone()));
        std::fs::write(&path, "[cri]\ncni_conf_dir = \"/srv/cni\"\n").unwrap();
        let cri = Config::load_with_defaults(&path, false, rootless.clone()).unwrap().cri;
        assert_eq!(cri.cni_conf_dir, PathBuf::from("/srv/cni"), "the file's own");
        std::fs::write(&path, "state_dir = \"/srv/s\"\nrootless_single_id = true\n").unwrap();
        let some = Config::load_with_defaults(&path, false, rootless.clone()).unwrap();
        assert_eq!(
            (some.root, some.state_dir, some.listen, some.rootless_single_id),
            (rootless.root, PathBuf::from("/srv/s"), rootless.listen, true)
        );
        std::fs::write(&path, "privilege = \"root\"\n").unwrap();
        assert!(Config::load(&path, false).unwrap_err().to_string().contains("privilege"));
        assert!(Config::load(&dir.join("missing.toml"), false).unwrap_err().to_string().contains("missing.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
