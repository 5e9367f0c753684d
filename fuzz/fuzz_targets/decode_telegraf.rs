//! Fuzz target: the Telegraf JSON parser and the mapping onto native messages never panic.
#![no_main]

use damselfly_core::formats::{Format, points_to_messages, telegraf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(points) = telegraf::parse(data) else {
        return;
    };
    for point in &points {
        assert!(!point.measurement.is_empty(), "{point:?}");
    }
    if let Ok(messages) = points_to_messages(&points, Format::TelegrafJson) {
        for message in &messages {
            assert_eq!(message.validate(), Ok(()), "{message:?}");
        }
    }
});
