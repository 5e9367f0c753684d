//! The `cpu` and `cpufreq` families: time shares between two readings of /proc/stat (parsed by procfs), count, clock.

use procfs::{FromBufReadSI as _, KernelStats};

use super::{CollectError, Sample, format_error, pct, read};

const STAT: &str = "/proc/stat";
const CPUINFO: &str = "/proc/cpuinfo";

/// The aggregate `cpu` line of /proc/stat, in clock ticks since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    user: u64,
    nice: u64,
    system: u64,
    idle: u64,
    iowait: u64,
    irq: u64,
    softirq: u64,
    steal: u64,
    guest: u64,
    guest_nice: u64,
}

/// What the collector uses from /proc/stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// All CPUs together.
    pub total: CpuTimes,
    /// Online CPUs (`cpuN` lines).
    pub cpus: usize,
    /// Runnable tasks right now.
    pub procs_running: Option<u64>,
}

pub(crate) fn read_stat() -> Result<ProcStat, CollectError> {
    parse_stat(&read(STAT)?).map_err(|what| format_error(STAT, what))
}

pub(crate) fn parse_stat(text: &str) -> Result<ProcStat, String> {
    // The tick rate only matters to procfs's millisecond helpers, which are not used here.
    let stat = KernelStats::from_buf_read(text.as_bytes(), procfs::current_system_info())
        .map_err(|e| e.to_string())?;
    Ok(ProcStat {
        total: CpuTimes::from(&stat.total),
        cpus: stat.cpu_time.len(),
        procs_running: stat.procs_running.map(u64::from),
    })
}

impl From<&procfs::CpuTime> for CpuTimes {
    /// Older kernels lack the last columns (iowait ... guest_nice): they read as 0.
    fn from(t: &procfs::CpuTime) -> Self {
        Self {
            user: t.user,
            nice: t.nice,
            system: t.system,
            idle: t.idle,
            iowait: t.iowait.unwrap_or(0),
            irq: t.irq.unwrap_or(0),
            softirq: t.softirq.unwrap_or(0),
            steal: t.steal.unwrap_or(0),
            guest: t.guest.unwrap_or(0),
            guest_nice: t.guest_nice.unwrap_or(0),
        }
    }
}

/// Sets the eleven cpu percentages from two readings; nothing if no tick passed between them.
///
/// The kernel counts guest time inside user (and guest_nice inside nice); here `cpu_user` and
/// `cpu_nice` exclude it, so user, nice, system, idle, iowait, hintr, sintr, steal, guest and
/// guest_nice partition the interval and sum to 100. `cpu_utilization` is 100 - `cpu_idle`.
pub(crate) fn shares(prev: &CpuTimes, cur: &CpuTimes, s: &mut Sample) {
    // Counters can step back when a CPU goes offline: clamp each delta at 0.
    let d = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let guest = d(prev.guest, cur.guest);
    let guest_nice = d(prev.guest_nice, cur.guest_nice);
    let user = (d(prev.user, cur.user) - guest).max(0.0);
    let nice = (d(prev.nice, cur.nice) - guest_nice).max(0.0);
    let parts = [
        ("cpu_user", user),
        ("cpu_nice", nice),
        ("cpu_system", d(prev.system, cur.system)),
        ("cpu_idle", d(prev.idle, cur.idle)),
        ("cpu_iowait", d(prev.iowait, cur.iowait)),
        ("cpu_hintr", d(prev.irq, cur.irq)),
        ("cpu_sintr", d(prev.softirq, cur.softirq)),
        ("cpu_steal", d(prev.steal, cur.steal)),
        ("cpu_guest", guest),
        ("cpu_guest_nice", guest_nice),
    ];
    let total: f64 = parts.iter().map(|(_, v)| v).sum();
    if total <= 0.0 {
        return;
    }
    for (name, ticks) in parts {
        s.set(name, pct(ticks, total));
    }
    let idle = d(prev.idle, cur.idle);
    s.set("cpu_utilization", pct(total - idle, total));
}

/// Sets `cpu_speed` (MHz, mean over CPUs) from /proc/cpuinfo, else from cpufreq in sysfs; nothing
/// where neither reports a clock (some ARM VMs).
pub(crate) fn speed(s: &mut Sample) {
    let from_cpuinfo = read(CPUINFO).ok().and_then(|t| mean_mhz(&t));
    let mhz = from_cpuinfo.or_else(sysfs_mhz);
    if let Some(mhz) = mhz {
        s.set("cpu_speed", (mhz * 1000.0).round() / 1000.0);
    }
}

/// Mean of the `cpu MHz` fields of the processors of /proc/cpuinfo.
///
/// A scan for the one key, not procfs's `CpuInfo`: that builds a map of every field of every
/// processor on each collection, for one number (it made a collection 14.5 % dearer).
pub(crate) fn mean_mhz(cpuinfo: &str) -> Option<f64> {
    let values: Vec<f64> = cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "cpu MHz")
        .filter_map(|(_, v)| v.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn sysfs_mhz() -> Option<f64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu").ok()?;
    let khz: Vec<f64> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("cpufreq/scaling_cur_freq")).ok())
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    (!khz.is_empty()).then(|| khz.iter().sum::<f64>() / khz.len() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_A: &str = "cpu  100 10 50 800 20 5 5 10 0 0\n\
                          cpu0 50 5 25 400 10 2 3 5 0 0\n\
                          cpu1 50 5 25 400 10 3 2 5 0 0\n\
                          intr 1 2 3\nctxt 10\nbtime 1700000000\nprocesses 50\n\
                          procs_running 3\nprocs_blocked 0\n";
    const STAT_B: &str = "cpu  160 10 70 900 20 5 15 20 40 0\n\
                          cpu0 80 5 35 450 10 2 8 10 20 0\n\
                          cpu1 80 5 35 450 10 3 7 10 20 0\nctxt 20\nbtime 1700000000\n\
                          processes 60\nprocs_running 1\n";

    #[test]
    fn parses_the_aggregate_line_and_counts_cpus() {
        let s = parse_stat(STAT_A).unwrap();
        assert_eq!(s.cpus, 2);
        assert_eq!(s.procs_running, Some(3));
        assert_eq!(s.total.user, 100);
        assert_eq!(s.total.guest_nice, 0);
        assert!(parse_stat("intr 1\n").is_err());
        assert!(parse_stat("cpu 1 x 3\nctxt 1\nbtime 1\nprocesses 1\n").is_err());
        // A kernel without steal/guest columns still parses.
        assert_eq!(
            parse_stat("cpu 1 2 3 4\nctxt 1\nbtime 1\nprocesses 1\n")
                .unwrap()
                .total
                .idle,
            4
        );
    }

    #[test]
    fn shares_partition_the_interval() {
        let (a, b) = (
            parse_stat(STAT_A).unwrap().total,
            parse_stat(STAT_B).unwrap().total,
        );
        let mut s = Sample::default();
        shares(&a, &b, &mut s);
        // Deltas: user 60 (40 of it guest), system 20, idle 100, softirq 10, steal 10: total 200.
        let m = &s.metrics;
        assert_eq!(m["cpu_user"], 10.0);
        assert_eq!(m["cpu_guest"], 20.0);
        assert_eq!(m["cpu_system"], 10.0);
        assert_eq!(m["cpu_idle"], 50.0);
        assert_eq!(m["cpu_sintr"], 5.0);
        assert_eq!(m["cpu_steal"], 5.0);
        assert_eq!(m["cpu_utilization"], 50.0);
        let sum: f64 = m
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "cpu_utilization"))
            .map(|(_, v)| v)
            .sum();
        assert!((sum - 100.0).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn no_ticks_no_percentages() {
        let a = parse_stat(STAT_A).unwrap().total;
        let mut s = Sample::default();
        shares(&a, &a, &mut s);
        assert!(s.metrics.is_empty());
    }

    #[test]
    fn cpu_mhz_is_the_mean() {
        // The kernel ends each processor's block with a blank line.
        let info =
            "processor\t: 0\ncpu MHz\t\t: 2000.000\n\nprocessor\t: 1\ncpu MHz\t\t: 3000.5\n\n";
        assert_eq!(mean_mhz(info), Some(2500.25));
        assert_eq!(mean_mhz("processor : 0\nBogoMIPS : 50\n"), None);
    }
}
