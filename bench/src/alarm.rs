//! The alarm latency benchmark: a breaching sample published -> its notification sent, at 20,000 VMs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use damselfly_agent::{Fleet, Publisher, PublisherConfig};
use damselfly_alarm::{Alarm, Notifier, RulesStore};
use damselfly_core::Lake;
use damselfly_core::alarm::EvalConfig;
use damselfly_runner::{
    Function, FunctionError, RunSummary, RunnerConfig, RunnerError, ScalingConfig, Stats,
};
use rdkafka::mocking::MockCluster;

use crate::sys;
use damselfly_agent::run::now_ms;

/// The goal: p99 under 2 s (CloudWatch alarms need minutes).
const GOAL_P99: Duration = Duration::from_secs(2);

/// Time before the first breach: the runner joins its consumer group meanwhile.
const WARM_UP: Duration = Duration::from_secs(10);

/// The injected value: above the rule's threshold, and never produced by the simulated fleet.
const BREACH: f64 = 99.25;

/// The rule set the alarm and fleet benchmarks evaluate: CPU over 95 % within 10 s is CRITICAL.
pub const BENCH_RULES: &str = r#"{"v": 1, "rules": [{"id": "cpu-saturated", "name": "CPU saturated", "metric": "cpu_utilization",
    "statistic": "max", "period": "10s", "comparator": ">", "critical": 95, "missing_data": "ignore"}]}"#;

/// Options of the alarm benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated VMs publishing in the background.
    #[arg(long, default_value_t = 20_000)]
    vms: usize,
    /// Their collection interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long the fleet runs.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Breaching samples injected (each on a different VM), spread over the run.
    #[arg(long, default_value_t = 100)]
    breaches: usize,
    /// Partitions of the topic (and most runner workers).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// SNS topic to publish to (e.g. LocalStack's, from localstack/.env); without it, notifications
    /// go to an outbox file and the figure excludes SNS.
    #[arg(long, env = "SNS_TOPIC_ARN")]
    sns_topic_arn: Option<String>,
    /// Where the lake (alarm states, history) and rules go (wiped first).
    #[arg(long, default_value = "bench/out/alarm")]
    out: std::path::PathBuf,
}

/// The alarm handler, timing each breaching sample from its publication to the handler's return
/// (by which its notification has been sent).
struct Timed {
    alarm: Alarm,
    published: Published,
    latencies: Mutex<Vec<Duration>>,
    sent: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl Function for Timed {
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        let breached: Vec<String> = event
            .records
            .values()
            .flatten()
            .filter_map(|r| {
                let v = base64::engine::general_purpose::STANDARD
                    .decode(r.value.as_deref()?)
                    .ok()?;
                let msg = damselfly_schemas::MetricMessage::from_json(&v).ok()?;
                (msg.metrics.get("cpu_utilization") == Some(&BREACH)).then_some(msg.tags.vm)
            })
            .collect();
        let summary = self
            .alarm
            .handle(event)
            .await
            .map_err(|e| damselfly_runner::hosted::class_of(&e))?;
        let done = Instant::now();
        self.sent.fetch_add(summary.sent, Relaxed);
        let published = self.published.lock().expect("not poisoned");
        let mut lat = self.latencies.lock().expect("not poisoned");
        for vm in breached {
            if let Some(at) = published.get(&vm) {
                lat.push(done.duration_since(*at));
            }
        }
        Ok(serde_json::to_value(summary).expect("summaries serialize"))
    }
}

/// When each breaching sample was handed to the producer, by its VM.
type Published = Arc<Mutex<HashMap<String, Instant>>>;

impl Timed {
    /// The alarm handler over a lake in `out`, the rules at `rules` and the notifier of
    /// `--sns-topic-arn` (or an outbox file); returns it with where its notifications go.
    fn new(
        args: &Args,
        out: &Path,
        rules: &Path,
        rt: &tokio::runtime::Runtime,
        published: Published,
    ) -> anyhow::Result<(Self, String)> {
        let notifier = match &args.sns_topic_arn {
            Some(arn) => rt.block_on(Notifier::sns(arn.clone())),
            None => Notifier::Outbox(out.join("outbox.jsonl")),
        };
        let destination = notifier.destination();
        let lake = Lake::open(out.join("lake").to_str().context("utf-8 path")?)?;
        let timed = Self {
            alarm: Alarm::new(
                lake,
                RulesStore::open(rules.to_str().context("utf-8 path")?)?,
                notifier,
                "bench",
                EvalConfig::default(),
            ),
            published,
            latencies: Mutex::default(),
            sent: Default::default(),
        };
        Ok((timed, destination))
    }
}

/// Runs the benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let out = sys::fresh_dir(&args.out)?;
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    cluster.create_topic("metrics", args.partitions, 1)?;
    let brokers = cluster.bootstrap_servers();
    let rules = out.join("rules.json");
    std::fs::write(&rules, BENCH_RULES)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let published: Published = Arc::new(Mutex::new(HashMap::new()));
    let (f, destination) = Timed::new(args, &out, &rules, &rt, published.clone())?;
    let f = Arc::new(f);

    let stop = Arc::new(AtomicBool::new(false));
    let fleet = spawn_fleet(args, &brokers, &stop, &published);
    let cpu0 = sys::sample_self()?;
    let run = spawn_runner(args, &rt, &brokers, &f);
    let injected = fleet
        .join()
        .map_err(|_| anyhow::anyhow!("fleet thread panicked"))??;
    stop.store(true, Relaxed);
    let summary = rt.block_on(run)??;
    let cpu1 = sys::sample_self()?;
    print_report(
        args,
        &f,
        injected,
        summary.records,
        (&cpu0, &cpu1),
        &destination,
    )
}

/// The fleet's shape, copied out of the options for its thread.
#[derive(Debug, Clone, Copy)]
struct FleetPlan {
    vms: usize,
    interval: Duration,
    duration: Duration,
    breaches: usize,
}

/// Publishes the fleet on a thread of its own until done or `stop`; the thread returns the
/// breaches it injected.
fn spawn_fleet(
    args: &Args,
    brokers: &str,
    stop: &Arc<AtomicBool>,
    published: &Published,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    let plan = FleetPlan {
        vms: args.vms,
        interval: args.interval,
        duration: args.duration,
        breaches: args.breaches,
    };
    let (brokers, stop, published) = (brokers.to_owned(), stop.clone(), published.clone());
    std::thread::spawn(move || publish_fleet(&brokers, &stop, &published, plan))
}

/// The fleet, paced, with a breaching sample on a fresh VM now and then (noted in `published`
/// as it is sent); returns the breaches injected.
fn publish_fleet(
    brokers: &str,
    stop: &AtomicBool,
    published: &Mutex<HashMap<String, Instant>>,
    plan: FleetPlan,
) -> anyhow::Result<u64> {
    let FleetPlan {
        vms,
        interval,
        duration,
        breaches,
    } = plan;
    let publisher = Publisher::new(&PublisherConfig::new(brokers, "metrics"))?;
    let mut fleet = Fleet::new(vms, 1, "bench");
    let intervals = (duration.as_millis() / interval.as_millis()).max(1) as u32;
    // No breach while the runner joins its group (a few seconds on the mock cluster).
    let warm_up = (WARM_UP.as_millis() / interval.as_millis()) as u32;
    let every = ((intervals.saturating_sub(warm_up)) as usize / breaches.max(1)).max(1);
    let (start, mut injected) = (Instant::now(), 0u64);
    for i in 0..intervals {
        if stop.load(Relaxed) {
            break;
        }
        if let Some(wait) = (start + interval * i).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ts = now_ms();
        let mut msgs = fleet.tick(ts, interval);
        let mut breach_at = None;
        if i >= warm_up
            && ((i - warm_up) as usize) % every == every / 2
            && (injected as usize) < breaches
        {
            // A VM of this interval spikes; sent first, so its latency includes the
            // rest of the interval's traffic queued behind it.
            let k = (injected as usize * 7919) % msgs.len();
            msgs[k].metrics.insert("cpu_utilization".into(), BREACH);
            msgs.swap(0, k);
            breach_at = Some(msgs[0].tags.vm.clone());
            injected += 1;
        }
        for (j, m) in msgs.iter().enumerate() {
            if j == 0
                && let Some(vm) = &breach_at
            {
                published
                    .lock()
                    .expect("not poisoned")
                    .insert(vm.clone(), Instant::now());
            }
            publisher.send(&m.tags.vm, &m.to_json())?;
        }
    }
    publisher.flush(Duration::from_secs(60))?;
    Ok(injected)
}

/// Runs the alarm function under the runner (one worker, batches of 1,000 within 100 ms) on
/// the runtime, until 15 s after `--duration`.
fn spawn_runner(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    f: &Arc<Timed>,
) -> tokio::task::JoinHandle<Result<RunSummary, RunnerError>> {
    let config = RunnerConfig {
        batch_size: 1000,
        batching_window: Duration::from_millis(100),
        scaling: ScalingConfig::fixed(1),
        ..RunnerConfig::new(brokers, "metrics", "bench-alarm")
    };
    let f = f.clone();
    let deadline = args.duration + Duration::from_secs(15);
    rt.spawn(async move {
        damselfly_runner::run(
            &config,
            f,
            Arc::new(Stats::default()),
            tokio::time::sleep(deadline),
        )
        .await
    })
}

/// Prints the latency table: breaches injected and timed, p50/p99/max against the goal, CPU
/// between the two readings of `cpu` and peak RSS; fails when no breach was timed.
fn print_report(
    args: &Args,
    f: &Timed,
    injected: u64,
    records: u64,
    (cpu0, cpu1): (&sys::Sample, &sys::Sample),
    destination: &str,
) -> anyhow::Result<()> {
    let mut lat = std::mem::take(&mut *f.latencies.lock().expect("not poisoned"));
    if lat.is_empty() {
        bail!("no breaching sample reached the alarm function ({injected} injected)");
    }
    lat.sort();
    let pct = |p: f64| sys::nearest_rank(&lat, p);
    let (p50, p99, max) = (pct(0.5), pct(0.99), *lat.last().expect("not empty"));
    let sent = f.sent.load(Relaxed);
    println!(
        "\nalarm latency: {} VMs every {} ({:.0} msg/s) on a {}-partition mock cluster, one runner worker, \
         rule max(cpu) > 95 over 10s, notifications to {destination}",
        args.vms,
        humantime::format_duration(args.interval),
        args.vms as f64 / args.interval.as_secs_f64(),
        args.partitions
    );
    println!(
        "| breaches injected | timed | notifications sent | p50 | p99 | max | goal p99 | records | CPU % | peak RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {injected} | {} | {sent} | {:.0} ms | {:.0} ms | {:.0} ms | < {} ({}) | {} | {:.0} | {:.1} MiB |",
        lat.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        humantime::format_duration(GOAL_P99),
        if p99 < GOAL_P99 { "meets" } else { "MISSES" },
        records,
        sys::cpu_pct(cpu0, cpu1, sys::clock_ticks()),
        sys::peak_rss_kib() as f64 / 1024.0,
    );
    println!(
        "latency = breaching message handed to the producer -> the alarm handler returned, its SNS \
         publish (or outbox append) and state writes done; CPU = this whole process (fleet, broker, \
         runner) in % of one core"
    );
    Ok(())
}
