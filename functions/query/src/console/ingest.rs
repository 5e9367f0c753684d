//! Ingest delay: how old the samples were when their `raw` batch file landed in the lake.
//!
//! A batch file is written once, by the aggregate function, right after its batch was consumed
//! (`raw/dt=/hour=/{topic}+{partition}+{first_offset}.parquet`); its object's last-modified time is
//! when it landed, and its footer's `ts` statistics give its newest and oldest sample. The delay
//! of a file is `landed - newest sample`: the freshest sample's age when it became queryable, the
//! floor of what a reader waits (the oldest sample waited `landed - oldest`). Compacted files are
//! rewritten later, so they say nothing about ingest and are skipped.

use std::sync::Arc;

use damselfly_schemas::Table;
use damselfly_schemas::paths::{HourPartition, compacted_generation};
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::statistics::Statistics;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};

use crate::api::ApiError;

/// Most files whose footers one page reads (the newest in the window).
pub const MAX_FILES: usize = 200;
/// Footers read at once.
const CONCURRENCY: usize = 16;

/// One batch file: when it landed and the time span of its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// The object's key.
    pub key: String,
    /// When it was written (ms).
    pub written_ms: i64,
    /// Its rows.
    pub rows: i64,
    /// Its oldest and newest sample (ms).
    pub oldest_ms: i64,
    /// Its newest sample (ms).
    pub newest_ms: i64,
}

impl Landed {
    /// The freshest sample's age when the file landed.
    pub fn delay_ms(&self) -> i64 {
        self.written_ms - self.newest_ms
    }
}

/// The newest [`MAX_FILES`] `raw` batch files of the hour partitions that `[from, end)` spans (files
/// of the window's samples), newest first; footers are read through `footers`, so a page reads
/// only the ones that landed since the last.
pub async fn landed(
    store: &Arc<dyn ObjectStore>,
    footers: &Arc<FileMetadataCache>,
    from_ms: i64,
    end_ms: i64,
) -> Result<Vec<Landed>, ApiError> {
    let mut metas: Vec<ObjectMeta> = Vec::new();
    let mut hour = from_ms.div_euclid(3_600_000) * 3_600_000;
    while hour < end_ms {
        if let Some(p) = HourPartition::of_millis(hour) {
            let prefix = Path::from(p.dir(Table::Raw));
            let listed: Vec<ObjectMeta> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(ApiError::internal)?;
            metas.extend(listed.into_iter().filter(|m| {
                m.location.as_ref().ends_with(".parquet")
                    && compacted_generation(m.location.as_ref()).is_none()
            }));
        }
        hour += 3_600_000;
    }
    metas.sort_by(|a, b| {
        b.last_modified
            .cmp(&a.last_modified)
            .then(a.location.cmp(&b.location))
    });
    metas.truncate(MAX_FILES);
    let reads = metas.into_iter().map(|m| {
        let (store, footers) = (store.clone(), footers.clone());
        async move {
            let footer = DFParquetMetadata::new(store.as_ref(), &m)
                .with_file_metadata_cache(Some(footers))
                .fetch_metadata()
                .await
                .map_err(ApiError::internal)?;
            Ok::<_, ApiError>(span(&footer).map(|(rows, oldest_ms, newest_ms)| Landed {
                key: m.location.to_string(),
                written_ms: m.last_modified.timestamp_millis(),
                rows,
                oldest_ms,
                newest_ms,
            }))
        }
    });
    let mut out: Vec<Landed> = futures::stream::iter(reads)
        .buffered(CONCURRENCY)
        .try_filter_map(|l| async move { Ok(l) })
        .try_collect()
        .await?;
    out.sort_by(|a, b| b.written_ms.cmp(&a.written_ms).then(a.key.cmp(&b.key)));
    Ok(out)
}

/// Rows, oldest and newest `ts` of a file, from its row groups' statistics.
fn span(footer: &ParquetMetaData) -> Option<(i64, i64, i64)> {
    let (mut rows, mut lo, mut hi) = (0, i64::MAX, i64::MIN);
    for rg in footer.row_groups() {
        rows += rg.num_rows();
        let col = rg
            .columns()
            .iter()
            .find(|c| c.column_path().string() == "ts")?;
        let Some(Statistics::Int64(s)) = col.statistics() else {
            return None;
        };
        lo = lo.min(*s.min_opt()?);
        hi = hi.max(*s.max_opt()?);
    }
    (rows > 0).then_some((rows, lo, hi))
}

/// The `q`-quantile (nearest rank) of sorted values.
pub fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.95), Some(95));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.95), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
