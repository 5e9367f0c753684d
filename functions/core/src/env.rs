//! Function settings from environment variables (as Lambda provides them): the shared errors and parsers.

use std::time::Duration;

/// A configuration problem, naming the variable and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    /// A required variable is not set.
    #[error("{var} is not set: {fix}")]
    Missing {
        /// The environment variable.
        var: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// A variable is set to something unusable.
    #[error("{var}={value:?} is invalid ({why}): {fix}")]
    Invalid {
        /// The environment variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
        /// How to fix it.
        fix: &'static str,
    },
}

/// The lake URL from `LAKE`, which every function needs.
pub fn lake(value: Option<String>) -> Result<String, EnvError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or(EnvError::Missing {
            var: "LAKE",
            fix: "set it to the lake URL, e.g. s3://my-bucket/lake or /var/lib/damselfly/lake",
        })
}

/// A duration variable (`90s`, `10m`, `7d`), or `default` when it is not set.
pub fn duration(
    var: &'static str,
    value: Option<String>,
    default: Duration,
    fix: &'static str,
) -> Result<Duration, EnvError> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(&v).map_err(|e| EnvError::Invalid {
            var,
            value: v,
            why: e.to_string(),
            fix,
        }),
    }
}

/// Parses a byte size: `64MiB`, `512 KiB`, `1GiB`, `500MB` or a plain number of bytes (the
/// `bytesize` crate's syntax: binary units with `i`, decimal ones without).
pub fn parse_byte_size(text: &str) -> Option<u64> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .ok()
        .map(|b| b.as_u64())
}

/// A byte-size variable (`64MiB`, `512KiB`, a number of bytes), or `default` when it is not set.
pub fn byte_size(
    var: &'static str,
    value: Option<String>,
    default: u64,
    fix: &'static str,
) -> Result<u64, EnvError> {
    match value {
        None => Ok(default),
        Some(v) => parse_byte_size(&v).ok_or_else(|| EnvError::Invalid {
            var,
            value: v,
            why: "not a byte size".into(),
            fix,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_units_or_without() {
        assert_eq!(parse_byte_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_byte_size(" 512 KiB "), Some(512 << 10));
        assert_eq!(parse_byte_size("4096"), Some(4096));
        assert_eq!(parse_byte_size("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_byte_size("lots"), None);
        assert_eq!(parse_byte_size("12 parsecs"), None);
        let e = byte_size("X", Some("big".into()), 1, "use e.g. 64MiB").unwrap_err();
        assert_eq!(
            e.to_string(),
            "X=\"big\" is invalid (not a byte size): use e.g. 64MiB"
        );
        assert_eq!(byte_size("X", None, 7, "").unwrap(), 7);
    }
}
