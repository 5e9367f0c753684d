//! The query function's settings, declared once: the Lambda reads them from the environment, `damselfly serve` from the same variables or flags.

use std::time::Duration;

use damselfly_core::env::{duration, show_duration};

use crate::api::DEFAULT_REFRESH;
use crate::console::digest::DEFAULT_BUDGET_MIB;

/// The query function's own settings (the lake aside): each field's variable, flag, default and
/// help, for the Lambda binary (`damselfly_core::env::from_env`) and `damselfly serve` (flattened).
#[derive(Debug, Clone, PartialEq, clap::Args)]
#[group(id = "query-settings")]
pub struct Settings {
    /// How often the lake's tables are registered again (new tables, compacted files).
    #[arg(long, env = "LAKE_REFRESH", value_parser = duration,
          default_value = show_duration(DEFAULT_REFRESH))]
    pub refresh: Duration,
    /// Memory (MiB) the console's fleet page keeps its per-file digests in; 0 keeps none (every
    /// fleet page then reads its window's files again).
    #[arg(long, env = "CONSOLE_CACHE_MIB", default_value_t = DEFAULT_BUDGET_MIB)]
    pub console_cache_mib: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            refresh: DEFAULT_REFRESH,
            console_cache_mib: DEFAULT_BUDGET_MIB,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_core::env::{WithLake, from_lookup};

    #[test]
    fn refresh_defaults_and_errors_name_the_variable() {
        let c: WithLake<Settings> = from_lookup(|k| (k == "LAKE").then(|| "/l".into())).unwrap();
        assert_eq!((c.lake.as_str(), &c.settings), ("/l", &Settings::default()));
        let get = |k: &str| match k {
            "LAKE" => Some("/l".into()),
            "LAKE_REFRESH" => Some("often".into()),
            _ => None,
        };
        let e = from_lookup::<WithLake<Settings>>(get)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("LAKE_REFRESH=\"often\" is invalid")
                && e.contains("use a duration such as"),
            "{e}"
        );
    }
}
