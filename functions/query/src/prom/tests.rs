//! PromQL evaluation over in-memory series: windows, steps, matching, aggregation and refusals.

use super::eval::{self, Range};
use super::model::{Labels, PromError, QueryValue, Series};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
}

/// Samples every 15 s from 0 to 30 min: `value(t_seconds)`.
fn series(pairs: &[(&str, &str)], value: impl Fn(f64) -> f64) -> Series {
    Series {
        labels: labels(pairs),
        samples: (0..=120)
            .map(|i| (i * 15_000, value(i as f64 * 15.0)))
            .collect(),
    }
}

fn store() -> Vec<Series> {
    vec![
        series(&[("__name__", "cpu"), ("vm", "a"), ("mcis", "m1")], |t| {
            10.0 + t / 60.0
        }),
        series(&[("__name__", "cpu"), ("vm", "b"), ("mcis", "m1")], |t| {
            50.0 - t / 120.0
        }),
        series(&[("__name__", "cpu"), ("vm", "c"), ("mcis", "m2")], |_| {
            30.0
        }),
        series(
            &[
                ("__name__", "bytes_in"),
                ("vm", "a"),
                ("mcis", "m1"),
                ("device", "eth0"),
            ],
            |t| {
                // A counter of 100 per second that restarts from zero at 600 s.
                if t < 600.0 {
                    1000.0 + 100.0 * t
                } else {
                    100.0 * (t - 600.0)
                }
            },
        ),
        series(
            &[("__name__", "info"), ("mcis", "m1"), ("owner", "ops")],
            |_| 1.0,
        ),
    ]
}

/// Plans, fetches from `store()` as the lake adapter would, and evaluates.
fn run(text: &str, range: Range) -> Result<QueryValue, PromError> {
    let expr = super::parse(text)?;
    let sels = eval::plan(&expr, &range)?;
    let data = store();
    let fetched = sels
        .iter()
        .map(|sel| {
            data.iter()
                .filter(|s| {
                    sel.matchers
                        .iter()
                        .all(|m| m.is_match(s.labels.get(&m.name)))
                })
                .map(|s| Series {
                    labels: s.labels.clone(),
                    samples: s
                        .samples
                        .iter()
                        .copied()
                        .filter(|p| p.0 >= sel.from && p.0 <= sel.to)
                        .collect(),
                })
                .filter(|s| !s.samples.is_empty())
                .collect()
        })
        .collect();
    eval::evaluate(&expr, &range, &fetched)
}

/// An instant query's vector as (labels as text, value), sorted.
fn vector(text: &str, t_s: i64) -> Vec<(String, f64)> {
    match run(text, Range::instant(t_s * 1000)).unwrap() {
        QueryValue::Vector(_, v) => {
            let mut out: Vec<_> = v
                .into_iter()
                .map(|s| (s.labels.to_string(), s.value))
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("{text}: not a vector: {other:?}"),
    }
}

fn one(text: &str, t_s: i64) -> f64 {
    let v = vector(text, t_s);
    assert_eq!(v.len(), 1, "{text}: {v:?}");
    v[0].1
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn an_instant_selector_looks_back_five_minutes_inclusive() {
    // At 1200 s every series has a sample at 1200 s itself.
    assert_eq!(
        vector(r#"cpu{vm="a"}"#, 1200),
        vec![(r#"{__name__="cpu", mcis="m1", vm="a"}"#.into(), 30.0)]
    );
    // The last sample is at 1800 s: it is still seen at exactly 1800 + 300 s, not 1 ms later.
    assert_eq!(vector("cpu", 2100).len(), 3);
    assert!(
        run("cpu", Range::instant(2_100_001))
            .is_ok_and(|v| v == QueryValue::Vector(2_100_001, vec![]))
    );
    // Between samples the previous one answers.
    assert_eq!(one(r#"cpu{vm="c"}"#, 1207), 30.0);
}

#[test]
fn matchers_select_by_equality_and_regex() {
    assert_eq!(vector(r#"cpu{vm!="a"}"#, 600).len(), 2);
    assert_eq!(vector(r#"cpu{vm=~"a|c"}"#, 600).len(), 2);
    assert_eq!(vector(r#"cpu{vm!~"a.*"}"#, 600).len(), 2);
    assert_eq!(vector(r#"{__name__=~"cpu|info", mcis="m1"}"#, 600).len(), 3);
    // An absent label equals the empty string.
    assert_eq!(vector(r#"cpu{device=""}"#, 600).len(), 3);
}

#[test]
fn rate_and_increase_extrapolate_and_survive_a_counter_reset() {
    // 100/s throughout, including across the restart at 600 s (the drop is added back).
    assert!(close(one("rate(bytes_in[5m])", 900), 100.0));
    assert!(close(one("increase(bytes_in[5m])", 900), 30_000.0));
    assert!(close(one("irate(bytes_in[5m])", 900), 100.0));
    assert_eq!(one("resets(bytes_in[15m])", 900), 1.0);
    assert_eq!(one("changes(cpu{vm=\"c\"}[15m])", 900), 0.0);
    // rate drops the metric name; last_over_time keeps it.
    assert_eq!(
        vector("rate(bytes_in[5m])", 900)[0].0,
        r#"{device="eth0", mcis="m1", vm="a"}"#
    );
    assert_eq!(
        vector(r#"last_over_time(cpu{vm="c"}[1m])"#, 900)[0].0,
        r#"{__name__="cpu", mcis="m2", vm="c"}"#
    );
}

#[test]
fn over_time_functions_and_offset_and_at() {
    // 21 samples of vm c (all 30) in [600, 900] inclusive.
    assert_eq!(one(r#"count_over_time(cpu{vm="c"}[5m])"#, 900), 21.0);
    assert!(close(
        one(r#"avg_over_time(cpu{vm="a"}[5m])"#, 900),
        10.0 + 750.0 / 60.0
    ));
    assert!(close(one(r#"max_over_time(cpu{vm="a"}[5m])"#, 900), 25.0));
    assert!(close(one(r#"deriv(cpu{vm="a"}[5m])"#, 900), 1.0 / 60.0));
    assert!(close(one(r#"cpu{vm="a"} offset 10m"#, 900), 15.0));
    assert!(close(one(r#"cpu{vm="a"} @ 600"#, 1500), 20.0));
    assert!(close(one(r#"cpu{vm="a"} @ 900 offset 5m"#, 1500), 20.0));
}

#[test]
fn aggregations_group_by_and_without() {
    assert!(close(one("sum(cpu)", 0), 90.0));
    let by = vector("avg by (mcis) (cpu)", 0);
    assert_eq!(
        by,
        vec![
            (r#"{mcis="m1"}"#.into(), 30.0),
            (r#"{mcis="m2"}"#.into(), 30.0)
        ]
    );
    let without = vector("max without (vm) (cpu)", 0);
    assert_eq!(
        without,
        vec![
            (r#"{mcis="m1"}"#.into(), 50.0),
            (r#"{mcis="m2"}"#.into(), 30.0)
        ]
    );
    assert_eq!(one("count(cpu)", 0), 3.0);
    let top = vector("topk(2, cpu)", 0);
    assert_eq!(
        top.iter().map(|t| t.1).collect::<Vec<_>>(),
        vec![50.0, 30.0]
    );
    assert_eq!(vector("bottomk(1, cpu)", 0)[0].1, 10.0);
    assert!(close(one("quantile(0.5, cpu)", 0), 30.0));
    assert!(close(one("stddev(cpu)", 0), (800.0f64 / 3.0).sqrt()));
}

#[test]
fn binary_operators_match_vectors_and_scalars() {
    assert_eq!(vector("cpu > 20", 0).len(), 2);
    assert_eq!(
        vector("cpu > bool 20", 0).iter().map(|v| v.1).sum::<f64>(),
        2.0
    );
    // A comparison keeps the name; arithmetic and bool drop it.
    assert!(vector("cpu > 20", 0)[0].0.contains("__name__"));
    assert!(!vector("cpu * 2", 0)[0].0.contains("__name__"));
    assert_eq!(one("scalar(cpu{vm=\"c\"}) * 2 + vector(1)", 0), 61.0);
    assert_eq!(
        run("2 < bool 3", Range::instant(0)),
        Ok(QueryValue::Scalar(0, 1.0))
    );
    // One-to-one on the common labels, and many-to-one with group_left taking `owner`.
    assert_eq!(
        vector(r#"cpu - on (vm, mcis) cpu{vm="a"}"#, 0),
        vec![(r#"{mcis="m1", vm="a"}"#.into(), 0.0)]
    );
    let joined = vector("cpu * on (mcis) group_left (owner) info", 0);
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert!(joined.iter().all(|j| j.0.contains(r#"owner="ops""#)));
    // Many-to-many is refused with Prometheus's message.
    let err = run("info + on (mcis) cpu", Range::instant(0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("many-to-many matching not allowed"),
        "{err}"
    );
    assert_eq!(vector(r#"cpu and cpu{vm="a"}"#, 0).len(), 1);
    assert_eq!(vector(r#"cpu unless cpu{vm="a"}"#, 0).len(), 2);
    assert_eq!(vector(r#"cpu{vm="a"} or info"#, 0).len(), 2);
}

#[test]
fn label_replace_absent_and_clamping() {
    let v = vector(
        r#"label_replace(cpu{vm="a"}, "host", "h-$1", "vm", "(.*)")"#,
        0,
    );
    assert!(
        v[0].0.contains(r#"host="h-a""#) && v[0].0.contains("__name__"),
        "{v:?}"
    );
    assert_eq!(
        vector(r#"absent(nothing{vm="z", mcis=~"m.*"})"#, 0),
        vec![(r#"{vm="z"}"#.into(), 1.0)]
    );
    assert!(vector("absent(cpu)", 0).is_empty());
    assert_eq!(one(r#"clamp_max(cpu{vm="b"}, 40)"#, 0), 40.0);
    assert_eq!(one(r#"round(cpu{vm="a"} / 3, 0.5)"#, 0), 3.5);
}

#[test]
fn a_range_query_steps_from_start_to_end_and_leaves_out_empty_series() {
    let range = Range::stepped(1_740_000, 2_400_000, 60_000).unwrap();
    let QueryValue::Matrix(m) = run("cpu", range).unwrap() else {
        panic!("not a matrix")
    };
    assert_eq!(m.len(), 3);
    // Steps 1740 s .. 2100 s see the last sample (1800 s); later steps see none.
    assert_eq!(
        m[0].samples.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![
            1_740_000, 1_800_000, 1_860_000, 1_920_000, 1_980_000, 2_040_000, 2_100_000
        ]
    );
    let QueryValue::Matrix(s) = run("time()", Range::stepped(0, 120_000, 60_000).unwrap()).unwrap()
    else {
        panic!("not a matrix")
    };
    assert_eq!(s[0].labels, Labels::empty());
    assert_eq!(
        s[0].samples,
        vec![(0, 0.0), (60_000, 60.0), (120_000, 120.0)]
    );
}

#[test]
fn bad_requests_and_unsupported_constructs_are_refused_before_reading() {
    for (text, named) in [
        ("rate(cpu[5m:1m])", "subqueries"),
        ("count_values(\"v\", cpu)", "count_values"),
        ("histogram_quantile(0.9, cpu)", "histogram_quantile()"),
        ("timestamp(cpu)", "timestamp()"),
        ("predict_linear(cpu[5m], 60)", "predict_linear()"),
    ] {
        let err = run(text, Range::instant(0)).unwrap_err();
        assert_eq!(err.status(), 422, "{text}: {err}");
        assert!(err.to_string().contains(named), "{text}: {err}");
    }
    let parse = run("sum(", Range::instant(0)).unwrap_err();
    assert_eq!((parse.status(), parse.error_type()), (400, "bad_data"));
    assert_eq!(Range::stepped(10, 0, 1).unwrap_err().status(), 400);
    assert_eq!(
        Range::stepped(0, 12_000_000, 1000).unwrap_err().status(),
        400
    );
    let matrix = run("cpu[5m]", Range::stepped(0, 60_000, 60_000).unwrap()).unwrap_err();
    assert!(matrix.to_string().contains("range vector"), "{matrix}");
    // Two series that label_replace makes equal collide, as in Prometheus.
    let dup = run(
        r#"label_replace(cpu, "vm", "x", "vm", ".*")"#,
        Range::instant(0),
    )
    .unwrap_err();
    assert_eq!(
        dup.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}
