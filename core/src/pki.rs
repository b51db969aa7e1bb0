//! The directory PKI: what nodes register and what authorities publish.
//!
//! * [`descriptor`]: a node's signed self-description for one epoch
//!   ([`Descriptor`], [`SignedDescriptor`]).
//! * [`document`]: the per-epoch topology document, signed over its exact
//!   bytes by several authorities ([`EpochDocument`], [`SignedTopology`]), and
//!   k-of-n verification against pinned authority keys ([`TrustAnchors`]).
//! * [`build`]: the deterministic document builder every authority runs, so
//!   independent authorities produce byte-identical documents.
//! * [`liveness`]: the k-of-n signed "down list" authorities publish every
//!   few seconds ([`LivenessDocument`], [`SignedLiveness`]), built from
//!   per-authority signed [`Observation`]s.
//! * [`api`]: the JSON bodies of the directory HTTP API.
//! * [`pinned`]: the authorities a node or client pins in its configuration.
//!
//! The client that fetches, verifies and caches these documents over HTTP is
//! `loopmix_net::directory::DirectoryClient`; everything here is pure.
//!
//! Everything signed is signed as *bytes*: the wire form carries the exact
//! JSON bytes (base64url), a verifier checks the signature over those bytes
//! before parsing them, and nobody re-serialises a struct to check a
//! signature. Each signature covers a domain-separation prefix
//! ([`DESCRIPTOR_CONTEXT`], [`TOPOLOGY_CONTEXT`], [`LIVENESS_CONTEXT`],
//! [`OBSERVATION_CONTEXT`]) so a signature over one
//! kind of object can never be replayed as another. docs/PROTOCOL-directory.md
//! is the normative description.

pub mod api;
pub mod build;
pub mod descriptor;
pub mod document;
pub mod liveness;
pub mod pinned;

pub use build::{build_document, layer_sort_key};
pub use descriptor::{Descriptor, DescriptorError, SignedDescriptor, VerifiedDescriptor};
pub use document::{
    AuthoritySignature, EpochDocument, EpochSchedule, SignedTopology, TrustAnchors, TrustError,
    VerifiedTopology, VerifyError,
};
pub use liveness::{
    LIVENESS_CONTEXT, LIVENESS_VERSION, LivenessDocument, MAX_LIVENESS_BYTES, OBSERVATION_CONTEXT,
    Observation, SignedLiveness, SignedObservation, VerifiedLiveness, combine_observations,
};
pub use pinned::{AuthorityEntry, validate_pinned};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Prefix of the message a node signs: `DESCRIPTOR_CONTEXT || descriptor bytes`.
pub const DESCRIPTOR_CONTEXT: &[u8] = b"loopmix-descriptor-v1\0";
/// Prefix of the message an authority signs: `TOPOLOGY_CONTEXT || document bytes`.
pub const TOPOLOGY_CONTEXT: &[u8] = b"loopmix-topology-v1\0";
/// Prefix hashed with epoch and identity to order mixes before dealing layers.
pub const LAYER_CONTEXT: &[u8] = b"loopmix-layer-v1\0";

/// Version of [`EpochDocument`]; a verifier refuses any other.
pub const DOCUMENT_VERSION: u32 = 1;
/// Largest descriptor (decoded JSON bytes) anyone accepts.
pub const MAX_DESCRIPTOR_BYTES: usize = 2048;
/// Default largest topology document (decoded JSON bytes) a verifier accepts;
/// about 10,000 nodes.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// Default clock-skew allowance when checking validity windows.
pub const DEFAULT_CLOCK_SKEW_S: u64 = 30;

/// base64url without padding (RFC 4648 §5), the encoding of every byte
/// string in directory JSON.
pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict inverse of [`b64_encode`]: padding, `+`, `/` and whitespace are errors.
pub fn b64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s)
}

/// `context || bytes`, the message actually signed.
pub(crate) fn signed_message(context: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + bytes.len());
    m.extend_from_slice(context);
    m.extend_from_slice(bytes);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        let s = b64_encode(&[0xfb, 0xff, 0x00]);
        assert_eq!(s, "-_8A");
        assert_eq!(b64_decode(&s).unwrap(), vec![0xfb, 0xff, 0x00]);
        assert!(b64_decode("-_8A==").is_err());
        assert!(b64_decode("+/8A").is_err());
        assert!(b64_decode("-_8 A").is_err());
    }
}
