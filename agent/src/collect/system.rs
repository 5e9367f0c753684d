//! The `load` and `process` families (load averages, process counts, uptime) and the host name.
//!
//! Uptime is parsed by procfs. Kept by hand: /proc/loadavg, because procfs's `LoadAverage` holds
//! f32 (1.06 would be published as 1.0600000381469727), and the process count, because
//! `procfs::process::all_processes` opens every /proc/<pid> directory where counting names suffices.

use procfs::{FromRead as _, Uptime};

use super::{CollectError, Sample, format_error, read};

const LOADAVG: &str = "/proc/loadavg";
const UPTIME: &str = "/proc/uptime";

/// Sets load_avg_1/5/15, proc_run (`procs_running` of /proc/stat, or of /proc/loadavg when that
/// was not read), proc_num (processes: the numeric entries of /proc) and uptime (seconds).
pub(crate) fn collect(s: &mut Sample, procs_running: Option<u64>) -> Result<(), CollectError> {
    let load = read(LOADAVG)?;
    let (avgs, running) =
        parse_loadavg(&load).ok_or_else(|| format_error(LOADAVG, "want `1m 5m 15m run/total`"))?;
    s.set("load_avg_1", avgs[0]);
    s.set("load_avg_5", avgs[1]);
    s.set("load_avg_15", avgs[2]);
    s.set("proc_run", procs_running.unwrap_or(running) as f64);
    let procs = std::fs::read_dir("/proc")
        .map_err(|source| CollectError::Read {
            path: "/proc".into(),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    s.set("proc_num", procs as f64);
    let uptime = Uptime::from_read(read(UPTIME)?.as_bytes())
        .map_err(|e| format_error(UPTIME, format!("want `seconds idle`: {e}")))?;
    s.set("uptime", uptime.uptime.floor());
    Ok(())
}

/// The three load averages and the runnable count of /proc/loadavg.
pub(crate) fn parse_loadavg(text: &str) -> Option<([f64; 3], u64)> {
    let mut f = text.split_ascii_whitespace();
    let mut avg = || f.next()?.parse::<f64>().ok();
    let avgs = [avg()?, avg()?, avg()?];
    let running = f.next()?.split_once('/')?.0.parse().ok()?;
    Some((avgs, running))
}

/// This machine's host name as the kernel knows it; "localhost" if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loadavg() {
        assert_eq!(
            parse_loadavg("1.06 2.56 3.01 3/104 3308\n"),
            Some(([1.06, 2.56, 3.01], 3))
        );
        assert_eq!(parse_loadavg("1.0 2.0\n"), None);
    }
}
