//! The metric API latency benchmark (issue 7): 5-minute and 24-hour queries over a week of 1m rollups, beside DuckDB.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use damselfly_core::Lake;
use damselfly_core::compact::{self, CompactConfig, Step};
use damselfly_core::encode::{RollupKey, rollup_batch, rollup_parquet};
use damselfly_core::rates::rate_name;
use damselfly_core::rollup::{MINUTE_MS, Partial};
use damselfly_query::api::families::MetricFamily;
use damselfly_query::api::metric::{partitions_from, quote};
use damselfly_query::api::{self, Api};
use damselfly_schemas::paths::{
    HourPartition, batch_object_key, compacted_object_key, rollup_object_key,
};
use damselfly_schemas::{Family, Kind, Table, Tags};
use indicatif::ProgressBar;

use crate::{http, sys};

/// The end of the generated data and the API's "now": 2026-11-21T21:03:00Z. Hours up to 19:00
/// are closed (1 h grace) and compacted; 20:00 and 21:00 are still the aggregate function's
/// batch files, as in a live lake.
pub(crate) const NOW_MS: i64 = 1_795_294_980_000;

const HOUR_MS: i64 = 3_600_000;

/// Samples per series and minute: a 10 s collection interval (CB-Dragonfly's default).
const SAMPLES_PER_MINUTE: i64 = 6;

/// The issue's spec: VMs, days, and series per VM (the whole catalog, about 66 with devices).
const SPEC_VMS: u64 = 10_000;
const SPEC_DAYS: u64 = 7;
const SPEC_SERIES: u64 = 66;

/// Goals of issue 7.
const GOAL_5M_P99_MS: f64 = 100.0;
const GOAL_24H_RATIO: f64 = 1.5;

/// VMs per MCIS in the generated fleet.
const VMS_PER_MCIS: usize = 100;

/// Options of the API benchmark (the lake's are also the console benchmark's).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// VMs in the generated lake.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) vms: usize,
    /// Days of one-minute rollups, ending at 2026-11-21T21:03Z.
    #[arg(long, default_value_t = 7)]
    pub(crate) days: u32,
    /// Metric families whose series are generated (comma-separated, or `all`); queries ask `cpu`.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    pub(crate) families: Vec<String>,
    /// Kafka partitions the fleet is spread over: each writes its own batch files.
    #[arg(long, default_value_t = 12)]
    pub(crate) partitions: usize,
    /// Minutes per batch file in the hours compaction has not closed yet.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch_minutes: u32,
    /// Write each closed hour as compaction leaves it (one compacted `rollup_1m` file and its
    /// `rollup_1h` file, encoded by compaction's own encoder) instead of batch files that a
    /// compaction run then merges: the way to reach the issue's scale here, where merging
    /// 10,000 VMs x 7 days would take hours. `rollup_1d` still comes from a compaction run.
    #[arg(long)]
    pub(crate) direct: bool,
    /// Timed requests per query (each for a random VM), after the warm-up.
    #[arg(long, default_value_t = 200)]
    pub(crate) requests: usize,
    /// Untimed requests per query and engine before the timed ones.
    #[arg(long, default_value_t = 10)]
    pub(crate) warm_up: usize,
    /// Seed of the random VM choice.
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
    /// Threads generating the lake.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// DuckDB's threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) duckdb_threads: usize,
    /// Where generated lakes are cached (one directory per set of generation options).
    #[arg(long, default_value = "bench/out/api")]
    pub(crate) out: PathBuf,
    /// Python with the duckdb package (tests/run puts one in ~/.cache/damselfly/tools-venv).
    #[arg(long, env = "DAMSELFLY_PYTHON", default_value = "python3")]
    pub(crate) python: String,
}

/// One generated series of every VM.
#[derive(Debug, Clone, Copy)]
struct Series {
    metric: &'static str,
    device: &'static str,
    /// Level around which the VMs' values move, and how far.
    level: f64,
    swing: f64,
}

/// The device every per-device family reports on.
fn device_of(family: Family) -> &'static str {
    match family {
        Family::Disk => "/",
        Family::Diskio => "vda",
        Family::Network => "eth0",
        _ => "",
    }
}

/// The lake series of `families`, in the table's sort order (metric, device).
fn series_of(families: &[Family]) -> Vec<Series> {
    let mut out: Vec<Series> = families
        .iter()
        .flat_map(|f| f.metrics())
        .map(|m| {
            let (metric, level, swing) = match m.kind {
                Kind::Gauge if m.unit == "percent" => (m.name, 30.0, 20.0),
                Kind::Gauge => (m.name, 1.0e6, 2.0e5),
                Kind::Counter => (
                    rate_name(m.name).expect("counters have rates"),
                    5.0e3,
                    3.0e3,
                ),
            };
            Series {
                metric,
                device: device_of(m.family),
                level,
                swing,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.metric, a.device).cmp(&(b.metric, b.device)));
    out
}

fn parse_families(names: &[String]) -> anyhow::Result<Vec<Family>> {
    if names.iter().any(|n| n == "all") {
        return Ok(Family::ALL.to_vec());
    }
    let mut out = Vec::new();
    for n in names {
        let f = Family::ALL
            .into_iter()
            .find(|f| f.name() == n)
            .with_context(|| format!("unknown family {n:?}"))?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    ensure!(out.contains(&Family::Cpu), "--families must include cpu");
    Ok(out)
}

/// splitmix64: cheap, deterministic noise.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform value in [-1, 1).
fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// The partial of one VM's series over one minute: six samples, 10 s apart, with two decimals.
fn minute_partial(vm: usize, s: usize, series: &Series, minute: i64) -> Partial {
    let key = ((vm as u64) << 20) ^ (s as u64);
    let phase = unit(key) * std::f64::consts::PI;
    let level = series.level * (1.0 + 0.5 * unit(key ^ 0xabcd));
    let offset = (mix(vm as u64) % 10_000) as i64;
    // A slow swing (about 19 h) plus noise per sample.
    let slow = (minute as f64 / 1.08e7 + phase).sin();
    let mut p: Option<Partial> = None;
    for k in 0..SAMPLES_PER_MINUTE {
        let ts = minute + offset + k * 10_000;
        let noise = unit(key.wrapping_mul(31).wrapping_add(ts as u64));
        let v = (level + series.swing * (0.6 * slow + 0.4 * noise)).max(0.0);
        let v = (v * 100.0).round() / 100.0;
        let one = Partial::of(ts, v);
        match &mut p {
            Some(acc) => acc.merge(&one),
            None => p = Some(one),
        }
    }
    p.expect("samples per minute > 0")
}

/// The fleet: `vm-00000`, ... in MCISes of 100, zero-padded so that names sort as numbers.
pub(crate) fn fleet(vms: usize) -> Vec<Tags> {
    const CSP: [(&str, &str); 3] = [
        ("aws", "ap-northeast-2"),
        ("azure", "koreacentral"),
        ("gcp", "asia-northeast3"),
    ];
    (0..vms)
        .map(|i| Tags {
            ns: "ns01".into(),
            mcis: format!("mcis-{:03}", i / VMS_PER_MCIS),
            vm: format!("vm-{i:05}"),
            csp: CSP[i % 3].0.into(),
            region: CSP[i % 3].1.into(),
            os: "linux".into(),
            host: String::new(),
        })
        .collect()
}

/// One batch file to write: a partition's VMs over a span of minutes inside one hour; or, with
/// `compacted`, a closed hour's compacted files for the whole fleet (`--direct`).
#[derive(Debug, Clone, Copy)]
struct FileJob {
    hour_start: i64,
    first_minute: i64,
    minutes: i64,
    partition: usize,
    offset: i64,
    compacted: bool,
}

/// The batch files of the lake, as the aggregate function leaves them: one per partition and
/// hour for hours compaction will close (it merges them anyway), one per partition and
/// `batch_minutes` for the open ones.
fn file_jobs(args: &Args, start: i64, cfg: &CompactConfig) -> Vec<FileJob> {
    let mut jobs = Vec::new();
    let mut hour_start = start - start.rem_euclid(HOUR_MS);
    let mut offset = 0;
    while hour_start < NOW_MS {
        let (from, to) = (hour_start.max(start), (hour_start + HOUR_MS).min(NOW_MS));
        let closed = hour_start + HOUR_MS + cfg.grace.as_millis() as i64 <= NOW_MS;
        let span = if closed {
            to - from
        } else {
            args.batch_minutes.max(1) as i64 * MINUTE_MS
        };
        if closed && args.direct {
            jobs.push(FileJob {
                hour_start,
                first_minute: from,
                minutes: (to - from) / MINUTE_MS,
                partition: 0,
                offset: 0,
                compacted: true,
            });
            hour_start += HOUR_MS;
            continue;
        }
        let mut first = from;
        while first < to {
            let minutes = ((to - first).min(span)) / MINUTE_MS;
            for partition in 0..args.partitions {
                jobs.push(FileJob {
                    hour_start,
                    first_minute: first,
                    minutes,
                    partition,
                    offset,
                    compacted: false,
                });
                offset += 1;
            }
            first += minutes * MINUTE_MS;
        }
        hour_start += HOUR_MS;
    }
    jobs
}

/// The `rollup_1m` rows of `vms` over the job's minutes, in the table's sort order.
fn job_rows<'a>(
    job: &FileJob,
    vms: &[usize],
    tags: &'a [Tags],
    series: &'a [Series],
) -> (Vec<RollupKey<'a>>, Vec<Partial>) {
    let rows = vms.len() * series.len() * job.minutes as usize;
    let (mut keys, mut partials) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for &vm in vms {
        for (s, ser) in series.iter().enumerate() {
            for m in 0..job.minutes {
                let minute = job.first_minute + m * MINUTE_MS;
                keys.push(RollupKey::new(&tags[vm], ser.metric, ser.device, minute));
                partials.push(minute_partial(vm, s, ser, minute));
            }
        }
    }
    (keys, partials)
}

/// Encodes one batch file with the aggregate function's writer and writes it under `lake`.
fn write_file(
    lake: &Path,
    job: &FileJob,
    partitions: usize,
    tags: &[Tags],
    series: &[Series],
) -> anyhow::Result<(u64, u64)> {
    let vms: Vec<usize> = (job.partition..tags.len()).step_by(partitions).collect();
    let (keys, partials) = job_rows(job, &vms, tags, series);
    if keys.is_empty() {
        return Ok((0, 0));
    }
    let bytes = rollup_parquet(keys.iter().zip(partials.iter()))?;
    let hour = HourPartition::of_millis(job.hour_start).context("hour out of range")?;
    let key = batch_object_key(
        Table::Rollup1m,
        hour,
        "metrics",
        job.partition as i32,
        job.offset,
    );
    put_file(lake, &key, &bytes)?;
    Ok((keys.len() as u64, bytes.len() as u64))
}

/// VMs per record batch of a compacted hour (bounds the generator's transient memory).
const DIRECT_CHUNK_VMS: usize = 500;

/// Writes a closed hour as compaction leaves it: the whole fleet's `rollup_1m` rows in one
/// compacted file (generation 1, replacing nothing) and the hour's `rollup_1h` file, both
/// through [`compact::encode_compacted`]. String columns go in as dictionaries, the way
/// compaction reads its sources.
fn write_compacted_hour(
    lake: &Path,
    job: &FileJob,
    tags: &[Tags],
    series: &[Series],
) -> anyhow::Result<u64> {
    let mut batches = Vec::new();
    for chunk in (0..tags.len()).collect::<Vec<_>>().chunks(DIRECT_CHUNK_VMS) {
        let (keys, partials) = job_rows(job, chunk, tags, series);
        batches.push(as_dictionaries(rollup_batch(
            keys.iter().zip(partials.iter()),
        )?)?);
    }
    let hour = HourPartition::of_millis(job.hour_start).context("hour out of range")?;
    let (bytes, rows) =
        compact::encode_compacted(Table::Rollup1m, batches.clone(), Some(&BTreeSet::new()))?;
    put_file(
        lake,
        &compacted_object_key(Table::Rollup1m, hour, 1),
        &bytes,
    )?;
    let (bytes, _) = compact::encode_compacted(Table::Rollup1h, batches, None)?;
    let key = rollup_object_key(Table::Rollup1h, hour).context("rollup_1h has a key")?;
    put_file(lake, &key, &bytes)?;
    Ok(rows as u64)
}

/// The batch with its string columns as dictionaries.
fn as_dictionaries(batch: RecordBatch) -> anyhow::Result<RecordBatch> {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.data_type() == &DataType::Utf8 {
            fields.push(field.as_ref().clone().with_data_type(dict.clone()));
            columns.push(arrow::compute::cast(col, &dict)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(col.clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Writes one object of the lake on local disk.
fn put_file(lake: &Path, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = lake.join(key);
    std::fs::create_dir_all(path.parent().context("a key has a directory")?)?;
    std::fs::write(&path, bytes)?;
    Ok(())
}

/// What the cached lake holds and what making it took.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Generated {
    pub(crate) rows: u64,
    pub(crate) batch_files: u64,
    pub(crate) write_secs: f64,
    pub(crate) compact_secs: f64,
}

/// A progress bar over `len` things called `unit`, with its time left.
pub(crate) fn bar(len: u64, prefix: &str, unit: &str) -> ProgressBar {
    sys::progress_bar(
        len,
        &format!("{{prefix:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}}, eta {{eta}})"),
        prefix.to_owned(),
    )
}

/// Writes the lake (or finds it cached): the aggregate function's `rollup_1m` batch files, then
/// one `damselfly compact` run at [`NOW_MS`].
fn generate(
    args: &Args,
    dir: &Path,
    series: &[Series],
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(Generated, bool)> {
    let marker = dir.join("generated.json");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        return Ok((serde_json::from_str(&text)?, true));
    }
    let lake_dir = dir.join("lake");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&lake_dir)?;
    let start = NOW_MS - args.days as i64 * 24 * HOUR_MS;
    let mut cfg = CompactConfig::at(NOW_MS);
    cfg.lookback = cfg
        .lookback
        .max(Duration::from_secs((args.days as u64 + 1) * 86_400));
    let jobs = file_jobs(args, start, &cfg);
    let tags = fleet(args.vms);

    let started = Instant::now();
    let pb = bar(jobs.len() as u64, "writing", "batch files");
    let next = AtomicUsize::new(0);
    let rows = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..args.threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        let Some(job) = jobs.get(i) else {
                            return Ok(());
                        };
                        let n = if job.compacted {
                            write_compacted_hour(&lake_dir, job, &tags, series)?
                        } else {
                            write_file(&lake_dir, job, args.partitions, &tags, series)?.0
                        };
                        rows.fetch_add(n, Relaxed);
                        pb.inc(1);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        Ok(())
    })?;
    pb.finish();
    let write_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let lake = Lake::open(lake_dir.to_str().context("utf-8 path")?)?;
    let plan = rt.block_on(compact::plan(&lake, &cfg))?;
    let pb = bar(plan.steps(), "compacting", "steps");
    let report = rt.block_on(compact::execute(&lake, &cfg, &plan, |_: Step<'_>| {
        pb.inc(1)
    }))?;
    pb.finish();
    ensure!(
        report.waiting == 0,
        "compaction left {} batch files waiting",
        report.waiting
    );
    let generated = Generated {
        rows: rows.load(Relaxed),
        batch_files: jobs.len() as u64,
        write_secs,
        compact_secs: started.elapsed().as_secs_f64(),
    };
    std::fs::write(&marker, serde_json::to_string_pretty(&generated)?)?;
    Ok((generated, false))
}

/// One query of the benchmark: the API's `duration` at `periodType=m`, `statisticsCriteria=avg`.
#[derive(Debug, Clone, Copy)]
struct Query {
    name: &'static str,
    duration: &'static str,
    duration_ms: i64,
}

const QUERIES: [Query; 2] = [
    Query {
        name: "5-minute",
        duration: "5m",
        duration_ms: 5 * MINUTE_MS,
    },
    Query {
        name: "24-hour",
        duration: "24h",
        duration_ms: 24 * HOUR_MS,
    },
];

/// The API path of a query for one VM.
fn api_path(q: &Query, vm: &Tags) -> String {
    format!(
        "/dragonfly/ns/{}/mcis/{}/vm/{}/metric/cpu/info?periodType=m&statisticsCriteria=avg&duration={}",
        vm.ns, vm.mcis, vm.vm, q.duration
    )
}

/// The same question in DuckDB's SQL over the same files: the API's window and partition
/// predicates, partials merged as `sum(sum) / sum(count)` per minute and series.
fn duckdb_sql(lake: &str, q: &Query, vm: &Tags) -> String {
    let from = NOW_MS - q.duration_ms;
    let from = from - from.rem_euclid(MINUTE_MS);
    let series = MetricFamily::parse("cpu")
        .expect("cpu is a family")
        .fields()
        .iter()
        .map(|f| quote(f.series))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT epoch_ms(window_start) AS w, metric, sum(\"sum\") / sum(\"count\") AS v \
         FROM read_parquet('{lake}/rollup_1m/*/*/*.parquet', hive_partitioning = true, \
         hive_types = {{'dt': VARCHAR, 'hour': VARCHAR}}) \
         WHERE ns = {} AND mcis = {} AND vm = {} AND metric IN ({series}) \
         AND window_start >= TIMESTAMPTZ '{}' AND window_start <= TIMESTAMPTZ '{}' AND {} \
         GROUP BY 1, 2 ORDER BY 1, 2",
        quote(&vm.ns),
        quote(&vm.mcis),
        quote(&vm.vm),
        api::metric::rfc3339(from),
        api::metric::rfc3339(NOW_MS),
        partitions_from(from)
    )
}

const DUCKDB_JOB: &str = r#"
import duckdb, json, sys, time
# Peak RSS of this process since its exec (ru_maxrss would include the forking parent's).
def peak_rss_kib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
job = json.load(sys.stdin)
con = duckdb.connect()
con.execute(f"SET threads = {job['threads']}")
con.execute("SET enable_progress_bar = false")
out = []
for q in job["queries"]:
    t = time.perf_counter()
    rows = con.execute(q["sql"]).fetchall()
    ms = (time.perf_counter() - t) * 1e3
    rec = {"ms": ms, "rows": len(rows)}
    if q["check"]:
        rec["result"] = [[w, m, v] for (w, m, v) in rows]
    out.append(rec)
print(json.dumps({"results": out, "version": duckdb.__version__,
                  "peak_rss_kib": peak_rss_kib()}))
"#;

/// An answer reduced to (window start, series) -> value, to compare engines.
type Answer = std::collections::BTreeMap<(String, String), f64>;

fn api_answer(body: &[u8]) -> anyhow::Result<Answer> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    let cpu = MetricFamily::parse("cpu").expect("cpu is a family");
    let mut out = Answer::new();
    for row in v["values"].as_array().context("values")? {
        let time = row["time"].as_str().context("time")?.to_owned();
        for f in cpu.fields() {
            if let Some(x) = row[f.label].as_f64() {
                out.insert((time.clone(), f.series.to_owned()), x);
            }
        }
    }
    Ok(out)
}

fn duckdb_answer(rows: &serde_json::Value) -> anyhow::Result<Answer> {
    let mut out = Answer::new();
    for r in rows.as_array().context("result")? {
        let w = r[0].as_i64().context("w")?;
        let m = r[1].as_str().context("metric")?.to_owned();
        out.insert((api::metric::rfc3339(w), m), r[2].as_f64().context("v")?);
    }
    Ok(out)
}

fn same(a: &Answer, b: &Answer) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb && (va - vb).abs() <= 1e-9 * va.abs().max(vb.abs()).max(1.0)
        })
}

/// Latency percentiles in milliseconds: p50, p99, max.
fn percentiles(ms: &mut [f64]) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    (
        sys::nearest_rank(ms, 0.5),
        sys::nearest_rank(ms, 0.99),
        ms[ms.len() - 1],
    )
}

/// Runs the benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.vms > 0 && args.days > 0 && args.requests > 0,
        "nothing to measure"
    );
    ensure!(args.partitions > 0, "--partitions must be at least 1");
    let load_before = sys::load_average();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (lake_str, facts) = lake(args, &rt)?;
    let work = Workload::new(args, lake_str);
    let mut served = Served::measure(args, &rt, &work)?;
    let duck = run_duckdb(args, &work)?;
    let mut theirs = duckdb_latencies(args, &work, &duck, &served.checks)?;
    let load_after = sys::load_average();

    print_setup(args, &duck, &facts);
    print_latencies(&mut served.ms, &mut theirs);
    print_footer(&facts, &served, &duck, &load_before, &load_after);
    Ok(())
}

/// The lake of `args`' generation options, generated or found cached under `--out`: its
/// absolute path and what it holds.
pub(crate) fn lake(
    args: &Args,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(String, LakeFacts)> {
    let families = parse_families(&args.families)?;
    let series = series_of(&families);
    let names: Vec<&'static str> = families.iter().map(|f| f.name()).collect();
    let dir = args.out.join(format!(
        "{}vm-{}d-{}-{}p-{}m{}",
        args.vms,
        args.days,
        names.join("+"),
        args.partitions,
        args.batch_minutes,
        if args.direct { "-direct" } else { "" }
    ));
    let (generated, reused) = generate(args, &dir, &series, rt)?;
    let lake_dir = std::fs::canonicalize(dir.join("lake"))?;
    let lake_str = lake_dir.to_str().context("utf-8 path")?.to_owned();
    let (files, bytes) = sys::du(&lake_dir.join(Table::Rollup1m.name()))?;
    let facts = LakeFacts {
        names,
        series: series.len(),
        generated,
        reused,
        files,
        bytes,
    };
    Ok((lake_str, facts))
}

/// The lake the queries run over: what it holds and how it was made.
pub(crate) struct LakeFacts {
    /// The generated metric families.
    pub(crate) names: Vec<&'static str>,
    /// Series per VM.
    pub(crate) series: usize,
    pub(crate) generated: Generated,
    /// Whether it was found cached.
    pub(crate) reused: bool,
    /// Files and bytes of its `rollup_1m` table.
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

/// What both engines are asked: the lake's path, the fleet and, per query, the VMs asked about
/// (warm-up first), the same random VMs for both engines.
struct Workload {
    lake: String,
    tags: Vec<Tags>,
    picks: Vec<Vec<usize>>,
    /// Requests per query, warm-up included.
    n: usize,
}

impl Workload {
    /// Picks `--warm-up` + `--requests` VMs per query from `--seed`.
    fn new(args: &Args, lake: String) -> Self {
        let tags = fleet(args.vms);
        let n = args.warm_up + args.requests;
        let picks: Vec<Vec<usize>> = QUERIES
            .iter()
            .enumerate()
            .map(|(qi, _)| {
                (0..n)
                    .map(|i| {
                        (mix(args.seed ^ ((qi as u64) << 32) ^ i as u64) % args.vms as u64) as usize
                    })
                    .collect()
            })
            .collect();
        Self {
            lake,
            tags,
            picks,
            n,
        }
    }
}

/// What `damselfly serve` answered: timed latencies and the first answers per query, and this
/// process's RSS around serving.
struct Served {
    /// Milliseconds of each timed request, per query.
    ms: Vec<Vec<f64>>,
    /// The first three timed answers per query, to check against DuckDB's.
    checks: Vec<Vec<Answer>>,
    rss_before_kib: u64,
    rss_serving_kib: u64,
}

impl Served {
    /// Damselfly: `damselfly serve` in this process, `now` fixed at the end of the data, asked
    /// every query over HTTP.
    fn measure(args: &Args, rt: &tokio::runtime::Runtime, work: &Workload) -> anyhow::Result<Self> {
        let rss_before_kib = sys::sample_self().map(|s| s.rss_kib).unwrap_or(0);
        let api = rt
            .block_on(Api::open(&work.lake, &Default::default()))?
            .with_clock(|| NOW_MS);
        let served = http::InProcess::start(rt, Arc::new(api))?;
        let addr = served.addr;
        let mut ms_per_query: Vec<Vec<f64>> = Vec::new();
        let mut checks: Vec<Vec<Answer>> = Vec::new();
        for (qi, q) in QUERIES.iter().enumerate() {
            let (ms, answers) = ask_api(args, addr, q, &work.picks[qi], &work.tags)?;
            ms_per_query.push(ms);
            checks.push(answers);
        }
        served.stop(rt)?;
        let rss_serving_kib = sys::sample_self().map(|s| s.rss_kib).unwrap_or(0);
        Ok(Self {
            ms: ms_per_query,
            checks,
            rss_before_kib,
            rss_serving_kib,
        })
    }
}

/// Asks the API query `q` for each of `picks`: the timed latencies (after the warm-up) and the
/// first three timed answers.
fn ask_api(
    args: &Args,
    addr: SocketAddr,
    q: &Query,
    picks: &[usize],
    tags: &[Tags],
) -> anyhow::Result<(Vec<f64>, Vec<Answer>)> {
    let pb = bar(picks.len() as u64, q.name, "requests");
    let (mut ms, mut answers) = (Vec::with_capacity(args.requests), Vec::new());
    for (i, &vm) in picks.iter().enumerate() {
        let t = Instant::now();
        let (status, body) = http::get(addr, &api_path(q, &tags[vm]), "application/json")?;
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        if status != 200 {
            bail!(
                "{} answered {status}: {}",
                q.name,
                String::from_utf8_lossy(&body)
            );
        }
        if i >= args.warm_up {
            ms.push(elapsed);
            if answers.len() < 3 {
                answers.push(api_answer(&body)?);
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((ms, answers))
}

/// DuckDB: one connection, the same questions over the same files; what the job printed.
fn run_duckdb(args: &Args, work: &Workload) -> anyhow::Result<serde_json::Value> {
    eprintln!("running DuckDB ({} queries) ...", work.n * QUERIES.len());
    let queries: Vec<serde_json::Value> = QUERIES
        .iter()
        .enumerate()
        .flat_map(|(qi, q)| {
            let (tags, lake_str, warm_up) = (&work.tags, &work.lake, args.warm_up);
            work.picks[qi].iter().enumerate().map(move |(i, &vm)| {
                serde_json::json!({
                    "sql": duckdb_sql(lake_str, q, &tags[vm]),
                    "check": i >= warm_up && i < warm_up + 3,
                })
            })
        })
        .collect();
    let job = serde_json::json!({"threads": args.duckdb_threads, "queries": queries});
    let mut child = Command::new(&args.python)
        .args(["-c", DUCKDB_JOB])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (needs the duckdb package)", args.python))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(job.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let duck: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("DuckDB printed: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(duck)
}

/// DuckDB's timed latencies per query, its checked answers compared with the API's.
fn duckdb_latencies(
    args: &Args,
    work: &Workload,
    duck: &serde_json::Value,
    checks: &[Vec<Answer>],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let n = work.n;
    let results = duck["results"].as_array().context("results")?;
    let mut theirs: Vec<Vec<f64>> = Vec::new();
    for (qi, q) in QUERIES.iter().enumerate() {
        let mine = &results[qi * n..(qi + 1) * n];
        let mut ms = Vec::new();
        let mut checked = 0;
        for (i, r) in mine.iter().enumerate().skip(args.warm_up) {
            ms.push(r["ms"].as_f64().context("ms")?);
            if let Some(rows) = r.get("result") {
                let (a, b) = (&checks[qi][checked], duckdb_answer(rows)?);
                ensure!(
                    !a.is_empty() && same(a, &b),
                    "{} for {}: damselfly and DuckDB disagree ({} vs {} values)",
                    q.name,
                    work.tags[work.picks[qi][i]].vm,
                    a.len(),
                    b.len()
                );
                checked += 1;
            }
        }
        ensure!(checked == checks[qi].len(), "not every answer was checked");
        theirs.push(ms);
    }
    Ok(theirs)
}

/// Prints what was compared: the engines, the lake against the issue's spec, how it was made.
fn print_setup(args: &Args, duck: &serde_json::Value, facts: &LakeFacts) {
    let minutes = args.days as u64 * 24 * 60;
    let spec_rows = SPEC_VMS * SPEC_DAYS * 24 * 60 * SPEC_SERIES;
    println!(
        "\napi latency: `damselfly serve` (in process, HTTP/1.1 on 127.0.0.1, a new connection per request) \
         vs DuckDB {} (Python, one connection, threads = {}), {} timed requests per query after {} warm-up, \
         random VMs (the same for both), now = {}",
        duck["version"].as_str().unwrap_or("?"),
        args.duckdb_threads,
        args.requests,
        args.warm_up,
        api::metric::rfc3339(NOW_MS)
    );
    println!(
        "lake: {} VMs x {} days x {} series ({}) = {} rollup_1m rows, {} files, {:.1} MiB on local disk; \
         the issue's spec is {} VMs x {} days x ~{} series = {} rows: this is 1/{:.1} of it",
        args.vms,
        args.days,
        facts.series,
        facts.names.join(", "),
        facts.generated.rows,
        facts.files,
        facts.bytes as f64 / 1048576.0,
        SPEC_VMS,
        SPEC_DAYS,
        SPEC_SERIES,
        spec_rows,
        spec_rows as f64 / (args.vms as u64 * minutes * facts.series as u64) as f64
    );
    let how = if args.direct {
        "files written (closed hours: compacted rollup_1m and rollup_1h files from compaction's encoder; \
         open hours: batch files from the aggregate function's writer)"
    } else {
        "batch files written with the aggregate function's writer"
    };
    println!(
        "{}: {} {how} in {:.0} s, then compacted in {:.0} s \
         (hours up to 19:00 one compacted file each; 20:00 and 21:00 still batch files, {} partitions x {} min)",
        if facts.reused { "cached" } else { "generated" },
        facts.generated.batch_files,
        facts.generated.write_secs,
        facts.generated.compact_secs,
        args.partitions,
        args.batch_minutes
    );
}

/// Prints the latency table of both engines per query, then each query's verdict on its goal.
fn print_latencies(ours: &mut [Vec<f64>], theirs: &mut [Vec<f64>]) {
    println!();
    println!(
        "| query (cpu, periodType=m, avg) | engine | p50 ms | p99 ms | max ms | vs DuckDB p50 / p99 |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    for (qi, q) in QUERIES.iter().enumerate() {
        let (p50, p99, max) = percentiles(&mut ours[qi]);
        let (d50, d99, dmax) = percentiles(&mut theirs[qi]);
        let label = format!("{} (duration={})", q.name, q.duration);
        println!(
            "| {label} | damselfly API | {p50:.1} | {p99:.1} | {max:.1} | {:.2}x / {:.2}x |",
            p50 / d50,
            p99 / d99
        );
        println!("| {label} | DuckDB SQL | {d50:.1} | {d99:.1} | {dmax:.1} | 1.00x |");
        verdicts.push(match qi {
            0 => format!(
                "5-minute p99 {p99:.1} ms (goal < {GOAL_5M_P99_MS:.0} ms): {}",
                if p99 < GOAL_5M_P99_MS {
                    "meets"
                } else {
                    "MISSES"
                }
            ),
            _ => format!(
                "24-hour p50 {:.2}x, p99 {:.2}x DuckDB's (goal within {GOAL_24H_RATIO}x): {}",
                p50 / d50,
                p99 / d99,
                if p50 / d50 <= GOAL_24H_RATIO && p99 / d99 <= GOAL_24H_RATIO {
                    "meets"
                } else {
                    "MISSES"
                }
            ),
        });
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
}

/// Prints what was checked, the memory and load around the run, and what each latency includes.
fn print_footer(
    facts: &LakeFacts,
    served: &Served,
    duck: &serde_json::Value,
    load_before: &str,
    load_after: &str,
) {
    println!(
        "answers checked equal for {} VMs per query; peak RSS: this process {:.0} MiB{} (RSS {:.0} MiB before serving, {:.0} MiB after), DuckDB {:.0} MiB; load average {} before, {} after",
        served.checks[0].len(),
        sys::peak_rss_kib() as f64 / 1024.0,
        if facts.reused {
            ""
        } else {
            " (includes generating the lake)"
        },
        served.rss_before_kib as f64 / 1024.0,
        served.rss_serving_kib as f64 / 1024.0,
        duck["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        load_before,
        load_after
    );
    println!(
        "latency: damselfly = connect, request, the whole JSON answer read (HTTP and JSON included); \
         DuckDB = execute + fetchall inside Python (no HTTP, no JSON)"
    );
}
