//! Fuzz target: `formats::decode_value` on arbitrary bytes never panics and only returns valid messages.
#![no_main]

use damselfly_core::formats::decode_value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(messages) = decode_value(data) {
        assert!(!messages.is_empty(), "Ok with no messages");
        for message in &messages {
            assert_eq!(message.validate(), Ok(()), "{message:?}");
        }
    }
});
