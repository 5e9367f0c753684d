//! The PromQL benchmark: a Grafana VM dashboard's refresh and a fleet-wide `topk`, Damselfly's Prometheus API against a real Prometheus on the same samples.
//!
//! The data: `--vms` simulated VMs (the aggregate benchmark's generator, every metric family)
//! over the last `--fleet-span` at `--fleet-interval`, plus one dashboard VM (namespace `ns02`)
//! with `--vm-span` of history at `--vm-interval`, all ending at [`END_MS`]. The messages go
//! through the aggregate function's path (decode, validate, counter tails, Parquet in batches of
//! `--batch-size` records) into a lake under `--out`, which one compaction run at [`END_MS`]
//! (default grace, so the open hours stay batch files, as in production) then tidies. The same
//! messages become a Prometheus TSDB block (`prometheus::build_block`, promtool), which a real
//! `prometheus` serves; Damselfly's router is served in this process over the lake.
//!
//! The queries: every target of `infra/grafana/dashboards/vm.json`, with `$ns`/`$mcis`/`$vm` the
//! dashboard VM's, `$__rate_interval` the larger of 1m and 4 sample intervals and `$__interval`
//! the step, sent as `query_range` requests all at once (as Grafana refreshes a dashboard) over
//! the last 1 h and 24 h; a refresh lasts until the last answer is read. And the instant query
//! [`TOPK`] across the fleet. Both servers must give the same answers before anything is timed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use damselfly_agent::Fleet;
use damselfly_core::Lake;
use damselfly_core::batch::PartitionBatch;
use damselfly_core::compact::{self, CompactConfig};
use damselfly_core::rates::Tail;
use damselfly_query::api::Api;
use indicatif::{MultiProgress, ProgressBar};
use serde_json::Value;

use crate::{aggregate, http, prometheus, sys};

/// The end of the data and the time of every query: 2025-11-22T08:00:00Z.
pub const END_MS: i64 = 1_763_798_400_000;
/// The fleet-wide instant query of the issue.
pub const TOPK: &str = "topk(10, avg_over_time(cpu_utilization[5m]))";
/// Goal: a dashboard refresh's p99, ms.
const GOAL_REFRESH_P99_MS: f64 = 300.0;
/// Goal: a dashboard refresh's p99 at most this many times Prometheus's.
const GOAL_REFRESH_RATIO: f64 = 2.0;
/// Goal: the fleet `topk`'s p99, ms.
const GOAL_TOPK_MS: f64 = 2000.0;
/// Most points a range query's step may give (Grafana asks for about 1,000).
const MAX_POINTS: i64 = 1100;
/// Relative tolerance of the answers' comparison.
const TOLERANCE: f64 = 1e-9;

/// Options of the PromQL benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// VMs of the fleet (the `topk` query's population).
    #[arg(long, default_value_t = 10_000)]
    vms: usize,
    /// The fleet's history, ending at 2025-11-22T08:00Z.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    fleet_span: Duration,
    /// The fleet's sample interval.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    fleet_interval: Duration,
    /// The dashboard VM's history.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    vm_span: Duration,
    /// The dashboard VM's sample interval (Grafana's "scrape interval": the smallest step).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    vm_interval: Duration,
    /// Dashboard ranges, each ending at 2025-11-22T08:00Z.
    #[arg(long, default_value = "1h,24h", value_delimiter = ',', value_parser = humantime::parse_duration)]
    ranges: Vec<Duration>,
    /// Timed dashboard refreshes per range and run.
    #[arg(long, default_value_t = 30)]
    refreshes: usize,
    /// Timed `topk` queries per run.
    #[arg(long, default_value_t = 10)]
    topk_runs: usize,
    /// Runs of the whole measurement against the same two servers, to show the spread.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Records per batch file written by the aggregate function's path (Lambda's BatchSize).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// The Grafana dashboard whose targets are the refresh.
    #[arg(long, default_value = "infra/grafana/dashboards/vm.json")]
    dashboard: PathBuf,
    /// Where the lake and Prometheus's blocks go (emptied first; removed at the end unless --keep).
    #[arg(long, default_value = "bench/out/promql")]
    out: PathBuf,
    /// Keep `--out` after the run.
    #[arg(long)]
    keep: bool,
    /// Prometheus's promtool [default: where `tests/prometheus-install` puts it]
    #[arg(long, env = "DAMSELFLY_PROMTOOL")]
    promtool: Option<PathBuf>,
    /// The `prometheus` server [default: beside promtool]
    #[arg(long)]
    prometheus: Option<PathBuf>,
    /// Longest wait for Prometheus's /-/ready.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
}

/// One set of requests timed together: a dashboard refresh (all at once) or one instant query.
struct QuerySet {
    name: String,
    /// Request paths with their query strings; all are sent at once.
    paths: Vec<String>,
    /// Timed rounds per run.
    rounds: usize,
    /// Whether the goal is a refresh's (p99 and ratio) or the fleet query's (p99 alone).
    refresh: bool,
}

/// What one run measured for one set: rounds' latencies, ms, sorted.
struct Timed {
    run: usize,
    set: usize,
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

impl Timed {
    fn p(&self, which: &[f64], q: f64) -> f64 {
        let _ = self;
        sys::nearest_rank(which, q)
    }

    fn ratio(&self) -> f64 {
        self.p(&self.ours, 0.99) / self.p(&self.theirs, 0.99)
    }

    fn meets(&self, set: &QuerySet) -> bool {
        let p99 = self.p(&self.ours, 0.99);
        if set.refresh {
            p99 < GOAL_REFRESH_P99_MS && self.ratio() <= GOAL_REFRESH_RATIO
        } else {
            p99 < GOAL_TOPK_MS
        }
    }
}

/// How the answers of both servers compared for one set.
struct Agreement {
    queries: usize,
    agreeing: usize,
    series: usize,
    points: usize,
    /// The first disagreement, if any.
    first: Option<String>,
}

/// Runs the benchmark and prints its tables.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let progress = crate::console::init_logs();
    sys::warn_if_debug("promql");
    ensure!(
        args.vms > 0 && args.refreshes > 0 && args.topk_runs > 0 && args.repeat > 0,
        "nothing to measure"
    );
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let promtool = args
        .promtool
        .clone()
        .or_else(prometheus::default_promtool)
        .context("no promtool: run tests/prometheus-install (or pass --promtool)")?;
    let prom_bin = match &args.prometheus {
        Some(p) => p.clone(),
        None => promtool.with_file_name("prometheus"),
    };
    ensure!(
        prom_bin.is_file(),
        "no prometheus at {}",
        prom_bin.display()
    );
    let targets = dashboard_targets(&args.dashboard)?;
    let load_before = sys::load_average();
    let out = sys::fresh_dir(&args.out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // The data, the lake and the block.
    let (messages, dash_vm) = generate(args, &progress)?;
    let lake_dir = out.join("lake");
    let written = write_lake(args, &messages, &lake_dir, &rt, &progress)?;
    let block = {
        let pb = spinner(&progress, "promtool: building the Prometheus block");
        let b = prometheus::build_block(&promtool, &messages, &out.join("prometheus"));
        pb.finish_and_clear();
        b?
    };
    tracing::info!(
        samples = block.samples,
        bytes = block.total,
        seconds = format!("{:.1}", block.seconds),
        "Prometheus block built"
    );
    ensure!(
        block.samples == written.samples,
        "the block holds {} samples, the lake {}: not the same input",
        block.samples,
        written.samples
    );
    drop(messages);
    // Forget the generation's peak: from here on VmHWM is the serving's (Linux's clear_refs 5).
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    // The two servers.
    let prom = PromServer::start(&prom_bin, &out.join("prometheus/blocks"), args, &progress)?;
    let api = rt
        .block_on(Api::open(
            lake_dir.to_str().context("utf-8 path")?,
            &Default::default(),
        ))?
        .with_clock(|| END_MS);
    let served = http::InProcess::start(&rt, Arc::new(api))?;
    let ours = served.addr;
    tracing::info!(%ours, prometheus = %prom.addr, "serving the lake in process");

    let sets = query_sets(args, &targets, &dash_vm);
    let result = (|| {
        let agreement = agree(&sets, ours, prom.addr, &progress)?;
        let timed = measure(args, &sets, ours, prom.addr, &progress)?;
        let breakdown = breakdown(&sets, ours, prom.addr, &progress)?;
        Ok::<_, anyhow::Error>((agreement, timed, breakdown))
    })();
    let prom_rss = sys::sample(prom.pid()).ok();
    let our_rss = sys::sample_self().ok();
    served.stop(&rt)?;
    let prom_version = prom.version.clone();
    drop(prom);
    let (agreement, timed, breakdown) = result?;
    if !args.keep {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }

    print_setup(args, &dash_vm, &written, &block, &prom_version, &sets);
    print_agreement(&sets, &agreement);
    print_table(&sets, &timed);
    print_spread(args, &sets, &timed);
    print_breakdown(&sets, &breakdown);
    println!(
        "\nRSS: this process (Damselfly's server; the HTTP clients are threads of it) peak {:.0} MiB {} now {:.0} MiB; \
         Prometheus peak {:.0} MiB, now {:.0} MiB; load average {} before, {} after",
        our_rss.map_or(0.0, |s| s.hwm_kib as f64 / 1024.0),
        if hwm_reset {
            "while serving (reset after generating),"
        } else {
            "(includes generating the data),"
        },
        our_rss.map_or(0.0, |s| s.rss_kib as f64 / 1024.0),
        prom_rss.map_or(0.0, |s| s.hwm_kib as f64 / 1024.0),
        prom_rss.map_or(0.0, |s| s.rss_kib as f64 / 1024.0),
        load_before,
        sys::load_average()
    );
    Ok(())
}

/// Every `expr` of the dashboard's panels (rows' panels included), in order, hidden ones left out.
fn dashboard_targets(path: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(panels: &[Value], out: &mut Vec<String>) {
        for p in panels {
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str().filter(|_| t["hide"] != true) {
                    out.push(e.to_owned());
                }
            }
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (run from the repository root)", path.display()))?;
    let d: Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    walk(
        d["panels"]
            .as_array()
            .context("a dashboard without panels")?,
        &mut out,
    );
    ensure!(!out.is_empty(), "{} has no targets", path.display());
    Ok(out)
}

/// The dashboard VM's tags: ns, mcis, vm.
#[derive(Debug, Clone)]
struct DashVm {
    ns: String,
    mcis: String,
    vm: String,
}

/// The fleet's and the dashboard VM's messages (native JSON), in time order.
fn generate(args: &Args, progress: &MultiProgress) -> anyhow::Result<(Vec<Vec<u8>>, DashVm)> {
    let (fi, vi) = (
        args.fleet_interval.as_millis() as i64,
        args.vm_interval.as_millis() as i64,
    );
    ensure!(fi > 0 && vi > 0, "intervals must be positive");
    let fleet_ticks = args.fleet_span.as_millis() as i64 / fi;
    let vm_ticks = args.vm_span.as_millis() as i64 / vi;
    let total = (fleet_ticks as u64) * args.vms as u64 + vm_ticks as u64;
    let pb = progress.add(crate::api::bar(total, "generate", "messages"));
    let mut fleet = Fleet::new(args.vms, 42, "ns01");
    let mut one = Fleet::new(1, 43, "ns02");
    let (fleet_start, vm_start) = (END_MS - fleet_ticks * fi, END_MS - vm_ticks * vi);
    let (mut i, mut j) = (0, 0);
    let mut messages = Vec::with_capacity(total as usize);
    let mut dash = None;
    while i < fleet_ticks || j < vm_ticks {
        let (tf, tv) = (fleet_start + i * fi, vm_start + j * vi);
        if j < vm_ticks && (i >= fleet_ticks || tv <= tf) {
            for m in one.tick(tv, args.vm_interval) {
                dash.get_or_insert_with(|| DashVm {
                    ns: m.tags.ns.clone(),
                    mcis: m.tags.mcis.clone(),
                    vm: m.tags.vm.clone(),
                });
                messages.push(m.to_json());
            }
            j += 1;
        } else {
            messages.extend(
                fleet
                    .tick(tf, args.fleet_interval)
                    .iter()
                    .map(|m| m.to_json()),
            );
            i += 1;
        }
        pb.set_position(messages.len() as u64);
    }
    pb.finish_and_clear();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    tracing::info!(
        messages = messages.len(),
        mib = bytes >> 20,
        fleet_ticks,
        vm_ticks,
        "generated"
    );
    Ok((messages, dash.context("--vm-span holds no sample")?))
}

/// What went into the lake.
struct Written {
    samples: u64,
    batch_files: usize,
    write_secs: f64,
    compact: compact::CompactReport,
    compact_secs: f64,
    raw_files: usize,
    lake_bytes: u64,
}

/// Writes `messages` through the aggregate function's path in batches of `--batch-size`, then
/// compacts as `damselfly compact` would at [`END_MS`].
fn write_lake(
    args: &Args,
    messages: &[Vec<u8>],
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    progress: &MultiProgress,
) -> anyhow::Result<Written> {
    sys::empty_dir(dir)?;
    let lake = Lake::open(dir.to_str().context("utf-8 path")?)?;
    let limits = aggregate::limits();
    let pb = progress.add(crate::api::bar(messages.len() as u64, "lake", "messages"));
    let (mut tail, mut samples, mut batch_files) = (Tail::default(), 0, 0);
    let started = Instant::now();
    for (n, chunk) in messages.chunks(args.batch_size).enumerate() {
        let mut batch = PartitionBatch::new("metrics", 0);
        for (k, value) in chunk.iter().enumerate() {
            let offset = (n * args.batch_size + k) as i64;
            aggregate::push(&mut batch, offset, value, END_MS, &limits);
        }
        samples += batch.stats().samples;
        let objects = batch.objects(&mut tail)?;
        batch_files += objects.len();
        rt.block_on(lake.put_all(&objects))?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let write_secs = started.elapsed().as_secs_f64();
    tracing::info!(
        samples,
        batch_files,
        seconds = format!("{write_secs:.1}"),
        "lake written"
    );
    let pb = spinner(progress, "compacting the lake");
    let started = Instant::now();
    let report = rt.block_on(compact::compact(&lake, &CompactConfig::at(END_MS)))?;
    let compact_secs = started.elapsed().as_secs_f64();
    let raw_files = rt.block_on(lake.list("raw"))?.len();
    pb.finish_and_clear();
    let lake_bytes = sys::du(dir)?.1;
    tracing::info!(
        partitions = report.partitions_compacted,
        files_merged = report.files_merged,
        raw_files,
        seconds = format!("{compact_secs:.1}"),
        "lake compacted"
    );
    Ok(Written {
        samples,
        batch_files,
        write_secs,
        compact: report,
        compact_secs,
        raw_files,
        lake_bytes,
    })
}

/// A spinner for a step without a count.
fn spinner(progress: &MultiProgress, msg: &'static str) -> ProgressBar {
    let pb = progress.add(sys::progress_bar(0, "{spinner} {prefix} ({elapsed})", msg));
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// A `prometheus` serving the block, stopped when dropped.
struct PromServer {
    child: Child,
    addr: SocketAddr,
    version: String,
}

impl PromServer {
    /// Starts `bin` on `blocks` on a free port of 127.0.0.1 and waits for `/-/ready`.
    fn start(
        bin: &Path,
        blocks: &Path,
        args: &Args,
        progress: &MultiProgress,
    ) -> anyhow::Result<Self> {
        let dir = blocks.parent().context("blocks without a parent")?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  evaluation_interval: 1h\nscrape_configs: []\n",
        )?;
        let log = dir.join("prometheus.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", sys::free_port()?).parse()?;
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .skip_while(|w| *w != "version")
                    .nth(1)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "?".into());
        let child = Command::new(bin)
            .arg(format!("--storage.tsdb.path={}", blocks.display()))
            .arg("--storage.tsdb.retention.time=100y")
            // Keep the promtool blocks as they are: no merging into bigger blocks mid-run.
            .arg("--storage.tsdb.max-block-duration=2h")
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--config.file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?.try_clone()?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            child,
            addr,
            version,
        };
        let pb = spinner(progress, "waiting for Prometheus's /-/ready");
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = http::get(addr, "/-/ready", "*/*") {
                break;
            }
            if let Some(status) = server.child.try_wait()? {
                pb.finish_and_clear();
                bail!("prometheus exited ({status}): {}", tail(&log));
            }
            if started.elapsed() > args.ready_timeout {
                pb.finish_and_clear();
                bail!(
                    "prometheus not ready after {:?}: {}",
                    args.ready_timeout,
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        pb.finish_and_clear();
        tracing::info!(%addr, version = %server.version, seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "Prometheus ready");
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Grafana's `roundInterval` (public/app/core/utils/kbn), ms.
fn grafana_round(ms: i64) -> i64 {
    const STEPS: [(i64, i64); 17] = [
        (1_500, 1_000),
        (3_500, 2_000),
        (7_500, 5_000),
        (12_500, 10_000),
        (17_500, 15_000),
        (25_000, 20_000),
        (45_000, 30_000),
        (90_000, 60_000),
        (210_000, 120_000),
        (450_000, 300_000),
        (1_050_000, 600_000),
        (1_500_000, 900_000),
        (2_700_000, 1_200_000),
        (5_400_000, 1_800_000),
        (9_000_000, 3_600_000),
        (16_200_000, 7_200_000),
        (32_400_000, 10_800_000),
    ];
    STEPS
        .iter()
        .find(|(below, _)| ms < *below)
        .map_or(21_600_000, |(_, step)| *step)
}

/// The step Grafana would use for `range_ms` (about 1,000 points, at least `min_ms`), raised to
/// the next round interval while it would give more than [`MAX_POINTS`] points.
fn step_for(range_ms: i64, min_ms: i64) -> i64 {
    let mut step = grafana_round(range_ms / 1000).max(min_ms);
    while range_ms / step + 1 > MAX_POINTS {
        step = grafana_round(step * 3 / 2 + 1).max(step + 1);
    }
    step
}

/// A duration as PromQL writes it: `1m`, `90s`, `2h`.
fn promql_duration(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Percent-encodes a query parameter's value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Seconds as the API takes them.
fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// The dashboard at each range, then the fleet `topk`.
fn query_sets(args: &Args, targets: &[String], vm: &DashVm) -> Vec<QuerySet> {
    let vi = args.vm_interval.as_millis() as i64;
    let rate_interval = promql_duration((4 * vi).max(60_000));
    let mut sets = Vec::new();
    for range in &args.ranges {
        let range_ms = range.as_millis() as i64;
        let step = step_for(range_ms, vi);
        // Grafana aligns the range to the step.
        let (start, end) = (
            (END_MS - range_ms).div_euclid(step) * step,
            END_MS.div_euclid(step) * step,
        );
        let paths = targets
            .iter()
            .map(|t| {
                let q = t
                    .replace("$__rate_interval", &rate_interval)
                    .replace("$__interval", &promql_duration(step))
                    .replace("$ns", &vm.ns)
                    .replace("$mcis", &vm.mcis)
                    .replace("$vm", &vm.vm);
                format!(
                    "/api/v1/query_range?query={}&start={}&end={}&step={}",
                    encode(&q),
                    secs(start),
                    secs(end),
                    secs(step)
                )
            })
            .collect();
        sets.push(QuerySet {
            name: format!(
                "dashboard {} (step {}, {} points, $__rate_interval {rate_interval})",
                humantime::format_duration(*range),
                promql_duration(step),
                (end - start) / step + 1
            ),
            paths,
            rounds: args.refreshes,
            refresh: true,
        });
    }
    sets.push(QuerySet {
        name: format!("fleet: {TOPK} over {} VMs", args.vms + 1),
        paths: vec![format!(
            "/api/v1/query?query={}&time={}",
            encode(TOPK),
            secs(END_MS)
        )],
        rounds: args.topk_runs,
        refresh: false,
    });
    sets
}

/// Sends every request of `paths` at once, each on a fresh connection; the time until the last
/// answer is read, ms, and the bodies. Any answer but a 200 fails.
fn round(addr: SocketAddr, paths: &[String]) -> anyhow::Result<(f64, Vec<Vec<u8>>)> {
    let started = Instant::now();
    let bodies = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .map(|p| s.spawn(move || http::get(addr, p, "application/json")))
            .collect();
        handles
            .into_iter()
            .zip(paths)
            .map(|(h, p)| {
                let (status, body) = h.join().expect("a request thread panicked")?;
                ensure!(
                    status == 200,
                    "{addr}{p} answered {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                );
                Ok(body)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok((started.elapsed().as_secs_f64() * 1e3, bodies))
}

/// A result's series by label set: (time ms, value) points.
type Answer = BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>;

/// The series of a `query`/`query_range` answer.
fn answer(body: &[u8]) -> anyhow::Result<Answer> {
    let v: Value = serde_json::from_slice(body)?;
    ensure!(v["status"] == "success", "not a success: {v}");
    let point = |p: &Value| -> anyhow::Result<(i64, f64)> {
        let t = p[0].as_f64().context("a point without a time")?;
        let s = p[1].as_str().context("a point without a value")?;
        let v = match s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            s => s.parse()?,
        };
        Ok(((t * 1000.0).round() as i64, v))
    };
    let mut out = Answer::new();
    for r in v["data"]["result"]
        .as_array()
        .context("no data.result array")?
    {
        let labels: BTreeMap<String, String> = r["metric"]
            .as_object()
            .context("a series without labels")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let points = match r["values"].as_array() {
            Some(vs) => vs.iter().map(point).collect::<anyhow::Result<_>>()?,
            None => vec![point(&r["value"])?],
        };
        ensure!(
            out.insert(labels.clone(), points).is_none(),
            "{labels:?} twice"
        );
    }
    Ok(out)
}

/// Whether `a` and `b` are equal within [`TOLERANCE`] (relative), NaN equal to NaN.
fn close(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= TOLERANCE * a.abs().max(b.abs())
}

/// Compares two answers: series compared and points compared, or the first difference.
fn compare(ours: &Answer, theirs: &Answer) -> Result<(usize, usize), String> {
    if ours.len() != theirs.len() {
        return Err(format!(
            "{} series from Damselfly, {} from Prometheus",
            ours.len(),
            theirs.len()
        ));
    }
    let mut points = 0;
    for (labels, p) in theirs {
        let Some(o) = ours.get(labels) else {
            return Err(format!(
                "Prometheus's {labels:?} is not in Damselfly's answer"
            ));
        };
        if o.len() != p.len() {
            return Err(format!(
                "{labels:?}: {} points from Damselfly, {} from Prometheus",
                o.len(),
                p.len()
            ));
        }
        for (a, b) in o.iter().zip(p) {
            if a.0 != b.0 || !close(a.1, b.1) {
                return Err(format!(
                    "{labels:?}: Damselfly {a:?}, Prometheus {b:?} (ms, value)"
                ));
            }
            points += 1;
        }
    }
    Ok((ours.len(), points))
}

/// Asks both servers every query once (untimed: it also warms both) and compares the answers.
fn agree(
    sets: &[QuerySet],
    ours: SocketAddr,
    theirs: SocketAddr,
    progress: &MultiProgress,
) -> anyhow::Result<Vec<Agreement>> {
    let pb = progress.add(crate::api::bar(sets.len() as u64, "agree", "query sets"));
    let mut out = Vec::new();
    for set in sets {
        let (_, a) = round(ours, &set.paths)?;
        let (_, b) = round(theirs, &set.paths)?;
        let mut ag = Agreement {
            queries: set.paths.len(),
            agreeing: 0,
            series: 0,
            points: 0,
            first: None,
        };
        for ((x, y), path) in a.iter().zip(&b).zip(&set.paths) {
            match compare(&answer(x)?, &answer(y)?) {
                Ok((series, points)) => {
                    ag.agreeing += 1;
                    ag.series += series;
                    ag.points += points;
                }
                Err(e) => {
                    tracing::warn!(path, "answers differ: {e}");
                    ag.first.get_or_insert(format!("{path}: {e}"));
                }
            }
        }
        tracing::info!(
            set = %set.name,
            agreeing = ag.agreeing,
            queries = ag.queries,
            series = ag.series,
            points = ag.points,
            "compared"
        );
        out.push(ag);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// `--repeat` runs of every set's rounds, Damselfly and Prometheus taking turns round by round
/// (who goes first alternates), so that both see the same disturbances of the machine.
fn measure(
    args: &Args,
    sets: &[QuerySet],
    ours: SocketAddr,
    theirs: SocketAddr,
    progress: &MultiProgress,
) -> anyhow::Result<Vec<Timed>> {
    let total: usize = sets.iter().map(|s| s.rounds).sum::<usize>() * args.repeat;
    let pb = progress.add(crate::api::bar(total as u64, "timing", "rounds"));
    let mut out = Vec::new();
    for run in 1..=args.repeat {
        for (i, set) in sets.iter().enumerate() {
            pb.set_prefix(format!("run {run} set {}", i + 1));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for r in 0..set.rounds {
                if r % 2 == 0 {
                    a.push(round(ours, &set.paths)?.0);
                    b.push(round(theirs, &set.paths)?.0);
                } else {
                    b.push(round(theirs, &set.paths)?.0);
                    a.push(round(ours, &set.paths)?.0);
                }
                pb.inc(1);
            }
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            let t = Timed {
                run,
                set: i,
                ours: a,
                theirs: b,
            };
            tracing::info!(
                run,
                set = %set.name,
                damselfly_p99_ms = format!("{:.0}", t.p(&t.ours, 0.99)),
                prometheus_p99_ms = format!("{:.0}", t.p(&t.theirs, 0.99)),
                "timed"
            );
            out.push(t);
        }
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Each query of every set alone (sequentially, p50 of 3): ms for Damselfly and Prometheus.
fn breakdown(
    sets: &[QuerySet],
    ours: SocketAddr,
    theirs: SocketAddr,
    progress: &MultiProgress,
) -> anyhow::Result<Vec<Vec<(String, f64, f64)>>> {
    let total: usize = sets.iter().map(|s| s.paths.len()).sum();
    let pb = progress.add(crate::api::bar(total as u64, "alone", "queries"));
    let mut out = Vec::new();
    for set in sets {
        let mut rows = Vec::new();
        for path in &set.paths {
            let p50 = |addr| -> anyhow::Result<f64> {
                let mut ms = (0..3)
                    .map(|_| Ok(round(addr, std::slice::from_ref(path))?.0))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                ms.sort_by(f64::total_cmp);
                Ok(ms[1])
            };
            let (a, b) = (p50(ours)?, p50(theirs)?);
            rows.push((query_of(path), a, b));
            pb.inc(1);
        }
        out.push(rows);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// The decoded `query` parameter of a request path.
fn query_of(path: &str) -> String {
    let q = path
        .split_once("query=")
        .map_or("", |(_, r)| r.split('&').next().unwrap_or(""));
    let bytes = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&q[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prints the data, both servers and the query sets.
fn print_setup(
    args: &Args,
    vm: &DashVm,
    w: &Written,
    block: &prometheus::Block,
    prom_version: &str,
    sets: &[QuerySet],
) {
    println!(
        "\nPromQL: Damselfly's Prometheus API (`damselfly serve`'s router in process on 127.0.0.1) against \
         Prometheus {prom_version} (its own process on 127.0.0.1), same samples, every request on a fresh connection, \
         queries at 2025-11-22T08:00:00Z; {} run(s)",
        args.repeat
    );
    println!(
        "data: {} VMs x {} at {} + dashboard VM {}/{}/{} x {} at {} = {} samples (all metric families); \
         lake: {} batch files of {} records written in {:.0} s, compaction at the end time (grace 1 h) merged {} files in {:.0} s, \
         {} raw files, {:.2} GiB; Prometheus block(s): {:.2} GiB, built in {:.0} s",
        args.vms,
        humantime::format_duration(args.fleet_span),
        humantime::format_duration(args.fleet_interval),
        vm.ns,
        vm.mcis,
        vm.vm,
        humantime::format_duration(args.vm_span),
        humantime::format_duration(args.vm_interval),
        w.samples,
        w.batch_files,
        args.batch_size,
        w.write_secs,
        w.compact.files_merged,
        w.compact_secs,
        w.raw_files,
        w.lake_bytes as f64 / (1u64 << 30) as f64,
        block.total as f64 / (1u64 << 30) as f64,
        block.seconds
    );
    for s in sets {
        println!(
            "- {}: {} request(s) at once per round, {} rounds per run",
            s.name,
            s.paths.len(),
            s.rounds
        );
    }
}

/// Prints whether both servers answered alike.
fn print_agreement(sets: &[QuerySet], agreement: &[Agreement]) {
    println!();
    println!("| query set | queries agreeing | series | points compared (within 1e-9 relative) |");
    println!("|---|---:|---:|---:|");
    for (s, a) in sets.iter().zip(agreement) {
        println!(
            "| {} | {}/{} | {} | {} |",
            s.name, a.agreeing, a.queries, a.series, a.points
        );
    }
    for (s, a) in sets.iter().zip(agreement) {
        if let Some(f) = &a.first {
            println!("DISAGREE, {}: {f}", s.name);
        }
    }
    let all = agreement.iter().all(|a| a.agreeing == a.queries);
    println!(
        "\nanswers: {}",
        if all {
            "both servers agree on every query"
        } else {
            "the servers DISAGREE (see above)"
        }
    );
}

/// The goal of a set, as printed.
fn goal(set: &QuerySet) -> String {
    if set.refresh {
        format!("p99 < {GOAL_REFRESH_P99_MS:.0} ms and <= {GOAL_REFRESH_RATIO:.0}x Prometheus")
    } else {
        format!("p99 < {:.0} s", GOAL_TOPK_MS / 1000.0)
    }
}

/// Prints one row per run and set.
fn print_table(sets: &[QuerySet], timed: &[Timed]) {
    println!();
    println!(
        "| run | query set | rounds | Damselfly p50 / p95 / p99 ms | Prometheus p50 / p95 / p99 ms | ratio p50 | ratio p99 | goal | met |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|---|");
    for t in timed {
        let set = &sets[t.set];
        let q = |v: &[f64]| {
            format!(
                "{:.0} / {:.0} / {:.0}",
                t.p(v, 0.5),
                t.p(v, 0.95),
                t.p(v, 0.99)
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.2}x | {:.2}x | {} | {} |",
            t.run,
            set.name,
            t.ours.len(),
            q(&t.ours),
            q(&t.theirs),
            t.p(&t.ours, 0.5) / t.p(&t.theirs, 0.5),
            t.ratio(),
            goal(set),
            if t.meets(set) { "yes" } else { "NO" }
        );
    }
}

/// Prints per set the p99s' spread over the runs and the verdict over all of them.
fn print_spread(args: &Args, sets: &[QuerySet], timed: &[Timed]) {
    println!();
    for (i, set) in sets.iter().enumerate() {
        let runs: Vec<&Timed> = timed.iter().filter(|t| t.set == i).collect();
        let ours: Vec<f64> = runs.iter().map(|t| t.p(&t.ours, 0.99)).collect();
        let theirs: Vec<f64> = runs.iter().map(|t| t.p(&t.theirs, 0.99)).collect();
        let ratios: Vec<f64> = runs.iter().map(|t| t.ratio()).collect();
        let (a, b) = crate::console::spread(&ours);
        let (c, d) = crate::console::spread(&theirs);
        let (e, f) = crate::console::spread(&ratios);
        println!(
            "{}: Damselfly p99 {a:.0}-{b:.0} ms, Prometheus p99 {c:.0}-{d:.0} ms, ratio {e:.2}-{f:.2}x over {} run(s); goal {}: {}",
            set.name,
            args.repeat,
            goal(set),
            if runs.iter().all(|t| t.meets(set)) {
                "met in every run"
            } else {
                "NOT met"
            }
        );
    }
}

/// Prints each query alone, to show where a refresh's time goes.
fn print_breakdown(sets: &[QuerySet], breakdown: &[Vec<(String, f64, f64)>]) {
    println!("\neach query alone, sequentially (p50 of 3, ms):");
    for (set, rows) in sets.iter().zip(breakdown) {
        println!();
        println!("| {} | Damselfly | Prometheus | ratio |", set.name);
        println!("|---|---:|---:|---:|");
        for (q, a, b) in rows {
            println!(
                "| `{}` | {a:.1} | {b:.1} | {:.1}x |",
                q.replace('|', "\\|"),
                a / b
            );
        }
        let (sa, sb) = rows
            .iter()
            .fold((0.0, 0.0), |(x, y), (_, a, b)| (x + a, y + b));
        println!("| sum | {sa:.0} | {sb:.0} | {:.1}x |", sa / sb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_grafanas_and_stay_under_the_point_limit() {
        assert_eq!(step_for(3_600_000, 15_000), 15_000);
        assert_eq!(step_for(3_600_000, 1_000), 5_000);
        // 86.4 s rounds to 1m, 1,441 points: too many, so 2m.
        assert_eq!(step_for(86_400_000, 15_000), 120_000);
        assert_eq!(step_for(7 * 86_400_000, 15_000), 600_000);
        assert_eq!(promql_duration(60_000), "1m");
        assert_eq!(promql_duration(15_000), "15s");
    }

    #[test]
    fn queries_round_trip_through_the_url() {
        let q = r#"rate(kb_read{ns="ns02",vm=~"a|b"}[1m]) * 1024"#;
        let path = format!("/api/v1/query?query={}&time=1", encode(q));
        assert_eq!(query_of(&path), q);
    }

    #[test]
    fn answers_compare_within_tolerance() {
        let a = answer(br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"vm":"a"},"values":[[1.5,"1"],[3,"NaN"]]}]}}"#).unwrap();
        let b = answer(br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"vm":"a"},"values":[[1.5,"1.0000000000001"],[3,"NaN"]]}]}}"#).unwrap();
        assert_eq!(compare(&a, &b), Ok((1, 2)));
        let c = answer(br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"vm":"a"},"value":[1.5,"2"]}]}}"#).unwrap();
        assert!(compare(&a, &c).is_err());
    }
}
