//! The runner against librdkafka's in-process mock cluster: retries, on-failure destinations, bisection, starting position.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::kafka::KafkaEvent;
use common::{Id, Slow, cluster, committed, config, ids, init_logs, publish, values};
use damselfly_runner::{Function, FunctionError, OnFailure, RunnerConfig, RunnerError, Stats};

/// Every successful invocation's records, in invocation order.
#[derive(Default)]
struct Log {
    ok: Mutex<Vec<Vec<Id>>>,
    failed: Mutex<Vec<Vec<Id>>>,
}

impl Log {
    fn succeeded(&self, event: &KafkaEvent) {
        self.ok.lock().unwrap().push(ids(event));
    }

    fn failed(&self, event: &KafkaEvent) {
        self.failed.lock().unwrap().push(ids(event));
    }

    /// How often each record was in a successful invocation.
    fn counts(&self) -> BTreeMap<Id, usize> {
        let mut counts = BTreeMap::new();
        for id in self.ok.lock().unwrap().iter().flatten() {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    /// Asserts that each partition's records were processed in offset order.
    fn assert_ordered(&self) {
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, o) in self.ok.lock().unwrap().iter().flatten() {
            let prev = last.insert(*p, *o);
            assert!(
                prev.is_none_or(|prev| prev < *o),
                "partition {p}: {o} after {prev:?}"
            );
        }
    }
}

/// Fails the second batch it sees `times` times (retryable), then succeeds.
struct FlakySecondBatch {
    log: Log,
    calls: AtomicU32,
    times: u32,
    target: Mutex<Option<Vec<Id>>>,
}

#[async_trait::async_trait]
impl Function for FlakySecondBatch {
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        let n = self.calls.fetch_add(1, Relaxed);
        let mut target = self.target.lock().unwrap();
        if n == 1 {
            *target = Some(ids(&event));
        }
        if target.as_ref() == Some(&ids(&event)) && n <= self.times {
            self.log.failed(&event);
            return Err(FunctionError::retryable(format!("store hiccup #{n}")));
        }
        drop(target);
        self.log.succeeded(&event);
        Ok(serde_json::json!({"ok": true}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_is_retried_whole_and_committed_once_in_order() {
    init_logs();
    let (_cluster, brokers) = cluster("retry", 3);
    publish(&brokers, "retry", (0..60).map(|i| (i % 3, format!("r{i}"))));
    let f = Arc::new(FlakySecondBatch {
        log: Log::default(),
        calls: AtomicU32::new(0),
        times: 3,
        target: Mutex::new(None),
    });
    let stats = Arc::new(Stats::default());
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        damselfly_runner::run(
            &config(&brokers, "retry", "g"),
            f.clone(),
            stats,
            std::future::pending(),
        ),
    )
    .await
    .expect("bounded")
    .expect("runs");

    assert_eq!((summary.invocation_errors, summary.retries), (3, 3));
    let failed = f.log.failed.lock().unwrap().clone();
    assert_eq!(failed.len(), 3);
    assert!(
        failed.iter().all(|b| b == &failed[0]),
        "the same batch, retried whole"
    );
    assert!(
        f.log.ok.lock().unwrap().contains(&failed[0]),
        "and then it succeeded"
    );
    let counts = f.log.counts();
    assert_eq!(counts.len(), 60, "every record");
    assert!(
        counts.values().all(|n| *n == 1),
        "each processed once: {counts:?}"
    );
    f.log.assert_ordered();
    assert_eq!(summary.records, 60);
    assert_eq!(committed(&brokers, "g", "retry", 3), vec![20, 20, 20]);
}

/// Fails every batch containing the payload "poison".
struct Poison {
    log: Log,
    retryable: bool,
}

#[async_trait::async_trait]
impl Function for Poison {
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        if values(&event).iter().any(|v| v == "poison") {
            self.log.failed(&event);
            let e = "cannot digest poison";
            return Err(if self.retryable {
                FunctionError::retryable(e)
            } else {
                FunctionError::fatal(e)
            });
        }
        self.log.succeeded(&event);
        Ok(serde_json::json!({}))
    }
}

/// Partition 0 offset 10 is poison; the other records are fine.
fn publish_with_poison(brokers: &str, topic: &str, partitions: i32, per_partition: i64) {
    publish(
        brokers,
        topic,
        (0..per_partition).flat_map(|o| {
            (0..partitions).map(move |p| {
                let v = if (p, o) == (0, 10) {
                    "poison".to_owned()
                } else {
                    format!("{p}-{o}")
                };
                (p, v)
            })
        }),
    );
}

fn failed_files(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

fn record_ids(failed: &serde_json::Value) -> Vec<Id> {
    let mut ids: Vec<Id> = failed["payload"]["records"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|rs| rs.as_array().unwrap())
        .map(|r| {
            (
                r["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_goes_to_the_on_failure_destination_and_later_batches_continue() {
    poison_batch_exhausts_its_retries(true).await;
}

/// Like Lambda's event source mapping, the runner retries a `NonRetryable` function error too,
/// unless told otherwise (`fail_fast_non_retryable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retryable_error_is_retried_like_any_function_error_by_default() {
    poison_batch_exhausts_its_retries(false).await;
}

async fn poison_batch_exhausts_its_retries(retryable: bool) {
    init_logs();
    let topic = if retryable { "poison" } else { "poison-fatal" };
    let (_cluster, brokers) = cluster(topic, 2);
    publish_with_poison(&brokers, topic, 2, 30);
    let dir = tempfile::tempdir().unwrap();
    let f = Arc::new(Poison {
        log: Log::default(),
        retryable,
    });
    let config = RunnerConfig {
        max_retry_attempts: Some(2),
        on_failure: Some(OnFailure::Dir(dir.path().to_owned())),
        ..config(&brokers, topic, "g")
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        damselfly_runner::run(
            &config,
            f.clone(),
            Arc::new(Stats::default()),
            std::future::pending(),
        ),
    )
    .await
    .expect("bounded")
    .expect("runs");

    let failed = failed_files(&dir.path().join("g"));
    assert_eq!(failed.len(), 1, "{failed:?}");
    let failed = &failed[0];
    assert_eq!(
        failed["requestContext"]["condition"],
        "RetryAttemptsExhausted"
    );
    assert_eq!(
        failed["requestContext"]["approximateInvokeCount"], 3,
        "1 + 2 retries"
    );
    assert_eq!(
        failed["responseContext"]["errorMessage"],
        "cannot digest poison"
    );
    assert!(failed["firstAttemptAt"].is_string() && failed["lastAttemptAt"].is_string());
    let in_file = record_ids(failed);
    assert!(
        in_file.contains(&(0, 10)),
        "the poison record is in the failed batch"
    );
    assert_eq!(in_file.len() as u64, summary.on_failure_records);
    assert_eq!(summary.on_failure_batches, 1);

    // Everything else was processed once, including the records after the poison.
    let counts = f.log.counts();
    for p in 0..2 {
        for o in 0..30 {
            let n = counts.get(&(p, o)).copied().unwrap_or(0);
            let expected = usize::from(!in_file.contains(&(p, o)));
            assert_eq!(n, expected, "record {p}@{o}");
        }
    }
    assert!(counts.contains_key(&(0, 29)), "later batches continued");
    f.log.assert_ordered();
    assert_eq!(committed(&brokers, "g", topic, 2), vec![30, 30]);
    assert_eq!(f.log.failed.lock().unwrap().len(), 3, "1 + 2 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_destination_the_runner_stops_rather_than_skip() {
    init_logs();
    let (_cluster, brokers) = cluster("stuck", 1);
    publish_with_poison(&brokers, "stuck", 1, 30);
    let f = Arc::new(Poison {
        log: Log::default(),
        retryable: false,
    });
    let config = RunnerConfig {
        fail_fast_non_retryable: true,
        ..config(&brokers, "stuck", "g")
    };
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        damselfly_runner::run(
            &config,
            f.clone(),
            Arc::new(Stats::default()),
            std::future::pending(),
        ),
    )
    .await
    .expect("bounded")
    .expect_err("a poison batch with nowhere to go stops the runner");
    assert!(matches!(err, RunnerError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("cannot digest poison"), "{err}");
    let failed = f.log.failed.lock().unwrap().clone();
    assert_eq!(
        failed.len(),
        1,
        "non-retryable with fail-fast: invoked once"
    );
    let first_failed = failed[0][0].1;
    let committed = committed(&brokers, "g", "stuck", 1)[0];
    assert!(
        committed <= first_failed,
        "nothing from the failed batch on is committed ({committed})"
    );
    assert!(
        f.log.counts().keys().all(|(_, o)| *o < first_failed),
        "nothing after it was processed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisection_isolates_the_one_bad_record() {
    init_logs();
    let (_cluster, brokers) = cluster("bisect", 1);
    publish_with_poison(&brokers, "bisect", 1, 40);
    let dir = tempfile::tempdir().unwrap();
    let f = Arc::new(Poison {
        log: Log::default(),
        retryable: false,
    });
    let stats = Arc::new(Stats::default());
    let config = RunnerConfig {
        batch_size: 16,
        bisect_on_error: true,
        fail_fast_non_retryable: true,
        on_failure: Some(OnFailure::Dir(dir.path().to_owned())),
        ..config(&brokers, "bisect", "g")
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        damselfly_runner::run(&config, f.clone(), stats.clone(), std::future::pending()),
    )
    .await
    .expect("bounded")
    .expect("runs");

    let failed = failed_files(&dir.path().join("g"));
    assert_eq!(failed.len(), 1);
    assert_eq!(record_ids(&failed[0]), vec![(0, 10)], "only the bad record");
    assert_eq!(
        failed[0]["requestContext"]["condition"],
        "NonRetryableError"
    );
    assert_eq!(failed[0]["requestContext"]["approximateInvokeCount"], 1);
    let counts = f.log.counts();
    assert_eq!(counts.len(), 39, "every good record");
    assert!(counts.values().all(|n| *n == 1));
    assert!(!counts.contains_key(&(0, 10)));
    f.log.assert_ordered();
    assert!(
        stats.bisections.load(Relaxed) >= 3,
        "16 -> 8 -> 4 -> 2 -> 1 needs several splits"
    );
    assert_eq!(
        (summary.on_failure_batches, summary.on_failure_records),
        (1, 1)
    );
    assert_eq!(
        committed(&brokers, "bisect", "bisect", 1),
        vec![-1],
        "other group"
    );
    assert_eq!(committed(&brokers, "g", "bisect", 1), vec![40]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_starts_after_what_was_already_published() {
    init_logs();
    let (_cluster, brokers) = cluster("late", 2);
    publish(
        &brokers,
        "late",
        (0..20).map(|i| (i % 2, format!("old{i}"))),
    );
    let f = Arc::new(Slow {
        per_batch: Duration::ZERO,
        seen: Mutex::new(BTreeMap::new()),
    });
    let stats = Arc::new(Stats::default());
    let config = RunnerConfig {
        starting_position: damselfly_runner::StartingPosition::Latest,
        until_caught_up: false,
        ..config(&brokers, "late", "g")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn({
        let (f, stats) = (f.clone(), stats.clone());
        async move {
            damselfly_runner::run(&config, f, stats, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    // The group's starting offsets are committed before any worker joins.
    let until = Instant::now() + Duration::from_secs(10);
    while committed(&brokers, "g", "late", 2) != vec![10, 10] {
        assert!(Instant::now() < until, "starting position not committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&brokers, "late", (0..4).map(|i| (i % 2, format!("new{i}"))));
    let until = Instant::now() + Duration::from_secs(30);
    while stats.records.load(Relaxed) < 4 {
        assert!(Instant::now() < until, "new records not processed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    runner.await.unwrap().expect("runs");
    let seen: BTreeSet<Id> = f.seen.lock().unwrap().keys().copied().collect();
    assert_eq!(
        seen,
        BTreeSet::from([(0, 10), (0, 11), (1, 10), (1, 11)]),
        "only what came after the start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_can_go_to_a_kafka_topic() {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    init_logs();
    let (cluster, brokers) = cluster("source", 1);
    cluster.create_topic("failed", 1, 1).expect("topic");
    publish_with_poison(&brokers, "source", 1, 20);
    let f = Arc::new(Poison {
        log: Log::default(),
        retryable: false,
    });
    let config = RunnerConfig {
        fail_fast_non_retryable: true,
        on_failure: Some(OnFailure::Kafka {
            topic: "failed".into(),
        }),
        ..config(&brokers, "source", "g")
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        damselfly_runner::run(
            &config,
            f.clone(),
            Arc::new(Stats::default()),
            std::future::pending(),
        ),
    )
    .await
    .expect("bounded")
    .expect("runs");
    assert_eq!(summary.on_failure_batches, 1);

    let reader: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("failed", 0, rdkafka::Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let message = loop {
        if let Some(m) = reader.poll(Duration::from_millis(200)) {
            break m.unwrap().detach();
        }
        assert!(Instant::now() < until, "nothing on the failed topic");
    };
    let failed: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(failed["requestContext"]["condition"], "NonRetryableError");
    let ids = record_ids(&failed);
    assert!(ids.contains(&(0, 10)), "{ids:?}");
    assert_eq!(
        message.key(),
        Some(format!("source+0+{}", ids[0].1).as_bytes())
    );
    assert_eq!(committed(&brokers, "g", "source", 1), vec![20]);

    // The redrive replays the kept batch through a function that now works, once, and commits.
    let connection = damselfly_kafka::Connection::plaintext(&brokers);
    let fixed = Arc::new(Fixed::default());
    let from = OnFailure::Kafka {
        topic: "failed".into(),
    };
    let redrive = |f: Arc<Fixed>| {
        let (from, connection) = (from.clone(), connection.clone());
        async move {
            let stats = damselfly_runner::RedriveStats::default();
            tokio::time::timeout(
                Duration::from_secs(60),
                damselfly_runner::redrive(
                    &from,
                    Some(&connection),
                    f,
                    &damselfly_runner::RedriveOptions::default(),
                    &stats,
                ),
            )
            .await
            .expect("bounded")
            .expect("redrives")
        }
    };
    let first = redrive(fixed.clone()).await;
    assert_eq!((first.found, first.redriven, first.failed), (1, 1, 0));
    assert_eq!(first.records, ids.len() as u64);
    assert_eq!(*fixed.log.ok.lock().unwrap(), vec![ids.clone()]);
    assert_eq!(
        committed(
            &brokers,
            damselfly_runner::redrive::DEFAULT_GROUP,
            "failed",
            1
        ),
        vec![1]
    );
    let second = redrive(fixed.clone()).await;
    assert_eq!(second.found, 0, "the redrive group has moved past it");
    assert_eq!(fixed.log.ok.lock().unwrap().len(), 1);
}

/// Succeeds with every batch, logging it.
#[derive(Default)]
struct Fixed {
    log: Log,
}

#[async_trait::async_trait]
impl Function for Fixed {
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError> {
        self.log.succeeded(&event);
        Ok(serde_json::Value::Null)
    }
}

/// librdkafka drops a partition's pending start-of-fetch (the offset lookup of a new assignment)
/// when a pause or resume of that partition is served first (librdkafka issues 2190 and 5591);
/// the partition then never fetches, silently. A slow broker widens that window: every record of
/// every partition must still be processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_still_gets_every_newly_assigned_partition_fetched() {
    init_logs();
    let partitions = 6;
    let (cluster, brokers) = cluster("slow", partitions);
    publish(
        &brokers,
        "slow",
        (0..120).map(|i| (i % partitions, format!("s{i}"))),
    );
    cluster
        .broker_round_trip_time(1, Duration::from_millis(300))
        .expect("broker rtt");
    let f = Arc::new(Slow {
        per_batch: Duration::ZERO,
        seen: Mutex::new(BTreeMap::new()),
    });
    let stats = Arc::new(Stats::default());
    let config = RunnerConfig {
        batch_size: 100,
        ..config(&brokers, "slow", "g")
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        damselfly_runner::run(&config, f.clone(), stats, std::future::pending()),
    )
    .await
    .expect("every partition fetched within the bound")
    .expect("runs");
    assert_eq!(summary.records, 120);
    let seen = f.seen.lock().unwrap();
    assert_eq!(seen.len(), 120, "every record");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
}
