//! The fleet benchmark (issue 9): N simulated VMs every 2 s through Apache Kafka, the autoscaling aggregate and alarm functions, into the LocalStack lake and SNS, for growing N.
//!
//! For each fleet size the harness creates a fresh topic and a fresh lake prefix, both unique to
//! the run (`fleet-N-<ms>`, `fleet/<run>/nN`) so that runs never see each other's data, starts
//! `damselfly run aggregate` and `damselfly run alarm` (autoscaling, Prometheus metrics on), waits
//! until both have joined their groups, then runs `damselfly simulate` for `--duration`, starting
//! on an interval boundary so that each sample's `ts` is the moment its interval's publishing
//! began. Every second it scrapes both runners' metrics (workers, lag), samples /proc of every
//! process (the functions, the simulator, Kafka, LocalStack), lists the lake's `raw` table (the
//! first time an object is listed is when its samples became visible) and, every `--probe-every`,
//! publishes a breaching sample on a VM of its own whose SNS notification it times through an SQS
//! queue subscribed to the topic. After the simulator ends it waits (at most `--drain`) until both
//! groups have consumed everything, stops the functions, copies the raw objects and counts them
//! with DuckDB: rows, distinct samples, per-sample latency.
//!
//! The harness's own clients (topic creation, the probe publisher) and its children (`damselfly
//! simulate`, `damselfly run`) all use the connection of `--brokers` and the security flags, so the
//! fleet runs over PLAINTEXT or SASL_SSL alike; a child gets the SASL password in its environment.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use damselfly_agent::run::now_ms;
use damselfly_agent::{Fleet, Publisher, PublisherConfig};
use damselfly_core::Lake;
use object_store::ObjectStoreExt as _;

use crate::sys;

/// The injected value: above the rule's threshold, and never produced by the simulated fleet.
const BREACH: f64 = 99.25;

/// Issue 25's goals at 20,000 VMs: publish-to-lake p99.
const GOAL_P99: Duration = Duration::from_secs(15);
/// Breach-to-SNS p99.
const GOAL_SNS_P99: Duration = Duration::from_secs(5);
/// Lag drained this soon after publishing ends.
const GOAL_DRAIN: Duration = Duration::from_secs(30);
/// Peak RSS of each runner process (`damselfly run`), MiB.
const GOAL_RSS_MIB: f64 = 512.0;

/// A run whose publish-to-lake p99 passes this has clearly failed: the sweep stops.
const FAIL_P99: Duration = Duration::from_secs(60);

/// Options of the fleet benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fleet sizes, in order; the sweep stops after the first that clearly fails.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,1000,5000,10000,20000"
    )]
    vms: Vec<usize>,
    /// Stop after the last size (by default the sweep keeps doubling while every goal holds and the budget allows).
    #[arg(long)]
    no_ramp: bool,
    /// Collection interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long the fleet publishes at each size.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After publishing, how long to wait for both consumer groups to catch up.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// No new size is started once this much time has passed.
    #[arg(long, default_value = "24m", value_parser = humantime::parse_duration)]
    budget: Duration,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Most workers of each function (`--max-workers`) [default: 2 per core]. The functions run
    /// in process here, on the cores everything shares: past two workers per core a worker adds
    /// memory and contention, not throughput (issue 25: 12 workers peaked at 1,126 MiB with 37 s
    /// p99; 4 kept up with 20,000 VMs).
    #[arg(long)]
    max_workers: Option<usize>,
    /// Records of lag per worker (`--lag-threshold`).
    #[arg(long, default_value_t = 3000)]
    lag_threshold: u64,
    /// Records per invocation (`--batch-size`): about the most a 6 MB Lambda payload holds with
    /// the full metric set (3,455 records).
    #[arg(long, default_value_t = 3000)]
    batch_size: usize,
    /// How often a breaching probe sample is published (from 10 s into the run).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    probe_every: Duration,
    /// Kafka bootstrap brokers (localstack/.env: KAFKA_BROKERS, or DAMSELFLY_SASL_BROKERS with the
    /// SASL flags).
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    /// TLS, SASL and extra librdkafka settings, for the harness's clients and every child.
    #[command(flatten)]
    security: damselfly_kafka::SecurityArgs,
    /// Consumer-group protocol of the functions (`damselfly run --group-protocol`): classic or
    /// consumer (KIP-848).
    #[arg(long, env = "KAFKA_GROUP_PROTOCOL", default_value_t = damselfly_runner::GroupProtocol::Classic)]
    group_protocol: damselfly_runner::GroupProtocol,
    /// The lake's bucket; each size writes under s3://BUCKET/fleet/RUN/nN.
    #[arg(long, env = "LAKE_BUCKET")]
    bucket: String,
    /// SNS topic the alarm function publishes to.
    #[arg(long, env = "SNS_TOPIC_ARN")]
    sns_topic_arn: String,
    /// The `damselfly` binary [default: next to this one].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Python with duckdb, boto3 and matplotlib [default: ~/.cache/damselfly/tools-venv/bin/python].
    #[arg(long, env = "DAMSELFLY_PYTHON")]
    python: Option<PathBuf>,
    /// Where time series, logs and summaries go (emptied first).
    #[arg(long, default_value = "bench/out/fleet")]
    out: PathBuf,
    /// The helper scripts (sqs_watch.py, lake_stats.py, plot.py).
    #[arg(long, default_value = "bench/fleet")]
    scripts: PathBuf,
    /// Where the plots are written [default: the scripts directory, whose plots the README links;
    /// give a scratch directory for ad-hoc runs so the committed plots stay the sweep's].
    #[arg(long)]
    plots: Option<PathBuf>,
    /// localstack/up's run directory (kafka.pid and localstack.pid: their CPU and memory are sampled).
    #[arg(long, default_value = "localstack/.run")]
    stack_run: PathBuf,
}

/// One second of a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Second {
    t_s: f64,
    agg_workers: f64,
    agg_lag: f64,
    agg_records: f64,
    alarm_workers: f64,
    alarm_lag: f64,
    raw_objects: usize,
    cpu_aggregate: f64,
    cpu_alarm: f64,
    cpu_simulate: f64,
    cpu_kafka: f64,
    cpu_localstack: f64,
    rss_aggregate_mib: f64,
    rss_alarm_mib: f64,
    rss_kafka_mib: f64,
    rss_localstack_mib: f64,
}

/// What one fleet size measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Row {
    vms: usize,
    load_avg: String,
    published_msgs: u64,
    published_samples: u64,
    publish_seconds: f64,
    msgs_per_s: f64,
    samples_per_s: f64,
    lake_files: u64,
    lake_rows: u64,
    lake_distinct: u64,
    lost: i64,
    duplicated: u64,
    rejected: u64,
    lake_p50_s: Option<f64>,
    lake_p99_s: Option<f64>,
    lake_max_s: Option<f64>,
    probes: usize,
    probes_notified: usize,
    sns_p50_s: Option<f64>,
    sns_p99_s: Option<f64>,
    cpu_aggregate: f64,
    cpu_alarm: f64,
    cpu_simulate: f64,
    cpu_kafka: f64,
    cpu_localstack: f64,
    hwm_aggregate_mib: f64,
    hwm_alarm_mib: f64,
    hwm_simulate_mib: f64,
    rss_kafka_mib: f64,
    rss_localstack_mib: f64,
    max_workers_aggregate: f64,
    max_workers_alarm: f64,
    max_lag_aggregate: f64,
    lag_at_publish_end: f64,
    invocation_mean_ms: Option<f64>,
    drained: bool,
    drain_s: f64,
    holds: bool,
}

/// Runs the sweep, prints its table and renders the plots.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::prepare(args)?;
    let rows = sweep(args, &env, started)?;
    print_table(args, &env.conn, &rows, started.elapsed());
    render_plots(args, &env)
}

/// Measures each size in turn, writing summary.json after each; past the last size it keeps
/// doubling while every goal holds (unless `--no-ramp`), and it stops at the budget or at a size
/// that clearly failed.
fn sweep(args: &Args, env: &Env, started: Instant) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    let mut sizes = args.vms.clone();
    let mut i = 0;
    while i < sizes.len() {
        let n = sizes[i];
        if started.elapsed() > args.budget {
            eprintln!(
                "budget of {} spent: not starting {n} VMs",
                humantime::format_duration(args.budget)
            );
            break;
        }
        let row = one(args, env, n)?;
        eprintln!("{}", markdown_row(&row));
        let (clearly_failed, holds) = (
            !row.drained
                || row.lost != 0
                || row.lake_p99_s.is_none_or(|p| p > FAIL_P99.as_secs_f64()),
            row.holds,
        );
        rows.push(row);
        std::fs::write(
            env.out.join("summary.json"),
            serde_json::to_vec_pretty(&rows)?,
        )?;
        if clearly_failed {
            eprintln!("{n} VMs clearly failed: the sweep stops here");
            break;
        }
        if i + 1 == sizes.len() && holds && !args.no_ramp {
            sizes.push(n * 2);
        }
        i += 1;
    }
    Ok(rows)
}

/// Renders the plots of the output directory with plot.py; a failure is reported, not fatal.
fn render_plots(args: &Args, env: &Env) -> anyhow::Result<()> {
    let plots = args.plots.as_ref().unwrap_or(&env.scripts);
    std::fs::create_dir_all(plots).with_context(|| format!("creating {}", plots.display()))?;
    let plot = Command::new(&env.python)
        .arg(env.scripts.join("plot.py"))
        .arg(&env.out)
        .arg(plots)
        .status()
        .context("running plot.py")?;
    if !plot.success() {
        eprintln!(
            "plot.py failed: pip install -r bench/fleet/requirements.txt into {}",
            env.python.display()
        );
    }
    Ok(())
}

/// What every size shares.
struct Env {
    bin: PathBuf,
    python: PathBuf,
    out: PathBuf,
    scripts: PathBuf,
    rules: PathBuf,
    run_id: i64,
    /// The connection of the harness's clients and of every child.
    conn: damselfly_kafka::Connection,
    /// The broker JVM of localstack/up.
    kafka: Option<u32>,
    localstack: Option<u32>,
}

impl Env {
    /// Finds the `damselfly` binary and the Python, empties the output directory, writes the
    /// rules, reads the stack's pids and announces the run.
    fn prepare(args: &Args) -> anyhow::Result<Self> {
        let conn = args
            .security
            .connection(&args.brokers)
            .context("the Kafka connection")?;
        let bin = match &args.bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("binary directory")?
                .join("damselfly"),
        };
        if !bin.exists() {
            bail!(
                "{} not found: cargo build --release -p damselfly-bench -p damselfly",
                bin.display()
            );
        }
        let python = args.python.clone().unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/damselfly/tools-venv/bin/python")
        });
        let out = sys::fresh_dir(&args.out)?;
        let scripts = std::fs::canonicalize(&args.scripts)?;
        let run_id = now_ms();
        let rules = out.join("rules.json");
        std::fs::write(&rules, crate::alarm::BENCH_RULES)?;
        let env = Env {
            bin,
            python,
            out,
            scripts,
            rules,
            run_id,
            conn,
            kafka: read_pid(&args.stack_run.join("kafka.pid")),
            localstack: read_pid(&args.stack_run.join("localstack.pid")),
        };
        eprintln!(
            "fleet run {run_id}: brokers {} ({}), group protocol {}, kafka pid {:?}, localstack pid {:?}, load average {}",
            env.conn.brokers,
            env.conn.security.describe(),
            args.group_protocol,
            env.kafka,
            env.localstack,
            sys::load_average()
        );
        Ok(env)
    }
}

/// A process sampled every second.
struct Watched {
    pid: u32,
    first: Option<sys::Sample>,
    prev: Option<sys::Sample>,
    last: Option<sys::Sample>,
    max_rss_kib: u64,
}

impl Watched {
    fn new(pid: Option<u32>) -> Option<Self> {
        pid.map(|pid| Self {
            pid,
            first: None,
            prev: None,
            last: None,
            max_rss_kib: 0,
        })
    }

    /// Samples /proc; returns (CPU % since the previous sample, RSS MiB).
    fn sample(&mut self, hz: u64) -> (f64, f64) {
        // An exited, not yet reaped child (a zombie) has no memory figures: keep the last reading.
        let Ok(s) = sys::sample(self.pid)
            .map_err(drop)
            .and_then(|s| if s.hwm_kib > 0 { Ok(s) } else { Err(()) })
        else {
            return (0.0, 0.0);
        };
        self.first.get_or_insert(s);
        self.prev = self.last.replace(s);
        self.max_rss_kib = self.max_rss_kib.max(s.rss_kib);
        let cpu = self.prev.map_or(0.0, |p| sys::cpu_pct(&p, &s, hz));
        (cpu, s.rss_kib as f64 / 1024.0)
    }

    /// CPU % of one core between the first and the last sample.
    fn cpu_whole(&self, hz: u64) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => sys::cpu_pct(&a, &b, hz),
            _ => 0.0,
        }
    }

    fn hwm_mib(&self) -> f64 {
        self.last.map_or(0.0, |s| s.hwm_kib as f64 / 1024.0)
    }
}

/// Measures one fleet size.
fn one(args: &Args, env: &Env, n: usize) -> anyhow::Result<Row> {
    let stage = Stage::prepare(args, env, n)?;
    let mut watch = SqsWatch::start(args, env, &stage)?;
    let mut functions = Functions::start(args, env, &stage)?;
    functions.wait_joined(&stage.dir)?;
    let (mut sim, sim_start) = start_simulator(args, env, &stage)?;
    let mut sampling = Sampling::new(env, &stage, &functions, &sim)?;
    sampling.until_drained(
        args,
        &stage,
        &functions,
        &mut sim,
        sim_start,
        &watch.receipts,
    )?;
    let sim_end = sampling.sim_end.context("simulator end")?;
    let drain_s = sampling.drained_at.map_or(args.drain.as_secs_f64(), |d| {
        d.duration_since(sim_end).as_secs_f64()
    });
    sampling.wind_down(&stage, &mut functions, &mut watch, sim.id())?;
    let lake_stats = lake_stats(env, &stage, &sampling.first_seen)?;
    write_timeline(&stage.dir, &sampling.seconds)?;
    figures(&stage, &sampling, &watch.receipts, &lake_stats, drain_s)
}

/// What one fleet size runs against: its directory, its topic and its lake.
struct Stage {
    n: usize,
    /// Clock ticks per second of /proc.
    hz: u64,
    /// Where the size's logs, outputs and timeline go (`OUT/nN`).
    dir: PathBuf,
    /// The load average when the size started.
    load_avg: String,
    topic: String,
    lake_url: String,
    rt: tokio::runtime::Runtime,
    lake: Lake,
}

impl Stage {
    /// Creates the size's directory, a fresh topic and the handle of a fresh lake prefix.
    fn prepare(args: &Args, env: &Env, n: usize) -> anyhow::Result<Self> {
        let hz = sys::clock_ticks();
        let dir = env.out.join(format!("n{n}"));
        std::fs::create_dir_all(&dir)?;
        let load_avg = sys::load_average();
        let topic = format!("fleet-{n}-{}", now_ms());
        sys::create_topic_on(&env.conn, &topic, args.partitions)?;
        let lake_url = format!("s3://{}/fleet/{}/n{n}", args.bucket, env.run_id);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let lake = Lake::open(&lake_url)?;
        Ok(Self {
            n,
            hz,
            dir,
            load_avg,
            topic,
            lake_url,
            rt,
            lake,
        })
    }
}

/// Notifications received from SQS: (when, ms since the epoch; the message's text).
type Receipts = Arc<Mutex<Vec<(i64, String)>>>;

/// sqs_watch.py: an SQS queue subscribed to the SNS topic, to time the alarm path end to end.
struct SqsWatch {
    child: Kid,
    receipts: Receipts,
}

impl SqsWatch {
    /// Starts sqs_watch.py, collects what it prints on a thread, and waits until it has subscribed.
    fn start(args: &Args, env: &Env, stage: &Stage) -> anyhow::Result<Self> {
        let mut child = Kid(Command::new(&env.python)
            .arg(env.scripts.join("sqs_watch.py"))
            .arg(format!("fleet-{}-n{}", env.run_id, stage.n))
            .arg(&args.sns_topic_arn)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stage.dir.join("sqs_watch.log"))?)
            .spawn()
            .context("starting sqs_watch.py")?);
        let receipts: Receipts = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let stdout = child.stdout.take().context("watcher stdout")?;
            let receipts = receipts.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v.get("ready").is_some() {
                        let _ = ready_tx.send(());
                    } else if let (Some(at), Some(text)) =
                        (v["recv_ms"].as_i64(), v["text"].as_str())
                    {
                        receipts
                            .lock()
                            .expect("not poisoned")
                            .push((at, text.to_owned()));
                    }
                }
            });
        }
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("sqs_watch.py did not subscribe (see its log)")?;
        Ok(Self { child, receipts })
    }
}

/// The functions under test: `damselfly run aggregate` and `damselfly run alarm`, and the ports
/// of their Prometheus metrics.
struct Functions {
    agg: Kid,
    alarm: Kid,
    agg_port: u16,
    alarm_port: u16,
}

impl Functions {
    /// Starts both runners on the size's topic and lake, their output in the size's directory.
    fn start(args: &Args, env: &Env, stage: &Stage) -> anyhow::Result<Self> {
        let (agg_port, alarm_port) = (sys::free_port()?, sys::free_port()?);
        let agg = spawn_runner(
            env,
            &stage.dir,
            "aggregate",
            runner_argv(args, env, stage, "aggregate", agg_port),
        )?;
        let alarm = spawn_runner(
            env,
            &stage.dir,
            "alarm",
            runner_argv(args, env, stage, "alarm", alarm_port),
        )?;
        Ok(Self {
            agg,
            alarm,
            agg_port,
            alarm_port,
        })
    }

    /// Waits (at most 60 s) until both runners report a rebalance, i.e. have joined their groups.
    fn wait_joined(&mut self, dir: &Path) -> anyhow::Result<()> {
        let joined = Instant::now();
        loop {
            let a = scrape(self.agg_port);
            let b = scrape(self.alarm_port);
            let ok = |m: &Option<String>| {
                m.as_deref()
                    .and_then(|t| metric(t, "rebalances_total"))
                    .is_some_and(|r| r >= 1.0)
            };
            if ok(&a) && ok(&b) {
                break;
            }
            for (name, c) in [("aggregate", &mut self.agg), ("alarm", &mut self.alarm)] {
                if let Some(s) = c.try_wait()? {
                    bail!(
                        "{name} exited with {s} before joining (see {})",
                        dir.join(format!("{name}.log")).display()
                    );
                }
            }
            if joined.elapsed() > Duration::from_secs(60) {
                bail!("the functions did not join their groups within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

/// The command line of `damselfly run FUNCTION` for this size: autoscaling, metrics on `port`.
fn runner_argv(args: &Args, env: &Env, stage: &Stage, function: &str, port: u16) -> Vec<String> {
    let group = format!("fleet-{function}-{}-{}", stage.n, env.run_id);
    let listen = format!("127.0.0.1:{port}");
    let (max_workers, lag_threshold, batch_size) = (
        max_workers(args).to_string(),
        args.lag_threshold.to_string(),
        args.batch_size.to_string(),
    );
    let parts: &[&str] = &[
        "run",
        function,
        "--brokers",
        &env.conn.brokers,
        "--topic",
        &stage.topic,
        "--lake",
        &stage.lake_url,
        "--group",
        &group,
        "--group-protocol",
        args.group_protocol.as_str(),
        "--min-workers",
        "1",
        "--max-workers",
        &max_workers,
        "--lag-threshold",
        &lag_threshold,
        "--scale-interval",
        "2s",
        "--cooldown",
        "30s",
        "--batch-size",
        &batch_size,
        "--metrics-listen",
        &listen,
        "--json",
    ];
    let mut a: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    if function == "alarm" {
        a.extend([
            "--rules".to_owned(),
            env.rules.display().to_string(),
            "--sns-topic-arn".to_owned(),
            args.sns_topic_arn.clone(),
        ]);
    }
    a
}

/// Spawns `damselfly` with `argv` on the run's connection, its stdout in `NAME.json` and its
/// stderr in `NAME.log` of `dir`.
fn spawn_runner(env: &Env, dir: &Path, name: &str, argv: Vec<String>) -> anyhow::Result<Kid> {
    connected(Command::new(&env.bin).args(argv), &env.conn)
        .stdout(std::fs::File::create(dir.join(format!("{name}.json")))?)
        .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
        .spawn()
        .map(Kid)
        .with_context(|| format!("starting {name}"))
}

/// Starts `damselfly simulate` just after an interval boundary; returns it and when it started.
fn start_simulator(args: &Args, env: &Env, stage: &Stage) -> anyhow::Result<(Kid, Instant)> {
    // Start the simulator just after an interval boundary: it stamps interval i with
    // floor(start, interval) + i * interval, so ts is then when the interval's sending began.
    let interval_ms = args.interval.as_millis() as i64;
    let now = now_ms();
    let boundary = (now / interval_ms + 1) * interval_ms;
    std::thread::sleep(Duration::from_millis((boundary - now + 20) as u64));
    let sim_start = Instant::now();
    let mut sim = Command::new(&env.bin);
    sim.args([
        "simulate",
        "--brokers",
        &env.conn.brokers,
        "--topic",
        &stage.topic,
    ])
    .args(["--vms", &stage.n.to_string(), "--seed", "1", "--json"])
    .arg("--interval")
    .arg(humantime::format_duration(args.interval).to_string())
    .arg("--duration")
    .arg(humantime::format_duration(args.duration).to_string());
    let sim = Kid(connected(&mut sim, &env.conn)
        .stdout(std::fs::File::create(stage.dir.join("simulate.json"))?)
        .stderr(std::fs::File::create(stage.dir.join("simulate.log"))?)
        .spawn()
        .context("starting the simulator")?);
    Ok((sim, sim_start))
}

/// What the run observes, second by second, while the fleet publishes and the functions drain.
struct Sampling {
    probe_publisher: Publisher,
    probe_fleet: Fleet,
    next_probe: Duration,
    /// Each probe's VM and when it was published (ms since the epoch).
    probes: Vec<(String, i64)>,
    watched: Vec<(&'static str, Option<Watched>)>,
    /// When each raw object was first listed (ms since the epoch).
    first_seen: HashMap<String, i64>,
    seconds: Vec<Second>,
    sim_summary: Option<serde_json::Value>,
    sim_end: Option<Instant>,
    lag_at_publish_end: f64,
    drained_at: Option<Instant>,
    /// The aggregate runner's last invocation_duration_seconds sum and count.
    last_invocation: (Option<f64>, Option<f64>),
}

impl Sampling {
    /// The probe publisher and the processes to watch: the functions, the simulator, the stack.
    fn new(env: &Env, stage: &Stage, functions: &Functions, sim: &Kid) -> anyhow::Result<Self> {
        Ok(Self {
            probe_publisher: Publisher::new(&PublisherConfig::on(env.conn.clone(), &stage.topic))?,
            probe_fleet: Fleet::new(1, 7, "ns01"),
            next_probe: Duration::from_secs(10),
            probes: Vec::new(),
            watched: vec![
                ("aggregate", Watched::new(Some(functions.agg.id()))),
                ("alarm", Watched::new(Some(functions.alarm.id()))),
                ("simulate", Watched::new(Some(sim.id()))),
                ("kafka", Watched::new(env.kafka)),
                ("localstack", Watched::new(env.localstack)),
            ],
            first_seen: HashMap::new(),
            seconds: Vec::new(),
            sim_summary: None,
            sim_end: None,
            lag_at_publish_end: 0.0,
            drained_at: None,
            last_invocation: (None, None),
        })
    }

    /// Samples once a second until both groups have drained after the simulator's end (or
    /// `--drain` has passed), drawing a progress bar.
    fn until_drained(
        &mut self,
        args: &Args,
        stage: &Stage,
        functions: &Functions,
        sim: &mut Kid,
        sim_start: Instant,
        receipts: &Receipts,
    ) -> anyhow::Result<()> {
        let bar = sys::progress_bar(
            (args.duration + args.drain).as_secs(),
            "{prefix:>10} [{bar:30}] {pos}/{len} s {msg}",
            format!("{} VMs", stage.n),
        );
        loop {
            let tick_start = Instant::now();
            let mut t = Second {
                t_s: sim_start.elapsed().as_secs_f64(),
                ..Second::default()
            };
            if self.sim_end.is_none() && sim_start.elapsed() >= self.next_probe {
                self.probe(args, stage.n)?;
            }
            let alarm_records = self.scrape_runners(functions, &mut t);
            self.sample_processes(stage.hz, &mut t);
            match stage.rt.block_on(stage.lake.list("raw")) {
                Ok(keys) => self.listed(keys),
                Err(e) => eprintln!("listing the lake: {e}"),
            }
            t.raw_objects = self.first_seen.len();
            if self.sim_end.is_none()
                && let Some(status) = sim.try_wait()?
            {
                self.simulator_ended(status, &stage.dir, t.agg_lag)?;
            }
            bar.set_position(t.t_s as u64);
            bar.set_message(format!(
                "aggregate {} workers, lag {}; alarm {} workers, lag {}; {} raw objects",
                t.agg_workers, t.agg_lag, t.alarm_workers, t.alarm_lag, t.raw_objects
            ));
            self.seconds.push(t.clone());
            match self.done(args, &t, alarm_records, receipts) {
                Some(true) => break,
                Some(false) => {}
                None if sim_start.elapsed() > args.duration + Duration::from_secs(120) => {
                    let _ = sim.kill();
                    bail!("the simulator did not finish within --duration + 120 s");
                }
                None => {}
            }
            if let Some(rest) = Duration::from_secs(1).checked_sub(tick_start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Publishes a breaching sample on a VM of its own, and schedules the next one.
    fn probe(&mut self, args: &Args, n: usize) -> anyhow::Result<()> {
        let mut msg = self
            .probe_fleet
            .tick(now_ms(), args.interval)
            .pop()
            .context("one VM")?;
        let vm = format!("probe-n{n}-{:03}", self.probes.len());
        msg.tags.vm = vm.clone();
        msg.metrics.insert("cpu_utilization".into(), BREACH);
        self.probes.push((vm.clone(), now_ms()));
        self.probe_publisher.send(&vm, &msg.to_json())?;
        self.next_probe += args.probe_every;
        Ok(())
    }

    /// Reads both runners' workers, lag and records into `t`; returns the alarm runner's records.
    fn scrape_runners(&mut self, functions: &Functions, t: &mut Second) -> f64 {
        let (a, b) = (scrape(functions.agg_port), scrape(functions.alarm_port));
        let m = |text: &Option<String>, name: &str| -> f64 {
            text.as_deref()
                .and_then(|t| metric(t, name))
                .unwrap_or(-1.0)
        };
        t.agg_workers = m(&a, "workers");
        t.agg_lag = m(&a, "group_lag");
        t.agg_records = m(&a, "records_total");
        t.alarm_workers = m(&b, "workers");
        t.alarm_lag = m(&b, "group_lag");
        let alarm_records = m(&b, "records_total");
        if let Some(text) = &a {
            self.last_invocation = (
                metric(text, "invocation_duration_seconds_sum"),
                metric(text, "invocation_duration_seconds_count"),
            );
        }
        alarm_records
    }

    /// Samples /proc of every watched process (the simulator only while it runs) into `t`.
    fn sample_processes(&mut self, hz: u64, t: &mut Second) {
        for (name, w) in self.watched.iter_mut() {
            let Some(w) = w else { continue };
            if *name == "simulate" && self.sim_end.is_some() {
                continue;
            }
            let (cpu, rss) = w.sample(hz);
            match *name {
                "aggregate" => (t.cpu_aggregate, t.rss_aggregate_mib) = (cpu, rss),
                "alarm" => (t.cpu_alarm, t.rss_alarm_mib) = (cpu, rss),
                "simulate" => t.cpu_simulate = cpu,
                "kafka" => (t.cpu_kafka, t.rss_kafka_mib) = (cpu, rss),
                _ => (t.cpu_localstack, t.rss_localstack_mib) = (cpu, rss),
            }
        }
    }

    /// Notes the first listing of each of `keys`.
    fn listed(&mut self, keys: Vec<String>) {
        let at = now_ms();
        for k in keys {
            self.first_seen.entry(k).or_insert(at);
        }
    }

    /// Notes the simulator's end: the aggregate lag then, the probes flushed, its summary read.
    fn simulator_ended(
        &mut self,
        status: std::process::ExitStatus,
        dir: &Path,
        agg_lag: f64,
    ) -> anyhow::Result<()> {
        self.sim_end = Some(Instant::now());
        self.lag_at_publish_end = agg_lag;
        if !status.success() {
            bail!(
                "the simulator failed with {status}: {}",
                dir.join("simulate.log").display()
            );
        }
        self.probe_publisher.flush(Duration::from_secs(30))?;
        let text = std::fs::read_to_string(dir.join("simulate.json"))?;
        self.sim_summary = Some(
            serde_json::from_str(text.trim())
                .with_context(|| format!("simulate printed {text}"))?,
        );
        Ok(())
    }

    /// After the simulator's end, notes when both groups caught up and says whether sampling is
    /// done (every probe notified or 15 s given to SNS since, or `--drain` spent); None before.
    fn done(
        &mut self,
        args: &Args,
        t: &Second,
        alarm_records: f64,
        receipts: &Receipts,
    ) -> Option<bool> {
        let (Some(end), Some(s)) = (self.sim_end, &self.sim_summary) else {
            return None;
        };
        let expect = s["published"].as_f64().unwrap_or(0.0) + self.probes.len() as f64;
        let caught_up = t.agg_lag == 0.0
            && t.alarm_lag == 0.0
            && t.agg_records >= expect
            && alarm_records >= expect;
        if caught_up && self.drained_at.is_none() {
            self.drained_at = Some(Instant::now());
        }
        let notified = notified(&self.probes, &receipts.lock().expect("not poisoned")).len();
        let waited_for_sns = self.drained_at.is_some_and(|d| {
            notified == self.probes.len() || d.elapsed() > Duration::from_secs(15)
        });
        Some(waited_for_sns || end.elapsed() > args.drain)
    }

    /// Takes the final readings before the functions stop, stops them and the SQS watcher, and
    /// lists the lake once more.
    fn wind_down(
        &mut self,
        stage: &Stage,
        functions: &mut Functions,
        watch: &mut SqsWatch,
        sim_pid: u32,
    ) -> anyhow::Result<()> {
        for (_, w) in self.watched.iter_mut() {
            if let Some(w) = w
                && w.pid != sim_pid
            {
                w.sample(stage.hz);
            }
        }
        for (name, c) in [
            ("aggregate", &mut functions.agg),
            ("alarm", &mut functions.alarm),
        ] {
            stop(c, name)?;
        }
        stop(&mut watch.child, "sqs_watch.py")?;
        if let Ok(keys) = stage.rt.block_on(stage.lake.list("raw")) {
            self.listed(keys);
        }
        Ok(())
    }

    /// The watched process called `name`, if it has a pid.
    fn watched(&self, name: &str) -> Option<&Watched> {
        self.watched
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, w)| w.as_ref())
    }
}

/// Verifies the lake: copies the raw objects, and counts them with DuckDB (lake_stats.py) against
/// when each was first listed: rows, distinct samples, per-sample latency.
fn lake_stats(
    env: &Env,
    stage: &Stage,
    first_seen: &HashMap<String, i64>,
) -> anyhow::Result<serde_json::Value> {
    let raw_dir = stage.dir.join("raw");
    let _ = std::fs::remove_dir_all(&raw_dir);
    let keys: Vec<String> = first_seen.keys().cloned().collect();
    download(&stage.rt, &stage.lake, &keys, &raw_dir)?;
    let mut csv = String::from("path,seen_ms\n");
    for (k, at) in first_seen {
        writeln!(csv, "{},{at}", raw_dir.join(k).display())?;
    }
    let seen_csv = stage.dir.join("first_seen.csv");
    std::fs::write(&seen_csv, csv)?;
    let stats = Command::new(&env.python)
        .arg(env.scripts.join("lake_stats.py"))
        .arg(&raw_dir)
        .arg(&seen_csv)
        .output()
        .context("running lake_stats.py")?;
    if !stats.status.success() {
        bail!("lake_stats.py: {}", String::from_utf8_lossy(&stats.stderr));
    }
    let lake_stats: serde_json::Value = serde_json::from_slice(&stats.stdout)?;
    std::fs::remove_dir_all(&raw_dir)?;
    Ok(lake_stats)
}

/// Writes the per-second samples to `dir/timeline.csv`.
fn write_timeline(dir: &Path, seconds: &[Second]) -> anyhow::Result<()> {
    let mut timeline = String::from(
        "t_s,agg_workers,agg_lag,agg_records,alarm_workers,alarm_lag,raw_objects,cpu_aggregate,\
         cpu_alarm,cpu_simulate,cpu_kafka,cpu_localstack,rss_aggregate_mib,rss_alarm_mib,\
         rss_kafka_mib,rss_localstack_mib\n",
    );
    for t in seconds {
        writeln!(
            timeline,
            "{:.2},{},{},{},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1}",
            t.t_s,
            t.agg_workers,
            t.agg_lag,
            t.agg_records,
            t.alarm_workers,
            t.alarm_lag,
            t.raw_objects,
            t.cpu_aggregate,
            t.cpu_alarm,
            t.cpu_simulate,
            t.cpu_kafka,
            t.cpu_localstack,
            t.rss_aggregate_mib,
            t.rss_alarm_mib,
            t.rss_kafka_mib,
            t.rss_localstack_mib
        )?;
    }
    std::fs::write(dir.join("timeline.csv"), timeline)?;
    Ok(())
}

/// The size's row: what the simulator, the lake, the probes and the processes measured.
fn figures(
    stage: &Stage,
    sampling: &Sampling,
    receipts: &Receipts,
    lake_stats: &serde_json::Value,
    drain_s: f64,
) -> anyhow::Result<Row> {
    let hz = stage.hz;
    let sim_summary = sampling.sim_summary.as_ref().context("simulator summary")?;
    let agg_summary: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(stage.dir.join("aggregate.json"))?.trim())
            .unwrap_or_default();
    let sns = notified(&sampling.probes, &receipts.lock().expect("not poisoned"));
    let mut sns_lat: Vec<f64> = sns.iter().map(|ms| *ms as f64 / 1e3).collect();
    sns_lat.sort_by(f64::total_cmp);
    let pct =
        |v: &[f64], p: f64| -> Option<f64> { (!v.is_empty()).then(|| sys::nearest_rank(v, p)) };
    let u = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let secs = |k: &str| lake_stats[k].as_f64().map(|ms| ms / 1e3);
    let get = |name: &str| sampling.watched(name);
    let published_samples = u(sim_summary, "samples");
    let (rows_, distinct) = (u(lake_stats, "rows"), u(lake_stats, "distinct"));
    let max_of = |f: fn(&Second) -> f64| sampling.seconds.iter().map(f).fold(0.0, f64::max);
    let mut row = Row {
        vms: stage.n,
        load_avg: stage.load_avg.clone(),
        published_msgs: u(sim_summary, "published"),
        published_samples,
        publish_seconds: sim_summary["seconds"].as_f64().unwrap_or(0.0),
        msgs_per_s: 0.0,
        samples_per_s: 0.0,
        lake_files: u(lake_stats, "files"),
        lake_rows: rows_,
        lake_distinct: distinct,
        lost: published_samples as i64 - distinct as i64,
        duplicated: rows_ - distinct,
        rejected: u(&agg_summary, "rejected"),
        lake_p50_s: secs("p50_ms"),
        lake_p99_s: secs("p99_ms"),
        lake_max_s: secs("max_ms"),
        probes: sampling.probes.len(),
        probes_notified: sns.len(),
        sns_p50_s: pct(&sns_lat, 0.5),
        sns_p99_s: pct(&sns_lat, 0.99),
        cpu_aggregate: get("aggregate").map_or(0.0, |w| w.cpu_whole(hz)),
        cpu_alarm: get("alarm").map_or(0.0, |w| w.cpu_whole(hz)),
        cpu_simulate: get("simulate").map_or(0.0, |w| w.cpu_whole(hz)),
        cpu_kafka: get("kafka").map_or(0.0, |w| w.cpu_whole(hz)),
        cpu_localstack: get("localstack").map_or(0.0, |w| w.cpu_whole(hz)),
        hwm_aggregate_mib: get("aggregate").map_or(0.0, Watched::hwm_mib),
        hwm_alarm_mib: get("alarm").map_or(0.0, Watched::hwm_mib),
        hwm_simulate_mib: get("simulate").map_or(0.0, Watched::hwm_mib),
        rss_kafka_mib: get("kafka").map_or(0.0, |w| w.max_rss_kib as f64 / 1024.0),
        rss_localstack_mib: get("localstack").map_or(0.0, |w| w.max_rss_kib as f64 / 1024.0),
        max_workers_aggregate: max_of(|t| t.agg_workers),
        max_workers_alarm: max_of(|t| t.alarm_workers),
        max_lag_aggregate: max_of(|t| t.agg_lag),
        lag_at_publish_end: sampling.lag_at_publish_end,
        invocation_mean_ms: match sampling.last_invocation {
            (Some(sum), Some(count)) if count > 0.0 => Some(sum / count * 1e3),
            _ => None,
        },
        drained: sampling.drained_at.is_some(),
        drain_s,
        holds: false,
    };
    row.msgs_per_s = row.published_msgs as f64 / row.publish_seconds.max(1e-9);
    row.samples_per_s = row.published_samples as f64 / row.publish_seconds.max(1e-9);
    row.holds = goals_hold(&row);
    Ok(row)
}

/// Whether the size met every goal of issue 25: drained in time, SNS and lake p99s, nothing lost
/// or duplicated, each runner's peak RSS.
fn goals_hold(row: &Row) -> bool {
    row.drained
        && row.drain_s <= GOAL_DRAIN.as_secs_f64()
        && row
            .sns_p99_s
            .is_some_and(|p| p < GOAL_SNS_P99.as_secs_f64())
        && row.lost == 0
        && row.duplicated == 0
        && row.lake_p99_s.is_some_and(|p| p < GOAL_P99.as_secs_f64())
        && row.hwm_aggregate_mib < GOAL_RSS_MIB
        && row.hwm_alarm_mib < GOAL_RSS_MIB
}

/// Latency (ms) of each probe whose notification arrived, from its publication.
fn notified(probes: &[(String, i64)], receipts: &[(i64, String)]) -> Vec<i64> {
    probes
        .iter()
        .filter_map(|(vm, at)| {
            receipts
                .iter()
                .filter(|(_, text)| text.contains(vm.as_str()))
                .map(|(recv, _)| recv - at)
                .min()
        })
        .collect()
}

/// Copies objects of the lake to `to`, keys as paths, eight at a time.
fn download(
    rt: &tokio::runtime::Runtime,
    lake: &Lake,
    keys: &[String],
    to: &Path,
) -> anyhow::Result<()> {
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for chunk in keys.chunks(keys.len().div_ceil(8).max(1)) {
            let (store, chunk, to) = (lake.store().clone(), chunk.to_vec(), to.to_path_buf());
            set.spawn(async move {
                for k in chunk {
                    let bytes = store
                        .get(&object_store::path::Path::from(k.as_str()))
                        .await?
                        .bytes()
                        .await?;
                    let path = to.join(&k);
                    std::fs::create_dir_all(path.parent().context("a parent")?)?;
                    std::fs::write(path, bytes)?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })
}

/// A child process, killed if still running when dropped (an error path must not leave it behind).
struct Kid(Child);

impl std::ops::Deref for Kid {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Kid {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The security environment variables of `damselfly`'s connection flags: a child must not inherit
/// them next to the flags it is given (a password file variable beside the password would be
/// refused).
const SECURITY_ENV: &[&str] = &[
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_SSL_CERTIFICATE_LOCATION",
    "KAFKA_SSL_KEY_LOCATION",
    "KAFKA_MSK_REGION",
];

/// Gives `cmd` (a `damselfly simulate` or `run`) the connection `conn`: its flags as arguments, the
/// password in the environment, nothing inherited.
fn connected<'a>(cmd: &'a mut Command, conn: &damselfly_kafka::Connection) -> &'a mut Command {
    for var in SECURITY_ENV {
        cmd.env_remove(var);
    }
    let (argv, vars) = damselfly_kafka::SecurityArgs::for_child(conn);
    cmd.args(argv).envs(vars)
}

/// Stops a child with SIGTERM (SIGKILL after 30 s) and waits for it.
fn stop(child: &mut Child, name: &str) -> anyhow::Result<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    while child.try_wait()?.is_none() {
        if t.elapsed() > Duration::from_secs(30) {
            eprintln!("{name} ignored SIGTERM for 30 s: killing it");
            child.kill()?;
            child.wait()?;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// GET /metrics of a runner; None while it does not answer.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of `damselfly_runner_NAME{...}` in a Prometheus exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("damselfly_runner_{name}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `--max-workers`, or two per core of this machine.
fn max_workers(args: &Args) -> usize {
    args.max_workers.unwrap_or_else(|| {
        2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn markdown_row(r: &Row) -> String {
    format!(
        "| {} | {:.0} | {:.0} | {} / {} | {} | {} | {} | {} / {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} | {} | {} |",
        r.vms,
        r.msgs_per_s,
        r.samples_per_s,
        opt_s(r.lake_p50_s),
        opt_s(r.lake_p99_s),
        r.lost,
        r.duplicated,
        r.invocation_mean_ms
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
        opt_s(r.sns_p50_s),
        opt_s(r.sns_p99_s),
        r.cpu_aggregate,
        r.cpu_alarm,
        r.hwm_aggregate_mib,
        r.hwm_alarm_mib,
        r.cpu_kafka,
        r.cpu_localstack,
        r.max_workers_aggregate,
        r.max_workers_alarm,
        r.max_lag_aggregate,
        r.cpu_simulate,
        r.hwm_simulate_mib,
        if r.drained {
            format!("{:.0} s", r.drain_s)
        } else {
            "NO".to_owned()
        },
        if r.holds { "yes" } else { "NO" },
    )
}

fn print_table(args: &Args, conn: &damselfly_kafka::Connection, rows: &[Row], took: Duration) {
    println!(
        "\nfleet: {} publishing per size at a {} interval, 50 samples per VM per interval; Apache \
         Kafka ({} {}, {} groups) + LocalStack S3/SNS; aggregate and alarm with 1..{} workers (lag threshold {}, batches of {}); \
         {} cores; whole sweep {:.1} min",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.interval),
        conn.brokers,
        conn.security.describe(),
        args.group_protocol,
        max_workers(args),
        args.lag_threshold,
        args.batch_size,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        took.as_secs_f64() / 60.0
    );
    println!(
        "| VMs | msg/s | samples/s | lake p50 / p99 s | lost | dup | agg invocation mean ms | SNS p50 / p99 s | CPU % agg / alarm | peak RSS MiB agg / alarm | CPU % kafka / localstack | max workers agg / alarm | max agg lag | CPU % / peak MiB simulate | drained | goals hold |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!("{}", markdown_row(r));
    }
    for r in rows {
        println!(
            "{} VMs: load average at start {}; {} probes, {} notified; {} raw files, {} rows, {} distinct, {} rejected; lag at publish end {}; peak RSS kafka {:.0} MiB, localstack {:.0} MiB; lake max {}",
            r.vms,
            r.load_avg,
            r.probes,
            r.probes_notified,
            r.lake_files,
            r.lake_rows,
            r.lake_distinct,
            r.rejected,
            r.lag_at_publish_end,
            r.rss_kafka_mib,
            r.rss_localstack_mib,
            opt_s(r.lake_max_s)
        );
    }
    println!(
        "lake latency = first S3 listing showing the sample's raw object (polled every second) - \
         the sample's ts (its interval's start, when sending began); SNS = breaching probe \
         published -> its notification received from an SQS queue subscribed to the topic; CPU = \
         % of one core from publish start to drained; lost = published samples - distinct samples \
         in raw; dup = raw rows - distinct"
    );
}
