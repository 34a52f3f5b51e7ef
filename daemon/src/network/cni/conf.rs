//! Network configurations from a CNI configuration directory, picked as
//! the kubelet's runtimes (containerd's go-cni, CRI-O's ocicni) pick them:
//! the files ending `.conflist`, `.conf` or `.json`, in lexical order of
//! their names, the first one that is a usable configuration winning. A
//! single-plugin `.conf`/`.json` is wrapped as a list of one. Files that
//! do not parse are skipped (and reported, so a person can see why their
//! file was not used) rather than stopping the search, as a half-written
//! file dropped in by a network add-on must not take the node down.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::network::NetworkError;

/// The result formats Tote reads: from 0.3.0 on, results have `interfaces`
/// and `ips` (0.2.0's `ip4`/`ip6` are another shape); 1.1.0 adds nothing
/// to them. The list's own version is passed to the plugins as it is.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A network configuration list as the plugins are run with it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// The file it was read from.
    pub file: PathBuf,
    pub name: String,
    /// `{"cniVersion", "name", "plugins": [...]}` (a `.conf` wrapped).
    pub conflist: Value,
}

/// What a configuration directory offers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfDir {
    /// The configuration pods get, if any file is usable.
    pub chosen: Option<NetworkList>,
    /// Files before the chosen one (or all of them) that are not usable,
    /// with why.
    pub skipped: Vec<(PathBuf, String)>,
}

impl ConfDir {
    /// Why there is no configuration, for a person: the directory and the
    /// files that were tried.
    pub fn describe_missing(&self, dir: &Path) -> String {
        if self.skipped.is_empty() {
            return format!("no CNI network configuration (*.conflist, *.conf, *.json) in {}", dir.display());
        }
        let reasons: Vec<String> =
            self.skipped.iter().map(|(file, why)| format!("{}: {why}", file.display())).collect();
        format!("no usable CNI network configuration in {} ({})", dir.display(), reasons.join("; "))
    }
}

/// Reads `dir`. A missing directory holds nothing; one that cannot be read
/// is an error (what pods would get cannot be known).
pub fn load_dir(dir: &Path) -> Result<ConfDir, NetworkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfDir::default()),
        Err(e) => return Err(NetworkError::io("read CNI configuration directory", dir)(e)),
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(NetworkError::io("read CNI configuration directory", dir))?;
        let path = entry.path();
        let wanted =
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "conflist" | "conf" | "json"));
        // Through symlinks, as libcni does (configuration managers link files in).
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut found = ConfDir::default();
    for file in files {
        let parsed = std::fs::read(&file).map_err(|e| e.to_string()).and_then(|bytes| parse(&file, &bytes));
        match parsed {
            Ok(list) => {
                found.chosen = Some(list);
                break;
            }
            Err(why) => {
                tracing::warn!(file = %file.display(), "skipping CNI configuration: {why}");
                found.skipped.push((file, why));
            }
        }
    }
    Ok(found)
}

/// Parses one file's contents: a list if `file` ends in `.conflist`, else
/// a single plugin's configuration, which becomes a list of one. The
/// error says what is wrong with it.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<NetworkList, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    let is_list = file.extension().is_some_and(|e| e == "conflist");
    let conflist = if is_list {
        value
    } else {
        if value.get("plugins").is_some() {
            // libcni's check too: a list in a .conf would run nothing.
            return Err("has \"plugins\", which only a .conflist file may have: rename it".into());
        }
        json!({ "cniVersion": value["cniVersion"], "name": value["name"], "plugins": [value] })
    };
    let name = match conflist["name"].as_str() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => return Err("no \"name\"".into()),
    };
    let version = conflist["cniVersion"].as_str().unwrap_or_default();
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "cniVersion {:?} is not one Tote runs plugins with ({})",
            version,
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    let plugins = conflist["plugins"].as_array().ok_or("no \"plugins\" list")?;
    if plugins.is_empty() {
        return Err("\"plugins\" is empty".into());
    }
    for (index, plugin) in plugins.iter().enumerate() {
        let kind = plugin["type"].as_str().unwrap_or_default();
        // The type is a binary's name in the plugin directories.
        if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
            return Err(format!("plugin {index} has no usable \"type\" (a plugin binary's name)"));
        }
    }
    Ok(NetworkList { file: file.to_path_buf(), name, conflist })
}

/// The plugin binaries a list runs directly: each plugin's type and its
/// IPAM plugin's, in order, once each. (Plugins that delegate, as
/// flannel does, find the rest themselves.)
pub fn plugin_binaries(conflist: &Value) -> Vec<String> {
    let mut wanted: Vec<String> = Vec::new();
    for plugin in conflist["plugins"].as_array().map(Vec::as_slice).unwrap_or_default() {
        for kind in [&plugin["type"], &plugin["ipam"]["type"]] {
            if let Some(kind) = kind.as_str().filter(|k| !k.is_empty())
                && !wanted.iter().any(|w| w == kind)
            {
                wanted.push(kind.to_string());
            }
        }
    }
    wanted
}

/// The CNI_ARGS a kubelet's runtime passes for a pod (containerd and
/// CRI-O give the same four): plugins such as Calico and Cilium find the
/// pod by them; `IgnoreUnknown` keeps plugins that know none of them from
/// failing. A value holding `;` or `=` would corrupt the list, so it is
/// refused rather than passed mangled.
pub fn pod_args(namespace: &str, name: &str, pod_id: &str, uid: &str) -> Result<Vec<(String, String)>, NetworkError> {
    let args = [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", name),
        ("K8S_POD_INFRA_CONTAINER_ID", pod_id),
        ("K8S_POD_UID", uid),
    ];
    args.iter()
        .map(|&(key, value)| {
            if value.contains([';', '=']) {
                Err(NetworkError::BadCniArg { key, value: value.to_string() })
            } else {
                Ok((key.to_string(), value.to_string()))
            }
        })
        .collect()
}

/// CNI_ARGS' `K=V;K=V` form.
pub fn join_args(args: &[(String, String)]) -> String {
    args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}
