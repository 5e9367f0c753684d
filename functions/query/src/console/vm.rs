//! The VM page: its tags, a chart of every series of every metric family (min-max band and
//! average per window, per device where the family has devices, counters as per-second rates),
//! and its alarm history.
//!
//! The windows are the metric API's own: one query through [`windows_sql`] over all of the
//! catalog's series, one-minute windows up to 6 h and hourly windows beyond, each window merged
//! from exactly one rollup table, so a chart's numbers equal `.../metric/{family}/info`'s.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::alarms::{history, history_table};
use super::chart::{self, Point};
use super::layout::{self, Page, empty, num_cell, time_cell};
use super::view::View;
use crate::LakeSql;
use crate::api::ApiError;
use crate::api::families::MetricFamily;
use crate::api::metric::{
    coarse_tables, column, floats, millis, partitions_from, quote, strings, ts_literal, windows_sql,
};

/// Which VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmId {
    /// Namespace.
    pub ns: String,
    /// MCIS.
    pub mcis: String,
    /// VM id.
    pub vm: String,
}

/// A VM's windows: per (series, device), the points in time order; and its latest tags.
#[derive(Debug, Default)]
pub struct VmData {
    /// Points per (series, device).
    pub series: BTreeMap<(String, String), Vec<Point>>,
    /// Latest csp, region and os.
    pub tags: Vec<(&'static str, String)>,
    /// The newest sample in the window (ms).
    pub last_seen: Option<i64>,
}

/// The SQL of a VM's windows over every series of the catalog.
pub fn vm_sql(id: &VmId, view: &View, has_table: impl Fn(&str) -> bool) -> String {
    let from = view.from_ms();
    let series: Vec<String> = MetricFamily::ALL
        .iter()
        .flat_map(|f| f.fields())
        .map(|f| quote(f.series))
        .collect();
    let filter = format!(
        "ns = {} AND mcis = {} AND vm = {} AND metric IN ({}) AND window_start >= {} AND window_start < {} AND {}",
        quote(&id.ns),
        quote(&id.mcis),
        quote(&id.vm),
        series.join(", "),
        ts_literal(from),
        ts_literal(view.end_ms),
        partitions_from(from)
    );
    windows_sql(
        &filter,
        from,
        view.range.period(),
        r#"min("min") AS vmin, sum("sum") / sum("count") AS vavg, max("max") AS vmax, max(last_ts) AS seen"#,
        has_table,
    )
}

/// Reads a VM's windows.
pub async fn load(sql: &LakeSql, id: &VmId, view: &View) -> Result<VmData, ApiError> {
    let coarse = coarse_tables(sql);
    let q = vm_sql(id, view, |t| coarse.contains(&t));
    let mut data = VmData::default();
    let mut latest: Option<(i64, [Option<String>; 3])> = None;
    for b in &sql.query(&q).await? {
        let (w, device, metric) = (
            millis(column(b, "w")?)?,
            strings(column(b, "device")?)?,
            strings(column(b, "metric")?)?,
        );
        let (lo, avg, hi) = (
            floats(column(b, "vmin")?)?,
            floats(column(b, "vavg")?)?,
            floats(column(b, "vmax")?)?,
        );
        let seen = millis(column(b, "seen")?)?;
        let tags = [
            strings(column(b, "csp")?)?,
            strings(column(b, "region")?)?,
            strings(column(b, "os")?)?,
        ];
        for i in 0..b.num_rows() {
            let (Some(w), Some(m), Some(lo), Some(avg), Some(hi)) =
                (w[i], metric[i].clone(), lo[i], avg[i], hi[i])
            else {
                continue;
            };
            let d = device[i].clone().unwrap_or_default();
            data.series
                .entry((m, d))
                .or_default()
                .push((w, lo, avg, hi));
            let s = seen[i].unwrap_or(w);
            if latest.as_ref().is_none_or(|(t, _)| s >= *t) {
                latest = Some((s, [0, 1, 2].map(|k| tags[k][i].clone())));
            }
        }
    }
    for points in data.series.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    if let Some((seen, [csp, region, os])) = latest {
        data.tags = vec![
            ("csp", csp.unwrap_or_default()),
            ("region", region.unwrap_or_default()),
            ("os", os.unwrap_or_default()),
        ];
        data.last_seen = Some(seen);
    }
    Ok(data)
}

/// Whether any rollup table holds a row of the VM, at any time.
async fn exists(sql: &LakeSql, id: &VmId) -> Result<bool, ApiError> {
    for table in ["rollup_1m", "rollup_1h", "rollup_1d"] {
        let q = format!(
            "SELECT 1 AS one FROM {table} WHERE ns = {} AND mcis = {} AND vm = {} LIMIT 1",
            quote(&id.ns),
            quote(&id.mcis),
            quote(&id.vm)
        );
        if sql.query(&q).await?.iter().any(|b| b.num_rows() > 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The VM page; 404 for a VM the lake has never seen.
pub async fn page(sql: &LakeSql, view: &View, id: &VmId) -> Result<Markup, ApiError> {
    let (data, hist) = tokio::try_join!(
        load(sql, id, view),
        history(sql, view, Some((&id.ns, &id.mcis, &id.vm))),
    )?;
    if data.series.is_empty() && hist.is_empty() && !exists(sql, id).await? {
        return Err(ApiError::NotFound(format!(
            "vm {:?} not found in ns {:?}, mcis {:?}",
            id.vm, id.ns, id.mcis
        )));
    }
    Ok(layout::page(
        Page::Vm,
        &id.vm,
        view,
        render(view, id, &data, &hist),
    ))
}

/// The VM page's body from its data.
pub fn render(view: &View, id: &VmId, data: &VmData, hist: &[super::alarms::Transition]) -> Markup {
    let (from, to, period) = (view.from_ms(), view.end_ms, view.range.period().millis());
    let ids = [("ns", &id.ns), ("mcis", &id.mcis), ("vm", &id.vm)];
    html! {
        section.panel {
            table data-table="tags" {
                tbody {
                    @for (k, v) in ids { tr { td.key data-col="key" data-value=(k) { (k) } td data-col="value" data-value=(v) { (v) } } }
                    @for (k, v) in &data.tags { tr { td.key data-col="key" data-value=(k) { (k) } td data-col="value" data-value=(v) { (v) } } }
                    @if let Some(ms) = data.last_seen { tr { td.key data-col="key" data-value="last_seen" { "last_seen" } (time_cell("value", ms)) } }
                }
            }
        }
        @if data.series.is_empty() { (empty("No samples in this window.")) }
        @for family in MetricFamily::ALL {
            @let charts = family_charts(family, data);
            @if !charts.is_empty() {
                h2 { (family.name()) }
                div.grid.wide {
                    @for (field, device, points) in charts {
                        figure.chart data-family=(family.name()) data-series=(field.series) data-device=(device) {
                            h3 { (field.series) @if !device.is_empty() { " · " (device) } span.muted { " (" (field.unit) ")" } }
                            (chart::band(field.series, points, from, to, period))
                            details {
                                summary { "data" }
                                table data-table="chart" {
                                    thead { tr { th { "window" } th.num { "min" } th.num { "avg" } th.num { "max" } } }
                                    tbody {
                                        @for (t, lo, avg, hi) in points {
                                            tr { (time_cell("time", *t)) (num_cell("min", Some(*lo))) (num_cell("avg", Some(*avg))) (num_cell("max", Some(*hi))) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Alarm history" }
        @if hist.is_empty() { (empty("No alarm transition in this window.")) } @else {
            section.panel { (history_table(hist, view, false)) }
        }
    }
}

/// The charts of one family: each of its fields, per device, that has points.
fn family_charts(
    family: MetricFamily,
    data: &VmData,
) -> Vec<(crate::api::families::Field, &str, &[Point])> {
    let mut out = Vec::new();
    for field in family.fields() {
        for ((series, device), points) in &data.series {
            if series == field.series {
                out.push((field, device.as_str(), points.as_slice()));
            }
        }
    }
    out
}
