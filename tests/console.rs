//! The web console (issue 27) in a real browser: headless Chromium, driven by Playwright
//! (`tests/console/browser.py`), over `damselfly serve` on a lake written by the real pipeline. Every
//! page shows what DuckDB finds in the lake's Parquet (the fleet's VMs, groups, busiest VMs, heat
//! map, silent VMs; a VM's tags, charts and alarms; alarm states, history and rules; dead letters
//! and one rejected record, raw), the VM charts equal the metric API's windows, no page logs a
//! console error or warning or has a failed request, and the fleet -> VM -> back navigation works.
//!
//! The lake: `damselfly simulate` (12 VMs in 2 VM groups, every 30 s for 3 h) and two hand-made VMs
//! in a second namespace (one busy, one silent for its last 40 minutes) to librdkafka's mock
//! cluster in this process, with malformed records among them; `damselfly run aggregate` and
//! `damselfly run alarm` (two rules, notifications to an outbox file), both `--until-caught-up`.
//! Every page is asked with a fixed `end` (the lake's newest minute + 1 min) and `range=6h`.
//!
//! Needs `DAMSELFLY_PYTHON` (a Python with `duckdb` and `playwright`, tests/requirements.txt) and
//! Debian's `/usr/bin/chromium`: tests/run installs both. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/console/`; with `DAMSELFLY_SCREENSHOTS=docs/console` they are also copied
//! there (relative to the repository), which is how the README's screenshots are regenerated.

mod common;
use common::lambda::LambdaEmulator;
use common::serve::{Server, get, get_with_head};
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use damselfly_agent::{Publisher, PublisherConfig};
use damselfly_schemas::{Kind, catalog};
use rdkafka::mocking::MockCluster;
use serde_json::{Value, json};

const TOPIC: &str = "metrics";
const RANGE: &str = "6h";
const RANGE_MS: i64 = 6 * 3_600_000;
const MINUTE: i64 = 60_000;
const CHROMIUM: &str = "/usr/bin/chromium";
/// The console's Content-Security-Policy header, as the contract has it.
const CSP: &str = "content-security-policy: default-src 'none'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
const BROWSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/console/browser.py");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The rules in force: one most of the busy simulated VMs cross now and then, one only the busy
/// hand-made VM crosses.
const RULES: &str = r#"{"v": 1, "rules": [
  {"id": "cpu-high", "name": "CPU usage high", "metric": "cpu_utilization", "statistic": "avg",
   "period": "5m", "comparator": ">", "warning": 45, "critical": 80, "fire": {"m": 2, "n": 3},
   "missing_data": "missing"},
  {"id": "mem-high", "name": "Memory usage high", "metric": "mem_utilization", "statistic": "avg",
   "period": "1m", "comparator": ">", "warning": 90, "critical": 95, "missing_data": "missing"}
]}"#;

struct Lake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// The `end` of every page: the newest minute of the lake + 1 min, ms.
    end_ms: i64,
    /// The malformed records published: (key, bytes).
    bad: Vec<(&'static str, Vec<u8>)>,
}

/// The records the aggregate function must reject, each for its own reason.
fn malformed(now: i64) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("bad-truncated", br#"{"v": 1, "ts": 17"#.to_vec()),
        ("bad-truncated", br#"{"v": 1, "tags": {"ns": "#.to_vec()),
        (
            "bad-version",
            json!({"v": 9, "ts": now, "tags": {"ns": "ns02", "mcis": "edge", "vm": "vm-edge-hot"},
                   "metrics": {"cpu_utilization": 1.0}})
            .to_string()
            .into_bytes(),
        ),
        (
            "bad-bytes",
            b"\xff\xfe not \xc3( utf-8 <b>&amp;</b>".to_vec(),
        ),
    ]
}

/// One message of a hand-made VM of namespace `ns02`; `t` is its sample number (counters grow).
fn edge_message(vm: &str, csp: &str, ts: i64, cpu: f64, mem: f64, t: i64) -> Vec<u8> {
    json!({"v": 1, "ts": ts,
        "tags": {"ns": "ns02", "mcis": "edge", "vm": vm, "csp": csp, "region": "kr-central-1",
                 "os": "linux", "host": vm},
        "metrics": {"cpu_utilization": cpu, "mem_utilization": mem},
        "devices": {"/": {"disk_utilization": 40.0 + t as f64 / 100.0},
                    "eth0": {"bytes_in": (t * 3_000_000) as f64, "bytes_out": (t * 1_000_000) as f64}}})
    .to_string()
    .into_bytes()
}

/// The lake, written once for every test of this file.
fn lake() -> &'static Lake {
    static LAKE: OnceLock<Lake> = OnceLock::new();
    LAKE.get_or_init(|| {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC, 3, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lake");
        let lake = path.to_str().unwrap();
        let simulated = damselfly(&[
            "simulate", "--brokers", &brokers, "--topic", TOPIC, "--vms", "12", "--interval",
            "30s", "--duration", "3h", "--no-pace", "--seed", "27", "--json",
        ])["published"]
            .as_u64()
            .unwrap();
        assert_eq!(simulated, 12 * 360);

        // ns02/edge: vm-edge-hot busy for the last 90 minutes, vm-edge-quiet silent for the last
        // 40; then the malformed records.
        let now = now_ms();
        let publisher = Publisher::new(&PublisherConfig::new(&brokers, TOPIC)).unwrap();
        let mut published = simulated;
        for t in 0..360 {
            let ts = now - 3 * 3_600_000 + t * 30_000;
            if ts >= now - 90 * MINUTE {
                let cpu = 93.0 + (t % 5) as f64;
                publisher.send("vm-edge-hot", &edge_message("vm-edge-hot", "gcp", ts, cpu, 93.5, t)).unwrap();
                published += 1;
            }
            if ts < now - 40 * MINUTE {
                let cpu = 3.0 + (t % 3) as f64 * 0.25;
                publisher.send("vm-edge-quiet", &edge_message("vm-edge-quiet", "openstack", ts, cpu, 20.0, t)).unwrap();
                published += 1;
            }
        }
        let bad = malformed(now);
        for (key, bytes) in &bad {
            publisher.send(key, bytes).unwrap();
        }
        publisher.flush(Duration::from_secs(30)).unwrap();
        published += bad.len() as u64;

        let run = aggregate_caught_up(&brokers, TOPIC, "console-test", lake, &["--batch-size", "2000"]);
        assert_eq!(run["records"], published, "{run}");
        assert_eq!(run["rejected"], bad.len() as u64, "{run}");

        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, RULES).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_damselfly"))
            .args(["alarm", "rules", "put", rules.to_str().unwrap(), "--lake", lake])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // No SNS topic (the local stack's is unset): notifications go to the outbox file.
        let outbox = dir.path().join("outbox.jsonl");
        let run = damselfly_without(
            &["SNS_TOPIC_ARN", "ALARM_RULES"],
            &[
                "run", "alarm", "--brokers", &brokers, "--topic", TOPIC, "--lake", lake,
                "--outbox", outbox.to_str().unwrap(), "--batch-size", "2000",
                "--until-caught-up", "--json",
            ],
        );
        assert_eq!(run["records"], published, "{run}");

        let newest = duckdb(
            &path,
            "SELECT greatest((SELECT max(epoch_ms(window_start)) FROM rollup_1m), \
             (SELECT max(epoch_ms(received_at)) FROM dlq), (SELECT max(epoch_ms(ts)) FROM alarms)) AS t",
        )[0]["t"]
            .as_i64()
            .unwrap();
        let end_ms = newest.div_euclid(MINUTE) * MINUTE + MINUTE;
        Lake { _dir: dir, path, end_ms, bad }
    })
}

/// Runs `browser.py visit` over `steps` (paths, `click:SELECTOR`, `back`) on the server at `base`
/// (`http://host:port`) and returns one JSON object per step; screenshots go to
/// `$CARGO_TARGET_TMPDIR/console/{run}`.
fn visit(base: &str, run: &str, steps: &[String]) -> (Vec<Value>, PathBuf) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run tests/run, which installs Debian's chromium package"
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("console")
        .join(run);
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env("DAMSELFLY_PYTHON"))
        .args([
            BROWSER,
            "visit",
            "--base",
            base,
            "--out",
            out.to_str().unwrap(),
        ])
        .args(steps)
        .output()
        .expect("run browser.py");
    assert!(
        output.status.success(),
        "browser.py failed (is playwright in DAMSELFLY_PYTHON's venv? run tests/run): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_slice(&output.stdout).expect("browser.py prints JSON");
    // What the browser saw, for a failure's reader.
    std::fs::write(
        out.join("pages.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    let pages = doc["pages"].as_array().unwrap().clone();
    assert_eq!(pages.len(), steps.len());
    for (step, page) in steps.iter().zip(&pages) {
        assert!(page.get("error").is_none(), "{step}: {}", page["error"]);
        for what in ["console", "page_errors", "failed_requests"] {
            assert_eq!(page[what], json!([]), "{step}: {what}");
        }
        assert_eq!(page["scripts"], 0, "{step}: the console has no JavaScript");
        if page["status"].is_number() {
            assert_eq!(page["status"], 200, "{step}");
        }
        assert!(Path::new(page["screenshot"].as_str().unwrap()).exists());
    }
    (pages, out)
}

/// A cell's exact value as a number.
fn num(v: &Value) -> f64 {
    let s = v.as_str().unwrap_or_else(|| panic!("no cell value: {v}"));
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

fn int(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("no cell value: {v}"));
    s.parse()
        .unwrap_or_else(|_| panic!("not an integer: {s:?}"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("no cell value: {v}"))
}

/// Relative tolerance 1e-9.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!(close(a, b), "{what}: console {a} vs expected {b}");
}

/// The rows of table `name` on a page, asserting it is there.
fn table<'a>(page: &'a Value, name: &str) -> &'a Vec<Value> {
    page["tables"][name]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no table[data-table={name}]", page["url"]))
}

fn stat(page: &Value, name: &str) -> i64 {
    int(&page["stats"][name])
}

/// A VM: (ns, mcis, vm).
type VmKey = (String, String, String);

fn vm_key(r: &Value) -> VmKey {
    let s = |k: &str| r[k].as_str().unwrap().to_owned();
    (s("ns"), s("mcis"), s("vm"))
}

/// An alarm transition of the lake.
#[derive(Debug, Clone)]
struct Transition {
    ts: i64,
    rule_id: String,
    rule_name: String,
    vm: VmKey,
    from: String,
    to: String,
    value: Option<f64>,
    since: i64,
}

/// What DuckDB finds in the lake over `[end - 6h, end)`.
struct Expected {
    end: i64,
    /// Every VM with a sample in the window: its row (csp, region, os, last_seen).
    vms: BTreeMap<VmKey, Value>,
    /// (VM, metric, device) -> (sum of sum, sum of count) in the window.
    sums: BTreeMap<(VmKey, String, String), (f64, f64)>,
    /// (minute, VM) -> (sum of sum, sum of count) of cpu_utilization.
    cpu_minutes: BTreeMap<(i64, VmKey), (f64, f64)>,
    /// Every transition, oldest first.
    alarms: Vec<Transition>,
    /// Every dead letter, as rows.
    dlq: Vec<Value>,
}

fn expected(lake: &Lake) -> Expected {
    let (end, start) = (lake.end_ms, lake.end_ms - RANGE_MS);
    let window = format!("epoch_ms(window_start) >= {start} AND epoch_ms(window_start) < {end}");
    let answers = duckdb_all(
        &lake.path,
        &[
            format!(
                "SELECT ns, mcis, vm, any_value(csp) AS csp, any_value(region) AS region, \
                 any_value(os) AS os, max(epoch_ms(last_ts)) AS last_seen FROM rollup_1m \
                 WHERE {window} GROUP BY ALL ORDER BY ALL"
            ),
            format!(
                "SELECT ns, mcis, vm, metric, device, sum(\"sum\") AS s, sum(\"count\") AS c \
                 FROM rollup_1m WHERE {window} GROUP BY ALL ORDER BY ALL"
            ),
            format!(
                "SELECT epoch_ms(window_start) AS t, ns, mcis, vm, sum(\"sum\") AS s, \
                 sum(\"count\") AS c FROM rollup_1m \
                 WHERE {window} AND metric = 'cpu_utilization' GROUP BY ALL ORDER BY ALL"
            ),
            "SELECT epoch_ms(ts) AS ts, rule_id, rule_name, ns, mcis, vm, from_state, to_state, \
             value, epoch_ms(since) AS since, kind FROM alarms ORDER BY ALL"
                .to_owned(),
            "SELECT epoch_ms(received_at) AS received_at, topic, \"partition\", \"offset\", \
             reason, raw_base64 FROM dlq ORDER BY ALL"
                .to_owned(),
        ],
    );
    let vms = answers[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (vm_key(r), r.clone()))
        .collect();
    let sums = answers[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (
                vm_key(r),
                r["metric"].as_str().unwrap().to_owned(),
                r["device"].as_str().unwrap().to_owned(),
            );
            (key, (r["s"].as_f64().unwrap(), r["c"].as_f64().unwrap()))
        })
        .collect();
    let cpu_minutes = answers[2]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let sc = (r["s"].as_f64().unwrap(), r["c"].as_f64().unwrap());
            ((r["t"].as_i64().unwrap(), vm_key(r)), sc)
        })
        .collect();
    let alarms = answers[3]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["kind"], "transition", "the rules have no repeat: {r}");
            Transition {
                ts: r["ts"].as_i64().unwrap(),
                rule_id: r["rule_id"].as_str().unwrap().to_owned(),
                rule_name: r["rule_name"].as_str().unwrap().to_owned(),
                vm: vm_key(r),
                from: r["from_state"].as_str().unwrap().to_owned(),
                to: r["to_state"].as_str().unwrap().to_owned(),
                value: r["value"].as_f64(),
                since: r["since"].as_i64().unwrap(),
            }
        })
        .collect();
    Expected {
        end,
        vms,
        sums,
        cpu_minutes,
        alarms,
        dlq: answers[4].as_array().unwrap().clone(),
    }
}

impl Expected {
    fn start(&self) -> i64 {
        self.end - RANGE_MS
    }

    /// The query string every page is asked with.
    fn query(&self) -> String {
        let end = chrono::DateTime::from_timestamp_millis(self.end).unwrap();
        format!("range={RANGE}&end={}", end.format("%Y-%m-%dT%H:%M:%SZ"))
    }

    /// Averages of `metric` over the window per (VM, device).
    fn avgs<'a>(&'a self, metric: &'a str) -> impl Iterator<Item = (&'a VmKey, f64)> + 'a {
        self.sums
            .iter()
            .filter(move |((_, m, _), _)| m == metric)
            .map(|((vm, _, _), (s, c))| (vm, s / c))
    }

    /// The busiest-`what` table: (VM, value), by value descending then vm, top 10.
    fn busiest(&self, what: &str) -> Vec<(VmKey, f64)> {
        let mut by_vm: BTreeMap<VmKey, f64> = BTreeMap::new();
        match what {
            "cpu" | "memory" => {
                let metric = if what == "cpu" {
                    "cpu_utilization"
                } else {
                    "mem_utilization"
                };
                for (vm, avg) in self.avgs(metric) {
                    by_vm.insert(vm.clone(), avg);
                }
            }
            "disk" => {
                for (vm, avg) in self.avgs("disk_utilization") {
                    let v = by_vm.entry(vm.clone()).or_insert(f64::NEG_INFINITY);
                    *v = v.max(avg);
                }
            }
            _ => {
                for metric in ["bytes_in_rate", "bytes_out_rate"] {
                    for (vm, avg) in self.avgs(metric) {
                        *by_vm.entry(vm.clone()).or_default() += avg;
                    }
                }
            }
        }
        let mut rows: Vec<(VmKey, f64)> = by_vm.into_iter().collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.2.cmp(&b.0.2)));
        rows.truncate(10);
        rows
    }

    /// The latest transition of every (rule, vm) up to `end`.
    fn states(&self) -> BTreeMap<(String, String), &Transition> {
        let mut latest: BTreeMap<(String, String), &Transition> = BTreeMap::new();
        for t in self.alarms.iter().filter(|t| t.ts <= self.end) {
            let key = (t.rule_id.clone(), t.vm.2.clone());
            if let Some(prev) = latest.get(&key) {
                assert!(
                    prev.ts < t.ts,
                    "two transitions of {key:?} at {}: ambiguous",
                    t.ts
                );
            }
            latest.insert(key, t);
        }
        latest
    }

    fn history(&self) -> impl Iterator<Item = &Transition> {
        self.alarms
            .iter()
            .filter(|t| t.ts >= self.start() && t.ts < self.end)
    }

    fn dlq_in_window(&self) -> impl Iterator<Item = &Value> {
        self.dlq.iter().filter(|r| {
            let t = r["received_at"].as_i64().unwrap();
            t >= self.start() && t < self.end
        })
    }
}

fn vm_href(vm: &VmKey) -> String {
    format!("/vm/{}/{}/{}", vm.0, vm.1, vm.2)
}

/// The path of a link, without its query string.
fn path_of(href: &str) -> &str {
    href.split('?').next().unwrap()
}

/// Asserts a busiest table equals the expected top 10, in order.
fn assert_busiest(page: &Value, what: &str, expect: &[(VmKey, f64)]) {
    let rows = table(page, &format!("busiest-{what}"));
    assert!(!expect.is_empty());
    assert_eq!(rows.len(), expect.len(), "busiest-{what}: {rows:?}");
    for (row, (vm, value)) in rows.iter().zip(expect) {
        assert_eq!(
            (text(&row["vm"]), text(&row["ns"]), text(&row["mcis"])),
            (vm.2.as_str(), vm.0.as_str(), vm.1.as_str()),
            "busiest-{what}: {rows:?}"
        );
        assert_close(
            num(&row["value"]),
            *value,
            &format!("busiest-{what} {}", vm.2),
        );
        assert_eq!(path_of(row["_href"].as_str().unwrap()), vm_href(vm));
    }
}

fn check_fleet(page: &Value, x: &Expected) {
    assert_eq!(page["page"], "fleet");
    let silent: Vec<(&VmKey, i64)> = x
        .vms
        .iter()
        .map(|(k, r)| (k, r["last_seen"].as_i64().unwrap()))
        .filter(|(_, last)| *last < x.end - 5 * MINUTE)
        .collect();
    let states = x.states();
    let firing: Vec<&&Transition> = states.values().filter(|t| t.to != "OK").collect();
    assert_eq!(stat(page, "vms"), x.vms.len() as i64);
    assert_eq!(stat(page, "silent"), silent.len() as i64);
    assert_eq!(stat(page, "firing"), firing.len() as i64);
    assert!(
        !silent.is_empty() && !firing.is_empty(),
        "the lake has both"
    );

    for (group, col) in [
        ("csp", "csp"),
        ("region", "region"),
        ("ns", "ns"),
        ("mcis", "mcis"),
    ] {
        let mut want: BTreeMap<String, i64> = BTreeMap::new();
        for (k, r) in &x.vms {
            let key = match col {
                "ns" => k.0.clone(),
                "mcis" => k.1.clone(),
                _ => r[col].as_str().unwrap().to_owned(),
            };
            *want.entry(key).or_default() += 1;
        }
        let rows = table(page, &format!("groups-{group}"));
        let got: BTreeMap<String, i64> = rows
            .iter()
            .map(|r| (text(&r["key"]).to_owned(), int(&r["vms"])))
            .collect();
        assert_eq!(got, want, "groups-{group}");
        for r in rows {
            let href = r["_href"]
                .as_str()
                .unwrap_or_else(|| panic!("groups-{group}: no link"));
            assert!(
                href.starts_with("/vms?") && href.contains(&format!("{col}=")),
                "{href}"
            );
        }
    }

    for what in ["cpu", "memory", "disk", "network"] {
        assert_busiest(page, what, &x.busiest(what));
    }

    let got: BTreeSet<(String, i64)> = table(page, "silent")
        .iter()
        .map(|r| (text(&r["vm"]).to_owned(), int(&r["last_seen"])))
        .collect();
    let want: BTreeSet<(String, i64)> = silent.iter().map(|(k, t)| (k.2.clone(), *t)).collect();
    assert_eq!(got, want, "silent");

    let got: BTreeSet<(String, String, String, i64)> = table(page, "alarm-states")
        .iter()
        .map(|r| {
            let s = |c: &str| text(&r[c]).to_owned();
            (s("rule_id"), s("vm"), s("state"), int(&r["since"]))
        })
        .collect();
    let want: BTreeSet<(String, String, String, i64)> = firing
        .iter()
        .map(|t| (t.rule_id.clone(), t.vm.2.clone(), t.to.clone(), t.since))
        .collect();
    assert_eq!(got, want, "fleet alarm-states");

    // The heat map: VMs per (bucket, band); empty cells may be rows with 0 or no rows. The
    // contract fixes the buckets' width (range / 60), not their origin: the window's start or
    // the epoch (then the window's first and last buckets are partial, 61 in all).
    let width = RANGE_MS / 60;
    let rows = table(page, "heatmap");
    let buckets: BTreeSet<i64> = rows.iter().map(|r| int(&r["time"])).collect();
    let origin = buckets.first().expect("heat map cells").rem_euclid(width);
    let (aligned, most) = if origin == x.start().rem_euclid(width) {
        ("window", 60)
    } else {
        ("epoch", 61)
    };
    assert!(
        aligned == "window" || origin == 0,
        "heat map buckets start at {origin} mod {width}"
    );
    assert!(
        buckets.len() <= most,
        "{} buckets ({aligned}-aligned)",
        buckets.len()
    );
    assert!(
        buckets
            .iter()
            .all(|t| t.rem_euclid(width) == origin && *t > x.start() - width && *t < x.end)
    );
    let mut per_vm: BTreeMap<(i64, &VmKey), (f64, f64)> = BTreeMap::new();
    for ((t, vm), (s, c)) in &x.cpu_minutes {
        let b = origin + (t - origin).div_euclid(width) * width;
        let e = per_vm.entry((b, vm)).or_default();
        (e.0, e.1) = (e.0 + s, e.1 + c);
    }
    let mut want: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for ((b, _), (s, c)) in per_vm {
        let band = ((s / c / 10.0).floor() as i64 * 10).clamp(0, 90);
        *want.entry((b, band)).or_default() += 1;
    }
    let mut got: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for r in rows {
        let n = int(&r["vms"]);
        if n != 0 {
            *got.entry((int(&r["time"]), int(&r["band"]))).or_default() += n;
        }
    }
    assert_eq!(got, want, "heatmap ({aligned}-aligned buckets)");

    // The view's state is in its links: the range picker keeps `end`.
    for r in ["1h", "6h", "24h", "7d"] {
        let href = page["range"][r]
            .as_str()
            .unwrap_or_else(|| panic!("no a[data-range={r}]"));
        assert!(
            href.contains(&format!("range={r}")) && href.contains("end="),
            "{href}"
        );
    }
    for r in ["0", "30", "60", "300"] {
        assert!(page["refresh"][r].is_string(), "no a[data-refresh={r}]");
    }
    for n in ["fleet", "alarms", "dlq"] {
        assert!(page["nav"][n].is_string(), "no a[data-nav={n}]");
    }
}

fn check_vms(page: &Value, x: &Expected, filter: Option<(&str, &str)>) {
    assert_eq!(page["page"], "vms");
    let want: BTreeSet<String> = x
        .vms
        .iter()
        .filter(|(_, r)| filter.is_none_or(|(k, v)| r[k] == v))
        .map(|(k, _)| vm_href(k))
        .collect();
    assert!(!want.is_empty());
    let hrefs: Vec<&str> = page["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let got: BTreeSet<String> = hrefs.iter().map(|h| path_of(h).to_owned()).collect();
    assert_eq!(got, want, "VM list {filter:?}");
    for h in hrefs {
        assert!(
            h.contains(&format!("range={RANGE}")) && h.contains("end="),
            "{h}"
        );
    }
}

/// The metric API's label of a lake series (counters as their rates), and its family.
fn api_label(series: &str) -> (&'static str, &'static str) {
    let counter = series
        .strip_suffix("_rate")
        .and_then(catalog::lookup)
        .filter(|m| m.kind == Kind::Counter);
    let m = counter
        .or_else(|| catalog::lookup(series).filter(|m| m.kind == Kind::Gauge))
        .unwrap_or_else(|| panic!("{series} is not in the catalog"));
    (m.name, m.family.name())
}

fn check_vm(
    page: &Value,
    x: &Expected,
    vm: &VmKey,
    charts: &BTreeMap<(String, String), Value>,
    api: &Server,
) {
    assert_eq!(page["page"], "vm");
    let row = &x.vms[vm];
    let tags: BTreeMap<&str, &str> = table(page, "tags")
        .iter()
        .map(|r| (text(&r["key"]), text(&r["value"])))
        .collect();
    for (k, v) in [("ns", &vm.0), ("mcis", &vm.1), ("vm", &vm.2)] {
        assert_eq!(tags.get(k), Some(&v.as_str()), "tags {k}: {tags:?}");
    }
    for k in ["csp", "region", "os"] {
        assert_eq!(tags.get(k).copied(), row[k].as_str(), "tags {k}: {tags:?}");
    }
    let last_seen = tags.get("last_seen").copied().unwrap_or_default();
    assert_eq!(
        last_seen.parse::<i64>().ok(),
        row["last_seen"].as_i64(),
        "tags last_seen: the contract's data-value is epoch ms, the page has {last_seen:?}"
    );

    // One chart per series and device: every gauge and counter rate the VM has in the window.
    let shown: BTreeMap<(String, String), &Value> = page["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["series"].as_str().unwrap().to_owned(),
                    c["device"].as_str().unwrap().to_owned(),
                ),
                c,
            )
        })
        .collect();
    assert_eq!(
        shown.len(),
        page["charts"].as_array().unwrap().len(),
        "a chart shown twice"
    );
    let want: BTreeSet<(String, String)> = charts.keys().cloned().collect();
    assert_eq!(
        shown.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "charts"
    );
    for ((series, device), chart) in &shown {
        let what = format!("chart {series} {device:?}");
        assert_eq!(chart["family"], api_label(series).1, "{what}");
        let rows = chart["rows"].as_array().unwrap();
        let duck = charts[&(series.clone(), device.clone())]
            .as_array()
            .unwrap();
        assert_eq!(rows.len(), duck.len(), "{what}: windows");
        for (r, d) in rows.iter().zip(duck) {
            assert_eq!(
                int(&r["time"]),
                d["t"].as_i64().unwrap(),
                "{what}: windows in order"
            );
            for (col, dcol) in [("min", "mn"), ("avg", "avg"), ("max", "mx")] {
                assert_close(
                    num(&r[col]),
                    d[dcol].as_f64().unwrap(),
                    &format!("{what} {col}"),
                );
            }
        }
    }

    // A few series against the metric API's 1-minute windows (those present in both).
    for series in [
        "cpu_utilization",
        "mem_utilization",
        "disk_utilization",
        "bytes_in_rate",
        "kb_written_rate",
    ] {
        let Some(((_, device), chart)) = shown.iter().find(|((s, _), _)| s == series) else {
            panic!("no chart of {series} on {}", page["url"]);
        };
        let (label, family) = api_label(series);
        for stat in ["min", "avg", "max"] {
            let info = api.api(&format!(
                "/dragonfly/ns/{}/mcis/{}/vm/{}/metric/{family}/info?periodType=m&statisticsCriteria={stat}&duration=12h",
                vm.0, vm.1, vm.2
            ));
            let from_api: BTreeMap<i64, f64> = info["values"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["device"].as_str().unwrap_or("") == device)
                .filter_map(|v| {
                    let t =
                        chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
                    Some((t.timestamp_millis(), v[label].as_f64()?))
                })
                .collect();
            let mut common = 0;
            for r in chart["rows"].as_array().unwrap() {
                if let Some(a) = from_api.get(&int(&r["time"])) {
                    assert_close(
                        num(&r[stat]),
                        *a,
                        &format!("{series} {device:?} {stat} vs the API"),
                    );
                    common += 1;
                }
            }
            assert!(
                common > 60,
                "{series} {stat}: {common} windows in common with the API"
            );
        }
    }

    let mut got: Vec<(i64, String, String, String)> = table(page, "alarm-history")
        .iter()
        .map(|r| {
            let s = |c: &str| text(&r[c]).to_owned();
            (int(&r["ts"]), s("rule_id"), s("from_state"), s("to_state"))
        })
        .collect();
    assert!(
        got.windows(2).all(|w| w[0].0 >= w[1].0),
        "newest first: {got:?}"
    );
    let mut want: Vec<(i64, String, String, String)> = x
        .history()
        .filter(|t| &t.vm == vm)
        .map(|t| (t.ts, t.rule_id.clone(), t.from.clone(), t.to.clone()))
        .collect();
    assert!(!want.is_empty(), "the VM shown has alarm transitions");
    got.sort();
    want.sort();
    assert_eq!(got, want, "VM alarm-history");
}

fn check_alarms(page: &Value, x: &Expected) {
    assert_eq!(page["page"], "alarms");
    let got: BTreeSet<(String, String, String, String, i64)> = table(page, "alarm-states")
        .iter()
        .map(|r| {
            let s = |c: &str| text(&r[c]).to_owned();
            (
                s("rule_id"),
                s("rule_name"),
                s("vm"),
                s("state"),
                int(&r["since"]),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String, String, i64)> = x
        .states()
        .values()
        .map(|t| {
            (
                t.rule_id.clone(),
                t.rule_name.clone(),
                t.vm.2.clone(),
                t.to.clone(),
                t.since,
            )
        })
        .collect();
    assert_eq!(got, want, "alarm-states");

    let rows = table(page, "alarm-history");
    let history: Vec<&Transition> = x.history().collect();
    assert!(
        history.len() <= 500,
        "the test's lake fits on the page: {}",
        history.len()
    );
    assert_eq!(rows.len(), history.len(), "alarm-history");
    let ts: Vec<i64> = rows.iter().map(|r| int(&r["ts"])).collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first: {ts:?}");
    let key = |ts: i64, rule: &str, vm: &str, from: &str, to: &str| {
        (
            ts,
            rule.to_owned(),
            vm.to_owned(),
            from.to_owned(),
            to.to_owned(),
        )
    };
    let mut got: Vec<_> = rows
        .iter()
        .map(|r| {
            let k = key(
                int(&r["ts"]),
                text(&r["rule_id"]),
                text(&r["vm"]),
                text(&r["from_state"]),
                text(&r["to_state"]),
            );
            (
                k,
                r["value"]
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .map(|v| v.parse::<f64>().unwrap()),
            )
        })
        .collect();
    let mut want: Vec<_> = history
        .iter()
        .map(|t| (key(t.ts, &t.rule_id, &t.vm.2, &t.from, &t.to), t.value))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0, "alarm-history");
        match (g.1, w.1) {
            (Some(a), Some(b)) => assert_close(a, b, &format!("alarm value {:?}", g.0)),
            (a, b) => assert_eq!(a, b, "alarm value {:?}", g.0),
        }
    }

    let rules: Value = serde_json::from_str(RULES).unwrap();
    let got: Vec<Vec<String>> = table(page, "rules")
        .iter()
        .map(|r| {
            ["id", "name", "metric", "statistic", "comparator"]
                .map(|c| text(&r[c]).to_owned())
                .to_vec()
        })
        .collect();
    let want: Vec<Vec<String>> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            ["id", "name", "metric", "statistic", "comparator"]
                .map(|c| r[c].as_str().unwrap().to_owned())
                .to_vec()
        })
        .collect();
    assert_eq!(
        got.iter().collect::<BTreeSet<_>>(),
        want.iter().collect::<BTreeSet<_>>(),
        "rules"
    );
    for r in table(page, "rules") {
        let rule = rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == r["id"])
            .unwrap();
        for c in ["warning", "critical"] {
            assert_close(num(&r[c]), rule[c].as_f64().unwrap(), &format!("rule {c}"));
        }
    }
}

fn check_dlq(page: &Value, x: &Expected) {
    assert_eq!(page["page"], "dlq");
    let in_window: Vec<&Value> = x.dlq_in_window().collect();
    assert_eq!(
        in_window.len(),
        x.dlq.len(),
        "every dead letter is in the window"
    );
    assert_eq!(stat(page, "rejected"), in_window.len() as i64);
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for r in &in_window {
        *want
            .entry(r["reason"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let got: BTreeMap<String, i64> = table(page, "dlq-reasons")
        .iter()
        .map(|r| (text(&r["reason"]).to_owned(), int(&r["records"])))
        .collect();
    assert_eq!(got, want, "dlq-reasons");

    let rows = table(page, "dlq-recent");
    let at: Vec<i64> = rows.iter().map(|r| int(&r["received_at"])).collect();
    assert!(at.windows(2).all(|w| w[0] >= w[1]), "newest first: {at:?}");
    let row_key = |at: i64, topic: &str, p: i64, o: i64, reason: &str| {
        (at, topic.to_owned(), p, o, reason.to_owned())
    };
    let got: BTreeSet<_> = rows
        .iter()
        .map(|r| {
            row_key(
                int(&r["received_at"]),
                text(&r["topic"]),
                int(&r["partition"]),
                int(&r["offset"]),
                text(&r["reason"]),
            )
        })
        .collect();
    let want: BTreeSet<_> = in_window
        .iter()
        .map(|r| {
            row_key(
                r["received_at"].as_i64().unwrap(),
                r["topic"].as_str().unwrap(),
                r["partition"].as_i64().unwrap(),
                r["offset"].as_i64().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!((rows.len(), got), (in_window.len(), want), "dlq-recent");
    for r in rows {
        let href = r["_href"].as_str().unwrap_or("");
        assert!(
            href.starts_with("/dlq/record?")
                && href.contains(&format!("partition={}", text(&r["partition"])))
                && href.contains(&format!("offset={}", text(&r["offset"]))),
            "dlq-recent link: {href:?}"
        );
    }
}

/// The dead letter holding `bytes`.
fn dlq_row<'a>(x: &'a Expected, bytes: &[u8]) -> &'a Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    x.dlq
        .iter()
        .find(|r| r["raw_base64"] == b64.as_str())
        .unwrap_or_else(|| panic!("no dead letter holds {:?}", String::from_utf8_lossy(bytes)))
}

fn record_path(row: &Value, q: &str) -> String {
    format!(
        "/dlq/record?topic={}&partition={}&offset={}&{q}",
        row["topic"].as_str().unwrap(),
        row["partition"],
        row["offset"]
    )
}

/// Charts the VM page must show: (series, device) -> its 1-minute windows in the range, oldest
/// first, as rows {t, mn, avg, mx} (DuckDB, partials merged).
fn vm_charts(lake: &Lake, x: &Expected, vm: &VmKey) -> BTreeMap<(String, String), Value> {
    let rows = duckdb_all(
        &lake.path,
        &[format!(
            "SELECT metric, device, epoch_ms(window_start) AS t, min(\"min\") AS mn, \
             sum(\"sum\") / sum(\"count\") AS avg, max(\"max\") AS mx FROM rollup_1m \
             WHERE ns = '{}' AND mcis = '{}' AND vm = '{}' AND epoch_ms(window_start) >= {} \
             AND epoch_ms(window_start) < {} GROUP BY ALL ORDER BY ALL",
            vm.0,
            vm.1,
            vm.2,
            x.start(),
            x.end
        )],
    );
    let mut charts: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for r in rows[0].as_array().unwrap() {
        let metric = r["metric"].as_str().unwrap();
        // Counters are charted as their rates, not as running totals.
        if catalog::lookup(metric).is_some_and(|m| m.kind == Kind::Counter) {
            continue;
        }
        charts
            .entry((metric.to_owned(), r["device"].as_str().unwrap().to_owned()))
            .or_default()
            .push(r.clone());
    }
    charts
        .into_iter()
        .map(|(k, v)| (k, Value::Array(v)))
        .collect()
}

/// Copies the screenshots `names` (.png) to `DAMSELFLY_SCREENSHOTS` (relative to the repository)
/// when it is set.
fn publish_screenshots(dir: &Path, names: &[&str]) {
    let Ok(to) = std::env::var("DAMSELFLY_SCREENSHOTS") else {
        return;
    };
    let to = Path::new(REPO).join(to);
    std::fs::create_dir_all(&to).unwrap();
    for name in names {
        let file = format!("{name}.png");
        std::fs::copy(dir.join(&file), to.join(&file)).unwrap();
    }
    eprintln!("screenshots copied to {}", to.display());
}

#[test]
#[ignore = "needs DAMSELFLY_PYTHON with duckdb and playwright, and chromium: run tests/run"]
fn every_page_shows_what_the_lake_holds() {
    let lake = lake();
    let x = expected(lake);
    let q = x.query();
    // The VM shown: the simulated one with the most alarm transitions in the window.
    let mut counts: BTreeMap<&VmKey, usize> = BTreeMap::new();
    for t in x.history().filter(|t| t.vm.0 == "ns01") {
        *counts.entry(&t.vm).or_default() += 1;
    }
    let vm = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
        .map(|(k, _)| (*k).clone());
    let vm = vm.expect("a simulated VM with alarm transitions");
    let truncated = dlq_row(&x, &lake.bad[0].1);
    let binary = dlq_row(&x, &lake.bad[3].1);

    let server = Server::start(&lake.path);
    let steps = [
        format!("/?{q}"),
        format!("/vms?{q}"),
        format!("/vms?csp=aws&{q}"),
        format!("{}?{q}", vm_href(&vm)),
        format!("/alarms?{q}"),
        format!("/dlq?{q}"),
        record_path(binary, &q),
        record_path(truncated, &q),
    ];
    let (pages, shots) = visit(&server.base(), "pages", &steps);
    // Every page loaded without an error: its picture is worth keeping, whatever follows.
    let names = ["fleet", "vms", "vm", "alarms", "dlq", "record"];
    publish_screenshots(&shots, &names);
    check_fleet(&pages[0], &x);
    check_vms(&pages[1], &x, None);
    check_vms(&pages[2], &x, Some(("csp", "aws")));
    let href = pages[2]["range"]["24h"].as_str().unwrap();
    assert!(
        href.contains("csp=aws"),
        "the range picker keeps the filter: {href}"
    );
    check_vm(&pages[3], &x, &vm, &vm_charts(lake, &x, &vm), &server);
    check_alarms(&pages[4], &x);
    check_dlq(&pages[5], &x);
    for (page, bytes, row) in [
        (&pages[6], &lake.bad[3].1, binary),
        (&pages[7], &lake.bad[0].1, truncated),
    ] {
        assert_eq!(page["page"], "record");
        assert_eq!(
            page["raw"].as_str(),
            Some(&*String::from_utf8_lossy(bytes)),
            "pre[data-raw]"
        );
        assert_eq!(
            page["stats"]["reason"], row["reason"],
            "dd[data-stat=reason]"
        );
    }
    // The headers: the contract's CSP (no script can run), and a refresh only when asked.
    let (status, head, html) = get_with_head(&server.addr, &format!("/?refresh=30&{q}")).unwrap();
    assert_eq!(status, 200);
    assert!(head.contains(CSP), "content-security-policy: {head}");
    assert!(
        html.contains(r#"http-equiv="refresh" content="30""#),
        "refresh=30 reloads"
    );
    assert!(
        !get(&server.addr, &format!("/?{q}"))
            .unwrap()
            .1
            .contains("http-equiv")
    );
}

#[test]
#[ignore = "needs DAMSELFLY_PYTHON with duckdb and playwright, and chromium: run tests/run"]
fn fleet_to_vm_and_back() {
    let lake = lake();
    let x = expected(lake);
    let server = Server::start(&lake.path);
    let fleet = format!("/?{}", x.query());
    let steps = [
        fleet.clone(),
        "click:a[data-vm]".to_owned(),
        "back".to_owned(),
    ];
    let (pages, _) = visit(&server.base(), "navigation", &steps);
    let base = format!("http://{}", server.addr);
    assert_eq!(pages[0]["page"], "fleet");
    let first = pages[0]["vms"][0].as_str().expect("the fleet links to VMs");
    assert_eq!(pages[1]["page"], "vm");
    assert_eq!(pages[1]["url"], format!("{base}{first}"));
    let vm = path_of(first).rsplit('/').next().unwrap();
    let tags = table(&pages[1], "tags");
    assert!(
        tags.iter().any(|r| r["key"] == "vm" && r["value"] == vm),
        "{tags:?}"
    );
    assert!(
        first.contains(&format!("range={RANGE}")),
        "the link keeps the range: {first}"
    );
    assert_eq!(pages[2]["page"], "fleet");
    assert_eq!(pages[2]["url"], format!("{base}{fleet}"));
    assert_eq!(
        pages[2]["stats"], pages[0]["stats"],
        "the same fleet after going back"
    );
}

/// Drops the `_href` of every row: the links of a page, which name the prefix it was served under.
fn without_links(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "_href")
                .map(|(k, v)| (k.clone(), without_links(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_links).collect()),
        v => v.clone(),
    }
}

/// Whether two page extracts are equal, numbers within `close` (float sums may add in another
/// order from one query to the next).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        (Value::String(x), Value::String(y)) => {
            x == y || matches!((x.parse::<f64>(), y.parse::<f64>()), (Ok(p), Ok(q)) if close(p, q))
        }
        (x, y) => x == y,
    }
}

/// The console served by the real `damselfly-query` Lambda binary under `cargo lambda watch`'s
/// function URL (`/lambda-url/damselfly-query/`): the same pages as `damselfly serve`'s, and its
/// relative links, stylesheet and icon resolve under that prefix (no failed request).
#[test]
#[ignore = "needs cargo-lambda, DAMSELFLY_PYTHON with playwright, and chromium: run tests/run"]
fn the_query_lambda_serves_the_same_console_under_its_function_url() {
    let lake = lake();
    let q = expected(lake).query();
    let server = Server::start(&lake.path);
    let mut lambda = LambdaEmulator::start();
    lambda.function(
        "damselfly-query",
        "damselfly-query",
        lake.path.to_str().unwrap(),
        &[],
        None,
    );
    let prefix = "/lambda-url/damselfly-query";
    let steps = |prefix: &str| {
        vec![
            format!("{prefix}/?{q}"),
            "click:a[data-vm]".to_owned(),
            format!("{prefix}/alarms?{q}"),
            format!("{prefix}/dlq?{q}"),
        ]
    };
    let (via_lambda, _) = visit(&lambda.url(), "lambda", &steps(prefix));
    let (direct, _) = visit(&server.base(), "lambda-direct", &steps(""));
    for (l, d) in via_lambda.iter().zip(&direct) {
        assert_eq!(l["page"], d["page"]);
        for what in ["tables", "charts", "stats"] {
            let (l, d) = (without_links(&l[what]), without_links(&d[what]));
            // Part by part, so that a failure names the table or chart that differs.
            let parts = |v: &Value| -> BTreeMap<String, Value> {
                match v {
                    Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    Value::Array(a) => a
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v.clone()))
                        .collect(),
                    v => BTreeMap::from([(String::new(), v.clone())]),
                }
            };
            let (lp, dp) = (parts(&l), parts(&d));
            assert_eq!(
                lp.keys().collect::<Vec<_>>(),
                dp.keys().collect::<Vec<_>>(),
                "{what}"
            );
            for (k, v) in &dp {
                assert!(
                    same(&lp[k], v),
                    "{what} {k} through the Lambda:\n{}\nvs serve's\n{v}",
                    lp[k]
                );
            }
        }
    }
    assert_eq!(
        via_lambda[1]["page"], "vm",
        "the VM link works under the prefix"
    );
    let vm_url = via_lambda[1]["url"].as_str().unwrap();
    assert!(
        vm_url.starts_with(&format!("{}{prefix}/vm/", lambda.url())),
        "{vm_url}"
    );
}
