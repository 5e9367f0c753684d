//! The agent loop: collect every interval, publish, spool while the broker is away, resend in order.
//!
//! Every message sent goes into an in-flight queue (with a copy of its bytes) until librdkafka's
//! delivery report settles it. All messages carry the same key, so they go to one partition and
//! their reports come back in send order: the n new reports since the last look settle the n oldest
//! in-flight messages. A message is spooled when its delivery failed or `send` refused it; while
//! the oldest unacknowledged message is older than `kafka.slow_after`, or the spool holds anything,
//! new messages are not sent but spooled (held in memory first while older messages are still
//! unsettled, so the spool stays in collection order). Once the oldest unacknowledged message is
//! `slow_after` old, every unsettled message is taken back from the producer
//! ([`Transport::purge`]) instead of waiting for `kafka.delivery_timeout`: they settle as failures
//! at once and go to the spool in order, held ones after them. So an outage keeps at most
//! `slow_after` of collections only in memory (all a SIGKILL can lose), and a broker that comes
//! back cannot take newer messages ahead of older ones that timed out. The spool is resent oldest
//! first in batches, and committed only as far as every report of the batch was a success; after a
//! failed batch the next one is a single record (a probe), with backoff. Delivery is at least once:
//! a batch with mixed reports is resent whole, and a message taken back while the broker was
//! writing it is sent again. After [`REBUILD_AFTER`] failed resends in a row the producer is
//! replaced by a new one, which gets over a broker that came back without the old producer's
//! idempotence state.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use damselfly_schemas::Tags;
use serde::Serialize;

use crate::collect::{Collection, Collector, hostname};
use crate::config::AgentConfig;
use crate::spool::{Spool, SpoolError, SpoolOptions};
use crate::{PublishError, Publisher, PublisherConfig, imds};

/// First wait after a failed resend, before jitter; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait between resend attempts while the broker stays away, before jitter.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Waits between failed resends: doubling from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], each stretched
/// by a random factor in [1, 2), so that a fleet's agents, which lose the broker together, do not
/// all come back to it in the same second.
fn resend_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::new()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Failed resends in a row after which the agent builds a new producer (see [`SendQueue::with_rebuild`]).
pub const REBUILD_AFTER: u32 = 3;

/// Most messages held in memory while older ones are unsettled; past it they go to the spool.
const HELD_MAX: usize = 10_000;

/// How long `--once` lets pass between the two /proc/stat readings of the cpu percentages.
pub const ONCE_WINDOW: Duration = Duration::from_secs(1);

/// Where messages go: the Kafka [`Publisher`], or a fake in tests.
pub trait Transport {
    /// Queues one message; an error means it was not queued.
    fn send(&self, key: &str, payload: &[u8]) -> Result<(), PublishError>;
    /// Running totals of delivery reports: (delivered, failed).
    fn outcomes(&self) -> (u64, u64);
    /// Fails every message queued or in flight now: their delivery reports come back as failures
    /// (a message the broker wrote without acknowledging it yet may then be sent twice).
    fn purge(&self) {}
}

impl Transport for Publisher {
    fn send(&self, key: &str, payload: &[u8]) -> Result<(), PublishError> {
        Publisher::send(self, key, payload)
    }

    fn outcomes(&self) -> (u64, u64) {
        let d = self.deliveries();
        (d.delivered.load(Relaxed), d.failed.load(Relaxed))
    }

    fn purge(&self) {
        Publisher::purge(self);
    }
}

/// Timing and batching of the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Collection interval.
    pub interval: Duration,
    /// Age of the oldest unacknowledged message past which new messages are spooled.
    pub slow_after: Duration,
    /// How often the health line is logged.
    pub health_every: Duration,
    /// How often delivery reports are looked at and the spool resent.
    pub poll_every: Duration,
    /// Most spooled messages resent at once.
    pub drain_batch: usize,
    /// How long shutdown waits for unsettled messages before spooling them.
    pub shutdown_grace: Duration,
}

impl RunOptions {
    /// The loop settings for a configuration: health every minute, reports every 100 ms.
    pub fn from_config(config: &AgentConfig) -> Self {
        Self {
            interval: config.interval,
            slow_after: config.kafka.slow_after,
            health_every: Duration::from_secs(60),
            poll_every: Duration::from_millis(100),
            drain_batch: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Running totals of the loop (`backlog` is the spool's size now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Collections made.
    pub collections: u64,
    /// Messages the broker acknowledged (first sends and resends).
    pub sent: u64,
    /// Samples in first-send messages the broker acknowledged.
    pub samples: u64,
    /// Messages written to the spool.
    pub spooled: u64,
    /// Spooled messages the broker acknowledged.
    pub resent: u64,
    /// Spooled messages dropped by the spool's size cap.
    pub evicted: u64,
    /// Messages neither delivered nor spooled (the spool could not take them).
    pub lost: u64,
    /// Collection, send, delivery and spool errors.
    pub errors: u64,
    /// Messages waiting in the spool.
    pub backlog: u64,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Kafka producer could not be created.
    #[error("kafka producer: {0}")]
    Publish(#[from] PublishError),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// A message on its way.
#[derive(Debug)]
struct InFlight {
    /// Key and bytes of a first send (kept to spool it on failure); empty for resends.
    message: Option<Message>,
    /// Whether it came from the spool.
    from_spool: bool,
    sent_at: Instant,
}

#[derive(Debug)]
struct Message {
    key: String,
    payload: Vec<u8>,
    samples: u64,
}

/// The spool records of one resend batch.
#[derive(Debug, Default)]
struct Drain {
    sent: usize,
    settled: usize,
    /// Leading records all reported delivered.
    ok_prefix: usize,
    failed: bool,
}

/// Builds a fresh transport (a new Kafka producer).
pub type MakeTransport<T> = Box<dyn FnMut() -> Result<T, PublishError> + Send>;

/// Sends messages, settles delivery reports, spools and resends: the agent's state machine.
pub struct SendQueue<T> {
    transport: T,
    rebuild: Option<(u32, MakeTransport<T>)>,
    failed_resends: u32,
    spool: Spool,
    slow_after: Duration,
    drain_batch: usize,
    inflight: VecDeque<InFlight>,
    held: Vec<Message>,
    seen: (u64, u64),
    drain: Option<Drain>,
    probe: bool,
    retry_at: Option<Instant>,
    /// Waits between failed resends, until one succeeds.
    delays: backon::ExponentialBackoff,
    /// The unsettled messages were taken back from the transport; cleared once none is left.
    purged: bool,
    spooling: bool,
    dirty: bool,
    stats: RunStats,
}

impl<T: Transport> SendQueue<T> {
    /// A send queue over a transport and a spool (which may hold messages from a previous run).
    pub fn new(transport: T, spool: Spool, slow_after: Duration, drain_batch: usize) -> Self {
        let seen = transport.outcomes();
        let spooling = !spool.is_empty();
        Self {
            transport,
            rebuild: None,
            failed_resends: 0,
            spool,
            slow_after,
            drain_batch: drain_batch.max(1),
            inflight: VecDeque::new(),
            held: Vec::new(),
            seen,
            drain: None,
            probe: false,
            retry_at: None,
            delays: resend_delays(),
            purged: false,
            spooling,
            dirty: false,
            stats: RunStats::default(),
        }
    }

    /// Replaces the transport with `make()` after `after` failed resends in a row. A producer can
    /// stay stuck when the broker comes back but no longer knows it (its idempotent producer id is
    /// gone after a broker was replaced or its data wiped: every send fails with
    /// UnknownProducerId); a new producer gets a new id. Harmless while the broker is really down.
    pub fn with_rebuild(
        mut self,
        after: u32,
        make: impl FnMut() -> Result<T, PublishError> + Send + 'static,
    ) -> Self {
        self.rebuild = Some((after.max(1), Box::new(make)));
        self
    }

    /// Totals so far.
    pub fn stats(&self) -> RunStats {
        RunStats {
            backlog: self.spool.len(),
            ..self.stats
        }
    }

    /// Counts errors found outside the queue (collection) in its totals.
    pub fn count_errors(&mut self, n: u64) {
        self.stats.errors += n;
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Messages sent and not settled yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn live_in_flight(&self) -> bool {
        self.inflight.iter().any(|m| !m.from_spool)
    }

    fn slow(&self, now: Instant) -> bool {
        self.oldest_unacked_age(now)
            .is_some_and(|age| age >= self.slow_after)
    }

    /// How long the oldest unacknowledged message has waited; `None` when nothing is in flight.
    fn oldest_unacked_age(&self, now: Instant) -> Option<Duration> {
        self.inflight
            .front()
            .map(|m| now.saturating_duration_since(m.sent_at))
    }

    /// Sends a new message, or keeps it (spool or memory) behind older undelivered ones.
    pub fn submit(&mut self, key: String, payload: Vec<u8>, samples: u64, now: Instant) {
        self.settle(now);
        let message = Message {
            key,
            payload,
            samples,
        };
        let slow = self.slow(now);
        if self.spool.is_empty() && self.held.is_empty() && self.drain.is_none() && !slow {
            match self.transport.send(&message.key, &message.payload) {
                Ok(()) => {
                    self.inflight.push_back(InFlight {
                        message: Some(message),
                        from_spool: false,
                        sent_at: now,
                    });
                    return;
                }
                Err(e) => {
                    self.stats.errors += 1;
                    tracing::warn!(error = %e, "send refused: spooling the message");
                }
            }
        } else if slow && !self.spooling {
            let age = self.oldest_unacked_age(now).unwrap_or_default();
            tracing::warn!(
                oldest_unacked_ms = age.as_millis() as u64,
                in_flight = self.inflight.len(),
                "broker slow or unreachable: spooling new messages"
            );
            self.spooling = true;
        }
        if self.live_in_flight() && self.held.len() < HELD_MAX {
            // Older messages may still fail and be spooled: this one must come after them.
            self.held.push(message);
        } else {
            self.spool_message(message);
        }
    }

    fn spool_message(&mut self, m: Message) {
        if !self.spooling {
            tracing::warn!("broker unreachable: spooling messages until it is back");
            self.spooling = true;
        }
        match self.spool.push(&m.key, &m.payload) {
            Ok(evicted) => {
                self.stats.spooled += 1;
                self.stats.evicted += evicted.records;
                self.dirty = true;
            }
            Err(e) => {
                self.stats.errors += 1;
                self.stats.lost += 1;
                tracing::error!(error = %e, "spool refused a message: it is lost");
            }
        }
    }

    /// Applies the delivery reports that arrived since the last call.
    fn settle(&mut self, now: Instant) {
        let (delivered, failed) = self.transport.outcomes();
        let new_ok = delivered.saturating_sub(self.seen.0);
        let new_failed = failed.saturating_sub(self.seen.1);
        self.seen = (delivered, failed);
        if new_ok + new_failed == 0 {
            return;
        }
        self.stats.sent += new_ok;
        self.stats.errors += new_failed;
        let all_ok = new_failed == 0;
        let n = usize::try_from(new_ok + new_failed).unwrap_or(usize::MAX);
        let mut respooled = 0;
        for m in self
            .inflight
            .drain(..n.min(self.inflight.len()))
            .collect::<Vec<_>>()
        {
            if m.from_spool {
                if let Some(d) = self.drain.as_mut() {
                    d.settled += 1;
                    if all_ok && !d.failed {
                        d.ok_prefix += 1;
                    } else {
                        d.failed = true;
                    }
                }
            } else if let Some(msg) = m.message {
                if all_ok {
                    self.stats.samples += msg.samples;
                } else {
                    // Failed, or settled in a window with failures: resend (at least once).
                    respooled += 1;
                    self.spool_message(msg);
                }
            }
        }
        if new_failed > 0 {
            tracing::warn!(
                failed = new_failed,
                delivered = new_ok,
                respooled,
                "deliveries failed: spooled for resending"
            );
        }
        if let Some(d) = &self.drain
            && d.settled >= d.sent
        {
            self.finish_drain(now);
        }
        if self.inflight.is_empty() {
            self.purged = false;
        }
    }

    /// Once the oldest unsettled message is `slow_after` old, fails every unsettled message at
    /// once ([`Transport::purge`]) rather than waiting for `delivery_timeout`: first sends are then
    /// spooled in order and held messages follow them, so little stays only in memory.
    fn take_back(&mut self, now: Instant) {
        if self.purged || !self.slow(now) {
            return;
        }
        self.purged = true;
        let age = self.oldest_unacked_age(now).unwrap_or_default();
        tracing::warn!(
            oldest_unacked_ms = age.as_millis() as u64,
            in_flight = self.inflight.len(),
            held = self.held.len(),
            "no acknowledgement from the broker: taking unsettled messages back to spool them"
        );
        self.transport.purge();
        self.settle(now); // a transport may report the failures at once
    }

    fn finish_drain(&mut self, now: Instant) {
        let Some(d) = self.drain.take() else { return };
        if let Err(e) = self.spool.commit(d.ok_prefix) {
            self.stats.errors += 1;
            tracing::error!(error = %e, "spool commit failed: those messages will be sent again");
        }
        self.stats.resent += d.ok_prefix as u64;
        if d.failed {
            self.failed_resends += 1;
            self.maybe_rebuild();
            let wait = self.delays.next().unwrap_or(MAX_BACKOFF);
            self.retry_at = Some(now + wait);
            tracing::info!(
                resent = d.ok_prefix,
                retry_in_ms = wait.as_millis() as u64,
                backlog = self.spool.len(),
                "resending the spool failed: probing again later"
            );
            self.probe = true;
        } else {
            self.failed_resends = 0;
            self.retry_at = None;
            self.delays = resend_delays();
            self.probe = false;
        }
    }

    /// Builds a new transport once enough resends failed in a row and nothing is in flight.
    fn maybe_rebuild(&mut self) {
        let Some((after, make)) = self.rebuild.as_mut() else {
            return;
        };
        if self.failed_resends < *after || !self.inflight.is_empty() {
            return;
        }
        match make() {
            Ok(t) => {
                tracing::warn!(
                    failed_resends = self.failed_resends,
                    "resends keep failing: replaced the Kafka producer with a new one"
                );
                // The old one has nothing in flight; its reports no longer matter.
                self.transport = t;
                self.seen = self.transport.outcomes();
                self.failed_resends = 0;
            }
            Err(e) => {
                self.stats.errors += 1;
                tracing::warn!(error = %e, "could not build a new Kafka producer");
            }
        }
    }

    /// Looks at delivery reports, takes unsettled messages back once the oldest is `slow_after` old,
    /// moves held messages to the spool once older ones are settled, and resends the spool when
    /// nothing older is on its way.
    pub fn poll(&mut self, now: Instant) {
        self.settle(now);
        self.take_back(now);
        if !self.held.is_empty() && !self.live_in_flight() {
            for m in std::mem::take(&mut self.held) {
                self.spool_message(m);
            }
        }
        if self.dirty {
            if let Err(e) = self.spool.sync() {
                self.stats.errors += 1;
                tracing::warn!(error = %e, "spool sync failed");
            }
            self.dirty = false;
        }
        self.resend(now);
        if self.spooling && self.spool.is_empty() && self.held.is_empty() && !self.slow(now) {
            tracing::info!(resent = self.stats.resent, "spool drained: broker is back");
            self.spooling = false;
        }
    }

    fn resend(&mut self, now: Instant) {
        if self.drain.is_some()
            || self.spool.is_empty()
            || !self.held.is_empty()
            || self.live_in_flight()
            || self.retry_at.is_some_and(|t| now < t)
        {
            return;
        }
        let max = if self.probe { 1 } else { self.drain_batch };
        let batch = match self.spool.peek(max) {
            Ok(b) => b,
            Err(e) => {
                self.stats.errors += 1;
                tracing::error!(error = %e, "reading the spool failed");
                self.retry_at = Some(now + self.delays.next().unwrap_or(MAX_BACKOFF));
                return;
            }
        };
        if batch.is_empty() {
            return; // only damaged records were left: the spool has uncounted them
        }
        let mut drain = Drain::default();
        for r in &batch {
            if let Err(e) = self.transport.send(&r.key, &r.value) {
                self.stats.errors += 1;
                drain.failed = true;
                tracing::warn!(error = %e, "resend refused");
                break;
            }
            drain.sent += 1;
            self.inflight.push_back(InFlight {
                message: None,
                from_spool: true,
                sent_at: now,
            });
        }
        self.drain = Some(drain);
        if self.drain.as_ref().is_some_and(|d| d.sent == 0) {
            self.finish_drain(now);
        }
    }

    /// Settles what it can within `grace`, then spools every unsettled first send and every held
    /// message (a message settled after this point may arrive twice), and syncs the spool.
    pub async fn close(mut self, grace: Duration, poll_every: Duration) -> RunStats {
        let deadline = Instant::now() + grace;
        self.settle(Instant::now());
        while !self.inflight.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(poll_every).await;
            self.settle(Instant::now());
        }
        let unsettled: Vec<InFlight> = self.inflight.drain(..).collect();
        let mut spooled = 0;
        for m in unsettled {
            if let Some(msg) = m.message {
                spooled += 1;
                self.spool_message(msg);
            }
        }
        for m in std::mem::take(&mut self.held) {
            spooled += 1;
            self.spool_message(m);
        }
        if let Err(e) = self.spool.sync() {
            self.stats.errors += 1;
            tracing::error!(error = %e, "spool sync at shutdown failed");
        }
        if spooled > 0 {
            tracing::info!(spooled, "unsettled messages spooled at shutdown");
        }
        self.stats()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Collects every `interval` (aligned to wall-clock multiples of it) and publishes through
/// `queue` until `shutdown` resolves; logs a health line every `health_every`.
pub async fn run<T: Transport>(
    mut collector: Collector,
    mut queue: SendQueue<T>,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> RunStats {
    use tokio::time::{MissedTickBehavior, interval_at};

    let interval_ms = options.interval.as_millis().max(1) as i64;
    let to_boundary =
        Duration::from_millis((interval_ms - now_ms().rem_euclid(interval_ms)) as u64);
    let start = tokio::time::Instant::now();
    let mut collect = interval_at(start + to_boundary, options.interval);
    collect.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut poll = interval_at(start + options.poll_every, options.poll_every);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut health = interval_at(start + options.health_every, options.health_every);
    health.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = RunStats::default();
    let mut known_errors = HashSet::new();
    tokio::pin!(shutdown);
    tracing::info!(
        vm = %collector.tags().vm,
        interval_ms,
        backlog = queue.spool().len(),
        "agent started"
    );
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = collect.tick() => {
                let Collection { message, errors } = collector.collect(now_ms());
                queue.stats.collections += 1;
                queue.count_errors(errors.len() as u64);
                for e in errors {
                    // Each distinct problem is a warning once, then debug.
                    let text = e.to_string();
                    if known_errors.insert(text.clone()) {
                        tracing::warn!(error = %text, "collection incomplete");
                    } else {
                        tracing::debug!(error = %text, "collection incomplete");
                    }
                }
                if let Err(e) = message.validate() {
                    queue.count_errors(1);
                    tracing::warn!(error = %e, "collected message is not valid: not sent");
                    continue;
                }
                let samples = message.sample_count() as u64;
                queue.submit(message.tags.vm.clone(), message.to_json(), samples, Instant::now());
            }
            _ = poll.tick() => queue.poll(Instant::now()),
            _ = health.tick() => {
                let now = queue.stats();
                tracing::info!(
                    sent = now.sent - last.sent,
                    samples = now.samples - last.samples,
                    spooled = now.spooled - last.spooled,
                    resent = now.resent - last.resent,
                    evicted = now.evicted - last.evicted,
                    lost = now.lost - last.lost,
                    errors = now.errors - last.errors,
                    backlog = now.backlog,
                    in_flight = queue.in_flight(),
                    period_s = options.health_every.as_secs(),
                    "agent health"
                );
                last = now;
            }
        }
    }
    let stats = queue
        .close(options.shutdown_grace, options.poll_every)
        .await;
    tracing::info!(
        collections = stats.collections,
        sent = stats.sent,
        samples = stats.samples,
        spooled = stats.spooled,
        resent = stats.resent,
        evicted = stats.evicted,
        lost = stats.lost,
        errors = stats.errors,
        backlog = stats.backlog,
        "agent stopped"
    );
    stats
}

/// The tags of this VM: the configured ones, with `vm`, `csp`, `region` and `host` filled in from
/// instance metadata (when enabled and needed) and the kernel's host name.
pub async fn resolve_tags(config: &AgentConfig) -> Tags {
    let t = &config.tags;
    let need = t.vm.is_empty() || t.csp.is_empty() || t.region.is_empty();
    let detected = if config.metadata.detect && need {
        imds::detect(&config.metadata.endpoint, config.metadata.timeout).await
    } else {
        None
    };
    let host = if t.host.is_empty() {
        hostname()
    } else {
        t.host.clone()
    };
    let pick = |given: &str, found: Option<&str>, fallback: &str| {
        if !given.is_empty() {
            given.to_owned()
        } else {
            found.unwrap_or(fallback).to_owned()
        }
    };
    Tags {
        ns: t.ns.clone(),
        mcis: t.mcis.clone(),
        vm: pick(
            &t.vm,
            detected.as_ref().map(|d| d.instance_id.as_str()),
            &host,
        ),
        csp: pick(&t.csp, detected.as_ref().map(|d| d.csp.as_str()), ""),
        region: pick(&t.region, detected.as_ref().map(|d| d.region.as_str()), ""),
        os: t.os.clone(),
        host,
    }
}

/// One collection for `--once`: resolves the tags, reads /proc twice [`ONCE_WINDOW`] apart.
pub async fn collect_once(config: &AgentConfig) -> Collection {
    let tags = resolve_tags(config).await;
    let mut collector = Collector::new(tags, config.skip_lists());
    tokio::time::sleep(ONCE_WINDOW).await;
    collector.collect(now_ms())
}

/// Runs the agent as configured until `shutdown` resolves: tags, producer, spool, loop.
pub async fn run_agent(
    config: &AgentConfig,
    producer_config: PublisherConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, AgentError> {
    let tags = resolve_tags(config).await;
    let publisher = Publisher::new(&producer_config)?;
    let spool = Spool::open(
        &config.spool.dir,
        SpoolOptions::with_max_bytes(config.spool.max_bytes),
    )?;
    let options = RunOptions::from_config(config);
    let collector = Collector::new(tags, config.skip_lists());
    let queue = SendQueue::new(publisher, spool, options.slow_after, options.drain_batch)
        .with_rebuild(REBUILD_AFTER, move || Publisher::new(&producer_config));
    Ok(run(collector, queue, options, shutdown).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A broker that delivers or fails queued messages when told to.
    #[derive(Clone, Default)]
    struct FakeBroker(Arc<Mutex<FakeState>>);

    #[derive(Default)]
    struct FakeState {
        queued: Vec<Vec<u8>>,
        log: Vec<Vec<u8>>,
        delivered: u64,
        failed: u64,
        refuse: bool,
        instant: bool,
    }

    impl Transport for FakeBroker {
        fn send(&self, _key: &str, payload: &[u8]) -> Result<(), PublishError> {
            let mut s = self.0.lock().unwrap();
            if s.refuse {
                return Err(PublishError::Failed {
                    failed: 1,
                    last: "refused".into(),
                });
            }
            s.queued.push(payload.to_vec());
            if s.instant {
                drop(s);
                self.deliver(usize::MAX);
            }
            Ok(())
        }

        fn outcomes(&self) -> (u64, u64) {
            let s = self.0.lock().unwrap();
            (s.delivered, s.failed)
        }

        fn purge(&self) {
            self.fail(usize::MAX);
        }
    }

    impl FakeBroker {
        fn deliver(&self, n: usize) {
            let mut s = self.0.lock().unwrap();
            let n = n.min(s.queued.len());
            let done: Vec<_> = s.queued.drain(..n).collect();
            s.delivered += done.len() as u64;
            s.log.extend(done);
        }
        fn fail(&self, n: usize) {
            let mut s = self.0.lock().unwrap();
            let n = n.min(s.queued.len());
            s.queued.drain(..n);
            s.failed += n as u64;
        }
        fn log(&self) -> Vec<String> {
            let s = self.0.lock().unwrap();
            s.log
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        }
    }

    fn queue(dir: &std::path::Path) -> (FakeBroker, SendQueue<FakeBroker>) {
        let broker = FakeBroker::default();
        let spool = Spool::open(dir, SpoolOptions::with_max_bytes(1 << 20)).unwrap();
        (
            broker.clone(),
            SendQueue::new(broker, spool, Duration::from_secs(5), 3),
        )
    }

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("m{i}")).collect()
    }

    fn submit(o: &mut SendQueue<FakeBroker>, i: usize, now: Instant) {
        o.submit("vm-1".into(), format!("m{i}").into_bytes(), 10, now);
    }

    #[test]
    fn healthy_broker_gets_everything_directly() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, mut o) = queue(dir.path());
        let t0 = Instant::now();
        for i in 0..3 {
            submit(&mut o, i, t0);
        }
        broker.deliver(usize::MAX);
        o.poll(t0);
        assert_eq!(broker.log(), names(0..3));
        let s = o.stats();
        assert_eq!((s.sent, s.samples, s.spooled, s.backlog), (3, 30, 0, 0));
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn an_outage_is_spooled_and_resent_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, mut o) = queue(dir.path());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        submit(&mut o, 0, at(0));
        broker.deliver(1);
        // The broker goes away: m1 is queued and never acknowledged.
        submit(&mut o, 1, at(2));
        o.poll(at(4));
        submit(&mut o, 2, at(4)); // m1 only 2s old: still sent
        submit(&mut o, 3, at(8)); // m1 6s old: slow, so held behind m1 and m2
        submit(&mut o, 4, at(10));
        assert_eq!(o.in_flight(), 2);
        assert_eq!(
            o.spool().len(),
            0,
            "held in memory while m1, m2 are unsettled"
        );
        // librdkafka gives up on m1 and m2: they are spooled, then m3 and m4 after them.
        broker.fail(2);
        o.poll(at(32));
        assert_eq!(o.spool().len(), 4);
        submit(&mut o, 5, at(34)); // straight to the spool
        assert_eq!(o.spool().len(), 5);
        // The first resend is a batch; it fails too, so the next is a single probe, after backoff.
        assert_eq!(o.in_flight(), 3, "a batch of 3 is being resent");
        broker.fail(3);
        o.poll(at(64));
        assert_eq!(o.in_flight(), 0, "backing off");
        o.poll(at(66));
        assert_eq!(o.in_flight(), 1, "one probe");
        // The broker is back.
        broker.deliver(usize::MAX);
        for s in 67..80 {
            o.poll(at(s));
            broker.deliver(usize::MAX);
        }
        submit(&mut o, 6, at(80));
        broker.deliver(usize::MAX);
        o.poll(at(81));
        assert_eq!(
            broker.log(),
            names(0..7),
            "every message once, in collection order"
        );
        let s = o.stats();
        assert_eq!((s.spooled, s.resent, s.backlog, s.lost), (5, 5, 0, 0));
        assert_eq!(s.sent, 7);
        assert_eq!(s.errors, 5, "five failed delivery reports");
    }

    #[test]
    fn a_silent_broker_gets_its_messages_taken_back_and_spooled_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, mut o) = queue(dir.path());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        submit(&mut o, 0, at(0));
        broker.deliver(1);
        o.poll(at(0));
        // The broker stops answering: m1 and m2 stay unacknowledged.
        submit(&mut o, 1, at(1));
        submit(&mut o, 2, at(2));
        o.poll(at(4));
        assert_eq!((o.in_flight(), o.spool().len()), (2, 0));
        submit(&mut o, 3, at(6)); // m1 is 5s old: m3 is held behind it
        o.poll(at(6)); // ... and m1, m2 are taken back: all three are on disk, in order
        assert_eq!(o.spool().len(), 3, "nothing is left only in memory");
        assert_eq!(o.stats().spooled, 3);
        // The resend batch gets no answer either: taken back after slow_after too.
        assert_eq!(o.in_flight(), 3);
        o.poll(at(11));
        assert_eq!(o.in_flight(), 0, "backing off");
        submit(&mut o, 4, at(11));
        assert_eq!(o.spool().len(), 4);
        // The broker answers again.
        for s in 12..20 {
            o.poll(at(s));
            broker.deliver(usize::MAX);
        }
        submit(&mut o, 5, at(20));
        broker.deliver(usize::MAX);
        o.poll(at(20));
        assert_eq!(broker.log(), names(0..6), "each once, in collection order");
        let s = o.stats();
        assert_eq!((s.spooled, s.resent, s.backlog, s.lost), (4, 4, 0, 0));
    }

    #[test]
    fn mixed_reports_resend_rather_than_lose() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, mut o) = queue(dir.path());
        let t0 = Instant::now();
        submit(&mut o, 0, t0);
        submit(&mut o, 1, t0);
        broker.deliver(1);
        broker.fail(1);
        o.poll(t0);
        assert_eq!(
            o.spool().len(),
            2,
            "cannot tell which failed: both are resent"
        );
        for _ in 0..3 {
            broker.deliver(usize::MAX);
            o.poll(t0);
        }
        let log = broker.log();
        assert!(log.contains(&"m0".to_owned()) && log.contains(&"m1".to_owned()));
        assert_eq!(o.spool().len(), 0);
    }

    #[test]
    fn refused_sends_are_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, mut o) = queue(dir.path());
        broker.0.lock().unwrap().refuse = true;
        let t0 = Instant::now();
        submit(&mut o, 0, t0);
        submit(&mut o, 1, t0);
        assert_eq!(o.spool().len(), 2);
        o.poll(t0);
        assert_eq!(o.spool().len(), 2, "resend refused too");
        broker.0.lock().unwrap().refuse = false;
        // The first wait is MIN_BACKOFF stretched by jitter, so over by twice that.
        let t1 = t0 + MIN_BACKOFF * 2;
        o.poll(t1);
        broker.deliver(usize::MAX);
        o.poll(t1);
        o.poll(t1 + MIN_BACKOFF);
        broker.deliver(usize::MAX);
        o.poll(t1 + MIN_BACKOFF);
        assert_eq!(broker.log(), names(0..2));
    }

    #[test]
    fn a_producer_that_keeps_failing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (stuck, o) = queue(dir.path());
        let fresh = FakeBroker::default();
        fresh.0.lock().unwrap().instant = true;
        let made = fresh.clone();
        let mut o = o.with_rebuild(2, move || Ok(made.clone()));
        let t0 = Instant::now();
        submit(&mut o, 0, t0);
        submit(&mut o, 1, t0);
        stuck.fail(2);
        o.poll(t0); // both spooled, a resend batch goes to the stuck producer
        stuck.fail(usize::MAX);
        o.poll(t0); // first failed resend: a wait of 1-2 s (MIN_BACKOFF with jitter)
        assert!(fresh.log().is_empty());
        o.poll(t0 + Duration::from_secs(2)); // the probe, stuck again
        stuck.fail(usize::MAX);
        o.poll(t0 + Duration::from_secs(2)); // second failure: rebuilt; a wait of 2-4 s
        // Past the wait (by t0 + 6 s): a poll for the probe, one to drain, one to settle.
        for s in 3..9 {
            o.poll(t0 + Duration::from_secs(s));
        }
        assert_eq!(fresh.log(), names(0..2));
        assert_eq!(o.stats().backlog, 0);
        submit(&mut o, 2, t0 + Duration::from_secs(10));
        o.poll(t0 + Duration::from_secs(10));
        assert_eq!(
            fresh.log(),
            names(0..3),
            "new messages go to the new producer"
        );
    }

    #[tokio::test]
    async fn shutdown_spools_the_unsettled_and_a_restart_resends_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_broker, mut o) = queue(dir.path());
            let t0 = Instant::now();
            submit(&mut o, 0, t0);
            submit(&mut o, 1, t0 + Duration::from_secs(6)); // held
            let stats = o
                .close(Duration::from_millis(50), Duration::from_millis(10))
                .await;
            assert_eq!(stats.backlog, 2);
        }
        let (broker, mut o) = queue(dir.path());
        assert_eq!(o.stats().backlog, 2);
        let t0 = Instant::now();
        o.poll(t0);
        broker.deliver(usize::MAX);
        o.poll(t0);
        submit(&mut o, 2, t0);
        broker.deliver(usize::MAX);
        o.poll(t0);
        assert_eq!(broker.log(), names(0..3));
    }

    #[tokio::test]
    async fn the_loop_collects_publishes_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, o) = queue(dir.path());
        broker.0.lock().unwrap().instant = true;
        let tags = Tags {
            ns: "ns01".into(),
            mcis: "mcis-1".into(),
            vm: "vm-test".into(),
            ..Tags::default()
        };
        let collector = Collector::new(tags, AgentConfig::default().skip_lists());
        let options = RunOptions {
            interval: Duration::from_millis(100),
            slow_after: Duration::from_secs(5),
            health_every: Duration::from_millis(250),
            poll_every: Duration::from_millis(20),
            drain_batch: 10,
            shutdown_grace: Duration::from_millis(100),
        };
        let stats = run(
            collector,
            o,
            options,
            tokio::time::sleep(Duration::from_millis(650)),
        )
        .await;
        assert!(stats.collections >= 4, "{stats:?}");
        assert_eq!(stats.sent, stats.collections);
        assert_eq!(stats.backlog, 0);
        for raw in broker.0.lock().unwrap().log.iter() {
            let m = damselfly_schemas::MetricMessage::from_json(raw).unwrap();
            assert_eq!(m.tags.vm, "vm-test");
            assert!(m.metrics.contains_key("mem_total"));
        }
    }

    /// The real Publisher against librdkafka's in-process mock broker: the delivery-report counters
    /// drive spooling while the broker is down, and the resend keeps collection order.
    #[test]
    fn publisher_outage_on_the_mock_cluster() {
        use rdkafka::Message as _;
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        use rdkafka::mocking::MockCluster;

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("metrics", 1, 1).unwrap();
        let mut kafka = damselfly_kafka::Connection::plaintext(cluster.bootstrap_servers());
        kafka.options = vec![
            ("message.timeout.ms".into(), "1500".into()),
            ("reconnect.backoff.max.ms".into(), "200".into()),
        ];
        let publisher = Publisher::new(&crate::PublisherConfig {
            compression: "none".into(),
            ..crate::PublisherConfig::on(kafka, "metrics")
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), SpoolOptions::with_max_bytes(1 << 20)).unwrap();
        let mut o = SendQueue::new(publisher, spool, Duration::from_millis(700), 50);
        let pump = |o: &mut SendQueue<Publisher>, until: &dyn Fn(&SendQueue<Publisher>) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !until(o) {
                assert!(Instant::now() < deadline, "stuck: {:?}", o.stats());
                std::thread::sleep(Duration::from_millis(50));
                o.poll(Instant::now());
            }
        };
        let mut next = 0;
        let mut submit = |o: &mut SendQueue<Publisher>| {
            o.submit(
                "vm-1".into(),
                format!("m{next}").into_bytes(),
                1,
                Instant::now(),
            );
            next += 1;
        };
        for _ in 0..3 {
            submit(&mut o);
        }
        pump(&mut o, &|o| o.stats().sent == 3);
        // The first messages may already have gone through the spool: when the client's first
        // connection takes longer than `slow_after`, they are taken back and resent (correctly).
        // The outage's own resends are counted from here.
        let resent_before = o.stats().resent;
        cluster.broker_down(-1).unwrap();
        for _ in 0..6 {
            submit(&mut o);
            std::thread::sleep(Duration::from_millis(300));
            o.poll(Instant::now());
        }
        pump(&mut o, &|o| o.stats().spooled >= 6 && o.in_flight() == 0);
        assert_eq!(o.stats().sent, 3, "nothing got through while down");
        cluster.broker_up(-1).unwrap();
        pump(&mut o, &|o| o.spool().is_empty() && o.in_flight() == 0);
        submit(&mut o);
        pump(&mut o, &|o| o.in_flight() == 0);
        let stats = o.stats();
        assert_eq!(
            (stats.resent - resent_before, stats.backlog, stats.lost),
            (6, 0, 0),
            "{stats:?}"
        );

        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "check")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("metrics", 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < 10 && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                assert_eq!(m.key(), Some(&b"vm-1"[..]));
                got.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
            }
        }
        assert_eq!(got, names(0..10), "each message once, in collection order");
    }

    #[tokio::test]
    async fn tags_fill_in_from_config_and_host() {
        let mut config = AgentConfig::default();
        config.tags.ns = "ns".into();
        config.tags.mcis = "g".into();
        config.metadata.detect = false;
        let t = resolve_tags(&config).await;
        assert_eq!(t.vm, hostname());
        assert_eq!(t.host, hostname());
        assert_eq!(t.csp, "");
        config.tags.vm = "vm-7".into();
        config.tags.csp = "openstack".into();
        let t = resolve_tags(&config).await;
        assert_eq!((t.vm.as_str(), t.csp.as_str()), ("vm-7", "openstack"));
        t.validate().unwrap();
    }
}
