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
