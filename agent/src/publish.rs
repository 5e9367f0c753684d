//! The Kafka publisher: key = VM id, librdkafka's `fnv1a_random` partitioner, idempotent, compressed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use damselfly_kafka::{Connection, Hooks, Problem, SettingsError};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext, PurgeConfig};

/// How long one poll of the delivery-report queue waits. rdkafka's `poll` spins through the last
/// millisecond of its timeout, so `ThreadedProducer`'s 100 ms polls cost about 1 % of a core on
/// an idle agent; 500 ms polls cost a fifth of that and still deliver each report as it arrives.
const POLL_WAIT: Duration = Duration::from_millis(500);

/// How long one wait of [`Publisher::flush`] lasts before it looks for a connection problem.
const FLUSH_SLICE: Duration = Duration::from_millis(500);

/// How to reach and write the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// Brokers, TLS, SASL and extra librdkafka settings (applied after the producer's own).
    pub kafka: Connection,
    /// Topic to publish to.
    pub topic: String,
    /// librdkafka `compression.type` (none, gzip, snappy, lz4, zstd).
    pub compression: String,
}

impl PublisherConfig {
    /// Defaults for a topic on a plaintext connection: lz4 compression, no extra options.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self::on(Connection::plaintext(brokers), topic)
    }

    /// Defaults for a topic over `kafka`: lz4 compression.
    pub fn on(kafka: Connection, topic: impl Into<String>) -> Self {
        Self {
            kafka,
            topic: topic.into(),
            compression: "lz4".into(),
        }
    }
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The producer could not be created or a send was refused.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The connection settings cannot work (a missing password, an unreadable CA file, ...).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The brokers refuse this client until a setting changes (see the message).
    #[error(transparent)]
    Connection(Problem),
    /// The thread that collects delivery reports could not start.
    #[error("starting the delivery-report thread: {0}")]
    Thread(std::io::Error),
    /// Messages were still undelivered when the flush timed out.
    #[error("{pending} messages still undelivered after {waited:?} (is the broker reachable?)")]
    FlushTimeout {
        /// Messages in flight.
        pending: i32,
        /// How long we waited.
        waited: Duration,
    },
    /// The broker refused messages for good (after librdkafka's own retries).
    #[error("{failed} messages failed delivery; last error: {last}")]
    Failed {
        /// Count of failed deliveries.
        failed: u64,
        /// The last delivery error.
        last: String,
    },
}

/// Counts delivery reports as librdkafka hands them back; explains connection problems.
#[derive(Debug)]
pub struct Deliveries {
    /// Messages the broker acknowledged.
    pub delivered: AtomicU64,
    /// Messages that failed for good.
    pub failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    hooks: Hooks,
}

impl Deliveries {
    fn new(hooks: Hooks) -> Self {
        Self {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            hooks,
        }
    }
}

// A refused password or an untrusted certificate is logged once a minute naming the setting to
// fix; an unreachable broker at warn (the agent spools meanwhile).
damselfly_kafka::client_context!(Deliveries, hooks);

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Relaxed);
                // Per message: the callers log failures in aggregate.
                tracing::debug!(error = %e, "delivery failed");
                *self.last_error.lock().expect("not poisoned") = Some(e.to_string());
            }
        }
    }
}

/// A producer for one topic; `send` never drops a message on a full local queue, it waits.
pub struct Publisher {
    producer: Arc<BaseProducer<Deliveries>>,
    topic: String,
    stop_polling: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Creates the producer (it connects lazily).
    pub fn new(config: &PublisherConfig) -> Result<Self, PublishError> {
        config.kafka.validate()?;
        let hooks = Hooks::new(&config.kafka)?;
        let mut cc = ClientConfig::new();
        cc.set("partitioner", "fnv1a_random")
            .set("enable.idempotence", "true")
            .set("compression.type", &config.compression)
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "200000");
        config.kafka.apply(&mut cc);
        let producer: Arc<BaseProducer<Deliveries>> =
            Arc::new(cc.create_with_context(Deliveries::new(hooks))?);
        let stop_polling = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop_polling));
            std::thread::Builder::new()
                .name("kafka-deliveries".into())
                .spawn(move || {
                    while !stop.load(Relaxed) {
                        producer.poll(POLL_WAIT);
                    }
                })
                .map_err(PublishError::Thread)?
        };
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            stop_polling,
            poller: Some(poller),
        })
    }

    /// Queues one message keyed by VM id, waiting while the local queue is full.
    pub fn send(&self, key: &str, payload: &[u8]) -> Result<(), PublishError> {
        let mut record = BaseRecord::to(&self.topic).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Waits until every queued message is delivered or failed; errors if any failed, or at once
    /// when the client met a problem waiting cannot fix (refused credentials, untrusted certificate).
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.producer.flush(left.min(FLUSH_SLICE)).is_ok() {
                break;
            }
            if let Some(problem) = self.problem() {
                return Err(PublishError::Connection(problem));
            }
            if left <= FLUSH_SLICE {
                // An unreachable broker: say which, and which setting names it.
                if let Some(problem) = self.producer.context().hooks.watch().latest() {
                    return Err(PublishError::Connection(problem));
                }
                return Err(PublishError::FlushTimeout {
                    pending: self.producer.in_flight_count(),
                    waited: timeout,
                });
            }
        }
        let ctx = self.producer.context();
        match ctx.failed.load(Relaxed) {
            0 => Ok(()),
            failed => Err(PublishError::Failed {
                failed,
                last: ctx
                    .last_error
                    .lock()
                    .expect("not poisoned")
                    .clone()
                    .unwrap_or_default(),
            }),
        }
    }

    /// Fails every queued and in-flight message at once (their delivery reports say so); a message
    /// the broker wrote but had not acknowledged yet may be sent twice if the caller resends it.
    pub fn purge(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    /// Delivery counters.
    pub fn deliveries(&self) -> &Deliveries {
        self.producer.context()
    }

    /// The latest connection problem that waiting cannot fix (refused credentials, an untrusted
    /// certificate, the wrong protocol), for callers that stop rather than wait.
    pub fn problem(&self) -> Option<Problem> {
        self.producer.context().hooks.blocking()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop_polling.store(true, Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}
