//! The aggregate function's settings, declared once: the Lambda reads them from the environment, `damselfly run aggregate` and `redrive` from the same variables or flags.

use std::time::Duration;

use damselfly_core::Validation;
use damselfly_core::env::{WithLake, duration, show_duration, whole_number};

/// The aggregate function's own settings (the lake aside): each field's variable, flag, default
/// and help, for the Lambda binary ([`Config::from_env`]) and `damselfly` (flattened).
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[group(id = "aggregate-settings")]
pub struct Settings {
    /// Reject samples older than this (to dlq).
    #[arg(long, env = "DAMSELFLY_MAX_PAST", value_parser = duration,
          default_value = show_duration(Validation::default().max_past))]
    pub max_past: Duration,
    /// Reject samples further than this in the future (to dlq).
    #[arg(long, env = "DAMSELFLY_MAX_FUTURE", value_parser = duration,
          default_value = show_duration(Validation::default().max_future))]
    pub max_future: Duration,
    /// Reject records whose value is larger than this many bytes (to dlq).
    #[arg(long, env = "DAMSELFLY_MAX_MESSAGE_BYTES", value_parser = whole_number::<usize>,
          default_value_t = Validation::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// A counter series silent this long leaves its partition's state (its next sample has no
    /// rate), so the state holds the live fleet, not every VM and device ever seen.
    #[arg(long, env = "DAMSELFLY_TAIL_EXPIRY", value_parser = duration,
          default_value = show_duration(DEFAULT_TAIL_EXPIRY))]
    pub tail_expiry: Duration,
    /// Most counter series one partition's state keeps; past it the ones seen longest ago are
    /// forgotten, with a warning (a flood of made-up VMs or devices cannot grow it).
    #[arg(long, env = "DAMSELFLY_MAX_TAIL_SERIES", value_parser = whole_number::<usize>,
          default_value_t = DEFAULT_MAX_TAIL_SERIES)]
    pub max_tail_series: usize,
}

impl Settings {
    /// The function's configuration with these settings, writing to the lake at `lake`.
    pub fn config(&self, lake: &str) -> Config {
        Config {
            lake: lake.to_owned(),
            limits: Validation {
                max_past: self.max_past,
                max_future: self.max_future,
                max_message_bytes: self.max_message_bytes,
            },
            tail_expiry: self.tail_expiry,
            max_tail_series: self.max_tail_series,
        }
    }
}

/// Configuration of the aggregate function, as its handler takes it.
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
        let env: WithLake<Settings> = damselfly_core::env::from_lookup(get)?;
        Ok(env.settings.config(&env.lake))
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
        let c = cfg(&[
            ("LAKE", "s3://b/l"),
            ("DAMSELFLY_TAIL_EXPIRY", "6h"),
            ("DAMSELFLY_MAX_PAST", "30d"),
            ("DAMSELFLY_MAX_FUTURE", "1m"),
            ("DAMSELFLY_MAX_MESSAGE_BYTES", "2048"),
            ("DAMSELFLY_MAX_TAIL_SERIES", "10"),
        ])
        .unwrap();
        assert_eq!(c.tail_expiry, Duration::from_secs(6 * 3600));
        assert_eq!(
            c.limits,
            Validation {
                max_past: Duration::from_secs(30 * 86_400),
                max_future: Duration::from_secs(60),
                max_message_bytes: 2048,
            }
        );
        assert_eq!(c.max_tail_series, 10);
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
        let e = cfg(&[("LAKE", "/l"), ("DAMSELFLY_MAX_TAIL_SERIES", "-1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("DAMSELFLY_MAX_TAIL_SERIES=\"-1\" is invalid")
                && e.contains("whole number"),
            "{e}"
        );
    }
}
