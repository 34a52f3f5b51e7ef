//! Crash points for the fault tests: with `TOTE_CRASH_AT=<name>` in its
//! environment, a debug build of toted SIGKILLs itself on reaching the
//! point of that name, so a test can stop it at an exact step of create,
//! start or remove and check what the next toted makes of it. A SIGKILL
//! at a chosen moment from outside would race the very step it aims at.
//! Release builds have no crash points: the call is empty.

/// Dies here if the tests asked for it.
pub fn reached(name: &str) {
    #[cfg(debug_assertions)]
    {
        static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        if WANTED.get_or_init(|| std::env::var("TOTE_CRASH_AT").ok()).as_deref() == Some(name) {
            tracing::warn!("crash point {name}: SIGKILL");
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
