//! `tote inspect`: toted's docker-style JSON documents, printed as docker
//! prints them (a JSON array, 4-space indent) or through `-f TEMPLATE`.

use serde::Serialize;
use serde_json::Value;
use serde_json::ser::PrettyFormatter;
use tonic::Code;
use tote_api::v1::{ContainerRef, ImageRef};

use super::{Client, Ctx};
use crate::args::InspectArgs;
use crate::errors::{CliError, EXIT_PARTIAL};
use crate::output::outln;
use crate::template::Template;

/// The inspect document of a container.
pub async fn inspect_container(client: &mut Client, name: &str) -> Result<Value, CliError> {
    let reply = client.inspect_container(ContainerRef { id: name.to_string() }).await?.into_inner();
    parse_document(&reply.json)
}

async fn inspect_image(client: &mut Client, name: &str) -> Result<Value, CliError> {
    let reply = client.inspect_image(ImageRef { reference: name.to_string() }).await?.into_inner();
    parse_document(&reply.json)
}

fn parse_document(json: &str) -> Result<Value, CliError> {
    serde_json::from_str(json).map_err(|e| CliError::Protocol(format!("inspect document is not JSON: {e}")))
}

pub async fn inspect(ctx: &Ctx, args: InspectArgs) -> Result<i32, CliError> {
    let template = args.format.as_deref().map(Template::parse).transpose()?;
    let mut client = ctx.client().await?;
    let mut documents = Vec::new();
    let mut failures = Vec::new();
    for name in &args.names {
        match lookup(&mut client, name, args.kind.as_deref()).await {
            Ok(document) => documents.push(document),
            Err(error) => failures.push(error),
        }
    }
    match &template {
        Some(template) => {
            for document in &documents {
                outln!("{}", template.render(document)?);
            }
        }
        None => outln!("{}", pretty(&Value::Array(documents))),
    }
    for failure in &failures {
        eprintln!("{failure}");
    }
    Ok(if failures.is_empty() { 0 } else { EXIT_PARTIAL })
}

/// A container or an image, by `--type` or else whichever exists (docker
/// tries containers first).
async fn lookup(client: &mut Client, name: &str, kind: Option<&str>) -> Result<Value, CliError> {
    match kind {
        Some("container") => inspect_container(client, name).await,
        Some(_) => inspect_image(client, name).await,
        None => match inspect_container(client, name).await {
            Err(CliError::Daemon(status)) if status.code() == Code::NotFound => {
                match inspect_image(client, name).await {
                    Err(CliError::Daemon(status)) if status.code() == Code::NotFound => {
                        Err(CliError::refused(format!("Error: No such object: {name}")))
                    }
                    other => other,
                }
            }
            other => other,
        },
    }
}

/// JSON as docker prints it: 4-space indent.
pub fn pretty(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PrettyFormatter::with_indent(b"    "));
    // Serialising a Value into memory cannot fail.
    let _ = value.serialize(&mut serializer);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documents_print_with_four_spaces() {
        let value = json!([{"Id": "abc", "State": {"Running": true}}]);
        assert_eq!(
            pretty(&value),
            "[\n    {\n        \"Id\": \"abc\",\n        \"State\": {\n            \"Running\": true\n        }\n    }\n]"
        );
        assert_eq!(pretty(&json!([])), "[]");
    }
}
