//! Loading and checking an OCI bundle: `config.json` plus its rootfs.
//!
//! Everything that can be known to be wrong from the bundle alone is
//! rejected here, before any namespace, cgroup or state exists, so a bad
//! bundle never leaves anything behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The most config.json Tote will read; real configs are a few KiB.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {bundle}: no config.json in it")]
    MissingConfig { bundle: PathBuf },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {field}: {message}")]
    Malformed { path: PathBuf, field: String, message: String },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("rootfs {path} (from root.path in {config}): {source}")]
    Rootfs {
        path: PathBuf,
        config: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rootfs {path} is not a directory")]
    RootfsNotDir { path: PathBuf },
}

/// A loaded bundle: its directory, its parsed config and its resolved rootfs.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    /// The rootfs with every symlink resolved, as mounts inside it require.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads `<dir>/config.json`, checks it and resolves the rootfs.
    pub fn load(dir: &Path) -> Result<Self, SpecError> {
        let dir = std::path::absolute(dir).map_err(|source| SpecError::Read { path: dir.to_path_buf(), source })?;
        let config = dir.join("config.json");
        let spec = parse_config(&config, &dir)?;
        validate(&spec).map_err(|problem| SpecError::Invalid { path: config.clone(), problem })?;
        let rootfs = resolve_rootfs(&dir, &config, &spec)?;
        Ok(Self { dir, spec, rootfs })
    }
}

fn parse_config(config: &Path, bundle: &Path) -> Result<Spec, SpecError> {
    let file = match std::fs::File::open(config) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpecError::MissingConfig { bundle: bundle.to_path_buf() });
        }
        Err(source) => return Err(SpecError::Read { path: config.to_path_buf(), source }),
    };
    let read_err = |source| SpecError::Read { path: config.to_path_buf(), source };
    if file.metadata().map_err(read_err)?.len() > MAX_CONFIG_BYTES {
        return Err(SpecError::TooLarge { path: config.to_path_buf() });
    }
    let bytes = std::fs::read(config).map_err(read_err)?;
    parse_spec(&bytes).map_err(|(field, message)| SpecError::Malformed { path: config.to_path_buf(), field, message })
}

/// Parses config.json bytes; on failure returns the JSON path of the
/// offending field and what is wrong with it.
pub fn parse_spec(bytes: &[u8]) -> Result<Spec, (String, String)> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let field = match err.path().to_string() {
            path if path == "." => "document".to_string(),
            path => path,
        };
        (field, err.into_inner().to_string())
    })
}

/// The spec's `linux` section, or an empty one. (oci-spec's `Linux::default()`
/// is a populated runc-like default, which a bundle without the section
/// did not ask for.)
pub fn linux_section(spec: &Spec) -> oci_spec::runtime::Linux {
    spec.linux().clone().unwrap_or_else(|| serde_json::from_str("{}").expect("an empty linux section parses"))
}

/// Checks what the OCI schema cannot express but runc refuses too.
pub fn validate(spec: &Spec) -> Result<(), String> {
    let process = spec.process().as_ref().ok_or("no `process` section: nothing to run")?;
    if process.args().as_ref().is_none_or(|args| args.is_empty()) {
        return Err("process.args is empty: nothing to run".into());
    }
    if !process.cwd().is_absolute() {
        return Err(format!("process.cwd {:?} must be an absolute path", process.cwd()));
    }
    if spec.root().is_none() {
        return Err("no `root` section: the rootfs is not named".into());
    }
    let linux = linux_section(spec);
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let mut seen = HashSet::new();
    for ns in namespaces {
        if !seen.insert(ns.typ()) {
            return Err(format!("linux.namespaces lists {:?} twice", ns.typ()));
        }
    }
    let new_ns = |typ| namespaces.iter().any(|ns| ns.typ() == typ && ns.path().is_none());
    let has_ns = |typ| namespaces.iter().any(|ns| ns.typ() == typ);
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if new_ns(LinuxNamespaceType::User) {
        let both = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            && linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if !both {
            return Err("a new user namespace needs linux.uidMappings and linux.gidMappings".into());
        }
    } else if has_maps {
        return Err("linux.uidMappings/gidMappings are set but no new user namespace is".into());
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has_ns(LinuxNamespaceType::Uts) {
        return Err("hostname is set but the container has no UTS namespace".into());
    }
    if spec.domainname().as_ref().is_some_and(|d| !d.is_empty()) && !has_ns(LinuxNamespaceType::Uts) {
        return Err("domainname is set but the container has no UTS namespace".into());
    }
    for key in linux.sysctl().as_ref().map(|s| s.keys().collect::<Vec<_>>()).unwrap_or_default() {
        validate_sysctl(key, &has_ns)?;
    }
    if let Some(mounts) = spec.mounts() {
        for mount in mounts {
            if mount.destination().components().any(|c| c == std::path::Component::ParentDir) {
                return Err(format!("mount destination {:?} contains `..`", mount.destination()));
            }
        }
    }
    Ok(())
}

/// A sysctl must be namespaced by a namespace the container owns, or it
/// would change the host.
fn validate_sysctl(key: &str, has_ns: &dyn Fn(LinuxNamespaceType) -> bool) -> Result<(), String> {
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let needs = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        LinuxNamespaceType::Ipc
    } else if key.starts_with("net.") {
        LinuxNamespaceType::Network
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        LinuxNamespaceType::Uts
    } else {
        return Err(format!("sysctl {key:?} is not namespaced: it would change the host"));
    };
    if !has_ns(needs) {
        return Err(format!("sysctl {key:?} needs the container's own {needs:?} namespace"));
    }
    Ok(())
}

fn resolve_rootfs(dir: &Path, config: &Path, spec: &Spec) -> Result<PathBuf, SpecError> {
    let root = spec.root().as_ref().expect("validated: root is present");
    let path = dir.join(root.path());
    let resolved = std::fs::canonicalize(&path).map_err(|source| SpecError::Rootfs {
        path: path.clone(),
        config: config.to_path_buf(),
        source,
    })?;
    if !resolved.is_dir() {
        return Err(SpecError::RootfsNotDir { path });
    }
    Ok(resolved)
}

/// Writes every limit `update` sets over `base`, section by section (a
/// memory limit alone leaves the memory reservation and the cpu limits as
/// they were): what `update` does to a container's recorded config. Lists
/// (devices, hugepage limits) are replaced whole.
pub fn merge_resources(base: &mut oci_spec::runtime::LinuxResources, update: &oci_spec::runtime::LinuxResources) {
    fn merge(base: &mut serde_json::Value, update: serde_json::Value) {
        match (base, update) {
            (serde_json::Value::Object(base), serde_json::Value::Object(update)) => {
                for (key, value) in update {
                    if !value.is_null() {
                        merge(base.entry(key).or_insert(serde_json::Value::Null), value);
                    }
                }
            }
            (base, update) => *base = update,
        }
    }
    let mut merged = serde_json::to_value(&*base).expect("resources serialise");
    merge(&mut merged, serde_json::to_value(update).expect("resources serialise"));
    if let Ok(resources) = serde_json::from_value(merged) {
        *base = resources;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.2.0","process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}},
               "root":{{"path":"rootfs"}}{extra}}}"#
        )
    }

    fn problem(extra: &str) -> String {
        let spec = parse_spec(minimal(extra).as_bytes()).expect("parses");
        validate(&spec).expect_err("must be refused")
    }

    #[test]
    fn an_unknown_namespace_type_names_the_field() {
        let json = minimal(r#","linux":{"namespaces":[{"type":"pid"},{"type":"bogus"}]}"#);
        let (field, message) = parse_spec(json.as_bytes()).unwrap_err();
        assert_eq!(field, "linux.namespaces[1].type");
        assert!(message.contains("bogus"), "{message}");
    }

    #[test]
    fn an_unknown_capability_names_the_field() {
        let json = r#"{"ociVersion":"1.2.0","root":{"path":"r"},"process":{"cwd":"/","args":["sh"],
            "user":{"uid":0,"gid":0},"capabilities":{"bounding":["CAP_CHOWN","CAP_FLY"]}}}"#;
        let (field, message) = parse_spec(json.as_bytes()).unwrap_err();
        assert_eq!(field, "process.capabilities.bounding[1]");
        assert!(message.contains("CAP_FLY"), "{message}");
    }

    #[test]
    fn malformed_json_is_refused_with_its_position() {
        let (_, message) = parse_spec(b"{\"ociVersion\": ").unwrap_err();
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn a_minimal_config_is_valid() {
        validate(&parse_spec(minimal("").as_bytes()).unwrap()).unwrap();
    }

    #[test]
    fn duplicate_namespaces_are_refused() {
        assert!(problem(r#","linux":{"namespaces":[{"type":"pid"},{"type":"pid"}]}"#).contains("twice"));
    }

    #[test]
    fn a_user_namespace_needs_mappings() {
        assert!(problem(r#","linux":{"namespaces":[{"type":"user"}]}"#).contains("uidMappings"));
    }

    #[test]
    fn mappings_without_a_user_namespace_are_refused() {
        let extra = r#","linux":{"uidMappings":[{"containerID":0,"hostID":1000,"size":1}]}"#;
        assert!(problem(extra).contains("no new user namespace"));
    }

    #[test]
    fn a_hostname_needs_a_uts_namespace() {
        assert!(problem(r#","hostname":"box""#).contains("UTS"));
    }

    #[test]
    fn host_sysctls_are_refused() {
        let extra = r#","linux":{"namespaces":[{"type":"network"}],"sysctl":{"vm.swappiness":"1"}}"#;
        assert!(problem(extra).contains("not namespaced"));
        let extra = r#","linux":{"sysctl":{"net.ipv4.ip_forward":"1"}}"#;
        assert!(problem(extra).contains("Network"));
    }

    #[test]
    fn empty_args_are_refused() {
        let json =
            r#"{"ociVersion":"1.2.0","root":{"path":"r"},"process":{"cwd":"/","args":[],"user":{"uid":0,"gid":0}}}"#;
        let spec = parse_spec(json.as_bytes()).unwrap();
        assert!(validate(&spec).unwrap_err().contains("args"));
    }

    #[test]
    fn a_missing_bundle_says_so() {
        let err = Bundle::load(Path::new("/nonexistent/tote-bundle")).unwrap_err();
        assert!(err.to_string().contains("no config.json"), "{err}");
    }

    #[test]
    fn an_update_changes_only_what_it_sets() {
        let mut base: oci_spec::runtime::LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":104857600,"reservation":52428800},"cpu":{"shares":512},"pids":{"limit":100}}"#,
        )
        .unwrap();
        let update: oci_spec::runtime::LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":209715200},"pids":{"limit":50}}"#).unwrap();
        merge_resources(&mut base, &update);
        let merged = serde_json::to_value(&base).unwrap();
        assert_eq!(merged["memory"]["limit"], 209715200);
        assert_eq!(merged["memory"]["reservation"], 52428800);
        assert_eq!(merged["cpu"]["shares"], 512);
        assert_eq!(merged["pids"]["limit"], 50);
    }
}
