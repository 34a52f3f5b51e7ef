//! Image references, normalised as docker does: `busybox` is
//! `docker.io/library/busybox:latest`, `ghcr.io/a/b@sha256:…` keeps its
//! digest, a registry with a port is recognised by its `:` or `.`.

use oci_client::Reference;

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

/// Parses and normalises `input`.
pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
    let err = |reason: String| ReferenceError { input: input.to_string(), reason };
    if input.trim() != input || input.is_empty() {
        return Err(err("it is empty or has surrounding whitespace".into()));
    }
    let reference: Reference = input.parse().map_err(|e: oci_client::ParseError| err(e.to_string()))?;
    // The distribution grammar leaves upper case out of repository names;
    // the parser lets some through, docker refuses them.
    if reference.repository().chars().any(|c| c.is_ascii_uppercase()) {
        return Err(err("repository names must be lowercase".into()));
    }
    Ok(reference)
}

/// The canonical name images are stored under: `registry/repository:tag`,
/// or `registry/repository@digest` for a digest-only reference.
pub fn canonical(reference: &Reference) -> String {
    reference.whole()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_docker() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("127.0.0.1:5000/test/img", "127.0.0.1:5000/test/img:latest"),
            ("localhost/img", "localhost/img:latest"),
        ] {
            assert_eq!(canonical(&parse(input).unwrap()), want, "{input}");
        }
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = parse(&format!("busybox@{digest}")).unwrap();
        assert_eq!(r.digest(), Some(digest));
        assert_eq!(canonical(&r), format!("docker.io/library/busybox@{digest}"));
    }

    #[test]
    fn bad_references_say_why() {
        for bad in
            ["", " busybox", "Busybox", "busy box", "busybox:", "busybox@sha256:abc", "a//b", "busybox:tag with space"]
        {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid image reference"), "{bad:?}: {err}");
        }
    }
}
