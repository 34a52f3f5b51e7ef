//! The API socket's connections, bounded.
//!
//! Every connection costs toted a descriptor, and an attach or exec over it
//! more (the monitor's stream). Unbounded, a flood of connections (a
//! misbehaving client, a script gone wrong) takes every descriptor toted
//! has, and then it cannot open what its own work needs: a container's
//! exit goes unhandled, a plugin cannot be run. So at most a quarter of
//! toted's descriptor limit (and no more than [`MAX_CONNECTIONS`]) are
//! connections; further clients wait in the socket's backlog until one
//! closes, and are then served at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// More than any kubelet and CLI users need at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// How many connections toted serves at once with `nofile` descriptors.
pub fn limit_for(nofile: u64) -> usize {
    usize::try_from(nofile / 4).unwrap_or(usize::MAX).clamp(16, MAX_CONNECTIONS)
}

/// A client's connection, counted until it closes.
pub struct Connection {
    stream: UnixStream,
    _permit: OwnedSemaphorePermit,
}

/// The connections `listener` accepts, at most `limit` open at once.
pub fn incoming(listener: UnixListener, limit: usize) -> impl Stream<Item = io::Result<Connection>> {
    let permits = Arc::new(Semaphore::new(limit));
    futures_util::stream::unfold((listener, permits), |(listener, permits)| async move {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            match listener.accept().await {
                Ok((stream, _)) => return Some((Ok(Connection { stream, _permit: permit }), (listener, permits))),
                Err(e) if transient(&e) => {
                    // Out of descriptors after all (something else holds
                    // them), or a client gone before it was accepted: wait
                    // a little rather than spin, and go on.
                    tracing::warn!("accept on the API socket: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Some((Err(e), (listener, permits))),
            }
        }
    })
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED | libc::EINTR)
    )
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn the_limit_leaves_most_descriptors_to_toted() {
        assert_eq!(limit_for(256), 64);
        assert_eq!(limit_for(20_000), MAX_CONNECTIONS);
        assert_eq!(limit_for(10), 16);
    }

    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_for_one_to_close() {
        let dir = std::env::temp_dir().join(format!("tote-connections-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let mut accepted = Box::pin(incoming(UnixListener::bind(&path).unwrap(), 2));
        let _clients: Vec<_> = futures_util::future::join_all((0..3).map(|_| UnixStream::connect(&path))).await;
        let first = accepted.next().await.unwrap().unwrap();
        let _second = accepted.next().await.unwrap().unwrap();
        let third = tokio::time::timeout(Duration::from_millis(200), accepted.next()).await;
        assert!(third.is_err(), "a third connection was accepted beyond the limit of 2");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), accepted.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))), "the third waited after one closed");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
