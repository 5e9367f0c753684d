//! The compaction function's settings, declared once: the Lambda reads them from the environment, `damselfly compact` from the same variables or flags.

use std::time::Duration;

use damselfly_core::compact::{
    DEFAULT_GRACE, DEFAULT_LOOKBACK, DEFAULT_MERGE_MEMORY, MIN_MERGE_MEMORY, Retention,
};
use damselfly_core::env::{
    Problem, WithLake, duration, parse_byte_size, show_byte_size, show_duration,
};

/// The compaction function's own settings (the lake aside): each field's variable, flag, default
/// and help, for the Lambda binary ([`Config::from_env`]) and `damselfly compact` (flattened).
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[group(id = "compact-settings")]
pub struct Settings {
    /// Compact an hour once it ended this long ago (late batches after that start a new generation).
    #[arg(long, env = "COMPACT_GRACE", value_parser = duration,
          default_value = show_duration(DEFAULT_GRACE))]
    pub grace: Duration,
    /// Merge and roll up hours that started at most this long ago (retention looks at everything).
    #[arg(long, env = "COMPACT_LOOKBACK", value_parser = duration,
          default_value = show_duration(DEFAULT_LOOKBACK))]
    pub lookback: Duration,
    /// Retention as TABLE=AGE pairs over the defaults raw=30d, rollup_1m=90d, rollup_1h=400d,
    /// rollup_1d=5y, dlq=30d, alarms=400d; `off` keeps a table forever.
    #[arg(long, env = "RETENTION", value_parser = retention)]
    pub retention: Option<Retention>,
    /// Rows one partition's merge may buffer (e.g. 64MiB, 1GiB; at least 256KiB) before it spills
    /// sorted runs to temp files; the compacted file itself is held whole besides it.
    #[arg(long, env = "COMPACT_MERGE_MEMORY", value_parser = merge_memory,
          default_value = show_byte_size(DEFAULT_MERGE_MEMORY as u64))]
    pub merge_memory: usize,
}

/// Per-table retention over the defaults.
fn retention(text: &str) -> Result<Retention, Problem> {
    Retention::parse(text).map_err(|e| {
        Problem::new(
            e,
            "use TABLE=AGE pairs such as raw=30d,rollup_1m=90d,rollup_1d=off",
        )
    })
}

/// A merge budget: a byte size of at least [`MIN_MERGE_MEMORY`].
fn merge_memory(text: &str) -> Result<usize, Problem> {
    const FIX: &str = "use a byte size such as 64MiB or 512MiB (at least 256KiB), well under the function's memory: the compacted file is held whole besides it";
    let bytes = parse_byte_size(text).ok_or_else(|| Problem::new("not a byte size", FIX))?;
    match usize::try_from(bytes).unwrap_or(usize::MAX) {
        n if n >= MIN_MERGE_MEMORY => Ok(n),
        _ => Err(Problem::new("smaller than the merge's fixed buffers", FIX)),
    }
}

impl Settings {
    /// The function's configuration with these settings, over the lake at `lake`.
    pub fn config(&self, lake: &str) -> Config {
        Config {
            lake: lake.to_owned(),
            grace: self.grace,
            lookback: self.lookback,
            retention: self.retention.clone().unwrap_or_default(),
            merge_memory: self.merge_memory,
        }
    }
}

/// Configuration of the compaction function, as its handler takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Lake URL (`LAKE`): a local path, `file:///...` or `s3://bucket/prefix`.
    pub lake: String,
    /// An hour is compacted once it ended this long ago (`COMPACT_GRACE`, default 1h).
    pub grace: Duration,
    /// Hours that started longer ago are not merged or rolled up (`COMPACT_LOOKBACK`, default 8d).
    pub lookback: Duration,
    /// Per-table retention (`RETENTION`, e.g. `raw=30d,rollup_1m=90d`; unnamed tables keep their defaults).
    pub retention: Retention,
    /// Bytes of rows one partition's merge may hold before it spills sorted runs to local temp
    /// files (`COMPACT_MERGE_MEMORY`, e.g. `256MiB`; default 64 MiB, at least 256 KiB).
    pub merge_memory: usize,
}

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
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_apply() {
        let c = cfg(&[("LAKE", "s3://b/lake")]).unwrap();
        assert_eq!(c.grace, DEFAULT_GRACE);
        assert_eq!(c.lookback, DEFAULT_LOOKBACK);
        assert_eq!(c.retention, Retention::default());
        assert_eq!(c.merge_memory, DEFAULT_MERGE_MEMORY);
        let c = cfg(&[
            ("LAKE", "/l"),
            ("RETENTION", "raw=7d"),
            ("COMPACT_GRACE", "15m"),
            ("COMPACT_LOOKBACK", "2d"),
            ("COMPACT_MERGE_MEMORY", "512MiB"),
        ])
        .unwrap();
        assert_eq!(c.grace, Duration::from_secs(900));
        assert_eq!(c.lookback, Duration::from_secs(2 * 86_400));
        assert_eq!(c.merge_memory, 512 << 20);
        assert_eq!(c.retention, Retention::parse("raw=7d").unwrap());
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        let e = cfg(&[]).unwrap_err().to_string();
        assert!(e.starts_with("LAKE is not set"), "{e}");
        let e = cfg(&[("LAKE", "/l"), ("RETENTION", "raw:30d")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("RETENTION=\"raw:30d\" is invalid") && e.contains("raw=30d"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("COMPACT_GRACE", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("COMPACT_GRACE=\"soon\" is invalid")
                && e.contains("use a duration such as"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("COMPACT_MERGE_MEMORY", "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("COMPACT_MERGE_MEMORY=\"lots\" is invalid") && e.contains("64MiB"),
            "{e}"
        );
        let e = cfg(&[("LAKE", "/l"), ("COMPACT_MERGE_MEMORY", "1KiB")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("256KiB"), "{e}");
    }
}
