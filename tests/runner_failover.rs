//! Two `damselfly run aggregate` processes in one consumer group on Apache Kafka: one is SIGKILLed, or SIGSTOPped past its session timeout (anywhere, or exactly between deciding and publishing a batch) and later SIGCONTed, mid-stream; the other takes over its partitions, and the lake (LocalStack S3) holds every sample exactly once. Under both group protocols (classic and KIP-848's consumer).
//!
//! Needs `localstack/up` and its `localstack/.env` in the environment (tests/run does both), plus
//! `DAMSELFLY_PYTHON`: a Python with the `duckdb` package. The runners use the shared broker
//! (`KAFKA_BROKERS`), whose group session timeouts are 6 s for both protocols.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Partitions of the topic the two runners share.
const PARTITIONS: i32 = 6;

/// A `damselfly run aggregate` process, killed if the test ends without stopping it.
struct Runner {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    metrics: String,
}

impl Runner {
    /// Starts a runner in `group`, logging to a file in `dir` and serving metrics on a free port,
    /// with the fail points `failpoints` armed (see `damselfly_core::ledger`; empty: none).
    #[allow(clippy::too_many_arguments)] // one place, what a runner is started with
    fn start(
        name: &'static str,
        dir: &Path,
        brokers: &str,
        topic: &str,
        group: &str,
        lake: &str,
        protocol: &str,
        failpoints: &str,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_damselfly"))
            .env(
                "RUST_LOG",
                "warn,damselfly=info,damselfly_runner=info,damselfly_core=info",
            )
            .env("FAILPOINTS", failpoints)
            .args(["run", "aggregate", "--brokers", brokers, "--topic", topic])
            .args([
                "--group",
                group,
                "--lake",
                lake,
                "--metrics-listen",
                &metrics,
            ])
            // Small batches make the work last long enough to kill a runner in the middle of it.
            .args(["--batch-size", "5", "--batching-window", "100ms"])
            .args(["--min-workers", "1", "--max-workers", "1"])
            .args(["--group-protocol", protocol])
            .args(["--scale-interval", "1s", "--json"])
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start damselfly run");
        Self {
            name,
            child: Some(child),
            log,
            metrics,
        }
    }

    /// The runner's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The partitions owned after each assignment or revocation logged after byte `from` of the
    /// log, oldest first (under KIP-848 both change the set a little: the lines carry it whole).
    fn assignments(&self, from: usize) -> Vec<BTreeSet<i32>> {
        self.log()
            .get(from..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("partitions assigned") || l.contains("partitions revoked"))
            .filter_map(|l| {
                let list = l.split("owned=[").nth(1)?.split(']').next()?;
                Some(
                    list.split(',')
                        .filter_map(|p| p.trim().parse().ok())
                        .collect(),
                )
            })
            .collect()
    }

    /// The partitions owned as of the latest assignment or revocation logged after byte `from`.
    fn owned(&self, from: usize) -> Option<BTreeSet<i32>> {
        self.assignments(from).pop()
    }

    /// A metric of the runner's Prometheus endpoint (the first sample of the family).
    fn metric(&self, family: &str) -> Option<i64> {
        let mut s = TcpStream::connect(&self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines()
            .find(|l| l.starts_with(&format!("{family}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as i64)
    }

    /// Kills the process with SIGKILL: no revocation, no commit, no leaving the group.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    /// Sends a signal (`-STOP`, `-CONT`) to the process.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {}", self.name);
    }

    /// Stops the process with SIGTERM and returns its JSON summary (bounded wait).
    fn terminate(&mut self, limit: Duration) -> serde_json::Value {
        let mut child = self.child.take().expect("running");
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let until = Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                child.kill().unwrap();
                panic!("{} did not stop in {limit:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}",
            self.name,
            out.status,
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}'s stdout is not one JSON summary ({e}): {}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

/// Polls `check` every 200ms until it returns Some, failing with `what` (and the logs) after `limit`.
fn wait_for<T>(
    limit: Duration,
    what: &str,
    runners: &[&Runner],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(t) = check() {
            return t;
        }
        if Instant::now() > until {
            let logs: String = runners
                .iter()
                .map(|r| format!("--- {} ---\n{}\n", r.name, r.log()))
                .collect();
            panic!("waited {limit:?} for {what}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What happens to runner A mid-stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL: A is gone for good.
    Kill,
    /// SIGSTOP past the session timeout, SIGCONT once B owns everything: A comes back as a
    /// zombie that must notice it lost its partitions, rejoin, and write nothing twice.
    Pause,
    /// As `Pause`, but exactly between deciding a batch and publishing it (a fail point holds A
    /// there): B must publish A's decision, and A, woken, must not make anything visible twice.
    PauseMidWrite,
}

/// Arms A's 21st write (about 100 records in, batches of 5) to hold 3 s after its decision.
const MID_WRITE: &str = "ledger-decided=20*off->1*return(3000)";

/// What A's log says when the fail point holds it (`damselfly_core::ledger`).
const HOLDING: &str = "fail point ledger-decided: holding";

/// What B's log says when it publishes a decision another writer left staged.
const ROLLED_FORWARD: &str = "published a decided batch its writer left staged";

#[test]
#[ignore = "needs the local stack (tests/run starts it)"]
fn classic_a_killed_runner_s_partitions_are_taken_over() {
    failover(Fault::Kill, "classic");
}

#[test]
#[ignore = "needs the local stack (tests/run starts it)"]
fn classic_a_paused_runner_comes_back_without_writing_twice() {
    failover(Fault::Pause, "classic");
}

#[test]
#[ignore = "needs the local stack (tests/run starts it; built with --features damselfly/failpoints)"]
fn classic_a_runner_paused_mid_write_is_a_zombie_that_doubles_nothing() {
    failover(Fault::PauseMidWrite, "classic");
}

#[test]
#[ignore = "needs the local stack (tests/run starts it)"]
fn consumer_protocol_a_killed_runner_s_partitions_are_taken_over() {
    failover(Fault::Kill, "consumer");
}

#[test]
#[ignore = "needs the local stack (tests/run starts it)"]
fn consumer_protocol_a_paused_runner_comes_back_without_writing_twice() {
    failover(Fault::Pause, "consumer");
}

/// Two runners split a backlog; A meets `fault`; B takes over; then a second backlog; every sample
/// lands in the lake exactly once.
fn failover(fault: Fault, protocol: &str) {
    let started = Instant::now();
    let bucket = env("LAKE_BUCKET");
    env("AWS_ENDPOINT_URL");
    let brokers = env("KAFKA_BROKERS");
    let id = run_id();
    let name = format!("failover-{protocol}-{fault:?}-{id}").to_lowercase();
    let (topic, group) = (name.clone(), name.clone());
    let lake = format!("s3://{bucket}/tests/{name}");
    create_topic(&brokers, &topic, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();

    // Phase 1: a backlog on every partition, timestamps ending now.
    let vms = 24;
    let mut messages = simulate(&brokers, &topic, vms, 60);
    let phase1_end = Instant::now();

    let start = |n, fp| Runner::start(n, dir.path(), &brokers, &topic, &group, &lake, protocol, fp);
    let mid_write = fault == Fault::PauseMidWrite;
    let mut a = start("A", if mid_write { MID_WRITE } else { "" });
    let b = start("B", "");
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();

    // Both join the group, split the partitions, and work on them.
    let (a_owned, b_owned) = wait_for(
        Duration::from_secs(90),
        "both runners to own partitions and process records",
        &[&a, &b],
        || {
            let (ao, bo) = (a.owned(0)?, b.owned(0)?);
            let split = !ao.is_empty()
                && !bo.is_empty()
                && ao.is_disjoint(&bo)
                && ao.union(&bo).copied().collect::<BTreeSet<_>>() == all;
            // A has committed batches of its own, so B must resume after them, not from the start.
            let working = if mid_write {
                // A holds between deciding and publishing: stop it right there.
                a.log().contains(HOLDING)
            } else {
                a.metric("damselfly_runner_records_total")? >= 100
            } && b.metric("damselfly_runner_records_total")? > 0;
            (split && working).then_some((ao, bo))
        },
    );
    let lag_at_fault = a.metric("damselfly_runner_group_lag").unwrap_or(-1);
    let a_records = a.metric("damselfly_runner_records_total").unwrap_or(0);
    let b_log_at_fault = b.log().len();
    match fault {
        Fault::Kill => a.kill(),
        Fault::Pause | Fault::PauseMidWrite => a.signal("-STOP"),
    }
    let fault_at = Instant::now();
    eprintln!(
        "{fault:?} A at {:.1}s ({protocol}): A owned {a_owned:?} and had processed {a_records} records, B owned {b_owned:?}, group lag {lag_at_fault}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        lag_at_fault > 0,
        "A met its fault with work left (lag {lag_at_fault}); publish more if this ever fails"
    );

    // B is given A's partitions once the broker notices A is gone (session timeout 6s).
    wait_for(
        Duration::from_secs(60),
        "B to be assigned every partition after A's fault",
        &[&b],
        || (b.owned(b_log_at_fault)? == all).then_some(()),
    );
    eprintln!(
        "B took over every partition {:.1}s after the fault",
        fault_at.elapsed().as_secs_f64()
    );
    if mid_write {
        // B took A's partition over with A's decision staged: it publishes it before going on.
        wait_for(
            Duration::from_secs(30),
            "B to publish the batch A decided but left staged",
            &[&b],
            || {
                b.log()[b_log_at_fault..]
                    .contains(ROLLED_FORWARD)
                    .then_some(())
            },
        );
    }
    let a_log_at_resume = a.log().len();
    if fault != Fault::Kill {
        // Let B work on A's old partitions for a while, then wake A up: it finds itself out of
        // the group, rejoins, and the two split the partitions again.
        std::thread::sleep(Duration::from_secs(3));
        a.signal("-CONT");
        eprintln!(
            "A resumed {:.1}s after the pause",
            fault_at.elapsed().as_secs_f64()
        );
    }

    // Phase 2, on every partition again, with timestamps after phase 1's.
    let phase2 = 10;
    let after = phase1_end + Duration::from_secs(phase2 + 2);
    std::thread::sleep(after.saturating_duration_since(Instant::now()));
    messages += simulate(&brokers, &topic, vms, phase2);

    let mut b = b;
    if fault != Fault::Kill {
        wait_for(
            Duration::from_secs(90),
            "A to rejoin the group and own partitions again",
            &[&a, &b],
            || a.owned(a_log_at_resume).filter(|o| !o.is_empty()),
        );
    }
    wait_for(
        Duration::from_secs(180),
        "the runners to drain the group's lag",
        &[&a, &b],
        || {
            // The lag gauge is measured every scale interval: it may still read 0 from before
            // phase 2 was published, so the records processed must add up too.
            let a_now = match fault {
                Fault::Kill => a_records,
                _ => a.metric("damselfly_runner_records_total")?,
            };
            let done = b.metric("damselfly_runner_records_total")? + a_now;
            (b.metric("damselfly_runner_group_lag")? == 0 && done >= messages as i64).then_some(())
        },
    );
    let summary = b.terminate(Duration::from_secs(30));
    eprintln!("B: {summary}");
    assert_eq!(summary["on_failure_batches"], 0, "{summary}");
    let mut records = summary["records"].as_u64().unwrap() + a_records as u64;
    if fault != Fault::Kill {
        let a_summary = a.terminate(Duration::from_secs(30));
        eprintln!("A: {a_summary}");
        assert_eq!(a_summary["on_failure_batches"], 0, "{a_summary}");
        records = summary["records"].as_u64().unwrap() + a_summary["records"].as_u64().unwrap();
    }
    assert!(
        records >= messages,
        "A and B processed every one of {messages} messages ({records})"
    );

    let samples = messages * SAMPLES_PER_MESSAGE;
    let local = tempfile::tempdir().unwrap();
    assert!(copy_lake(&lake, local.path()) > 0);
    assert_eq!(
        raw_counts(local.path()),
        (samples, samples),
        "every sample of {messages} messages exactly once ({fault:?}, {protocol})"
    );
    assert_lake_holds_the_topic(&brokers, &topic, messages as usize, local.path());
    eprintln!("passed in {:.1}s", started.elapsed().as_secs_f64());
}
