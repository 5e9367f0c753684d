//! The dead-letter pages: what the pipeline rejected in the window, by reason and over time, the
//! newest records, and one record's raw bytes (from the `dlq` table's `raw_base64`).

use base64::Engine as _;
use maud::{Markup, html};

use super::chart;
use super::ingest::{self, Landed};
use super::layout::{self, Page, count_cell, empty, text_cell, time_cell};
use super::view::{View, encode};
use crate::LakeSql;
use crate::api::ApiError;
use crate::api::metric::{column, floats, millis, quote, strings, ts_literal};

/// The parameters naming one record.
pub const RECORD_KEYS: [&str; 3] = ["topic", "partition", "offset"];
/// Most records listed.
const RECENT_ROWS: usize = 100;
/// Most bytes of a record shown.
const RAW_SHOWN: usize = 64 * 1024;

fn window(view: &View) -> String {
    format!(
        "received_at >= {} AND received_at < {}",
        ts_literal(view.from_ms()),
        ts_literal(view.end_ms)
    )
}

/// A rejected record, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// When the function received it (ms).
    pub received_at: i64,
    /// Where it came from.
    pub topic: String,
    /// Its partition.
    pub partition: i64,
    /// Its offset.
    pub offset: i64,
    /// Why it was rejected.
    pub reason: String,
}

/// The dead-letter page.
pub async fn page(sql: &LakeSql, view: &View) -> Result<Markup, ApiError> {
    let w = window(view);
    let bucket = view.range.bucket_ms();
    let reasons_q = format!(
        "SELECT reason, count(*) AS n FROM dlq WHERE {w} GROUP BY reason ORDER BY n DESC, reason"
    );
    let times_q = format!(
        "SELECT date_bin(INTERVAL '{bucket} milliseconds', received_at, {}) AS b, count(*) AS n \
         FROM dlq WHERE {w} GROUP BY 1 ORDER BY 1",
        ts_literal(0)
    );
    let recent_q = format!(
        "SELECT received_at, topic, \"partition\", \"offset\", reason FROM dlq WHERE {w} \
         ORDER BY received_at DESC, topic, \"partition\", \"offset\" LIMIT {RECENT_ROWS}"
    );
    // The session's footer cache: a batch file's footer is read once, not on every page.
    let footers = sql
        .context()
        .runtime_env()
        .cache_manager
        .get_file_metadata_cache();
    let (reasons, times, recent, landed) = tokio::try_join!(
        async { Ok(sql.query(&reasons_q).await?) },
        async { Ok(sql.query(&times_q).await?) },
        async { Ok(sql.query(&recent_q).await?) },
        ingest::landed(sql.store(), &footers, view.from_ms(), view.end_ms),
    )?;
    let mut by_reason = Vec::new();
    for b in &reasons {
        let (r, n) = (strings(column(b, "reason")?)?, floats(column(b, "n")?)?);
        for i in 0..b.num_rows() {
            by_reason.push((r[i].clone().unwrap_or_default(), n[i].unwrap_or(0.0) as u64));
        }
    }
    let mut counts = Vec::new();
    for b in &times {
        let (t, n) = (millis(column(b, "b")?)?, floats(column(b, "n")?)?);
        for i in 0..b.num_rows() {
            if let (Some(t), Some(n)) = (t[i], n[i]) {
                counts.push((t, n as u64));
            }
        }
    }
    let mut rows = Vec::new();
    for b in &recent {
        let (at, topic, reason) = (
            millis(column(b, "received_at")?)?,
            strings(column(b, "topic")?)?,
            strings(column(b, "reason")?)?,
        );
        let (p, o) = (
            floats(column(b, "partition")?)?,
            floats(column(b, "offset")?)?,
        );
        for i in 0..b.num_rows() {
            rows.push(Rejected {
                received_at: at[i].unwrap_or_default(),
                topic: topic[i].clone().unwrap_or_default(),
                partition: p[i].unwrap_or(-1.0) as i64,
                offset: o[i].unwrap_or(-1.0) as i64,
                reason: reason[i].clone().unwrap_or_default(),
            });
        }
    }
    let total: u64 = by_reason.iter().map(|r| r.1).sum();
    let body = html! {
        (render(view, total, &by_reason, &counts, &rows))
        (ingest_section(view, &landed))
    };
    Ok(layout::page(
        Page::Dlq,
        "Dead letters and ingest",
        view,
        body,
    ))
}

/// The dead-letter page's body from its data.
pub fn render(
    view: &View,
    total: u64,
    by_reason: &[(String, u64)],
    counts: &[(i64, u64)],
    rows: &[Rejected],
) -> Markup {
    let bucket = view.range.bucket_ms();
    html! {
        dl.summary { div { dt { "Records rejected" } dd data-stat="rejected" data-value=(total) { (total) } } }
        @if total == 0 { (empty("Nothing was rejected in this window.")) } @else {
            div.grid.wide {
                section.panel {
                    h3 { "By reason" }
                    table data-table="dlq-reasons" {
                        thead { tr { th { "reason" } th.num { "records" } } }
                        tbody { @for (r, n) in by_reason { tr { (text_cell("reason", r)) (count_cell("records", *n)) } } }
                    }
                }
                figure.chart data-chart="dlq-over-time" {
                    h3 { "Over time" }
                    (chart::bars("records rejected", counts, view.from_ms(), view.end_ms, bucket))
                    details {
                        summary { "data" }
                        table data-table="dlq-over-time" {
                            thead { tr { th { "time" } th.num { "records" } } }
                            tbody { @for (t, n) in counts { tr { (time_cell("time", *t)) (count_cell("records", *n)) } } }
                        }
                    }
                }
            }
            h2 { "Newest" }
            section.panel {
                table data-table="dlq-recent" {
                    thead { tr { th { "received" } th { "topic" } th.num { "partition" } th.num { "offset" } th { "reason" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                (time_cell("received_at", r.received_at)) (text_cell("topic", &r.topic))
                                td.num data-col="partition" data-value=(r.partition) { (r.partition) }
                                td.num data-col="offset" data-value=(r.offset) {
                                    a data-record=(r.offset) href=(view.href("dlq/record", &[("topic", &r.topic), ("partition", &r.partition.to_string()), ("offset", &r.offset.to_string())])) { (r.offset) }
                                }
                                (text_cell("reason", &r.reason))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Rows of the ingest table.
const LANDED_SHOWN: usize = 20;

/// The ingest-delay section: how old samples were when their batch file landed.
pub fn ingest_section(view: &View, landed: &[Landed]) -> Markup {
    let mut delays: Vec<i64> = landed.iter().map(Landed::delay_ms).collect();
    delays.sort_unstable();
    let stat = |name: &str, label: &str, v: Option<i64>| {
        html! {
            div { dt { (label) } dd data-stat=(name) data-value=[v] {
                @match v { Some(ms) => { (layout::number_text(ms as f64 / 1000.0)) " s" }, None => "–" }
            } }
        }
    };
    let mut points: Vec<chart::Point> = landed
        .iter()
        .map(|l| {
            let newest = l.delay_ms() as f64 / 1000.0;
            (
                l.written_ms,
                newest,
                newest,
                (l.written_ms - l.oldest_ms) as f64 / 1000.0,
            )
        })
        .collect();
    points.sort_by_key(|p| p.0);
    html! {
        h2 { "Ingest delay" }
        p.muted { "Per raw batch file written in the window (the newest " (ingest::MAX_FILES) "): its freshest sample's age when the file landed; the band reaches its oldest sample's." }
        dl.summary {
            div { dt { "files" } dd data-stat="ingest-files" data-value=(landed.len()) { (landed.len()) } }
            (stat("ingest-p50", "median delay", ingest::quantile(&delays, 0.5)))
            (stat("ingest-p95", "p95 delay", ingest::quantile(&delays, 0.95)))
            (stat("ingest-max", "max delay", delays.last().copied()))
        }
        @if !landed.is_empty() {
            div.grid.wide {
                figure.chart data-chart="ingest-delay" {
                    h3 { "Delay (s) by landing time" }
                    (chart::band("ingest delay", &points, view.from_ms(), view.end_ms, view.end_ms - view.from_ms()))
                }
                section.panel {
                    h3 { "Newest files" }
                    table data-table="ingest" {
                        thead { tr { th { "landed" } th { "file" } th.num { "rows" } th { "newest sample" } th.num { "delay (ms)" } } }
                        tbody {
                            @for l in landed.iter().take(LANDED_SHOWN) {
                                tr {
                                    (time_cell("written", l.written_ms)) (text_cell("key", &l.key))
                                    td.num data-col="rows" data-value=(l.rows) { (l.rows) }
                                    (time_cell("newest", l.newest_ms))
                                    td.num data-col="delay_ms" data-value=(l.delay_ms()) { (l.delay_ms()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One rejected record, raw.
pub async fn record_page(sql: &LakeSql, view: &View) -> Result<Markup, ApiError> {
    let topic = view
        .get("topic")
        .ok_or_else(|| ApiError::bad("topic", "missing: name the record's topic"))?;
    let int = |name: &'static str| -> Result<i64, ApiError> {
        let v = view.get(name).ok_or_else(|| {
            ApiError::bad(name, "missing: give the record's partition and offset")
        })?;
        v.parse()
            .map_err(|_| ApiError::bad(name, format!("{v:?} is not an integer")))
    };
    let (partition, offset) = (int("partition")?, int("offset")?);
    let q = format!(
        "SELECT received_at, key, reason, raw_base64 FROM dlq WHERE topic = {} AND \"partition\" = {partition} AND \"offset\" = {offset} ORDER BY received_at LIMIT 1",
        quote(topic)
    );
    let batches = sql.query(&q).await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Err(ApiError::NotFound(format!(
            "no dead letter at {topic}/{partition}/{offset}"
        )));
    };
    let at = millis(column(b, "received_at")?)?[0].unwrap_or_default();
    let key = strings(column(b, "key")?)?[0].clone();
    let reason = strings(column(b, "reason")?)?[0]
        .clone()
        .unwrap_or_default();
    let raw = strings(column(b, "raw_base64")?)?[0]
        .clone()
        .unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.as_bytes())
        .map_err(|e| {
            ApiError::internal(format!("raw_base64 of {topic}/{partition}/{offset}: {e}"))
        })?;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(RAW_SHOWN)]).into_owned();
    let back = {
        let mut v = view.clone();
        v.extra.clear();
        v.href("dlq", &[])
    };
    let body = html! {
        dl.summary {
            div { dt { "reason" } dd data-stat="reason" data-value=(reason) { (reason) } }
            div { dt { "received" } dd data-stat="received_at" data-value=(at) { (layout::time_text(at)) } }
            div { dt { "key" } dd data-stat="key" data-value=[key.as_deref()] { (key.as_deref().unwrap_or("(none)")) } }
            div { dt { "bytes" } dd data-stat="bytes" data-value=(bytes.len()) { (bytes.len()) } }
        }
        pre data-raw { (shown) }
        @if bytes.len() > RAW_SHOWN { p.muted { "The first " (RAW_SHOWN) " bytes are shown." } }
        p { a href=(back) { "Back to the dead letters" } }
    };
    let title = format!("Dead letter {}/{partition}/{offset}", encode(topic));
    Ok(layout::page(Page::Record, &title, view, body))
}
