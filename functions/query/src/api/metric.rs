//! Answers a metric request from the rollup tables: the SQL that merges partials into windows, and
//! the answer in CB-Dragonfly's shape; also the list of VMs seen.
//!
//! Where the windows come from: `periodType=m` reads `rollup_1m`. `h` and `d` read `rollup_1h` /
//! `rollup_1d` when those tables are registered and hold rows for the VM, up to the last window they
//! hold (their watermark), and `rollup_1m` after it, merging minute partials into hours or days on
//! the fly. The partials merge exactly, so the answer is the same whichever table holds a window.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::array::{ArrayRef, AsArray as _, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use serde_json::{Map, Value};

use super::ApiError;
use super::params::{MetricRequest, Period};
use crate::LakeSql;

/// An answer in CB-Dragonfly's shape: `{"name", "tags", "values": [{"time", ...fields}]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricInfo {
    /// The metric family.
    pub name: String,
    /// `nsId`, `mcisId`, `vmId`, and the VM's latest `csp`, `region`, `os`.
    pub tags: BTreeMap<String, String>,
    /// One object per window (and device), oldest first: `time` (window start, RFC 3339 UTC),
    /// `device` for per-device families, then every field of the family (`null` without samples).
    pub values: Vec<Map<String, Value>>,
}

/// A VM seen in the lake.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmSeen {
    /// Namespace.
    pub ns: String,
    /// MCIS (VM group).
    pub mcis: String,
    /// VM id.
    pub vm: String,
    /// Cloud provider of the latest sample.
    pub csp: String,
    /// Region of the latest sample.
    pub region: String,
    /// Operating system of the latest sample.
    pub os: String,
    /// Time of the latest sample, RFC 3339 UTC.
    pub last_seen: String,
}

/// A SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A `TIMESTAMP` literal in UTC for a time in milliseconds.
pub fn ts_literal(ms: i64) -> String {
    format!("arrow_cast({ms}, 'Timestamp(Millisecond, Some(\"UTC\"))')")
}

/// RFC 3339 UTC with seconds, as CB-Dragonfly's InfluxDB wrote times.
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A predicate on the `dt`/`hour` partition columns that keeps the partitions at or after `ms`.
pub fn partitions_from(ms: i64) -> String {
    let Some(t) = DateTime::from_timestamp_millis(ms) else {
        return "TRUE".into();
    };
    let (dt, hour) = (t.format("%Y-%m-%d"), t.format("%H"));
    format!("(dt > '{dt}' OR (dt = '{dt}' AND hour >= '{hour}'))")
}

/// The rollup tables by window width, finest first.
const SOURCES: [(&str, Period); 3] = [
    ("rollup_1m", Period::Minute),
    ("rollup_1h", Period::Hour),
    ("rollup_1d", Period::Day),
];

fn interval(period: Period) -> &'static str {
    match period {
        Period::Minute => "INTERVAL '1 minute'",
        Period::Hour => "INTERVAL '1 hour'",
        Period::Day => "INTERVAL '1 day'",
    }
}

/// The SQL that answers `req` at `now_ms`, over the tables that `has_table` says are registered.
pub fn metric_sql(req: &MetricRequest, now_ms: i64, has_table: impl Fn(&str) -> bool) -> String {
    let from = req.from_ms(now_ms);
    let fields = req.family.fields();
    let mut filter = format!(
        "ns = {} AND mcis = {} AND vm = {} AND metric IN ({})",
        quote(&req.ns),
        quote(&req.mcis),
        quote(&req.vm),
        fields
            .iter()
            .map(|f| quote(f.series))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(d) = &req.device {
        let _ = write!(filter, " AND device = {}", quote(d));
    }
    let _ = write!(
        filter,
        " AND window_start >= {} AND window_start <= {} AND {}",
        ts_literal(from),
        ts_literal(now_ms),
        partitions_from(from)
    );
    let stat = format!("{} AS v", req.statistic.merge_sql());
    windows_sql(&filter, from, req.period, &stat, has_table)
}

/// The SQL that merges the rollup rows passing `filter` (which must bound `window_start` from
/// `from`) into `period` windows, selecting `w`, `device`, `metric`, the `select` expressions over
/// the merged partials, and the latest `csp`, `region`, `os`; ordered by window, device, metric.
///
/// Coarsest table first: each table answers up to its watermark, the next finer one after it, so
/// a window is read from exactly one table; `has_table` says which coarse tables hold files.
pub fn windows_sql(
    filter: &str,
    from: i64,
    period: Period,
    select: &str,
    has_table: impl Fn(&str) -> bool,
) -> String {
    let window = match period {
        Period::Minute => "window_start".to_owned(),
        p => format!("date_trunc('{}', window_start)", p.trunc_unit()),
    };
    let body = rollup_sources_sql(
        filter,
        from,
        period,
        r#"window_start, device, metric, "count", "sum", "min", "max", "last", last_ts, csp, region, os"#,
        has_table,
    );
    format!(
        "SELECT {window} AS w, device, metric, {select}, max(csp) AS csp, max(region) AS region, max(os) AS os \
         FROM {body} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
}

/// The `FROM` clause that reads the rollup rows passing `filter` (which must bound `window_start`
/// from `from`), `columns` of them, each window from exactly one table: the coarsest registered
/// table no wider than `period` up to its watermark, the next finer one after it.
pub fn rollup_sources_sql(
    filter: &str,
    from: i64,
    period: Period,
    columns: &str,
    has_table: impl Fn(&str) -> bool,
) -> String {
    let sources: Vec<(&str, Period)> = SOURCES
        .iter()
        .rev()
        .filter(|(t, p)| *p == Period::Minute || (p.millis() <= period.millis() && has_table(t)))
        .copied()
        .collect();
    if sources.len() == 1 {
        return format!("rollup_1m WHERE {filter}");
    }
    let mut parts = Vec::new();
    for (i, (table, _)) in sources.iter().enumerate() {
        let mut where_ = filter.to_owned();
        for (coarser, p) in &sources[..i] {
            let _ = write!(
                where_,
                " AND window_start >= coalesce((SELECT max(window_start) + {} FROM {coarser} WHERE {filter}), {})",
                interval(*p),
                ts_literal(from)
            );
        }
        parts.push(format!("SELECT {columns} FROM {table} WHERE {where_}"));
    }
    format!("({}) AS src", parts.join(" UNION ALL "))
}

/// The SQL of the rollup tables that hold files besides `rollup_1m`.
pub fn coarse_tables(sql: &LakeSql) -> Vec<&'static str> {
    SOURCES[1..]
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| sql.holds_files(t))
        .collect()
}

pub(crate) fn strings(col: &ArrayRef) -> Result<Vec<Option<String>>, ApiError> {
    let a = cast(col, &DataType::Utf8).map_err(ApiError::internal)?;
    Ok(a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect())
}

pub(crate) fn millis(col: &ArrayRef) -> Result<Vec<Option<i64>>, ApiError> {
    let a = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
        .and_then(|a| cast(&a, &DataType::Int64))
        .map_err(ApiError::internal)?;
    Ok(a.as_primitive::<Int64Type>().iter().collect())
}

pub(crate) fn floats(col: &ArrayRef) -> Result<Vec<Option<f64>>, ApiError> {
    let a = cast(col, &DataType::Float64).map_err(ApiError::internal)?;
    Ok(a.as_primitive::<Float64Type>().iter().collect())
}

pub(crate) fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ApiError> {
    b.column_by_name(name)
        .ok_or_else(|| ApiError::internal(format!("result lacks column {name}")))
}

/// Answers one metric request at `now_ms`; 404 when the VM has never been seen in ns/mcis.
pub async fn metric_info(
    sql: &LakeSql,
    req: &MetricRequest,
    now_ms: i64,
) -> Result<MetricInfo, ApiError> {
    let coarse = coarse_tables(sql);
    let query = metric_sql(req, now_ms, |t| coarse.contains(&t));
    tracing::debug!(sql = %query, "metric query");
    let batches = sql.query(&query).await?;
    let fields = req.family.fields();
    let mut rows: BTreeMap<(i64, String), Map<String, Value>> = BTreeMap::new();
    let mut tags = BTreeMap::from([
        ("nsId".to_owned(), req.ns.clone()),
        ("mcisId".to_owned(), req.mcis.clone()),
        ("vmId".to_owned(), req.vm.clone()),
    ]);
    let mut latest = i64::MIN;
    for b in &batches {
        let (w, device, metric, v) = (
            millis(column(b, "w")?)?,
            strings(column(b, "device")?)?,
            strings(column(b, "metric")?)?,
            floats(column(b, "v")?)?,
        );
        let (csp, region, os) = (
            strings(column(b, "csp")?)?,
            strings(column(b, "region")?)?,
            strings(column(b, "os")?)?,
        );
        for i in 0..b.num_rows() {
            let (Some(w), Some(metric)) = (w[i], metric[i].as_deref()) else {
                continue;
            };
            let Some(field) = req.family.field_of(metric) else {
                continue;
            };
            let device = device[i].clone().unwrap_or_default();
            let obj = rows.entry((w, device.clone())).or_insert_with(|| {
                let mut m = Map::new();
                m.insert("time".into(), Value::String(rfc3339(w)));
                if req.family.per_device() {
                    m.insert("device".into(), Value::String(device));
                }
                for f in &fields {
                    m.insert(f.label.into(), Value::Null);
                }
                m
            });
            obj.insert(
                field.label.into(),
                v[i].map(Value::from).unwrap_or(Value::Null),
            );
            if w >= latest {
                latest = w;
                for (k, col) in [("csp", &csp), ("region", &region), ("os", &os)] {
                    if let Some(s) = &col[i] {
                        tags.insert(k.into(), s.clone());
                    }
                }
            }
        }
    }
    if rows.is_empty() && !vm_exists(sql, req).await? {
        return Err(ApiError::NotFound(format!(
            "vm {:?} not found in ns {:?}, mcis {:?}",
            req.vm, req.ns, req.mcis
        )));
    }
    Ok(MetricInfo {
        name: req.family.name().to_owned(),
        tags,
        values: rows.into_values().collect(),
    })
}

/// Whether any rollup table holds a row of the VM, at any time.
async fn vm_exists(sql: &LakeSql, req: &MetricRequest) -> Result<bool, ApiError> {
    for (table, _) in SOURCES {
        if !sql.holds_files(table) {
            continue;
        }
        let q = format!(
            "SELECT 1 AS one FROM {table} WHERE ns = {} AND mcis = {} AND vm = {} LIMIT 1",
            quote(&req.ns),
            quote(&req.mcis),
            quote(&req.vm)
        );
        if sql.query(&q).await?.iter().any(|b| b.num_rows() > 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The SQL that lists the VMs with samples since `since_ms`.
pub fn vm_list_sql(since_ms: i64) -> String {
    vm_list_from_sql(&format!(
        "rollup_1m WHERE window_start >= {} AND {}",
        ts_literal(since_ms),
        partitions_from(since_ms)
    ))
}

/// The SQL that lists the VMs of the rollup rows `from` (a `FROM` clause with its filter) with
/// their latest `csp`, `region`, `os` and newest sample (`last_seen`), by ns, mcis, vm.
pub fn vm_list_from_sql(from: &str) -> String {
    format!(
        "SELECT ns, mcis, vm, \
         last_value(csp ORDER BY last_ts) AS csp, last_value(region ORDER BY last_ts) AS region, \
         last_value(os ORDER BY last_ts) AS os, max(last_ts) AS last_seen \
         FROM {from} GROUP BY ns, mcis, vm ORDER BY ns, mcis, vm"
    )
}

/// One VM of a VM list: ns, mcis, vm, csp, region, os, and its newest sample (ms).
pub type VmRow = ([String; 6], Option<i64>);

/// The rows of a [`vm_list_from_sql`] answer.
pub fn vm_rows(batches: &[RecordBatch]) -> Result<Vec<VmRow>, ApiError> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<Vec<Option<String>>> = ["ns", "mcis", "vm", "csp", "region", "os"]
            .iter()
            .map(|c| strings(column(b, c)?))
            .collect::<Result<_, _>>()?;
        let seen = millis(column(b, "last_seen")?)?;
        for (i, last) in seen.into_iter().enumerate() {
            out.push((
                std::array::from_fn(|c| cols[c][i].clone().unwrap_or_default()),
                last,
            ));
        }
    }
    Ok(out)
}

/// The VMs with samples since `since_ms`, with their latest tags and when they were last seen.
pub async fn vm_list(sql: &LakeSql, since_ms: i64) -> Result<Vec<VmSeen>, ApiError> {
    let rows = vm_rows(&sql.query(&vm_list_sql(since_ms)).await?)?;
    Ok(rows
        .into_iter()
        .map(|([ns, mcis, vm, csp, region, os], last)| VmSeen {
            ns,
            mcis,
            vm,
            csp,
            region,
            os,
            last_seen: last.map(rfc3339).unwrap_or_default(),
        })
        .collect())
}
