//! The client ↔ provider control protocol, both directions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopmix_core::provider_control::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Response::decode(data, 1 << 20);
});
