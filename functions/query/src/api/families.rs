//! Metric families of the API (`cpu`, `memory`, `network`, ...) and the fields each answers, labelled as
//! CB-Dragonfly clients read them.
//!
//! Field names are CB-Dragonfly's (`cpu_utilization`, `mem_used`, `kb_read`, `bytes_in`, ...), so
//! its clients keep working. A counter's field carries its per-second rate, read from the
//! `{counter}_rate` series of the rollups, as CB-Dragonfly's `non_negative_derivative(..., 1s)` did
//! under the same names. What CB-Dragonfly got wrong and Damselfly does not:
//! - it labels values by position with a fixed list of names that is shorter than the list of
//!   fields it selects, so `network` loses `err_in`, `err_out`, `drop_in`, `drop_out` and `diskio`
//!   loses `read_time`, `write_time` (and its older `disk` answer labelled diskio columns with disk
//!   names); here every value is labelled with the name of the series it was computed from;
//! - `fill(0)` reports a window without samples as 0; here such a window is absent, and a field
//!   without samples in a present window is `null`;
//! - devices are pooled; here each value of a per-device family carries its `device`.

use damselfly_core::rates::rate_name;
use damselfly_schemas::Family;
use damselfly_schemas::catalog::Kind;

/// A metric family the API answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricFamily(Family);

/// One field of a family's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The key in each value object (CB-Dragonfly's name).
    pub label: &'static str,
    /// The lake series it is computed from (`bytes_in_rate` for the counter `bytes_in`).
    pub series: &'static str,
    /// Unit of the answered value (`bytes/s` for a counter in bytes).
    pub unit: &'static str,
}

/// Units of counters' rates, by the counter's unit.
fn rate_unit(unit: &'static str) -> &'static str {
    match unit {
        "bytes" => "bytes/s",
        "KiB" => "KiB/s",
        "operations" => "operations/s",
        "packets" => "packets/s",
        "pages" => "pages/s",
        "ms" => "ms/s",
        _ => "per second",
    }
}

impl MetricFamily {
    /// Every family, in API order.
    pub const ALL: [MetricFamily; 9] = [
        MetricFamily(Family::Cpu),
        MetricFamily(Family::Cpufreq),
        MetricFamily(Family::Memory),
        MetricFamily(Family::Disk),
        MetricFamily(Family::Diskio),
        MetricFamily(Family::Network),
        MetricFamily(Family::Swap),
        MetricFamily(Family::Load),
        MetricFamily(Family::Process),
    ];

    /// The family named in the API path (`cpu`, `cpufreq`, `memory`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Every family's path name.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|f| f.name()).collect()
    }

    /// The name in the API path and in the answer's `name`.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Whether values carry a `device` (mount point, block device, interface).
    pub fn per_device(self) -> bool {
        self.0.per_device()
    }

    /// The fields of the answer, in catalog order.
    pub fn fields(self) -> Vec<Field> {
        self.0
            .metrics()
            .map(|m| match m.kind {
                Kind::Gauge => Field {
                    label: m.name,
                    series: m.name,
                    unit: m.unit,
                },
                Kind::Counter => Field {
                    label: m.name,
                    series: rate_name(m.name).expect("counters have rate series"),
                    unit: rate_unit(m.unit),
                },
            })
            .collect()
    }

    /// The field computed from a lake series.
    pub fn field_of(self, series: &str) -> Option<Field> {
        self.fields().into_iter().find(|f| f.series == series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cb_dragonfly_names_and_rates_for_counters() {
        let net = MetricFamily::parse("network").unwrap();
        let labels: Vec<_> = net.fields().iter().map(|f| f.label).collect();
        assert_eq!(
            labels,
            [
                "bytes_in",
                "bytes_out",
                "pkts_in",
                "pkts_out",
                "err_in",
                "err_out",
                "drop_in",
                "drop_out"
            ]
        );
        assert_eq!(net.field_of("bytes_in_rate").unwrap().unit, "bytes/s");
        assert!(net.per_device());
        let diskio = MetricFamily::parse("diskio").unwrap().fields();
        assert!(
            diskio
                .iter()
                .any(|f| f.label == "read_time" && f.series == "read_time_rate")
        );
        let mem = MetricFamily::parse("memory").unwrap();
        assert_eq!(mem.fields()[0].series, "mem_utilization");
        assert!(!mem.per_device());
        assert!(MetricFamily::parse("mem").is_none());
        for name in [
            "cpu", "cpufreq", "memory", "disk", "network", "diskio", "swap", "load",
        ] {
            assert!(MetricFamily::parse(name).is_some(), "{name}");
        }
    }
}
