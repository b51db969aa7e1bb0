//! The node's packet path from the first byte off a QUIC stream: the frame
//! decoder (fed in arbitrary chunks) and, for every frame it yields, the
//! Sphinx processor (malformed headers, wrong sizes, unknown key epochs).
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use loopmix_core::keys::SphinxKeypair;
use loopmix_core::mixing::processor::{KeyRing, KeySlot, SphinxProcessor};
use loopmix_core::mixing::replay::ReplayCache;
use loopmix_core::wire::FrameDecoder;

const PACKET: usize = 348 + 1024;

fn processor() -> &'static SphinxProcessor {
    static P: OnceLock<SphinxProcessor> = OnceLock::new();
    P.get_or_init(|| {
        let ring = KeyRing::default();
        ring.insert(KeySlot {
            epoch: 7,
            key: SphinxKeypair::generate(),
            replay: ReplayCache::new(100_000, 1e-6).expect("replay cache"),
        });
        SphinxProcessor::new(ring, Duration::from_secs(60))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new(PACKET);
    for piece in rest.chunks(chunk) {
        if dec.room() < piece.len() {
            return;
        }
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    let _ = processor().process(f.key_epoch, &f.packet);
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
});
