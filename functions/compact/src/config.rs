//! The compaction function's configuration, read from the environment as Lambda provides it.

use std::time::Duration;

use damselfly_core::compact::{
    DEFAULT_GRACE, DEFAULT_LOOKBACK, DEFAULT_MERGE_MEMORY, MIN_MERGE_MEMORY, Retention,
};

/// Settings of the compaction function.
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
        let set = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let lake = damselfly_core::env::lake(get("LAKE"))?;
        let duration = |var: &'static str, default: Duration| {
            damselfly_core::env::duration(
                var,
                set(var),
                default,
                "use a duration such as 30m, 1h or 8d",
            )
        };
        let retention = match set("RETENTION") {
            None => Retention::default(),
            Some(v) => Retention::parse(&v).map_err(|e| ConfigError::Invalid {
                var: "RETENTION",
                value: v,
                why: e.to_string(),
                fix: "use TABLE=AGE pairs such as raw=30d,rollup_1m=90d,rollup_1d=off",
            })?,
        };
        const MEMORY_FIX: &str = "use a byte size such as 64MiB or 512MiB (at least 256KiB), well under the function's memory: the compacted file is held whole besides it";
        let memory_var = set("COMPACT_MERGE_MEMORY");
        let merge_memory = damselfly_core::env::byte_size(
            "COMPACT_MERGE_MEMORY",
            memory_var.clone(),
            DEFAULT_MERGE_MEMORY as u64,
            MEMORY_FIX,
        )?;
        if merge_memory < MIN_MERGE_MEMORY as u64 {
            return Err(ConfigError::Invalid {
                var: "COMPACT_MERGE_MEMORY",
                value: memory_var.unwrap_or_default(),
                why: "smaller than the merge's fixed buffers".into(),
                fix: MEMORY_FIX,
            });
        }
        Ok(Self {
            lake,
            grace: duration("COMPACT_GRACE", DEFAULT_GRACE)?,
            lookback: duration("COMPACT_LOOKBACK", DEFAULT_LOOKBACK)?,
            retention,
            merge_memory: usize::try_from(merge_memory).unwrap_or(usize::MAX),
        })
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
            ("COMPACT_MERGE_MEMORY", "512MiB"),
        ])
        .unwrap();
        assert_eq!(c.grace, Duration::from_secs(900));
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
            e.contains("COMPACT_GRACE=\"soon\"") && e.contains("30m"),
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
