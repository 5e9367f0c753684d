//! `damselfly redrive <function> --from URL`: replay the batches an on-failure destination kept.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use damselfly_runner::{Function, OnFailure, RedriveOptions, RedriveStats};
use indicatif::MultiProgress;

use damselfly_runner::Hosted;

use super::deployment;
use crate::cli::{FunctionName, RedriveArgs};
use crate::output;

/// The function that replays the batches, in this process or behind `--invoke-url`.
async fn function(args: &RedriveArgs) -> anyhow::Result<Arc<dyn Function>> {
    let lake = || {
        args.lake
            .clone()
            .expect("clap requires --lake unless --invoke-url")
    };
    Ok(match args.function {
        FunctionName::Aggregate => {
            let handler = async || {
                let config = args.aggregate.config(&lake());
                anyhow::Ok(damselfly_aggregate::Aggregate::from_config(&config)?)
            };
            Arc::new(Hosted::new(
                deployment(
                    handler,
                    args.invoke_url.as_deref(),
                    "damselfly-aggregate",
                    damselfly_runner::remote::INVOKE_TIMEOUT,
                )
                .await?,
            ))
        }
        FunctionName::Alarm => {
            let group = args
                .group
                .clone()
                .unwrap_or_else(|| args.function.default_group().to_owned());
            let handler = async || super::alarm::handler(&lake(), &group, &args.alarm).await;
            Arc::new(Hosted::new(
                deployment(
                    handler,
                    args.invoke_url.as_deref(),
                    "damselfly-alarm",
                    damselfly_runner::remote::INVOKE_TIMEOUT,
                )
                .await?,
            ))
        }
    })
}

/// Replays every failed batch of `--from` through the function and prints what it did; fails
/// when a batch still fails.
pub async fn redrive(args: RedriveArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let kafka = match (&args.from, &args.brokers) {
        (OnFailure::Kafka { .. }, Some(brokers)) => Some(args.security.connection(brokers)?),
        _ => None,
    };
    let function = function(&args).await?;
    let opts = RedriveOptions {
        attempts: args.attempts,
        group: args.redrive_group.clone(),
        ..RedriveOptions::default()
    };
    let stats = Arc::new(RedriveStats::default());
    let bar = output::bar(progress, None, "redrive");
    let ticker = {
        let stats = stats.clone();
        super::show_progress(bar.clone(), move || {
            let msg = format!(
                "batches redriven, {} records, {} failed, {} invalid",
                stats.records.load(Relaxed),
                stats.failed.load(Relaxed),
                stats.invalid.load(Relaxed)
            );
            (stats.redriven.load(Relaxed), msg)
        })
    };
    let started = std::time::Instant::now();
    let result =
        damselfly_runner::redrive(&args.from, kafka.as_ref(), function, &opts, &stats).await;
    drop(ticker);
    bar.finish_and_clear();
    let s = result?;
    output::summary(
        args.json,
        &s,
        &format!(
            "redrove {} of {} failed batches ({} records) from {}: {} still failing, {} not on-failure records; in {:.1}s",
            s.redriven,
            s.found,
            s.records,
            args.from,
            s.failed,
            s.invalid,
            started.elapsed().as_secs_f64()
        ),
    );
    anyhow::ensure!(
        s.failed == 0,
        "{} batches still fail and stay in {} (see the log for each error); run the redrive again once the cause is fixed",
        s.failed,
        args.from
    );
    Ok(())
}
