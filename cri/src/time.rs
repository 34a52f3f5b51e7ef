//! The CRI's times: nanoseconds since the epoch.

/// An RFC 3339 time as the engine records it, in nanoseconds; 0 when
/// there is none.
pub(crate) fn rfc3339_nanos(text: &str) -> i64 {
    toted::engine::parse_rfc3339(text).map_or(0, |(seconds, nanos)| {
        i64::try_from(seconds).unwrap_or(i64::MAX / 1_000_000_000) * 1_000_000_000 + i64::from(nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_since_the_epoch() {
        assert_eq!(rfc3339_nanos("1970-01-01T00:00:01.5Z"), 1_500_000_000);
        assert_eq!(rfc3339_nanos(""), 0);
    }
}
