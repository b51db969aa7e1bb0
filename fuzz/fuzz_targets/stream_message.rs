//! Stream messages (PROTOCOL.md 7.2): decode never panics, and whatever
//! decodes encodes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopmix_core::stream_frame::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.encode().ok().as_deref(), Some(data));
    }
});
