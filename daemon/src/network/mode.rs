//! How a container is networked, as `tote run --network` names it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NetworkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace on the daemon's bridge (docker's default).
    #[default]
    Bridge,
    /// The host's network namespace.
    Host,
    /// Its own network namespace with only `lo`.
    None,
}

impl NetworkMode {
    /// Whether the container gets a network namespace of its own.
    pub fn has_own_netns(self) -> bool {
        !matches!(self, NetworkMode::Host)
    }
}

impl FromStr for NetworkMode {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            other => Err(NetworkError::UnknownMode(other.to_string())),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_docker_names() {
        assert_eq!("bridge".parse::<NetworkMode>().unwrap(), NetworkMode::Bridge);
        assert_eq!("default".parse::<NetworkMode>().unwrap(), NetworkMode::Bridge);
        assert_eq!("host".parse::<NetworkMode>().unwrap(), NetworkMode::Host);
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
    }

    #[test]
    fn an_unknown_mode_says_what_is_accepted() {
        let err = "overlay".parse::<NetworkMode>().unwrap_err();
        assert_eq!(err.to_string(), "unknown network mode \"overlay\": use bridge, host or none");
    }

    #[test]
    fn serializes_lowercase_and_round_trips() {
        assert_eq!(serde_json::to_string(&NetworkMode::Host).unwrap(), "\"host\"");
        for mode in [NetworkMode::Bridge, NetworkMode::Host, NetworkMode::None] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(serde_json::from_str::<NetworkMode>(&json).unwrap(), mode);
            assert_eq!(mode.to_string().parse::<NetworkMode>().unwrap(), mode);
        }
    }
}
