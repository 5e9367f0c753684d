//! Differential test of `damselfly serve`'s Prometheus query API against a real Prometheus (Debian's
//! 2.42) holding the same samples: every query of `tests/promql/corpus.txt`, as an instant query at
//! three times and as a range query at four steps, gets the same answer from both (status, result
//! type, series as label sets, timestamps, values to 1e-9 relative); `/api/v1/series`, `/labels`
//! and `/label/<name>/values` agree; and promtool works as a client of `damselfly serve`.
//!
//! The lake: `damselfly simulate` to librdkafka's mock cluster in this process (namespace ns01: 7
//! VMs, one of them Windows; ns02: 2 VMs with the same VM names; every 15 s for 3 h; one mcis per
//! namespace, the simulator puts 10 VMs in each; 450 series, 324,000 samples), then `damselfly run
//! aggregate --until-caught-up` into `$CARGO_TARGET_TMPDIR/promql/lake` (replaced on every run, kept
//! for a look after a failure). Both namespaces' samples share timestamps unless the clock crossed
//! a 15 s boundary between their two simulate runs. Prometheus gets the lake's `raw` table exported
//! as OpenMetrics and turned into blocks by promtool. The data hold no counter reset (the simulator
//! has no agent restarts; its counters only grow), but rate, increase and resets over gauges, which
//! go down, exercise the reset handling.
//!
//! Needs `DAMSELFLY_PROMETHEUS` (the bin directory `tests/prometheus-install` prints) and
//! `DAMSELFLY_PYTHON` (a Python with duckdb); tests/run sets both. With
//! `DAMSELFLY_PROMQL_SELF_CHECK=1` the API under test is a second Prometheus over the same blocks
//! instead of `damselfly serve`: a check of the harness and the corpus themselves.

mod common;
use common::prometheus::{
    ExportStats, Prometheus, api_path, bin_dir, export_openmetrics, get_json, seconds,
};
use common::serve::Server;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde_json::Value;

/// The queries, one a line (`#` starts a comment line); `$T` stands for an absolute time inside
/// the data (an hour after the first sample, in seconds).
const CORPUS: &str = include_str!("promql/corpus.txt");

/// Sample interval and span of the simulated fleet.
const INTERVAL: &str = "15s";
const DURATION: &str = "3h";

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

/// Range query steps: Grafana's usual ones and one that divides neither the sample interval nor
/// the hour (evaluation times then fall between samples).
const STEPS_S: [i64; 4] = [15, 37, 60, 300];

struct Lake {
    path: PathBuf,
    openmetrics: PathBuf,
}

/// The lake and its OpenMetrics export, written once for every test of this file into
/// `$CARGO_TARGET_TMPDIR/promql/`.
fn lake() -> &'static Lake {
    static LAKE: OnceLock<Lake> = OnceLock::new();
    LAKE.get_or_init(|| {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("metrics", 6, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        // Replaced on every run and kept afterwards, to look into after a failure (the OpenMetrics
        // export lies next to it).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("promql");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lake");
        let mut messages = 0;
        for (ns, vms, seed) in [("ns01", "7", "21"), ("ns02", "2", "22")] {
            let published = damselfly(&[
                "simulate",
                "--brokers",
                &brokers,
                "--topic",
                "metrics",
                "--ns",
                ns,
                "--vms",
                vms,
                "--interval",
                INTERVAL,
                "--duration",
                DURATION,
                "--no-pace",
                "--seed",
                seed,
                "--json",
            ]);
            messages += published["published"].as_u64().unwrap();
        }
        assert_eq!(messages, 9 * 3 * 240);
        let run = aggregate_caught_up(
            &brokers,
            "metrics",
            "promql-test",
            path.to_str().unwrap(),
            &["--batch-size", "2000"],
        );
        assert_eq!(run["records"], messages, "{run}");
        assert_eq!(run["rejected"], 0, "{run}");
        let openmetrics = export_openmetrics(&path);
        Lake { path, openmetrics }
    })
}

/// The API under test: `damselfly serve` over the lake, or (self-check) a second Prometheus.
enum Candidate {
    Damselfly(Server),
    Prometheus(Prometheus),
}

impl Candidate {
    fn start(lake: &Lake) -> Self {
        if std::env::var("DAMSELFLY_PROMQL_SELF_CHECK").is_ok_and(|v| v == "1") {
            eprintln!(
                "DAMSELFLY_PROMQL_SELF_CHECK=1: comparing Prometheus with a second Prometheus"
            );
            Candidate::Prometheus(Prometheus::start(&lake.openmetrics))
        } else {
            Candidate::Damselfly(Server::start(&lake.path))
        }
    }

    fn addr(&self) -> &str {
        match self {
            Candidate::Damselfly(s) => &s.addr,
            Candidate::Prometheus(p) => &p.addr,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Candidate::Damselfly(_) => "damselfly",
            Candidate::Prometheus(_) => "prometheus#2",
        }
    }
}

/// One evaluation of a query: an instant query at a time, or a range query.
#[derive(Clone, Copy, Debug)]
enum Eval {
    Instant {
        at_ms: i64,
    },
    Range {
        start_ms: i64,
        end_ms: i64,
        step_s: i64,
    },
}

impl Eval {
    fn path(&self, expr: &str) -> String {
        match *self {
            Eval::Instant { at_ms } => api_path(
                "/api/v1/query",
                &[("query", expr), ("time", &seconds(at_ms))],
            ),
            Eval::Range {
                start_ms,
                end_ms,
                step_s,
            } => api_path(
                "/api/v1/query_range",
                &[
                    ("query", expr),
                    ("start", &seconds(start_ms)),
                    ("end", &seconds(end_ms)),
                    ("step", &step_s.to_string()),
                ],
            ),
        }
    }

    fn describe(&self, first_ms: i64) -> String {
        let rel = |ms: i64| format!("{} (first+{}s)", seconds(ms), (ms - first_ms) / 1000);
        match *self {
            Eval::Instant { at_ms } => format!("instant at {}", rel(at_ms)),
            Eval::Range {
                start_ms,
                end_ms,
                step_s,
            } => format!("range {}..{} step {step_s}s", rel(start_ms), rel(end_ms)),
        }
    }
}

/// The evaluations every query gets: instants 30 min in, in the middle and at the last sample;
/// ranges over the last hour at every step of [`STEPS_S`], aligned to the step as Grafana does.
fn evaluations(stats: &ExportStats) -> Vec<Eval> {
    let (first, last) = (stats.first_ms, stats.last_ms);
    let mut evals = vec![
        Eval::Instant {
            at_ms: first + 30 * MINUTE,
        },
        Eval::Instant {
            at_ms: (first + last) / 2,
        },
        Eval::Instant { at_ms: last },
    ];
    for step_s in STEPS_S {
        let step = step_s * 1000;
        evals.push(Eval::Range {
            start_ms: (last - HOUR).div_euclid(step) * step,
            end_ms: last.div_euclid(step) * step,
            step_s,
        });
    }
    evals
}

/// The corpus's queries, `$T` replaced by `t_ms` in seconds.
fn corpus(t_ms: i64) -> Vec<String> {
    CORPUS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("$T", &seconds(t_ms)))
        .collect()
}

type Labels = BTreeMap<String, String>;
/// An answer's result as series (label set) -> points (ms, value as written).
type Series = BTreeMap<Labels, Vec<(i64, String)>>;

fn labels(metric: &Value) -> Labels {
    metric
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn point(p: &Value) -> Result<(i64, String), String> {
    let t = p[0].as_f64().ok_or_else(|| format!("bad point {p}"))?;
    let v = p[1].as_str().ok_or_else(|| format!("bad point {p}"))?;
    Ok(((t * 1000.0).round() as i64, v.to_owned()))
}

/// The series of a success answer's `data` (a scalar or string is one series without labels).
fn series(data: &Value) -> Result<Series, String> {
    let result = &data["result"];
    let mut out = Series::new();
    match data["resultType"].as_str() {
        Some("scalar" | "string") => {
            out.insert(Labels::new(), vec![point(result)?]);
        }
        Some("vector") => {
            for s in result.as_array().ok_or("vector result is not an array")? {
                let ls = labels(&s["metric"]);
                if out.insert(ls.clone(), vec![point(&s["value"])?]).is_some() {
                    return Err(format!("series {ls:?} twice"));
                }
            }
        }
        Some("matrix") => {
            for s in result.as_array().ok_or("matrix result is not an array")? {
                let ls = labels(&s["metric"]);
                let points = s["values"]
                    .as_array()
                    .ok_or("matrix series without values")?
                    .iter()
                    .map(point)
                    .collect::<Result<_, _>>()?;
                if out.insert(ls.clone(), points).is_some() {
                    return Err(format!("series {ls:?} twice"));
                }
            }
        }
        other => return Err(format!("unknown resultType {other:?}")),
    }
    Ok(out)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Equal within 1e-9 relative; NaN equals NaN, infinities exactly, both below 1e-12 equal.
fn same_value(a: &str, b: &str) -> bool {
    let (Some(x), Some(y)) = (parse_value(a), parse_value(b)) else {
        return a == b;
    };
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    let m = x.abs().max(y.abs());
    (x - y).abs() <= 1e-9 * m || m < 1e-12
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 400 {
        format!("{}…", s.chars().take(400).collect::<String>())
    } else {
        s
    }
}

/// How `got` departs from `want` (both `(HTTP status, body)`), or `None` when they agree.
fn difference(want: &(u16, Value), got: &(u16, Value)) -> Option<String> {
    let ((ws, wb), (gs, gb)) = (want, got);
    if ws != gs {
        return Some(format!("HTTP status {gs}, want {ws}; body {}", short(gb)));
    }
    if wb["status"] != gb["status"] {
        return Some(format!("status {}, want {}", short(gb), short(wb)));
    }
    if wb["status"] != "success" {
        return (wb["errorType"] != gb["errorType"]).then(|| {
            format!(
                "errorType {}, want {} ({})",
                gb["errorType"], wb["errorType"], gb["error"]
            )
        });
    }
    let (wd, gd) = (&wb["data"], &gb["data"]);
    if wd["resultType"] != gd["resultType"] {
        return Some(format!(
            "resultType {}, want {}",
            gd["resultType"], wd["resultType"]
        ));
    }
    let want = match series(wd) {
        Ok(s) => s,
        Err(e) => return Some(format!("Prometheus's answer unreadable: {e}")),
    };
    let got = match series(gd) {
        Ok(s) => s,
        Err(e) => return Some(format!("answer unreadable: {e}: {}", short(gd))),
    };
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Some(format!(
            "{} series, want {}; {} missing (first {:?}), {} extra (first {:?})",
            got.len(),
            want.len(),
            missing.len(),
            missing.first(),
            extra.len(),
            extra.first()
        ));
    }
    for (ls, wp) in &want {
        let gp = &got[ls];
        let wt: Vec<i64> = wp.iter().map(|p| p.0).collect();
        let gt: Vec<i64> = gp.iter().map(|p| p.0).collect();
        if wt != gt {
            let i = wt.iter().zip(&gt).take_while(|(a, b)| a == b).count();
            return Some(format!(
                "series {ls:?}: {} points, want {}; first differing timestamp at #{i}: {:?}, want {:?}",
                gt.len(),
                wt.len(),
                gt.get(i).map(|&ms| seconds(ms)),
                wt.get(i).map(|&ms| seconds(ms)),
            ));
        }
        if let Some(((t, w), (_, g))) = wp.iter().zip(gp).find(|((_, w), (_, g))| !same_value(w, g))
        {
            let bad = wp
                .iter()
                .zip(gp)
                .filter(|(w, g)| !same_value(&w.1, &g.1))
                .count();
            return Some(format!(
                "series {ls:?}: value {g}, want {w} at {} ({bad} of {} points differ)",
                seconds(*t),
                wp.len()
            ));
        }
    }
    None
}

/// Whether a success answer holds no series (a scalar always holds one).
fn is_empty(body: &Value) -> bool {
    body["data"]["result"]
        .as_array()
        .is_some_and(|r| r.is_empty())
}

/// Runs `work` on `threads` threads, each item once; results in item order.
fn parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = work(item);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

#[test]
#[ignore = "needs DAMSELFLY_PROMETHEUS (tests/prometheus-install) and DAMSELFLY_PYTHON with duckdb: run tests/run"]
fn every_corpus_query_answers_as_prometheus_does() {
    bin_dir();
    let lake = lake();
    let prom = Prometheus::start(&lake.openmetrics);
    let candidate = Candidate::start(lake);
    let stats = prom.stats;
    let queries = corpus(stats.first_ms + HOUR);
    let evals = evaluations(&stats);
    assert!(
        queries.len() >= 70,
        "the corpus has {} queries",
        queries.len()
    );
    eprintln!(
        "data: {} series, {} samples, {}..{} ({} s); {} queries",
        stats.series,
        stats.samples,
        seconds(stats.first_ms),
        seconds(stats.last_ms),
        (stats.last_ms - stats.first_ms) / 1000,
        queries.len()
    );

    let work: Vec<(usize, Eval)> = (0..queries.len())
        .flat_map(|q| evals.iter().map(move |e| (q, *e)))
        .collect();
    let started = Instant::now();
    let answers = parallel(&work, 3, |(q, eval)| {
        let path = eval.path(&queries[*q]);
        let want = get_json(&prom.addr, &path);
        let got = get_json(candidate.addr(), &path);
        (want, got)
    });
    let elapsed = started.elapsed();

    let (mut invalid, mut mismatches) = (Vec::new(), Vec::new());
    let mut failing: BTreeMap<usize, usize> = BTreeMap::new();
    let mut empty: BTreeMap<usize, usize> = BTreeMap::new();
    for ((q, eval), (want, got)) in work.iter().zip(&answers) {
        let what = format!("`{}` {}", queries[*q], eval.describe(stats.first_ms));
        if want.0 != 200 || want.1["status"] != "success" {
            invalid.push(format!(
                "{what}: Prometheus answered {} {}",
                want.0,
                short(&want.1)
            ));
            continue;
        }
        if is_empty(&want.1) {
            *empty.entry(*q).or_default() += 1;
        }
        if let Some(diff) = difference(want, got) {
            mismatches.push(format!("{what}: {diff}"));
            *failing.entry(*q).or_default() += 1;
        }
    }
    for (q, n) in &empty {
        if *n == evals.len() {
            eprintln!("empty on Prometheus at every evaluation: {}", queries[*q]);
        }
    }
    eprintln!(
        "{} queries x {} evaluations compared, {} mismatches ({} vs Prometheus, {:.1} s)",
        queries.len(),
        evals.len(),
        mismatches.len(),
        candidate.name(),
        elapsed.as_secs_f64()
    );
    assert!(
        invalid.is_empty(),
        "corpus queries Prometheus 2.42 does not answer:\n{}",
        invalid.join("\n")
    );
    let by_query: Vec<String> = failing
        .iter()
        .map(|(q, n)| format!("  {n} of {}: {}", evals.len(), queries[*q]))
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} evaluations differ from Prometheus, in {} of {} queries:\n{}\n\
         Each evaluation's first difference:\n{}",
        mismatches.len(),
        work.len(),
        failing.len(),
        queries.len(),
        by_query.join("\n"),
        mismatches.join("\n")
    );
}

#[test]
#[ignore = "needs DAMSELFLY_PROMETHEUS (tests/prometheus-install) and DAMSELFLY_PYTHON with duckdb: run tests/run"]
fn series_and_label_endpoints_answer_as_prometheus_does() {
    bin_dir();
    let lake = lake();
    let prom = Prometheus::start(&lake.openmetrics);
    let candidate = Candidate::start(lake);
    let stats = prom.stats;
    // The whole span: Prometheus filters these endpoints by block or chunk, not by sample time, so
    // only a range covering every sample gives an answer any exact implementation must equal.
    let (start, end) = (seconds(stats.first_ms), seconds(stats.last_ms));
    let span = [("start", start.as_str()), ("end", end.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        span.iter().copied().chain(extra.iter().copied()).collect()
    };
    let paths = [
        api_path("/api/v1/labels", &with(&[])),
        api_path("/api/v1/labels", &with(&[("match[]", "disk_used")])),
        api_path(
            "/api/v1/labels",
            &with(&[("match[]", r#"cpu_utilization{ns="ns02"}"#)]),
        ),
        api_path("/api/v1/label/__name__/values", &with(&[])),
        api_path("/api/v1/label/vm/values", &with(&[])),
        api_path("/api/v1/label/device/values", &with(&[])),
        api_path("/api/v1/label/ns/values", &with(&[])),
        api_path(
            "/api/v1/label/vm/values",
            &with(&[("match[]", r#"mem_used{ns="ns02"}"#)]),
        ),
        api_path(
            "/api/v1/label/__name__/values",
            &with(&[("match[]", r#"{__name__=~"disk_.*",os="windows"}"#)]),
        ),
        api_path("/api/v1/label/nonexistent/values", &with(&[])),
        api_path("/api/v1/series", &with(&[("match[]", "cpu_utilization")])),
        api_path(
            "/api/v1/series",
            &with(&[("match[]", r#"{__name__=~"bytes_.*",vm="vm-aws-00000"}"#)]),
        ),
        api_path(
            "/api/v1/series",
            &with(&[
                ("match[]", r#"disk_used{device!="/"}"#),
                ("match[]", r#"mem_total{ns="ns02"}"#),
            ]),
        ),
        api_path(
            "/api/v1/series",
            &with(&[("match[]", "nonexistent_metric")]),
        ),
    ];
    let mut mismatches = Vec::new();
    for path in &paths {
        let (want, got) = (get_json(&prom.addr, path), get_json(candidate.addr(), path));
        assert_eq!(want.0, 200, "Prometheus: {path}: {}", want.1);
        // Arrays of names are sorted by Prometheus; series come in no promised order.
        let normal = |body: &Value| -> Value {
            let mut body = body.clone();
            if path.starts_with("/api/v1/series")
                && let Some(a) = body["data"].as_array_mut()
            {
                a.sort_by_key(|s| s.to_string());
            }
            body
        };
        let (w, g) = (normal(&want.1), normal(&got.1));
        if want.0 != got.0 || w["status"] != g["status"] || w["data"] != g["data"] {
            mismatches.push(format!(
                "{path}: {} {}, want {} {}",
                got.0,
                short(&g),
                want.0,
                short(&w)
            ));
        }
    }
    eprintln!(
        "{} metadata requests compared, {} mismatches ({} vs Prometheus)",
        paths.len(),
        mismatches.len(),
        candidate.name()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Runs `promtool ARGS`, bounded: its stdout, asserting it succeeded.
fn promtool(args: &[&str]) -> String {
    let child = Command::new(bin_dir().join("promtool"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let (out, log) = wait_bounded(child, Duration::from_secs(60));
    let out = out.unwrap_or_else(|| panic!("promtool {args:?} did not finish in 60 s: {log}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{stdout}\n{log}",
        out.status
    );
    stdout
}

#[test]
#[ignore = "needs DAMSELFLY_PROMETHEUS (tests/prometheus-install) and DAMSELFLY_PYTHON with duckdb: run tests/run"]
fn promtool_queries_damselfly() {
    bin_dir();
    let lake = lake();
    let stats = ExportStats::read(&lake.openmetrics);
    let candidate = Candidate::start(lake);
    let server = format!("http://{}", candidate.addr());
    // promtool POSTs the form first and falls back to GET on a 405.
    let (start, end) = (seconds(stats.last_ms - HOUR), seconds(stats.last_ms));
    let out = promtool(&[
        "query",
        "range",
        "--start",
        &start,
        "--end",
        &end,
        "--step",
        "1m",
        &server,
        r#"rate(bytes_in{ns="ns01"}[5m])"#,
    ]);
    let series = out.lines().filter(|l| l.ends_with(" =>")).count();
    let points = out.lines().filter(|l| l.contains(" @[")).count();
    assert_eq!(series, 7, "one series per ns01 VM:\n{out}");
    assert_eq!(points, 7 * 61, "a point a minute for an hour:\n{out}");
    let out = promtool(&[
        "query",
        "instant",
        "--time",
        &end,
        &server,
        r#"sum by (ns) (cpu_num)"#,
    ]);
    assert_eq!(out.lines().count(), 2, "one sum per namespace:\n{out}");
    assert!(out.contains(r#"{ns="ns02"} =>"#), "{out}");
}

#[test]
fn the_comparison_finds_every_kind_of_difference() {
    use serde_json::json;
    let matrix = |result: Value| {
        (
            200,
            json!({"status": "success", "data": {"resultType": "matrix", "result": result}}),
        )
    };
    let want = matrix(json!([
        {"metric": {"__name__": "m", "vm": "a"}, "values": [[1000, "1.5"], [1015.5, "NaN"]]},
        {"metric": {"vm": "b"}, "values": [[1000, "+Inf"], [1015.5, "1e-13"]]},
    ]));
    assert_eq!(difference(&want, &want), None);
    let close = matrix(json!([
        {"metric": {"vm": "b"}, "values": [[1000, "+Inf"], [1015.5, "0"]]},
        {"metric": {"vm": "a", "__name__": "m"}, "values": [[1000, "1.5000000000001"], [1015.5, "NaN"]]},
    ]));
    assert_eq!(
        difference(&want, &close),
        None,
        "order, 1e-13 relative, tiny"
    );
    let differ = [
        (
            matrix(json!([
                {"metric": {"__name__": "m", "vm": "a"}, "values": [[1000, "1.5000001"], [1015.5, "NaN"]]},
                {"metric": {"vm": "b"}, "values": [[1000, "+Inf"], [1015.5, "1e-13"]]},
            ])),
            "value 1.5000001, want 1.5",
        ),
        (
            matrix(json!([
                {"metric": {"__name__": "m", "vm": "a"}, "values": [[1000, "1.5"], [1015.5, "0"]]},
                {"metric": {"vm": "b"}, "values": [[1000, "+Inf"], [1015.5, "1e-13"]]},
            ])),
            "value 0, want NaN",
        ),
        (
            matrix(json!([
                {"metric": {"__name__": "m", "vm": "a"}, "values": [[1000, "1.5"], [1015.5, "NaN"]]},
                {"metric": {"vm": "b"}, "values": [[1000, "-Inf"], [1015.5, "1e-13"]]},
            ])),
            "value -Inf, want +Inf",
        ),
        (
            matrix(json!([
                {"metric": {"__name__": "m", "vm": "a"}, "values": [[1000, "1.5"], [1015, "NaN"]]},
                {"metric": {"vm": "b"}, "values": [[1000, "+Inf"], [1015.5, "1e-13"]]},
            ])),
            "first differing timestamp at #1",
        ),
        (
            matrix(json!([
                {"metric": {"vm": "a"}, "values": [[1000, "1.5"], [1015.5, "NaN"]]},
                {"metric": {"vm": "b"}, "values": [[1000, "+Inf"], [1015.5, "1e-13"]]},
            ])),
            "1 missing",
        ),
        (
            (
                200,
                json!({"status": "success", "data": {"resultType": "vector", "result": []}}),
            ),
            "resultType",
        ),
        ((404, Value::Null), "HTTP status 404, want 200"),
    ];
    for (got, expect) in differ {
        let diff = difference(&want, &got).unwrap_or_default();
        assert!(diff.contains(expect), "{expect:?} not in {diff:?}");
    }
    let error = |t: &str| {
        (
            400,
            json!({"status": "error", "errorType": t, "error": "x"}),
        )
    };
    assert_eq!(difference(&error("bad_data"), &error("bad_data")), None);
    assert!(difference(&error("bad_data"), &error("execution")).is_some());
    let scalar = |v: &str| {
        (
            200,
            json!({"status": "success", "data": {"resultType": "scalar", "result": [5, v]}}),
        )
    };
    assert_eq!(difference(&scalar("NaN"), &scalar("NaN")), None);
    assert!(difference(&scalar("2"), &scalar("2.01")).is_some());
}
