//! The aggregate function's configuration, read from the environment as Lambda provides it.

use std::time::Duration;

use damselfly_core::Validation;

/// Settings of the aggregate function.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Lake URL (`LAKE`): a local path, `file:///...` or `s3://bucket/prefix`.
    pub lake: String,
    /// Record validation limits (`DAMSELFLY_MAX_PAST`, `DAMSELFLY_MAX_FUTURE`, `DAMSELFLY_MAX_MESSAGE_BYTES`).
    pub limits: Validation,
    /// How long a counter series may stay silent before its last sample leaves the partition's
    /// state (`DAMSELFLY_TAIL_EXPIRY`, default 1h): the state holds the live fleet, not every VM
    /// and device ever seen. A series back after longer has no rate for its first interval.
    pub tail_expiry: Duration,
    /// Most counter series one partition's state keeps (`DAMSELFLY_MAX_TAIL_SERIES`, default
    /// 250,000): past it, the series seen longest ago are forgotten (and it is logged), so a flood
    /// of made-up VMs or devices cannot grow the state without bound.
    pub max_tail_series: usize,
}

/// The most counter series a partition's state keeps, by default.
pub const DEFAULT_MAX_TAIL_SERIES: usize = 250_000;

/// How long a silent counter series keeps its last sample, by default.
pub const DEFAULT_TAIL_EXPIRY: Duration = Duration::from_secs(3600);

/// A configuration problem, naming the variable and how to fix it.
pub use damselfly_core::env::EnvError as ConfigError;

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through a lookup function (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let lake = damselfly_core::env::lake(get("LAKE"))?;
        let defaults = Validation::default();
        let duration = |var: &'static str, default: Duration| {
            damselfly_core::env::duration(
                var,
                get(var),
                default,
                "use a duration such as 90s, 10m, 7d",
            )
        };
        let max_message_bytes = match get("DAMSELFLY_MAX_MESSAGE_BYTES") {
            None => defaults.max_message_bytes,
            Some(v) => v
                .parse()
                .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                    var: "DAMSELFLY_MAX_MESSAGE_BYTES",
                    value: v,
                    why: e.to_string(),
                    fix: "use a whole number of bytes, e.g. 1048576",
                })?,
        };
        Ok(Self {
            lake,
            tail_expiry: duration("DAMSELFLY_TAIL_EXPIRY", DEFAULT_TAIL_EXPIRY)?,
            max_tail_series: match get("DAMSELFLY_MAX_TAIL_SERIES") {
                None => DEFAULT_MAX_TAIL_SERIES,
                Some(v) => {
                    v.parse()
                        .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                            var: "DAMSELFLY_MAX_TAIL_SERIES",
                            value: v,
                            why: e.to_string(),
                            fix: "use a whole number of series, e.g. 250000",
                        })?
                }
            },
            limits: Validation {
                max_past: duration("DAMSELFLY_MAX_PAST", defaults.max_past)?,
                max_future: duration("DAMSELFLY_MAX_FUTURE", defaults.max_future)?,
                max_message_bytes,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply() {
        let c = cfg(&[("LAKE", "s3://b/l")]).unwrap();
        assert_eq!(c.lake, "s3://b/l");
        assert_eq!(c.limits, Validation::default());
        assert_eq!(c.tail_expiry, DEFAULT_TAIL_EXPIRY);
        assert_eq!(c.max_tail_series, DEFAULT_MAX_TAIL_SERIES);
        let c = cfg(&[("LAKE", "s3://b/l"), ("DAMSELFLY_TAIL_EXPIRY", "6h")]).unwrap();
        assert_eq!(c.tail_expiry, Duration::from_secs(6 * 3600));
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        let e = cfg(&[]).unwrap_err().to_string();
        assert!(
            e.starts_with("LAKE is not set: set it to the lake URL"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("DAMSELFLY_MAX_PAST", "forever")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("DAMSELFLY_MAX_PAST=\"forever\" is invalid") && e.contains("such as 90s"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("DAMSELFLY_MAX_MESSAGE_BYTES", "1MB")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("DAMSELFLY_MAX_MESSAGE_BYTES") && e.contains("whole number"),
            "{e}"
        );
    }
}
