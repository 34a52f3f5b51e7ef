//! `-v` specs, parsed as docker parses them on Linux:
//! `/host:/ctr[:ro|rw]` is a bind mount, `name:/ctr[:ro|rw]` a named volume
//! and `/ctr` alone an anonymous volume.

use tote_api::v1::Mount;

pub const BIND: &str = "bind";
pub const VOLUME: &str = "volume";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeSpecError {
    #[error("invalid volume spec {0:?}")]
    Malformed(String),
    #[error("invalid volume spec {spec:?}: the host path {source_path:?} is relative; use an absolute path")]
    RelativeHostPath { spec: String, source_path: String },
    #[error("invalid volume spec {spec:?}: the container path {destination:?} is not absolute")]
    RelativeDestination { spec: String, destination: String },
    #[error("invalid volume spec {0:?}: the container path cannot be '/'")]
    RootDestination(String),
    #[error("invalid volume spec {spec:?}: unknown mode {mode:?} (tote supports ro and rw)")]
    Mode { spec: String, mode: String },
}

/// One `-v` value as the mount it asks for.
pub fn parse_volume(spec: &str) -> Result<Mount, VolumeSpecError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, destination, mode) = match parts.as_slice() {
        [destination] => ("", *destination, None),
        // `/ctr:ro` is not a volume: a mode needs a source (docker refuses it too).
        [_, second] if is_mode(second) => return Err(VolumeSpecError::Malformed(spec.to_string())),
        [source, destination] => (*source, *destination, None),
        [source, destination, mode] => (*source, *destination, Some(*mode)),
        _ => return Err(VolumeSpecError::Malformed(spec.to_string())),
    };
    check_destination(spec, destination)?;
    let read_only = parse_mode(spec, mode)?;
    let kind = mount_kind(spec, source)?;
    Ok(Mount { r#type: kind.to_string(), source: source.to_string(), destination: destination.to_string(), read_only })
}

fn is_mode(text: &str) -> bool {
    matches!(text, "ro" | "rw")
}

fn check_destination(spec: &str, destination: &str) -> Result<(), VolumeSpecError> {
    if destination.is_empty() {
        return Err(VolumeSpecError::Malformed(spec.to_string()));
    }
    if !destination.starts_with('/') {
        return Err(VolumeSpecError::RelativeDestination {
            spec: spec.to_string(),
            destination: destination.to_string(),
        });
    }
    if destination.trim_end_matches('/').is_empty() {
        return Err(VolumeSpecError::RootDestination(spec.to_string()));
    }
    Ok(())
}

/// Whether the mode makes the mount read-only; rw is the default.
fn parse_mode(spec: &str, mode: Option<&str>) -> Result<bool, VolumeSpecError> {
    match mode {
        None | Some("rw") => Ok(false),
        Some("ro") => Ok(true),
        Some(other) => Err(VolumeSpecError::Mode { spec: spec.to_string(), mode: other.to_string() }),
    }
}

/// An absolute source is a host path; a bare name is a volume; anything
/// else with a slash or a leading dot was meant as a relative host path,
/// which docker refuses rather than guessing the directory.
fn mount_kind(spec: &str, source: &str) -> Result<&'static str, VolumeSpecError> {
    if source.starts_with('/') {
        return Ok(BIND);
    }
    if source.contains('/') || source.starts_with('.') || source == "~" || source.starts_with("~/") {
        return Err(VolumeSpecError::RelativeHostPath { spec: spec.to_string(), source_path: source.to_string() });
    }
    Ok(VOLUME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, destination: &str, read_only: bool) -> Mount {
        Mount { r#type: kind.into(), source: source.into(), destination: destination.into(), read_only }
    }

    #[test]
    fn binds_volumes_and_anonymous_volumes() {
        assert_eq!(parse_volume("/srv/data:/data").unwrap(), mount(BIND, "/srv/data", "/data", false));
        assert_eq!(parse_volume("/srv/data:/data:ro").unwrap(), mount(BIND, "/srv/data", "/data", true));
        assert_eq!(parse_volume("/srv/data:/data:rw").unwrap(), mount(BIND, "/srv/data", "/data", false));
        assert_eq!(parse_volume("cache:/var/cache").unwrap(), mount(VOLUME, "cache", "/var/cache", false));
        assert_eq!(parse_volume("cache:/var/cache:ro").unwrap(), mount(VOLUME, "cache", "/var/cache", true));
        assert_eq!(parse_volume("/scratch").unwrap(), mount(VOLUME, "", "/scratch", false));
    }

    #[test]
    fn relative_host_paths_are_refused() {
        for spec in ["./data:/data", "data/sub:/data", "../x:/x", "~/x:/x"] {
            let err = parse_volume(spec).unwrap_err();
            assert!(matches!(err, VolumeSpecError::RelativeHostPath { .. }), "{spec}: {err}");
            assert!(err.to_string().starts_with("invalid volume spec"), "{err}");
        }
    }

    #[test]
    fn malformed_specs_are_refused() {
        assert!(matches!(parse_volume("/data:ro"), Err(VolumeSpecError::Malformed(_))));
        assert!(matches!(parse_volume("a:b:c:d"), Err(VolumeSpecError::Malformed(_))));
        assert!(matches!(parse_volume(""), Err(VolumeSpecError::Malformed(_))));
        assert!(matches!(parse_volume("/x:"), Err(VolumeSpecError::Malformed(_))));
        assert!(matches!(parse_volume("data"), Err(VolumeSpecError::RelativeDestination { .. })));
        assert!(matches!(parse_volume("/x:data"), Err(VolumeSpecError::RelativeDestination { .. })));
        assert!(matches!(parse_volume("/x:/"), Err(VolumeSpecError::RootDestination(_))));
        assert!(matches!(parse_volume("/x:/y:z"), Err(VolumeSpecError::Mode { .. })));
    }
}
