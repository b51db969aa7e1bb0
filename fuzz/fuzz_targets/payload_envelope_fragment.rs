//! What a final hop and a client parse out of a Sphinx payload: payload
//! kinds, fragments, envelopes (with reply blocks), and the client engine's
//! whole inbox path.
#![no_main]
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use loopmix_core::client_engine::{Engine, EngineConfig};
use loopmix_core::e2e::{EncryptionKeypair, Envelope, Payload};
use loopmix_core::keys::NodeId;
use loopmix_core::message::Fragment;

fn engine() -> &'static Mutex<Engine> {
    static E: OnceLock<Mutex<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        Mutex::new(Engine::new(
            NodeId([1; 32]),
            EncryptionKeypair::generate(),
            NodeId([2; 32]),
            EngineConfig::default(),
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = Payload::decode(data);
    let _ = Fragment::decode(data);
    if let Ok(e) = Envelope::decode(data) {
        let _ = e.encode();
    }
    if data.len() >= 16 {
        let (id, rest) = data.split_at(16);
        let id: [u8; 16] = id.try_into().expect("16 bytes");
        if let Ok(mut e) = engine().lock() {
            let _ = e.on_inbox(id, rest, Instant::now());
        }
    }
});
