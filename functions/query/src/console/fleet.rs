//! The fleet page and the VM list: who is reporting (by csp, region, ns, mcis), who went silent,
//! the busiest VMs, a CPU heat map that stays readable at any fleet size, and the firing alarms.
//!
//! Every figure comes from the rollup partials in the window `[from, end)`, merged as the metric
//! API merges them (an average is `sum(sum) / sum(count)` over the window's rows, whichever file
//! or table holds them); ranges of a day or more read `rollup_1h` up to its watermark.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::alarms::{AlarmState, current_states};
use super::chart;
use super::layout::{self, Page, count_cell, empty, num_cell, text_cell, time_cell, vm_link};
use super::view::View;
use crate::LakeSql;
use crate::api::ApiError;
use crate::api::metric::{
    coarse_tables, column, floats, millis, partitions_from, quote, rollup_sources_sql, strings,
    ts_literal, vm_list_from_sql, vm_rows,
};

/// The tags the VM list filters by, and its page number.
pub const VM_FILTERS: [&str; 5] = ["csp", "region", "ns", "mcis", "page"];
/// A VM is silent when its last sample is older than this before the window's end.
pub const SILENT_AFTER_MS: i64 = 5 * 60_000;
/// Rows of each "busiest" table.
const TOP: usize = 10;
/// Rows of the silent-VM table.
const SILENT_SHOWN: usize = 100;
/// VMs per page of the VM list.
const PAGE_SIZE: usize = 100;
/// The metrics the busiest tables rank by.
const BUSY_METRICS: [&str; 5] = [
    "cpu_utilization",
    "mem_utilization",
    "disk_utilization",
    "bytes_in_rate",
    "bytes_out_rate",
];

/// A VM with a sample in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Namespace, MCIS, VM id.
    pub ns: String,
    /// MCIS.
    pub mcis: String,
    /// VM id.
    pub vm: String,
    /// Latest cloud provider, region and OS.
    pub csp: String,
    /// Latest region.
    pub region: String,
    /// Latest OS.
    pub os: String,
    /// Newest sample time (ms).
    pub last_seen: i64,
}

impl Seen {
    fn tag(&self, name: &str) -> &str {
        match name {
            "csp" => &self.csp,
            "region" => &self.region,
            "ns" => &self.ns,
            "mcis" => &self.mcis,
            _ => "",
        }
    }
}

/// The window's rollup rows of `metrics` (all when empty), as a `FROM` clause.
fn source(sql: &LakeSql, view: &View, metrics: &[&str], columns: &str) -> String {
    let from = view.from_ms();
    let mut filter = format!(
        "window_start >= {} AND window_start < {} AND {}",
        ts_literal(from),
        ts_literal(view.end_ms),
        partitions_from(from)
    );
    if !metrics.is_empty() {
        let list: Vec<String> = metrics.iter().map(|m| quote(m)).collect();
        filter = format!("metric IN ({}) AND {filter}", list.join(", "));
    }
    let coarse = coarse_tables(sql);
    rollup_sources_sql(&filter, from, view.range.period(), columns, |t| {
        coarse.contains(&t)
    })
}

/// The VMs with a sample in the window, by ns, mcis, vm.
pub async fn seen(sql: &LakeSql, view: &View) -> Result<Vec<Seen>, ApiError> {
    let body = source(sql, view, &[], "ns, mcis, vm, csp, region, os, last_ts");
    let rows = vm_rows(&sql.query(&vm_list_from_sql(&body)).await?)?;
    Ok(rows
        .into_iter()
        .map(|([ns, mcis, vm, csp, region, os], last)| Seen {
            ns,
            mcis,
            vm,
            csp,
            region,
            os,
            last_seen: last.unwrap_or_default(),
        })
        .collect())
}

/// One VM's figure in a "busiest" table.
#[derive(Debug, Clone, PartialEq)]
pub struct Busy {
    /// Namespace.
    pub ns: String,
    /// MCIS.
    pub mcis: String,
    /// VM id.
    pub vm: String,
    /// The figure.
    pub value: f64,
}

/// The busiest VMs by CPU, memory, disk and network (see the module doc for each figure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Busiest {
    /// Average `cpu_utilization`.
    pub cpu: Vec<Busy>,
    /// Average `mem_utilization`.
    pub memory: Vec<Busy>,
    /// The fullest device's average `disk_utilization`.
    pub disk: Vec<Busy>,
    /// Sum over devices of the average `bytes_in_rate` and `bytes_out_rate`.
    pub network: Vec<Busy>,
}

/// Per (ns, mcis, vm, metric, device): the window's sum and count.
type Sums = BTreeMap<(String, String, String, String, String), (f64, f64)>;

/// Ranks the VMs from their per-series sums and counts.
pub fn rank(sums: &Sums) -> Busiest {
    let mut per: [BTreeMap<(String, String, String), f64>; 4] = Default::default();
    for ((ns, mcis, vm, metric, _device), (s, c)) in sums {
        if *c <= 0.0 {
            continue;
        }
        let avg = s / c;
        let key = (ns.clone(), mcis.clone(), vm.clone());
        match metric.as_str() {
            "cpu_utilization" => *per[0].entry(key).or_default() = avg,
            "mem_utilization" => *per[1].entry(key).or_default() = avg,
            "disk_utilization" => {
                let e = per[2].entry(key).or_insert(f64::NEG_INFINITY);
                *e = e.max(avg);
            }
            "bytes_in_rate" | "bytes_out_rate" => *per[3].entry(key).or_default() += avg,
            _ => {}
        }
    }
    let top = |m: &BTreeMap<(String, String, String), f64>| {
        let mut v: Vec<Busy> = m
            .iter()
            .map(|((ns, mcis, vm), value)| Busy {
                ns: ns.clone(),
                mcis: mcis.clone(),
                vm: vm.clone(),
                value: *value,
            })
            .collect();
        v.sort_by(|a, b| b.value.total_cmp(&a.value).then_with(|| a.vm.cmp(&b.vm)));
        v.truncate(TOP);
        v
    };
    Busiest {
        cpu: top(&per[0]),
        memory: top(&per[1]),
        disk: top(&per[2]),
        network: top(&per[3]),
    }
}

/// The busiest VMs in the window.
pub async fn busiest(sql: &LakeSql, view: &View) -> Result<Busiest, ApiError> {
    let body = source(
        sql,
        view,
        &BUSY_METRICS,
        r#"ns, mcis, vm, metric, device, "sum", "count""#,
    );
    let q = format!(
        r#"SELECT ns, mcis, vm, metric, device, sum("sum") AS s, sum("count") AS c FROM {body} GROUP BY ns, mcis, vm, metric, device"#
    );
    let mut sums = Sums::new();
    for b in &sql.query(&q).await? {
        let cols: Vec<Vec<Option<String>>> = ["ns", "mcis", "vm", "metric", "device"]
            .iter()
            .map(|c| strings(column(b, c)?))
            .collect::<Result<_, _>>()?;
        let (s, c) = (floats(column(b, "s")?)?, floats(column(b, "c")?)?);
        for i in 0..b.num_rows() {
            let k = |c: usize| cols[c][i].clone().unwrap_or_default();
            sums.insert(
                (k(0), k(1), k(2), k(3), k(4)),
                (s[i].unwrap_or(0.0), c[i].unwrap_or(0.0)),
            );
        }
    }
    Ok(rank(&sums))
}

/// The CPU heat map's cells: per column, VMs by 10-point band of their average `cpu_utilization`.
pub async fn heat(sql: &LakeSql, view: &View) -> Result<Vec<chart::Cell>, ApiError> {
    let bucket = view.range.bucket_ms();
    let body = source(
        sql,
        view,
        &["cpu_utilization"],
        r#"window_start, ns, mcis, vm, "sum", "count""#,
    );
    let q = format!(
        r#"SELECT b, CAST(least(greatest(floor(avg / 10), 0), 9) AS BIGINT) AS band, count(*) AS vms FROM (
             SELECT date_bin(INTERVAL '{bucket} milliseconds', window_start, {origin}) AS b, ns, mcis, vm,
                    sum("sum") / sum("count") AS avg
             FROM {body} GROUP BY 1, 2, 3, 4) AS per_vm
           GROUP BY 1, 2 ORDER BY 1, 2"#,
        origin = ts_literal(0),
    );
    let mut cells = Vec::new();
    for b in &sql.query(&q).await? {
        let (t, band, n) = (
            millis(column(b, "b")?)?,
            floats(column(b, "band")?)?,
            floats(column(b, "vms")?)?,
        );
        for i in 0..b.num_rows() {
            if let (Some(t), Some(band), Some(n)) = (t[i], band[i], n[i]) {
                cells.push((t, band as usize, n as u64));
            }
        }
    }
    Ok(cells)
}

/// VM counts per value of `tag`, most first.
fn groups<'a>(vms: &'a [Seen], tag: &str) -> Vec<(&'a str, u64)> {
    let mut m: BTreeMap<&str, u64> = BTreeMap::new();
    for v in vms {
        *m.entry(v.tag(tag)).or_default() += 1;
    }
    let mut g: Vec<_> = m.into_iter().collect();
    g.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    g
}

/// The fleet page.
pub async fn page(sql: &LakeSql, view: &View) -> Result<Markup, ApiError> {
    let (vms, busy, cells, states) = tokio::try_join!(
        seen(sql, view),
        busiest(sql, view),
        heat(sql, view),
        current_states(sql, view.end_ms),
    )?;
    Ok(layout::page(
        Page::Fleet,
        "Fleet",
        view,
        render(view, &vms, &busy, &cells, &states),
    ))
}

/// The fleet page's body from its data.
pub fn render(
    view: &View,
    vms: &[Seen],
    busy: &Busiest,
    cells: &[chart::Cell],
    states: &[AlarmState],
) -> Markup {
    let silent: Vec<&Seen> = {
        let mut s: Vec<&Seen> = vms
            .iter()
            .filter(|v| v.last_seen < view.end_ms - SILENT_AFTER_MS)
            .collect();
        s.sort_by_key(|v| v.last_seen);
        s
    };
    let firing: Vec<&AlarmState> = states.iter().filter(|s| s.state != "OK").collect();
    let bucket = view.range.bucket_ms();
    html! {
        dl.summary {
            div { dt { "VMs reporting" } dd data-stat="vms" data-value=(vms.len()) { (vms.len()) } }
            div { dt { "Silent (no sample in the last 5 min)" } dd data-stat="silent" data-value=(silent.len()) { (silent.len()) } }
            div { dt { "Alarms firing" } dd data-stat="firing" data-value=(firing.len()) { (firing.len()) } }
        }
        h2 { "VMs by group" }
        div.grid {
            @for tag in ["csp", "region", "ns", "mcis"] {
                section.panel {
                    h3 { (tag) }
                    table data-table={ "groups-" (tag) } {
                        thead { tr { th { (tag) } th.num { "VMs" } } }
                        tbody {
                            @for (key, n) in groups(vms, tag) {
                                tr {
                                    td data-col="key" data-value=(key) {
                                        a href=(view.href("vms", &[(tag, key)])) { (key) }
                                    }
                                    (count_cell("vms", n))
                                }
                            }
                        }
                    }
                }
            }
        }
        p { a href=(view.href("vms", &[])) { "All " (vms.len()) " VMs" } }
        h2 { "CPU across the fleet" }
        figure.chart data-chart="heatmap" {
            (chart::heatmap("VMs by average CPU utilization", cells, 10,
                |r| format!("{}%", r * 10), view.from_ms(), view.end_ms, bucket))
            figcaption.muted { "Each column is " (bucket / 60_000) " min; each row a 10-point band of average cpu_utilization; darker means more VMs." }
            details {
                summary { "data" }
                table data-table="heatmap" {
                    thead { tr { th { "time" } th.num { "band" } th.num { "VMs" } } }
                    tbody {
                        @for (t, band, n) in cells {
                            tr { (time_cell("time", *t)) (count_cell("band", *band as u64 * 10)) (count_cell("vms", *n)) }
                        }
                    }
                }
            }
        }
        h2 { "Busiest VMs" }
        div.grid {
            (busy_table("cpu", "CPU utilization (avg %)", &busy.cpu, view))
            (busy_table("memory", "Memory utilization (avg %)", &busy.memory, view))
            (busy_table("disk", "Fullest disk (avg %)", &busy.disk, view))
            (busy_table("network", "Network in + out (avg bytes/s)", &busy.network, view))
        }
        h2 { "Alarms firing" }
        @if firing.is_empty() { (empty("No alarm is firing.")) } @else {
            section.panel { (super::alarms::states_table(&firing, view, false)) }
        }
        h2 { "Silent VMs" }
        @if silent.is_empty() { (empty("Every VM reported in the last 5 minutes of the window.")) } @else {
            section.panel {
                table data-table="silent" {
                    thead { tr { th { "VM" } th { "ns" } th { "mcis" } th { "last seen" } } }
                    tbody {
                        @for v in silent.iter().take(SILENT_SHOWN) {
                            tr {
                                td data-col="vm" data-value=(v.vm) { (vm_link(view, &v.ns, &v.mcis, &v.vm)) }
                                (text_cell("ns", &v.ns)) (text_cell("mcis", &v.mcis)) (time_cell("last_seen", v.last_seen))
                            }
                        }
                    }
                }
                @if silent.len() > SILENT_SHOWN { p.muted { (silent.len() - SILENT_SHOWN) " more not shown." } }
            }
        }
    }
}

fn busy_table(name: &str, title: &str, rows: &[Busy], view: &View) -> Markup {
    html! {
        section.panel {
            h3 { (title) }
            @if rows.is_empty() { (empty("No samples in this window.")) } @else {
                table data-table={ "busiest-" (name) } {
                    thead { tr { th { "VM" } th { "ns" } th { "mcis" } th.num { "value" } } }
                    tbody {
                        @for r in rows {
                            tr {
                                td data-col="vm" data-value=(r.vm) { (vm_link(view, &r.ns, &r.mcis, &r.vm)) }
                                (text_cell("ns", &r.ns)) (text_cell("mcis", &r.mcis)) (num_cell("value", Some(r.value)))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The VM list, filtered by the tags in the view and paged.
pub async fn vms_page(sql: &LakeSql, view: &View) -> Result<Markup, ApiError> {
    let page_no: usize = match view.get("page") {
        None => 1,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| ApiError::bad("page", format!("{p:?}: use a page number from 1")))?,
    };
    let all = seen(sql, view).await?;
    let filters: Vec<(&str, &str)> = ["csp", "region", "ns", "mcis"]
        .into_iter()
        .filter_map(|t| view.get(t).map(|v| (t, v)))
        .collect();
    let vms: Vec<&Seen> = all
        .iter()
        .filter(|v| filters.iter().all(|(t, want)| v.tag(t) == *want))
        .collect();
    let pages = vms.len().div_ceil(PAGE_SIZE).max(1);
    let shown = vms.iter().skip((page_no - 1) * PAGE_SIZE).take(PAGE_SIZE);
    let title = if filters.is_empty() {
        "VMs".to_owned()
    } else {
        let f: Vec<String> = filters.iter().map(|(t, v)| format!("{t}={v}")).collect();
        format!("VMs, {}", f.join(", "))
    };
    let body = html! {
        dl.summary { div { dt { "VMs" } dd data-stat="vms" data-value=(vms.len()) { (vms.len()) } } }
        section.panel {
            table data-table="vms" {
                thead { tr { th { "VM" } th { "ns" } th { "mcis" } th { "csp" } th { "region" } th { "os" } th { "last seen" } } }
                tbody {
                    @for v in shown {
                        tr {
                            td data-col="vm" data-value=(v.vm) { (vm_link(view, &v.ns, &v.mcis, &v.vm)) }
                            (text_cell("ns", &v.ns)) (text_cell("mcis", &v.mcis)) (text_cell("csp", &v.csp))
                            (text_cell("region", &v.region)) (text_cell("os", &v.os)) (time_cell("last_seen", v.last_seen))
                        }
                    }
                }
            }
        }
        p.pager {
            "Page " (page_no) " of " (pages) " "
            @if page_no > 1 { a rel="prev" href={ (view.query(&[("page", &(page_no - 1).to_string())])) } { "previous" } }
            @if page_no < pages { a rel="next" href={ (view.query(&[("page", &(page_no + 1).to_string())])) } { "next" } }
        }
    };
    Ok(layout::page(Page::Vms, &title, view, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vm: &str, metric: &str, device: &str) -> (String, String, String, String, String) {
        (
            "ns".into(),
            "m".into(),
            vm.into(),
            metric.into(),
            device.into(),
        )
    }

    #[test]
    fn ranks_each_figure_as_documented() {
        let mut s = Sums::new();
        s.insert(key("a", "cpu_utilization", ""), (90.0, 3.0));
        s.insert(key("b", "cpu_utilization", ""), (60.0, 1.0));
        s.insert(key("c", "cpu_utilization", ""), (30.0, 1.0));
        s.insert(key("a", "disk_utilization", "/"), (10.0, 1.0));
        s.insert(key("a", "disk_utilization", "/data"), (80.0, 1.0));
        s.insert(key("b", "disk_utilization", "/"), (50.0, 1.0));
        s.insert(key("a", "bytes_in_rate", "eth0"), (100.0, 2.0));
        s.insert(key("a", "bytes_out_rate", "eth0"), (30.0, 1.0));
        s.insert(key("a", "bytes_in_rate", "eth1"), (5.0, 1.0));
        s.insert(key("b", "mem_utilization", ""), (0.0, 0.0));
        let r = rank(&s);
        let names = |v: &[Busy]| {
            v.iter()
                .map(|b| (b.vm.clone(), b.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&r.cpu),
            [("b".into(), 60.0), ("a".into(), 30.0), ("c".into(), 30.0)]
        );
        assert_eq!(names(&r.disk), [("a".into(), 80.0), ("b".into(), 50.0)]);
        assert_eq!(names(&r.network), [("a".into(), 85.0)]);
        assert!(
            r.memory.is_empty(),
            "a series without samples ranks nowhere"
        );
    }

    #[test]
    fn silent_vms_and_group_counts_come_from_the_window() {
        let view = View::parse(&[("end".into(), "3600000".into())], 0, &[]).unwrap();
        let vm = |name: &str, csp: &str, last: i64| Seen {
            ns: "ns".into(),
            mcis: "m".into(),
            vm: name.into(),
            csp: csp.into(),
            region: "r".into(),
            os: "linux".into(),
            last_seen: last,
        };
        let vms = [
            vm("a", "aws", 3_590_000),
            vm("b", "aws", 3_000_000),
            vm("c", "gcp", 3_599_999),
        ];
        let html = render(&view, &vms, &Busiest::default(), &[], &[]).into_string();
        assert!(html.contains(r#"data-stat="vms" data-value="3""#), "{html}");
        assert!(
            html.contains(r#"data-stat="silent" data-value="1""#),
            "{html}"
        );
        assert!(html.contains(r#"<td data-col="key" data-value="aws"><a href="./vms?range=1h&amp;end=3600000&amp;csp=aws">aws</a></td><td class="num" data-col="vms" data-value="2">"#), "{html}");
        assert!(html.contains(r#"data-vm="b""#));
    }
}
