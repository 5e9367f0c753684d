//! The Grafana dashboards of `infra/grafana/dashboards/` against the Prometheus routes: their
//! structure (uids, the `damselfly` data source, panels, targets, variables), then every query
//! they send, each target's expression and each template variable's `label_values`, answered
//! through the router over the test lake (`api::tests::write_lake`) as Grafana would send it.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use damselfly_schemas::catalog::{self, Family};
use promql_parser::label::MatchOp;
use serde_json::Value;

use super::eval::{self, Range};
use super::model::METRIC_NAME;
use super::tests::over_the_lake::{api, call};
use crate::api::Api;
use crate::api::tests::{NOW, T0};

/// The dashboards as Grafana's file provider reads them: file name, uid, title, JSON.
const DASHBOARDS: [(&str, &str, &str, &str); 2] = [
    (
        "fleet.json",
        "damselfly-fleet",
        "Damselfly fleet overview",
        include_str!("../../../../infra/grafana/dashboards/fleet.json"),
    ),
    (
        "vm.json",
        "damselfly-vm",
        "Damselfly VM",
        include_str!("../../../../infra/grafana/dashboards/vm.json"),
    ),
];

/// The uid of the provisioned data source (`infra/grafana/provisioning/datasources/`).
const DATASOURCE_UID: &str = "damselfly";

/// Panels of the one-VM dashboard.
const VM_PANELS: usize = 12;

/// Grafana's variables as the test sets them: the test lake's VM, and the intervals of a
/// 2-hour range at a 60 s step.
const VARIABLES: [(&str, &str); 6] = [
    ("ns", "ns1"),
    ("mcis", "web"),
    ("vm", "vm-1"),
    ("__rate_interval", "1m"),
    ("__interval", "20s"),
    ("__range", "1h"),
];

/// The metrics the test lake holds: a query over these only must answer series.
const HELD: [&str; 4] = ["cpu_utilization", "load_avg_1", "bytes_in", "disk_used"];

/// The range queried: the last 2 hours of the lake, at a 60 s step.
const WINDOW_MS: i64 = 2 * 3600 * 1000;
const STEP_S: &str = "60";
const _: () = assert!(NOW - WINDOW_MS >= T0, "the window lies within the lake");

fn dashboards() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    DASHBOARDS
        .iter()
        .map(|(file, uid, title, text)| {
            let json =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
            (*file, *uid, *title, json)
        })
        .collect()
}

/// Every panel, those inside a row included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("a panels array") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

fn targets(p: &Value) -> &[Value] {
    p["targets"].as_array().map_or(&[], Vec::as_slice)
}

fn variables(d: &Value) -> &[Value] {
    d["templating"]["list"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// A variable's query: a string, or the `query` of the variable query editor's object.
fn variable_query(v: &Value) -> &str {
    v["query"]
        .as_str()
        .or_else(|| v["query"]["query"].as_str())
        .unwrap_or_else(|| panic!("variable {} has no query", v["name"]))
}

/// `text` with Grafana's variables (`$name`, `${name}`, `${name:format}`) set from [`VARIABLES`];
/// panics on one it does not know. A `$` not followed by a name (`$1` of `label_replace`) stays.
fn substitute(text: &str) -> String {
    let value = |name: &str| {
        VARIABLES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("unknown Grafana variable ${name} in {text}"))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("a closing brace");
            let name = braced[..end].split(':').next().unwrap_or_default();
            out.push_str(value(name));
            rest = &braced[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                out.push('$');
                rest = after;
            } else {
                out.push_str(value(name));
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The catalog metrics an expression (its variables set) selects; panics on a selector that names
/// no metric or one outside the catalog, or an expression Damselfly does not evaluate.
fn metrics_of(expr: &str) -> BTreeSet<&'static str> {
    let parsed = super::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let selections =
        eval::plan(&parsed, &Range::instant(NOW)).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut out = BTreeSet::new();
    for sel in &selections {
        let names: Vec<&str> = sel
            .matchers
            .iter()
            .filter(|m| m.name == METRIC_NAME)
            .flat_map(|m| match &m.op {
                MatchOp::Equal => vec![m.value.as_str()],
                MatchOp::Re(_) => m.value.split('|').collect(),
                _ => panic!("{expr}: {} selects metrics by exclusion", sel.text),
            })
            .collect();
        assert!(!names.is_empty(), "{expr}: {} names no metric", sel.text);
        for name in names {
            let def = catalog::lookup(name)
                .unwrap_or_else(|| panic!("{expr}: {name} is not in the catalog"));
            out.insert(def.name);
        }
    }
    out
}

/// `label_values(selector, label)` or `label_values(label)`: the selector and the label.
fn label_values_args(query: &str) -> (Option<&str>, &str) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{query:?} is not label_values(...)"));
    match inner.rsplit_once(',') {
        Some((sel, label)) => (Some(sel.trim()), label.trim()),
        None => (None, inner.trim()),
    }
}

fn int(v: &Value, what: &str) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{what} is not an integer: {v}"))
}

#[test]
fn dashboards_are_grafana_dashboards_over_the_damselfly_data_source() {
    for (file, uid, title, d) in dashboards() {
        assert_eq!(d["uid"], uid, "{file}");
        assert_eq!(d["title"], title, "{file}");
        let schema = int(&d["schemaVersion"], "schemaVersion");
        assert!(
            (38..=39).contains(&schema),
            "{file}: schemaVersion {schema}"
        );

        let names: Vec<&str> = variables(&d)
            .iter()
            .map(|v| v["name"].as_str().expect("a variable name"))
            .collect();
        let want: &[&str] = if uid == "damselfly-vm" {
            &["ns", "mcis", "vm"]
        } else {
            &["ns", "mcis"]
        };
        assert_eq!(names, want, "{file}: variables");
        for v in variables(&d) {
            let what = format!("{file}: variable {}", v["name"]);
            assert_eq!(v["type"], "query", "{what}");
            assert_eq!(v["datasource"]["type"], "prometheus", "{what}");
            assert_eq!(v["datasource"]["uid"], DATASOURCE_UID, "{what}");
            assert!(
                int(&v["refresh"], "refresh") >= 1,
                "{what}: never refreshed"
            );
            label_values_args(variable_query(v));
            let multi = v["multi"] == true && v["includeAll"] == true;
            // The fleet filters on any set of namespaces and MCISes; the VM dashboard shows one.
            assert_eq!(multi, uid == "damselfly-fleet", "{what}: multi and All");
        }

        let panels = panels(&d);
        if uid == "damselfly-vm" {
            assert_eq!(panels.len(), VM_PANELS, "{file}: panels");
        }
        let mut ids = BTreeSet::new();
        let mut boxes = Vec::new();
        for p in &panels {
            let what = format!("{file}: panel {}", p["title"]);
            assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{what}");
            assert!(ids.insert(int(&p["id"], "id")), "{what}: id repeated");
            assert_eq!(p["datasource"]["type"], "prometheus", "{what}");
            assert_eq!(p["datasource"]["uid"], DATASOURCE_UID, "{what}");
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                int(&g["x"], "x"),
                int(&g["y"], "y"),
                int(&g["w"], "w"),
                int(&g["h"], "h"),
            );
            assert!(
                x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
                "{what}: gridPos {g}"
            );
            for (other, (ox, oy, ow, oh)) in &boxes {
                let apart = x + w <= *ox || *ox + *ow <= x || y + h <= *oy || *oy + *oh <= y;
                assert!(apart, "{what} overlaps {other}");
            }
            boxes.push((p["title"].clone(), (x, y, w, h)));

            assert!(!targets(p).is_empty(), "{what}: no target");
            let mut refs = BTreeSet::new();
            for t in targets(p) {
                let expr = t["expr"].as_str().expect("a target expr");
                let legend = t["legendFormat"].as_str().expect("a legendFormat");
                assert!(
                    refs.insert(t["refId"].as_str().expect("a refId")),
                    "{what}: refId repeated"
                );
                if !t["datasource"].is_null() {
                    assert_eq!(t["datasource"]["uid"], DATASOURCE_UID, "{what}: {expr}");
                }
                let metrics = metrics_of(&substitute(expr));
                assert!(!metrics.is_empty(), "{what}: {expr} selects no metric");
                // Per-device families keep `device` on the VM dashboard: the legend must show it.
                let per_device = metrics.iter().any(|m| {
                    matches!(
                        catalog::lookup(m).map(|d| d.family),
                        Some(Family::Disk | Family::Diskio | Family::Network)
                    )
                });
                if uid == "damselfly-vm" && per_device {
                    assert!(
                        legend.contains("{{device}}"),
                        "{what}: {expr} legend {legend:?}"
                    );
                }
            }
        }
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn secs(ms: i64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

/// A query as Grafana's data source sends it with `httpMethod: POST`: a range query over the
/// window, or (a table's `instant` target) an instant query at its end.
async fn query(api: &Arc<Api>, expr: &str, instant: bool) -> (StatusCode, Value) {
    let (start, end) = (secs(NOW - WINDOW_MS), secs(NOW));
    let (path, body) = if instant {
        ("/api/v1/query", form(&[("query", expr), ("time", &end)]))
    } else {
        let params = [
            ("query", expr),
            ("start", &start),
            ("end", &end),
            ("step", STEP_S),
        ];
        ("/api/v1/query_range", form(&params))
    };
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    call(api, req).await
}

/// One label's values, as Grafana asks for a `label_values` variable.
async fn label_values(api: &Arc<Api>, label: &str, selector: Option<&str>) -> (StatusCode, Value) {
    let (start, end) = (secs(NOW - WINDOW_MS), secs(NOW));
    let mut pairs = vec![("start", start.as_str()), ("end", end.as_str())];
    pairs.extend(selector.map(|s| ("match[]", s)));
    let req = Request::get(format!("/api/v1/label/{label}/values?{}", form(&pairs)))
        .body(Body::empty())
        .unwrap();
    call(api, req).await
}

#[tokio::test]
async fn every_dashboard_query_is_answered_over_the_lake() {
    let (_dir, api) = api().await;

    let mut failures = Vec::new();
    let mut answered = BTreeSet::new();
    let mut queries = 0;
    for (file, _, _, d) in dashboards() {
        for v in variables(&d) {
            let query = substitute(variable_query(v));
            let (selector, label) = label_values_args(&query);
            let (status, body) = label_values(&api, label, selector).await;
            let name = v["name"].as_str().unwrap_or_default();
            let want = VARIABLES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            let values = body["data"].as_array().cloned().unwrap_or_default();
            if status != StatusCode::OK
                || body["status"] != "success"
                || !want.is_some_and(|w| values.iter().any(|x| x == w))
            {
                failures.push(format!(
                    "{file}: variable {name}: {query}\n  {status} {body}"
                ));
            }
        }
        for p in panels(&d) {
            for t in targets(p) {
                let expr = substitute(t["expr"].as_str().unwrap_or_default());
                // Every target as a range query; a table's instant target also as the instant
                // query Grafana sends for it.
                let modes: &[bool] = if t["instant"] == true {
                    &[false, true]
                } else {
                    &[false]
                };
                for &instant in modes {
                    queries += 1;
                    let kind = if instant { "instant" } else { "range" };
                    let what = format!("{file}: {} ({}, {kind})", p["title"], t["refId"]);
                    let (status, body) = query(&api, &expr, instant).await;
                    if status != StatusCode::OK || body["status"] != "success" {
                        failures.push(format!("{what}: {expr}\n  {status} {body}"));
                        continue;
                    }
                    let want = if instant { "vector" } else { "matrix" };
                    assert_eq!(body["data"]["resultType"], want, "{what}: {expr}");
                    let metrics = metrics_of(&expr);
                    let result = body["data"]["result"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if metrics.iter().all(|m| HELD.contains(m)) {
                        if result.is_empty() {
                            failures
                                .push(format!("{what}: {expr}\n  no series from the test lake"));
                        } else {
                            answered.extend(metrics.iter().copied());
                        }
                    }
                    if p["title"] == "VMs reporting" {
                        let ones = result.iter().all(|s| {
                            s["values"]
                                .as_array()
                                .is_some_and(|v| v.iter().all(|x| x[1] == "1"))
                        });
                        assert!(
                            ones && result.len() == 1,
                            "{what}: {expr}: one VM at every step: {body}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {queries} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        answered,
        BTreeSet::from(HELD),
        "every metric of the test lake is shown by some panel"
    );
}
