//! Decoding and validating one Kafka record into metric messages, or a reason it is rejected.

use std::time::Duration;

use damselfly_schemas::MetricMessage;

use crate::formats::{self, FormatError};

/// One Kafka record as the core sees it: where it came from and its raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    /// Topic the record was read from.
    pub topic: &'a str,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Kafka record timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Record key (the VM id for well-behaved producers).
    pub key: Option<&'a [u8]>,
    /// Record value (the JSON message).
    pub value: Option<&'a [u8]>,
}

/// Limits a record must respect to be accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Samples older than this, relative to processing time, are rejected.
    pub max_past: Duration,
    /// Samples further than this in the future, relative to processing time, are rejected.
    pub max_future: Duration,
    /// Records whose value is larger than this many bytes are rejected.
    pub max_message_bytes: usize,
}

impl Validation {
    /// The accepted sample timestamps (ms), oldest and newest inclusive, as of `now_ms`.
    pub fn window(&self, now_ms: i64) -> (i64, i64) {
        (
            now_ms.saturating_sub(self.max_past.as_millis() as i64),
            now_ms.saturating_add(self.max_future.as_millis() as i64),
        )
    }
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            max_past: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(10 * 60),
            max_message_bytes: 1024 * 1024,
        }
    }
}

/// Why a record was not accepted; becomes the `reason` column of the `dlq` table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The record has no value (a tombstone).
    #[error("record has no value")]
    NoValue,
    /// The value exceeds [`Validation::max_message_bytes`].
    #[error("record value is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the value.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A native message's key does not name its VM.
    #[error("{0}")]
    Wire(#[from] damselfly_schemas::WireError),
    /// The value is not a native v1 message, Telegraf JSON or Influx line protocol.
    #[error("{0}")]
    Format(#[from] FormatError),
    /// The sample timestamp is outside the accepted window.
    #[error("timestamp {ts} is {what} (accepted: {window})")]
    TimeWindow {
        /// The message timestamp in ms.
        ts: i64,
        /// "too old" or "in the future".
        what: &'static str,
        /// The accepted window, human readable.
        window: String,
    },
    /// The adapter could not even read the record (e.g. bad base64 in a Lambda event).
    #[error("undecodable record: {0}")]
    Envelope(String),
}

/// Decodes and validates one record against the limits, as of `now_ms`: a native v1 message, or
/// Telegraf JSON / Influx line protocol (which may carry several messages). A record is accepted
/// or rejected whole.
pub fn decode(
    rec: &InputRecord<'_>,
    now_ms: i64,
    limits: &Validation,
) -> Result<Vec<MetricMessage>, Rejection> {
    let value = rec.value.ok_or(Rejection::NoValue)?;
    if value.len() > limits.max_message_bytes {
        return Err(Rejection::TooLarge {
            size: value.len(),
            limit: limits.max_message_bytes,
        });
    }
    let messages = match MetricMessage::from_json(value) {
        // Our producers key by VM id; Telegraf's key is a routing choice (often random), not checked.
        Ok(native) => {
            native.check_key(rec.key)?;
            vec![native]
        }
        Err(_) => formats::decode_value(value)?,
    };
    // JSON has no NaN or infinity, serde_json rejects out-of-range numbers, and the line protocol
    // decoder refuses non-finite values, so every value here is finite.
    let (past, future) = limits.window(now_ms);
    if let Some(msg) = messages.iter().find(|m| m.ts < past || m.ts > future) {
        return Err(Rejection::TimeWindow {
            ts: msg.ts,
            what: if msg.ts < past {
                "too old"
            } else {
                "in the future"
            },
            window: format!(
                "{} back to {} ahead",
                humanize(limits.max_past),
                humanize(limits.max_future)
            ),
        });
    }
    Ok(messages)
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 && s > 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_737_200_000;

    fn rec<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> InputRecord<'a> {
        InputRecord {
            topic: "metrics",
            partition: 0,
            offset: 7,
            timestamp_ms: NOW,
            key,
            value,
        }
    }

    fn msg(ts: i64) -> String {
        format!(
            r#"{{"v":1,"ts":{ts},"tags":{{"ns":"n","mcis":"m","vm":"vm-1"}},"metrics":{{"cpu_utilization":5}}}}"#
        )
    }

    #[test]
    fn accepts_a_good_record() {
        let body = msg(NOW);
        let m = decode(
            &rec(Some(b"vm-1"), Some(body.as_bytes())),
            NOW,
            &Validation::default(),
        )
        .unwrap();
        assert_eq!(m[0].tags.vm, "vm-1");
    }

    #[test]
    fn rejects_with_reasons() {
        let limits = Validation {
            max_message_bytes: 200,
            ..Validation::default()
        };
        let old = msg(NOW - 8 * 86_400_000);
        let future = msg(NOW + 3_600_000);
        let huge = format!("{:<300}", msg(NOW));
        let good = msg(NOW);
        let cases: Vec<(InputRecord<'_>, &str)> = vec![
            (rec(None, None), "no value"),
            (
                rec(None, Some(b"\xff\x00garbage")),
                "not a native v1 message, Telegraf JSON or Influx line protocol",
            ),
            (
                rec(None, Some(br#"{"v":1,"ts":1"#)),
                "not a native v1 message, Telegraf JSON or Influx line protocol",
            ),
            (
                rec(None, Some(old.as_bytes())),
                "too old (accepted: 7d back to 10m ahead)",
            ),
            (rec(None, Some(future.as_bytes())), "in the future"),
            (rec(None, Some(huge.as_bytes())), "over the 200-byte limit"),
            (
                rec(Some(b"vm-2"), Some(good.as_bytes())),
                "does not match tags.vm",
            ),
        ];
        for (r, want) in cases {
            let got = decode(&r, NOW, &limits).unwrap_err().to_string();
            assert!(got.contains(want), "got `{got}`, want `{want}`");
        }
    }
}
