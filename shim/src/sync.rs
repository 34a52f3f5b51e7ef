//! The channel between tote-shim and a container process it is creating:
//! a SOCK_SEQPACKET socket pair, so every message arrives whole, and a pty
//! master can travel with a message as SCM_RIGHTS.
//!
//! Both ends are close-on-exec: once the container process execs, the
//! parent reads end-of-file, which is how it learns the exec succeeded.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};

const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Child: I created a user namespace; write my uid/gid maps.
    IdMapRequest,
    /// Parent: the maps are written.
    IdMapDone,
    /// Child (stage): the container's init is this pid (0: I am the init).
    InitPid(i32),
    /// Parent: the process is in its cgroup; carry on.
    Continue,
    /// Child: a pty master travels with this message.
    Pty,
    /// Child: something the operator should know that does not stop the container.
    Warning(String),
    /// Child: set up, waiting to be started.
    Ready,
    /// Parent: exec the container process now.
    Start,
    /// Child: setup failed; the text says what and where.
    Error(String),
    /// Child: execve failed with this errno.
    ExecFailed(i32, String),
    /// Child: namespaces are ready; run the prestart and createRuntime hooks.
    RuntimeHooks,
    /// Parent: those hooks have run.
    RuntimeHooksDone,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the container process exited before reporting")]
    Closed,
    #[error("container channel: {0}")]
    Io(Errno),
    #[error("container channel: malformed message (tag {0})")]
    Malformed(u8),
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let (tag, payload): (u8, Vec<u8>) = match self {
            Self::IdMapRequest => (1, vec![]),
            Self::IdMapDone => (2, vec![]),
            Self::InitPid(pid) => (3, pid.to_le_bytes().to_vec()),
            Self::Continue => (4, vec![]),
            Self::Pty => (5, vec![]),
            Self::Warning(text) => (6, text.as_bytes().to_vec()),
            Self::Ready => (7, vec![]),
            Self::Start => (8, vec![]),
            Self::Error(text) => (9, text.as_bytes().to_vec()),
            Self::ExecFailed(errno, text) => {
                let mut p = errno.to_le_bytes().to_vec();
                p.extend_from_slice(text.as_bytes());
                (10, p)
            }
            Self::RuntimeHooks => (11, vec![]),
            Self::RuntimeHooksDone => (12, vec![]),
        };
        let mut bytes = Vec::with_capacity(1 + payload.len().min(MAX_MESSAGE));
        bytes.push(tag);
        bytes.extend_from_slice(&payload[..payload.len().min(MAX_MESSAGE - 1)]);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self, ChannelError> {
        let (&tag, payload) = bytes.split_first().ok_or(ChannelError::Closed)?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let int = |b: &[u8]| b.get(..4).and_then(|b| b.try_into().ok()).map(i32::from_le_bytes);
        Ok(match tag {
            1 => Self::IdMapRequest,
            2 => Self::IdMapDone,
            3 => Self::InitPid(int(payload).ok_or(ChannelError::Malformed(tag))?),
            4 => Self::Continue,
            5 => Self::Pty,
            6 => Self::Warning(text(payload)),
            7 => Self::Ready,
            8 => Self::Start,
            9 => Self::Error(text(payload)),
            10 => Self::ExecFailed(int(payload).ok_or(ChannelError::Malformed(tag))?, text(&payload[4..])),
            11 => Self::RuntimeHooks,
            12 => Self::RuntimeHooksDone,
            _ => return Err(ChannelError::Malformed(tag)),
        })
    }
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(ChannelError::Io)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send(&self, msg: &Message) -> Result<(), ChannelError> {
        self.send_with_fd(msg, None)
    }

    pub fn send_with_fd(&self, msg: &Message, fd: Option<RawFd>) -> Result<(), ChannelError> {
        let bytes = msg.encode();
        let iov = [IoSlice::new(&bytes)];
        let fds = fd.map(|fd| [fd]);
        let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
        loop {
            match sendmsg::<()>(self.fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ChannelError::Closed),
                Err(errno) => return Err(ChannelError::Io(errno)),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// Waits for the next message; end-of-file is [`ChannelError::Closed`].
    pub fn recv(&self) -> Result<(Message, Option<OwnedFd>), ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = cmsg_space!([RawFd; 1]);
        let (len, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => return Err(ChannelError::Closed),
                Err(errno) => return Err(ChannelError::Io(errno)),
                Ok(msg) => {
                    let fd = msg.cmsgs().map_err(ChannelError::Io)?.find_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => fds.first().map(|&fd| {
                            // SAFETY: SCM_RIGHTS just installed this descriptor
                            // in our table; nothing else owns it.
                            unsafe { OwnedFd::from_raw_fd(fd) }
                        }),
                        _ => None,
                    });
                    break (msg.bytes, fd);
                }
            }
        };
        if len == 0 {
            return Err(ChannelError::Closed);
        }
        Ok((Message::decode(&buf[..len])?, fd))
    }

    /// Waits for one specific message. Warnings on the way go to `warn`.
    pub fn expect(&self, wanted: &Message, warn: &mut dyn FnMut(String)) -> Result<(), ExpectError> {
        loop {
            match self.recv()?.0 {
                Message::Warning(text) => warn(text),
                msg if msg == *wanted => return Ok(()),
                Message::Error(text) => return Err(ExpectError::Child(text)),
                other => return Err(ExpectError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("{0}")]
    Child(String),
    #[error("container channel: unexpected message {0}")]
    Unexpected(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_survives_the_trip() {
        let (a, b) = Channel::pair().unwrap();
        let messages = [
            Message::IdMapRequest,
            Message::IdMapDone,
            Message::InitPid(4242),
            Message::Continue,
            Message::Warning("careful".into()),
            Message::Ready,
            Message::Start,
            Message::Error("mount /proc: EPERM".into()),
            Message::ExecFailed(2, "no such file".into()),
            Message::RuntimeHooks,
            Message::RuntimeHooksDone,
        ];
        for msg in &messages {
            a.send(msg).unwrap();
            assert_eq!(&b.recv().unwrap().0, msg);
        }
    }

    #[test]
    fn a_descriptor_travels_with_a_message() {
        let (a, b) = Channel::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        a.send_with_fd(&Message::Pty, Some(file.as_raw_fd())).unwrap();
        let (msg, fd) = b.recv().unwrap();
        assert_eq!(msg, Message::Pty);
        assert!(fd.is_some());
    }

    #[test]
    fn a_closed_peer_is_reported_as_closed() {
        let (a, b) = Channel::pair().unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(ChannelError::Closed)));
    }

    #[test]
    fn expect_passes_warnings_through_and_surfaces_child_errors() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Message::Warning("w".into())).unwrap();
        a.send(&Message::Ready).unwrap();
        let mut seen = vec![];
        b.expect(&Message::Ready, &mut |w| seen.push(w)).unwrap();
        assert_eq!(seen, vec!["w".to_string()]);
        a.send(&Message::Error("boom".into())).unwrap();
        assert_eq!(b.expect(&Message::Ready, &mut |_| {}).unwrap_err().to_string(), "boom");
    }
}
