//! Bad input never fails a batch: every good sample lands in `raw`, every bad record lands in `dlq`
//! with its reason and offset, and the consumer commits past all of them.
//!
//! Runs `damselfly run aggregate` against librdkafka's mock cluster started in this test process
//! (a real Kafka-protocol broker on 127.0.0.1), so it needs no services.

mod common;
use common::*;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use serde_json::{Value, json};

const TOPIC: &str = "mixed";

/// A record to produce: key, value, and what must become of it.
type Case = (Option<&'static str>, Option<Vec<u8>>, Expect);

enum Expect {
    /// A good message with this many samples.
    Good(u64),
    /// A rejected record whose reason contains this text.
    Bad(&'static str),
}

fn native(vm: &str, ts: i64, metrics: Value) -> Vec<u8> {
    json!({"v": 1, "ts": ts, "tags": {"ns": "ns1", "mcis": "m1", "vm": vm, "csp": "aws"}, "metrics": metrics})
        .to_string()
        .into_bytes()
}

#[test]
fn bad_records_go_to_dlq_with_reasons_and_good_ones_land() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let now = now_ms();
    let huge = native(
        "vm-big",
        now,
        json!({"cpu_utilization": 1.0, "padding_metric": 2.0}),
    )
    .into_iter()
    .chain(std::iter::repeat_n(b' ', 1_200_000))
    .collect::<Vec<u8>>();
    let records: Vec<Case> = vec![
        (
            Some("vm-1"),
            Some(native(
                "vm-1",
                now,
                json!({"cpu_utilization": 10.0, "mem_used": 5.0}),
            )),
            Expect::Good(2),
        ),
        (
            Some("vm-x"),
            Some(b"\x00\x9f\x92\x96 garbage".to_vec()),
            Expect::Bad("Influx line protocol: influx line 1"),
        ),
        (
            Some("vm-x"),
            Some(br#"{"v":1,"ts":17637372000"#.to_vec()),
            Expect::Bad("not a native v1 message, Telegraf JSON or Influx line protocol: invalid JSON"),
        ),
        (
            Some("vm-x"),
            Some(native("vm-x", now, json!({"cpu_utilization": "high"}))),
            Expect::Bad("not a v1 metric message: invalid type"),
        ),
        (
            Some("vm-x"),
            Some(
                br#"{"v":1,"ts":1,"tags":{"ns":"a","mcis":"b","vm":"vm-x"},"metrics":{"x":NaN}}"#
                    .to_vec(),
            ),
            Expect::Bad("invalid JSON"),
        ),
        (
            Some("vm-x"),
            Some(
                br#"{"v":1,"ts":1,"tags":{"ns":"a","mcis":"b","vm":"vm-x"},"metrics":{"x":1e999}}"#
                    .to_vec(),
            ),
            Expect::Bad("number out of range"),
        ),
        (
            Some("vm-2"),
            Some(native("vm-2", now, json!({"cpu_utilization": 20.0}))),
            Expect::Good(1),
        ),
        (
            Some("vm-big"),
            Some(huge),
            Expect::Bad("over the 1048576-byte limit"),
        ),
        (
            Some("vm-old"),
            Some(native(
                "vm-old",
                now - 30 * 86_400_000,
                json!({"cpu_utilization": 1.0}),
            )),
            Expect::Bad("too old"),
        ),
        (
            Some("vm-new"),
            Some(native(
                "vm-new",
                now + 86_400_000,
                json!({"cpu_utilization": 1.0}),
            )),
            Expect::Bad("in the future"),
        ),
        (
            Some("vm-x"),
            Some(b"<metric name=\"cpu\">12</metric>".to_vec()),
            Expect::Bad("not a native v1 message, Telegraf JSON or Influx line protocol"),
        ),
        (Some("vm-x"), None, Expect::Bad("record has no value")),
        (
            Some("vm-9"),
            Some(native("vm-3", now, json!({"cpu_utilization": 1.0}))),
            Expect::Bad("does not match tags.vm"),
        ),
        (
            Some("vm-3"),
            Some(native(
                "vm-3",
                now,
                json!({"cpu_utilization": 30.0, "load_avg_1": 0.5, "uptime": 9.0}),
            )),
            Expect::Good(3),
        ),
        // Telegraf's JSON serializer (cpu plugin, seconds), keyed at random: Telegraf keys are not checked.
        (
            Some("7f3c-random"),
            Some(
                json!({"fields": {"usage_idle": 90.0, "usage_user": 6.0}, "name": "cpu",
                       "tags": {"cpu": "cpu-total", "vmId": "vm-t", "nsId": "ns1", "mcisId": "m1", "host": "h"},
                       "timestamp": now / 1000})
                .to_string()
                .into_bytes(),
            ),
            // cpu_idle, cpu_user and cpu_utilization = 100 - usage_idle
            Expect::Good(3),
        ),
        // Influx line protocol (mem plugin, nanoseconds).
        (
            Some("vm-i"),
            Some(format!("mem,vm=vm-i,ns=ns1,mcis=m1 used_percent=41.5,total=8000i {}", now * 1_000_000).into_bytes()),
            // mem_utilization and mem_total
            Expect::Good(2),
        ),
    ];

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    for (key, value, _) in &records {
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to(TOPIC);
        if let Some(k) = key {
            r = r.key(*k);
        }
        if let Some(v) = value {
            r = r.payload(v.as_slice());
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    let summary = damselfly(&[
        "run",
        "aggregate",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--group",
        "bad-input",
        "--lake",
        lake,
        "--batch-size",
        "5",
        "--until-caught-up",
        "--json",
    ]);
    let good: u64 = records
        .iter()
        .map(|(_, _, e)| if let Expect::Good(n) = e { *n } else { 0 })
        .sum();
    let bad = records
        .iter()
        .filter(|(_, _, e)| matches!(e, Expect::Bad(_)))
        .count() as u64;
    assert_eq!(summary["records"], records.len() as u64, "{summary}");
    assert_eq!(summary["samples"], good, "{summary}");
    assert_eq!(summary["rejected"], bad, "{summary}");
    assert_eq!(
        summary["invocation_errors"], 0,
        "no batch failed because of bad records"
    );

    let sql = |q: &str| damselfly(&["sql", "--lake", lake, "--format", "json", q]);
    assert_eq!(sql("SELECT count(*) AS n FROM raw")[0]["n"], good);
    let dlq = sql("SELECT \"offset\", reason, raw_base64, key FROM dlq ORDER BY \"offset\"");
    let dlq = dlq.as_array().unwrap();
    let expected_bad: Vec<(usize, &str)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, e))| {
            if let Expect::Bad(why) = e {
                Some((i, *why))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(dlq.len(), expected_bad.len());
    for (row, (offset, why)) in dlq.iter().zip(expected_bad) {
        assert_eq!(row["offset"], offset as u64);
        let reason = row["reason"].as_str().unwrap();
        assert!(
            reason.contains(why),
            "offset {offset}: reason `{reason}` should say `{why}`"
        );
        assert_eq!(
            row["key"].as_str(),
            records[offset].0,
            "offset {offset}: key kept"
        );
        let raw = row["raw_base64"].as_str().unwrap();
        let original = records[offset].1.clone().unwrap_or_default();
        assert_eq!(
            raw.len(),
            original.len().div_ceil(3) * 4,
            "offset {offset}: raw bytes kept in full"
        );
    }
    // Everything was committed: the group has nothing left to read.
    let again = damselfly(&[
        "run",
        "aggregate",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--group",
        "bad-input",
        "--lake",
        lake,
        "--until-caught-up",
        "--json",
    ]);
    assert_eq!(again["records"], 0);
}
