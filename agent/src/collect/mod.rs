//! The host collector: one [`MetricMessage`] per call from /proc and statvfs, named as the catalog says.
//!
//! Linux only. Device-less metrics go in `metrics`; `disk` is keyed by mount point, `diskio` by block
//! device and `network` by interface. Counters are running totals since boot; cpu percentages are
//! shares of the time between this reading of /proc/stat and the previous one.

mod cpu;
mod disk;
mod diskio;
mod memory;
mod network;
mod system;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use damselfly_schemas::wire::WIRE_VERSION;
use damselfly_schemas::{MetricMessage, Tags};

pub use system::hostname;

/// Devices the collector leaves out; each list's glob patterns match whole names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkipLists {
    /// File system types left out of `disk`.
    pub fs_types: Patterns,
    /// Mount points left out of `disk`.
    pub mount_points: Patterns,
    /// Block devices left out of `diskio`.
    pub block_devices: Patterns,
    /// Interfaces left out of `network`.
    pub interfaces: Patterns,
}

/// Glob patterns (globset's syntax: `*` matches any run of characters, `/` included; `?`, `[...]`
/// and `{a,b}` as usual), compiled once and matched against whole names.
#[derive(Clone, Default)]
pub struct Patterns {
    source: Vec<String>,
    set: globset::GlobSet,
}

impl Patterns {
    /// Compiles the patterns; the error names the first one that is not a valid glob.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, globset::Error> {
        let mut set = globset::GlobSetBuilder::new();
        for p in patterns {
            set.add(globset::Glob::new(p.as_ref())?);
        }
        Ok(Self {
            source: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            set: set.build()?,
        })
    }

    /// Whether any pattern matches the whole of `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

/// A source the collector could not read or understand; the rest of the collection still happens.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A file or statvfs call failed.
    #[error("{path}: {source}")]
    Read {
        /// The file or mount point.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file did not have the layout the kernel documents.
    #[error("{path}: unexpected format: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        what: String,
    },
    /// The host has more devices (or device samples) than one message may carry; the rest were
    /// left out.
    #[error(
        "{found} devices, more than a message may carry (at most {limit}, and 8192 samples): {left_out} left out (add the busy kinds, e.g. \"veth*\", to collect.skip_interfaces or skip_block_devices)"
    )]
    TooManyDevices {
        /// Devices collected.
        found: usize,
        /// The wire contract's limit.
        limit: usize,
        /// Devices left out of the message (the last by name).
        left_out: usize,
    },
}

pub(crate) fn read(path: &str) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|source| CollectError::Read {
        path: path.into(),
        source,
    })
}

pub(crate) fn format_error(path: &str, what: impl Into<String>) -> CollectError {
    CollectError::Format {
        path: Path::new(path).to_owned(),
        what: what.into(),
    }
}

/// Leaves out the devices (the last by name) past the wire contract's limits on devices and
/// samples per message; says how many, if any.
fn fit_devices(s: &mut Sample) -> Option<CollectError> {
    use damselfly_schemas::wire::{MAX_DEVICES, MAX_SAMPLES};
    let mut samples = s.metrics.len();
    let cut = s
        .devices
        .iter()
        .enumerate()
        .find(|(i, (_, m))| {
            samples += m.len();
            *i >= MAX_DEVICES || samples > MAX_SAMPLES
        })
        .map(|(_, (d, _))| d.clone())?;
    let found = s.devices.len();
    let left_out = s.devices.split_off(&cut).len();
    Some(CollectError::TooManyDevices {
        found,
        limit: MAX_DEVICES,
        left_out,
    })
}

/// The values of one collection before they are wrapped in a message.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    metrics: BTreeMap<String, f64>,
    devices: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Sample {
    /// Sets a device-less metric.
    fn set(&mut self, name: &str, value: f64) {
        debug_assert!(damselfly_schemas::catalog::lookup(name).is_some(), "{name}");
        if value.is_finite() {
            self.metrics.insert(name.to_owned(), value);
        }
    }

    /// Sets a per-device metric.
    fn set_dev(&mut self, device: &str, name: &str, value: f64) {
        debug_assert!(damselfly_schemas::catalog::lookup(name).is_some(), "{name}");
        if value.is_finite() {
            self.devices
                .entry(device.to_owned())
                .or_default()
                .insert(name.to_owned(), value);
        }
    }
}

/// Rounds a percentage to hundredths, as the simulator publishes them.
pub(crate) fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole * 10_000.0).round() / 100.0
    } else {
        0.0
    }
}

/// One collection: the message and whatever could not be read this time.
#[derive(Debug)]
pub struct Collection {
    /// The message to publish.
    pub message: MetricMessage,
    /// Sources that failed; their metrics are missing from `message`.
    pub errors: Vec<CollectError>,
}

/// Collects this host's metrics; keeps the previous /proc/stat reading for cpu percentages.
#[derive(Debug)]
pub struct Collector {
    tags: Tags,
    skip: SkipLists,
    cpu_prev: Option<cpu::CpuTimes>,
}

impl Collector {
    /// Creates a collector and takes the first /proc/stat reading, so the next collection has cpu
    /// percentages (they cover the time since this call).
    pub fn new(tags: Tags, skip: SkipLists) -> Self {
        let cpu_prev = cpu::read_stat().ok().map(|s| s.total);
        Self {
            tags,
            skip,
            cpu_prev,
        }
    }

    /// The tags stamped on every message.
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// Collects every family once, stamped `ts_ms` (ms since the epoch).
    pub fn collect(&mut self, ts_ms: i64) -> Collection {
        let mut s = Sample::default();
        let mut errors = Vec::new();
        let mut procs_running = None;
        match cpu::read_stat() {
            Ok(stat) => {
                procs_running = stat.procs_running;
                s.set("cpu_num", stat.cpus as f64);
                if let Some(prev) = &self.cpu_prev {
                    cpu::shares(prev, &stat.total, &mut s);
                }
                self.cpu_prev = Some(stat.total);
            }
            Err(e) => errors.push(e),
        }
        cpu::speed(&mut s);
        for result in [
            memory::collect(&mut s),
            memory::collect_swap(&mut s),
            system::collect(&mut s, procs_running),
            diskio::collect(&self.skip, &mut s),
            network::collect(&self.skip, &mut s),
        ] {
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors.extend(disk::collect(&self.skip, &mut s));
        // A message past the wire contract's limits would be rejected whole: send what fits.
        if let Some(e) = fit_devices(&mut s) {
            errors.push(e);
        }
        Collection {
            message: MetricMessage {
                v: WIRE_VERSION,
                ts: ts_ms,
                tags: self.tags.clone(),
                metrics: s.metrics,
                devices: s.devices,
            },
            errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_schemas::catalog::{Kind, lookup};

    fn tags() -> Tags {
        Tags {
            ns: "ns01".into(),
            mcis: "mcis-1".into(),
            vm: "vm-1".into(),
            ..Tags::default()
        }
    }

    fn default_skip() -> SkipLists {
        crate::AgentConfig::default().skip_lists()
    }

    #[test]
    fn a_host_with_too_many_devices_sends_what_a_message_may_carry() {
        let mut s = Sample::default();
        s.set("cpu_num", 4.0);
        for d in 0..1_500 {
            let m = s.devices.entry(format!("veth{d:04}")).or_default();
            for k in [
                "bytes_in",
                "bytes_out",
                "pkts_in",
                "pkts_out",
                "err_in",
                "err_out",
            ] {
                m.insert(k.to_owned(), 1.0);
            }
        }
        let e = fit_devices(&mut s).expect("left some out").to_string();
        // 6 samples a device and cpu_num: 1,365 devices would be 8,191 samples, but 1,024 is the cap.
        assert_eq!(s.devices.len(), 1_024);
        assert!(e.contains("476 left out"), "{e}");
        let msg = MetricMessage {
            v: WIRE_VERSION,
            ts: 1,
            tags: tags(),
            metrics: s.metrics.clone(),
            devices: s.devices.clone(),
        };
        msg.validate().unwrap();

        let mut s = Sample::default();
        for d in 0..900 {
            let m = s.devices.entry(format!("eth{d:04}")).or_default();
            for k in 0..10 {
                m.insert(format!("m{k}"), 1.0);
            }
        }
        fit_devices(&mut s).expect("left some out");
        assert_eq!(s.devices.len(), 819, "8,192 samples at 10 a device");
        assert!(fit_devices(&mut Sample::default()).is_none());
    }

    /// Two collections 200 ms apart, the first one with its own prior reading.
    fn two(skip: SkipLists) -> (MetricMessage, MetricMessage) {
        let mut c = Collector::new(tags(), skip);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let a = c.collect(1);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let b = c.collect(2);
        for e in a.errors.iter().chain(&b.errors) {
            assert!(
                matches!(e, CollectError::Read { .. }),
                "only unreadable mounts are tolerated here: {e}"
            );
        }
        (a.message, b.message)
    }

    fn pat(p: &[&str]) -> Patterns {
        Patterns::new(p).unwrap()
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(pat(&["lo"]).matches("lo"));
        assert!(!pat(&["lo"]).matches("lo0"));
        assert!(pat(&["cgroup*"]).matches("cgroup2"));
        assert!(pat(&["*"]).matches(""));
        assert!(pat(&["veth*@*"]).matches("veth12@if3"));
        assert!(pat(&["/snap/*"]).matches("/snap/core/1"));
        assert!(!pat(&["/snap/*"]).matches("/snapx"));
        assert!(pat(&["*.lxcfs"]).matches("fuse.lxcfs"));
        assert!(!pat(&["a*b*c"]).matches("acb"));
        assert!(pat(&["eth?", "ens[0-9]*"]).matches("ens5"));
        assert!(!pat(&[]).matches("lo"));
        let e = Patterns::new(&["ens[0-9"]).unwrap_err().to_string();
        assert!(e.contains("ens[0-9"), "{e}");
    }

    #[test]
    fn every_name_is_in_the_catalog_where_it_belongs() {
        let (m, _) = two(default_skip());
        m.validate().expect("a valid v1 message");
        for name in m.metrics.keys() {
            let def = lookup(name).unwrap_or_else(|| panic!("{name} not in the catalog"));
            assert!(!def.family.per_device(), "{name} belongs in devices");
        }
        for (device, metrics) in &m.devices {
            for name in metrics.keys() {
                let def = lookup(name).unwrap_or_else(|| panic!("{name} not in the catalog"));
                assert!(
                    def.family.per_device(),
                    "{name} of {device} belongs in metrics"
                );
            }
        }
        for name in [
            "cpu_utilization",
            "cpu_idle",
            "cpu_num",
            "mem_total",
            "mem_used",
            "swap_total",
            "load_avg_1",
            "proc_num",
            "proc_run",
            "uptime",
        ] {
            assert!(m.metrics.contains_key(name), "{name} missing");
        }
    }

    #[test]
    fn values_agree_with_proc() {
        let before: f64 = read("/proc/uptime")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (m, _) = two(default_skip());
        let after: f64 = read("/proc/uptime")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let g = |k: &str| m.metrics[k];

        // cpu: the ten shares of one reading partition the interval.
        let shares = [
            "cpu_user",
            "cpu_nice",
            "cpu_system",
            "cpu_idle",
            "cpu_iowait",
            "cpu_hintr",
            "cpu_sintr",
            "cpu_steal",
            "cpu_guest",
            "cpu_guest_nice",
        ];
        let sum: f64 = shares.iter().map(|k| g(k)).sum();
        assert!((sum - 100.0).abs() < 0.1, "cpu shares sum to {sum}");
        assert!((g("cpu_utilization") - (100.0 - g("cpu_idle"))).abs() < 0.011);
        let stat = read("/proc/stat").unwrap();
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        assert_eq!(g("cpu_num"), cpus as f64);

        // memory: bytes, as /proc/meminfo says in kB.
        let meminfo = read("/proc/meminfo").unwrap();
        let kb = |key: &str| -> f64 {
            let line = meminfo.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_ascii_whitespace()
                .nth(1)
                .unwrap()
                .parse::<f64>()
                .unwrap()
                * 1024.0
        };
        assert_eq!(g("mem_total"), kb("MemTotal:"));
        assert!(g("mem_used") <= g("mem_total"));
        assert!(g("mem_free") <= g("mem_total"));
        assert!((0.0..=100.0).contains(&g("mem_utilization")));
        assert_eq!(g("swap_total"), kb("SwapTotal:"));
        assert_eq!(g("swap_used") + g("swap_free"), g("swap_total"));

        // process: uptime between two readings of /proc/uptime.
        assert!(
            g("uptime") >= before.floor() && g("uptime") <= after,
            "uptime"
        );
        assert!(g("proc_num") >= 1.0);
    }

    #[test]
    fn counters_never_go_back() {
        let (a, b) = two(default_skip());
        let mut checked = 0;
        for (device, metrics) in &a.devices {
            for (name, v) in metrics {
                if lookup(name).unwrap().kind == Kind::Counter
                    && let Some(later) = b.devices.get(device).and_then(|m| m.get(name))
                {
                    assert!(later >= v, "{device} {name}: {v} then {later}");
                    checked += 1;
                }
            }
        }
        for (name, v) in &a.metrics {
            if lookup(name).unwrap().kind == Kind::Counter {
                assert!(b.metrics[name] >= *v, "{name}");
                checked += 1;
            }
        }
        assert!(checked > 0, "some counter was compared");
    }

    #[test]
    fn devices_follow_the_proc_tables_and_skip_lists() {
        let (m, _) = two(default_skip());
        let skip = default_skip();
        // network: every interface of /proc/net/dev but the skipped ones.
        let net = read("/proc/net/dev").unwrap();
        for name in net
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, _)| n.trim())
        {
            let skipped = skip.interfaces.matches(name);
            assert_eq!(!skipped, m.devices.contains_key(name), "interface {name}");
        }
        assert!(!m.devices.contains_key("lo"));
        // disk: no mount of a skipped file system type is reported.
        let mounts = read("/proc/self/mounts").unwrap();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            if skip.fs_types.matches(f[2]) {
                let reported = m
                    .devices
                    .get(f[1])
                    .is_some_and(|d| d.contains_key("disk_total"));
                assert!(!reported, "{} ({}) should be skipped", f[1], f[2]);
            }
        }
        for (device, metrics) in &m.devices {
            assert!(!pat(&["loop*"]).matches(device), "{device}");
            if let Some(total) = metrics.get("disk_total") {
                assert!(metrics["disk_used"] <= *total, "{device}");
                assert!((0.0..=100.0).contains(&metrics["disk_utilization"]));
            }
        }
        // Skipping everything leaves no device at all.
        let all = SkipLists {
            fs_types: pat(&["*"]),
            mount_points: Patterns::default(),
            block_devices: pat(&["*"]),
            interfaces: pat(&["*"]),
        };
        let (m, _) = two(all);
        assert!(m.devices.is_empty(), "{:?}", m.devices.keys());
    }
}
