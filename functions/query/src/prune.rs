//! File pruning at plan time: a listing table that drops files whose statistics rule out the query's filters.
//!
//! DataFusion's `ListingTable` already collects each file's statistics (min/max per column, from
//! the footer, cached per file), but it hands every listed file to the Parquet opener, which
//! builds a pruning predicate per file before skipping it. An open hour holds one small file per
//! batch and partition (hundreds), so a 5-minute query spent most of its time building the same
//! predicate hundreds of times. [`PrunedTable`] builds it once and evaluates it over all files'
//! statistics together, handing on only the files that can hold a matching row.
//!
//! Min/max cannot rule out a batch file for a VM: a batch file holds one Kafka partition's VMs,
//! spread over the whole fleet by hashing. Batch files carry a bloom filter on `vm`, and a query
//! that names its VMs (`vm = ...`, `vm IN (...)`) also prunes by those filters ([`VmBlooms`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use arrow::array::{Array as _, ArrayRef, BooleanArray};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::{PrunableStatistics, PruningStatistics};
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::parquet::bloom_filter::Sbbf;
use datafusion::physical_expr::utils::Guarantee;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectMeta;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

/// A table over files (normally a `ListingTable`) whose scans skip the files that the filters'
/// column statistics rule out.
#[derive(Debug)]
pub struct PrunedTable {
    inner: Arc<dyn TableProvider>,
    /// The columns stored in the files (the table's schema without the partition columns): the
    /// schema of each file's statistics.
    file_schema: SchemaRef,
    /// The files' min/max statistics, read from their footers.
    stats: Arc<FileStats>,
    /// The files' `vm` bloom filters, loaded when a query names its VMs.
    blooms: Arc<VmBlooms>,
}

impl PrunedTable {
    /// Wraps `inner`, whose files store the columns of `file_schema`; `stats` and `blooms` cache
    /// the files' statistics and `vm` bloom filters (share them between sessions over the same
    /// lake). `inner` need not collect statistics: the pruning pass reads them from `stats`.
    pub fn new(
        inner: Arc<dyn TableProvider>,
        file_schema: SchemaRef,
        stats: Arc<FileStats>,
        blooms: Arc<VmBlooms>,
    ) -> Self {
        Self {
            inner,
            file_schema,
            stats,
            blooms,
        }
    }

    /// The scan's plan with only the files that may hold rows matching `filters`.
    async fn prune(
        &self,
        state: &dyn Session,
        plan: Arc<dyn ExecutionPlan>,
        filters: &[Expr],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(config) = plan
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
        else {
            return Ok(plan);
        };
        // Only filters on stored columns; the listing already pruned partitions (dt, hour).
        let stored: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| self.file_schema.index_of(&c.name).is_ok())
            })
            .cloned()
            .collect();
        let Some(predicate) = conjunction(stored) else {
            return Ok(plan);
        };
        let df_schema = DFSchema::try_from(self.file_schema.clone())?;
        let physical = state.create_physical_expr(predicate, &df_schema)?;
        // None: the filters cannot rule out a file by its statistics (or are always true).
        let Some(pruning) = PruningPredicateBuilder::new()
            .with_file_schema(self.file_schema.clone())
            .build(physical)
        else {
            return Ok(plan);
        };
        let files: Vec<_> = config.file_groups.iter().flat_map(|g| g.iter()).collect();
        let store = state.runtime_env().object_store(&config.object_store_url)?;
        let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
        let stats = self
            .stats
            .load(store.clone(), footers.clone(), &files, &self.file_schema)
            .await?;
        let min_max = PrunableStatistics::new(stats, self.file_schema.clone());
        let names_vms = pruning
            .literal_guarantees()
            .iter()
            .any(|g| g.column.name() == "vm" && g.guarantee == Guarantee::In);
        let keep = if names_vms && self.file_schema.index_of("vm").is_ok() {
            let blooms = self.blooms.load(store, footers, &files).await?;
            pruning.prune(&WithVmBlooms { min_max, blooms })?
        } else {
            pruning.prune(&min_max)?
        };
        if keep.iter().all(|k| *k) {
            return Ok(plan);
        }
        let mut kept = keep.into_iter();
        let groups: Vec<FileGroup> = config
            .file_groups
            .iter()
            .map(|g| {
                let files: Vec<_> = g
                    .iter()
                    .filter(|_| kept.next().unwrap_or(true))
                    .cloned()
                    .collect();
                FileGroup::new(files)
            })
            .filter(|g| !g.is_empty())
            .collect();
        tracing::debug!(
            files = files.len(),
            kept = groups.iter().map(FileGroup::len).sum::<usize>(),
            "pruned files by statistics"
        );
        if groups.is_empty() {
            return Ok(Arc::new(EmptyExec::new(plan.schema())));
        }
        let pruned = FileScanConfigBuilder::from(config.clone())
            .with_file_groups(groups)
            .build();
        Ok(DataSourceExec::from_data_source(pruned))
    }
}

#[async_trait]
impl TableProvider for PrunedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        self.prune(state, plan, filters).await
    }
}

/// Something read from each lake file, cached by object (path, size, time).
#[derive(Debug)]
struct ObjectCache<T> {
    loaded: Mutex<HashMap<ObjectVersion, T>>,
}

/// An object as listed: path, size and modification time (ns).
pub(crate) type ObjectVersion = (Path, u64, i64);

/// Cached files beyond which a cache starts over (an entry is a few hundred bytes to a few KB).
const MAX_CACHED_FILES: usize = 100_000;

/// Concurrent footer and filter reads when loading what many files hold.
const LOAD_CONCURRENCY: usize = 16;

impl<T> Default for ObjectCache<T> {
    fn default() -> Self {
        Self {
            loaded: Mutex::default(),
        }
    }
}

impl<T: Clone> ObjectCache<T> {
    /// The value of each file: looked up under one lock, and `read` for the ones not cached yet.
    async fn load<F, Fut>(&self, files: &[&PartitionedFile], read: F) -> Result<Vec<T>>
    where
        F: Fn(ObjectMeta) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut values: Vec<Option<T>> = {
            let cache = self.lock();
            files
                .iter()
                .map(|f| cache.get(&version(&f.object_meta)).cloned())
                .collect()
        };
        let missing: Vec<usize> = (0..files.len()).filter(|i| values[*i].is_none()).collect();
        if !missing.is_empty() {
            let reads: Vec<_> = missing
                .iter()
                .map(|&i| read(files[i].object_meta.clone()))
                .collect();
            let read: Vec<T> = futures::stream::iter(reads)
                .buffered(LOAD_CONCURRENCY)
                .try_collect()
                .await?;
            let mut cache = self.lock();
            if cache.len() + read.len() > MAX_CACHED_FILES {
                cache.clear();
            }
            for (i, value) in missing.into_iter().zip(read) {
                cache.insert(version(&files[i].object_meta), value.clone());
                values[i] = Some(value);
            }
        }
        Ok(values
            .into_iter()
            .map(|v| v.expect("every file's value was loaded"))
            .collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectVersion, T>> {
        self.loaded.lock().expect("file cache lock poisoned")
    }
}

/// The cache key of a listed object.
pub(crate) fn version(meta: &ObjectMeta) -> ObjectVersion {
    (
        meta.location.clone(),
        meta.size,
        meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
    )
}

/// The min/max statistics of lake files, cached by object (path, size, time).
///
/// DataFusion's `ListingTable` can collect them too, but it then copies every listed file's
/// statistics (with the partition columns appended) and merges them into table statistics on
/// every scan: with an open hour's hundreds of batch files, most of a short query's time, in
/// allocations. Here a scan looks its files up under one lock and hands them on shared.
#[derive(Debug, Default)]
pub struct FileStats {
    cache: ObjectCache<Arc<Statistics>>,
}

impl FileStats {
    /// The statistics of each file (as columns of `file_schema`), reading the ones not cached yet.
    async fn load(
        &self,
        store: Arc<dyn ObjectStore>,
        footers: Arc<FileMetadataCache>,
        files: &[&PartitionedFile],
        file_schema: &SchemaRef,
    ) -> Result<Vec<Arc<Statistics>>> {
        self.cache
            .load(files, |meta| {
                let (store, footers) = (store.clone(), footers.clone());
                let schema = file_schema.clone();
                async move {
                    let stats = DFParquetMetadata::new(store.as_ref(), &meta)
                        .with_file_metadata_cache(Some(footers))
                        .fetch_statistics(&schema)
                        .await?;
                    Ok(Arc::new(stats))
                }
            })
            .await
    }
}

/// The `vm` bloom filters of lake files, one per row group, cached by object (path, size, time).
#[derive(Debug, Default)]
pub struct VmBlooms {
    cache: ObjectCache<FileBlooms>,
}

/// A file's `vm` filters, one per row group; `None` when it has none.
type FileBlooms = Option<Arc<[Sbbf]>>;

impl VmBlooms {
    /// The filters of each file (`None`: the file has none), reading the ones not cached yet.
    async fn load(
        &self,
        store: Arc<dyn ObjectStore>,
        footers: Arc<FileMetadataCache>,
        files: &[&PartitionedFile],
    ) -> Result<Vec<FileBlooms>> {
        self.cache
            .load(files, |meta| {
                read_blooms(store.clone(), footers.clone(), meta)
            })
            .await
    }
}

/// One file's `vm` filters, read through the footer cache and one ranged read per row group.
async fn read_blooms(
    store: Arc<dyn ObjectStore>,
    footers: Arc<FileMetadataCache>,
    meta: ObjectMeta,
) -> Result<FileBlooms> {
    let md = DFParquetMetadata::new(store.as_ref(), &meta)
        .with_file_metadata_cache(Some(footers))
        .fetch_metadata()
        .await?;
    let column = md
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().string() == "vm");
    let mut filters = Vec::with_capacity(md.num_row_groups());
    for rg in md.row_groups() {
        let Some((offset, len)) = column.and_then(|i| {
            let c = rg.column(i);
            Some((c.bloom_filter_offset()?, c.bloom_filter_length()?))
        }) else {
            break;
        };
        let (start, len) = (offset as u64, len as u64);
        let bytes = store.get_range(&meta.location, start..start + len).await?;
        filters.push(Sbbf::from_bytes(&bytes)?);
    }
    // A row group without a filter may hold any VM: the file is then unknown (None).
    Ok((column.is_some() && filters.len() == md.num_row_groups()).then(|| filters.into()))
}

/// Files' min/max statistics plus their `vm` bloom filters, for one pruning pass.
struct WithVmBlooms {
    min_max: PrunableStatistics,
    blooms: Vec<FileBlooms>,
}

impl PruningStatistics for WithVmBlooms {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.min_max.min_values(column)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.min_max.max_values(column)
    }

    fn num_containers(&self) -> usize {
        self.min_max.num_containers()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.min_max.null_counts(column)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.min_max.row_counts()
    }

    /// False for a file whose filters hold none of `values`; unknown otherwise.
    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        if column.name() != "vm" {
            return self.min_max.contained(column, values);
        }
        let vms: Vec<&str> = values
            .iter()
            .map(|v| match v {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => Some(s.as_str()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let absent: BooleanArray = self
            .blooms
            .iter()
            .map(|filters| match filters {
                Some(fs) if !vms.iter().any(|vm| fs.iter().any(|f| f.check(*vm))) => Some(false),
                _ => None,
            })
            .collect();
        (absent.null_count() < absent.len()).then_some(absent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    #[tokio::test]
    async fn the_file_cache_reads_each_object_version_once() {
        let cache = ObjectCache::<u64>::default();
        let reads = AtomicUsize::new(0);
        let read = |meta: ObjectMeta| {
            reads.fetch_add(1, Relaxed);
            async move { Ok(meta.size * 100) }
        };
        let file = |path: &str, size: u64| PartitionedFile::new(path, size);
        let (a, b) = (file("t/a.parquet", 1), file("t/b.parquet", 2));
        assert_eq!(cache.load(&[&a, &b], read).await.unwrap(), [100, 200]);
        assert_eq!(reads.load(Relaxed), 2);
        // Cached: answered in the files' order, nothing read.
        assert_eq!(cache.load(&[&b, &a], read).await.unwrap(), [200, 100]);
        assert_eq!(reads.load(Relaxed), 2);
        // A rewritten object (another size) is another version: read again, once.
        let a2 = file("t/a.parquet", 3);
        assert_eq!(cache.load(&[&a2, &b], read).await.unwrap(), [300, 200]);
        assert_eq!(cache.load(&[&a2], read).await.unwrap(), [300]);
        assert_eq!(reads.load(Relaxed), 3);
    }
}
