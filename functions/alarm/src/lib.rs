//! The alarm function: Kafka batches and a scheduled tick in, SNS notifications and `alarms` history out.
//!
//! The same [`Alarm`] handler runs under `lambda_runtime` (see `main.rs`), in-process under
//! `damselfly run alarm`, and as `damselfly alarm tick`.

pub mod config;
pub mod handler;
pub mod notifier;
pub mod rules_store;

pub use config::{Config, ConfigError};
pub use handler::{Alarm, AlarmSummary, HandlerError, PartitionAlarms};
pub use notifier::{Notifier, NotifyError, OutboxLine};
pub use rules_store::{RulesError, RulesStore};
