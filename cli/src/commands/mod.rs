//! The commands: one module each, sharing the adapters below.

mod agent;
mod alarm;
mod demo;
mod run;
mod simulate;
mod sql;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use damselfly_aggregate::{Aggregate, AggregateSummary};
use damselfly_alarm::Alarm;
use damselfly_runner::{Function, FunctionError};
use indicatif::{MultiProgress, ProgressBar};

use crate::cli::Command;

/// Runs one command.
pub async fn dispatch(command: Command, progress: &MultiProgress) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::demo(args, progress).await,
        Command::Simulate(args) => simulate::simulate(args, progress).await,
        Command::Run(args) => run::run(*args, progress).await,
        Command::Sql(args) => sql::sql(args).await,
        Command::Agent(args) => agent::agent(args).await,
        Command::Alarm(cmd) => alarm::alarm(cmd).await,
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub use damselfly_agent::cli::shutdown_signal;

/// Updates a progress bar from live counters until the returned guard is dropped.
pub fn tick(bar: ProgressBar, read: impl Fn() -> (u64, String) + Send + 'static) -> Ticker {
    let task = tokio::spawn(async move {
        loop {
            let (pos, msg) = read();
            bar.set_position(pos);
            bar.set_message(msg);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    Ticker(task)
}

/// Stops a [`tick`] loop when dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The aggregate handler invoked in-process by the runner, tallying what it wrote.
pub struct InProcessAggregate {
    handler: Aggregate,
    /// Samples written to `raw` so far.
    pub samples: AtomicU64,
    /// Records sent to `dlq` so far.
    pub rejected: AtomicU64,
    /// Objects written so far.
    pub objects: AtomicU64,
}

impl InProcessAggregate {
    /// Wraps a handler.
    pub fn new(handler: Aggregate) -> Arc<Self> {
        Arc::new(Self {
            handler,
            samples: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            objects: AtomicU64::new(0),
        })
    }
}

#[async_trait::async_trait]
impl Function for InProcessAggregate {
    async fn invoke(
        &self,
        event: aws_lambda_events::event::kafka::KafkaEvent,
    ) -> Result<serde_json::Value, FunctionError> {
        match self.handler.handle(event).await {
            Ok(s @ AggregateSummary { stats, objects, .. }) => {
                self.samples.fetch_add(stats.samples, Relaxed);
                self.rejected.fetch_add(stats.rejected, Relaxed);
                self.objects.fetch_add(objects as u64, Relaxed);
                Ok(serde_json::to_value(s).expect("summaries serialize"))
            }
            Err(e) if e.is_retryable() => Err(FunctionError::retryable(e.to_string())),
            Err(e) => Err(FunctionError::fatal(e.to_string())),
        }
    }
}

/// The alarm function hosted in this process, with running totals for progress and summaries.
pub struct InProcessAlarm {
    handler: Alarm,
    /// Records evaluated so far.
    pub records: AtomicU64,
    /// Notifications decided so far (batches and ticks).
    pub notifications: AtomicU64,
    /// Notifications delivered so far.
    pub sent: AtomicU64,
    /// Notifications pending after the latest invocation.
    pub pending: AtomicU64,
}

impl InProcessAlarm {
    /// Wraps a handler.
    pub fn new(handler: Alarm) -> Arc<Self> {
        Arc::new(Self {
            handler,
            records: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        })
    }

    /// The handler.
    pub fn handler(&self) -> &Alarm {
        &self.handler
    }

    fn count(&self, s: &damselfly_alarm::AlarmSummary) {
        self.records.fetch_add(s.records, Relaxed);
        self.notifications.fetch_add(s.notifications, Relaxed);
        self.sent.fetch_add(s.sent, Relaxed);
        self.pending.store(s.pending, Relaxed);
    }

    /// Runs the scheduled tick every `every` until dropped (the cloud's EventBridge schedule).
    pub fn tick_every(self: &Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
            loop {
                timer.tick().await;
                match me.handler.tick(now_ms()).await {
                    Ok(s) => me.count(&s),
                    Err(e) => tracing::warn!(error = %e, "alarm tick failed; the next one retries"),
                }
            }
        })
    }
}

#[async_trait::async_trait]
impl Function for InProcessAlarm {
    async fn invoke(
        &self,
        event: aws_lambda_events::event::kafka::KafkaEvent,
    ) -> Result<serde_json::Value, FunctionError> {
        match self.handler.handle(event).await {
            Ok(s) => {
                self.count(&s);
                Ok(serde_json::to_value(s).expect("summaries serialize"))
            }
            Err(e) if e.is_retryable() => Err(FunctionError::retryable(e.to_string())),
            Err(e) => Err(FunctionError::fatal(e.to_string())),
        }
    }
}

/// Milliseconds since the epoch, now.
pub use damselfly_agent::run::now_ms;
