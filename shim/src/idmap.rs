//! uid/gid mappings of a new user namespace, written by the parent once the
//! child has created the namespace.
//!
//! Root writes /proc/<pid>/{uid,gid}_map directly. An unprivileged user may
//! map only itself that way; wider mappings (its subordinate ids) go through
//! the setuid helpers newuidmap/newgidmap from the `uidmap` package.

use std::path::PathBuf;
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::LinuxIdMapping;

#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {helper} (from the uidmap package): {source}")]
    Spawn {
        helper: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{helper} {args} failed ({status}): {stderr}")]
    Helper { helper: &'static str, args: String, status: std::process::ExitStatus, stderr: String },
}

/// The kernel's map file format: one "inside outside count" line per range.
pub fn map_text(mappings: &[LinuxIdMapping]) -> String {
    mappings.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
}

/// Whether an unprivileged caller can write `mappings` itself: only a single
/// range of size one mapping onto its own id.
fn maps_only_self(mappings: &[LinuxIdMapping], own_id: u32) -> bool {
    matches!(mappings, [m] if m.size() == 1 && m.host_id() == own_id)
}

fn write_proc(pid: Pid, file: &str, text: &str) -> Result<(), IdMapError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    std::fs::write(&path, text).map_err(|source| IdMapError::Write { path, source })
}

fn run_helper(helper: &'static str, pid: Pid, mappings: &[LinuxIdMapping]) -> Result<(), IdMapError> {
    let mut args = vec![pid.to_string()];
    for m in mappings {
        args.extend([m.container_id().to_string(), m.host_id().to_string(), m.size().to_string()]);
    }
    let out = Command::new(helper).args(&args).output().map_err(|source| IdMapError::Spawn { helper, source })?;
    if !out.status.success() {
        return Err(IdMapError::Helper {
            helper,
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Writes the uid and gid maps of `pid`'s user namespace.
pub fn write_mappings(pid: Pid, uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<(), IdMapError> {
    if Uid::effective().is_root() {
        write_proc(pid, "uid_map", &map_text(uids))?;
        return write_proc(pid, "gid_map", &map_text(gids));
    }
    if maps_only_self(uids, Uid::effective().as_raw()) {
        write_proc(pid, "uid_map", &map_text(uids))?;
    } else {
        run_helper("newuidmap", pid, uids)?;
    }
    if maps_only_self(gids, Gid::effective().as_raw()) {
        // Without CAP_SETGID in the parent namespace the kernel accepts a
        // gid map only once setgroups(2) is denied in the child namespace.
        write_proc(pid, "setgroups", "deny")?;
        write_proc(pid, "gid_map", &map_text(gids))
    } else {
        run_helper("newgidmap", pid, gids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxIdMappingBuilder;

    fn m(inside: u32, outside: u32, size: u32) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default().container_id(inside).host_id(outside).size(size).build().unwrap()
    }

    #[test]
    fn maps_are_written_one_range_per_line() {
        assert_eq!(map_text(&[m(0, 100000, 65536), m(65536, 1000, 1)]), "0 100000 65536\n65536 1000 1\n");
    }

    #[test]
    fn only_a_single_self_mapping_can_be_written_unprivileged() {
        assert!(maps_only_self(&[m(0, 1000, 1)], 1000));
        assert!(!maps_only_self(&[m(0, 1000, 2)], 1000));
        assert!(!maps_only_self(&[m(0, 1000, 1), m(1, 100000, 10)], 1000));
        assert!(!maps_only_self(&[m(0, 1001, 1)], 1000));
    }
}
