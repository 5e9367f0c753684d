//! The fleet page and the VM list: who is reporting (by csp, region, ns, mcis), who went silent,
//! the busiest VMs, a CPU heat map that stays readable at any fleet size, and the firing alarms.
//!
//! Every figure comes from the rollup partials in the window `[from, end)`, merged as the metric
//! API merges them (an average is `sum(sum) / sum(count)` over the window's rows, whichever file
//! or table holds them); ranges of a day or more read `rollup_1h` up to its watermark. The rows
//! are read through per-file digests ([`super::digest`]), so a file is scanned once, not per page.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::alarms::{AlarmState, current_states};
use super::chart;
use super::digest::{DeviceMetric, VmFigures, fleet};
use super::layout::{self, Page, count_cell, empty, num_cell, text_cell, time_cell, vm_link};
use super::view::View;
use crate::LakeSql;
use crate::api::ApiError;

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
/// A VM's value of `tag` (csp, region, ns or mcis; empty for any other name).
fn tag_of<'a>(v: &'a VmFigures, name: &str) -> &'a str {
    match name {
        "csp" => &v.tags.csp,
        "region" => &v.tags.region,
        "ns" => &v.tags.ns,
        "mcis" => &v.tags.mcis,
        _ => "",
    }
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

/// A VM's (ns, mcis, vm).
fn key(v: &VmFigures) -> (&str, &str, &str) {
    (&v.tags.ns, &v.tags.mcis, &v.tags.vm)
}

/// Ranks the VMs by their window figures; a VM without samples of a figure ranks nowhere in it.
pub fn rank(vms: &[VmFigures]) -> Busiest {
    let mut per: [Vec<(&VmFigures, f64)>; 4] = Default::default();
    for v in vms {
        if let Some(avg) = v.cpu.avg() {
            per[0].push((v, avg));
        }
        if let Some(avg) = v.mem.avg() {
            per[1].push((v, avg));
        }
        let disks = v
            .devices
            .iter()
            .filter(|(m, _, _)| *m == DeviceMetric::Disk);
        if let Some(max) = disks.filter_map(|(_, _, p)| p.avg()).reduce(f64::max) {
            per[2].push((v, max));
        }
        let nics = v
            .devices
            .iter()
            .filter(|(m, _, _)| *m != DeviceMetric::Disk);
        if let Some(total) = nics.filter_map(|(_, _, p)| p.avg()).reduce(|a, b| a + b) {
            per[3].push((v, total));
        }
    }
    let [cpu, memory, disk, network] = per.map(|mut figures| {
        figures.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| key(a.0).cmp(&key(b.0))));
        figures
            .into_iter()
            .take(TOP)
            .map(|(v, value)| Busy {
                ns: v.tags.ns.clone(),
                mcis: v.tags.mcis.clone(),
                vm: v.tags.vm.clone(),
                value,
            })
            .collect()
    });
    Busiest {
        cpu,
        memory,
        disk,
        network,
    }
}

/// VM counts per value of `tag`, most first.
fn groups<'a>(vms: &'a [VmFigures], tag: &str) -> Vec<(&'a str, u64)> {
    let mut m: BTreeMap<&str, u64> = BTreeMap::new();
    for v in vms {
        *m.entry(tag_of(v, tag)).or_default() += 1;
    }
    let mut g: Vec<_> = m.into_iter().collect();
    g.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    g
}

/// The fleet page.
pub async fn page(sql: &LakeSql, view: &View) -> Result<Markup, ApiError> {
    let (fleet, states) = tokio::try_join!(fleet(sql, view), current_states(sql, view.end_ms))?;
    Ok(layout::page(
        Page::Fleet,
        "Fleet",
        view,
        render(view, &fleet.vms, &rank(&fleet.vms), &fleet.heat, &states),
    ))
}

/// The fleet page's body from its data.
pub fn render(
    view: &View,
    vms: &[VmFigures],
    busy: &Busiest,
    cells: &[chart::Cell],
    states: &[AlarmState],
) -> Markup {
    let silent: Vec<&VmFigures> = {
        let mut s: Vec<&VmFigures> = vms
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
                                td data-col="vm" data-value=(v.tags.vm) { (vm_link(view, &v.tags.ns, &v.tags.mcis, &v.tags.vm)) }
                                (text_cell("ns", &v.tags.ns)) (text_cell("mcis", &v.tags.mcis)) (time_cell("last_seen", v.last_seen))
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
    let all = fleet(sql, view).await?.vms;
    let filters: Vec<(&str, &str)> = ["csp", "region", "ns", "mcis"]
        .into_iter()
        .filter_map(|t| view.get(t).map(|v| (t, v)))
        .collect();
    let vms: Vec<&VmFigures> = all
        .iter()
        .filter(|v| filters.iter().all(|(t, want)| tag_of(v, t) == *want))
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
                            td data-col="vm" data-value=(v.tags.vm) { (vm_link(view, &v.tags.ns, &v.tags.mcis, &v.tags.vm)) }
                            (text_cell("ns", &v.tags.ns)) (text_cell("mcis", &v.tags.mcis)) (text_cell("csp", &v.tags.csp))
                            (text_cell("region", &v.tags.region)) (text_cell("os", &v.tags.os)) (time_cell("last_seen", v.last_seen))
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
    use crate::console::digest::Partial;
    use damselfly_schemas::Tags;

    fn vm(
        name: &str,
        cpu: Option<(f64, u64)>,
        devices: &[(DeviceMetric, &str, f64, u64)],
    ) -> VmFigures {
        let partial = |(sum, count)| Partial { sum, count };
        VmFigures {
            tags: Tags {
                ns: "ns".into(),
                mcis: "m".into(),
                vm: name.into(),
                ..Default::default()
            },
            cpu: cpu.map(partial).unwrap_or_default(),
            devices: devices
                .iter()
                .map(|(m, d, s, c)| (*m, d.to_string(), partial((*s, *c))))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ranks_each_figure_as_documented() {
        use DeviceMetric::*;
        let vms = [
            vm(
                "a",
                Some((90.0, 3)),
                &[
                    (Disk, "/", 10.0, 1),
                    (Disk, "/data", 80.0, 1),
                    (BytesIn, "eth0", 100.0, 2),
                    (BytesOut, "eth0", 30.0, 1),
                    (BytesIn, "eth1", 5.0, 1),
                ],
            ),
            vm("b", Some((60.0, 1)), &[(Disk, "/", 50.0, 1)]),
            vm("c", Some((30.0, 1)), &[]),
        ];
        let r = rank(&vms);
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
        let vm = |name: &str, csp: &str, last: i64| VmFigures {
            tags: Tags {
                ns: "ns".into(),
                mcis: "m".into(),
                vm: name.into(),
                csp: csp.into(),
                region: "r".into(),
                os: "linux".into(),
                host: String::new(),
            },
            last_seen: last,
            ..Default::default()
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
