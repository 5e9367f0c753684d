//! `damselfly run` as an operator runs it, against librdkafka's mock cluster in this process:
//! Prometheus metrics while it runs, a clean exit on SIGTERM, and failed batches to `--on-failure`.

mod common;
use common::lambda::LambdaEmulator;
use common::{copy_lake, create_topic, env, free_port, raw_counts, run_id, simulate};

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde_json::Value;

const TOPIC: &str = "metrics";

fn damselfly() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_damselfly"));
    // Debug logs of the runner: printed only when a test fails.
    c.env("RUST_LOG", "warn,damselfly=info,damselfly_runner=debug");
    c
}

/// A mock broker with `messages` simulated metric messages on the topic.
fn broker_with_messages(
    vms: u32,
    intervals: u32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let out = damselfly()
        .args([
            "simulate",
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--no-pace",
            "--json",
        ])
        .args(["--vms", &vms.to_string(), "--interval", "1s"])
        .args(["--duration", &format!("{intervals}s")])
        .output()
        .expect("simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["published"], vms * intervals);
    (cluster, brokers)
}

/// Waits for the child, killing it past `limit`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let until = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "did not exit in {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn run_serves_metrics_and_exits_cleanly_on_sigterm() {
    let (_cluster, brokers) = broker_with_messages(6, 3);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = damselfly()
        .args([
            "run",
            "aggregate",
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--group",
            "metrics-test",
        ])
        .args(["--lake", lake.to_str().unwrap(), "--metrics-listen", &addr])
        .args(["--scale-interval", "1s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");

    let until = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Some(m) = scrape(&addr)
            && m.contains(
                "damselfly_runner_records_total{topic=\"metrics\",group=\"metrics-test\"} 18",
            )
            && m.contains("damselfly_runner_group_lag{topic=\"metrics\",group=\"metrics-test\"} 0")
        {
            break m;
        }
        if Instant::now() > until {
            let last = scrape(&addr).unwrap_or_default();
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "18 records never showed in the metrics; last scrape:\n{last}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for family in [
        "damselfly_runner_partition_lag{topic=\"metrics\",group=\"metrics-test\",partition=\"2\"}",
        "damselfly_runner_workers{topic=\"metrics\",group=\"metrics-test\"} 1",
        "damselfly_runner_batches_total",
        "damselfly_runner_invocation_errors_total",
        "damselfly_runner_retries_total",
        "damselfly_runner_scaling_events_total",
        "damselfly_runner_invocation_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(family), "no {family} in\n{metrics}");
    }

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = wait(child, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "SIGTERM is a clean stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("one JSON summary on stdout");
    assert_eq!(s["records"], 18);
    assert_eq!(s["samples"], 18 * 50);
    assert_eq!(s["max_workers_seen"], 1);
    assert_eq!(s["scaling_events"], 0);
    assert_eq!(s["on_failure_batches"], 0);
}

#[test]
fn a_batch_that_cannot_be_written_goes_to_the_on_failure_directory() {
    let (_cluster, brokers) = broker_with_messages(4, 2);
    let dir = tempfile::tempdir().unwrap();
    // A file where the `raw` table's directory belongs: every write fails, even for root.
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    std::fs::write(lake.join("raw"), "in the way").unwrap();
    let failed = dir.path().join("failed");
    let child = damselfly()
        .args([
            "run",
            "aggregate",
            "--brokers",
            &brokers,
            "--topic",
            TOPIC,
            "--group",
            "failing",
        ])
        .args(["--lake", lake.to_str().unwrap()])
        .args(["--max-retry-attempts", "1", "--on-failure"])
        .arg(format!("file://{}", failed.display()))
        .args(["--batching-window", "200ms", "--until-caught-up", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let out = wait(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["records"], 0, "nothing was written");
    assert_eq!(
        s["on_failure_records"], 8,
        "every record went to the destination"
    );
    assert_eq!(
        s["invocation_errors"].as_u64().unwrap(),
        2 * s["on_failure_batches"].as_u64().unwrap(),
        "1 + 1 retry each"
    );

    let records = read_failed(&failed.join("failing"));
    let mut offsets: Vec<(i64, i64)> = records
        .iter()
        .inspect(|r| {
            assert_eq!(r["requestContext"]["condition"], "RetryAttemptsExhausted");
            assert_eq!(r["requestContext"]["approximateInvokeCount"], 2);
            assert!(
                r["responseContext"]["errorMessage"]
                    .as_str()
                    .unwrap()
                    .contains("raw"),
                "{r}"
            );
        })
        .flat_map(|r| {
            r["payload"]["records"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|v| v.as_array().unwrap().clone())
                .collect::<Vec<_>>()
        })
        .map(|r| {
            (
                r["partition"].as_i64().unwrap(),
                r["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), 8, "each record once: {offsets:?}");
}

fn read_failed(dir: &Path) -> Vec<Value> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect()
}

/// `damselfly run aggregate` with extra arguments until caught up; its JSON summary.
fn run_until_caught_up(brokers: &str, group: &str, args: &[&str]) -> Value {
    let child = damselfly()
        .args(["run", "aggregate", "--brokers", brokers, "--topic", TOPIC])
        .args(["--group", group, "--until-caught-up", "--json"])
        .args(["--batching-window", "200ms"])
        .args(args)
        .env_remove("LAKE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let out = wait(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A few aggregates over a lake, by `damselfly sql`.
fn lake_answers(lake: &Path) -> Value {
    let out = damselfly()
        .args(["sql", "--lake", lake.to_str().unwrap(), "--format", "json"])
        .arg(
            "SELECT (SELECT count(*) FROM raw) AS raw_rows, \
             (SELECT count(DISTINCT vm) FROM raw) AS vms, \
             (SELECT round(sum(value), 3) FROM raw) AS raw_sum, \
             (SELECT sum(count) FROM rollup_1m) AS rollup_count, \
             (SELECT round(sum(sum), 3) FROM rollup_1m) AS rollup_sum",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs cargo-lambda on PATH and the damselfly-aggregate binary built: run tests/run"]
fn the_real_lambda_binary_under_cargo_lambda_watch_answers_as_in_process() {
    let (_cluster, brokers) = broker_with_messages(10, 4);
    let dir = tempfile::tempdir().unwrap();
    let (local, remote) = (dir.path().join("in-process"), dir.path().join("remote"));

    let a = run_until_caught_up(&brokers, "in-process", &["--lake", local.to_str().unwrap()]);

    let mut lambda = LambdaEmulator::start();
    lambda.aggregate("damselfly-aggregate", &remote);
    let b = run_until_caught_up(&brokers, "remote", &["--invoke-url", &lambda.url()]);

    assert_eq!(a["records"], 40);
    for field in ["records", "samples", "rejected", "on_failure_batches"] {
        assert_eq!(a[field], b[field], "{field}: in-process {a} vs remote {b}");
    }
    assert!(b["objects"].as_u64().unwrap() > 0, "{b}");
    let (la, lb) = (lake_answers(&local), lake_answers(&remote));
    assert_eq!(la[0]["raw_rows"], 40 * 50, "{la}");
    assert_eq!(la, lb, "the two lakes answer alike");

    // A function error crosses the Invoke API with Lambda's errorType and errorMessage: a lake
    // whose `raw` directory is a file fails every write, and the batch goes to --on-failure.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("raw"), "in the way").unwrap();
    // The emulator serves only the project's binary names: a second one hosts the broken copy.
    let mut broken_lambda = LambdaEmulator::start();
    broken_lambda.aggregate("damselfly-aggregate", &broken);
    let failed = dir.path().join("failed");
    let url = format!(
        "{}/2015-03-31/functions/damselfly-aggregate/invocations",
        broken_lambda.url()
    );
    let on_failure = format!("file://{}", failed.display());
    let c = run_until_caught_up(
        &brokers,
        "broken",
        &[
            "--invoke-url",
            &url,
            "--max-retry-attempts",
            "0",
            "--on-failure",
            &on_failure,
        ],
    );
    assert_eq!(c["on_failure_records"], 40, "{c}");
    let records = read_failed(&failed.join("broken"));
    assert!(!records.is_empty());
    for r in records {
        let msg = r["responseContext"]["errorMessage"].as_str().unwrap();
        assert!(
            msg.starts_with("Retryable: ") && msg.contains("raw"),
            "{msg}"
        );
    }
}

/// A function behind `--invoke-url` that is still running when the runner gives its invocation
/// up (it holds between deciding and publishing a batch, past `--invoke-timeout`): the runner
/// retries the batch on a second instance, which publishes the first one's decision and skips its
/// records; the first instance, waking up, makes nothing visible twice. On Apache Kafka and
/// LocalStack S3 (the lake needs conditional puts: two instances write it at once).
#[test]
#[ignore = "needs the local stack, cargo-lambda and the binaries built with --features damselfly/failpoints: run tests/run"]
fn a_remote_function_running_past_the_invoke_timeout_doubles_nothing() {
    let brokers = env("KAFKA_BROKERS");
    let id = run_id();
    let topic = format!("slow-lambda-{id}");
    let lake = format!("s3://{}/tests/slow-lambda-{id}", env("LAKE_BUCKET"));
    create_topic(&brokers, &topic, 4);
    let messages = simulate(&brokers, &topic, 6, 10);
    let dir = tempfile::tempdir().unwrap();
    let (slow_log, spare_log) = (dir.path().join("slow.log"), dir.path().join("spare.log"));
    let runner_log = dir.path().join("runner.log");

    let mut lambda = LambdaEmulator::start();
    // The only instance at first: its first write holds for 10 s after its decision.
    let hold = [("FAILPOINTS", "ledger-decided=1*return(10000)")];
    lambda.aggregate_with("damselfly-aggregate", &lake, &hold, Some(&slow_log));
    let runner = damselfly()
        .args(["run", "aggregate", "--brokers", &brokers, "--topic", &topic])
        .args(["--group", &topic, "--until-caught-up", "--json"])
        .args(["--batch-size", "10", "--batching-window", "200ms"])
        .args(["--invoke-url", &lambda.url(), "--invoke-timeout", "3s"])
        .env_remove("LAKE")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&runner_log).unwrap())
        .spawn()
        .expect("run");
    let until = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&slow_log)
        .unwrap_or_default()
        .contains("fail point ledger-decided: holding")
    {
        assert!(
            Instant::now() < until,
            "the first instance never held (is it built with --features damselfly/failpoints?)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The retry of the given-up invocation lands on a second instance.
    lambda.aggregate_with("damselfly-aggregate", &lake, &[], Some(&spare_log));
    let out = wait(runner, Duration::from_secs(120));
    let runner_says = std::fs::read_to_string(&runner_log).unwrap();
    assert!(out.status.success(), "{runner_says}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("runner: {summary}");
    assert!(
        summary["invocation_errors"].as_u64().unwrap() >= 1,
        "the held invocation timed out: {summary}"
    );
    assert_eq!(summary["on_failure_batches"], 0, "{summary}");
    let spare = std::fs::read_to_string(&spare_log).unwrap();
    assert!(
        spare.contains("published a decided batch its writer left staged"),
        "the second instance published the first one's decision:\n{spare}"
    );
    // Let the first instance wake and try to publish what is already published.
    std::thread::sleep(Duration::from_secs(8));
    let slow = std::fs::read_to_string(&slow_log).unwrap();
    eprintln!("first instance:\n{slow}");

    let local = tempfile::tempdir().unwrap();
    copy_lake(&lake, local.path());
    let samples = messages * common::SAMPLES_PER_MESSAGE;
    assert_eq!(
        raw_counts(local.path()),
        (samples, samples),
        "every sample once, the zombie instance's write included"
    );
    common::assert_lake_holds_the_topic(&brokers, &topic, messages as usize, local.path());
}
