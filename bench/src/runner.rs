//! The runner benchmark: records/s through `damselfly run`'s event source mapping (no-op and aggregate functions) against a bare rdkafka consumer on the same topic.
//!
//! The parent process fills a topic (librdkafka's mock cluster in this process by default, or
//! `--brokers`), then runs each contender in a child process of its own (this binary again, with
//! `--child`), so that each peak RSS is its own. Every contender reads the whole topic from the
//! earliest offset in a fresh consumer group; its clock runs from the first record it receives to
//! the last one it has processed, so group joins and the caught-up check are not counted.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_lambda_events::event::kafka::KafkaEvent;
use damselfly_agent::Fleet;
use damselfly_aggregate::Aggregate;
use damselfly_core::{Lake, Validation};
use damselfly_runner::{
    Deployment, Function, FunctionError, Hosted, RunnerConfig, ScalingConfig, Stats,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

use crate::sys;

/// Options of the runner benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated VMs (one message per VM per interval).
    #[arg(long, default_value_t = 100)]
    vms: usize,
    /// Intervals published per VM.
    #[arg(long, default_value_t = 100)]
    intervals: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Records per invocation (Lambda's BatchSize).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Runner workers (consumer-group members in the runner's process).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// An existing broker, e.g. Apache Kafka from localstack/up at 127.0.0.1:9092, instead of the
    /// in-process mock cluster; a new topic `bench-runner-<ms>` is created on it (and left there).
    #[arg(long)]
    brokers: Option<String>,
    /// Where the aggregate contender's lake goes (a local directory, emptied first).
    #[arg(long, default_value = "bench/out/runner")]
    out: std::path::PathBuf,
    /// Internal: run one contender against `--brokers` and print its figures as JSON.
    #[arg(long, hide = true, requires = "brokers")]
    child: Option<Contender>,
    /// Internal: the topic a child reads.
    #[arg(long, hide = true)]
    topic: Option<String>,
    /// Internal: the records a child expects.
    #[arg(long, hide = true)]
    expect: Option<u64>,
}

/// Who consumes the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Contender {
    /// A bare rdkafka `BaseConsumer` in a consumer group: the broker's own consume rate.
    Peer,
    /// The runner invoking a function that does nothing.
    Noop,
    /// The runner invoking the aggregate function, writing a local lake.
    Aggregate,
}

impl Contender {
    fn label(self, args: &Args) -> String {
        match self {
            Self::Peer => "bare rdkafka consumer (peer)".to_owned(),
            Self::Noop => format!(
                "runner, no-op function ({} x {} records)",
                args.workers, args.batch_size
            ),
            Self::Aggregate => format!(
                "runner, aggregate -> local lake ({} x {} records)",
                args.workers, args.batch_size
            ),
        }
    }
}

/// One contender's figures, as a child prints them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Figures {
    records: u64,
    seconds: f64,
    batches: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    peak_rss_kib: u64,
}

/// Runs the benchmark (or, with `--child`, one contender) and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(who) = args.child {
        return run_child(args, who);
    }
    sys::warn_if_debug("runner");
    // The mock cluster lives until the end of the run; children reach it over TCP.
    let (_mock, brokers, topic) = fresh_topic(args)?;
    let (messages, bytes) = publish(&brokers, &topic, args.vms, args.intervals)?;
    eprintln!(
        "published {messages} messages ({:.1} MiB of JSON) to {topic} on {}",
        bytes as f64 / 1048576.0,
        if args.brokers.is_some() {
            brokers.as_str()
        } else {
            "the mock cluster"
        }
    );
    let rows = run_contenders(args, &brokers, &topic, messages)?;
    print_table(args, &brokers, messages, &rows);
    Ok(())
}

/// `--child`: runs contender `who` over `--brokers` and `--topic` and prints its figures as JSON.
fn run_child(args: &Args, who: Contender) -> anyhow::Result<()> {
    let brokers = args.brokers.as_deref().context("--brokers")?;
    let topic = args.topic.as_deref().context("--topic")?;
    let expect = args.expect.context("--expect")?;
    let figures = match who {
        Contender::Peer => peer(brokers, topic, expect)?,
        Contender::Noop | Contender::Aggregate => runner(args, who, brokers, topic, expect)?,
    };
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

/// librdkafka's mock cluster, as `MockCluster::new` makes it.
type Mock = MockCluster<'static, DefaultProducerContext>;

/// A new topic `bench-runner-<ms>` on `--brokers`, or on a mock cluster started here (returned
/// first: the topic lives as long as it does); returns the cluster, the brokers and the topic.
fn fresh_topic(args: &Args) -> anyhow::Result<(Option<Mock>, String, String)> {
    let topic = format!(
        "bench-runner-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let (mock, brokers) = match &args.brokers {
        Some(b) => {
            sys::create_topic(b, &topic, args.partitions)?;
            (None, b.clone())
        }
        None => {
            let mock = MockCluster::new(1).context("mock cluster")?;
            mock.create_topic(&topic, args.partitions, 1)
                .context("mock topic")?;
            let b = mock.bootstrap_servers();
            (Some(mock), b)
        }
    };
    Ok((mock, brokers, topic))
}

/// Runs each contender in turn in a child process; each must process all `messages` records.
fn run_contenders(
    args: &Args,
    brokers: &str,
    topic: &str,
    messages: u64,
) -> anyhow::Result<Vec<(Contender, Figures)>> {
    let mut rows = Vec::new();
    for who in [Contender::Peer, Contender::Noop, Contender::Aggregate] {
        eprintln!("running {} ...", who.label(args));
        let f = child(args, who, brokers, topic, messages)?;
        if f.records < messages {
            bail!(
                "{} processed {} of {messages} records",
                who.label(args),
                f.records
            );
        }
        rows.push((who, f));
    }
    Ok(rows)
}

/// Prints the table: each contender's rates, batch times and peak RSS, as a ratio of the peer's
/// rate (the first row).
fn print_table(args: &Args, brokers: &str, messages: u64, rows: &[(Contender, Figures)]) {
    let samples_per_message = Fleet::samples_per_message() as f64;
    let peer_rate = rows[0].1.records as f64 / rows[0].1.seconds;
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "runner benchmark: {} VMs x {} intervals = {messages} messages ({:.0} samples), {} partitions, {}{}",
        args.vms,
        args.intervals,
        messages as f64 * samples_per_message,
        args.partitions,
        if args.brokers.is_some() {
            format!("broker {brokers}")
        } else {
            "librdkafka mock cluster".to_owned()
        },
        if cfg!(debug_assertions) {
            ", DEBUG build"
        } else {
            ", release build"
        }
    );
    println!();
    println!(
        "| consumer | seconds | messages/s | samples/s | batches | batch p50 ms | batch p99 ms | peak RSS MiB | vs peer |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (who, f) in rows {
        let rate = f.records as f64 / f.seconds;
        println!(
            "| {} | {:.2} | {:.0} | {:.0} | {} | {} | {} | {:.1} | {:.3}x |",
            who.label(args),
            f.seconds,
            rate,
            rate * samples_per_message,
            if *who == Contender::Peer {
                "-".to_owned()
            } else {
                f.batches.to_string()
            },
            ms(f.p50_ms),
            ms(f.p99_ms),
            f.peak_rss_kib as f64 / 1024.0,
            rate / peer_rate
        );
    }
}

/// Runs one contender in a child process and reads its figures.
fn child(
    args: &Args,
    who: Contender,
    brokers: &str,
    topic: &str,
    expect: u64,
) -> anyhow::Result<Figures> {
    let who_arg = match who {
        Contender::Peer => "peer",
        Contender::Noop => "noop",
        Contender::Aggregate => "aggregate",
    };
    let out = Command::new(std::env::current_exe()?)
        .args([
            "runner",
            "--child",
            who_arg,
            "--brokers",
            brokers,
            "--topic",
            topic,
        ])
        .args(["--expect", &expect.to_string()])
        .args(["--batch-size", &args.batch_size.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .arg("--out")
        .arg(&args.out)
        .output()
        .context("running a benchmark child")?;
    if !out.status.success() {
        bail!("{who_arg} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{who_arg} printed: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Publishes the seeded fleet's messages, key = VM id; returns (messages, JSON bytes).
fn publish(brokers: &str, topic: &str, vms: usize, intervals: u64) -> anyhow::Result<(u64, u64)> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.kbytes", "262144")
        .create()?;
    let mut fleet = Fleet::new(vms, 42, "ns01");
    let interval = Duration::from_secs(2);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let start_ms = now_ms - intervals as i64 * 2_000;
    let (mut n, mut bytes) = (0_u64, 0_u64);
    for i in 0..intervals {
        for m in fleet.tick(start_ms + i as i64 * 2_000, interval) {
            let json = m.to_json();
            bytes += json.len() as u64;
            let mut record = BaseRecord::<str, [u8]>::to(topic)
                .key(m.tags.vm.as_str())
                .payload(&json);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) => {
                        if !matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ) {
                            bail!("producing: {e}");
                        }
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            n += 1;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok((n, bytes))
}

/// The peer: a bare consumer in a fresh group, polling until it has seen `expect` records.
fn peer(brokers: &str, topic: &str, expect: u64) -> anyhow::Result<Figures> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-peer"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", "range,roundrobin")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut n, mut first, mut last) = (0_u64, None, Instant::now());
    while n < expect {
        if Instant::now() > deadline {
            bail!("the peer saw {n} of {expect} records in 600s");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                // Touch the payload, as any consumer does.
                std::hint::black_box(m.payload().map(<[u8]>::len));
                n += 1;
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("peer: consume error: {e}"),
            None => {}
        }
    }
    let first = first.context("no record")?;
    Ok(Figures {
        records: n,
        seconds: last.duration_since(first).as_secs_f64(),
        batches: 0,
        p50_ms: None,
        p99_ms: None,
        peak_rss_kib: sys::peak_rss_kib(),
    })
}

/// Times every invocation of the function it wraps: first start, last end, and each duration.
struct Timed<F> {
    inner: F,
    records: AtomicU64,
    clock: Mutex<Clock>,
}

#[derive(Default)]
struct Clock {
    first: Option<Instant>,
    last: Option<Instant>,
    latencies: Vec<Duration>,
}

#[async_trait::async_trait]
impl<F: Function> Function for Timed<F> {
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        let n: usize = event.records.values().map(Vec::len).sum();
        let started = Instant::now();
        self.clock
            .lock()
            .expect("clock")
            .first
            .get_or_insert(started);
        let r = self.inner.invoke(event).await;
        let ended = Instant::now();
        let mut clock = self.clock.lock().expect("clock");
        clock.last = Some(ended);
        clock.latencies.push(ended - started);
        if r.is_ok() {
            self.records.fetch_add(n as u64, Relaxed);
        }
        r
    }
}

/// Does nothing with the batch.
struct Noop;

#[async_trait::async_trait]
impl Function for Noop {
    async fn invoke(&self, _event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        Ok(serde_json::Value::Null)
    }
}

/// The runner until caught up, invoking the no-op or the aggregate function.
fn runner(
    args: &Args,
    who: Contender,
    brokers: &str,
    topic: &str,
    expect: u64,
) -> anyhow::Result<Figures> {
    let config = RunnerConfig {
        batch_size: args.batch_size,
        until_caught_up: true,
        scaling: ScalingConfig {
            interval: Duration::from_millis(500),
            ..ScalingConfig::fixed(args.workers)
        },
        ..RunnerConfig::new(brokers, topic, format!("{topic}-{who:?}"))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (records, clock) = if who == Contender::Aggregate {
        let lake = args.out.join("lake");
        let _ = std::fs::remove_dir_all(&lake);
        std::fs::create_dir_all(&lake)?;
        let lake = Lake::open(lake.to_str().context("utf-8 path")?)?;
        let f = Arc::new(Timed {
            // The aggregate handler, hosted as `damselfly run aggregate` hosts it in-process.
            inner: Hosted::new(Deployment::InProcess(Aggregate::new(
                lake,
                Validation::default(),
            ))),
            records: AtomicU64::new(0),
            clock: Mutex::default(),
        });
        rt.block_on(drive(&config, f.clone()))?;
        let clock = std::mem::take(&mut *f.clock.lock().expect("clock"));
        (f.records.load(Relaxed), clock)
    } else {
        let f = Arc::new(Timed {
            inner: Noop,
            records: AtomicU64::new(0),
            clock: Mutex::default(),
        });
        rt.block_on(drive(&config, f.clone()))?;
        let clock = std::mem::take(&mut *f.clock.lock().expect("clock"));
        (f.records.load(Relaxed), clock)
    };
    if records < expect {
        bail!("the runner processed {records} of {expect} records");
    }
    let (Some(first), Some(last)) = (clock.first, clock.last) else {
        bail!("no invocation");
    };
    let mut lat = clock.latencies;
    lat.sort();
    let pct = |p: f64| sys::nearest_rank(&lat, p).as_secs_f64() * 1e3;
    Ok(Figures {
        records,
        seconds: last.duration_since(first).as_secs_f64(),
        batches: lat.len() as u64,
        p50_ms: Some(pct(0.5)),
        p99_ms: Some(pct(0.99)),
        peak_rss_kib: sys::peak_rss_kib(),
    })
}

async fn drive(config: &RunnerConfig, f: Arc<dyn Function>) -> anyhow::Result<()> {
    let summary = tokio::time::timeout(
        Duration::from_secs(900),
        damselfly_runner::run(
            config,
            f,
            Arc::new(Stats::default()),
            std::future::pending(),
        ),
    )
    .await
    .context("the runner did not catch up in 900s")??;
    if summary.on_failure_batches > 0 || summary.invocation_errors > 0 {
        bail!("the runner failed batches: {summary:?}");
    }
    Ok(())
}
