//! A Kafka event cut into its partitions, as every function processes it.
//!
//! Lambda's event source mapping keys an event's records by `{topic}-{partition}`
//! ([`partition_key`]); a topic may itself contain `-`, so a record's own `topic` and `partition`
//! fields are authoritative and the key is only a fallback for records without a topic. Each
//! partition's records are sorted by offset: the functions' exactly-once protocols depend on it,
//! and Lambda does not promise an order between the key's records.

use std::collections::BTreeMap;

use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
use base64::Engine as _;

/// One topic-partition's records of an event, in offset order.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// The records' topic.
    pub topic: String,
    /// The records' partition.
    pub partition: i32,
    /// The records, in offset order.
    pub records: Vec<KafkaRecord>,
}

/// The event's partitions, ordered by (topic, partition) whatever the event's map order.
pub fn partitions(event: KafkaEvent) -> Vec<Partition> {
    let mut out: BTreeMap<(String, i32), Vec<KafkaRecord>> = BTreeMap::new();
    for (key, records) in event.records {
        let fallback = split_partition_key(&key).0.to_owned();
        for r in records {
            let topic = r.topic.clone().unwrap_or_else(|| fallback.clone());
            out.entry((topic, r.partition as i32)).or_default().push(r);
        }
    }
    out.into_iter()
        .map(|((topic, partition), mut records)| {
            records.sort_by_key(|r| r.offset);
            Partition {
                topic,
                partition,
                records,
            }
        })
        .collect()
}

/// The key of a partition's records in a Lambda Kafka event: `{topic}-{partition}`.
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// A partition key's topic and partition, split at its last `-` (the partition is `None` when
/// what follows is not a number, or there is no `-`).
pub fn split_partition_key(key: &str) -> (&str, Option<i32>) {
    match key.rsplit_once('-') {
        Some((topic, p)) => match p.parse() {
            Ok(p) => (topic, Some(p)),
            Err(_) => (key, None),
        },
        None => (key, None),
    }
}

/// A record's key or value as the event carries it (base64), decoded.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: Option<&str>, partition: i64, offset: i64) -> KafkaRecord {
        let mut r = KafkaRecord::default();
        r.topic = topic.map(str::to_owned);
        r.partition = partition;
        r.offset = offset;
        r
    }

    #[test]
    fn partitions_come_in_key_order_with_records_in_offset_order() {
        let mut e = KafkaEvent::default();
        e.records.insert(
            "metrics-a-1".into(),
            vec![
                record(Some("metrics-a"), 1, 9),
                record(Some("metrics-a"), 1, 3),
            ],
        );
        e.records
            .insert("metrics-a-0".into(), vec![record(None, 0, 5)]);
        let parts = partitions(e);
        let got: Vec<_> = parts
            .iter()
            .map(|p| {
                let offsets: Vec<i64> = p.records.iter().map(|r| r.offset).collect();
                (p.topic.as_str(), p.partition, offsets)
            })
            .collect();
        assert_eq!(
            got,
            vec![("metrics-a", 0, vec![5]), ("metrics-a", 1, vec![3, 9])],
            "a record without a topic takes the key's, split at the last '-'"
        );
    }

    #[test]
    fn partition_keys_split_at_the_last_dash() {
        assert_eq!(partition_key("vm-metrics", 11), "vm-metrics-11");
        assert_eq!(
            split_partition_key("vm-metrics-11"),
            ("vm-metrics", Some(11))
        );
        assert_eq!(split_partition_key("metrics"), ("metrics", None));
        assert_eq!(split_partition_key("a-b"), ("a-b", None));
        assert_eq!(decode_base64("dm0tMQ==").unwrap(), b"vm-1");
        assert!(decode_base64("not base64!").is_err());
    }
}
