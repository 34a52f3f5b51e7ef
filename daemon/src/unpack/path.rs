//! Entry paths: validation and normalization, without allocating.

/// Writes the normalized form of the archive path `raw` into `out`:
/// components joined by single `/`, without empty and `.` components (so a
/// trailing `/` goes too). An empty result names the layer root.
///
/// Refused, with the reason: absolute paths, any `..` component, NUL bytes.
pub(crate) fn normalize(raw: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    if raw.contains(&0) {
        return Err("the path contains a NUL byte");
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute paths are not allowed in a layer");
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
    fn refuses_escapes() {
        assert!(norm("/etc/passwd").is_err());
        assert!(norm("//x").is_err());
        assert!(norm("../x").is_err());
        assert!(norm("a/../../x").is_err());
        assert!(norm("a/..").is_err());
        assert!(norm("a/../b").is_err());
        assert!(norm("a\0b").is_err());
    }

    #[test]
    fn splits() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }
}
