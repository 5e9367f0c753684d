//! Building Lambda's Kafka event from consumed records: grouped by "topic-partition", base64 key and value.

use std::collections::HashMap;

use aws_lambda_events::encodings::MillisecondTimestamp;
use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
use base64::Engine as _;
use rdkafka::Timestamp;
use rdkafka::message::{Headers as _, Message, OwnedMessage};

/// The `eventSource` Lambda sets for self-managed Kafka clusters.
pub const EVENT_SOURCE: &str = "SelfManagedKafka";

/// Converts one consumed message into Lambda's record shape.
pub fn kafka_record(m: &OwnedMessage) -> KafkaRecord {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (ts, ts_type) = match m.timestamp() {
        Timestamp::CreateTime(t) => (t, "CREATE_TIME"),
        Timestamp::LogAppendTime(t) => (t, "LOG_APPEND_TIME"),
        Timestamp::NotAvailable => (0, "NO_TIMESTAMP_TYPE"),
    };
    let mut r = KafkaRecord::default();
    r.topic = Some(m.topic().to_owned());
    r.partition = i64::from(m.partition());
    r.offset = m.offset();
    r.timestamp = MillisecondTimestamp(damselfly_schemas::lambda_event::record_time(ts));
    r.timestamp_type = Some(ts_type.to_owned());
    r.key = m.key().map(b64);
    r.value = m.payload().map(b64);
    r.headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let bytes = h
                        .value
                        .unwrap_or_default()
                        .iter()
                        .map(|b| *b as i8)
                        .collect();
                    HashMap::from([(h.key.to_owned(), bytes)])
                })
                .collect()
        })
        .unwrap_or_default();
    r
}

/// Builds the event for a batch of messages, records of each partition in offset order.
pub fn kafka_event<'a>(
    messages: impl IntoIterator<Item = &'a OwnedMessage>,
    bootstrap: &str,
) -> KafkaEvent {
    let mut event = KafkaEvent::default();
    event.event_source = Some(EVENT_SOURCE.to_owned());
    event.bootstrap_servers = Some(bootstrap.to_owned());
    for m in messages {
        event
            .records
            .entry(damselfly_contract::event::partition_key(
                m.topic(),
                m.partition(),
            ))
            .or_default()
            .push(kafka_record(m));
    }
    for records in event.records.values_mut() {
        records.sort_by_key(|r| r.offset);
    }
    event
}

/// The event as Lambda puts it on the wire: like its serde form, but with each record's
/// `timestamp` as a JSON number of milliseconds (aws_lambda_events writes a string).
pub fn lambda_json(event: &KafkaEvent) -> serde_json::Value {
    let mut json = serde_json::to_value(event).expect("Kafka events serialize");
    if let Some(partitions) = json.get_mut("records").and_then(|r| r.as_object_mut()) {
        for records in partitions.values_mut().filter_map(|r| r.as_array_mut()) {
            for r in records {
                let millis = r["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok());
                if let Some(ms) = millis {
                    r["timestamp"] = ms.into();
                }
            }
        }
    }
    json
}

/// Approximate size of a message once in the event (base64 grows bytes by 4/3).
pub fn event_size(m: &OwnedMessage) -> usize {
    let raw = m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len);
    raw.div_ceil(3) * 4 + m.topic().len() + 96
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    #[test]
    fn event_matches_lambdas_shape() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "src",
            value: Some(b"hi"),
        });
        let msgs = vec![
            OwnedMessage::new(
                Some(b"v2".to_vec()),
                Some(b"k".to_vec()),
                "metrics".into(),
                Timestamp::CreateTime(1_595_035_749_700),
                3,
                11,
                Some(headers),
            ),
            OwnedMessage::new(
                Some(b"v1".to_vec()),
                None,
                "metrics".into(),
                Timestamp::LogAppendTime(5),
                3,
                10,
                None,
            ),
            OwnedMessage::new(
                None,
                None,
                "metrics".into(),
                Timestamp::NotAvailable,
                0,
                1,
                None,
            ),
        ];
        let ev = kafka_event(&msgs, "b:9092");
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["eventSource"], "SelfManagedKafka");
        assert_eq!(json["bootstrapServers"], "b:9092");
        let p3 = json["records"]["metrics-3"].as_array().unwrap();
        assert_eq!(p3.len(), 2);
        assert_eq!(p3[0]["offset"], 10, "records are in offset order");
        assert_eq!(p3[0]["value"], "djE=");
        assert_eq!(p3[0]["timestampType"], "LOG_APPEND_TIME");
        assert_eq!(p3[1]["key"], "aw==");
        // Lambda sends `timestamp` as a JSON number; aws_lambda_events serializes it as a string
        // (and reads both). In-process invocation never serializes; a remote invoke must emit numbers.
        assert_eq!(
            ev.records["metrics-3"][1].timestamp.0.timestamp_millis(),
            1_595_035_749_700
        );
        assert_eq!(p3[1]["headers"][0]["src"], serde_json::json!([104, 105]));
        let wire = lambda_json(&ev);
        assert_eq!(
            wire["records"]["metrics-3"][1]["timestamp"],
            1_595_035_749_700_i64
        );
        assert_eq!(wire["records"]["metrics-3"][1]["offset"], 11);
        assert!(json["records"]["metrics-0"][0]["value"].is_null());
        // And it reads back as the type Lambda handlers take.
        let back: KafkaEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
    }
}
