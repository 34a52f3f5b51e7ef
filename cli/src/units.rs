//! docker's client-side units: memory sizes (`64m`, `1.5g`; binary multiples,
//! as docker's `RAMInBytes`) and `--cpus` decimals as nano-CPUs.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid size: '{0}'")]
    Size(String),
    #[error("invalid value '{0}' for cpus: a decimal number of CPUs, e.g. 1.5")]
    Cpus(String),
    #[error("value '{0}' is too precise for cpus: at most 9 decimal places")]
    CpusTooPrecise(String),
}

/// A memory size in bytes: digits (with an optional fraction), an optional
/// space, then an optional unit `b k m g t p` with optional `i` and `b`.
pub fn parse_memory(value: &str) -> Result<i64, UnitError> {
    let invalid = || UnitError::Size(value.to_string());
    let digits_end = value.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let valid_number =
        !number.is_empty() && !number.starts_with('.') && !number.ends_with('.') && number.matches('.').count() <= 1;
    if !valid_number {
        return Err(invalid());
    }
    let multiplier = unit_multiplier(suffix.strip_prefix(' ').unwrap_or(suffix)).ok_or_else(invalid)?;
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(invalid());
    }
    // Truncation is what docker does with fractional sizes.
    #[allow(clippy::cast_possible_truncation)]
    Ok(bytes as i64)
}

/// `--memory-swap`: a size, or -1 for unlimited swap.
pub fn parse_memory_swap(value: &str) -> Result<i64, UnitError> {
    if value == "-1" { Ok(-1) } else { parse_memory(value) }
}

/// The multiplier of a unit suffix such as `m`, `MiB`, `kb`, `B` or nothing.
fn unit_multiplier(suffix: &str) -> Option<f64> {
    let lower = suffix.to_ascii_lowercase();
    let mut rest = lower.as_str();
    let mut power = 0;
    if let Some(first) = rest.chars().next()
        && let Some(index) = "kmgtp".find(first)
    {
        power = index + 1;
        rest = &rest[1..];
    }
    rest = rest.strip_prefix('i').unwrap_or(rest);
    rest = rest.strip_prefix('b').unwrap_or(rest);
    if !rest.is_empty() {
        return None;
    }
    Some(1024f64.powi(i32::try_from(power).ok()?))
}

/// `--cpus 1.5` as nano-CPUs (1_500_000_000), exactly: the decimal is
/// parsed as digits, not through a float, so `0.1` is 100_000_000.
pub fn parse_nano_cpus(value: &str) -> Result<i64, UnitError> {
    let invalid = || UnitError::Cpus(value.to_string());
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(invalid());
    }
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !all_digits(whole) || !all_digits(fraction) {
        return Err(invalid());
    }
    if fraction.len() > 9 {
        return Err(UnitError::CpusTooPrecise(value.to_string()));
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
    let fraction: i64 = format!("{fraction:0<9}").parse().map_err(|_| invalid())?;
    whole.checked_mul(1_000_000_000).and_then(|nanos| nanos.checked_add(fraction)).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_use_binary_multiples() {
        assert_eq!(parse_memory("64m"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_memory("64M"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_memory("64mb"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_memory("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
        assert_eq!(parse_memory("512k"), Ok(512 * 1024));
        assert_eq!(parse_memory("100"), Ok(100));
        assert_eq!(parse_memory("100b"), Ok(100));
        assert_eq!(parse_memory("2 t"), Ok(2 << 40));
    }

    #[test]
    fn bad_memory_sizes_are_refused() {
        for bad in ["", "m", "64x", "-1", "1.2.3", ".5m", "5.m", "64 mm", "64mib b"] {
            assert_eq!(parse_memory(bad), Err(UnitError::Size(bad.to_string())), "{bad}");
        }
        assert_eq!(parse_memory("64x").unwrap_err().to_string(), "invalid size: '64x'");
    }

    #[test]
    fn swap_may_be_unlimited() {
        assert_eq!(parse_memory_swap("-1"), Ok(-1));
        assert_eq!(parse_memory_swap("1g"), Ok(1 << 30));
        assert!(parse_memory_swap("-2").is_err());
    }

    #[test]
    fn cpus_are_exact_nano_cpus() {
        assert_eq!(parse_nano_cpus("1"), Ok(1_000_000_000));
        assert_eq!(parse_nano_cpus("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_nano_cpus("0.1"), Ok(100_000_000));
        assert_eq!(parse_nano_cpus(".25"), Ok(250_000_000));
        assert_eq!(parse_nano_cpus("2."), Ok(2_000_000_000));
        assert_eq!(parse_nano_cpus("0.000000001"), Ok(1));
        assert_eq!(parse_nano_cpus("0.0000000001"), Err(UnitError::CpusTooPrecise("0.0000000001".into())));
        for bad in ["", ".", "abc", "-1", "1,5", "1.5.2"] {
            assert!(parse_nano_cpus(bad).is_err(), "{bad}");
        }
    }
}
