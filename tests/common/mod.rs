//! Plumbing shared by the end-to-end tests: running the CLI, the local stack's settings, DuckDB.
// Each test file is its own crate and uses a different subset of these.
#![allow(dead_code)]

pub mod agent;
pub mod broker;
pub mod lambda;
pub mod prometheus;
pub mod serve;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use damselfly_core::Lake;
use damselfly_schemas::MetricMessage;
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use serde_json::Value;

/// Samples in one simulated message: the whole metric catalog.
pub const SAMPLES_PER_MESSAGE: u64 = 50;

/// A variable the local stack's `.env` sets; panics with how to get it.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run tests/run, or localstack/up and `source localstack/.env`")
    })
}

/// Milliseconds since the epoch: a suffix that makes topics, groups and lake prefixes unique.
pub fn run_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A small runtime for the async client calls a synchronous test makes.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits for a child whose stdout and stderr are piped, at most `limit`: on time-out kills it and
/// returns `None` with what it printed so far, so that a hang fails the test in minutes, with its log.
pub fn wait_bounded(mut child: Child, limit: Duration) -> (Option<Output>, String) {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let log = String::from_utf8_lossy(&stderr).into_owned();
    (
        status.map(|status| Output {
            status,
            stdout,
            stderr,
        }),
        log,
    )
}

/// Runs `damselfly ARGS`, asserts it succeeded, and parses its stdout as JSON.
pub fn damselfly(args: &[&str]) -> Value {
    damselfly_without(&[], args)
}

/// Runs `damselfly ARGS` without the environment variables `unset` (e.g. the local stack's
/// `SNS_TOPIC_ARN`), asserts it succeeded, and parses its stdout as JSON.
pub fn damselfly_without(unset: &[&str], args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_damselfly"));
    for var in unset {
        cmd.env_remove(var);
    }
    let out = cmd.args(args).output().expect("run damselfly");
    assert!(
        out.status.success(),
        "damselfly {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of {args:?} is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs the aggregate function over everything on `topic` into the lake at `lake` as consumer
/// group `group`, with `extra` arguments, stopping once caught up: its JSON summary.
pub fn aggregate_caught_up(
    brokers: &str,
    topic: &str,
    group: &str,
    lake: &str,
    extra: &[&str],
) -> Value {
    let mut args = vec![
        "run",
        "aggregate",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--group",
        group,
        "--lake",
        lake,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--until-caught-up", "--json"]);
    damselfly(&args)
}

/// Publishes `vms` simulated VMs for `seconds` one-second intervals, as fast as the broker takes
/// them (timestamps ending now); returns the messages, asserting all were acknowledged.
pub fn simulate(brokers: &str, topic: &str, vms: u64, seconds: u64) -> u64 {
    simulate_ns(brokers, topic, "ns01", vms, seconds)
}

/// [`simulate`] under namespace `ns`, so that fleets published within the same seconds stay
/// distinct samples (VM names do not depend on it; the `ns` tag does).
pub fn simulate_ns(brokers: &str, topic: &str, ns: &str, vms: u64, seconds: u64) -> u64 {
    let out = damselfly(&[
        "simulate",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--vms",
        &vms.to_string(),
        "--interval",
        "1s",
        "--duration",
        &format!("{seconds}s"),
        "--ns",
        ns,
        "--no-pace",
        "--json",
    ]);
    assert_eq!(out["published"], vms * seconds, "{out}");
    vms * seconds
}

/// Rows of `raw` in a local copy of a lake, and its distinct (vm, metric, device, ts): equal when
/// every sample is stored once (DuckDB).
pub fn raw_counts(lake_dir: &Path) -> (u64, u64) {
    let counts = duckdb(
        lake_dir,
        "SELECT count(*) AS n, count(DISTINCT (vm, metric, device, ts)) AS distinct_samples FROM raw",
    );
    (
        counts[0]["n"].as_u64().expect("a count"),
        counts[0]["distinct_samples"].as_u64().expect("a count"),
    )
}

/// Creates a topic through Kafka's admin API (tests make unique names and leave topics behind).
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = rt().block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &opts,
    ));
    for r in res.expect("create_topics") {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// Copies every object of the lake to a local directory, keys as paths; returns how many.
pub fn copy_lake(url: &str, to: &Path) -> usize {
    rt().block_on(async {
        let lake = Lake::open(url).unwrap();
        let metas: Vec<_> = lake.store().list(None).try_collect().await.unwrap();
        for meta in &metas {
            let bytes = lake
                .store()
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let path = to.join(meta.location.as_ref());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        metas.len()
    })
}

/// The lake views users load into DuckDB (`schemas/sql/duckdb.sql`), which every DuckDB check uses.
pub const DUCKDB_VIEWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/sql/duckdb.sql");

/// Python defining `open_lake(lake)`: a DuckDB connection in the lake's directory with the views of
/// [`DUCKDB_VIEWS`] (path in `DUCKDB_VIEWS`); a table with no files yet has no view.
pub const DUCKDB_OPEN: &str = r#"
import duckdb, os
def open_lake(lake):
    # DuckDB draws a progress bar on stdout once a query runs past 2 s (a loaded machine): off, so
    # that stdout holds only the answer.
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    os.chdir(lake)
    for stmt in open(os.environ["DUCKDB_VIEWS"]).read().split(";"):
        if "CREATE" not in stmt:
            continue
        try:
            con.execute(stmt)
        except duckdb.IOException as e:
            if "No files found" not in str(e):
                raise
    return con
"#;

/// Answers `query` with DuckDB (Python package, `DAMSELFLY_PYTHON`) over a local lake, through the
/// views users load ([`DUCKDB_VIEWS`]).
pub fn duckdb(lake_dir: &Path, query: &str) -> Value {
    let script = format!(
        r#"{DUCKDB_OPEN}
import json, sys
lake, query = sys.argv[1], sys.argv[2]
cur = open_lake(lake).execute(query)
cols = [d[0] for d in cur.description]
print(json.dumps([dict(zip(cols, row)) for row in cur.fetchall()], default=str))
"#
    );
    let out = Command::new(env("DAMSELFLY_PYTHON"))
        .args(["-c", &script, lake_dir.to_str().unwrap(), query])
        .env("DUCKDB_VIEWS", DUCKDB_VIEWS)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs many queries in one DuckDB session (UTC) over the lake; one JSON array of rows per query.
pub fn duckdb_all(lake: &Path, queries: &[String]) -> Vec<Value> {
    let script = format!(
        r#"{DUCKDB_OPEN}
import json, sys
con = open_lake(sys.argv[1])
con.execute("SET TimeZone = 'UTC'")
out = []
for q in json.load(sys.stdin):
    cur = con.execute(q)
    cols = [d[0] for d in cur.description]
    out.append([dict(zip(cols, row)) for row in cur.fetchall()])
print(json.dumps(out, default=str))
"#
    );
    let mut child = Command::new(env("DAMSELFLY_PYTHON"))
        .args(["-c", &script, lake.to_str().unwrap()])
        .env("DUCKDB_VIEWS", DUCKDB_VIEWS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(queries).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every sample on the topic as `vm|metric|device|ts` -> value, read with a throwaway group.
pub fn published_samples(
    brokers: &str,
    topic: &str,
    expected_messages: usize,
) -> BTreeMap<String, f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-verify"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut samples = BTreeMap::new();
    let (mut messages, deadline) = (0, Instant::now() + Duration::from_secs(90));
    while messages < expected_messages && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = MetricMessage::from_json(m.unwrap().payload().unwrap()).unwrap();
        messages += 1;
        let rows = msg.metrics.iter().map(|(k, v)| ("", k, v));
        let dev = msg
            .devices
            .iter()
            .flat_map(|(d, ms)| ms.iter().map(move |(k, v)| (d.as_str(), k, v)));
        for (device, metric, value) in rows.chain(dev) {
            samples.insert(
                format!("{}|{metric}|{device}|{}", msg.tags.vm, msg.ts),
                *value,
            );
        }
    }
    assert_eq!(
        messages, expected_messages,
        "read back every published message"
    );
    samples
}

/// Every raw sample of a local lake copy as `vm|metric|device|ts` -> value, asserting none is
/// stored twice.
pub fn stored_samples(lake_dir: &Path) -> BTreeMap<String, f64> {
    let stored = duckdb(
        lake_dir,
        "SELECT vm || '|' || metric || '|' || device || '|' || CAST(epoch_ms(ts) AS VARCHAR) AS k, value, count(*) AS n \
         FROM raw GROUP BY ALL ORDER BY k",
    );
    let rows = stored.as_array().unwrap();
    let dupes: Vec<&Value> = rows.iter().filter(|r| r["n"] != 1).collect();
    assert!(
        dupes.is_empty(),
        "samples stored more than once: {:?}",
        &dupes[..dupes.len().min(5)]
    );
    rows.iter()
        .map(|r| {
            (
                r["k"].as_str().unwrap().to_owned(),
                r["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Asserts that a local lake copy holds every sample of the first `messages` messages of `topic`
/// once, with its published value, and nothing else: the checksum of exactly once.
pub fn assert_lake_holds_the_topic(brokers: &str, topic: &str, messages: usize, lake_dir: &Path) {
    let expected = published_samples(brokers, topic, messages);
    let stored = stored_samples(lake_dir);
    let missing = expected.keys().filter(|k| !stored.contains_key(*k)).count();
    let extra = stored.keys().filter(|k| !expected.contains_key(*k)).count();
    assert_eq!((missing, extra), (0, 0), "lake and topic differ");
    assert_eq!(
        stored, expected,
        "every (vm, metric, device, ts) has the published value"
    );
}
