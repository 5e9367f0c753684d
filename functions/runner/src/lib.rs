//! The local event source mapping: what Lambda's Kafka trigger does, on any machine, against any broker.
//!
//! It joins a consumer group, builds batches exactly as Lambda does ([`event::kafka_event`]),
//! invokes a [`Function`], retries a failed batch as a whole, and commits offsets only after the
//! function has succeeded.

pub mod config;
pub mod event;
pub mod function;
pub mod runner;

pub use config::{ConfigError, RunnerConfig};
pub use function::{Function, FunctionError};
pub use runner::{RunSummary, RunnerError, Stats, run};
