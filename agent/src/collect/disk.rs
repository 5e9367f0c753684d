//! The `disk` family: usage of each mounted file system (device = mount point), from statvfs.
//!
//! /proc/self/mounts is kept by hand: procfs 0.18's `MountEntry` decodes only `\011 \012 \134
//! \043`, so a space (`\040`) stays escaped and `/media/my disk` would be statvfs'd as
//! `/media/my\040disk` (test `skips_pseudo_file_systems_and_bind_mounts`); statvfs is rustix's.

use std::collections::BTreeMap;

use super::{CollectError, Sample, SkipLists, pct, read};

const MOUNTS: &str = "/proc/self/mounts";

/// One line of /proc/self/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// What is mounted (a block device, a server path, or a pseudo name).
    pub source: String,
    /// Where.
    pub point: String,
    /// File system type.
    pub fs_type: String,
}

/// The mounts to report: skip lists applied, one per mount point (the last mount on a point hides
/// the earlier ones) and one per block device (bind mounts and btrfs subvolumes of one file system
/// report the same usage: the shortest mount point stands for them).
pub(crate) fn parse_mounts(text: &str, skip: &SkipLists) -> Vec<Mount> {
    let mut by_point: BTreeMap<String, Mount> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(source), Some(point), Some(fs_type)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let m = Mount {
            source: unescape(source),
            point: unescape(point),
            fs_type: fs_type.to_owned(),
        };
        by_point.insert(m.point.clone(), m);
    }
    let mut by_source: BTreeMap<String, Mount> = BTreeMap::new();
    let mut out = Vec::new();
    for m in by_point.into_values() {
        if skip.fs_types.matches(&m.fs_type) || skip.mount_points.matches(&m.point) {
            continue;
        }
        if m.source.starts_with('/') {
            match by_source.get(&m.source) {
                Some(seen) if seen.point.len() <= m.point.len() => {}
                _ => {
                    by_source.insert(m.source.clone(), m);
                }
            }
        } else {
            out.push(m);
        }
    }
    out.extend(by_source.into_values());
    out.sort_by(|a, b| a.point.cmp(&b.point));
    out
}

/// Undoes the kernel's octal escapes in mount fields (`\040` is a space).
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sets disk_* for every reported mount; returns the mounts whose statvfs failed (and a failure to
/// read the mount table) without stopping at them.
pub(crate) fn collect(skip: &SkipLists, s: &mut Sample) -> Vec<CollectError> {
    let text = match read(MOUNTS) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    for m in parse_mounts(&text, skip) {
        match rustix::fs::statvfs(m.point.as_str()) {
            Ok(st) if st.f_blocks > 0 => {
                let frsize = if st.f_frsize > 0 {
                    st.f_frsize
                } else {
                    st.f_bsize
                };
                let total = st.f_blocks.saturating_mul(frsize);
                let used = st
                    .f_blocks
                    .saturating_sub(st.f_bfree)
                    .saturating_mul(frsize);
                let avail = st.f_bavail.saturating_mul(frsize);
                s.set_dev(&m.point, "disk_total", total as f64);
                s.set_dev(&m.point, "disk_used", used as f64);
                s.set_dev(&m.point, "disk_free", avail as f64);
                // As df computes Use%: of the space ordinary users can have (root's reserve aside).
                s.set_dev(
                    &m.point,
                    "disk_utilization",
                    pct(used as f64, (used + avail) as f64),
                );
            }
            Ok(_) => {} // a size-less pseudo file system that no skip list named
            Err(e) => errors.push(CollectError::Read {
                path: m.point.into(),
                source: e.into(),
            }),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS_TEXT: &str = "\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/vda1 /etc/hosts ext4 rw 0 0
/dev/vdb /data xfs rw 0 0
/dev/vdc /media/my\\040disk ext4 rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
/dev/vdd /snap/core/1 squashfs ro 0 0
";

    fn skip() -> SkipLists {
        let c = crate::config::CollectConfig::default();
        SkipLists {
            fs_types: super::super::Patterns::new(&c.skip_fs_types).unwrap(),
            mount_points: super::super::Patterns::new(&["/mnt/*"]).unwrap(),
            ..SkipLists::default()
        }
    }

    #[test]
    fn skips_pseudo_file_systems_and_bind_mounts() {
        let points: Vec<_> = parse_mounts(MOUNTS_TEXT, &skip())
            .into_iter()
            .map(|m| m.point)
            .collect();
        assert_eq!(points, ["/", "/data", "/media/my disk"]);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/odd\\9"), "/odd\\9");
    }
}
