//! The CNI driver: attaches a container's network namespace to the
//! daemon's bridge by running the standard CNI plugins itself, as the CNI
//! spec (1.0.0) describes a runtime doing, without libcni.
//!
//! One network, as a conflist: `bridge` (with `host-local` addresses and
//! the bridge as the gateway) chained to `portmap` for published ports.
//! (`lo` is up already: `netns::create` sees to it.) ADD runs them in
//! order, each given the previous one's result; DEL runs them in reverse,
//! each given the final result. What DEL needs is cached per
//! container (see `cache`), so a teardown undoes exactly what setup did,
//! even after the daemon's config changed or it restarted.
//!
//! Pods may instead be attached with a network configuration list from a
//! CNI configuration directory (`conf`), run the same way: any plugins,
//! the list's own `cniVersion`, the kubelet's CNI_ARGS, and the runtime
//! config of the capabilities each plugin declares.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub mod conf;

pub use conf::NetworkList;

use super::cache::{self, CachedAttachment};
use super::plugin::{ExecError, HostExec, PluginExec, TOOL_PATH};
use super::{NetworkError, PortMapping, masq, netns};

/// The spec version we speak; Debian's plugins (1.1.1) support it.
const CNI_VERSION: &str = "1.0.0";
/// The container's side of its veth pair.
const IF_NAME: &str = "eth0";

/// The daemon's `[network]` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Where CNI plugin binaries are looked for, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// The CNI network name; it is part of the plugins' iptables chain names.
    pub network_name: String,
    /// The host bridge containers are attached to.
    pub bridge: String,
    /// Container addresses come from here; the first one is the bridge's.
    pub subnet: String,
    /// The result cache and `host-local`'s address leases.
    pub state_dir: PathBuf,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            plugin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            network_name: "tote".to_string(),
            bridge: "tote0".to_string(),
            subnet: "10.88.0.0/16".to_string(),
            state_dir: PathBuf::from("/var/lib/tote/network"),
        }
    }
}

/// A container's address on the bridge network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub mac: Option<String>,
    /// The interface inside the container (`eth0`).
    pub interface: String,
    /// The interface's other addresses (a dual-stack network's IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_ips: Vec<IpAddr>,
}

/// How a pod's namespace is attached, where it is not Tote's own network.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions<'a> {
    /// The configuration to run; `None`: Tote's own bridge network.
    pub network: Option<&'a NetworkList>,
    /// CNI_ARGS, kept for DEL (see [`conf::pod_args`]).
    pub args: &'a [(String, String)],
    /// The interface inside the namespace; `None`: `eth0`.
    pub if_name: Option<&'a str>,
}

pub struct Cni {
    config: CniConfig,
    exec: Box<dyn PluginExec>,
    /// The subnet's masquerade rule is in place (checked once per daemon).
    masquerading: std::sync::atomic::AtomicBool,
}

/// One plugin call: the CNI_* variables besides the plugin's own config.
struct Call<'a> {
    command: &'static str,
    container_id: &'a str,
    /// Empty when the namespace is gone, as the spec allows for DEL.
    netns: &'a str,
    if_name: &'a str,
    /// CNI_ARGS, `K=V;K=V`; not set when empty.
    args: String,
}

/// How far an ADD got, so a failure undoes exactly that much.
#[derive(Default)]
struct Progress {
    plugins: usize,
    result: Option<Value>,
}

impl Cni {
    /// A driver running the real plugin binaries.
    pub fn new(config: CniConfig) -> Result<Self, NetworkError> {
        Self::with_exec(config, Box::new(HostExec))
    }

    /// A driver running plugins through `exec` (tests use a fake).
    pub fn with_exec(config: CniConfig, exec: Box<dyn PluginExec>) -> Result<Self, NetworkError> {
        check_config(&config)?;
        Ok(Self { config, exec, masquerading: std::sync::atomic::AtomicBool::new(false) })
    }

    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// The network configuration list the plugins are run with.
    pub fn conflist(&self) -> Value {
        self.conflist_for(true)
    }

    /// The configuration list for a container: without published ports,
    /// no portmap (each plugin run costs a process start, ADD and DEL).
    fn conflist_for(&self, ports: bool) -> Value {
        let mut list = self.conflist_all();
        if !ports && let Some(plugins) = list["plugins"].as_array_mut() {
            plugins.retain(|p| p["type"] != "portmap");
        }
        list
    }

    fn conflist_all(&self) -> Value {
        let default_route = if subnet_is_v6(&self.config.subnet) { "::/0" } else { "0.0.0.0/0" };
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.config.network_name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.config.bridge,
                    "isGateway": true,
                    // One masquerade rule for the whole subnet (see
                    // `ensure_masquerade`) instead of the plugin's chain per
                    // container, which costs ~8 iptables runs per start and stop.
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": self.config.subnet }]],
                        "routes": [{ "dst": default_route }],
                        // Leases live with the rest of our state, not in /var/lib/cni.
                        "dataDir": self.config.state_dir.join("ipam"),
                    },
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    // Marks connections from 127.0.0.1 and hairpin ones for
                    // masquerading, and sets route_localnet on the bridge, so
                    // that 127.0.0.1:<host port> reaches the container.
                    "snat": true,
                },
            ],
        })
    }

    /// Attaches the network namespace at `netns` to the bridge, publishing
    /// `ports` (their host ports allocated already). On failure, whatever
    /// was set up is undone.
    pub fn setup(&self, container_id: &str, netns: &Path, ports: &[PortMapping]) -> Result<Attachment, NetworkError> {
        self.attach(container_id, netns, ports, AttachOptions::default())
    }

    /// [`Cni::setup`] with `options`' network and CNI_ARGS. The cache keeps
    /// the list as run, so teardown undoes this whatever the configuration
    /// directory holds by then.
    pub fn attach(
        &self,
        container_id: &str,
        netns: &Path,
        ports: &[PortMapping],
        options: AttachOptions<'_>,
    ) -> Result<Attachment, NetworkError> {
        check_container_id(container_id)?;
        if let Some(unallocated) = ports.iter().find(|m| m.host_port == 0) {
            return Err(NetworkError::UnallocatedPort(*unallocated));
        }
        let netns = path_str(netns)?;
        let conflist = match options.network {
            Some(list) => list.conflist.clone(),
            None => self.conflist_for(!ports.is_empty()),
        };
        // A missing binary should fail before anything is changed; for
        // Tote's network, portmap too when no port is published, so that a
        // broken install shows at the first container, not the first port.
        let required = if options.network.is_some() { &conflist } else { &self.conflist_all() };
        for plugin in conf::plugin_binaries(required) {
            self.find_plugin(&plugin)?;
        }
        let mut entry = CachedAttachment {
            container_id: container_id.to_string(),
            if_name: options.if_name.unwrap_or(IF_NAME).to_string(),
            conflist,
            runtime_config: json!({ "portMappings": ports.iter().map(port_mapping_json).collect::<Vec<_>>() }),
            cni_args: options.args.to_vec(),
            loopback: false,
            result: None,
        };
        let cache_path = cache::path(&self.config.state_dir, container_id);
        // A second ADD would fail in host-local, and its rollback would
        // then undo the first attachment.
        if cache::load(&cache_path)?.is_some() {
            return Err(NetworkError::AlreadyAttached { container_id: container_id.to_string(), cache: cache_path });
        }
        cache::store(&cache_path, &entry)?;
        // Tote's own network masquerades its subnet with one rule; a
        // configured network does its own (the bridge plugin's ipMasq).
        if options.network.is_none()
            && let Err(error) = self.ensure_masquerade()
        {
            let _ = cache::remove(&cache_path);
            return Err(error);
        }

        let mut progress = Progress::default();
        let added = self.add(&entry, netns, &mut progress).and_then(|attachment| {
            entry.result = progress.result.clone();
            cache::store(&cache_path, &entry)?;
            Ok(attachment)
        });
        added.map_err(|error| self.roll_back(&entry, netns, &progress, &cache_path, error))
    }

    /// Whether `container_id` has an attachment to undo (a setup's cache,
    /// kept until its teardown).
    pub fn is_attached(&self, container_id: &str) -> bool {
        check_container_id(container_id).is_ok() && cache::path(&self.config.state_dir, container_id).exists()
    }

    /// Detaches a container: CNI DEL for everything its setup added. Works
    /// when the namespace at `netns` is gone (or not given), and when there
    /// is nothing to detach. If a plugin fails, the cache is kept so that
    /// teardown can be run again.
    pub fn teardown(&self, container_id: &str, netns: Option<&Path>) -> Result<(), NetworkError> {
        check_container_id(container_id)?;
        let cache_path = cache::path(&self.config.state_dir, container_id);
        let Some(entry) = cache::load(&cache_path)? else {
            return Ok(());
        };
        let netns = match netns.filter(|path| netns::exists(path)) {
            Some(path) => path_str(path)?,
            None => "",
        };
        let plugins = plugin_list(&entry.conflist).len();
        self.delete(&entry, netns, plugins, entry.result.as_ref())?;
        cache::remove(&cache_path)
    }

    /// Deletes the bridge, which the bridge plugin leaves behind. Fine if
    /// it does not exist; refuses a link of that name that is no bridge.
    /// The arguments of the subnet's masquerade rule after the command.
    fn masquerade_rule(&self) -> Vec<String> {
        let tool_comment = format!("tote network {}", self.config.network_name);
        [
            "-w",
            "-t",
            "nat",
            "POSTROUTING",
            "-s",
            &self.config.subnet,
            "!",
            "-o",
            &self.config.bridge,
            "-m",
            "comment",
            "--comment",
            &tool_comment,
            "-j",
            "MASQUERADE",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }

    fn iptables_for_subnet(&self) -> &'static str {
        if subnet_is_v6(&self.config.subnet) { "ip6tables" } else { "iptables" }
    }

    /// Traffic from the subnet leaving through another interface is
    /// masqueraded (as docker does for its bridge); added once, idempotent.
    fn ensure_masquerade(&self) -> Result<(), NetworkError> {
        use std::sync::atomic::Ordering;
        if self.masquerading.load(Ordering::Acquire) {
            return Ok(());
        }
        let tool = self.iptables_for_subnet();
        let rule = self.masquerade_rule();
        let with = |command: &str| -> Vec<String> {
            let mut args = rule.clone();
            // -w, -t nat, then the command before the chain.
            args.insert(3, command.to_string());
            args
        };
        let check = with("-C");
        let check: Vec<&str> = check.iter().map(String::as_str).collect();
        if self.exec.run(tool, &check).is_err() {
            let add = with("-A");
            let add: Vec<&str> = add.iter().map(String::as_str).collect();
            self.exec.run(tool, &add).map_err(|e| command_error(tool, &add, e))?;
        }
        self.masquerading.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes the subnet's masquerade rule, if there.
    pub fn remove_masquerade_rule(&self) {
        let tool = self.iptables_for_subnet();
        let mut args = self.masquerade_rule();
        args.insert(3, "-D".to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        while self.exec.run(tool, &args).is_ok() {}
        self.masquerading.store(false, std::sync::atomic::Ordering::Release);
    }

    pub fn remove_bridge(&self) -> Result<(), NetworkError> {
        self.remove_masquerade_rule();
        let bridge = &self.config.bridge;
        let sysfs = Path::new("/sys/class/net").join(bridge);
        if !sysfs.exists() {
            return Ok(());
        }
        if !sysfs.join("bridge").is_dir() {
            return Err(NetworkError::Config(format!("{bridge} is not a bridge: not deleting it")));
        }
        match self.exec.run("ip", &["link", "del", "dev", bridge]) {
            Ok(_) => Ok(()),
            // Gone since we looked.
            Err(ExecError::Exit { ref stderr, .. })
                if String::from_utf8_lossy(stderr).contains("Cannot find device") =>
            {
                Ok(())
            }
            Err(e) => Err(command_error("ip", &["link", "del", "dev", bridge], e)),
        }
    }

    /// ADDs the chain, recording in `progress` how far it got.
    fn add(&self, entry: &CachedAttachment, netns: &str, progress: &mut Progress) -> Result<Attachment, NetworkError> {
        let container_id = entry.container_id.as_str();
        let add = Call {
            command: "ADD",
            container_id,
            netns,
            if_name: &entry.if_name,
            args: conf::join_args(&entry.cni_args),
        };
        for plugin in plugin_list(&entry.conflist) {
            progress.plugins += 1;
            let config = plugin_config(&entry.conflist, plugin, progress.result.as_ref(), &entry.runtime_config);
            let result = self.invoke(plugin_type(plugin), &add, &config)?;
            progress.result = Some(parse_result(plugin_type(plugin), &add, &result)?);
        }
        let result = progress.result.as_ref().ok_or_else(|| no_address(entry))?;
        attachment_from(result, &entry.if_name).ok_or_else(|| no_address(entry))
    }

    /// Undoes a failed setup as far as it got; `error` is why it failed.
    /// The cache goes only once everything is undone.
    fn roll_back(
        &self,
        entry: &CachedAttachment,
        netns: &str,
        progress: &Progress,
        cache_path: &Path,
        error: NetworkError,
    ) -> NetworkError {
        let undone = self.delete(entry, netns, progress.plugins, progress.result.as_ref());
        match undone.and_then(|()| cache::remove(cache_path)) {
            Ok(()) => error,
            Err(rollback) => NetworkError::Rollback { error: Box::new(error), rollback: Box::new(rollback) },
        }
    }

    /// DELs the first `plugins` plugins of the chain in reverse, then `lo`
    /// if the entry says the loopback plugin set it up (older versions ran
    /// it), going on past failures so as much as possible is undone;
    /// the first failure is returned.
    fn delete(
        &self,
        entry: &CachedAttachment,
        netns: &str,
        plugins: usize,
        result: Option<&Value>,
    ) -> Result<(), NetworkError> {
        let container_id = entry.container_id.as_str();
        let del = Call {
            command: "DEL",
            container_id,
            netns,
            if_name: &entry.if_name,
            args: conf::join_args(&entry.cni_args),
        };
        let mut outcome = Ok(());
        for plugin in plugin_list(&entry.conflist).iter().take(plugins).rev() {
            let config = plugin_config(&entry.conflist, plugin, result, &entry.runtime_config);
            keep_first(&mut outcome, self.invoke(plugin_type(plugin), &del, &config).map(drop));
            if plugin_type(plugin) == "bridge" && plugin["ipMasq"] == true {
                keep_first(&mut outcome, self.remove_masquerade(entry, plugin));
            }
        }
        // Without a namespace there is no `lo` to take down.
        if entry.loopback && !netns.is_empty() {
            let lo = Call { command: "DEL", container_id, netns, if_name: "lo", args: String::new() };
            keep_first(&mut outcome, self.invoke("loopback", &lo, &loopback_config(&entry.conflist)).map(drop));
        }
        outcome
    }

    /// Removes the bridge plugin's masquerade rules if its DEL could not.
    fn remove_masquerade(&self, entry: &CachedAttachment, bridge: &Value) -> Result<(), NetworkError> {
        let network = entry.conflist["name"].as_str().unwrap_or_default();
        let subnet = bridge["ipam"]["ranges"][0][0]["subnet"].as_str().unwrap_or_default();
        let tool = if subnet_is_v6(subnet) { "ip6tables" } else { "iptables" };
        masq::remove_leftovers(self.exec.as_ref(), tool, &masq::chain_name(network, &entry.container_id))
    }

    /// Runs plugin `plugin_type` with `config` on its stdin; its stdout.
    fn invoke(&self, plugin_type: &str, call: &Call<'_>, config: &Value) -> Result<Vec<u8>, NetworkError> {
        let binary = self.find_plugin(plugin_type)?;
        let stdin = serde_json::to_vec(config).expect("a JSON value serializes");
        self.exec.exec(&binary, &self.env(call), &stdin).map_err(|e| match e {
            ExecError::Spawn(source) => NetworkError::PluginSpawn { plugin: binary, source },
            ExecError::Exit { status, stdout, stderr } => plugin_error(plugin_type, call, status, &stdout, &stderr),
        })
    }

    fn env(&self, call: &Call<'_>) -> Vec<(String, String)> {
        // check_config made sure the directories join.
        let cni_path = std::env::join_paths(&self.config.plugin_dirs).unwrap_or_default();
        [
            ("CNI_COMMAND", call.command),
            ("CNI_CONTAINERID", call.container_id),
            ("CNI_NETNS", call.netns),
            ("CNI_IFNAME", call.if_name),
            ("CNI_PATH", &cni_path.to_string_lossy()),
            // bridge and portmap run iptables, which lives in sbin.
            ("PATH", TOOL_PATH),
        ]
        .into_iter()
        .chain((!call.args.is_empty()).then_some(("CNI_ARGS", call.args.as_str())))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn find_plugin(&self, plugin_type: &str) -> Result<PathBuf, NetworkError> {
        self.config.plugin_dirs.iter().map(|dir| dir.join(plugin_type)).find(|path| path.is_file()).ok_or_else(|| {
            NetworkError::PluginNotFound {
                plugin: plugin_type.to_string(),
                dirs: std::env::join_paths(&self.config.plugin_dirs).unwrap_or_default().to_string_lossy().into_owned(),
            }
        })
    }
}

fn keep_first(outcome: &mut Result<(), NetworkError>, next: Result<(), NetworkError>) {
    if let (Ok(()), Err(e)) = (&outcome, next) {
        *outcome = Err(e);
    }
}

fn plugin_list(conflist: &Value) -> &[Value] {
    conflist["plugins"].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn plugin_type(plugin: &Value) -> &str {
    plugin["type"].as_str().unwrap_or_default()
}

/// One plugin's stdin, as the spec has the runtime build it: the plugin's
/// own object plus the list's `cniVersion` and `name`, the previous result,
/// and the runtime config for the capabilities it declares.
fn plugin_config(conflist: &Value, plugin: &Value, prev_result: Option<&Value>, runtime_config: &Value) -> Value {
    let mut config = plugin.clone();
    config["cniVersion"] = conflist["cniVersion"].clone();
    config["name"] = conflist["name"].clone();
    if let Some(prev) = prev_result {
        config["prevResult"] = prev.clone();
    }
    let wanted: serde_json::Map<String, Value> = plugin["capabilities"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, enabled)| **enabled == true)
        .filter_map(|(capability, _)| Some((capability.clone(), runtime_config.get(capability)?.clone())))
        .collect();
    if !wanted.is_empty() {
        config["runtimeConfig"] = Value::Object(wanted);
    }
    config
}

fn loopback_config(conflist: &Value) -> Value {
    json!({ "cniVersion": conflist["cniVersion"], "name": conflist["name"], "type": "loopback" })
}

/// portmap's `runtimeConfig.portMappings` entry (the CNI conventions).
fn port_mapping_json(mapping: &PortMapping) -> Value {
    let mut entry = json!({
        "hostPort": mapping.host_port,
        "containerPort": mapping.container_port,
        "protocol": mapping.protocol.to_string(),
    });
    if let Some(ip) = mapping.host_ip {
        entry["hostIP"] = json!(ip.to_string());
    }
    entry
}

fn parse_result(plugin_type: &str, call: &Call<'_>, stdout: &[u8]) -> Result<Value, NetworkError> {
    let bad = |reason: String| NetworkError::PluginResult {
        plugin: plugin_type.to_string(),
        command: call.command,
        container_id: call.container_id.to_string(),
        reason,
    };
    match serde_json::from_slice::<Value>(stdout) {
        // A plugin answers in the version it was asked for; one that does
        // not is read only if its result has the shape Tote knows.
        Ok(Value::Object(result))
            if result
                .get("cniVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| !conf::SUPPORTED_VERSIONS.contains(&v)) =>
        {
            Err(bad(format!(
                "result version {} is not one Tote reads ({})",
                result["cniVersion"],
                conf::SUPPORTED_VERSIONS.join(", ")
            )))
        }
        Ok(result @ Value::Object(_)) => Ok(result),
        Ok(other) => Err(bad(format!("expected an object, got {other}"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// A failed plugin's error: its CNI error object, or else what it printed.
fn plugin_error(plugin_type: &str, call: &Call<'_>, status: String, stdout: &[u8], stderr: &[u8]) -> NetworkError {
    #[derive(Deserialize)]
    struct CniError {
        code: u64,
        msg: String,
        #[serde(default)]
        details: String,
    }
    let (plugin, command, container_id) = (plugin_type.to_string(), call.command, call.container_id.to_string());
    match serde_json::from_slice::<CniError>(stdout) {
        Ok(CniError { code, msg, details }) => {
            let details = if details.is_empty() { details } else { format!(": {details}") };
            NetworkError::Plugin { plugin, command, container_id, code, msg, details }
        }
        Err(_) => {
            let output = if stderr.is_empty() { stdout } else { stderr };
            let stderr = String::from_utf8_lossy(output).trim().to_string();
            NetworkError::PluginExit { plugin, command, container_id, status, stderr }
        }
    }
}

/// The container's addresses from a CNI result: those on the interface
/// inside the sandbox named `if_name` (or on no interface in particular),
/// the first IPv4 one as the primary (as the kubelet's runtimes choose a
/// dual-stack pod's IP), the rest as additional.
fn attachment_from(result: &Value, if_name: &str) -> Option<Attachment> {
    let interfaces = result["interfaces"].as_array().map(Vec::as_slice).unwrap_or_default();
    struct Found<'a> {
        ip: IpAddr,
        prefix: u8,
        entry: &'a Value,
        interface: Option<&'a Value>,
    }
    let found: Vec<Found<'_>> = result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| {
            let interface = ip["interface"].as_u64().and_then(|i| interfaces.get(usize::try_from(i).ok()?));
            if let Some(interface) = interface {
                let in_sandbox = interface["sandbox"].as_str().is_some_and(|s| !s.is_empty());
                if interface["name"] != if_name || !in_sandbox {
                    return None;
                }
            }
            let (address, prefix) = ip["address"].as_str()?.split_once('/')?;
            Some(Found { ip: address.parse().ok()?, prefix: prefix.parse().ok()?, entry: ip, interface })
        })
        .collect();
    let primary = found.iter().position(|f| f.ip.is_ipv4()).unwrap_or(0);
    let first = found.get(primary)?;
    Some(Attachment {
        ip: first.ip,
        prefix: first.prefix,
        gateway: first.entry["gateway"].as_str().and_then(|g| g.parse().ok()),
        mac: first.interface.and_then(|i| i["mac"].as_str()).map(str::to_string),
        interface: if_name.to_string(),
        additional_ips: found.iter().enumerate().filter(|(i, _)| *i != primary).map(|(_, f)| f.ip).collect(),
    })
}

fn no_address(entry: &CachedAttachment) -> NetworkError {
    NetworkError::NoAddress { container_id: entry.container_id.clone(), interface: entry.if_name.clone() }
}

fn command_error(program: &str, args: &[&str], error: ExecError) -> NetworkError {
    match error {
        ExecError::Spawn(source) => NetworkError::CommandSpawn { program: program.to_string(), source },
        ExecError::Exit { status, stderr, .. } => NetworkError::Command {
            command: format!("{program} {}", args.join(" ")),
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        },
    }
}

fn path_str(path: &Path) -> Result<&str, NetworkError> {
    path.to_str().ok_or_else(|| NetworkError::Config(format!("network namespace path {path:?} is not UTF-8")))
}

fn subnet_is_v6(subnet: &str) -> bool {
    subnet.contains(':')
}

/// The CNI spec's rule for container ids and network names, with a length
/// cap so the cache file name stays well under NAME_MAX.
fn is_cni_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name.len() <= 200
}

fn check_container_id(container_id: &str) -> Result<(), NetworkError> {
    if is_cni_name(container_id) { Ok(()) } else { Err(NetworkError::BadContainerId(container_id.to_string())) }
}

fn check_config(config: &CniConfig) -> Result<(), NetworkError> {
    let bad = |problem: String| Err(NetworkError::Config(problem));
    if !is_cni_name(&config.network_name) {
        return bad(format!(
            "network_name {:?} is not a CNI network name: use letters, digits, '_', '.' and '-'",
            config.network_name
        ));
    }
    let bridge = &config.bridge;
    // Linux: at most IFNAMSIZ - 1 bytes, no '/', ':' or whitespace.
    if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ':']) || bridge.contains(char::is_whitespace) {
        return bad(format!(
            "bridge {bridge:?} is not an interface name: at most 15 characters, no '/', ':' or spaces"
        ));
    }
    if !is_subnet(&config.subnet) {
        return bad(format!("subnet {:?} is not an address with a prefix length, like 10.88.0.0/16", config.subnet));
    }
    if config.plugin_dirs.is_empty() {
        return bad("plugin_dirs is empty: name where the CNI plugins are, like /usr/lib/cni".to_string());
    }
    // CNI_PATH is a ':'-separated list.
    if std::env::join_paths(&config.plugin_dirs).is_err() {
        return bad("a directory in plugin_dirs contains ':', which CNI_PATH cannot carry".to_string());
    }
    // Plugins run with the daemon's working directory: relative paths
    // would mean something else to them.
    if let Some(relative) = config.plugin_dirs.iter().chain([&config.state_dir]).find(|p| p.is_relative()) {
        return bad(format!("{} is a relative path: plugin_dirs and state_dir must be absolute", relative.display()));
    }
    Ok(())
}

fn is_subnet(subnet: &str) -> bool {
    let Some((address, prefix)) = subnet.split_once('/') else { return false };
    match (address.parse::<IpAddr>(), prefix.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(prefix)) => prefix <= 32,
        (Ok(IpAddr::V6(_)), Ok(prefix)) => prefix <= 128,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
