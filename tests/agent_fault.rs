//! The agent when the broker goes away: a 30 s outage, and an agent SIGKILLed and restarted while the broker is down; every collected interval is looked for on the topic.
//!
//! Each test starts its own Apache Kafka (`localstack/kafka-broker run`, installed by
//! `localstack/up` or `tests/run`) on free ports of 127.0.0.1 with its own log directory, stops or
//! crashes and restarts it, and stops it at the end: the shared broker of `localstack/up` is never
//! touched. The agent is the real
//! `damselfly agent` binary, collecting every second. Its `ts` is unique per collection and the
//! collections are aligned to whole seconds, so duplicates, order and gaps are read off the topic.
//! The tests print a timeline and their counts on stderr (shown even without `--nocapture`).
//!
//! The faults last fixed times ([`OUTAGE`], [`KILL_INTO_OUTAGE`], [`AGENT_DOWN`]): those sleeps are
//! the faults. Everything else waits for the state it needs (messages on the topic, a line in the
//! agent's log) with a limit that only bounds how long a broken agent keeps the test running.

mod common;
use common::agent::{Agent, Read, read_topic, wait_for_topic};
use common::broker::LocalBroker;
use common::{create_topic, now_ms};

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The fault: how long the broker stays away.
const OUTAGE: Duration = Duration::from_secs(30);

/// The fault of (b): how far into the outage the first agent is SIGKILLed.
const KILL_INTO_OUTAGE: Duration = Duration::from_secs(12);

/// The fault of (b): how long no agent runs between the kill and the restart.
const AGENT_DOWN: Duration = Duration::from_secs(2);

/// Messages the agent publishes while the broker is up, before the fault.
const BEFORE_FAULT: usize = 5;

/// After the spool drained, the test waits for a collection made this long after the drain to be
/// on the topic: live sending has resumed behind the resent backlog.
const AFTER_DRAIN: i64 = 2_000;

/// Limit of every wait for a state (a failure timeout, not a speed requirement).
const LIMIT: Duration = Duration::from_secs(120);

/// Text in each of the agent's log lines saying it started spooling.
const SPOOLING: &str = "spooling";

/// Partitions of each test topic (the agent's one key lands on one of them).
const PARTITIONS: i32 = 3;

/// The two tests stop and start brokers and time their steps: they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Called once the agent logged its drain: waits for a collection made `AFTER_DRAIN` after that
/// point to be on the topic (live sending resumed behind the resent backlog) and returns that
/// point with the reads: collections made from it on came after the drain.
fn live_after_drain(broker: &LocalBroker, topic: &str, vm: &str) -> (i64, Vec<Read>) {
    let resumed_ms = now_ms() + AFTER_DRAIN;
    let reads = wait_for_topic(
        &broker.brokers(),
        topic,
        PARTITIONS,
        "a collection made after the drain",
        LIMIT,
        |reads| reads.iter().any(|r| r.vm == vm && r.ts >= resumed_ms),
    );
    (resumed_ms, reads)
}

/// Writes to the process's stderr directly, so the report shows even when libtest captures output.
macro_rules! report {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Sleeps until the middle of a wall-clock second, so a signal falls between two collections.
fn sleep_to_half_second() {
    let now = now_ms();
    let mut target = now - now.rem_euclid(1000) + 500;
    if target < now + 50 {
        target += 1000;
    }
    std::thread::sleep(Duration::from_millis((target - now) as u64));
}

/// What happened when, relative to the start of the test.
struct Timeline {
    start: Instant,
    name: &'static str,
}

impl Timeline {
    fn new(name: &'static str) -> Self {
        Self {
            start: Instant::now(),
            name,
        }
    }

    fn note(&self, what: impl std::fmt::Display) {
        report!(
            "[{} +{:>6.1}s] {what}",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn write_config(dir: &Path, brokers: &str, topic: &str, vm: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let spool = dir.join("spool");
    // Defaults everywhere else (delivery_timeout 30s, slow_after 5s, lz4): what a VM would run.
    fs::write(
        &path,
        format!(
            "interval = \"1s\"\n\
             [tags]\nns = \"ns-fault\"\nmcis = \"agent-fault\"\nvm = \"{vm}\"\n\
             [kafka]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
             [spool]\ndir = \"{}\"\nmax_bytes = \"64MiB\"\n\
             [metadata]\ndetect = false\n",
            spool.display()
        ),
    )
    .unwrap();
    path
}

/// Duplicates and order of one VM's messages in offset order.
#[derive(Debug)]
struct Check {
    messages: usize,
    distinct: usize,
    duplicates: usize,
    /// Messages whose ts is not above every ts before them (a duplicate counts too).
    out_of_order: usize,
    /// Whether the first occurrences of each ts are in collection order.
    firsts_in_order: bool,
    partitions: BTreeSet<i32>,
    /// Whole seconds of the distinct ts (collections are aligned to seconds).
    seconds: BTreeSet<i64>,
}

fn check(reads: &[Read], vm: &str) -> Check {
    let mine: Vec<&Read> = reads.iter().filter(|r| r.vm == vm).collect();
    let mut seen = HashSet::new();
    let (mut out_of_order, mut max, mut firsts) = (0, i64::MIN, Vec::new());
    for r in &mine {
        if r.ts <= max {
            out_of_order += 1;
        }
        max = max.max(r.ts);
        if seen.insert(r.ts) {
            firsts.push(r.ts);
        }
    }
    Check {
        messages: mine.len(),
        distinct: seen.len(),
        duplicates: mine.len() - seen.len(),
        out_of_order,
        firsts_in_order: firsts.windows(2).all(|w| w[0] < w[1]),
        partitions: mine.iter().map(|r| r.partition).collect(),
        seconds: seen.iter().map(|ts| ts.div_euclid(1000)).collect(),
    }
}

/// Seconds in `from..=to` with no collection on the topic.
fn missing(seconds: &BTreeSet<i64>, from: i64, to: i64) -> Vec<i64> {
    (from..=to).filter(|s| !seconds.contains(s)).collect()
}

fn unique_topic(what: &str) -> String {
    format!("agent-fault-{what}-{}", now_ms())
}

/// (a) The broker is stopped for 30 s and restarted while the agent keeps running: afterwards
/// every collection is on the topic once, in collection order, delivered before the agent stops.
#[test]
#[ignore = "needs Apache Kafka installed by localstack/kafka-broker: run tests/run"]
fn a_broker_outage_loses_nothing_and_keeps_order() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let t = Timeline::new("outage");
    let mut broker = LocalBroker::new(dir.path());
    broker.start();
    let topic = unique_topic("a");
    create_topic(&broker.brokers(), &topic, PARTITIONS);
    t.note(format!("broker up on {}, topic {topic}", broker.brokers()));
    let vm = "vm-fault-a";
    let config = write_config(dir.path(), &broker.brokers(), &topic, vm);
    let mut agent = Agent::start(&config, dir.path().join("agent.log"));
    t.note("agent started (interval 1s, delivery_timeout 30s, slow_after 5s)");

    let before = wait_for_topic(
        &broker.brokers(),
        &topic,
        PARTITIONS,
        "the agent's first messages",
        LIMIT,
        |reads| reads.len() >= BEFORE_FAULT,
    );
    let before = check(&before, vm);
    assert!(
        before.messages >= BEFORE_FAULT,
        "the agent publishes while the broker is up: {before:?}"
    );
    t.note(format!(
        "{} messages on the topic; stopping the broker",
        before.messages
    ));

    let spooling_before = agent.log_count(SPOOLING);
    broker.stop();
    let down = Instant::now();
    let down_ms = now_ms();
    t.note("broker stopped");
    // The agent notices while the broker is away (a failure if not within the outage) ...
    agent.wait_for_log(SPOOLING, spooling_before + 1, OUTAGE);
    t.note("agent: spooling");
    // ... which lasts OUTAGE whatever it took to notice: the fault.
    std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
    let drained_before = agent.log_count("spool drained: broker is back");
    broker.start();
    let up_ms = now_ms();
    t.note(format!(
        "broker restarted after {:.1}s away",
        (up_ms - down_ms) as f64 / 1000.0
    ));

    agent.wait_for_log("spool drained: broker is back", drained_before + 1, LIMIT);
    t.note("agent: spool drained");
    let (resumed_ms, running) = live_after_drain(&broker, &topic, vm);
    t.note(format!(
        "read back {} messages while the agent still runs, live sending resumed",
        running.len()
    ));

    sleep_to_half_second();
    let stats = agent.stop();
    t.note(format!("agent stopped (SIGTERM): {stats:?}"));
    let reads = read_topic(&broker.brokers(), &topic, PARTITIONS);
    let c = check(&reads, vm);
    let (first, last) = (*c.seconds.first().unwrap(), *c.seconds.last().unwrap());
    let gaps = missing(&c.seconds, first, last);
    let during_outage = reads
        .iter()
        .filter(|r| r.ts >= down_ms && r.ts < up_ms)
        .count();
    let collections = stats["collections"];
    report!(
        "[outage] collected {collections} | on topic {} | distinct {} | duplicates {} | out of order {} | \
         collected during the outage {during_outage} | spooled {} | resent {} | lost {} | evicted {} | \
         backlog at stop {} | missing seconds {gaps:?} | partitions {:?}",
        c.messages,
        c.distinct,
        c.duplicates,
        c.out_of_order,
        stats["spooled"],
        stats["resent"],
        stats["lost"],
        stats["evicted"],
        stats["backlog"],
        c.partitions,
    );

    assert_eq!(
        (stats["backlog"], stats["lost"], stats["evicted"]),
        (0, 0, 0),
        "nothing left behind: {stats:?}"
    );
    assert!(
        stats["spooled"] > 0,
        "a 30s outage goes through the spool: {stats:?}"
    );
    assert_eq!(
        c.messages as u64, collections,
        "every collection is on the topic, once"
    );
    assert_eq!(c.duplicates, 0, "no duplicates: {c:?}");
    assert_eq!(c.out_of_order, 0, "collection order per VM: {c:?}");
    assert_eq!(c.partitions.len(), 1, "one VM, one partition: {c:?}");
    assert_eq!(c.seconds.len(), c.distinct, "one collection per second");
    assert!(
        during_outage >= (OUTAGE.as_secs() - 2) as usize,
        "the collections made while the broker was away are there: {during_outage}"
    );
    // Delivered while the agent was still running, not at shutdown: every collection made
    // before live sending resumed (the outage's, resent from the spool, and those before and
    // after it) was on the topic in the read taken while the agent ran. (This was "older than
    // 3 s, 5 s after the drain" on the wall clock: the same collections, drain + 2 s.)
    let early: HashSet<i64> = running.iter().map(|r| r.ts).collect();
    let late: Vec<i64> = reads
        .iter()
        .filter(|r| r.ts < resumed_ms && !early.contains(&r.ts))
        .map(|r| r.ts)
        .collect();
    assert!(
        late.is_empty(),
        "collections made before live sending resumed were on the topic before the agent stopped; late: {late:?}"
    );
    broker.stop();
}

/// (b) The agent is SIGKILLed 12 s ([`KILL_INTO_OUTAGE`]) into a broker outage and restarted on the same spool while the
/// broker is still away; then the broker comes back. Losses are asserted to be zero; duplicates
/// are counted and printed (see the comment at the assertions).
#[test]
#[ignore = "needs Apache Kafka installed by localstack/kafka-broker: run tests/run"]
fn b_agent_killed_during_outage_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let t = Timeline::new("kill");
    let mut broker = LocalBroker::new(dir.path());
    broker.start();
    let topic = unique_topic("b");
    create_topic(&broker.brokers(), &topic, PARTITIONS);
    t.note(format!("broker up on {}, topic {topic}", broker.brokers()));
    let vm = "vm-fault-b";
    let config = write_config(dir.path(), &broker.brokers(), &topic, vm);
    let mut first = Agent::start(&config, dir.path().join("agent-1.log"));
    t.note("agent 1 started");
    wait_for_topic(
        &broker.brokers(),
        &topic,
        PARTITIONS,
        "agent 1's first messages",
        LIMIT,
        |reads| reads.len() >= BEFORE_FAULT,
    );
    t.note("agent 1 publishes");

    broker.crash();
    let down = Instant::now();
    let down_ms = now_ms();
    t.note("broker crashed (SIGKILL)");
    // Agent 1 is spooling when it is killed (a failure if it has not noticed by then) ...
    first.wait_for_log(SPOOLING, 1, KILL_INTO_OUTAGE);
    t.note("agent 1: spooling");
    // ... KILL_INTO_OUTAGE into the outage, mid-second: the fault.
    std::thread::sleep(KILL_INTO_OUTAGE.saturating_sub(down.elapsed()));
    sleep_to_half_second();
    first.kill();
    let kill_ms = now_ms();
    t.note(format!(
        "agent 1 SIGKILLed {:.1}s into the outage",
        (kill_ms - down_ms) as f64 / 1000.0
    ));
    std::thread::sleep(AGENT_DOWN);
    let mut second = Agent::start(&config, dir.path().join("agent-2.log"));
    t.note("agent 2 started on the same spool, broker still down");

    // The rest of the outage: the fault.
    std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
    broker.start();
    let up_ms = now_ms();
    t.note(format!(
        "broker restarted after {:.1}s away",
        (up_ms - down_ms) as f64 / 1000.0
    ));
    second.wait_for_log("spool drained: broker is back", 1, LIMIT);
    t.note("agent 2: spool drained");
    live_after_drain(&broker, &topic, vm);
    t.note("agent 2: live sending resumed");
    sleep_to_half_second();
    let stats = second.stop();
    let stop_ms = now_ms();
    t.note(format!("agent 2 stopped (SIGTERM): {stats:?}"));

    let reads = read_topic(&broker.brokers(), &topic, PARTITIONS);
    let c = check(&reads, vm);
    // Collections are aligned to whole seconds and the signals were sent mid-second, so agent 1
    // collected every second from its first message (sent while the broker was up) to the one
    // before the kill, and agent 2 the `collections` seconds before its stop.
    let kill_s = kill_ms.div_euclid(1000);
    let first_s = *c.seconds.first().expect("messages on the topic");
    let agent1_expected = (kill_s - first_s + 1) as usize;
    let agent1_lost = missing(&c.seconds, first_s, kill_s);
    let agent2_collected = stats["collections"] as usize;
    let agent2_on_topic = c.seconds.range(kill_s + 1..).count();
    let stop_s = stop_ms.div_euclid(1000);
    let agent2_lost = missing(&c.seconds, stop_s - agent2_collected as i64 + 1, stop_s);
    let lost = agent1_lost.len() + agent2_collected.saturating_sub(agent2_on_topic);
    report!(
        "[kill] agent 1 collected {agent1_expected} (seconds {first_s}..={kill_s}), of which on the topic {} \
         | agent 2 collected {agent2_collected}, on the topic {agent2_on_topic} \
         | messages {} | distinct {} | DUPLICATES {} | out of order {} | LOST {lost} \
         (agent 1 missing seconds {agent1_lost:?}, agent 2 missing seconds {agent2_lost:?}) \
         | agent 2: spooled {} resent {} lost {} evicted {} backlog {} | partitions {:?}",
        agent1_expected - agent1_lost.len(),
        c.messages,
        c.distinct,
        c.duplicates,
        c.out_of_order,
        stats["spooled"],
        stats["resent"],
        stats["lost"],
        stats["evicted"],
        stats["backlog"],
        c.partitions,
    );

    assert_eq!(lost, 0, "no collection lost: {c:?}");
    assert_eq!(
        (stats["backlog"], stats["lost"], stats["evicted"]),
        (0, 0, 0),
        "{stats:?}"
    );
    // Duplicates are reported, not asserted to be zero: delivery is at least once. A message the
    // broker wrote but whose acknowledgement the agent never saw (the broker or the agent died in
    // between, or librdkafka purged it as in flight) is resent from the spool; so is a whole resend
    // batch with mixed delivery reports. With the broker already down at the kill, none is expected.
    assert!(
        c.firsts_in_order,
        "without the repeats, the topic holds the collections in order: {c:?}"
    );
    assert_eq!(c.partitions.len(), 1, "one VM, one partition: {c:?}");
    broker.stop();
}
