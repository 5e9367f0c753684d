//! Tests of the console through the router, over a lake written by the pipeline's own encoder (the
//! metric API tests' lake, plus one malformed record): chart numbers against the metric API and a
//! recomputation from the samples, the dead-letter and ingest figures, headers and error pages.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use damselfly_core::{InputRecord, PartitionBatch, Validation};
use tower::ServiceExt as _;

use crate::LakeSql;
use crate::api::tests::{
    N, NOW, STEP, T0, assert_close, cpu, expected, rates, request, write_lake,
};
use crate::api::{Api, Period, Statistic, metric_info, router};

/// The malformed record, written to partition 1.
const BAD: &str = r#"{"v":1,"ts":"<not a number>"}"#;

async fn lake() -> (tempfile::TempDir, Arc<Api>) {
    let dir = tempfile::tempdir().unwrap();
    let lake = write_lake(dir.path(), 60).await;
    let mut batch = PartitionBatch::new("metrics", 1);
    let rec = InputRecord {
        topic: "metrics",
        partition: 1,
        offset: 7,
        timestamp_ms: NOW,
        key: Some(b"vm-1"),
        value: Some(BAD.as_bytes()),
    };
    batch.push(&rec, NOW, &Validation::default());
    lake.put_all(&batch.objects(&mut Default::default()).unwrap())
        .await
        .unwrap();
    let sql = LakeSql::for_lake(&lake).await.unwrap();
    (dir, Arc::new(Api::with_sql(sql).with_clock(|| NOW)))
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(api: &Arc<Api>, uri: &str) -> Page {
    let res = router(api.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    Page {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// The rows of `table[data-table=name]` after `anchor`: each row's `data-col` -> `data-value`.
fn rows(html: &str, anchor: &str, name: &str) -> Vec<BTreeMap<String, String>> {
    let start = html
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor} not on the page"));
    let html = &html[start..];
    let t = html
        .find(&format!(r#"data-table="{name}""#))
        .unwrap_or_else(|| panic!("table {name} not on the page"));
    let table = &html[t..t + html[t..].find("</table>").unwrap()];
    table
        .split("<tr>")
        .skip(1)
        .map(|row| {
            row.split(r#"data-col=""#)
                .skip(1)
                .map(|cell| {
                    let (col, rest) = cell.split_once('"').unwrap();
                    let value = rest
                        .split_once(r#"data-value=""#)
                        .map(|(_, v)| v.split_once('"').unwrap().0)
                        .unwrap_or_default();
                    (col.to_owned(), value.to_owned())
                })
                .collect()
        })
        .filter(|r: &BTreeMap<String, String>| !r.is_empty())
        .collect()
}

fn stat(html: &str, name: &str) -> String {
    let at = html
        .find(&format!(r#"data-stat="{name}" data-value=""#))
        .unwrap_or_else(|| panic!("stat {name} not on the page"));
    let rest = &html[at + name.len() + 25..];
    rest.split_once('"').unwrap().0.to_owned()
}

fn column(rows: &[BTreeMap<String, String>], col: &str) -> BTreeMap<i64, f64> {
    rows.iter()
        .map(|r| (r["time"].parse().unwrap(), r[col].parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn vm_charts_hold_the_metric_apis_windows_and_the_samples_statistics() {
    let (_dir, api) = lake().await;
    let page = get(&api, &format!("/vm/ns1/web/vm-1?range=1h&end={NOW}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let sql = api.sql().await;
    for (series, family) in [("cpu_utilization", "cpu"), ("bytes_in_rate", "network")] {
        let anchor = format!(r#"data-series="{series}""#);
        let chart = rows(&page.body, &anchor, "chart");
        assert_eq!(chart.len(), 60, "{series}: an hour of minutes");
        for (col, stat, name) in [
            ("min", Statistic::Min, "min"),
            ("avg", Statistic::Avg, "avg"),
            ("max", Statistic::Max, "max"),
        ] {
            let info = metric_info(&sql, &request(family, "m", name, "1h"), NOW)
                .await
                .unwrap();
            let label = if family == "cpu" {
                "cpu_utilization"
            } else {
                "bytes_in"
            };
            let api_values: BTreeMap<i64, f64> = crate::api::tests::answered(&info, label);
            assert_close(
                &column(&chart, col),
                &api_values,
                &format!("{series} {col} = the API's"),
            );
            let samples: Vec<(i64, f64)> = if family == "cpu" {
                (0..N).map(|i| (T0 + i * STEP, cpu(i))).collect()
            } else {
                rates()
            };
            let want = expected(samples.into_iter(), Period::Minute, stat, NOW - 3_600_000);
            assert_close(
                &column(&chart, col),
                &want,
                &format!("{series} {col} = the samples'"),
            );
        }
    }
    let hourly = get(&api, &format!("/vm/ns1/web/vm-1?range=24h&end={NOW}")).await;
    let chart = rows(&hourly.body, r#"data-series="cpu_utilization""#, "chart");
    let want = expected(
        (0..N).map(|i| (T0 + i * STEP, cpu(i))),
        Period::Hour,
        Statistic::Avg,
        0,
    );
    assert_close(&column(&chart, "avg"), &want, "24h: hourly windows");
    let tags = rows(&page.body, "<main", "tags");
    let tag = |k: &str| {
        tags.iter()
            .find(|r| r["key"] == k)
            .map(|r| r["value"].clone())
    };
    assert_eq!(tag("csp").as_deref(), Some("aws"));
    assert_eq!(tag("region").as_deref(), Some("eu-west-1"));
}

#[tokio::test]
async fn the_fleet_page_ranks_and_counts_from_the_window() {
    let (_dir, api) = lake().await;
    let page = get(&api, &format!("/?range=1h&end={NOW}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(stat(&page.body, "vms"), "1");
    assert_eq!(
        stat(&page.body, "silent"),
        "0",
        "the last sample is 20 s before the end"
    );
    let busiest = rows(&page.body, "<main", "busiest-cpu");
    let want: f64 = {
        let from = NOW - 3_600_000;
        let v: Vec<f64> = (0..N).filter(|i| T0 + i * STEP >= from).map(cpu).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let got: f64 = busiest[0]["value"].parse().unwrap();
    assert!((got - want).abs() <= 1e-9 * want.abs(), "{got} vs {want}");
    let heat = rows(&page.body, "<main", "heatmap");
    let per_minute: u64 = heat.iter().map(|r| r["vms"].parse::<u64>().unwrap()).sum();
    assert_eq!(per_minute, 60, "one VM in one band per minute");
    let later = get(&api, &format!("/?range=1h&end={}", NOW + 10 * 60_000)).await;
    assert_eq!(
        stat(&later.body, "silent"),
        "1",
        "10 minutes after its last sample"
    );
}

#[tokio::test]
async fn dead_letters_show_their_reason_and_raw_bytes_and_ingest_counts_the_batch_files() {
    let (dir, api) = lake().await;
    let page = get(&api, &format!("/dlq?range=1h&end={}", NOW + 60_000)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(stat(&page.body, "rejected"), "1");
    let recent = rows(&page.body, "<main", "dlq-recent");
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["offset"], "7");
    assert_eq!(recent[0]["partition"], "1");
    let record = get(&api, "/dlq/record?topic=metrics&partition=1&offset=7").await;
    assert_eq!(record.status, StatusCode::OK, "{}", record.body);
    let escaped = BAD
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        record
            .body
            .contains(&format!("<pre data-raw>{escaped}</pre>")),
        "{}",
        record.body
    );
    // The window's hours hold every raw batch file (the samples span 12:00-15:00); the newest
    // holds the last sample, and each landed (by the wall clock) after it.
    let page = get(&api, &format!("/dlq?range=6h&end={}", NOW + 60_000)).await;
    let raw_files = walk(&dir.path().join("raw"));
    assert_eq!(stat(&page.body, "ingest-files"), raw_files.to_string());
    let landed = rows(&page.body, "<main", "ingest");
    let newest = landed
        .iter()
        .map(|r| r["newest"].parse::<i64>().unwrap())
        .max();
    assert_eq!(newest, Some(T0 + (N - 1) * STEP));
    for r in &landed {
        let (written, newest, delay): (i64, i64, i64) = (
            r["written"].parse().unwrap(),
            r["newest"].parse().unwrap(),
            r["delay_ms"].parse().unwrap(),
        );
        assert_eq!(delay, written - newest);
        assert!(written > NOW, "written now, a year after its samples");
    }
    let missing = get(&api, "/dlq/record?topic=metrics&partition=1&offset=8").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                walk(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "parquet"))
            }
        })
        .sum()
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_errors_are_pages_with_their_status() {
    let (_dir, api) = lake().await;
    for uri in [
        "/",
        "/vms?csp=aws",
        "/vm/ns1/web/vm-1",
        "/alarms",
        "/dlq",
        "/console/style.css",
    ] {
        let page = get(&api, uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.body);
        assert_eq!(
            page.headers[header::CONTENT_SECURITY_POLICY],
            super::CSP,
            "{uri}"
        );
        assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
        assert!(!page.body.contains("<script"), "{uri}");
    }
    let bad = get(&api, "/?range=2h").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body
            .contains("range: &quot;2h&quot;: use one of 1h, 6h, 24h, 7d"),
        "{}",
        bad.body
    );
    assert!(
        bad.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let unknown = get(&api, "/vm/ns1/web/vm-404").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("vm-404"));
    let vms = get(&api, "/vms?csp=gcp").await;
    assert_eq!(stat(&vms.body, "vms"), "0", "filtered by csp");
    let injected = get(&api, "/vm/ns1/web/%3Cscript%3Ex").await;
    assert!(!injected.body.contains("<script"), "{}", injected.body);
}
