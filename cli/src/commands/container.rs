//! Container lifecycle commands that take one or more containers, and the
//! small single-container queries (top, port).

use serde_json::Value;
use tote_api::v1::{
    ContainerRef, KillContainerRequest, ListContainersRequest, PortBinding, RemoveContainerRequest,
    RenameContainerRequest, StopContainerRequest, UpdateContainerRequest,
};

use super::attach::{self, Attachment};
use super::inspect::inspect_container;
use super::{Ctx, for_each_target};
use crate::args::{KillArgs, PortArgs, RenameArgs, RmArgs, StartArgs, StopArgs, Targets, TopArgs, UpdateArgs};
use crate::errors::{CliError, EXIT_PARTIAL};
use crate::format;
use crate::output::{out, outln};

pub async fn start(ctx: &Ctx, args: StartArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    if !(args.attach || args.interactive) {
        let targets = &args.containers;
        return Ok(for_each_target(targets, async |name| {
            client.start_container(ContainerRef { id: name.to_string() }).await?;
            Ok(Some(name.to_string()))
        })
        .await);
    }
    let [name] = args.containers.as_slice() else {
        return Err(CliError::refused("you cannot start and attach multiple containers at once"));
    };
    let info = inspect_container(&mut client, name).await?;
    let flag = |pointer: &str| info.pointer(pointer).and_then(Value::as_bool);
    let id = info.get("Id").and_then(Value::as_str).unwrap_or(name).to_string();
    let how = Attachment {
        stdin: args.interactive && flag("/Config/OpenStdin").unwrap_or(true),
        tty: flag("/Config/Tty").unwrap_or(false),
        sig_proxy: true,
    };
    attach::attach_and_start(&mut client, &id, how).await
}

/// `stop`, or `restart` when `restart` is set.
pub async fn stop(ctx: &Ctx, args: StopArgs, restart: bool) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    // Negative asks toted for the container's own stop timeout.
    let timeout = args.time.unwrap_or(-1);
    Ok(for_each_target(&args.containers, async |name| {
        let request = StopContainerRequest { id: name.to_string(), timeout };
        if restart {
            client.restart_container(request).await?;
        } else {
            client.stop_container(request).await?;
        }
        Ok(Some(name.to_string()))
    })
    .await)
}

pub async fn kill(ctx: &Ctx, args: KillArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    Ok(for_each_target(&args.containers, async |name| {
        let request = KillContainerRequest { id: name.to_string(), signal: args.signal.clone() };
        client.kill_container(request).await?;
        Ok(Some(name.to_string()))
    })
    .await)
}

pub async fn rm(ctx: &Ctx, args: RmArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    Ok(for_each_target(&args.containers, async |name| {
        let request = RemoveContainerRequest { id: name.to_string(), force: args.force, volumes: args.volumes };
        client.remove_container(request).await?;
        Ok(Some(name.to_string()))
    })
    .await)
}

/// `pause`, or `unpause` when `pause` is false.
pub async fn pause(ctx: &Ctx, args: Targets, pause: bool) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    Ok(for_each_target(&args.containers, async |name| {
        let reference = ContainerRef { id: name.to_string() };
        if pause {
            client.pause_container(reference).await?;
        } else {
            client.unpause_container(reference).await?;
        }
        Ok(Some(name.to_string()))
    })
    .await)
}

/// Prints each container's exit code, as docker does: tote itself exits 0
/// (1 if some wait failed), whatever the codes.
pub async fn wait(ctx: &Ctx, args: Targets) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    Ok(for_each_target(&args.containers, async |name| {
        let reply = client.wait_container(ContainerRef { id: name.to_string() }).await?.into_inner();
        if !reply.error.is_empty() {
            eprintln!("{name}: {}", reply.error);
        }
        Ok(Some(reply.exit_code.to_string()))
    })
    .await)
}

pub async fn rename(ctx: &Ctx, args: RenameArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    let request = RenameContainerRequest { id: args.container, new_name: args.new_name };
    client.rename_container(request).await?;
    Ok(0)
}

pub async fn update(ctx: &Ctx, args: UpdateArgs) -> Result<i32, CliError> {
    if args.resources.is_empty() && args.restart.is_none() {
        return Err(CliError::refused("you must provide one or more flags when using this command"));
    }
    let mut client = ctx.client().await?;
    let resources = args.resources.to_update();
    Ok(for_each_target(&args.containers, async |name| {
        let request = UpdateContainerRequest {
            id: name.to_string(),
            resources: Some(resources.clone()),
            restart: args.restart.clone(),
        };
        client.update_container(request).await?;
        Ok(Some(name.to_string()))
    })
    .await)
}

pub async fn top(ctx: &Ctx, args: TopArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    let reply = client.top_container(ContainerRef { id: args.container }).await?.into_inner();
    let mut text = reply.titles.join("\t");
    text.push('\n');
    for process in &reply.processes {
        text.push_str(&process.fields.join("\t"));
        text.push('\n');
    }
    out!("{}", format::tabwrite(&text));
    Ok(0)
}

pub async fn port(ctx: &Ctx, args: PortArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    let info = inspect_container(&mut client, &args.container).await?;
    let id = info.get("Id").and_then(Value::as_str).unwrap_or(&args.container).to_string();
    let request = ListContainersRequest { all: true, filters: vec![format!("id={id}")] };
    let listed = client.list_containers(request).await?.into_inner().containers;
    let summary = listed.into_iter().find(|c| c.id == id || c.id.starts_with(&id));
    let published: Vec<PortBinding> =
        summary.map(|c| c.ports).unwrap_or_default().into_iter().filter(|b| b.host_port != 0).collect();
    let Some(private) = &args.private_port else {
        for line in port_lines(&published) {
            outln!("{line}");
        }
        return Ok(0);
    };
    let (number, protocol) = private.split_once('/').unwrap_or((private, "tcp"));
    let number: u32 = number.parse().map_err(|_| CliError::refused(format!("Error: invalid port: {private}")))?;
    let matching: Vec<&PortBinding> =
        published.iter().filter(|b| b.container_port == number && format::protocol(b) == protocol).collect();
    if matching.is_empty() {
        eprintln!("Error: No public port '{number}/{protocol}' published for {}", args.container);
        return Ok(EXIT_PARTIAL);
    }
    for binding in matching {
        outln!("{}", format::host_address(binding));
    }
    Ok(0)
}

/// `80/tcp -> 127.0.0.1:8080`, sorted by container port.
fn port_lines(bindings: &[PortBinding]) -> Vec<String> {
    let mut sorted: Vec<&PortBinding> = bindings.iter().collect();
    sorted.sort_by_key(|b| (b.container_port, b.protocol.clone(), b.host_ip.clone()));
    sorted
        .into_iter()
        .map(|b| format!("{}/{} -> {}", b.container_port, format::protocol(b), format::host_address(b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lines_read_like_docker() {
        let binding = |ip: &str, host, ctr| PortBinding {
            host_ip: ip.into(),
            host_port: host,
            container_port: ctr,
            protocol: "tcp".into(),
        };
        let lines = port_lines(&[binding("::", 8443, 443), binding("127.0.0.1", 8080, 80)]);
        assert_eq!(lines, ["80/tcp -> 127.0.0.1:8080", "443/tcp -> [::]:8443"]);
    }
}
