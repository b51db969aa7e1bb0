//! The per-epoch topology document, its authority signatures, and k-of-n
//! verification against pinned authority keys.

use std::collections::BTreeSet;
use std::sync::Arc;

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use crate::keys::{IdentityKeypair, NodeId};
use crate::topology::{Topology, TopologyDocument};

use super::{
    DEFAULT_CLOCK_SKEW_S, DEFAULT_MAX_DOCUMENT_BYTES, DOCUMENT_VERSION, TOPOLOGY_CONTEXT,
    b64_decode, b64_encode, signed_message,
};

/// Epoch arithmetic shared by authorities, nodes and clients.
///
/// Epoch `e >= 1` covers `[genesis + (e-1)·length, genesis + e·length)` in
/// Unix seconds; before `genesis` it is epoch 0, which is never valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSchedule {
    /// Unix seconds at which epoch 1 starts.
    pub genesis: u64,
    /// Epoch length in seconds (> 0).
    pub length_s: u64,
}

impl EpochSchedule {
    pub fn epoch_at(&self, unix_s: u64) -> u64 {
        if unix_s < self.genesis || self.length_s == 0 {
            return 0;
        }
        (unix_s - self.genesis) / self.length_s + 1
    }

    /// First second of epoch `e`.
    pub fn start(&self, epoch: u64) -> u64 {
        self.genesis
            .saturating_add(epoch.saturating_sub(1).saturating_mul(self.length_s))
    }

    /// First second after epoch `e` (the start of `e + 1`).
    pub fn end(&self, epoch: u64) -> u64 {
        self.start(epoch).saturating_add(self.length_s)
    }
}

/// The signed body: validity window, epoch length and the topology.
///
/// Canonical form = `serde_json::to_vec` of this struct (fields in this order,
/// no whitespace, nodes sorted by id as [`super::build_document`] emits them).
/// Verifiers never re-serialise it: they check signatures over the bytes
/// they received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochDocument {
    /// Format version, [`DOCUMENT_VERSION`].
    pub version: u32,
    /// Unix seconds: the start of the epoch (`topology.params.epoch`).
    pub valid_from: u64,
    /// Unix seconds after which the document must not be used. At least the
    /// epoch's end; authorities add a grace period so a late next document
    /// does not stop the network.
    pub valid_until: u64,
    /// Epoch length in seconds: the next epoch starts at
    /// `valid_from + epoch_length_s`.
    pub epoch_length_s: u64,
    pub topology: TopologyDocument,
}

impl EpochDocument {
    pub fn epoch(&self) -> u64 {
        self.topology.params.epoch
    }

    /// The exact bytes authorities sign.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// One authority's signature over `context || document bytes`, where the
/// context is [`TOPOLOGY_CONTEXT`] for topology documents (what
/// [`sign`](Self::sign) and [`verify`](Self::verify) use) and another
/// domain-separation prefix for other signed objects (e.g.
/// [`super::LIVENESS_CONTEXT`]), so a signature never verifies as a
/// different kind of object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySignature {
    /// The authority's Ed25519 key (base58).
    pub authority: NodeId,
    /// base64url (no padding) of the 64-byte Ed25519 signature.
    pub signature: String,
}

impl AuthoritySignature {
    /// Signs a topology document (context [`TOPOLOGY_CONTEXT`]).
    pub fn sign(document_bytes: &[u8], key: &IdentityKeypair) -> Self {
        Self::sign_with(TOPOLOGY_CONTEXT, document_bytes, key)
    }

    /// Signs `context || bytes`.
    pub fn sign_with(context: &[u8], bytes: &[u8], key: &IdentityKeypair) -> Self {
        Self::from_raw(key.node_id(), key.sign(&signed_message(context, bytes)))
    }

    pub fn from_raw(authority: NodeId, signature: [u8; 64]) -> Self {
        Self {
            authority,
            signature: b64_encode(&signature),
        }
    }

    /// The 64 signature bytes, if the field decodes to exactly that.
    pub fn raw(&self) -> Option<[u8; 64]> {
        b64_decode(&self.signature)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
    }

    /// `verify_strict` over `TOPOLOGY_CONTEXT || document_bytes`.
    pub fn verify(&self, document_bytes: &[u8]) -> bool {
        self.verify_with(TOPOLOGY_CONTEXT, document_bytes)
    }

    /// `verify_strict` over `context || bytes`.
    pub fn verify_with(&self, context: &[u8], bytes: &[u8]) -> bool {
        let (Some(vk), Some(sig)) = (self.authority.verifying_key(), self.raw()) else {
            return false;
        };
        vk.verify_strict(
            &signed_message(context, bytes),
            &Signature::from_bytes(&sig),
        )
        .is_ok()
    }
}

/// Wire form of a published document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTopology {
    /// base64url (no padding) of the [`EpochDocument`] bytes.
    pub document: String,
    pub signatures: Vec<AuthoritySignature>,
}

impl SignedTopology {
    pub fn unsigned(document_bytes: &[u8]) -> Self {
        Self {
            document: b64_encode(document_bytes),
            signatures: Vec::new(),
        }
    }

    pub fn document_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        b64_decode(&self.document)
    }

    /// Adds (or replaces) one authority's signature; keeps them sorted by
    /// authority so equal sets serialise identically.
    pub fn add_signature(&mut self, sig: AuthoritySignature) {
        self.signatures.retain(|s| s.authority != sig.authority);
        self.signatures.push(sig);
        self.signatures.sort_by_key(|s| s.authority);
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustError {
    #[error("no authority keys pinned")]
    NoAuthorities,
    #[error("authority key {0} is not a valid Ed25519 public key")]
    BadKey(NodeId),
    #[error("authority key {0} is pinned twice")]
    Duplicate(NodeId),
    #[error("threshold {threshold} must be in 1..={n}")]
    BadThreshold { threshold: usize, n: usize },
}

/// Why a document was refused. [`VerifyError::reason`] is the metric label.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("document is {len} bytes, more than the {max} allowed")]
    Oversized { len: usize, max: usize },
    #[error("malformed document: {0}")]
    Malformed(String),
    #[error("document carries no signatures")]
    Unsigned,
    #[error("only {valid} valid signature(s) from pinned authorities, {threshold} required")]
    BelowThreshold { valid: usize, threshold: usize },
    #[error("bad signature from authority {authority}; {valid} valid, {threshold} required")]
    BadSignature {
        authority: NodeId,
        valid: usize,
        threshold: usize,
    },
    #[error("unsupported document version {0}")]
    UnsupportedVersion(u32),
    #[error("document expired at {valid_until} (now {now})")]
    Expired { valid_until: u64, now: u64 },
    #[error("document is not valid before {valid_from} (now {now})")]
    FutureDated { valid_from: u64, now: u64 },
    #[error("invalid document: {0}")]
    Invalid(String),
    #[error("asked for epoch {expected}, got epoch {got}")]
    WrongEpoch { expected: u64, got: u64 },
}

impl VerifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Malformed(_) => "malformed",
            Self::Unsigned => "unsigned",
            Self::BelowThreshold { .. } => "below_threshold",
            Self::BadSignature { .. } => "bad_signature",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::Expired { .. } => "expired",
            Self::FutureDated { .. } => "future_dated",
            Self::Invalid(_) => "invalid",
            Self::WrongEpoch { .. } => "wrong_epoch",
        }
    }
}

/// The pinned authority keys, the threshold k, and verification limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAnchors {
    authorities: BTreeSet<NodeId>,
    threshold: usize,
    max_document_bytes: usize,
    clock_skew_s: u64,
}

impl TrustAnchors {
    pub fn new(
        authorities: impl IntoIterator<Item = NodeId>,
        threshold: usize,
    ) -> Result<Self, TrustError> {
        let mut set = BTreeSet::new();
        for a in authorities {
            if a.verifying_key().is_none() {
                return Err(TrustError::BadKey(a));
            }
            if !set.insert(a) {
                return Err(TrustError::Duplicate(a));
            }
        }
        if set.is_empty() {
            return Err(TrustError::NoAuthorities);
        }
        if threshold == 0 || threshold > set.len() {
            return Err(TrustError::BadThreshold {
                threshold,
                n: set.len(),
            });
        }
        Ok(Self {
            authorities: set,
            threshold,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            clock_skew_s: DEFAULT_CLOCK_SKEW_S,
        })
    }

    pub fn with_max_document_bytes(mut self, max: usize) -> Self {
        self.max_document_bytes = max;
        self
    }

    pub fn with_clock_skew(mut self, seconds: u64) -> Self {
        self.clock_skew_s = seconds;
        self
    }

    pub fn authorities(&self) -> &BTreeSet<NodeId> {
        &self.authorities
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn max_document_bytes(&self) -> usize {
        self.max_document_bytes
    }

    pub fn clock_skew_s(&self) -> u64 {
        self.clock_skew_s
    }

    /// Accepts a document valid at `now` (Unix seconds, ± the skew allowance)
    /// carrying at least k valid signatures from distinct pinned authorities.
    pub fn verify(
        &self,
        signed: &SignedTopology,
        now: u64,
    ) -> Result<VerifiedTopology, VerifyError> {
        self.verify_inner(signed, now, 0)
    }

    /// Like [`verify`](Self::verify) but also accepts a document that becomes
    /// valid up to `max_ahead_s` after `now`: the next epoch's document,
    /// fetched before the epoch starts.
    pub fn verify_upcoming(
        &self,
        signed: &SignedTopology,
        now: u64,
        max_ahead_s: u64,
    ) -> Result<VerifiedTopology, VerifyError> {
        self.verify_inner(signed, now, max_ahead_s)
    }

    /// Signature rule only: the distinct pinned authorities whose signature
    /// over `bytes` (as a topology document) verifies, or why there are
    /// fewer than k.
    pub fn check_signatures(
        &self,
        bytes: &[u8],
        signatures: &[AuthoritySignature],
    ) -> Result<Vec<NodeId>, VerifyError> {
        self.check_signatures_with(TOPOLOGY_CONTEXT, bytes, signatures)
    }

    /// The k-of-n rule for any signed object: the distinct pinned
    /// authorities whose signature over `context || bytes` verifies, or why
    /// there are fewer than k. Every kind of signed document goes through
    /// this one function, so the rule cannot drift between them.
    pub fn check_signatures_with(
        &self,
        context: &[u8],
        bytes: &[u8],
        signatures: &[AuthoritySignature],
    ) -> Result<Vec<NodeId>, VerifyError> {
        if signatures.is_empty() {
            return Err(VerifyError::Unsigned);
        }
        let mut valid = BTreeSet::new();
        let mut first_bad = None;
        for s in signatures {
            // Unknown keys are ignored, not errors: a document may carry
            // signatures of authorities this verifier does not pin.
            if !self.authorities.contains(&s.authority) || valid.contains(&s.authority) {
                continue;
            }
            if s.verify_with(context, bytes) {
                valid.insert(s.authority);
            } else if first_bad.is_none() {
                first_bad = Some(s.authority);
            }
        }
        if valid.len() >= self.threshold {
            return Ok(valid.into_iter().collect());
        }
        match first_bad {
            Some(authority) if !valid.contains(&authority) => Err(VerifyError::BadSignature {
                authority,
                valid: valid.len(),
                threshold: self.threshold,
            }),
            _ => Err(VerifyError::BelowThreshold {
                valid: valid.len(),
                threshold: self.threshold,
            }),
        }
    }

    fn verify_inner(
        &self,
        signed: &SignedTopology,
        now: u64,
        max_ahead_s: u64,
    ) -> Result<VerifiedTopology, VerifyError> {
        let bytes = decode_limited(&signed.document, self.max_document_bytes)?;
        // Signatures first: nothing unauthenticated is parsed.
        let signers = self.check_signatures(&bytes, &signed.signatures)?;
        let doc: EpochDocument =
            serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if doc.version != DOCUMENT_VERSION {
            return Err(VerifyError::UnsupportedVersion(doc.version));
        }
        if doc.valid_from >= doc.valid_until || doc.epoch_length_s == 0 {
            return Err(VerifyError::Invalid(format!(
                "empty validity window [{}, {}) or zero epoch length",
                doc.valid_from, doc.valid_until
            )));
        }
        if doc.valid_until.saturating_add(self.clock_skew_s) <= now {
            return Err(VerifyError::Expired {
                valid_until: doc.valid_until,
                now,
            });
        }
        if doc.valid_from
            > now
                .saturating_add(self.clock_skew_s)
                .saturating_add(max_ahead_s)
        {
            return Err(VerifyError::FutureDated {
                valid_from: doc.valid_from,
                now,
            });
        }
        let EpochDocument {
            version: _,
            valid_from,
            valid_until,
            epoch_length_s,
            topology,
        } = doc;
        let topology = Topology::new(topology).map_err(|e| VerifyError::Invalid(e.to_string()))?;
        Ok(VerifiedTopology {
            valid_from,
            valid_until,
            epoch_length_s,
            topology,
            signers,
            signed: signed.clone(),
            bytes: bytes.into(),
        })
    }
}

/// The base64url `document` field decoded, refusing more than `max` bytes
/// before decoding anything (the length check is on the text).
pub(crate) fn decode_limited(document: &str, max: usize) -> Result<Vec<u8>, VerifyError> {
    if document.len() > max.div_ceil(3).saturating_mul(4) {
        return Err(VerifyError::Oversized {
            len: document.len() / 4 * 3,
            max,
        });
    }
    let bytes = b64_decode(document)
        .map_err(|e| VerifyError::Malformed(format!("document: not base64url: {e}")))?;
    if bytes.len() > max {
        return Err(VerifyError::Oversized {
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// A document that passed [`TrustAnchors::verify`].
#[derive(Clone, Debug)]
pub struct VerifiedTopology {
    valid_from: u64,
    valid_until: u64,
    epoch_length_s: u64,
    topology: Topology,
    signers: Vec<NodeId>,
    signed: SignedTopology,
    bytes: Arc<[u8]>,
}

impl VerifiedTopology {
    pub fn epoch(&self) -> u64 {
        self.topology.epoch()
    }
    pub fn valid_from(&self) -> u64 {
        self.valid_from
    }
    pub fn valid_until(&self) -> u64 {
        self.valid_until
    }
    pub fn epoch_length_s(&self) -> u64 {
        self.epoch_length_s
    }
    /// Start of the next epoch (Unix seconds).
    pub fn next_epoch_start(&self) -> u64 {
        self.valid_from.saturating_add(self.epoch_length_s)
    }
    /// The epoch schedule this document implies.
    pub fn schedule(&self) -> EpochSchedule {
        let offset = self
            .epoch()
            .saturating_sub(1)
            .saturating_mul(self.epoch_length_s);
        EpochSchedule {
            genesis: self.valid_from.saturating_sub(offset),
            length_s: self.epoch_length_s,
        }
    }
    /// The validated topology (layers indexed, ready for route selection).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
    /// Pinned authorities whose signatures verified.
    pub fn signers(&self) -> &[NodeId] {
        &self.signers
    }
    /// The wire form as received.
    pub fn signed(&self) -> &SignedTopology {
        &self.signed
    }
    /// The exact signed document bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::testing::epoch_doc;

    fn signed_by(bytes: &[u8], keys: &[&IdentityKeypair]) -> SignedTopology {
        let mut s = SignedTopology::unsigned(bytes);
        for k in keys {
            s.add_signature(AuthoritySignature::sign(bytes, k));
        }
        s
    }

    struct Fixture {
        keys: Vec<IdentityKeypair>,
        trust: TrustAnchors,
        bytes: Vec<u8>,
    }

    fn fixture() -> Fixture {
        let keys: Vec<_> = (0..3).map(|_| IdentityKeypair::generate()).collect();
        let trust = TrustAnchors::new(keys.iter().map(|k| k.node_id()), 2).unwrap();
        let bytes = epoch_doc(1000, 1120).canonical_bytes().unwrap();
        Fixture { keys, trust, bytes }
    }

    #[test]
    fn k_of_n_roundtrip() {
        let f = fixture();
        let s = signed_by(&f.bytes, &[&f.keys[0], &f.keys[2]]);
        let json = serde_json::to_vec(&s).unwrap();
        let back: SignedTopology = serde_json::from_slice(&json).unwrap();
        let v = f.trust.verify(&back, 1010).unwrap();
        assert_eq!(v.epoch(), 1);
        assert_eq!(v.signers().len(), 2);
        assert_eq!(v.bytes(), f.bytes.as_slice());
        assert_eq!(v.topology().layer(3).count(), 2);
        assert_eq!(v.next_epoch_start(), 1060);
        assert_eq!(v.schedule().start(1), 1000);
    }

    #[test]
    fn one_changed_byte_is_rejected() {
        let f = fixture();
        let mut s = signed_by(&f.bytes, &[&f.keys[0], &f.keys[1], &f.keys[2]]);
        let mut b = f.bytes.clone();
        let i = b.iter().position(|&c| c == b'5').unwrap(); // "50.0" delay
        b[i] = b'6';
        s.document = b64_encode(&b);
        let e = f.trust.verify(&s, 1010).unwrap_err();
        assert!(
            matches!(e, VerifyError::BadSignature { valid: 0, .. }),
            "{e}"
        );
        assert_eq!(e.reason(), "bad_signature");
    }

    #[test]
    fn below_threshold_and_unsigned() {
        let f = fixture();
        let s = signed_by(&f.bytes, &[&f.keys[1]]);
        assert_eq!(
            f.trust.verify(&s, 1010).unwrap_err(),
            VerifyError::BelowThreshold {
                valid: 1,
                threshold: 2
            }
        );
        // The same authority twice counts once.
        let mut s2 = s.clone();
        s2.signatures.push(s.signatures[0].clone());
        assert!(matches!(
            f.trust.verify(&s2, 1010),
            Err(VerifyError::BelowThreshold { valid: 1, .. })
        ));
        let u = SignedTopology::unsigned(&f.bytes);
        assert_eq!(f.trust.verify(&u, 1010).unwrap_err(), VerifyError::Unsigned);
    }

    #[test]
    fn unknown_authorities_are_ignored() {
        let f = fixture();
        let stranger = IdentityKeypair::generate();
        let other = IdentityKeypair::generate();
        let s = signed_by(&f.bytes, &[&stranger, &other, &f.keys[0]]);
        assert!(matches!(
            f.trust.verify(&s, 1010),
            Err(VerifyError::BelowThreshold { valid: 1, .. })
        ));
        // A stranger's bad signature does not spoil a valid set.
        let mut s = signed_by(&f.bytes, &[&f.keys[0], &f.keys[1]]);
        s.signatures
            .push(AuthoritySignature::from_raw(stranger.node_id(), [7; 64]));
        assert!(f.trust.verify(&s, 1010).is_ok());
        // A pinned authority's bad signature is named when below k.
        let mut s = signed_by(&f.bytes, &[&f.keys[0]]);
        s.signatures
            .push(AuthoritySignature::from_raw(f.keys[2].node_id(), [7; 64]));
        match f.trust.verify(&s, 1010) {
            Err(VerifyError::BadSignature { authority, .. }) => {
                assert_eq!(authority, f.keys[2].node_id())
            }
            other => panic!("{other:?}"),
        }
        // ...but tolerated when k others are valid (k-of-n).
        let mut s = signed_by(&f.bytes, &[&f.keys[0], &f.keys[1]]);
        s.signatures
            .push(AuthoritySignature::from_raw(f.keys[2].node_id(), [7; 64]));
        assert!(f.trust.verify(&s, 1010).is_ok());
    }

    #[test]
    fn validity_window() {
        let f = fixture();
        let t = f.trust.clone().with_clock_skew(5);
        let s = signed_by(&f.bytes, &[&f.keys[0], &f.keys[1]]);
        assert!(t.verify(&s, 996).is_ok(), "within skew before valid_from");
        assert!(matches!(
            t.verify(&s, 990),
            Err(VerifyError::FutureDated {
                valid_from: 1000,
                ..
            })
        ));
        assert!(t.verify_upcoming(&s, 990, 60).is_ok());
        assert!(t.verify(&s, 1124).is_ok(), "within skew after valid_until");
        assert!(matches!(
            t.verify(&s, 1125),
            Err(VerifyError::Expired {
                valid_until: 1120,
                ..
            })
        ));
    }

    #[test]
    fn oversized_malformed_and_invalid() {
        let f = fixture();
        let s = signed_by(&f.bytes, &[&f.keys[0], &f.keys[1]]);
        let small = f.trust.clone().with_max_document_bytes(100);
        assert!(matches!(
            small.verify(&s, 1010),
            Err(VerifyError::Oversized { max: 100, .. })
        ));

        let mut m = s.clone();
        m.document.push('=');
        assert_eq!(f.trust.verify(&m, 1010).unwrap_err().reason(), "malformed");

        // Correctly signed garbage is still refused (after the signatures).
        let junk = b"{\"version\":1}";
        let j = signed_by(junk, &[&f.keys[0], &f.keys[1]]);
        assert_eq!(f.trust.verify(&j, 1010).unwrap_err().reason(), "malformed");

        let mut d = epoch_doc(1000, 1120);
        d.version = 2;
        let b = d.canonical_bytes().unwrap();
        let v = signed_by(&b, &[&f.keys[0], &f.keys[1]]);
        assert_eq!(
            f.trust.verify(&v, 1010).unwrap_err(),
            VerifyError::UnsupportedVersion(2)
        );

        let mut d = epoch_doc(1000, 1120);
        d.topology.nodes.clear();
        let b = d.canonical_bytes().unwrap();
        let v = signed_by(&b, &[&f.keys[0], &f.keys[1]]);
        assert_eq!(f.trust.verify(&v, 1010).unwrap_err().reason(), "invalid");
    }

    #[test]
    fn trust_anchor_rules() {
        let k = IdentityKeypair::generate().node_id();
        assert!(matches!(
            TrustAnchors::new([k, k], 1),
            Err(TrustError::Duplicate(_))
        ));
        assert!(matches!(
            TrustAnchors::new([k], 2),
            Err(TrustError::BadThreshold { .. })
        ));
        assert!(matches!(
            TrustAnchors::new([k], 0),
            Err(TrustError::BadThreshold { .. })
        ));
        assert!(matches!(
            TrustAnchors::new([], 1),
            Err(TrustError::NoAuthorities)
        ));
    }

    #[test]
    fn schedule_arithmetic() {
        let s = EpochSchedule {
            genesis: 100,
            length_s: 10,
        };
        assert_eq!(s.epoch_at(99), 0);
        assert_eq!(s.epoch_at(100), 1);
        assert_eq!(s.epoch_at(109), 1);
        assert_eq!(s.epoch_at(110), 2);
        assert_eq!(s.start(2), 110);
        assert_eq!(s.end(2), 120);
        assert_eq!(s.start(u64::MAX), u64::MAX);
    }
}
