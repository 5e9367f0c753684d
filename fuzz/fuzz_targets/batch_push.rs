//! Fuzz target: a batch takes exactly what `decode` takes, with the same samples, whichever path (the native fast path or `decode`) the record goes through.
#![no_main]

use damselfly_core::decode::decode;
use damselfly_core::{InputRecord, PartitionBatch, Validation};
use libfuzzer_sys::fuzz_target;

/// Processing time: the decoders' default window accepts samples near it.
const NOW_MS: i64 = 1_763_737_200_000;

fuzz_target!(|data: &[u8]| {
    let rec = InputRecord {
        topic: "metrics",
        partition: 0,
        offset: 0,
        timestamp_ms: NOW_MS,
        key: None,
        value: Some(data),
    };
    let limits = Validation::default();
    let mut batch = PartitionBatch::new("metrics", 0);
    batch.push(&rec, NOW_MS, &limits);
    let stats = batch.stats();
    match decode(&rec, NOW_MS, &limits) {
        Ok(messages) => {
            assert_eq!(stats.rejected, 0, "{:?}", String::from_utf8_lossy(data));
            let samples: usize = messages.iter().map(|m| m.sample_count()).sum();
            assert_eq!(stats.samples, samples as u64);
        }
        Err(why) => assert_eq!(stats.rejected, 1, "{why}"),
    }
});
