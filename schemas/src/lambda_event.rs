//! Lambda's Kafka event as it arrives: a record timestamp the event's types cannot hold is read as 0, by the functions and the local runner alike, so one record cannot fail its whole batch.
//!
//! Lambda passes each record's Kafka timestamp (milliseconds, any `i64` a producer chose) through
//! as a JSON number; `aws_lambda_events` reads it into a `chrono` time, whose range is narrower
//! (about ±262,000 years), so a single hostile or corrupt timestamp would make the event
//! undeserializable and fail every record with it (up to 10,000). The functions read the event as
//! JSON, pass it through [`clamp_timestamps`], and only then into their types; the local runner
//! builds its records' times with [`record_time`]. Both apply [`representable`], the one rule.

use serde_json::Value;

/// Whether `chrono` (and so the event types) can hold a timestamp of `ms` milliseconds.
pub fn representable(ms: i64) -> bool {
    chrono::DateTime::from_timestamp_millis(ms).is_some()
}

/// The time a record with a Kafka timestamp of `ms` milliseconds carries in the event: the epoch
/// (0) when the event types cannot hold `ms`.
pub fn record_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Sets every record `timestamp` of a Kafka event (`records.<topic-partition>[].timestamp`, a
/// number or a numeric string) that the event types cannot hold to 0, logging each; returns how
/// many it set.
pub fn clamp_timestamps(event: &mut Value) -> usize {
    let Some(groups) = event.get_mut("records").and_then(Value::as_object_mut) else {
        return 0;
    };
    let mut clamped = 0;
    for record in groups
        .values_mut()
        .filter_map(Value::as_array_mut)
        .flatten()
    {
        let Some(ts) = record.get_mut("timestamp") else {
            continue;
        };
        let fits = match ts {
            Value::Number(n) => n.as_i64().is_some_and(representable),
            Value::String(s) => s.parse::<i64>().is_ok_and(representable),
            _ => true,
        };
        if !fits {
            tracing::warn!(timestamp = %ts, "record timestamp out of range: read as 0");
            *ts = Value::from(0);
            clamped += 1;
        }
    }
    clamped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_timestamps_become_zero_and_the_rest_stay() {
        let mut ev = serde_json::json!({
            "eventSource": "aws:kafka",
            "records": {
                "metrics-0": [
                    {"offset": 1, "timestamp": 1_763_722_740_000_i64},
                    {"offset": 2, "timestamp": i64::MAX},
                    {"offset": 3, "timestamp": u64::MAX},
                    {"offset": 4, "timestamp": "-9223372036854775808"},
                    {"offset": 5, "timestamp": 1.5e300},
                ],
                "metrics-1": [{"offset": 9, "timestamp": "1763722740000"}]
            }
        });
        assert_eq!(clamp_timestamps(&mut ev), 4);
        let p0 = &ev["records"]["metrics-0"];
        assert_eq!(p0[0]["timestamp"], 1_763_722_740_000_i64);
        for i in 1..5 {
            assert_eq!(p0[i]["timestamp"], 0, "record {i}");
        }
        assert_eq!(ev["records"]["metrics-1"][0]["timestamp"], "1763722740000");
        assert_eq!(clamp_timestamps(&mut serde_json::json!({"time": "x"})), 0);
        assert_eq!(record_time(i64::MAX).timestamp_millis(), 0);
        assert_eq!(
            record_time(1_763_722_740_000).timestamp_millis(),
            1_763_722_740_000
        );
    }
}
