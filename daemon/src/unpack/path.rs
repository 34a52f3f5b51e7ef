//! Entry paths: validation and normalization, without allocating.

/// Writes the normalized form of the archive path `raw` into `out`:
/// components joined by single `/`, without empty and `.` components (so
/// leading and trailing `/` go too). An empty result names the layer root.
///
/// A leading `/` names the layer root, as docker, containerd (`RootPath`),
/// CRI-O and podman read it: `umoci insert DIR /` starts its layer with a
/// `/` entry, and tar writers with absolute names (GNU tar `-P`) write
/// `/etc/passwd` for the image's `etc/passwd`. The same holds for hardlink targets, which go
/// through here too, so `/etc/passwd` links to the layer's own file.
///
/// Refused, with the reason: any `..` component (which could climb out of
/// the root), NUL bytes.
pub(crate) fn normalize(raw: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    if raw.contains(&0) {
        return Err("the path contains a NUL byte");
    }
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("paths with a `..` component are not allowed in a layer"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(component);
            }
        }
    }
    Ok(())
}

/// Splits a normalized, non-empty path into its parent (empty for the
/// root) and its last component.
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The archive's spelling of a path, for messages.
pub(crate) fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, &'static str> {
        let mut out = Vec::new();
        normalize(raw.as_bytes(), &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn normalizes_relative_paths() {
        assert_eq!(norm("a/b/c").unwrap(), "a/b/c");
        assert_eq!(norm("./a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(norm("./").unwrap(), "");
        assert_eq!(norm(".").unwrap(), "");
        assert_eq!(norm("").unwrap(), "");
        assert_eq!(norm("...").unwrap(), "...");
        assert_eq!(norm("a/..b/c..").unwrap(), "a/..b/c..");
    }

    #[test]
    fn a_leading_slash_names_the_layer_root() {
        assert_eq!(norm("/").unwrap(), "");
        assert_eq!(norm("//").unwrap(), "");
        assert_eq!(norm("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(norm("//x").unwrap(), "x");
        assert_eq!(norm("/./usr//bin/").unwrap(), "usr/bin");
        assert_eq!(norm("/.wh.x").unwrap(), ".wh.x");
    }

    #[test]
    fn refuses_escapes() {
        assert!(norm("../x").is_err());
        assert!(norm("a/../../x").is_err());
        assert!(norm("a/..").is_err());
        assert!(norm("a/../b").is_err());
        assert!(norm("a\0b").is_err());
        // Absolute or not, `..` stays refused.
        assert!(norm("/..").is_err());
        assert!(norm("/../etc/passwd").is_err());
        assert!(norm("/a/../../x").is_err());
    }

    #[test]
    fn splits() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }
}
