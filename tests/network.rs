//! Tote's container networking against the real CNI plugins (Debian's
//! containernetworking-plugins) and iptables, as root: a network namespace
//! attached to a bridge, a published port reached from the host on
//! 127.0.0.1 and the container's address reached directly, and teardown
//! leaving no namespace, veth, bridge or iptables rule behind.
//!
//! A pod's network from a CNI configuration directory is run the same way,
//! with a conflist the test writes (its own bridge and subnet).
//!
//! Each test has its own bridge (`tote-t<pid><n>`), /24 subnet
//! (`10.199.<k>.0/24`), container id and state directory, and a guard that
//! undoes all of it even when an assertion fails. Tests take a lock so the
//! host-wide veth count each one checks is its own doing. They touch no
//! interface, rule or namespace they did not create.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use toted::network::cni::{AttachOptions, conf};
use toted::network::{Attachment, Cni, CniConfig, PortReservation, netns, parse_publish, reserve_ports};

static NEXT: AtomicUsize = AtomicUsize::new(0);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What the server in the container says to each connection.
const GREETING: &str = "hello";
const CONTAINER_PORT: u16 = 8080;

/// One test's network: bridge, subnet, namespace, state. Dropping it
/// tears everything down, ignoring errors (the test's asserts have spoken).
struct TestNet {
    cni: Cni,
    container_id: String,
    netns: PathBuf,
    root: PathBuf,
    /// Matches this test's subnet in `iptables-save` output (`10.199.7.`).
    subnet_prefix: String,
    _serial: MutexGuard<'static, ()>,
}

impl TestNet {
    /// `None` (after saying why) unless we are root.
    fn new() -> Option<Self> {
        Self::with_fake_plugins(&[])
    }

    /// As `new`, with `(name, shell script)` plugins found before the real ones.
    fn with_fake_plugins(fakes: &[(&str, &str)]) -> Option<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: the network tests create namespaces, bridges and iptables rules, and need root");
            return None;
        }
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // 32 test processes x 8 tests fit in 10.199.0.0/16 without overlap.
        assert!(n < 8, "more tests than subnets: widen the scheme");
        let third = (pid % 32) * 8 + u32::try_from(n).unwrap();
        let bridge = format!("tote-t{}{n}", pid % 10000);
        assert!(!Path::new("/sys/class/net").join(&bridge).exists(), "{bridge} exists already");
        let root = PathBuf::from(format!("/tmp/tote-tests/network-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&root);
        let fake_dir = root.join("plugins");
        std::fs::create_dir_all(&fake_dir).unwrap();
        for (name, script) in fakes {
            std::fs::write(fake_dir.join(name), format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(fake_dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = CniConfig {
            plugin_dirs: [fake_dir].into_iter().chain(CniConfig::default().plugin_dirs).collect(),
            bridge,
            subnet: format!("10.199.{third}.0/24"),
            state_dir: root.join("state"),
            ..CniConfig::default()
        };
        Some(Self {
            cni: Cni::new(config).unwrap(),
            container_id: format!("tote-net-test-{pid}-{n}"),
            netns: root.join("netns"),
            root,
            subnet_prefix: format!("10.199.{third}."),
            _serial: serial,
        })
    }

    fn bridge(&self) -> &str {
        &self.cni.config().bridge
    }

    /// Creates the namespace and attaches it, publishing a free port on
    /// `host_ip` to [`CONTAINER_PORT`]; the attachment and that port,
    /// held by toted's reservation as in the daemon (traffic reaches the
    /// container through it).
    fn attach(&self, host_ip: &str) -> (Attachment, u16, PortReservation) {
        netns::create(&self.netns).unwrap();
        assert!(netns::exists(&self.netns));
        let mut ports = parse_publish(&format!("{host_ip}::{CONTAINER_PORT}")).unwrap();
        let held = reserve_ports(&mut ports).unwrap();
        let attachment = self.cni.setup(&self.container_id, &self.netns, &ports).unwrap();
        (attachment, ports[0].host_port, held)
    }

    /// The host ends of veths on our bridge.
    fn bridge_ports(&self) -> BTreeSet<String> {
        links(&["master", self.bridge()])
    }

    /// The addresses host-local has leased out.
    fn leases(&self) -> Vec<String> {
        let dir = self.root.join("state/ipam").join(&self.cni.config().network_name);
        let Ok(entries) = std::fs::read_dir(&dir) else { return vec![] };
        entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
            .collect()
    }

    /// Lines of `iptables-save` that are about this test.
    fn leftover_rules(&self) -> Vec<String> {
        let save = run("iptables-save", &[]);
        save.lines()
            .filter(|line| line.contains(&self.container_id) || line.contains(&self.subnet_prefix))
            // The subnet's masquerade rule belongs to the network, not to a
            // container: it goes with the bridge (remove_bridge).
            .filter(|line| !line.contains("--comment \"tote network ") || self.bridge_gone())
            .map(str::to_string)
            .collect()
    }
}

impl TestNet {
    fn bridge_gone(&self) -> bool {
        !Path::new("/sys/class/net").join(&self.cni.config().bridge).exists()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = self.cni.teardown(&self.container_id, Some(&self.netns));
        let _ = netns::remove(&self.netns);
        let _ = self.cni.remove_bridge();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A server in the namespace at `path`: a listener on 0.0.0.0:8080 there
/// that greets `connections` clients, then stops.
fn serve_in(path: &Path, connections: usize) -> JoinHandle<()> {
    // The socket belongs to the namespace it was made in, whichever thread
    // then uses it.
    let listener = netns::enter(path, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, CONTAINER_PORT)))
        .unwrap()
        .expect("listen on 0.0.0.0:8080 in the container's namespace");
    std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut client, _) = listener.accept().unwrap();
            client.write_all(GREETING.as_bytes()).unwrap();
        }
    })
}

/// What the server at `addr` says.
fn greeting(addr: SocketAddr) -> String {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut said = String::new();
    stream.read_to_string(&mut said).unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    said
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Names of the host's links that match `ip link show` filter `filter`.
fn links(filter: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["-o", "link", "show"];
    args.extend(filter);
    run("ip", &args)
        .lines()
        // "7: veth1234@if2: <...": the name, without the peer suffix.
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap().to_string())
        .collect()
}

fn veths() -> BTreeSet<String> {
    links(&["type", "veth"])
}

/// Waits for `done`, which the kernel may take a moment to make true.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything the test made is gone.
fn assert_clean(net: &TestNet, veths_before: &BTreeSet<String>, bridge_ports: &BTreeSet<String>) {
    assert!(!net.netns.exists(), "the namespace file is removed");
    assert!(!netns::exists(&net.netns));
    assert!(!Path::new("/sys/class/net").join(net.bridge()).exists(), "bridge {} is removed", net.bridge());
    eventually("the container's veth is gone", || veths().is_disjoint(bridge_ports));
    eventually("the veth count is back", || veths().len() == veths_before.len());
    assert_eq!(net.leftover_rules(), Vec::<String>::new(), "iptables rules left behind");
    assert_eq!(net.leases(), Vec::<String>::new(), "addresses still leased");
    assert!(!net.root.join("state/results").join(format!("{}.json", net.container_id)).exists());
}

#[test]
fn a_published_port_reaches_the_container_from_127_0_0_1_and_teardown_leaves_nothing() {
    let Some(net) = TestNet::new() else { return };
    let veths_before = veths();

    let (attachment, host_port, _held) = net.attach("127.0.0.1");
    assert!(attachment.ip.to_string().starts_with(&net.subnet_prefix), "{attachment:?}");
    assert_eq!(attachment.prefix, 24);
    assert_eq!(attachment.gateway, Some(format!("{}1", net.subnet_prefix).parse().unwrap()));
    assert_eq!(attachment.interface, "eth0");
    assert!(attachment.mac.is_some());
    let bridge_ports = net.bridge_ports();
    assert_eq!(bridge_ports.len(), 1, "one veth on {}: {bridge_ports:?}", net.bridge());
    assert_eq!(net.leases(), [attachment.ip.to_string()]);
    // portmap sets this so 127.0.0.1 may be routed out to the bridge.
    let route_localnet = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge());
    assert_eq!(std::fs::read_to_string(route_localnet).unwrap().trim(), "1");

    let server = serve_in(&net.netns, 3);
    assert_eq!(greeting(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), host_port)), GREETING, "via 127.0.0.1");
    assert_eq!(greeting(SocketAddr::new(attachment.ip, CONTAINER_PORT)), GREETING, "via the container's address");
    // netns::create brought `lo` up inside.
    let inside = netns::enter(&net.netns, || greeting(SocketAddr::from((Ipv4Addr::LOCALHOST, CONTAINER_PORT))));
    assert_eq!(inside.unwrap(), GREETING, "via lo in the namespace");
    server.join().unwrap();
    assert!(!net.leftover_rules().is_empty(), "the port is forwarded by rules naming the container");

    net.cni.teardown(&net.container_id, Some(&net.netns)).unwrap();
    netns::remove(&net.netns).unwrap();
    net.cni.remove_bridge().unwrap();
    assert_clean(&net, &veths_before, &bridge_ports);
    // Again, with nothing left: all fine.
    net.cni.teardown(&net.container_id, Some(&net.netns)).unwrap();
    netns::remove(&net.netns).unwrap();
    net.cni.remove_bridge().unwrap();
}

#[test]
fn teardown_after_the_namespace_is_gone_still_cleans_up() {
    let Some(net) = TestNet::new() else { return };
    let veths_before = veths();

    let (attachment, host_port, _held) = net.attach("127.0.0.1");
    let bridge_ports = net.bridge_ports();
    let server = serve_in(&net.netns, 1);
    assert_eq!(greeting(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), host_port)), GREETING);
    server.join().unwrap();
    let _ = attachment;
    let masquerade = format!("-A POSTROUTING -s {} ! -o {}", net.cni.config().subnet, net.cni.config().bridge);
    assert!(run("iptables-save", &[]).contains(&masquerade), "the subnet is masqueraded");

    netns::remove(&net.netns).unwrap();
    net.cni.teardown(&net.container_id, Some(&net.netns)).unwrap();
    net.cni.remove_bridge().unwrap();
    assert_clean(&net, &veths_before, &bridge_ports);
}

#[test]
fn a_port_on_every_host_address_reaches_the_container() {
    let Some(net) = TestNet::new() else { return };
    let veths_before = veths();

    let (attachment, host_port, _held) = net.attach("0.0.0.0");
    let bridge_ports = net.bridge_ports();
    let server = serve_in(&net.netns, 2);
    assert_eq!(greeting(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), host_port)), GREETING, "via 127.0.0.1");
    // The bridge's own address is a host address too.
    let gateway = attachment.gateway.expect("the bridge is the gateway");
    assert_eq!(greeting(SocketAddr::new(gateway, host_port)), GREETING, "via the bridge address");
    server.join().unwrap();

    net.cni.teardown(&net.container_id, Some(&net.netns)).unwrap();
    netns::remove(&net.netns).unwrap();
    net.cni.remove_bridge().unwrap();
    assert_clean(&net, &veths_before, &bridge_ports);
}

#[test]
fn a_plugin_failing_midway_leaves_nothing_behind() {
    // A portmap that refuses every ADD, after the real bridge has run.
    let failing_portmap = r#"[ "$CNI_COMMAND" = ADD ] || exit 0
echo '{"cniVersion":"1.0.0","code":11,"msg":"no ports today","details":"a test plugin"}'
exit 1"#;
    let Some(net) = TestNet::with_fake_plugins(&[("portmap", failing_portmap)]) else { return };
    let veths_before = veths();

    netns::create(&net.netns).unwrap();
    let mut ports = parse_publish(&format!("127.0.0.1::{CONTAINER_PORT}")).unwrap();
    let _held = reserve_ports(&mut ports).unwrap();
    let err = net.cni.setup(&net.container_id, &net.netns, &ports).unwrap_err();
    assert!(err.to_string().contains("CNI plugin portmap ADD"), "{err}");
    assert!(err.to_string().contains("no ports today: a test plugin"), "{err}");

    // The bridge's work is undone: no address, no rule, no veth on the
    // bridge (the bridge itself stays, as the bridge plugin leaves it).
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_eq!(net.leftover_rules(), Vec::<String>::new());
    assert_eq!(net.bridge_ports(), BTreeSet::new());
    // /proc/thread-self/net shows the namespace of the thread reading it.
    let inside = netns::enter(&net.netns, || std::fs::read_to_string("/proc/thread-self/net/dev")).unwrap().unwrap();
    assert!(inside.contains("lo:"), "{inside}");
    assert!(!inside.contains("eth0:"), "eth0 is removed from the namespace: {inside}");
    netns::remove(&net.netns).unwrap();
    net.cni.remove_bridge().unwrap();
    assert_clean(&net, &veths_before, &BTreeSet::new());
}

#[test]
fn teardown_of_a_container_never_set_up_is_fine() {
    let Some(net) = TestNet::new() else { return };
    net.cni.teardown(&net.container_id, None).unwrap();
    net.cni.teardown(&net.container_id, Some(&net.netns)).unwrap();
    netns::remove(&net.netns).unwrap();
    net.cni.remove_bridge().unwrap();
}

/// Deletes a bridge a configuration list (not Tote's config) named.
struct OwnBridge(String);

impl Drop for OwnBridge {
    fn drop(&mut self) {
        if Path::new("/sys/class/net").join(&self.0).join("bridge").is_dir() {
            let _ = Command::new("ip").args(["link", "del", "dev", &self.0]).status();
        }
    }
}

#[test]
fn a_pod_network_from_a_conf_dir_attaches_and_is_undone_after_the_file_changed() {
    let Some(net) = TestNet::new() else { return };
    let veths_before = veths();
    // Another bridge and subnet than Tote's own network's (`net`'s config).
    let bridge = format!("{}p", net.bridge());
    let _own = OwnBridge(bridge.clone());
    let third = net.subnet_prefix.split('.').nth(2).unwrap().to_string();
    let (subnet, prefix) = (format!("10.198.{third}.0/24"), format!("10.198.{third}."));
    let conf_dir = net.root.join("net.d");
    let leases = net.root.join("pod-ipam");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                // The plugin's own masquerading: a chain per pod that DEL must remove.
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": { "type": "host-local", "ranges": [[{ "subnet": subnet }]], "dataDir": leases },
            },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
        ],
    });
    let file = conf_dir.join("10-podnet.conflist");
    std::fs::write(&file, conflist.to_string()).unwrap();
    // A later file is not the one used.
    std::fs::write(conf_dir.join("20-other.conf"), r#"{"cniVersion":"1.0.0","name":"x","type":"loopback"}"#).unwrap();
    let list = conf::load_dir(&conf_dir).unwrap().chosen.expect("the conflist is usable");
    assert_eq!((list.name.as_str(), list.file.as_path()), ("podnet", file.as_path()));

    netns::create(&net.netns).unwrap();
    let mut ports = parse_publish(&format!("127.0.0.1::{CONTAINER_PORT}")).unwrap();
    let _held = reserve_ports(&mut ports).unwrap();
    let args = conf::pod_args("tests", "web", &net.container_id, "uid-web").unwrap();
    let options = AttachOptions { network: Some(&list), args: &args, if_name: None };
    let attachment = net.cni.attach(&net.container_id, &net.netns, &ports, options).unwrap();
    assert!(attachment.ip.to_string().starts_with(&prefix), "{attachment:?} in {subnet}");
    assert_eq!(attachment.gateway, Some(format!("{prefix}1").parse().unwrap()));
    let pod_ports = links(&["master", &bridge]);
    assert_eq!(pod_ports.len(), 1, "one veth on {bridge}: {pod_ports:?}");
    assert!(net.bridge_gone(), "Tote's own bridge is not made for a configured network");
    let leased = || -> Vec<String> {
        std::fs::read_dir(leases.join("podnet")).map_or_else(
            |_| vec![],
            |d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                    .collect()
            },
        )
    };
    assert_eq!(leased(), [attachment.ip.to_string()]);
    let rules = || -> Vec<String> {
        run("iptables-save", &[])
            .lines()
            .filter(|l| l.contains(&net.container_id) || l.contains(&prefix))
            .map(str::to_string)
            .collect()
    };
    assert!(rules().iter().any(|r| r.contains("MASQUERADE")), "the bridge plugin masquerades: {:?}", rules());

    let server = serve_in(&net.netns, 2);
    let host_port = ports[0].host_port;
    assert_eq!(greeting(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), host_port)), GREETING, "via portmap");
    assert_eq!(greeting(SocketAddr::new(attachment.ip, CONTAINER_PORT)), GREETING, "via the pod's address");
    server.join().unwrap();

    // The directory now says something else entirely: DEL must still undo
    // what ADD did, from the cache.
    std::fs::remove_file(&file).unwrap();
    let changed = conflist.to_string().replace(&bridge, "elsewhere0").replace(&subnet, "10.197.0.0/24");
    std::fs::write(conf_dir.join("05-changed.conflist"), changed).unwrap();
    net.cni.teardown(&net.container_id, Some(&net.netns)).unwrap();
    netns::remove(&net.netns).unwrap();

    eventually("the pod's veth is gone", || links(&["master", &bridge]).is_empty());
    eventually("the veth count is back", || veths().len() == veths_before.len());
    assert_eq!(leased(), Vec::<String>::new(), "the address is released");
    assert_eq!(rules(), Vec::<String>::new(), "iptables rules left behind");
    assert!(!Path::new("/sys/class/net/elsewhere0").exists(), "the changed file was not run");
    assert!(!net.root.join("state/results").join(format!("{}.json", net.container_id)).exists());
}
