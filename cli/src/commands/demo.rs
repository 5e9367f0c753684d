//! `damselfly demo`: the whole journey on an in-process Kafka broker and a local lake, then SQL over it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use damselfly_agent::{Fleet, Publisher, PublisherConfig, SimulateConfig};
use damselfly_aggregate::Aggregate;
use damselfly_core::{Lake, Validation};
use damselfly_query::{LakeSql, OutputFormat};
use damselfly_runner::{RunnerConfig, Stats};
use damselfly_schemas::Table;
use indicatif::MultiProgress;
use rdkafka::mocking::MockCluster;
use serde::Serialize;

use super::InProcessAggregate;
use crate::cli::DemoArgs;
use crate::output;

const TOPIC: &str = "metrics";
const PARTITIONS: i32 = 6;
/// Marks a directory as a demo lake, which a later demo may replace.
const MARKER: &str = ".damselfly-demo";

const BY_CSP: &str = "SELECT csp, count(DISTINCT vm) AS vms, count(*) AS samples \
                      FROM raw GROUP BY csp ORDER BY csp";
const BUSIEST: &str = "SELECT vm, csp, region, round(sum(\"sum\") / sum(\"count\"), 1) AS avg_cpu, \
                       max(\"max\") AS max_cpu FROM rollup_1m WHERE metric = 'cpu_utilization' \
                       GROUP BY vm, csp, region ORDER BY avg_cpu DESC, vm LIMIT 5";

/// The demo's closing summary.
#[derive(Debug, Serialize)]
struct DemoSummary {
    vms: usize,
    intervals: u64,
    published: u64,
    consumed: u64,
    samples_written: u64,
    rejected: u64,
    objects: u64,
    raw_rows: u64,
    lake: String,
    seconds: f64,
}

pub async fn demo(args: DemoArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.interval.is_zero() || args.vms == 0 {
        bail!("--interval and --vms must be greater than zero");
    }
    let intervals =
        (Duration::from_secs(args.duration).as_millis() / args.interval.as_millis()).max(1) as u64;
    prepare_lake_dir(Path::new(&args.lake))?;
    let lake = Lake::open(&args.lake)?;

    // A real Kafka-protocol broker, in this process.
    let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .context("creating the metrics topic")?;
    let brokers = cluster.bootstrap_servers();
    tracing::info!(%brokers, topic = TOPIC, partitions = PARTITIONS, "embedded broker up");

    let function = InProcessAggregate::new(Aggregate::new(lake, Validation::default()));
    let stats = Arc::new(Stats::default());
    let runner_config = RunnerConfig::new(&brokers, TOPIC, "damselfly-demo");
    let expected = args.vms as u64 * intervals;
    let all_consumed = {
        let stats = stats.clone();
        async move {
            while stats.records.load(Relaxed) < expected {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let stop_on_signal = {
        let s = super::shutdown_signal();
        async move {
            s.await;
            bail!("interrupted")
        }
    };
    let runner = {
        let (function, stats) = (function.clone(), stats.clone());
        let shutdown = all_consumed;
        async move { damselfly_runner::run(&runner_config, function, stats, shutdown).await }
    };

    let bar = output::bar(progress, Some(expected), "aggregate");
    let _ticker = {
        let (stats, f) = (stats.clone(), function.clone());
        super::tick(bar.clone(), move || {
            (
                stats.records.load(Relaxed),
                format!("messages, {} samples written", f.samples.load(Relaxed)),
            )
        })
    };
    let now = chrono::Utc::now().timestamp_millis();
    let publish = super::simulate::publish_fleet(
        SimulateConfig {
            vms: args.vms,
            interval: args.interval,
            intervals,
            seed: args.seed,
            ns: "ns01".into(),
            start_ms: now,
            paced: true,
            format: damselfly_agent::WireFormat::Native,
        },
        Publisher::new(&PublisherConfig::new(&brokers, TOPIC))?,
        progress,
        Arc::new(AtomicBool::new(false)),
    );
    let (published, consumed) = tokio::select! {
        r = async { tokio::try_join!(publish, async { Ok(runner.await?) }) } => r?,
        r = stop_on_signal => return r,
    };
    bar.finish_and_clear();
    drop(cluster);

    let sql = LakeSql::open(&args.lake).await?;
    let raw_rows = count(&sql, Table::Raw).await?;
    let summary = DemoSummary {
        vms: args.vms,
        intervals: published.intervals,
        published: published.published,
        consumed: consumed.records,
        samples_written: function.samples.load(Relaxed),
        rejected: function.rejected.load(Relaxed),
        objects: function.objects.load(Relaxed),
        raw_rows,
        lake: args.lake.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if !args.json {
        for (title, q) in [
            ("Samples per cloud (raw)", BY_CSP),
            ("Busiest VMs by average CPU % (rollup_1m)", BUSIEST),
        ] {
            let out = damselfly_query::format(&sql.query(q).await?, OutputFormat::Table)?;
            println!("{title}\n{q}\n{out}\n");
        }
        println!(
            "Ask your own: damselfly sql --lake {} \"SELECT metric, count(*) FROM raw GROUP BY metric\"",
            args.lake
        );
    }
    output::summary(
        args.json,
        &summary,
        &format!(
            "demo: {} VMs x {} intervals -> {} messages published, {} consumed, {} samples in raw ({} expected), {} rejected, {} objects in {} ({:.1}s)",
            summary.vms,
            summary.intervals,
            summary.published,
            summary.consumed,
            summary.raw_rows,
            summary.published * Fleet::samples_per_message() as u64,
            summary.rejected,
            summary.objects,
            summary.lake,
            summary.seconds
        ),
    );
    Ok(())
}

async fn count(sql: &LakeSql, table: Table) -> anyhow::Result<u64> {
    let q = format!("SELECT count(*) AS n FROM {}", table.name());
    let json = damselfly_query::format(&sql.query(&q).await?, OutputFormat::Json)?;
    let rows: serde_json::Value = serde_json::from_str(&json)?;
    rows[0]["n"].as_u64().context("count(*) returned no number")
}

/// Makes `dir` ready for a fresh demo lake: creates it, or clears a previous demo's lake;
/// refuses a non-empty directory the demo did not create.
fn prepare_lake_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "--lake {} is not empty and was not made by `damselfly demo`; pick another directory",
                dir.display()
            );
        }
        for table in Table::ALL {
            let t = dir.join(table.name());
            if t.exists() {
                std::fs::remove_dir_all(&t).with_context(|| format!("clearing {}", t.display()))?;
            }
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "a lake written by `damselfly demo`; the next demo replaces it\n",
    )?;
    Ok(())
}
