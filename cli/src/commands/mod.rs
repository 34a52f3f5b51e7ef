//! One module per group of commands; each command is a function from its
//! parsed arguments to tote's exit code.

pub mod attach;
pub mod container;
pub mod cp;
pub mod exec;
pub mod images;
pub mod inspect;
pub mod logs;
pub mod ps;
pub mod pull;
pub mod run;
pub mod stats;
pub mod system;
pub mod volume;

use tonic::transport::Channel;
use tote_api::v1::tote_client::ToteClient;

use crate::args::{Command, ImageCommand, SystemCommand};
use crate::errors::{CliError, EXIT_PARTIAL};
use crate::output::outln;

pub type Client = ToteClient<Channel>;

/// What every command needs: where toted is.
pub struct Ctx {
    host: String,
}

impl Ctx {
    pub fn new(host: String) -> Self {
        Ctx { host }
    }

    /// A client connected to toted.
    pub async fn client(&self) -> Result<Client, CliError> {
        Ok(ToteClient::new(tote_api::connect(&self.host).await?)
            .max_decoding_message_size(tote_api::MAX_REPLY_BYTES)
            .max_encoding_message_size(tote_api::MAX_REQUEST_BYTES))
    }
}

/// Runs one command; Ok is the code tote exits with.
pub async fn dispatch(ctx: &Ctx, command: Command) -> Result<i32, CliError> {
    match command {
        Command::Run(args) => run::run(ctx, args).await,
        Command::Create(args) => run::create(ctx, args).await,
        Command::Start(args) => container::start(ctx, args).await,
        Command::Stop(args) => container::stop(ctx, args, false).await,
        Command::Restart(args) => container::stop(ctx, args, true).await,
        Command::Kill(args) => container::kill(ctx, args).await,
        Command::Rm(args) => container::rm(ctx, args).await,
        Command::Pause(args) => container::pause(ctx, args, true).await,
        Command::Unpause(args) => container::pause(ctx, args, false).await,
        Command::Wait(args) => container::wait(ctx, args).await,
        Command::Rename(args) => container::rename(ctx, args).await,
        Command::Update(args) => container::update(ctx, args).await,
        Command::Top(args) => container::top(ctx, args).await,
        Command::Port(args) => container::port(ctx, args).await,
        Command::Ps(args) => ps::ps(ctx, args).await,
        Command::Logs(args) => logs::logs(ctx, args).await,
        Command::Exec(args) => exec::exec(ctx, args).await,
        Command::Attach(args) => attach::attach(ctx, args).await,
        Command::Inspect(args) => inspect::inspect(ctx, args).await,
        Command::Stats(args) => stats::stats(ctx, args).await,
        Command::Cp(args) => cp::cp(ctx, args).await,
        Command::Images(args) => images::images(ctx, args).await,
        Command::Pull(args) => pull::pull(ctx, args).await,
        Command::Rmi(args) => images::rmi(ctx, args).await,
        Command::Tag(args) => images::tag(ctx, args).await,
        Command::Load(args) => images::load(ctx, args).await,
        Command::Save(args) => images::save(ctx, args).await,
        Command::Image(ImageCommand::Prune(args)) => images::prune(ctx, args).await,
        Command::Volume(command) => volume::volume(ctx, command).await,
        Command::System(SystemCommand::Df { format }) => system::df(ctx, format.as_deref()).await,
        Command::Info | Command::System(SystemCommand::Info) => system::info(ctx).await,
        Command::Version => system::version(ctx).await,
        Command::Events(args) | Command::System(SystemCommand::Events(args)) => system::events(ctx, args).await,
    }
}

/// Applies `operation` to each target as docker's multi-container commands
/// do: what it returns is printed on success, an error is reported and
/// the rest still run; any failure makes tote exit 1.
pub async fn for_each_target(
    targets: &[String],
    mut operation: impl AsyncFnMut(&str) -> Result<Option<String>, CliError>,
) -> i32 {
    let mut code = 0;
    for target in targets {
        match operation(target).await {
            Ok(Some(line)) => outln!("{line}"),
            Ok(None) => {}
            Err(error) => {
                eprintln!("{error}");
                code = EXIT_PARTIAL;
            }
        }
    }
    code
}
