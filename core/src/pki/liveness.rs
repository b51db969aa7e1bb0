//! Network-wide signed liveness: the small "down list" the authorities
//! publish every few seconds, and the per-authority observations it is
//! built from.
//!
//! Every client and node applies the same k-signed list, so route choice
//! stays identical across clients (a client acting on its own evidence
//! would be fingerprintable by its routes). The list is signed exactly like
//! the topology — exact JSON bytes, base64url on the wire, signatures
//! checked before parsing, k-of-n over pinned keys
//! ([`TrustAnchors::check_signatures_with`]) — but under its own
//! domain-separation context ([`LIVENESS_CONTEXT`]), so a topology signature
//! can never be replayed as a liveness signature or the other way round.
//!
//! Rounds: `round = floor(unix_s / interval_s)`. At the start of a round
//! each authority freezes and signs its own [`Observation`] (context
//! [`OBSERVATION_CONTEXT`]); the published [`LivenessDocument`] lists the
//! nodes at least k observations mark down. docs/PROTOCOL.md ("Liveness")
//! is the normative description.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::keys::{IdentityKeypair, NodeId};

use super::document::{AuthoritySignature, TrustAnchors, VerifyError, decode_limited};
use super::{b64_decode, b64_encode};

/// Prefix of the message authorities sign for a [`LivenessDocument`].
pub const LIVENESS_CONTEXT: &[u8] = b"loopmix-liveness-v1\0";
/// Prefix of the message one authority signs for its own [`Observation`].
pub const OBSERVATION_CONTEXT: &[u8] = b"loopmix-liveness-observation-v1\0";
/// Version of [`LivenessDocument`] and [`Observation`]; verifiers refuse others.
pub const LIVENESS_VERSION: u32 = 1;
/// Largest liveness document or observation (decoded JSON bytes) anyone
/// accepts: about 5,000 node ids, far more than a down list should hold.
pub const MAX_LIVENESS_BYTES: usize = 256 * 1024;

/// The signed body: which nodes are down in one round.
///
/// Canonical form = `serde_json::to_vec` of this struct (fields in this
/// order, `down` sorted and unique). Verifiers check the signatures over
/// the bytes they received and never re-serialise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessDocument {
    /// Format version, [`LIVENESS_VERSION`].
    pub version: u32,
    /// `floor(issued_at / interval_s)`; newer documents have larger rounds.
    pub round: u64,
    /// Unix seconds: the start of the round.
    pub issued_at: u64,
    /// Unix seconds after which the document must not be used.
    pub valid_until: u64,
    /// The topology epoch in force at `issued_at` (informational: node ids
    /// outlive epochs, so a list stays meaningful across a boundary).
    pub epoch: u64,
    /// Seconds between rounds: how often a fresh document appears.
    pub interval_s: u64,
    /// Nodes (mixes and providers) to leave out of new routes; sorted, unique.
    pub down: Vec<NodeId>,
}

impl LivenessDocument {
    /// The exact bytes authorities sign.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Wire form of a liveness document (`GET /v1/liveness/current`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedLiveness {
    /// base64url (no padding) of the [`LivenessDocument`] bytes.
    pub document: String,
    pub signatures: Vec<AuthoritySignature>,
}

impl SignedLiveness {
    pub fn unsigned(document_bytes: &[u8]) -> Self {
        Self {
            document: b64_encode(document_bytes),
            signatures: Vec::new(),
        }
    }

    pub fn document_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        b64_decode(&self.document)
    }

    /// Signs `bytes` as a liveness document (context [`LIVENESS_CONTEXT`]).
    pub fn sign(bytes: &[u8], key: &IdentityKeypair) -> AuthoritySignature {
        AuthoritySignature::sign_with(LIVENESS_CONTEXT, bytes, key)
    }

    /// Adds (or replaces) one authority's signature; keeps them sorted by
    /// authority so equal sets serialise identically.
    pub fn add_signature(&mut self, sig: AuthoritySignature) {
        self.signatures.retain(|s| s.authority != sig.authority);
        self.signatures.push(sig);
        self.signatures.sort_by_key(|s| s.authority);
    }
}

/// One authority's own view for one round: the nodes its probes found down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// Format version, [`LIVENESS_VERSION`].
    pub version: u32,
    pub round: u64,
    /// The observing authority (it signs the observation).
    pub authority: NodeId,
    /// Sorted, unique.
    pub down: Vec<NodeId>,
}

impl Observation {
    /// Serialises and signs with `key` (context [`OBSERVATION_CONTEXT`]).
    pub fn sign(&self, key: &IdentityKeypair) -> Result<SignedObservation, serde_json::Error> {
        let bytes = serde_json::to_vec(self)?;
        Ok(SignedObservation {
            document: b64_encode(&bytes),
            signatures: vec![AuthoritySignature::sign_with(
                OBSERVATION_CONTEXT,
                &bytes,
                key,
            )],
        })
    }
}

/// Wire form of an observation (`GET /v1/liveness/observation/{round}`):
/// the same shape as [`SignedLiveness`], signed by the observing authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedObservation {
    /// base64url (no padding) of the [`Observation`] bytes.
    pub document: String,
    pub signatures: Vec<AuthoritySignature>,
}

impl SignedObservation {
    /// Accepts the observation of `authority` for `round`: its signature
    /// over the exact bytes first, then the parse, version, the claimed
    /// authority and round, and the sorted-unique rule.
    pub fn verify(&self, authority: &NodeId, round: u64) -> Result<Observation, VerifyError> {
        let bytes = decode_limited(&self.document, MAX_LIVENESS_BYTES)?;
        let signed_by_it = self
            .signatures
            .iter()
            .any(|s| s.authority == *authority && s.verify_with(OBSERVATION_CONTEXT, &bytes));
        if !signed_by_it {
            return Err(if self.signatures.is_empty() {
                VerifyError::Unsigned
            } else {
                VerifyError::BadSignature {
                    authority: *authority,
                    valid: 0,
                    threshold: 1,
                }
            });
        }
        let obs: Observation =
            serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if obs.version != LIVENESS_VERSION {
            return Err(VerifyError::UnsupportedVersion(obs.version));
        }
        if obs.authority != *authority {
            return Err(VerifyError::Invalid(format!(
                "observation names authority {}, signed by {authority}",
                obs.authority
            )));
        }
        if obs.round != round {
            return Err(VerifyError::Invalid(format!(
                "asked for round {round}, got round {}",
                obs.round
            )));
        }
        check_sorted_unique(&obs.down)?;
        Ok(obs)
    }
}

fn check_sorted_unique(down: &[NodeId]) -> Result<(), VerifyError> {
    if down.windows(2).all(|w| w[0] < w[1]) {
        Ok(())
    } else {
        Err(VerifyError::Invalid(
            "down list is not sorted and unique".into(),
        ))
    }
}

impl TrustAnchors {
    /// Accepts a liveness document valid at `now` (Unix seconds, ± the
    /// skew allowance) carrying at least k valid signatures from distinct
    /// pinned authorities under [`LIVENESS_CONTEXT`]. Order: size, then
    /// signatures (nothing unauthenticated is parsed), then parse, version,
    /// window, freshness, and the sorted-unique down list.
    pub fn verify_liveness(
        &self,
        signed: &SignedLiveness,
        now: u64,
    ) -> Result<VerifiedLiveness, VerifyError> {
        let bytes = decode_limited(&signed.document, MAX_LIVENESS_BYTES)?;
        let signers = self.check_signatures_with(LIVENESS_CONTEXT, &bytes, &signed.signatures)?;
        let doc: LivenessDocument =
            serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if doc.version != LIVENESS_VERSION {
            return Err(VerifyError::UnsupportedVersion(doc.version));
        }
        if doc.issued_at > doc.valid_until || doc.interval_s == 0 {
            return Err(VerifyError::Invalid(format!(
                "issued_at {} after valid_until {}, or zero interval",
                doc.issued_at, doc.valid_until
            )));
        }
        let skew = self.clock_skew_s();
        if doc.valid_until.saturating_add(skew) <= now {
            return Err(VerifyError::Expired {
                valid_until: doc.valid_until,
                now,
            });
        }
        if doc.issued_at > now.saturating_add(skew) {
            return Err(VerifyError::FutureDated {
                valid_from: doc.issued_at,
                now,
            });
        }
        check_sorted_unique(&doc.down)?;
        Ok(VerifiedLiveness {
            down: doc.down.iter().copied().collect(),
            doc,
            signers,
            signed: signed.clone(),
            bytes: bytes.into(),
        })
    }
}

/// A liveness document that passed [`TrustAnchors::verify_liveness`].
#[derive(Clone, Debug)]
pub struct VerifiedLiveness {
    doc: LivenessDocument,
    down: BTreeSet<NodeId>,
    signers: Vec<NodeId>,
    signed: SignedLiveness,
    bytes: Arc<[u8]>,
}

impl VerifiedLiveness {
    pub fn round(&self) -> u64 {
        self.doc.round
    }
    pub fn issued_at(&self) -> u64 {
        self.doc.issued_at
    }
    pub fn valid_until(&self) -> u64 {
        self.doc.valid_until
    }
    /// The topology epoch in force when the document was built.
    pub fn epoch(&self) -> u64 {
        self.doc.epoch
    }
    /// Seconds between rounds.
    pub fn interval_s(&self) -> u64 {
        self.doc.interval_s
    }
    /// The nodes to leave out of new routes.
    pub fn down(&self) -> &BTreeSet<NodeId> {
        &self.down
    }
    /// Whether `id` is listed down.
    pub fn is_down(&self, id: &NodeId) -> bool {
        self.down.contains(id)
    }
    /// Whether the document is still usable at `now` (Unix seconds) with
    /// `skew_s` of clock-skew allowance.
    pub fn is_valid_at(&self, now: u64, skew_s: u64) -> bool {
        now < self.doc.valid_until.saturating_add(skew_s)
    }
    /// Pinned authorities whose signatures verified.
    pub fn signers(&self) -> &[NodeId] {
        &self.signers
    }
    /// The wire form as received.
    pub fn signed(&self) -> &SignedLiveness {
        &self.signed
    }
    /// The exact signed document bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn document(&self) -> &LivenessDocument {
        &self.doc
    }
}

/// The deterministic combine rule: the nodes at least `k` *distinct*
/// authorities' observations mark down, sorted. Authorities holding the
/// same observations therefore build byte-identical documents; a single
/// authority (honest but cut off, or malicious) cannot put a node on the
/// list when k ≥ 2.
pub fn combine_observations<'a>(
    observations: impl IntoIterator<Item = &'a Observation>,
    k: usize,
) -> Vec<NodeId> {
    use std::collections::BTreeMap;
    let mut seen = BTreeSet::new();
    let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
    for o in observations {
        // One vote per authority, whatever it sent.
        if !seen.insert(o.authority) {
            continue;
        }
        let unique: BTreeSet<&NodeId> = o.down.iter().collect();
        for id in unique {
            *votes.entry(*id).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .filter(|&(_, n)| n >= k.max(1))
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::document::{EpochDocument, SignedTopology};

    fn ids(n: usize) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = (0..n)
            .map(|_| IdentityKeypair::generate().node_id())
            .collect();
        v.sort();
        v
    }

    fn doc(round: u64, down: Vec<NodeId>) -> LivenessDocument {
        LivenessDocument {
            version: LIVENESS_VERSION,
            round,
            issued_at: round * 5,
            valid_until: round * 5 + 30,
            epoch: 3,
            interval_s: 5,
            down,
        }
    }

    fn signed_by(bytes: &[u8], keys: &[&IdentityKeypair]) -> SignedLiveness {
        let mut s = SignedLiveness::unsigned(bytes);
        for k in keys {
            s.add_signature(SignedLiveness::sign(bytes, k));
        }
        s
    }

    struct Fixture {
        keys: Vec<IdentityKeypair>,
        trust: TrustAnchors,
    }

    fn fixture() -> Fixture {
        let keys: Vec<_> = (0..3).map(|_| IdentityKeypair::generate()).collect();
        let trust = TrustAnchors::new(keys.iter().map(|k| k.node_id()), 2)
            .unwrap()
            .with_clock_skew(5);
        Fixture { keys, trust }
    }

    #[test]
    fn k_of_n_roundtrip() {
        let f = fixture();
        let down = ids(3);
        let bytes = doc(200, down.clone()).canonical_bytes().unwrap();
        let s = signed_by(&bytes, &[&f.keys[0], &f.keys[2]]);
        let json = serde_json::to_vec(&s).unwrap();
        let back: SignedLiveness = serde_json::from_slice(&json).unwrap();
        let v = f.trust.verify_liveness(&back, 1001).unwrap();
        assert_eq!(v.round(), 200);
        assert_eq!(v.issued_at(), 1000);
        assert_eq!(v.valid_until(), 1030);
        assert_eq!(v.epoch(), 3);
        assert_eq!(v.signers().len(), 2);
        assert_eq!(v.down().iter().copied().collect::<Vec<_>>(), down);
        assert!(v.is_down(&down[1]));
        assert_eq!(v.bytes(), bytes.as_slice());
        assert_eq!(v.signed(), &back);
        assert!(v.is_valid_at(1034, 5) && !v.is_valid_at(1035, 5));
    }

    #[test]
    fn one_changed_byte_is_rejected() {
        let f = fixture();
        let bytes = doc(200, ids(2)).canonical_bytes().unwrap();
        let mut s = signed_by(&bytes, &[&f.keys[0], &f.keys[1], &f.keys[2]]);
        let mut b = bytes.clone();
        let i = b.iter().position(|&c| c == b'3').unwrap(); // "epoch":3
        b[i] = b'4';
        s.document = b64_encode(&b);
        let e = f.trust.verify_liveness(&s, 1001).unwrap_err();
        assert_eq!(e.reason(), "bad_signature", "{e}");
    }

    #[test]
    fn below_threshold_and_unsigned() {
        let f = fixture();
        let bytes = doc(200, vec![]).canonical_bytes().unwrap();
        let s = signed_by(&bytes, &[&f.keys[1]]);
        assert_eq!(
            f.trust.verify_liveness(&s, 1001).unwrap_err(),
            VerifyError::BelowThreshold {
                valid: 1,
                threshold: 2
            }
        );
        let u = SignedLiveness::unsigned(&bytes);
        assert_eq!(
            f.trust.verify_liveness(&u, 1001).unwrap_err(),
            VerifyError::Unsigned
        );
    }

    #[test]
    fn topology_signature_is_not_a_liveness_signature() {
        let f = fixture();
        let bytes = doc(200, ids(1)).canonical_bytes().unwrap();
        // Valid signatures over the very same bytes, but as a topology
        // document: domain separation must refuse them.
        let mut s = SignedLiveness::unsigned(&bytes);
        for k in &f.keys {
            s.add_signature(AuthoritySignature::sign(&bytes, k));
        }
        assert_eq!(
            f.trust.verify_liveness(&s, 1001).unwrap_err().reason(),
            "bad_signature"
        );
        // ...and the other way round.
        let ed = crate::pki::document::tests::epoch_doc(1000, 1120);
        let eb = EpochDocument::canonical_bytes(&ed).unwrap();
        let mut t = SignedTopology::unsigned(&eb);
        for k in &f.keys {
            t.add_signature(SignedLiveness::sign(&eb, k));
        }
        assert_eq!(
            f.trust.verify(&t, 1010).unwrap_err().reason(),
            "bad_signature"
        );
        // An observation signature is not a liveness signature either.
        let obs = Observation {
            version: LIVENESS_VERSION,
            round: 200,
            authority: f.keys[0].node_id(),
            down: vec![],
        };
        let so = obs.sign(&f.keys[0]).unwrap();
        let as_doc = SignedLiveness {
            document: so.document.clone(),
            signatures: so.signatures.clone(),
        };
        assert!(f.trust.verify_liveness(&as_doc, 1001).is_err());
    }

    #[test]
    fn expired_and_future_dated() {
        let f = fixture();
        let bytes = doc(200, vec![]).canonical_bytes().unwrap();
        let s = signed_by(&bytes, &[&f.keys[0], &f.keys[1]]);
        assert!(f.trust.verify_liveness(&s, 1034).is_ok(), "within skew");
        assert!(matches!(
            f.trust.verify_liveness(&s, 1035),
            Err(VerifyError::Expired {
                valid_until: 1030,
                ..
            })
        ));
        assert!(f.trust.verify_liveness(&s, 995).is_ok(), "within skew");
        assert!(matches!(
            f.trust.verify_liveness(&s, 994),
            Err(VerifyError::FutureDated {
                valid_from: 1000,
                ..
            })
        ));
        // issued_at after valid_until.
        let mut d = doc(200, vec![]);
        d.valid_until = 999;
        let b = d.canonical_bytes().unwrap();
        let s = signed_by(&b, &[&f.keys[0], &f.keys[1]]);
        assert_eq!(
            f.trust.verify_liveness(&s, 999).unwrap_err().reason(),
            "invalid"
        );
    }

    #[test]
    fn unsorted_or_duplicate_down_list_is_rejected() {
        let f = fixture();
        let mut v = ids(2);
        v.reverse();
        for down in [v.clone(), vec![v[0], v[0]]] {
            let b = doc(200, down).canonical_bytes().unwrap();
            let s = signed_by(&b, &[&f.keys[0], &f.keys[1]]);
            assert_eq!(
                f.trust.verify_liveness(&s, 1001).unwrap_err().reason(),
                "invalid"
            );
        }
    }

    #[test]
    fn oversized_malformed_and_wrong_version() {
        let f = fixture();
        let huge = "A".repeat(MAX_LIVENESS_BYTES / 3 * 4 + 8);
        let s = SignedLiveness {
            document: huge,
            signatures: vec![],
        };
        assert_eq!(
            f.trust.verify_liveness(&s, 1001).unwrap_err().reason(),
            "oversized"
        );
        let junk = b"{\"version\":1}";
        let s = signed_by(junk, &[&f.keys[0], &f.keys[1]]);
        assert_eq!(
            f.trust.verify_liveness(&s, 1001).unwrap_err().reason(),
            "malformed"
        );
        let mut d = doc(200, vec![]);
        d.version = 2;
        let s = signed_by(&d.canonical_bytes().unwrap(), &[&f.keys[0], &f.keys[1]]);
        assert_eq!(
            f.trust.verify_liveness(&s, 1001).unwrap_err(),
            VerifyError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn observations_verify_against_their_authority_and_round() {
        let f = fixture();
        let obs = Observation {
            version: LIVENESS_VERSION,
            round: 7,
            authority: f.keys[0].node_id(),
            down: ids(2),
        };
        let s = obs.sign(&f.keys[0]).unwrap();
        assert_eq!(s.verify(&f.keys[0].node_id(), 7).unwrap(), obs);
        assert!(s.verify(&f.keys[0].node_id(), 8).is_err(), "wrong round");
        assert!(s.verify(&f.keys[1].node_id(), 7).is_err(), "wrong signer");
        // Signed by another key while naming keys[0].
        let forged = obs.sign(&f.keys[1]).unwrap();
        assert!(forged.verify(&f.keys[0].node_id(), 7).is_err());
        assert!(forged.verify(&f.keys[1].node_id(), 7).is_err(), "names 0");
        // A liveness-context signature over the same bytes is refused.
        let bytes = b64_decode(&s.document).unwrap();
        let cross = SignedObservation {
            document: s.document.clone(),
            signatures: vec![SignedLiveness::sign(&bytes, &f.keys[0])],
        };
        assert!(cross.verify(&f.keys[0].node_id(), 7).is_err());
    }

    #[test]
    fn combine_needs_k_distinct_authorities() {
        let n = ids(4);
        let a: Vec<NodeId> = ids(3);
        let obs = |i: usize, down: Vec<NodeId>| Observation {
            version: LIVENESS_VERSION,
            round: 1,
            authority: a[i],
            down,
        };
        // Authority 0 says everything is down; 1 agrees on n[0] only.
        let all = obs(0, n.clone());
        let one = obs(1, vec![n[0]]);
        let none = obs(2, vec![]);
        assert_eq!(combine_observations([&all, &one, &none], 2), vec![n[0]]);
        assert_eq!(combine_observations([&all], 2), Vec::<NodeId>::new());
        assert_eq!(combine_observations([&all, &one], 1), n);
        // The same authority twice counts once.
        assert_eq!(combine_observations([&all, &all], 2), Vec::<NodeId>::new());
        // Duplicates inside one observation count once.
        let dup = obs(1, vec![n[2], n[2]]);
        assert_eq!(combine_observations([&dup, &none], 2), Vec::<NodeId>::new());
        // Input order does not matter.
        assert_eq!(
            combine_observations([&none, &one, &all], 2),
            combine_observations([&all, &one, &none], 2)
        );
    }
}
