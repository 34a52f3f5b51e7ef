//! A rootless toted's cgroups: limits need a cgroup v2 subtree delegated to
//! the user (its directory and its `cgroup.procs` and
//! `cgroup.subtree_control` writable to them, as systemd's `Delegate=yes`
//! makes them).
//!
//! The layout is `<base>/supervisor` for toted itself (and the processes it
//! starts: namespace holder, monitors, network helpers) and
//! `<base>/containers/<id>` for containers. toted must already be in
//! `<base>/supervisor` when it starts, put there by whoever starts it
//! (systemd's `DelegateSubgroup=supervisor`, or a script): a cgroup v2 may
//! not both hold processes and hand controllers to children, so `<base>`
//! itself must stay empty, and a service manager that started a restarted
//! toted in `<base>` would fail (EBUSY) once containers have enabled
//! controllers there. toted never moves itself or anything else.

use std::path::{Path, PathBuf};

/// Where toted runs, in the delegated cgroup.
pub const SUPERVISOR: &str = "supervisor";
/// Where containers' cgroups go, in the delegated cgroup.
pub const CONTAINERS: &str = "containers";
/// The controllers containers' limits use.
const WANTED: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// What a rootless toted's containers get for cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delegation {
    /// Containers' cgroups go under `parent` (a cgroup path), with these
    /// controllers enabled for them.
    Delegated { parent: String, controllers: Vec<String> },
    /// No cgroup: why, as a sentence for `tote info` and refusals.
    Unavailable(String),
}

impl Delegation {
    /// The controller `controller` is there for containers' limits.
    pub fn has(&self, controller: &str) -> bool {
        matches!(self, Delegation::Delegated { controllers, .. } if controllers.iter().any(|c| c == controller))
    }
}

/// [`delegate`] for this process, on this host.
pub fn of_this_process() -> Delegation {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let unified = matches!(tote_shim::cgroups::host_hierarchy(), Ok(tote_shim::cgroups::Hierarchy::Unified));
    delegate(Path::new("/sys/fs/cgroup"), &own, unified)
}

/// toted's delegated cgroup, if it has one: `mount` is where cgroup2 is
/// mounted, `own` the text of /proc/self/cgroup, `unified` whether the
/// host is pure cgroup v2. Enables the controllers for containers under
/// `<base>/containers`.
pub fn delegate(mount: &Path, own: &str, unified: bool) -> Delegation {
    match try_delegate(mount, own, unified) {
        Ok(delegated) => delegated,
        Err(why) => Delegation::Unavailable(why),
    }
}

fn try_delegate(mount: &Path, own: &str, unified: bool) -> Result<Delegation, String> {
    if !unified {
        return Err(
            "this host's cgroups are v1 (or hybrid): only a cgroup v2 subtree can be delegated to a user".into()
        );
    }
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim()))
        .ok_or("/proc/self/cgroup names no cgroup v2 for toted")?;
    let how = "start it as the systemd user service in contrib/systemd (Delegate=yes, \
               DelegateSubgroup=supervisor; systemd 254 or later), or from a process in \
               <a cgroup delegated to you>/supervisor";
    let base = match (own.file_name(), own.parent()) {
        (Some(name), Some(base)) if name == SUPERVISOR && base != Path::new("/") => base.to_path_buf(),
        _ => {
            return Err(format!(
                "toted runs in cgroup {}, not in the `{SUPERVISOR}` cgroup of a subtree delegated to this user: \
                 {how}",
                own.display()
            ));
        }
    };
    let dir = mount.join(base.strip_prefix("/").unwrap_or(&base));
    for file in ["cgroup.procs", "cgroup.subtree_control"] {
        let path = dir.join(file);
        if nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK).is_err() {
            return Err(format!(
                "cgroup {} is not delegated to this user: {} is not writable to it ({how})",
                base.display(),
                path.display()
            ));
        }
    }
    let available = read(&dir.join("cgroup.controllers"))?;
    let offered: Vec<&str> = WANTED.into_iter().filter(|c| available.split_whitespace().any(|a| a == *c)).collect();
    if offered.is_empty() {
        return Err(format!(
            "cgroup {} has none of the controllers {} (its cgroup.controllers: {:?}): the service manager \
             delegated none",
            base.display(),
            WANTED.join(", "),
            available.trim()
        ));
    }
    let enabled = enable(&dir, &offered)?;
    let containers = dir.join(CONTAINERS);
    match std::fs::create_dir(&containers) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("create cgroup {}: {e}", containers.display())),
    }
    let enabled = enable(&containers, &enabled)?;
    Ok(Delegation::Delegated {
        parent: base.join(CONTAINERS).display().to_string(),
        controllers: enabled.into_iter().map(str::to_string).collect(),
    })
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))
}

/// Writes each controller into `dir`'s subtree_control (one write each: a
/// write fails as a whole if any of its controllers does); returns those
/// that are enabled after. None enabled is an error naming the first
/// failure (EBUSY when `dir` holds processes of its own).
fn enable<'a>(dir: &Path, controllers: &[&'a str]) -> Result<Vec<&'a str>, String> {
    let file = dir.join("cgroup.subtree_control");
    let mut first_error = None;
    for controller in controllers {
        if let Err(e) = std::fs::write(&file, format!("+{controller}")) {
            first_error.get_or_insert(format!("enable {controller} in {}: {e}", file.display()));
        }
    }
    let now = read(&file)?;
    let enabled: Vec<&str> = controllers.iter().copied().filter(|c| now.split_whitespace().any(|e| e == *c)).collect();
    match (enabled.is_empty(), first_error) {
        (true, Some(error)) => Err(error),
        (true, None) => Err(format!("{} enables none of {}", file.display(), controllers.join(", "))),
        (false, _) => Ok(enabled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that stands in for a cgroup, for the refusals (the
    /// real thing, controllers enabled, is tests/rootless.rs's in a cgroup
    /// v2 VM: plain files do not keep subtree_control's semantics).
    fn fake_cgroup(dir: &Path, controllers: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    }

    #[test]
    fn only_a_supervisor_cgroup_in_a_writable_v2_subtree_is_delegation() {
        let mount = std::env::temp_dir().join(format!("tote-deleg-{}", std::process::id()));
        let v1 = delegate(&mount, "0::/u/supervisor\n", false);
        assert!(matches!(&v1, Delegation::Unavailable(why) if why.contains("v1")), "{v1:?}");
        let no_line = delegate(&mount, "1:name=systemd:/\n", true);
        assert!(matches!(&no_line, Delegation::Unavailable(why) if why.contains("/proc/self/cgroup")), "{no_line:?}");
        let elsewhere = delegate(&mount, "0::/user.slice/session-1.scope\n", true);
        let Delegation::Unavailable(why) = &elsewhere else { panic!("{elsewhere:?}") };
        assert!(why.contains("/user.slice/session-1.scope") && why.contains("DelegateSubgroup=supervisor"), "{why}");
        let at_root = delegate(&mount, "0::/supervisor\n", true);
        assert!(matches!(at_root, Delegation::Unavailable(_)));
        let missing = delegate(&mount, "0::/u/supervisor\n", true);
        let Delegation::Unavailable(why) = &missing else { panic!("{missing:?}") };
        assert!(why.contains("not delegated") && why.contains("cgroup.procs"), "{why}");

        fake_cgroup(&mount.join("w"), "hugetlb rdma\n");
        let none = delegate(&mount, "0::/w/supervisor\n", true);
        assert!(matches!(&none, Delegation::Unavailable(why) if why.contains("none of the controllers")), "{none:?}");
        std::fs::remove_dir_all(&mount).unwrap();
    }
}
