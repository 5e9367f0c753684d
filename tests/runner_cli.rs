//! `damselfly run` as an operator runs it, against librdkafka's mock cluster in this process:
//! Prometheus metrics while it runs, a clean exit on SIGTERM, and failed batches to `--on-failure`.

mod common;
use common::free_port;

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
    assert_eq!(s["failed_batches"], 0);
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
        s["failed_records"], 8,
        "every record went to the destination"
    );
    assert_eq!(
        s["failures"].as_u64().unwrap(),
        2 * s["failed_batches"].as_u64().unwrap(),
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
