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
    assert_eq!(one(r#"clamp(cpu{vm="b"}, 0, 45)"#, 0), 45.0);
    assert!(vector(r#"clamp(cpu{vm="b"}, 45, 0)"#, 0).is_empty());
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

pub(super) mod over_the_lake {
    //! The routes over a lake written by the pipeline's encoder (`api::tests::write_lake`: one VM,
    //! every 20 s for 3 h, `bytes_in` of eth0 a counter that resets once).

    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use serde_json::Value;
    use tower::ServiceExt as _;

    use crate::LakeSql;
    use crate::api::tests::{NOW, STEP, T0, cpu, write_lake};
    use crate::api::{Api, router};

    /// The router's state over the test lake, at `NOW`.
    pub(in crate::prom) async fn api() -> (tempfile::TempDir, Arc<Api>) {
        let dir = tempfile::tempdir().unwrap();
        let lake = write_lake(dir.path(), 50).await;
        let sql = LakeSql::for_lake(&lake).await.unwrap();
        (dir, Arc::new(Api::with_sql(sql).with_clock(|| NOW)))
    }

    /// One request through the router: the status and the body as JSON (a body that is not
    /// JSON as a string).
    pub(in crate::prom) async fn call(api: &Arc<Api>, req: Request<Body>) -> (StatusCode, Value) {
        let res = router(api.clone()).oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    async fn get(api: &Arc<Api>, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let req = Request::get(format!("{path}?{q}"))
            .body(Body::empty())
            .unwrap();
        call(api, req).await
    }

    fn secs(ms: i64) -> String {
        format!("{}", ms as f64 / 1000.0)
    }

    #[tokio::test]
    async fn queries_answer_from_raw_in_prometheus_envelope() {
        let (_dir, api) = api().await;
        // An instant selector 10 s after sample 100 answers sample 100's value.
        let t = T0 + 100 * STEP + 10_000;
        let (status, body) = get(
            &api,
            "/api/v1/query",
            &[
                ("query", r#"cpu_utilization{vm=~"vm-.*"}"#),
                ("time", &secs(t)),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "success");
        assert_eq!(body["data"]["resultType"], "vector");
        let r = &body["data"]["result"][0];
        assert_eq!(
            r["metric"],
            serde_json::json!({"__name__": "cpu_utilization", "ns": "ns1", "mcis": "web", "vm": "vm-1", "csp": "aws", "region": "eu-west-1", "os": "linux"})
        );
        assert_eq!(r["value"][0].as_f64().unwrap(), t as f64 / 1000.0);
        assert_eq!(r["value"][1], crate::prom::model::format_value(cpu(100)));

        // A POST form, as Grafana sends: rate over the counter, which has a device label.
        let form = format!(
            "query={}&start={}&end={}&step=60",
            "rate(bytes_in%5B5m%5D)",
            secs(T0 + 3_600_000),
            secs(T0 + 7_200_000)
        );
        let req = Request::post("/api/v1/query_range")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        let (status, body) = call(&api, req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let m = &body["data"]["result"][0];
        assert_eq!(m["metric"]["device"], "eth0");
        assert!(m["metric"].get("__name__").is_none());
        assert_eq!(m["values"].as_array().unwrap().len(), 61);
        // The counter grows by 0, 10, 20, 30, 40 per 20 s step: a 5-minute window ending on a
        // sample holds 16 samples, 15 steps, 3 whole cycles: 300 in 300 s, a rate of exactly 1
        // with nothing to extrapolate. Across the reset at sample 300 the step 299 -> 300
        // (worth 40) is lost: the counter restarts at 0, so the window counts 260.
        for (k, v) in m["values"].as_array().unwrap().iter().enumerate() {
            let x: f64 = v[1].as_str().unwrap().parse().unwrap();
            let last = 180 + 3 * k as i64;
            let want = if (300..315).contains(&last) {
                260.0 / 300.0
            } else {
                1.0
            };
            assert!(
                (x - want).abs() < 1e-12,
                "step {k} (sample {last}): {x} != {want}"
            );
        }
    }

    fn q<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        v.iter().map(|(a, b)| (*a, b.as_str())).collect()
    }

    #[tokio::test]
    async fn listings_and_errors() {
        let (_dir, api) = api().await;
        let span = [("start", secs(T0)), ("end", secs(NOW))];
        let with = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
            span.iter().cloned().chain(extra.iter().cloned()).collect()
        };

        let args = with(&[("match[]", "{__name__=~\"bytes_.*|disk_used\"}".into())]);
        let (status, body) = get(&api, "/api/v1/series", &q(&args)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let devices: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["device"].as_str().unwrap())
            .collect();
        assert_eq!(devices, vec!["eth0", "/"]);

        let (_, body) = get(&api, "/api/v1/labels", &q(&with(&[]))).await;
        assert_eq!(
            body["data"],
            serde_json::json!([
                "__name__", "csp", "device", "mcis", "ns", "os", "region", "vm"
            ])
        );
        let (_, body) = get(&api, "/api/v1/label/__name__/values", &q(&with(&[]))).await;
        assert_eq!(
            body["data"],
            serde_json::json!(["bytes_in", "cpu_utilization", "disk_used", "load_avg_1"])
        );
        let (_, body) = get(&api, "/api/v1/label/job/values", &q(&with(&[]))).await;
        assert_eq!(body["data"], serde_json::json!([]));

        let (status, body) = get(&api, "/api/v1/series", &q(&with(&[]))).await;
        assert_eq!(
            (status, body["errorType"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_data"))
        );
        let (status, body) = get(
            &api,
            "/api/v1/query",
            &[("query", "histogram_quantile(0.9, cpu_utilization)")],
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["status"], "error");
        assert_eq!(body["errorType"], "execution");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("histogram_quantile()"),
            "{body}"
        );
        let (status, body) = get(
            &api,
            "/api/v1/query",
            &[("query", "cpu_utilization"), ("time", "soon")],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "invalid parameter \"time\": cannot parse \"soon\" to a valid timestamp"
        );
        let (status, _) = get(
            &api,
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "0"),
                ("end", "100000"),
                ("step", "1"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (_, body) = get(&api, "/api/v1/status/buildinfo", &[]).await;
        assert_eq!(body["data"]["version"], "2.42.0");
        let (_, body) = get(&api, "/api/v1/metadata", &[("metric", "bytes_in")]).await;
        assert_eq!(body["data"]["bytes_in"][0]["type"], "counter");
    }

    #[tokio::test]
    async fn the_sample_limit_is_a_422_not_an_out_of_memory() {
        let (_dir, api) = api().await;
        let sql = api.sql().await;
        let limits = crate::prom::Limits {
            max_samples: 100,
            max_series: 10,
        };
        let err = crate::prom::query(
            &sql,
            "cpu_utilization[1h]",
            crate::prom::Range::instant(NOW),
            &limits,
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), 422);
        assert!(err.to_string().contains("too many samples"), "{err}");
        let ok = crate::prom::query(
            &sql,
            "cpu_utilization[10m]",
            crate::prom::Range::instant(NOW),
            &limits,
        )
        .await;
        assert!(
            matches!(ok, Ok(crate::prom::QueryValue::Matrix(ref m)) if m[0].samples.len() == 30),
            "{ok:?}"
        );
    }
}
