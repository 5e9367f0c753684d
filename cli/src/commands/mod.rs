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

use std::sync::Arc;

use damselfly_alarm::{Alarm, AlarmSummary};
use damselfly_runner::hosted::{class_of, summary_of};
use damselfly_runner::{Deployment, FunctionError, Hosted, InvokeTarget, LambdaInvoke};
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
pub fn show_progress(
    bar: ProgressBar,
    read: impl Fn() -> (u64, String) + Send + 'static,
) -> LiveProgress {
    let task = tokio::spawn(async move {
        loop {
            let (pos, msg) = read();
            bar.set_position(pos);
            bar.set_message(msg);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    LiveProgress(task)
}

/// Stops a [`show_progress`] loop when dropped.
pub struct LiveProgress(tokio::task::JoinHandle<()>);

impl Drop for LiveProgress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The in-process handler, or the deployed function behind `--invoke-url` (named `default_name`
/// unless the URL names one), whose invocations are given up after `invoke_timeout`.
pub async fn deployment<H>(
    handler: impl AsyncFnOnce() -> anyhow::Result<H>,
    invoke_url: Option<&str>,
    default_name: &str,
    invoke_timeout: std::time::Duration,
) -> anyhow::Result<Deployment<H>> {
    Ok(match invoke_url {
        None => Deployment::InProcess(handler().await?),
        Some(url) => Deployment::Remote(
            LambdaInvoke::connect(InvokeTarget::parse(url, default_name)?, invoke_timeout).await,
        ),
    })
}

/// Where a hosted alarm function's notifications go (or which function decides that).
pub fn alarm_destination(alarm: &Hosted<Alarm>) -> String {
    match alarm.deployment() {
        Deployment::InProcess(h) => h.notifier().destination(),
        Deployment::Remote(f) => f.target().to_string(),
    }
}

/// Runs the alarm function's scheduled tick once (in-process, or by invoking the function with a
/// scheduled event) and adds its summary to the totals.
pub async fn alarm_tick(alarm: &Hosted<Alarm>) -> Result<AlarmSummary, FunctionError> {
    let summary = match alarm.deployment() {
        Deployment::InProcess(h) => h.tick(now_ms()).await.map_err(|e| class_of(&e))?,
        Deployment::Remote(f) => summary_of(f.invoke_json(&scheduled_event()).await?)?,
    };
    alarm.record(&summary);
    Ok(summary)
}

/// Runs the alarm function's tick every `every` until aborted (the cloud's EventBridge schedule).
pub fn alarm_tick_every(
    alarm: &Arc<Hosted<Alarm>>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let alarm = alarm.clone();
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        loop {
            timer.tick().await;
            if let Err(e) = alarm_tick(&alarm).await {
                tracing::warn!(error = %e, "alarm tick failed; the next one retries");
            }
        }
    })
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

/// Milliseconds since the epoch, now.
pub use damselfly_agent::run::now_ms;
