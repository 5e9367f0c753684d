//! The agent footprint benchmark: `damselfly agent` against a local broker, its CPU and peak RSS from /proc.

use std::fs;
use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::sys::{
    Sample, clock_ticks, cpu_pct, create_topic_on, free_port, fresh_dir, sample, status_kib,
};

/// CPU goal: percent of one core, averaged over the run.
const GOAL_CPU_PCT: f64 = 0.5;

/// Memory goal: peak resident set size.
const GOAL_RSS_MIB: f64 = 15.0;

/// How long the broker started here may take to serve clients (a cold JVM on a busy 2-core machine
/// takes several seconds).
const BROKER_START_LIMIT: Duration = Duration::from_secs(90);

/// How long the broker started here may take to stop on SIGTERM before it is killed.
const BROKER_STOP_GRACE: Duration = Duration::from_secs(30);

/// Time after start left out of the steady-state CPU figure (start-up: config, producer, metadata).
const WARM_UP: Duration = Duration::from_secs(5);

/// Telegraf's footprint as its makers publish it: no figure. InfluxData's README and docs state the
/// design goal "a minimal memory footprint" without a number, and no measured CPU or RSS figure for
/// a default Telegraf (cpu, mem, disk, diskio, net, system inputs) was found to cite.
const TELEGRAF_SOURCE: &str = "no published figure: InfluxData states only the design goal \
\"minimal memory footprint\" (github.com/influxdata/telegraf README)";

/// Options of the agent benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the agent runs.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The agent's collection interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// The agent binary to measure: `damselfly-agent`, or `damselfly` (run as `damselfly agent`)
    /// [default: release/damselfly-agent under CARGO_TARGET_DIR, else
    /// ~/.cache/damselfly/target, else ./target].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Use this broker (host:port, plaintext) instead of starting an Apache Kafka here; needs
    /// --topic, which must exist.
    #[arg(long)]
    brokers: Option<String>,
    /// Topic to publish to [default: a new `agent-bench-<ms>` on the broker started here; required
    /// with --brokers].
    #[arg(long)]
    topic: Option<String>,
    /// localstack/kafka-broker, which installs (cached) and runs the broker started when --brokers
    /// is not given [default: the workspace's].
    #[arg(long, env = "DAMSELFLY_KAFKA_BROKER")]
    kafka_broker: Option<PathBuf>,
    /// How often /proc is sampled.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Where the broker's data, the agent's spool, config and logs go (wiped first).
    #[arg(long, default_value = "bench/out/agent")]
    out: PathBuf,
}

fn home_cache() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/damselfly"))
}

fn default_bin() -> PathBuf {
    let candidates: Vec<PathBuf> = [
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        home_cache().map(|c| c.join("target")),
        Some(PathBuf::from("target")),
    ]
    .into_iter()
    .flatten()
    .map(|t| t.join("release/damselfly-agent"))
    .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or(&candidates[0])
        .clone()
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// TERM, then KILL after `grace`; always reaps.
fn stop(child: &mut Child, grace: Duration) {
    signal(child.id(), "-TERM");
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The broker script: the workspace's localstack/kafka-broker, as this crate was built from.
fn default_kafka_broker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../localstack/kafka-broker")
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An Apache Kafka (one KRaft node) started for the run by localstack/kafka-broker on free ports of
/// 127.0.0.1, its data and log in the run's output directory; stopped when dropped.
struct Kafka {
    child: Child,
    conn: damselfly_kafka::Connection,
}

impl Kafka {
    /// Installs the broker (cached), starts it under `dir` and waits until it serves clients.
    fn start(script: &Path, dir: &Path) -> anyhow::Result<Self> {
        let install = Command::new(script)
            .arg("install")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} install", script.display()))?;
        if !install.status.success() {
            bail!(
                "{} install failed ({}):\n{}",
                script.display(),
                install.status,
                String::from_utf8_lossy(&install.stderr).trim_end()
            );
        }
        let port = free_port()?;
        let mut controller_port = free_port()?;
        while controller_port == port {
            controller_port = free_port()?;
        }
        let log_path = dir.join("kafka.log");
        let log = fs::File::create(&log_path)?;
        let child = Command::new(script)
            .args(["run", "--dir"])
            .arg(dir.join("kafka"))
            .args(["--port", &port.to_string()])
            .args(["--controller-port", &controller_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} run", script.display()))?;
        // From here on a failure stops the broker (Drop).
        let mut kafka = Self {
            child,
            conn: damselfly_kafka::Connection::plaintext(format!("127.0.0.1:{port}")),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = kafka.child.try_wait()? {
                bail!(
                    "the broker exited during startup ({status}); the end of {}:\n{}",
                    log_path.display(),
                    tail(&log_path, 40)
                );
            }
            if port_open(port) && kafka.answers() {
                break;
            }
            if started.elapsed() > BROKER_START_LIMIT {
                bail!(
                    "the broker did not answer a metadata request on 127.0.0.1:{port} within {}; \
                     the end of {}:\n{}",
                    humantime::format_duration(BROKER_START_LIMIT),
                    log_path.display(),
                    tail(&log_path, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "Apache Kafka on 127.0.0.1:{port} (pid {}) ready after {:.1} s",
            kafka.child.id(),
            started.elapsed().as_secs_f64()
        );
        Ok(kafka)
    }

    /// Whether the broker serves a metadata request (KRaft lists only unfenced brokers) now.
    fn answers(&self) -> bool {
        let Ok(consumer) = self.conn.client_config().create::<BaseConsumer>() else {
            return false;
        };
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok_and(|md| !md.brokers().is_empty())
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        stop(&mut self.child, BROKER_STOP_GRACE);
    }
}

/// Runs the benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let bin = AgentBin::find(args)?;
    let out = fresh_dir(&args.out)?;
    let mut broker = Broker::prepare(args, &out)?;
    let (mut agent, log_path) = start_agent(args, &bin, &out, &broker)?;
    let measured = Measured::watch(args, &bin, &mut agent, &log_path)?;
    stop(&mut agent, Duration::from_secs(20));
    drop(broker.kafka.take());
    let footprint = Footprint::of(args, &measured);
    let totals = closing_totals(&log_path);
    print_report(args, &bin, &broker, &measured, &footprint, &totals)
}

/// The agent binary measured, and the build profile it comes from.
struct AgentBin {
    path: PathBuf,
    profile: &'static str,
}

impl AgentBin {
    /// `--bin` or the default, which must exist; its profile is read from its path.
    fn find(args: &Args) -> anyhow::Result<Self> {
        let bin = args.bin.clone().unwrap_or_else(default_bin);
        if !bin.is_file() {
            bail!(
                "no agent binary at {}: build it with\n  CARGO_TARGET_DIR=~/.cache/damselfly/target \
                 cargo build --release -p damselfly-agent\nor pass --bin",
                bin.display()
            );
        }
        let bin = fs::canonicalize(&bin)?;
        let profile = if bin.components().any(|c| c.as_os_str() == "release") {
            "release"
        } else {
            "NOT release (figures overstate the release build's footprint)"
        };
        Ok(Self { path: bin, profile })
    }
}

/// The broker the agent publishes to: the given one, or an Apache Kafka started here (stopped
/// when dropped).
struct Broker {
    kafka: Option<Kafka>,
    brokers: String,
    topic: String,
    /// How the report names it.
    label: String,
}

impl Broker {
    /// With `--brokers`, that broker and `--topic`; otherwise starts a broker under `out` and
    /// creates a one-partition topic on it.
    fn prepare(args: &Args, out: &Path) -> anyhow::Result<Self> {
        let mut kafka = None;
        let (brokers, topic, label) = match &args.brokers {
            Some(b) => {
                // No default: a shared broker's `metrics` topic is someone's data.
                let topic = args
                    .topic
                    .clone()
                    .context("--brokers needs --topic: an existing topic the agent may write to")?;
                (b.clone(), topic, format!("given broker {b}"))
            }
            None => {
                let script = args
                    .kafka_broker
                    .clone()
                    .unwrap_or_else(default_kafka_broker);
                if !script.is_file() {
                    bail!(
                        "no broker script at {}: pass --kafka-broker (or DAMSELFLY_KAFKA_BROKER) or --brokers",
                        script.display()
                    );
                }
                let k = Kafka::start(&script, out)?;
                let topic = args.topic.clone().unwrap_or_else(|| {
                    format!(
                        "agent-bench-{}",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis()
                    )
                });
                create_topic_on(&k.conn, &topic, 1)?;
                let b = k.conn.brokers.clone();
                kafka = Some(k);
                (
                    b.clone(),
                    topic,
                    format!("Apache Kafka started here on {b}"),
                )
            }
        };
        Ok(Self {
            kafka,
            brokers,
            topic,
            label,
        })
    }
}

/// Writes the agent's config under `out` and starts it, its output in `out/agent.log`; returns
/// the child and the log's path.
fn start_agent(
    args: &Args,
    bin: &AgentBin,
    out: &Path,
    broker: &Broker,
) -> anyhow::Result<(Child, PathBuf)> {
    let (brokers, topic) = (&broker.brokers, &broker.topic);
    let config = out.join("agent.toml");
    fs::write(
        &config,
        format!(
            "interval = \"{}\"\n[tags]\nns = \"bench\"\nmcis = \"bench\"\nvm = \"bench-vm\"\n\
             [kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
             [spool]\ndir = \"{}\"\n[metadata]\ndetect = false\n",
            humantime::format_duration(args.interval),
            out.join("spool").display()
        ),
    )?;
    let log_path = out.join("agent.log");
    let log = fs::File::create(&log_path)?;
    // The full CLI takes the agent as a subcommand; the slim binary is the agent.
    let subcommand: &[&str] = if bin.path.file_name().is_some_and(|n| n == "damselfly") {
        &["agent"]
    } else {
        &[]
    };
    let agent = Command::new(&bin.path)
        .args(subcommand)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} agent", bin.path.display()))?;
    Ok((agent, log_path))
}

/// What /proc showed of the agent over the run.
struct Measured {
    pid: u32,
    /// Clock ticks per second of /proc/PID/stat.
    hz: u64,
    /// Every `--sample-every`, then one at the end.
    samples: Vec<Sample>,
    last: Sample,
    hwm_kib: u64,
    /// What the resident memory is made of at the end: heap and stacks vs mapped binary and
    /// libraries, and the threads.
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
}

impl Measured {
    /// Samples the running agent for `--duration`; fails if it exits early.
    fn watch(
        args: &Args,
        bin: &AgentBin,
        agent: &mut Child,
        log_path: &Path,
    ) -> anyhow::Result<Self> {
        let pid = agent.id();
        let hz = clock_ticks();
        eprintln!(
            "measuring pid {pid} ({}) for {} at interval {} ...",
            bin.path.display(),
            humantime::format_duration(args.duration),
            humantime::format_duration(args.interval)
        );
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut hwm_kib = 0;
        while started.elapsed() < args.duration {
            if let Some(status) = agent.try_wait()? {
                bail!(
                    "the agent exited early ({status}); its log:\n{}",
                    fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            let s = sample(pid)?;
            hwm_kib = hwm_kib.max(s.hwm_kib);
            samples.push(s);
            std::thread::sleep(args.sample_every);
        }
        let last = sample(pid)?;
        samples.push(last);
        // What the resident memory is made of at the end: heap and stacks vs mapped binary and libraries.
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let (anon_kib, file_kib, threads) = (
            status_kib(&status, "RssAnon:").unwrap_or(0),
            status_kib(&status, "RssFile:").unwrap_or(0),
            status_kib(&status, "Threads:").unwrap_or(0),
        );
        hwm_kib = hwm_kib.max(last.hwm_kib);
        Ok(Self {
            pid,
            hz,
            samples,
            last,
            hwm_kib,
            anon_kib,
            file_kib,
            threads,
        })
    }
}

/// The figures of the table: CPU steady, whole and busiest, CPU seconds, peak RSS.
struct Footprint {
    /// CPU % of one core after the warm-up.
    steady: f64,
    whole: f64,
    /// The busiest window of one collection interval.
    busiest: f64,
    cpu_seconds: f64,
    peak_mib: f64,
}

impl Footprint {
    /// Works out the figures from the samples.
    fn of(args: &Args, m: &Measured) -> Self {
        let (samples, last, hz) = (&m.samples, m.last, m.hz);
        let first = samples[0];
        let steady_from = samples
            .iter()
            .find(|s| s.at.duration_since(first.at) >= WARM_UP)
            .copied()
            .unwrap_or(first);
        let whole = cpu_pct(&first, &last, hz);
        let steady = cpu_pct(&steady_from, &last, hz);
        // The busiest window of one collection interval.
        let per_window = (args.interval.as_secs_f64() / args.sample_every.as_secs_f64())
            .round()
            .max(1.0) as usize;
        let busiest = samples
            .windows(per_window + 1)
            .filter(|w| w[0].at >= steady_from.at)
            .map(|w| cpu_pct(&w[0], &w[per_window], hz))
            .fold(0.0, f64::max);
        let peak_rss_kib = samples
            .iter()
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0)
            .max(m.hwm_kib);
        Self {
            steady,
            whole,
            busiest,
            cpu_seconds: last.cpu_ticks as f64 / hz as f64,
            peak_mib: peak_rss_kib as f64 / 1024.0,
        }
    }
}

/// The key=value pairs of the agent's last "agent stopped" log line (its closing totals).
fn closing_totals(log_path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(log_path).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.contains("agent stopped"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Prints the footprint table against the goals and Telegraf, and the memory at the end.
fn print_report(
    args: &Args,
    bin: &AgentBin,
    broker: &Broker,
    m: &Measured,
    f: &Footprint,
    stopped: &[(String, String)],
) -> anyhow::Result<()> {
    let (profile, pid, hz, topic) = (bin.profile, m.pid, m.hz, &broker.topic);
    let broker_label = &broker.label;
    let (steady, whole, busiest, cpu_seconds, peak_mib) =
        (f.steady, f.whole, f.busiest, f.cpu_seconds, f.peak_mib);
    let threads = m.threads;
    let stat = |k: &str| {
        stopped
            .iter()
            .find(|(key, _)| key == k)
            .map_or("?".to_owned(), |(_, v)| v.clone())
    };
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "\nagent footprint ({profile} build: {})",
        bin.path.display()
    )?;
    writeln!(
        o,
        "  run {}, interval {}, {broker_label}, topic {topic}; CPU from /proc/{pid}/stat (utime+stime, \
         {hz} ticks/s), RSS from /proc/{pid}/status (VmRSS sampled every {}, VmHWM)",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.interval),
        humantime::format_duration(args.sample_every),
    )?;
    writeln!(
        o,
        "  collections {}, sent {}, spooled {}, errors {} (the agent's closing totals)\n",
        stat("collections"),
        stat("sent"),
        stat("spooled"),
        stat("errors")
    )?;
    writeln!(
        o,
        "| agent | CPU % of one core, steady | whole run | busiest {} | CPU seconds | peak RSS |",
        humantime::format_duration(args.interval)
    )?;
    writeln!(o, "|---|---:|---:|---:|---:|---:|")?;
    writeln!(
        o,
        "| damselfly agent (measured) | {steady:.3} % | {whole:.3} % | {busiest:.2} % | {cpu_seconds:.2} s | {peak_mib:.1} MiB |"
    )?;
    writeln!(
        o,
        "| goal | < {GOAL_CPU_PCT} % ({}) | | | | < {GOAL_RSS_MIB} MiB ({}) |",
        verdict(steady < GOAL_CPU_PCT),
        verdict(peak_mib < GOAL_RSS_MIB)
    )?;
    writeln!(o, "| Telegraf (published) | n/a | | | | n/a |")?;
    writeln!(
        o,
        "\nat the end: RSS {:.1} MiB = anonymous {:.1} MiB + file-backed {:.1} MiB; {threads} threads",
        m.last.rss_kib as f64 / 1024.0,
        m.anon_kib as f64 / 1024.0,
        m.file_kib as f64 / 1024.0
    )?;
    writeln!(o, "Telegraf anchor: {TELEGRAF_SOURCE}.")?;
    Ok(())
}
