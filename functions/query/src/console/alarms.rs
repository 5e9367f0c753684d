//! The alarms page: each (rule, VM)'s current state, the transitions in the window, and the rules
//! in force, all from the lake (the `alarms` table and the rule set at `_config/alarm-rules.json`).
//!
//! A current state is the `to_state` of the latest `transition` row at or before the view's end
//! (repeat notifications do not change a state); `since` is that row's time.

use damselfly_core::alarm::{DEFAULT_RULES_KEY, RuleSet};
use maud::{Markup, html};
use object_store::ObjectStoreExt as _;
use object_store::path::Path;

use super::layout::{self, Page, empty, num_cell, text_cell, time_cell, vm_link};
use super::view::View;
use crate::LakeSql;
use crate::api::ApiError;
use crate::api::metric::{column, floats, millis, quote, strings, ts_literal};

/// Most transitions listed.
const HISTORY_ROWS: usize = 500;

/// A (rule, VM)'s latest state.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmState {
    /// Rule id and name.
    pub rule_id: String,
    /// Rule name at the transition.
    pub rule_name: String,
    /// Namespace, MCIS and VM.
    pub ns: String,
    /// MCIS.
    pub mcis: String,
    /// VM id.
    pub vm: String,
    /// OK, WARNING, CRITICAL or NO_DATA.
    pub state: String,
    /// When it entered the state (ms).
    pub since: i64,
}

/// Every (rule, VM)'s state at `end_ms`, by rule then VM.
pub async fn current_states(sql: &LakeSql, end_ms: i64) -> Result<Vec<AlarmState>, ApiError> {
    let q = format!(
        "SELECT rule_id, last_value(rule_name ORDER BY ts) AS rule_name, ns, mcis, vm, \
         last_value(to_state ORDER BY ts) AS state, max(ts) AS since \
         FROM alarms WHERE kind = 'transition' AND ts <= {} \
         GROUP BY rule_id, ns, mcis, vm ORDER BY rule_id, ns, mcis, vm",
        ts_literal(end_ms)
    );
    let mut out = Vec::new();
    for b in &sql.query(&q).await? {
        let cols: Vec<Vec<Option<String>>> = ["rule_id", "rule_name", "ns", "mcis", "vm", "state"]
            .iter()
            .map(|c| strings(column(b, c)?))
            .collect::<Result<_, _>>()?;
        let since = millis(column(b, "since")?)?;
        for i in 0..b.num_rows() {
            let s = |c: usize| cols[c][i].clone().unwrap_or_default();
            out.push(AlarmState {
                rule_id: s(0),
                rule_name: s(1),
                ns: s(2),
                mcis: s(3),
                vm: s(4),
                state: s(5),
                since: since[i].unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// A table of states; with `names`, the rule's name too.
pub fn states_table(states: &[&AlarmState], view: &View, names: bool) -> Markup {
    html! {
        table data-table="alarm-states" {
            thead { tr { th { "rule" } @if names { th { "name" } } th { "VM" } th { "state" } th { "since" } } }
            tbody {
                @for s in states {
                    tr {
                        (text_cell("rule_id", &s.rule_id))
                        @if names { (text_cell("rule_name", &s.rule_name)) }
                        td data-col="vm" data-value=(s.vm) { (vm_link(view, &s.ns, &s.mcis, &s.vm)) }
                        (text_cell("state", &s.state))
                        (time_cell("since", s.since))
                    }
                }
            }
        }
    }
}

/// One row of the alarm history.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// When (ms).
    pub ts: i64,
    /// The rule.
    pub rule_id: String,
    /// Namespace.
    pub ns: String,
    /// MCIS.
    pub mcis: String,
    /// VM id.
    pub vm: String,
    /// State before.
    pub from_state: String,
    /// State after.
    pub to_state: String,
    /// The value that decided it.
    pub value: Option<f64>,
}

/// The transitions in the view's window, newest first, optionally of one VM.
pub async fn history(
    sql: &LakeSql,
    view: &View,
    vm: Option<(&str, &str, &str)>,
) -> Result<Vec<Transition>, ApiError> {
    let mut filter = format!(
        "kind = 'transition' AND ts >= {} AND ts < {}",
        ts_literal(view.from_ms()),
        ts_literal(view.end_ms)
    );
    if let Some((ns, mcis, vm)) = vm {
        filter += &format!(
            " AND ns = {} AND mcis = {} AND vm = {}",
            quote(ns),
            quote(mcis),
            quote(vm)
        );
    }
    let q = format!(
        "SELECT ts, rule_id, ns, mcis, vm, from_state, to_state, value FROM alarms WHERE {filter} \
         ORDER BY ts DESC, rule_id, vm LIMIT {HISTORY_ROWS}"
    );
    let mut out = Vec::new();
    for b in &sql.query(&q).await? {
        let cols: Vec<Vec<Option<String>>> =
            ["rule_id", "ns", "mcis", "vm", "from_state", "to_state"]
                .iter()
                .map(|c| strings(column(b, c)?))
                .collect::<Result<_, _>>()?;
        let (ts, value) = (millis(column(b, "ts")?)?, floats(column(b, "value")?)?);
        for i in 0..b.num_rows() {
            let s = |c: usize| cols[c][i].clone().unwrap_or_default();
            out.push(Transition {
                ts: ts[i].unwrap_or_default(),
                rule_id: s(0),
                ns: s(1),
                mcis: s(2),
                vm: s(3),
                from_state: s(4),
                to_state: s(5),
                value: value[i],
            });
        }
    }
    Ok(out)
}

/// A table of transitions; with `vms`, the VM too.
pub fn history_table(rows: &[Transition], view: &View, vms: bool) -> Markup {
    html! {
        table data-table="alarm-history" {
            thead { tr { th { "time" } th { "rule" } @if vms { th { "VM" } } th { "from" } th { "to" } th.num { "value" } } }
            tbody {
                @for t in rows {
                    tr {
                        (time_cell("ts", t.ts)) (text_cell("rule_id", &t.rule_id))
                        @if vms { td data-col="vm" data-value=(t.vm) { (vm_link(view, &t.ns, &t.mcis, &t.vm)) } }
                        (text_cell("from_state", &t.from_state)) (text_cell("to_state", &t.to_state))
                        (num_cell("value", t.value))
                    }
                }
            }
        }
    }
}

/// The rule set in the lake, or `None` when there is none.
pub async fn rules(sql: &LakeSql) -> Result<Option<RuleSet>, ApiError> {
    match sql.store().get(&Path::from(DEFAULT_RULES_KEY)).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(ApiError::internal)?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ApiError::internal(format!("{DEFAULT_RULES_KEY}: {e}")))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// The alarms page.
pub async fn page(sql: &LakeSql, view: &View) -> Result<Markup, ApiError> {
    let (states, hist, rules) = tokio::try_join!(
        current_states(sql, view.end_ms),
        history(sql, view, None),
        rules(sql),
    )?;
    let all: Vec<&AlarmState> = states.iter().collect();
    let body = html! {
        h2 { "Current states" }
        @if all.is_empty() { (empty("No alarm has changed state yet.")) } @else {
            section.panel { (states_table(&all, view, true)) }
        }
        h2 { "Transitions in this window" }
        @if hist.is_empty() { (empty("No transition in this window.")) } @else {
            section.panel {
                (history_table(&hist, view, true))
                @if hist.len() == HISTORY_ROWS { p.muted { "The newest " (HISTORY_ROWS) " are shown." } }
            }
        }
        h2 { "Rules in force" }
        @match &rules {
            None => (empty(&format!("No rule set at LAKE/{DEFAULT_RULES_KEY}."))),
            Some(set) => section.panel {
                table data-table="rules" {
                    thead { tr { th { "id" } th { "name" } th { "metric" } th { "statistic" } th { "period" } th { "comparator" } th.num { "warning" } th.num { "critical" } } }
                    tbody {
                        @for r in &set.rules {
                            tr {
                                (text_cell("id", &r.id)) (text_cell("name", &r.name)) (text_cell("metric", &r.metric))
                                (text_cell("statistic", &r.statistic.to_string())) (text_cell("period", &r.period.to_string()))
                                (text_cell("comparator", &r.comparator.to_string()))
                                (num_cell("warning", r.warning)) (num_cell("critical", r.critical))
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(Page::Alarms, "Alarms", view, body))
}
