//! The `memory` and `swap` families from /proc/meminfo and /proc/vmstat, in bytes and pages.
//!
//! /proc/vmstat is parsed by procfs. /proc/meminfo is kept by hand: procfs's `Meminfo` fails the
//! whole file on one line it cannot read (WSL's `SwapFree:18014398503714728 kB`, 2.4-era `Mem:`
//! tables) and requires 17 fields a trimmed container meminfo may lack; this map skips such lines.

use std::collections::HashMap;

use procfs::{FromBufRead as _, VmStat};

use super::{CollectError, Sample, format_error, pct, read};

const MEMINFO: &str = "/proc/meminfo";
const VMSTAT: &str = "/proc/vmstat";

/// /proc/meminfo as field name to bytes (the file counts kB, meaning KiB).
pub(crate) fn parse_meminfo(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut fields = rest.split_ascii_whitespace();
            let n: u64 = fields.next()?.parse().ok()?;
            let bytes = match fields.next() {
                Some("kB") => n.checked_mul(1024)?,
                _ => n,
            };
            Some((key.trim(), bytes))
        })
        .collect()
}

/// Sets mem_*: `mem_used` is total - MemAvailable (what `free` calls used), `mem_cached` is page
/// cache plus reclaimable slab (free's buff/cache without buffers), `mem_shared` is Shmem.
pub(crate) fn collect(s: &mut Sample) -> Result<(), CollectError> {
    let text = read(MEMINFO)?;
    let m = parse_meminfo(&text);
    let get = |k: &str| m.get(k).copied();
    let total = get("MemTotal").ok_or_else(|| format_error(MEMINFO, "no MemTotal"))?;
    let free = get("MemFree").unwrap_or(0);
    let buffers = get("Buffers").unwrap_or(0);
    let cached = get("Cached").unwrap_or(0) + get("SReclaimable").unwrap_or(0);
    // Kernels before 3.14 lack MemAvailable: estimate it as free + buffers + cache.
    let available = get("MemAvailable").unwrap_or(free + buffers + cached);
    let used = total.saturating_sub(available);
    s.set("mem_total", total as f64);
    s.set("mem_used", used as f64);
    s.set("mem_free", free as f64);
    s.set("mem_shared", get("Shmem").unwrap_or(0) as f64);
    s.set("mem_buffers", buffers as f64);
    s.set("mem_cached", cached as f64);
    s.set("mem_utilization", pct(used as f64, total as f64));
    Ok(())
}

/// Sets swap_* from /proc/meminfo and page_in/page_out (pages swapped in and out since boot,
/// `pswpin`/`pswpout`) from /proc/vmstat.
pub(crate) fn collect_swap(s: &mut Sample) -> Result<(), CollectError> {
    let text = read(MEMINFO)?;
    let m = parse_meminfo(&text);
    let total = m.get("SwapTotal").copied().unwrap_or(0);
    let free = m.get("SwapFree").copied().unwrap_or(0).min(total);
    s.set("swap_total", total as f64);
    s.set("swap_used", (total - free) as f64);
    s.set("swap_free", free as f64);
    s.set("swap_utilization", pct((total - free) as f64, total as f64));
    let vmstat = VmStat::from_buf_read(read(VMSTAT)?.as_bytes())
        .map_err(|e| format_error(VMSTAT, e.to_string()))?;
    for (field, metric) in [("pswpin", "page_in"), ("pswpout", "page_out")] {
        if let Some(&v) = vmstat.0.get(field) {
            s.set(metric, v as f64);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_in_bytes() {
        let m = parse_meminfo(
            "MemTotal:       16000 kB\nMemFree:  1000 kB\nHugePages_Total:       0\nbad line\n",
        );
        assert_eq!(m["MemTotal"], 16000 * 1024);
        assert_eq!(m["MemFree"], 1000 * 1024);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m.len(), 3);
    }
}
