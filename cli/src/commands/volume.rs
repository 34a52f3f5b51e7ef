//! `tote volume create|ls|inspect|rm`.

use serde_json::{Value, json};
use tote_api::v1::{CreateVolumeRequest, Empty, RemoveVolumeRequest, Volume, VolumeRef};

use super::inspect::pretty;
use super::{Ctx, for_each_target};
use crate::args::VolumeCommand;
use crate::errors::{CliError, EXIT_PARTIAL};
use crate::format::Listing;
use crate::output::{out, outln};
use crate::template::{Methods, NoMethods, Template};

const DEFAULT_TABLE: &str = "table {{.Driver}}\t{{.Name}}";

pub async fn volume(ctx: &Ctx, command: VolumeCommand) -> Result<i32, CliError> {
    match command {
        VolumeCommand::Create { labels, name } => {
            let mut client = ctx.client().await?;
            let request = CreateVolumeRequest { name: name.unwrap_or_default(), labels: labels.into_iter().collect() };
            outln!("{}", client.create_volume(request).await?.into_inner().name);
            Ok(0)
        }
        VolumeCommand::Ls { quiet, format } => ls(ctx, quiet, format.as_deref()).await,
        VolumeCommand::Inspect { format, names } => inspect(ctx, format.as_deref(), &names).await,
        VolumeCommand::Rm { force, names } => {
            let mut client = ctx.client().await?;
            Ok(for_each_target(&names, async |name| {
                client.remove_volume(RemoveVolumeRequest { name: name.to_string(), force }).await?;
                Ok(Some(name.to_string()))
            })
            .await)
        }
    }
}

async fn ls(ctx: &Ctx, quiet: bool, format: Option<&str>) -> Result<i32, CliError> {
    let listing = Listing::new(format, DEFAULT_TABLE)?;
    let mut client = ctx.client().await?;
    let mut volumes = client.list_volumes(Empty {}).await?.into_inner().volumes;
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    if quiet {
        for volume in &volumes {
            outln!("{}", volume.name);
        }
        return Ok(0);
    }
    let rows: Vec<(Value, &dyn Methods)> = volumes.iter().map(|v| (document(v), &NoMethods as &dyn Methods)).collect();
    let header = json!({"Driver": "DRIVER", "Name": "VOLUME NAME", "Mountpoint": "MOUNTPOINT", "Labels": "LABELS"});
    out!("{}", listing.render(&header, &rows)?);
    Ok(0)
}

async fn inspect(ctx: &Ctx, format: Option<&str>, names: &[String]) -> Result<i32, CliError> {
    let template = format.map(Template::parse).transpose()?;
    let mut client = ctx.client().await?;
    let mut documents = Vec::new();
    let mut failed = false;
    for name in names {
        match client.inspect_volume(VolumeRef { name: name.clone() }).await {
            Ok(reply) => documents.push(document(&reply.into_inner())),
            Err(status) => {
                eprintln!("{}", CliError::Daemon(status));
                failed = true;
            }
        }
    }
    match template {
        Some(template) => {
            for document in &documents {
                outln!("{}", template.render(document)?);
            }
        }
        None => outln!("{}", pretty(&Value::Array(documents))),
    }
    Ok(if failed { EXIT_PARTIAL } else { 0 })
}

/// A volume with docker's field names.
fn document(volume: &Volume) -> Value {
    let driver = if volume.driver.is_empty() { "local" } else { &volume.driver };
    json!({
        "CreatedAt": volume.created_at,
        "Driver": driver,
        "Labels": volume.labels,
        "Mountpoint": volume.mountpoint,
        "Name": volume.name,
        "Options": {},
        "Scope": "local",
        "UsedBy": volume.used_by,
    })
}
