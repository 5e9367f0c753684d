//! The aggregate function: a Kafka event (as Lambda delivers it) in, `raw`, `rollup_1m` and `dlq` Parquet out.
//!
//! The same [`Aggregate`] handler runs under `lambda_runtime` (see `main.rs`) and in-process under
//! `damselfly run aggregate`.

pub mod config;
pub mod handler;

pub use config::{Config, ConfigError};
pub use handler::{Aggregate, AggregateSummary, HandlerError};
