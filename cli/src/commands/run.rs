//! `damselfly run <function>`: host a function under the local event source mapping.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use damselfly_runner::{RunnerConfig, ScalingConfig, Stats};
use indicatif::MultiProgress;
use serde::Serialize;

use damselfly_runner::Hosted;

use super::{alarm_destination, alarm_tick_every, deployment};
use crate::cli::{FunctionName, RunArgs};
use crate::output;

/// The closing summary of `damselfly run aggregate`.
#[derive(Debug, Serialize)]
struct RunAggregateSummary {
    #[serde(flatten)]
    runner: damselfly_runner::RunSummary,
    samples: u64,
    rejected: u64,
    objects: u64,
    /// Records the lake already held (a retry, a replay after an offset reset): not written again.
    skipped: u64,
}

/// The runner's configuration from the command line (and the environment).
fn runner_config(args: &RunArgs) -> anyhow::Result<RunnerConfig> {
    Ok(RunnerConfig {
        kafka: args.kafka.connection()?,
        group_protocol: args.group_protocol,
        batch_size: args.batch_size,
        batching_window: args.batching_window,
        until_caught_up: args.until_caught_up,
        max_retry_attempts: args.max_retry_attempts.0,
        max_record_age: args.max_record_age.0,
        bisect_on_error: args.bisect_on_error,
        fail_fast_non_retryable: args.fail_fast_non_retryable,
        on_failure: args.on_failure.clone(),
        starting_position: args.starting_position,
        scaling: ScalingConfig {
            min_workers: args.min_workers,
            max_workers: args.max_workers,
            lag_threshold: args.lag_threshold,
            activation_lag: args.activation_lag,
            interval: args.scale_interval,
            cooldown: args.cooldown,
        },
        metrics_listen: args.metrics_listen,
        ..RunnerConfig::new(&args.kafka.brokers, &args.kafka.topic, group(args))
    })
}

/// The consumer group: as given, or the function's default.
fn group(args: &RunArgs) -> String {
    args.group
        .clone()
        .unwrap_or_else(|| args.function.default_group().to_owned())
}

/// The lake of an in-process function (clap requires it unless --invoke-url is given).
fn lake(args: &RunArgs) -> &str {
    args.lake
        .as_deref()
        .expect("clap requires --lake unless --invoke-url")
}

/// Where the aggregate function writes, for the summary.
fn destination(args: &RunArgs) -> String {
    match (&args.invoke_url, &args.lake) {
        (Some(url), _) => format!("the lake of {url}"),
        (None, lake) => lake.clone().unwrap_or_default(),
    }
}

/// Runs the chosen function until stopped (or caught up).
pub async fn run(args: RunArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    match args.function {
        FunctionName::Aggregate => run_aggregate(args, progress).await,
        FunctionName::Alarm => run_alarm(args, progress).await,
    }
}

/// The closing summary of `damselfly run alarm`.
#[derive(Debug, Serialize)]
struct RunAlarmSummary {
    #[serde(flatten)]
    runner: damselfly_runner::RunSummary,
    evaluated: u64,
    notifications: u64,
    sent: u64,
    pending: u64,
    target: String,
}

async fn run_alarm(args: RunArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let config = runner_config(&args)?;
    config.validate()?;
    let group = group(&args);
    let handler = async || super::alarm::handler(lake(&args), &group, &args.alarm).await;
    let function = Arc::new(Hosted::new(
        deployment(
            handler,
            args.invoke_url.as_deref(),
            "damselfly-alarm",
            args.invoke_timeout,
        )
        .await?,
    ));
    let notify_target = alarm_destination(&function);
    let ticker_task = alarm_tick_every(&function, args.tick_every);
    let stats = Arc::new(Stats::default());
    let bar = output::bar(progress, None, "alarm");
    let ticker = {
        let (stats, f) = (stats.clone(), function.clone());
        super::show_progress(bar.clone(), move || {
            let t = f.totals();
            let msg = format!(
                "records, {} batches, {} notifications, {} sent, {} pending, lag {}",
                stats.batches.load(Relaxed),
                t.notifications,
                t.sent,
                t.pending,
                stats.group_lag.load(Relaxed).max(0),
            );
            (stats.records.load(Relaxed), msg)
        })
    };
    let runner =
        damselfly_runner::run(&config, function.clone(), stats, super::shutdown_signal()).await;
    ticker_task.abort();
    drop(ticker);
    bar.finish_and_clear();
    let runner = runner?;
    let t = function.totals();
    let s = RunAlarmSummary {
        runner,
        evaluated: t.records,
        notifications: t.notifications,
        sent: t.sent,
        pending: t.pending,
        target: notify_target,
    };
    output::summary(
        args.json,
        &s,
        &format!(
            "evaluated {} records in {} batches: {} notifications, {} sent to {}, {} pending; in {:.1}s",
            s.evaluated,
            s.runner.batches,
            s.notifications,
            s.sent,
            s.target,
            s.pending,
            s.runner.seconds
        ),
    );
    Ok(())
}

async fn run_aggregate(args: RunArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let config = runner_config(&args)?;
    config.validate()?;
    let handler = async || {
        let config = args.aggregate.config(lake(&args));
        anyhow::Ok(damselfly_aggregate::Aggregate::from_config(&config)?)
    };
    let function = Arc::new(Hosted::new(
        deployment(
            handler,
            args.invoke_url.as_deref(),
            "damselfly-aggregate",
            args.invoke_timeout,
        )
        .await?,
    ));
    let stats = Arc::new(Stats::default());
    let bar = output::bar(progress, None, "aggregate");
    let ticker = {
        let (stats, f) = (stats.clone(), function.clone());
        super::show_progress(bar.clone(), move || {
            let lag = stats.group_lag.load(Relaxed);
            let t = f.totals();
            let msg = format!(
                "records, {} batches, {} samples, {} rejected, {} invocation errors, {} workers, lag {}",
                stats.batches.load(Relaxed),
                t.stats.samples,
                t.stats.rejected,
                stats.invocation_errors.load(Relaxed),
                stats.workers.load(Relaxed),
                if lag < 0 {
                    "?".to_owned()
                } else {
                    lag.to_string()
                },
            );
            (stats.records.load(Relaxed), msg)
        })
    };
    let runner =
        damselfly_runner::run(&config, function.clone(), stats, super::shutdown_signal()).await?;
    drop(ticker);
    bar.finish_and_clear();
    let t = function.totals();
    let s = RunAggregateSummary {
        runner,
        samples: t.stats.samples,
        rejected: t.stats.rejected,
        objects: t.objects as u64,
        skipped: t.skipped,
    };
    let failed = if s.runner.on_failure_batches > 0 {
        format!(
            ", {} batches ({} records) sent to {}",
            s.runner.on_failure_batches,
            s.runner.on_failure_records,
            args.on_failure
                .as_ref()
                .map_or_else(String::new, ToString::to_string)
        )
    } else {
        String::new()
    };
    let skipped = if s.skipped > 0 {
        format!(" ({} records already in the lake skipped)", s.skipped)
    } else {
        String::new()
    };
    output::summary(
        args.json,
        &s,
        &format!(
            "aggregated {} records in {} batches ({} invocation errors retried{failed}){skipped}: {} samples, {} rejected to dlq, {} objects to {}; up to {} workers, {} scaling events, in {:.1}s",
            s.runner.records,
            s.runner.batches,
            s.runner.invocation_errors,
            s.samples,
            s.rejected,
            s.objects,
            destination(&args),
            s.runner.max_workers_seen,
            s.runner.scaling_events,
            s.runner.seconds
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec![
            "damselfly",
            "run",
            "aggregate",
            "--brokers",
            "b:9092",
            "--lake",
            "/tmp/l",
        ];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_lambdas_and_kedas() {
        let c = runner_config(&parse(&[])).unwrap();
        assert_eq!(
            (c.batch_size, c.max_retry_attempts, c.max_record_age),
            (100, None, None)
        );
        assert!(!c.bisect_on_error && c.on_failure.is_none());
        assert_eq!(
            c.starting_position,
            damselfly_runner::StartingPosition::Earliest
        );
        assert_eq!(c.scaling.min_workers, 1);
        assert_eq!(c.scaling.interval, std::time::Duration::from_secs(5));
        assert_eq!(c.scaling.cooldown, std::time::Duration::from_secs(60));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn every_knob_reaches_the_runner() {
        let c = runner_config(&parse(&[
            "--max-retry-attempts",
            "3",
            "--max-record-age",
            "-1",
            "--bisect-on-error",
            "--on-failure",
            "file:///tmp/failed",
            "--starting-position",
            "timestamp:2026-11-21T00:00:00Z",
            "--min-workers",
            "2",
            "--max-workers",
            "8",
            "--lag-threshold",
            "50",
            "--activation-lag",
            "10",
            "--scale-interval",
            "1s",
            "--cooldown",
            "30s",
            "--metrics-listen",
            "127.0.0.1:9464",
            "--group-protocol",
            "consumer",
            "--kafka-option",
            "fetch.wait.max.ms=50",
        ]))
        .unwrap();
        assert_eq!(c.max_retry_attempts, Some(3));
        assert!(c.bisect_on_error);
        assert_eq!(c.on_failure.unwrap().to_string(), "file:///tmp/failed");
        assert_eq!(
            c.starting_position.to_string(),
            "timestamp:2026-11-21T00:00:00+00:00"
        );
        assert_eq!(
            (
                c.scaling.min_workers,
                c.scaling.max_workers,
                c.scaling.lag_threshold,
                c.scaling.activation_lag
            ),
            (2, 8, 50, 10)
        );
        assert_eq!(c.metrics_listen.unwrap().port(), 9464);
        assert_eq!(c.group_protocol, damselfly_runner::GroupProtocol::Consumer);
        assert_eq!(
            c.kafka.options,
            vec![("fetch.wait.max.ms".to_owned(), "50".to_owned())]
        );
        let c = runner_config(&parse(&[
            "--max-retry-attempts",
            "-1",
            "--max-record-age",
            "2h",
        ]))
        .unwrap();
        assert_eq!(c.max_retry_attempts, None);
        assert_eq!(c.max_record_age, Some(std::time::Duration::from_secs(7200)));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let argv = [
            "damselfly",
            "run",
            "aggregate",
            "--brokers",
            "b",
            "--lake",
            "/l",
        ];
        for bad in [
            &["--on-failure", "ftp://x"][..],
            &["--starting-position", "tomorrow"],
            &["--max-retry-attempts", "-5"],
            &["--group-protocol", "eager"],
            &["--sasl-mechanism", "GSSAPI"],
        ] {
            let err = Cli::try_parse_from(argv.iter().chain(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad[0]), "{err}");
        }
        // Settings that parse but cannot work together are refused by name, too.
        let e = runner_config(&parse(&["--security-protocol", "sasl_ssl"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--sasl-mechanism (KAFKA_SASL_MECHANISM): sasl_ssl needs"),
            "{e}"
        );
        let e = runner_config(&parse(&["--kafka-option", "sasl.password=hunter2"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--kafka-option: sasl.password is a secret"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }
}
