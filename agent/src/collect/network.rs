//! The `network` family: counters of each interface (device = interface name) from /proc/net/dev.
//!
//! Kept by hand: procfs 0.18's `InterfaceDeviceStatus` splits lines on whitespace, so a name that
//! touches its first counter (`docker0:10 1 ...`, as 2.6-era kernels print) fails the whole table,
//! and it returns a HashMap; this splits at the colon (test `parses_columns_and_skips`).

use super::{CollectError, Sample, SkipLists, read};

const NET_DEV: &str = "/proc/net/dev";

/// The catalog names of the /proc/net/dev columns we publish, by column index after the name.
const COLUMNS: [(usize, &str); 8] = [
    (0, "bytes_in"),
    (1, "pkts_in"),
    (2, "err_in"),
    (3, "drop_in"),
    (8, "bytes_out"),
    (9, "pkts_out"),
    (10, "err_out"),
    (11, "drop_out"),
];

/// Interface name to its eight published counters (in [`COLUMNS`] order), skip list applied.
pub(crate) fn parse_net_dev(text: &str, skip: &SkipLists) -> Vec<(String, [u64; 8])> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || skip.interfaces.matches(name) {
                return None;
            }
            let v: Vec<u64> = rest
                .split_ascii_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            if v.len() < 16 {
                return None;
            }
            Some((name.to_owned(), COLUMNS.map(|(i, _)| v[i])))
        })
        .collect()
}

/// Sets bytes_*, pkts_*, err_* and drop_* per interface.
pub(crate) fn collect(skip: &SkipLists, s: &mut Sample) -> Result<(), CollectError> {
    for (iface, values) in parse_net_dev(&read(NET_DEV)?, skip) {
        for ((_, metric), v) in COLUMNS.iter().zip(values) {
            s.set_dev(&iface, metric, v as f64);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  432571    1654    0    0    0     0          0         0   432571    1654    0    0    0     0       0          0
  eth0: 674733082   31959    1    2    0     0          0         0  2440170   24128    3    4    0     0       0          0
docker0:10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
";

    #[test]
    fn parses_columns_and_skips() {
        let skip = SkipLists {
            interfaces: super::super::Patterns::new(&["lo", "docker*"]).unwrap(),
            ..SkipLists::default()
        };
        let got = parse_net_dev(TEXT, &skip);
        assert_eq!(
            got,
            vec![(
                "eth0".to_owned(),
                [674_733_082, 31_959, 1, 2, 2_440_170, 24_128, 3, 4]
            )]
        );
        let all = parse_net_dev(TEXT, &SkipLists::default());
        let names: Vec<_> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "docker0"]);
    }
}
