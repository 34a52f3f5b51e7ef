//! What can go wrong in tote, and the exit code each failure gives (docker's:
//! 125 for a failure of tote itself, 126/127 when the container's command
//! could not run, 1 when some targets of a multi-target command failed).

use std::io;

use tonic::{Code, Status};
use tote_api::{EXIT_CODE_METADATA, HostError, MISSING_IMAGE_METADATA};

use crate::commands::cp::CopyError;
use crate::config::ConfigError;
use crate::template::TemplateError;
use crate::tty::TtyError;

/// A failure of tote or toted, not of the container.
pub const EXIT_TOTE: i32 = 125;
/// Some of the targets of a multi-target command failed.
pub const EXIT_PARTIAL: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Host(#[from] HostError),
    /// toted answered with an error: its message is passed through untouched.
    #[error("Error response from daemon: {}", .0.message())]
    Daemon(#[from] Status),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Tty(#[from] TtyError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// A client-side refusal, worded as docker words it.
    #[error("{0}")]
    Refused(String),
    /// The reply did not make sense (toted and tote disagree on the API).
    #[error("unexpected reply from toted: {0}")]
    Protocol(String),
}

impl CliError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        CliError::Io { what: what.into(), source }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        CliError::Refused(message.into())
    }

    /// The code tote exits with when this error ends it.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Daemon(status) => status_exit_code(status).unwrap_or(EXIT_TOTE),
            _ => EXIT_TOTE,
        }
    }
}

/// The exit code toted attached to a status because the container's command
/// could not run (126: not executable, 127: not found).
pub fn status_exit_code(status: &Status) -> Option<i32> {
    status.metadata().get(EXIT_CODE_METADATA)?.to_str().ok()?.trim().parse().ok()
}

/// The normalised reference of the image `CreateContainer` could not find,
/// when that is why it failed: `run` then pulls it.
pub fn missing_image(status: &Status) -> Option<String> {
    if status.code() != Code::NotFound {
        return None;
    }
    let value = status.metadata().get(MISSING_IMAGE_METADATA)?.to_str().ok()?;
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn with_metadata(code: Code, key: &'static str, value: &'static str) -> Status {
        let mut status = Status::new(code, "boom");
        status.metadata_mut().insert(key, MetadataValue::from_static(value));
        status
    }

    #[test]
    fn daemon_errors_exit_125_unless_the_command_could_not_run() {
        assert_eq!(CliError::Daemon(Status::internal("boom")).exit_code(), 125);
        assert_eq!(CliError::Daemon(with_metadata(Code::NotFound, EXIT_CODE_METADATA, "127")).exit_code(), 127);
        assert_eq!(CliError::Daemon(with_metadata(Code::PermissionDenied, EXIT_CODE_METADATA, "126")).exit_code(), 126);
        assert_eq!(CliError::Daemon(with_metadata(Code::Internal, EXIT_CODE_METADATA, "x")).exit_code(), 125);
        assert_eq!(CliError::refused("the input device is not a TTY").exit_code(), 125);
    }

    #[test]
    fn daemon_messages_are_passed_through() {
        let err = CliError::Daemon(Status::not_found("No such container: web"));
        assert_eq!(err.to_string(), "Error response from daemon: No such container: web");
    }

    #[test]
    fn a_missing_image_is_a_not_found_with_the_reference() {
        let status = with_metadata(Code::NotFound, MISSING_IMAGE_METADATA, "docker.io/library/busybox:latest");
        assert_eq!(missing_image(&status).as_deref(), Some("docker.io/library/busybox:latest"));
        assert_eq!(missing_image(&Status::not_found("No such container")), None);
        let wrong_code = with_metadata(Code::Internal, MISSING_IMAGE_METADATA, "busybox");
        assert_eq!(missing_image(&wrong_code), None);
    }
}
