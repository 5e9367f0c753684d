//! The controller: measures lag, scales workers (consumer-group members in this process) by KEDA's
//! rule, serves metrics, and stops on shutdown, on a failure with nowhere to go, or once caught up.
//!
//! A scaling step first holds every running worker: each finishes (and commits) the invocation it
//! is in. Then workers are added or stopped, and no worker, new ones included, invokes again until
//! every worker of the step has been assigned partitions in the rebalance that follows. So a
//! membership change made here leaves no batch invoked-but-uncommitted, even on brokers that refuse
//! commits while a group rebalances (librdkafka's mock cluster does). No further scaling decision is
//! taken while a step settles: lag that builds up while partitions move is no reason for another.
//! Rebalances caused from outside (another runner process joining) can still revoke partitions
//! under a busy worker, which then never commits them again; its records are processed again by
//! their new owner (at-least-once, which the lake's exactly-once protocol absorbs).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use damselfly_kafka::{KafkaContext, Problem, SettingsError};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::config::{ConfigError, RunnerConfig, StartingPosition};
use crate::destination::{Condition, Destination, DestinationError};
use crate::function::Function;
use crate::metrics::Stats;
use crate::scale::{Decision, Scaler};
use crate::worker::{HOLD_LIMIT, Settle, Worker, WorkerHandle};

/// What a run did, printed as the command's summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    /// Records processed and committed.
    pub records: u64,
    /// Batches processed and committed.
    pub batches: u64,
    /// Failed invocations.
    pub invocation_errors: u64,
    /// Invocations that retried a failed batch.
    pub retries: u64,
    /// Batches written to the on-failure destination.
    pub on_failure_batches: u64,
    /// Records in those batches.
    pub on_failure_records: u64,
    /// Most workers that ran at once.
    pub max_workers_seen: u64,
    /// Scaling decisions that changed the number of workers.
    pub scaling_events: u64,
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
    /// The connection settings cannot work (a missing password, an unreadable CA file, ...).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The brokers refuse the runner until a setting changes, or none could be reached.
    #[error(transparent)]
    Connection(Problem),
    /// The topic does not exist on the brokers.
    #[error(
        "topic `{topic}` not found on {brokers}: create it first (e.g. `kafka-topics.sh --create --topic {topic} --partitions 12`)"
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
    /// A batch failed for good and there is no on-failure destination: the runner stops rather than skip it.
    #[error(
        "batch of {records} records from {first} failed ({condition:?} after {attempts} invocations) and there is no --on-failure destination: {message}"
    )]
    Failed {
        /// The batch's first record as topic-partition@offset.
        first: String,
        /// Records in the batch.
        records: usize,
        /// Why it counts as failed.
        condition: Condition,
        /// Invocations made.
        attempts: u32,
        /// The function's last error.
        message: String,
    },
    /// The on-failure destination could not be opened or written.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// The metrics address could not be bound.
    #[error("--metrics-listen {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker task panicked.
    #[error("worker crashed: {0}")]
    Crashed(String),
}

/// Runs the event source mapping until `shutdown` resolves, or until caught up when so configured.
///
/// Starts `min_workers` workers, then measures lag every scale interval and scales between
/// `min_workers` and `min(max_workers, partitions)`. A batch is retried, bisected and sent to the
/// on-failure destination as configured; offsets are committed only after a batch succeeded or
/// was written there. On shutdown in-flight batches are abandoned uncommitted and every worker
/// leaves the group.
pub async fn run(
    config: &RunnerConfig,
    function: Arc<dyn Function>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunnerError> {
    config.validate()?;
    let started = Instant::now();
    stats.group_lag.store(-1, Relaxed);
    let config = Arc::new(config.clone());
    let monitor = Monitor::new(&config)?;
    let partitions = monitor.partitions().await?;
    monitor.seed_starting_position(partitions).await;
    let destination = match &config.on_failure {
        Some(target) => Some(Arc::new(Destination::open(
            target,
            &config.kafka,
            &config.group,
        )?)),
        None => None,
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunnerError::Metrics { addr, source })?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                stats.clone(),
                config.topic.clone(),
                config.group.clone(),
                async {
                    let _ = metrics_stopped.await;
                },
            )))
        }
        None => None,
    };
    tracing::info!(
        topic = %config.topic,
        group = %config.group,
        group_protocol = %config.group_protocol,
        security = %config.kafka.security.describe(),
        partitions,
        batch_size = config.batch_size,
        min_workers = config.scaling.min_workers,
        max_workers = config.scaling.max_workers,
        lag_threshold = config.scaling.lag_threshold,
        starting_position = %config.starting_position,
        on_failure = config.on_failure.as_ref().map(ToString::to_string),
        "runner started"
    );

    let mut fleet = Fleet {
        config: config.clone(),
        function,
        stats: stats.clone(),
        destination,
        workers: Vec::new(),
        tasks: JoinSet::new(),
        next_id: 0,
        step: 0,
    };
    let result = control(&config, &monitor, &mut fleet, &stats, shutdown).await;
    let stopped = fleet.stop_all().await;
    let _ = stop_metrics.send(());
    if let Some(m) = metrics {
        let _ = m.await;
    }
    result.and(stopped)?;
    let summary = RunSummary {
        records: stats.records.load(Relaxed),
        batches: stats.batches.load(Relaxed),
        invocation_errors: stats.invocation_errors.load(Relaxed),
        retries: stats.retries.load(Relaxed),
        on_failure_batches: stats.on_failure_batches.load(Relaxed),
        on_failure_records: stats.on_failure_records.load(Relaxed),
        max_workers_seen: stats.max_workers_seen.load(Relaxed),
        scaling_events: stats.scaling_events(),
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        records = summary.records,
        batches = summary.batches,
        invocation_errors = summary.invocation_errors,
        on_failure_batches = summary.on_failure_batches,
        max_workers = summary.max_workers_seen,
        scaling_events = summary.scaling_events,
        "runner stopped"
    );
    Ok(summary)
}

/// The control loop: lag, decisions, worker exits, shutdown.
async fn control(
    config: &RunnerConfig,
    monitor: &Monitor,
    fleet: &mut Fleet,
    stats: &Stats,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunnerError> {
    tokio::pin!(shutdown);
    fleet.scale_to(config.scaling.min_workers).await?;
    let mut scaler = Scaler::new(config.scaling.clone());
    // Caught-up runs look more often, so that they end soon after the last commit.
    let every = if config.until_caught_up {
        config.scaling.interval.min(Duration::from_secs(1))
    } else {
        config.scaling.interval
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            Some(exit) = fleet.tasks.join_next() => fleet.exited(exit)?,
            _ = ticks.tick() => {
                let lag = match monitor.lag().await {
                    Ok(lag) => lag,
                    Err(e) => {
                        tracing::warn!(error = %e, "lag measurement failed; no scaling decision this time");
                        continue;
                    }
                };
                stats.set_lag(&lag);
                let total: u64 = lag.values().map(|l| *l as u64).sum();
                if config.until_caught_up && total == 0 {
                    tracing::info!("caught up: group lag is 0");
                    return Ok(());
                }
                if fleet.settling() {
                    // Lag that builds up while partitions move is no reason for another step.
                    tracing::debug!(lag = total, "a rebalance is settling: no scaling decision");
                    continue;
                }
                let d = scaler.decide(Instant::now(), fleet.workers.len(), total, lag.len());
                stats.desired_workers.store(d.desired as u64, Relaxed);
                if !d.changes() {
                    continue;
                }
                log_decision(config, &d);
                if d.to > d.from {
                    stats.scale_outs.fetch_add(1, Relaxed);
                } else {
                    stats.scale_ins.fetch_add(1, Relaxed);
                }
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    r = fleet.scale_to(d.to) => r?,
                }
            }
        }
    }
}

fn log_decision(config: &RunnerConfig, d: &Decision) {
    tracing::info!(
        lag = d.lag,
        threshold = config.scaling.lag_threshold,
        partitions = d.partitions,
        desired = d.desired,
        from = d.from,
        to = d.to,
        reason = %d.reason,
        "scaling workers"
    );
}

/// The running workers and their tasks.
struct Fleet {
    config: Arc<RunnerConfig>,
    function: Arc<dyn Function>,
    stats: Arc<Stats>,
    destination: Option<Arc<Destination>>,
    /// Running workers, oldest first; scale-in stops the newest.
    workers: Vec<WorkerHandle>,
    tasks: JoinSet<(usize, Result<(), RunnerError>)>,
    next_id: usize,
    /// Scaling steps so far.
    step: u64,
}

impl Fleet {
    /// Adds or stops workers to reach `n`. Every worker is held across the change: the running
    /// ones finish their invocation first, and none (new ones included) invokes again until each
    /// of them has been assigned partitions in the rebalance that follows.
    async fn scale_to(&mut self, n: usize) -> Result<(), RunnerError> {
        let from = self.workers.len();
        if n == from {
            return Ok(());
        }
        self.step += 1;
        let step = self.step;
        if from > 0 {
            self.quiesce(step).await;
        }
        // Assignment counts before the membership changes: the step settles after each grows.
        let mut members: Vec<_> = self
            .workers
            .iter()
            .take(n)
            .map(|w| (w.ownership.clone(), w.ownership.assigns()))
            .collect();
        if n > from {
            for _ in from..n {
                let id = self.next_id;
                self.next_id += 1;
                let (worker, handle) = Worker::start(
                    id,
                    step,
                    self.config.clone(),
                    self.function.clone(),
                    self.stats.clone(),
                    self.destination.clone(),
                )?;
                self.tasks.spawn(async move { (id, worker.run().await) });
                members.push((handle.ownership.clone(), 0));
                self.workers.push(handle);
            }
        } else {
            for w in self.workers.drain(n..) {
                w.control.stop();
            }
        }
        let settle = Arc::new(Settle::new(members));
        for w in &self.workers {
            w.control.settle(step, settle.clone());
        }
        self.stats.set_workers(n);
        Ok(())
    }

    /// Whether a scaling step (other than the first, at start) is still waiting for its rebalance,
    /// or a worker waits for its reassignment after a refused commit.
    fn settling(&self) -> bool {
        self.step > 1 && self.workers.iter().any(|w| w.control.held())
    }

    /// Holds every worker and waits until none is in the middle of an invocation (bounded).
    async fn quiesce(&self, step: u64) {
        for w in &self.workers {
            w.control.hold(step);
        }
        let started = tokio::time::Instant::now();
        loop {
            let busy: Vec<usize> = self
                .workers
                .iter()
                .filter(|w| w.control.busy())
                .map(|w| w.id)
                .collect();
            if busy.is_empty() {
                return;
            }
            if started.elapsed() > HOLD_LIMIT {
                tracing::warn!(
                    ?busy,
                    "workers still invoking after {HOLD_LIMIT:?}; scaling anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Handles a worker task's end: stopped workers end quietly; errors stop the runner.
    fn exited(
        &mut self,
        exit: Result<(usize, Result<(), RunnerError>), tokio::task::JoinError>,
    ) -> Result<(), RunnerError> {
        match exit {
            Ok((id, Ok(()))) => {
                tracing::debug!(worker = id, "worker ended");
                Ok(())
            }
            Ok((id, Err(e))) => {
                tracing::error!(worker = id, error = %e, "worker failed; stopping the runner");
                Err(e)
            }
            Err(e) => Err(RunnerError::Crashed(e.to_string())),
        }
    }

    /// Stops every worker and waits for them to leave the group; returns the first error.
    async fn stop_all(&mut self) -> Result<(), RunnerError> {
        for w in self.workers.drain(..) {
            w.control.stop();
        }
        self.stats.set_workers(0);
        let mut first = Ok(());
        while let Some(exit) = self.tasks.join_next().await {
            if let Err(e) = self.exited(exit)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

/// A consumer that never joins the group: reads metadata, watermarks and the group's committed
/// offsets, and sets a new group's starting position.
struct Monitor {
    consumer: Arc<BaseConsumer<KafkaContext>>,
    topic: String,
    brokers: String,
    position: StartingPosition,
    timeout: Duration,
}

/// Each metadata request of [`Monitor::partitions`] waits this long, so that a connection problem
/// found meanwhile (a refused password, an untrusted certificate) ends the wait early.
const METADATA_SLICE: Duration = Duration::from_secs(1);

impl Monitor {
    fn new(config: &RunnerConfig) -> Result<Self, RunnerError> {
        let context = KafkaContext::new(&config.kafka)?;
        let mut cc = ClientConfig::new();
        cc.set("group.id", &config.group)
            .set("client.id", "damselfly-runner-monitor")
            .set("enable.auto.commit", "false");
        config.kafka.apply(&mut cc);
        Ok(Self {
            consumer: Arc::new(cc.create_with_context(context)?),
            topic: config.topic.clone(),
            brokers: config.kafka.brokers.clone(),
            position: config.starting_position,
            timeout: config.broker_timeout,
        })
    }

    /// The topic's partition count. Stops at once with the problem when the brokers refuse the
    /// runner's credentials or certificate, and names the brokers when none answers in time.
    async fn partitions(&self) -> Result<i32, RunnerError> {
        let deadline = Instant::now() + self.timeout;
        let md = loop {
            let (c, topic) = (self.consumer.clone(), self.topic.clone());
            let slice = METADATA_SLICE.min(self.timeout);
            // A poll serves the client's errors to its context (and makes an OAUTHBEARER token).
            let got = blocking("metadata", slice, move || {
                let _ = c.poll(Duration::ZERO);
                c.fetch_metadata(Some(&topic), slice)
            })
            .await;
            let hooks = self.consumer.context().hooks();
            match got {
                Ok(md) => break md,
                Err(e) => {
                    if let Some(problem) = hooks.blocking() {
                        return Err(RunnerError::Connection(problem));
                    }
                    if Instant::now() >= deadline {
                        return Err(hooks.watch().latest().map_or(e, RunnerError::Connection));
                    }
                }
            }
        };
        let n = md
            .topics()
            .iter()
            .find(|tm| tm.name() == self.topic && tm.error().is_none())
            .map_or(0, |tm| tm.partitions().len());
        if n == 0 {
            return Err(RunnerError::NoTopic {
                topic: self.topic.clone(),
                brokers: self.brokers.clone(),
            });
        }
        Ok(n as i32)
    }

    /// Lag of every partition: high watermark minus the group's committed offset (or, for a
    /// partition without one, minus where the starting position puts it).
    async fn lag(&self) -> Result<BTreeMap<i32, i64>, RunnerError> {
        let partitions = self.partitions().await?;
        let (c, topic, t) = (self.consumer.clone(), self.topic.clone(), self.timeout);
        let latest = self.position == StartingPosition::Latest;
        blocking("lag", t * (partitions as u32 + 1), move || {
            let committed = c.committed_offsets(all_partitions(&topic, partitions), t)?;
            let mut lag = BTreeMap::new();
            for p in 0..partitions {
                let (low, high) = c.fetch_watermarks(&topic, p, t)?;
                let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ if latest => high,
                    _ => low,
                };
                lag.insert(p, (high - done).max(0));
            }
            Ok(lag)
        })
        .await
    }

    /// For `latest` and `timestamp:` positions, commits the starting offsets of partitions the
    /// group has none for (a new group), so that lag and every worker agree on where to start.
    async fn seed_starting_position(&self, partitions: i32) {
        if self.position == StartingPosition::Earliest {
            return;
        }
        let (c, topic, t, position) = (
            self.consumer.clone(),
            self.topic.clone(),
            self.timeout,
            self.position,
        );
        let seeded = blocking("seed", t * (partitions as u32 + 2), move || {
            let committed = c.committed_offsets(all_partitions(&topic, partitions), t)?;
            let missing: Vec<i32> = (0..partitions)
                .filter(|p| {
                    !matches!(
                        committed.find_partition(&topic, *p).map(|e| e.offset()),
                        Some(Offset::Offset(_))
                    )
                })
                .collect();
            if missing.is_empty() {
                return Ok(0);
            }
            let at_time = match position {
                StartingPosition::Timestamp(ts) => {
                    let mut q = TopicPartitionList::new();
                    for p in &missing {
                        q.add_partition_offset(&topic, *p, Offset::Offset(ts.timestamp_millis()))?;
                    }
                    Some(c.offsets_for_times(q, t)?)
                }
                _ => None,
            };
            let mut seed = TopicPartitionList::new();
            for p in &missing {
                let found = at_time
                    .as_ref()
                    .and_then(|r| r.find_partition(&topic, *p))
                    .map(|e| e.offset());
                let offset = match found {
                    Some(Offset::Offset(o)) if o >= 0 => o,
                    // Latest, or no record at or after the time: the end of the partition.
                    _ => c.fetch_watermarks(&topic, *p, t)?.1,
                };
                seed.add_partition_offset(&topic, *p, Offset::Offset(offset))?;
            }
            c.commit(&seed, CommitMode::Sync)?;
            Ok(missing.len())
        })
        .await;
        match seeded {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(partitions = n, position = %self.position, "new group: starting position committed")
            }
            Err(e) => tracing::warn!(
                error = %e,
                position = %self.position,
                "could not commit the starting position (is the group already active?); partitions without offsets start at auto.offset.reset"
            ),
        }
    }
}

fn all_partitions(topic: &str, partitions: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    tpl
}

/// Runs a blocking librdkafka call off the async threads, bounded in time.
pub(crate) async fn blocking<T: Send + 'static>(
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
        Ok(Err(join)) => Err(RunnerError::Crashed(format!("{what}: {join}"))),
        Err(_) => Err(RunnerError::Timeout(what)),
    }
}
