//! Prometheus's HTTP query API and PromQL over the lake, for Grafana, promtool, KEDA and
//! prometheus-adapter.
//!
//! Protocol of one query (`/api/v1/query`, `/api/v1/query_range`):
//! 1. The text is parsed by `promql-parser`; a parse error is a 400 `bad_data`.
//! 2. [`eval::plan`] refuses any construct Damselfly does not evaluate with a 422 `execution`
//!    naming it (a subquery, `count_values`, `histogram_quantile`, ...), before any data is read:
//!    an unsupported query never gets a wrong answer.
//! 3. Each selector's series are read from `raw` over the span every step needs
//!    ([`lake::fetch`]), within [`lake::Limits`]: too many samples or series is a 422 that says
//!    so, never an out-of-memory.
//! 4. [`eval::evaluate`] computes the answer with Prometheus 2.x's semantics (lookback 5 m,
//!    inclusive windows, extrapolated `rate`, counter resets, `offset`, `@`).
//!
//! Failure windows:
//! - **A batch lands while a query reads.** Each selector is one scan of the files listed when it
//!   starts, so a batch file written between two selectors' scans is seen by the later one only:
//!   the answer may mix two moments of the lake one batch apart, as a Prometheus query may see
//!   samples appended to its head while it runs. A step never sees half a batch file.
//! - **Compaction replaces files under a query.** The session lists live files only
//!   ([`crate::live`]); a file removed after listing fails the scan, and the query is a 500 the
//!   client retries (Grafana does).
//! - **The time-out passes.** The query is dropped at its next await and answered 503 `timeout`;
//!   the evaluation itself is bounded by the limits of step 3.

#[cfg(test)]
mod dashboards;
pub mod eval;
pub mod functions;
pub mod http;
pub mod lake;
pub mod model;
#[cfg(test)]
mod tests;

pub use eval::{LOOKBACK_MS, Range};
pub use lake::Limits;
pub use model::{Labels, PromError, QueryValue, Sample, Series};

use crate::LakeSql;

/// Parses `text`, in the shape of Prometheus's error for a query that does not parse.
pub fn parse(text: &str) -> Result<promql_parser::parser::Expr, PromError> {
    promql_parser::parser::parse(text)
        .map_err(|e| PromError::BadData(format!("invalid parameter \"query\": {e}")))
}

/// Answers the PromQL `text` over `range` from the lake behind `sql`, within `limits`.
pub async fn query(
    sql: &LakeSql,
    text: &str,
    range: Range,
    limits: &Limits,
) -> Result<QueryValue, PromError> {
    let expr = parse(text)?;
    let selections = eval::plan(&expr, &range)?;
    let mut budget = limits.max_samples;
    let mut fetched = Vec::with_capacity(selections.len());
    for sel in &selections {
        fetched.push(lake::fetch(sql, sel, limits, &mut budget).await?);
    }
    eval::evaluate(&expr, &range, &fetched)
}
