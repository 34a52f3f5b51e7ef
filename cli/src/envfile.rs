//! Environment variables as docker takes them: `-e KEY=value`, `-e KEY`
//! (copied from tote's own environment, skipped when unset) and
//! `--env-file` files in docker's format.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("cannot read env file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("env file {path} contains invalid utf8 bytes at line {line}")]
    Utf8 { path: PathBuf, line: usize },
    #[error("invalid env file {path}: variable '{variable}' contains whitespaces")]
    Whitespace { path: PathBuf, variable: String },
    #[error("invalid env file {path}: no variable name on line '{line}'")]
    NoName { path: PathBuf, line: String },
    #[error("invalid environment variable: {0}")]
    Invalid(String),
}

/// `KEY=value` as given; `KEY` alone as `KEY=<tote's value>`, or nothing
/// when tote's environment has no such variable.
pub fn resolve(entry: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, EnvFileError> {
    let name = entry.split_once('=').map_or(entry, |(name, _)| name);
    if name.is_empty() {
        return Err(EnvFileError::Invalid(entry.to_string()));
    }
    if entry.contains('=') {
        return Ok(Some(entry.to_string()));
    }
    Ok(lookup(name).map(|value| format!("{name}={value}")))
}

/// The variables of an env file, in order.
pub fn read(path: &Path, lookup: &impl Fn(&str) -> Option<String>) -> Result<Vec<String>, EnvFileError> {
    let bytes = std::fs::read(path).map_err(|source| EnvFileError::Read { path: path.to_path_buf(), source })?;
    parse(path, &bytes, lookup)
}

/// docker's rules: leading whitespace is dropped, blank lines and `#` lines
/// are skipped, a value is kept verbatim, a name may not contain whitespace.
pub fn parse(path: &Path, bytes: &[u8], lookup: &impl Fn(&str) -> Option<String>) -> Result<Vec<String>, EnvFileError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut variables = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line =
            std::str::from_utf8(raw).map_err(|_| EnvFileError::Utf8 { path: path.to_path_buf(), line: index + 1 })?;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (line, None),
        };
        if name.is_empty() {
            return Err(EnvFileError::NoName { path: path.to_path_buf(), line: line.to_string() });
        }
        if name.chars().any(char::is_whitespace) {
            return Err(EnvFileError::Whitespace { path: path.to_path_buf(), variable: name.to_string() });
        }
        match value {
            Some(value) => variables.push(format!("{name}={value}")),
            None => variables.extend(lookup(name).map(|value| format!("{name}={value}"))),
        }
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "HOME").then(|| "/root".to_string())
    }

    fn parse_str(text: &str) -> Result<Vec<String>, EnvFileError> {
        parse(Path::new("test.env"), text.as_bytes(), &lookup)
    }

    #[test]
    fn env_flags_copy_from_the_client_environment() {
        assert_eq!(resolve("A=1", &lookup).unwrap().as_deref(), Some("A=1"));
        assert_eq!(resolve("A=", &lookup).unwrap().as_deref(), Some("A="));
        assert_eq!(resolve("HOME", &lookup).unwrap().as_deref(), Some("HOME=/root"));
        assert_eq!(resolve("UNSET", &lookup).unwrap(), None);
        assert!(resolve("=x", &lookup).is_err());
    }

    #[test]
    fn env_files_follow_docker() {
        let text = "\u{feff}# a comment\n\n  A=1\nB=x \nC=has=equals\r\nHOME\nUNSET\n   # indented comment\nD=\n";
        assert_eq!(parse_str(text).unwrap(), ["A=1", "B=x ", "C=has=equals", "HOME=/root", "D="]);
    }

    #[test]
    fn env_file_names_may_not_hold_spaces() {
        let err = parse_str("A B=1\n").unwrap_err();
        assert_eq!(err.to_string(), "invalid env file test.env: variable 'A B' contains whitespaces");
        assert!(matches!(parse_str("B =1\n").unwrap_err(), EnvFileError::Whitespace { .. }));
        assert!(matches!(parse_str("=1\n").unwrap_err(), EnvFileError::NoName { .. }));
        assert!(matches!(parse(Path::new("x"), b"A=\xff\n", &lookup).unwrap_err(), EnvFileError::Utf8 { line: 1, .. }));
    }
}
