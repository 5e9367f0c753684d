//! The metric catalog: every metric CB-Dragonfly collects, its family, kind and unit.

/// The group a metric belongs to, as CB-Dragonfly's metric API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// CPU time split and counts.
    Cpu,
    /// CPU clock speed.
    Cpufreq,
    /// Physical memory.
    Memory,
    /// File system usage per mount point (device = mount point).
    Disk,
    /// Block device I/O counters (device = block device).
    Diskio,
    /// Network interface counters (device = interface).
    Network,
    /// Swap space and paging.
    Swap,
    /// Load averages.
    Load,
    /// Process counts and uptime.
    Process,
}

impl Family {
    /// Every family, in API order.
    pub const ALL: [Family; 9] = [
        Family::Cpu,
        Family::Cpufreq,
        Family::Memory,
        Family::Disk,
        Family::Diskio,
        Family::Network,
        Family::Swap,
        Family::Load,
        Family::Process,
    ];

    /// The family's name in the metric API path.
    pub fn name(self) -> &'static str {
        match self {
            Family::Cpu => "cpu",
            Family::Cpufreq => "cpufreq",
            Family::Memory => "memory",
            Family::Disk => "disk",
            Family::Diskio => "diskio",
            Family::Network => "network",
            Family::Swap => "swap",
            Family::Load => "load",
            Family::Process => "process",
        }
    }

    /// Whether the family's samples carry a `device` tag.
    pub fn per_device(self) -> bool {
        matches!(self, Family::Disk | Family::Diskio | Family::Network)
    }

    /// The catalog entries of this family.
    pub fn metrics(self) -> impl Iterator<Item = &'static MetricDef> {
        METRICS.iter().filter(move |m| m.family == self)
    }
}

/// How a metric's values behave over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down (a percentage, a size, a count right now).
    Gauge,
    /// A monotone running total since boot; the pipeline turns it into a per-second rate.
    Counter,
}

/// One entry of the metric catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// Metric name on the wire and in the lake.
    pub name: &'static str,
    /// The family it belongs to.
    pub family: Family,
    /// Gauge or counter.
    pub kind: Kind,
    /// Unit of the published value.
    pub unit: &'static str,
}

const fn m(name: &'static str, family: Family, kind: Kind, unit: &'static str) -> MetricDef {
    MetricDef {
        name,
        family,
        kind,
        unit,
    }
}

use Family::*;
use Kind::*;

/// Every metric Damselfly knows, CB-Dragonfly's set and its 2020 additions.
pub static METRICS: &[MetricDef] = &[
    m("cpu_utilization", Cpu, Gauge, "percent"),
    m("cpu_system", Cpu, Gauge, "percent"),
    m("cpu_idle", Cpu, Gauge, "percent"),
    m("cpu_iowait", Cpu, Gauge, "percent"),
    m("cpu_hintr", Cpu, Gauge, "percent"),
    m("cpu_sintr", Cpu, Gauge, "percent"),
    m("cpu_user", Cpu, Gauge, "percent"),
    m("cpu_nice", Cpu, Gauge, "percent"),
    m("cpu_steal", Cpu, Gauge, "percent"),
    m("cpu_guest", Cpu, Gauge, "percent"),
    m("cpu_guest_nice", Cpu, Gauge, "percent"),
    m("cpu_num", Cpu, Gauge, "count"),
    m("cpu_speed", Cpufreq, Gauge, "MHz"),
    m("mem_utilization", Memory, Gauge, "percent"),
    m("mem_total", Memory, Gauge, "bytes"),
    m("mem_used", Memory, Gauge, "bytes"),
    m("mem_free", Memory, Gauge, "bytes"),
    m("mem_shared", Memory, Gauge, "bytes"),
    m("mem_buffers", Memory, Gauge, "bytes"),
    m("mem_cached", Memory, Gauge, "bytes"),
    m("disk_utilization", Disk, Gauge, "percent"),
    m("disk_total", Disk, Gauge, "bytes"),
    m("disk_used", Disk, Gauge, "bytes"),
    m("disk_free", Disk, Gauge, "bytes"),
    m("kb_read", Diskio, Counter, "KiB"),
    m("kb_written", Diskio, Counter, "KiB"),
    m("ops_read", Diskio, Counter, "operations"),
    m("ops_write", Diskio, Counter, "operations"),
    m("read_time", Diskio, Counter, "ms"),
    m("write_time", Diskio, Counter, "ms"),
    m("bytes_in", Network, Counter, "bytes"),
    m("bytes_out", Network, Counter, "bytes"),
    m("pkts_in", Network, Counter, "packets"),
    m("pkts_out", Network, Counter, "packets"),
    m("err_in", Network, Counter, "packets"),
    m("err_out", Network, Counter, "packets"),
    m("drop_in", Network, Counter, "packets"),
    m("drop_out", Network, Counter, "packets"),
    m("swap_utilization", Swap, Gauge, "percent"),
    m("swap_total", Swap, Gauge, "bytes"),
    m("swap_used", Swap, Gauge, "bytes"),
    m("swap_free", Swap, Gauge, "bytes"),
    m("page_in", Swap, Counter, "pages"),
    m("page_out", Swap, Counter, "pages"),
    m("load_avg_1", Load, Gauge, "load"),
    m("load_avg_5", Load, Gauge, "load"),
    m("load_avg_15", Load, Gauge, "load"),
    m("proc_run", Process, Gauge, "count"),
    m("proc_num", Process, Gauge, "count"),
    m("uptime", Process, Gauge, "seconds"),
];

/// Looks a metric up by name; `None` for metrics outside the catalog (accepted, treated as gauges).
pub fn lookup(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_every_family_has_metrics() {
        let names: HashSet<_> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), METRICS.len());
        for f in Family::ALL {
            assert!(f.metrics().next().is_some(), "{} has no metric", f.name());
        }
    }

    #[test]
    fn counters_are_the_io_totals() {
        assert_eq!(lookup("bytes_in").unwrap().kind, Kind::Counter);
        assert_eq!(lookup("cpu_utilization").unwrap().kind, Kind::Gauge);
        assert!(lookup("no_such_metric").is_none());
    }
}
