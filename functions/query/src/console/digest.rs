//! The fleet page's figures from per-file digests: each rollup file of a window is read once into a small summary per (window, VM), kept by object, and every page merges the summaries.
//!
//! Why: the fleet figures (who reported, the busiest VMs, the CPU heat map) need every VM's rows
//! of the window. An open hour is hundreds of one-minute batch files, and scanning them again for
//! every page cost seconds. A lake file never changes once written (compaction writes new
//! objects), so what the page needs of a file is worked out once and merged in milliseconds after.
//!
//! Protocol, per page:
//! 1. The tables are the metric API's (`rollup_sources_sql`): `rollup_1m` for ranges of minute
//!    windows; for hourly windows `rollup_1h` (when it holds files) up to its watermark, the
//!    newest window it holds in the range plus an hour, and `rollup_1m` from there on.
//! 2. Each table's live files in the window's day partitions are listed (`list_live` skips the
//!    files a compacted file replaces) and kept if their hour partition meets the window.
//! 3. Each file's digest is taken from the cache, keyed by path, size and modification time, or
//!    read: its window, VM, tag, metric, device, count, sum and newest-sample columns, folded into
//!    one [`Row`] per (window, VM) plus one [`DeviceRow`] per disk or network series of it.
//! 4. The rows with `from <= window < end` (and, for `rollup_1m` under `rollup_1h`, at or after
//!    the watermark) are merged: sums and counts added, the newest sample and its tags kept.
//!
//! The figures equal the SQL over the same rows (`sum(sum) / sum(count)` and so on) up to the
//! order floating-point sums are added in; the tests hold the two side by side.
//!
//! Failure windows:
//! - A listed file compacted away before it is read: the read fails with "not found" and the page
//!   lists again (up to [`ATTEMPTS`] times); the compacted file holds the same rows.
//! - A compacted file written and its sources not yet deleted: the listing skips the sources.
//! - Memory: digests are kept up to a budget (`CONSOLE_CACHE_MIB`, [`DEFAULT_BUDGET_MIB`] by
//!   default), the least recently used dropped first. A window that needs more is still
//!   answered, from digests held for that page only, and read again by the next page: at 10,000
//!   VMs a 6h window (five compacted minute hours of about 90 MiB each) is such a window.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray as _, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use damselfly_core::compact::{FooterCache, list_live};
use damselfly_schemas::Tags;
use damselfly_schemas::paths::HourPartition;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    DefaultParquetFileReaderFactory, ParquetFileReaderFactory as _,
};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};

use super::chart::Cell;
use super::view::View;
use crate::LakeSql;
use crate::api::{Api, ApiError, Period};
use crate::prune::{ObjectVersion as Version, version};

/// The default of `CONSOLE_CACHE_MIB`: MiB of digests kept between pages (a one-minute batch
/// file of 830 VMs and 31 series digests to about 160 KiB; 10,000 VMs' open hour to about 120 MiB).
pub const DEFAULT_BUDGET_MIB: usize = 256;
/// Listings of a window before a file compacted away mid-page fails the page.
pub const ATTEMPTS: usize = 3;
/// Files read at once when digesting.
const READ_CONCURRENCY: usize = 8;
/// A map with a fast hash (seeded per map) for the merge's many short keys: the lake's own names.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// The columns a digest reads.
const COLUMNS: [&str; 12] = [
    "window_start",
    "ns",
    "mcis",
    "vm",
    "csp",
    "region",
    "os",
    "metric",
    "device",
    "count",
    "sum",
    "last_ts",
];

/// A sum and a count of samples, mergeable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Partial {
    /// Sum of the samples.
    pub sum: f64,
    /// Number of samples.
    pub count: u64,
}

impl Partial {
    fn add(&mut self, other: Partial) {
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The average, when there is a sample.
    pub fn avg(self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The disk and network series the busiest tables rank by (the others have one series per VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceMetric {
    /// `disk_utilization`.
    Disk,
    /// `bytes_in_rate`.
    BytesIn,
    /// `bytes_out_rate`.
    BytesOut,
}

/// What a row of the rollup adds to its (window, VM).
enum Kind {
    Cpu,
    Mem,
    Device(DeviceMetric),
    Other,
}

fn kind(metric: &str) -> Kind {
    match metric {
        "cpu_utilization" => Kind::Cpu,
        "mem_utilization" => Kind::Mem,
        "disk_utilization" => Kind::Device(DeviceMetric::Disk),
        "bytes_in_rate" => Kind::Device(DeviceMetric::BytesIn),
        "bytes_out_rate" => Kind::Device(DeviceMetric::BytesOut),
        _ => Kind::Other,
    }
}

/// One VM in one window of one file.
#[derive(Debug, Clone, Copy)]
struct Row {
    window: i64,
    last_ts: i64,
    /// The (ns, mcis, vm) in the file's `vms`.
    vm: u32,
    /// The (csp, region, os) of the newest sample, in the file's `tags`.
    tags: u32,
    cpu: Partial,
    mem: Partial,
}

/// A disk or network series of a [`Row`].
#[derive(Debug, Clone, Copy)]
struct DeviceRow {
    row: u32,
    metric: DeviceMetric,
    /// The device name in the file's strings.
    device: u32,
    partial: Partial,
}

/// The distinct strings of one file, each once.
#[derive(Debug, Default)]
struct Strings {
    text: String,
    ends: Vec<u32>,
    index: HashMap<Box<str>, u32>,
}

impl Strings {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.index.get(s) {
            return *id;
        }
        let id = self.ends.len() as u32;
        self.text.push_str(s);
        self.ends.push(self.text.len() as u32);
        self.index.insert(s.into(), id);
        id
    }

    fn get(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }
}

/// What the fleet page needs of one file.
#[derive(Debug, Default)]
pub struct FileDigest {
    rows: Vec<Row>,
    devices: Vec<DeviceRow>,
    /// (ns, mcis, vm) as string ids.
    vms: Vec<[u32; 3]>,
    /// (csp, region, os) as string ids.
    tags: Vec<[u32; 3]>,
    strings: Strings,
}

impl FileDigest {
    /// Bytes the digest holds, about.
    pub fn bytes(&self) -> usize {
        self.rows.len() * size_of::<Row>()
            + self.devices.len() * size_of::<DeviceRow>()
            + (self.vms.len() + self.tags.len()) * size_of::<[u32; 3]>()
            + self.strings.text.len()
            + self.strings.ends.len() * (4 + 24)
            + size_of::<Self>()
    }

    fn vm(&self, id: u32) -> [&str; 3] {
        self.vms[id as usize].map(|s| self.strings.get(s))
    }

    fn tag(&self, id: u32) -> [&str; 3] {
        self.tags[id as usize].map(|s| self.strings.get(s))
    }

    /// Folds one batch of rollup rows in.
    fn fold(
        &mut self,
        batch: &RecordBatch,
        rows: &mut HashMap<(i64, u32), u32>,
        vms: &mut HashMap<[u32; 3], u32>,
        tags: &mut HashMap<[u32; 3], u32>,
    ) -> Result<(), ApiError> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ApiError::internal(format!("rollup file lacks column {name}")))
        };
        let text = |name: &str| -> Result<_, ApiError> {
            cast(col(name)?, &DataType::Utf8).map_err(ApiError::internal)
        };
        let time = |name: &str| -> Result<_, ApiError> {
            cast(
                col(name)?,
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .and_then(|a| cast(&a, &DataType::Int64))
            .map_err(ApiError::internal)
        };
        let [ns, mcis, vm, csp, region, os, metric, device] = [
            "ns", "mcis", "vm", "csp", "region", "os", "metric", "device",
        ]
        .map(text);
        let (ns, mcis, vm, csp, region, os, metric, device) =
            (ns?, mcis?, vm?, csp?, region?, os?, metric?, device?);
        let [ns, mcis, vm, csp, region, os, metric, device] =
            [&ns, &mcis, &vm, &csp, &region, &os, &metric, &device].map(|a| a.as_string::<i32>());
        let (window, last_ts) = (time("window_start")?, time("last_ts")?);
        let (window, last_ts) = (
            window.as_primitive::<Int64Type>(),
            last_ts.as_primitive::<Int64Type>(),
        );
        let count = cast(col("count")?, &DataType::Int64).map_err(ApiError::internal)?;
        let sum = cast(col("sum")?, &DataType::Float64).map_err(ApiError::internal)?;
        let (count, sum) = (
            count.as_primitive::<Int64Type>(),
            sum.as_primitive::<Float64Type>(),
        );
        // Rows come in runs of one VM's series: the previous row's VM and tags are reused.
        let mut last_vm: Option<(usize, u32)> = None;
        let mut last_tags: Option<(usize, u32)> = None;
        for i in 0..batch.num_rows() {
            let same = |prev: Option<(usize, u32)>, cols: [&arrow::array::StringArray; 3]| {
                prev.filter(|(p, _)| cols.iter().all(|c| c.value(*p) == c.value(i)))
                    .map(|(_, id)| id)
            };
            let vm_id = same(last_vm, [ns, mcis, vm]).unwrap_or_else(|| {
                let key = [ns, mcis, vm].map(|c| self.strings.id(c.value(i)));
                triple_id(&mut self.vms, vms, key)
            });
            last_vm = Some((i, vm_id));
            let tags_id = same(last_tags, [csp, region, os]).unwrap_or_else(|| {
                let key = [csp, region, os].map(|c| self.strings.id(c.value(i)));
                triple_id(&mut self.tags, tags, key)
            });
            last_tags = Some((i, tags_id));
            let (w, ts) = (window.value(i), last_ts.value(i));
            let next = self.rows.len() as u32;
            let r = *rows.entry((w, vm_id)).or_insert(next);
            if r == next {
                self.rows.push(Row {
                    window: w,
                    last_ts: ts,
                    vm: vm_id,
                    tags: tags_id,
                    cpu: Partial::default(),
                    mem: Partial::default(),
                });
            }
            let row = &mut self.rows[r as usize];
            if ts > row.last_ts {
                (row.last_ts, row.tags) = (ts, tags_id);
            }
            let partial = Partial {
                sum: sum.value(i),
                count: u64::try_from(count.value(i)).unwrap_or_default(),
            };
            match kind(metric.value(i)) {
                Kind::Cpu => row.cpu.add(partial),
                Kind::Mem => row.mem.add(partial),
                Kind::Device(m) => {
                    let device = self.strings.id(device.value(i));
                    self.devices.push(DeviceRow {
                        row: r,
                        metric: m,
                        device,
                        partial,
                    });
                }
                Kind::Other => {}
            }
        }
        Ok(())
    }
}

/// The id of `key` in `list` (indexed by `ids`), added when new.
fn triple_id(list: &mut Vec<[u32; 3]>, ids: &mut HashMap<[u32; 3], u32>, key: [u32; 3]) -> u32 {
    let next = list.len() as u32;
    let id = *ids.entry(key).or_insert(next);
    if id == next {
        list.push(key);
    }
    id
}

/// Reads one rollup file into its digest.
async fn read(store: Arc<dyn ObjectStore>, meta: ObjectMeta) -> Result<FileDigest, ReadError> {
    let reader: Box<dyn AsyncFileReader> = DefaultParquetFileReaderFactory::new(store)
        .create_reader(
            0,
            PartitionedFile::from(meta),
            None,
            &ExecutionPlanMetricsSet::new(),
        )?;
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()?;
    let mut digest = FileDigest::default();
    let (mut rows, mut vms, mut tags) = Default::default();
    while let Some(batch) = stream.try_next().await? {
        digest
            .fold(&batch, &mut rows, &mut vms, &mut tags)
            .map_err(ReadError::Fold)?;
    }
    digest.strings.index = HashMap::new();
    digest.rows.shrink_to_fit();
    digest.devices.shrink_to_fit();
    Ok(digest)
}

/// Why a file could not be digested.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("reading a rollup file: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("opening a rollup file: {0}")]
    Open(#[from] datafusion::error::DataFusionError),
    #[error("listing rollup files: {0}")]
    List(#[from] object_store::Error),
    #[error(transparent)]
    Fold(ApiError),
}

impl ReadError {
    /// Whether a file was gone (compacted away since the listing).
    fn not_found(&self) -> bool {
        match self {
            ReadError::List(object_store::Error::NotFound { .. }) => true,
            ReadError::Parquet(datafusion::parquet::errors::ParquetError::External(e)) => {
                matches!(
                    e.downcast_ref::<object_store::Error>(),
                    Some(object_store::Error::NotFound { .. })
                )
            }
            _ => false,
        }
    }
}

/// The digests of lake files, kept up to a budget of bytes, least recently used dropped first.
#[derive(Debug)]
pub struct Digests {
    kept: Mutex<Kept>,
    /// Compacted files' lists of what they replace, for the live listings.
    footers: FooterCache,
}

#[derive(Debug, Default)]
struct Kept {
    digests: HashMap<Version, (Arc<FileDigest>, u64)>,
    bytes: usize,
    budget: usize,
    clock: u64,
}

impl Default for Digests {
    fn default() -> Self {
        Self {
            kept: Mutex::new(Kept {
                budget: DEFAULT_BUDGET_MIB << 20,
                ..Kept::default()
            }),
            footers: FooterCache::default(),
        }
    }
}

impl Digests {
    /// The files whose digests are kept, and their bytes.
    pub fn kept(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.digests.len(), kept.bytes)
    }

    /// Keeps at most `bytes` of digests from now on.
    pub fn set_budget(&self, bytes: usize) {
        let mut kept = self.lock();
        kept.budget = bytes;
        kept.evict();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().expect("digest cache lock poisoned")
    }

    /// The digest of each file, reading the ones not kept.
    async fn load(
        &self,
        store: &Arc<dyn ObjectStore>,
        files: &[ObjectMeta],
    ) -> Result<Vec<Arc<FileDigest>>, ReadError> {
        let mut found: Vec<Option<Arc<FileDigest>>> = {
            let mut kept = self.lock();
            kept.clock += 1;
            let now = kept.clock;
            files
                .iter()
                .map(|f| {
                    kept.digests.get_mut(&version(f)).map(|(d, used)| {
                        *used = now;
                        d.clone()
                    })
                })
                .collect()
        };
        let missing: Vec<usize> = (0..files.len()).filter(|i| found[*i].is_none()).collect();
        let read: Vec<(usize, Arc<FileDigest>)> = futures::stream::iter(missing)
            .map(|i| {
                let (store, meta) = (store.clone(), files[i].clone());
                async move {
                    let digest = tokio::spawn(read(store, meta))
                        .await
                        .map_err(|e| ReadError::Fold(ApiError::internal(e)))??;
                    Ok::<_, ReadError>((i, Arc::new(digest)))
                }
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        if !read.is_empty() {
            let mut kept = self.lock();
            let now = kept.clock;
            for (i, digest) in read {
                kept.bytes += digest.bytes();
                let old = kept
                    .digests
                    .insert(version(&files[i]), (digest.clone(), now));
                if let Some((old, _)) = old {
                    kept.bytes -= old.bytes();
                }
                found[i] = Some(digest);
            }
            kept.evict();
        }
        Ok(found
            .into_iter()
            .map(|d| d.expect("every file's digest was loaded"))
            .collect())
    }
}

impl Kept {
    /// Drops the least recently used digests until the rest fit the budget.
    fn evict(&mut self) {
        if self.bytes <= self.budget {
            return;
        }
        let mut by_use: Vec<(u64, Version)> = self
            .digests
            .iter()
            .map(|(v, (_, used))| (*used, v.clone()))
            .collect();
        by_use.sort_unstable_by_key(|(used, _)| *used);
        for (_, v) in by_use {
            if self.bytes <= self.budget {
                break;
            }
            if let Some((d, _)) = self.digests.remove(&v) {
                self.bytes -= d.bytes();
            }
        }
        tracing::debug!(
            files = self.digests.len(),
            bytes = self.bytes,
            "fleet digests evicted"
        );
    }
}

/// The live files of `table` whose partitions meet `[from, end)`.
async fn files_of(
    digests: &Digests,
    store: &dyn ObjectStore,
    table: &str,
    period: Period,
    from: i64,
    end: i64,
) -> Result<Vec<ObjectMeta>, ReadError> {
    let span = period.millis().max(Period::Hour.millis());
    let mut files = Vec::new();
    let mut day = Period::Day.floor(from);
    while day < end {
        let date = chrono::DateTime::from_timestamp_millis(day)
            .ok_or_else(|| ReadError::Fold(ApiError::internal(format!("day {day} out of range"))))?
            .format("%Y-%m-%d");
        let prefix = Path::from(format!("{table}/dt={date}"));
        let split = list_live(store, Some(&prefix), &digests.footers).await?;
        files.extend(split.live.into_iter().filter(|m| {
            m.location.as_ref().ends_with(".parquet")
                && HourPartition::parse_key(m.location.as_ref())
                    .map(|(_, p)| p.start_ms())
                    .is_some_and(|s| s < end && s + span > from)
        }));
        day += Period::Day.millis();
    }
    Ok(files)
}

/// A VM with a sample in the window: its tags and figures, merged from every file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmFigures {
    /// Its identity; csp, region and os as of the newest sample (`host` is empty: the rollups do
    /// not keep it).
    pub tags: Tags,
    /// Newest sample time (ms).
    pub last_seen: i64,
    /// `cpu_utilization`.
    pub cpu: Partial,
    /// `mem_utilization`.
    pub mem: Partial,
    /// The disk and network series, by metric and device.
    pub devices: Vec<(DeviceMetric, String, Partial)>,
}

/// The fleet over a window: every VM with a sample in it, and the CPU heat map's cells.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// The VMs, by ns, mcis, vm.
    pub vms: Vec<VmFigures>,
    /// Per heat-map column and 10-point band of average `cpu_utilization`: the VMs in it.
    pub heat: Vec<Cell>,
}

/// The rollup tables a window of `period` reads, coarsest first, with their window width.
fn sources(sql: &LakeSql, period: Period) -> Vec<(&'static str, Period)> {
    let mut s: Vec<(&'static str, Period)> =
        [("rollup_1d", Period::Day), ("rollup_1h", Period::Hour)]
            .into_iter()
            .filter(|(t, p)| p.millis() <= period.millis() && sql.holds_files(t))
            .collect();
    s.push(("rollup_1m", Period::Minute));
    s
}

/// The fleet's figures over the view's window.
pub async fn fleet(sql: &LakeSql, view: &View) -> Result<Fleet, ApiError> {
    let (from, end) = (view.from_ms(), view.end_ms);
    let mut attempt = 1;
    loop {
        match read_window(sql, view.range.period(), from, end).await {
            Ok(tables) => return Ok(merge(&tables, from, end, view.range.bucket_ms())),
            Err(e) if e.not_found() && attempt < ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "a file went away mid-page; listing again");
                attempt += 1;
            }
            Err(e) => return Err(ApiError::internal(e)),
        }
    }
}

/// A table's digests over a window, and the first window read from it (the coarser tables'
/// watermark, or the window's start).
struct TableDigests {
    floor: i64,
    digests: Vec<Arc<FileDigest>>,
}

/// Lists and digests the window's files of each table, coarsest first; a finer table is listed
/// only from the coarser tables' watermark on.
async fn read_window(
    sql: &LakeSql,
    period: Period,
    from: i64,
    end: i64,
) -> Result<Vec<TableDigests>, ReadError> {
    let (store, digests) = (sql.store(), sql.digests());
    let mut tables = Vec::new();
    let mut floor = from;
    for (table, width) in sources(sql, period) {
        let files = files_of(&digests, store.as_ref(), table, width, floor, end).await?;
        let read = digests.load(store, &files).await?;
        let newest = read
            .iter()
            .flat_map(|d| d.rows.iter().map(|r| r.window))
            .filter(|w| *w >= floor && *w < end)
            .max();
        tables.push(TableDigests {
            floor,
            digests: read,
        });
        if let Some(n) = newest {
            floor = floor.max(n + width.millis());
        }
    }
    Ok(tables)
}

/// Digests the default fleet view's files (the last hour) every `every`, so a long-running server
/// has them before a page asks: the first fleet page after start, and the files that landed since
/// the last page, then cost a merge, not a read. Runs until the task is dropped; a failure is
/// logged and retried at the next tick.
pub async fn keep_warm(api: Arc<Api>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = warm(&api).await {
            tracing::warn!(error = %e, "warming the fleet digests failed; next tick retries");
        }
    }
}

/// Digests the files of the default fleet view (the last hour, ending now) once.
pub async fn warm(api: &Api) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    let sql = api.sql().await;
    let view = View::parse(&[], api.now_ms(), &[])?;
    fleet(&sql, &view).await?;
    let (files, bytes) = sql.digests().kept();
    tracing::debug!(
        files,
        bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "fleet digests warm"
    );
    Ok(())
}

/// Merges the digests of each table (coarsest first) over `[from, end)`.
fn merge(tables: &[TableDigests], from: i64, end: i64, bucket: i64) -> Fleet {
    #[derive(Default)]
    struct Acc<'a> {
        seen: bool,
        last_seen: i64,
        tags: [&'a str; 3],
        cpu: Partial,
        mem: Partial,
        /// (metric, device id, partial): a VM has a handful, so a list beats a map.
        devices: Vec<(DeviceMetric, u32, Partial)>,
        /// `cpu_utilization` per heat-map column, from the window's first.
        heat: Vec<Partial>,
    }
    let first_bucket = from.div_euclid(bucket) * bucket;
    let buckets = ((end - 1).div_euclid(bucket) * bucket - first_bucket) / bucket + 1;
    let mut index: FastMap<[&str; 3], usize> = FastMap::default();
    let mut accs: Vec<([&str; 3], Acc)> = Vec::new();
    let mut device_ids: FastMap<&str, u32> = FastMap::default();
    let mut device_names: Vec<&str> = Vec::new();
    for TableDigests { floor, digests } in tables {
        for d in digests {
            let keep = |r: &Row| r.window >= *floor && r.window < end;
            if !d.rows.iter().any(keep) {
                continue;
            }
            let ids: Vec<usize> = (0..d.vms.len() as u32)
                .map(|v| {
                    let key = d.vm(v);
                    *index.entry(key).or_insert_with(|| {
                        accs.push((key, Acc::default()));
                        accs.len() - 1
                    })
                })
                .collect();
            for r in d.rows.iter().filter(|r| keep(r)) {
                let acc = &mut accs[ids[r.vm as usize]].1;
                acc.seen = true;
                if r.last_ts >= acc.last_seen {
                    (acc.last_seen, acc.tags) = (r.last_ts, d.tag(r.tags));
                }
                acc.cpu.add(r.cpu);
                acc.mem.add(r.mem);
                if r.cpu.count > 0 {
                    if acc.heat.is_empty() {
                        acc.heat = vec![Partial::default(); buckets as usize];
                    }
                    let column = (r.window.div_euclid(bucket) * bucket - first_bucket) / bucket;
                    acc.heat[column as usize].add(r.cpu);
                }
            }
            // The digest's device names as merge-wide ids, looked up once per name.
            let mut local: Vec<Option<u32>> = vec![None; d.strings.ends.len()];
            for dr in &d.devices {
                let r = &d.rows[dr.row as usize];
                if !keep(r) {
                    continue;
                }
                let device = *local[dr.device as usize].get_or_insert_with(|| {
                    let name = d.strings.get(dr.device);
                    *device_ids.entry(name).or_insert_with(|| {
                        device_names.push(name);
                        device_names.len() as u32 - 1
                    })
                });
                let acc = &mut accs[ids[r.vm as usize]].1;
                match acc
                    .devices
                    .iter_mut()
                    .find(|(m, dev, _)| *m == dr.metric && *dev == device)
                {
                    Some((_, _, p)) => p.add(dr.partial),
                    None => acc.devices.push((dr.metric, device, dr.partial)),
                }
            }
        }
    }
    let mut cells: BTreeMap<(i64, usize), u64> = BTreeMap::new();
    for (_, acc) in &accs {
        for (column, p) in acc.heat.iter().enumerate() {
            if let Some(avg) = p.avg() {
                let band = (avg / 10.0).floor().clamp(0.0, 9.0) as usize;
                *cells
                    .entry((first_bucket + column as i64 * bucket, band))
                    .or_default() += 1;
            }
        }
    }
    let heat: Vec<Cell> = cells
        .into_iter()
        .map(|((b, band), n)| (b, band, n))
        .collect();
    let mut vms: Vec<VmFigures> = accs
        .into_iter()
        .filter(|(_, a)| a.seen)
        .map(|(key, a)| {
            let mut devices: Vec<(DeviceMetric, String, Partial)> = a
                .devices
                .into_iter()
                .map(|(m, d, p)| (m, device_names[d as usize].to_owned(), p))
                .collect();
            devices.sort_by(|x, y| x.1.cmp(&y.1));
            let ([ns, mcis, vm], [csp, region, os]) =
                (key.map(str::to_owned), a.tags.map(str::to_owned));
            VmFigures {
                tags: Tags {
                    ns,
                    mcis,
                    vm,
                    csp,
                    region,
                    os,
                    host: String::new(),
                },
                last_seen: a.last_seen,
                cpu: a.cpu,
                mem: a.mem,
                devices,
            }
        })
        .collect();
    // By ns, mcis, vm: the fields `Tags` orders by first (a VM's key is unique).
    vms.sort_unstable_by(|a, b| a.tags.cmp(&b.tags));
    Fleet { vms, heat }
}

#[cfg(test)]
mod tests {
    //! The digests' figures against the same figures in SQL over the same lake (the console's
    //! queries before digests), for every range and for window ends that cut compacted files.

    use damselfly_core::compact::{CompactConfig, compact};
    use damselfly_core::ledger::PartitionWrite;
    use damselfly_core::{InputRecord, Lake, PartitionBatch, Validation};

    use super::*;
    use crate::api::metric::{
        coarse_tables, column, floats, millis, partitions_from, rollup_sources_sql, strings,
        ts_literal, vm_list_from_sql, vm_rows,
    };

    /// 2025-11-21T12:00:00Z.
    const T0: i64 = 1_763_726_400_000;
    const STEP: i64 = 20_000;
    const HOURS: i64 = 3;

    /// VM `i`'s sample at `ts`: cpu, memory, two disks and a NIC whose counters grow.
    fn message(i: usize, ts: i64) -> String {
        let k = (ts - T0) / STEP;
        // vm-4 moves region half way; vm-5 stops after the first hour.
        let region = if i == 4 && ts >= T0 + 90 * 60_000 {
            "r2"
        } else {
            "r1"
        };
        format!(
            r#"{{"v":1,"ts":{ts},"tags":{{"ns":"ns{}","mcis":"m{}","vm":"vm-{i}","csp":"c{}","region":"{region}","os":"linux"}},"metrics":{{"cpu_utilization":{},"mem_utilization":{},"load_avg_1":1.5}},"devices":{{"/":{{"disk_utilization":{}}},"/data":{{"disk_utilization":{}}},"eth0":{{"bytes_in":{},"bytes_out":{}}}}}}}"#,
            i % 2,
            i % 3,
            i % 2,
            (k * 7 + i as i64 * 13) % 101,
            (k * 3 + i as i64 * 29) % 97,
            (k + i as i64) % 50,
            (k * 5 + i as i64) % 90,
            k * 1000 * (i as i64 + 1),
            k * 300 * (i as i64 + 2),
        )
    }

    /// Three hours of six VMs on two partitions, five-minute batches, the first two hours compacted.
    async fn lake(dir: &std::path::Path) -> Lake {
        let lake = Lake::open(dir.to_str().unwrap()).unwrap();
        let limits = Validation {
            max_past: std::time::Duration::from_secs(u32::MAX as u64),
            ..Validation::default()
        };
        let mut tails: BTreeMap<i32, _> = BTreeMap::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let per_batch = 5 * 60_000 / STEP;
        for b in 0..HOURS * 60 / 5 {
            for partition in 0..2 {
                let mut batch = PartitionBatch::new("metrics", partition);
                let first = *next.get(&partition).unwrap_or(&0);
                let mut offset = first;
                for k in b * per_batch..(b + 1) * per_batch {
                    let ts = T0 + k * STEP;
                    for i in (partition as usize..6).step_by(2) {
                        if i == 5 && ts >= T0 + 60 * 60_000 {
                            continue;
                        }
                        let v = message(i, ts);
                        let rec = InputRecord {
                            topic: "metrics",
                            partition,
                            offset,
                            timestamp_ms: ts,
                            key: None,
                            value: Some(v.as_bytes()),
                        };
                        batch.push(&rec, ts, &limits);
                        offset += 1;
                    }
                }
                let tail = tails.entry(partition).or_default();
                let write = PartitionWrite {
                    topic: "metrics".into(),
                    partition,
                    first_offset: first,
                    next_offset: offset,
                    objects: batch.objects(tail).unwrap(),
                    tail: Default::default(),
                };
                lake.write_exactly_once("aggregate", write).await.unwrap();
                next.insert(partition, offset);
            }
        }
        // Closes the first two hours (grace 1 h): rollup_1m compacted, rollup_1h written.
        compact(&lake, &CompactConfig::at(T0 + 3 * 3_600_000 + 60_000))
            .await
            .unwrap();
        lake
    }

    /// The window's rollup rows of `metrics` (all when empty), as a `FROM` clause.
    fn source(sql: &LakeSql, view: &View, metrics: &[&str], columns: &str) -> String {
        let from = view.from_ms();
        let mut filter = format!(
            "window_start >= {} AND window_start < {} AND {}",
            ts_literal(from),
            ts_literal(view.end_ms),
            partitions_from(from)
        );
        if !metrics.is_empty() {
            let list: Vec<String> = metrics.iter().map(|m| format!("'{m}'")).collect();
            filter = format!("metric IN ({}) AND {filter}", list.join(", "));
        }
        let coarse = coarse_tables(sql);
        rollup_sources_sql(&filter, from, view.range.period(), columns, |t| {
            coarse.contains(&t)
        })
    }

    /// Per VM: tags and newest sample, in SQL.
    async fn sql_seen(sql: &LakeSql, view: &View) -> Vec<([String; 6], i64)> {
        let body = source(sql, view, &[], "ns, mcis, vm, csp, region, os, last_ts");
        vm_rows(&sql.query(&vm_list_from_sql(&body)).await.unwrap())
            .unwrap()
            .into_iter()
            .map(|(k, last)| (k, last.unwrap()))
            .collect()
    }

    /// Per (vm, metric, device): the window's sum and count, in SQL.
    async fn sql_sums(
        sql: &LakeSql,
        view: &View,
    ) -> BTreeMap<(String, String, String), (f64, f64)> {
        let metrics = [
            "cpu_utilization",
            "mem_utilization",
            "disk_utilization",
            "bytes_in_rate",
            "bytes_out_rate",
        ];
        let body = source(sql, view, &metrics, r#"vm, metric, device, "sum", "count""#);
        let q = format!(
            r#"SELECT vm, metric, device, sum("sum") AS s, sum("count") AS c FROM {body} GROUP BY vm, metric, device"#
        );
        let mut out = BTreeMap::new();
        for b in &sql.query(&q).await.unwrap() {
            let cols: Vec<_> = ["vm", "metric", "device"]
                .iter()
                .map(|c| strings(column(b, c).unwrap()).unwrap())
                .collect();
            let (s, c) = (
                floats(column(b, "s").unwrap()).unwrap(),
                floats(column(b, "c").unwrap()).unwrap(),
            );
            for i in 0..b.num_rows() {
                let k = |c: usize| cols[c][i].clone().unwrap();
                out.insert((k(0), k(1), k(2)), (s[i].unwrap(), c[i].unwrap()));
            }
        }
        out
    }

    /// The heat map's cells, in SQL.
    async fn sql_heat(sql: &LakeSql, view: &View) -> Vec<Cell> {
        let bucket = view.range.bucket_ms();
        let body = source(
            sql,
            view,
            &["cpu_utilization"],
            r#"window_start, ns, mcis, vm, "sum", "count""#,
        );
        let q = format!(
            r#"SELECT b, CAST(least(greatest(floor(avg / 10), 0), 9) AS BIGINT) AS band, count(*) AS vms FROM (
                 SELECT date_bin(INTERVAL '{bucket} milliseconds', window_start, {origin}) AS b, ns, mcis, vm,
                        sum("sum") / sum("count") AS avg
                 FROM {body} GROUP BY 1, 2, 3, 4) AS per_vm
               GROUP BY 1, 2 ORDER BY 1, 2"#,
            origin = ts_literal(0),
        );
        let mut cells = Vec::new();
        for b in &sql.query(&q).await.unwrap() {
            let t = millis(column(b, "b").unwrap()).unwrap();
            let band = floats(column(b, "band").unwrap()).unwrap();
            let n = floats(column(b, "vms").unwrap()).unwrap();
            for i in 0..b.num_rows() {
                cells.push((
                    t[i].unwrap(),
                    band[i].unwrap() as usize,
                    n[i].unwrap() as u64,
                ));
            }
        }
        cells
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[tokio::test]
    async fn digests_give_the_sql_figures_for_every_range_and_window_end() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path()).await;
        let sql = LakeSql::for_lake(&lake).await.unwrap();
        assert!(sql.holds_files("rollup_1h"), "the lake has compacted hours");
        let last = T0 + HOURS * 3_600_000;
        let mut compared = 0;
        for range in ["1h", "6h", "24h", "7d"] {
            // The newest sample's minute; one that cuts the compacted second hour; one between.
            for end in [last, T0 + 90 * 60_000 + 30_000, T0 + 150 * 60_000] {
                let params = [
                    ("range".to_owned(), range.to_owned()),
                    ("end".to_owned(), end.to_string()),
                ];
                let view = View::parse(&params, 0, &[]).unwrap();
                let ctx = format!("range {range}, end {end}");
                let got = fleet(&sql, &view).await.unwrap();

                let seen = sql_seen(&sql, &view).await;
                let digest_seen: Vec<([String; 6], i64)> = got
                    .vms
                    .iter()
                    .map(|v| {
                        let t = &v.tags;
                        let tags = [&t.ns, &t.mcis, &t.vm, &t.csp, &t.region, &t.os];
                        (tags.map(String::clone), v.last_seen)
                    })
                    .collect();
                assert_eq!(digest_seen, seen, "{ctx}");
                assert!(!seen.is_empty(), "{ctx}");

                let sums = sql_sums(&sql, &view).await;
                let mut digest_sums = BTreeMap::new();
                for v in &got.vms {
                    let vm = v.tags.vm.clone();
                    let mut put = |metric: &str, device: &str, p: Partial| {
                        if p.count > 0 {
                            digest_sums.insert(
                                (vm.clone(), metric.to_owned(), device.to_owned()),
                                (p.sum, p.count as f64),
                            );
                        }
                    };
                    put("cpu_utilization", "", v.cpu);
                    put("mem_utilization", "", v.mem);
                    for (m, d, p) in &v.devices {
                        let name = match m {
                            DeviceMetric::Disk => "disk_utilization",
                            DeviceMetric::BytesIn => "bytes_in_rate",
                            DeviceMetric::BytesOut => "bytes_out_rate",
                        };
                        put(name, d, *p);
                    }
                }
                assert_eq!(
                    digest_sums.keys().collect::<Vec<_>>(),
                    sums.keys().collect::<Vec<_>>(),
                    "{ctx}"
                );
                for (k, (s, c)) in &sums {
                    let (ds, dc) = digest_sums[k];
                    assert!(
                        close(ds, *s) && dc == *c,
                        "{ctx} {k:?}: {ds}/{dc} vs {s}/{c}"
                    );
                }
                assert!(sums.keys().any(|k| k.1 == "bytes_in_rate"), "{ctx}");

                assert_eq!(got.heat, sql_heat(&sql, &view).await, "{ctx}");
                compared += 1;
            }
        }
        assert_eq!(compared, 12);
        // The second look at the same window reads no file again: every digest is kept.
        let kept = sql.digests().lock().digests.len();
        assert!(kept > 0);
        let view = View::parse(&[("end".to_owned(), last.to_string())], 0, &[]).unwrap();
        fleet(&sql, &view).await.unwrap();
        assert_eq!(sql.digests().lock().digests.len(), kept);
    }

    #[tokio::test]
    async fn warming_digests_the_default_view_so_the_page_reads_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let lake = lake(dir.path()).await;
        let sql = LakeSql::for_lake(&lake).await.unwrap();
        let last = T0 + HOURS * 3_600_000;
        let api = Api::with_sql(sql).with_clock(move || last);
        let sql = api.sql().await;
        assert_eq!(sql.digests().kept(), (0, 0));
        warm(&api).await.unwrap();
        let (files, bytes) = sql.digests().kept();
        // The last hour: the open hour's batch files (12 five-minute batches x 2 partitions).
        assert_eq!(files, 24);
        assert!(bytes > 0);
        let view = View::parse(&[], last, &[]).unwrap();
        let page = fleet(&sql, &view).await.unwrap();
        assert_eq!(sql.digests().kept(), (files, bytes), "nothing read again");
        assert_eq!(page.vms.len(), 5, "vm-5 went silent in the first hour");
    }

    #[test]
    fn the_cache_drops_the_least_recently_used_beyond_its_budget() {
        let digest = |rows: usize| {
            Arc::new(FileDigest {
                rows: vec![
                    Row {
                        window: 0,
                        last_ts: 0,
                        vm: 0,
                        tags: 0,
                        cpu: Partial::default(),
                        mem: Partial::default(),
                    };
                    rows
                ],
                ..Default::default()
            })
        };
        // Three fit the budget, four do not.
        let budget = 64 << 20;
        let big = budget / size_of::<Row>() / 3 - 100;
        let mut kept = Kept {
            budget,
            ..Kept::default()
        };
        for (i, used) in [(0, 5), (1, 1), (2, 9), (3, 7)] {
            let d = digest(big);
            kept.bytes += d.bytes();
            kept.digests
                .insert((Path::from(format!("f{i}")), 1, 0), (d, used));
        }
        kept.evict();
        let mut left: Vec<String> = kept.digests.keys().map(|v| v.0.to_string()).collect();
        left.sort();
        assert_eq!(
            left,
            ["f0", "f2", "f3"],
            "the least recently used (f1) goes"
        );
        assert!(kept.bytes <= budget);
    }
}
