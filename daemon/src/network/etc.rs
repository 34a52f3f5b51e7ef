//! The files the daemon bind-mounts over a container's `/etc/hosts`,
//! `/etc/hostname` and `/etc/resolv.conf`.

use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{NetworkError, NetworkMode};

/// Used when none of the host's nameservers is reachable from a
/// container's own network namespace (docker does the same).
const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// Where systemd-resolved keeps the real upstream servers when
/// /etc/resolv.conf points at its 127.0.0.53 stub.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

/// Writes `hosts`, `resolv.conf` and `hostname` into `dir` (created if
/// needed) for a container named `hostname` at address `ip`, its DNS
/// servers taken from the host's /etc/resolv.conf.
pub fn write_etc_files(
    dir: &Path,
    hostname: &str,
    mode: NetworkMode,
    ip: Option<IpAddr>,
) -> Result<EtcFiles, NetworkError> {
    write_etc_files_from(dir, hostname, mode, ip, Path::new("/etc/resolv.conf"))
}

/// As [`write_etc_files`], with the host's resolv.conf read from `host_resolv_conf`.
pub fn write_etc_files_from(
    dir: &Path,
    hostname: &str,
    mode: NetworkMode,
    ip: Option<IpAddr>,
    host_resolv_conf: &Path,
) -> Result<EtcFiles, NetworkError> {
    if !is_hostname(hostname) {
        return Err(NetworkError::BadHostname(hostname.to_string()));
    }
    std::fs::create_dir_all(dir).map_err(NetworkError::io("create", dir))?;
    let files =
        EtcFiles { hosts: dir.join("hosts"), resolv_conf: dir.join("resolv.conf"), hostname: dir.join("hostname") };
    write_file(&files.hostname, &format!("{hostname}\n"))?;
    write_file(&files.hosts, &hosts(hostname, ip))?;
    write_file(&files.resolv_conf, &resolv_conf(mode, &host_resolv(mode, host_resolv_conf)?))?;
    Ok(files)
}

/// Replaces `path` with a resolv.conf of the given servers, search domains
/// and options (a pod's DNS configuration, which replaces the host's).
pub fn write_resolv_conf(
    path: &Path,
    servers: &[String],
    searches: &[String],
    options: &[String],
) -> Result<(), NetworkError> {
    let mut text = String::new();
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    if text.contains(['\0'])
        || [servers, searches, options].iter().any(|l| l.iter().any(|w| w.contains(char::is_whitespace)))
    {
        return Err(NetworkError::BadDns(format!("{servers:?} {searches:?} {options:?}")));
    }
    write_file(path, &text)
}

/// RFC 1123 labels: letters, digits and inner '-', joined by '.'.
fn is_hostname(name: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

fn hosts(hostname: &str, ip: Option<IpAddr>) -> String {
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

/// The host's resolv.conf (empty if it has none). For a container with its
/// own namespace, behind a systemd-resolved stub, the stub's upstream file.
fn host_resolv(mode: NetworkMode, path: &Path) -> Result<String, NetworkError> {
    let host = read_optional(path)?;
    if mode.has_own_netns() && nameservers(&host).all(|ip| ip.is_loopback()) && nameservers(&host).next().is_some() {
        let upstream = read_optional(Path::new(RESOLVED_UPSTREAM))?;
        if nameservers(&upstream).any(|ip| !ip.is_loopback()) {
            return Ok(upstream);
        }
    }
    Ok(host)
}

fn read_optional(path: &Path) -> Result<String, NetworkError> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        read => read.map_err(NetworkError::io("read", path)),
    }
}

/// The container's resolv.conf from the host's: as is for `host` mode;
/// otherwise without loopback nameservers, which would be the container's
/// own loopback, falling back to public servers if none is left.
pub fn resolv_conf(mode: NetworkMode, host: &str) -> String {
    if !mode.has_own_netns() {
        return host.to_string();
    }
    let mut lines: Vec<String> =
        host.lines().filter(|line| nameserver(line).is_none_or(|ip| !ip.is_loopback())).map(str::to_string).collect();
    if !lines.iter().any(|line| nameserver(line).is_some()) {
        lines.extend(FALLBACK_NAMESERVERS.iter().map(|ip| format!("nameserver {ip}")));
    }
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// The address of a `nameserver` line.
fn nameserver(line: &str) -> Option<IpAddr> {
    let mut words = line.split_whitespace();
    if words.next() != Some("nameserver") {
        return None;
    }
    // A zone (fe80::1%eth0) is not part of the address.
    words.next()?.split('%').next()?.parse().ok()
}

fn nameservers(conf: &str) -> impl Iterator<Item = IpAddr> + '_ {
    conf.lines().filter_map(nameserver)
}

/// Replaces `path` atomically, so a container never sees half a file.
/// Rewrites a container's hosts file in place, keeping its inode: the
/// container already has it bind-mounted.
pub fn rewrite_hosts(path: &Path, hostname: &str, ip: Option<IpAddr>) -> Result<(), NetworkError> {
    if !is_hostname(hostname) {
        return Err(NetworkError::BadHostname(hostname.to_string()));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(hosts(hostname, ip).as_bytes()))
        .map_err(NetworkError::io("write", path))
}

/// Writes a whole file under a temporary name, then renames it over. Not
/// fsynced: the files are written again at every start.
fn write_file(path: &Path, contents: &str) -> Result<(), NetworkError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(NetworkError::io("write", &tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(NetworkError::io("rename", &tmp)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_rewritten_in_place_for_the_bind_mount() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("tote-etc-inplace-{}", std::process::id()));
        let files = write_etc_files(&dir, "web", NetworkMode::Bridge, None).unwrap();
        let inode = std::fs::metadata(&files.hosts).unwrap().ino();
        rewrite_hosts(&files.hosts, "web", Some("10.88.0.7".parse().unwrap())).unwrap();
        assert_eq!(std::fs::metadata(&files.hosts).unwrap().ino(), inode);
        assert!(std::fs::read_to_string(&files.hosts).unwrap().contains("10.88.0.7\tweb"));
        assert!(rewrite_hosts(&files.hosts, "bad\nname", None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bridge_mode_drops_loopback_nameservers() {
        let host = "# from the host\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch example.com\noptions edns0\n";
        assert_eq!(
            resolv_conf(NetworkMode::Bridge, host),
            "# from the host\nnameserver 10.0.0.2\nsearch example.com\noptions edns0\n"
        );
    }

    #[test]
    fn with_no_nameserver_left_it_uses_public_ones() {
        let host = "nameserver 127.0.0.1\nsearch lan\n";
        assert_eq!(resolv_conf(NetworkMode::Bridge, host), "search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        assert_eq!(resolv_conf(NetworkMode::None, ""), "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }

    #[test]
    fn host_mode_copies_as_is() {
        let host = "nameserver 127.0.0.53\noptions trust-ad\n";
        assert_eq!(resolv_conf(NetworkMode::Host, host), host);
    }

    #[test]
    fn ipv6_and_zoned_nameservers_are_kept() {
        let host = "nameserver fe80::1%eth0\nnameserver 2001:db8::53\n";
        assert_eq!(resolv_conf(NetworkMode::Bridge, host), host);
    }

    #[test]
    fn writes_the_three_files() {
        let dir = std::env::temp_dir().join(format!("tote-etc-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let host_resolv = dir.join("host-resolv.conf");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&host_resolv, "nameserver 192.0.2.53\nnameserver 127.0.0.1\n").unwrap();

        let files = write_etc_files_from(
            &dir.join("etc"),
            "web-1",
            NetworkMode::Bridge,
            Some("10.88.0.5".parse().unwrap()),
            &host_resolv,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&files.hostname).unwrap(), "web-1\n");
        let hosts = std::fs::read_to_string(&files.hosts).unwrap();
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost"), "{hosts}");
        assert!(hosts.ends_with("\n10.88.0.5\tweb-1\n"), "{hosts}");
        assert_eq!(std::fs::read_to_string(&files.resolv_conf).unwrap(), "nameserver 192.0.2.53\n");
        assert_eq!(std::fs::read_dir(dir.join("etc")).unwrap().count(), 3, "no temporary files are left");

        let files = write_etc_files_from(&dir.join("etc"), "web-1", NetworkMode::Host, None, &host_resolv).unwrap();
        assert!(!std::fs::read_to_string(&files.hosts).unwrap().contains("web-1"));
        assert_eq!(
            std::fs::read_to_string(&files.resolv_conf).unwrap(),
            "nameserver 192.0.2.53\nnameserver 127.0.0.1\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_host_resolv_conf_gives_the_fallback() {
        let dir = std::env::temp_dir().join(format!("tote-etc-unit-missing-{}", std::process::id()));
        let files = write_etc_files_from(&dir, "c", NetworkMode::Bridge, None, &dir.join("does-not-exist")).unwrap();
        assert_eq!(std::fs::read_to_string(files.resolv_conf).unwrap(), "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_hostname_that_would_break_the_files_is_refused() {
        let dir = std::env::temp_dir().join("tote-etc-unit-never-created");
        for name in ["", "a b", "evil\n1.2.3.4 bank", "-x", "a..b"] {
            let err = write_etc_files(&dir, name, NetworkMode::Bridge, None).unwrap_err();
            assert!(matches!(err, NetworkError::BadHostname(_)), "{name:?}: {err}");
        }
        assert!(!dir.exists());
    }
}
