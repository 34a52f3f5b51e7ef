//! `tote exec`: a process in a running container over the Exec stream,
//! with io pumped as for `run`.

use tote_api::v1::{ExecConfig, io_output};

use super::Ctx;
use crate::args::ExecArgs;
use crate::config;
use crate::errors::CliError;
use crate::signals;
use crate::stream::{self, Ended, PumpOptions};
use crate::tty::{self, RawMode, TtyError};

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> Result<i32, CliError> {
    let (container, cmd) = args.container_and_command.split_first().ok_or_else(|| CliError::refused("no container"))?;
    let lookup = |name: &str| std::env::var(name).ok();
    let env = config::environment(&args.env_files, &args.env, &lookup)?;
    let stdin = args.interactive && !args.detach;
    if stdin && args.tty && !tty::stdin_is_tty() {
        return Err(TtyError::NotATty.into());
    }
    let config = ExecConfig {
        id: container.clone(),
        cmd: cmd.to_vec(),
        env,
        user: args.user.clone().unwrap_or_default(),
        working_dir: args.workdir.clone().unwrap_or_default(),
        tty: args.tty,
        stdin,
        privileged: args.privileged,
        size: if args.tty { tty::size() } else { None },
    };
    let mut client = ctx.client().await?;
    let mut io = stream::exec(&mut client, config).await?;
    if args.detach {
        return detached(io.first_reply().await?);
    }
    let _raw = if stdin && args.tty { Some(RawMode::enable()?) } else { None };
    match io.pump(PumpOptions { stdin, tty: args.tty, proxy: None }).await? {
        Ended::Exited(status) => Ok(status.code),
        Ended::Detached => Ok(0),
        Ended::Interrupted(signal) => Ok(signals::exit_code(signal)),
        Ended::Closed => Err(CliError::Protocol("the exec stream ended without an exit status".to_string())),
    }
}

/// `exec -d` returns once toted's first reply shows the process started;
/// an immediate exit with docker's 126/127 is still reported.
fn detached(first: Option<io_output::Output>) -> Result<i32, CliError> {
    match first {
        Some(io_output::Output::Exit(status)) if matches!(status.code, 126 | 127) => Ok(status.code),
        _ => Ok(0),
    }
}
