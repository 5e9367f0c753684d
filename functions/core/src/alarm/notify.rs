//! Rendering notifications: SNS subject, e-mail friendly body, message attributes, and `alarms` table rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::ArrowError;
use chrono::{DateTime, SecondsFormat, Utc};
use damselfly_schemas::Table;

use super::eval::{AlarmLevel, Notification, NotificationKind};

/// Longest SNS subject, in characters.
pub const MAX_SUBJECT_LEN: usize = 100;

impl Notification {
    /// The SNS subject: printable ASCII, at most 100 characters, e.g. `[CRITICAL] cpu-high on vm-0042`.
    pub fn subject(&self) -> String {
        let mut s = format!("[{}] {} on {}", self.to, self.rule_id, self.tags.vm);
        if let Some(d) = &self.device {
            let _ = write!(s, " {d}");
        }
        match (self.kind, self.to) {
            (NotificationKind::Repeat, _) => s.push_str(" (still)"),
            (NotificationKind::Transition, AlarmLevel::Ok) => {
                let _ = write!(s, " resolved (was {})", self.from);
            }
            _ => {}
        }
        let mut s: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if s.len() > MAX_SUBJECT_LEN {
            s.truncate(MAX_SUBJECT_LEN - 3);
            s.push_str("...");
        }
        s
    }

    /// A plain-text body for e-mail: what, where, value against threshold, since when, and a query to look closer.
    pub fn body(&self) -> String {
        let mut b = String::new();
        let what = match (self.kind, self.to) {
            (NotificationKind::Repeat, _) => format!("still {}", self.to),
            (_, AlarmLevel::Ok) => format!("resolved (was {})", self.from),
            (_, to) => to.to_string(),
        };
        let _ = writeln!(b, "{}: {} ({})", what, self.rule_name, self.rule_id);
        if let Some(d) = &self.description {
            let _ = writeln!(b, "{d}");
        }
        let _ = writeln!(b);
        let t = &self.tags;
        let _ = writeln!(b, "VM:         {}", t.vm);
        if let Some(d) = &self.device {
            let _ = writeln!(b, "Device:     {d}");
        }
        let _ = writeln!(b, "Namespace:  {}", t.ns);
        let _ = writeln!(b, "MCIS:       {}", t.mcis);
        let _ = writeln!(b, "CSP:        {}", or_dash(&t.csp));
        let _ = writeln!(b, "Region:     {}", or_dash(&t.region));
        let _ = writeln!(
            b,
            "Metric:     {} of {} over {}s",
            self.statistic, self.metric, self.period_s
        );
        let value = self.value.map_or_else(
            || "no data".to_string(),
            |v| {
                format!("{v:.6}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            },
        );
        match self.threshold {
            Some(th) => {
                let _ = writeln!(
                    b,
                    "Value:      {value} (breaches when {} {} {})",
                    self.metric, self.comparator, th
                );
            }
            None => {
                let _ = writeln!(b, "Value:      {value}");
            }
        }
        let _ = writeln!(b, "State:      {} since {}", self.to, iso(self.since_ms));
        if self.kind == NotificationKind::Transition {
            let _ = writeln!(b, "Previous:   {}", self.from);
        }
        let _ = writeln!(b, "Event time: {}", iso(self.ts_ms));
        let _ = writeln!(b);
        let _ = writeln!(b, "Look closer:");
        let _ = writeln!(b, "  damselfly sql \"{}\"", shell_escape(&self.sql()));
        b
    }

    /// The SQL that shows the series' recent values (`raw` for gauges, `rollup_1m` for `_rate` series).
    pub fn sql(&self) -> String {
        let mut filter = format!(
            "vm='{}' AND metric='{}'",
            sql_escape(&self.tags.vm),
            sql_escape(&self.metric)
        );
        if let Some(d) = &self.device {
            let _ = write!(filter, " AND device='{}'", sql_escape(d));
        }
        if crate::alarm::is_rate_metric(&self.metric) {
            format!(
                "SELECT window_start, sum / count AS avg, max FROM rollup_1m WHERE {filter} ORDER BY window_start DESC LIMIT 30"
            )
        } else {
            format!("SELECT ts, value FROM raw WHERE {filter} ORDER BY ts DESC LIMIT 30")
        }
    }

    /// SNS message attributes (all plain strings): severity, state, kind, rule, vm, ns, mcis, csp and device.
    pub fn attributes(&self) -> BTreeMap<&'static str, String> {
        let mut a = BTreeMap::from([
            ("severity", self.severity().to_string()),
            ("state", self.to.to_string()),
            ("kind", self.kind.as_str().to_string()),
            ("rule", self.rule_id.clone()),
            ("vm", self.tags.vm.clone()),
            ("ns", self.tags.ns.clone()),
            ("mcis", self.tags.mcis.clone()),
            ("csp", self.tags.csp.clone()),
        ]);
        if let Some(d) = &self.device {
            a.insert("device", d.clone());
        }
        // SNS rejects empty attribute values.
        a.retain(|_, v| !v.is_empty());
        a
    }
}

/// The rows of the `alarms` table for notifications of one topic-partition.
pub fn alarms_batch(
    topic: &str,
    partition: i32,
    notes: &[Notification],
) -> Result<RecordBatch, ArrowError> {
    let strs = |f: &dyn Fn(&Notification) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(notes.iter().map(f)))
    };
    let ts = |f: &dyn Fn(&Notification) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMillisecondArray::from_iter_values(notes.iter().map(f)).with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        ts(&|n| n.ts_ms),
        strs(&|n| n.rule_id.clone()),
        strs(&|n| n.rule_name.clone()),
        strs(&|n| n.tags.ns.clone()),
        strs(&|n| n.tags.mcis.clone()),
        strs(&|n| n.tags.vm.clone()),
        strs(&|n| n.tags.csp.clone()),
        strs(&|n| n.tags.region.clone()),
        strs(&|n| n.metric.clone()),
        strs(&|n| n.device.clone().unwrap_or_default()),
        strs(&|n| n.kind.as_str().to_string()),
        strs(&|n| n.from.to_string()),
        strs(&|n| n.to.to_string()),
        strs(&|n| n.severity().to_string()),
        Arc::new(Float64Array::from_iter(notes.iter().map(|n| n.value))),
        Arc::new(Float64Array::from_iter(notes.iter().map(|n| n.threshold))),
        strs(&|n| n.comparator.symbol().to_string()),
        strs(&|n| n.statistic.name().to_string()),
        Arc::new(Int64Array::from_iter_values(
            notes.iter().map(|n| n.period_s),
        )),
        ts(&|n| n.since_ms),
        strs(&|_| topic.to_string()),
        Arc::new(Int32Array::from_iter_values(
            notes.iter().map(|_| partition),
        )),
        Arc::new(Int64Array::from_iter(notes.iter().map(|n| n.offset))),
    ];
    RecordBatch::try_new(Table::Alarms.schema(), columns)
}

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn sql_escape(s: &str) -> String {
    s.replace('\'', "''")
}

/// Escapes a string for a double-quoted shell word.
fn shell_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::rules::{Comparator, Statistic};
    use damselfly_schemas::Tags;

    fn note(to: AlarmLevel, from: AlarmLevel) -> Notification {
        Notification {
            kind: NotificationKind::Transition,
            ts_ms: 1_763_717_400_000,
            rule_id: "cpu-high".into(),
            rule_name: "CPU usage high".into(),
            description: Some("Check the top processes.".into()),
            tags: Tags {
                ns: "ns-01".into(),
                mcis: "web".into(),
                vm: "vm-0042".into(),
                csp: "aws".into(),
                region: "us-east-1".into(),
                ..Tags::default()
            },
            device: None,
            metric: "cpu_utilization".into(),
            from,
            to,
            value: Some(97.25),
            threshold: Some(90.0),
            comparator: Comparator::Gt,
            statistic: Statistic::Avg,
            period_s: 60,
            since_ms: 1_763_717_400_000,
            offset: Some(42),
        }
    }

    #[test]
    fn subject_is_short_ascii_and_says_what() {
        let n = note(AlarmLevel::Critical, AlarmLevel::Ok);
        assert_eq!(n.subject(), "[CRITICAL] cpu-high on vm-0042");
        let n = note(AlarmLevel::Ok, AlarmLevel::Critical);
        assert_eq!(
            n.subject(),
            "[OK] cpu-high on vm-0042 resolved (was CRITICAL)"
        );
        let mut n = note(AlarmLevel::Warning, AlarmLevel::Ok);
        n.tags.vm = format!("가상머신-{}", "x".repeat(200));
        let s = n.subject();
        assert!(
            s.len() <= MAX_SUBJECT_LEN && s.is_ascii() && s.ends_with("..."),
            "{s}"
        );
    }

    #[test]
    fn body_has_where_value_since_and_sql() {
        let b = note(AlarmLevel::Critical, AlarmLevel::Ok).body();
        for want in [
            "CRITICAL: CPU usage high (cpu-high)",
            "Check the top processes.",
            "vm-0042",
            "ns-01",
            "web",
            "aws",
            "us-east-1",
            "97.25 (breaches when cpu_utilization > 90)",
            "avg of cpu_utilization over 60s",
            "since 2025-11-21T09:30:00Z",
            "Previous:   OK",
            "damselfly sql \"SELECT ts, value FROM raw WHERE vm='vm-0042' AND metric='cpu_utilization' ORDER BY ts DESC LIMIT 30\"",
        ] {
            assert!(b.contains(want), "body lacks {want:?}:\n{b}");
        }
        let mut n = note(AlarmLevel::Warning, AlarmLevel::Ok);
        n.metric = "bytes_in_rate".into();
        n.device = Some("eth0".into());
        assert!(n.sql().contains("FROM rollup_1m") && n.sql().contains("device='eth0'"));
    }

    #[test]
    fn attributes_are_plain_strings_with_severity() {
        let a = note(AlarmLevel::Ok, AlarmLevel::Critical).attributes();
        assert_eq!(a["severity"], "CRITICAL");
        assert_eq!(a["state"], "OK");
        assert_eq!(a["rule"], "cpu-high");
        assert_eq!(a["vm"], "vm-0042");
        assert_eq!(a["ns"], "ns-01");
        assert_eq!(a["csp"], "aws");
        let mut n = note(AlarmLevel::NoData, AlarmLevel::Ok);
        n.tags.csp.clear();
        assert!(
            !n.attributes().contains_key("csp"),
            "SNS rejects empty values"
        );
    }

    #[test]
    fn alarms_batch_matches_the_table_schema() {
        let mut repeat = note(AlarmLevel::Critical, AlarmLevel::Critical);
        repeat.kind = NotificationKind::Repeat;
        repeat.offset = None;
        repeat.value = None;
        let notes = [note(AlarmLevel::Critical, AlarmLevel::Ok), repeat];
        let batch = alarms_batch("metrics", 3, &notes).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), Table::Alarms.schema());
        let empty = alarms_batch("metrics", 3, &[]).unwrap();
        assert_eq!(empty.num_rows(), 0);
    }
}
