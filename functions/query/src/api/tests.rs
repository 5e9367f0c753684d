//! Tests of the metric API over a lake written by the pipeline's own encoder: answers against a
//! brute-force recomputation from the samples, the hourly table read up to its watermark, and
//! the HTTP contract (statuses and `{"message"}` bodies) through the router.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use damselfly_core::{InputRecord, Lake, PartitionBatch, Validation};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::LakeSql;

/// 2025-11-21T12:00:00Z.
pub(crate) const T0: i64 = 1_763_726_400_000;
pub(crate) const STEP: i64 = 20_000;
/// Three hours of samples every 20 s.
pub(crate) const N: i64 = 540;
pub(crate) const NOW: i64 = T0 + N * STEP;

pub(crate) fn cpu(i: i64) -> f64 {
    ((i * 37) % 101) as f64 / 2.0
}

/// `bytes_in` of eth0: a counter that grows by `10 * (i % 5)` per step and resets once.
fn bytes_in(i: i64) -> f64 {
    if i >= 300 {
        (0..i - 300).map(|k| 10.0 * (k % 5) as f64).sum()
    } else {
        (0..i).map(|k| 10.0 * (k % 5) as f64).sum()
    }
}

fn message(i: i64) -> String {
    format!(
        r#"{{"v":1,"ts":{},"tags":{{"ns":"ns1","mcis":"web","vm":"vm-1","csp":"aws","region":"eu-west-1","os":"linux"}},"metrics":{{"cpu_utilization":{},"load_avg_1":{}}},"devices":{{"eth0":{{"bytes_in":{}}},"/":{{"disk_used":{}}}}}}}"#,
        T0 + i * STEP,
        cpu(i),
        (i % 3) as f64,
        bytes_in(i),
        1000 + i
    )
}

/// Writes the samples as the aggregate function would, in batches of `per_batch` records.
pub(crate) async fn write_lake(dir: &Path, per_batch: i64) -> Lake {
    let lake = Lake::open(dir.to_str().unwrap()).unwrap();
    let mut tail = Default::default();
    for start in (0..N).step_by(per_batch as usize) {
        let mut batch = PartitionBatch::new("metrics", 0);
        for i in start..(start + per_batch).min(N) {
            let v = message(i);
            let rec = InputRecord {
                topic: "metrics",
                partition: 0,
                offset: i,
                timestamp_ms: T0 + i * STEP,
                key: None,
                value: Some(v.as_bytes()),
            };
            batch.push(&rec, T0 + i * STEP, &Validation::default());
        }
        lake.put_all(&batch.objects(&mut tail).unwrap())
            .await
            .unwrap();
    }
    lake
}

/// The statistic of each window, recomputed from the samples.
pub(crate) fn expected(
    samples: impl Iterator<Item = (i64, f64)>,
    period: Period,
    stat: Statistic,
    from: i64,
) -> BTreeMap<i64, f64> {
    let mut windows: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (ts, v) in samples {
        if ts >= from {
            windows.entry(period.floor(ts)).or_default().push(v);
        }
    }
    windows
        .into_iter()
        .map(|(w, vs)| {
            let s = match stat {
                Statistic::Min => vs.iter().copied().fold(f64::INFINITY, f64::min),
                Statistic::Max => vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Statistic::Avg => vs.iter().sum::<f64>() / vs.len() as f64,
                Statistic::Last => *vs.last().unwrap(),
            };
            (w, s)
        })
        .collect()
}

pub(crate) fn rates() -> Vec<(i64, f64)> {
    (1..N)
        .filter_map(|i| {
            let dv = bytes_in(i) - bytes_in(i - 1);
            (dv >= 0.0).then(|| (T0 + i * STEP, dv * 1000.0 / STEP as f64))
        })
        .collect()
}

pub(crate) fn request(family: &str, period: &str, stat: &str, duration: &str) -> MetricRequest {
    let q = vec![
        ("periodType".to_owned(), period.to_owned()),
        ("statisticsCriteria".to_owned(), stat.to_owned()),
        ("duration".to_owned(), duration.to_owned()),
    ];
    MetricRequest::parse("ns1", "web", "vm-1", family, &q).unwrap()
}

pub(crate) fn answered(info: &MetricInfo, field: &str) -> BTreeMap<i64, f64> {
    info.values
        .iter()
        .map(|v| {
            let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
            (t.timestamp_millis(), v[field].as_f64().unwrap())
        })
        .collect()
}

pub(crate) fn assert_close(a: &BTreeMap<i64, f64>, b: &BTreeMap<i64, f64>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: windows"
    );
    for (w, x) in a {
        let y = b[w];
        assert!(
            (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            "{what} at {w}: {x} vs {y}"
        );
    }
}

#[tokio::test]
async fn answers_equal_a_recomputation_from_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let lake = write_lake(dir.path(), 77).await;
    let sql = LakeSql::for_lake(&lake).await.unwrap();
    for period in ["m", "h", "d"] {
        for stat in ["min", "max", "avg", "last"] {
            for duration in ["10m", "2h", "1d"] {
                let req = request("cpu", period, stat, duration);
                let info = metric_info(&sql, &req, NOW).await.unwrap();
                let want = expected(
                    (0..N).map(|i| (T0 + i * STEP, cpu(i))),
                    req.period,
                    req.statistic,
                    req.from_ms(NOW),
                );
                let what = format!("cpu {period} {stat} {duration}");
                assert_close(&answered(&info, "cpu_utilization"), &want, &what);
                assert_eq!(info.name, "cpu");
                assert_eq!(info.tags["csp"], "aws", "{what}");
                assert_eq!(info.tags["vmId"], "vm-1", "{what}");
                let first = &info.values[0];
                assert!(
                    first.contains_key("cpu_guest_nice"),
                    "every field is present"
                );
                assert!(
                    first["cpu_idle"].is_null(),
                    "a field without samples is null"
                );

                let req = request("network", period, stat, duration);
                let info = metric_info(&sql, &req, NOW).await.unwrap();
                let want = expected(
                    rates().into_iter(),
                    req.period,
                    req.statistic,
                    req.from_ms(NOW),
                );
                assert_close(&answered(&info, "bytes_in"), &want, &format!("net {what}"));
                assert!(info.values.iter().all(|v| v["device"] == "eth0"));
            }
        }
    }
    let req = request("cpu", "m", "avg", "10m");
    let info = metric_info(&sql, &req, NOW).await.unwrap();
    assert_eq!(
        info.values.len(),
        10,
        "the windows overlapping the last 10 minutes"
    );
    assert_eq!(info.values[0]["time"], "2025-11-21T14:50:00Z");
}

#[tokio::test]
async fn hourly_table_answers_up_to_its_watermark_and_minutes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = write_lake(dir.path(), 50).await;
    let sql = LakeSql::for_lake(&lake).await.unwrap();
    let req = request("cpu", "h", "avg", "1d");
    let before = metric_info(&sql, &req, NOW).await.unwrap();
    assert_eq!(before.values.len(), 3);

    // Compact the first two hours into rollup_1h, as the compaction function would, and drop
    // their minute files, as retention would: the answer must not change.
    let merged = sql
        .query(&format!(
            r#"SELECT date_trunc('hour', window_start) AS window_start, ns, mcis, vm, csp, region, os, metric, device,
                 sum("count") AS "count", sum("sum") AS "sum", min("min") AS "min", max("max") AS "max",
                 first_value("first" ORDER BY first_ts, "first") AS "first", min(first_ts) AS first_ts,
                 last_value("last" ORDER BY last_ts, "last") AS "last", max(last_ts) AS last_ts
               FROM rollup_1m WHERE window_start < {}
               GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9 ORDER BY vm, metric, device, window_start"#,
            metric::ts_literal(T0 + 2 * 3_600_000)
        ))
        .await
        .unwrap();
    let batch = arrow::compute::concat_batches(&merged[0].schema(), &merged).unwrap();
    // Aggregates are nullable and date_trunc may change the unit: cast to the lake schema.
    let schema = damselfly_schemas::Table::Rollup1m.schema();
    let cols = schema
        .fields()
        .iter()
        .map(|f| {
            arrow::compute::cast(batch.column_by_name(f.name()).unwrap(), f.data_type()).unwrap()
        })
        .collect();
    let batch = arrow::array::RecordBatch::try_new(schema, cols).unwrap();
    let bytes = damselfly_core::encode::batch_parquet(&batch, &["vm", "metric", "device"]).unwrap();
    let hour_dir = dir.path().join("rollup_1h/dt=2025-11-21/hour=12");
    std::fs::create_dir_all(&hour_dir).unwrap();
    std::fs::write(hour_dir.join("compacted.parquet"), bytes).unwrap();
    for hour in ["12", "13"] {
        std::fs::remove_dir_all(
            dir.path()
                .join(format!("rollup_1m/dt=2025-11-21/hour={hour}")),
        )
        .unwrap();
    }
    let sql = LakeSql::for_lake(&lake).await.unwrap();
    if !sql.holds_files("rollup_1h") {
        // Before rollup_1h is a lake table, register it the way LakeSql registers tables.
        let options = datafusion::prelude::ParquetReadOptions::default().table_partition_cols(
            crate::PARTITION_COLUMNS
                .iter()
                .map(|c| (c.to_string(), arrow::datatypes::DataType::Utf8))
                .collect(),
        );
        sql.context()
            .register_parquet(
                "rollup_1h",
                format!("{}/rollup_1h/", dir.path().display()),
                options,
            )
            .await
            .unwrap();
    }
    let after = metric_info(&sql, &req, NOW).await.unwrap();
    assert_close(
        &answered(&after, "cpu_utilization"),
        &answered(&before, "cpu_utilization"),
        "hourly table + minutes after its watermark",
    );
    let only_minutes = metric_info(&sql, &request("cpu", "m", "avg", "4h"), NOW)
        .await
        .unwrap();
    assert_eq!(
        only_minutes.values.len(),
        60,
        "minute answers read rollup_1m only (its first two hours are gone)"
    );
}

async fn call(api: Arc<Api>, method: &str, uri: &str) -> (StatusCode, Value) {
    let res = router(api)
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

#[tokio::test]
async fn http_statuses_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let lake = write_lake(dir.path(), 200).await;
    let api = Arc::new(Api::with_sql(LakeSql::for_lake(&lake).await.unwrap()).with_clock(|| NOW));
    let base = "/dragonfly/ns/ns1/mcis/web/vm/vm-1/metric";

    let (s, body) = call(api.clone(), "GET", HEALTHCHECK).await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, Value::Null));
    let (s, body) = call(api.clone(), "GET", OPENAPI).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["openapi"], "3.0.3");

    let (s, body) = call(
        api.clone(),
        "GET",
        &format!("{base}/load/info?periodType=h&statisticsCriteria=max&duration=1h"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "load");
    assert_eq!(
        body["values"][0],
        json!({"time": "2025-11-21T14:00:00Z", "load_avg_1": 2.0, "load_avg_5": null, "load_avg_15": null})
    );

    for (query, param) in [
        ("periodType=w", "periodType"),
        ("statisticsCriteria=median", "statisticsCriteria"),
        ("duration=forever", "duration"),
        ("device=", "device"),
    ] {
        let (s, body) = call(api.clone(), "GET", &format!("{base}/network/info?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}");
        let msg = body["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{param}: ")), "{msg}");
    }
    let (s, body) = call(api.clone(), "GET", &format!("{base}/gpu/info")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().starts_with("metric: "));

    let (s, body) = call(
        api.clone(),
        "GET",
        "/dragonfly/ns/ns1/mcis/web/vm/vm-404/metric/cpu/info",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body["message"].as_str().unwrap().contains("vm-404"));
    let (s, body) = call(
        api.clone(),
        "GET",
        "/dragonfly/ns/other/mcis/web/vm/vm-1/metric/cpu/info",
    )
    .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a VM is found in its own ns only: {body}"
    );

    // A known VM without samples in the window answers no values, not 404.
    let quiet = Arc::new(
        Api::with_sql(LakeSql::for_lake(&lake).await.unwrap()).with_clock(|| NOW + 86_400_000),
    );
    let (s, body) = call(quiet, "GET", &format!("{base}/cpu/info")).await;
    assert_eq!((s, &body["values"]), (StatusCode::OK, &json!([])));

    let (s, body) = call(api.clone(), "GET", "/dragonfly/nothing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/dragonfly/nothing")
    );
    let (s, body) = call(api.clone(), "POST", HEALTHCHECK).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["message"].is_string());
}

/// A router with one route that takes `delay`, within `limits`.
fn slow_router(delay: Duration, limits: Limits) -> Router {
    // With its state given, as `router` gives the API's: the limits then wrap each route once,
    // not once per request.
    let route = Router::new()
        .route(
            "/slow",
            axum::routing::get(move || async move {
                tokio::time::sleep(delay).await;
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(());
    limited(route, limits)
}

async fn status_and_message(router: Router) -> (StatusCode, String) {
    let res = router
        .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, message)
}

#[tokio::test(start_paused = true)]
async fn a_request_past_the_timeout_is_a_503_with_a_message() {
    let limits = Limits {
        timeout: Duration::from_secs(2),
        concurrency: 4,
    };
    let (status, message) = status_and_message(slow_router(Duration::from_secs(5), limits)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(message.contains("longer than 2s"), "{message}");
    let (status, _) = status_and_message(slow_router(Duration::from_secs(1), limits)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test(start_paused = true)]
async fn a_request_over_the_concurrency_limit_is_shed_with_a_503() {
    let limits = Limits {
        timeout: Duration::from_secs(60),
        concurrency: 2,
    };
    let router = slow_router(Duration::from_secs(10), limits);
    let running: Vec<_> = (0..2)
        .map(|_| tokio::spawn(status_and_message(router.clone())))
        .collect();
    // Let both start and take their permits: paused time advances to this sleep's end, long
    // before theirs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, message) = status_and_message(router.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        message.contains("2 requests are already being answered"),
        "{message}"
    );
    for r in running {
        assert_eq!(r.await.unwrap().0, StatusCode::NO_CONTENT);
    }
    assert_eq!(status_and_message(router).await.0, StatusCode::NO_CONTENT);
}
