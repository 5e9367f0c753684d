//! `damselfly demo`: the whole journey on an in-process Kafka broker and a local lake, then SQL over it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use damselfly_agent::{Fleet, Publisher, PublisherConfig};
use damselfly_aggregate::Aggregate;
use damselfly_core::{Lake, Validation};
use damselfly_query::{LakeSql, OutputFormat};
use damselfly_runner::{RunnerConfig, ScalingConfig, Stats};
use damselfly_schemas::Table;
use indicatif::MultiProgress;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;

use damselfly_runner::{Deployment, Hosted};

use super::{alarm_destination, alarm_tick};
use crate::cli::DemoArgs;
use crate::output;

const TOPIC: &str = "metrics";
const PARTITIONS: i32 = 6;
/// How often the demo's runner measures lag.
const SCALE_INTERVAL: Duration = Duration::from_secs(1);
/// How long lower demand must last before the demo's runner removes workers.
const COOLDOWN: Duration = Duration::from_secs(3);
/// The demo's alarm rules, stored at the lake's default rules location.
const DEMO_RULES: &str = include_str!("../../../schemas/examples/alarm-rules/demo.json");
/// Consumer group (and state namespace) of the demo's alarm function.
const ALARM_GROUP: &str = "damselfly-demo-alarm";
/// Longest the demo's alarm function may take to evaluate the topic.
const ALARM_DEADLINE: Duration = Duration::from_secs(120);
/// The file in the demo lake that receives alarm notifications when no SNS topic is given.
const OUTBOX: &str = "alarm-outbox.jsonl";
/// Notifications shown after the demo, at most.
const SHOWN_NOTIFICATIONS: usize = 8;
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
    max_workers_seen: u64,
    scaling_events: u64,
    alarm_notifications: u64,
    alarm_sent: u64,
    alarm_target: String,
}

/// Runs the demo: the lake and the embedded broker, the fleet published while the aggregate
/// function consumes it, the alarm function over the same topic, then the lake's numbers and two
/// SQL answers.
pub async fn demo(args: DemoArgs, progress: &MultiProgress) -> anyhow::Result<()> {
    let started = Instant::now();
    let intervals = intervals(&args)?;
    prepare_lake_dir(Path::new(&args.lake))?;
    let lake = Lake::open(&args.lake)?;
    let broker = Broker::start()?;
    let aggregated =
        aggregate_while_publishing(&args, lake, &broker.brokers, intervals, progress).await?;
    let alarms = run_alarms(&args, &broker.brokers, aggregated.published, progress).await?;
    drop(broker);

    let sql = LakeSql::open(&args.lake).await?;
    let summary = verify(&args, &sql, &aggregated, &alarms, started).await?;
    if !args.json {
        print_answers(&args, &sql, &alarms).await?;
    }
    output::summary(args.json, &summary, &summary_line(&summary));
    if let Some(listen) = args.serve {
        if !args.json {
            println!(
                "\nThe console: http://{listen}/  (the fleet, each VM, the alarms; Ctrl-C stops)"
            );
        }
        let limits = damselfly_query::api::Limits::default();
        let settings = damselfly_query::config::Settings {
            refresh: Duration::from_secs(5),
            ..Default::default()
        };
        super::serve::serve_lake(&args.lake, listen, &settings, limits).await?;
    }
    Ok(())
}

/// The intervals the fleet publishes: `--duration` over `--interval`, at least one.
fn intervals(args: &DemoArgs) -> anyhow::Result<u64> {
    if args.interval.is_zero() || args.vms == 0 {
        bail!("--interval and --vms must be greater than zero");
    }
    Ok((Duration::from_secs(args.duration).as_millis() / args.interval.as_millis()).max(1) as u64)
}

/// The embedded broker: a real Kafka-protocol broker in this process, with the metrics topic.
struct Broker {
    /// Kept alive for the demo's length.
    _cluster: MockCluster<'static, DefaultProducerContext>,
    /// Its bootstrap address.
    brokers: String,
}

impl Broker {
    fn start() -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
        cluster
            .create_topic(TOPIC, PARTITIONS, 1)
            .context("creating the metrics topic")?;
        let brokers = cluster.bootstrap_servers();
        tracing::info!(%brokers, topic = TOPIC, partitions = PARTITIONS, "embedded broker up");
        Ok(Self {
            _cluster: cluster,
            brokers,
        })
    }
}

/// What publishing and aggregating did.
struct Aggregated {
    /// Messages the broker acknowledged.
    published: u64,
    /// Intervals published.
    intervals: u64,
    /// The runner's summary.
    run: damselfly_runner::RunSummary,
    /// The aggregate function's totals.
    written: damselfly_aggregate::AggregateSummary,
}

/// Publishes the fleet (a backlog, then paced) while the runner hosts the aggregate function in
/// this process, scaling out for the backlog and back in; returns once everything published is
/// written and committed (or fails when the process is asked to stop).
async fn aggregate_while_publishing(
    args: &DemoArgs,
    lake: Lake,
    brokers: &str,
    intervals: u64,
    progress: &MultiProgress,
) -> anyhow::Result<Aggregated> {
    let function = Arc::new(Hosted::new(Deployment::InProcess(Aggregate::new(
        lake,
        Validation::default(),
    ))));
    let stats = Arc::new(Stats::default());
    let published_all = Arc::new(AtomicBool::new(false));
    let runner = {
        let config = aggregate_runner_config(args, brokers);
        let shutdown = all_consumed(stats.clone(), published_all.clone());
        let (function, stats) = (function.clone(), stats.clone());
        async move { damselfly_runner::run(&config, function, stats, shutdown).await }
    };
    let stop_on_signal = {
        let s = super::shutdown_signal();
        async move {
            s.await;
            bail!("interrupted")
        }
    };

    let bar = output::bar(progress, Some(args.vms as u64 * intervals), "aggregate");
    let _ticker = aggregate_progress(bar.clone(), stats, function.clone());
    // The first half of the intervals is published at once: a backlog.
    let publish = publish_with_backlog(
        Publish {
            vms: args.vms,
            interval: args.interval,
            intervals,
            backlog: intervals / 2,
            seed: args.seed,
            publisher: Publisher::new(&PublisherConfig::new(brokers, TOPIC))?,
        },
        progress,
        published_all,
    );
    let ((published, intervals), run) = tokio::select! {
        r = async { tokio::try_join!(publish, async { Ok(runner.await?) }) } => r?,
        r = stop_on_signal => return r,
    };
    bar.finish_and_clear();
    Ok(Aggregated {
        published,
        intervals,
        run,
        written: function.totals(),
    })
}

/// The aggregate runner's configuration: one worker per two intervals of the fleet's messages
/// makes it scale out for the backlog, and back in (after a short cooldown) once the steady load
/// is all that is left: that load, plus what builds up while partitions move (about 5s on the
/// embedded broker), stays under the threshold.
fn aggregate_runner_config(args: &DemoArgs, brokers: &str) -> RunnerConfig {
    RunnerConfig {
        scaling: ScalingConfig {
            min_workers: 1,
            max_workers: PARTITIONS as usize,
            lag_threshold: 2 * args.vms as u64,
            activation_lag: 0,
            interval: SCALE_INTERVAL,
            cooldown: COOLDOWN,
        },
        metrics_listen: args.metrics_listen,
        ..RunnerConfig::new(brokers, TOPIC, "damselfly-demo")
    }
}

/// Resolves when, after the last message was published, a lag measurement that started later
/// finds the group's lag at 0 (everything was processed and committed), and the runner, if it
/// scaled out, has scaled back in (or a cooldown and a rebalance later, it will not).
async fn all_consumed(stats: Arc<Stats>, published_all: Arc<AtomicBool>) {
    while !published_all.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = stats.lag_measurements.load(Acquire) + 1;
    while stats.lag_measurements.load(Acquire) <= after || stats.group_lag.load(Relaxed) != 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let patience = Instant::now() + COOLDOWN + Duration::from_secs(10);
    while stats.workers.load(Relaxed) > 1 && Instant::now() < patience {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The aggregate bar: messages consumed, samples written, workers and lag.
fn aggregate_progress(
    bar: indicatif::ProgressBar,
    stats: Arc<Stats>,
    function: Arc<Hosted<Aggregate>>,
) -> super::LiveProgress {
    super::show_progress(bar, move || {
        let lag = stats.group_lag.load(Relaxed);
        (
            stats.records.load(Relaxed),
            format!(
                "messages, {} samples written | workers {} (peak {}), lag {}",
                function.totals().stats.samples,
                stats.workers.load(Relaxed),
                stats.max_workers_seen.load(Relaxed),
                if lag < 0 {
                    "?".to_owned()
                } else {
                    lag.to_string()
                }
            ),
        )
    })
}

/// The demo's summary, with the lake's own count of `raw` rows to check the totals against.
async fn verify(
    args: &DemoArgs,
    sql: &LakeSql,
    aggregated: &Aggregated,
    alarms: &AlarmRun,
    started: Instant,
) -> anyhow::Result<DemoSummary> {
    let written = &aggregated.written;
    Ok(DemoSummary {
        vms: args.vms,
        intervals: aggregated.intervals,
        published: aggregated.published,
        consumed: aggregated.run.records,
        samples_written: written.stats.samples,
        rejected: written.stats.rejected,
        objects: written.objects as u64,
        raw_rows: count(sql, Table::Raw).await?,
        lake: args.lake.clone(),
        seconds: started.elapsed().as_secs_f64(),
        max_workers_seen: aggregated.run.max_workers_seen,
        scaling_events: aggregated.run.scaling_events,
        alarm_notifications: alarms.notifications,
        alarm_sent: alarms.sent,
        alarm_target: alarms.target.clone(),
    })
}

/// Prints two SQL answers over the lake, the alarm notifications, and how to ask more.
async fn print_answers(args: &DemoArgs, sql: &LakeSql, alarms: &AlarmRun) -> anyhow::Result<()> {
    for (title, q) in [
        ("Samples per cloud (raw)", BY_CSP),
        ("Busiest VMs by average CPU % (rollup_1m)", BUSIEST),
    ] {
        let out = damselfly_query::format(&sql.query(q).await?, OutputFormat::Table)?;
        println!("{title}\n{q}\n{out}\n");
    }
    println!(
        "Alarm notifications: {} sent to {} (rules: {}/_config/alarm-rules.json)",
        alarms.sent, alarms.target, args.lake
    );
    for subject in alarms.subjects.iter().take(SHOWN_NOTIFICATIONS) {
        println!("  {subject}");
    }
    if alarms.subjects.len() > SHOWN_NOTIFICATIONS {
        println!(
            "  ... and {} more",
            alarms.subjects.len() - SHOWN_NOTIFICATIONS
        );
    }
    println!();
    println!(
        "Ask your own: damselfly sql --lake {} \"SELECT metric, count(*) FROM raw GROUP BY metric\"",
        args.lake
    );
    Ok(())
}

/// The demo's closing line.
fn summary_line(s: &DemoSummary) -> String {
    format!(
        "demo: {} VMs x {} intervals -> {} messages published, {} consumed by up to {} workers ({} scaling events), {} samples in raw ({} expected), {} rejected, {} objects in {} ({:.1}s)",
        s.vms,
        s.intervals,
        s.published,
        s.consumed,
        s.max_workers_seen,
        s.scaling_events,
        s.raw_rows,
        s.published * Fleet::samples_per_message() as u64,
        s.rejected,
        s.objects,
        s.lake,
        s.seconds
    )
}

/// What the demo's alarm function did.
struct AlarmRun {
    notifications: u64,
    sent: u64,
    target: String,
    /// Subjects of the notifications written to the outbox (empty when sent to SNS).
    subjects: Vec<String>,
}

/// Runs the alarm function over the whole topic with the demo rules, then one tick.
async fn run_alarms(
    args: &DemoArgs,
    brokers: &str,
    published: u64,
    progress: &MultiProgress,
) -> anyhow::Result<AlarmRun> {
    let rules = damselfly_alarm::RulesStore::open(&format!(
        "{}/{}",
        args.lake,
        damselfly_alarm::config::DEFAULT_RULES_KEY
    ))?;
    rules.save(&rules.parse(DEMO_RULES.as_bytes())?).await?;
    let outbox = Path::new(&args.lake).join(OUTBOX);
    let settings = damselfly_alarm::config::Settings {
        sns_topic_arn: args.sns_topic_arn.clone(),
        outbox: Some(outbox.display().to_string()),
        ..damselfly_core::env::defaults()?
    };
    let function = Arc::new(Hosted::new(Deployment::InProcess(
        super::alarm::handler(&args.lake, ALARM_GROUP, &settings).await?,
    )));
    let config = RunnerConfig {
        until_caught_up: true,
        scaling: ScalingConfig {
            max_workers: 1,
            ..ScalingConfig::default()
        },
        ..RunnerConfig::new(brokers, TOPIC, ALARM_GROUP)
    };
    let stats = Arc::new(Stats::default());
    let bar = output::bar(progress, None, "alarm");
    let ticker = {
        let (stats, f) = (stats.clone(), function.clone());
        super::show_progress(bar.clone(), move || {
            (
                stats.records.load(Relaxed),
                format!("messages, {} notifications", f.totals().notifications),
            )
        })
    };
    // Caught up normally takes a few seconds; a deadline keeps a stuck group from hanging the demo.
    // Ctrl-C or SIGTERM stops it too.
    let stop = async {
        tokio::select! {
            _ = tokio::time::sleep(ALARM_DEADLINE) => {},
            _ = super::shutdown_signal() => {},
        }
    };
    let run = damselfly_runner::run(&config, function.clone(), stats, stop).await?;
    if run.records < published {
        tracing::warn!(deadline = ?ALARM_DEADLINE, records = run.records, published, "the alarm function did not catch up in time; showing what it sent");
    }
    drop(ticker);
    bar.finish_and_clear();
    // One tick after catching up decides the periods that have ended (it adds to the totals).
    alarm_tick(&function).await?;
    let subjects = match std::fs::read_to_string(&outbox) {
        Ok(text) => text
            .lines()
            .filter_map(|l| serde_json::from_str::<damselfly_alarm::OutboxLine>(l).ok())
            .map(|l| l.subject)
            .collect(),
        Err(_) => Vec::new(),
    };
    let totals = function.totals();
    Ok(AlarmRun {
        notifications: totals.notifications,
        sent: totals.sent,
        target: alarm_destination(&function),
        subjects,
    })
}

/// What the demo publishes.
struct Publish {
    vms: usize,
    interval: Duration,
    intervals: u64,
    /// Intervals published at once, before the paced ones, stamped in the past.
    backlog: u64,
    seed: u64,
    publisher: Publisher,
}

/// Publishes the fleet: `backlog` intervals at once (the newest stamped one interval ago), then
/// one interval per interval of wall-clock time from now. Returns the messages the broker
/// acknowledged and the intervals published, and sets `done` at the end.
async fn publish_with_backlog(
    p: Publish,
    progress: &MultiProgress,
    done: Arc<AtomicBool>,
) -> anyhow::Result<(u64, u64)> {
    let bar = output::bar(progress, Some(p.vms as u64 * p.intervals), "publish");
    let (messages, published_intervals) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let _ticker = {
        let (messages, published_intervals, total) =
            (messages.clone(), published_intervals.clone(), p.intervals);
        super::show_progress(bar.clone(), move || {
            let done = published_intervals.load(Relaxed);
            (
                messages.load(Relaxed),
                format!("messages, interval {done}/{total}"),
            )
        })
    };
    let (messages2, intervals2) = (messages.clone(), published_intervals.clone());
    let published = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut fleet = Fleet::new(p.vms, p.seed, "ns01");
        let interval_ms = p.interval.as_millis() as i64;
        let start_ms = chrono::Utc::now().timestamp_millis() - p.backlog as i64 * interval_ms;
        let started = Instant::now();
        for i in 0..p.intervals {
            if let Some(paced) = i.checked_sub(p.backlog) {
                let due = started + p.interval * paced as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            for msg in fleet.tick(start_ms + i as i64 * interval_ms, p.interval) {
                p.publisher.send(&msg.tags.vm, &msg.to_json())?;
                messages2.fetch_add(1, Relaxed);
            }
            intervals2.store(i + 1, Relaxed);
        }
        p.publisher.flush(Duration::from_secs(60))?;
        Ok(p.publisher.deliveries().delivered.load(Relaxed))
    })
    .await
    .context("publishing thread")??;
    bar.finish_and_clear();
    done.store(true, Relaxed);
    Ok((published, published_intervals.load(Relaxed)))
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
        // The tables, and the exactly-once ledger and alarm states that describe what the last
        // demo did: the next demo starts from offset 0 on a fresh broker.
        let tables = Table::ALL.iter().map(|t| t.name());
        for name in tables.chain([damselfly_core::ledger::STATE_PREFIX]) {
            let t = dir.join(name);
            if t.exists() {
                std::fs::remove_dir_all(&t).with_context(|| format!("clearing {}", t.display()))?;
            }
        }
        let outbox = dir.join(OUTBOX);
        if outbox.exists() {
            std::fs::remove_file(&outbox)
                .with_context(|| format!("clearing {}", outbox.display()))?;
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "a lake written by `damselfly demo`; the next demo replaces it\n",
    )?;
    Ok(())
}
