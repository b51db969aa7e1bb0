//! Directory documents: descriptors (signed here with a fixed key so the
//! parser behind the signature check is reached), signed topology
//! documents, and plain topology JSON.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loopmix_core::keys::IdentityKeypair;
use loopmix_core::pki::{SignedDescriptor, SignedTopology, TrustAnchors};
use loopmix_core::topology::Topology;

fn key() -> &'static IdentityKeypair {
    static K: OnceLock<IdentityKeypair> = OnceLock::new();
    K.get_or_init(IdentityKeypair::generate)
}

fn anchors() -> &'static TrustAnchors {
    static T: OnceLock<TrustAnchors> = OnceLock::new();
    T.get_or_init(|| TrustAnchors::new([key().node_id()], 1).expect("anchors"))
}

fuzz_target!(|data: &[u8]| {
    let _ = SignedDescriptor::sign_bytes(data, key()).verify();
    if let Ok(d) = serde_json::from_slice::<SignedDescriptor>(data) {
        let _ = d.verify();
    }
    if let Ok(s) = serde_json::from_slice::<SignedTopology>(data) {
        let _ = anchors().verify(&s, 1_800_000_000);
    }
    let _ = Topology::from_json(data);
});
