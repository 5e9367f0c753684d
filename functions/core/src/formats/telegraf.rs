//! Telegraf's JSON serializer: `{"fields":{},"name":"","tags":{},"timestamp":N}` or `{"metrics":[...]}`.
//!
//! `timestamp` is an integer in whatever `json_timestamp_units` Telegraf was configured with
//! (seconds, milliseconds, microseconds or nanoseconds: the unit is detected by magnitude, see
//! [`timestamp_to_ms`](super::timestamp_to_ms)), or a string when `json_timestamp_format` is
//! set, which is accepted when it is RFC 3339. Field values are numbers, booleans or strings;
//! anything else is an error.

use std::collections::BTreeMap;

use damselfly_schemas::MetricMessage;
use serde::Deserialize;
use serde_json::Value;

use super::{FieldValue, Format, FormatError, JsonKeys, Origin, Point, points_to_messages};

/// Why a value is not Telegraf JSON of the serializer's shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TelegrafError {
    /// Not JSON, or JSON of another shape (missing `name`/`fields`, a tag that is not a string, ...).
    #[error("telegraf json: {0}")]
    Json(String),
    /// A metric with an empty `name`.
    #[error("{at}: empty metric name")]
    EmptyName {
        /// The metric.
        at: Origin,
    },
    /// A field whose value is not a number, boolean or string.
    #[error("{at}: field `{field}` is {found}, want a number, boolean or string")]
    FieldType {
        /// The metric.
        at: Origin,
        /// The field name.
        field: String,
        /// What the value is ("null", "an array", "an object").
        found: &'static str,
    },
    /// A timestamp that is neither an integer nor an RFC 3339 string.
    #[error(
        "{at}: timestamp {found}; want an integer (s, ms, µs or ns since the epoch) or an RFC 3339 string"
    )]
    Timestamp {
        /// The metric.
        at: Origin,
        /// What is wrong with it.
        found: String,
    },
}

#[derive(Deserialize)]
struct Batch {
    metrics: Vec<Metric>,
}

#[derive(Deserialize)]
struct Metric {
    name: String,
    fields: serde_json::Map<String, Value>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    timestamp: Value,
}

/// Parses one Telegraf JSON metric or a `{"metrics":[...]}` batch into points.
pub fn parse(value: &[u8]) -> Result<Vec<Point>, TelegrafError> {
    let keys = JsonKeys::probe(value).map_err(TelegrafError::Json)?;
    if keys.metrics {
        let batch: Batch = serde_json::from_slice(value).map_err(|e| json_error(&e, value))?;
        batch
            .metrics
            .into_iter()
            .enumerate()
            .map(|(i, m)| point(m, Origin::Telegraf(Some(i + 1))))
            .collect()
    } else {
        let metric: Metric = serde_json::from_slice(value).map_err(|e| json_error(&e, value))?;
        Ok(vec![point(metric, Origin::Telegraf(None))?])
    }
}

/// Parses Telegraf JSON and maps it onto native messages (see [`super::points_to_messages`]).
pub fn decode(value: &[u8]) -> Result<Vec<MetricMessage>, FormatError> {
    points_to_messages(&parse(value)?, Format::TelegrafJson)
}

fn json_error(e: &serde_json::Error, value: &[u8]) -> TelegrafError {
    TelegrafError::Json(super::json_reason(e, value))
}

fn point(metric: Metric, at: Origin) -> Result<Point, TelegrafError> {
    if metric.name.is_empty() {
        return Err(TelegrafError::EmptyName { at });
    }
    let mut fields = Vec::with_capacity(metric.fields.len());
    for (field, value) in metric.fields {
        let value = match value {
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => FieldValue::Integer(i),
                (None, Some(u), _) => FieldValue::Unsigned(u),
                (None, None, Some(x)) if x.is_finite() => FieldValue::Float(x),
                _ => {
                    return Err(TelegrafError::FieldType {
                        at,
                        field,
                        found: "a number out of range",
                    });
                }
            },
            Value::Bool(b) => FieldValue::Boolean(b),
            Value::String(s) => FieldValue::String(s),
            Value::Null => return Err(field_type(at, field, "null")),
            Value::Array(_) => return Err(field_type(at, field, "an array")),
            Value::Object(_) => return Err(field_type(at, field, "an object")),
        };
        fields.push((field, value));
    }
    Ok(Point {
        measurement: metric.name,
        tags: metric.tags.into_iter().collect(),
        fields,
        timestamp: timestamp(&metric.timestamp, at)?,
        origin: at,
    })
}

fn field_type(at: Origin, field: String, found: &'static str) -> TelegrafError {
    TelegrafError::FieldType { at, field, found }
}

fn timestamp(value: &Value, at: Origin) -> Result<Option<i64>, TelegrafError> {
    let bad = |found: String| TelegrafError::Timestamp { at, found };
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{n}` is not a 64-bit integer"))),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|e| bad(format!("`{}` is not RFC 3339 ({e})", clip(s)))),
        Value::Bool(_) => Err(bad("is a boolean".into())),
        Value::Array(_) => Err(bad("is an array".into())),
        Value::Object(_) => Err(bad("is an object".into())),
    }
}

/// At most 40 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::decode_value;

    const TAGS: &str = r#"{"nsId":"ns01","mcisId":"web","vmId":"vm-1","host":"h1"}"#;
    const TS_MS: i64 = 1_763_737_200_000;

    fn metric(name: &str, fields: &str, timestamp: &str) -> String {
        format!(r#"{{"fields":{fields},"name":"{name}","tags":{TAGS},"timestamp":{timestamp}}}"#)
    }

    fn err(input: &str) -> String {
        match decode_value(input.as_bytes()) {
            Ok(m) => panic!("{input} decoded: {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_the_serializer_shape() {
        let points = parse(
            metric(
                "cpu",
                r#"{"usage_idle":90.5,"n":3,"big":18446744073709551615,"ok":true,"s":"x"}"#,
                "1763737200",
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(points.len(), 1);
        let p = &points[0];
        assert_eq!(p.measurement, "cpu");
        assert_eq!(p.origin, Origin::Telegraf(None));
        assert_eq!(p.timestamp, Some(1_763_737_200));
        assert!(p.tags.contains(&("vmId".into(), "vm-1".into())));
        let field = |k: &str| {
            p.fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(field("usage_idle"), Some(FieldValue::Float(90.5)));
        assert_eq!(field("n"), Some(FieldValue::Integer(3)));
        assert_eq!(field("big"), Some(FieldValue::Unsigned(u64::MAX)));
        assert_eq!(field("ok"), Some(FieldValue::Boolean(true)));
        assert_eq!(field("s"), Some(FieldValue::String("x".into())));
    }

    #[test]
    fn every_timestamp_unit_gives_the_same_time() {
        for ts in [
            "1763737200",
            "1763737200000",
            "1763737200000000",
            "1763737200000000000",
            r#""2025-11-21T15:00:00Z""#,
            r#""2025-11-22T00:00:00+09:00""#,
        ] {
            let messages = decode_value(metric("mem", r#"{"used":1}"#, ts).as_bytes())
                .unwrap_or_else(|e| panic!("{ts}: {e}"));
            assert_eq!(messages.len(), 1);
            assert_eq!(messages[0].ts, TS_MS, "{ts}");
            assert_eq!(messages[0].metrics["mem_used"], 1.0);
        }
    }

    #[test]
    fn batch_form_groups_metrics_by_time() {
        let batch = format!(
            r#"{{"metrics":[{},{},{}]}}"#,
            metric("cpu", r#"{"usage_idle":75}"#, "1763737200"),
            metric("mem", r#"{"used_percent":50}"#, "1763737200"),
            metric("mem", r#"{"used_percent":60}"#, "1763737210"),
        );
        let points = parse(batch.as_bytes()).unwrap();
        let origins: Vec<Origin> = points.iter().map(|p| p.origin).collect();
        assert_eq!(
            origins,
            [1, 2, 3].map(|i| Origin::Telegraf(Some(i))).to_vec()
        );
        let messages = decode_value(batch.as_bytes()).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].ts, TS_MS);
        assert_eq!(messages[0].metrics["cpu_utilization"], 25.0);
        assert_eq!(messages[0].metrics["mem_utilization"], 50.0);
        assert_eq!(messages[0].tags.host, "h1");
        assert_eq!(messages[1].ts, TS_MS + 10_000);
        assert_eq!(messages[1].metrics["mem_utilization"], 60.0);
        // Errors name the metric of the batch.
        let bad = format!(
            r#"{{"metrics":[{},{}]}}"#,
            metric("cpu", r#"{"usage_idle":75}"#, "1763737200"),
            metric("mem", r#"{"used":[1]}"#, "1763737200"),
        );
        assert_eq!(
            err(&bad),
            "telegraf metric 2: field `used` is an array, want a number, boolean or string"
        );
        assert!(err(r#"{"metrics":[]}"#).contains("Telegraf JSON: no numeric fields"));
    }

    #[test]
    fn wrong_shapes_say_why() {
        let cases = [
            (
                metric("mem", r#"{"used":null}"#, "1"),
                "field `used` is null",
            ),
            (
                metric("mem", r#"{"used":{"a":1}}"#, "1"),
                "field `used` is an object",
            ),
            (
                metric("mem", r#"[1,2]"#, "1"),
                "telegraf json: invalid type: sequence, expected a map",
            ),
            (
                metric("", r#"{"used":1}"#, "1"),
                "telegraf metric: empty metric name",
            ),
            (
                metric("mem", r#"{"used":1}"#, "1.5"),
                "timestamp `1.5` is not a 64-bit integer",
            ),
            (
                metric("mem", r#"{"used":1}"#, "18446744073709551615"),
                "not a 64-bit integer",
            ),
            (
                metric("mem", r#"{"used":1}"#, "true"),
                "timestamp is a boolean",
            ),
            (
                metric("mem", r#"{"used":1}"#, r#""yesterday""#),
                "`yesterday` is not RFC 3339",
            ),
            (metric("mem", r#"{"used":1e400}"#, "1"), "out of range"),
            (
                metric("mem", r#"{"used":NaN}"#, "1"),
                "JSON has no NaN or Infinity",
            ),
            (
                r#"{"name":"mem","fields":{"used":1},"tags":{"vmId":5},"timestamp":1}"#.to_owned(),
                "telegraf json: invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"name":"mem","tags":{},"timestamp":1}"#.to_owned(),
                "telegraf json: missing field `fields`",
            ),
            (
                r#"{"metrics":{"name":"mem"}}"#.to_owned(),
                "telegraf json: invalid type: map, expected a sequence",
            ),
        ];
        for (input, want) in cases {
            let got = err(&input);
            assert!(got.contains(want), "{input}: got `{got}`, want `{want}`");
        }
        let truncated = metric("mem", r#"{"used":1}"#, "1");
        for end in [1, 10, truncated.len() - 1] {
            let got = err(&truncated[..end]);
            assert!(got.contains("invalid JSON") && got.contains("EOF"), "{got}");
        }
        // Tested directly, the parser reports its own errors.
        assert_eq!(
            parse(b" [1]").unwrap_err().to_string(),
            "telegraf json: a JSON array; want a JSON object"
        );
        assert_eq!(
            parse(b"cpu f=1").unwrap_err().to_string(),
            "telegraf json: not a JSON object"
        );
        assert_eq!(
            parse(b"{\"name\":").unwrap_err().to_string(),
            "telegraf json: invalid JSON (EOF while parsing a value at line 1 column 8)"
        );
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(50);
        assert_eq!(clip(&long).chars().count(), 41);
    }
}
