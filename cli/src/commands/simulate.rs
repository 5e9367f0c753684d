//! `damselfly simulate`: publish a simulated fleet to Kafka with progress and a summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use anyhow::{Context as _, bail};
use damselfly_agent::{
    Publisher, PublisherConfig, SimulateConfig, SimulateStats, SimulateSummary, run_simulation,
};
use indicatif::MultiProgress;

use crate::cli::SimulateArgs;
use crate::output;

pub async fn simulate(args: SimulateArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let interval = args.fleet.interval;
    if interval.is_zero() {
        bail!("--interval must be longer than 0s");
    }
    let intervals = (args.duration.as_millis() / interval.as_millis()) as u64;
    if intervals == 0 {
        bail!(
            "--duration {:?} is shorter than --interval {:?}: nothing to publish",
            args.duration,
            interval
        );
    }
    let interval_ms = interval.as_millis() as i64;
    let now = chrono::Utc::now().timestamp_millis() / interval_ms * interval_ms;
    let config = SimulateConfig {
        vms: args.fleet.vms,
        interval,
        intervals,
        seed: args.fleet.seed,
        ns: args.fleet.ns,
        // Unpaced runs backfill: the last interval is stamped now, none in the future.
        start_ms: if args.no_pace {
            now - (intervals as i64 - 1) * interval_ms
        } else {
            now
        },
        paced: !args.no_pace,
        format: match args.format {
            crate::cli::WireFormatArg::Native => damselfly_agent::WireFormat::Native,
            crate::cli::WireFormatArg::TelegrafJson => damselfly_agent::WireFormat::TelegrafJson,
            crate::cli::WireFormatArg::Influx => damselfly_agent::WireFormat::Influx,
        },
    };
    let publisher = Publisher::new(&PublisherConfig {
        compression: args.compression,
        ..PublisherConfig::on(args.kafka.connection()?, &args.kafka.topic)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = stop.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        on_signal.store(true, Relaxed);
    });
    let s = publish_fleet(config, publisher, progress, stop).await?;
    output::summary(
        args.json,
        &s,
        &format!(
            "published {} messages ({} samples) from {} VMs over {} intervals to `{}` in {:.1}s",
            s.published, s.samples, s.vms, s.intervals, args.kafka.topic, s.seconds
        ),
    );
    Ok(())
}

/// Runs the simulation on a blocking thread while a progress bar follows it.
pub async fn publish_fleet(
    config: SimulateConfig,
    publisher: Publisher,
    progress: &MultiProgress,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SimulateSummary> {
    let stats = Arc::new(SimulateStats::default());
    let bar = output::bar(
        progress,
        Some(config.vms as u64 * config.intervals),
        "publish",
    );
    let _ticker = {
        let stats = stats.clone();
        let intervals = config.intervals;
        super::show_progress(bar.clone(), move || {
            let done = stats.intervals.load(Relaxed);
            (
                stats.messages.load(Relaxed),
                format!("messages, interval {done}/{intervals}"),
            )
        })
    };
    let summary =
        tokio::task::spawn_blocking(move || run_simulation(&config, &publisher, &stats, &stop))
            .await
            .context("simulation thread")??;
    bar.finish_and_clear();
    Ok(summary)
}
