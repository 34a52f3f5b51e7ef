//! tote, the docker-style command line client of toted.

mod args;
mod commands;
mod config;
mod envfile;
mod errors;
mod format;
mod mounts;
mod output;
mod signals;
mod stream;
mod template;
mod tty;
mod units;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::args::Cli;
use crate::commands::Ctx;
use crate::errors::EXIT_TOTE;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => exit_for_usage(&error),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tote: cannot start the async runtime: {error}");
            std::process::exit(EXIT_TOTE);
        }
    };
    let code = runtime.block_on(run(cli));
    // A stdin reader may still be blocked in read(): do not wait for it.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// Root's toted, or for anyone else their own rootless toted's socket.
fn default_host() -> String {
    let uid = nix::unistd::Uid::effective();
    if uid.is_root() {
        return tote_api::DEFAULT_HOST.to_string();
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| std::path::PathBuf::from(format!("/run/user/{uid}")));
    format!("unix://{}", runtime.join("tote/tote.sock").display())
}

/// Help exits 0; a usage error exits 125, docker's code for errors of the
/// CLI itself (clap's own is 2).
fn exit_for_usage(error: &clap::Error) -> ! {
    let _ = error.print();
    let code = match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
        _ => EXIT_TOTE,
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> i32 {
    let host = cli.host.or_else(|| std::env::var("TOTE_HOST").ok()).unwrap_or_else(default_host);
    let ctx = Ctx::new(host);
    if cli.version {
        return commands::system::short_version(&ctx).await;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return 0;
    };
    match commands::dispatch(&ctx, command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{error}");
            if cli.debug {
                eprintln!("{error:?}");
            }
            error.exit_code()
        }
    }
}
