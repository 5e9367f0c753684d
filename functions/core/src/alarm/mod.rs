//! Pure alarm logic: rules, evaluation over samples, notification rendering, CB-Dragonfly import.
//!
//! The alarm function's adapter decodes a batch of records, and per topic-partition:
//! 1. loads the partition's [`AlarmState`] (JSON) from object storage;
//! 2. calls [`Evaluator::evaluate_message`] for each record with its offset, then
//!    [`Evaluator::tick`] with the wall clock;
//! 3. persists the state, then publishes each [`Notification`] ([`Notification::subject`],
//!    [`Notification::body`], [`Notification::attributes`]) and writes [`alarms_batch`] rows.
//!
//! Offsets at or below the state's last offset are skipped, so a batch replayed after its state
//! was persisted notifies nothing. Nothing here does I/O.

pub mod eval;
pub mod import;
pub mod notify;
pub mod rules;

pub use eval::{
    AlarmLevel, AlarmState, EvalConfig, Evaluator, Notification, NotificationKind, Sample, samples,
};
pub use import::{CbAlertTask, ImportError, import_alert_task, import_alert_tasks};
pub use notify::alarms_batch;
/// Where a lake keeps its alarm rules (a JSON [`RuleSet`]) unless told otherwise.
pub const DEFAULT_RULES_KEY: &str = "_config/alarm-rules.json";

pub use rules::{Comparator, MOfN, MissingData, Rule, RuleError, RuleSet, Scope, Statistic};

/// Whether a metric name is a counter's derived rate (`bytes_in_rate`), computed from raw totals.
pub fn is_rate_metric(metric: &str) -> bool {
    metric
        .strip_suffix(crate::rates::RATE_SUFFIX)
        .is_some_and(crate::rates::is_counter)
}
