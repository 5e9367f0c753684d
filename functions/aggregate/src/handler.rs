//! The aggregate handler: Lambda's Kafka event -> core batches -> lake objects, written before it returns.

use std::future::Future;

use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
use damselfly_contract::event::decode_base64;
use damselfly_contract::{Partition, Retryable};
use damselfly_core::encode::EncodeError;
use damselfly_core::ledger::PartitionWrite;
use damselfly_core::{
    BatchStats, InputRecord, Lake, LakeError, PartitionBatch, Rejection, Validation,
};
use serde::{Deserialize, Serialize};

use crate::Config;

/// The aggregate function with its injected lake.
#[derive(Debug, Clone)]
pub struct Aggregate {
    lake: Lake,
    limits: Validation,
    tail_expiry: std::time::Duration,
    max_tail_series: usize,
}

/// What one invocation did; returned to the caller as the function's JSON result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AggregateSummary {
    /// Record, sample and rejection counts of the records written now.
    #[serde(flatten)]
    pub stats: BatchStats,
    /// Records the lake already held, skipped (a retry, or a replay after an offset reset).
    pub skipped: u64,
    /// Topic-partitions in the event.
    pub partitions: usize,
    /// Objects written to the lake.
    pub objects: usize,
    /// Objects of an earlier attempt that had decided but not published, published now (see
    /// `damselfly_core::ledger`).
    pub rolled_forward: usize,
    /// Objects of an earlier attempt of the previous protocol removed.
    pub removed: usize,
}

impl std::ops::AddAssign for AggregateSummary {
    fn add_assign(&mut self, o: Self) {
        self.stats += o.stats;
        self.skipped += o.skipped;
        self.partitions += o.partitions;
        self.objects += o.objects;
        self.rolled_forward += o.rolled_forward;
        self.removed += o.removed;
    }
}

impl damselfly_contract::Summary for AggregateSummary {
    fn merge(&mut self, later: &Self) {
        *self += later.clone();
    }
}

/// The name the aggregate function's state objects are kept under in the lake.
pub const WRITER: &str = "aggregate";

/// Why an invocation failed; the event source retries the whole batch.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The lake could not be written: transient, retry the batch.
    #[error("writing the lake: {0}")]
    Lake(#[from] LakeError),
    /// The batch could not be encoded: a bug, retrying will not help.
    #[error("encoding the batch: {0}")]
    Encode(#[from] EncodeError),
    /// The blocking encode task died.
    #[error("encode task failed: {0}")]
    Task(String),
    /// The invocation's payload is not a Kafka event.
    #[error("not a Kafka event: {0}")]
    Event(String),
}

impl Retryable for HandlerError {
    fn is_retryable(&self) -> bool {
        matches!(self, HandlerError::Lake(_) | HandlerError::Task(_))
    }
}

impl damselfly_contract::Handler for Aggregate {
    type Summary = AggregateSummary;
    type Error = HandlerError;

    fn handle(
        &self,
        event: KafkaEvent,
    ) -> impl Future<Output = Result<AggregateSummary, HandlerError>> + Send {
        Aggregate::handle(self, event)
    }
}

impl Aggregate {
    /// A handler writing to `lake` with the given validation limits (and the default tail expiry).
    pub fn new(lake: Lake, limits: Validation) -> Self {
        Self {
            lake,
            limits,
            tail_expiry: crate::config::DEFAULT_TAIL_EXPIRY,
            max_tail_series: crate::config::DEFAULT_MAX_TAIL_SERIES,
        }
    }

    /// Opens the configured lake.
    pub fn from_config(config: &Config) -> Result<Self, LakeError> {
        Ok(Self::new(Lake::open(&config.lake)?, config.limits.clone())
            .with_tail_limits(config.tail_expiry, config.max_tail_series))
    }

    /// The handler with another counter-tail expiry and cap per partition (see [`Config`]).
    pub fn with_tail_limits(
        self,
        tail_expiry: std::time::Duration,
        max_tail_series: usize,
    ) -> Self {
        Self {
            tail_expiry,
            max_tail_series,
            ..self
        }
    }

    /// The lake this handler writes.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Processes an event as Lambda delivers it (JSON): record timestamps the event types cannot
    /// hold are read as 0 first (see `damselfly_schemas::lambda_event`), then [`handle`](Self::handle).
    pub async fn handle_json(
        &self,
        mut payload: serde_json::Value,
    ) -> Result<AggregateSummary, HandlerError> {
        damselfly_schemas::lambda_event::clamp_timestamps(&mut payload);
        let event: KafkaEvent =
            serde_json::from_value(payload).map_err(|e| HandlerError::Event(e.to_string()))?;
        self.handle(event).await
    }

    /// Processes one event: every record lands in `raw`/`rollup_1m` or in `dlq`, or is skipped
    /// because the lake already holds it; returns once all is written, each topic-partition under
    /// the lake's exactly-once protocol.
    pub async fn handle(&self, event: KafkaEvent) -> Result<AggregateSummary, HandlerError> {
        let mut summary = AggregateSummary::default();
        let written = futures::future::try_join_all(
            damselfly_contract::partitions(event)
                .into_iter()
                .map(|p| self.write_partition(p)),
        )
        .await?;
        for s in written {
            summary += s;
        }
        tracing::debug!(
            records = summary.stats.records,
            samples = summary.stats.samples,
            rejected = summary.stats.rejected,
            skipped = summary.skipped,
            partitions = summary.partitions,
            objects = summary.objects,
            rolled_forward = summary.rolled_forward,
            "batch written"
        );
        Ok(summary)
    }

    /// Settles the partition's previous write, drops the records the lake already holds, encodes
    /// the rest from the partition's counter tail and writes them.
    async fn write_partition(&self, p: Partition) -> Result<AggregateSummary, HandlerError> {
        let Partition {
            topic,
            partition,
            records,
        } = p;
        if records.is_empty() {
            return Ok(AggregateSummary::default());
        }
        let mut ledger = self.lake.ledger(WRITER, &topic, partition).await?;
        let settled = ledger.settle().await?;
        let total = records.len();
        let fresh: Vec<KafkaRecord> = records
            .into_iter()
            .filter(|r| !ledger.holds(r.offset))
            .collect();
        let summary = AggregateSummary {
            partitions: 1,
            skipped: (total - fresh.len()) as u64,
            rolled_forward: settled.rolled_forward,
            removed: settled.removed,
            ..Default::default()
        };
        if summary.skipped > 0 {
            tracing::info!(
                %topic, partition, skipped = summary.skipped, next_offset = ?ledger.next_offset(),
                "records the lake already holds skipped (a retry, or a replay after an offset reset)"
            );
        }
        let mut summary = summary;
        let before = ledger.take_tail();
        let (limits, now_ms) = (self.limits.clone(), chrono::Utc::now().timestamp_millis());
        let (expiry, max_series) = (self.tail_expiry, self.max_tail_series);
        let name = topic.clone();
        let (batch, objects, tail) = tokio::task::spawn_blocking(move || {
            let batch = decode_partition(&name, partition, &fresh, now_ms, &limits);
            let mut tail = before;
            let objects = batch.objects(&mut tail)?;
            let expired = tail.expire(expiry);
            if expired > 0 {
                tracing::debug!(expired, "silent counter series left the partition's tail");
            }
            let dropped = tail.cap(max_series);
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    max_series,
                    "more counter series than a partition keeps: the ones seen longest ago were forgotten (their next sample has no rate); raise DAMSELFLY_MAX_TAIL_SERIES if the fleet is really this large"
                );
            }
            Ok::<_, EncodeError>((batch, objects, tail))
        })
        .await
        .map_err(|e| HandlerError::Task(e.to_string()))??;
        summary.stats = batch.stats();
        let (Some(first_offset), Some(last)) = (batch.first_offset, batch.last_offset) else {
            return Ok(summary);
        };
        let write = PartitionWrite {
            topic,
            partition,
            first_offset,
            next_offset: last + 1,
            objects,
            tail,
        };
        summary.objects = ledger.write(write).await?.written;
        Ok(summary)
    }
}

/// Decodes one topic-partition's records, in offset order, into a batch (CPU work, no I/O).
pub fn decode_partition(
    topic: &str,
    partition: i32,
    records: &[KafkaRecord],
    now_ms: i64,
    limits: &Validation,
) -> PartitionBatch {
    let mut b = PartitionBatch::new(topic, partition);
    for r in records {
        let key = r.key.as_deref().map(decode_base64);
        let value = r.value.as_deref().map(decode_base64);
        let rec = |key, value| InputRecord {
            topic,
            partition,
            offset: r.offset,
            timestamp_ms: r.timestamp.0.timestamp_millis(),
            key,
            value,
        };
        match (key.transpose(), value.transpose()) {
            (Ok(k), Ok(v)) => b.push(&rec(k.as_deref(), v.as_deref()), now_ms, limits),
            (Err(e), _) | (_, Err(e)) => {
                let raw = r.value.as_deref().map(str::as_bytes);
                b.reject(
                    &rec(None, raw),
                    &Rejection::Envelope(format!("key or value is not base64: {e}")),
                )
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::sync::Arc;

    use arrow_array::{Array, Int64Array, StringArray};
    use aws_lambda_events::encodings::MillisecondTimestamp;
    use damselfly_core::LakeLocation;
    use object_store::ObjectStoreExt as _;
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    const NOW: i64 = 1_763_737_230_000; // 2025-11-21T15:00:30Z

    fn record(partition: i64, offset: i64, key: &str, value: &[u8]) -> KafkaRecord {
        let mut r = KafkaRecord::default();
        r.topic = Some("metrics".into());
        r.partition = partition;
        r.offset = offset;
        r.timestamp = MillisecondTimestamp(chrono::DateTime::from_timestamp_millis(NOW).unwrap());
        r.timestamp_type = Some("CREATE_TIME".into());
        r.key = Some(base64::engine::general_purpose::STANDARD.encode(key));
        r.value = Some(base64::engine::general_purpose::STANDARD.encode(value));
        r
    }

    fn message(vm: &str, ts: i64, cpu: f64) -> Vec<u8> {
        format!(
            r#"{{"v":1,"ts":{ts},"tags":{{"ns":"ns1","mcis":"web","vm":"{vm}","csp":"aws","region":"r1","os":"linux"}},
               "metrics":{{"cpu_utilization":{cpu}}},"devices":{{"eth0":{{"bytes_in":100,"bytes_out":50}}}}}}"#
        )
        .into_bytes()
    }

    fn event(records: Vec<KafkaRecord>) -> KafkaEvent {
        let mut e = KafkaEvent::default();
        e.event_source = Some("SelfManagedKafka".into());
        for r in records {
            e.records
                .entry(format!("metrics-{}", r.partition))
                .or_default()
                .push(r);
        }
        e
    }

    fn handler() -> (Aggregate, Arc<InMemory>) {
        let store = Arc::new(InMemory::new());
        let lake = Lake::with_store(LakeLocation::Local("/mem".into()), store.clone());
        let limits = Validation {
            max_past: std::time::Duration::from_secs(u32::MAX as u64),
            ..Default::default()
        };
        (Aggregate::new(lake, limits), store)
    }

    async fn read(store: &InMemory, key: &str) -> arrow_array::RecordBatch {
        let bytes = store.get(&key.into()).await.unwrap().bytes().await.unwrap();
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        reader.next().unwrap().unwrap()
    }

    #[tokio::test]
    async fn writes_raw_rollup_and_dlq_under_deterministic_keys() {
        let (h, store) = handler();
        let ev = event(vec![
            record(3, 40, "vm-b", &message("vm-b", NOW - 60_000, 10.0)),
            record(3, 41, "vm-a", &message("vm-a", NOW - 60_000, 30.0)),
            record(3, 42, "vm-x", b"{not json"),
            record(3, 43, "vm-a", &message("vm-a", NOW - 50_000, 50.0)),
        ]);
        let summary = h.handle(ev).await.unwrap();
        assert_eq!(
            summary.stats,
            BatchStats {
                records: 4,
                samples: 9,
                rejected: 1
            }
        );
        assert_eq!((summary.partitions, summary.objects), (1, 3));
        assert_eq!(
            h.lake().list("").await.unwrap(),
            [
                "_state/aggregate/metrics+3.json",
                "dlq/dt=2025-11-21/hour=15/metrics+3+0000000040.parquet",
                "raw/dt=2025-11-21/hour=14/metrics+3+0000000040.parquet",
                "rollup_1m/dt=2025-11-21/hour=14/metrics+3+0000000040.parquet",
            ]
        );

        let raw = read(
            &store,
            "raw/dt=2025-11-21/hour=14/metrics+3+0000000040.parquet",
        )
        .await;
        assert_eq!(raw.num_rows(), 9);
        let vms = raw
            .column_by_name("vm")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let metrics = raw
            .column_by_name("metric")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let order: Vec<_> = (0..raw.num_rows())
            .map(|i| (vms.value(i), metrics.value(i)))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "raw rows are sorted by vm, metric");

        let rollup = read(
            &store,
            "rollup_1m/dt=2025-11-21/hour=14/metrics+3+0000000040.parquet",
        )
        .await;
        // vm-a and vm-b x 3 series, one minute each (vm-a's two samples fall in one window), plus
        // vm-a's two counter rates (vm-b has a single sample: no rate yet).
        let metric = rollup
            .column_by_name("metric")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let counts = rollup
            .column_by_name("count")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let rates: Vec<(&str, i64)> = (0..rollup.num_rows())
            .filter(|i| metric.value(*i).ends_with("_rate"))
            .map(|i| (metric.value(i), counts.value(i)))
            .collect();
        assert_eq!(rates, [("bytes_in_rate", 1), ("bytes_out_rate", 1)]);
        assert_eq!(rollup.num_rows(), 6 + rates.len());
        let value_samples: i64 = (0..rollup.num_rows())
            .filter(|i| !metric.value(*i).ends_with("_rate"))
            .map(|i| counts.value(i))
            .sum();
        assert_eq!(value_samples, 9);

        let dlq = read(
            &store,
            "dlq/dt=2025-11-21/hour=15/metrics+3+0000000040.parquet",
        )
        .await;
        let reason = dlq
            .column_by_name("reason")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(
            reason.value(0).starts_with(
                "not a native v1 message, Telegraf JSON or Influx line protocol: invalid JSON"
            ),
            "{}",
            reason.value(0)
        );
        let offset = dlq
            .column_by_name("offset")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offset.value(0), 42);
    }

    #[tokio::test]
    async fn a_retry_or_a_replay_skips_what_the_lake_holds() {
        let (h, _store) = handler();
        let ev = event(vec![record(0, 7, "vm-a", &message("vm-a", NOW, 1.0))]);
        let first = h.handle(ev.clone()).await.unwrap();
        assert_eq!((first.skipped, first.objects), (0, 2));
        let objects = h.lake().list("").await.unwrap();
        let again = h.handle(ev).await.unwrap();
        assert_eq!(
            (again.skipped, again.objects, again.stats.records),
            (1, 0, 0)
        );
        assert_eq!(h.lake().list("").await.unwrap(), objects);
        // A replay from the beginning with one new record: only the new one is written.
        let replay = event(vec![
            record(0, 7, "vm-a", &message("vm-a", NOW, 1.0)),
            record(0, 8, "vm-a", &message("vm-a", NOW + 2_000, 2.0)),
        ]);
        let s = h.handle(replay).await.unwrap();
        assert_eq!(
            (s.skipped, s.stats.records, s.stats.samples),
            (1, 1, first.stats.samples)
        );
        assert!(
            h.lake()
                .list("raw")
                .await
                .unwrap()
                .iter()
                .any(|k| k.ends_with("+0000000008.parquet")),
            "the new record's batch is named by its own first offset"
        );
    }

    #[tokio::test]
    async fn a_record_timestamp_out_of_range_does_not_fail_its_event() {
        let (h, _) = handler();
        let mut ev = serde_json::to_value(event(vec![
            record(0, 1, "vm-a", &message("vm-a", NOW, 1.0)),
            record(0, 2, "vm-a", &message("vm-a", NOW + 2_000, 2.0)),
        ]))
        .unwrap();
        ev["records"]["metrics-0"][1]["timestamp"] = i64::MAX.into();
        assert!(
            serde_json::from_value::<KafkaEvent>(ev.clone()).is_err(),
            "the event types alone refuse it"
        );
        let s = h.handle_json(ev).await.unwrap();
        assert_eq!((s.stats.records, s.stats.rejected), (2, 0));
        let e = h
            .handle_json(serde_json::json!({"records": 7}))
            .await
            .unwrap_err();
        assert!(!e.is_retryable(), "{e}");
    }

    /// A message of `devices` made-up interfaces, one counter each.
    fn many_devices(vm: &str, devices: usize) -> Vec<u8> {
        let devs: Vec<String> = (0..devices)
            .map(|d| format!(r#""veth{d}":{{"bytes_in":{d}}}"#))
            .collect();
        format!(
            r#"{{"v":1,"ts":{NOW},"tags":{{"ns":"ns1","mcis":"web","vm":"{vm}"}},"devices":{{{}}}}}"#,
            devs.join(",")
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn hostile_cardinality_is_bounded_per_message_and_per_partition() {
        let (mut h, store) = handler();
        // Per message: at the limit of devices accepted, past it rejected with the reason.
        let limit = damselfly_schemas::wire::MAX_DEVICES;
        let s = h
            .handle(event(vec![
                record(0, 0, "vm-a", &many_devices("vm-a", limit)),
                record(0, 1, "vm-b", &many_devices("vm-b", limit + 1)),
            ]))
            .await
            .unwrap();
        assert_eq!((s.stats.samples, s.stats.rejected), (limit as u64, 1));
        let dlq = h.lake().list("dlq").await.unwrap();
        let reason = read(&store, &dlq[0]).await;
        let reason = reason
            .column_by_name("reason")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_owned();
        assert!(
            reason.contains("1025 devices, over the limit of 1024"),
            "{reason}"
        );

        // Per partition: a flood of made-up VMs leaves at most the cap of counter series in the
        // partition's state, the newest ones.
        h.max_tail_series = 500;
        let flood: Vec<KafkaRecord> = (0..2_000)
            .map(|i| {
                let vm = format!("vm-flood-{i}");
                let msg = format!(
                    r#"{{"v":1,"ts":{},"tags":{{"ns":"ns1","mcis":"web","vm":"{vm}"}},"devices":{{"eth0":{{"bytes_in":1}}}}}}"#,
                    NOW + i
                );
                record(1, i, &vm, msg.as_bytes())
            })
            .collect();
        let s = h.handle(event(flood)).await.unwrap();
        assert_eq!(s.stats.samples, 2_000);
        // Read as the ledger stores it (zstd-compressed JSON), through a lake of its own.
        let state: damselfly_core::ledger::PartitionState =
            Lake::with_store(LakeLocation::Local("/mem".into()), store.clone())
                .read_state(&object_store::path::Path::from(
                    damselfly_core::ledger::state_key(WRITER, "metrics", 1),
                ))
                .await
                .unwrap()
                .0
                .expect("the partition's state");
        assert_eq!(state.tail.0.len(), 500);
        assert!(
            state
                .tail
                .last("vm-flood-1999", "bytes_in", "eth0")
                .is_some()
        );
        assert!(state.tail.last("vm-flood-0", "bytes_in", "eth0").is_none());
    }

    #[tokio::test]
    async fn bad_base64_goes_to_dlq() {
        let (h, _) = handler();
        let mut r = record(1, 5, "vm-a", b"x");
        r.value = Some("%%% not base64".into());
        let summary = h.handle(event(vec![r])).await.unwrap();
        assert_eq!(
            summary.stats,
            BatchStats {
                records: 1,
                samples: 0,
                rejected: 1
            }
        );
    }
}
