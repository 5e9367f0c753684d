//! The commands: one module each, sharing the adapters below.

mod agent;
mod alarm;
mod compact;
mod demo;
mod metric;
mod redrive;
mod run;
mod serve;
mod simulate;
mod sql;
mod vm;

use damselfly_contract::Retryable as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use damselfly_aggregate::Aggregate;
use damselfly_alarm::Alarm;
use damselfly_runner::{Function, FunctionError, InvokeTarget, LambdaInvoke};
use indicatif::{MultiProgress, ProgressBar};

use crate::cli::Command;

/// Runs one command.
pub async fn dispatch(command: Command, progress: &MultiProgress) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::demo(args, progress).await,
        Command::Simulate(args) => simulate::simulate(args, progress).await,
        Command::Run(args) => run::run(*args, progress).await,
        Command::Sql(args) => sql::sql(args).await,
        Command::Compact(args) => compact::compact(args, progress).await,
        Command::Agent(args) => agent::agent(args).await,
        Command::Alarm(cmd) => alarm::alarm(cmd).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Redrive(args) => redrive::redrive(*args, progress).await,
        Command::Metric(crate::cli::MetricCommand::Get(args)) => metric::get(args).await,
        Command::Vm(crate::cli::VmCommand::List(args)) => vm::list(args).await,
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

/// Where the runner's invocations go: the handler in this process, or a Lambda over the Invoke API.
pub enum Target<H> {
    /// The handler, called directly.
    InProcess(H),
    /// A function behind `--invoke-url` (`cargo lambda watch`, or AWS).
    Remote(LambdaInvoke),
}

impl<H> Target<H> {
    /// The in-process handler, or one behind `--invoke-url` named `default_name` unless the URL
    /// names one, whose invocations are given up after `invoke_timeout`.
    pub async fn new(
        handler: impl AsyncFnOnce() -> anyhow::Result<H>,
        invoke_url: Option<&str>,
        default_name: &str,
        invoke_timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        Ok(match invoke_url {
            None => Self::InProcess(handler().await?),
            Some(url) => Self::Remote(
                LambdaInvoke::connect(InvokeTarget::parse(url, default_name)?, invoke_timeout)
                    .await,
            ),
        })
    }
}

/// A JSON counter from a function's result (0 when absent).
fn counter(result: &serde_json::Value, field: &str) -> u64 {
    result[field].as_u64().unwrap_or(0)
}

/// The aggregate function as the runner hosts it, tallying what it wrote from each result.
pub struct HostedAggregate {
    target: Target<Aggregate>,
    /// Samples written to `raw` so far.
    pub samples: AtomicU64,
    /// Records sent to `dlq` so far.
    pub rejected: AtomicU64,
    /// Objects written so far.
    pub objects: AtomicU64,
    /// Records skipped so far because the lake already held them (retries, replays).
    pub skipped: AtomicU64,
}

impl HostedAggregate {
    /// Hosts a target.
    pub fn new(target: Target<Aggregate>) -> Arc<Self> {
        Arc::new(Self {
            target,
            samples: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        })
    }
}

#[async_trait::async_trait]
impl Function for HostedAggregate {
    async fn invoke(
        &self,
        event: aws_lambda_events::event::kafka::KafkaEvent,
    ) -> Result<serde_json::Value, FunctionError> {
        let result = match &self.target {
            Target::Remote(f) => f.invoke(event).await?,
            Target::InProcess(h) => match h.handle(event).await {
                Ok(s) => serde_json::to_value(s).expect("summaries serialize"),
                Err(e) if e.is_retryable() => return Err(FunctionError::retryable(e.to_string())),
                Err(e) => return Err(FunctionError::fatal(e.to_string())),
            },
        };
        self.samples.fetch_add(counter(&result, "samples"), Relaxed);
        self.rejected
            .fetch_add(counter(&result, "rejected"), Relaxed);
        self.objects.fetch_add(counter(&result, "objects"), Relaxed);
        self.skipped.fetch_add(counter(&result, "skipped"), Relaxed);
        Ok(result)
    }
}

/// The alarm function as the runner hosts it, with running totals for progress and summaries.
pub struct HostedAlarm {
    target: Target<Alarm>,
    /// Records evaluated so far.
    pub records: AtomicU64,
    /// Notifications decided so far (batches and ticks).
    pub notifications: AtomicU64,
    /// Notifications delivered so far.
    pub sent: AtomicU64,
    /// Notifications pending after the latest invocation.
    pub pending: AtomicU64,
}

impl HostedAlarm {
    /// Hosts a target.
    pub fn new(target: Target<Alarm>) -> Arc<Self> {
        Arc::new(Self {
            target,
            records: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        })
    }

    /// Where notifications go (or which function decides that).
    pub fn target(&self) -> String {
        match &self.target {
            Target::InProcess(h) => h.notifier().target(),
            Target::Remote(f) => f.target().to_string(),
        }
    }

    fn count(&self, s: &serde_json::Value) {
        self.records.fetch_add(counter(s, "records"), Relaxed);
        self.notifications
            .fetch_add(counter(s, "notifications"), Relaxed);
        self.sent.fetch_add(counter(s, "sent"), Relaxed);
        self.pending.store(counter(s, "pending"), Relaxed);
    }

    /// Runs the scheduled tick once (in-process, or by invoking the function with a scheduled event).
    pub async fn tick(&self) -> Result<serde_json::Value, FunctionError> {
        let result = match &self.target {
            Target::InProcess(h) => h
                .tick(now_ms())
                .await
                .map(|s| serde_json::to_value(s).expect("summaries serialize"))
                .map_err(|e| FunctionError::retryable(e.to_string()))?,
            Target::Remote(f) => f.invoke_json(&scheduled_event()).await?,
        };
        self.count(&result);
        Ok(result)
    }

    /// Runs the scheduled tick every `every` until aborted (the cloud's EventBridge schedule).
    pub fn tick_every(self: &Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
            loop {
                timer.tick().await;
                if let Err(e) = me.tick().await {
                    tracing::warn!(error = %e, "alarm tick failed; the next one retries");
                }
            }
        })
    }
}

/// The event an EventBridge schedule delivers, as the alarm function's tick receives it.
fn scheduled_event() -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "resources": [],
        "detail": {}
    })
}

#[async_trait::async_trait]
impl Function for HostedAlarm {
    async fn invoke(
        &self,
        event: aws_lambda_events::event::kafka::KafkaEvent,
    ) -> Result<serde_json::Value, FunctionError> {
        let result = match &self.target {
            Target::Remote(f) => f.invoke(event).await?,
            Target::InProcess(h) => match h.handle(event).await {
                Ok(s) => serde_json::to_value(s).expect("summaries serialize"),
                Err(e) if e.is_retryable() => return Err(FunctionError::retryable(e.to_string())),
                Err(e) => return Err(FunctionError::fatal(e.to_string())),
            },
        };
        self.count(&result);
        Ok(result)
    }
}

/// Milliseconds since the epoch, now.
pub use damselfly_agent::run::now_ms;
