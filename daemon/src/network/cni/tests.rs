//! The CNI driver against fake plugins that record what they were sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::network::Protocol;

/// One thing the driver ran.
#[derive(Debug, Clone)]
enum Ran {
    Plugin { name: String, env: BTreeMap<String, String>, config: Value },
    Tool { program: String, args: Vec<String> },
}

impl Ran {
    /// `"bridge ADD eth0"`, `"iptables -w -t nat -S"`.
    fn summary(&self) -> String {
        match self {
            Ran::Plugin { name, env, .. } => format!("{name} {} {}", env["CNI_COMMAND"], env["CNI_IFNAME"]),
            Ran::Tool { program, args } => format!("{program} {}", args.join(" ")),
        }
    }
}

#[derive(Default)]
struct State {
    ran: Vec<Ran>,
    /// `(plugin, command)` pairs that fail with a CNI error.
    failing: Vec<(&'static str, &'static str)>,
    /// What `iptables -S` prints.
    nat_table: String,
}

/// Plugins that answer as the real ones would, minus the side effects.
#[derive(Clone, Default)]
struct FakePlugins(Arc<Mutex<State>>);

impl FakePlugins {
    fn failing(self, plugin: &'static str, command: &'static str) -> Self {
        self.0.lock().unwrap().failing.push((plugin, command));
        self
    }

    fn with_nat_table(self, table: &str) -> Self {
        self.0.lock().unwrap().nat_table = table.to_string();
        self
    }

    fn ran(&self) -> Vec<Ran> {
        self.0.lock().unwrap().ran.clone()
    }

    /// What ran, without the subnet's masquerade rule check (once per
    /// driver, before the first plugin).
    fn summaries(&self) -> Vec<String> {
        self.ran().iter().map(Ran::summary).filter(|s| !s.contains("POSTROUTING -s 10.88.0.0/16 ! -o")).collect()
    }

    fn forget(&self) {
        self.0.lock().unwrap().ran.clear();
    }

    /// The config the `n`th call to `plugin` with `command` was given.
    fn config(&self, plugin: &str, command: &str, n: usize) -> Value {
        self.plugin_calls(plugin, command).remove(n).1
    }

    fn env(&self, plugin: &str, command: &str, n: usize) -> BTreeMap<String, String> {
        self.plugin_calls(plugin, command).remove(n).0
    }

    fn plugin_calls(&self, plugin: &str, command: &str) -> Vec<(BTreeMap<String, String>, Value)> {
        self.ran()
            .into_iter()
            .filter_map(|ran| match ran {
                Ran::Plugin { name, env, config } if name == plugin && env["CNI_COMMAND"] == command => {
                    Some((env, config))
                }
                _ => None,
            })
            .collect()
    }
}

fn bridge_result(netns: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            { "name": "tote0", "mac": "aa:aa:aa:aa:aa:01" },
            { "name": "veth1234", "mac": "aa:aa:aa:aa:aa:02" },
            { "name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": netns },
        ],
        "ips": [{ "interface": 2, "address": "10.88.0.2/16", "gateway": "10.88.0.1" }],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dns": {},
    })
}

impl PluginExec for FakePlugins {
    fn exec(&self, plugin: &Path, env: &[(String, String)], stdin: &[u8]) -> Result<Vec<u8>, ExecError> {
        let name = plugin.file_name().unwrap().to_string_lossy().into_owned();
        let env: BTreeMap<String, String> = env.iter().cloned().collect();
        let config: Value = serde_json::from_slice(stdin).unwrap();
        let mut state = self.0.lock().unwrap();
        state.ran.push(Ran::Plugin { name: name.clone(), env: env.clone(), config: config.clone() });
        let command = env["CNI_COMMAND"].as_str();
        if state.failing.iter().any(|&(p, c)| p == name && c == command) {
            let error =
                json!({ "cniVersion": "1.0.0", "code": 999, "msg": format!("{name} broke"), "details": "on purpose" });
            return Err(ExecError::Exit {
                status: "exit status: 1".into(),
                stdout: error.to_string().into_bytes(),
                stderr: vec![],
            });
        }
        let result = match (name.as_str(), command) {
            (_, "DEL") => return Ok(vec![]),
            ("loopback", _) => json!({
                "cniVersion": "1.0.0",
                "interfaces": [{ "name": "lo", "sandbox": env["CNI_NETNS"] }],
                "ips": [{ "interface": 0, "address": "127.0.0.1/8" }],
            }),
            ("bridge", _) => bridge_result(&env["CNI_NETNS"]),
            // portmap (and the test's chained plugins) pass their prevResult through.
            ("portmap" | "tuning" | "firewall", _) => config["prevResult"].clone(),
            ("ptp", _) => {
                let mut result = bridge_result(&env["CNI_NETNS"]);
                // What a plugin asked for 0.4.0 answers: addresses with a version.
                result["cniVersion"] = config["cniVersion"].clone();
                result["ips"] = json!([
                    { "version": "6", "interface": 2, "address": "fd00::5/64" },
                    { "version": "4", "interface": 2, "address": "10.22.0.5/24", "gateway": "10.22.0.1" },
                ]);
                result
            }
            _ => panic!("unexpected plugin {name}"),
        };
        Ok(result.to_string().into_bytes())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, ExecError> {
        let mut state = self.0.lock().unwrap();
        state.ran.push(Ran::Tool { program: program.into(), args: args.iter().map(|a| a.to_string()).collect() });
        if args == ["-w", "-t", "nat", "-S"] { Ok(state.nat_table.clone().into_bytes()) } else { Ok(vec![]) }
    }
}

/// A state dir, and a plugin dir holding (empty) plugin binaries.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tote-cni-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        for plugin in ["bridge", "portmap", "loopback", "host-local", "ptp", "tuning", "firewall"] {
            std::fs::write(dir.join("plugins").join(plugin), "").unwrap();
        }
        Self { dir }
    }

    fn config(&self) -> CniConfig {
        CniConfig {
            plugin_dirs: vec![self.dir.join("missing"), self.dir.join("plugins")],
            state_dir: self.dir.join("state"),
            ..CniConfig::default()
        }
    }

    fn cni(&self, fake: &FakePlugins) -> Cni {
        Cni::with_exec(self.config(), Box::new(fake.clone())).unwrap()
    }

    fn cache(&self, container_id: &str) -> PathBuf {
        self.dir.join("state/results").join(format!("{container_id}.json"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NETNS: &str = "/run/tote/netns/c1";

fn ports() -> Vec<PortMapping> {
    vec![
        PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
        },
        PortMapping { host_ip: None, host_port: 5353, container_port: 53, protocol: Protocol::Udp },
    ]
}

#[test]
fn the_conflist_is_bridge_then_portmap() {
    let scratch = Scratch::new("conflist");
    let cni = scratch.cni(&FakePlugins::default());
    let ipam_dir = scratch.dir.join("state/ipam");
    assert_eq!(
        cni.conflist(),
        json!({
            "cniVersion": "1.0.0",
            "name": "tote",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "tote0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": "10.88.0.0/16" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": ipam_dir,
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
            ],
        })
    );
}

#[test]
fn setup_runs_the_chain_passing_each_result_on() {
    let scratch = Scratch::new("setup");
    let fake = FakePlugins::default();
    let attachment = scratch.cni(&fake).setup("c1", Path::new(NETNS), &ports()).unwrap();

    assert_eq!(fake.summaries(), ["bridge ADD eth0", "portmap ADD eth0"]);
    assert_eq!(
        attachment,
        Attachment {
            ip: "10.88.0.2".parse().unwrap(),
            prefix: 16,
            gateway: Some("10.88.0.1".parse().unwrap()),
            mac: Some("aa:aa:aa:aa:aa:03".into()),
            interface: "eth0".into(),
            additional_ips: vec![],
        }
    );

    let bridge = fake.config("bridge", "ADD", 0);
    assert_eq!((bridge["name"].clone(), bridge["cniVersion"].clone()), (json!("tote"), json!("1.0.0")));
    assert!(bridge.get("prevResult").is_none(), "the first plugin has no previous result");
    assert!(bridge.get("runtimeConfig").is_none(), "bridge declares no capabilities");

    let portmap = fake.config("portmap", "ADD", 0);
    assert_eq!(portmap["prevResult"], bridge_result(NETNS));
    assert_eq!(
        portmap["runtimeConfig"],
        json!({ "portMappings": [
            { "hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1" },
            { "hostPort": 5353, "containerPort": 53, "protocol": "udp" },
        ]})
    );

    let env = fake.env("bridge", "ADD", 0);
    let cni_path = format!("{}:{}", scratch.dir.join("missing").display(), scratch.dir.join("plugins").display());
    assert_eq!(env["CNI_CONTAINERID"], "c1");
    assert_eq!(env["CNI_NETNS"], NETNS);
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(env["CNI_PATH"], cni_path);
    assert!(env["PATH"].split(':').any(|dir| dir == "/usr/sbin"), "plugins need iptables: {}", env["PATH"]);
    assert_eq!(env.len(), 6, "only the CNI variables and PATH: {env:?}");

    let cached: Value = serde_json::from_slice(&std::fs::read(scratch.cache("c1")).unwrap()).unwrap();
    assert_eq!(cached["result"], bridge_result(NETNS));
    assert_eq!(cached["conflist"], scratch.cni(&fake).conflist());
    assert_eq!(cached["runtime_config"], portmap["runtimeConfig"]);
}

#[test]
fn a_failing_second_plugin_undoes_the_first() {
    let scratch = Scratch::new("rollback");
    let fake = FakePlugins::default().failing("portmap", "ADD");
    let err = scratch.cni(&fake).setup("c1", Path::new(NETNS), &ports()).unwrap_err();

    assert_eq!(
        err.to_string(),
        "CNI plugin portmap ADD for container c1: portmap broke: on purpose (CNI error code 999)"
    );
    assert_eq!(fake.summaries(), ["bridge ADD eth0", "portmap ADD eth0", "portmap DEL eth0", "bridge DEL eth0"]);
    // DEL gets the last result there was, and the same runtime config.
    assert_eq!(fake.config("bridge", "DEL", 0)["prevResult"], bridge_result(NETNS));
    assert_eq!(fake.config("portmap", "DEL", 0)["runtimeConfig"], fake.config("portmap", "ADD", 0)["runtimeConfig"]);
    assert_eq!(fake.env("bridge", "DEL", 0)["CNI_NETNS"], NETNS);
    assert!(!scratch.cache("c1").exists(), "a rolled-back setup leaves no cache");
}

#[test]
fn a_failing_first_plugin_undoes_only_what_ran() {
    let scratch = Scratch::new("rollback-first");
    let fake = FakePlugins::default().failing("bridge", "ADD");
    let err = scratch.cni(&fake).setup("c1", Path::new(NETNS), &[]).unwrap_err();
    assert!(matches!(err, NetworkError::Plugin { ref plugin, .. } if plugin == "bridge"), "{err}");
    assert_eq!(fake.summaries(), ["bridge ADD eth0", "bridge DEL eth0"]);
    assert!(fake.config("bridge", "DEL", 0).get("prevResult").is_none());
}

#[test]
fn a_failed_rollback_is_reported_with_the_error_and_the_cache_kept() {
    let scratch = Scratch::new("rollback-fails");
    let fake = FakePlugins::default().failing("portmap", "ADD").failing("bridge", "DEL");
    let err = scratch.cni(&fake).setup("c1", Path::new(NETNS), &ports()).unwrap_err();
    let NetworkError::Rollback { error, rollback } = &err else { panic!("{err}") };
    assert!(error.to_string().contains("portmap broke"), "{err}");
    assert!(rollback.to_string().contains("bridge broke"), "{err}");
    assert!(err.to_string().contains("run teardown again"), "{err}");
    assert!(scratch.cache("c1").exists(), "kept for a later teardown");
}

#[test]
fn teardown_deletes_in_reverse_with_the_cached_result() {
    let scratch = Scratch::new("teardown");
    let fake = FakePlugins::default();
    let cni = scratch.cni(&fake);
    cni.setup("c1", Path::new(NETNS), &ports()).unwrap();
    fake.forget();

    // NETNS does not exist here: teardown goes on with an empty CNI_NETNS.
    cni.teardown("c1", Some(Path::new(NETNS))).unwrap();
    assert_eq!(fake.summaries(), ["portmap DEL eth0", "bridge DEL eth0"]);
    for plugin in ["portmap", "bridge"] {
        assert_eq!(fake.config(plugin, "DEL", 0)["prevResult"], bridge_result(NETNS), "{plugin}");
        assert_eq!(fake.env(plugin, "DEL", 0)["CNI_NETNS"], "", "{plugin}");
    }
    assert_eq!(fake.config("portmap", "DEL", 0)["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert!(!scratch.cache("c1").exists());

    fake.forget();
    cni.teardown("c1", Some(Path::new(NETNS))).unwrap();
    cni.teardown("c1", None).unwrap();
    assert!(fake.ran().is_empty(), "nothing cached, nothing to do: {:?}", fake.summaries());
}

#[test]
fn teardown_undoes_what_setup_did_even_if_the_config_changed() {
    let scratch = Scratch::new("teardown-config");
    let fake = FakePlugins::default();
    scratch.cni(&fake).setup("c1", Path::new(NETNS), &[]).unwrap();
    fake.forget();
    let changed = CniConfig { network_name: "other".into(), bridge: "other0".into(), ..scratch.config() };
    Cni::with_exec(changed, Box::new(fake.clone())).unwrap().teardown("c1", None).unwrap();
    let bridge = fake.config("bridge", "DEL", 0);
    assert_eq!((bridge["name"].clone(), bridge["bridge"].clone()), (json!("tote"), json!("tote0")));
}

#[test]
fn a_failing_del_still_runs_the_rest_and_keeps_the_cache() {
    let scratch = Scratch::new("teardown-fails");
    let fake = FakePlugins::default();
    scratch.cni(&fake).setup("c1", Path::new(NETNS), &ports()).unwrap();
    let fake = fake.failing("portmap", "DEL");
    fake.forget();
    let err = scratch.cni(&fake).teardown("c1", None).unwrap_err();
    assert!(err.to_string().contains("portmap broke"), "{err}");
    assert_eq!(fake.summaries(), ["portmap DEL eth0", "bridge DEL eth0"]);
    assert!(scratch.cache("c1").exists(), "kept so teardown can be retried");
}

#[test]
fn teardown_runs_the_loopback_plugin_only_for_attachments_that_used_it() {
    let scratch = Scratch::new("teardown-lo");
    let fake = FakePlugins::default();
    let cni = scratch.cni(&fake);
    // Any namespace that exists will do: the fake plugins do not enter it.
    let netns = Path::new("/proc/self/ns/net");
    cni.setup("c1", netns, &[]).unwrap();
    let cache = scratch.cache("c1");
    let mut cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(cached["loopback"], false, "lo is up without the plugin");
    // As cached by versions that ran the loopback plugin on ADD.
    cached["loopback"] = json!(true);
    std::fs::write(&cache, serde_json::to_vec(&cached).unwrap()).unwrap();
    fake.forget();
    cni.teardown("c1", Some(netns)).unwrap();
    assert_eq!(fake.summaries(), ["bridge DEL eth0", "loopback DEL lo"]);

    // An entry written before the field existed reads as "no plugin".
    cni.setup("c1", netns, &[]).unwrap();
    let mut cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    cached.as_object_mut().unwrap().remove("loopback");
    std::fs::write(&cache, serde_json::to_vec(&cached).unwrap()).unwrap();
    fake.forget();
    cni.teardown("c1", Some(netns)).unwrap();
    assert_eq!(fake.summaries(), ["bridge DEL eth0"]);
}

#[test]
fn teardown_removes_masquerade_rules_the_bridge_plugin_left() {
    let scratch = Scratch::new("masq");
    let mine = masq::chain_name("tote", "c1");
    let theirs = masq::chain_name("tote", "c2");
    let table = format!(
        "-P POSTROUTING ACCEPT\n\
         -N {mine}\n\
         -N {theirs}\n\
         -A POSTROUTING -s 10.88.0.2/32 -m comment --comment \"name: \\\"tote\\\" id: \\\"c1\\\"\" -j {mine}\n\
         -A POSTROUTING -s 10.88.0.3/32 -m comment --comment \"name: \\\"tote\\\" id: \\\"c2\\\"\" -j {theirs}\n\
         -A {mine} -d 10.88.0.0/16 -m comment --comment \"name: \\\"tote\\\" id: \\\"c1\\\"\" -j ACCEPT\n"
    );
    let fake = FakePlugins::default().with_nat_table(&table);
    let cni = scratch.cni(&fake);
    cni.setup("c1", Path::new(NETNS), &[]).unwrap();
    // An attachment made with the bridge plugin's own masquerading (as
    // toted did before it kept one rule for the subnet).
    let cache = scratch.cache("c1");
    let mut cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    cached["conflist"]["plugins"][0]["ipMasq"] = json!(true);
    std::fs::write(&cache, serde_json::to_vec(&cached).unwrap()).unwrap();
    fake.forget();
    cni.teardown("c1", None).unwrap();
    let tools: Vec<String> = fake.summaries().into_iter().filter(|s| s.starts_with("iptables")).collect();
    assert_eq!(
        tools,
        [
            "iptables -w -t nat -S".to_string(),
            format!(
                "iptables -w -t nat -D POSTROUTING -s 10.88.0.2/32 -m comment --comment name: \"tote\" id: \"c1\" -j {mine}"
            ),
            format!("iptables -w -t nat -F {mine}"),
            format!("iptables -w -t nat -X {mine}"),
        ]
    );
}

#[test]
fn a_second_setup_is_refused_and_leaves_the_first_alone() {
    let scratch = Scratch::new("twice");
    let fake = FakePlugins::default();
    let cni = scratch.cni(&fake);
    cni.setup("c1", Path::new(NETNS), &ports()).unwrap();
    let cached = std::fs::read(scratch.cache("c1")).unwrap();
    fake.forget();
    let err = cni.setup("c1", Path::new(NETNS), &ports()).unwrap_err();
    assert!(matches!(err, NetworkError::AlreadyAttached { .. }), "{err}");
    assert!(err.to_string().contains("tear it down first"), "{err}");
    assert!(fake.ran().is_empty());
    assert_eq!(std::fs::read(scratch.cache("c1")).unwrap(), cached);
}

#[test]
fn a_missing_plugin_fails_before_anything_runs() {
    let scratch = Scratch::new("missing");
    std::fs::remove_file(scratch.dir.join("plugins/portmap")).unwrap();
    let fake = FakePlugins::default();
    let err = scratch.cni(&fake).setup("c1", Path::new(NETNS), &[]).unwrap_err();
    assert!(matches!(err, NetworkError::PluginNotFound { ref plugin, .. } if plugin == "portmap"), "{err}");
    assert!(err.to_string().contains("install containernetworking-plugins"), "{err}");
    assert!(fake.ran().is_empty());
    assert!(!scratch.cache("c1").exists());
}

#[test]
fn unallocated_ports_and_bad_ids_are_refused() {
    let scratch = Scratch::new("refused");
    let fake = FakePlugins::default();
    let cni = scratch.cni(&fake);
    let mut unallocated = ports();
    unallocated[1].host_port = 0;
    let err = cni.setup("c1", Path::new(NETNS), &unallocated).unwrap_err();
    assert_eq!(err.to_string(), "port mapping 53/udp -> 0.0.0.0:0 has no host port: reserve_ports picks one");
    for id in ["", "../etc", "-x", "a/b", "a b"] {
        assert!(matches!(cni.setup(id, Path::new(NETNS), &[]), Err(NetworkError::BadContainerId(_))), "{id:?}");
        assert!(matches!(cni.teardown(id, None), Err(NetworkError::BadContainerId(_))), "{id:?}");
    }
    assert!(fake.ran().is_empty());
}

#[test]
fn a_plugin_failing_without_a_cni_error_reports_its_stderr() {
    struct Crashing;
    impl PluginExec for Crashing {
        fn exec(&self, _: &Path, _: &[(String, String)], _: &[u8]) -> Result<Vec<u8>, ExecError> {
            Err(ExecError::Exit {
                status: "signal: 11 (SIGSEGV)".into(),
                stdout: vec![],
                stderr: b"panic: oops\n".to_vec(),
            })
        }
        fn run(&self, _: &str, _: &[&str]) -> Result<Vec<u8>, ExecError> {
            Ok(vec![])
        }
    }
    let scratch = Scratch::new("crash");
    let cni = Cni::with_exec(scratch.config(), Box::new(Crashing)).unwrap();
    let err = cni.setup("c1", Path::new(NETNS), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CNI plugin bridge ADD for container c1 exited with signal: 11 (SIGSEGV): panic: oops; \
         undoing the partial setup also failed, run teardown again: \
         CNI plugin bridge DEL for container c1 exited with signal: 11 (SIGSEGV): panic: oops"
    );
}

#[test]
fn the_attachment_is_the_address_inside_the_sandbox() {
    let mut result = bridge_result(NETNS);
    result["ips"] = json!([
        { "interface": 0, "address": "10.88.0.1/16" },
        { "interface": 2, "address": "10.88.0.7/16", "gateway": "10.88.0.1" },
    ]);
    let attachment = attachment_from(&result, "eth0").unwrap();
    assert_eq!(attachment.ip, "10.88.0.7".parse::<IpAddr>().unwrap());
    assert_eq!(attachment.mac.as_deref(), Some("aa:aa:aa:aa:aa:03"));
    result["ips"] = json!([]);
    assert_eq!(attachment_from(&result, "eth0"), None);
}

#[test]
fn the_config_section_has_defaults_and_is_checked() {
    let config: CniConfig = toml::from_str("bridge = \"br-test\"\nsubnet = \"10.1.0.0/24\"").unwrap();
    assert_eq!(config.bridge, "br-test");
    assert_eq!(config.network_name, "tote");
    assert_eq!(config.plugin_dirs, [PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]);
    assert!(toml::from_str::<CniConfig>("brige = \"x\"").is_err(), "unknown keys are refused");

    let bad = |config: CniConfig| Cni::new(config).err().expect("refused").to_string();
    assert!(bad(CniConfig { bridge: "a-very-long-bridge".into(), ..CniConfig::default() }).contains("at most 15"));
    assert!(bad(CniConfig { subnet: "10.88.0.0".into(), ..CniConfig::default() }).contains("prefix length"));
    assert!(bad(CniConfig { subnet: "10.88.0.0/33".into(), ..CniConfig::default() }).contains("prefix length"));
    assert!(bad(CniConfig { network_name: "a b".into(), ..CniConfig::default() }).contains("network_name"));
    assert!(bad(CniConfig { state_dir: "state".into(), ..CniConfig::default() }).contains("must be absolute"));
    assert!(Cni::new(CniConfig { subnet: "fd00::/64".into(), ..CniConfig::default() }).is_ok());
}

#[test]
fn an_ipv6_subnet_routes_the_ipv6_default() {
    let scratch = Scratch::new("v6");
    let config = CniConfig { subnet: "fd00:88::/64".into(), ..scratch.config() };
    let cni = Cni::with_exec(config, Box::new(FakePlugins::default())).unwrap();
    assert_eq!(cni.conflist()["plugins"][0]["ipam"]["routes"], json!([{ "dst": "::/0" }]));
}

/// Writes `files` (name, contents) into a fresh directory under `scratch`.
fn conf_dir(scratch: &Scratch, files: &[(&str, &str)]) -> PathBuf {
    let dir = scratch.dir.join("net.d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    dir
}

const PTP_CONFLIST: &str = r#"{
    "cniVersion": "0.4.0",
    "name": "pods",
    "plugins": [
        { "type": "ptp", "ipam": { "type": "host-local", "subnet": "10.22.0.0/24" } },
        { "type": "portmap", "capabilities": { "portMappings": true, "bandwidth": true } },
        { "type": "tuning", "capabilities": { "portMappings": false } }
    ]
}"#;

#[test]
fn the_conf_dir_gives_its_lexically_first_usable_file() {
    let scratch = Scratch::new("conf-pick");
    let single = r#"{ "cniVersion": "1.0.0", "name": "single", "type": "bridge", "bridge": "br9" }"#;
    let dir = conf_dir(
        &scratch,
        &[
            ("10-broken.conflist", "{ \"name\": "),
            ("20-pods.conflist", PTP_CONFLIST),
            ("05-notes.txt", "not a network"),
            ("30-single.conf", single),
        ],
    );
    // A directory with a config's name is not one.
    std::fs::create_dir(dir.join("00-dir.conf")).unwrap();
    let found = conf::load_dir(&dir).unwrap();
    let chosen = found.chosen.unwrap();
    assert_eq!((chosen.name.as_str(), chosen.file.clone()), ("pods", dir.join("20-pods.conflist")));
    assert_eq!(chosen.conflist, serde_json::from_str::<Value>(PTP_CONFLIST).unwrap(), "passed on as written");
    assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
    assert_eq!(found.skipped[0].0, dir.join("10-broken.conflist"));
    assert!(found.skipped[0].1.contains("not JSON"), "{:?}", found.skipped);

    // A single plugin's .conf is a list of one, the version and name the list's.
    std::fs::remove_file(dir.join("20-pods.conflist")).unwrap();
    let chosen = conf::load_dir(&dir).unwrap().chosen.unwrap();
    assert_eq!(
        chosen.conflist,
        json!({ "cniVersion": "1.0.0", "name": "single", "plugins": [serde_json::from_str::<Value>(single).unwrap()] })
    );
}

#[test]
fn an_empty_or_missing_conf_dir_gives_nothing_and_says_why() {
    let scratch = Scratch::new("conf-empty");
    let missing = scratch.dir.join("absent");
    assert_eq!(conf::load_dir(&missing).unwrap(), conf::ConfDir::default());
    let message = conf::ConfDir::default().describe_missing(&missing);
    assert!(message.contains(&missing.display().to_string()) && message.contains("no CNI network"), "{message}");

    let dir = conf_dir(&scratch, &[("99-old.conf", r#"{ "cniVersion": "0.2.0", "name": "old", "type": "bridge" }"#)]);
    let found = conf::load_dir(&dir).unwrap();
    assert_eq!(found.chosen, None);
    let message = found.describe_missing(&dir);
    assert!(message.contains("99-old.conf") && message.contains("cniVersion \"0.2.0\""), "{message}");
}

#[test]
fn configurations_that_cannot_run_are_refused_with_the_reason() {
    let conflist = Path::new("x.conflist");
    let conf = Path::new("x.conf");
    for (file, text, reason) in [
        (conflist, "[]", "not a JSON object"),
        (conflist, r#"{ "cniVersion": "1.0.0", "plugins": [{ "type": "bridge" }] }"#, "no \"name\""),
        (conflist, r#"{ "cniVersion": "1.0.0", "name": "n" }"#, "no \"plugins\""),
        (conflist, r#"{ "cniVersion": "1.0.0", "name": "n", "plugins": [] }"#, "is empty"),
        (conflist, r#"{ "name": "n", "plugins": [{ "type": "bridge" }] }"#, "cniVersion \"\""),
        (conflist, r#"{ "cniVersion": "1.0.0", "name": "n", "plugins": [{ "type": "../sh" }] }"#, "plugin 0"),
        (conflist, r#"{ "cniVersion": "1.0.0", "name": "n", "plugins": [{ "ipam": {} }] }"#, "plugin 0"),
        (conf, r#"{ "cniVersion": "1.0.0", "name": "n", "plugins": [{ "type": "bridge" }] }"#, "rename it"),
        (conf, r#"{ "cniVersion": "1.0.0", "name": "n" }"#, "plugin 0"),
    ] {
        let err = conf::parse(file, text.as_bytes()).unwrap_err();
        assert!(err.contains(reason), "{text}: {err}");
    }
}

#[test]
fn pod_cni_args_are_the_kubelets_and_refuse_separators() {
    let args = conf::pod_args("default", "web", "abc123", "uid-1").unwrap();
    assert_eq!(
        conf::join_args(&args),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=uid-1"
    );
    let err = conf::pod_args("default", "a;b", "abc123", "uid-1").unwrap_err();
    assert!(matches!(err, NetworkError::BadCniArg { key: "K8S_POD_NAME", .. }), "{err}");
    assert!(conf::pod_args("x=y", "web", "abc123", "uid-1").is_err());
}

#[test]
fn a_pod_network_runs_its_own_list_with_cni_args_and_declared_capabilities() {
    let scratch = Scratch::new("pod-attach");
    let dir = conf_dir(&scratch, &[("10-pods.conflist", PTP_CONFLIST)]);
    let list = conf::load_dir(&dir).unwrap().chosen.unwrap();
    let fake = FakePlugins::default();
    let cni = scratch.cni(&fake);
    let args = conf::pod_args("tests", "web", "p1", "uid-web").unwrap();
    let attachment = cni
        .attach("p1", Path::new(NETNS), &ports(), AttachOptions { network: Some(&list), args: &args, if_name: None })
        .unwrap();

    assert_eq!(
        fake.summaries(),
        ["ptp ADD eth0", "portmap ADD eth0", "tuning ADD eth0"],
        "no masquerade rule of Tote's"
    );
    // The first IPv4 address is the pod's, though the IPv6 one came first.
    assert_eq!(attachment.ip, "10.22.0.5".parse::<IpAddr>().unwrap());
    assert_eq!((attachment.prefix, attachment.gateway), (24, Some("10.22.0.1".parse().unwrap())));
    assert_eq!(attachment.additional_ips, ["fd00::5".parse::<IpAddr>().unwrap()]);

    let ptp = fake.config("ptp", "ADD", 0);
    assert_eq!((ptp["cniVersion"].clone(), ptp["name"].clone()), (json!("0.4.0"), json!("pods")));
    let portmap = fake.config("portmap", "ADD", 0);
    assert_eq!(portmap["prevResult"]["ips"][1]["address"], "10.22.0.5/24");
    // Only the capabilities it declares and Tote has: no bandwidth.
    assert_eq!(portmap["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert_eq!(portmap["runtimeConfig"].as_object().unwrap().len(), 1, "{portmap}");
    assert!(fake.config("tuning", "ADD", 0).get("runtimeConfig").is_none(), "a capability set to false is not one");
    let joined = conf::join_args(&args);
    for plugin in ["ptp", "portmap", "tuning"] {
        assert_eq!(fake.env(plugin, "ADD", 0)["CNI_ARGS"], joined, "{plugin}");
    }

    // The directory changes; DEL still runs what ADD ran, in reverse,
    // with the same CNI_ARGS and result.
    std::fs::write(dir.join("10-pods.conflist"), PTP_CONFLIST.replace("pods", "other")).unwrap();
    fake.forget();
    Cni::with_exec(scratch.config(), Box::new(fake.clone())).unwrap().teardown("p1", None).unwrap();
    assert_eq!(fake.summaries(), ["tuning DEL eth0", "portmap DEL eth0", "ptp DEL eth0"]);
    let del = fake.config("ptp", "DEL", 0);
    assert_eq!(del["name"], "pods");
    assert_eq!(del["prevResult"]["ips"][1]["address"], "10.22.0.5/24");
    assert_eq!(fake.env("portmap", "DEL", 0)["CNI_ARGS"], joined);
    assert!(!scratch.cache("p1").exists());
}

#[test]
fn a_pod_network_with_a_missing_plugin_fails_before_anything_runs() {
    let scratch = Scratch::new("pod-missing");
    let text = r#"{ "cniVersion": "1.0.0", "name": "n", "plugins": [{ "type": "bridge", "ipam": { "type": "whereabouts" } }] }"#;
    let list = conf::parse(Path::new("/etc/cni/net.d/n.conflist"), text.as_bytes()).unwrap();
    let fake = FakePlugins::default();
    let err = scratch.cni(&fake).attach(
        "p1",
        Path::new(NETNS),
        &[],
        AttachOptions { network: Some(&list), args: &[], if_name: None },
    );
    assert!(matches!(err, Err(NetworkError::PluginNotFound { ref plugin, .. }) if plugin == "whereabouts"), "{err:?}");
    assert!(fake.ran().is_empty());
}

#[test]
fn a_result_in_a_version_tote_cannot_read_is_an_error() {
    let call = Call { command: "ADD", container_id: "c1", netns: NETNS, if_name: "eth0", args: String::new() };
    let old = json!({ "cniVersion": "0.2.0", "ip4": { "ip": "10.1.0.2/24" } }).to_string();
    let err = parse_result("bridge", &call, old.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("0.2.0") && err.contains("1.0.0"), "{err}");
    let current = json!({ "cniVersion": "1.0.0", "ips": [] }).to_string();
    assert!(parse_result("bridge", &call, current.as_bytes()).is_ok());
}
