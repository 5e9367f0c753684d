//! Lake path rules: Hive-style `table/dt=YYYY-MM-DD/hour=HH/` prefixes and deterministic object names.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

use crate::Table;

/// The hour partition a timestamp falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HourPartition {
    /// Calendar date (UTC) as `YYYY-MM-DD` digits.
    pub year: i32,
    /// Month 1-12.
    pub month: u32,
    /// Day of month 1-31.
    pub day: u32,
    /// Hour of day 0-23 (UTC).
    pub hour: u32,
}

impl HourPartition {
    /// The partition of a timestamp in milliseconds since the epoch; `None` if out of chrono's range.
    pub fn of_millis(ts_ms: i64) -> Option<Self> {
        DateTime::<Utc>::from_timestamp_millis(ts_ms).map(|t| Self {
            year: t.year(),
            month: t.month(),
            day: t.day(),
            hour: t.hour(),
        })
    }

    /// The partition of a Hive-style key or directory (`raw/dt=2026-11-21/hour=09/x.parquet`):
    /// the table and the hour; `None` when the key is not under a `table/dt=/hour=` directory.
    pub fn parse_key(key: &str) -> Option<(Table, Self)> {
        let mut parts = key.split('/');
        let table = Table::from_name(parts.next()?)?;
        let date =
            NaiveDate::parse_from_str(parts.next()?.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
        let hour = parts.next()?.strip_prefix("hour=")?;
        if hour.len() != 2 {
            return None;
        }
        let hour: u32 = hour.parse().ok().filter(|h| *h < 24)?;
        Some((
            table,
            Self {
                year: date.year(),
                month: date.month(),
                day: date.day(),
                hour,
            },
        ))
    }

    /// The first millisecond of the hour.
    pub fn start_ms(&self) -> i64 {
        NaiveDate::from_ymd_opt(self.year, self.month, self.day)
            .and_then(|d| d.and_hms_opt(self.hour, 0, 0))
            .map_or(i64::MIN, |t| t.and_utc().timestamp_millis())
    }

    /// Hour 00 of the same day: where a `rollup_1d` file lives.
    pub fn day(&self) -> Self {
        Self { hour: 0, ..*self }
    }

    /// The Hive-style directory of this partition in a table: `raw/dt=2026-11-21/hour=09`.
    pub fn dir(&self, table: Table) -> String {
        format!(
            "{}/dt={:04}-{:02}-{:02}/hour={:02}",
            table.name(),
            self.year,
            self.month,
            self.day,
            self.hour
        )
    }
}

/// The deterministic object key of one batch's rows of one partition of a topic in one hour:
/// `{table}/dt=/hour=/{topic}+{partition}+{first_offset}.parquet`, offset zero-padded to 10 digits
/// like the Confluent S3 sink, so a retried batch overwrites rather than duplicates.
pub fn batch_object_key(
    table: Table,
    hour: HourPartition,
    topic: &str,
    partition: i32,
    first_offset: i64,
) -> String {
    format!(
        "{}/{topic}+{partition}+{first_offset:010}.parquet",
        hour.dir(table)
    )
}

/// The key of a compacted file: `{table}/dt=/hour=/compacted-{generation:06}.parquet`; each
/// generation replaces the files (earlier generations included) its metadata lists.
pub fn compacted_object_key(table: Table, hour: HourPartition, generation: u64) -> String {
    format!("{}/compacted-{generation:06}.parquet", hour.dir(table))
}

/// The generation of a compacted file's key or name, `None` for any other object.
pub fn compacted_generation(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let digits = name.strip_prefix("compacted-")?.strip_suffix(".parquet")?;
    digits.parse().ok()
}

/// The key of an hour's `rollup_1h` file (`rollup_1h/dt=/hour=/1h.parquet`) or a day's
/// `rollup_1d` file (`rollup_1d/dt=/hour=00/1d.parquet`); other tables have none.
pub fn rollup_object_key(table: Table, hour: HourPartition) -> Option<String> {
    match table {
        Table::Rollup1h => Some(format!("{}/1h.parquet", hour.dir(table))),
        Table::Rollup1d => Some(format!("{}/1d.parquet", hour.day().dir(table))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hive_style_and_deterministic() {
        // 2025-11-21T09:30:00Z
        let hour = HourPartition::of_millis(1_763_717_400_000).unwrap();
        assert_eq!(hour.dir(Table::Raw), "raw/dt=2025-11-21/hour=09");
        assert_eq!(
            batch_object_key(Table::Rollup1m, hour, "metrics", 3, 1200),
            "rollup_1m/dt=2025-11-21/hour=09/metrics+3+0000001200.parquet"
        );
    }

    #[test]
    fn keys_parse_back_to_their_partition() {
        let hour = HourPartition::of_millis(1_763_717_400_000).unwrap();
        let key = compacted_object_key(Table::Raw, hour, 3);
        assert_eq!(key, "raw/dt=2025-11-21/hour=09/compacted-000003.parquet");
        assert_eq!(HourPartition::parse_key(&key), Some((Table::Raw, hour)));
        assert_eq!(compacted_generation(&key), Some(3));
        assert_eq!(
            compacted_generation("raw/dt=2025-11-21/hour=09/m+0+1.parquet"),
            None
        );
        assert_eq!(hour.start_ms(), 1_763_715_600_000);
        assert_eq!(
            rollup_object_key(Table::Rollup1d, hour).unwrap(),
            "rollup_1d/dt=2025-11-21/hour=00/1d.parquet"
        );
        assert_eq!(
            rollup_object_key(Table::Rollup1h, hour).unwrap(),
            "rollup_1h/dt=2025-11-21/hour=09/1h.parquet"
        );
        for bad in [
            "raw",
            "raw/dt=2025-11-21",
            "raw/dt=2025-13-01/hour=00/x",
            "raw/dt=2025-11-21/hour=24/x",
            "nope/dt=2025-11-21/hour=01/x",
        ] {
            assert_eq!(HourPartition::parse_key(bad), None, "{bad}");
        }
    }
}
