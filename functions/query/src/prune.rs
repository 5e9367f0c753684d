//! File pruning at plan time: a listing table that drops files whose statistics rule out the query's filters.
//!
//! DataFusion's `ListingTable` already collects each file's statistics (min/max per column, from
//! the footer, cached per file), but it hands every listed file to the Parquet opener, which
//! builds a pruning predicate per file before skipping it. An open hour holds one small file per
//! batch and partition (hundreds), so a 5-minute query spent most of its time building the same
//! predicate hundreds of times. [`PrunedTable`] builds it once and evaluates it over all files'
//! statistics together, handing on only the files that can hold a matching row.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PrunableStatistics;
use datafusion::common::{DFSchema, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

/// A table over files (normally a `ListingTable`) whose scans skip the files that the filters'
/// column statistics rule out.
#[derive(Debug)]
pub struct PrunedTable {
    inner: Arc<dyn TableProvider>,
    /// The columns stored in the files (the table's schema without the partition columns): the
    /// schema of each file's statistics.
    file_schema: SchemaRef,
}

impl PrunedTable {
    /// Wraps `inner`, whose files store the columns of `file_schema`.
    pub fn new(inner: Arc<dyn TableProvider>, file_schema: SchemaRef) -> Self {
        Self { inner, file_schema }
    }

    /// The scan's plan with only the files that may hold rows matching `filters`.
    fn prune(
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
        let stats: Vec<Arc<Statistics>> = files
            .iter()
            .map(|f| {
                f.statistics
                    .clone()
                    .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.file_schema)))
            })
            .collect();
        let keep = pruning.prune(&PrunableStatistics::new(stats, self.file_schema.clone()))?;
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
        self.prune(state, plan, filters)
    }
}
