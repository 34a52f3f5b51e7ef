//! Signals tote reacts to while attached: window size changes, and the
//! signals docker proxies to the container (`--sig-proxy`).

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// SIGWINCH: the terminal was resized.
pub fn window_changes() -> io::Result<Signal> {
    signal(SignalKind::window_change())
}

/// A signal by the name KillContainer takes, and its tokio kind.
type Named = (&'static str, fn() -> SignalKind);

/// The signals forwarded to a container.
const PROXIED: [Named; 6] = [
    ("SIGINT", SignalKind::interrupt),
    ("SIGTERM", SignalKind::terminate),
    ("SIGHUP", SignalKind::hangup),
    ("SIGQUIT", SignalKind::quit),
    ("SIGUSR1", SignalKind::user_defined1),
    ("SIGUSR2", SignalKind::user_defined2),
];

/// Catches the proxied signals (so they no longer end tote) and reports
/// each by name.
pub fn proxied() -> io::Result<mpsc::Receiver<&'static str>> {
    catch(&PROXIED)
}

/// Signals that end tote while the terminal is raw: caught so the terminal
/// is restored first. Reported by name.
pub fn terminating() -> io::Result<mpsc::Receiver<&'static str>> {
    catch(&PROXIED[1..3])
}

fn catch(kinds: &[Named]) -> io::Result<mpsc::Receiver<&'static str>> {
    let (sender, receiver) = mpsc::channel(8);
    for (name, kind) in kinds {
        let mut stream = signal(kind())?;
        let sender = sender.clone();
        let name = *name;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sender.send(name).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(receiver)
}

/// The exit code of a process ended by the signal named (128 + number).
pub fn exit_code(name: &str) -> i32 {
    match name {
        "SIGHUP" => 129,
        "SIGINT" => 130,
        "SIGQUIT" => 131,
        _ => 143,
    }
}
