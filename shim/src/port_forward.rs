//! `tote-shim port-forward NETNS ADDRESS PORT...`: publishes a rootless
//! container's TCP ports. toted (which may not touch iptables) binds and
//! listens on the host's ports itself and passes the listening sockets at
//! descriptors 4, 5, ... (one per PORT, in order), and a pipe at 3. This
//! process then moves into the container's network namespace (the
//! listening sockets stay in the host's: a socket belongs to the namespace
//! it was made in), says "1" on the pipe, and for each connection it
//! accepts connects to ADDRESS:PORT from inside the namespace and moves the
//! bytes both ways with splice(2), in the kernel, without copying them
//! through this process. That is what slirp4netns's own forwarding (every
//! byte through libslirp's TCP stack) costs several times over.
//!
//! Blocking, a thread per listener and two per connection (small stacks):
//! a developer's published ports carry few connections at a time. It runs
//! until toted kills it (it is detached, and outlives toted's restarts).

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use nix::sched::CloneFlags;

const READY_FD: RawFd = 3;
const FIRST_LISTENER_FD: RawFd = 4;
const STACK: usize = 64 * 1024;
/// The most one splice moves; the pipe between the two is made this big.
const CHUNK: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(problem) => {
            eprintln!("tote-shim port-forward: {problem}");
            1
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [netns, address, ports @ ..] = args else {
        return Err("usage: tote-shim port-forward NETNS ADDRESS PORT...".into());
    };
    let address: IpAddr = address.parse().map_err(|_| format!("{address:?} is not an IP address"))?;
    let ports: Vec<u16> = ports
        .iter()
        .map(|p| p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{p:?} is not a port")))
        .collect::<Result<_, _>>()?;
    if ports.is_empty() {
        return Err("no port to forward".into());
    }
    let mut listeners = Vec::with_capacity(ports.len());
    for (i, port) in ports.iter().enumerate() {
        let fd = FIRST_LISTENER_FD + RawFd::try_from(i).map_err(|_| "too many ports")?;
        let listening = nix::sys::socket::getsockopt(&borrowed(fd), nix::sys::socket::sockopt::AcceptConn);
        if listening != Ok(true) {
            return Err(format!("descriptor {fd} (for port {port}) is not a listening socket"));
        }
        // SAFETY: toted passed this descriptor, a listening TCP socket
        // (checked just above), for this process to own.
        listeners.push(unsafe { TcpListener::from_raw_fd(fd) });
    }
    let namespace = File::open(netns).map_err(|e| format!("open {netns}: {e}"))?;
    nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter {netns}: {e}"))?;
    drop(namespace);
    // SAFETY: toted passed the write end of its ready pipe here, for this
    // process to own.
    let mut ready = unsafe { File::from_raw_fd(READY_FD) };
    ready.write_all(b"1").map_err(|e| format!("say ready: {e}"))?;
    drop(ready);
    let mut accepting = Vec::with_capacity(listeners.len());
    for (listener, port) in listeners.into_iter().zip(ports) {
        let target = SocketAddr::new(address, port);
        let spawned = std::thread::Builder::new().stack_size(STACK).spawn(move || accept_loop(&listener, target));
        accepting.push(spawned.map_err(|e| format!("start a thread: {e}"))?);
    }
    for thread in accepting {
        let _ = thread.join();
    }
    Err("every listener failed".into())
}

fn borrowed(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for a getsockopt while the descriptor is open (a
    // closed one makes it fail with EBADF, which is reported).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr) {
    loop {
        match listener.accept() {
            Ok((client, _)) => {
                let spawned = std::thread::Builder::new().stack_size(STACK).spawn(move || forward(client, target));
                if spawned.is_err() {
                    // Out of threads: the connection goes (dropped with the
                    // closure), the listener stays.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) => match e.raw_os_error() {
                // A client that gave up, a signal, or out of descriptors or
                // memory for a moment: go on.
                Some(libc::ECONNABORTED | libc::EINTR | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => {
                    eprintln!("tote-shim port-forward: accept for {target}: {e}");
                    return;
                }
            },
        }
    }
}

/// One connection: to the container, then both directions until each has
/// ended (a half-close is passed on as one).
fn forward(client: TcpStream, target: SocketAddr) {
    let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        // Nothing listens in the container: the client sees its connection
        // closed, as with docker's proxy.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client_in), Ok(upstream_out)) = (client.try_clone(), upstream.try_clone()) else { return };
    let inbound = std::thread::Builder::new().stack_size(STACK).spawn(move || pump(&client_in, &upstream_out));
    if inbound.is_err() {
        return;
    }
    pump(&upstream, &client);
    if let Ok(inbound) = inbound {
        let _ = inbound.join();
    }
}

/// Moves everything from `from` to `to` through a pipe, then shuts `to`'s
/// writing side. On an error both connections are shut, so that the other
/// direction stops too.
fn pump(from: &TcpStream, to: &TcpStream) {
    if splice_all(from.as_raw_fd(), to.as_raw_fd()).is_ok() {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}

fn splice_all(from: RawFd, to: RawFd) -> Result<(), nix::errno::Errno> {
    use nix::errno::Errno;
    let (pipe_out, pipe_in) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Larger moves, fewer calls; the default 64 KiB is fine too.
    if let Ok(size) = libc::c_int::try_from(CHUNK) {
        let _ = nix::fcntl::fcntl(pipe_in.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
    }
    let flags = libc::SPLICE_F_MOVE;
    loop {
        // SAFETY: splice between two descriptors this process holds, with
        // no offsets (neither is a file).
        let read = unsafe {
            libc::splice(from, std::ptr::null_mut(), pipe_in.as_raw_fd(), std::ptr::null_mut(), CHUNK, flags)
        };
        let mut left = match read {
            0 => return Ok(()),
            n if n > 0 => n.unsigned_abs(),
            _ if Errno::last() == Errno::EINTR => continue,
            _ => return Err(Errno::last()),
        };
        while left > 0 {
            // SAFETY: as above.
            let written = unsafe {
                libc::splice(pipe_out.as_raw_fd(), std::ptr::null_mut(), to, std::ptr::null_mut(), left, flags)
            };
            match written {
                n if n > 0 => left -= n.unsigned_abs(),
                _ if Errno::last() == Errno::EINTR => {}
                0 => return Err(Errno::EPIPE),
                _ => return Err(Errno::last()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn bad_arguments_are_refused_before_anything_is_touched() {
        let words = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(run(&words(&["/n"])).unwrap_err().starts_with("usage"));
        assert!(run(&words(&["/n", "10.0.2.100"])).unwrap_err().contains("no port"));
        assert!(run(&words(&["/n", "host", "80"])).unwrap_err().contains("not an IP address"));
        assert!(run(&words(&["/n", "10.0.2.100", "0"])).unwrap_err().contains("not a port"));
    }

    #[test]
    fn a_connection_is_carried_both_ways_with_its_half_close() {
        // The pump alone, between two loopback connections.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo = server.local_addr().unwrap();
        let echoing = std::thread::spawn(move || {
            let (mut stream, _) = server.accept().unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).unwrap();
            stream.write_all(&got).unwrap();
            stream.write_all(b"!").unwrap();
        });
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = front.local_addr().unwrap();
        let forwarding = std::thread::spawn(move || {
            let (client, _) = front.accept().unwrap();
            forward(client, echo);
        });
        let mut client = TcpStream::connect(address).unwrap();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| u8::try_from(i % 251).unwrap()).collect();
        client.write_all(&payload).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), payload.len() + 1);
        assert!(back[..payload.len()] == payload[..] && back[payload.len()] == b'!');
        echoing.join().unwrap();
        forwarding.join().unwrap();
    }

    #[test]
    fn nothing_listening_in_the_container_closes_the_client() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = front.local_addr().unwrap();
        let forwarding = std::thread::spawn(move || {
            let (client, _) = front.accept().unwrap();
            forward(client, closed);
        });
        let mut client = TcpStream::connect(address).unwrap();
        let mut back = Vec::new();
        let _ = client.read_to_end(&mut back);
        assert!(back.is_empty());
        forwarding.join().unwrap();
    }
}
