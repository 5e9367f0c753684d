//! `damselfly demo` runs the whole journey on the embedded broker, and its numbers add up in SQL.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn sql(lake: &Path, query: &str) -> Value {
    damselfly(&[
        "sql",
        "--lake",
        lake.to_str().unwrap(),
        "--format",
        "json",
        query,
    ])
}

#[test]
fn demo_journey_adds_up_and_replaces_its_own_lake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap();
    let (vms, intervals) = (4_u64, 3_u64);
    let messages = vms * intervals;
    let samples = messages * SAMPLES_PER_MESSAGE;

    for _run in 0..2 {
        // Without an SNS topic (tests/run exports the local stack's), notifications go to the outbox.
        let s = damselfly_without(
            &["SNS_TOPIC_ARN"],
            &[
                "demo",
                "--vms",
                "4",
                "--duration",
                "3",
                "--interval",
                "1s",
                "--lake",
                lake_s,
                "--json",
            ],
        );
        assert_eq!(s["intervals"], intervals);
        assert_eq!(s["published"], messages);
        assert_eq!(s["consumed"], messages);
        assert_eq!(s["samples_written"], samples);
        assert_eq!(
            s["raw_rows"], samples,
            "a second demo replaces the first one's lake"
        );
        assert_eq!(s["rejected"], 0);
        assert_eq!(s["alarm_sent"], s["alarm_notifications"], "all delivered");
        assert_eq!(
            s["alarm_target"].as_str(),
            lake.join("alarm-outbox.jsonl").to_str()
        );
        let outbox = std::fs::read_to_string(lake.join("alarm-outbox.jsonl")).unwrap_or_default();
        assert_eq!(
            Some(outbox.lines().count() as u64),
            s["alarm_sent"].as_u64(),
            "one outbox line per notification sent"
        );
    }

    // The demo rule (max cpu_utilization > 45 over 10s, 1 of 1) fires for exactly the VMs with a
    // sample above 45, and every notification is in the alarms table.
    let breaching = sql(
        &lake,
        "SELECT DISTINCT vm FROM raw WHERE metric = 'cpu_utilization' AND value > 45 ORDER BY vm",
    );
    let alarmed = sql(
        &lake,
        "SELECT DISTINCT vm FROM alarms WHERE rule_id = 'cpu-busy' AND to_state <> 'OK' ORDER BY vm",
    );
    assert_eq!(alarmed, breaching);

    let raw = sql(
        &lake,
        "SELECT count(*) AS n, count(DISTINCT vm) AS vms, count(DISTINCT metric) AS metrics FROM raw",
    );
    assert_eq!(
        raw,
        serde_json::json!([{"n": samples, "vms": vms, "metrics": SAMPLES_PER_MESSAGE}])
    );
    let distinct = sql(
        &lake,
        "SELECT count(*) AS n FROM (SELECT DISTINCT vm, metric, device, ts FROM raw)",
    );
    assert_eq!(distinct[0]["n"], samples, "no sample is stored twice");
    let rollup = sql(
        &lake,
        "SELECT sum(\"count\") AS n FROM rollup_1m WHERE NOT ends_with(metric, '_rate')",
    );
    assert_eq!(
        rollup[0]["n"], samples,
        "rollup counts add up to the raw samples"
    );
    let hive = sql(
        &lake,
        "SELECT count(*) AS n FROM raw WHERE dt IS NOT NULL AND hour IS NOT NULL",
    );
    assert_eq!(
        hive[0]["n"], samples,
        "every file sits in a dt=/hour= partition"
    );
}

#[test]
fn demo_refuses_a_directory_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_damselfly"))
        .args(["demo", "--lake", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not empty and was not made by `damselfly demo`"),
        "{err}"
    );
    assert!(dir.path().join("precious.txt").exists());
}
