//! The lake on LocalStack S3: the exactly-once conformance suite, and a crash test that SIGKILLs the
//! aggregate consumer at random points while a fleet publishes, then checks every sample is stored once.
//!
//! Needs `localstack/up` and its `localstack/.env` in the environment (tests/run does both), plus
//! `DAMSELFLY_PYTHON`: a Python with the `duckdb` package.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use damselfly_core::Lake;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::Value;

#[test]
#[ignore = "needs the local stack (LocalStack S3): run tests/run"]
fn lake_conformance_on_localstack_s3() {
    let url = format!("s3://{}/tests/conformance-{}", env("LAKE_BUCKET"), run_id());
    let lake = Lake::open(&url).unwrap();
    rt().block_on(damselfly_core::conformance::run_all(&lake, "s3", true))
        .unwrap();
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn damselfly")
}

#[test]
#[ignore = "needs the local stack (Apache Kafka + LocalStack): run tests/run"]
fn sigkilled_aggregate_stores_every_sample_exactly_once() {
    let brokers = env("KAFKA_BROKERS");
    let id = run_id();
    let topic = format!("crash-{id}");
    let group = format!("crash-{id}");
    let lake = format!("s3://{}/tests/crash-{id}", env("LAKE_BUCKET"));
    create_topic(&brokers, &topic, 12);

    // 12 VMs, one message a second for 60 s, published in real time while we kill the consumer.
    let (vms, intervals) = (12_usize, 60_usize);
    let fleet = spawn(&[
        "simulate",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--vms",
        "12",
        "--interval",
        "1s",
        "--duration",
        "60s",
        "--seed",
        "11",
        "--json",
    ]);
    let aggregate = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "aggregate",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--group",
            &group,
            "--lake",
            &lake,
            "--batch-size",
            "7",
            "--batching-window",
            "200ms",
        ];
        args.extend_from_slice(extra);
        spawn(&args)
    };
    // Each round waits until the consumer owns partitions, then kills it this far into its work:
    // fixed points (so a failure reproduces) spread over batches, writes and commits.
    let kill_after_ms = [350_u64, 900, 150, 1_300, 600, 1_050];
    let mut leftovers_removed = 0;
    for (i, ms) in kill_after_ms.iter().enumerate() {
        let mut consumer = aggregate(&[]);
        let log = consumer.stderr.take().unwrap();
        let (assigned_tx, assigned_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut removed = 0;
            for line in std::io::BufRead::lines(std::io::BufReader::new(log)).map_while(Result::ok)
            {
                if line.contains("partitions assigned") {
                    let _ = assigned_tx.send(());
                }
                removed += usize::from(line.contains("published a decided batch"));
                eprintln!("  [consumer {}] {line}", i + 1);
            }
            removed
        });
        if assigned_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            // Kill it first: a consumer without --until-caught-up would outlive the test.
            let _ = consumer.kill();
            panic!("consumer {} was never assigned partitions", i + 1);
        }
        std::thread::sleep(Duration::from_millis(*ms));
        consumer.kill().expect("SIGKILL");
        consumer.wait().unwrap();
        leftovers_removed += reader.join().unwrap();
        eprintln!(
            "crash test: killed consumer {} {ms} ms after it was assigned partitions",
            i + 1
        );
    }
    let out = fleet.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(published["published"], (vms * intervals) as u64);

    // It normally takes about a minute; a stalled consumer fails here, with its log.
    let (last, last_log) = wait_bounded(
        aggregate(&["--until-caught-up", "--json"]),
        Duration::from_secs(300),
    );
    let last = last.unwrap_or_else(|| {
        panic!("final catch-up run did not catch up in 5 minutes; its log:\n{last_log}")
    });
    assert!(
        last.status.success(),
        "final catch-up run failed: {last_log}"
    );
    leftovers_removed += last_log.matches("published a decided batch").count();
    eprintln!(
        "crash test: decided batches of killed attempts were published by their successor {leftovers_removed} times; final run: {}",
        String::from_utf8_lossy(&last.stdout)
    );

    let local = tempfile::tempdir().unwrap();
    copy_lake(&lake, local.path());
    assert_lake_holds_the_topic(&brokers, &topic, vms * intervals, local.path());

    // rollup_1m agrees with a recomputation from raw.
    let disagree = duckdb(
        local.path(),
        "WITH r AS (SELECT vm, metric, device, time_bucket(INTERVAL 1 minute, ts) AS w, count(*) AS n, sum(value) AS s, \
                    min(value) AS lo, max(value) AS hi FROM raw GROUP BY ALL), \
              u AS (SELECT vm, metric, device, window_start AS w, sum(\"count\") AS n, sum(\"sum\") AS s, \
                    min(\"min\") AS lo, max(\"max\") AS hi FROM rollup_1m WHERE NOT ends_with(metric, '_rate') GROUP BY ALL) \
         SELECT count(*) AS bad FROM r FULL JOIN u USING (vm, metric, device, w) \
         WHERE r.n IS DISTINCT FROM u.n OR r.lo IS DISTINCT FROM u.lo OR r.hi IS DISTINCT FROM u.hi \
            OR abs(r.s - u.s) > 1e-9 * greatest(abs(r.s), 1)",
    );
    assert_eq!(disagree[0]["bad"], 0, "rollup_1m disagrees with raw");

    // Counter rates agree with a recomputation from raw with lag(), across every batch and crash.
    let counters: Vec<String> = damselfly_schemas::catalog::METRICS
        .iter()
        .filter(|m| m.kind == damselfly_schemas::Kind::Counter)
        .map(|m| format!("'{}'", m.name))
        .collect();
    let rates = duckdb(
        local.path(),
        &format!(
            "WITH s AS (SELECT vm, metric, device, ts, value, lag(value) OVER w AS pv, lag(epoch_ms(ts)) OVER w AS pts \
                        FROM raw WHERE metric IN ({}) WINDOW w AS (PARTITION BY vm, metric, device ORDER BY ts)), \
                  d AS (SELECT vm, metric || '_rate' AS metric, device, time_bucket(INTERVAL 1 minute, ts) AS w, \
                        (value - pv) * 1000.0 / (epoch_ms(ts) - pts) AS r FROM s \
                        WHERE pv IS NOT NULL AND value >= pv AND epoch_ms(ts) > pts), \
                  r AS (SELECT vm, metric, device, w, count(*) AS n, sum(r) AS s, min(r) AS lo, max(r) AS hi FROM d GROUP BY ALL), \
                  u AS (SELECT vm, metric, device, window_start AS w, sum(\"count\") AS n, sum(\"sum\") AS s, \
                        min(\"min\") AS lo, max(\"max\") AS hi FROM rollup_1m WHERE ends_with(metric, '_rate') GROUP BY ALL) \
             SELECT (SELECT count(*) FROM r) AS series_windows, count(*) FILTER (WHERE \
                    r.n IS DISTINCT FROM u.n OR abs(r.lo - u.lo) > 1e-9 * greatest(abs(r.lo), 1) \
                    OR abs(r.hi - u.hi) > 1e-9 * greatest(abs(r.hi), 1) OR abs(r.s - u.s) > 1e-9 * greatest(abs(r.s), 1) \
                    OR r.n IS NULL OR u.n IS NULL) AS bad \
             FROM r FULL JOIN u USING (vm, metric, device, w)",
            counters.join(", ")
        ),
    );
    assert!(
        rates[0]["series_windows"].as_u64().unwrap() > 0,
        "the fleet's counters produced rates: {rates}"
    );
    assert_eq!(
        rates[0]["bad"], 0,
        "counter rates in rollup_1m disagree with raw: {rates}"
    );
}

/// Commits `offset` for every partition of `topic` under `group`: what an operator's
/// `kafka-consumer-groups --reset-offsets` does (and what expired group offsets amount to).
fn reset_group(brokers: &str, topic: &str, group: &str, partitions: i32, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(offset))
            .unwrap();
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
}

/// Everything is written; then the group's offsets are reset to the beginning and the aggregate
/// runs again: every record is skipped as already in the lake, and no row is doubled.
#[test]
#[ignore = "needs the local stack (Apache Kafka + LocalStack S3): run tests/run"]
fn a_replay_from_the_earliest_offset_doubles_nothing() {
    let brokers = env("KAFKA_BROKERS");
    let id = run_id();
    let topic = format!("replay-{id}");
    let lake = format!("s3://{}/tests/replay-{id}", env("LAKE_BUCKET"));
    create_topic(&brokers, &topic, 4);
    let messages = simulate(&brokers, &topic, 8, 10);
    let run = || aggregate_caught_up(&brokers, &topic, &topic, &lake, &["--batch-size", "7"]);
    let first = run();
    assert_eq!(first["records"], messages, "{first}");
    assert_eq!(first["skipped"], 0, "{first}");

    reset_group(&brokers, &topic, &topic, 4, 0);
    let replay = run();
    eprintln!("replay: {replay}");
    assert_eq!(
        replay["records"], messages,
        "the replay reads everything again: {replay}"
    );
    assert_eq!(replay["skipped"], messages, "and skips all of it: {replay}");
    assert_eq!(replay["objects"], 0, "writing nothing: {replay}");

    let local = tempfile::tempdir().unwrap();
    copy_lake(&lake, local.path());
    let samples = messages * SAMPLES_PER_MESSAGE;
    assert_eq!(
        raw_counts(local.path()),
        (samples, samples),
        "every sample once after the replay"
    );
}

/// Rows of `raw` and distinct (ns, vm, metric, device, ts) in a copy of `lake`.
fn raw_counts_by_ns(lake: &str) -> (u64, u64) {
    let local = tempfile::tempdir().unwrap();
    copy_lake(lake, local.path());
    let counts = duckdb(
        local.path(),
        "SELECT count(*) AS n, count(DISTINCT (ns, vm, metric, device, ts)) AS d FROM raw",
    );
    (
        counts[0]["n"].as_u64().unwrap(),
        counts[0]["d"].as_u64().unwrap(),
    )
}

/// The lake is unreachable for a while (its bucket is missing): with no retries the runner sends
/// those batches to an S3 on-failure destination and moves on, and later batches are written. Then
/// `damselfly redrive` writes the given-up batches; a second redrive, a redrive after a crash
/// before a record was moved aside, and a replay from the earliest offset double nothing.
#[test]
#[ignore = "needs the local stack (Apache Kafka + LocalStack S3): run tests/run"]
fn batches_given_up_in_a_lake_outage_are_redriven_exactly_once() {
    let brokers = env("KAFKA_BROKERS");
    let bucket = env("LAKE_BUCKET");
    let id = run_id();
    let topic = format!("redrive-{id}");
    let lake = format!("s3://{bucket}/tests/redrive-{id}");
    let failed = format!("s3://{bucket}/tests/redrive-{id}-failed");
    create_topic(&brokers, &topic, 4);
    let run = |lake: &str, extra: &[&str]| {
        let args = [&["--batch-size", "9"], extra].concat();
        aggregate_caught_up(&brokers, &topic, &topic, lake, &args)
    };
    let before = simulate_ns(&brokers, &topic, "before", 6, 5);
    assert_eq!(run(&lake, &[])["records"], before);

    let outage = simulate_ns(&brokers, &topic, "outage", 6, 5);
    let missing = format!("s3://damselfly-missing-{id}/lake");
    let down = run(
        &missing,
        &["--max-retry-attempts", "0", "--on-failure", &failed],
    );
    eprintln!("during the outage: {down}");
    assert_eq!(
        down["on_failure_records"], outage,
        "every record of the outage went to the on-failure destination: {down}"
    );
    let given_up = down["on_failure_batches"].as_u64().unwrap();
    assert!(given_up >= 4, "one batch per partition at least: {down}");

    let after = simulate_ns(&brokers, &topic, "after", 6, 5);
    assert_eq!(run(&lake, &[])["records"], after);
    let per = SAMPLES_PER_MESSAGE;
    assert_eq!(
        raw_counts_by_ns(&lake),
        ((before + after) * per, (before + after) * per),
        "the lake lacks the outage's samples before the redrive"
    );

    let redrive = || {
        damselfly(&[
            "redrive",
            "aggregate",
            "--from",
            &failed,
            "--lake",
            &lake,
            "--json",
        ])
    };
    let first = redrive();
    eprintln!("redrive: {first}");
    assert_eq!(first["found"], given_up, "{first}");
    assert_eq!(first["redriven"], given_up, "{first}");
    assert_eq!(first["records"], outage, "{first}");
    let all = (before + outage + after) * per;
    assert_eq!(
        raw_counts_by_ns(&lake),
        (all, all),
        "every sample once after the redrive"
    );

    let second = redrive();
    assert_eq!(
        second["found"], 0,
        "redriven records were moved aside: {second}"
    );

    // A redrive that died after the function succeeded but before moving its record: the record
    // is found again, and the lake skips every record of it.
    let store = Lake::open(&failed).unwrap();
    rt().block_on(async {
        use futures::TryStreamExt as _;
        use object_store::ObjectStoreExt as _;
        let moved: Vec<_> = store.store().list(None).try_collect().await.unwrap();
        let one = &moved[0].location;
        let back = object_store::path::Path::from(one.as_ref().replace("/redriven/", "/"));
        assert_ne!(&back, one, "{one} lies in redriven/");
        store.store().copy(one, &back).await.unwrap();
    });
    let again = redrive();
    assert_eq!(
        (again["found"].as_u64(), again["redriven"].as_u64()),
        (Some(1), Some(1)),
        "{again}"
    );
    assert_eq!(
        raw_counts_by_ns(&lake),
        (all, all),
        "a repeated redrive doubles nothing"
    );

    reset_group(&brokers, &topic, &topic, 4, 0);
    let replay = run(&lake, &[]);
    assert_eq!(
        replay["skipped"],
        before + outage + after,
        "a replay finds every record in the lake: {replay}"
    );
    assert_eq!(raw_counts_by_ns(&lake), (all, all), "and doubles nothing");
}

/// A flood of made-up VMs and devices on Apache Kafka: messages past the per-message device limit
/// go to dlq with the reason, everything else lands once, and every partition's state stays at the
/// configured counter-series cap (`--max-tail-series`) however many series the flood invents.
#[test]
#[ignore = "needs the local stack (Apache Kafka + LocalStack S3): run tests/run"]
fn a_cardinality_flood_is_bounded_and_counted() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

    let brokers = env("KAFKA_BROKERS");
    let id = run_id();
    let topic = format!("flood-{id}");
    let lake = format!("s3://{}/tests/flood-{id}", env("LAKE_BUCKET"));
    let partitions = 2;
    create_topic(&brokers, &topic, partitions);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let ts = now_ms() - 60_000;
    let message = |vm: &str, devices: &[String]| {
        let devices: Vec<String> = devices
            .iter()
            .map(|d| format!(r#""{d}":{{"bytes_in":1}}"#))
            .collect();
        format!(
            r#"{{"v":1,"ts":{ts},"tags":{{"ns":"flood","mcis":"m","vm":"{vm}"}},"devices":{{{}}}}}"#,
            devices.join(",")
        )
    };
    let mut sent = Vec::new();
    // 4,000 made-up VMs with one counter each, 4 messages at the device limit, 3 past it.
    for i in 0..4_000 {
        sent.push((
            format!("vm-{i}"),
            message(&format!("vm-{i}"), &["eth0".into()]),
        ));
    }
    for (j, n) in [
        (0, 1_024),
        (1, 1_024),
        (2, 1_024),
        (3, 1_024),
        (4, 1_025),
        (5, 1_025),
        (6, 1_025),
    ] {
        let devices: Vec<String> = (0..n).map(|d| format!("dev-{j}-{d}")).collect();
        sent.push((format!("host-{j}"), message(&format!("host-{j}"), &devices)));
    }
    for (key, payload) in &sent {
        loop {
            match producer.send(BaseRecord::to(&topic).key(key).payload(payload)) {
                Ok(()) => break,
                Err((_, _)) => {
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let cap = 1_000;
    let summary = aggregate_caught_up(
        &brokers,
        &topic,
        &topic,
        &lake,
        &["--batch-size", "500", "--max-tail-series", &cap.to_string()],
    );
    eprintln!("flood: {summary}");
    let accepted = 4_000 + 4 * 1_024;
    assert_eq!(summary["records"], sent.len(), "{summary}");
    assert_eq!(
        summary["rejected"], 3,
        "the messages past the limit: {summary}"
    );
    assert_eq!(summary["samples"], accepted, "{summary}");

    let local = tempfile::tempdir().unwrap();
    copy_lake(&lake, local.path());
    assert_eq!(
        raw_counts(local.path()),
        (accepted, accepted),
        "everything within the limits once"
    );
    let dlq = duckdb(
        local.path(),
        "SELECT count(*) AS n FROM dlq WHERE reason LIKE '%1025 devices, over the limit of 1024%'",
    );
    assert_eq!(
        dlq[0]["n"], 3,
        "each rejected message in dlq with its reason"
    );

    let lake = Lake::open(&lake).unwrap();
    for p in 0..partitions {
        let key = object_store::path::Path::from(damselfly_core::ledger::state_key(
            "aggregate",
            &topic,
            p,
        ));
        let (state, _) = rt()
            .block_on(lake.read_state::<damselfly_core::ledger::PartitionState>(&key))
            .unwrap();
        let state = state.expect("a state per partition");
        let series = state.tail.0.len();
        let bytes = serde_json::to_vec(&state).unwrap().len();
        eprintln!("partition {p}: {series} counter series in a {bytes}-byte state");
        assert_eq!(
            series, cap,
            "partition {p}'s state holds the cap, not the flood"
        );
        assert!(
            bytes < cap * 200,
            "partition {p}'s state stays small: {bytes} bytes"
        );
    }
}
