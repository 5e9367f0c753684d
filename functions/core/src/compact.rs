//! Compaction: one file per closed hour partition, `rollup_1h`/`rollup_1d` from `rollup_1m`, and retention.
//!
//! The aggregate function writes one small file per batch, table and hour. For every hour that
//! ended more than a grace period ago, compaction merges a partition's files into one
//! `compacted-{generation}.parquet` (rows sorted, `rollup_1m` partials merged per series and
//! minute) whose Parquet key-value metadata `damselfly.compacted_from` names every file it
//! replaces, then deletes those files. Late data merges the current generation and the new files
//! into the next generation, which lists the older one among its sources.
//!
//! Crash safety. Each step is one atomic PUT or DELETE, and readers work out which files are
//! *live*: a file named in a compacted file's `compacted_from` (in the same directory) is
//! superseded and skipped ([`split_live`]; `damselfly sql` reads the lake that way). So between
//! "compacted file written" and "sources deleted" a Damselfly reader still counts every sample
//! once, and a compaction that dies there is finished by the next run (which deletes the
//! superseded files). Tools that glob the directory (DuckDB `read_parquet('raw/**')`, Athena)
//! see the rows twice only inside that window, which lasts as long as the deletes.
//!
//! Compaction takes a batch file only once the exactly-once ledger will never rewrite or remove
//! it: its topic-partition's state has moved, complete, to a later batch (see [`crate::ledger`]).
//! The latest batch of each partition waits for the next one, so a retried batch of another shape
//! can never resurrect or lose rows inside a compacted file. Compacted files are created with a
//! conditional PUT (If-None-Match), so two compactors racing on one hour cannot both win.
//!
//! Memory. A partition is merged in a bounded amount of memory, [`CompactConfig::merge_memory`]
//! (`COMPACT_MERGE_MEMORY`, 64 MiB by default; see `merge.rs`): sources are decoded a few
//! thousand rows at a time (sources above an eighth of the budget over the prefetch width are
//! first streamed to a local temp file), and once the buffered rows pass half the budget they are
//! sorted and spilled as a sorted run, an uncompressed Parquet file in a private temp directory.
//! The runs are then k-way merged a batch per run at a time (in several passes when they are too
//! many for one), merging `rollup_1m` partials of one series and minute across runs. An hour that
//! fits never touches the disk. The budget counts the decoded rows and their sort keys, the sort
//! order, the rows being written, the runs' writers and the small sources fetched ahead;
//! [`CompactReport::merge_peak_bytes`] reports its high-water mark. It does not count Parquet's
//! decoder buffers (about a page per column being read) or the compacted file itself: the file
//! is encoded (into a temp file once runs were spilled) and then held whole in memory, because
//! it is created by one conditional PUT and `object_store`'s multipart upload has no
//! If-None-Match. So a run needs about the budget plus the compacted file in memory, and local
//! disk (`TMPDIR`; Lambda's ephemeral storage) for the large sources, the runs (the hour's
//! decoded size, uncompressed) and the compacted file. Sorting, merging and encoding run on
//! tokio's blocking pool, never on an async worker; row positions are `usize`, not `u32`.
//!
//! A merge that fails or dies part way (a full disk, a crash mid-spill) leaves nothing behind in
//! the lake: its temp files are local, in a directory removed when the merge ends or fails (a
//! killed process leaves it to the next sandbox), and the lake is not touched until the
//! compacted file's single conditional PUT, after which the protocol above takes over.
//!
//! `rollup_1h/dt=/hour=/1h.parquet` merges a closed hour's live `rollup_1m` rows into hour
//! windows and `rollup_1d/dt=/hour=00/1d.parquet` merges a closed day's `rollup_1h` files into day
//! windows; both are rebuilt, by one overwriting PUT, whenever their inputs changed. Only closed
//! hours and days get one, so a reader may take a rollup table's latest window as complete.
//! Retention deletes whole partitions of a table once they are older than its configured age.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use damselfly_schemas::Table;
use damselfly_schemas::paths::{
    HourPartition, compacted_generation, compacted_object_key, rollup_object_key,
};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{FooterTail, KeyValue, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::encode::{self, EncodeError};
use crate::lake::{Lake, LakeError};
use crate::ledger::{PartitionState, STAGING_PREFIX, state_key};

// What only the tests' whole-partition reads and checks use.
#[cfg(test)]
use arrow::array::AsArray as _;
#[cfg(test)]
use arrow::datatypes::TimestampMillisecondType;
#[cfg(test)]
use parquet::arrow::ArrowWriter;
#[cfg(test)]
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

mod merge;

pub use merge::{DEFAULT_MERGE_MEMORY, MIN_MERGE_MEMORY};

/// Parquet key-value metadata of a compacted file: a JSON array of the file names it replaces.
pub const COMPACTED_FROM: &str = "damselfly.compacted_from";

/// How long after an hour ends compaction leaves it to late batches, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// How far back compaction looks for hours to merge, by default: the aggregate function's
/// default `max_past` (7 days) plus a day, so no accepted sample lands in an hour it skips.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(8 * 86_400);

/// The writer whose ledger decides when a batch file is settled (the aggregate function's).
pub const DEFAULT_LEDGER_WRITER: &str = "aggregate";

/// The tables whose hour partitions are merged into compacted files.
pub const COMPACTED_TABLES: [Table; 4] = [Table::Raw, Table::Rollup1m, Table::Dlq, Table::Alarms];

/// zstd level of compacted `raw`, `dlq` and `alarms` files: the long-term store, written once and
/// read for months, so worth more CPU than batches. Measured on the simulator's raw table:
/// level 3 2.24 bytes/sample, 12 2.05, 17 1.89 (about 300k samples/s on one core), 19 1.88 at
/// half that speed.
const ZSTD_LEVEL: i32 = 17;

/// zstd level of compacted rollup files. A `rollup_1m` row carries seven numeric columns, so the
/// high levels cost far more here: on an hour of 2,000 VMs' cpu rollups, level 17 gave
/// 14.0 bytes/row at 72k rows/s, level 6 15.3 at 757k, level 3 16.2 at 1.67M. Level 3 makes
/// compaction of a fleet's rollups over 20x cheaper for 16 % more bytes; a reader decompresses
/// either at the same speed.
const ROLLUP_ZSTD_LEVEL: i32 = 3;

/// Rows per row group in compacted files.
const ROW_GROUP_ROWS: usize = 4 << 20;

/// Bytes per data page before compression: larger pages give zstd more context.
const DATA_PAGE_BYTES: usize = 8 << 20;

/// Rows per data page in compacted rollup files. Rollups are what the API reads, one VM at a
/// time: rows are sorted by VM, so the page index lets a reader decode only the pages of that
/// VM instead of the whole hour. (`raw` keeps big pages: it is the long-term store.)
const ROLLUP_PAGE_ROWS: usize = 8 * 1024;

/// Rows per batch when reading sources and writing the merged file.
const CHUNK_ROWS: usize = 64 * 1024;

/// How many bytes of a file's end are fetched at once to find its footer.
const FOOTER_PROBE: u64 = 64 * 1024;

/// How many objects are read or deleted at once.
const CONCURRENCY: usize = 8;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Why compaction failed; a failed run leaves the lake readable and the next run continues it.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The lake could not be listed, read or written: transient, run again.
    #[error("lake: {0}")]
    Lake(#[from] LakeError),
    /// A source file could not be decoded or does not have its table's columns.
    #[error("source {key}: {why} (move it out of the lake to let compaction continue)")]
    Source {
        /// The object's key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// Merged rows could not be assembled (a bug).
    #[error("merging rows: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The merged file could not be written (a bug).
    #[error("writing the compacted file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Writer settings could not be built (a bug).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A local temp file of the merge (a sorted run, a source's copy) could not be written or read.
    #[error(
        "{what}: {source} (the merge's temp files are on local disk: check TMPDIR's free space)"
    )]
    Spill {
        /// What the merge was doing.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The merge's blocking task panicked or was cancelled (a bug, or the runtime shutting down).
    #[error("merge task: {0}")]
    Task(String),
}

impl From<object_store::Error> for CompactError {
    fn from(e: object_store::Error) -> Self {
        CompactError::Lake(e.into())
    }
}

impl CompactError {
    /// Whether running again may succeed without changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CompactError::Lake(_))
    }
}

/// A retention setting that cannot be used, naming the table and how to write it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RetentionError {
    /// An item is not `TABLE=AGE`.
    #[error(
        "retention item `{0}` is not TABLE=AGE: write e.g. raw=30d,rollup_1m=90d (`off` keeps a table forever)"
    )]
    Syntax(String),
    /// The table does not exist.
    #[error("retention names unknown table `{0}`: use one of {tables}", tables = table_names())]
    UnknownTable(String),
    /// The age is not a duration.
    #[error("retention for {table}: `{value}` is not an age ({why}): use e.g. 30d, 12h, 5y or off")]
    BadAge {
        /// The table.
        table: String,
        /// The value as given.
        value: String,
        /// The parse error.
        why: String,
    },
}

fn table_names() -> String {
    Table::ALL.map(|t| t.name()).join(", ")
}

/// How long each table's partitions are kept; `None` keeps them forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention(pub BTreeMap<Table, Option<Duration>>);

impl Default for Retention {
    /// raw 30d, rollup_1m 90d, rollup_1h 400d, rollup_1d 5y, dlq 30d, alarms 400d.
    fn default() -> Self {
        let d = |days: u64| Some(Duration::from_secs(days * 86_400));
        Self(BTreeMap::from([
            (Table::Raw, d(30)),
            (Table::Rollup1m, d(90)),
            (Table::Rollup1h, d(400)),
            (Table::Rollup1d, d(5 * 365 + 1)),
            (Table::Dlq, d(30)),
            (Table::Alarms, d(400)),
        ]))
    }
}

impl Retention {
    /// The defaults overridden by `raw=30d,rollup_1m=90d,...` (`off` keeps a table forever).
    pub fn parse(spec: &str) -> Result<Self, RetentionError> {
        let mut out = Self::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| RetentionError::Syntax(item.to_owned()))?;
            let (name, value) = (name.trim(), value.trim());
            let table = Table::from_name(name)
                .ok_or_else(|| RetentionError::UnknownTable(name.to_owned()))?;
            let age = match value {
                "off" | "forever" | "none" => None,
                v => {
                    let d = humantime::parse_duration(v).map_err(|e| RetentionError::BadAge {
                        table: name.to_owned(),
                        value: v.to_owned(),
                        why: e.to_string(),
                    })?;
                    if d < Duration::from_secs(3600) {
                        return Err(RetentionError::BadAge {
                            table: name.to_owned(),
                            value: v.to_owned(),
                            why: "shorter than an hour, the lake's smallest partition".into(),
                        });
                    }
                    Some(d)
                }
            };
            out.0.insert(table, age);
        }
        Ok(out)
    }

    /// How long `table` is kept (`None`: forever).
    pub fn of(&self, table: Table) -> Option<Duration> {
        self.0.get(&table).copied().flatten()
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(t, d)| match d {
                Some(d) => format!("{}={}", t.name(), humantime::format_duration(*d)),
                None => format!("{}=off", t.name()),
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

/// What a compaction run considers and may do.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactConfig {
    /// The time the run takes as now (ms since the epoch): decides closed hours and retention.
    pub now_ms: i64,
    /// An hour is closed, and compacted, once it ended this long ago.
    pub grace: Duration,
    /// Hours that started longer ago than this are not merged or rolled up (retention still applies).
    pub lookback: Duration,
    /// How long each table is kept.
    pub retention: Retention,
    /// The writer whose exactly-once ledger says when a batch file is settled.
    pub ledger_writer: String,
    /// Crash drill: write compacted files and rollups, then stop before deleting anything.
    pub halt_after_write: bool,
    /// Bytes one partition's merge may hold in decoded rows before it spills sorted runs to
    /// local temp files (at least [`MIN_MERGE_MEMORY`]; the compacted file itself is held whole).
    pub merge_memory: usize,
}

impl CompactConfig {
    /// The defaults, at `now_ms`.
    pub fn at(now_ms: i64) -> Self {
        Self {
            now_ms,
            grace: DEFAULT_GRACE,
            lookback: DEFAULT_LOOKBACK,
            retention: Retention::default(),
            ledger_writer: DEFAULT_LEDGER_WRITER.to_owned(),
            halt_after_write: false,
            merge_memory: DEFAULT_MERGE_MEMORY,
        }
    }

    fn closed(&self, hour: &HourPartition) -> bool {
        let start = hour.start_ms();
        start + HOUR_MS + self.grace.as_millis() as i64 <= self.now_ms
            && start >= self.now_ms - self.lookback.as_millis() as i64
    }
}

/// One hour partition of one table to merge into its next compacted file.
#[derive(Debug, Clone)]
pub struct Merge {
    /// The table.
    pub table: Table,
    /// The hour.
    pub hour: HourPartition,
    /// The generation the merged file gets (one more than any present).
    pub generation: u64,
    /// Live files to merge (the current compacted file and settled batch files); empty when
    /// only superseded files are left to delete.
    pub sources: Vec<ObjectMeta>,
    /// Files an existing compacted file already replaces: deleted, never read.
    pub superseded: Vec<ObjectMeta>,
}

/// One partition past its table's retention.
#[derive(Debug, Clone)]
pub struct Expiry {
    /// The table.
    pub table: Table,
    /// The partition's hour (hour 00 for `rollup_1d`).
    pub hour: HourPartition,
    /// Its objects.
    pub objects: Vec<ObjectMeta>,
}

/// Everything one run will do, decided from listings, footers and ledger states.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Partitions to merge (or to clean of superseded files).
    pub merges: Vec<Merge>,
    /// Hours whose `rollup_1h` is (re)built.
    pub rollups_1h: Vec<HourPartition>,
    /// Days (hour 00) whose `rollup_1d` is (re)built.
    pub rollups_1d: Vec<HourPartition>,
    /// Partitions to delete.
    pub expiries: Vec<Expiry>,
    /// Batch files in closed hours left for a later run: their partition's latest batch may still be retried.
    pub waiting: u64,
    /// Staged objects of attempts that never decided (or were published and not cleaned up),
    /// older than the grace: nobody will publish them.
    pub stale_staging: Vec<Path>,
}

impl Plan {
    /// Steps [`execute`] takes: one per merge, rollup and expired partition.
    pub fn steps(&self) -> u64 {
        (self.merges.len() + self.rollups_1h.len() + self.rollups_1d.len() + self.expiries.len())
            as u64
    }

    /// What the plan would do, as a report with nothing written yet.
    pub fn preview(&self) -> CompactReport {
        let mut r = CompactReport {
            waiting: self.waiting,
            ..Default::default()
        };
        for m in &self.merges {
            if !m.sources.is_empty() {
                r.partitions_compacted += 1;
                r.files_merged += m.sources.len() as u64;
                r.bytes_before += m.sources.iter().map(|o| o.size).sum::<u64>();
            }
            r.superseded_deleted += m.superseded.len() as u64;
        }
        r.rollups_1h = self.rollups_1h.len() as u64;
        r.rollups_1d = self.rollups_1d.len() as u64;
        r.partitions_expired = self.expiries.len() as u64;
        r.objects_expired = self.expiries.iter().map(|e| e.objects.len() as u64).sum();
        r.staging_removed = self.stale_staging.len() as u64;
        r.bytes_expired = self
            .expiries
            .iter()
            .flat_map(|e| &e.objects)
            .map(|o| o.size)
            .sum();
        r
    }
}

/// What a run did (or, from [`Plan::preview`], would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// Hour partitions merged into a new compacted file.
    pub partitions_compacted: u64,
    /// Files merged into them (batch files and previous generations).
    pub files_merged: u64,
    /// Bytes of the merged files.
    pub bytes_before: u64,
    /// Bytes of the compacted files written.
    pub bytes_after: u64,
    /// Rows in the compacted files written.
    pub rows_written: u64,
    /// Files deleted because a compacted file replaces them (sources and leftovers of crashed runs).
    pub superseded_deleted: u64,
    /// `rollup_1h` files written.
    pub rollups_1h: u64,
    /// `rollup_1d` files written.
    pub rollups_1d: u64,
    /// Partitions deleted by retention.
    pub partitions_expired: u64,
    /// Objects deleted by retention.
    pub objects_expired: u64,
    /// Bytes deleted by retention.
    pub bytes_expired: u64,
    /// Batch files waiting for their partition's next batch before they can be merged.
    pub waiting: u64,
    /// Partitions skipped because another compactor wrote the same generation first.
    pub conflicts: u64,
    /// Stale staged objects removed (see [`Plan::stale_staging`]).
    pub staging_removed: u64,
    /// Steps (a partition's merge, a rollup, an expiry) that failed and were skipped; each is
    /// logged with its error, and the next run tries it again.
    pub failed: u64,
    /// Sorted runs spilled to local temp files by merges that outgrew their memory budget.
    pub spilled_runs: u64,
    /// The most bytes any one merge of the run held in buffered rows (see [`CompactConfig::merge_memory`]).
    pub merge_peak_bytes: u64,
}

/// Compacted files' `compacted_from` lists, by (key, size, modification time): compacted files never change.
#[derive(Debug, Default)]
pub struct FooterCache(Mutex<HashMap<FileVersion, Arc<BTreeSet<String>>>>);

/// An object's key, size and modification time (ms).
type FileVersion = (String, u64, i64);

/// Objects split into what readers should read and what a compacted file already replaces.
#[derive(Debug, Clone, Default)]
pub struct LiveSplit {
    /// Objects to read.
    pub live: Vec<ObjectMeta>,
    /// Objects named in a compacted file of their directory: skip them.
    pub superseded: Vec<ObjectMeta>,
}

fn file_name(p: &Path) -> &str {
    p.as_ref().rsplit('/').next().unwrap_or_default()
}

fn parent(p: &Path) -> &str {
    p.as_ref().rsplit_once('/').map_or("", |(d, _)| d)
}

/// Splits a listing into live and superseded objects: in every directory holding a compacted
/// file and something else, the files named in compacted files' `compacted_from` are superseded.
/// Reads only those compacted files' footers (cached), so a fully compacted lake costs no reads.
pub async fn split_live(
    store: &dyn ObjectStore,
    objects: Vec<ObjectMeta>,
    cache: &FooterCache,
) -> object_store::Result<LiveSplit> {
    let mut dirs: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    for o in objects {
        dirs.entry(parent(&o.location).to_owned())
            .or_default()
            .push(o);
    }
    let mut out = LiveSplit::default();
    for (_, objs) in dirs {
        let compacted: Vec<&ObjectMeta> = objs
            .iter()
            .filter(|o| compacted_generation(o.location.as_ref()).is_some())
            .collect();
        if objs.len() < 2 || compacted.is_empty() {
            out.live.extend(objs);
            continue;
        }
        let mut replaced = BTreeSet::new();
        for c in compacted {
            replaced.extend(compacted_from(store, c, cache).await?.iter().cloned());
        }
        for o in objs {
            if replaced.contains(file_name(&o.location)) {
                out.superseded.push(o);
            } else {
                out.live.push(o);
            }
        }
    }
    Ok(out)
}

/// Every live object under `prefix` (see [`split_live`]); lists again if a compacted file
/// vanished between the listing and its footer read (a newer compaction replaced it).
pub async fn list_live(
    store: &dyn ObjectStore,
    prefix: Option<&Path>,
    cache: &FooterCache,
) -> object_store::Result<LiveSplit> {
    let mut attempt = 0;
    loop {
        let objects: Vec<ObjectMeta> = store.list(prefix).try_collect().await?;
        match split_live(store, objects, cache).await {
            Err(object_store::Error::NotFound { .. }) if attempt < 3 => attempt += 1,
            other => return other,
        }
    }
}

/// The file names a compacted file replaces, from its footer's key-value metadata.
pub async fn compacted_from(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    cache: &FooterCache,
) -> object_store::Result<Arc<BTreeSet<String>>> {
    let key = (
        meta.location.to_string(),
        meta.size,
        meta.last_modified.timestamp_millis(),
    );
    if let Some(hit) = cache.0.lock().expect("cache lock").get(&key) {
        return Ok(hit.clone());
    }
    let bad = |why: String| object_store::Error::Generic {
        store: "damselfly",
        source: format!("compacted file {}: {why}", meta.location).into(),
    };
    let size = meta.size;
    if size < 8 {
        return Err(bad("too short to be Parquet".into()));
    }
    let probe = size.min(FOOTER_PROBE);
    let tail = store.get_range(&meta.location, size - probe..size).await?;
    let footer = FooterTail::try_from(&tail[tail.len() - 8..]).map_err(|e| bad(e.to_string()))?;
    let need = footer.metadata_length() as u64 + 8;
    let metadata = if need <= probe {
        tail.slice((probe - need) as usize..tail.len() - 8)
    } else if need <= size {
        store
            .get_range(&meta.location, size - need..size - 8)
            .await?
    } else {
        return Err(bad("footer longer than the file".into()));
    };
    let md = ParquetMetaDataReader::decode_metadata(&metadata).map_err(|e| bad(e.to_string()))?;
    let names: BTreeSet<String> = md
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == COMPACTED_FROM))
        .and_then(|kv| kv.value.as_deref())
        .map(serde_json::from_str::<Vec<String>>)
        .transpose()
        .map_err(|e| {
            bad(format!(
                "{COMPACTED_FROM} is not a JSON array of names: {e}"
            ))
        })?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let names = Arc::new(names);
    cache
        .0
        .lock()
        .expect("cache lock")
        .insert(key, names.clone());
    Ok(names)
}

/// `(topic, partition, first_offset)` of a batch file name `{topic}+{partition}+{offset}.parquet`.
fn batch_origin(name: &str) -> Option<(&str, i32, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (rest, offset) = stem.rsplit_once('+')?;
    let (topic, partition) = rest.rsplit_once('+')?;
    Some((topic, partition.parse().ok()?, offset.parse().ok()?))
}

/// Ledger states read during one plan, by topic-partition.
struct Ledgers<'a> {
    lake: &'a Lake,
    writer: &'a str,
    states: HashMap<(String, i32), Option<PartitionState>>,
}

impl Ledgers<'_> {
    /// The partition's state, read once per plan.
    async fn state(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<&PartitionState>, LakeError> {
        let id = (topic.to_owned(), partition);
        if !self.states.contains_key(&id) {
            let key = Path::from(state_key(self.writer, topic, partition));
            let (state, _) = self.lake.read_state::<PartitionState>(&key).await?;
            self.states.insert(id.clone(), state);
        }
        Ok(self.states[&id].as_ref())
    }

    /// Whether the ledger will never rewrite or remove the batch file `name` of `table`.
    async fn settled(&mut self, table: Table, name: &str) -> Result<bool, LakeError> {
        if !matches!(table, Table::Raw | Table::Rollup1m | Table::Dlq) {
            return Ok(true);
        }
        let Some((topic, partition, offset)) = batch_origin(name) else {
            return Ok(true);
        };
        Ok(match self.state(topic, partition).await? {
            None => true,
            Some(s) => s.complete && s.first_offset > offset,
        })
    }

    /// Staged objects older than `before` that no state will publish (see [`crate::ledger`]).
    async fn stale_staging(&mut self, before_ms: i64) -> Result<Vec<Path>, LakeError> {
        let root = Path::from(format!("{STAGING_PREFIX}/{}", self.writer));
        let staged: Vec<ObjectMeta> = self.lake.store().list(Some(&root)).try_collect().await?;
        let mut stale = Vec::new();
        for o in staged {
            if o.last_modified.timestamp_millis() >= before_ms {
                continue;
            }
            // _staging/{writer}/{topic}+{partition}/{attempt}/{final key}
            let parts: Vec<&str> = o.location.as_ref().splitn(5, '/').collect();
            let [_, _, tp, attempt, _] = parts[..] else {
                stale.push(o.location);
                continue;
            };
            let prefix = format!("{STAGING_PREFIX}/{}/{tp}/{attempt}", self.writer);
            let pending = match tp.rsplit_once('+') {
                Some((topic, p)) => match p.parse() {
                    Ok(partition) => self
                        .state(topic, partition)
                        .await?
                        .is_some_and(|s| s.staging.as_deref() == Some(prefix.as_str())),
                    Err(_) => false,
                },
                None => false,
            };
            if !pending {
                stale.push(o.location);
            }
        }
        Ok(stale)
    }
}

/// Every `.parquet` object of a table, by hour partition.
async fn table_partitions(
    lake: &Lake,
    table: Table,
) -> Result<BTreeMap<HourPartition, Vec<ObjectMeta>>, LakeError> {
    let mut out: BTreeMap<HourPartition, Vec<ObjectMeta>> = BTreeMap::new();
    let mut listing = lake.store().list(Some(&Path::from(table.name())));
    while let Some(meta) = listing.try_next().await? {
        if !meta.location.as_ref().ends_with(".parquet") {
            continue;
        }
        if let Some((t, hour)) = HourPartition::parse_key(meta.location.as_ref())
            && t == table
        {
            out.entry(hour).or_default().push(meta);
        }
    }
    for objs in out.values_mut() {
        objs.sort_by(|a, b| a.location.cmp(&b.location));
    }
    Ok(out)
}

/// Decides what a run does: reads listings, the footers of compacted files that share a
/// directory with other files, and the ledger states of batch files in closed hours.
pub async fn plan(lake: &Lake, cfg: &CompactConfig) -> Result<Plan, CompactError> {
    let store = lake.store().as_ref();
    let cache = FooterCache::default();
    let mut ledgers = Ledgers {
        lake,
        writer: &cfg.ledger_writer,
        states: HashMap::new(),
    };
    let mut plan = Plan::default();
    let mut tables = BTreeMap::new();
    for table in Table::ALL {
        let mut parts = table_partitions(lake, table).await?;
        take_expired(table, &mut parts, cfg, &mut plan.expiries);
        tables.insert(table, parts);
    }

    for table in COMPACTED_TABLES {
        for (hour, objs) in &tables[&table] {
            if !cfg.closed(hour) {
                continue;
            }
            let waiting = &mut plan.waiting;
            if let Some(merge) =
                plan_merge(store, &cache, &mut ledgers, table, *hour, objs, waiting).await?
            {
                plan.merges.push(merge);
            }
        }
    }

    plan.rollups_1h = plan_rollups_1h(store, &cache, &tables, &plan.merges, cfg).await?;
    plan.rollups_1d = plan_rollups_1d(&tables, &plan.rollups_1h, cfg);
    plan.stale_staging = ledgers
        .stale_staging(cfg.now_ms - cfg.grace.as_millis() as i64)
        .await?;
    Ok(plan)
}

/// A table's objects by hour partition, as [`table_partitions`] lists them.
type Partitions = BTreeMap<HourPartition, Vec<ObjectMeta>>;

/// Moves a table's partitions older than its retention from `parts` to `expiries`.
fn take_expired(
    table: Table,
    parts: &mut Partitions,
    cfg: &CompactConfig,
    expiries: &mut Vec<Expiry>,
) {
    let Some(keep) = cfg.retention.of(table) else {
        return;
    };
    let keep = keep.as_millis() as i64;
    let expired: Vec<HourPartition> = parts
        .keys()
        .filter(|h| {
            let end = match table {
                Table::Rollup1d => h.day().start_ms() + DAY_MS,
                _ => h.start_ms() + HOUR_MS,
            };
            end + keep <= cfg.now_ms
        })
        .copied()
        .collect();
    for hour in expired {
        let objects = parts.remove(&hour).expect("listed");
        expiries.push(Expiry {
            table,
            hour,
            objects,
        });
    }
}

/// Decides a closed partition's merge: its live compacted files and settled batch files, and
/// the superseded files to delete; `None` when there is nothing to do. Batch files the ledger
/// may still rewrite are counted in `waiting`.
async fn plan_merge(
    store: &dyn ObjectStore,
    cache: &FooterCache,
    ledgers: &mut Ledgers<'_>,
    table: Table,
    hour: HourPartition,
    objs: &[ObjectMeta],
    waiting: &mut u64,
) -> Result<Option<Merge>, CompactError> {
    let split = split_live(store, objs.to_vec(), cache).await?;
    let generation = objs
        .iter()
        .filter_map(|o| compacted_generation(o.location.as_ref()))
        .max()
        .unwrap_or(0)
        + 1;
    let mut sources = Vec::new();
    let mut batches = 0;
    for o in split.live {
        if compacted_generation(o.location.as_ref()).is_some() {
            sources.push(o);
        } else if ledgers.settled(table, file_name(&o.location)).await? {
            batches += 1;
            sources.push(o);
        } else {
            *waiting += 1;
        }
    }
    if batches == 0 && sources.len() < 2 {
        // Already one compacted file (or nothing settled yet): only leftovers to delete.
        sources.clear();
    }
    if sources.is_empty() && split.superseded.is_empty() {
        return Ok(None);
    }
    Ok(Some(Merge {
        table,
        hour,
        generation,
        sources,
        superseded: split.superseded,
    }))
}

/// The file `name` in a partition's listing: its modification time, if it is there.
fn built_at(objs: Option<&Vec<ObjectMeta>>, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    objs.and_then(|o| o.iter().find(|o| file_name(&o.location) == name))
        .map(|o| o.last_modified)
}

/// Closed hours whose `rollup_1h` is missing or older than their live `rollup_1m` files, or
/// whose `rollup_1m` files this run merges.
async fn plan_rollups_1h(
    store: &dyn ObjectStore,
    cache: &FooterCache,
    tables: &BTreeMap<Table, Partitions>,
    merges: &[Merge],
    cfg: &CompactConfig,
) -> Result<Vec<HourPartition>, CompactError> {
    let merged_1m: BTreeSet<HourPartition> = merges
        .iter()
        .filter(|m| m.table == Table::Rollup1m && !m.sources.is_empty())
        .map(|m| m.hour)
        .collect();
    let mut out = Vec::new();
    for (hour, objs) in &tables[&Table::Rollup1m] {
        if !cfg.closed(hour) {
            continue;
        }
        let live = split_live(store, objs.clone(), cache).await?.live;
        let Some(latest) = live.iter().map(|o| o.last_modified).max() else {
            continue;
        };
        let built = built_at(tables[&Table::Rollup1h].get(hour), "1h.parquet");
        if merged_1m.contains(hour) || built.is_none_or(|b| b < latest) {
            out.push(*hour);
        }
    }
    Ok(out)
}

/// Closed days (hour 00) whose `rollup_1d` is missing or older than their `rollup_1h` files, or
/// one of whose hours' `rollup_1h` this run rebuilds (`rollups_1h`).
fn plan_rollups_1d(
    tables: &BTreeMap<Table, Partitions>,
    rollups_1h: &[HourPartition],
    cfg: &CompactConfig,
) -> Vec<HourPartition> {
    // Only whole days: a reader takes rollup_1d's latest window as complete.
    let day_closed = |day: &HourPartition| cfg.closed(&HourPartition { hour: 23, ..*day });
    let mut days: BTreeMap<HourPartition, Option<chrono::DateTime<chrono::Utc>>> = BTreeMap::new();
    for (hour, objs) in &tables[&Table::Rollup1h] {
        if day_closed(&hour.day()) {
            let lm = built_at(Some(objs), "1h.parquet");
            let e = days.entry(hour.day()).or_default();
            *e = (*e).max(lm);
        }
    }
    let rebuilt: BTreeSet<HourPartition> = rollups_1h
        .iter()
        .map(|h| h.day())
        .filter(day_closed)
        .collect();
    for day in &rebuilt {
        days.entry(*day).or_default();
    }
    let mut out = Vec::new();
    for (day, latest) in days {
        let built = built_at(tables[&Table::Rollup1d].get(&day), "1d.parquet");
        let stale = match (built, latest) {
            (None, _) => true,
            (Some(b), Some(l)) => b < l,
            (Some(_), None) => false,
        };
        if rebuilt.contains(&day) || stale {
            out.push(day);
        }
    }
    out
}

/// One step of [`execute`], for progress displays.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// A partition was merged (or cleaned).
    Merged(&'a Merge),
    /// An hour's `rollup_1h` was written.
    Rollup1h(HourPartition),
    /// A day's `rollup_1d` was written.
    Rollup1d(HourPartition),
    /// A partition was deleted by retention.
    Expired(&'a Expiry),
}

/// Carries out a plan: merges, then rollups, then retention; calls `on_step` after each step.
pub async fn execute(
    lake: &Lake,
    cfg: &CompactConfig,
    plan: &Plan,
    mut on_step: impl FnMut(Step<'_>),
) -> Result<CompactReport, CompactError> {
    let store = lake.store().as_ref();
    let mut report = CompactReport {
        waiting: plan.waiting,
        ..Default::default()
    };
    // One bad partition (a corrupt file, a store error on one key) is reported and skipped: the
    // other partitions, the rollups and retention still run.
    let failed = |report: &mut CompactReport, what: String, e: CompactError| {
        tracing::error!(partition = %what, error = %e, "compaction step failed; skipped, the next run tries again");
        report.failed += 1;
    };
    for m in &plan.merges {
        if let Err(e) = merge_partition(store, cfg, m, &mut report).await {
            failed(&mut report, m.hour.dir(m.table), e);
        }
        on_step(Step::Merged(m));
    }
    let cache = FooterCache::default();
    for hour in &plan.rollups_1h {
        match rollup_hour(store, cfg, *hour, &cache, &mut report).await {
            Ok(()) => report.rollups_1h += 1,
            Err(e) => failed(&mut report, hour.dir(Table::Rollup1h), e),
        }
        on_step(Step::Rollup1h(*hour));
    }
    for day in &plan.rollups_1d {
        match rollup_day(store, cfg, *day, &mut report).await {
            Ok(()) => report.rollups_1d += 1,
            Err(e) => failed(&mut report, day.dir(Table::Rollup1d), e),
        }
        on_step(Step::Rollup1d(*day));
    }
    for e in &plan.expiries {
        if !cfg.halt_after_write {
            match delete_all(
                store,
                e.objects.iter().map(|o| o.location.clone()).collect(),
            )
            .await
            {
                Ok(n) => {
                    tracing::info!(table = e.table.name(), partition = %e.hour.dir(e.table), objects = n, "partition expired");
                    report.partitions_expired += 1;
                    report.objects_expired += n;
                    report.bytes_expired += e.objects.iter().map(|o| o.size).sum::<u64>();
                }
                Err(err) => failed(&mut report, e.hour.dir(e.table), err.into()),
            }
        }
        on_step(Step::Expired(e));
    }
    if !cfg.halt_after_write {
        match delete_all(store, plan.stale_staging.clone()).await {
            Ok(n) => report.staging_removed = n,
            Err(e) => failed(&mut report, STAGING_PREFIX.to_owned(), e.into()),
        }
    }
    Ok(report)
}

/// Merges one partition into its next compacted file and deletes what it replaces.
async fn merge_partition(
    store: &dyn ObjectStore,
    cfg: &CompactConfig,
    m: &Merge,
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let mut delete: Vec<Path> = m.superseded.iter().map(|o| o.location.clone()).collect();
    if !m.sources.is_empty() {
        let mut names: BTreeSet<String> = m
            .sources
            .iter()
            .chain(&m.superseded)
            .map(|o| file_name(&o.location).to_owned())
            .collect();
        names.remove("");
        let from = serde_json::to_string(&names).expect("names serialize");
        let merged = merge::merge_objects(
            store,
            m.table,
            m.table,
            &m.sources,
            cfg.merge_memory,
            Some(from),
        )
        .await;
        let (bytes, stats) = match merged {
            Err(CompactError::Lake(LakeError::Store(object_store::Error::NotFound {
                path,
                ..
            }))) => {
                tracing::warn!(missing = %path, "a source vanished: another compaction took this partition; skipping it");
                report.conflicts += 1;
                return Ok(());
            }
            other => other?,
        };
        note_merge(report, &stats);
        let rows = stats.rows_out;
        let key = Path::from(compacted_object_key(m.table, m.hour, m.generation));
        let size = bytes.len() as u64;
        match put_create(store, &key, bytes).await {
            Ok(()) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                tracing::warn!(key = %key, "another compaction wrote this generation first; skipping the partition");
                report.conflicts += 1;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            key = %key,
            sources = m.sources.len(),
            bytes_before = m.sources.iter().map(|o| o.size).sum::<u64>(),
            bytes_after = size,
            rows,
            spilled_runs = stats.spilled_runs,
            merge_passes = stats.passes,
            peak_bytes = stats.peak_bytes,
            "partition compacted"
        );
        report.partitions_compacted += 1;
        report.files_merged += m.sources.len() as u64;
        report.bytes_before += m.sources.iter().map(|o| o.size).sum::<u64>();
        report.bytes_after += size;
        report.rows_written += rows;
        delete.extend(m.sources.iter().map(|o| o.location.clone()));
    }
    if !cfg.halt_after_write {
        report.superseded_deleted += delete_all(store, delete).await?;
    }
    Ok(())
}

/// Counts a merge's spilled runs and peak memory in the report.
fn note_merge(report: &mut CompactReport, stats: &merge::MergeStats) {
    report.spilled_runs += stats.spilled_runs;
    report.merge_peak_bytes = report.merge_peak_bytes.max(stats.peak_bytes);
}

/// Builds one hour's `rollup_1h` from its live `rollup_1m` files.
async fn rollup_hour(
    store: &dyn ObjectStore,
    cfg: &CompactConfig,
    hour: HourPartition,
    cache: &FooterCache,
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let dir = Path::from(hour.dir(Table::Rollup1m));
    let live: Vec<ObjectMeta> = list_live(store, Some(&dir), cache)
        .await?
        .live
        .into_iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet"))
        .collect();
    let (bytes, stats) = merge::merge_objects(
        store,
        Table::Rollup1m,
        Table::Rollup1h,
        &live,
        cfg.merge_memory,
        None,
    )
    .await?;
    note_merge(report, &stats);
    let key = rollup_object_key(Table::Rollup1h, hour).expect("rollup_1h has a key");
    put(store, &key, bytes).await?;
    Ok(())
}

/// Builds one day's `rollup_1d` from its hours' `rollup_1h`.
async fn rollup_day(
    store: &dyn ObjectStore,
    cfg: &CompactConfig,
    day: HourPartition,
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let dir = Path::from(day.dir(Table::Rollup1h));
    let dir = Path::from(parent(&dir));
    let hours: Vec<ObjectMeta> = store
        .list(Some(&dir))
        .try_filter(|o| futures::future::ready(file_name(&o.location) == "1h.parquet"))
        .try_collect()
        .await?;
    let (bytes, stats) = merge::merge_objects(
        store,
        Table::Rollup1h,
        Table::Rollup1d,
        &hours,
        cfg.merge_memory,
        None,
    )
    .await?;
    note_merge(report, &stats);
    let key = rollup_object_key(Table::Rollup1d, day).expect("rollup_1d has a key");
    put(store, &key, bytes).await?;
    Ok(())
}

/// Plans and executes one run.
pub async fn compact(lake: &Lake, cfg: &CompactConfig) -> Result<CompactReport, CompactError> {
    let plan = plan(lake, cfg).await?;
    execute(lake, cfg, &plan, |_| {}).await
}

async fn put_create(store: &dyn ObjectStore, key: &Path, bytes: Bytes) -> object_store::Result<()> {
    store
        .put_opts(
            key,
            PutPayload::from_bytes(bytes),
            PutOptions::from(PutMode::Create),
        )
        .await
        .map(|_| ())
}

async fn put(store: &dyn ObjectStore, key: &str, bytes: Bytes) -> object_store::Result<()> {
    store
        .put(&Path::from(key), PutPayload::from_bytes(bytes))
        .await
        .map(|_| ())
}

/// Deletes objects a few at a time; an object already gone counts as deleted by someone else.
async fn delete_all(store: &dyn ObjectStore, keys: Vec<Path>) -> object_store::Result<u64> {
    let deleted: Vec<bool> = futures::stream::iter(keys)
        .map(|k| async move {
            match store.delete(&k).await {
                Ok(()) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(deleted.into_iter().filter(|d| *d).count() as u64)
}

/// The schema sources are read with: string columns of the series tables as dictionaries
/// (a few distinct tags and metric names over millions of rows).
fn read_schema(table: Table) -> SchemaRef {
    let schema = table.schema();
    if !matches!(
        table,
        Table::Raw | Table::Rollup1m | Table::Rollup1h | Table::Rollup1d
    ) {
        return schema;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => Field::new(
                f.name(),
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                f.is_nullable(),
            ),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Reads every source of a table (a few at a time, in key order) into record batches: whole, in
/// memory, so only for tests (compaction reads through [`merge::merge_objects`]).
#[cfg(test)]
async fn read_all(
    store: &dyn ObjectStore,
    table: Table,
    sources: &[ObjectMeta],
) -> Result<Vec<RecordBatch>, CompactError> {
    let files: Vec<(Path, Bytes)> = futures::stream::iter(sources)
        .map(|o| async move {
            let bytes = store.get(&o.location).await?.bytes().await?;
            Ok::<_, object_store::Error>((o.location.clone(), bytes))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let schema = read_schema(table);
    let mut out = Vec::new();
    for (key, bytes) in files {
        let bad = |e: &dyn std::fmt::Display| CompactError::Source {
            key: key.to_string(),
            why: e.to_string(),
        };
        let options = ArrowReaderOptions::new().with_schema(schema.clone());
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options)
            .map_err(|e| bad(&e))?
            .with_batch_size(CHUNK_ROWS)
            .build()
            .map_err(|e| bad(&e))?;
        for batch in reader {
            out.push(batch.map_err(|e| bad(&e))?);
        }
    }
    Ok(out)
}

/// How a rollup's windows are widened while merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Windows stay as they are (compaction of a table into itself).
    Keep,
    /// Truncated to the hour (`rollup_1m` -> `rollup_1h`).
    Hour,
    /// Truncated to the UTC day (`rollup_1h` -> `rollup_1d`).
    Day,
}

/// The key a table's rows are sorted (and, for rollups, merged) by; the first `declared` are
/// recorded as the file's sorting columns.
fn sort_key(table: Table) -> (&'static [&'static str], usize) {
    match table {
        Table::Raw => (&["vm", "metric", "device", "ts"], 4),
        Table::Rollup1m | Table::Rollup1h | Table::Rollup1d => (
            &[
                "vm",
                "metric",
                "device",
                "window_start",
                "ns",
                "mcis",
                "csp",
                "region",
                "os",
            ],
            4,
        ),
        Table::Dlq => (&["topic", "partition", "offset", "received_at"], 3),
        Table::Alarms => (&["vm", "rule_id", "ts"], 3),
    }
}

/// Encodes what compaction writes for one partition of `table` from its source rows, in any
/// order: sorted, rollup partials merged, with the compacted-file writer settings. The sources
/// of `rollup_1h` are `rollup_1m` rows and those of `rollup_1d` are `rollup_1h` rows (windows
/// widen to the hour or day); `compacted_from` names the files a compacted file replaces.
/// Returns the file and its row count. Benchmarks use it to write a compacted lake directly.
pub fn encode_compacted(
    table: Table,
    sources: Vec<RecordBatch>,
    compacted_from: Option<&BTreeSet<String>>,
) -> Result<(Bytes, usize), CompactError> {
    let schema = sources
        .first()
        .map_or_else(|| read_schema(table), |b| b.schema());
    let mut merger =
        merge::Merger::new(table, schema, DEFAULT_MERGE_MEMORY, merge::Meter::default())?;
    for batch in &sources {
        merger.push(batch)?;
    }
    drop(sources);
    let from = compacted_from.map(|names| serde_json::to_string(names).expect("names serialize"));
    let (bytes, stats) = merger.finish(from)?;
    Ok((bytes, stats.rows_out as usize))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, CompactError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| CompactError::Source {
            key: name.to_owned(),
            why: "column missing".into(),
        })
}

/// The writer settings of compacted files: the lake's (sorted, dictionary tags, delta-encoded
/// times, statistics) with a higher zstd level for `raw`, bigger pages and bigger row groups.
/// Floats stay PLAIN: BYTE_STREAM_SPLIT measured 20% larger on the simulator's two-decimal values.
pub fn compacted_properties(
    table: Table,
    schema: &SchemaRef,
    sorted_by: &[&str],
    compacted_from: Option<String>,
) -> Result<WriterProperties, EncodeError> {
    // The writer checks the page row limit after each write batch, so the batch is the page.
    let (page_rows, write_batch, level) = match table {
        Table::Rollup1m | Table::Rollup1h | Table::Rollup1d => {
            (ROLLUP_PAGE_ROWS, ROLLUP_PAGE_ROWS, ROLLUP_ZSTD_LEVEL)
        }
        _ => (usize::MAX, CHUNK_ROWS, ZSTD_LEVEL),
    };
    let mut builder = encode::writer_properties(schema, sorted_by)?
        .into_builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(level)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_size_limit(DATA_PAGE_BYTES)
        .set_data_page_row_count_limit(page_rows)
        .set_write_batch_size(write_batch);
    if let Some(from) = compacted_from {
        builder = builder
            .set_key_value_metadata(Some(vec![KeyValue::new(COMPACTED_FROM.to_owned(), from)]));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::PartitionBatch;
    use crate::decode::{InputRecord, Validation};
    use crate::lake::LakeLocation;
    use crate::ledger::PartitionWrite;

    /// 2025-11-21T09:00:00Z.
    const H9: i64 = 1_763_715_600_000;
    const TOPIC: &str = "metrics";

    fn lake() -> Lake {
        Lake::with_store(
            LakeLocation::Local("/mem".into()),
            Arc::new(object_store::memory::InMemory::new()),
        )
    }

    /// Writes one batch of `n` messages (one per 30 s from `t0`, vm-0..vm-2, two metrics and a
    /// counter each) under the exactly-once ledger, as the aggregate function does.
    async fn write_batch(lake: &Lake, partition: i32, first: i64, n: i64, t0: i64) {
        let mut b = PartitionBatch::new(TOPIC, partition);
        let limits = Validation {
            max_past: Duration::from_secs(u32::MAX as u64),
            ..Validation::default()
        };
        for i in 0..n {
            let offset = first + i;
            let ts = t0 + i * 30_000;
            let value = format!(
                r#"{{"v":1,"ts":{ts},"tags":{{"ns":"n","mcis":"m","vm":"vm-{vm}","csp":"aws"}},"metrics":{{"cpu_utilization":{cpu},"mem_used":{mem}}},"devices":{{"eth0":{{"bytes_in":{bytes}}}}}}}"#,
                vm = offset % 3,
                cpu = (offset * 7 % 100) as f64 + 0.25,
                mem = offset * 1000,
                bytes = offset * 4096,
            );
            let rec = InputRecord {
                topic: TOPIC,
                partition,
                offset,
                timestamp_ms: ts,
                key: None,
                value: Some(value.as_bytes()),
            };
            b.push(&rec, ts, &limits);
        }
        let mut ledger = lake.ledger("aggregate", TOPIC, partition).await.unwrap();
        ledger.settle().await.unwrap();
        let mut tail = ledger.take_tail();
        let objects = b.objects(&mut tail).unwrap();
        let w = PartitionWrite {
            topic: TOPIC.into(),
            partition,
            first_offset: first,
            next_offset: first + n,
            objects,
            tail,
        };
        ledger.write(w).await.unwrap();
    }

    async fn live(lake: &Lake, table: Table) -> Vec<ObjectMeta> {
        list_live(
            lake.store().as_ref(),
            Some(&Path::from(table.name())),
            &FooterCache::default(),
        )
        .await
        .unwrap()
        .live
    }

    /// Every live row of a table, sorted, as text.
    async fn rows(lake: &Lake, table: Table) -> Vec<String> {
        let objs = live(lake, table).await;
        let batches = read_all(lake.store().as_ref(), table, &objs).await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let cols: Vec<ArrayRef> = b
                .columns()
                .iter()
                .map(|c| {
                    // Timestamps as their integers (casting a zoned timestamp to text needs chrono-tz).
                    let c = match c.data_type() {
                        DataType::Timestamp(..) => {
                            arrow::compute::cast(c, &DataType::Int64).unwrap()
                        }
                        _ => c.clone(),
                    };
                    arrow::compute::cast(&c, &DataType::Utf8).unwrap()
                })
                .collect();
            for i in 0..b.num_rows() {
                let row: Vec<&str> = cols.iter().map(|c| c.as_string::<i32>().value(i)).collect();
                out.push(row.join("|"));
            }
        }
        out.sort();
        out
    }

    type Rollups = BTreeMap<(String, String, String, i64), (i64, f64, f64, f64)>;

    /// The rollup rows of a table merged by (vm, metric, device, window of `len` ms) as
    /// (count, sum, min, max).
    async fn merged_rollup(lake: &Lake, table: Table, len: i64) -> Rollups {
        let objs = live(lake, table).await;
        let batches = read_all(lake.store().as_ref(), table, &objs).await.unwrap();
        let mut out = Rollups::new();
        for b in batches {
            let s = |n: &str| {
                arrow::compute::cast(b.column_by_name(n).unwrap(), &DataType::Utf8).unwrap()
            };
            let (vm, metric, device) = (s("vm"), s("metric"), s("device"));
            let w = b
                .column_by_name("window_start")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>();
            let partials = crate::encode::PartialColumns::of(&b).unwrap();
            for i in 0..b.num_rows() {
                let key = (
                    vm.as_string::<i32>().value(i).to_owned(),
                    metric.as_string::<i32>().value(i).to_owned(),
                    device.as_string::<i32>().value(i).to_owned(),
                    w.value(i).div_euclid(len) * len,
                );
                let p = partials.get(i);
                let e = out.entry(key).or_insert((0, 0.0, f64::MAX, f64::MIN));
                e.0 += p.count;
                e.1 += p.sum;
                e.2 = e.2.min(p.min);
                e.3 = e.3.max(p.max);
            }
        }
        out
    }

    /// Same series and windows, same counts and extremes, sums equal up to summation order.
    fn assert_same_rollups(got: &Rollups, want: &Rollups) {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, g) in got {
            let w = want[k];
            assert_eq!((g.0, g.2, g.3), (w.0, w.2, w.3), "{k:?}");
            assert!(
                (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0),
                "{k:?}: {g:?} vs {w:?}"
            );
        }
    }

    fn cfg(now_ms: i64) -> CompactConfig {
        CompactConfig {
            grace: Duration::from_secs(600),
            ..CompactConfig::at(now_ms)
        }
    }

    async fn keys(lake: &Lake, table: Table) -> Vec<String> {
        lake.list(table.name()).await.unwrap()
    }

    /// Two partitions, three batches each in hour 9 and one in hour 10, then a later batch so
    /// that everything but each partition's latest batch is settled.
    async fn fixture(lake: &Lake) {
        for p in 0..2 {
            write_batch(lake, p, 0, 20, H9 + 60_000).await;
            write_batch(lake, p, 20, 20, H9 + 20 * 60_000).await;
            write_batch(lake, p, 40, 30, H9 + 50 * 60_000).await; // runs into hour 10
            write_batch(lake, p, 70, 5, H9 + 3 * HOUR_MS).await; // the latest: waits
        }
    }

    #[tokio::test]
    async fn compaction_keeps_every_row_and_leaves_one_file_per_hour() {
        let lake = lake();
        fixture(&lake).await;
        let before_raw = rows(&lake, Table::Raw).await;
        let before_1m = merged_rollup(&lake, Table::Rollup1m, 60_000).await;
        let before_keys = keys(&lake, Table::Raw).await;
        assert_eq!(before_keys.len(), 2 * 5, "{before_keys:?}");

        // 12:00 + 10 min grace: hours 9 and 10 are closed; hour 12 is not.
        let now = H9 + 3 * HOUR_MS + 11 * 60_000;
        let report = compact(&lake, &cfg(now)).await.unwrap();
        assert_eq!(rows(&lake, Table::Raw).await, before_raw);
        assert_same_rollups(
            &merged_rollup(&lake, Table::Rollup1m, 60_000).await,
            &before_1m,
        );
        let after = keys(&lake, Table::Raw).await;
        assert_eq!(
            after,
            vec![
                "raw/dt=2025-11-21/hour=09/compacted-000001.parquet",
                "raw/dt=2025-11-21/hour=10/compacted-000001.parquet",
                "raw/dt=2025-11-21/hour=12/metrics+0+0000000070.parquet",
                "raw/dt=2025-11-21/hour=12/metrics+1+0000000070.parquet",
            ]
        );
        assert_eq!(
            report.partitions_compacted, 4,
            "raw and rollup_1m, hours 9 and 10"
        );
        assert_eq!(report.files_merged, 2 * (6 + 2));
        assert_eq!(report.superseded_deleted, report.files_merged);
        assert_eq!(
            report.waiting, 0,
            "hour 12 is open, so its files are not counted"
        );
        assert_eq!(
            (report.rollups_1h, report.rollups_1d),
            (2, 0),
            "the day is still open"
        );
        assert!(report.bytes_after < report.bytes_before, "{report:?}");

        // Idempotent: a second run finds nothing to do.
        let again = compact(&lake, &cfg(now)).await.unwrap();
        assert_eq!(again, CompactReport::default());
    }

    #[test]
    fn compacted_rollups_have_small_pages_for_the_page_index_and_raw_big_ones() {
        use arrow::array::{Float64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
        use parquet::file::metadata::PageIndexPolicy;
        let schema = Arc::new(Schema::new(vec![
            Field::new("vm", DataType::Utf8, false),
            Field::new("sum", DataType::Float64, false),
        ]));
        let n = 20_000;
        let vms: Vec<String> = (0..n).map(|i| format!("vm-{:05}", i / 100)).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vms)),
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 / 7.0),
                )),
            ],
        )
        .unwrap();
        let pages = |table: Table| {
            let props = compacted_properties(table, &schema, &["vm"], None).unwrap();
            let mut buf = Vec::new();
            let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            let options =
                ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
            let reader =
                ParquetRecordBatchReaderBuilder::try_new_with_options(Bytes::from(buf), options)
                    .unwrap();
            let index = reader
                .metadata()
                .offset_index()
                .expect("a page index")
                .clone();
            let locations = index[0][1].page_locations().clone();
            locations
                .iter()
                .map(|p| p.first_row_index)
                .collect::<Vec<_>>()
        };
        let rollup = pages(Table::Rollup1m);
        assert_eq!(rollup, vec![0, 8192, 16384], "pages of at most 8192 rows");
        assert_eq!(pages(Table::Raw), vec![0], "raw keeps one big page");
    }

    #[tokio::test]
    async fn the_latest_batch_of_a_partition_waits_for_the_next() {
        let lake = lake();
        write_batch(&lake, 0, 0, 10, H9 + 60_000).await;
        write_batch(&lake, 0, 10, 10, H9 + 20 * 60_000).await;
        let now = H9 + 5 * HOUR_MS;
        let report = compact(&lake, &cfg(now)).await.unwrap();
        // raw and rollup_1m each: the batch at 0 merged alone, the one at 10 waits.
        assert_eq!((report.files_merged, report.waiting), (2, 2));
        let raw = keys(&lake, Table::Raw).await;
        assert_eq!(
            raw,
            vec![
                "raw/dt=2025-11-21/hour=09/compacted-000001.parquet",
                "raw/dt=2025-11-21/hour=09/metrics+0+0000000010.parquet",
            ]
        );
        // Readers see both: the waiting file is not among the compacted file's sources.
        assert_eq!(live(&lake, Table::Raw).await.len(), 2);
        // Its partition moves on: the waiting batch is merged with generation 1 into generation 2.
        write_batch(&lake, 0, 20, 1, H9 + 4 * HOUR_MS).await;
        let report = compact(&lake, &cfg(now)).await.unwrap();
        assert_eq!((report.files_merged, report.waiting), (4, 0));
        assert_eq!(
            keys(&lake, Table::Raw).await[0],
            "raw/dt=2025-11-21/hour=09/compacted-000002.parquet"
        );
        assert_eq!(rows(&lake, Table::Raw).await.len(), 21 * 3);
    }

    #[tokio::test]
    async fn a_run_that_stops_before_deleting_changes_nothing_readers_see() {
        let lake = lake();
        fixture(&lake).await;
        let before = rows(&lake, Table::Raw).await;
        let before_1m = merged_rollup(&lake, Table::Rollup1m, 60_000).await;
        let now = H9 + 3 * HOUR_MS + 11 * 60_000;
        let halted = CompactConfig {
            halt_after_write: true,
            ..cfg(now)
        };
        let report = compact(&lake, &halted).await.unwrap();
        assert_eq!(report.superseded_deleted, 0);
        let all = keys(&lake, Table::Raw).await;
        assert_eq!(
            all.len(),
            10 + 2,
            "sources and compacted files side by side"
        );
        assert_eq!(
            rows(&lake, Table::Raw).await,
            before,
            "no row twice, none missing"
        );
        assert_same_rollups(
            &merged_rollup(&lake, Table::Rollup1m, 60_000).await,
            &before_1m,
        );

        // The next run finishes the job: deletes the superseded files, writes nothing new.
        let next = compact(&lake, &cfg(now)).await.unwrap();
        assert_eq!(next.partitions_compacted, 0);
        assert_eq!(next.superseded_deleted, 2 * 8);
        assert_eq!(keys(&lake, Table::Raw).await.len(), 4);
        assert_eq!(rows(&lake, Table::Raw).await, before);
    }

    #[tokio::test]
    async fn hourly_and_daily_rollups_agree_with_the_minutes() {
        let lake = lake();
        fixture(&lake).await;
        let minutes_h = merged_rollup(&lake, Table::Rollup1m, HOUR_MS).await;
        let minutes_d = merged_rollup(&lake, Table::Rollup1m, DAY_MS).await;
        let now = H9 + 3 * HOUR_MS + 11 * 60_000;
        compact(&lake, &cfg(now)).await.unwrap();
        // Hour 12 is not closed: compare the closed hours only.
        let closed = |m: Rollups| -> Rollups {
            m.into_iter()
                .filter(|(k, _)| k.3 < H9 + 2 * HOUR_MS)
                .collect()
        };
        let hours = merged_rollup(&lake, Table::Rollup1h, HOUR_MS).await;
        assert_same_rollups(&hours, &closed(minutes_h.clone()));
        assert_eq!(hours.keys().map(|k| k.3).collect::<BTreeSet<_>>().len(), 2);
        // One row per series and hour.
        let objs = live(&lake, Table::Rollup1h).await;
        let n: usize = read_all(lake.store().as_ref(), Table::Rollup1h, &objs)
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(n, hours.len());
        assert!(
            keys(&lake, Table::Rollup1d).await.is_empty(),
            "the day is open"
        );

        // Past midnight plus grace the day is closed: hour 12 and the day are rolled up.
        let tomorrow = H9 + 15 * HOUR_MS + 11 * 60_000;
        let report = compact(&lake, &cfg(tomorrow)).await.unwrap();
        assert_eq!((report.rollups_1h, report.rollups_1d), (1, 1), "{report:?}");
        assert_eq!(
            report.waiting, 4,
            "hour 12: each partition's latest batch (raw and rollup_1m) waits"
        );
        assert_same_rollups(
            &merged_rollup(&lake, Table::Rollup1h, HOUR_MS).await,
            &minutes_h,
        );
        assert_same_rollups(
            &merged_rollup(&lake, Table::Rollup1d, DAY_MS).await,
            &minutes_d,
        );
        assert_eq!(
            keys(&lake, Table::Rollup1d).await,
            vec!["rollup_1d/dt=2025-11-21/hour=00/1d.parquet"]
        );

        // Late data for hour 9 (a batch of another partition) rebuilds hour 9 and the day.
        write_batch(&lake, 5, 0, 3, H9 + 5 * 60_000).await;
        write_batch(&lake, 5, 3, 1, H9 + 4 * HOUR_MS).await;
        let report = compact(&lake, &cfg(tomorrow)).await.unwrap();
        assert_eq!(
            (report.rollups_1h, report.rollups_1d),
            (2, 1),
            "hours 9 and 13, the day"
        );
        let minutes = merged_rollup(&lake, Table::Rollup1m, HOUR_MS).await;
        assert_same_rollups(
            &merged_rollup(&lake, Table::Rollup1h, HOUR_MS).await,
            &minutes,
        );
        assert_same_rollups(
            &merged_rollup(&lake, Table::Rollup1d, DAY_MS).await,
            &merged_rollup(&lake, Table::Rollup1m, DAY_MS).await,
        );
        assert_eq!(compact(&lake, &cfg(tomorrow)).await.unwrap().rollups_1d, 0);
    }

    #[tokio::test]
    async fn a_racing_compactor_loses_cleanly() {
        let lake = lake();
        fixture(&lake).await;
        let now = H9 + 3 * HOUR_MS + 11 * 60_000;
        let plan_a = plan(&lake, &cfg(now)).await.unwrap();
        let plan_b = plan(&lake, &cfg(now)).await.unwrap();
        let before = rows(&lake, Table::Raw).await;
        execute(&lake, &cfg(now), &plan_a, |_| {}).await.unwrap();
        let b = execute(&lake, &cfg(now), &plan_b, |_| {}).await.unwrap();
        assert_eq!(b.conflicts, 4);
        assert_eq!(rows(&lake, Table::Raw).await, before);
    }

    #[tokio::test]
    async fn one_bad_hour_is_reported_and_skipped_and_retention_still_runs() {
        let lake = lake();
        fixture(&lake).await;
        // A file that is not Parquet, from a partition no ledger knows: merged, so read, in hour 9.
        let bad = Path::from("raw/dt=2025-11-21/hour=09/metrics+9+0000000000.parquet");
        lake.store()
            .put(&bad, PutPayload::from_static(b"not parquet"))
            .await
            .unwrap();
        let cfg = CompactConfig {
            retention: Retention::parse("rollup_1m=1h").unwrap(),
            ..cfg(H9 + 5 * HOUR_MS)
        };
        let report = compact(&lake, &cfg).await.unwrap();
        assert_eq!(report.failed, 1, "{report:?}");
        let raw = keys(&lake, Table::Raw).await;
        assert!(
            raw.contains(&bad.to_string()),
            "the bad hour is left as it was: {raw:?}"
        );
        assert!(
            raw.iter()
                .any(|k| k.starts_with("raw/dt=2025-11-21/hour=10/compacted-")),
            "the next hour is merged: {raw:?}"
        );
        assert!(report.partitions_expired >= 1, "retention ran: {report:?}");
    }

    #[tokio::test]
    async fn staged_objects_nobody_will_publish_are_swept_after_the_grace() {
        let lake = lake();
        write_batch(&lake, 0, 0, 4, H9).await;
        let put = |k: &str| {
            let (store, k) = (lake.store().clone(), Path::from(k));
            async move { store.put(&k, PutPayload::from_static(b"x")).await.unwrap() }
        };
        // An attempt that never decided, and one whose decision is still to be published.
        put("_staging/aggregate/metrics+0/0000000004-a/raw/x.parquet").await;
        put("_staging/aggregate/metrics+1/0000000000-b/raw/y.parquet").await;
        let state = PartitionState {
            first_offset: 0,
            next_offset: 3,
            staging: Some("_staging/aggregate/metrics+1/0000000000-b".into()),
            ..Default::default()
        };
        let key = Path::from(state_key("aggregate", TOPIC, 1));
        lake.put_state(&key, &state, None).await.unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        // Within the grace, nothing is touched: the attempt may still be deciding.
        assert!(
            plan(&lake, &cfg(now))
                .await
                .unwrap()
                .stale_staging
                .is_empty()
        );
        let later = cfg(now + 3_600_000);
        let report = compact(&lake, &later).await.unwrap();
        assert_eq!(report.staging_removed, 1);
        assert_eq!(
            lake.list("_staging").await.unwrap(),
            vec!["_staging/aggregate/metrics+1/0000000000-b/raw/y.parquet"]
        );
    }

    #[tokio::test]
    async fn retention_drops_whole_old_partitions() {
        let lake = lake();
        fixture(&lake).await;
        let now = H9 + 3 * HOUR_MS + 11 * 60_000;
        compact(&lake, &cfg(now)).await.unwrap();
        // Two days on, raw kept 2 days: hour 9 (ended 10:00) is out, hours 10 and 12 stay.
        let later = H9 + HOUR_MS + 2 * DAY_MS + 30 * 60_000;
        let retention = Retention::parse("raw=2d, rollup_1h=off").unwrap();
        let cfg = CompactConfig {
            retention,
            lookback: Duration::from_secs(3600),
            ..cfg(later)
        };
        let report = compact(&lake, &cfg).await.unwrap();
        assert_eq!(report.partitions_expired, 1, "{report:?}");
        assert!(
            keys(&lake, Table::Raw)
                .await
                .iter()
                .all(|k| !k.contains("hour=09"))
        );
        assert_eq!(keys(&lake, Table::Rollup1h).await.len(), 2);
    }

    #[test]
    fn retention_parses_and_explains_mistakes() {
        let r = Retention::parse("raw=7d,dlq=off").unwrap();
        assert_eq!(r.of(Table::Raw), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r.of(Table::Dlq), None);
        assert_eq!(
            r.of(Table::Rollup1m),
            Retention::default().of(Table::Rollup1m)
        );
        let e = Retention::parse("raw").unwrap_err().to_string();
        assert!(e.contains("not TABLE=AGE") && e.contains("raw=30d"), "{e}");
        let e = Retention::parse("rollup_5m=1d").unwrap_err().to_string();
        assert!(
            e.contains("unknown table `rollup_5m`") && e.contains("rollup_1h"),
            "{e}"
        );
        let e = Retention::parse("raw=30x").unwrap_err().to_string();
        assert!(
            e.starts_with("retention for raw: `30x` is not an age") && e.contains("30d"),
            "{e}"
        );
        assert!(Retention::parse("raw=5m").is_err());
        assert_eq!(
            Retention::parse(&Retention::default().to_string()).unwrap(),
            Retention::default()
        );
    }

    #[test]
    fn batch_names_parse() {
        assert_eq!(
            batch_origin("my.topic-1+11+0000001200.parquet"),
            Some(("my.topic-1", 11, 1200))
        );
        assert_eq!(batch_origin("compacted-000001.parquet"), None);
        assert_eq!(batch_origin("metrics+0+tick-123.parquet"), None);
    }
    /// Writes one batch of `n` messages of partition `partition`, one every `step_ms` from `t0`
    /// (shifted by the partition, so raw keys are unique), over `vms` VMs: every partition holds
    /// the same series and minutes, so `rollup_1m` partials of one key sit in many files.
    async fn write_spread(
        lake: &Lake,
        partition: i32,
        first: i64,
        n: i64,
        t0: i64,
        step_ms: i64,
        vms: i64,
    ) {
        let mut b = PartitionBatch::new(TOPIC, partition);
        let limits = Validation {
            max_past: Duration::from_secs(u32::MAX as u64),
            ..Validation::default()
        };
        for i in 0..n {
            let offset = first + i;
            let ts = t0 + i * step_ms + partition as i64;
            let value = format!(
                r#"{{"v":1,"ts":{ts},"tags":{{"ns":"n","mcis":"m","vm":"vm-{vm:03}","csp":"aws"}},"metrics":{{"cpu_utilization":{cpu},"mem_used":{mem}}},"devices":{{"eth0":{{"bytes_in":{bytes}}}}}}}"#,
                vm = offset % vms,
                cpu = ((offset + partition as i64) * 7 % 100) as f64 + 0.25,
                mem = offset * 1000 + partition as i64,
                bytes = offset * 4096,
            );
            let rec = InputRecord {
                topic: TOPIC,
                partition,
                offset,
                timestamp_ms: ts,
                key: None,
                value: Some(value.as_bytes()),
            };
            b.push(&rec, ts, &limits);
        }
        let mut ledger = lake.ledger("aggregate", TOPIC, partition).await.unwrap();
        ledger.settle().await.unwrap();
        let mut tail = ledger.take_tail();
        let objects = b.objects(&mut tail).unwrap();
        let w = PartitionWrite {
            topic: TOPIC.into(),
            partition,
            first_offset: first,
            next_offset: first + n,
            objects,
            tail,
        };
        ledger.write(w).await.unwrap();
    }

    /// 32 partitions with a batch each over all of hour 9 (then one later batch each, so the
    /// hour-9 batches are settled).
    async fn big_hour(lake: &Lake) {
        for p in 0..32 {
            write_spread(lake, p, 0, 360, H9, 10_000, 40).await;
            write_spread(lake, p, 360, 1, H9 + 3 * HOUR_MS, 10_000, 40).await;
        }
    }

    /// The decoded (Arrow) bytes of a table's live hour-9 rows.
    async fn decoded_bytes(lake: &Lake, table: Table) -> usize {
        let objs: Vec<ObjectMeta> = live(lake, table)
            .await
            .into_iter()
            .filter(|o| o.location.as_ref().contains("hour=09"))
            .collect();
        read_all(lake.store().as_ref(), table, &objs)
            .await
            .unwrap()
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum()
    }

    /// Reads one file and asserts its rows are in the table's sort-key order (strictly, for
    /// rollups: one row per key); returns its row count.
    async fn assert_sorted(lake: &Lake, table: Table, key: &str) -> usize {
        use arrow::row::{RowConverter, SortField};
        let meta = lake.store().head(&Path::from(key)).await.unwrap();
        let batches = read_all(lake.store().as_ref(), table, &[meta])
            .await
            .unwrap();
        let (names, _) = sort_key(table);
        let schema = read_schema(table);
        let converter = RowConverter::new(
            names
                .iter()
                .map(|n| SortField::new(schema.field_with_name(n).unwrap().data_type().clone()))
                .collect(),
        )
        .unwrap();
        let mut previous: Option<arrow::row::OwnedRow> = None;
        let mut n = 0;
        for b in &batches {
            let cols: Vec<ArrayRef> = names
                .iter()
                .map(|k| b.column_by_name(k).unwrap().clone())
                .collect();
            let rows = converter.convert_columns(&cols).unwrap();
            for i in 0..rows.num_rows() {
                if let Some(p) = &previous {
                    let rollup = table != Table::Raw;
                    let ok = if rollup {
                        p.row() < rows.row(i)
                    } else {
                        p.row() <= rows.row(i)
                    };
                    assert!(ok, "{key}: row {n} is out of order");
                }
                previous = Some(rows.row(i).owned());
                n += 1;
            }
        }
        n
    }

    /// Runs the plan's merge of `table`'s hour 9 alone.
    async fn merge_hour9(lake: &Lake, cfg: &CompactConfig, table: Table) -> CompactReport {
        let plan = plan(lake, cfg).await.unwrap();
        let m = plan
            .merges
            .iter()
            .find(|m| m.table == table && m.hour.start_ms() == H9)
            .expect("hour 9 is planned")
            .clone();
        let one = Plan {
            merges: vec![m],
            ..Default::default()
        };
        execute(lake, cfg, &one, |_| {}).await.unwrap()
    }

    #[tokio::test]
    async fn an_hour_larger_than_the_merge_budget_spills_sorted_runs_and_keeps_every_row_once() {
        let lake = lake();
        big_hour(&lake).await;
        let budget = 256 << 10;
        let now = H9 + 3 * HOUR_MS + 11 * 60_000;
        let cfg = CompactConfig {
            merge_memory: budget,
            ..cfg(now)
        };
        let hour9 = |rows: Vec<String>, at: usize| -> Vec<String> {
            rows.into_iter()
                .filter(|r| {
                    let ts: i64 = r.split('|').nth(at).unwrap().parse().unwrap();
                    (H9..H9 + HOUR_MS).contains(&ts)
                })
                .collect()
        };

        // raw: every row exactly once, sorted, through more than one spilled run.
        let ts_at = Table::Raw.schema().index_of("ts").unwrap();
        let before_raw = hour9(rows(&lake, Table::Raw).await, ts_at);
        let raw_bytes = decoded_bytes(&lake, Table::Raw).await;
        let report = merge_hour9(&lake, &cfg, Table::Raw).await;
        println!(
            "raw: {} rows, {} source bytes, {raw_bytes} decoded bytes, budget {budget}, {} runs, peak {}",
            before_raw.len(),
            report.bytes_before,
            report.spilled_runs,
            report.merge_peak_bytes
        );
        assert!(
            raw_bytes > 4 * budget,
            "the hour outgrows the budget: {raw_bytes}"
        );
        assert!(report.spilled_runs > 1, "{report:?}");
        assert!(report.merge_peak_bytes > 0, "{report:?}");
        assert!(
            report.merge_peak_bytes <= budget as u64,
            "peak {} over the budget {budget}",
            report.merge_peak_bytes
        );
        assert_eq!(report.rows_written, before_raw.len() as u64);
        assert_eq!(hour9(rows(&lake, Table::Raw).await, ts_at), before_raw);
        let distinct: BTreeSet<&String> = before_raw.iter().collect();
        assert_eq!(distinct.len(), before_raw.len(), "raw keys are unique here");
        let n = assert_sorted(
            &lake,
            Table::Raw,
            "raw/dt=2025-11-21/hour=09/compacted-000001.parquet",
        )
        .await;
        assert_eq!(n, before_raw.len());

        // rollup_1m: one key's partials sit in every file (so in several runs) and merge to one row.
        let before_1m = merged_rollup(&lake, Table::Rollup1m, 60_000).await;
        let rollup_bytes = decoded_bytes(&lake, Table::Rollup1m).await;
        let report = merge_hour9(&lake, &cfg, Table::Rollup1m).await;
        println!(
            "rollup_1m: {} keys, {} source bytes, {rollup_bytes} decoded bytes, budget {budget}, {} runs, peak {}",
            before_1m.len(),
            report.bytes_before,
            report.spilled_runs,
            report.merge_peak_bytes
        );
        assert!(rollup_bytes > 4 * budget, "{rollup_bytes}");
        assert!(report.spilled_runs > 1, "{report:?}");
        assert!(report.merge_peak_bytes <= budget as u64, "{report:?}");
        let after_1m = merged_rollup(&lake, Table::Rollup1m, 60_000).await;
        assert_same_rollups(&after_1m, &before_1m);
        let n = assert_sorted(
            &lake,
            Table::Rollup1m,
            "rollup_1m/dt=2025-11-21/hour=09/compacted-000001.parquet",
        )
        .await;
        let hour9_keys = before_1m.keys().filter(|k| k.3 < H9 + HOUR_MS).count();
        assert_eq!(n, hour9_keys, "one row per series and minute");
        assert_eq!(report.rows_written, hour9_keys as u64);

        // rollup_1h and rollup_1d from it, in the same budget, agree with the minutes.
        let report = compact(&lake, &cfg).await.unwrap();
        assert_eq!(report.failed, 0, "{report:?}");
        assert!(report.merge_peak_bytes <= budget as u64, "{report:?}");
        let minutes_h = merged_rollup(&lake, Table::Rollup1m, HOUR_MS).await;
        let hours = merged_rollup(&lake, Table::Rollup1h, HOUR_MS).await;
        let closed: Rollups = minutes_h
            .into_iter()
            .filter(|(k, _)| k.3 < H9 + 2 * HOUR_MS)
            .collect();
        assert_same_rollups(&hours, &closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spilled_and_in_memory_merges_write_the_same_rows() {
        let now = H9 + 3 * HOUR_MS + 11 * 60_000;
        let (small, large) = (lake(), lake());
        big_hour(&small).await;
        big_hour(&large).await;
        let spilled = compact(
            &small,
            &CompactConfig {
                merge_memory: 256 << 10,
                ..cfg(now)
            },
        )
        .await
        .unwrap();
        let in_memory = compact(&large, &cfg(now)).await.unwrap();
        assert!(spilled.spilled_runs > 1, "{spilled:?}");
        assert_eq!(in_memory.spilled_runs, 0, "{in_memory:?}");
        assert!(in_memory.merge_peak_bytes <= DEFAULT_MERGE_MEMORY as u64);
        assert_eq!(spilled.rows_written, in_memory.rows_written);
        assert_eq!(
            rows(&small, Table::Raw).await,
            rows(&large, Table::Raw).await
        );
        for (table, len) in [
            (Table::Rollup1m, 60_000),
            (Table::Rollup1h, HOUR_MS),
            (Table::Rollup1d, DAY_MS),
        ] {
            assert_same_rollups(
                &merged_rollup(&small, table, len).await,
                &merged_rollup(&large, table, len).await,
            );
        }
        for key in [
            "raw/dt=2025-11-21/hour=09/compacted-000001.parquet",
            "rollup_1m/dt=2025-11-21/hour=09/compacted-000001.parquet",
        ] {
            let table = Table::from_name(key.split('/').next().unwrap()).unwrap();
            assert_eq!(
                assert_sorted(&small, table, key).await,
                assert_sorted(&large, table, key).await
            );
            let from = |lake: Lake| async move {
                let meta = lake.store().head(&Path::from(key)).await.unwrap();
                compacted_from(lake.store().as_ref(), &meta, &FooterCache::default())
                    .await
                    .unwrap()
            };
            assert_eq!(from(small.clone()).await, from(large.clone()).await);
        }
    }
}
