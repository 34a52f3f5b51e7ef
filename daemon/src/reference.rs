//! Image references, normalised as docker does: `busybox` is
//! `docker.io/library/busybox:latest`, `ghcr.io/a/b@sha256:…` keeps its
//! digest, a registry with a port is recognised by its `:` or `.`.
//!
//! Parsed here rather than by `oci_client::Reference`'s `FromStr`: that one
//! matches a regular expression whose Unicode `\w{0,127}` tag class compiles
//! to ~13 MiB that stay allocated for the life of the process, nearly
//! tripling toted's memory at its first `run`. The grammar (distribution's
//! `reference` package) is small enough to check by hand, and doing so lets
//! every error say which part is wrong.

use oci_client::Reference;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

/// Parses and normalises `input`: `[registry[:port]/]path[:tag][@digest]`.
pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
    let err = |reason: String| ReferenceError { input: input.to_string(), reason };
    if input.trim() != input || input.is_empty() {
        return Err(err("it is empty or has surrounding whitespace".into()));
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) => (rest, Some(check_digest(digest).map_err(err)?)),
        None => (input, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a port.
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if !rest[colon..].contains('/') => {
            (&rest[..colon], Some(check_tag(&rest[colon + 1..]).map_err(err)?))
        }
        _ => (rest, None),
    };
    let (registry, repository) = split_registry(name).map_err(err)?;
    if repository.len() > MAX_NAME_LEN {
        return Err(err(format!("the repository name is longer than {MAX_NAME_LEN} characters")));
    }
    Ok(match (tag, digest) {
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or(DEFAULT_TAG).to_string()),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_string()),
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_string(), digest.to_string())
        }
    })
}

/// The registry and the repository path of `name`, docker's way: the first
/// component is a registry only if it has a '.' or a ':' or is `localhost`
/// (and something follows it); Docker Hub's official images live under
/// `library/`.
fn split_registry(name: &str) -> Result<(String, String), String> {
    let (registry, path) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            check_registry(first)?;
            (first, path)
        }
        _ => (DOCKER_HUB, name),
    };
    for component in path.split('/') {
        check_path_component(component)?;
    }
    let registry = if registry == DOCKER_HUB_LEGACY { DOCKER_HUB } else { registry };
    let path = if registry == DOCKER_HUB && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{path}")
    } else {
        path.to_string()
    };
    Ok((registry.to_string(), path))
}

/// `host[:port]`, the host being dot-separated labels of letters, digits
/// and inner '-'.
fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!("registry host {host:?} is not a host name or IPv4 address"));
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("registry port {port:?} is not a number"));
    }
    Ok(())
}

/// One '/'-separated part of a repository path: lowercase letters and
/// digits, joined by one '.', one or two '_', or any number of '-'.
fn check_path_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("the repository name has an empty path component".into());
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository names must be lowercase ({component:?})"));
    }
    let bad =
        || format!("{component:?} is not a repository path component: use a-z, 0-9 and inner '.', '_', '__' or '-'");
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    // Between two runs of letters and digits: ".", "_", "__" or "-"*.
    for separator in component.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()).filter(|s| !s.is_empty()) {
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(dashes || matches!(separator, "." | "_" | "__")) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Letters, digits, '_', '.' and '-', not starting with '.' or '-', at
/// most 128 characters.
fn check_tag(tag: &str) -> Result<&str, String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = tag.bytes().next().is_some_and(word) && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if !valid {
        return Err(format!(
            "tag {tag:?} is not valid: use letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("the tag is longer than {MAX_TAG_LEN} characters"));
    }
    Ok(tag)
}

/// `algorithm:hex`, with the hex as long as the algorithm's output.
fn check_digest(digest: &str) -> Result<&str, String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} is not algorithm:hex"));
    };
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("digest algorithm {algorithm:?} is not supported (sha256, sha384, sha512)")),
    };
    if hex.len() != want || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("digest {digest:?} is not {algorithm} followed by {want} hex digits"));
    }
    Ok(digest)
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
    fn bad_references_say_which_part_is_wrong() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for (bad, why) in [
            ("", "empty"),
            (" busybox", "whitespace"),
            ("Busybox", "lowercase"),
            ("busy box", "not a repository path component"),
            ("busybox:", "tag \"\" is not valid"),
            ("busybox:tag with space", "tag \"tag with space\""),
            ("busybox:.hidden", "not starting with"),
            (&format!("busybox:{}", "t".repeat(129)), "longer than 128"),
            ("busybox@sha256:abc", "64 hex digits"),
            (&format!("busybox@md5:{sha}"), "\"md5\" is not supported"),
            ("busybox@e3b0c442", "not algorithm:hex"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("-a", "not a repository path component"),
            ("a._b", "not a repository path component"),
            ("a___b", "not a repository path component"),
            ("host:abc/x", "registry port \"abc\""),
            ("bad_host.io/x", "registry host \"bad_host.io\""),
            ("-bad.io/x", "registry host"),
            (&format!("r.io/{}", "a".repeat(256)), "longer than 255"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid image reference") && err.contains(why), "{bad:?}: {err}");
        }
    }

    /// The same answers as the distribution grammar's regular expression
    /// (oci_client's own parser) on references it accepts.
    #[test]
    fn valid_references_parse_as_the_distribution_grammar_does() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for input in [
            "busybox".to_string(),
            "a__b/c---d/e.f_g:V1.2-rc_3".to_string(),
            "localhost:5000".to_string(),
            "localhost:5000/x".to_string(),
            "Reg-1.Example.COM:443/team/app:1".to_string(),
            format!("busybox:1.36@sha256:{sha}"),
            format!("127.0.0.1:5000/x@sha256:{sha}"),
            format!("r.io/x:{}", "t".repeat(128)),
        ] {
            let ours = parse(&input).unwrap();
            let theirs: Reference = input.parse().unwrap();
            assert_eq!(
                (ours.registry(), ours.repository(), ours.tag(), ours.digest()),
                (theirs.registry(), theirs.repository(), theirs.tag(), theirs.digest()),
                "{input}"
            );
        }
    }
}
