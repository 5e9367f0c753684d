//! Compaction on the local stack: simulate -> Kafka -> run aggregate -> LocalStack S3, then
//! `damselfly compact`: a crash between writing and deleting changes no answer, raw keeps every
//! sample (DuckDB checksum), rollup_1h/1d agree with DuckDB's recomputation from raw, a second run
//! does nothing, and retention drops old partitions.
//!
//! Needs `localstack/up` and its `localstack/.env` in the environment (tests/run does both), plus
//! `DAMSELFLY_PYTHON`: a Python with the `duckdb` package.

mod common;
use common::*;

use std::path::Path;

use serde_json::Value;

/// 3 hours of 6 VMs at one message a minute, backfilled so that it ends now.
const VMS: u64 = 6;
const INTERVALS: u64 = 180;

/// `SELECT` over a table of a local lake copy, with Hive partitioning (any table, rollups included).
fn table(dir: &Path, name: &str) -> String {
    format!(
        "read_parquet('{}/{name}/**/*.parquet', hive_partitioning = true)",
        dir.display()
    )
}

/// Count and an order-independent checksum of every raw sample (a float sum would depend on the order).
fn raw_fingerprint(dir: &Path) -> Value {
    duckdb(
        dir,
        &format!(
            "SELECT count(*) AS n, CAST(sum(hash(vm, metric, device, ts, value) % 1000000007) AS VARCHAR) AS h, \
             count(DISTINCT dt || hour) AS hours FROM {}",
            table(dir, "raw")
        ),
    )
}

/// Per-partition file names of a table in a local lake copy.
fn files(dir: &Path, name: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(days) = std::fs::read_dir(dir.join(name)) else {
        return out;
    };
    for day in days {
        for hour in std::fs::read_dir(day.unwrap().path()).unwrap() {
            let hour = hour.unwrap().path();
            let mut names: Vec<String> = std::fs::read_dir(&hour)
                .unwrap()
                .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let part = hour.strip_prefix(dir).unwrap().display().to_string();
            out.push((part, names));
        }
    }
    out.sort();
    out
}

fn copy(lake: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_lake(lake, dir.path());
    dir
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
#[ignore = "needs the local stack (Apache Kafka + LocalStack): run tests/run"]
fn compaction_on_kafka_and_localstack_s3() {
    let brokers = env("KAFKA_BROKERS");
    let id = run_id();
    let topic = format!("compact-{id}");
    let lake = format!("s3://{}/tests/compact-{id}", env("LAKE_BUCKET"));
    create_topic(&brokers, &topic, 4);

    let published = damselfly(&[
        "simulate",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--vms",
        "6",
        "--interval",
        "60s",
        "--duration",
        "180m",
        "--no-pace",
        "--seed",
        "7",
        "--json",
    ]);
    assert_eq!(published["published"], VMS * INTERVALS);
    let aggregated = damselfly(&[
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
        "--batch-size",
        "10",
        "--until-caught-up",
        "--json",
    ]);
    eprintln!("aggregate: {aggregated}");

    let sql = |q: &str| damselfly(&["sql", "--lake", &lake, "--format", "json", q]);
    // Integer sums: exact whatever the order in which files are read.
    let counts =
        "SELECT count(*) AS n, sum(CAST(floor(value * 100) AS BIGINT) % 1000003) AS s FROM raw";
    let ours_before = sql(counts);
    assert_eq!(
        ours_before[0]["n"],
        VMS * INTERVALS * SAMPLES_PER_MESSAGE,
        "every sample in raw before compaction"
    );
    let before = copy(&lake);
    let fingerprint = raw_fingerprint(before.path());
    let raw_files_before: usize = files(before.path(), "raw").iter().map(|p| p.1.len()).sum();
    eprintln!("before: {fingerprint}, {raw_files_before} raw files");

    // Every hour but the current one is closed with no grace; the crash drill writes the
    // compacted files and rollups, then stops before deleting anything.
    let now = now_ms();
    let compact = |extra: &[&str]| {
        let mut args = vec!["compact", "--lake", &lake, "--grace", "0s", "--json"];
        args.extend_from_slice(extra);
        let out = damselfly(&args);
        eprintln!("compact {extra:?}: {out}");
        out
    };
    let at_now = rfc3339(now);
    let halted = compact(&["--now", &at_now, "--halt-after-write"]);
    assert!(
        halted["partitions_compacted"].as_u64().unwrap() >= 4,
        "{halted}"
    );
    assert_eq!(halted["superseded_deleted"], 0);
    assert_eq!(
        sql(counts),
        ours_before,
        "mid-compaction, damselfly sql counts every sample once"
    );
    let mid = copy(&lake);
    let raw_files_mid: usize = files(mid.path(), "raw").iter().map(|p| p.1.len()).sum();
    assert!(
        raw_files_mid > raw_files_before,
        "sources and compacted files coexist"
    );

    // The next run finishes the crashed one: deletes what the compacted files replace.
    let finished = compact(&["--now", &at_now]);
    assert_eq!(finished["partitions_compacted"], 0, "{finished}");
    assert_eq!(
        finished["superseded_deleted"], halted["files_merged"],
        "every merged file is deleted"
    );
    assert_eq!(sql(counts), ours_before);
    let after = copy(&lake);
    assert_eq!(
        raw_fingerprint(after.path()),
        fingerprint,
        "raw holds the same samples"
    );
    // One compacted file per closed hour; only each Kafka partition's latest batch (and the open
    // hour) keeps its own files.
    let current_hour = format!(
        "raw/{}",
        chrono::DateTime::from_timestamp_millis(now)
            .unwrap()
            .format("dt=%Y-%m-%d/hour=%H")
    );
    for (part, names) in files(after.path(), "raw") {
        if part == current_hour {
            continue;
        }
        let compacted = names.iter().filter(|n| n.starts_with("compacted-")).count();
        assert_eq!(compacted, 1, "{part}: {names:?}");
        assert!(
            names.len() <= 1 + 4,
            "{part}: at most one waiting batch per partition: {names:?}"
        );
    }

    // rollup_1h agrees with DuckDB's recomputation from raw for every closed hour.
    let open_hour = now / 3_600_000 * 3_600_000;
    let disagree = duckdb(
        after.path(),
        &format!(
            "WITH r AS (SELECT vm, metric, device, epoch_ms(ts) // 3600000 * 3600000 AS w, count(*) AS n, sum(value) AS s, \
                        min(value) AS lo, max(value) AS hi FROM {raw} WHERE epoch_ms(ts) < {open_hour} GROUP BY ALL), \
                  u AS (SELECT vm, metric, device, epoch_ms(window_start) AS w, sum(\"count\") AS n, sum(\"sum\") AS s, \
                        min(\"min\") AS lo, max(\"max\") AS hi FROM {h} WHERE NOT ends_with(metric, '_rate') GROUP BY ALL) \
             SELECT (SELECT count(*) FROM u) AS rows, (SELECT count(DISTINCT w) FROM u) AS hours, count(*) FILTER (WHERE \
                    r.n IS DISTINCT FROM u.n OR r.lo IS DISTINCT FROM u.lo OR r.hi IS DISTINCT FROM u.hi \
                    OR abs(r.s - u.s) > 1e-9 * greatest(abs(r.s), 1)) AS bad \
             FROM r FULL JOIN u USING (vm, metric, device, w)",
            raw = table(after.path(), "raw"),
            h = table(after.path(), "rollup_1h"),
        ),
    );
    eprintln!("rollup_1h vs raw: {disagree}");
    assert!(disagree[0]["hours"].as_u64().unwrap() >= 2, "{disagree}");
    assert_eq!(
        disagree[0]["bad"], 0,
        "rollup_1h disagrees with raw: {disagree}"
    );
    assert_eq!(
        sql("SELECT count(*) AS n FROM rollup_1h WHERE NOT ends_with(metric, '_rate')")[0]["n"],
        disagree[0]["rows"],
        "damselfly sql reads rollup_1h"
    );

    // Compacting again at the same time is a no-op.
    let again = compact(&["--now", &at_now]);
    for k in [
        "partitions_compacted",
        "superseded_deleted",
        "rollups_1h",
        "rollups_1d",
        "partitions_expired",
    ] {
        assert_eq!(again[k], 0, "{k}: {again}");
    }

    // Two days later the simulated days are closed: rollup_1d agrees with raw, by day.
    let later = now + 2 * 86_400_000;
    let days = compact(&["--now", &rfc3339(later)]);
    assert!(days["rollups_1d"].as_u64().unwrap() >= 1, "{days}");
    let after_days = copy(&lake);
    let disagree = duckdb(
        after_days.path(),
        &format!(
            "WITH r AS (SELECT vm, metric, device, epoch_ms(ts) // 86400000 * 86400000 AS w, count(*) AS n, sum(value) AS s, \
                        min(value) AS lo, max(value) AS hi FROM {raw} GROUP BY ALL), \
                  u AS (SELECT vm, metric, device, epoch_ms(window_start) AS w, sum(\"count\") AS n, sum(\"sum\") AS s, \
                        min(\"min\") AS lo, max(\"max\") AS hi FROM {d} WHERE NOT ends_with(metric, '_rate') GROUP BY ALL) \
             SELECT (SELECT count(*) FROM u) AS rows, count(*) FILTER (WHERE \
                    r.n IS DISTINCT FROM u.n OR r.lo IS DISTINCT FROM u.lo OR r.hi IS DISTINCT FROM u.hi \
                    OR abs(r.s - u.s) > 1e-9 * greatest(abs(r.s), 1)) AS bad \
             FROM r FULL JOIN u USING (vm, metric, device, w)",
            raw = table(after_days.path(), "raw"),
            d = table(after_days.path(), "rollup_1d"),
        ),
    );
    eprintln!("rollup_1d vs raw: {disagree}");
    assert!(disagree[0]["rows"].as_u64().unwrap() > 0, "{disagree}");
    assert_eq!(
        disagree[0]["bad"], 0,
        "rollup_1d disagrees with raw: {disagree}"
    );
    assert_eq!(raw_fingerprint(after_days.path()), fingerprint);

    // Retention: keep raw one day, at a time when only the oldest hour is a day past its end.
    let oldest = files(after_days.path(), "raw")[0].0.clone();
    let oldest_start = chrono::NaiveDateTime::parse_from_str(
        &format!(
            "{}:00:00",
            oldest.trim_start_matches("raw/dt=").replace("/hour=", " ")
        ),
        "%Y-%m-%d %H:%M:%S",
    )
    .unwrap_or_else(|e| panic!("{oldest}: {e}"))
    .and_utc()
    .timestamp_millis();
    let oldest_rows = duckdb(
        after_days.path(),
        &format!(
            "SELECT count(*) AS n FROM {} WHERE epoch_ms(ts) >= {oldest_start} AND epoch_ms(ts) < {}",
            table(after_days.path(), "raw"),
            oldest_start + 3_600_000
        ),
    );
    let first_hour_end = oldest_start + 3_600_000;
    let expire_at = rfc3339(first_hour_end + 86_400_000 + 60_000);
    let expired = compact(&["--now", &expire_at, "--retention", "raw=1d"]);
    assert_eq!(expired["partitions_expired"], 1, "{expired}");
    let n_after = sql("SELECT count(*) AS n FROM raw")[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(
        n_after,
        ours_before[0]["n"].as_u64().unwrap() - oldest_rows[0]["n"].as_u64().unwrap(),
        "exactly the oldest hour's samples are gone"
    );
    let retained = copy(&lake);
    assert!(
        files(retained.path(), "raw")
            .iter()
            .all(|(p, _)| *p != oldest),
        "{oldest} was deleted"
    );
    assert!(
        !files(retained.path(), "rollup_1h").is_empty(),
        "rollup_1h keeps its own, longer retention"
    );
}
