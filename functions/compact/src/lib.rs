//! The compaction function: an EventBridge schedule (hourly) in; compacted hour partitions,
//! `rollup_1h`/`rollup_1d` and retention deletes out (see `damselfly_core::compact`).
//!
//! The same work runs as `damselfly compact`.

pub mod config;
pub mod handler;

pub use config::{Config, ConfigError};
pub use handler::{CompactSummary, Compactor, HandlerError};
