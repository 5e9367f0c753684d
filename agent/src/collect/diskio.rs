//! The `diskio` family: I/O counters of each block device (device = kernel name) from /proc/diskstats, lines parsed by procfs.

use procfs::DiskStat;

use super::{CollectError, Sample, SkipLists, read};

const DISKSTATS: &str = "/proc/diskstats";

/// The counters of one block device, running totals since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskIo {
    /// Reads completed.
    pub ops_read: u64,
    /// 512-byte sectors read.
    pub sectors_read: u64,
    /// Milliseconds spent reading.
    pub read_time: u64,
    /// Writes completed.
    pub ops_write: u64,
    /// 512-byte sectors written.
    pub sectors_written: u64,
    /// Milliseconds spent writing.
    pub write_time: u64,
}

/// The devices to report: skip lists applied, and devices that never did any I/O left out (the
/// dozens of idle loop and ram devices of a stock kernel).
pub(crate) fn parse_diskstats(text: &str, skip: &SkipLists) -> Vec<(String, DiskIo)> {
    text.lines()
        // major minor name, then at least 11 counters; a line that is not is left out.
        .filter_map(|line| DiskStat::from_line(line).ok())
        .filter_map(|d| {
            let io = DiskIo {
                ops_read: d.reads,
                sectors_read: d.sectors_read,
                read_time: d.time_reading,
                ops_write: d.writes,
                sectors_written: d.sectors_written,
                write_time: d.time_writing,
            };
            let idle = io.ops_read == 0 && io.ops_write == 0;
            (!idle && !skip.block_devices.matches(&d.name)).then_some((d.name, io))
        })
        .collect()
}

/// Sets kb_read, kb_written (KiB), ops_read, ops_write, read_time and write_time (ms) per device.
pub(crate) fn collect(skip: &SkipLists, s: &mut Sample) -> Result<(), CollectError> {
    for (dev, io) in parse_diskstats(&read(DISKSTATS)?, skip) {
        s.set_dev(&dev, "kb_read", (io.sectors_read / 2) as f64);
        s.set_dev(&dev, "kb_written", (io.sectors_written / 2) as f64);
        s.set_dev(&dev, "ops_read", io.ops_read as f64);
        s.set_dev(&dev, "ops_write", io.ops_write as f64);
        s.set_dev(&dev, "read_time", io.read_time as f64);
        s.set_dev(&dev, "write_time", io.write_time as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   7       1 loop1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 8073 3726 2151874 10936 22386 187246 18200176 133454 0 12008 154969 59901 56 7129384 10559 621 18
 254       1 vda1 100 0 800 5 200 0 1600 9 0 1 1
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 short line
";

    #[test]
    fn parses_counters_and_skips() {
        let skip = SkipLists {
            block_devices: super::super::Patterns::new(&["loop*"]).unwrap(),
            ..SkipLists::default()
        };
        let got = parse_diskstats(TEXT, &skip);
        let names: Vec<_> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["vda", "vda1"], "loop skipped, idle zram0 left out");
        assert_eq!(
            got[0].1,
            DiskIo {
                ops_read: 8073,
                sectors_read: 2_151_874,
                read_time: 10_936,
                ops_write: 22_386,
                sectors_written: 18_200_176,
                write_time: 133_454,
            }
        );
        let all = parse_diskstats(TEXT, &SkipLists::default());
        assert_eq!(
            all.len(),
            3,
            "loop0 did I/O, so it counts without a skip list"
        );
    }
}
