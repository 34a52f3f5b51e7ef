//! Published ports: docker's `-p` syntax, free host ports, and docker's
//! `port` output.
//!
//! Accepted forms (each with an optional `/tcp` or `/udp` suffix):
//! `80`, `8080:80`, `127.0.0.1:8080:80`, `127.0.0.1::80`, `[::1]:8080:80`,
//! and ranges of equal length, `8000-8002:80-82`. A host port of 0, or none,
//! means "any free port": [`reserve_ports`] picks them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::NetworkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One published port: traffic to `host_ip:host_port` goes to the
/// container's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Only this host address; every host address when `None`.
    pub host_ip: Option<IpAddr>,
    /// 0 until a free port is allocated.
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    /// Docker's `port` format: `80/tcp -> 127.0.0.1:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let host = SocketAddr::new(ip, self.host_port);
        write!(f, "{}/{} -> {host}", self.container_port, self.protocol)
    }
}

/// Parses one `-p` argument into the mappings it names (several for a range).
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, NetworkError> {
    parse(spec).map_err(|reason| NetworkError::BadPortSpec { spec: spec.to_string(), reason })
}

fn parse(spec: &str) -> Result<Vec<PortMapping>, String> {
    let (ports, protocol) = split_protocol(spec)?;
    let (host_ip, host, container) = split_addr_ports(ports)?;
    let host_ip = host_ip.map(parse_host_ip).transpose()?;
    let container = parse_range(container, "container")?;
    let host = match host {
        None | Some("") | Some("0") => None,
        Some(host) => Some(parse_range(host, "host")?),
    };
    let host_ports: Vec<u16> = match host {
        None => vec![0; container.clone().count()],
        Some(host) if host.clone().count() == container.clone().count() => host.collect(),
        Some(host) => {
            return Err(format!(
                "host ports {} and container ports {} are ranges of different lengths",
                show_range(&host),
                show_range(&container)
            ));
        }
    };
    Ok(host_ports
        .into_iter()
        .zip(container)
        .map(|(host_port, container_port)| PortMapping { host_ip, host_port, container_port, protocol })
        .collect())
}

fn split_protocol(spec: &str) -> Result<(&str, Protocol), String> {
    match spec.rsplit_once('/') {
        None => Ok((spec, Protocol::Tcp)),
        Some((ports, "tcp")) => Ok((ports, Protocol::Tcp)),
        Some((ports, "udp")) => Ok((ports, Protocol::Udp)),
        Some((_, other)) => Err(format!("protocol {other:?} is not supported: use tcp or udp")),
    }
}

/// Splits `[ip:][host:]container` into its parts; an IPv6 address must
/// be in brackets, as in a URL.
fn split_addr_ports(ports: &str) -> Result<(Option<&str>, Option<&str>, &str), String> {
    if let Some(bracketed) = ports.strip_prefix('[') {
        let (ip, rest) = bracketed.split_once(']').ok_or("'[' without a closing ']'")?;
        let (host, container) = rest
            .strip_prefix(':')
            .and_then(|rest| rest.split_once(':'))
            .ok_or("a bracketed address needs a host and a container port: [::1]:8080:80")?;
        return Ok((Some(ip), Some(host), container));
    }
    let parts: Vec<&str> = ports.split(':').collect();
    match parts[..] {
        [container] => Ok((None, None, container)),
        [host, container] => Ok((None, Some(host), container)),
        [ip, host, container] => Ok((Some(ip), Some(host), container)),
        _ => Err("too many ':' (write an IPv6 host address in brackets: [::1]:8080:80)".to_string()),
    }
}

fn parse_host_ip(ip: &str) -> Result<IpAddr, String> {
    ip.parse().map_err(|_| format!("host address {ip:?} is not an IP address"))
}

/// `80` or `80-82`; ports are 1 to 65535.
fn parse_range(text: &str, which: &str) -> Result<RangeInclusive<u16>, String> {
    if text.is_empty() {
        return Err(format!("the {which} port is missing"));
    }
    let Some((first, last)) = text.split_once('-') else {
        let port = parse_port(text, which)?;
        return Ok(port..=port);
    };
    let (first, last) = (parse_port(first, which)?, parse_port(last, which)?);
    if first > last {
        return Err(format!("{which} port range {text} runs backwards"));
    }
    Ok(first..=last)
}

fn parse_port(text: &str, which: &str) -> Result<u16, String> {
    // `parse` alone would accept "+80".
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u16>() {
        Ok(port) if digits && port != 0 => Ok(port),
        _ => Err(format!("{which} port {text} is not a number from 1 to 65535")),
    }
}

fn show_range(range: &RangeInclusive<u16>) -> String {
    if range.start() == range.end() { range.start().to_string() } else { format!("{}-{}", range.start(), range.end()) }
}

/// Host ports held for a sandbox's published mappings, until dropped.
///
/// Each is a socket bound to the mapping's host address and port, never
/// listening: the portmap plugin's DNAT rules steer the traffic to the
/// container before any local socket is looked up, while the bound socket
/// keeps every other program, and every other container, off that port,
/// as docker's port allocator and proxy do. Without SO_REUSEADDR, so that
/// a bind by anyone else on the port fails too.
#[derive(Debug, Default)]
pub struct PortReservation {
    _sockets: Vec<socket2::Socket>,
}

/// Binds every mapping's host port, picking a free one for those with port
/// 0 (the named ones first, so a picked port never collides with a named
/// one). A port already taken, by a host service or another container, is
/// docker's "port is already allocated".
pub fn reserve_ports(mappings: &mut [PortMapping]) -> Result<PortReservation, NetworkError> {
    let mut sockets = Vec::with_capacity(mappings.len());
    let (named, free): (Vec<&mut PortMapping>, Vec<&mut PortMapping>) =
        mappings.iter_mut().partition(|m| m.host_port != 0);
    for mapping in named.into_iter().chain(free) {
        let ip = mapping.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let (socket, port) = bind_port(SocketAddr::new(ip, mapping.host_port), mapping.protocol)?;
        mapping.host_port = port;
        sockets.push(socket);
    }
    Ok(PortReservation { _sockets: sockets })
}

/// Picks a free port for mappings with port 0 and checks that the named
/// ones are free, holding nothing afterwards: for a helper that binds them
/// itself (a rootless toted's slirp4netns or pasta). TCP ports are tried
/// with SO_REUSEADDR, as those helpers bind them: a port a listener holds
/// is taken, one that only has connections of a previous run waiting out
/// TIME_WAIT (a helper's accepted connections, on the host) is free.
pub fn check_ports_free(mappings: &mut [PortMapping]) -> Result<(), NetworkError> {
    let mut sockets = Vec::with_capacity(mappings.len());
    let (named, free): (Vec<&mut PortMapping>, Vec<&mut PortMapping>) =
        mappings.iter_mut().partition(|m| m.host_port != 0);
    // All held until every one is checked, so that two port-0 mappings
    // never get the same port.
    for mapping in named.into_iter().chain(free) {
        let ip = mapping.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let reuse = mapping.protocol == Protocol::Tcp;
        let (socket, port) = bind_port_with(SocketAddr::new(ip, mapping.host_port), mapping.protocol, reuse)?;
        mapping.host_port = port;
        sockets.push(socket);
    }
    Ok(())
}

fn bind_port(address: SocketAddr, protocol: Protocol) -> Result<(socket2::Socket, u16), NetworkError> {
    bind_port_with(address, protocol, false)
}

fn bind_port_with(
    address: SocketAddr,
    protocol: Protocol,
    reuse_address: bool,
) -> Result<(socket2::Socket, u16), NetworkError> {
    use socket2::{Domain, Socket, Type};
    let error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            NetworkError::PortAllocated { address, protocol }
        } else {
            NetworkError::AllocatePort { ip: address.ip(), protocol, source }
        }
    };
    let kind = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    // socket2 opens it close-on-exec.
    let socket = Socket::new(Domain::for_address(address), kind, None).map_err(error)?;
    if reuse_address {
        socket.set_reuse_address(true).map_err(error)?;
    }
    socket.bind(&address.into()).map_err(error)?;
    let port = socket.local_addr().map_err(error)?.as_socket().map_or(address.port(), |a| a.port());
    Ok((socket, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn mapping(host_ip: Option<&str>, host_port: u16, container_port: u16, protocol: Protocol) -> PortMapping {
        PortMapping { host_ip: host_ip.map(|ip| ip.parse().unwrap()), host_port, container_port, protocol }
    }

    fn one(spec: &str) -> PortMapping {
        let mut all = parse_publish(spec).unwrap();
        assert_eq!(all.len(), 1, "{spec}");
        all.remove(0)
    }

    fn reason(spec: &str) -> String {
        let err = parse_publish(spec).unwrap_err();
        assert!(err.to_string().starts_with(&format!("bad port spec {spec:?}: ")), "{err}");
        match err {
            NetworkError::BadPortSpec { reason, .. } => reason,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_container_port_alone_gets_any_host_port() {
        assert_eq!(one("80"), mapping(None, 0, 80, Protocol::Tcp));
    }

    #[test]
    fn host_and_container_ports() {
        assert_eq!(one("8080:80"), mapping(None, 8080, 80, Protocol::Tcp));
        assert_eq!(one("0:80"), mapping(None, 0, 80, Protocol::Tcp));
    }

    #[test]
    fn a_host_address() {
        assert_eq!(one("127.0.0.1:8080:80"), mapping(Some("127.0.0.1"), 8080, 80, Protocol::Tcp));
        assert_eq!(one("127.0.0.1::80"), mapping(Some("127.0.0.1"), 0, 80, Protocol::Tcp));
    }

    #[test]
    fn an_ipv6_host_address_in_brackets() {
        assert_eq!(one("[::1]:8080:80"), mapping(Some("::1"), 8080, 80, Protocol::Tcp));
        assert_eq!(one("[::1]::80/udp"), mapping(Some("::1"), 0, 80, Protocol::Udp));
    }

    #[test]
    fn protocol_suffixes() {
        assert_eq!(one("53/udp"), mapping(None, 0, 53, Protocol::Udp));
        assert_eq!(one("8080:80/tcp"), mapping(None, 8080, 80, Protocol::Tcp));
        assert_eq!(one("127.0.0.1:5353:53/udp"), mapping(Some("127.0.0.1"), 5353, 53, Protocol::Udp));
    }

    #[test]
    fn ranges_pair_up_port_by_port() {
        assert_eq!(
            parse_publish("8000-8002:80-82").unwrap(),
            vec![
                mapping(None, 8000, 80, Protocol::Tcp),
                mapping(None, 8001, 81, Protocol::Tcp),
                mapping(None, 8002, 82, Protocol::Tcp),
            ]
        );
        assert_eq!(
            parse_publish("127.0.0.1::80-81/udp").unwrap(),
            vec![mapping(Some("127.0.0.1"), 0, 80, Protocol::Udp), mapping(Some("127.0.0.1"), 0, 81, Protocol::Udp)]
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert_eq!(
            parse_publish("99999:80").unwrap_err().to_string(),
            "bad port spec \"99999:80\": host port 99999 is not a number from 1 to 65535"
        );
        assert_eq!(reason("8080:0"), "container port 0 is not a number from 1 to 65535");
        assert_eq!(reason("8080:http"), "container port http is not a number from 1 to 65535");
        assert_eq!(reason("+80"), "container port +80 is not a number from 1 to 65535");
        assert_eq!(reason(""), "the container port is missing");
        assert_eq!(reason("8080:"), "the container port is missing");
        assert_eq!(reason("80/sctp"), "protocol \"sctp\" is not supported: use tcp or udp");
        assert_eq!(reason("localhost:8080:80"), "host address \"localhost\" is not an IP address");
        assert_eq!(reason("::1:8080:80"), "too many ':' (write an IPv6 host address in brackets: [::1]:8080:80)");
        assert_eq!(reason("[::1:8080:80"), "'[' without a closing ']'");
        assert_eq!(reason("[::1]:80"), "a bracketed address needs a host and a container port: [::1]:8080:80");
        assert_eq!(reason("8002-8000:80-82"), "host port range 8002-8000 runs backwards");
        assert_eq!(
            reason("8000-8001:80-82"),
            "host ports 8000-8001 and container ports 80-82 are ranges of different lengths"
        );
        assert_eq!(reason("8080:80-81"), "host ports 8080 and container ports 80-81 are ranges of different lengths");
    }

    #[test]
    fn displays_like_docker_port() {
        assert_eq!(mapping(Some("127.0.0.1"), 8080, 80, Protocol::Tcp).to_string(), "80/tcp -> 127.0.0.1:8080");
        assert_eq!(mapping(None, 5353, 53, Protocol::Udp).to_string(), "53/udp -> 0.0.0.0:5353");
        assert_eq!(mapping(Some("::1"), 8080, 80, Protocol::Tcp).to_string(), "80/tcp -> [::1]:8080");
    }

    #[test]
    fn serializes_protocol_lowercase() {
        let json = serde_json::to_value(mapping(None, 1, 2, Protocol::Udp)).unwrap();
        assert_eq!(json["protocol"], "udp");
        assert_eq!(json["host_ip"], serde_json::Value::Null);
    }

    #[test]
    fn allocates_distinct_free_ports_and_keeps_named_ones() {
        // A port found free may be taken by a test running alongside
        // before it is reserved: then try another.
        let (named, mappings, _held) = (0..20)
            .find_map(|_| {
                let named = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                let mut mappings = parse_publish("127.0.0.1::80-83").unwrap();
                mappings.extend(parse_publish("127.0.0.1::53/udp").unwrap());
                mappings.push(mapping(Some("127.0.0.1"), named, 9, Protocol::Tcp));
                reserve_ports(&mut mappings).ok().map(|held| (named, mappings, held))
            })
            .expect("a free port to name");
        let tcp: HashSet<u16> = mappings.iter().filter(|m| m.protocol == Protocol::Tcp).map(|m| m.host_port).collect();
        assert_eq!(tcp.len(), 5, "{mappings:?}");
        assert!(mappings.iter().all(|m| m.host_port != 0));
        assert_eq!(mappings[5].host_port, named);
    }

    #[test]
    fn a_reserved_port_is_refused_to_others_until_released() {
        let mut mappings = parse_publish("127.0.0.1::80").unwrap();
        let held = reserve_ports(&mut mappings).unwrap();
        let port = mappings[0].host_port;
        let err = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "a host service cannot take it");
        let mut again = vec![mapping(Some("127.0.0.1"), port, 80, Protocol::Tcp)];
        assert_eq!(
            reserve_ports(&mut again).unwrap_err().to_string(),
            format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
        );
        // Every address covers this one too.
        let mut any = vec![mapping(None, port, 80, Protocol::Tcp)];
        assert!(matches!(reserve_ports(&mut any), Err(NetworkError::PortAllocated { .. })));
        drop(held);
        reserve_ports(&mut again).unwrap();
    }

    #[test]
    fn a_free_check_refuses_a_listened_port_but_not_one_in_time_wait() {
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = service.local_addr().unwrap().port();
        let mut mappings = vec![mapping(Some("127.0.0.1"), port, 80, Protocol::Tcp)];
        assert!(matches!(check_ports_free(&mut mappings), Err(NetworkError::PortAllocated { .. })));
        // A connection the listening side closed first waits out TIME_WAIT
        // on that port, after the listener is gone.
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = service.accept().unwrap();
        drop(service);
        drop(accepted);
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut held = mappings.clone();
        assert!(
            matches!(reserve_ports(&mut held), Err(NetworkError::PortAllocated { .. })),
            "TIME_WAIT blocks a bind without SO_REUSEADDR"
        );
        check_ports_free(&mut mappings).unwrap();
        // Nothing is held afterwards, and port 0 gets distinct ports.
        let mut free = parse_publish("127.0.0.1::80-81").unwrap();
        check_ports_free(&mut free).unwrap();
        assert!(free[0].host_port != 0 && free[0].host_port != free[1].host_port, "{free:?}");
        drop(std::net::TcpListener::bind(("127.0.0.1", free[0].host_port)).unwrap());
    }

    #[test]
    fn a_port_a_host_service_listens_on_is_already_allocated() {
        let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = service.local_addr().unwrap().port();
        let mut mappings = vec![mapping(Some("127.0.0.1"), port, 80, Protocol::Tcp)];
        assert!(matches!(reserve_ports(&mut mappings), Err(NetworkError::PortAllocated { .. })));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let mut mappings = vec![mapping(Some("127.0.0.1"), port, 53, Protocol::Udp)];
        assert!(matches!(reserve_ports(&mut mappings), Err(NetworkError::PortAllocated { .. })));
    }
}
