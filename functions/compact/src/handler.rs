//! The compaction handler: a scheduled event in, one compaction run over the lake, its summary out.

use damselfly_core::compact::{self, CompactConfig, CompactError, CompactReport};
use damselfly_core::{Lake, LakeError};
use serde::Serialize;

use crate::Config;

/// How far an event's `time` may run ahead of this function's clock: EventBridge stamps events
/// when it sends them, so more means a hand-made event, which could expire the whole lake.
pub const MAX_EVENT_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// The compaction function with its lake and settings.
#[derive(Debug, Clone)]
pub struct Compactor {
    lake: Lake,
    config: Config,
}

/// What one invocation did; returned as the function's JSON result.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CompactSummary {
    /// The time the run took as now (ms since the epoch): the event's `time`, else the clock.
    pub now_ms: i64,
    /// Whether the event asked for a dry run (`{"dry_run": true}`): nothing was changed.
    pub dry_run: bool,
    /// What was done.
    #[serde(flatten)]
    pub report: CompactReport,
}

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The run failed part way; the lake stays readable and the next run continues.
    #[error("compaction: {0}")]
    Compact(#[from] CompactError),
    /// The event is not a usable schedule event.
    #[error("not a schedule event: {0}")]
    Event(String),
    /// Some steps failed and were skipped (each logged); the rest was done.
    #[error(
        "{0} compaction steps failed and were skipped (see the log); the next run tries them again"
    )]
    Partial(u64),
}

impl damselfly_contract::Retryable for HandlerError {
    /// Whether invoking again with the same event may succeed.
    fn is_retryable(&self) -> bool {
        match self {
            HandlerError::Compact(e) => e.is_retryable(),
            HandlerError::Event(_) => false,
            HandlerError::Partial(_) => true,
        }
    }
}

impl Compactor {
    /// A handler over an opened lake.
    pub fn new(lake: Lake, config: Config) -> Self {
        Self { lake, config }
    }

    /// Opens the configured lake.
    pub fn from_config(config: Config) -> Result<Self, LakeError> {
        Ok(Self::new(Lake::open(&config.lake)?, config))
    }

    /// Runs once for an EventBridge (Scheduler) event, or any JSON object: `time` (RFC 3339), when
    /// present, is taken as now so that a retried event does the same work; `dry_run` plans only.
    pub async fn handle(&self, event: serde_json::Value) -> Result<CompactSummary, HandlerError> {
        let wall_ms = chrono::Utc::now().timestamp_millis();
        let now_ms = match event.get("time") {
            None | Some(serde_json::Value::Null) => wall_ms,
            Some(t) => t
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
                .ok_or_else(|| {
                    HandlerError::Event(format!("`time` {t} is not an RFC 3339 time"))
                })?,
        };
        let ahead = now_ms - wall_ms;
        if ahead > MAX_EVENT_SKEW.as_millis() as i64 {
            return Err(HandlerError::Event(format!(
                "`time` is {}s ahead of the clock (at most {}s is accepted): retention would expire \
                 partitions early; send the schedule's own event, or run `damselfly compact --now` by hand",
                ahead / 1000,
                MAX_EVENT_SKEW.as_secs()
            )));
        }
        let dry_run = event
            .get("dry_run")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let cfg = CompactConfig {
            grace: self.config.grace,
            lookback: self.config.lookback,
            retention: self.config.retention.clone(),
            merge_memory: self.config.merge_memory,
            ..CompactConfig::at(now_ms)
        };
        let plan = compact::plan(&self.lake, &cfg).await?;
        let report = if dry_run {
            plan.preview()
        } else {
            compact::execute(&self.lake, &cfg, &plan, |_| {}).await?
        };
        tracing::info!(
            now_ms,
            dry_run,
            partitions = report.partitions_compacted,
            files = report.files_merged,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            rollups_1h = report.rollups_1h,
            rollups_1d = report.rollups_1d,
            expired = report.partitions_expired,
            waiting = report.waiting,
            spilled_runs = report.spilled_runs,
            merge_peak_bytes = report.merge_peak_bytes,
            failed = report.failed,
            "compaction done"
        );
        if report.failed > 0 {
            // An error, so that the function's error metric (and its alarm) sees it.
            return Err(HandlerError::Partial(report.failed));
        }
        Ok(CompactSummary {
            now_ms,
            dry_run,
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use damselfly_contract::Retryable as _;
    use damselfly_core::ledger::PartitionWrite;
    use damselfly_core::{InputRecord, LakeLocation, PartitionBatch, Validation};

    /// 2025-11-21T09:00:00Z.
    const H9: i64 = 1_763_715_600_000;

    #[test]
    fn settles_batches_by_the_aggregate_functions_ledger() {
        assert_eq!(
            compact::DEFAULT_LEDGER_WRITER,
            damselfly_aggregate::handler::WRITER
        );
    }

    async fn write(lake: &Lake, first: i64, ts: i64) {
        let mut b = PartitionBatch::new("metrics", 0);
        let v = format!(
            r#"{{"v":1,"ts":{ts},"tags":{{"ns":"n","mcis":"m","vm":"vm-1"}},"metrics":{{"cpu_utilization":5}}}}"#
        );
        let rec = InputRecord {
            topic: "metrics",
            partition: 0,
            offset: first,
            timestamp_ms: ts,
            key: None,
            value: Some(v.as_bytes()),
        };
        b.push(&rec, ts, &Validation::default());
        let w = PartitionWrite {
            topic: "metrics".into(),
            partition: 0,
            first_offset: first,
            next_offset: first + 1,
            objects: b.objects(&mut Default::default()).unwrap(),
            tail: Default::default(),
        };
        lake.write_exactly_once(damselfly_aggregate::handler::WRITER, w)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_scheduled_event_compacts_as_of_its_time() {
        let lake = Lake::with_store(
            LakeLocation::Local("/mem".into()),
            Arc::new(object_store::memory::InMemory::new()),
        );
        for (first, ts) in [(0, H9 + 1_000), (1, H9 + 2_000), (2, H9 + 3 * 3_600_000)] {
            write(&lake, first, ts).await;
        }
        let config = Config::from_lookup(|k| (k == "LAKE").then(|| "/mem".to_owned())).unwrap();
        let handler = Compactor::new(lake.clone(), config);
        // As EventBridge Scheduler sends it, an hour after hour 10 ended.
        let event = |time: &str, dry: bool| {
            serde_json::json!({
                "version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
                "time": time, "region": "eu-west-1", "resources": [], "detail": {}, "dry_run": dry
            })
        };
        let dry = handler
            .handle(event("2025-11-21T11:00:00Z", true))
            .await
            .unwrap();
        assert!(dry.dry_run);
        assert_eq!((dry.report.files_merged, dry.report.bytes_after), (4, 0));
        assert_eq!(
            lake.list("raw").await.unwrap().len(),
            3,
            "a dry run changes nothing"
        );

        let s = handler
            .handle(event("2025-11-21T11:00:00Z", false))
            .await
            .unwrap();
        assert_eq!(s.now_ms, H9 + 2 * 3_600_000);
        assert_eq!(
            (s.report.partitions_compacted, s.report.files_merged),
            (2, 4)
        );
        assert_eq!(s.report.rollups_1h, 1);
        assert_eq!(
            lake.list("raw").await.unwrap(),
            vec![
                "raw/dt=2025-11-21/hour=09/compacted-000001.parquet",
                "raw/dt=2025-11-21/hour=12/metrics+0+0000000002.parquet"
            ]
        );
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["files_merged"], 4);

        let e = handler
            .handle(serde_json::json!({"time": "yesterday"}))
            .await
            .unwrap_err();
        assert!(
            !e.is_retryable() && e.to_string().contains("RFC 3339"),
            "{e}"
        );

        // A hand-made event from the far future would expire every partition: refused, and the
        // lake is untouched. A few minutes of clock skew are accepted.
        let before = lake.list("").await.unwrap();
        let future = chrono::Utc::now() + chrono::Duration::days(3650);
        let e = handler
            .handle(event(&future.to_rfc3339(), false))
            .await
            .unwrap_err();
        assert!(
            !e.is_retryable() && e.to_string().contains("ahead of the clock"),
            "{e}"
        );
        assert_eq!(lake.list("").await.unwrap(), before);
        let skewed = chrono::Utc::now() + chrono::Duration::seconds(60);
        handler
            .handle(event(&skewed.to_rfc3339(), true))
            .await
            .unwrap();
    }
}
