//! One sample's whole journey on the local stack: simulate -> Tansu -> run aggregate -> LocalStack S3 ->
//! `damselfly sql`, and DuckDB over a local copy of the same lake.
//!
//! Needs `localstack/up` and its `localstack/.env` in the environment (tests/run does both), plus
//! `DAMSELFLY_PYTHON`: a Python with the `duckdb` package.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use damselfly_core::Lake;
use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::Value;

const SAMPLES_PER_MESSAGE: u64 = 50;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run tests/run, or localstack/up and `source localstack/.env`")
    })
}

fn damselfly(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .args(args)
        .output()
        .expect("run damselfly");
    assert!(
        out.status.success(),
        "damselfly {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &opts,
    ));
    for r in res.expect("create_topics") {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// Copies every object of the lake to a local directory, keeping keys as paths.
fn copy_lake(url: &str, to: &Path) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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

fn duckdb(lake_dir: &Path, query: &str) -> Value {
    let script = r#"
import duckdb, json, sys
lake, query = sys.argv[1], sys.argv[2]
con = duckdb.connect()
for t in ("raw", "rollup_1m", "dlq"):
    con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{lake}/{t}/**/*.parquet', hive_partitioning = true)")
cur = con.execute(query)
cols = [d[0] for d in cur.description]
print(json.dumps([dict(zip(cols, row)) for row in cur.fetchall()], default=str))
"#;
    let out = Command::new(env("DAMSELFLY_PYTHON"))
        .args(["-c", script, lake_dir.to_str().unwrap(), query])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs the local stack (Tansu + LocalStack): run tests/run"]
fn journey_on_tansu_and_localstack_s3() {
    let brokers = env("KAFKA_BROKERS");
    let bucket = env("LAKE_BUCKET");
    env("AWS_ENDPOINT_URL");
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
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
#[ignore = "needs the local stack (Tansu + LocalStack): run tests/run"]
fn telegraf_json_and_influx_take_the_same_journey() {
    let brokers = env("KAFKA_BROKERS");
    let bucket = env("LAKE_BUCKET");
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
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
