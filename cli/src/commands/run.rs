//! `damselfly run <function>`: host a function under the local event source mapping.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use damselfly_aggregate::Aggregate;
use damselfly_core::{Lake, Validation};
use damselfly_runner::{RunnerConfig, Stats};
use indicatif::MultiProgress;
use serde::Serialize;

use super::InProcessAggregate;
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
}

pub async fn run(args: RunArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let FunctionName::Aggregate = args.function;
    let lake = Lake::open(&args.lake)?;
    let limits = Validation {
        max_past: args.max_past,
        max_future: args.max_future,
        ..Validation::default()
    };
    let function = InProcessAggregate::new(Aggregate::new(lake, limits));
    let config = RunnerConfig {
        batch_size: args.batch_size,
        batching_window: args.batching_window,
        until_caught_up: args.until_caught_up,
        kafka_options: args.kafka.kafka_options,
        ..RunnerConfig::new(args.kafka.brokers, args.kafka.topic, args.group)
    };
    let stats = Arc::new(Stats::default());
    let bar = output::bar(progress, None, "aggregate");
    let ticker = {
        let (stats, f) = (stats.clone(), function.clone());
        super::tick(bar.clone(), move || {
            let msg = format!(
                "records, {} batches, {} samples, {} rejected, {} failures",
                stats.batches.load(Relaxed),
                f.samples.load(Relaxed),
                f.rejected.load(Relaxed),
                stats.failures.load(Relaxed)
            );
            (stats.records.load(Relaxed), msg)
        })
    };
    let runner =
        damselfly_runner::run(&config, function.clone(), stats, super::shutdown_signal()).await?;
    drop(ticker);
    bar.finish_and_clear();
    let s = RunAggregateSummary {
        runner,
        samples: function.samples.load(Relaxed),
        rejected: function.rejected.load(Relaxed),
        objects: function.objects.load(Relaxed),
    };
    output::summary(
        args.json,
        &s,
        &format!(
            "aggregated {} records in {} batches ({} failures retried): {} samples, {} rejected to dlq, {} objects to {} in {:.1}s",
            s.runner.records,
            s.runner.batches,
            s.runner.failures,
            s.samples,
            s.rejected,
            s.objects,
            args.lake,
            s.runner.seconds
        ),
    );
    Ok(())
}
