//! Arrow schemas of the lake tables (`raw`, `rollup_1m`, `rollup_1h`, `rollup_1d`, `dlq`, `alarms`).

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// A table of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Every sample as published: one row per (vm, metric, device, ts).
    Raw,
    /// Mergeable one-minute partial aggregates per (vm, metric, device, minute).
    Rollup1m,
    /// Hourly partial aggregates, merged from `rollup_1m` by compaction.
    Rollup1h,
    /// Daily partial aggregates, merged from `rollup_1h` by compaction (kept under `hour=00`).
    Rollup1d,
    /// Records that did not decode or validate, with the reason.
    Dlq,
    /// Alarm history: one row per state transition or repeat notification.
    Alarms,
}

impl Table {
    /// Every table, in the order they are written.
    pub const ALL: [Table; 6] = [
        Table::Raw,
        Table::Rollup1m,
        Table::Rollup1h,
        Table::Rollup1d,
        Table::Dlq,
        Table::Alarms,
    ];

    /// The table's name: its top-level prefix in the lake and its SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Rollup1m => "rollup_1m",
            Table::Rollup1h => "rollup_1h",
            Table::Rollup1d => "rollup_1d",
            Table::Dlq => "dlq",
            Table::Alarms => "alarms",
        }
    }

    /// The table called `name` (its lake prefix), if there is one.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The Arrow schema of the table's Parquet files (partition columns `dt`/`hour` excluded).
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Raw => RAW.clone(),
            Table::Rollup1m | Table::Rollup1h | Table::Rollup1d => ROLLUP.clone(),
            Table::Dlq => DLQ.clone(),
            Table::Alarms => ALARMS.clone(),
        }
    }
}

/// The timestamp type of every time column: milliseconds, UTC.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The tag columns shared by `raw` and the rollups, in storage order.
pub const TAG_COLUMNS: [&str; 6] = ["ns", "mcis", "vm", "csp", "region", "os"];

fn tag_fields() -> impl Iterator<Item = Field> {
    TAG_COLUMNS
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, false))
}

static RAW: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![Field::new("ts", ts_type(), false)];
    fields.extend(tag_fields());
    fields.extend([
        Field::new("metric", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]);
    Arc::new(Schema::new(fields))
});

static ROLLUP: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![Field::new("window_start", ts_type(), false)];
    fields.extend(tag_fields());
    fields.extend([
        Field::new("metric", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("sum", DataType::Float64, false),
        Field::new("min", DataType::Float64, false),
        Field::new("max", DataType::Float64, false),
        Field::new("first", DataType::Float64, false),
        Field::new("first_ts", ts_type(), false),
        Field::new("last", DataType::Float64, false),
        Field::new("last_ts", ts_type(), false),
    ]);
    Arc::new(Schema::new(fields))
});

static DLQ: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("received_at", ts_type(), false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw_base64", DataType::Utf8, false),
    ]))
});

static ALARMS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), false),
        s("rule_id"),
        s("rule_name"),
        s("ns"),
        s("mcis"),
        s("vm"),
        s("csp"),
        s("region"),
        s("metric"),
        s("device"),
        s("kind"),
        s("from_state"),
        s("to_state"),
        s("severity"),
        Field::new("value", DataType::Float64, true),
        Field::new("threshold", DataType::Float64, true),
        s("comparator"),
        s("statistic"),
        Field::new("period_s", DataType::Int64, false),
        Field::new("since", ts_type(), false),
        s("topic"),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, true),
    ]))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_rollup_share_tag_columns() {
        for t in [
            Table::Raw,
            Table::Rollup1m,
            Table::Rollup1h,
            Table::Rollup1d,
        ] {
            let s = t.schema();
            for tag in TAG_COLUMNS {
                assert!(s.field_with_name(tag).is_ok(), "{} lacks {tag}", t.name());
            }
            assert!(
                s.field_with_name("dt").is_err(),
                "partition columns live in the path"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for t in Table::ALL {
            assert_eq!(Table::from_name(t.name()), Some(t));
        }
        assert_eq!(Table::from_name("rollup_5m"), None);
    }

    #[test]
    fn alarms_table_has_its_name_and_nullable_measures() {
        let s = Table::Alarms.schema();
        assert_eq!(Table::Alarms.name(), "alarms");
        assert!(Table::ALL.contains(&Table::Alarms));
        assert!(s.field_with_name("value").unwrap().is_nullable());
        assert!(s.field_with_name("offset").unwrap().is_nullable());
        assert!(!s.field_with_name("ts").unwrap().is_nullable());
        assert!(s.field_with_name("dt").is_err());
    }
}
