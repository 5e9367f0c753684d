//! Fuzz target: the line protocol parser and the mapping onto native messages never panic.
#![no_main]

use damselfly_core::formats::{Format, influx, points_to_messages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(points) = influx::parse(data) else {
        return;
    };
    for point in &points {
        assert!(!point.measurement.is_empty(), "{point:?}");
        assert!(!point.fields.is_empty(), "{point:?}");
    }
    if let Ok(messages) = points_to_messages(&points, Format::Influx) {
        for message in &messages {
            assert_eq!(message.validate(), Ok(()), "{message:?}");
        }
    }
});
