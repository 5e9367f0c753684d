//! Redrive: replays the failed batches an on-failure destination kept through a function, each once.
//!
//! A record is a JSON on-failure invocation record: this runner's [`FailedBatch`], or Lambda's
//! own S3 on-failure object for a Kafka trigger; both carry the whole event as `payload` (an
//! object, or the same as a JSON string). Record timestamps the event types cannot hold are read
//! as 0 first ([`damselfly_schemas::lambda_event`]).
//!
//! The protocol, per source:
//! - `file:///DIR` and `s3://BUCKET/PREFIX`: every object below the prefix, in key order, except
//!   those under a `redriven/` folder. After the function succeeded with a record, the record is
//!   copied to `redriven/` beside it and then deleted, so the next redrive does not see it.
//! - `kafka://TOPIC`: every partition from the redrive group's committed offset (else the
//!   beginning) up to the end offsets read at the start. After the function succeeded with a
//!   record, its offset is committed. The first record that keeps failing stops the partition:
//!   committing past it would lose it.
//!
//! A retryable function error is retried with doubling delays; a record still failing is left
//! where it is and counted as failed, and a record that is not an on-failure record is counted as
//! invalid and left alone.
//!
//! Failure windows. Dying after the function succeeded but before the record was moved (or its
//! offset committed) makes the next redrive invoke the function again with the same batch: the
//! aggregate function's ledger holds those offsets by then and skips them (see
//! `damselfly_core::ledger`: a batch that went to on-failure is a gap of its partition, which
//! only the first successful redrive fills), so the lake gets every sample once. The alarm
//! function evaluates again, so its notifications may repeat. Dying between the copy and the
//! delete leaves the record in both places; the next redrive finds it again and the ledger
//! skips it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use aws_lambda_events::event::kafka::KafkaEvent;
use damselfly_kafka::{Connection, KafkaContext, SettingsError};
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::config::OnFailure;
use crate::destination::{DestinationError, open_store};
use crate::function::{Function, FunctionError};

/// The folder, beside a redriven record, it is moved into.
pub const REDRIVEN: &str = "redriven";

/// The consumer group a Kafka redrive commits its progress under, by default.
pub const DEFAULT_GROUP: &str = "damselfly-redrive";

/// How a redrive runs.
#[derive(Debug, Clone)]
pub struct RedriveOptions {
    /// Invocations of one record before it counts as failed (at least 1).
    pub attempts: u32,
    /// The delay before the first retry; it doubles with each one (up to 30 s), each stretched by
    /// a random factor in [1, 2).
    pub first_delay: Duration,
    /// The consumer group of a Kafka source.
    pub group: String,
    /// How long a Kafka call may take.
    pub broker_timeout: Duration,
}

impl Default for RedriveOptions {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            group: DEFAULT_GROUP.to_owned(),
            broker_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts of a redrive so far (read live for progress).
#[derive(Debug, Default)]
pub struct RedriveStats {
    /// On-failure records found.
    pub found: AtomicU64,
    /// Records the function processed successfully.
    pub redriven: AtomicU64,
    /// Kafka records in the redriven batches.
    pub records: AtomicU64,
    /// Records the function still failed after every attempt (left in place).
    pub failed: AtomicU64,
    /// Objects or messages that are not on-failure records (left in place).
    pub invalid: AtomicU64,
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedriveSummary {
    /// On-failure records found.
    pub found: u64,
    /// Records the function processed successfully (and that were moved or committed).
    pub redriven: u64,
    /// Kafka records in the redriven batches.
    pub records: u64,
    /// Records the function still failed after every attempt (left in place).
    pub failed: u64,
    /// Objects or messages that are not on-failure records (left in place).
    pub invalid: u64,
}

impl RedriveStats {
    /// Counts a batch the function processed.
    fn redriven(&self, event: &KafkaEvent) {
        self.redriven.fetch_add(1, Relaxed);
        self.records.fetch_add(record_count(event), Relaxed);
    }

    /// The counts as a summary.
    pub fn summary(&self) -> RedriveSummary {
        RedriveSummary {
            found: self.found.load(Relaxed),
            redriven: self.redriven.load(Relaxed),
            records: self.records.load(Relaxed),
            failed: self.failed.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
        }
    }
}

/// Why a redrive could not run (a failing record is counted, not an error).
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The source could not be opened.
    #[error(transparent)]
    Open(#[from] DestinationError),
    /// The Kafka connection settings cannot work.
    #[error("redrive source: {0}")]
    Settings(#[from] SettingsError),
    /// Listing, reading or moving records failed.
    #[error("redrive source: {0}")]
    Store(#[from] object_store::Error),
    /// A kafka:// source without brokers to reach it.
    #[error("redrive from kafka://{0} needs the brokers: set --brokers or KAFKA_BROKERS")]
    NoBrokers(String),
    /// Reading the Kafka topic or committing to it failed.
    #[error("redrive source: {0}")]
    Kafka(#[from] KafkaError),
}

/// The event inside an on-failure record, ready to invoke with.
pub fn parse_record(bytes: &[u8]) -> Result<KafkaEvent, String> {
    let mut record: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let mut payload = match record.get_mut("payload").map(Value::take) {
        Some(Value::String(s)) => {
            serde_json::from_str(&s).map_err(|e| format!("`payload` is not a JSON event: {e}"))?
        }
        Some(v @ Value::Object(_)) => v,
        _ => return Err("no `payload` object: not an on-failure record".to_owned()),
    };
    damselfly_schemas::lambda_event::clamp_timestamps(&mut payload);
    serde_json::from_value(payload).map_err(|e| format!("`payload` is not a Kafka event: {e}"))
}

/// Kafka records in an event.
fn record_count(event: &KafkaEvent) -> u64 {
    event.records.values().map(|r| r.len() as u64).sum()
}

/// Invokes `function` with `event`, retrying a retryable error; the last error if all failed.
async fn invoke(
    function: &dyn Function,
    event: &KafkaEvent,
    opts: &RedriveOptions,
) -> Result<(), FunctionError> {
    let mut delays = crate::worker::retry_delays(opts.first_delay);
    let mut attempt = 1;
    loop {
        match function.invoke(event.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.retryable && attempt < opts.attempts.max(1) => {
                tracing::warn!(attempt, error = %e, "redriven batch failed; retrying");
                tokio::time::sleep(delays.next().unwrap_or(opts.first_delay)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Replays every on-failure record of `from` through `function` (see the module docs); a
/// `kafka://` source is read over `kafka`.
pub async fn redrive(
    from: &OnFailure,
    kafka: Option<&Connection>,
    function: Arc<dyn Function>,
    opts: &RedriveOptions,
    stats: &RedriveStats,
) -> Result<RedriveSummary, RedriveError> {
    match from {
        OnFailure::Kafka { topic } => {
            let kafka = kafka.ok_or_else(|| RedriveError::NoBrokers(topic.clone()))?;
            redrive_topic(topic, kafka, &*function, opts, stats).await?
        }
        target => {
            let (store, prefix, _) = open_store(target, false)?;
            redrive_store(&*store, &prefix, &*function, opts, stats).await?;
        }
    }
    Ok(stats.summary())
}

/// Whether a key lies in a `redriven/` folder.
fn is_redriven(key: &Path) -> bool {
    key.parts().any(|p| p.as_ref() == REDRIVEN)
}

/// Where a redriven record is moved: `redriven/` beside it.
fn redriven_key(key: &Path) -> Path {
    let parts: Vec<_> = key.parts().collect();
    let (name, parent) = parts.split_last().expect("listed keys are not empty");
    Path::from_iter(parent.iter().cloned())
        .join(REDRIVEN)
        .join(name.clone())
}

async fn redrive_store(
    store: &dyn ObjectStore,
    prefix: &Path,
    function: &dyn Function,
    opts: &RedriveOptions,
    stats: &RedriveStats,
) -> Result<(), RedriveError> {
    let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
    let mut keys: Vec<Path> = store
        .list(prefix)
        .map_ok(|m| m.location)
        .try_filter(|k| std::future::ready(!is_redriven(k)))
        .try_collect()
        .await?;
    keys.sort();
    for key in keys {
        let bytes = store.get(&key).await?.bytes().await?;
        let event = match parse_record(&bytes) {
            Ok(e) => e,
            Err(why) => {
                stats.invalid.fetch_add(1, Relaxed);
                tracing::warn!(%key, %why, "not an on-failure record: left alone");
                continue;
            }
        };
        stats.found.fetch_add(1, Relaxed);
        match invoke(function, &event, opts).await {
            Ok(()) => {
                let to = redriven_key(&key);
                store.copy(&key, &to).await?;
                store.delete(&key).await?;
                stats.redriven(&event);
                tracing::info!(%key, moved_to = %to, records = record_count(&event), "batch redriven");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                tracing::error!(%key, error = %e, "redriven batch still fails: left in place");
            }
        }
    }
    Ok(())
}

async fn redrive_topic(
    topic: &str,
    kafka: &Connection,
    function: &dyn Function,
    opts: &RedriveOptions,
    stats: &RedriveStats,
) -> Result<(), RedriveError> {
    let mut cc = ClientConfig::new();
    cc.set("group.id", &opts.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    kafka.apply(&mut cc);
    let consumer: BaseConsumer<KafkaContext> = cc.create_with_context(KafkaContext::new(kafka)?)?;
    let t = opts.broker_timeout;
    let metadata = consumer.fetch_metadata(Some(topic), t)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|m| m.partitions().iter().map(|p| p.id()))
        .collect();
    let mut all = TopicPartitionList::new();
    for &p in &partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(all, t)?;
    // Where each partition starts and the end it reads to.
    let mut todo: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, t)?;
        let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        if start < high {
            todo.insert(p, (start, high));
        }
    }
    for (p, (start, end)) in todo {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        consumer.assign(&tpl)?;
        let mut next = start;
        while next < end {
            let msg = match consumer.poll(t) {
                Some(m) => m?,
                None => {
                    return Err(KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    )
                    .into());
                }
            };
            next = msg.offset() + 1;
            let Some(bytes) = msg.payload() else {
                stats.invalid.fetch_add(1, Relaxed);
                commit(&consumer, topic, p, next)?;
                continue;
            };
            let event = match parse_record(bytes) {
                Ok(e) => e,
                Err(why) => {
                    stats.invalid.fetch_add(1, Relaxed);
                    tracing::warn!(topic, partition = p, offset = msg.offset(), %why, "not an on-failure record: skipped");
                    commit(&consumer, topic, p, next)?;
                    continue;
                }
            };
            stats.found.fetch_add(1, Relaxed);
            match invoke(function, &event, opts).await {
                Ok(()) => {
                    commit(&consumer, topic, p, next)?;
                    stats.redriven(&event);
                    tracing::info!(
                        topic,
                        partition = p,
                        offset = msg.offset(),
                        records = record_count(&event),
                        "batch redriven"
                    );
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Relaxed);
                    tracing::error!(
                        topic, partition = p, offset = msg.offset(), error = %e,
                        "redriven batch still fails: this partition stops here (committing past it would lose it)"
                    );
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Commits `next` as the redrive group's position in `topic`/`partition`.
fn commit(
    consumer: &BaseConsumer<KafkaContext>,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
    consumer.commit(&tpl, CommitMode::Sync)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt as _, PutPayload};

    use super::*;

    /// Records the events it is invoked with; fails the first `fail` invocations.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<KafkaEvent>>,
        fail: AtomicU64,
        retryable: bool,
    }

    #[async_trait::async_trait]
    impl Function for Recorder {
        async fn invoke(&self, event: KafkaEvent) -> Result<Value, FunctionError> {
            if self
                .fail
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(FunctionError {
                    message: "lake down".into(),
                    retryable: self.retryable,
                });
            }
            self.seen.lock().unwrap().push(event);
            Ok(Value::Null)
        }
    }

    fn record(offset: i64, payload_as_string: bool) -> Vec<u8> {
        let event = serde_json::json!({
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": "127.0.0.1:9092",
            "records": {"metrics-0": [
                {"topic": "metrics", "partition": 0, "offset": offset, "timestamp": i64::MAX,
                 "timestampType": "CREATE_TIME", "value": "e30=", "headers": []}
            ]}
        });
        let payload = if payload_as_string {
            Value::String(event.to_string())
        } else {
            event
        };
        serde_json::to_vec(&serde_json::json!({
            "version": "1.0",
            "requestContext": {"condition": "RetryAttemptsExhausted"},
            "payload": payload,
        }))
        .unwrap()
    }

    fn opts() -> RedriveOptions {
        RedriveOptions {
            attempts: 3,
            first_delay: Duration::from_millis(1),
            ..RedriveOptions::default()
        }
    }

    #[test]
    fn records_parse_with_the_payload_inline_or_as_a_string() {
        for as_string in [false, true] {
            let ev = parse_record(&record(7, as_string)).unwrap();
            let r = &ev.records["metrics-0"][0];
            assert_eq!(r.offset, 7);
            assert_eq!(
                r.timestamp.0.timestamp_millis(),
                0,
                "out-of-range time read as 0"
            );
        }
        let err = parse_record(br#"{"version":"1.0"}"#).unwrap_err();
        assert!(err.contains("payload"), "{err}");
        assert!(parse_record(b"nope").unwrap_err().contains("not JSON"));
    }

    #[tokio::test]
    async fn a_store_redrive_invokes_each_record_once_and_moves_it_aside() {
        let store = InMemory::new();
        for (k, body) in [
            ("dlq/grp/metrics+0+10.json", record(10, false)),
            ("dlq/grp/metrics+0+20.json", record(20, true)),
            ("dlq/grp/redriven/metrics+0+5.json", record(5, false)),
            ("dlq/grp/junk.txt", b"hello".to_vec()),
        ] {
            store
                .put(&Path::from(k), PutPayload::from(body))
                .await
                .unwrap();
        }
        let f = Recorder {
            fail: AtomicU64::new(2),
            retryable: true,
            ..Default::default()
        };
        let stats = RedriveStats::default();
        redrive_store(&store, &Path::from("dlq"), &f, &opts(), &stats)
            .await
            .unwrap();
        let s = stats.summary();
        assert_eq!(
            (s.found, s.redriven, s.records, s.failed, s.invalid),
            (2, 2, 2, 0, 1),
            "{s:?}"
        );
        let offsets: Vec<i64> = f
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.records["metrics-0"][0].offset)
            .collect();
        assert_eq!(
            offsets,
            [10, 20],
            "in key order, each once after the retries"
        );
        let mut left: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        left.sort();
        assert_eq!(
            left,
            [
                "dlq/grp/junk.txt",
                "dlq/grp/redriven/metrics+0+10.json",
                "dlq/grp/redriven/metrics+0+20.json",
                "dlq/grp/redriven/metrics+0+5.json",
            ]
        );
        // A second redrive finds nothing left to do.
        let again = RedriveStats::default();
        redrive_store(&store, &Path::from("dlq"), &f, &opts(), &again)
            .await
            .unwrap();
        assert_eq!(again.summary().found, 0);
        assert_eq!(f.seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_record_that_keeps_failing_stays_where_it_is() {
        let store = InMemory::new();
        let key = Path::from("metrics+0+10.json");
        store
            .put(&key, PutPayload::from(record(10, false)))
            .await
            .unwrap();
        let f = Recorder {
            fail: AtomicU64::new(1),
            retryable: false,
            ..Default::default()
        };
        let stats = RedriveStats::default();
        redrive_store(&store, &Path::from(""), &f, &opts(), &stats)
            .await
            .unwrap();
        assert_eq!(
            (stats.summary().failed, stats.summary().redriven),
            (1, 0),
            "a non-retryable error is not retried"
        );
        assert!(store.head(&key).await.is_ok(), "the record stays");
    }
}
