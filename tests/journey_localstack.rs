//! One sample's whole journey on the local stack: simulate -> Kafka -> run aggregate -> LocalStack S3 ->
//! `damselfly sql`, and DuckDB over a local copy of the same lake.
//!
//! Needs `localstack/up` and its `localstack/.env` in the environment (tests/run does both), plus
//! `DAMSELFLY_PYTHON`: a Python with the `duckdb` package.

mod common;
use common::*;

use std::time::Duration;

use rdkafka::config::ClientConfig;

/// Produces one record that is not a metric message, keyed like a VM.
fn produce_garbage(brokers: &str, topic: &str) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to(topic)
                .key("vm-junk")
                .payload("{\"v\": 1, \"ts\": "),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[test]
#[ignore = "needs the local stack (Apache Kafka + LocalStack): run tests/run"]
fn journey_on_kafka_and_localstack_s3() {
    let brokers = env("KAFKA_BROKERS");
    let bucket = env("LAKE_BUCKET");
    env("AWS_ENDPOINT_URL");
    let run_id = run_id();
    let topic = format!("journey-{run_id}");
    let lake = format!("s3://{bucket}/tests/journey-{run_id}");
    create_topic(&brokers, &topic, 12);

    let (vms, intervals) = (7_u64, 10_u64);
    let samples = vms * intervals * SAMPLES_PER_MESSAGE;
    let published = damselfly(&[
        "simulate",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--vms",
        "7",
        "--interval",
        "2s",
        "--duration",
        "20s",
        "--no-pace",
        "--seed",
        "3",
        "--json",
    ]);
    assert_eq!(published["published"], vms * intervals);
    produce_garbage(&brokers, &topic);

    let run = |group: &str| {
        damselfly(&[
            "run",
            "aggregate",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--group",
            group,
            "--lake",
            &lake,
            "--batch-size",
            "16",
            "--until-caught-up",
            "--json",
        ])
    };
    let group = format!("journey-{run_id}");
    let first = run(&group);
    assert_eq!(first["records"], vms * intervals + 1);
    assert_eq!(first["samples"], samples);
    assert_eq!(first["rejected"], 1, "the garbage record goes to dlq");
    assert!(
        first["batches"].as_u64().unwrap() >= 5,
        "batch size 16 makes several batches: {first}"
    );
    // Offsets were committed after the writes: the same group has nothing left to do.
    let again = run(&group);
    assert_eq!(again["records"], 0, "a caught-up group re-reads nothing");

    let sql = |q: &str| damselfly(&["sql", "--lake", &lake, "--format", "json", q]);
    let counts = "SELECT (SELECT count(*) FROM raw) AS raw_rows, \
                  (SELECT count(*) FROM (SELECT DISTINCT vm, metric, device, ts FROM raw)) AS distinct_samples, \
                  (SELECT sum(\"count\") FROM rollup_1m WHERE NOT ends_with(metric, '_rate')) AS rollup_count";
    let ours = sql(counts);
    assert_eq!(
        ours,
        serde_json::json!([{"raw_rows": samples, "distinct_samples": samples, "rollup_count": samples}])
    );

    let local = tempfile::tempdir().unwrap();
    let objects = copy_lake(&lake, local.path());
    assert!(
        objects >= 2,
        "raw and rollup objects were written ({objects})"
    );
    let theirs = duckdb(local.path(), counts);
    assert_eq!(theirs, ours, "DuckDB reads the same lake the same way");

    let per_vm = "SELECT vm, count(*) AS n, round(avg(value), 6) AS avg_cpu FROM raw \
                  WHERE metric = 'cpu_utilization' GROUP BY vm ORDER BY vm";
    let ours = sql(per_vm);
    assert_eq!(ours.as_array().unwrap().len() as u64, vms);
    assert_eq!(duckdb(local.path(), per_vm), ours);
    // Every table, a handful of questions: both engines give the same answers.
    for q in [
        "SELECT csp, max(value) AS max_cpu, count(DISTINCT vm) AS vms FROM raw \
         WHERE metric = 'cpu_utilization' GROUP BY csp ORDER BY csp",
        "SELECT vm, round(sum(\"sum\") / sum(\"count\"), 6) AS avg_mem FROM rollup_1m \
         WHERE metric = 'mem_utilization' GROUP BY vm ORDER BY vm",
        "SELECT metric, count(*) AS windows, round(max(\"max\"), 6) AS peak FROM rollup_1m \
         WHERE metric LIKE 'bytes_%' GROUP BY metric ORDER BY metric",
        "SELECT \"offset\", \"partition\", key, reason FROM dlq ORDER BY \"offset\"",
        // The rollup views both engines share: `avg` per row and partials merged across files.
        "SELECT vm, count(*) AS minutes, sum(\"count\") AS n, round(max(avg), 6) AS peak_avg, \
         round(min(\"first\"), 6) AS lo_first, round(max(\"last\"), 6) AS hi_last FROM rollup_1m_merged \
         WHERE metric = 'cpu_utilization' GROUP BY vm ORDER BY vm",
        "SELECT metric, round(sum(avg * \"count\") / sum(\"count\"), 6) AS weighted FROM rollup_1m \
         WHERE metric IN ('cpu_utilization', 'mem_utilization') GROUP BY metric ORDER BY metric",
    ] {
        let ours = sql(q);
        assert!(!ours.as_array().unwrap().is_empty(), "{q}: no rows");
        assert_eq!(duckdb(local.path(), q), ours, "{q}");
    }
    let rollup_vs_raw = "SELECT r.vm, r.n = u.n AS same FROM \
        (SELECT vm, count(*) AS n FROM raw GROUP BY vm) r JOIN \
        (SELECT vm, sum(\"count\") AS n FROM rollup_1m WHERE NOT ends_with(metric, '_rate') GROUP BY vm) u ON r.vm = u.vm ORDER BY r.vm";
    let checks = duckdb(local.path(), rollup_vs_raw);
    assert!(
        checks.as_array().unwrap().iter().all(|r| r["same"] == true),
        "{checks}"
    );
}

#[test]
#[ignore = "needs the local stack (Apache Kafka + LocalStack): run tests/run"]
fn telegraf_json_and_influx_take_the_same_journey() {
    let brokers = env("KAFKA_BROKERS");
    let bucket = env("LAKE_BUCKET");
    let run_id = run_id();
    for format in ["telegraf-json", "influx"] {
        let topic = format!("formats-{format}-{run_id}");
        let lake = format!("s3://{bucket}/tests/formats-{format}-{run_id}");
        create_topic(&brokers, &topic, 3);
        let published = damselfly(&[
            "simulate",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--vms",
            "3",
            "--interval",
            "2s",
            "--duration",
            "10s",
            "--no-pace",
            "--format",
            format,
            "--json",
        ]);
        assert_eq!(published["published"], 15, "{format}");
        let run = damselfly(&[
            "run",
            "aggregate",
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--group",
            &topic,
            "--lake",
            &lake,
            "--until-caught-up",
            "--json",
        ]);
        assert_eq!(run["rejected"], 0, "{format}: {run}");
        assert_eq!(run["samples"], 15 * SAMPLES_PER_MESSAGE, "{format}: {run}");
        let rows = damselfly(&[
            "sql",
            "--lake",
            &lake,
            "--format",
            "json",
            "SELECT count(DISTINCT vm) AS vms, count(*) AS n FROM raw",
        ]);
        assert_eq!(
            rows,
            serde_json::json!([{"vms": 3, "n": 15 * SAMPLES_PER_MESSAGE}]),
            "{format}"
        );
    }
}
