//! The commands: one module each, sharing the adapters below.

mod agent;
mod demo;
mod run;
mod simulate;
mod sql;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use damselfly_aggregate::{Aggregate, AggregateSummary};
use damselfly_runner::{Function, FunctionError};
use indicatif::{MultiProgress, ProgressBar};

use crate::cli::Command;

/// Runs one command.
pub async fn dispatch(command: Command, progress: &MultiProgress) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::demo(args, progress).await,
        Command::Simulate(args) => simulate::simulate(args, progress).await,
        Command::Run(args) => run::run(args, progress).await,
        Command::Sql(args) => sql::sql(args).await,
        Command::Agent(args) => agent::agent(args).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

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
