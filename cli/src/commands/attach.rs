//! Attaching to a container's io: `tote attach`, and the attach-then-start
//! sequence `run` and `start -a` use.

use serde_json::Value;
use tote_api::v1::ContainerRef;

use super::inspect::inspect_container;
use super::{Client, Ctx};
use crate::args::AttachArgs;
use crate::errors::CliError;
use crate::signals;
use crate::stream::{self, Ended, PumpOptions};
use crate::tty::{self, RawMode, TtyError};

/// What to attach.
#[derive(Debug, Clone, Copy)]
pub struct Attachment {
    pub stdin: bool,
    pub tty: bool,
    pub sig_proxy: bool,
}

/// Attaches, waits for toted's `ready` (so no output is missed), starts the
/// container, then pumps io until it exits; returns its exit code.
pub async fn attach_and_start(client: &mut Client, id: &str, how: Attachment) -> Result<i32, CliError> {
    let mut io = stream::attach(client, id, how.stdin).await?;
    io.wait_ready().await?;
    let _raw = raw_mode(how)?;
    client.start_container(ContainerRef { id: id.to_string() }).await?;
    if how.tty {
        io.send_size().await;
    }
    let ended = io.pump(pump_options(client, id, how)).await?;
    exit_code(client, id, ended).await
}

pub async fn attach(ctx: &Ctx, args: AttachArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    let info = inspect_container(&mut client, &args.container).await?;
    refuse_unless_running(&info)?;
    let flag = |pointer: &str| info.pointer(pointer).and_then(Value::as_bool);
    let tty = flag("/Config/Tty").unwrap_or(false);
    // docker attaches stdin only to containers created with -i.
    let stdin = !args.no_stdin && flag("/Config/OpenStdin").unwrap_or(true);
    if tty && stdin && !tty::stdin_is_tty() {
        return Err(TtyError::NotATty.into());
    }
    let id = info.get("Id").and_then(Value::as_str).unwrap_or(&args.container).to_string();
    let how = Attachment { stdin, tty, sig_proxy: args.sig_proxy };
    let mut io = stream::attach(&mut client, &id, stdin).await?;
    io.wait_ready().await?;
    let _raw = raw_mode(how)?;
    if tty {
        io.send_size().await;
    }
    let ended = io.pump(pump_options(&client, &id, how)).await?;
    exit_code(&mut client, &id, ended).await
}

/// docker's refusals, when the inspect document says so.
fn refuse_unless_running(info: &Value) -> Result<(), CliError> {
    let state = |key: &str| info.pointer(&format!("/State/{key}")).and_then(Value::as_bool);
    if state("Running") == Some(false) {
        return Err(CliError::refused("You cannot attach to a stopped container, start it first"));
    }
    if state("Paused") == Some(true) {
        return Err(CliError::refused("You cannot attach to a paused container, unpause it first"));
    }
    Ok(())
}

/// Raw mode when a terminal is attached both ways, as docker sets it.
fn raw_mode(how: Attachment) -> Result<Option<RawMode>, CliError> {
    if how.tty && how.stdin && tty::stdin_is_tty() { Ok(Some(RawMode::enable()?)) } else { Ok(None) }
}

fn pump_options(client: &Client, id: &str, how: Attachment) -> PumpOptions {
    // With a terminal, Ctrl-C is a byte for the container, not a signal.
    let proxy = (how.sig_proxy && !how.tty).then(|| (client.clone(), id.to_string()));
    PumpOptions { stdin: how.stdin, tty: how.tty, proxy }
}

/// The code tote exits with once the pump ends.
pub async fn exit_code(client: &mut Client, id: &str, ended: Ended) -> Result<i32, CliError> {
    match ended {
        Ended::Exited(status) => Ok(status.code),
        Ended::Detached => Ok(0),
        Ended::Interrupted(signal) => Ok(signals::exit_code(signal)),
        // The stream ended without a status: ask for it.
        Ended::Closed => Ok(client.wait_container(ContainerRef { id: id.to_string() }).await?.into_inner().exit_code),
    }
}
