//! tote-shim as a container's monitor: the long-lived process toted starts
//! per container. It creates the container, holds its stdio, writes its log,
//! reaps it, records how it ended and serves the daemon on a unix socket.

pub mod log;
pub mod protocol;
