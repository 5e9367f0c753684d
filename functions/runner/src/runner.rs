//! The consume -> batch -> invoke -> commit loop, with whole-batch retries and the caught-up check.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::{ConfigError, MAX_PAYLOAD_BYTES, RunnerConfig};
use crate::event::{event_size, kafka_event};
use crate::function::Function;

/// First delay between retries of a failed batch; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest delay between retries of a failed batch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Counters the runner updates as it goes; read them for progress displays.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records handed to the function and committed.
    pub records: AtomicU64,
    /// Batches that succeeded and were committed.
    pub batches: AtomicU64,
    /// Invocations that failed (each retry counts).
    pub failures: AtomicU64,
    /// Group lag at the last check (-1 before the first).
    pub lag: AtomicI64,
}

/// What a run did, printed as the command's summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    /// Records processed and committed.
    pub records: u64,
    /// Batches processed and committed.
    pub batches: u64,
    /// Failed invocations (retried).
    pub failures: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kafka client failed in a way the runner cannot ride out.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The topic does not exist on the brokers.
    #[error(
        "topic `{topic}` not found on {brokers}: create it first (e.g. `tansu topic create {topic} --partitions 12`)"
    )]
    NoTopic {
        /// The topic.
        topic: String,
        /// The brokers asked.
        brokers: String,
    },
    /// A broker round trip did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The function failed with an error that retrying cannot fix.
    #[error("function failed permanently on {records} records from {first}: {message}")]
    Fatal {
        /// The batch's first record as topic-partition@offset.
        first: String,
        /// Records in the batch.
        records: usize,
        /// The function's error.
        message: String,
    },
}

/// Logs group rebalances.
struct RunnerContext;

impl ClientContext for RunnerContext {}

impl ConsumerContext for RunnerContext {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

type Kafka = Arc<StreamConsumer<RunnerContext>>;

/// Runs the event source mapping until `shutdown` resolves, or until caught up when so configured.
///
/// A batch is invoked until it succeeds (whole-batch retries with backoff); its offsets are
/// committed only then. On shutdown an in-flight batch is abandoned uncommitted.
pub async fn run(
    config: &RunnerConfig,
    function: Arc<dyn Function>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunnerError> {
    config.validate()?;
    let started = Instant::now();
    stats.lag.store(-1, Relaxed);
    let consumer = create_consumer(config)?;
    let partitions = topic_partitions(&consumer, config).await?;
    consumer.subscribe(&[&config.topic])?;
    tracing::info!(topic = %config.topic, group = %config.group, partitions, batch_size = config.batch_size, "runner started");

    tokio::pin!(shutdown);
    let mut pending_commit: Option<TopicPartitionList> = None;
    let result = loop {
        if let Some(tpl) = pending_commit.take()
            && let Err(e) = commit(&consumer, &tpl, config.broker_timeout).await
        {
            tracing::warn!(error = %e, "commit failed; will retry");
            pending_commit = Some(tpl);
        }
        let batch = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            b = next_batch(&consumer, config) => b?,
        };
        if batch.is_empty() {
            if config.until_caught_up && pending_commit.is_none() {
                let lag = group_lag(&consumer, config, partitions).await?;
                stats.lag.store(lag, Relaxed);
                if lag == 0 {
                    tracing::info!("caught up: group lag is 0");
                    break Ok(());
                }
            }
            continue;
        }
        let invoked = tokio::select! {
            _ = &mut shutdown => {
                tracing::info!(records = batch.len(), "shutdown: abandoning in-flight batch uncommitted");
                break Ok(());
            }
            r = invoke_until_success(function.as_ref(), &batch, config, &stats) => r,
        };
        if let Err(e) = invoked {
            break Err(e);
        }
        stats.records.fetch_add(batch.len() as u64, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        pending_commit = Some(next_offsets(&batch));
    };
    if let Some(tpl) = pending_commit
        && let Err(e) = commit(&consumer, &tpl, config.broker_timeout).await
    {
        tracing::warn!(error = %e, "final commit failed; those records will be processed again (same object keys)");
    }
    consumer.unsubscribe();
    result?;
    let summary = RunSummary {
        records: stats.records.load(Relaxed),
        batches: stats.batches.load(Relaxed),
        failures: stats.failures.load(Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        records = summary.records,
        batches = summary.batches,
        failures = summary.failures,
        "runner stopped"
    );
    Ok(summary)
}

fn create_consumer(config: &RunnerConfig) -> Result<Kafka, RunnerError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", "range,roundrobin");
    for (k, v) in &config.kafka_options {
        cc.set(k, v);
    }
    Ok(Arc::new(cc.create_with_context(RunnerContext)?))
}

/// Runs a blocking librdkafka call off the async threads, bounded in time.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    limit: Duration,
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, RunnerError> {
    match tokio::time::timeout(
        limit + Duration::from_secs(1),
        tokio::task::spawn_blocking(f),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r?),
        Ok(Err(join)) => panic!("{what} panicked: {join}"),
        Err(_) => Err(RunnerError::Timeout(what)),
    }
}

async fn topic_partitions(consumer: &Kafka, config: &RunnerConfig) -> Result<i32, RunnerError> {
    let (c, topic, t) = (
        consumer.clone(),
        config.topic.clone(),
        config.broker_timeout,
    );
    let md = blocking("metadata", t, move || c.fetch_metadata(Some(&topic), t)).await?;
    let n = md
        .topics()
        .iter()
        .find(|tm| tm.name() == config.topic && tm.error().is_none())
        .map_or(0, |tm| tm.partitions().len());
    if n == 0 {
        return Err(RunnerError::NoTopic {
            topic: config.topic.clone(),
            brokers: config.brokers.clone(),
        });
    }
    Ok(n as i32)
}

/// Gathers up to `batch_size` records: waits for the first, then for the batching window.
/// Returns an empty batch when nothing arrived for a whole window.
async fn next_batch(
    consumer: &Kafka,
    config: &RunnerConfig,
) -> Result<Vec<OwnedMessage>, RunnerError> {
    let idle = config.batching_window.max(Duration::from_millis(200));
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut deadline = tokio::time::Instant::now() + idle;
    while batch.len() < config.batch_size {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                // Transient client errors (broker down, rebalance in progress) are logged; the
                // client reconnects by itself.
                tracing::warn!(error = %e, "consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Ok(m)) => {
                let m = m.detach();
                let size = event_size(&m);
                if batch.is_empty() {
                    deadline = tokio::time::Instant::now() + config.batching_window;
                } else if bytes + size > MAX_PAYLOAD_BYTES {
                    // Too big for this invocation: rewind so the record starts the next batch.
                    let (c, topic, p, o) = (
                        consumer.clone(),
                        m.topic().to_owned(),
                        m.partition(),
                        m.offset(),
                    );
                    let t = config.broker_timeout;
                    blocking("seek", t, move || c.seek(&topic, p, Offset::Offset(o), t)).await?;
                    break;
                }
                bytes += size;
                batch.push(m);
            }
        }
    }
    Ok(batch)
}

async fn invoke_until_success(
    function: &dyn Function,
    batch: &[OwnedMessage],
    config: &RunnerConfig,
    stats: &Stats,
) -> Result<(), RunnerError> {
    let event = kafka_event(batch, &config.brokers);
    let mut delay = FIRST_RETRY_DELAY;
    for attempt in 1.. {
        let started = Instant::now();
        match function.invoke(event.clone()).await {
            Ok(result) => {
                tracing::debug!(records = batch.len(), ms = started.elapsed().as_millis() as u64, %result, "batch ok");
                return Ok(());
            }
            Err(e) => {
                stats.failures.fetch_add(1, Relaxed);
                let first = batch.first().map_or_else(String::new, |m| {
                    format!("{}-{}@{}", m.topic(), m.partition(), m.offset())
                });
                if !e.retryable {
                    return Err(RunnerError::Fatal {
                        first,
                        records: batch.len(),
                        message: e.message,
                    });
                }
                tracing::warn!(attempt, first = %first, records = batch.len(), error = %e, retry_in_ms = delay.as_millis() as u64, "batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
    unreachable!("the retry loop only ends by returning")
}

/// The offsets to commit after a batch: one past the last record of each partition.
fn next_offsets(batch: &[OwnedMessage]) -> TopicPartitionList {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_default();
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("offsets are valid");
    }
    tpl
}

async fn commit(
    consumer: &Kafka,
    tpl: &TopicPartitionList,
    limit: Duration,
) -> Result<(), RunnerError> {
    let (c, tpl) = (consumer.clone(), tpl.clone());
    blocking("commit", limit, move || c.commit(&tpl, CommitMode::Sync)).await
}

/// The group's total lag on the topic: high watermark minus committed offset, over all partitions.
async fn group_lag(
    consumer: &Kafka,
    config: &RunnerConfig,
    partitions: i32,
) -> Result<i64, RunnerError> {
    let (c, topic, t) = (
        consumer.clone(),
        config.topic.clone(),
        config.broker_timeout,
    );
    blocking("lag", t * (partitions as u32 + 1), move || {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = c.committed_offsets(tpl, t)?;
        let mut lag = 0;
        for p in 0..partitions {
            let (low, high) = c.fetch_watermarks(&topic, p, t)?;
            let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => low,
            };
            lag += (high - done).max(0);
        }
        Ok(lag)
    })
    .await
}
