//! `tote stats`: docker's resource table, redrawn as samples arrive, or one
//! sample per container with `--no-stream`.

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use tote_api::v1::{Empty, ListContainersRequest, StatsReply, StatsRequest};

use super::{Client, Ctx};
use crate::args::StatsArgs;
use crate::errors::{CliError, EXIT_PARTIAL};
use crate::format;
use crate::output::out;

/// How often the streaming table is redrawn at most.
const REDRAW_EVERY: Duration = Duration::from_millis(500);
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

enum Sample {
    Reply(usize, StatsReply),
    Failed(Status),
    Done,
}

pub async fn stats(ctx: &Ctx, args: StatsArgs) -> Result<i32, CliError> {
    let mut client = ctx.client().await?;
    let targets = targets(&mut client, &args).await?;
    // A container without a limit is shown against the host's memory.
    let host_memory = client.info(Empty {}).await.map(|reply| reply.into_inner().memory).unwrap_or(0);
    let mut samples = spawn_streams(&client, &targets, args.no_stream);
    let mut latest: Vec<Option<StatsReply>> = vec![None; targets.len()];
    let mut failed = false;
    let mut open = targets.len();
    let mut dirty = false;
    let mut redraw = tokio::time::interval(REDRAW_EVERY);
    while open > 0 {
        tokio::select! {
            sample = samples.recv() => match sample {
                Some(Sample::Reply(index, reply)) => {
                    latest[index] = Some(reply);
                    dirty = true;
                }
                Some(Sample::Failed(status)) => {
                    eprintln!("{}", CliError::Daemon(status));
                    failed = true;
                }
                Some(Sample::Done) => open -= 1,
                None => break,
            },
            _ = redraw.tick(), if !args.no_stream && dirty => {
                out!("{CLEAR_SCREEN}{}", table(&latest, host_memory, args.no_trunc));
                dirty = false;
            }
        }
    }
    out!("{}", table(&latest, host_memory, args.no_trunc));
    Ok(if failed { EXIT_PARTIAL } else { 0 })
}

/// The named containers, else the running ones (all with `-a`).
async fn targets(client: &mut Client, args: &StatsArgs) -> Result<Vec<String>, CliError> {
    if !args.containers.is_empty() {
        return Ok(args.containers.clone());
    }
    let request = ListContainersRequest { all: args.all, filters: Vec::new() };
    let containers = client.list_containers(request).await?.into_inner().containers;
    Ok(containers.into_iter().map(|c| c.id).collect())
}

/// One stats stream per container, merged into one channel.
fn spawn_streams(client: &Client, targets: &[String], no_stream: bool) -> mpsc::Receiver<Sample> {
    let (sender, receiver) = mpsc::channel(64);
    for (index, target) in targets.iter().enumerate() {
        let mut client = client.clone();
        let sender = sender.clone();
        let request = StatsRequest { id: target.clone(), no_stream };
        tokio::spawn(async move {
            let result = async {
                let mut stream = client.container_stats(request).await?.into_inner();
                while let Some(reply) = stream.message().await? {
                    if sender.send(Sample::Reply(index, reply)).await.is_err() {
                        break;
                    }
                }
                Ok::<(), Status>(())
            }
            .await;
            if let Err(status) = result {
                let _ = sender.send(Sample::Failed(status)).await;
            }
            let _ = sender.send(Sample::Done).await;
        });
    }
    receiver
}

fn table(samples: &[Option<StatsReply>], host_memory: u64, no_trunc: bool) -> String {
    let mut text = String::from("CONTAINER ID\tNAME\tCPU %\tMEM USAGE / LIMIT\tMEM %\tNET I/O\tPIDS\n");
    for sample in samples.iter().flatten() {
        text.push_str(&row(sample, host_memory, no_trunc));
        text.push('\n');
    }
    format::tabwrite(&text)
}

fn row(sample: &StatsReply, host_memory: u64, no_trunc: bool) -> String {
    let limit = if sample.memory_limit == 0 { host_memory } else { sample.memory_limit };
    let memory_percent = if limit == 0 { 0.0 } else { sample.memory_usage as f64 / limit as f64 * 100.0 };
    [
        format::short_id(&sample.id, no_trunc),
        sample.name.trim_start_matches('/').to_string(),
        format!("{:.2}%", sample.cpu_percent),
        format!("{} / {}", format::binary_size(sample.memory_usage), format::binary_size(limit)),
        format!("{memory_percent:.2}%"),
        format!("{} / {}", format::human_size(sample.net_rx), format::human_size(sample.net_tx)),
        sample.pids.to_string(),
    ]
    .join("\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_use_docker_units() {
        let sample = StatsReply {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            cpu_percent: 1.234,
            memory_usage: 1_572_864,
            memory_limit: 0,
            pids: 3,
            net_rx: 23_400,
            net_tx: 0,
        };
        assert_eq!(
            row(&sample, 2_087_354_368, false),
            "0123456789ab\tweb\t1.23%\t1.5MiB / 1.944GiB\t0.08%\t23.4kB / 0B\t3"
        );
        let out = table(&[Some(sample), None], 2_087_354_368, false);
        assert!(out.starts_with("CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   "), "{out}");
    }
}
