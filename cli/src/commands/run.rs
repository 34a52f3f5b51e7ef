//! `tote run` and `tote create`: create (pulling a missing image once, as
//! docker does), then for run start detached or attached.

use tote_api::v1::{ContainerRef, CreateContainerReply, CreateContainerRequest, RemoveContainerRequest};

use super::attach::{self, Attachment};
use super::pull::{self, Display, Reference};
use super::{Client, Ctx};
use crate::args::{ContainerFlags, CreateArgs, RunArgs};
use crate::config;
use crate::errors::{self, CliError};
use crate::output::outln;
use crate::tty::{self, TtyError};

pub async fn run(ctx: &Ctx, args: RunArgs) -> Result<i32, CliError> {
    let request = create_request(&args.flags, &args.image_and_command)?;
    let flags = &args.flags;
    // `-it` needs a terminal to make raw; `-t` alone does not (docker's rule).
    if !args.detach && flags.tty && flags.interactive && !tty::stdin_is_tty() {
        return Err(TtyError::NotATty.into());
    }
    let mut client = ctx.client().await?;
    let id = create_container(&mut client, request).await?;
    if args.detach {
        client.start_container(ContainerRef { id: id.clone() }).await?;
        outln!("{id}");
        return Ok(0);
    }
    let attachment = Attachment { stdin: flags.interactive, tty: flags.tty, sig_proxy: args.sig_proxy };
    let ran = attach::attach_and_start(&mut client, &id, attachment).await;
    if ran.is_err() && flags.rm {
        // Failed before the start (the attach, the terminal): `--rm` means
        // nothing stays. A running container is not removed without force,
        // and toted removes it at its exit.
        let remove = RemoveContainerRequest { id, force: false, volumes: true };
        let _ = client.remove_container(remove).await;
    }
    ran
}

pub async fn create(ctx: &Ctx, args: CreateArgs) -> Result<i32, CliError> {
    let request = create_request(&args.flags, &args.image_and_command)?;
    let mut client = ctx.client().await?;
    let id = create_container(&mut client, request).await?;
    outln!("{id}");
    Ok(0)
}

fn create_request(flags: &ContainerFlags, image_and_command: &[String]) -> Result<CreateContainerRequest, CliError> {
    let (image, cmd) = image_and_command.split_first().ok_or_else(|| CliError::refused("an image is required"))?;
    let lookup = |name: &str| std::env::var(name).ok();
    let config = config::container_config(flags, image, cmd, &lookup)?;
    Ok(CreateContainerRequest { name: flags.name.clone().unwrap_or_default(), config: Some(config) })
}

/// Creates the container; when toted lacks the image, pulls it (progress
/// on stderr) and tries once more. Returns the id.
pub async fn create_container(client: &mut Client, request: CreateContainerRequest) -> Result<String, CliError> {
    let reply = match client.create_container(request.clone()).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            let Some(reference) = errors::missing_image(&status) else { return Err(status.into()) };
            eprintln!("Unable to find image '{}' locally", Reference::parse(&reference).familiar());
            pull::pull_image(client, &reference, "", Display::for_stderr()).await?;
            client.create_container(request).await?.into_inner()
        }
    };
    Ok(print_warnings(reply))
}

fn print_warnings(reply: CreateContainerReply) -> String {
    for warning in &reply.warnings {
        eprintln!("WARNING: {warning}");
    }
    reply.id
}
