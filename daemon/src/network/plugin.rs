//! The seam between the CNI driver and the host's executables: CNI plugin
//! binaries, and the `ip`/`iptables` cleanups plugins leave to the runtime.
//! Unit tests put a fake behind it that records what it was sent.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Where plugins and host tools find `iptables`, `ip` and friends, whatever
/// the daemon's own `PATH` is.
pub(crate) const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub enum ExecError {
    /// The program could not be started.
    Spawn(std::io::Error),
    /// It ran and exited unsuccessfully.
    Exit { status: String, stdout: Vec<u8>, stderr: Vec<u8> },
}

pub trait PluginExec: Send + Sync {
    /// Runs the CNI plugin binary at `plugin` with exactly the environment
    /// `env`, writing `stdin` to it; its stdout if it exits 0.
    fn exec(&self, plugin: &Path, env: &[(String, String)], stdin: &[u8]) -> Result<Vec<u8>, ExecError>;

    /// Runs a host tool (`ip`, `iptables`), found in [`TOOL_PATH`]; its
    /// stdout if it exits 0.
    fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, ExecError>;
}

/// Runs the real binaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostExec;

impl PluginExec for HostExec {
    fn exec(&self, plugin: &Path, env: &[(String, String)], stdin: &[u8]) -> Result<Vec<u8>, ExecError> {
        let mut command = Command::new(plugin);
        // Only the CNI variables: a plugin's behaviour must not depend on
        // whatever the daemon was started with.
        command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        finish(feed(command, stdin).map_err(ExecError::Spawn)?)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, ExecError> {
        let mut command = Command::new(program);
        // Setting PATH here also makes it the one `program` is looked up in;
        // LC_ALL=C keeps messages in the English we match on.
        command.args(args).env_clear().env("PATH", TOOL_PATH).env("LC_ALL", "C");
        finish(feed(command, b"").map_err(ExecError::Spawn)?)
    }
}

/// Runs `command`, writing `stdin` to it while collecting its output.
pub(crate) fn feed(mut command: Command, stdin: &[u8]) -> std::io::Result<Output> {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut input = child.stdin.take().expect("stdin is piped");
    std::thread::scope(|scope| {
        // A separate writer, so a child that answers before it has read
        // all its input cannot deadlock us. A write error (EPIPE from a
        // child that exited early) is ignored: its exit status says more.
        scope.spawn(move || {
            let _ = input.write_all(stdin);
        });
        child.wait_with_output()
    })
}

pub(crate) fn finish(output: Output) -> Result<Vec<u8>, ExecError> {
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(ExecError::Exit { status: output.status.to_string(), stdout: output.stdout, stderr: output.stderr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_passes_only_the_given_environment_and_stdin() {
        let env = [("CNI_COMMAND".to_string(), "VERSION".to_string())];
        let out = HostExec.exec(Path::new("/bin/sh"), &env, b"echo \"$CNI_COMMAND ${HOME:-nohome}\"").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "VERSION nohome\n");
    }

    #[test]
    fn a_failing_program_returns_its_output() {
        let err = HostExec.exec(Path::new("/bin/sh"), &[], b"echo out; echo err >&2; exit 3").unwrap_err();
        let ExecError::Exit { status, stdout, stderr } = err else { panic!("{err:?}") };
        assert_eq!((stdout.as_slice(), stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
        assert!(status.contains('3'), "{status}");
    }

    #[test]
    fn run_finds_tools_in_the_tool_path() {
        assert_eq!(HostExec.run("echo", &["hi"]).unwrap(), b"hi\n");
        assert!(matches!(HostExec.run("tote-no-such-tool", &[]), Err(ExecError::Spawn(_))));
    }
}
