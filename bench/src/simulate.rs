//! The fleet simulator benchmark: can one process publish 20,000 VMs every 2 s, in each wire format?

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use damselfly_agent::wire::{self, WireFormat};
use damselfly_agent::{Fleet, Publisher, PublisherConfig};
use rdkafka::mocking::MockCluster;

use crate::sys;
use damselfly_agent::run::now_ms;

/// The fleet size the issue asks one process to sustain.
const GOAL_VMS: usize = 20_000;

/// How far behind its due time an interval may start and still count as on time.
const LATE: Duration = Duration::from_millis(50);

/// Options of the simulator benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Virtual VMs.
    #[arg(long, default_value_t = GOAL_VMS)]
    vms: usize,
    /// Collection interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Paced intervals per format (the sustained run).
    #[arg(long, default_value_t = 10)]
    intervals: u32,
    /// Intervals per format published as fast as possible (the capacity run).
    #[arg(long, default_value_t = 3)]
    burst_intervals: u32,
    /// Publish to this broker (host:port; needs --topic) instead of an in-process mock cluster,
    /// whose broker threads then count in the CPU figure.
    #[arg(long)]
    brokers: Option<String>,
    /// Topic on --brokers; it must exist.
    #[arg(long)]
    topic: Option<String>,
    /// Producer compression.
    #[arg(long, default_value = "lz4")]
    compression: String,
    /// TLS, SASL and extra librdkafka producer settings (e.g. --kafka-option linger.ms=200).
    #[command(flatten)]
    security: damselfly_kafka::SecurityArgs,
    /// Wire formats to measure (repeatable) [default: all three].
    #[arg(long = "format", value_parser = ["native", "telegraf-json", "influx"])]
    formats: Vec<String>,
}

/// What one format's runs measured.
struct Row {
    format: &'static str,
    bytes_per_msg: f64,
    burst_msgs_per_s: f64,
    send_p50: Duration,
    send_p99: Duration,
    send_max: Duration,
    max_backlog: u64,
    late_intervals: u32,
    delivered: u64,
    expected: u64,
    cpu_pct: f64,
}

/// Runs the benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (_cluster, brokers, topic, broker_label) = match &args.brokers {
        Some(b) => {
            let topic = args.topic.clone().context("--brokers needs --topic")?;
            (None, b.clone(), topic, format!("broker {b}"))
        }
        None => {
            let cluster = MockCluster::new(1).context("starting the mock cluster")?;
            cluster
                .create_topic("metrics", 12, 1)
                .context("creating the topic")?;
            let b = cluster.bootstrap_servers();
            (
                Some(cluster),
                b,
                "metrics".to_owned(),
                "in-process librdkafka mock cluster (its CPU counts)".to_owned(),
            )
        }
    };
    let hz = sys::clock_ticks();
    let formats = [
        ("native", WireFormat::Native),
        ("telegraf-json", WireFormat::TelegrafJson),
        ("influx", WireFormat::Influx),
    ];
    let mut rows = Vec::new();
    for (name, format) in formats {
        if !args.formats.is_empty() && !args.formats.iter().any(|f| f == name) {
            continue;
        }
        let publisher = Publisher::new(&PublisherConfig {
            compression: args.compression.clone(),
            ..PublisherConfig::on(args.security.connection(&brokers)?, &topic)
        })?;
        rows.push(measure(args, name, format, &publisher, hz)?);
    }
    print_table(args, &rows, &broker_label);
    Ok(())
}

fn measure(
    args: &Args,
    name: &'static str,
    format: WireFormat,
    publisher: &Publisher,
    hz: u64,
) -> anyhow::Result<Row> {
    let mut fleet = Fleet::new(args.vms, 1, "bench");
    let interval_ms = args.interval.as_millis() as i64;
    let start_ms = now_ms();
    let total = u64::from(args.burst_intervals + args.intervals) * args.vms as u64;
    let bar = sys::progress_bar(
        total,
        "{prefix:>14} [{bar:30}] {pos}/{len} messages ({elapsed})",
        name,
    );

    // Capacity: as fast as the producer takes them.
    let mut bytes = 0u64;
    let mut sent = 0u64;
    let burst_start = Instant::now();
    let mut i = 0i64;
    for _ in 0..args.burst_intervals {
        for msg in fleet.tick(start_ms + i * interval_ms, args.interval) {
            let payload = wire::encode(&msg, format);
            bytes += payload.len() as u64;
            publisher.send(&msg.tags.vm, &payload)?;
            sent += 1;
        }
        bar.set_position(sent);
        i += 1;
    }
    publisher.flush(Duration::from_secs(120))?;
    let burst_msgs_per_s = sent as f64 / burst_start.elapsed().as_secs_f64();

    // Sustained: each interval at its wall-clock time; how long the sending takes, and how far
    // the broker's acknowledgements trail.
    let cpu_before = sys::sample_self()?;
    let paced_start = Instant::now();
    let mut send_times = Vec::new();
    let (mut max_backlog, mut late) = (0u64, 0u32);
    for k in 0..args.intervals {
        let due = paced_start + args.interval * k;
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            // Behind schedule: the previous interval's sending overran its slot.
            None if Instant::now() - due > LATE => late += 1,
            None => {}
        }
        let acked = publisher.deliveries().delivered.load(Relaxed);
        max_backlog = max_backlog.max(sent.saturating_sub(acked));
        let t = Instant::now();
        for msg in fleet.tick(start_ms + i * interval_ms, args.interval) {
            let payload = wire::encode(&msg, format);
            bytes += payload.len() as u64;
            publisher.send(&msg.tags.vm, &payload)?;
            sent += 1;
        }
        send_times.push(t.elapsed());
        bar.set_position(sent);
        i += 1;
    }
    publisher.flush(Duration::from_secs(120))?;
    let cpu_after = sys::sample_self()?;
    bar.finish_and_clear();
    send_times.sort();
    let pct = |p: f64| sys::nearest_rank(&send_times, p);
    Ok(Row {
        format: name,
        bytes_per_msg: bytes as f64 / sent as f64,
        burst_msgs_per_s,
        send_p50: pct(0.5),
        send_p99: pct(0.99),
        send_max: *send_times.last().expect("at least one interval"),
        max_backlog,
        late_intervals: late,
        delivered: publisher.deliveries().delivered.load(Relaxed),
        expected: sent,
        cpu_pct: sys::cpu_pct(&cpu_before, &cpu_after, hz),
    })
}

fn print_table(args: &Args, rows: &[Row], broker: &str) {
    let need = args.vms as f64 / args.interval.as_secs_f64();
    println!(
        "\nfleet simulator: {} VMs every {} ({need:.0} msg/s, {} samples/msg), {}, compression {}",
        args.vms,
        humantime::format_duration(args.interval),
        Fleet::samples_per_message(),
        broker,
        args.compression
    );
    println!(
        "{:<14} {:>9} {:>12} {:>11} {:>10} {:>10} {:>10} {:>6} {:>12} {:>8} {:>8}",
        "format",
        "B/msg",
        "burst msg/s",
        "burst/need",
        "send p50",
        "send p99",
        "send max",
        "late",
        "max backlog",
        "CPU %",
        "acked"
    );
    for r in rows {
        println!(
            "{:<14} {:>9.0} {:>12.0} {:>10.2}x {:>10.0?} {:>10.0?} {:>10.0?} {:>6} {:>12} {:>8.0} {:>7.1}%",
            r.format,
            r.bytes_per_msg,
            r.burst_msgs_per_s,
            r.burst_msgs_per_s / need,
            r.send_p50,
            r.send_p99,
            r.send_max,
            r.late_intervals,
            r.max_backlog,
            r.cpu_pct,
            100.0 * r.delivered as f64 / r.expected as f64,
        )
    }
    let sustained = rows
        .iter()
        .all(|r| r.late_intervals == 0 && r.send_max < args.interval && r.delivered == r.expected);
    println!(
        "sustained {} VMs at {} in every format: {} (send = generate + encode + enqueue one \
         interval; late = intervals that started behind schedule; backlog = unacknowledged messages \
         at an interval's start; CPU = whole process during the paced run, % of one core, {} cores)",
        args.vms,
        humantime::format_duration(args.interval),
        if sustained { "yes" } else { "NO" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("peak RSS: {:.1} MiB", sys::peak_rss_kib() as f64 / 1024.0);
}
