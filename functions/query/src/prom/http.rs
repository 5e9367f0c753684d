//! Prometheus's HTTP API routes (`/api/v1/...`), with its envelope, error types and status codes.
//!
//! Every answer is `{"status":"success","data":...}` or
//! `{"status":"error","errorType":...,"error":...}`: 400 `bad_data` for a bad parameter or query,
//! 422 `execution` for a query that cannot be evaluated (unsupported, too many samples), 503
//! `timeout`, 500 `internal` when the lake cannot answer. Parameters come from the URL and, for a
//! POST, from its form-encoded body, as Prometheus reads them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::model::{Labels, PromError, QueryValue, Series, format_value};
use super::{Limits, Range, lake};
use crate::api::Api;

/// Path of the instant query.
pub const QUERY: &str = "/api/v1/query";
/// Path of the range query.
pub const QUERY_RANGE: &str = "/api/v1/query_range";
/// Path of the series listing.
pub const SERIES: &str = "/api/v1/series";
/// Path of the label names.
pub const LABELS: &str = "/api/v1/labels";
/// Path of one label's values, in axum's syntax.
pub const LABEL_VALUES: &str = "/api/v1/label/{name}/values";
/// Path of the metric metadata.
pub const METADATA: &str = "/api/v1/metadata";
/// Path of the build information Grafana reads to learn the server's version.
pub const BUILDINFO: &str = "/api/v1/status/buildinfo";

/// The Prometheus version whose query semantics Damselfly follows (and reports in buildinfo).
pub const PROMETHEUS_VERSION: &str = "2.42.0";

/// How far back series and label listings look when the request gives no `start`.
pub const DEFAULT_LISTING_SPAN_MS: i64 = 24 * 3600 * 1000;

/// Most series a `/api/v1/series` answer lists.
pub const MAX_LISTED_SERIES: usize = 100_000;

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "promql request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "promql request rejected");
        }
        (
            status,
            axum::Json(json!({"status": "error", "errorType": self.error_type(), "error": self.to_string()})),
        )
            .into_response()
    }
}

fn success(data: Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// A request's parameters: the URL's, then a form body's.
struct Params(Vec<(String, String)>);

impl Params {
    fn read(uri: &Uri, body: &[u8]) -> Self {
        let mut v: Vec<(String, String)> = uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        v.extend(url::form_urlencoded::parse(body).into_owned());
        Params(v)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, name: &str, default: i64) -> Result<i64, PromError> {
        self.get(name).map_or(Ok(default), |s| {
            parse_time(s).ok_or_else(|| {
                PromError::BadData(format!(
                    "invalid parameter \"{name}\": cannot parse \"{s}\" to a valid timestamp"
                ))
            })
        })
    }

    fn required_time(&self, name: &str) -> Result<i64, PromError> {
        self.required(name)?;
        self.time(name, 0)
    }

    fn duration(&self, name: &str) -> Result<Option<i64>, PromError> {
        self.get(name)
            .map(|s| {
                parse_duration(s).ok_or_else(|| {
                    PromError::BadData(format!(
                        "invalid parameter \"{name}\": cannot parse \"{s}\" to a valid duration"
                    ))
                })
            })
            .transpose()
    }

    fn required(&self, name: &str) -> Result<&str, PromError> {
        self.get(name)
            .ok_or_else(|| PromError::BadData(format!("invalid parameter \"{name}\": missing")))
    }
}

/// A time as Prometheus accepts one: Unix seconds (fractions to the millisecond) or RFC 3339.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = s.parse::<f64>() {
        if !t.is_finite() {
            return None;
        }
        let secs = t.trunc();
        let ms = ((t - secs) * 1000.0).round();
        return Some(secs as i64 * 1000 + ms as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A duration as Prometheus accepts one: seconds as a number, or `1h30m`-style units.
pub fn parse_duration(s: &str) -> Option<i64> {
    if let Ok(d) = s.parse::<f64>() {
        let ms = d * 1000.0;
        return (ms.is_finite() && ms.abs() < i64::MAX as f64).then_some(ms.round() as i64);
    }
    promql_parser::util::parse_duration(s)
        .ok()
        .map(|d| d.as_millis() as i64)
}

fn seconds(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

fn metric(labels: &Labels) -> Value {
    Value::Object(
        labels
            .pairs()
            .iter()
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn matrix(series: &[Series]) -> Value {
    Value::Array(
        series
            .iter()
            .map(|s| {
                let values: Vec<Value> = s
                    .samples
                    .iter()
                    .map(|(t, v)| json!([seconds(*t), format_value(*v)]))
                    .collect();
                json!({"metric": metric(&s.labels), "values": values})
            })
            .collect(),
    )
}

/// The `data` of a query answer.
pub fn data(value: &QueryValue) -> Value {
    let result = match value {
        QueryValue::Scalar(t, v) => json!([seconds(*t), format_value(*v)]),
        QueryValue::String(t, s) => json!([seconds(*t), s]),
        QueryValue::Vector(t, v) => Value::Array(
            v.iter()
                .map(|s| json!({"metric": metric(&s.labels), "value": [seconds(*t), format_value(s.value)]}))
                .collect(),
        ),
        QueryValue::Matrix(m) => matrix(m),
    };
    json!({"resultType": value.result_type(), "result": result})
}

async fn run(api: &Api, params: &Params, range: Range) -> Result<Response, PromError> {
    let text = params.required("query")?;
    let sql = api.sql().await;
    let limits = Limits::default();
    let fut = super::query(&sql, text, range, &limits);
    let value = match params.duration("timeout")? {
        Some(ms) if ms > 0 => tokio::time::timeout(Duration::from_millis(ms as u64), fut)
            .await
            .map_err(|_| PromError::Timeout("query timed out in expression evaluation".into()))??,
        _ => fut.await?,
    };
    Ok(success(data(&value)))
}

async fn instant_query(
    State(api): State<Arc<Api>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, PromError> {
    let params = Params::read(&uri, &body);
    let t = params.time("time", api.now_ms())?;
    run(&api, &params, Range::instant(t)).await
}

async fn range_query(
    State(api): State<Arc<Api>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, PromError> {
    let params = Params::read(&uri, &body);
    let start = params.required_time("start")?;
    let end = params.required_time("end")?;
    let step = params
        .duration("step")?
        .ok_or_else(|| PromError::BadData("invalid parameter \"step\": missing".into()))?;
    run(&api, &params, Range::stepped(start, end, step)?).await
}

/// The `match[]` selectors of a listing, each as its matchers.
fn selectors(params: &Params) -> Result<Vec<Vec<promql_parser::label::Matcher>>, PromError> {
    params
        .all("match[]")
        .into_iter()
        .map(|s| match super::parse(s) {
            Ok(promql_parser::parser::Expr::VectorSelector(vs)) => {
                let mut m = vs.matchers.matchers.clone();
                if let Some(name) = &vs.name {
                    m.push(promql_parser::label::Matcher::new(
                        promql_parser::label::MatchOp::Equal,
                        super::model::METRIC_NAME,
                        name,
                    ));
                }
                Ok(m)
            }
            _ => Err(PromError::BadData(format!(
                "invalid parameter \"match[]\": {s} is not a series selector"
            ))),
        })
        .collect()
}

fn listing_span(api: &Api, params: &Params) -> Result<(i64, i64), PromError> {
    let end = params.time("end", api.now_ms())?;
    let start = params.time("start", end - DEFAULT_LISTING_SPAN_MS)?;
    Ok((start, end))
}

async fn series(State(api): State<Arc<Api>>, uri: Uri, body: Bytes) -> Result<Response, PromError> {
    let params = Params::read(&uri, &body);
    let sets = selectors(&params)?;
    if sets.is_empty() {
        return Err(PromError::BadData("no match[] parameter provided".into()));
    }
    let (from, to) = listing_span(&api, &params)?;
    let sql = api.sql().await;
    let refs: Vec<&[_]> = sets.iter().map(Vec::as_slice).collect();
    let found = lake::series(&sql, &refs, from, to, MAX_LISTED_SERIES).await?;
    Ok(success(Value::Array(found.iter().map(metric).collect())))
}

async fn label_names(
    State(api): State<Arc<Api>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, PromError> {
    let params = Params::read(&uri, &body);
    let sets = selectors(&params)?;
    let (from, to) = listing_span(&api, &params)?;
    let sql = api.sql().await;
    let refs: Vec<&[_]> = sets.iter().map(Vec::as_slice).collect();
    let mut names = Vec::new();
    for label in lake::LABELS {
        if !lake::label_values(&sql, label, &refs, from, to)
            .await?
            .is_empty()
        {
            names.push(label);
        }
    }
    names.sort_unstable();
    Ok(success(json!(names)))
}

async fn label_values(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, PromError> {
    let params = Params::read(&uri, &[]);
    let sets = selectors(&params)?;
    let (from, to) = listing_span(&api, &params)?;
    let sql = api.sql().await;
    let refs: Vec<&[_]> = sets.iter().map(Vec::as_slice).collect();
    Ok(success(json!(
        lake::label_values(&sql, &name, &refs, from, to).await?
    )))
}

async fn metadata(uri: Uri) -> Response {
    let params = Params::read(&uri, &[]);
    let wanted = params.get("metric");
    let mut out = serde_json::Map::new();
    for m in damselfly_schemas::catalog::METRICS {
        if wanted.is_some_and(|w| w != m.name) {
            continue;
        }
        let kind = match m.kind {
            damselfly_schemas::Kind::Gauge => "gauge",
            damselfly_schemas::Kind::Counter => "counter",
        };
        out.insert(
            m.name.to_owned(),
            json!([{"type": kind, "help": format!("{} {} ({})", m.family.name(), m.name, m.unit), "unit": m.unit}]),
        );
    }
    success(Value::Object(out))
}

async fn buildinfo() -> Response {
    success(json!({
        "version": PROMETHEUS_VERSION,
        "revision": format!("damselfly {}", env!("CARGO_PKG_VERSION")),
        "branch": "damselfly",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

/// The Prometheus API's routes (GET, and POST where Prometheus takes a form body).
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route(QUERY, get(instant_query).post(instant_query))
        .route(QUERY_RANGE, get(range_query).post(range_query))
        .route(SERIES, get(series).post(series))
        .route(LABELS, get(label_names).post(label_names))
        .route(LABEL_VALUES, get(label_values))
        .route(METADATA, get(metadata))
        .route(BUILDINFO, get(buildinfo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_parse_as_prometheus_parses_them() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("1700000000.1234"), Some(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_duration("15"), Some(15_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000));
        assert_eq!(parse_duration("0.5"), Some(500));
        assert_eq!(parse_duration("fast"), None);
    }
}
