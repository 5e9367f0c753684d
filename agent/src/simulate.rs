//! The fleet simulator: N virtual VMs over several clouds, drifting gauges and monotone counters, seeded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use damselfly_schemas::catalog::{Family, METRICS};
use damselfly_schemas::{MetricMessage, Tags};
use rand::{Rng as _, SeedableRng as _};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::{PublishError, Publisher};

/// Clouds and their regions the simulated fleet is spread over.
const CLOUDS: &[(&str, &[&str])] = &[
    ("aws", &["ap-northeast-2", "us-east-1", "eu-west-1"]),
    ("gcp", &["asia-northeast3", "us-central1"]),
    ("azure", &["koreacentral", "eastus"]),
    ("alibaba", &["cn-hangzhou"]),
    ("openstack", &["kr-central-1"]),
];

/// VMs per simulated VM group (mcis).
const VMS_PER_MCIS: usize = 10;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

struct Devices {
    mount: &'static str,
    block: &'static str,
    iface: &'static str,
}

const LINUX: Devices = Devices {
    mount: "/",
    block: "vda",
    iface: "eth0",
};
const WINDOWS: Devices = Devices {
    mount: "C:",
    block: "disk0",
    iface: "Ethernet",
};

struct SimVm {
    tags: Tags,
    devices: &'static Devices,
    cpu_base: f64,
    cpu: f64,
    cpu_num: f64,
    mem_total: f64,
    mem_frac: f64,
    disk_total: f64,
    disk_used: f64,
    swap_total: f64,
    uptime: f64,
    /// Running totals of every counter metric, by catalog name.
    counters: BTreeMap<&'static str, f64>,
}

/// A simulated fleet; the same seed and VM count always produce the same messages.
pub struct Fleet {
    vms: Vec<SimVm>,
    rng: Pcg64Mcg,
}

impl Fleet {
    /// Creates `vms` virtual VMs in namespace `ns`.
    pub fn new(vms: usize, seed: u64, ns: &str) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let vms = (0..vms)
            .map(|i| {
                let (csp, regions) = CLOUDS[i % CLOUDS.len()];
                let region = regions[(i / CLOUDS.len()) % regions.len()];
                let windows = i % 7 == 6;
                let counters = METRICS
                    .iter()
                    .filter(|m| m.kind == damselfly_schemas::Kind::Counter)
                    .map(|m| (m.name, rng.random_range(0.0..1e6_f64).floor()))
                    .collect();
                let cpu_base = rng.random_range(5.0..60.0);
                SimVm {
                    tags: Tags {
                        ns: ns.to_owned(),
                        mcis: format!("mcis-{:03}", i / VMS_PER_MCIS),
                        vm: format!("vm-{csp}-{i:05}"),
                        csp: csp.to_owned(),
                        region: region.to_owned(),
                        os: if windows { "windows" } else { "linux" }.to_owned(),
                        host: format!("host-{i:05}"),
                    },
                    devices: if windows { &WINDOWS } else { &LINUX },
                    cpu_base,
                    cpu: cpu_base,
                    cpu_num: [1.0, 2.0, 4.0, 8.0, 16.0][rng.random_range(0..5)],
                    mem_total: [2.0, 4.0, 8.0, 16.0, 32.0][rng.random_range(0..5)] * GIB,
                    mem_frac: rng.random_range(0.2..0.8),
                    disk_total: [50.0, 100.0, 200.0][rng.random_range(0..3)] * GIB,
                    disk_used: rng.random_range(5.0..40.0) * GIB,
                    swap_total: if windows { 0.0 } else { 2.0 * GIB },
                    uptime: rng.random_range(3_600.0..8_640_000.0_f64).floor(),
                    counters,
                }
            })
            .collect();
        Self { vms, rng }
    }

    /// Number of VMs.
    pub fn len(&self) -> usize {
        self.vms.len()
    }

    /// Whether the fleet has no VM.
    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    /// Samples in every message: the whole catalog, one device of each per-device family.
    pub fn samples_per_message() -> usize {
        METRICS.len()
    }

    /// Advances every VM by `interval` and returns one message per VM stamped `ts_ms`.
    pub fn tick(&mut self, ts_ms: i64, interval: Duration) -> Vec<MetricMessage> {
        let secs = interval.as_secs_f64();
        let rng = &mut self.rng;
        self.vms
            .iter_mut()
            .map(|vm| vm.step(rng, ts_ms, secs))
            .collect()
    }
}

impl SimVm {
    fn step(&mut self, rng: &mut Pcg64Mcg, ts_ms: i64, secs: f64) -> MetricMessage {
        self.drift(rng, secs);
        let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
        self.cpu_gauges(rng, &mut metrics);
        self.memory_gauges(&mut metrics);
        self.load_gauges(rng, &mut metrics);
        let devices = self.device_metrics(&mut metrics);
        MetricMessage {
            v: damselfly_schemas::wire::WIRE_VERSION,
            ts: ts_ms,
            tags: self.tags.clone(),
            metrics,
            devices,
        }
    }

    // Moves the gauges one random-walk step and adds `secs` worth of traffic to every counter.
    fn drift(&mut self, rng: &mut Pcg64Mcg, secs: f64) {
        // Mean-reverting random walks keep values realistic over long runs.
        self.cpu = (self.cpu + 0.2 * (self.cpu_base - self.cpu) + rng.random_range(-4.0..4.0))
            .clamp(0.5, 99.5);
        self.mem_frac = (self.mem_frac + rng.random_range(-0.01..0.01)).clamp(0.05, 0.97);
        self.disk_used =
            (self.disk_used + rng.random_range(0.0..2e6) * secs).min(self.disk_total * 0.99);
        self.uptime += secs;
        for (name, total) in self.counters.iter_mut() {
            let per_sec = match *name {
                "bytes_in" | "bytes_out" => rng.random_range(1e4..5e6),
                "kb_read" | "kb_written" => rng.random_range(10.0..5e3),
                "err_in" | "err_out" | "drop_in" | "drop_out" => rng.random_range(0.0..0.05),
                _ => rng.random_range(1.0..500.0),
            };
            *total += (per_sec * secs).floor();
        }
    }

    // Sets the cpu_* gauges from the current utilization.
    fn cpu_gauges(&self, rng: &mut Pcg64Mcg, metrics: &mut BTreeMap<String, f64>) {
        let cpu = self.cpu;
        let mut set = |k: &str, v: f64| set_gauge(metrics, k, v);
        set("cpu_utilization", cpu);
        set("cpu_user", cpu * 0.7);
        set("cpu_system", cpu * 0.2);
        set("cpu_iowait", cpu * 0.04);
        set("cpu_hintr", cpu * 0.01);
        set("cpu_sintr", cpu * 0.02);
        set("cpu_nice", 0.0);
        set("cpu_steal", cpu * 0.03);
        set("cpu_guest", 0.0);
        set("cpu_guest_nice", 0.0);
        set("cpu_idle", 100.0 - cpu);
        set("cpu_num", self.cpu_num);
        set("cpu_speed", 2_400.0 + rng.random_range(-100.0..300.0));
    }

    // Sets the mem_* and swap_* gauges, in whole KiB as /proc/meminfo reports them.
    fn memory_gauges(&self, metrics: &mut BTreeMap<String, f64>) {
        let mem_used = kib(self.mem_total * self.mem_frac);
        let swap_used = kib(self.swap_total * (self.mem_frac - 0.7).max(0.0));
        let mut set = |k: &str, v: f64| set_gauge(metrics, k, v);
        set("mem_utilization", mem_used / self.mem_total * 100.0);
        set("mem_total", self.mem_total);
        set("mem_used", mem_used);
        set(
            "mem_free",
            kib(self.mem_total * (1.0 - self.mem_frac) * 0.4),
        );
        set("mem_shared", kib(self.mem_total * 0.01));
        set("mem_buffers", kib(self.mem_total * 0.03));
        set(
            "mem_cached",
            kib(self.mem_total * (1.0 - self.mem_frac) * 0.57),
        );
        set("swap_total", self.swap_total);
        set("swap_used", swap_used);
        set("swap_free", self.swap_total - swap_used);
        set(
            "swap_utilization",
            if self.swap_total > 0.0 {
                swap_used / self.swap_total * 100.0
            } else {
                0.0
            },
        );
    }

    // Sets the load averages, process counts and uptime.
    fn load_gauges(&self, rng: &mut Pcg64Mcg, metrics: &mut BTreeMap<String, f64>) {
        let cpu = self.cpu;
        let mut set = |k: &str, v: f64| set_gauge(metrics, k, v);
        set(
            "load_avg_1",
            cpu / 100.0 * self.cpu_num * rng.random_range(0.8..1.2),
        );
        set("load_avg_5", cpu / 100.0 * self.cpu_num);
        set("load_avg_15", cpu / 100.0 * self.cpu_num * 0.95);
        set("proc_run", (cpu / 100.0 * self.cpu_num).ceil());
        set("proc_num", 150.0 + (cpu * 2.0).floor());
        set("uptime", self.uptime);
    }

    // The per-device metrics (disk usage in whole blocks, disk I/O and network counters); counters
    // of other families go into `metrics`.
    fn device_metrics(
        &self,
        metrics: &mut BTreeMap<String, f64>,
    ) -> BTreeMap<String, BTreeMap<String, f64>> {
        let disk_used = blocks(self.disk_used);
        let mut devices: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let disk = devices.entry(self.devices.mount.to_owned()).or_default();
        disk.insert("disk_total".into(), self.disk_total);
        disk.insert("disk_used".into(), disk_used);
        disk.insert("disk_free".into(), self.disk_total - disk_used);
        disk.insert(
            "disk_utilization".into(),
            (disk_used / self.disk_total * 10_000.0).round() / 100.0,
        );
        for m in METRICS
            .iter()
            .filter(|m| m.kind == damselfly_schemas::Kind::Counter)
        {
            let total = self.counters[m.name];
            match m.family {
                Family::Diskio => devices.entry(self.devices.block.to_owned()).or_default(),
                Family::Network => devices.entry(self.devices.iface.to_owned()).or_default(),
                _ => {
                    metrics.insert(m.name.to_owned(), total);
                    continue;
                }
            }
            .insert(m.name.to_owned(), total);
        }
        devices
    }
}

// Bytes rounded down to whole KiB, as /proc/meminfo counts them.
fn kib(bytes: f64) -> f64 {
    (bytes / 1024.0).floor() * 1024.0
}

// Bytes rounded down to whole blocks, as statvfs counts them (4 KiB on the usual file systems).
fn blocks(bytes: f64) -> f64 {
    (bytes / 4096.0).floor() * 4096.0
}

// Records gauge `name`, rounded to hundredths.
fn set_gauge(metrics: &mut BTreeMap<String, f64>, name: &str, value: f64) {
    metrics.insert(name.to_owned(), (value * 100.0).round() / 100.0);
}

/// What to simulate and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateConfig {
    /// Number of VMs.
    pub vms: usize,
    /// Collection interval.
    pub interval: Duration,
    /// Number of intervals to publish.
    pub intervals: u64,
    /// Random seed.
    pub seed: u64,
    /// Namespace tag of every VM.
    pub ns: String,
    /// Timestamp of the first interval, ms since the epoch.
    pub start_ms: i64,
    /// Publish each interval at its wall-clock time (true) or as fast as possible (false).
    pub paced: bool,
    /// How each VM's interval is written to the topic.
    pub format: crate::WireFormat,
}

/// Live counters of a running simulation.
#[derive(Debug, Default)]
pub struct SimulateStats {
    /// Messages queued to the producer.
    pub messages: AtomicU64,
    /// Samples in those messages.
    pub samples: AtomicU64,
    /// Intervals completed.
    pub intervals: AtomicU64,
}

/// What a simulation published.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimulateSummary {
    /// VMs simulated.
    pub vms: usize,
    /// Intervals published.
    pub intervals: u64,
    /// Messages the broker acknowledged.
    pub published: u64,
    /// Samples in the acknowledged messages.
    pub samples: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Publishes the fleet's messages interval by interval; stops early when `stop` is set.
/// Blocking: run it on its own thread.
pub fn run_simulation(
    config: &SimulateConfig,
    publisher: &Publisher,
    stats: &SimulateStats,
    stop: &AtomicBool,
) -> Result<SimulateSummary, PublishError> {
    let started = Instant::now();
    let mut fleet = Fleet::new(config.vms, config.seed, &config.ns);
    let interval_ms = config.interval.as_millis() as i64;
    let mut done = 0;
    for i in 0..config.intervals {
        if stop.load(Relaxed) {
            break;
        }
        if config.paced {
            let due = started + config.interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if let Some(problem) = publisher.problem() {
            return Err(PublishError::Connection(problem));
        }
        let ts = config.start_ms + i as i64 * interval_ms;
        for msg in fleet.tick(ts, config.interval) {
            publisher.send(&msg.tags.vm, &crate::wire::encode(&msg, config.format))?;
            stats.messages.fetch_add(1, Relaxed);
            stats.samples.fetch_add(msg.sample_count() as u64, Relaxed);
        }
        done += 1;
        stats.intervals.store(done, Relaxed);
    }
    publisher.flush(Duration::from_secs(60))?;
    let published = publisher.deliveries().delivered.load(Relaxed);
    Ok(SimulateSummary {
        vms: config.vms,
        intervals: done,
        published,
        samples: published * Fleet::samples_per_message() as u64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_valid_and_complete() {
        let mut a = Fleet::new(12, 42, "ns01");
        let mut b = Fleet::new(12, 42, "ns01");
        for i in 0..5 {
            let ts = 1_763_737_200_000 + i * 2_000;
            let (ma, mb) = (
                a.tick(ts, Duration::from_secs(2)),
                b.tick(ts, Duration::from_secs(2)),
            );
            assert_eq!(ma, mb, "same seed, same messages");
            for m in &ma {
                let back = MetricMessage::from_json(&m.to_json()).expect("valid on the wire");
                assert_eq!(back.sample_count(), Fleet::samples_per_message());
            }
        }
        let csps: std::collections::BTreeSet<_> =
            a.vms.iter().map(|v| v.tags.csp.as_str()).collect();
        assert_eq!(csps.len(), CLOUDS.len(), "fleet spans every cloud");
    }

    #[test]
    fn counters_are_monotone_and_gauges_bounded() {
        let mut f = Fleet::new(3, 7, "ns");
        let mut prev: Option<Vec<MetricMessage>> = None;
        for i in 0..50 {
            let msgs = f.tick(i * 2_000, Duration::from_secs(2));
            for (j, m) in msgs.iter().enumerate() {
                let cpu = m.metrics["cpu_utilization"];
                assert!((0.0..=100.0).contains(&cpu));
                assert!(m.metrics["mem_used"] <= m.metrics["mem_total"]);
                if let Some(p) = &prev {
                    for (dev, ms) in &m.devices {
                        for (name, v) in ms {
                            let def = damselfly_schemas::catalog::lookup(name).unwrap();
                            if def.kind == damselfly_schemas::Kind::Counter {
                                assert!(*v >= p[j].devices[dev][name], "{name} went backwards");
                            }
                        }
                    }
                }
            }
            prev = Some(msgs);
        }
    }

    #[test]
    fn byte_gauges_come_in_the_units_the_collectors_read() {
        let mut f = Fleet::new(14, 3, "ns");
        for i in 0..20 {
            for m in f.tick(i * 2_000, Duration::from_secs(2)) {
                for name in [
                    "mem_total",
                    "mem_used",
                    "mem_free",
                    "mem_shared",
                    "mem_buffers",
                    "mem_cached",
                    "swap_total",
                    "swap_used",
                    "swap_free",
                ] {
                    let v = m.metrics[name];
                    assert_eq!(v % 1024.0, 0.0, "{name} = {v} is not whole KiB");
                }
                let disk = m
                    .devices
                    .values()
                    .find(|d| d.contains_key("disk_used"))
                    .expect("a disk");
                for name in ["disk_total", "disk_used", "disk_free"] {
                    assert_eq!(disk[name] % 4096.0, 0.0, "{name} is not whole 4 KiB blocks");
                }
                assert_eq!(disk["disk_used"] + disk["disk_free"], disk["disk_total"]);
            }
        }
    }
}
