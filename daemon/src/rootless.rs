//! A rootless toted's user namespace: made once by `tote-shim ns-holder`,
//! whose process keeps it (and a mount namespace inside it) alive across
//! toted's restarts, and joined by each toted before it starts any thread
//! (setns into a user namespace is refused to a multithreaded process).
//!
//! The holder is found through `<state dir>/ns-holder.pid`: its pid and its
//! start time (field 22 of /proc/PID/stat), so that a pid the kernel has
//! since given to another process is not taken for it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sched::CloneFlags;

use crate::privilege::{IdRange, Rootless, SUBGID, SUBUID, parse_proc_map};

pub const HOLDER_PID_FILE: &str = "ns-holder.pid";

/// What joining found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub holder: i32,
    /// Made now (false: an existing holder, from an earlier toted).
    pub created: bool,
    /// The holder was gone but containers of its namespaces still ran:
    /// the namespaces were joined through this monitor's pid and a new
    /// holder keeps them now.
    pub adopted_from: Option<i32>,
    /// The namespace's maps as the kernel has them.
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// Joins the user and mount namespaces of the state dir's holder, making
/// the holder first when there is none. Call it while single-threaded.
///
/// A holder can be killed (by the user, the OOM killer, a session's
/// cleanup) while containers still run in its namespaces: a new namespace
/// would then hide their mounts and strand them. So when the holder is
/// gone, a running monitor's namespaces are joined instead and a new
/// holder is started in them.
pub fn enter(state_dir: &Path, shim: &Path, rootless: &Rootless) -> Result<Joined, String> {
    let pid_file = state_dir.join(HOLDER_PID_FILE);
    let (holder, created, adopted_from) = match live_holder(&pid_file) {
        Some(pid) => {
            join(pid)?;
            (pid, false, None)
        }
        None => {
            let survivor = surviving_monitor(&state_dir.join("m"));
            if let Some(monitor) = survivor {
                join(monitor)?;
            }
            let pid = match survivor {
                Some(_) => adopt(shim)?,
                None => spawn_holder(shim, rootless)?,
            };
            let start = start_time(pid).ok_or_else(|| format!("the namespace holder (pid {pid}) is gone"))?;
            let tmp = pid_file.with_extension("pid.tmp");
            std::fs::write(&tmp, format!("{pid} {start}\n"))
                .and_then(|()| std::fs::rename(&tmp, &pid_file))
                .map_err(|e| format!("write {}: {e}", pid_file.display()))?;
            if survivor.is_none() {
                join(pid)?;
            }
            (pid, survivor.is_none(), survivor)
        }
    };
    let read = |name: &str| std::fs::read_to_string(format!("/proc/self/{name}")).map(|t| parse_proc_map(&t));
    let uids = read("uid_map").map_err(|e| format!("read /proc/self/uid_map: {e}"))?;
    let gids = read("gid_map").map_err(|e| format!("read /proc/self/gid_map: {e}"))?;
    Ok(Joined { holder, created, adopted_from, uids, gids })
}

/// A container monitor that still serves under `monitors` (one directory
/// each, with its socket) from another user namespace than this process's
/// (toted has not joined one yet): its pid, from the socket's peer
/// credentials, so no pid file can point elsewhere.
fn surviving_monitor(monitors: &Path) -> Option<i32> {
    let own = std::fs::read_link("/proc/self/ns/user").ok()?;
    std::fs::read_dir(monitors).ok()?.flatten().find_map(|entry| {
        let stream = std::os::unix::net::UnixStream::connect(entry.path().join(tote_shim::monitor::SOCKET)).ok()?;
        let creds = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
        let pid = creds.pid();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()?;
        (pid > 0 && theirs != own).then_some(pid)
    })
}

/// Runs `tote-shim ns-holder --adopt` in the namespaces this process has
/// joined; returns the new holder's pid.
fn adopt(shim: &Path) -> Result<i32, String> {
    let output = Command::new(shim)
        .args(["ns-holder", "--adopt"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("start {} ns-holder --adopt: {e}", shim.display()))?;
    let said = String::from_utf8_lossy(&output.stdout);
    match said.trim_end().strip_prefix("holder ").and_then(|pid| pid.parse().ok()) {
        Some(pid) if output.status.success() => Ok(pid),
        _ => Err(format!(
            "tote-shim ns-holder --adopt failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// The holder named by `pid_file`, if that process still runs and is it.
fn live_holder(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let mut fields = text.split_whitespace();
    let pid: i32 = fields.next()?.parse().ok()?;
    let start: u64 = fields.next()?.parse().ok()?;
    (pid > 0 && tote_shim::state::is_alive(pid, start)).then_some(pid)
}

/// When the process started, in clock ticks after boot.
fn start_time(pid: i32) -> Option<u64> {
    tote_shim::state::proc_stat(pid).map(|s| s.start_time)
}

fn join(pid: i32) -> Result<(), String> {
    for (kind, flag) in [("user", CloneFlags::CLONE_NEWUSER), ("mnt", CloneFlags::CLONE_NEWNS)] {
        let path = format!("/proc/{pid}/ns/{kind}");
        let ns = std::fs::File::open(&path).map_err(|e| format!("open {path} (the namespace holder's): {e}"))?;
        nix::sched::setns(ns, flag).map_err(|e| format!("join the namespace holder's {kind} namespace {path}: {e}"))?;
    }
    Ok(())
}

/// Runs `tote-shim ns-holder`, writes its maps, and returns the holder's pid.
fn spawn_holder(shim: &Path, rootless: &Rootless) -> Result<i32, String> {
    let mut child = Command::new(shim)
        .arg("ns-holder")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {} ns-holder: {e}", shim.display()))?;
    let result = talk(&mut child, rootless);
    if result.is_err() {
        let _ = child.kill();
    }
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| format!("wait for tote-shim ns-holder: {e}"))?;
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    match result {
        Ok(pid) if status.success() => Ok(pid),
        Ok(_) => Err(format!("tote-shim ns-holder failed ({status}): {}", stderr.trim())),
        Err(problem) if stderr.trim().is_empty() => Err(problem),
        Err(problem) => Err(format!("{problem} ({})", stderr.trim())),
    }
}

fn talk(child: &mut Child, rootless: &Rootless) -> Result<i32, String> {
    let pid = i32::try_from(child.id()).map_err(|_| "tote-shim ns-holder: pid out of range".to_string())?;
    let mut stdin = child.stdin.take().ok_or("tote-shim ns-holder: no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("tote-shim ns-holder: no stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line).map_err(|e| format!("read from tote-shim ns-holder: {e}"))?;
    if line.trim_end() != "userns" {
        return Err(format!("tote-shim ns-holder did not make a user namespace (said {line:?})"));
    }
    if rootless.single_id {
        write_own_maps(pid, rootless)?;
    } else {
        new_id_map("newuidmap", pid, &rootless.uids, SUBUID)?;
        new_id_map("newgidmap", pid, &rootless.gids, SUBGID)?;
    }
    writeln!(stdin, "mapped").and_then(|()| stdin.flush()).map_err(|e| format!("write to tote-shim ns-holder: {e}"))?;
    line.clear();
    stdout.read_line(&mut line).map_err(|e| format!("read from tote-shim ns-holder: {e}"))?;
    line.trim_end()
        .strip_prefix("holder ")
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| format!("tote-shim ns-holder did not start the holder (said {line:?})"))
}

/// The setuid helper from Debian's uidmap, which checks the ranges against
/// /etc/subuid (or /etc/subgid) and writes the map.
fn new_id_map(program: &str, pid: i32, map: &[IdRange], file: &str) -> Result<(), String> {
    let mut args = vec![pid.to_string()];
    for range in map {
        args.extend([range.container.to_string(), range.host.to_string(), range.size.to_string()]);
    }
    let output = Command::new(program).args(&args).stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{program} not found: a rootless toted needs it to map {file}'s range (install Debian's uidmap \
                 package), or start toted with --single-id to map only your own id"
            )
        } else {
            format!("run {program}: {e}")
        }
    })?;
    if !output.status.success() {
        return Err(format!(
            "{program} {} failed ({}): {} (check the range in {file}, and that {program} is setuid root)",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// Single-id mode: the maps an unprivileged process may write itself.
fn write_own_maps(pid: i32, rootless: &Rootless) -> Result<(), String> {
    let write = |name: &str, text: String| {
        let path = PathBuf::from(format!("/proc/{pid}/{name}"));
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
    };
    // Required before an unprivileged gid_map: else the namespace's root
    // could drop supplementary groups that deny it access.
    write("setgroups", "deny".into())?;
    write("gid_map", format!("0 {} 1\n", rootless.gid))?;
    write("uid_map", format!("0 {} 1\n", rootless.uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_known_by_pid_and_start_time() {
        let dir = std::env::temp_dir().join(format!("tote-holder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(HOLDER_PID_FILE);
        let me = i32::try_from(std::process::id()).unwrap();
        let start = start_time(me).unwrap();
        std::fs::write(&file, format!("{me} {start}\n")).unwrap();
        assert_eq!(live_holder(&file), Some(me));
        std::fs::write(&file, format!("{me} {}\n", start + 1)).unwrap();
        assert_eq!(live_holder(&file), None, "a recycled pid");
        std::fs::write(&file, "garbage").unwrap();
        assert_eq!(live_holder(&file), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
