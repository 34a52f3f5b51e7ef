//! `tote ps`: docker's container table, or a `--format` template over
//! docker's field names.

use std::collections::HashMap;

use serde_json::{Value, json};
use tote_api::v1::{ContainerSummary, ListContainersRequest};

use super::Ctx;
use crate::args::PsArgs;
use crate::errors::CliError;
use crate::format::{self, Listing};
use crate::output::{out, outln};
use crate::template::Methods;

const DEFAULT_TABLE: &str =
    "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}";
/// docker truncates the command column to this many characters.
const COMMAND_WIDTH: usize = 20;

pub async fn ps(ctx: &Ctx, args: PsArgs) -> Result<i32, CliError> {
    let listing = Listing::new(args.format.as_deref(), DEFAULT_TABLE)?;
    let last = if args.latest { 1 } else { args.last };
    let request = ListContainersRequest { all: args.all || last > 0, filters: args.filters.clone() };
    let mut client = ctx.client().await?;
    let mut containers = client.list_containers(request).await?.into_inner().containers;
    containers.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
    if last > 0 {
        containers.truncate(usize::try_from(last).unwrap_or(usize::MAX));
    }
    if args.quiet {
        for container in &containers {
            outln!("{}", format::short_id(&container.id, args.no_trunc));
        }
        return Ok(0);
    }
    let now = format::now_unix();
    let rows: Vec<(Value, LabelMethods)> =
        containers.iter().map(|c| (row(c, args.no_trunc, now), LabelMethods(&c.labels))).collect();
    let rows: Vec<(Value, &dyn Methods)> = rows.iter().map(|(value, methods)| (value.clone(), methods as _)).collect();
    out!("{}", listing.render(&header(), &rows)?);
    Ok(0)
}

/// `{{.Label "k"}}`: one label's value.
struct LabelMethods<'a>(&'a HashMap<String, String>);

impl Methods for LabelMethods<'_> {
    fn call(&self, name: &str, args: &[Value]) -> Option<Value> {
        let key = args.first()?.as_str()?;
        (name == "Label").then(|| Value::String(self.0.get(key).cloned().unwrap_or_default()))
    }
}

fn header() -> Value {
    json!({
        "ID": "CONTAINER ID",
        "Image": "IMAGE",
        "Command": "COMMAND",
        "CreatedAt": "CREATED AT",
        "RunningFor": "CREATED",
        "Ports": "PORTS",
        "State": "STATE",
        "Status": "STATUS",
        "Names": "NAMES",
        "Labels": "LABELS",
        "Networks": "NETWORKS",
    })
}

/// One container with docker's field names and formatting.
fn row(container: &ContainerSummary, no_trunc: bool, now: i64) -> Value {
    let command =
        if no_trunc { container.command.clone() } else { format::ellipsis(&container.command, COMMAND_WIDTH) };
    json!({
        "ID": format::short_id(&container.id, no_trunc),
        "Image": container.image,
        "Command": format::go_quote(&command),
        "CreatedAt": format::utc_time(container.created),
        "RunningFor": format::ago(container.created, now),
        "Ports": format::ports(&container.ports),
        "State": container.state,
        "Status": container.status,
        "Names": container.name.trim_start_matches('/'),
        "Labels": labels(&container.labels),
        "Networks": container.network,
    })
}

/// `a=1,b=2`, sorted so the output is stable.
fn labels(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use tote_api::v1::PortBinding;

    use super::*;

    fn summary() -> ContainerSummary {
        ContainerSummary {
            id: "0123456789abcdef0123".into(),
            name: "/web".into(),
            image: "nginx:latest".into(),
            command: "/docker-entrypoint.sh nginx -g 'daemon off;'".into(),
            created: 1000,
            state: "running".into(),
            status: "Up 5 seconds".into(),
            ports: vec![PortBinding {
                host_ip: "127.0.0.1".into(),
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
            }],
            labels: HashMap::from([("tier".to_string(), "web".to_string()), ("app".to_string(), "x".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_table_matches_docker() {
        let container = summary();
        let listing = Listing::new(None, DEFAULT_TABLE).unwrap();
        let methods = LabelMethods(&container.labels);
        let out = listing.render(&header(), &[(row(&container, false, 1005), &methods)]).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "CONTAINER ID   IMAGE          COMMAND                  CREATED         STATUS         PORTS                    NAMES"
        );
        assert_eq!(
            lines[1],
            "0123456789ab   nginx:latest   \"/docker-entrypoint.…\"   5 seconds ago   Up 5 seconds   127.0.0.1:8080->80/tcp   web"
        );
    }

    #[test]
    fn formats_reach_labels() {
        let container = summary();
        let methods = LabelMethods(&container.labels);
        let listing = Listing::new(Some(r#"{{.Names}} {{.Label "tier"}} {{.Labels}}"#), DEFAULT_TABLE).unwrap();
        let out = listing.render(&header(), &[(row(&container, true, 1005), &methods)]).unwrap();
        assert_eq!(out, "web web app=x,tier=web\n");
    }
}
