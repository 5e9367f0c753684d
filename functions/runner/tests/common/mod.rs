//! Helpers shared by the mock-cluster tests: a broker, publishing, committed offsets, a slow counting function.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use damselfly_runner::{Function, FunctionError, RunnerConfig, ScalingConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// A record as the tests identify it.
pub type Id = (i32, i64);

/// Logs to the test output; `RUST_LOG` overrides the default (runner info, the rest warn).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Printed only for a failing test: enough to see where a worker was.
                .unwrap_or_else(|_| "warn,damselfly_runner=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// An in-process broker with `topic`, and its bootstrap address.
pub fn cluster(
    topic: &str,
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic(topic, partitions, 1)
        .expect("create topic");
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

/// Publishes `(partition, payload)` records and waits until the broker has them.
pub fn publish(brokers: &str, topic: &str, records: impl IntoIterator<Item = (i32, String)>) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (partition, payload) in records {
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(partition)
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .expect("queue record");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The group's committed offset per partition (-1 when none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// The event's records as (partition, offset), sorted.
pub fn ids(event: &KafkaEvent) -> Vec<Id> {
    let mut ids: Vec<Id> = event
        .records
        .values()
        .flatten()
        .map(|r| (r.partition as i32, r.offset))
        .collect();
    ids.sort();
    ids
}

/// The event's record values, decoded.
pub fn values(event: &KafkaEvent) -> Vec<String> {
    event
        .records
        .values()
        .flatten()
        .filter_map(|r| r.value.as_deref())
        .map(|v| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap()
        })
        .collect()
}

/// One worker, small batches, a short window, until caught up.
pub fn config(brokers: &str, topic: &str, group: &str) -> RunnerConfig {
    let mut config = RunnerConfig {
        batch_size: 10,
        batching_window: Duration::from_millis(100),
        until_caught_up: true,
        scaling: ScalingConfig {
            interval: Duration::from_millis(500),
            ..ScalingConfig::fixed(1)
        },
        // librdkafka gives up on a request that got no answer only after socket.timeout.ms
        // (60 s by default, the whole test bound); 10 s lets a retry happen inside the bound.
        // (The stalls once seen right after an assignment came from pausing partitions whose
        // fetch had not started; see worker.rs.)
        ..RunnerConfig::new(brokers, topic, group)
    };
    config
        .kafka
        .options
        .push(("socket.timeout.ms".into(), "10000".into()));
    config
}

/// Takes a while per batch and counts how often it saw each record.
pub struct Slow {
    /// Time each invocation takes.
    pub per_batch: Duration,
    /// How often each record was invoked.
    pub seen: Mutex<BTreeMap<Id, usize>>,
}

#[async_trait::async_trait]
impl Function for Slow {
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        tokio::time::sleep(self.per_batch).await;
        let mut seen = self.seen.lock().unwrap();
        for id in ids(&event) {
            *seen.entry(id).or_default() += 1;
        }
        Ok(serde_json::json!({}))
    }
}
