//! Container networking. A container in `bridge` mode gets its own network
//! namespace (`netns`), attached by the daemon itself running the standard
//! CNI plugins (`cni`): `bridge` with `host-local` addresses, `portmap` for
//! published ports (`ports`); `lo` is brought up where the namespace is
//! made; a rootless toted, which may not touch bridges or iptables, has a
//! user-mode helper (slirp4netns or pasta, `usernet`) connect that
//! namespace instead, and attaches it to a bridge in a namespace of its own
//! for container-to-container traffic (`userbridge`). `host` mode shares the host's namespace; `none`
//! leaves the container with only `lo`. `etc` writes the hosts, hostname
//! and resolv.conf files the container gets.

pub mod cni;
pub mod error;
pub mod etc;
pub mod mode;
pub mod netns;
pub mod ports;
pub mod userbridge;
pub mod usernet;

mod cache;
mod masq;
mod plugin;

pub use cni::{Attachment, Cni, CniConfig};
pub use error::NetworkError;
pub use etc::{EtcFiles, write_etc_files};
pub use mode::NetworkMode;
pub use plugin::{ExecError, HostExec, PluginExec};
pub use ports::{PortMapping, PortReservation, Protocol, check_ports_free, parse_publish, reserve_ports};
