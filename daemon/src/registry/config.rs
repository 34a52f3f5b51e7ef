//! Which endpoints serve a registry, over which protocol, with which
//! credentials.
//!
//! ```toml
//! # Credentials docker-style: {"auths": {"host": {"auth": base64("user:pass")}}}
//! auth_file = "/root/.docker/config.json"
//!
//! [registries."docker.io"]
//! mirrors = ["http://127.0.0.1:5000", "https://mirror.example.com"]
//!
//! [registries."registry.internal:5000"]
//! insecure = true          # plain HTTP
//! username = "tote"
//! password = "secret"
//! ```
//!
//! Mirrors are tried in order before the registry itself (this is also how
//! a P2P distributor such as Dragonfly plugs in). Plain HTTP is used for
//! `localhost`, `127.0.0.0/8`, `::1`, registries marked `insecure`, and
//! mirrors written with `http://`; everything else is HTTPS.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A docker-style credentials file.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// Per-registry settings, keyed by the registry as references name it
    /// (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryHost>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    #[serde(default)]
    pub mirrors: Vec<String>,
    #[serde(default)]
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One place to fetch a registry's content from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// host[:port], as the HTTP client addresses it.
    pub host: String,
    pub plain_http: bool,
    /// A mirror rather than the registry itself.
    pub mirror: bool,
}

/// Credentials for one request, overriding the configured ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// What one request (a kubelet's pull, `tote pull`'s credentials) brings
/// to authenticate with the registry itself, overriding the configured
/// credentials. Mirrors keep their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAuth {
    /// HTTP basic, or the password exchanged for a token where the
    /// registry answers with a bearer challenge.
    Basic(Credentials),
    /// A registry token, sent as `Authorization: Bearer` as it is, with no
    /// exchange at the registry's token service.
    Bearer(String),
}

impl RegistryConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Self =
            toml::from_str(&text).map_err(|source| ConfigError::Toml { path: path.to_path_buf(), source })?;
        config.validate().map_err(|problem| ConfigError::Invalid { path: path.to_path_buf(), problem })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        for (registry, host) in &self.registries {
            for mirror in &host.mirrors {
                parse_endpoint(mirror).map_err(|e| format!("registries.{registry:?}.mirrors: {e}"))?;
            }
            if host.username.is_some() != host.password.is_some() {
                return Err(format!("registries.{registry:?}: username and password go together"));
            }
        }
        Ok(())
    }

    /// The endpoints to try for `registry`, mirrors first.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let host = self.registries.get(registry);
        let mut endpoints: Vec<Endpoint> =
            host.into_iter().flat_map(|h| h.mirrors.iter()).filter_map(|m| parse_endpoint(m).ok()).collect();
        let upstream = if registry == "docker.io" { "index.docker.io" } else { registry };
        let insecure = host.is_some_and(|h| h.insecure) || is_local(registry);
        endpoints.push(Endpoint { host: upstream.to_string(), plain_http: insecure, mirror: false });
        endpoints
    }

    /// Configured credentials for `registry`: its own entry, then the
    /// docker-style auth file.
    pub fn credentials(&self, registry: &str) -> Option<Credentials> {
        if let Some(RegistryHost { username: Some(username), password: Some(password), .. }) =
            self.registries.get(registry)
        {
            return Some(Credentials { username: username.clone(), password: password.clone() });
        }
        let file = std::fs::read(self.auth_file.as_ref()?).ok()?;
        credentials_from_docker_config(&file, registry)
    }
}

/// `http://host:port`, `https://host`, or a bare `host[:port]` (HTTPS unless local).
fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let (plain_http, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("https://") {
        (false, rest)
    } else {
        (is_local(text), text)
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!("{text:?} is not a scheme://host[:port] endpoint"));
    }
    Ok(Endpoint { host: host.to_string(), plain_http, mirror: true })
}

/// localhost and loopback addresses, which docker also reaches over plain HTTP.
pub fn is_local(host_port: &str) -> bool {
    let host = match host_port.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host_port
            .rsplit_once(':')
            .map_or(host_port, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host_port }),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Looks `registry` up in a docker `config.json` (`auths.<host>.auth` is
/// base64 of `user:password`; docker.io is also stored under its old URL).
fn credentials_from_docker_config(bytes: &[u8], registry: &str) -> Option<Credentials> {
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: BTreeMap<String, DockerAuth>,
    }
    #[derive(Deserialize)]
    struct DockerAuth {
        auth: Option<String>,
    }
    let config: DockerConfig = serde_json::from_slice(bytes).ok()?;
    let keys: &[&str] = if registry == "docker.io" {
        &["docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    let entry = keys.iter().find_map(|k| {
        config
            .auths
            .get(*k)
            .or_else(|| config.auths.get(&format!("https://{k}")))
            .or_else(|| config.auths.get(&format!("http://{k}")))
    })?;
    use base64::Engine as _;
    let auth = entry.auth.as_deref()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth))
        .ok()?;
    let (username, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(Credentials { username: username.to_string(), password: password.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_before_the_registry() {
        let config: RegistryConfig = toml::from_str(
            r#"
            [registries."docker.io"]
            mirrors = ["http://127.0.0.1:5000", "mirror.example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(
            config.endpoints("docker.io"),
            vec![
                Endpoint { host: "127.0.0.1:5000".into(), plain_http: true, mirror: true },
                Endpoint { host: "mirror.example.com".into(), plain_http: false, mirror: true },
                Endpoint { host: "index.docker.io".into(), plain_http: false, mirror: false },
            ]
        );
    }

    #[test]
    fn loopback_and_insecure_registries_use_plain_http() {
        let config: RegistryConfig = toml::from_str("[registries.\"reg.internal:5000\"]\ninsecure = true").unwrap();
        for (registry, plain) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("127.9.9.9", true),
            ("reg.internal:5000", true),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(config.endpoints(registry).last().unwrap().plain_http, plain, "{registry}");
        }
    }

    #[test]
    fn credentials_come_from_the_config_or_a_docker_auth_file() {
        let dir = std::env::temp_dir().join(format!("tote-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let auth_file = dir.join("config.json");
        // base64("alice:s3cret:with:colons")
        std::fs::write(
            &auth_file,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"}}}"#,
        )
        .unwrap();
        let config = RegistryConfig {
            auth_file: Some(auth_file),
            registries: [(
                "r.example".to_string(),
                RegistryHost { username: Some("bob".into()), password: Some("pw".into()), ..Default::default() },
            )]
            .into(),
        };
        assert_eq!(
            config.credentials("r.example"),
            Some(Credentials { username: "bob".into(), password: "pw".into() })
        );
        assert_eq!(
            config.credentials("docker.io"),
            Some(Credentials { username: "alice".into(), password: "s3cret:with:colons".into() })
        );
        assert_eq!(config.credentials("ghcr.io"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_config_names_the_problem() {
        let dir = std::env::temp_dir().join(format!("tote-regconf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registries.toml");
        std::fs::write(&path, "[registries.\"x\"]\nmirrors = [\"http://a b\"]").unwrap();
        assert!(RegistryConfig::load(&path).unwrap_err().to_string().contains("mirrors"));
        std::fs::write(&path, "[registries.\"x\"]\nmirror = []").unwrap();
        assert!(RegistryConfig::load(&path).unwrap_err().to_string().contains("mirror"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
