//! What a test's toted leaves on the host besides its own directories: its
//! bridge, its masquerade rule and its cgroup parent in every hierarchy.
//! The fixtures (tests/support/daemon.rs, integration/cri/support.rs)
//! remove them when they drop; each is the test's own, by name.

use std::path::Path;
use std::process::{Command, Stdio};

/// Deletes the bridge and toted's masquerade rule for `subnet` (tagged
/// with the network's name), however many times it was added.
pub fn remove_network(bridge: &str, subnet: &str, network: &str) {
    let _ = Command::new("ip").args(["link", "del", bridge]).stderr(Stdio::null()).status();
    let comment = format!("tote network {network}");
    let rule = [
        "-w",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-s",
        subnet,
        "!",
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "MASQUERADE",
    ];
    while Command::new("iptables").args(rule).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {}
}

/// Removes the cgroup `parent` (`/name`) and what is under it, deepest
/// first, in every v1 hierarchy and the unified one. Only empty cgroups
/// can go: one still holding a process stays, for the test to report.
pub fn remove_cgroup_parent(parent: &str) {
    let name = parent.trim_start_matches('/');
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let mut roots: Vec<_> = hierarchies.flatten().map(|h| h.path().join(name)).collect();
    roots.push(Path::new("/sys/fs/cgroup").join(name));
    for root in roots {
        remove_tree(&root);
    }
}

fn remove_tree(dir: &Path) {
    let Ok(children) = std::fs::read_dir(dir) else { return };
    for child in children.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&child.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}
