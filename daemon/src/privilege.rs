//! toted's privilege model, decided once when it starts: real root, or an
//! ordinary user (rootless) who is root only inside a user namespace that
//! maps them to 0 and their subordinate ids from /etc/subuid and
//! /etc/subgid to 1 and up. The rest of toted asks [`Privilege`] (carried
//! in [`crate::config::Config`]) instead of looking at its own uid, which
//! inside that namespace is 0 either way.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const SUBUID: &str = "/etc/subuid";
pub const SUBGID: &str = "/etc/subgid";

/// One line of a user namespace's uid or gid map: `size` ids from
/// `container` inside are `host` and up outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{} -> {}-{}",
            self.container,
            self.container + (self.size - 1),
            self.host,
            self.host + (self.size - 1)
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Privilege {
    /// Real root: cgroups, bridges, any id.
    #[default]
    Root,
    Rootless(Rootless),
}

/// An ordinary user's toted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootless {
    /// The user, as the host sees them.
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    /// The user namespace's maps: 0 is the user, then the subordinate
    /// ranges (only 0 in single-id mode).
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// Only the user's own ids are mapped (asked for with `--single-id` or
    /// `rootless_single_id`): image files of other owners are unpacked as
    /// the user's, and containers can switch to no other user.
    pub single_id: bool,
    /// Containers' cgroups: under a delegated cgroup v2 subtree, or none
    /// (and why). Found by toted when it starts ([`crate::delegation`]).
    pub cgroups: crate::delegation::Delegation,
    /// What mounts containers' roots: the kernel's overlayfs, or
    /// fuse-overlayfs where it cannot. Found by toted when it starts, after
    /// joining its namespaces ([`crate::fuse_overlay::choose`]).
    pub overlay: crate::snapshots::OverlayDriver,
}

impl Rootless {
    /// A user's model before toted has looked at its cgroup and its
    /// overlay (`prepare` in toted's main fills those in).
    pub fn new(uid: u32, gid: u32, user: Option<String>, maps: (Vec<IdRange>, Vec<IdRange>), single_id: bool) -> Self {
        let cgroups = crate::delegation::Delegation::Unavailable("toted has not looked for a delegated cgroup".into());
        let (uids, gids) = maps;
        Self { uid, gid, user, uids, gids, single_id, cgroups, overlay: crate::snapshots::OverlayDriver::Kernel }
    }
}

impl Privilege {
    pub fn is_rootless(&self) -> bool {
        matches!(self, Privilege::Rootless(_))
    }

    /// The rootless model, for the user running toted: their subordinate
    /// ranges read from /etc/subuid and /etc/subgid, unless `single_id`.
    pub fn rootless(single_id: bool) -> Result<Self, String> {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name);
        let (uids, gids) = if single_id {
            (vec![IdRange { container: 0, host: uid, size: 1 }], vec![IdRange { container: 0, host: gid, size: 1 }])
        } else {
            let subuids = subordinate_ids(Path::new(SUBUID), user.as_deref(), uid)?;
            let subgids = subordinate_ids(Path::new(SUBGID), user.as_deref(), uid)?;
            (id_map(uid, &subuids), id_map(gid, &subgids))
        };
        Ok(Privilege::Rootless(Rootless::new(uid, gid, user, (uids, gids), single_id)))
    }

    /// What mounts containers' roots (real root: always the kernel).
    pub fn overlay(&self) -> crate::snapshots::OverlayDriver {
        match self {
            Privilege::Root => crate::snapshots::OverlayDriver::Kernel,
            Privilege::Rootless(r) => r.overlay.clone(),
        }
    }

    /// One line for logs: `root`, or the maps.
    pub fn describe(&self) -> String {
        match self {
            Privilege::Root => "root".into(),
            Privilege::Rootless(r) => {
                let list = |ranges: &[IdRange]| ranges.iter().map(IdRange::to_string).collect::<Vec<_>>().join(", ");
                let mode = if r.single_id { " (single id)" } else { "" };
                format!("rootless{mode}: uids {}; gids {}", list(&r.uids), list(&r.gids))
            }
        }
    }
}

/// A subordinate range from /etc/subuid or /etc/subgid: `count` ids from
/// `start` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// The user's ranges in `path` (lines `user:start:count`, the user by
/// name or uid), in file order; none is an error that names the file.
pub fn subordinate_ids(path: &Path, user: Option<&str>, uid: u32) -> Result<Vec<SubRange>, String> {
    let who = match user {
        Some(name) => format!("user {name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    let hint = format!(
        "add a range for it (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}`), \
         or start toted with --single-id to map only your own uid and gid",
        user.map_or_else(|| uid.to_string(), str::to_string)
    );
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no subordinate id range for {who}: {} does not exist; {hint}", path.display()));
        }
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    let ranges = parse_subordinate_ids(&text, user, uid);
    if ranges.is_empty() {
        return Err(format!("no subordinate id range for {who} in {}; {hint}", path.display()));
    }
    Ok(ranges)
}

fn parse_subordinate_ids(text: &str, user: Option<&str>, uid: u32) -> Vec<SubRange> {
    let uid_text = uid.to_string();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            let mine = owner == uid_text || Some(owner) == user;
            let range = SubRange { start: start.trim().parse().ok()?, count: count.trim().parse().ok()? };
            (mine && range.count > 0).then_some(range)
        })
        .collect()
}

/// The map: 0 is `own`, then each range in turn from 1 on.
pub fn id_map(own: u32, ranges: &[SubRange]) -> Vec<IdRange> {
    let mut map = vec![IdRange { container: 0, host: own, size: 1 }];
    let mut next: u32 = 1;
    for range in ranges {
        let size = range.count.min(u32::MAX - next);
        if size == 0 {
            break;
        }
        map.push(IdRange { container: next, host: range.start, size });
        next += size;
    }
    map
}

/// A uid_map or gid_map as /proc shows it.
pub fn parse_proc_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(str::parse::<u32>);
            Some(IdRange { container: fields.next()?.ok()?, host: fields.next()?.ok()?, size: fields.next()?.ok()? })
        })
        .collect()
}

/// Where a rootless toted keeps things, after the XDG base directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootlessDirs {
    /// `$XDG_DATA_HOME/tote`: images, containers, volumes.
    pub data: PathBuf,
    /// `$XDG_RUNTIME_DIR/tote`: sockets, monitors, the lock, the holder;
    /// or why there is none (it matters only where no other is given).
    pub state: Result<PathBuf, String>,
    /// `$XDG_CONFIG_HOME/tote/toted.toml`.
    pub config: PathBuf,
}

impl RootlessDirs {
    pub fn from_env() -> Result<Self, String> {
        let uid = nix::unistd::geteuid().as_raw();
        Self::from_vars(uid, |name| std::env::var_os(name).map(PathBuf::from), |path| path.is_dir())
    }

    fn from_vars(
        uid: u32,
        var: impl Fn(&str) -> Option<PathBuf>,
        is_dir: impl Fn(&Path) -> bool,
    ) -> Result<Self, String> {
        // The spec says relative values are to be ignored.
        let absolute = |name: &str| var(name).filter(|p| p.is_absolute());
        let home = || {
            absolute("HOME")
                .or_else(|| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.dir))
                .ok_or_else(|| "rootless toted: neither HOME nor the user's home directory is known".to_string())
        };
        let data = match absolute("XDG_DATA_HOME") {
            Some(dir) => dir,
            None => home()?.join(".local/share"),
        };
        let config = match absolute("XDG_CONFIG_HOME") {
            Some(dir) => dir,
            None => home()?.join(".config"),
        };
        let state = match absolute("XDG_RUNTIME_DIR") {
            Some(dir) => Ok(dir.join("tote")),
            None => {
                let fallback = PathBuf::from(format!("/run/user/{uid}"));
                if is_dir(&fallback) {
                    Ok(fallback.join("tote"))
                } else {
                    Err(format!(
                        "rootless toted: XDG_RUNTIME_DIR is not set and {} does not exist; log in through a \
                         session that sets it (systemd-logind does), set it to a directory only you can write, \
                         or pass --state-dir and --listen",
                        fallback.display()
                    ))
                }
            }
        };
        Ok(Self { data: data.join("tote"), state, config: config.join("tote/toted.toml") })
    }

    /// `unix://<state>/tote.sock`.
    pub fn listen(&self) -> Result<String, String> {
        self.state.as_ref().map(|state| format!("unix://{}", state.join("tote.sock").display())).map_err(Clone::clone)
    }
}

/// An exclusive lock on a state dir, held for as long as toted runs, so that
/// a second toted on the same directories stops before touching anything.
/// The descriptor is close-on-exec: monitors and shims do not inherit it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    pub path: PathBuf,
}

impl StateLock {
    pub fn take(state_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(state_dir).map_err(|e| format!("create {}: {e}", state_dir.display()))?;
        let path = state_dir.join("toted.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        // SAFETY: flock takes a descriptor this function owns and no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let pid = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                return Err(format!(
                    "another toted{pid} is using the state dir {}: it holds {}",
                    state_dir.display(),
                    path.display()
                ));
            }
            return Err(format!("lock {}: {err}", path.display()));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Self { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_uid_in_file_order() {
        let text = "# comment\nalice:100000:65536\nbob:165536:65536\n1001:300000:1000\nalice:500000:10\nalice:1:0\n";
        let alice = parse_subordinate_ids(text, Some("alice"), 1000);
        assert_eq!(alice, [SubRange { start: 100_000, count: 65536 }, SubRange { start: 500_000, count: 10 }]);
        assert_eq!(parse_subordinate_ids(text, Some("carol"), 1001), [SubRange { start: 300_000, count: 1000 }]);
        assert!(parse_subordinate_ids(text, None, 7).is_empty());
        assert!(parse_subordinate_ids("alice:x:1\nalice:1\n", Some("alice"), 7).is_empty());
    }

    #[test]
    fn maps_put_the_user_at_zero_and_ranges_after() {
        let map = id_map(1000, &[SubRange { start: 100_000, count: 65536 }, SubRange { start: 500_000, count: 10 }]);
        assert_eq!(
            map,
            [
                IdRange { container: 0, host: 1000, size: 1 },
                IdRange { container: 1, host: 100_000, size: 65536 },
                IdRange { container: 65537, host: 500_000, size: 10 },
            ]
        );
        assert_eq!(map[1].to_string(), "1-65536 -> 100000-165535");
        assert_eq!(parse_proc_map("         0       1000          1\n         1     100000      65536\n"), map[..2]);
    }

    #[test]
    fn a_missing_range_names_the_file() {
        let dir = std::env::temp_dir().join(format!("tote-subid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("subuid");
        std::fs::write(&path, "someone:100000:65536\n").unwrap();
        let err = subordinate_ids(&path, Some("alice"), 1000).unwrap_err();
        assert!(err.contains(&path.display().to_string()) && err.contains("alice") && err.contains("--single-id"));
        let err = subordinate_ids(&dir.join("none"), Some("alice"), 1000).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn xdg_directories_and_their_defaults() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| PathBuf::from(v))
        };
        let dirs = RootlessDirs::from_vars(
            1000,
            vars(&[
                ("HOME", "/home/a"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("XDG_DATA_HOME", "/d"),
                ("XDG_CONFIG_HOME", "relative"),
            ]),
            |_| false,
        )
        .unwrap();
        assert_eq!(dirs.data, PathBuf::from("/d/tote"));
        assert_eq!(dirs.state, Ok(PathBuf::from("/run/user/1000/tote")));
        assert_eq!(dirs.config, PathBuf::from("/home/a/.config/tote/toted.toml"));
        assert_eq!(dirs.listen().unwrap(), "unix:///run/user/1000/tote/tote.sock");

        let fallback =
            RootlessDirs::from_vars(1000, vars(&[("HOME", "/home/a")]), |p| p == Path::new("/run/user/1000"));
        assert_eq!(fallback.unwrap().state, Ok(PathBuf::from("/run/user/1000/tote")));
        let none = RootlessDirs::from_vars(1000, vars(&[("HOME", "/home/a")]), |_| false).unwrap();
        assert_eq!(none.data, PathBuf::from("/home/a/.local/share/tote"));
        let err = none.listen().unwrap_err();
        assert!(err.contains("XDG_RUNTIME_DIR") && err.contains("/run/user/1000"), "{err}");
    }

    #[test]
    fn a_second_lock_on_a_state_dir_is_refused_with_the_holder() {
        let dir = std::env::temp_dir().join(format!("tote-lock-{}", std::process::id()));
        let first = StateLock::take(&dir).unwrap();
        let err = StateLock::take(&dir).unwrap_err();
        assert!(err.contains("another toted") && err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        drop(StateLock::take(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
