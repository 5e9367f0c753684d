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
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::arrow::{ArrowSchemaConverter, add_encoded_arrow_schema_to_metadata};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::batch::DlqRow;
use crate::dict_column::{self, DictColumn};
use crate::rollup::Partial;

/// Rows per Parquet row group: large enough for object-storage reads, small enough to prune.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

/// zstd level of the files written here: each batch's own files (and the alarms'), which
/// compaction rewrites at its own, higher levels once their hour closes. Level 1 is zstd's fastest
/// standard level: these files are written on the ingest path and live for an hour or so.
const ZSTD_LEVEL: i32 = 1;

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
    write(
        Table::Raw.schema(),
        raw_columns(rows),
        &["vm", "metric", "device", "ts"],
    )
}

/// The `raw` table's columns of `rows`, strings as dictionary columns.
fn raw_columns(rows: &[RawRow<'_>]) -> Vec<Column> {
    let mut columns: Vec<Column> = vec![ts_array(rows.iter().map(|r| r.ts)).into()];
    columns.extend(tag_columns(rows.iter().map(|r| r.tags)));
    columns.push(DictColumn::from_strs(rows.iter().map(|r| r.metric)).into());
    columns.push(DictColumn::from_strs(rows.iter().map(|r| r.device)).into());
    columns.push(Column::Arrow(Arc::new(Float64Array::from_iter_values(
        rows.iter().map(|r| r.value),
    ))));
    columns
}

/// Encodes `rollup_1m` rows from partials already in key order.
pub fn rollup_parquet<'a, I>(windows: I) -> Result<Bytes, EncodeError>
where
    I: IntoIterator<Item = (&'a RollupKey<'a>, &'a Partial)>,
    I::IntoIter: Clone,
{
    let it = windows.into_iter();
    let mut columns: Vec<Column> = vec![ts_array(it.clone().map(|(k, _)| k.window_start)).into()];
    columns.extend(tag_columns(it.clone().map(|(k, _)| k.tags)));
    columns.push(DictColumn::from_strs(it.clone().map(|(k, _)| k.metric)).into());
    columns.push(DictColumn::from_strs(it.clone().map(|(k, _)| k.device)).into());
    columns.extend(
        partial_arrays(it.map(|(_, p)| p))
            .into_iter()
            .map(Column::Arrow),
    );
    write(
        Table::Rollup1m.schema(),
        columns,
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
    let mut columns: Vec<ArrayRef> = vec![ts_array(it.clone().map(|(k, _)| k.window_start))];
    columns.extend(tag_arrays(it.clone().map(|(k, _)| k.tags)));
    columns.push(str_array(it.clone().map(|(k, _)| k.metric)));
    columns.push(str_array(it.clone().map(|(k, _)| k.device)));
    columns.extend(partial_arrays(it.map(|(_, p)| p)));
    Ok(RecordBatch::try_new(Table::Rollup1m.schema(), columns)?)
}

/// The partial-aggregate columns of `rollup_*` rows, from `count` to `last_ts`.
fn partial_arrays<'a>(partials: impl Iterator<Item = &'a Partial> + Clone) -> Vec<ArrayRef> {
    let f64s = |f: fn(&Partial) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(partials.clone().map(f)))
    };
    vec![
        Arc::new(Int64Array::from_iter_values(
            partials.clone().map(|p| p.count),
        )),
        f64s(|p| p.sum),
        f64s(|p| p.min),
        f64s(|p| p.max),
        f64s(|p| p.first),
        ts_array(partials.clone().map(|p| p.first_ts)),
        f64s(|p| p.last),
        ts_array(partials.map(|p| p.last_ts)),
    ]
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
        columns.into_iter().map(Column::Arrow).collect(),
        &["topic", "partition", "offset"],
    )
}

fn ts_array(it: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(it).with_timezone("UTC"))
}

fn str_array<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

/// The reader of tag column `col`, looked up once per column rather than matched per row.
fn tag(col: &str) -> fn(&Tags) -> &str {
    match col {
        "ns" => |t| &t.ns,
        "mcis" => |t| &t.mcis,
        "vm" => |t| &t.vm,
        "csp" => |t| &t.csp,
        "region" => |t| &t.region,
        "os" => |t| &t.os,
        other => unreachable!("unknown tag column {other}"),
    }
}

fn tag_arrays<'a>(tags: impl Iterator<Item = &'a Tags> + Clone) -> Vec<ArrayRef> {
    TAG_COLUMNS
        .iter()
        .map(|col| str_array(tags.clone().map(tag(col))))
        .collect()
}

fn tag_columns<'a>(tags: impl Iterator<Item = &'a Tags> + Clone) -> Vec<Column> {
    TAG_COLUMNS
        .iter()
        .map(|col| DictColumn::from_strs(tags.clone().map(tag(col))).into())
        .collect()
}

/// One column of a file being written: an Arrow array for parquet's Arrow writer, or a string
/// column already split into dictionary and keys (see [`dict_column`]).
enum Column {
    Arrow(ArrayRef),
    Dict(DictColumn),
}

impl From<ArrayRef> for Column {
    fn from(a: ArrayRef) -> Self {
        Self::Arrow(a)
    }
}

impl From<DictColumn> for Column {
    fn from(d: DictColumn) -> Self {
        Self::Dict(d)
    }
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Self::Arrow(a) => a.len(),
            Self::Dict(d) => d.len(),
        }
    }
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
    let columns = batch.columns().iter().cloned().map(Column::Arrow).collect();
    write(batch.schema(), columns, sorted_by)
}

/// False-positive rate of the `vm` bloom filter of a batch file.
const VM_BLOOM_FPP: f64 = 0.01;

/// Adds a bloom filter on `vm`, sized for the VMs in `vms`. A batch file holds one Kafka
/// partition's VMs, which hashing spreads over the fleet, so its `vm` min/max spans almost every
/// VM; the filter is what tells a reader (DataFusion, DuckDB, Trino, Spark) a VM is not in it.
fn with_vm_bloom_filter(props: WriterProperties, vms: &Column) -> WriterProperties {
    let distinct = match vms {
        // Runs of equal values: the distinct count when sorted by vm, an upper bound otherwise.
        Column::Arrow(a) => match a.as_any().downcast_ref::<StringArray>() {
            Some(vms) => {
                1 + (1..vms.len())
                    .filter(|&i| vms.value(i) != vms.value(i - 1))
                    .count()
            }
            None => return props,
        },
        // Sized again per row group from the values it holds.
        Column::Dict(d) => d.values().len(),
    };
    let col = ColumnPath::from("vm");
    props
        .into_builder()
        .set_column_bloom_filter_enabled(col.clone(), true)
        .set_column_bloom_filter_fpp(col.clone(), VM_BLOOM_FPP)
        .set_column_bloom_filter_max_ndv(col, distinct as u64)
        .build()
}

/// Writes `columns` (in `schema`'s order) as one Parquet file, in row groups of at most
/// [`ROW_GROUP_ROWS`], with the lake's writer settings: what `ArrowWriter` writes, with the
/// dictionary string columns encoded by [`dict_column`].
fn write(
    schema: SchemaRef,
    columns: Vec<Column>,
    sorted_by: &[&str],
) -> Result<Bytes, EncodeError> {
    write_groups(schema, columns, sorted_by, ROW_GROUP_ROWS)
}

fn write_groups(
    schema: SchemaRef,
    columns: Vec<Column>,
    sorted_by: &[&str],
    group_rows: usize,
) -> Result<Bytes, EncodeError> {
    let mut props = writer_properties(&schema, sorted_by)?;
    if let Ok(i) = schema.index_of("vm") {
        props = with_vm_bloom_filter(props, &columns[i]);
    }
    add_encoded_arrow_schema_to_metadata(&schema, &mut props);
    let parquet_schema = ArrowSchemaConverter::new().convert(&schema)?;
    let props = Arc::new(props);
    let rows = columns.first().map_or(0, Column::len);
    let mut buf = Vec::with_capacity(4096);
    let mut file =
        SerializedFileWriter::new(&mut buf, parquet_schema.root_schema_ptr(), props.clone())?;
    let factory = ArrowRowGroupWriterFactory::new(&file, schema.clone());
    for (n, start) in (0..rows).step_by(group_rows).enumerate() {
        let len = group_rows.min(rows - start);
        let writers = factory.create_column_writers(n)?;
        let mut group = file.next_row_group()?;
        for (i, (column, mut writer)) in columns.iter().zip(writers).enumerate() {
            match column {
                Column::Arrow(array) => {
                    let array = array.slice(start, len);
                    for leaf in compute_leaves(schema.field(i), &array)? {
                        writer.write(&leaf)?;
                    }
                    writer.close()?.append_to_row_group(&mut group)?;
                }
                Column::Dict(dict) => {
                    let (bytes, close) = dict_column::write_chunk(
                        dict,
                        start..start + len,
                        &parquet_schema.column(i),
                        &props,
                    )?;
                    group.append_column(&bytes, close)?;
                }
            }
        }
        group.close()?;
    }
    file.close()?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray as _;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::BoundaryOrder;
    use parquet::bloom_filter::Sbbf;
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::statistics::Statistics;

    use super::*;

    fn tags(vm: usize) -> Tags {
        Tags {
            ns: "ns01".into(),
            mcis: format!("mcis-{}", vm % 3),
            vm: format!("vm-{vm:03}"),
            csp: ["aws", "gcp", "azure"][vm % 3].into(),
            region: "r1".into(),
            os: "linux".into(),
            ..Tags::default()
        }
    }

    /// 25,000 raw rows of 50 VMs in table order, in row groups of 10,000 (one data page of up to
    /// 20,000 rows each) and of 25,000 (two pages).
    #[test]
    fn dictionary_columns_read_back_with_statistics_page_index_and_bloom_filter() {
        for group_rows in [10_000, 25_000] {
            dictionary_columns_read_back(group_rows);
        }
    }

    fn dictionary_columns_read_back(group_rows: usize) {
        let vms: Vec<Tags> = (0..50).map(tags).collect();
        let metrics = ["cpu_usage", "mem_used"];
        let devices = [String::new(), "eth0".to_owned()];
        let mut rows = Vec::new();
        for t in &vms {
            for metric in metrics {
                for device in &devices {
                    for i in 0..125 {
                        rows.push(RawRow {
                            tags: t,
                            metric,
                            device,
                            ts: 1_000 * i,
                            value: rows.len() as f64,
                        });
                    }
                }
            }
        }
        assert_eq!(rows.len(), 25_000);
        let bytes = write_groups(
            Table::Raw.schema(),
            raw_columns(&rows),
            &["vm", "metric", "device", "ts"],
            group_rows,
        )
        .unwrap();

        // Every row back, in order, through the Arrow reader (the schema's own types).
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let mut n = 0;
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(batch.schema(), Table::Raw.schema());
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_string::<i32>()
                    .clone()
            };
            let (vm, csp, metric, device) = (col("vm"), col("csp"), col("metric"), col("device"));
            let value = batch
                .column_by_name("value")
                .unwrap()
                .as_primitive::<arrow_array::types::Float64Type>()
                .clone();
            for i in 0..batch.num_rows() {
                let r = &rows[n];
                assert_eq!(
                    (
                        vm.value(i),
                        csp.value(i),
                        metric.value(i),
                        device.value(i),
                        value.value(i)
                    ),
                    (
                        r.tags.vm.as_str(),
                        r.tags.csp.as_str(),
                        r.metric,
                        r.device,
                        r.value
                    ),
                    "row {n}"
                );
                n += 1;
            }
        }
        assert_eq!(n, rows.len());

        // Per row group: exact min/max, the page index, a bloom filter of its own VMs.
        let options = parquet::file::serialized_reader::ReadOptionsBuilder::new()
            .with_page_index()
            .with_reader_properties(
                parquet::file::properties::ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let file = SerializedFileReader::new_with_options(bytes, options).unwrap();
        let meta = file.metadata();
        assert_eq!(meta.num_row_groups(), rows.len().div_ceil(group_rows));
        let vm_col = Table::Raw.schema().index_of("vm").unwrap();
        let csp_col = Table::Raw.schema().index_of("csp").unwrap();
        for (g, group) in meta.row_groups().iter().enumerate() {
            let span = g * group_rows..((g + 1) * group_rows).min(rows.len());
            let (first, last) = (&rows[span.start], &rows[span.end - 1]);
            let Some(Statistics::ByteArray(vm_stats)) = group.column(vm_col).statistics() else {
                panic!("no vm statistics in group {g}");
            };
            assert_eq!(
                vm_stats.min_opt().unwrap().as_utf8().unwrap(),
                first.tags.vm
            );
            assert_eq!(vm_stats.max_opt().unwrap().as_utf8().unwrap(), last.tags.vm);
            let Some(Statistics::ByteArray(csp_stats)) = group.column(csp_col).statistics() else {
                panic!("no csp statistics in group {g}");
            };
            assert_eq!(csp_stats.min_opt().unwrap().as_utf8().unwrap(), "aws");
            assert_eq!(csp_stats.max_opt().unwrap().as_utf8().unwrap(), "gcp");
            assert_eq!(group.column(vm_col).num_values(), group.num_rows());

            let index = &meta.column_index().unwrap()[g][vm_col];
            assert_eq!(index.get_boundary_order(), Some(BoundaryOrder::ASCENDING));
            let ColumnIndexMetaData::BYTE_ARRAY(index) = index else {
                panic!("vm has no byte array column index: {index:?}");
            };
            assert_eq!(index.min_value(0), Some(first.tags.vm.as_bytes()));
            let pages = &meta.offset_index().unwrap()[g][vm_col].page_locations;
            assert_eq!(pages.len(), span.len().div_ceil(20_000));

            let reader = file.get_row_group(g).unwrap();
            let bloom: &Sbbf = reader.get_column_bloom_filter(vm_col).unwrap();
            let here: std::collections::BTreeSet<&str> =
                rows[span].iter().map(|r| r.tags.vm.as_str()).collect();
            for t in &vms {
                if here.contains(t.vm.as_str()) {
                    assert!(
                        bloom.check(t.vm.as_str()),
                        "{} missing from group {g}",
                        t.vm
                    );
                }
            }
            let absent = vms.iter().filter(|t| !here.contains(t.vm.as_str()));
            let claimed = absent
                .clone()
                .filter(|t| bloom.check(t.vm.as_str()))
                .count();
            let absent = absent.count();
            assert!(
                claimed * 10 <= absent,
                "group {g}'s filter claims {claimed} of {absent} VMs it lacks"
            );
        }
    }
}
