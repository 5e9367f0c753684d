//! The bounded-memory merge behind compaction: sorted runs spilled to local temp files, then k-way merged.
//!
//! Rows come in a batch at a time (sources are decoded a few hundred to 64Ki rows at a time,
//! larger sources first streamed to a local temp file). While the rows held stay under half the
//! memory budget they are buffered with their sort keys in Arrow's row format; past it the
//! buffer is sorted (rollup partials of equal keys merged) and written as a *run*, an
//! uncompressed Parquet file with plain strings in a private temp directory. At the end an hour
//! that never spilled is sorted in memory and encoded straight into the file's bytes; otherwise
//! the runs are merged, a batch per run at a time, in passes of at most as many runs as half the
//! budget holds `2k + 2` batches of, and the last pass encodes the compacted file into a temp
//! file that is then read back whole for its PUT. Equal keys keep their input order (runs are
//! merged in the order they were written, ties going to the earlier run), and rollup partials of
//! equal keys are merged across runs (a run holds each key once, so a key spans at most one row
//! per run; pending rows are only written between keys).
//!
//! Every buffer this module holds is counted by a [`Meter`]: buffered rows and keys, the sort
//! order, the batch being written, the runs' writers, each run's current batch and keys and the
//! batches finished but not yet written, and sources fetched into memory. [`MergeStats::peak_bytes`]
//! is its high-water mark. Not counted: Parquet decoders' page buffers, the compacted file's writer
//! and the compacted file itself (held whole by the caller). Row positions are `usize` pairs
//! (batch, row): nothing here is limited to 2^32 rows.

use std::fs::File;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray as _, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use bytes::Bytes;
use damselfly_schemas::Table;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::ChunkReader;
use tokio::io::AsyncWriteExt as _;

use super::{
    CHUNK_ROWS, CompactError, DAY_MS, HOUR_MS, Window, column, compacted_properties, sort_key,
};
use crate::rollup::Partial;

/// Default memory budget of one partition's merge (`CompactConfig::merge_memory`).
pub const DEFAULT_MERGE_MEMORY: usize = 64 << 20;

/// The smallest budget a merge accepts; smaller settings are raised to it (below it the
/// writers' and readers' fixed buffers would outweigh the rows).
pub const MIN_MERGE_MEMORY: usize = 256 << 10;

/// Rows per batch read from a source before the first spill tells the real width of a row.
const ROW_BYTES_GUESS: usize = 128;

/// The fewest rows per run a merge pass should read at once; fewer runs are merged per pass instead.
const MIN_MERGE_ROWS: usize = 128;

/// The fewest rows per run a merge pass reads at once even when the budget asks for fewer.
const FLOOR_MERGE_ROWS: usize = 16;

/// Bytes currently held by a merge and their high-water mark, shared by its fetches and merger.
#[derive(Debug, Clone, Default)]
pub(super) struct Meter(Arc<(AtomicU64, AtomicU64)>);

impl Meter {
    /// Counts `bytes` as held until the returned guard is dropped.
    pub(super) fn hold(&self, bytes: usize) -> Held {
        let mut h = Held {
            meter: self.clone(),
            bytes: 0,
        };
        h.resize(bytes);
        h
    }

    /// The most bytes held at once so far.
    pub(super) fn peak(&self) -> u64 {
        self.0.1.load(Ordering::Relaxed)
    }
}

/// Bytes counted by a [`Meter`] while this lives.
#[derive(Debug)]
pub(super) struct Held {
    meter: Meter,
    bytes: u64,
}

impl Held {
    /// Changes the count to `bytes`.
    fn resize(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        let (now, peak) = &*self.meter.0;
        if bytes >= self.bytes {
            let total = now.fetch_add(bytes - self.bytes, Ordering::Relaxed) + bytes - self.bytes;
            peak.fetch_max(total, Ordering::Relaxed);
        } else {
            now.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.resize(0);
    }
}

/// What one merge did, for the report and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct MergeStats {
    /// Rows read from the sources.
    pub rows_in: u64,
    /// Rows written to the merged file.
    pub rows_out: u64,
    /// Decoded (Arrow) bytes of the rows read.
    pub bytes_in: u64,
    /// Sorted runs written to temp files (0: the hour was merged in memory).
    pub spilled_runs: u64,
    /// Merge passes over the runs (0 without runs; more than 1 when they outnumber the fan-in).
    pub passes: u64,
    /// Sources streamed to a temp file instead of fetched into memory.
    pub sources_on_disk: u64,
    /// The most bytes the merge held at once (see the module docs for what is counted).
    pub peak_bytes: u64,
}

/// A source's bytes: small ones in memory, larger ones in a temp file of the merge.
#[derive(Debug)]
pub(super) enum SourceData {
    /// The whole object and its count on the meter.
    Memory(
        Bytes,
        #[allow(dead_code, reason = "a guard: dropped with the bytes")] Held,
    ),
    /// A local copy, removed once read.
    File(PathBuf),
}

/// One fetched source, ready to be decoded.
#[derive(Debug)]
pub(super) struct Fetched {
    /// The object's key, for errors.
    pub key: String,
    /// Its bytes.
    pub data: SourceData,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        if let SourceData::File(p) = &self.data {
            // Best effort: the merge's temp directory is removed as a whole anyway.
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Rows buffered for the next run, with their sort keys.
struct Buffered {
    batch: RecordBatch,
    rows: Rows,
    _held: Held,
}

/// The partial-aggregate columns of a rollup batch, owned so they outlive the borrow.
struct Partials {
    count: Int64Array,
    sum: Float64Array,
    min: Float64Array,
    max: Float64Array,
    first: Float64Array,
    first_ts: arrow::array::TimestampMillisecondArray,
    last: Float64Array,
    last_ts: arrow::array::TimestampMillisecondArray,
}

impl Partials {
    fn of(batch: &RecordBatch) -> Result<Self, CompactError> {
        let f = |n: &str| -> Result<Float64Array, CompactError> {
            Ok(column(batch, n)?
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| wrong_type(n))?
                .clone())
        };
        let t = |n: &str| -> Result<arrow::array::TimestampMillisecondArray, CompactError> {
            Ok(column(batch, n)?
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| wrong_type(n))?
                .clone())
        };
        Ok(Self {
            count: column(batch, "count")?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong_type("count"))?
                .clone(),
            sum: f("sum")?,
            min: f("min")?,
            max: f("max")?,
            first: f("first")?,
            first_ts: t("first_ts")?,
            last: f("last")?,
            last_ts: t("last_ts")?,
        })
    }

    fn get(&self, i: usize) -> Partial {
        Partial {
            count: self.count.value(i),
            sum: self.sum.value(i),
            min: self.min.value(i),
            max: self.max.value(i),
            first: self.first.value(i),
            first_ts: self.first_ts.value(i),
            last: self.last.value(i),
            last_ts: self.last_ts.value(i),
        }
    }
}

fn wrong_type(name: &str) -> CompactError {
    CompactError::Source {
        key: "rollup partials".into(),
        why: format!("column {name} has another type"),
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> CompactError {
    move |e| CompactError::Spill { what, source: e }
}

/// Sorts, spills and merges one partition's rows within a memory budget.
pub(super) struct Merger {
    table: Table,
    window: Window,
    budget: usize,
    read_rows: usize,
    row_bytes: usize,
    schema: SchemaRef,
    run_schema: SchemaRef,
    key_columns: Vec<usize>,
    converter: RowConverter,
    run_converter: RowConverter,
    rollup: bool,
    buffer: Vec<Buffered>,
    buffered: usize,
    runs: Vec<PathBuf>,
    dir: tempfile::TempDir,
    meter: Meter,
    stats: MergeStats,
}

impl Merger {
    /// A merger writing `table` from rows of `schema`, holding at most about `budget` bytes.
    pub(super) fn new(
        table: Table,
        schema: SchemaRef,
        budget: usize,
        meter: Meter,
    ) -> Result<Self, CompactError> {
        let window = match table {
            Table::Rollup1h => Window::Hour,
            Table::Rollup1d => Window::Day,
            _ => Window::Keep,
        };
        let (names, _) = sort_key(table);
        // Runs hold strings as plain strings: a dictionary decoded from a run's plain pages
        // would take more memory than its values.
        let run_schema = Arc::new(Schema::new_with_metadata(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Dictionary(_, values) => {
                        f.as_ref().clone().with_data_type(values.as_ref().clone())
                    }
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        ));
        let mut key_columns = Vec::with_capacity(names.len());
        let mut fields = Vec::with_capacity(names.len());
        let mut run_fields = Vec::with_capacity(names.len());
        for name in names {
            let i = schema.index_of(name).map_err(|_| CompactError::Source {
                key: (*name).to_owned(),
                why: "column missing".into(),
            })?;
            key_columns.push(i);
            fields.push(SortField::new(schema.field(i).data_type().clone()));
            run_fields.push(SortField::new(run_schema.field(i).data_type().clone()));
        }
        let budget = budget.max(MIN_MERGE_MEMORY);
        let dir = tempfile::Builder::new()
            .prefix("damselfly-compact-")
            .tempdir()
            .map_err(io("creating the merge's temp directory"))?;
        Ok(Self {
            table,
            window,
            budget,
            read_rows: (budget / 16 / ROW_BYTES_GUESS).clamp(256, CHUNK_ROWS),
            row_bytes: ROW_BYTES_GUESS,
            key_columns,
            converter: RowConverter::new(fields)?,
            run_converter: RowConverter::new(run_fields)?,
            run_schema,
            rollup: matches!(table, Table::Rollup1m | Table::Rollup1h | Table::Rollup1d),
            schema,
            buffer: Vec::new(),
            buffered: 0,
            runs: Vec::new(),
            dir,
            meter,
            stats: MergeStats::default(),
        })
    }

    /// Where sources too big to fetch into memory are copied.
    pub(super) fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The largest source fetched whole into memory: the merge prefetches a few sources at once,
    /// and together they stay within an eighth of the budget.
    pub(super) fn small_source(&self, prefetch: usize) -> u64 {
        (self.budget / 8 / (prefetch + 1)) as u64
    }

    /// Decodes one source, a batch at a time, into the buffer (spilling as it fills).
    pub(super) fn ingest(&mut self, src: Fetched) -> Result<(), CompactError> {
        let key = src.key.clone();
        match &src.data {
            SourceData::Memory(bytes, _) => self.ingest_reader(&key, bytes.clone()),
            SourceData::File(path) => {
                self.stats.sources_on_disk += 1;
                let file = File::open(path).map_err(io("reading a source's local copy"))?;
                self.ingest_reader(&key, file)
            }
        }
    }

    fn ingest_reader<R: ChunkReader + 'static>(
        &mut self,
        key: &str,
        reader: R,
    ) -> Result<(), CompactError> {
        let bad = |e: &dyn std::fmt::Display| CompactError::Source {
            key: key.to_owned(),
            why: e.to_string(),
        };
        let options = ArrowReaderOptions::new().with_schema(self.schema.clone());
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(reader, options)
            .map_err(|e| bad(&e))?
            .with_batch_size(self.read_rows)
            .build()
            .map_err(|e| bad(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| bad(&e))?;
            let bytes = batch.get_array_memory_size();
            self.push_counted(batch, bytes)?;
        }
        Ok(())
    }

    /// Adds rows given in memory (for [`super::encode_compacted`]), a bounded slice at a time.
    pub(super) fn push(&mut self, batch: &RecordBatch) -> Result<(), CompactError> {
        let mut at = 0;
        while at < batch.num_rows() {
            let len = self.read_rows.min(batch.num_rows() - at);
            let slice = batch.slice(at, len);
            let bytes = slice
                .columns()
                .iter()
                .map(|c| {
                    c.to_data()
                        .get_slice_memory_size()
                        .unwrap_or_else(|_| c.get_array_memory_size())
                })
                .sum();
            self.push_counted(slice, bytes)?;
            at += len;
        }
        Ok(())
    }

    fn push_counted(&mut self, batch: RecordBatch, bytes: usize) -> Result<(), CompactError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.widen(batch)?;
        let keys: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = self.converter.convert_columns(&keys)?;
        let bytes = bytes + rows.size();
        self.stats.rows_in += batch.num_rows() as u64;
        self.stats.bytes_in += bytes as u64;
        if !self.buffer.is_empty() && self.buffered + bytes > self.budget / 2 {
            self.spill()?;
        }
        self.buffered += bytes;
        self.buffer.push(Buffered {
            batch,
            rows,
            _held: self.meter.hold(bytes),
        });
        Ok(())
    }

    /// Widens `window_start` to the hour or day (rollup_1h, rollup_1d), so it sorts and merges so.
    fn widen(&self, batch: RecordBatch) -> Result<RecordBatch, CompactError> {
        let len = match self.window {
            Window::Keep => return Ok(batch),
            Window::Hour => HOUR_MS,
            Window::Day => DAY_MS,
        };
        let i = self
            .schema
            .index_of("window_start")
            .map_err(|_| CompactError::Source {
                key: "window_start".into(),
                why: "column missing".into(),
            })?;
        let col = batch.column(i);
        let ws = col
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| wrong_type("window_start"))?;
        let widened = ws
            .unary::<_, TimestampMillisecondType>(|w| w.div_euclid(len) * len)
            .with_data_type(col.data_type().clone());
        let mut columns = batch.columns().to_vec();
        columns[i] = Arc::new(widened);
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }

    /// The buffered rows' positions in key order (ties in arrival order).
    fn sorted(&self) -> Vec<(usize, usize)> {
        let mut order: Vec<(usize, usize)> = self
            .buffer
            .iter()
            .enumerate()
            .flat_map(|(b, buf)| (0..buf.batch.num_rows()).map(move |r| (b, r)))
            .collect();
        order.sort_unstable_by(|&(ab, ar), &(bb, br)| {
            self.buffer[ab]
                .rows
                .row(ar)
                .cmp(&self.buffer[bb].rows.row(br))
                .then((ab, ar).cmp(&(bb, br)))
        });
        order
    }

    /// Writes the buffer, sorted and (rollups) merged per key, to `sink` in `out`'s schema.
    fn write_buffer(
        &self,
        out: &SchemaRef,
        sink: &mut dyn FnMut(RecordBatch) -> Result<(), CompactError>,
    ) -> Result<u64, CompactError> {
        let order = self.sorted();
        let _order_held = self
            .meter
            .hold(order.capacity() * size_of::<(usize, usize)>());
        let partials = if self.rollup {
            Some(
                self.buffer
                    .iter()
                    .map(|b| Partials::of(&b.batch))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        } else {
            None
        };
        let batches: Vec<&RecordBatch> = self.buffer.iter().map(|b| &b.batch).collect();
        let same = |a: (usize, usize), b: (usize, usize)| {
            self.buffer[a.0].rows.row(a.1) == self.buffer[b.0].rows.row(b.1)
        };
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(self.read_rows);
        let mut merged: Vec<Partial> = Vec::new();
        let mut written = 0u64;
        let mut i = 0;
        while i < order.len() {
            let head = order[i];
            let mut j = i + 1;
            if let Some(p) = &partials {
                let mut acc = p[head.0].get(head.1);
                while j < order.len() && same(order[j], head) {
                    acc.merge(&p[order[j].0].get(order[j].1));
                    j += 1;
                }
                merged.push(acc);
            }
            picks.push(head);
            if picks.len() >= self.read_rows || j == order.len() {
                let chunk = self.assemble(
                    &batches,
                    &picks,
                    partials.as_ref().map(|_| merged.as_slice()),
                    out,
                )?;
                written += chunk.num_rows() as u64;
                let _held = self.meter.hold(chunk.get_array_memory_size());
                sink(chunk)?;
                picks.clear();
                merged.clear();
            }
            i = j;
        }
        Ok(written)
    }

    /// One batch of `out`'s schema from rows picked across `batches`, with merged partials.
    fn assemble(
        &self,
        batches: &[&RecordBatch],
        picks: &[(usize, usize)],
        partials: Option<&[Partial]>,
        out: &SchemaRef,
    ) -> Result<RecordBatch, CompactError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(out.fields().len());
        for field in out.fields() {
            let name = field.name().as_str();
            let f64s = |p: &[Partial], get: fn(&Partial) -> f64| -> ArrayRef {
                Arc::new(Float64Array::from_iter_values(p.iter().map(get)))
            };
            let ts = |p: &[Partial], get: fn(&Partial) -> i64| -> ArrayRef {
                Arc::new(
                    arrow::array::TimestampMillisecondArray::from_iter_values(p.iter().map(get))
                        .with_data_type(field.data_type().clone()),
                )
            };
            let col: ArrayRef = match (name, partials) {
                ("count", Some(p)) => {
                    Arc::new(Int64Array::from_iter_values(p.iter().map(|p| p.count)))
                }
                ("sum", Some(p)) => f64s(p, |p| p.sum),
                ("min", Some(p)) => f64s(p, |p| p.min),
                ("max", Some(p)) => f64s(p, |p| p.max),
                ("first", Some(p)) => f64s(p, |p| p.first),
                ("last", Some(p)) => f64s(p, |p| p.last),
                ("first_ts", Some(p)) => ts(p, |p| p.first_ts),
                ("last_ts", Some(p)) => ts(p, |p| p.last_ts),
                _ => {
                    let i = self
                        .schema
                        .index_of(name)
                        .map_err(|_| CompactError::Source {
                            key: name.to_owned(),
                            why: "column missing".into(),
                        })?;
                    let arrays: Vec<&dyn Array> =
                        batches.iter().map(|b| b.column(i).as_ref()).collect();
                    let taken = arrow::compute::interleave(&arrays, picks)?;
                    if taken.data_type() == field.data_type() {
                        taken
                    } else {
                        arrow::compute::cast(&taken, field.data_type())?
                    }
                }
            };
            columns.push(col);
        }
        Ok(RecordBatch::try_new(out.clone(), columns)?)
    }

    /// Writer settings of runs: uncompressed (they live seconds), small row groups and pages.
    fn run_properties(&self, rows: usize) -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_max_row_group_row_count(Some(rows))
            .set_data_page_row_count_limit(rows)
            .set_write_batch_size(rows.min(1024))
            .build()
    }

    /// Sorts the buffer into a run in the temp directory and empties it.
    fn spill(&mut self) -> Result<(), CompactError> {
        let path = self
            .dir
            .path()
            .join(format!("run-{:06}.parquet", self.stats.spilled_runs));
        let rows: usize = self.buffer.iter().map(|b| b.batch.num_rows()).sum();
        let key_bytes: usize = self.buffer.iter().map(|b| b.rows.size()).sum();
        let file = File::create(&path).map_err(io("creating a sorted run"))?;
        let props = self.run_properties(self.read_rows);
        let mut writer = ArrowWriter::try_new(file, self.run_schema.clone(), Some(props))?;
        let mut writer_held = self.meter.hold(0);
        let schema = self.run_schema.clone();
        // The widest row written tells how many rows of each run a merge can hold at once.
        let mut widest = 0;
        self.write_buffer(&schema, &mut |chunk| {
            widest = widest.max(
                chunk
                    .get_array_memory_size()
                    .div_ceil(chunk.num_rows().max(1)),
            );
            writer.write(&chunk)?;
            writer_held.resize(writer.memory_size());
            Ok(())
        })?;
        self.row_bytes = self.row_bytes.max(widest + key_bytes.div_ceil(rows.max(1)));
        writer.close()?;
        drop(writer_held);
        tracing::debug!(
            table = self.table.name(),
            run = self.runs.len(),
            rows,
            bytes = self.buffered,
            "sorted run spilled"
        );
        self.runs.push(path);
        self.stats.spilled_runs += 1;
        self.buffer.clear();
        self.buffered = 0;
        Ok(())
    }

    /// Rows read from each run at once when merging `k` runs: a merge holds at most about
    /// `2k + 2` such batches (each run's current one, the ones finished before the pending
    /// rows are written, and the rows being written), in half the budget.
    fn rows_per_run(&self, k: usize) -> usize {
        self.budget / 2 / ((2 * k + 2) * self.row_bytes)
    }

    /// How many runs one pass merges: as many as leave [`MIN_MERGE_ROWS`] per run (at least 2).
    fn fan_in(&self) -> usize {
        let mut k = 2;
        while self.rows_per_run(k + 1) >= MIN_MERGE_ROWS {
            k += 1;
        }
        k
    }

    /// Merges and encodes everything pushed: the compacted file, whole, and what it took.
    pub(super) fn finish(
        mut self,
        compacted_from: Option<String>,
    ) -> Result<(Bytes, MergeStats), CompactError> {
        let out = self.table.schema();
        let (names, declared) = sort_key(self.table);
        let props = compacted_properties(self.table, &out, &names[..declared], compacted_from)?;
        let bytes = if self.runs.is_empty() {
            // Everything fit: sort in memory and encode straight into the file's bytes.
            let mut buf = Vec::new();
            let mut writer = ArrowWriter::try_new(&mut buf, out.clone(), Some(props))?;
            self.stats.rows_out = self.write_buffer(&out, &mut |chunk| {
                writer.write(&chunk)?;
                Ok(())
            })?;
            writer.close()?;
            self.buffer.clear();
            Bytes::from(buf)
        } else {
            if !self.buffer.is_empty() {
                self.spill()?;
            }
            let fan_in = self.fan_in();
            while self.runs.len() > fan_in {
                self.stats.passes += 1;
                let runs = std::mem::take(&mut self.runs);
                for (g, group) in runs.chunks(fan_in).enumerate() {
                    if let [one] = group {
                        self.runs.push(one.clone());
                        continue;
                    }
                    let path = self
                        .dir
                        .path()
                        .join(format!("pass-{:03}-{g:06}.parquet", self.stats.passes));
                    let file = File::create(&path).map_err(io("creating a merged run"))?;
                    let props = self.run_properties(self.read_rows);
                    let mut writer =
                        ArrowWriter::try_new(file, self.run_schema.clone(), Some(props))?;
                    let mut writer_held = self.meter.hold(0);
                    let schema = self.run_schema.clone();
                    self.merge_runs(group, &schema, &mut |chunk| {
                        writer.write(&chunk)?;
                        writer_held.resize(writer.memory_size());
                        Ok(())
                    })?;
                    writer.close()?;
                    for p in group {
                        let _ = std::fs::remove_file(p);
                    }
                    self.runs.push(path);
                }
            }
            self.stats.passes += 1;
            // The compacted file goes to a temp file first, so the merge's buffers are freed
            // before the file is read back whole for its single conditional PUT.
            let path = self.dir.path().join("compacted.parquet");
            let file = File::create(&path).map_err(io("creating the compacted file"))?;
            let mut writer = ArrowWriter::try_new(file, out.clone(), Some(props))?;
            let runs = self.runs.clone();
            self.stats.rows_out = self.merge_runs(&runs, &out, &mut |chunk| {
                writer.write(&chunk)?;
                Ok(())
            })?;
            writer.close()?;
            Bytes::from(std::fs::read(&path).map_err(io("reading the compacted file back"))?)
        };
        self.stats.peak_bytes = self.meter.peak();
        Ok((bytes, self.stats))
    }

    /// K-way merges sorted runs into `sink` in `out`'s schema; returns the rows written.
    fn merge_runs(
        &self,
        runs: &[PathBuf],
        out: &SchemaRef,
        sink: &mut dyn FnMut(RecordBatch) -> Result<(), CompactError>,
    ) -> Result<u64, CompactError> {
        let k = runs.len();
        let rows_per_run = self.rows_per_run(k).max(FLOOR_MERGE_ROWS);
        let mut cursors = Vec::with_capacity(k);
        for path in runs {
            cursors.push(Cursor::open(path, &self.run_schema, rows_per_run)?);
        }
        // Batches the pending output rows point into: each cursor's current one and the ones
        // it finished since the last flush.
        let mut slots: Vec<(RecordBatch, Held)> = Vec::new();
        for c in &mut cursors {
            c.advance(self, &mut slots)?;
        }
        let mut heap: Vec<usize> = (0..k).filter(|&r| cursors[r].live()).collect();
        let less = |cursors: &[Cursor], a: usize, b: usize| match cursors[a]
            .key()
            .cmp(&cursors[b].key())
        {
            std::cmp::Ordering::Equal => a < b,
            o => o.is_lt(),
        };
        for i in (0..heap.len() / 2).rev() {
            sift_down(&mut heap, i, |a, b| less(&cursors, a, b));
        }
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let mut merged: Vec<Partial> = Vec::new();
        let mut last_key: Option<OwnedRow> = None;
        let mut popped = 0usize;
        let mut retired = false;
        let mut written = 0u64;
        let mut flush = |picks: &mut Vec<(usize, usize)>,
                         merged: &mut Vec<Partial>,
                         slots: &mut Vec<(RecordBatch, Held)>,
                         cursors: &mut [Cursor]|
         -> Result<(), CompactError> {
            if !picks.is_empty() {
                let refs: Vec<&RecordBatch> = slots.iter().map(|(b, _)| b).collect();
                let chunk =
                    self.assemble(&refs, picks, self.rollup.then_some(merged.as_slice()), out)?;
                written += chunk.num_rows() as u64;
                let _held = self.meter.hold(chunk.get_array_memory_size());
                sink(chunk)?;
                picks.clear();
                merged.clear();
            }
            // Keep only the cursors' current batches: the finished ones are written.
            let mut old: Vec<Option<(RecordBatch, Held)>> = slots.drain(..).map(Some).collect();
            for c in cursors.iter_mut().filter(|c| c.live()) {
                let kept = old[c.slot]
                    .take()
                    .ok_or_else(|| CompactError::Task("two merge cursors share a batch".into()))?;
                slots.push(kept);
                c.slot = slots.len() - 1;
            }
            Ok(())
        };
        while let Some(&top) = heap.first() {
            let same_key = self.rollup
                && last_key
                    .as_ref()
                    .is_some_and(|k| k.row() == cursors[top].key());
            if same_key {
                let p = cursors[top].partial()?;
                merged.last_mut().expect("a group has a partial").merge(&p);
            } else {
                // Flush only between keys, so a group's partials are complete when written.
                if popped >= rows_per_run || retired {
                    flush(&mut picks, &mut merged, &mut slots, &mut cursors)?;
                    popped = 0;
                    retired = false;
                }
                picks.push((cursors[top].slot, cursors[top].pos));
                if self.rollup {
                    merged.push(cursors[top].partial()?);
                    last_key = Some(cursors[top].key().owned());
                }
            }
            popped += 1;
            cursors[top].pos += 1;
            if cursors[top].pos == cursors[top].len {
                // The finished batch is held until the pending rows are written: soon.
                cursors[top].advance(self, &mut slots)?;
                retired = true;
            }
            if !cursors[top].live() {
                heap.swap_remove(0);
            }
            if !heap.is_empty() {
                sift_down(&mut heap, 0, |a, b| less(&cursors, a, b));
            }
        }
        flush(&mut picks, &mut merged, &mut slots, &mut cursors)?;
        Ok(written)
    }
}

/// A sorted run being read a batch at a time.
struct Cursor {
    reader: ParquetRecordBatchReader,
    rows: Option<(Rows, Held)>,
    partials: Option<Partials>,
    slot: usize,
    pos: usize,
    len: usize,
}

impl Cursor {
    fn open(path: &FsPath, schema: &SchemaRef, rows: usize) -> Result<Self, CompactError> {
        let file = File::open(path).map_err(io("reading a sorted run"))?;
        let options = ArrowReaderOptions::new().with_schema(schema.clone());
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?
            .with_batch_size(rows)
            .build()?;
        Ok(Self {
            reader,
            rows: None,
            partials: None,
            slot: 0,
            pos: 0,
            len: 0,
        })
    }

    /// Whether a row is under the cursor.
    fn live(&self) -> bool {
        self.pos < self.len
    }

    /// The current row's key.
    fn key(&self) -> arrow::row::Row<'_> {
        self.rows
            .as_ref()
            .expect("a live cursor has rows")
            .0
            .row(self.pos)
    }

    /// The current row's partial (rollups).
    fn partial(&self) -> Result<Partial, CompactError> {
        self.partials
            .as_ref()
            .map(|p| p.get(self.pos))
            .ok_or_else(|| wrong_type("count"))
    }

    /// Reads the next batch into a new slot; the cursor is no longer live at the run's end.
    fn advance(
        &mut self,
        m: &Merger,
        slots: &mut Vec<(RecordBatch, Held)>,
    ) -> Result<(), CompactError> {
        self.rows = None;
        self.pos = 0;
        self.len = 0;
        let Some(batch) = self.reader.next().transpose()? else {
            return Ok(());
        };
        let keys: Vec<ArrayRef> = m
            .key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = m.run_converter.convert_columns(&keys)?;
        self.partials = if m.rollup {
            Some(Partials::of(&batch)?)
        } else {
            None
        };
        self.len = batch.num_rows();
        self.rows = Some((rows, m.meter.hold(0)));
        if let Some((r, h)) = &mut self.rows {
            h.resize(r.size());
        }
        let held = m.meter.hold(batch.get_array_memory_size());
        slots.push((batch, held));
        self.slot = slots.len() - 1;
        Ok(())
    }
}

/// Restores the heap property below `i` of a min-heap ordered by `less`.
fn sift_down(heap: &mut [usize], mut i: usize, less: impl Fn(usize, usize) -> bool) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut min = i;
        if l < heap.len() && less(heap[l], heap[min]) {
            min = l;
        }
        if r < heap.len() && less(heap[r], heap[min]) {
            min = r;
        }
        if min == i {
            return;
        }
        heap.swap(i, min);
        i = min;
    }
}

/// Runs CPU-bound merge work on tokio's blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CompactError> + Send + 'static,
) -> Result<T, CompactError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CompactError::Task(e.to_string()))?
}

/// Fetches a source: into memory when small, else streamed chunk by chunk into `dir`.
async fn fetch(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    index: usize,
    small: u64,
    dir: &FsPath,
    meter: &Meter,
) -> Result<Fetched, CompactError> {
    let key = meta.location.to_string();
    if meta.size <= small {
        let held = meter.hold(meta.size as usize);
        let bytes = store.get(&meta.location).await?.bytes().await?;
        return Ok(Fetched {
            key,
            data: SourceData::Memory(bytes, held),
        });
    }
    let path = dir.join(format!("source-{index:06}.parquet"));
    // Owned from here on, so the copy is removed if the download fails.
    let fetched = Fetched {
        key,
        data: SourceData::File(path.clone()),
    };
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(io("copying a source to local disk"))?;
    let mut stream = store.get(&meta.location).await?.into_stream();
    while let Some(chunk) = stream.try_next().await? {
        file.write_all(&chunk)
            .await
            .map_err(io("copying a source to local disk"))?;
    }
    file.flush()
        .await
        .map_err(io("copying a source to local disk"))?;
    Ok(fetched)
}

/// Merges `sources` (rows of `source_table`) into one file of `table` within `budget` bytes:
/// fetches and decodes on the async side a few sources at a time, sorts, spills and encodes
/// on the blocking pool. Returns the file, whole, and what the merge took.
pub(super) async fn merge_objects(
    store: &dyn ObjectStore,
    source_table: Table,
    table: Table,
    sources: &[ObjectMeta],
    budget: usize,
    compacted_from: Option<String>,
) -> Result<(Bytes, MergeStats), CompactError> {
    let meter = Meter::default();
    let schema = super::read_schema(source_table);
    let m = meter.clone();
    let mut merger = blocking(move || Merger::new(table, schema, budget, m)).await?;
    let dir = merger.dir();
    let small = merger.small_source(super::CONCURRENCY);
    let mut fetched = futures::stream::iter(sources.iter().enumerate())
        .map(|(i, o)| fetch(store, o, i, small, &dir, &meter))
        .buffered(super::CONCURRENCY);
    loop {
        let src = match fetched.try_next().await {
            Ok(Some(src)) => src,
            Ok(None) => break,
            Err(e) => {
                // Removing the temp directory is file-system work too: not on this thread.
                drop(fetched);
                let _ = blocking(move || {
                    drop(merger);
                    Ok(())
                })
                .await;
                return Err(e);
            }
        };
        merger = blocking(move || merger.ingest(src).map(|()| merger)).await?;
    }
    drop(fetched);
    blocking(move || merger.finish(compacted_from)).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{StringArray, TimestampMillisecondArray};
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use object_store::path::Path;

    use super::*;

    /// `n` rollup_1m rows of `vms` VMs over `minutes` minutes starting at row `from`; row `i`'s
    /// partial is one sample of value `i`.
    fn rollup_rows(from: usize, n: usize, vms: usize, minutes: usize) -> RecordBatch {
        let schema = Table::Rollup1m.schema();
        let ids: Vec<usize> = (from..from + n).collect();
        let s = |f: &dyn Fn(usize) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(ids.iter().map(|&i| f(i))))
        };
        let ts = |f: &dyn Fn(usize) -> i64, field: &str| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from_iter_values(ids.iter().map(|&i| f(i)))
                    .with_data_type(schema.field_with_name(field).unwrap().data_type().clone()),
            )
        };
        let window = |i: usize| ((i / vms) % minutes) as i64 * 60_000;
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "window_start" => ts(&window, "window_start"),
                "vm" => s(&|i| format!("vm-{:04}", i % vms)),
                "metric" => s(&|_| "cpu".into()),
                "device" => s(&|_| String::new()),
                "count" => Arc::new(Int64Array::from_iter_values(ids.iter().map(|_| 1))),
                "sum" | "min" | "max" | "first" | "last" => Arc::new(
                    Float64Array::from_iter_values(ids.iter().map(|&i| i as f64)),
                ),
                "first_ts" | "last_ts" => ts(&|i| window(i) + (i % 60) as i64, f.name()),
                _ => s(&|_| "t".into()),
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// Decodes a merged file's batches.
    fn read(bytes: Bytes) -> Vec<RecordBatch> {
        ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// (vm, window) -> (count, sum, min, max) of a rollup file's rows; asserts one row per key.
    fn by_key(batches: &[RecordBatch]) -> BTreeMap<(String, i64), (i64, f64, f64, f64)> {
        let mut out = BTreeMap::new();
        let mut previous = None;
        for b in batches {
            let vm = b.column_by_name("vm").unwrap().as_string::<i32>();
            let w = b
                .column_by_name("window_start")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>();
            let p = Partials::of(b).unwrap();
            for i in 0..b.num_rows() {
                let key = (vm.value(i).to_owned(), w.value(i));
                assert!(previous.as_ref() < Some(&key), "{key:?} after {previous:?}");
                let q = p.get(i);
                out.insert(key.clone(), (q.count, q.sum, q.min, q.max));
                previous = Some(key);
            }
        }
        out
    }

    #[test]
    fn rollup_partials_merge_across_runs_and_passes_in_the_smallest_budget() {
        let (vms, minutes, per_batch, batches) = (50, 30, 500, 60);
        let mut m = Merger::new(
            Table::Rollup1m,
            Table::Rollup1m.schema(),
            MIN_MERGE_MEMORY,
            Meter::default(),
        )
        .unwrap();
        let mut want: BTreeMap<(String, i64), (i64, f64, f64, f64)> = BTreeMap::new();
        for b in 0..batches {
            let batch = rollup_rows(b * per_batch, per_batch, vms, minutes);
            for i in b * per_batch..(b + 1) * per_batch {
                let key = (
                    format!("vm-{:04}", i % vms),
                    ((i / vms) % minutes) as i64 * 60_000,
                );
                let e = want.entry(key).or_insert((0, 0.0, f64::MAX, f64::MIN));
                e.0 += 1;
                e.1 += i as f64;
                e.2 = e.2.min(i as f64);
                e.3 = e.3.max(i as f64);
            }
            m.push(&batch).unwrap();
        }
        let (bytes, stats) = m.finish(None).unwrap();
        let got = by_key(&read(bytes));
        assert_eq!(got, want);
        assert_eq!(stats.rows_in, (per_batch * batches) as u64);
        assert_eq!(stats.rows_out, (vms * minutes) as u64);
        assert!(stats.spilled_runs > 2, "{stats:?}");
        assert!(
            stats.passes > 1,
            "more runs than one pass merges: {stats:?}"
        );
        assert!(stats.peak_bytes <= MIN_MERGE_MEMORY as u64, "{stats:?}");
    }

    #[test]
    fn hourly_windows_widen_before_sorting_and_merging() {
        let mut m = Merger::new(
            Table::Rollup1h,
            Table::Rollup1m.schema(),
            MIN_MERGE_MEMORY,
            Meter::default(),
        )
        .unwrap();
        // 120 minutes of 10 VMs: two hours.
        for b in 0..40 {
            m.push(&rollup_rows(b * 300, 300, 10, 120)).unwrap();
        }
        let (bytes, stats) = m.finish(None).unwrap();
        let got = by_key(&read(bytes));
        assert!(stats.spilled_runs > 1, "{stats:?}");
        assert_eq!(got.len(), 10 * 2, "one row per VM and hour");
        assert_eq!(got.values().map(|v| v.0).sum::<i64>(), 40 * 300);
        assert!(got.keys().all(|(_, w)| w % HOUR_MS == 0));
    }

    #[test]
    fn equal_raw_keys_keep_their_input_order_through_runs() {
        let schema = Table::Raw.schema();
        let mut m = Merger::new(
            Table::Raw,
            schema.clone(),
            MIN_MERGE_MEMORY,
            Meter::default(),
        )
        .unwrap();
        let (batches, per_batch) = (40, 400);
        for b in 0..batches {
            let ids: Vec<usize> = (b * per_batch..(b + 1) * per_batch).collect();
            let columns: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|f| -> ArrayRef {
                    match f.name().as_str() {
                        // 16 keys only: each repeats 1,000 times across every run.
                        "ts" => Arc::new(
                            TimestampMillisecondArray::from_iter_values(
                                ids.iter().map(|&i| (i % 4) as i64),
                            )
                            .with_data_type(f.data_type().clone()),
                        ),
                        "vm" => Arc::new(StringArray::from_iter_values(
                            ids.iter()
                                .map(|&i| format!("vm-{}", i % 4 / 2 + i % 8 / 4 * 2)),
                        )),
                        "value" => Arc::new(Float64Array::from_iter_values(
                            ids.iter().map(|&i| i as f64),
                        )),
                        _ => Arc::new(StringArray::from_iter_values(ids.iter().map(|_| "x"))),
                    }
                })
                .collect();
            m.push(&RecordBatch::try_new(schema.clone(), columns).unwrap())
                .unwrap();
        }
        let (bytes, stats) = m.finish(None).unwrap();
        assert!(stats.spilled_runs > 1, "{stats:?}");
        assert!(stats.peak_bytes <= MIN_MERGE_MEMORY as u64, "{stats:?}");
        let mut seen: BTreeMap<(String, i64), f64> = BTreeMap::new();
        let mut n = 0;
        for b in read(bytes) {
            let vm = b.column_by_name("vm").unwrap().as_string::<i32>();
            let ts = b
                .column_by_name("ts")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>();
            let v = b
                .column_by_name("value")
                .unwrap()
                .as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                let key = (vm.value(i).to_owned(), ts.value(i));
                if let Some(last) = seen.get(&key) {
                    assert!(*last < v.value(i), "{key:?}: input order lost");
                }
                seen.insert(key, v.value(i));
                n += 1;
            }
        }
        assert_eq!(n, batches * per_batch);
    }

    #[tokio::test]
    async fn objects_are_fetched_small_into_memory_and_large_to_disk() {
        let store = InMemory::new();
        let mut metas = Vec::new();
        for (i, rows) in [5, 3_000, 5, 4_000].into_iter().enumerate() {
            let batch = rollup_rows(i * 10_000, rows, 20, 60);
            let (bytes, _) =
                super::super::encode_compacted(Table::Rollup1m, vec![batch], None).unwrap();
            let key = Path::from(format!("rollup_1m/dt=2025-11-21/hour=09/f{i}.parquet"));
            store.put(&key, PutPayload::from(bytes)).await.unwrap();
            metas.push(store.head(&key).await.unwrap());
        }
        let budget = 2 * MIN_MERGE_MEMORY;
        let small = (budget / 8 / (super::super::CONCURRENCY + 1)) as u64;
        let sizes: Vec<u64> = metas.iter().map(|m| m.size).collect();
        assert!(
            sizes.iter().filter(|&&s| s <= small).count() == 2,
            "{sizes:?} vs {small}"
        );
        let (bytes, stats) = merge_objects(
            &store,
            Table::Rollup1m,
            Table::Rollup1m,
            &metas,
            budget,
            Some("[\"a\"]".into()),
        )
        .await
        .unwrap();
        // Each file is merged already: 5 + 1,200 + 5 + 1,200 rows (20 VMs x 60 minutes).
        assert_eq!(stats.rows_in, 2_410);
        assert_eq!(stats.sources_on_disk, 2, "{stats:?}");
        assert!(stats.peak_bytes <= budget as u64, "{stats:?}");
        let got = by_key(&read(bytes));
        assert_eq!(got.values().map(|v| v.0).sum::<i64>(), 7_010);
    }
}
