//! Lake path rules: Hive-style `table/dt=YYYY-MM-DD/hour=HH/` prefixes and deterministic object names.

use chrono::{DateTime, Datelike, Timelike, Utc};

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
}
