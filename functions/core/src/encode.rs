//! Parquet encoding of lake tables: sorted rows, dictionary-encoded tags, zstd, statistics.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, SchemaRef};
use bytes::Bytes;
use damselfly_schemas::tables::TAG_COLUMNS;
use damselfly_schemas::{Table, Tags};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::batch::DlqRow;
use crate::rollup::Partial;

/// Rows per Parquet row group: large enough for object-storage reads, small enough to prune.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

/// zstd level: level 3 is zstd's default speed/ratio balance.
const ZSTD_LEVEL: i32 = 3;

/// Why a table could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Arrow rejected the columns (a schema/array mismatch: a bug).
    #[error("building the Arrow batch: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The Parquet writer failed.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A timestamp cannot be placed in a calendar hour.
    #[error("timestamp {0} ms is outside the representable calendar range")]
    TimestampOutOfRange(i64),
}

/// One sample of the `raw` table, borrowing from its message.
#[derive(Debug, Clone, Copy)]
pub struct RawRow<'a> {
    /// The VM's tags.
    pub tags: &'a Tags,
    /// Metric name.
    pub metric: &'a str,
    /// Device, "" for device-less metrics.
    pub device: &'a str,
    /// Sample time (ms).
    pub ts: i64,
    /// Sample value.
    pub value: f64,
}

/// A `rollup_1m` row's identity; its order is the table's sort order (vm, metric, device, window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey<'a> {
    vm: &'a str,
    metric: &'a str,
    device: &'a str,
    window_start: i64,
    tags: &'a Tags,
}

impl<'a> RollupKey<'a> {
    /// The key of one series' window.
    pub fn new(tags: &'a Tags, metric: &'a str, device: &'a str, window_start: i64) -> Self {
        Self {
            vm: &tags.vm,
            metric,
            device,
            window_start,
            tags,
        }
    }
}

/// Encodes `raw` rows, which the caller gives in table order: vm, metric, device, ts.
pub fn raw_parquet(rows: &[RawRow<'_>]) -> Result<Bytes, EncodeError> {
    debug_assert!(
        rows.windows(2).all(|w| {
            (w[0].tags.vm.as_str(), w[0].metric, w[0].device, w[0].ts)
                <= (w[1].tags.vm.as_str(), w[1].metric, w[1].device, w[1].ts)
        }),
        "raw rows not in table order"
    );
    let mut columns: Vec<ArrayRef> = vec![ts_array(rows.iter().map(|r| r.ts))];
    columns.extend(tag_arrays(rows.iter().map(|r| r.tags)));
    columns.push(str_array(rows.iter().map(|r| r.metric)));
    columns.push(str_array(rows.iter().map(|r| r.device)));
    columns.push(Arc::new(Float64Array::from_iter_values(
        rows.iter().map(|r| r.value),
    )));
    write(
        Table::Raw.schema(),
        columns,
        &["vm", "metric", "device", "ts"],
    )
}

/// Encodes `rollup_1m` rows from partials already in key order.
pub fn rollup_parquet<'a, I>(windows: I) -> Result<Bytes, EncodeError>
where
    I: IntoIterator<Item = (&'a RollupKey<'a>, &'a Partial)>,
    I::IntoIter: Clone,
{
    let batch = rollup_batch(windows)?;
    write(
        batch.schema(),
        batch.columns().to_vec(),
        &["vm", "metric", "device", "window_start"],
    )
}

/// The `rollup_1m` record batch of partials, in the order given: what [`rollup_parquet`] encodes.
pub fn rollup_batch<'a, I>(windows: I) -> Result<RecordBatch, EncodeError>
where
    I: IntoIterator<Item = (&'a RollupKey<'a>, &'a Partial)>,
    I::IntoIter: Clone,
{
    let it = windows.into_iter();
    let f64s = |f: fn(&Partial) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            it.clone().map(|(_, p)| f(p)),
        ))
    };
    let mut columns: Vec<ArrayRef> = vec![ts_array(it.clone().map(|(k, _)| k.window_start))];
    columns.extend(tag_arrays(it.clone().map(|(k, _)| k.tags)));
    columns.push(str_array(it.clone().map(|(k, _)| k.metric)));
    columns.push(str_array(it.clone().map(|(k, _)| k.device)));
    columns.push(Arc::new(Int64Array::from_iter_values(
        it.clone().map(|(_, p)| p.count),
    )));
    columns.push(f64s(|p| p.sum));
    columns.push(f64s(|p| p.min));
    columns.push(f64s(|p| p.max));
    columns.push(f64s(|p| p.first));
    columns.push(ts_array(it.clone().map(|(_, p)| p.first_ts)));
    columns.push(f64s(|p| p.last));
    columns.push(ts_array(it.clone().map(|(_, p)| p.last_ts)));
    Ok(RecordBatch::try_new(Table::Rollup1m.schema(), columns)?)
}

/// The partial-aggregate columns of a `rollup_*` record batch, read back row by row: the reverse
/// of [`rollup_parquet`].
#[derive(Debug, Clone, Copy)]
pub struct PartialColumns<'a> {
    count: &'a Int64Array,
    sum: &'a Float64Array,
    min: &'a Float64Array,
    max: &'a Float64Array,
    first: &'a Float64Array,
    first_ts: &'a TimestampMillisecondArray,
    last: &'a Float64Array,
    last_ts: &'a TimestampMillisecondArray,
}

impl<'a> PartialColumns<'a> {
    /// Finds the columns in `batch`; the error names a column that is missing or of another type.
    pub fn of(batch: &'a RecordBatch) -> Result<Self, String> {
        fn get<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("column {name} missing"))?
                .as_any()
                .downcast_ref::<T>()
                .ok_or_else(|| format!("column {name} has another type"))
        }
        Ok(Self {
            count: get(batch, "count")?,
            sum: get(batch, "sum")?,
            min: get(batch, "min")?,
            max: get(batch, "max")?,
            first: get(batch, "first")?,
            first_ts: get(batch, "first_ts")?,
            last: get(batch, "last")?,
            last_ts: get(batch, "last_ts")?,
        })
    }

    /// Row `i`'s partial.
    pub fn get(&self, i: usize) -> Partial {
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

/// Encodes dead-letter rows.
pub fn dlq_parquet(rows: &[&DlqRow]) -> Result<Bytes, EncodeError> {
    let columns: Vec<ArrayRef> = vec![
        ts_array(rows.iter().map(|r| r.received_at_ms)),
        str_array(rows.iter().map(|r| r.topic.as_str())),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.key.as_deref()),
        )),
        str_array(rows.iter().map(|r| r.reason.as_str())),
        str_array(rows.iter().map(|r| r.raw_base64.as_str())),
    ];
    write(
        Table::Dlq.schema(),
        columns,
        &["topic", "partition", "offset"],
    )
}

fn ts_array(it: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(it).with_timezone("UTC"))
}

fn str_array<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn tag_arrays<'a>(tags: impl Iterator<Item = &'a Tags> + Clone) -> Vec<ArrayRef> {
    TAG_COLUMNS
        .iter()
        .map(|col| {
            let pick = |t: &'a Tags| -> &'a str {
                match *col {
                    "ns" => &t.ns,
                    "mcis" => &t.mcis,
                    "vm" => &t.vm,
                    "csp" => &t.csp,
                    "region" => &t.region,
                    "os" => &t.os,
                    other => unreachable!("unknown tag column {other}"),
                }
            };
            str_array(tags.clone().map(pick))
        })
        .collect()
}

/// The writer settings every lake file uses.
pub fn writer_properties(
    schema: &SchemaRef,
    sorted_by: &[&str],
) -> Result<WriterProperties, EncodeError> {
    let sorting = sorted_by
        .iter()
        .map(|name| {
            Ok(SortingColumn {
                column_idx: schema.index_of(name)? as i32,
                descending: false,
                nulls_first: false,
            })
        })
        .collect::<Result<Vec<_>, EncodeError>>()?;
    let mut builder = WriterProperties::builder();
    for field in schema.fields() {
        let col = ColumnPath::from(field.name().as_str());
        match field.data_type() {
            // Sorted by series then time: deltas are small and regular.
            DataType::Timestamp(..) | DataType::Int64 => {
                builder = builder
                    .set_column_dictionary_enabled(col.clone(), false)
                    .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED);
            }
            // Measured values rarely repeat: a dictionary only costs (zstd does better on PLAIN).
            DataType::Float64 => builder = builder.set_column_dictionary_enabled(col, false),
            _ => {}
        }
    }
    Ok(builder
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(sorting))
        .set_created_by(format!("damselfly {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// Encodes a record batch of any lake table (e.g. the `alarms` rows) with the lake's writer settings.
pub fn batch_parquet(batch: &RecordBatch, sorted_by: &[&str]) -> Result<Bytes, EncodeError> {
    write(batch.schema(), batch.columns().to_vec(), sorted_by)
}

/// False-positive rate of the `vm` bloom filter of a batch file.
const VM_BLOOM_FPP: f64 = 0.01;

/// Adds a bloom filter on `vm`, sized for the VMs in `vms`. A batch file holds one Kafka
/// partition's VMs, which hashing spreads over the fleet, so its `vm` min/max spans almost every
/// VM; the filter is what tells a reader (DataFusion, DuckDB, Trino, Spark) a VM is not in it.
fn with_vm_bloom_filter(props: WriterProperties, vms: &StringArray) -> WriterProperties {
    // Runs of equal values: the distinct count when sorted by vm, an upper bound otherwise.
    let runs = 1
        + (1..vms.len())
            .filter(|&i| vms.value(i) != vms.value(i - 1))
            .count();
    let col = ColumnPath::from("vm");
    props
        .into_builder()
        .set_column_bloom_filter_enabled(col.clone(), true)
        .set_column_bloom_filter_fpp(col.clone(), VM_BLOOM_FPP)
        .set_column_bloom_filter_max_ndv(col, runs as u64)
        .build()
}

fn write(
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    sorted_by: &[&str],
) -> Result<Bytes, EncodeError> {
    let mut props = writer_properties(&schema, sorted_by)?;
    if let Ok(i) = schema.index_of("vm")
        && let Some(vms) = columns[i].as_any().downcast_ref::<StringArray>()
    {
        props = with_vm_bloom_filter(props, vms);
    }
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let mut buf = Vec::with_capacity(4096);
    let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Bytes::from(buf))
}
