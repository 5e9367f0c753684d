//! SQL over the Damselfly lake with DataFusion: every table registered with `dt`/`hour` partition pruning.
//!
//! The stored files of each table are `files.<table>`. `raw`, `dlq` and `alarms` are those
//! tables as they are; `rollup_1m`, `rollup_1h` and `rollup_1d` are views that add a ready-made
//! `avg`, and `<rollup>_merged` views merge partials across files into one row per series and
//! window (see [`ROLLUP_VIEWS`]).

pub mod api;
pub mod config;
pub mod console;
pub mod live;
pub mod prom;
pub mod prune;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use damselfly_core::{Lake, LakeError};
use damselfly_schemas::Table;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt as _;
use object_store::ObjectStore;
use object_store::path::Path;

/// Hive partition columns every table has, from its object paths.
pub const PARTITION_COLUMNS: [&str; 2] = ["dt", "hour"];

/// The schema that holds every table's stored files, e.g. `files.rollup_1m`.
pub const FILES_SCHEMA: &str = "files";

/// The rollup tables, which are registered as views adding `avg` and as `<table>_merged`.
pub const ROLLUP_VIEWS: [Table; 3] = [Table::Rollup1m, Table::Rollup1h, Table::Rollup1d];

/// The columns that identify a rollup row's series and window.
const ROLLUP_KEY: &str = "window_start, ns, mcis, vm, csp, region, os, metric, device, dt, hour";

/// The view over a rollup table's files that adds the window's average, `sum / count`.
pub fn rollup_view_sql(table: Table) -> String {
    let name = table.name();
    format!(r#"CREATE VIEW {name} AS SELECT *, "sum" / "count" AS avg FROM {FILES_SCHEMA}.{name}"#)
}

/// The view that merges a rollup table's partials across files: one row per series and window.
///
/// A minute written by two batches has a partial in each file until compaction merges them;
/// this is the merge (sum the counts and sums, min of mins, max of maxes, the first value by
/// `first_ts`, the last by `last_ts`) that every reader must apply, written once.
pub fn merged_view_sql(table: Table) -> String {
    let name = table.name();
    format!(
        r#"CREATE VIEW {name}_merged AS SELECT {ROLLUP_KEY}, sum("count") AS "count", sum("sum") AS "sum", min("min") AS "min", max("max") AS "max", first_value("first" ORDER BY first_ts) AS "first", min(first_ts) AS first_ts, last_value("last" ORDER BY last_ts) AS "last", max(last_ts) AS last_ts, sum("sum") / sum("count") AS avg FROM {FILES_SCHEMA}.{name} GROUP BY {ROLLUP_KEY}"#
    )
}

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The lake could not be opened or listed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// DataFusion rejected or failed the query.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// Results could not be formatted.
    #[error("formatting results: {0}")]
    Format(#[from] arrow::error::ArrowError),
}

/// How to print query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// A SQL session over one lake.
pub struct LakeSql {
    ctx: SessionContext,
    /// The runtime and the caches it plans with, kept for a renewed session.
    runtime: LakeRuntime,
    /// The tables registered over files (the others are empty tables).
    with_files: BTreeSet<&'static str>,
    /// The lake's store, rooted at the lake (for the objects that are not tables, such as rules).
    store: Arc<dyn ObjectStore>,
}

impl LakeSql {
    /// Opens the lake at `url` and registers its tables (`raw`, `rollup_1m`, `rollup_1h`,
    /// `rollup_1d`, `dlq`, `alarms`), reading only live files (see [`live`]).
    pub async fn open(url: &str) -> Result<Self, QueryError> {
        Self::open_in(url, lake_runtime()?).await
    }

    /// Opens the lake at `url` in an existing runtime, keeping its caches (a renewed session).
    pub async fn open_in(url: &str, runtime: LakeRuntime) -> Result<Self, QueryError> {
        Self::for_lake_in(&Lake::open(url)?, runtime).await
    }

    /// Registers the tables of an opened lake.
    pub async fn for_lake(lake: &Lake) -> Result<Self, QueryError> {
        Self::for_lake_in(lake, lake_runtime()?).await
    }

    /// Registers the tables of an opened lake in `runtime` (see [`lake_runtime`]).
    pub async fn for_lake_in(lake: &Lake, runtime: LakeRuntime) -> Result<Self, QueryError> {
        let mut config = SessionConfig::new();
        // Late materialization: evaluate the filters (vm, metric, time) on their columns first
        // and decode the other columns only for the rows that pass.
        let parquet = &mut config.options_mut().execution.parquet;
        parquet.pushdown_filters = true;
        parquet.reorder_filters = true;
        // Planning already pruned files by their `vm` bloom filters (a batch file has one row
        // group); compacted files carry none.
        parquet.bloom_filter_on_read = false;
        // File statistics are read and cached by `PrunedTable`, which prunes with them;
        // `ListingTable`'s own collection would copy and merge them on every scan.
        config.options_mut().execution.collect_statistics = false;
        let ctx = SessionContext::new_with_config_rt(config, runtime.env.clone());
        ctx.catalog("datafusion")
            .expect("the default catalog exists")
            .register_schema(FILES_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
        let mut with_files = BTreeSet::new();
        let location = lake.location();
        let store_url = url::Url::parse(&location.store_url()).expect("store URLs are valid");
        // Listings skip files a compacted file replaces, so a query racing compaction never double counts.
        let store = Arc::new(live::LiveStore::new(location.root_store()?));
        ctx.register_object_store(&store_url, store);
        // The session's Parquet options (pushdown, bloom filters), read once for every table.
        let format = Arc::new(
            ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone()),
        );
        for table in Table::ALL {
            let provider: Arc<dyn datafusion::catalog::TableProvider> =
                if has_objects(lake, table).await? {
                    with_files.insert(table.name());
                    let options = ListingOptions::new(format.clone())
                        .with_file_extension(".parquet")
                        .with_table_partition_cols(
                            PARTITION_COLUMNS
                                .iter()
                                .map(|c| (c.to_string(), DataType::Utf8))
                                .collect(),
                        );
                    let url = ListingTableUrl::parse(location.table_url(table.name()))?;
                    let config = ListingTableConfig::new(url)
                        .with_listing_options(options)
                        .with_schema(table.schema());
                    Arc::new(prune::PrunedTable::new(
                        Arc::new(ListingTable::try_new(config)?),
                        table.schema(),
                        // Per-file statistics are kept between queries (checked against each
                        // object's size and time), so pruning costs no footer reads once warm.
                        runtime.stats.clone(),
                        runtime.blooms.clone(),
                    ))
                } else {
                    // An empty table still answers queries (with no rows) rather than failing.
                    let mut fields: Vec<Field> = table
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone())
                        .collect();
                    fields.extend(
                        PARTITION_COLUMNS
                            .iter()
                            .map(|c| Field::new(*c, DataType::Utf8, false)),
                    );
                    Arc::new(MemTable::try_new(
                        Arc::new(Schema::new(fields)),
                        vec![vec![]],
                    )?)
                };
            ctx.register_table(
                TableReference::partial(FILES_SCHEMA, table.name()),
                provider.clone(),
            )?;
            if ROLLUP_VIEWS.contains(&table) {
                ctx.sql(&rollup_view_sql(table)).await?;
                ctx.sql(&merged_view_sql(table)).await?;
            } else {
                ctx.register_table(table.name(), provider)?;
            }
        }
        Ok(Self {
            ctx,
            runtime,
            with_files,
            store: lake.store().clone(),
        })
    }

    /// The lake's object store, rooted at the lake.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Whether `table` has files in the lake (an empty table still answers, with no rows).
    pub fn holds_files(&self, table: &str) -> bool {
        self.with_files.contains(table)
    }

    /// Runs one SQL statement and collects the result.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        Ok(self.ctx.sql(sql).await?.collect().await?)
    }

    /// The fleet page's per-file digests, kept across renewed sessions (see [`console::digest`]).
    pub fn digests(&self) -> Arc<console::digest::Digests> {
        self.runtime.digests.clone()
    }

    /// The runtime this session plans in (its caches), to open a renewed session in.
    pub fn runtime(&self) -> LakeRuntime {
        self.runtime.clone()
    }

    /// The underlying DataFusion session, for callers that need more.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }
}

/// What lake sessions share across renewals: a DataFusion runtime, the files' statistics and
/// bloom filters, and the fleet page's digests.
#[derive(Clone)]
pub struct LakeRuntime {
    env: Arc<RuntimeEnv>,
    stats: Arc<prune::FileStats>,
    blooms: Arc<prune::VmBlooms>,
    digests: Arc<console::digest::Digests>,
}

/// A runtime for lake sessions: file statistics, Parquet footers and `vm` bloom filters are
/// cached (each entry checked against the object's size and time), listings are not, so every
/// query sees the files written, compacted and deleted since the last one.
pub fn lake_runtime() -> Result<LakeRuntime, QueryError> {
    let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
    Ok(LakeRuntime {
        env: RuntimeEnvBuilder::new()
            .with_cache_manager(caches)
            .build_arc()?,
        stats: Arc::default(),
        blooms: Arc::default(),
        digests: Arc::default(),
    })
}

async fn has_objects(lake: &Lake, table: Table) -> Result<bool, QueryError> {
    let prefix = Path::from(table.name());
    let mut listing = lake.store().list(Some(&prefix));
    while let Some(meta) = listing.next().await {
        if meta
            .map_err(LakeError::from)?
            .location
            .as_ref()
            .ends_with(".parquet")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Renders results in the chosen format.
pub fn format(batches: &[RecordBatch], fmt: OutputFormat) -> Result<String, QueryError> {
    Ok(match fmt {
        OutputFormat::Table => arrow::util::pretty::pretty_format_batches(batches)?.to_string(),
        OutputFormat::Csv => {
            let mut buf = Vec::new();
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut buf);
            for b in batches {
                w.write(b)?;
            }
            drop(w);
            String::from_utf8(buf).expect("CSV is UTF-8")
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            let s = String::from_utf8(w.into_inner()).expect("JSON is UTF-8");
            if s.is_empty() { "[]".to_owned() } else { s }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_core::{InputRecord, PartitionBatch, Validation};

    fn message(vm: &str, ts: i64, cpu: f64) -> String {
        format!(
            r#"{{"v":1,"ts":{ts},"tags":{{"ns":"n","mcis":"m","vm":"{vm}","csp":"aws"}},"metrics":{{"cpu_utilization":{cpu}}}}}"#
        )
    }

    #[tokio::test]
    async fn queries_a_lake_on_disk_with_partitions_and_empty_tables() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let now = 1_763_737_200_000; // 2025-11-21T15:00:00Z
        let mut batch = PartitionBatch::new("metrics", 0);
        for (i, (vm, cpu)) in [("vm-1", 10.0), ("vm-2", 30.0), ("vm-1", 20.0)]
            .iter()
            .enumerate()
        {
            let v = message(vm, now + i as i64 * 2_000, *cpu);
            let rec = InputRecord {
                topic: "metrics",
                partition: 0,
                offset: i as i64,
                timestamp_ms: now,
                key: None,
                value: Some(v.as_bytes()),
            };
            batch.push(&rec, now, &Validation::default());
        }
        lake.put_all(&batch.objects(&mut Default::default()).unwrap())
            .await
            .unwrap();

        let sql = LakeSql::for_lake(&lake).await.unwrap();
        let out = sql
            .query("SELECT vm, count(*) AS n, avg(value) AS avg, min(dt) AS dt, min(hour) AS hour FROM raw GROUP BY vm ORDER BY vm")
            .await
            .unwrap();
        let json = format(&out, OutputFormat::Json).unwrap();
        let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            rows,
            serde_json::json!([
                {"vm": "vm-1", "n": 2, "avg": 15.0, "dt": "2025-11-21", "hour": "15"},
                {"vm": "vm-2", "n": 1, "avg": 30.0, "dt": "2025-11-21", "hour": "15"},
            ])
        );
        let merged = sql
            .query("SELECT sum(count) AS n FROM rollup_1m")
            .await
            .unwrap();
        assert!(
            format(&merged, OutputFormat::Csv)
                .unwrap()
                .contains("n\n3\n")
        );
        let dlq = sql.query("SELECT count(*) AS n FROM dlq").await.unwrap();
        assert_eq!(format(&dlq, OutputFormat::Csv).unwrap(), "n\n0\n");
    }

    /// Writes messages `first..first + n` (vm-0..vm-2, one per 10 s from `t0`) as one batch
    /// under the aggregate function's exactly-once ledger.
    async fn write_batch(lake: &Lake, first: i64, n: i64, t0: i64) {
        let mut batch = PartitionBatch::new("metrics", 0);
        for offset in first..first + n {
            let ts = t0 + (offset - first) * 10_000;
            let v = message(&format!("vm-{}", offset % 3), ts, offset as f64);
            let rec = InputRecord {
                topic: "metrics",
                partition: 0,
                offset,
                timestamp_ms: ts,
                key: None,
                value: Some(v.as_bytes()),
            };
            let limits = Validation {
                max_past: std::time::Duration::from_secs(u32::MAX as u64),
                ..Validation::default()
            };
            batch.push(&rec, ts, &limits);
        }
        let write = damselfly_core::ledger::PartitionWrite {
            topic: "metrics".into(),
            partition: 0,
            first_offset: first,
            next_offset: first + n,
            objects: batch.objects(&mut Default::default()).unwrap(),
            tail: Default::default(),
        };
        lake.write_exactly_once("aggregate", write).await.unwrap();
    }

    async fn answer(lake: &Lake, sql: &str) -> String {
        let sql_session = LakeSql::for_lake(lake).await.unwrap();
        format(&sql_session.query(sql).await.unwrap(), OutputFormat::Csv).unwrap()
    }

    #[tokio::test]
    async fn a_query_mid_compaction_counts_every_sample_once() {
        use damselfly_core::compact::{CompactConfig, compact};
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let h15 = 1_763_737_200_000; // 2025-11-21T15:00:00Z
        for first in [0, 30, 60] {
            write_batch(&lake, first, 30, h15 + first * 20_000).await;
        }
        write_batch(&lake, 90, 1, h15 + 3 * 3_600_000).await; // settles the batches before it
        let count = "SELECT count(*) AS n, sum(value) AS s FROM raw";
        let before = answer(&lake, count).await;
        assert_eq!(before, "n,s\n91,4095.0\n");
        let files = |t: &str| walk(&dir.path().join(t));

        // Compaction writes the merged file, then "crashes" before deleting its sources.
        let now = h15 + 3 * 3_600_000 + 30 * 60_000;
        let halted = CompactConfig {
            halt_after_write: true,
            ..CompactConfig::at(now)
        };
        compact(&lake, &halted).await.unwrap();
        assert_eq!(
            files("raw").len(),
            4 + 1,
            "sources and compacted file side by side"
        );
        assert_eq!(answer(&lake, count).await, before);

        // The next run deletes the superseded files; the answer stays.
        compact(&lake, &CompactConfig::at(now)).await.unwrap();
        assert_eq!(files("raw").len(), 2, "{:?}", files("raw"));
        assert_eq!(answer(&lake, count).await, before);

        // rollup_1h and rollup_1d are tables too, and merge to the same totals as rollup_1m once
        // their day is closed (midnight plus the grace, 1 h by default).
        compact(
            &lake,
            &CompactConfig::at(h15 + 10 * 3_600_000 + 30 * 60_000),
        )
        .await
        .unwrap();
        let totals = |t: &str| {
            format!(
                r#"SELECT sum("count") AS n, sum("sum") AS s, min("min") AS lo, max("max") AS hi FROM {t}"#
            )
        };
        let minutes = answer(&lake, &totals("rollup_1m")).await;
        assert_eq!(minutes, "n,s,lo,hi\n91,4095.0,0.0,90.0\n");
        assert_eq!(answer(&lake, &totals("rollup_1h")).await, minutes);
        assert_eq!(answer(&lake, &totals("rollup_1d")).await, minutes);
        let rows = "SELECT count(*) AS n, min(dt) AS dt, min(hour) AS hour FROM rollup_1d";
        assert_eq!(answer(&lake, rows).await, "n,dt,hour\n3,2025-11-21,00\n");
    }

    /// How many files the plan of `sql` scans.
    async fn files_planned(session: &LakeSql, sql: &str) -> usize {
        use datafusion::datasource::physical_plan::FileScanConfig;
        use datafusion::datasource::source::DataSourceExec;
        use datafusion::physical_plan::ExecutionPlan;
        fn count(plan: &Arc<dyn ExecutionPlan>) -> usize {
            let here = plan
                .downcast_ref::<DataSourceExec>()
                .and_then(|e| e.data_source().downcast_ref::<FileScanConfig>())
                .map_or(0, |c| c.file_groups.iter().map(|g| g.len()).sum());
            here + plan.children().into_iter().map(count).sum::<usize>()
        }
        let df = session.context().sql(sql).await.unwrap();
        count(&df.create_physical_plan().await.unwrap())
    }

    #[tokio::test]
    async fn a_time_filter_plans_only_the_files_whose_windows_overlap_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let h15 = 1_763_737_200_000; // 2025-11-21T15:00:00Z
        // Three one-minute batches in one hour partition: 15:00, 15:10, 15:20.
        for (i, first) in [0, 6, 12].into_iter().enumerate() {
            write_batch(&lake, first, 6, h15 + i as i64 * 600_000).await;
        }
        let session = LakeSql::for_lake(&lake).await.unwrap();
        let window = |from: i64, to: i64| {
            format!(
                "SELECT sum(count) AS n, min(min) AS lo FROM rollup_1m WHERE window_start >= {} AND window_start < {}",
                api::metric::ts_literal(from),
                api::metric::ts_literal(to)
            )
        };
        let all = "SELECT sum(count) AS n, min(min) AS lo FROM rollup_1m";
        assert_eq!(files_planned(&session, all).await, 3);
        let ten = window(h15 + 600_000, h15 + 660_000);
        assert_eq!(files_planned(&session, &ten).await, 1);
        let out = format(&session.query(&ten).await.unwrap(), OutputFormat::Csv).unwrap();
        assert_eq!(out, "n,lo\n6,6.0\n");
        // A window no file overlaps plans no file and answers with no samples.
        let none = window(h15 + 3_000_000, h15 + 3_060_000);
        assert_eq!(files_planned(&session, &none).await, 0);
        let out = format(&session.query(&none).await.unwrap(), OutputFormat::Csv).unwrap();
        assert_eq!(out, "n,lo\n,\n");
        // Filters on other columns prune too: vm-0 is in every file.
        let vm0 = "SELECT count(*) AS n FROM raw WHERE vm = 'vm-0'";
        assert_eq!(files_planned(&session, vm0).await, 3);
    }

    #[tokio::test]
    async fn partition_filters_plan_only_the_files_of_the_partitions_they_keep() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let h15 = 1_763_737_200_000; // 2025-11-21T15:00:00Z
        // Six samples an hour apart, one batch each: 15:00 .. 20:00 of one day.
        for i in 0..6 {
            write_batch(&lake, i, 1, h15 + i * 3_600_000).await;
        }
        // One more on the next day (2025-11-22T01:00).
        write_batch(&lake, 6, 1, h15 + 10 * 3_600_000).await;
        let session = LakeSql::for_lake(&lake).await.unwrap();
        let q =
            |filter: &str| format!("SELECT count(*) AS n, sum(value) AS s FROM raw WHERE {filter}");
        let answer = |b: &[RecordBatch]| format(b, OutputFormat::Csv).unwrap();
        for (filter, files, out) in [
            ("TRUE", 7, "n,s\n7,21.0\n"),
            // The API's "from 18:00 on" (offsets 3, 4, 5 and the next day's 6).
            (
                "(dt > '2025-11-21' OR (dt = '2025-11-21' AND hour >= '18'))",
                4,
                "n,s\n4,18.0\n",
            ),
            ("dt = '2025-11-22'", 1, "n,s\n1,6.0\n"),
            ("hour IN ('15', '01')", 2, "n,s\n2,6.0\n"),
            ("dt = '2025-11-20'", 0, "n,s\n0,\n"),
            // With a filter on a stored column: both prune.
            ("hour >= '17' AND value < 4.0", 2, "n,s\n2,5.0\n"),
            // One filter over a partition and a stored column prunes no file and stays exact.
            ("(hour = '15' OR value = 5.0)", 7, "n,s\n2,5.0\n"),
        ] {
            let sql = q(filter);
            assert_eq!(files_planned(&session, &sql).await, files, "{filter}");
            assert_eq!(answer(&session.query(&sql).await.unwrap()), out, "{filter}");
        }
        // A limit is applied after the partitions were pruned, never to the listing before.
        let limited = "SELECT value FROM raw WHERE dt = '2025-11-22' LIMIT 1";
        assert_eq!(
            answer(&session.query(limited).await.unwrap()),
            "value\n6.0\n"
        );
    }

    /// Writes one batch file per table of `partition` holding one sample of each of `vms`.
    async fn write_vms(lake: &Lake, partition: i32, vms: &[&str], ts: i64) {
        let mut batch = PartitionBatch::new("metrics", partition);
        for (offset, vm) in vms.iter().enumerate() {
            let v = message(vm, ts, offset as f64);
            let rec = InputRecord {
                topic: "metrics",
                partition,
                offset: offset as i64,
                timestamp_ms: ts,
                key: None,
                value: Some(v.as_bytes()),
            };
            batch.push(&rec, ts, &Validation::default());
        }
        let write = damselfly_core::ledger::PartitionWrite {
            topic: "metrics".into(),
            partition,
            first_offset: 0,
            next_offset: vms.len() as i64,
            objects: batch.objects(&mut Default::default()).unwrap(),
            tail: Default::default(),
        };
        lake.write_exactly_once("aggregate", write).await.unwrap();
    }

    #[tokio::test]
    async fn a_vm_filter_plans_only_the_files_whose_bloom_filters_may_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        // Two partitions' batch files of one minute: min/max of the first ("vm-a" to "vm-z")
        // covers the VM of the second, so only its bloom filter can rule the first out.
        write_vms(&lake, 0, &["vm-a", "vm-z"], now).await;
        write_vms(&lake, 1, &["vm-m"], now).await;
        let session = LakeSql::for_lake(&lake).await.unwrap();
        let count = |filter: &str| format!("SELECT count(*) AS n FROM rollup_1m WHERE {filter}");
        let n = |b: &[RecordBatch]| format(b, OutputFormat::Csv).unwrap();
        let all = count("metric = 'cpu_utilization'");
        assert_eq!(files_planned(&session, &all).await, 2);
        for (filter, files, rows) in [
            ("vm = 'vm-m'", 1, 1),
            ("vm = 'vm-z'", 1, 1),
            ("vm IN ('vm-a', 'vm-m')", 2, 2),
            ("vm = 'vm-q'", 0, 0),
            // A VM absent from every file excludes nothing: every file stays.
            ("vm <> 'vm-q'", 2, 3),
        ] {
            let sql = count(&format!("metric = 'cpu_utilization' AND {filter}"));
            assert_eq!(files_planned(&session, &sql).await, files, "{filter}");
            assert_eq!(
                n(&session.query(&sql).await.unwrap()),
                format!("n\n{rows}\n"),
                "{filter}"
            );
        }
        // A renewed session reuses the filters it read (and still prunes).
        let renewed = LakeSql::open_in(dir.path().to_str().unwrap(), session.runtime())
            .await
            .unwrap();
        let vm_m = count("metric = 'cpu_utilization' AND vm = 'vm-m'");
        assert_eq!(files_planned(&renewed, &vm_m).await, 1);
    }

    #[tokio::test]
    async fn one_session_sees_files_written_after_it_opened() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let h15 = 1_763_737_200_000; // 2025-11-21T15:00:00Z
        write_batch(&lake, 0, 6, h15).await;
        let session = LakeSql::for_lake(&lake).await.unwrap();
        let count = "SELECT count(*) AS n FROM raw";
        let n = |b: &[RecordBatch]| format(b, OutputFormat::Csv).unwrap();
        assert_eq!(n(&session.query(count).await.unwrap()), "n\n6\n");
        write_batch(&lake, 6, 6, h15 + 60_000).await;
        assert_eq!(n(&session.query(count).await.unwrap()), "n\n12\n");
    }

    #[tokio::test]
    async fn rollup_views_add_avg_and_merge_partials_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let h15 = 1_763_737_200_000; // 2025-11-21T15:00:00Z
        // Two batches share minute 15:00: every VM has a partial in each file.
        write_batch(&lake, 0, 3, h15).await;
        write_batch(&lake, 3, 3, h15 + 30_000).await;
        let cpu = "metric = 'cpu_utilization'";
        assert_eq!(
            answer(
                &lake,
                &format!(
                    "SELECT vm, avg FROM rollup_1m WHERE {cpu} AND vm = 'vm-0' ORDER BY first_ts"
                )
            )
            .await,
            "vm,avg\nvm-0,0.0\nvm-0,3.0\n",
            "one row per file, each with its own average"
        );
        assert_eq!(
            answer(
                &lake,
                &format!(
                    r#"SELECT vm, "count", "sum", "min", "max", "first", "last", avg, first_ts, last_ts FROM rollup_1m_merged WHERE {cpu} ORDER BY vm"#
                )
            )
            .await,
            "vm,count,sum,min,max,first,last,avg,first_ts,last_ts\n\
             vm-0,2,3.0,0.0,3.0,0.0,3.0,1.5,2025-11-21T15:00:00Z,2025-11-21T15:00:30Z\n\
             vm-1,2,5.0,1.0,4.0,1.0,4.0,2.5,2025-11-21T15:00:10Z,2025-11-21T15:00:40Z\n\
             vm-2,2,7.0,2.0,5.0,2.0,5.0,3.5,2025-11-21T15:00:20Z,2025-11-21T15:00:50Z\n"
        );
        // The stored files stay reachable as they are.
        let stored = "SELECT count(*) AS n FROM files.rollup_1m WHERE metric = 'cpu_utilization'";
        assert_eq!(answer(&lake, stored).await, "n\n6\n");
        // Tables without files answer with no rows, views included.
        assert_eq!(
            answer(&lake, "SELECT count(*) AS n FROM rollup_1h_merged").await,
            "n\n0\n"
        );
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
