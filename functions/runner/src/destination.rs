//! On-failure destinations: a batch whose retries are exhausted is written there, with its error, before it is committed.

use damselfly_contract::event::{partition_key, split_partition_key};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::kafka::KafkaEvent;
use chrono::{DateTime, Utc};
use damselfly_kafka::{Connection, KafkaContext, SettingsError};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::config::OnFailure;
use crate::event::lambda_json;

fn lambda_payload<S: serde::Serializer>(event: &KafkaEvent, s: S) -> Result<S::Ok, S::Error> {
    lambda_json(event).serialize(s)
}

/// Why a batch counts as failed (Lambda's `requestContext.condition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// Every allowed retry failed.
    RetryAttemptsExhausted,
    /// The batch's oldest record passed the maximum record age.
    RecordAgeExceeded,
    /// The function reported an error that retrying cannot fix, and the runner was told to fail
    /// such batches at once (`fail_fast_non_retryable`; Lambda itself has no such condition).
    NonRetryableError,
}

/// Lambda's `requestContext` of an on-failure record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestContext {
    /// Why the batch failed.
    pub condition: Condition,
    /// Invocations of the batch (0 when it was too old to invoke).
    pub approximate_invoke_count: u32,
    /// The consumer group that failed it.
    pub consumer_group: String,
}

/// What the function said about its last attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseContext {
    /// The function's last error message.
    pub error_message: String,
    /// Whether the function marked it retryable.
    pub retryable: bool,
}

/// Where the failed records came from, per `topic-partition` (as Lambda's `KafkaBatchInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordsInfo {
    /// First offset in the batch.
    pub first_record_offset: i64,
    /// Its timestamp (ms since the epoch).
    pub first_record_timestamp: i64,
    /// Last offset in the batch.
    pub last_record_offset: i64,
    /// Its timestamp (ms since the epoch).
    pub last_record_timestamp: i64,
}

/// The batch's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchInfo {
    /// Records in the batch.
    pub batch_size: usize,
    /// The brokers it was read from.
    pub bootstrap_servers: String,
    /// Per `topic-partition`: first and last record.
    pub records_info: BTreeMap<String, RecordsInfo>,
}

/// One failed batch as written to the destination, modelled on Lambda's on-failure invocation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedBatch {
    /// Format version.
    pub version: String,
    /// When the batch was given up.
    pub timestamp: DateTime<Utc>,
    /// Why, how many invocations, which group.
    #[serde(rename = "requestContext")]
    pub request_context: RequestContext,
    /// The function's last error.
    #[serde(rename = "responseContext")]
    pub response_context: ResponseContext,
    /// When the first invocation started (absent when none was made).
    #[serde(rename = "firstAttemptAt")]
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// When the last invocation ended.
    #[serde(rename = "lastAttemptAt")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Where the records came from.
    #[serde(rename = "KafkaBatchInfo")]
    pub batch_info: BatchInfo,
    /// The whole event the function was invoked with (timestamps as numbers, as Lambda sends them).
    #[serde(serialize_with = "lambda_payload")]
    pub payload: KafkaEvent,
}

impl FailedBatch {
    /// The record of a failed batch of `messages` (in consumption order), invoked as `payload`.
    #[allow(clippy::too_many_arguments)]
    pub fn new<'a>(
        messages: impl IntoIterator<Item = &'a OwnedMessage>,
        payload: KafkaEvent,
        bootstrap: &str,
        group: &str,
        condition: Condition,
        attempts: u32,
        error: (String, bool),
        attempts_at: Option<(DateTime<Utc>, DateTime<Utc>)>,
    ) -> Self {
        let mut records_info: BTreeMap<String, RecordsInfo> = BTreeMap::new();
        let mut batch_size = 0;
        for m in messages {
            batch_size += 1;
            let ts = m.timestamp().to_millis().unwrap_or(0);
            records_info
                .entry(partition_key(m.topic(), m.partition()))
                .and_modify(|r| {
                    if m.offset() < r.first_record_offset {
                        (r.first_record_offset, r.first_record_timestamp) = (m.offset(), ts);
                    }
                    if m.offset() > r.last_record_offset {
                        (r.last_record_offset, r.last_record_timestamp) = (m.offset(), ts);
                    }
                })
                .or_insert(RecordsInfo {
                    first_record_offset: m.offset(),
                    first_record_timestamp: ts,
                    last_record_offset: m.offset(),
                    last_record_timestamp: ts,
                });
        }
        Self {
            version: "1.0".into(),
            timestamp: Utc::now(),
            request_context: RequestContext {
                condition,
                approximate_invoke_count: attempts,
                consumer_group: group.to_owned(),
            },
            response_context: ResponseContext {
                error_message: error.0,
                retryable: error.1,
            },
            first_attempt_at: attempts_at.map(|a| a.0),
            last_attempt_at: attempts_at.map(|a| a.1),
            batch_info: BatchInfo {
                batch_size,
                bootstrap_servers: bootstrap.to_owned(),
                records_info,
            },
            payload,
        }
    }

    /// A name for the batch, deterministic so that writing it again replaces it:
    /// `{topic}+{partition}+{first offset}` of its first `topic-partition`.
    pub fn name(&self) -> String {
        self.batch_info
            .records_info
            .iter()
            .next()
            .map(|(tp, r)| {
                let (topic, partition) = split_partition_key(tp);
                let partition = partition.unwrap_or(0);
                format!("{topic}+{partition}+{}", r.first_record_offset)
            })
            .unwrap_or_else(|| "empty".to_owned())
    }
}

/// An on-failure destination could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// Producing to the Kafka topic failed.
    #[error("on-failure kafka topic: {0}")]
    Kafka(#[from] KafkaError),
    /// The connection settings of the Kafka topic cannot work.
    #[error("on-failure kafka topic: {0}")]
    Settings(#[from] SettingsError),
    /// Writing the object failed.
    #[error("on-failure object store: {0}")]
    Store(#[from] object_store::Error),
    /// The local directory could not be created.
    #[error("on-failure directory {path}: {source}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An opened on-failure destination.
#[derive(Clone)]
pub enum Destination {
    /// A Kafka topic.
    Kafka {
        /// The producer.
        producer: FutureProducer<KafkaContext>,
        /// The topic.
        topic: String,
    },
    /// An object store (S3 or a local directory) and a key prefix.
    Store {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// Key prefix of every record.
        prefix: Path,
        /// The URL of the store's root (`s3://bucket`, `file:///dir`), for logs.
        root: String,
    },
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka { topic, .. } => write!(f, "Destination(kafka://{topic})"),
            Self::Store { root, prefix, .. } => write!(f, "Destination({root}/{prefix})"),
        }
    }
}

/// The object store of an `s3://` or `file://` target, the key prefix inside it, and its root URL
/// for logs; a missing directory is created when `create` is set, else it is an error.
pub(crate) fn open_store(
    target: &OnFailure,
    create: bool,
) -> Result<(Arc<dyn ObjectStore>, Path, String), DestinationError> {
    match target {
        OnFailure::S3 { bucket, prefix } => {
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            // LocalStack and other local S3s are plain HTTP.
            let endpoint =
                std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"));
            if endpoint.is_ok_and(|e| e.starts_with("http://")) {
                builder = builder.with_allow_http(true);
            }
            Ok((
                Arc::new(builder.build()?),
                Path::from(prefix.as_str()),
                format!("s3://{bucket}"),
            ))
        }
        OnFailure::Dir(dir) => {
            let made = if create {
                std::fs::create_dir_all(dir)
            } else {
                std::fs::metadata(dir).map(|_| ())
            };
            made.map_err(|source| DestinationError::Dir {
                path: dir.clone(),
                source,
            })?;
            Ok((
                Arc::new(LocalFileSystem::new_with_prefix(dir)?),
                Path::default(),
                target.to_string(),
            ))
        }
        OnFailure::Kafka { topic } => unreachable!("kafka://{topic} is not an object store"),
    }
}

impl Destination {
    /// Opens `target`; a Kafka topic is reached over the runner's own connection.
    pub fn open(
        target: &OnFailure,
        kafka: &Connection,
        group: &str,
    ) -> Result<Self, DestinationError> {
        Ok(match target {
            OnFailure::Kafka { topic } => {
                let mut cc = ClientConfig::new();
                cc.set("enable.idempotence", "true")
                    .set("compression.type", "zstd")
                    .set("message.max.bytes", "10000000")
                    .set("message.timeout.ms", "30000");
                kafka.apply(&mut cc);
                let context = KafkaContext::new(kafka)?;
                Self::Kafka {
                    producer: cc.create_with_context(context)?,
                    topic: topic.clone(),
                }
            }
            store => {
                let (store, prefix, root) = open_store(store, true)?;
                Self::Store {
                    store,
                    prefix: prefix.join(group),
                    root,
                }
            }
        })
    }

    /// Writes one failed batch; returns where it went.
    pub async fn send(
        &self,
        batch: &FailedBatch,
        timeout: Duration,
    ) -> Result<String, DestinationError> {
        let json = serde_json::to_vec(batch).expect("failed batches serialize");
        let name = batch.name();
        match self {
            Self::Kafka { producer, topic } => {
                let record = FutureRecord::to(topic).key(&name).payload(&json);
                let delivery = producer.send(record, timeout).await.map_err(|(e, _)| e)?;
                Ok(format!(
                    "kafka://{topic} partition {} offset {}",
                    delivery.partition, delivery.offset
                ))
            }
            Self::Store {
                store,
                prefix,
                root,
            } => {
                let path = prefix.clone().join(format!("{name}.json"));
                store.put(&path, PutPayload::from(json)).await?;
                Ok(format!("{}/{}", root.trim_end_matches('/'), path))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;
    use crate::event::kafka_event;

    fn msg(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"v".to_vec()),
            None,
            "metrics".into(),
            Timestamp::CreateTime(1_000 + offset),
            partition,
            offset,
            None,
        )
    }

    #[tokio::test]
    async fn a_failed_batch_lands_in_a_directory_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let target: OnFailure = format!("file://{}", dir.path().display()).parse().unwrap();
        let dest = Destination::open(
            &target,
            &damselfly_kafka::Connection::plaintext("b:9092"),
            "g",
        )
        .unwrap();
        let msgs = [msg(2, 7), msg(2, 8), msg(1, 3)];
        let now = Utc::now();
        let batch = FailedBatch::new(
            &msgs,
            kafka_event(&msgs, "b:9092"),
            "b:9092",
            "g",
            Condition::RetryAttemptsExhausted,
            3,
            ("boom".into(), true),
            Some((now, now)),
        );
        assert_eq!(batch.name(), "metrics+1+3");
        let at = dest.send(&batch, Duration::from_secs(1)).await.unwrap();
        assert!(at.ends_with("g/metrics+1+3.json"), "{at}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("g/metrics+1+3.json")).unwrap())
                .unwrap();
        assert_eq!(
            json["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
        assert_eq!(json["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(json["responseContext"]["errorMessage"], "boom");
        assert_eq!(json["KafkaBatchInfo"]["batchSize"], 3);
        assert_eq!(
            json["KafkaBatchInfo"]["recordsInfo"]["metrics-2"]["lastRecordOffset"],
            8
        );
        assert_eq!(
            json["payload"]["records"]["metrics-2"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            json["payload"]["records"]["metrics-2"][0]["timestamp"], 1_007,
            "exact milliseconds, as a number"
        );
        let back: FailedBatch = serde_json::from_value(json).unwrap();
        assert_eq!(back.batch_info, batch.batch_info);
        assert_eq!(back.payload.records.len(), 2);
    }
}
