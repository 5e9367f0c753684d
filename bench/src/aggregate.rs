//! The aggregate benchmark: the aggregate function's CPU path against DuckDB on the same JSON input.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use damselfly_agent::Fleet;
use damselfly_core::Lake;
use damselfly_core::batch::{LakeObject, PartitionBatch};
use damselfly_core::compact::{self, CompactConfig};
use damselfly_core::decode::{InputRecord, Validation};
use damselfly_core::rates::Tail;
use damselfly_schemas::Table;
use indicatif::ProgressBar;
use object_store::ObjectStoreExt as _;

use crate::{prometheus, sys};

/// Options of the aggregate benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated VMs.
    #[arg(long, default_value_t = 500)]
    vms: usize,
    /// Simulated span of time (at --interval).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    span: Duration,
    /// Collection interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Records per batch (Lambda's BatchSize).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Where the input and outputs go.
    #[arg(long, default_value = "bench/out/aggregate")]
    out: PathBuf,
    /// Python with the duckdb package (tests/run puts one in ~/.cache/damselfly/tools-venv).
    #[arg(long, env = "DAMSELFLY_PYTHON", default_value = "python3")]
    python: String,
    /// Prometheus's promtool, to store the same samples as a TSDB block
    /// [default: where `tests/prometheus-install` puts it, if there]
    #[arg(long, env = "DAMSELFLY_PROMTOOL")]
    promtool: Option<PathBuf>,
}

const DUCKDB_JOB: &str = r#"
import duckdb, json, sys, time
# Peak RSS of this process since its exec (ru_maxrss would include the forking parent's).
def peak_rss_kib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads = 1")
con.execute("SET enable_progress_bar = false")
t, cpu = time.perf_counter(), time.process_time()
con.execute(f"""CREATE TEMP TABLE m AS SELECT * FROM read_json('{src}', format = 'newline_delimited', columns = {{
  'v': 'INTEGER', 'ts': 'BIGINT',
  'tags': 'STRUCT(ns VARCHAR, mcis VARCHAR, vm VARCHAR, csp VARCHAR, region VARCHAR, os VARCHAR, host VARCHAR)',
  'metrics': 'MAP(VARCHAR, DOUBLE)', 'devices': 'MAP(VARCHAR, MAP(VARCHAR, DOUBLE))'}})""")
con.execute("""CREATE TEMP TABLE s AS
  SELECT make_timestamp(ts * 1000) AS ts, tags.ns, tags.mcis, tags.vm, tags.csp, tags.region, tags.os,
         e.key AS metric, '' AS device, e.value AS value
  FROM (SELECT ts, tags, unnest(map_entries(metrics)) AS e FROM m)
  UNION ALL
  SELECT make_timestamp(ts * 1000), tags.ns, tags.mcis, tags.vm, tags.csp, tags.region, tags.os, f.key, d.key, f.value
  FROM (SELECT ts, tags, d, unnest(map_entries(d.value)) AS f
        FROM (SELECT ts, tags, unnest(map_entries(devices)) AS d FROM m))""")
con.execute(f"COPY (SELECT * FROM s ORDER BY vm, metric, device, ts) TO '{out}/duckdb_raw.parquet' (FORMAT parquet, COMPRESSION zstd)")
con.execute(f"""COPY (SELECT time_bucket(INTERVAL 1 minute, ts) AS window_start, ns, mcis, vm, csp, region, os, metric, device,
  count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
  arg_min(value, ts) AS first, min(ts) AS first_ts, arg_max(value, ts) AS last, max(ts) AS last_ts
  FROM s GROUP BY ALL ORDER BY vm, metric, device, window_start) TO '{out}/duckdb_rollup.parquet' (FORMAT parquet, COMPRESSION zstd)""")
secs, cpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps({"version": duckdb.__version__, "seconds": secs, "cpu_seconds": cpu, "samples": con.execute("SELECT count(*) FROM s").fetchone()[0],
                  "peak_rss_kib": peak_rss_kib()}))
"#;

/// Runs the benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    sys::warn_if_debug("aggregate");
    std::fs::create_dir_all(&args.out)?;
    let input = Input::generate(args)?;
    let mut ours = Ours::measure(args, &input)?;
    let one_file = one_file_raw_bytes(&input)?;

    // Compaction: the per-batch files in a lake, merged as `damselfly compact` does it.
    eprintln!("compacting {} batch files ...", ours.written.len());
    let (compacted_raw, compact_secs) =
        compacted_raw_bytes(&ours.written, input.now_ms, &args.out.join("lake"))?;
    drop(std::mem::take(&mut ours.written));

    let duck = Duck::run(args, &input, ours.samples)?;
    let prom = prometheus_block(args, &input, ours.samples)?;
    let storage = Storage {
        one_file,
        compacted_raw,
        compact_secs,
        prom,
    };
    print_speed(args, &input, &ours, &duck);
    print_storage(args, &ours, &duck, &storage);
    Ok(())
}

/// The fixed input: the simulator's messages, seeded, as JSON lines (what is on the topic).
struct Input {
    messages: Vec<Vec<u8>>,
    /// input.jsonl, the same messages for DuckDB.
    path: PathBuf,
    /// Its size.
    bytes: u64,
    intervals: u64,
    /// Messages: VMs x intervals.
    total: u64,
    /// The run's "now", ms: the end of the simulated span.
    now_ms: i64,
}

impl Input {
    /// Simulates `--vms` over `--span` and writes the messages to `OUT/input.jsonl`.
    fn generate(args: &Args) -> anyhow::Result<Self> {
        let intervals = (args.span.as_millis() / args.interval.as_millis()) as u64;
        let total = args.vms as u64 * intervals;
        let gen_bar = bar(total, "generate");
        let mut fleet = Fleet::new(args.vms, 42, "ns01");
        let start_ms = 1_763_712_000_000; // 2025-11-21T08:00:00Z
        let mut messages: Vec<Vec<u8>> = Vec::with_capacity(total as usize);
        for i in 0..intervals {
            for m in fleet.tick(
                start_ms + i as i64 * args.interval.as_millis() as i64,
                args.interval,
            ) {
                messages.push(m.to_json());
            }
            gen_bar.set_position(messages.len() as u64);
        }
        gen_bar.finish_and_clear();
        let path = args.out.join("input.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for m in &messages {
            f.write_all(m)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        let bytes = std::fs::metadata(&path)?.len();
        Ok(Self {
            messages,
            path,
            bytes,
            intervals,
            total,
            now_ms: start_ms + args.span.as_millis() as i64,
        })
    }
}

/// The validation of the run: any age is accepted (the simulated span lies in the past).
pub(crate) fn limits() -> Validation {
    Validation {
        max_past: Duration::from_secs(u32::MAX as u64),
        ..Validation::default()
    }
}

/// Adds the message at `offset` of partition 0 to `batch`, received at `now_ms`.
pub(crate) fn push(
    batch: &mut PartitionBatch,
    offset: i64,
    value: &[u8],
    now_ms: i64,
    limits: &Validation,
) {
    let rec = InputRecord {
        topic: "metrics",
        partition: 0,
        offset,
        timestamp_ms: now_ms,
        key: None,
        value: Some(value),
    };
    batch.push(&rec, now_ms, limits);
}

/// What our run measured, and the lake objects it wrote.
struct Ours {
    wall: Duration,
    /// CPU seconds of this process during the run.
    cpu_secs: f64,
    /// Peak RSS of this process after the run.
    rss_kib: u64,
    samples: u64,
    /// Bytes of every object, and of the `raw` ones.
    out_bytes: u64,
    raw_bytes: u64,
    /// Each batch's time, sorted.
    latencies: Vec<Duration>,
    written: Vec<LakeObject>,
}

impl Ours {
    /// Ours: one thread, batches of --batch-size records, rates carried across batches.
    fn measure(args: &Args, input: &Input) -> anyhow::Result<Self> {
        let limits = limits();
        let now_ms = input.now_ms;
        let run_bar = bar(input.total, "damselfly");
        let (mut tail, mut samples, mut out_bytes, mut raw_bytes) =
            (Tail::default(), 0u64, 0u64, 0u64);
        let mut written = Vec::new();
        let mut latencies = Vec::new();
        let started = Instant::now();
        let cpu_before = sys::sample_self()?.cpu_ticks;
        for (n, chunk) in input.messages.chunks(args.batch_size).enumerate() {
            let t = Instant::now();
            let mut batch = PartitionBatch::new("metrics", 0);
            for (i, value) in chunk.iter().enumerate() {
                let offset = (n * args.batch_size + i) as i64;
                push(&mut batch, offset, value, now_ms, &limits);
            }
            samples += batch.stats().samples;
            for o in batch.objects(&mut tail)? {
                out_bytes += o.bytes.len() as u64;
                if o.table == Table::Raw {
                    raw_bytes += o.bytes.len() as u64;
                }
                written.push(o);
            }
            latencies.push(t.elapsed());
            run_bar.inc(chunk.len() as u64);
        }
        let wall = started.elapsed();
        // CPU time as well as wall time: this machine is a VM whose wall clock includes time the
        // host gave to others (steal), which moves both engines' seconds from run to run.
        let cpu_secs =
            (sys::sample_self()?.cpu_ticks - cpu_before) as f64 / sys::clock_ticks() as f64;
        run_bar.finish_and_clear();
        let rss_kib = sys::peak_rss_kib();
        latencies.sort();
        Ok(Self {
            wall,
            cpu_secs,
            rss_kib,
            samples,
            out_bytes,
            raw_bytes,
            latencies,
            written,
        })
    }
}

/// The compacted shape: all of the run's samples in one raw file (what an hourly compaction
/// keeps); its bytes.
fn one_file_raw_bytes(input: &Input) -> anyhow::Result<u64> {
    let limits = limits();
    let mut all = PartitionBatch::new("metrics", 0);
    for (offset, value) in input.messages.iter().enumerate() {
        push(&mut all, offset as i64, value, input.now_ms, &limits);
    }
    let one_file: u64 = all
        .objects(&mut Tail::default())?
        .iter()
        .filter(|o| o.table == Table::Raw)
        .map(|o| o.bytes.len() as u64)
        .sum();
    Ok(one_file)
}

/// DuckDB's figures for the same job.
struct Duck {
    /// What the job printed: version, seconds, cpu_seconds, samples, peak_rss_kib.
    printed: serde_json::Value,
    secs: f64,
    cpu: f64,
    /// Bytes of its raw Parquet file.
    raw_bytes: u64,
}

impl Duck {
    /// DuckDB: the same job on the same input, one thread; it must see our `samples`.
    fn run(args: &Args, input: &Input, samples: u64) -> anyhow::Result<Self> {
        eprintln!("running DuckDB on {} ...", input.path.display());
        let out = Command::new(&args.python)
            .args([
                "-c",
                DUCKDB_JOB,
                input.path.to_str().context("utf-8 path")?,
                args.out.to_str().context("utf-8 path")?,
            ])
            .output()
            .with_context(|| format!("running {} (needs the duckdb package)", args.python))?;
        if !out.status.success() {
            bail!(
                "DuckDB job failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .context("DuckDB printed nothing")?;
        let duck: serde_json::Value =
            serde_json::from_str(last).with_context(|| format!("DuckDB printed: {stdout}"))?;
        let duck_secs = duck["seconds"].as_f64().context("seconds")?;
        let duck_cpu = duck["cpu_seconds"].as_f64().context("cpu_seconds")?;
        let duck_samples = duck["samples"].as_u64().context("samples")?;
        if duck_samples != samples {
            bail!("DuckDB saw {duck_samples} samples, we saw {samples}: not the same job");
        }
        let duck_raw = std::fs::metadata(args.out.join("duckdb_raw.parquet"))?.len();
        Ok(Self {
            printed: duck,
            secs: duck_secs,
            cpu: duck_cpu,
            raw_bytes: duck_raw,
        })
    }
}

/// Prometheus: the same samples as one TSDB block, when promtool is installed.
fn prometheus_block(
    args: &Args,
    input: &Input,
    samples: u64,
) -> anyhow::Result<Option<prometheus::Block>> {
    let Some(promtool) = args.promtool.clone().or_else(prometheus::default_promtool) else {
        return Ok(None);
    };
    eprintln!(
        "building a Prometheus block with {} ...",
        promtool.display()
    );
    let block = prometheus::build_block(&promtool, &input.messages, &args.out.join("prometheus"))?;
    if block.samples != samples {
        bail!(
            "the Prometheus block holds {} samples, we saw {samples}: not the same input",
            block.samples
        );
    }
    Ok(Some(block))
}

/// The raw table's sizes beside ours per batch: one file, compacted, Prometheus's block.
struct Storage {
    one_file: u64,
    compacted_raw: u64,
    compact_secs: f64,
    prom: Option<prometheus::Block>,
}

/// Prints the input and the speed table: ours against DuckDB, by wall and by CPU time.
fn print_speed(args: &Args, input: &Input, ours: &Ours, duck: &Duck) {
    let samples = ours.samples;
    let pct = |p: f64| sys::nearest_rank(&ours.latencies, p).as_secs_f64() * 1e3;
    let ours_rate = samples as f64 / ours.wall.as_secs_f64();
    let duck_rate = samples as f64 / duck.secs;
    println!(
        "aggregate benchmark: {} VMs x {} intervals = {} messages, {} samples, {:.1} MiB of JSON",
        args.vms,
        input.intervals,
        input.total,
        samples,
        input.bytes as f64 / 1048576.0
    );
    println!();
    println!(
        "| engine (1 core) | seconds | samples/s | CPU seconds | samples/CPU-s | batch p50 ms | batch p99 ms | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| damselfly (batches of {}) | {:.2} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {:.0} |",
        args.batch_size,
        ours.wall.as_secs_f64(),
        ours_rate,
        ours.cpu_secs,
        samples as f64 / ours.cpu_secs,
        pct(0.5),
        pct(0.99),
        ours.rss_kib as f64 / 1024.0
    );
    println!(
        "| DuckDB {} (one job) | {:.2} | {:.0} | {:.2} | {:.0} | - | - | {:.0} |",
        duck.printed["version"].as_str().unwrap_or("?"),
        duck.secs,
        duck_rate,
        duck.cpu,
        samples as f64 / duck.cpu,
        duck.printed["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
    );
    println!();
    println!(
        "throughput ratio damselfly / DuckDB: {:.2}x by wall time, {:.2}x by CPU time (goal: at least 2x)",
        ours_rate / duck_rate,
        duck.cpu / ours.cpu_secs
    );
}

/// Prints the raw table's storage per sample in every shape, and all the lake objects written.
fn print_storage(args: &Args, ours: &Ours, duck: &Duck, storage: &Storage) {
    let samples = ours.samples;
    let Storage {
        one_file,
        compacted_raw,
        compact_secs,
        prom,
    } = storage;
    println!();
    println!("| raw table storage | bytes | bytes/sample |");
    println!("|---|---:|---:|");
    println!(
        "| damselfly, per-batch files ({} records each) | {} | {:.2} |",
        args.batch_size,
        ours.raw_bytes,
        ours.raw_bytes as f64 / samples as f64
    );
    println!(
        "| damselfly, one file for the run (compacted shape) | {} | {:.2} |",
        one_file,
        *one_file as f64 / samples as f64
    );
    println!(
        "| damselfly, after `damselfly compact` (zstd 17; {:.1} s) | {} | {:.2} |",
        compact_secs,
        compacted_raw,
        *compacted_raw as f64 / samples as f64
    );
    println!(
        "| DuckDB, one file, zstd | {} | {:.2} |",
        duck.raw_bytes,
        duck.raw_bytes as f64 / samples as f64
    );
    match prom {
        Some(b) => {
            println!(
                "| Prometheus TSDB ({}), same samples: chunks only | {} | {:.2} |",
                b.version,
                b.chunks,
                b.chunks as f64 / samples as f64
            );
            println!(
                "| Prometheus TSDB, same samples: whole block (chunks + index; {:.1} s) | {} | {:.2} |",
                b.seconds,
                b.total,
                b.total as f64 / samples as f64
            );
        }
        None => println!(
            "| Prometheus TSDB, same samples | not run: `tests/prometheus-install` installs promtool | - |"
        ),
    }
    println!("| Prometheus TSDB (published, real data) | - | 1.3 |");
    if let Some(b) = prom {
        println!();
        println!(
            "raw after compaction / Prometheus block, same samples: {:.2}x the bytes",
            *compacted_raw as f64 / b.total as f64
        );
    }
    println!();
    println!(
        "all lake objects written by damselfly: {:.1} MiB",
        ours.out_bytes as f64 / 1048576.0
    );
}

/// Writes the batch objects to a lake in directory `dir` (emptied first), runs a compaction over
/// it (every hour closed), and returns the bytes of the compacted `raw` files and the seconds the
/// compaction took. The compacted lake stays behind for inspection with any Parquet reader.
fn compacted_raw_bytes(
    objects: &[LakeObject],
    now_ms: i64,
    dir: &Path,
) -> anyhow::Result<(u64, f64)> {
    sys::empty_dir(dir)?;
    let lake = Lake::open(dir.to_str().context("utf-8 path")?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        lake.put_all(objects).await?;
        let cfg = CompactConfig {
            grace: Duration::ZERO,
            ..CompactConfig::at(now_ms + 3_600_000)
        };
        let started = Instant::now();
        let report = compact::compact(&lake, &cfg).await?;
        let secs = started.elapsed().as_secs_f64();
        if report.waiting > 0 || report.partitions_compacted == 0 {
            bail!("compaction left batch files behind: {report:?}");
        }
        let mut bytes = 0;
        for key in lake.list(Table::Raw.name()).await? {
            if !key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("compacted-"))
            {
                bail!("{key} was not compacted");
            }
            bytes += lake.store().head(&key.as_str().into()).await?.size;
        }
        Ok((bytes, secs))
    })
}

/// A progress bar over the benchmark's messages.
fn bar(len: u64, prefix: &str) -> ProgressBar {
    sys::progress_bar(
        len,
        "{prefix:>10} [{bar:30}] {pos}/{len} messages ({elapsed})",
        prefix.to_owned(),
    )
}
