//! OCI hooks: programs the bundle asks to run at points of the container's
//! life, each given the container's state as JSON on stdin.
//!
//! Where they run: `prestart` and `createRuntime` by tote-shim once the
//! namespaces exist and before pivot_root; `createContainer` by the init,
//! in the container's namespaces, before pivot_root; `startContainer` by
//! the init right before exec; `poststart` after start and `poststop`
//! after delete, by tote-shim. A failing hook fails create or start; a
//! failing poststart or poststop hook is a warning and the phase's other
//! hooks still run, as the runtime spec says (runc 1.1 instead kills the
//! container when a poststart hook fails).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks, Spec};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{phase} hook {path}: {source}")]
    Spawn {
        phase: Phase,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{phase} hook {path} failed ({status}): {stderr}")]
    Failed { phase: Phase, path: PathBuf, status: String, stderr: String },
    #[error("{phase} hook {path} did not finish within {seconds} s and was killed")]
    TimedOut { phase: Phase, path: PathBuf, seconds: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Prestart => "prestart",
            Phase::CreateRuntime => "createRuntime",
            Phase::CreateContainer => "createContainer",
            Phase::StartContainer => "startContainer",
            Phase::Poststart => "poststart",
            Phase::Poststop => "poststop",
        })
    }
}

impl Phase {
    fn hooks(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            #[allow(deprecated)]
            Phase::Prestart => hooks.prestart(),
            Phase::CreateRuntime => hooks.create_runtime(),
            Phase::CreateContainer => hooks.create_container(),
            Phase::StartContainer => hooks.start_container(),
            Phase::Poststart => hooks.poststart(),
            Phase::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }

    /// The container status the runtime spec gives hooks of this phase.
    fn status(self) -> &'static str {
        match self {
            // Prestart hooks are told "created", as the OCI's own validation
            // suite (runtime-tools' hooks_stdin) and crun tell them: runtime-
            // spec 1.0.0 ran them at start, and a hook written for that
            // checks it. The create-time hooks that replaced them run while
            // the container is still "creating" (state.md), as in runc.
            Phase::Prestart => "created",
            Phase::CreateRuntime | Phase::CreateContainer => "creating",
            Phase::StartContainer => "created",
            Phase::Poststart => "running",
            Phase::Poststop => "stopped",
        }
    }
}

/// The runtime-spec state handed to hooks on stdin.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HookState<'a> {
    oci_version: &'a str,
    id: &'a str,
    status: &'static str,
    pid: i32,
    bundle: &'a Path,
    annotations: HashMap<String, String>,
}

/// What a phase's hooks are told about the container.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub pid: i32,
}

/// Whether the spec has any hook for `phase`.
pub fn has(spec: &Spec, phase: Phase) -> bool {
    spec.hooks().as_ref().is_some_and(|h| !phase.hooks(h).is_empty())
}

/// Runs the phase's hooks in order; the first failure stops the rest.
pub fn run(phase: Phase, container: Container) -> Result<(), HookError> {
    each(phase, container, &mut |result| result)
}

/// Runs every one of the phase's hooks, each failure a warning: poststart
/// and poststop cannot undo anything, and the runtime spec wants the
/// remaining hooks and the lifecycle to go on.
pub fn run_warning(phase: Phase, container: Container, warn: &mut dyn FnMut(String)) {
    let _ = each(phase, container, &mut |result| {
        if let Err(err) = result {
            warn(err.to_string());
        }
        Ok(())
    });
}

/// Runs the phase's hooks in order, handing each outcome to `outcome`,
/// which stops the phase by returning an error.
fn each(
    phase: Phase,
    container: Container,
    outcome: &mut dyn FnMut(Result<(), HookError>) -> Result<(), HookError>,
) -> Result<(), HookError> {
    let Some(hooks) = container.spec.hooks() else { return Ok(()) };
    let list = phase.hooks(hooks);
    if list.is_empty() {
        return Ok(());
    }
    let state = HookState {
        oci_version: container.spec.version(),
        id: container.id,
        status: phase.status(),
        pid: container.pid,
        bundle: container.bundle,
        annotations: container.spec.annotations().clone().unwrap_or_default(),
    };
    let json = serde_json::to_vec(&state).expect("hook state serialises");
    list.iter().try_for_each(|hook| outcome(run_one(phase, hook, &json)))
}

fn run_one(phase: Phase, hook: &Hook, state: &[u8]) -> Result<(), HookError> {
    let path = hook.path().clone();
    let spawn_err = |source| HookError::Spawn { phase, path: path.clone(), source };
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(&path);
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for pair in hook.env().iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            cmd.env(key, value);
        }
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its stdin; that is its business.
        let _ = stdin.write_all(state);
    }
    let deadline =
        hook.timeout().filter(|t| *t > 0).map(|t| (t, Instant::now() + Duration::from_secs(t.unsigned_abs())));
    loop {
        if let Some(status) = child.try_wait().map_err(spawn_err)? {
            if status.success() {
                return Ok(());
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            return Err(HookError::Failed {
                phase,
                path,
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        if let Some((seconds, at)) = deadline
            && Instant::now() > at
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::TimedOut { phase, path, seconds });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(hooks: serde_json::Value) -> Spec {
        let json = serde_json::json!({
            "ociVersion": "1.2.0", "root": {"path": "r"},
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "hooks": hooks, "annotations": {"a": "b"}
        });
        serde_json::from_value(json).unwrap()
    }

    fn container(spec: &Spec) -> Container<'_> {
        Container { id: "c1", spec, bundle: Path::new("/b"), pid: 42 }
    }

    #[test]
    fn hooks_get_the_state_args_and_env() {
        let out = std::env::temp_dir().join(format!("tote-hook-test-{}", std::process::id()));
        let script = format!(
            "cat > {0}; echo \"$0 $1 $GREETING\" >> {0}; tr '\\0' ' ' < /proc/$$/cmdline >> {0}",
            out.display()
        );
        let spec = spec_with(serde_json::json!({
            "poststart": [{"path": "/bin/sh", "args": ["hook-name", "-c", script, "zero", "one"], "env": ["GREETING=hi"]}]
        }));
        assert!(has(&spec, Phase::Poststart));
        assert!(!has(&spec, Phase::Prestart));
        run(Phase::Poststart, container(&spec)).unwrap();
        let written = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        let end = written.rfind('}').unwrap() + 1;
        let (state, args) = (&written[..end], &written[end..]);
        let state: serde_json::Value = serde_json::from_str(state).unwrap();
        assert_eq!(state["id"], "c1");
        assert_eq!(state["status"], "running");
        assert_eq!(state["pid"], 42);
        assert_eq!(state["bundle"], "/b");
        assert_eq!(state["annotations"]["a"], "b");
        let mut lines = args.trim().lines();
        assert_eq!(lines.next(), Some("zero one hi"));
        // args[0] is the hook's argv[0], not its first argument.
        assert!(lines.next().unwrap().starts_with("hook-name -c "), "{args}");
    }

    #[test]
    fn a_failing_hook_stops_the_phase_with_its_stderr() {
        let spec = spec_with(serde_json::json!({
            "createRuntime": [
                {"path": "/bin/sh", "args": ["sh", "-c", "echo no network >&2; exit 3"]},
                {"path": "/bin/sh", "args": ["sh", "-c", "exit 0"]}
            ]
        }));
        let err = run(Phase::CreateRuntime, container(&spec)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("createRuntime") && text.contains("no network") && text.contains('3'), "{text}");
    }

    #[test]
    fn a_failing_poststop_hook_is_a_warning_and_the_next_one_runs() {
        let out = std::env::temp_dir().join(format!("tote-hook-warn-{}", std::process::id()));
        let spec = spec_with(serde_json::json!({
            "poststop": [
                {"path": "/bin/sh", "args": ["sh", "-c", "echo gone wrong >&2; exit 2"]},
                {"path": "/bin/sh", "args": ["sh", "-c", format!("echo second ran > {}", out.display())]}
            ]
        }));
        let mut warnings = vec![];
        run_warning(Phase::Poststop, container(&spec), &mut |w| warnings.push(w));
        let second = std::fs::read_to_string(&out);
        let _ = std::fs::remove_file(&out);
        assert_eq!(second.unwrap(), "second ran\n");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("poststop") && warnings[0].contains("gone wrong"), "{warnings:?}");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let spec = spec_with(serde_json::json!({
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 30"], "timeout": 1}]
        }));
        let started = Instant::now();
        let err = run(Phase::Poststop, container(&spec)).unwrap_err();
        assert!(matches!(err, HookError::TimedOut { seconds: 1, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_hook_program_is_named() {
        let spec = spec_with(serde_json::json!({"prestart": [{"path": "/nonexistent/hook"}]}));
        let err = run(Phase::Prestart, container(&spec)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/hook"), "{err}");
    }
}
