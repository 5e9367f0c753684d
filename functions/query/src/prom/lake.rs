//! The series model over the lake's `raw` table: selectors become SQL, rows become series.
//!
//! A series is one (metric, ns, mcis, vm, csp, region, os, device) of `raw`; its labels are
//! `__name__` (the metric) and the tag columns, `device` only where it is not empty. Counters are
//! stored as the agent's running totals, so `rate()` sees what it expects. Matchers on these
//! labels are pushed into the SQL (`=~` as DataFusion's anchored `~`, the same regex engine the
//! parser validated with); a matcher on any other label compares against the empty string, as
//! Prometheus does for an absent label.

use std::collections::HashMap;

use arrow::array::{Array as _, AsArray as _, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use futures::TryStreamExt as _;
use promql_parser::label::{MatchOp, Matcher};

use super::eval::Selection;
use super::model::{Labels, METRIC_NAME, PromError, Series};
use crate::LakeSql;
use crate::api::metric::{partitions_from, quote, ts_literal};

/// Labels in the order of [`COLUMNS`]: the metric name, the tags, and the device.
pub const LABELS: [&str; 8] = [
    METRIC_NAME,
    "ns",
    "mcis",
    "vm",
    "csp",
    "region",
    "os",
    "device",
];
/// The `raw` column behind each of [`LABELS`].
pub const COLUMNS: [&str; 8] = [
    "metric", "ns", "mcis", "vm", "csp", "region", "os", "device",
];

/// Bounds on what one query may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most samples all of a query's selectors may load (Prometheus's `--query.max-samples`
    /// counts the same kind of thing; its default is 50,000,000).
    pub max_samples: usize,
    /// Most series one selector may select.
    pub max_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_samples: 20_000_000,
            max_series: 100_000,
        }
    }
}

fn column(label: &str) -> Option<&'static str> {
    LABELS.iter().position(|l| *l == label).map(|i| COLUMNS[i])
}

/// The SQL condition of one matcher.
fn condition(m: &Matcher) -> String {
    let Some(col) = column(&m.name) else {
        return if m.is_match("") { "TRUE" } else { "FALSE" }.into();
    };
    match &m.op {
        MatchOp::Equal => format!("{col} = {}", quote(&m.value)),
        MatchOp::NotEqual => format!("{col} <> {}", quote(&m.value)),
        MatchOp::Re(r) => format!("{col} ~ {}", quote(r.as_str())),
        MatchOp::NotRe(r) => format!("{col} !~ {}", quote(r.as_str())),
    }
}

/// A predicate on the `dt`/`hour` partition columns that keeps the partitions up to `ms`.
fn partitions_until(ms: i64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else {
        return "TRUE".into();
    };
    let (dt, hour) = (t.format("%Y-%m-%d"), t.format("%H"));
    format!("(dt < '{dt}' OR (dt = '{dt}' AND hour <= '{hour}'))")
}

/// The `WHERE` clause of rows in `[from, to]` that every matcher of one of `sets` accepts.
fn filter(sets: &[&[Matcher]], from: i64, to: i64) -> String {
    let sets: Vec<String> = sets
        .iter()
        .map(|ms| {
            let c: Vec<String> = ms.iter().map(condition).collect();
            if c.is_empty() {
                "TRUE".into()
            } else {
                format!("({})", c.join(" AND "))
            }
        })
        .collect();
    format!(
        "{} AND {} AND ts >= {} AND ts <= {} AND ({})",
        partitions_from(from),
        partitions_until(to),
        ts_literal(from),
        ts_literal(to),
        sets.join(" OR ")
    )
}

fn internal(e: impl std::fmt::Display) -> PromError {
    PromError::Internal(format!("the lake could not answer: {e}"))
}

fn strings(batch: &RecordBatch, i: usize) -> Result<arrow::array::ArrayRef, PromError> {
    cast(batch.column(i), &DataType::Utf8).map_err(internal)
}

fn labels_of(cols: &[arrow::array::ArrayRef], row: usize) -> Labels {
    Labels::new(LABELS.iter().zip(cols).map(|(name, c)| {
        let c = c.as_string::<i32>();
        let v = if c.is_null(row) { "" } else { c.value(row) };
        (name.to_string(), v.to_owned())
    }))
}

/// Every series `sel` selects, with its samples in `[sel.from, sel.to]`, sorted by labels;
/// `budget` is the number of samples the query may still load and is reduced by what this loads.
pub async fn fetch(
    sql: &LakeSql,
    sel: &Selection,
    limits: &Limits,
    budget: &mut usize,
) -> Result<Vec<Series>, PromError> {
    if !sql.holds_files("raw") {
        return Ok(Vec::new());
    }
    let q = format!(
        "SELECT {}, CAST(ts AS BIGINT) AS t, value FROM raw WHERE {}",
        COLUMNS.join(", "),
        filter(&[&sel.matchers], sel.from, sel.to)
    );
    let mut stream = sql
        .context()
        .sql(&q)
        .await
        .map_err(internal)?
        .execute_stream()
        .await
        .map_err(internal)?;
    let mut series: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
    while let Some(batch) = stream.try_next().await.map_err(internal)? {
        if batch.num_rows() > *budget {
            return Err(PromError::Execution(format!(
                "query processing would load too many samples into memory in query execution (the limit is {})",
                limits.max_samples
            )));
        }
        *budget -= batch.num_rows();
        let cols: Vec<_> = (0..COLUMNS.len())
            .map(|i| strings(&batch, i))
            .collect::<Result<_, _>>()?;
        let t = cast(batch.column(COLUMNS.len()), &DataType::Int64).map_err(internal)?;
        let t = t.as_primitive::<arrow::datatypes::Int64Type>();
        let v = cast(batch.column(COLUMNS.len() + 1), &DataType::Float64).map_err(internal)?;
        let v = v.as_primitive::<arrow::datatypes::Float64Type>();
        // Rows of one series come together (files are sorted by vm, metric, device, ts): look
        // the labels up once per run.
        let mut row = 0;
        while row < batch.num_rows() {
            let labels = labels_of(&cols, row);
            let mut end = row + 1;
            while end < batch.num_rows() && labels_of(&cols, end) == labels {
                end += 1;
            }
            let entry = series.entry(labels).or_default();
            entry.extend((row..end).map(|r| (t.value(r), v.value(r))));
            row = end;
        }
        if series.len() > limits.max_series {
            return Err(PromError::Execution(format!(
                "{} selects more than {} series: narrow its matchers",
                sel.text, limits.max_series
            )));
        }
    }
    let mut out: Vec<Series> = series
        .into_iter()
        .map(|(labels, mut samples)| {
            samples.sort_by_key(|s| s.0);
            samples.dedup_by_key(|s| s.0);
            Series { labels, samples }
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// The label sets of the series any of `sets` selects in `[from, to]`, sorted, at most `limit`.
pub async fn series(
    sql: &LakeSql,
    sets: &[&[Matcher]],
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<Labels>, PromError> {
    if !sql.holds_files("raw") {
        return Ok(Vec::new());
    }
    let q = format!(
        "SELECT DISTINCT {} FROM raw WHERE {} LIMIT {}",
        COLUMNS.join(", "),
        filter(sets, from, to),
        limit + 1
    );
    let batches = sql.query(&q).await.map_err(internal)?;
    let mut out = Vec::new();
    for b in &batches {
        let cols: Vec<_> = (0..COLUMNS.len())
            .map(|i| strings(b, i))
            .collect::<Result<_, _>>()?;
        out.extend((0..b.num_rows()).map(|r| labels_of(&cols, r)));
    }
    if out.len() > limit {
        return Err(PromError::Execution(format!(
            "more than {limit} series match: narrow the match[] selectors or the time range"
        )));
    }
    out.sort();
    Ok(out)
}

/// The values `label` takes in the series any of `sets` (all series when empty) selects in
/// `[from, to]`, sorted.
pub async fn label_values(
    sql: &LakeSql,
    label: &str,
    sets: &[&[Matcher]],
    from: i64,
    to: i64,
) -> Result<Vec<String>, PromError> {
    let Some(col) = column(label) else {
        return Ok(Vec::new());
    };
    if !sql.holds_files("raw") {
        return Ok(Vec::new());
    }
    let all: [&[Matcher]; 1] = [&[]];
    let sets = if sets.is_empty() { &all[..] } else { sets };
    let q = format!(
        "SELECT DISTINCT {col} FROM raw WHERE {} AND {col} <> '' ORDER BY 1",
        filter(sets, from, to)
    );
    let batches = sql.query(&q).await.map_err(internal)?;
    let mut out = Vec::new();
    for b in &batches {
        let c = strings(b, 0)?;
        let c = c.as_string::<i32>();
        out.extend(
            (0..c.len())
                .filter(|r| !c.is_null(*r))
                .map(|r| c.value(r).to_owned()),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(op: MatchOp, name: &str, value: &str) -> Matcher {
        Matcher::new(op, name, value)
    }

    #[test]
    fn matchers_become_sql_and_unknown_labels_compare_with_empty() {
        assert_eq!(
            condition(&m(MatchOp::Equal, "__name__", "cpu")),
            "metric = 'cpu'"
        );
        assert_eq!(
            condition(&m(MatchOp::NotEqual, "vm", "a'b")),
            "vm <> 'a''b'"
        );
        let re = regex::Regex::new("^(?:eth.*)$").unwrap();
        assert_eq!(
            condition(&m(MatchOp::Re(re), "device", "eth.*")),
            "device ~ '^(?:eth.*)$'"
        );
        assert_eq!(condition(&m(MatchOp::Equal, "job", "x")), "FALSE");
        assert_eq!(condition(&m(MatchOp::Equal, "job", "")), "TRUE");
        assert_eq!(condition(&m(MatchOp::NotEqual, "job", "x")), "TRUE");
    }

    #[test]
    fn partitions_bound_both_ends() {
        // 2025-11-22T05:30:00Z
        assert_eq!(
            partitions_until(1_763_789_400_000),
            "(dt < '2025-11-22' OR (dt = '2025-11-22' AND hour <= '05'))"
        );
    }
}
