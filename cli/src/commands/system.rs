//! `tote info`, `tote version`, `tote events` and `tote system df`.

use serde_json::{Value, json};
use tote_api::v1::{DiskUsageReply, Empty, Event, EventsRequest, InfoReply, UsageSummary, VersionReply};

use super::Ctx;
use crate::args::EventsArgs;
use crate::errors::CliError;
use crate::format::{self, Listing};
use crate::output::{out, outln};
use crate::template::{Methods, NoMethods};

const DF_TABLE: &str = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}";

/// This client's version.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn info(ctx: &Ctx) -> Result<i32, CliError> {
    outln!("Client:");
    outln!(" Version:    {CLIENT_VERSION}");
    outln!(" Context:    default");
    outln!();
    let mut client = ctx.client().await?;
    let reply = client.info(Empty {}).await?.into_inner();
    out!("{}", server_info(&reply));
    Ok(0)
}

/// docker's `Server:` section, for what toted reports.
fn server_info(info: &InfoReply) -> String {
    let mut out = String::from("Server:\n");
    let mut line = |label: &str, value: &str| out.push_str(&format!(" {label}: {value}\n"));
    line("Containers", &info.containers.to_string());
    line(" Running", &info.running.to_string());
    line(" Paused", &info.paused.to_string());
    line(" Stopped", &info.stopped.to_string());
    line("Images", &info.images.to_string());
    line("Server Version", &info.version);
    line("Storage Driver", &info.storage_driver);
    line("Logging Driver", &info.logging_driver);
    line("Cgroup Driver", "cgroupfs");
    line("Cgroup Version", &info.cgroup_version);
    if !info.cgroup_parent.is_empty() {
        line("Cgroup Parent", &info.cgroup_parent);
    }
    line("Kernel Version", &info.kernel);
    line("Operating System", &info.os);
    line("OSType", "linux");
    line("Architecture", std::env::consts::ARCH);
    line("CPUs", &info.cpus.to_string());
    line("Total Memory", &format::binary_size(info.memory));
    line("Tote Root Dir", &info.root_dir);
    line("Tote State Dir", &info.state_dir);
    line("Rootless", &info.rootless.to_string());
    if !info.network_driver.is_empty() {
        line("Network Driver", &info.network_driver);
    }
    for (label, map) in [("UID Map", &info.uid_map), ("GID Map", &info.gid_map)] {
        if !map.is_empty() {
            line(label, &map.iter().map(id_mapping).collect::<Vec<_>>().join(", "));
        }
    }
    for warning in &info.warnings {
        out.push_str(&format!("WARNING: {warning}\n"));
    }
    out
}

/// `0-65535 -> 100000-165535`: container ids, then the host's.
fn id_mapping(map: &tote_api::v1::IdMapping) -> String {
    let last = |first: u32| first.saturating_add(map.size.saturating_sub(1));
    format!("{}-{} -> {}-{}", map.container_id, last(map.container_id), map.host_id, last(map.host_id))
}

/// `tote version`: the client, then the server (an unreachable server is
/// an error after the client section, as in docker).
pub async fn version(ctx: &Ctx) -> Result<i32, CliError> {
    out!("{}", client_version());
    let mut client = ctx.client().await?;
    let reply = client.version(Empty {}).await?.into_inner();
    outln!();
    out!("{}", server_version(&reply));
    Ok(0)
}

/// `tote --version`: one line, plus the server's when it answers.
pub async fn short_version(ctx: &Ctx) -> i32 {
    outln!("Tote version {CLIENT_VERSION}, API {}", tote_api::API_VERSION);
    let reply = async { Ok::<_, CliError>(ctx.client().await?.version(Empty {}).await?.into_inner()) }.await;
    if let Ok(server) = reply {
        outln!("toted version {}, API {}", server.version, server.api_version);
    }
    0
}

fn client_version() -> String {
    format!(
        "Client:\n Version:           {CLIENT_VERSION}\n API version:       {}\n OS/Arch:           linux/{}\n",
        tote_api::API_VERSION,
        go_arch(std::env::consts::ARCH)
    )
}

fn server_version(reply: &VersionReply) -> String {
    let mut out = String::from("Server:\n Engine:\n");
    out.push_str(&format!("  Version:          {}\n", reply.version));
    out.push_str(&format!("  API version:      {}\n", reply.api_version));
    out.push_str(&format!("  Git commit:       {}\n", reply.git_commit));
    out.push_str(&format!("  OS/Arch:          {}/{}\n", reply.os, go_arch(&reply.arch)));
    out.push_str(&format!("  Kernel Version:   {}\n", reply.kernel));
    out
}

/// docker names architectures as Go does.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i686" => "386",
        other => other,
    }
}

pub async fn events(ctx: &Ctx, args: EventsArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    let request = EventsRequest { since: args.since.unwrap_or_default(), filters: args.filters };
    let mut events = client.events(request).await?.into_inner();
    while let Some(event) = events.message().await? {
        outln!("{}", event_line(&event));
    }
    Ok(0)
}

/// `TIME container start ID (image=busybox, name=web)`: attributes sorted,
/// as docker prints them.
fn event_line(event: &Event) -> String {
    let mut attributes: Vec<String> = event.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    attributes.sort();
    let mut line = format!("{} {} {} {}", event.time, event.r#type, event.action, event.id);
    if !attributes.is_empty() {
        line.push_str(&format!(" ({})", attributes.join(", ")));
    }
    line
}

/// `tote system df`: docker's summary rows, and Tote's partial downloads
/// (interrupted pulls kept to resume; `image prune` removes them).
pub async fn df(ctx: &Ctx, format: Option<&str>) -> Result<i32, CliError> {
    let listing = Listing::new(format, DF_TABLE)?;
    let mut client = ctx.client().await?;
    let reply = client.disk_usage(Empty {}).await?.into_inner();
    let rows: Vec<(Value, &dyn Methods)> =
        df_rows(&reply).into_iter().map(|row| (row, &NoMethods as &dyn Methods)).collect();
    let header = json!({
        "Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE",
    });
    out!("{}", listing.render(&header, &rows)?);
    Ok(0)
}

fn df_rows(reply: &DiskUsageReply) -> Vec<Value> {
    let rows = [
        ("Images", &reply.images, true),
        ("Containers", &reply.containers, true),
        ("Local Volumes", &reply.volumes, true),
        // docker shows no share for the build cache.
        ("Build Cache", &reply.build_cache, false),
        ("Partial Downloads", &reply.partial_downloads, true),
    ];
    rows.into_iter()
        .map(|(kind, usage, share)| {
            let usage = usage.unwrap_or_default();
            json!({
                "Type": kind,
                "TotalCount": usage.total.to_string(),
                "Active": usage.active.to_string(),
                "Size": format::human_size_4(usage.size),
                "Reclaimable": reclaimable(&usage, share),
            })
        })
        .collect()
}

/// "1.2MB (40%)", the share left out when nothing is there, as docker
/// prints it.
fn reclaimable(usage: &UsageSummary, share: bool) -> String {
    let size = format::human_size_4(usage.reclaimable);
    if share && usage.size > 0 {
        format!("{size} ({}%)", u128::from(usage.reclaimable) * 100 / u128::from(usage.size))
    } else {
        size
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn events_read_like_docker() {
        let event = Event {
            time: "2024-01-02T15:04:05.000000000Z".into(),
            r#type: "container".into(),
            action: "start".into(),
            id: "abc".into(),
            attributes: HashMap::from([("name".into(), "web".into()), ("image".into(), "busybox".into())]),
        };
        assert_eq!(event_line(&event), "2024-01-02T15:04:05.000000000Z container start abc (image=busybox, name=web)");
    }

    #[test]
    fn df_prints_dockers_table_and_partial_downloads() {
        let usage = |total, active, size, reclaimable| Some(UsageSummary { total, active, size, reclaimable });
        let reply = DiskUsageReply {
            images: usage(2, 1, 16_430_000, 11_630_000),
            containers: usage(2, 0, 212, 212),
            volumes: usage(1, 1, 36, 0),
            build_cache: usage(0, 0, 0, 0),
            partial_downloads: usage(1, 0, 100_000, 100_000),
        };
        let rows: Vec<(Value, &dyn Methods)> =
            df_rows(&reply).into_iter().map(|row| (row, &NoMethods as &dyn Methods)).collect();
        let header = json!({
            "Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE", "Reclaimable": "RECLAIMABLE",
        });
        let out = Listing::new(None, DF_TABLE).unwrap().render(&header, &rows).unwrap();
        assert_eq!(
            out,
            "TYPE                TOTAL     ACTIVE    SIZE      RECLAIMABLE\n\
             Images              2         1         16.43MB   11.63MB (70%)\n\
             Containers          2         0         212B      212B (100%)\n\
             Local Volumes       1         1         36B       0B (0%)\n\
             Build Cache         0         0         0B        0B\n\
             Partial Downloads   1         0         100kB     100kB (100%)\n"
        );
        let out = Listing::new(Some("{{.Type}}: {{.Reclaimable}}"), DF_TABLE).unwrap().render(&header, &rows).unwrap();
        assert!(out.ends_with("Partial Downloads: 100kB (100%)\n"), "{out}");
        let empty = DiskUsageReply::default();
        assert_eq!(df_rows(&empty)[0]["Reclaimable"], "0B");
    }

    #[test]
    fn info_lists_counts_and_memory() {
        let info = InfoReply { containers: 3, running: 1, stopped: 2, memory: 2_087_354_368, ..Default::default() };
        let text = server_info(&info);
        assert!(text.contains(" Containers: 3\n  Running: 1\n  Paused: 0\n  Stopped: 2\n"), "{text}");
        assert!(text.contains(" Total Memory: 1.944GiB\n"), "{text}");
        assert!(text.contains(" Rootless: false\n") && !text.contains("UID Map"), "{text}");
    }

    #[test]
    fn rootless_info_shows_the_id_maps() {
        use tote_api::v1::IdMapping;
        let map = |host| {
            vec![
                IdMapping { container_id: 0, host_id: host, size: 1 },
                IdMapping { container_id: 1, host_id: 300_000, size: 65536 },
            ]
        };
        let info = InfoReply {
            rootless: true,
            uid_map: map(1001),
            gid_map: map(1002),
            network_driver: "pasta (/usr/bin/pasta)".into(),
            ..Default::default()
        };
        let text = server_info(&info);
        assert!(text.contains(" Rootless: true\n Network Driver: pasta (/usr/bin/pasta)\n"), "{text}");
        assert!(text.contains(" UID Map: 0-0 -> 1001-1001, 1-65536 -> 300000-365535\n"), "{text}");
        assert!(text.contains(" GID Map: 0-0 -> 1002-1002, 1-65536 -> 300000-365535\n"), "{text}");
    }
}
