//! One consumer-group member: gathers batches, invokes with retries and bisection, and commits only
//! partitions it still owns.
//!
//! Ownership is tracked per partition with an epoch that changes at every assignment. A record
//! carries the epoch its partition had when it was consumed; a batch is invoked, committed or
//! retried only for records whose partition still has that epoch. Rebalance callbacks run inside
//! the worker's own `recv()` (librdkafka serves them from the consumer queue), so between two polls
//! the ownership a worker sees cannot change: an invocation followed by its commit is atomic with
//! respect to revocations. The worker polls while it gathers, while it backs off between retries and
//! while it is held for a scaling step, always with its partitions paused in the last two cases.
//!
//! A partition is paused only once it has delivered a record in its current assignment. A pause or
//! resume and librdkafka's start of a newly assigned partition's fetch each take a version barrier
//! and then queue their operation; when the two interleave, the start is discarded as outdated and
//! the partition never fetches, with nothing logged (librdkafka issues 2190 and 5591). So the
//! rebalance callbacks never pause or resume an assigned partition, a revoked partition is resumed
//! before it goes (its pause flag would outlive the assignment), and a partition that starts
//! fetching while the worker holds still is paused at its first record.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use damselfly_kafka::Hooks;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{GroupProtocol, MAX_PAYLOAD_BYTES, RunnerConfig, StartingPosition};
use crate::destination::{Condition, Destination, FailedBatch};
use crate::event::{event_size, kafka_event};
use crate::function::{Function, FunctionError};
use crate::metrics::Stats;
use crate::runner::{RunnerError, blocking};

/// First delay between retries of a failed batch; doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest delay between retries of a failed batch, before jitter.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Delays between retries of a failed batch (or of a write to the on-failure destination):
/// doubling from [`FIRST_RETRY_DELAY`] to [`MAX_RETRY_DELAY`], each stretched by a random factor
/// in [1, 2), so that workers a store outage failed together do not all retry at once.
pub(crate) fn retry_delays(first: Duration) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(MAX_RETRY_DELAY.max(first))
        .with_jitter()
        .without_max_times()
        .build()
}
/// How long a held worker waits for the rebalance it was held for before it carries on.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(60);
/// Idle time (empty batching windows in a row) after which a worker that is not holding re-asserts
/// that its partitions are resumed: a partition left paused by mistake would otherwise stall
/// silently, with lag building up and nothing consumed.
const IDLE_RESUME: Duration = Duration::from_secs(2);
/// Writes of a failed batch to its destination before the runner gives up.
const DESTINATION_ATTEMPTS: u32 = 5;

/// A topic-partition.
type Key = (String, i32);

/// A consumed record and the epoch its partition had when it was consumed.
struct Msg {
    m: OwnedMessage,
    epoch: u64,
}

impl Msg {
    fn key(&self) -> Key {
        (self.m.topic().to_owned(), self.m.partition())
    }
}

/// Which partitions a worker owns, as its rebalance callbacks see them.
#[derive(Debug, Default)]
pub(crate) struct Ownership {
    state: Mutex<OwnState>,
    /// Notified after every assignment or revocation.
    changed: Notify,
}

#[derive(Debug, Default)]
struct OwnState {
    /// Owned partitions and the epoch of their current assignment.
    owned: HashMap<Key, u64>,
    next_epoch: u64,
    /// Assignments plus revocations so far.
    changes: u64,
    /// Assignments so far.
    assigns: u64,
    /// Whether the latest rebalance event was an assignment (not a revocation).
    assigned: bool,
    /// Whether the worker keeps its partitions paused (holding, backing off).
    paused: bool,
    /// Owned partitions that delivered a record in their current assignment: their fetch has
    /// started, so pausing them is safe.
    fetching: HashSet<Key>,
    /// Offsets of processed records whose commit failed, with the epoch they belong to.
    pending: BTreeMap<Key, (u64, i64)>,
}

impl OwnState {
    /// The partitions owned now, in order.
    fn owned_partitions(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.owned.keys().map(|(_, p)| *p).collect();
        p.sort_unstable();
        p
    }
}

impl Ownership {
    fn lock(&self) -> MutexGuard<'_, OwnState> {
        self.state.lock().expect("ownership lock poisoned")
    }

    /// A record of `topic`/`partition` arrived: the partition's epoch if it is owned, and whether
    /// the partition must be paused now (its first record while the worker holds still).
    fn arrived(&self, topic: &str, partition: i32) -> Option<(u64, bool)> {
        let mut st = self.lock();
        let key = (topic.to_owned(), partition);
        let epoch = *st.owned.get(&key)?;
        let pause = st.fetching.insert(key) && st.paused;
        Some((epoch, pause))
    }

    fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// The partitions whose fetch has started: the only ones the worker ever pauses, so the only
    /// ones it resumes (a resume of a partition that librdkafka itself holds paused during a
    /// rebalance would take a version barrier too).
    fn fetching(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &self.lock().fetching {
            tpl.add_partition(topic, *partition);
        }
        tpl
    }

    /// Assignments this worker has received so far.
    pub(crate) fn assigns(&self) -> u64 {
        self.lock().assigns
    }

    /// Keeps the records whose partition is still owned in the epoch they were consumed in.
    fn retain(&self, msgs: &mut Vec<Msg>) {
        let st = self.lock();
        msgs.retain(|m| st.owned.get(&m.key()) == Some(&m.epoch));
    }

    /// [`retain`](Self::retain) for the stash.
    fn retain_stash(&self, msgs: &mut VecDeque<Msg>) {
        let st = self.lock();
        msgs.retain(|m| st.owned.get(&m.key()) == Some(&m.epoch));
    }
}

/// A worker's consumer context: keeps [`Ownership`] up to date from rebalance callbacks, and
/// explains connection problems (and makes OAUTHBEARER tokens) through [`Hooks`].
pub(crate) struct WorkerContext {
    id: usize,
    ownership: Arc<Ownership>,
    stats: Arc<Stats>,
    hooks: Hooks,
}

damselfly_kafka::client_context!(WorkerContext, hooks);

/// Runs blocking work from inside a task: on a multi-threaded runtime through `block_in_place`,
/// so that the worker thread's other tasks are not stalled behind a broker round trip; directly
/// elsewhere (a current-thread runtime cannot hand its tasks over, and outside a runtime nothing
/// waits).
fn blocking_in_task<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let revoked: Option<Vec<Key>> = match rebalance {
            Rebalance::Assign(_) => return,
            Rebalance::Revoke(tpl) => {
                // librdkafka keeps an application pause across an unassignment: resumed now, the
                // partition starts unpaused when it is assigned again (a resume then could drop its
                // start of fetch). Resuming a partition that is not paused does nothing.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::debug!(worker = self.id, error = %e, "resume before revocation");
                }
                Some(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition()))
                        .collect(),
                )
            }
            Rebalance::Error(e) => {
                tracing::warn!(worker = self.id, error = %e, "rebalance error: dropping every partition");
                None
            }
        };
        // Processed records whose commit failed: last chance while the partitions are ours.
        let pending = {
            let st = self.ownership.lock();
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), (epoch, offset)) in &st.pending {
                if st.owned.get(&(topic.clone(), *partition)) == Some(epoch) {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
                }
            }
            tpl
        };
        if pending.count() > 0 {
            // The commit must finish before the partitions go, so it blocks; this callback runs
            // inside a tokio task's poll, so other tasks move off this thread meanwhile.
            match blocking_in_task(|| consumer.commit(&pending, CommitMode::Sync)) {
                Ok(()) => tracing::debug!(
                    worker = self.id,
                    partitions = pending.count(),
                    "committed pending offsets before revocation"
                ),
                Err(e) => {
                    self.stats.commit_failures.fetch_add(1, Relaxed);
                    tracing::warn!(worker = self.id, error = %e, "pending offsets not committed before revocation; their records will be processed again");
                }
            }
        }
        let (revoked, owned) = {
            let mut st = self.ownership.lock();
            st.pending.clear();
            let revoked: Vec<i32> = match revoked {
                Some(keys) => {
                    for k in &keys {
                        st.owned.remove(k);
                        st.fetching.remove(k);
                    }
                    keys.into_iter().map(|(_, p)| p).collect()
                }
                None => {
                    st.fetching.clear();
                    std::mem::take(&mut st.owned)
                        .into_keys()
                        .map(|(_, p)| p)
                        .collect()
                }
            };
            st.changes += 1;
            st.assigned = false;
            (revoked, st.owned_partitions())
        };
        self.stats.rebalances.fetch_add(1, Relaxed);
        self.ownership.changed.notify_one();
        tracing::info!(worker = self.id, ?revoked, ?owned, "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        // No pause or resume here: it would race the partitions' start of fetch (see the module
        // documentation). A worker that holds still pauses each one at its first record.
        let owned = {
            let mut st = self.ownership.lock();
            for e in tpl.elements() {
                let epoch = st.next_epoch;
                st.next_epoch += 1;
                let key = (e.topic().to_owned(), e.partition());
                st.fetching.remove(&key);
                st.owned.insert(key, epoch);
            }
            st.changes += 1;
            st.assigns += 1;
            st.assigned = true;
            st.owned_partitions()
        };
        self.stats.rebalances.fetch_add(1, Relaxed);
        self.ownership.changed.notify_one();
        // Under the classic protocol an assignment is the whole set; under KIP-848 (and
        // cooperative assignors) only what it adds: `owned` is what the worker holds now.
        let added: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        tracing::info!(worker = self.id, ?added, ?owned, "partitions assigned");
    }
}

/// How the controller steers a worker: stop, or hold still across a scaling step.
#[derive(Debug, Default)]
pub(crate) struct Control {
    state: Mutex<ControlState>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct ControlState {
    stop: bool,
    hold: Option<Hold>,
    /// Whether the worker is invoking (or committing, or writing a failed batch).
    busy: bool,
}

/// A request to start no invocation until a rebalance has settled.
#[derive(Debug, Clone)]
pub(crate) struct Hold {
    /// The scaling step (or, for [`u64::MAX`], the worker's own resync) it belongs to.
    step: u64,
    /// When it was requested.
    since: Instant,
    /// The longest it lasts.
    limit: Duration,
    /// When set, the hold ends once this is settled.
    settle: Option<Arc<Settle>>,
}

/// The members of a scaling step: settled once each has been assigned partitions since the step.
#[derive(Debug)]
pub(crate) struct Settle {
    members: Vec<(Arc<Ownership>, u64)>,
}

impl Settle {
    /// `members` are each worker's ownership and its assignment count before the step.
    pub(crate) fn new(members: Vec<(Arc<Ownership>, u64)>) -> Self {
        Self { members }
    }

    /// Whether every member's latest rebalance event is an assignment made after the step began.
    fn settled(&self) -> bool {
        self.members.iter().all(|(o, before)| {
            let st = o.lock();
            st.assigns > *before && st.assigned
        })
    }
}

/// Step number of a worker's own hold after a commit was refused by a rebalance.
const RESYNC: u64 = u64::MAX;
/// How long a worker waits for its own reassignment after a commit was refused by a rebalance.
const RESYNC_LIMIT: Duration = Duration::from_secs(10);

/// What a worker may do next.
enum Gate {
    Go,
    Hold,
    Stop,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().expect("control lock poisoned")
    }

    /// Asks the worker to abandon what it does and leave the group.
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }

    /// Asks the worker to start no invocation until the scaling step `step` has settled (see
    /// [`settle`](Self::settle)) or [`HOLD_LIMIT`] has passed.
    pub(crate) fn hold(&self, step: u64) {
        let mut st = self.lock();
        if st.hold.as_ref().is_none_or(|h| h.step != step) {
            st.hold = Some(Hold {
                step,
                since: Instant::now(),
                limit: HOLD_LIMIT,
                settle: None,
            });
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Tells a worker held for `step` what settles it.
    pub(crate) fn settle(&self, step: u64, settle: Arc<Settle>) {
        self.hold(step);
        if let Some(h) = self.lock().hold.as_mut() {
            h.settle = Some(settle);
        }
        self.wake.notify_one();
    }

    /// Holds the worker until its own next assignment (after a commit refused by a rebalance),
    /// unless the controller holds it already.
    fn resync(&self, settle: Arc<Settle>) {
        let mut st = self.lock();
        if st.hold.is_none() {
            st.hold = Some(Hold {
                step: RESYNC,
                since: Instant::now(),
                limit: RESYNC_LIMIT,
                settle: Some(settle),
            });
        }
    }

    /// Whether the worker is in the middle of an invocation and its commit.
    pub(crate) fn busy(&self) -> bool {
        self.lock().busy
    }

    fn stopped(&self) -> bool {
        self.lock().stop
    }

    /// Whether the worker is held (for a scaling step, or waiting for its own reassignment).
    pub(crate) fn held(&self) -> bool {
        self.lock().hold.is_some()
    }

    /// Whether a stop or hold is pending.
    fn wanted(&self) -> bool {
        let st = self.lock();
        st.stop || st.hold.is_some()
    }

    /// Before an invocation: marks the worker busy unless it must stop or hold.
    fn gate(&self) -> Gate {
        let mut st = self.lock();
        if st.stop {
            Gate::Stop
        } else if st.hold.is_some() {
            Gate::Hold
        } else {
            st.busy = true;
            Gate::Go
        }
    }

    fn idle(&self) {
        self.lock().busy = false;
    }

    /// Ends the hold if it is settled or has lasted its limit; true when there is none left.
    fn try_release(&self) -> bool {
        let mut st = self.lock();
        let Some(h) = &st.hold else {
            return true;
        };
        let settled = h.settle.as_ref().is_some_and(|s| s.settled());
        let expired = h.since.elapsed() >= h.limit;
        if settled || expired {
            if expired && !settled {
                tracing::debug!(step = h.step, "hold expired before the rebalance settled");
            }
            st.hold = None;
            return true;
        }
        false
    }

    async fn stopping(&self) {
        loop {
            let woken = self.wake.notified();
            if self.stopped() {
                return;
            }
            woken.await;
        }
    }
}

/// What the controller keeps of a running worker.
pub(crate) struct WorkerHandle {
    /// The worker's number, for logs.
    pub id: usize,
    /// Its steering.
    pub control: Arc<Control>,
    /// Its partitions.
    pub ownership: Arc<Ownership>,
}

/// Why a batch failed for good.
struct Failure {
    condition: Condition,
    attempts: u32,
    message: String,
    retryable: bool,
    at: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// The invocations of one batch so far.
#[derive(Default)]
struct Tries {
    /// Invocations started.
    count: u32,
    /// When the first one started.
    first_at: Option<DateTime<Utc>>,
    /// The last failed one's error message and when it came back.
    last: Option<(String, DateTime<Utc>)>,
}

/// How one attempt loop over a batch ended.
enum Attempted {
    Succeeded,
    /// The batch's partitions were revoked: abandoned, uncommitted.
    Lost,
    Stopped,
    /// Failed for good; the worker is still marked busy.
    Failed(Failure),
}

/// How a spell of serving rebalances ended.
enum Served {
    Deadline,
    Rebalanced,
    Woken,
    Stopped,
}

type Kafka = Arc<StreamConsumer<WorkerContext>>;

/// One consumer-group member and its loop.
pub(crate) struct Worker {
    id: usize,
    config: Arc<RunnerConfig>,
    function: Arc<dyn Function>,
    stats: Arc<Stats>,
    destination: Option<Arc<Destination>>,
    consumer: Kafka,
    ownership: Arc<Ownership>,
    control: Arc<Control>,
    /// Consumed records not yet in a batch, in consumption order.
    stash: VecDeque<Msg>,
    /// Since when the batching windows have been empty (None: the last one was not).
    idle_since: Option<Instant>,
}

impl Worker {
    /// Creates the worker's consumer and joins the group (the assignment arrives as it polls).
    /// It starts held for the scaling step `step`.
    pub(crate) fn start(
        id: usize,
        step: u64,
        config: Arc<RunnerConfig>,
        function: Arc<dyn Function>,
        stats: Arc<Stats>,
        destination: Option<Arc<Destination>>,
    ) -> Result<(Self, WorkerHandle), RunnerError> {
        let ownership = Arc::new(Ownership::default());
        let control = Arc::new(Control::default());
        control.hold(step);
        let context = WorkerContext {
            id,
            ownership: ownership.clone(),
            stats: stats.clone(),
            hooks: Hooks::new(&config.kafka)?,
        };
        let consumer: Kafka = Arc::new(consumer_config(&config, id).create_with_context(context)?);
        consumer.subscribe(&[&config.topic])?;
        let handle = WorkerHandle {
            id,
            control: control.clone(),
            ownership: ownership.clone(),
        };
        let worker = Self {
            id,
            config,
            function,
            stats,
            destination,
            consumer,
            ownership,
            control,
            stash: VecDeque::new(),
            idle_since: None,
        };
        Ok((worker, handle))
    }

    /// Works until stopped (Ok) or until a batch fails with nowhere to go (Err); then leaves the group.
    pub(crate) async fn run(mut self) -> Result<(), RunnerError> {
        tracing::debug!(worker = self.id, "worker started");
        let result = self.work().await;
        let Self {
            id,
            consumer,
            config,
            stash,
            ..
        } = self;
        drop(stash);
        // Closing polls the consumer until it has left the group (revocation callbacks included):
        // blocking work, off the async threads, bounded.
        let closing = tokio::task::spawn_blocking(move || drop(consumer));
        match tokio::time::timeout(config.broker_timeout * 2, closing).await {
            Ok(_) => tracing::debug!(worker = id, "left the group"),
            Err(_) => tracing::warn!(worker = id, "leaving the group is taking long; moving on"),
        }
        result
    }

    async fn work(&mut self) -> Result<(), RunnerError> {
        loop {
            if self.control.stopped() {
                return Ok(());
            }
            if self.control.held() && !self.hold().await {
                return Ok(());
            }
            let batch = self.gather().await;
            if batch.is_empty() {
                self.idle();
            } else {
                self.idle_since = None;
                self.settle(batch).await?;
                self.resume();
            }
        }
    }

    /// Gathers up to `batch_size` records: waits for the first, then for the batching window.
    /// Returns an empty batch when nothing arrived in a window, or when stopped or held (the
    /// records gathered so far go back to the stash).
    async fn gather(&mut self) -> Vec<Msg> {
        let (window, max) = (self.config.batching_window, self.config.batch_size);
        let mut batch = Vec::new();
        let mut bytes = 0;
        self.ownership.retain_stash(&mut self.stash);
        while batch.len() < max {
            let Some(m) = self.stash.pop_front() else {
                break;
            };
            let size = event_size(&m.m);
            if !batch.is_empty() && bytes + size > MAX_PAYLOAD_BYTES {
                self.stash.push_front(m);
                return batch;
            }
            bytes += size;
            batch.push(m);
        }
        let mut deadline = Instant::now()
            + if batch.is_empty() {
                window.max(Duration::from_millis(200))
            } else {
                window
            };
        let (consumer, control, ownership) = (
            self.consumer.clone(),
            self.control.clone(),
            self.ownership.clone(),
        );
        while batch.len() < max {
            let changes = ownership.changes();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = control.wake.notified() => {
                    if control.wanted() {
                        for m in batch.into_iter().rev() {
                            self.stash.push_front(m);
                        }
                        return Vec::new();
                    }
                }
                _ = ownership.changed.notified() => {}
                r = consumer.recv() => match r {
                    Err(e) => {
                        // Transient client errors (broker down, rebalance in progress) are logged;
                        // the client reconnects by itself.
                        tracing::warn!(worker = self.id, error = %e, "consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(m) => {
                        let m = m.detach();
                        if let Some(epoch) = self.arrived(&m) {
                            let size = event_size(&m);
                            if !batch.is_empty() && bytes + size > MAX_PAYLOAD_BYTES {
                                // Too big for this invocation: it starts the next batch.
                                self.stash.push_back(Msg { m, epoch });
                                break;
                            }
                            if batch.is_empty() {
                                deadline = Instant::now() + window;
                            }
                            bytes += size;
                            batch.push(Msg { m, epoch });
                        }
                    }
                },
            }
            if ownership.changes() != changes {
                ownership.retain(&mut batch);
                ownership.retain_stash(&mut self.stash);
                bytes = batch.iter().map(|m| event_size(&m.m)).sum();
            }
        }
        ownership.retain(&mut batch);
        batch
    }

    /// Processes a batch to the end: success, the on-failure destination (bisecting first when
    /// configured), or an error when there is no destination. Commits after each part in order.
    async fn settle(&mut self, batch: Vec<Msg>) -> Result<(), RunnerError> {
        let mut parts = VecDeque::from([batch]);
        while let Some(mut part) = parts.pop_front() {
            match self.attempt(&mut part).await {
                Attempted::Succeeded | Attempted::Lost => {}
                Attempted::Stopped => return Ok(()),
                Attempted::Failed(f) => {
                    if self.config.bisect_on_error && part.len() > 1 {
                        self.control.idle();
                        self.stats.bisections.fetch_add(1, Relaxed);
                        let right = part.split_off(part.len() / 2);
                        tracing::info!(
                            worker = self.id,
                            first = %first_id(&part),
                            left = part.len(),
                            right = right.len(),
                            error = %f.message,
                            "bisecting a failing batch"
                        );
                        parts.push_front(right);
                        parts.push_front(part);
                        continue;
                    }
                    let sent = self.fail(&part, f).await;
                    self.control.idle();
                    sent?;
                }
            }
        }
        Ok(())
    }

    /// Invokes a batch until it succeeds, fails for good, is revoked or the worker stops.
    ///
    /// Each round, in this order: drop revoked records and wait out a hold ([`ready`](Self::ready)),
    /// fail on records past `--max-record-age` ([`too_old`](Self::too_old)), invoke and commit on
    /// success ([`invoke`](Self::invoke)), fail on a non-retryable error or spent retries
    /// ([`gives_up`](Self::gives_up)), else back off with the partitions paused
    /// ([`back_off`](Self::back_off)).
    async fn attempt(&mut self, part: &mut Vec<Msg>) -> Attempted {
        let mut tries = Tries::default();
        let mut delays = retry_delays(FIRST_RETRY_DELAY);
        loop {
            if let Err(end) = self.ready(part).await {
                return end;
            }
            if let Some(failure) = self.too_old(part, &tries) {
                return Attempted::Failed(failure);
            }
            tries.count += 1;
            if tries.count > 1 {
                self.stats.retries.fetch_add(1, Relaxed);
            }
            tries.first_at.get_or_insert_with(Utc::now);
            let e = match self.invoke(part).await {
                Ok(end) => return end,
                Err(e) => e,
            };
            self.stats.invocation_errors.fetch_add(1, Relaxed);
            let now = Utc::now();
            if let Some(condition) = self.gives_up(&e, tries.count) {
                return Attempted::Failed(Failure {
                    condition,
                    attempts: tries.count,
                    message: e.message.clone(),
                    retryable: e.retryable,
                    at: tries.first_at.map(|f| (f, now)),
                });
            }
            self.control.idle();
            tries.last = Some((e.message.clone(), now));
            let delay = delays.next().unwrap_or(MAX_RETRY_DELAY);
            tracing::warn!(
                worker = self.id,
                attempt = tries.count,
                first = %first_id(part),
                records = part.len(),
                error = %e,
                retry_in_ms = delay.as_millis() as u64,
                "batch failed; retrying"
            );
            if let Err(end) = self.back_off(part, delay).await {
                return end;
            }
        }
    }

    /// Drops the batch's revoked records and waits out a hold until the worker may invoke (it is
    /// then marked busy); Err is how the attempt ends instead (revoked, or stopped).
    async fn ready(&mut self, part: &mut Vec<Msg>) -> Result<(), Attempted> {
        loop {
            self.ownership.retain(part);
            if part.is_empty() {
                self.stats.abandoned_batches.fetch_add(1, Relaxed);
                tracing::debug!(
                    worker = self.id,
                    "the batch's partitions were revoked: abandoned uncommitted"
                );
                return Err(Attempted::Lost);
            }
            match self.control.gate() {
                Gate::Stop => return Err(self.abandon(part)),
                Gate::Hold => {
                    if !self.hold().await {
                        return Err(self.abandon(part));
                    }
                }
                Gate::Go => return Ok(()),
            }
        }
    }

    /// The failure of a batch whose oldest record is older than `--max-record-age`, if it is.
    fn too_old(&self, part: &[Msg], tries: &Tries) -> Option<Failure> {
        let max_age = self.config.max_record_age?;
        if oldest_age(part).is_none_or(|age| age <= max_age) {
            return None;
        }
        Some(Failure {
            condition: Condition::RecordAgeExceeded,
            attempts: tries.count,
            message: tries.last.as_ref().map_or_else(
                || {
                    format!(
                        "records older than --max-record-age {}",
                        humantime::format_duration(max_age)
                    )
                },
                |l| l.0.clone(),
            ),
            retryable: true,
            at: tries.first_at.zip(tries.last.as_ref().map(|l| l.1)),
        })
    }

    /// Invokes the function once on the batch and, when it succeeds, commits past it: Ok is how
    /// the attempt ends (succeeded, or stopped during the invocation), Err the function's error.
    async fn invoke(&mut self, part: &[Msg]) -> Result<Attempted, FunctionError> {
        let event = kafka_event(part.iter().map(|m| &m.m), &self.config.kafka.brokers);
        let (function, control) = (self.function.clone(), self.control.clone());
        let started = Instant::now();
        let result = tokio::select! {
            r = function.invoke(event) => r,
            _ = control.stopping() => {
                self.control.idle();
                return Ok(self.abandon(part));
            }
        };
        self.stats.invocation_seconds.observe(started.elapsed());
        let result = result?;
        tracing::debug!(worker = self.id, records = part.len(), ms = started.elapsed().as_millis() as u64, %result, "batch ok");
        self.stats.records.fetch_add(part.len() as u64, Relaxed);
        self.stats.batches.fetch_add(1, Relaxed);
        self.commit(part).await;
        self.control.idle();
        Ok(Attempted::Succeeded)
    }

    /// Why a failed invocation is the batch's last, if it is: a non-retryable error under
    /// `--fail-fast-non-retryable`, then more than `--max-retry-attempts` attempts.
    fn gives_up(&self, e: &FunctionError, attempts: u32) -> Option<Condition> {
        if !e.retryable && self.config.fail_fast_non_retryable {
            return Some(Condition::NonRetryableError);
        }
        if self
            .config
            .max_retry_attempts
            .is_some_and(|max| attempts > max)
        {
            return Some(Condition::RetryAttemptsExhausted);
        }
        None
    }

    /// Backs off for `delay` with the partitions paused, serving rebalances meanwhile (a batch
    /// left empty by them ends the wait early); Err is how the attempt ends if the worker stops.
    async fn back_off(&mut self, part: &mut Vec<Msg>, delay: Duration) -> Result<(), Attempted> {
        let deadline = Instant::now() + delay;
        loop {
            match self.serve(deadline).await {
                Served::Stopped => return Err(self.abandon(part)),
                Served::Deadline => return Ok(()),
                Served::Woken => {}
                Served::Rebalanced => {
                    self.ownership.retain(part);
                    if part.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn abandon(&self, part: &[Msg]) -> Attempted {
        self.stats.abandoned_batches.fetch_add(1, Relaxed);
        tracing::info!(worker = self.id, records = part.len(), first = %first_id(part), "stopping: abandoning the in-flight batch uncommitted");
        Attempted::Stopped
    }

    /// Writes a batch that failed for good to the on-failure destination and commits past it, or
    /// stops the runner when there is none.
    async fn fail(&mut self, part: &[Msg], f: Failure) -> Result<(), RunnerError> {
        let first = first_id(part);
        let Some(destination) = self.destination.clone() else {
            return Err(RunnerError::Failed {
                first,
                records: part.len(),
                condition: f.condition,
                attempts: f.attempts,
                message: f.message,
            });
        };
        let record = FailedBatch::new(
            part.iter().map(|m| &m.m),
            kafka_event(part.iter().map(|m| &m.m), &self.config.kafka.brokers),
            &self.config.kafka.brokers,
            &self.config.group,
            f.condition,
            f.attempts,
            (f.message.clone(), f.retryable),
            f.at,
        );
        let mut delays = retry_delays(FIRST_RETRY_DELAY);
        for attempt in 1..=DESTINATION_ATTEMPTS {
            match destination.send(&record, self.config.broker_timeout).await {
                Ok(at) => {
                    self.stats.on_failure_batches.fetch_add(1, Relaxed);
                    self.stats
                        .on_failure_records
                        .fetch_add(part.len() as u64, Relaxed);
                    tracing::warn!(
                        worker = self.id,
                        destination = %at,
                        condition = ?f.condition,
                        attempts = f.attempts,
                        records = part.len(),
                        first = %first,
                        error = %f.message,
                        "batch sent to the on-failure destination; moving past it"
                    );
                    self.commit(part).await;
                    return Ok(());
                }
                Err(e) if attempt < DESTINATION_ATTEMPTS => {
                    tracing::warn!(worker = self.id, attempt, error = %e, "writing to the on-failure destination failed; retrying");
                    let delay = delays.next().unwrap_or(MAX_RETRY_DELAY);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.control.stopping() => {
                            self.abandon(part);
                            return Ok(());
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the last destination attempt returns")
    }

    /// Commits the offsets after `part` (plus any whose commit failed earlier) for partitions
    /// still owned in the same epoch. A failed commit is kept and retried with the next one.
    async fn commit(&mut self, part: &[Msg]) {
        let tpl = {
            let mut st = self.ownership.lock();
            let OwnState { owned, pending, .. } = &mut *st;
            for m in part {
                let next = m.m.offset() + 1;
                let e = pending.entry(m.key()).or_insert((m.epoch, next));
                *e = if e.0 == m.epoch {
                    (m.epoch, e.1.max(next))
                } else {
                    (m.epoch, next)
                };
            }
            pending.retain(|k, (epoch, _)| owned.get(k) == Some(epoch));
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), (_, offset)) in pending.iter() {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .expect("offsets are valid");
            }
            tpl
        };
        if tpl.count() == 0 {
            return;
        }
        let (c, t) = (self.consumer.clone(), self.config.broker_timeout);
        let committing = tpl.clone();
        match blocking("commit", t, move || c.commit(&committing, CommitMode::Sync)).await {
            Ok(()) => {
                let mut st = self.ownership.lock();
                for e in tpl.elements() {
                    let key = (e.topic().to_owned(), e.partition());
                    if st.pending.get(&key).map(|p| Offset::Offset(p.1)) == Some(e.offset()) {
                        st.pending.remove(&key);
                    }
                }
            }
            Err(e) => {
                self.stats.commit_failures.fetch_add(1, Relaxed);
                tracing::warn!(worker = self.id, error = %e, "commit failed; retried with the next commit or before the partitions are revoked");
                if refused_by_rebalance(&e) {
                    // The group is rebalancing: invoking more batches now would only produce
                    // commits that are refused too. Wait for the new assignment instead.
                    let me = Settle::new(vec![(self.ownership.clone(), self.ownership.assigns())]);
                    self.control.resync(Arc::new(me));
                }
            }
        }
    }

    /// Waits, consuming nothing, until the rebalance of the scaling step it is held for has
    /// settled (every worker of the step assigned since), or the hold's limit passed. False when
    /// stopped meanwhile.
    async fn hold(&mut self) -> bool {
        let held = loop {
            if self.control.try_release() {
                break true;
            }
            // Other workers' assignments do not wake this one: look again every 50ms.
            let again = Instant::now() + Duration::from_millis(50);
            if let Served::Stopped = self.serve(again).await {
                break false;
            }
        };
        self.resume();
        held
    }

    /// Polls the consumer with the assignment paused (a partition whose fetch has not started yet
    /// from its first record on), so that rebalances are served but hardly any record is consumed,
    /// until the deadline, a rebalance or a control request. A record that still arrives goes to
    /// the stash.
    async fn serve(&mut self, deadline: Instant) -> Served {
        self.pause();
        if self.control.stopped() {
            return Served::Stopped;
        }
        let (consumer, control, ownership) = (
            self.consumer.clone(),
            self.control.clone(),
            self.ownership.clone(),
        );
        let changes = ownership.changes();
        let served = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Served::Deadline,
            _ = control.wake.notified() => Served::Woken,
            _ = ownership.changed.notified() => Served::Rebalanced,
            r = consumer.recv() => {
                match r {
                    Ok(m) => {
                        let m = m.detach();
                        if let Some(epoch) = self.arrived(&m) {
                            self.stash.push_back(Msg { m, epoch });
                        }
                    }
                    Err(e) => {
                        tracing::debug!(worker = self.id, error = %e, "consume error while paused");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Served::Woken
            }
        };
        if ownership.changes() != changes {
            ownership.retain_stash(&mut self.stash);
        }
        if self.control.stopped() {
            Served::Stopped
        } else {
            served
        }
    }

    /// After [`IDLE_RESUME`] of empty windows, resumes the partitions it could have paused again
    /// unless the worker keeps them paused on purpose (cheap, and idempotent in librdkafka).
    fn idle(&mut self) {
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < IDLE_RESUME {
            return;
        }
        self.idle_since = Some(Instant::now());
        if self.ownership.lock().paused {
            return;
        }
        let tpl = self.ownership.fetching();
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::debug!(worker = self.id, error = %e, "resume while idle");
            }
            if tracing::enabled!(tracing::Level::TRACE) {
                let positions = self.consumer.position().map(|p| {
                    p.elements()
                        .iter()
                        .map(|e| format!("{}:{:?}", e.partition(), e.offset()))
                        .collect::<Vec<_>>()
                        .join(",")
                });
                tracing::trace!(worker = self.id, ?positions, "idle: assignment resumed");
            }
        }
    }

    /// The partition of a record that arrived, if owned, with its epoch; pauses the partition
    /// when this is its first record while the worker holds still.
    fn arrived(&self, m: &OwnedMessage) -> Option<u64> {
        let Some((epoch, pause)) = self.ownership.arrived(m.topic(), m.partition()) else {
            // Fetched before a revocation: the new owner processes it from the committed offset.
            tracing::debug!(
                worker = self.id,
                topic = m.topic(),
                partition = m.partition(),
                offset = m.offset(),
                "record of a partition this worker does not own: dropped"
            );
            return None;
        };
        if pause {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(m.topic(), m.partition());
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::debug!(worker = self.id, error = %e, partition = m.partition(), "pause at first record");
            }
        }
        Some(epoch)
    }

    /// Pauses the partitions that are fetching; the others are paused at their first record.
    fn pause(&self) {
        let mut st = self.ownership.lock();
        if st.paused {
            return;
        }
        st.paused = true;
        drop(st);
        let tpl = self.ownership.fetching();
        if tpl.count() > 0
            && let Err(e) = self.consumer.pause(&tpl)
        {
            tracing::debug!(worker = self.id, error = %e, "pause");
        }
    }

    fn resume(&self) {
        let mut st = self.ownership.lock();
        if !st.paused {
            return;
        }
        st.paused = false;
        drop(st);
        let tpl = self.ownership.fetching();
        if tpl.count() > 0
            && let Err(e) = self.consumer.resume(&tpl)
        {
            tracing::debug!(worker = self.id, error = %e, "resume");
        }
    }
}

/// The librdkafka settings of a worker's consumer: the runner's, then the connection's.
fn consumer_config(config: &RunnerConfig, id: usize) -> ClientConfig {
    let reset = match config.starting_position {
        StartingPosition::Latest => "latest",
        // A timestamp position is seeded as committed offsets at start; earliest is the safe fallback.
        StartingPosition::Earliest | StartingPosition::Timestamp(_) => "earliest",
    };
    let mut cc = ClientConfig::new();
    cc.set("group.id", &config.group)
        .set("client.id", format!("damselfly-runner-{id}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", reset)
        .set("group.protocol", config.group_protocol.as_str())
        // A worker polls between invocations only, and a remote invocation may take Lambda's
        // longest timeout: librdkafka's 5-minute default would drop the worker from the group in
        // the middle of one (its write would then meet the new owner's in the lake's ledger).
        .set(
            "max.poll.interval.ms",
            (crate::remote::INVOKE_TIMEOUT + Duration::from_secs(60))
                .as_millis()
                .to_string(),
        );
    match config.group_protocol {
        GroupProtocol::Classic => {
            // A dead member's partitions move after 6 s (the broker's minimum by default); an
            // eager protocol: every rebalance revokes all and assigns anew.
            cc.set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .set("partition.assignment.strategy", "range,roundrobin");
        }
        // The broker owns session timeout, heartbeat and assignment under KIP-848: librdkafka
        // refuses the classic settings, and assignments change incrementally.
        GroupProtocol::Consumer => {}
    }
    // librdkafka prefetches up to 64 MiB per consumer by default, and a worker is a consumer: at
    // 20,000 VMs with a backlog, four workers' prefetch held ~300 MiB of the runner's 1 GiB peak
    // (issue 25). Lambda's pollers hold no prefetch in the function's memory; a worker needs
    // about one batch ahead, so it keeps two. A `--kafka-option` overrides both.
    cc.set(
        "queued.max.messages.kbytes",
        prefetch_kbytes(config.batch_size).to_string(),
    )
    .set(
        "queued.min.messages",
        (2 * config.batch_size).max(1_000).to_string(),
    );
    config.kafka.apply(&mut cc);
    cc
}

/// KiB of prefetched records a worker's consumer keeps: two batches of 2 KiB records, 4-16 MiB.
fn prefetch_kbytes(batch_size: usize) -> usize {
    (2 * batch_size * 2).clamp(4 * 1024, 16 * 1024)
}

/// Whether a commit failed because the group is rebalancing (or moved on without this member).
fn refused_by_rebalance(e: &RunnerError) -> bool {
    matches!(
        e,
        RunnerError::Kafka(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
        ))
    )
}

/// The batch's first record as `topic-partition@offset`.
fn first_id(part: &[Msg]) -> String {
    part.first().map_or_else(String::new, |m| {
        format!("{}-{}@{}", m.m.topic(), m.m.partition(), m.m.offset())
    })
}

/// Age of the oldest record that has a timestamp.
fn oldest_age(part: &[Msg]) -> Option<Duration> {
    let oldest = part
        .iter()
        .filter_map(|m| m.m.timestamp().to_millis())
        .min()?;
    let age = Utc::now().timestamp_millis() - oldest;
    Some(Duration::from_millis(age.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap_with_jitter_on_top() {
        let base = |n: u32| (FIRST_RETRY_DELAY * 2_u32.pow(n.min(20))).min(MAX_RETRY_DELAY);
        let runs: Vec<Vec<Duration>> = (0..20)
            .map(|_| retry_delays(FIRST_RETRY_DELAY).take(12).collect())
            .collect();
        for run in &runs {
            for (n, d) in run.iter().enumerate() {
                let b = base(n as u32);
                assert!(
                    *d >= b && *d < b * 2,
                    "retry {n}: {d:?} outside [{b:?}, {:?})",
                    b * 2
                );
            }
        }
        assert!(
            runs.iter().any(|r| r != &runs[0]),
            "twenty workers retrying together would all wait alike"
        );
    }
    use rdkafka::consumer::BaseConsumer;

    fn kbytes(cc: &ClientConfig) -> usize {
        cc.get("queued.max.messages.kbytes")
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn prefetch_is_two_batches_within_bounds_and_librdkafka_accepts_it() {
        for (batch_size, want) in [
            (1, 4 * 1024),
            (1_000, 4 * 1024),
            (3_000, 12_000),
            (10_000, 16 * 1024),
        ] {
            let mut config = RunnerConfig::new("127.0.0.1:9", "metrics", "g");
            config.batch_size = batch_size;
            let cc = consumer_config(&config, 0);
            assert_eq!(kbytes(&cc), want, "batch size {batch_size}");
            let min: usize = cc.get("queued.min.messages").unwrap().parse().unwrap();
            assert_eq!(min, (2 * batch_size).max(1_000));
            cc.create::<BaseConsumer>()
                .unwrap_or_else(|e| panic!("librdkafka refused batch size {batch_size}: {e}"));
        }
    }

    #[test]
    fn a_kafka_option_overrides_the_prefetch_bound() {
        let mut config = RunnerConfig::new("127.0.0.1:9", "metrics", "g");
        config.kafka.options = vec![("queued.max.messages.kbytes".into(), "65536".into())];
        assert_eq!(kbytes(&consumer_config(&config, 0)), 65_536);
    }
}
