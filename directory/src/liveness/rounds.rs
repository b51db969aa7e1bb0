//! Liveness rounds: the arithmetic, the deterministic document builder, and
//! the bounded book of the last few rounds (sans-IO).
//!
//! Round `r` covers `[r·I, (r+1)·I)` Unix seconds (`I` = publish interval).
//!
//! ```text
//! r·I ─────────── +I/5 ─────────────── +2I/5 ───────────── (r+1)·I
//! freeze + sign   fetch peers'          collect peers'
//! own observation observations, combine signatures over our
//! (served)        (≥ k votes), sign     bytes; publish at k
//! ```
//!
//! Authorities holding the same observations build byte-identical
//! documents: every field is a function of `r`, the shared config and the
//! observations ([`build_document`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use loopmix_core::keys::NodeId;
use loopmix_core::pki::{
    AuthoritySignature, LIVENESS_VERSION, LivenessDocument, Observation, SignedLiveness,
    SignedObservation, combine_observations,
};

/// Rounds kept in memory (own observation, document, signatures). Peers ask
/// only for the current round; a few more cover clock skew.
pub const KEEP_ROUNDS: usize = 4;

/// The round at `unix_ms` for rounds of `interval_s` seconds.
pub fn round_at(unix_ms: u64, interval_s: u64) -> u64 {
    unix_ms / 1000 / interval_s.max(1)
}

/// First millisecond of round `r`.
pub fn round_start_ms(round: u64, interval_s: u64) -> u64 {
    round.saturating_mul(interval_s.max(1)).saturating_mul(1000)
}

/// The document for `round` from `observations` (own included): nodes with
/// at least `k` votes. `epoch` is the topology epoch at the round start.
pub fn build_document<'a>(
    round: u64,
    interval_s: u64,
    valid_for_s: u64,
    epoch: u64,
    observations: impl IntoIterator<Item = &'a Observation>,
    k: usize,
) -> LivenessDocument {
    let issued_at = round.saturating_mul(interval_s);
    LivenessDocument {
        version: LIVENESS_VERSION,
        round,
        issued_at,
        valid_until: issued_at.saturating_add(valid_for_s),
        epoch,
        interval_s,
        down: combine_observations(observations, k),
    }
}

/// This authority's document for one round and the signatures collected
/// over its bytes.
#[derive(Debug, Clone)]
pub struct Built {
    pub document: LivenessDocument,
    pub bytes: Arc<Vec<u8>>,
    pub sigs: BTreeMap<NodeId, AuthoritySignature>,
}

impl Built {
    pub fn signed(&self) -> SignedLiveness {
        let mut s = SignedLiveness::unsigned(&self.bytes);
        for sig in self.sigs.values() {
            s.add_signature(sig.clone());
        }
        s
    }
}

/// One round's state at this authority.
#[derive(Debug, Clone)]
pub struct Round {
    /// Our own observation, frozen at the round start.
    pub observation: SignedObservation,
    pub own: Observation,
    /// Built once (one attempt per round: rebuilding with a late peer's
    /// observation would sign two different documents for one round).
    pub built: Option<Built>,
    pub build_attempted: bool,
    pub mirror_attempted: bool,
    pub published: bool,
}

/// The newest document this authority serves at `/v1/liveness/current`.
#[derive(Debug, Clone)]
pub struct Published {
    pub round: u64,
    pub valid_until: u64,
    pub down: BTreeSet<NodeId>,
    pub signed: SignedLiveness,
}

/// The last [`KEEP_ROUNDS`] rounds and the newest published document.
#[derive(Debug, Default)]
pub struct RoundBook {
    rounds: BTreeMap<u64, Round>,
    published: Option<Published>,
}

impl RoundBook {
    pub fn get(&self, round: u64) -> Option<&Round> {
        self.rounds.get(&round)
    }

    pub fn get_mut(&mut self, round: u64) -> Option<&mut Round> {
        self.rounds.get_mut(&round)
    }

    /// Inserts a frozen round and forgets the oldest beyond [`KEEP_ROUNDS`].
    /// Returns the rounds dropped that were never published.
    pub fn insert(&mut self, round: u64, r: Round) -> Vec<u64> {
        self.rounds.insert(round, r);
        let mut unpublished = Vec::new();
        while self.rounds.len() > KEEP_ROUNDS {
            if let Some((old, r)) = self.rounds.pop_first()
                && !r.published
            {
                unpublished.push(old);
            }
        }
        unpublished
    }

    pub fn len(&self) -> usize {
        self.rounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }

    /// Replaces the served document if `p` is newer. Returns whether it did.
    pub fn publish(&mut self, p: Published) -> bool {
        if self.published.as_ref().is_some_and(|c| c.round >= p.round) {
            return false;
        }
        self.published = Some(p);
        true
    }

    /// The newest published document still valid at `now_s`.
    pub fn current(&self, now_s: u64) -> Option<&Published> {
        self.published.as_ref().filter(|p| now_s < p.valid_until)
    }

    pub fn published(&self) -> Option<&Published> {
        self.published.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use loopmix_core::keys::IdentityKeypair;

    fn obs(a: &IdentityKeypair, round: u64, down: Vec<NodeId>) -> Observation {
        Observation {
            version: LIVENESS_VERSION,
            round,
            authority: a.node_id(),
            down,
        }
    }

    #[test]
    fn arithmetic() {
        assert_eq!(round_at(9_999, 5), 1);
        assert_eq!(round_at(10_000, 5), 2);
        assert_eq!(round_start_ms(2, 5), 10_000);
        assert_eq!(
            round_at(10_000, 0),
            10,
            "zero interval cannot divide by zero"
        );
    }

    #[test]
    fn same_observations_give_identical_bytes_and_k_votes_are_needed() {
        let auths: Vec<IdentityKeypair> = (0..3).map(|_| IdentityKeypair::generate()).collect();
        let mut nodes: Vec<NodeId> = (0..5)
            .map(|_| IdentityKeypair::generate().node_id())
            .collect();
        nodes.sort();
        // Authority 0 believes everything is down; 1 and 2 agree on nodes[3].
        let o = [
            obs(&auths[0], 9, nodes.clone()),
            obs(&auths[1], 9, vec![nodes[3]]),
            obs(&auths[2], 9, vec![nodes[3]]),
        ];
        let a = build_document(9, 5, 30, 2, [&o[0], &o[1], &o[2]], 2);
        let b = build_document(9, 5, 30, 2, [&o[2], &o[0], &o[1]], 2);
        assert_eq!(a.canonical_bytes().unwrap(), b.canonical_bytes().unwrap());
        assert_eq!(a.down, vec![nodes[3]], "one vote is not enough at k=2");
        assert_eq!((a.issued_at, a.valid_until, a.interval_s), (45, 75, 5));
        // Only the all-down authority and one other reachable: still one vote
        // for everything except nodes[3].
        let c = build_document(9, 5, 30, 2, [&o[0], &o[1]], 2);
        assert_eq!(c.down, vec![nodes[3]]);
    }

    #[test]
    fn the_book_is_bounded_and_never_serves_an_older_round() {
        let a = IdentityKeypair::generate();
        let mut book = RoundBook::default();
        let mut dropped = Vec::new();
        for r in 0..10 {
            let own = obs(&a, r, vec![]);
            let observation = own.sign(&a).unwrap();
            dropped.extend(book.insert(
                r,
                Round {
                    observation,
                    own,
                    built: None,
                    build_attempted: false,
                    mirror_attempted: false,
                    published: r == 3,
                },
            ));
        }
        assert_eq!(book.len(), KEEP_ROUNDS);
        assert_eq!(dropped, vec![0, 1, 2, 4, 5]);
        assert!(book.get(5).is_none() && book.get(9).is_some());
        let p = |round, valid_until| Published {
            round,
            valid_until,
            down: BTreeSet::new(),
            signed: SignedLiveness::unsigned(b"{}"),
        };
        assert!(book.publish(p(7, 100)));
        assert!(!book.publish(p(6, 200)), "older round");
        assert!(!book.publish(p(7, 200)), "same round");
        assert_eq!(book.current(99).unwrap().round, 7);
        assert!(book.current(100).is_none(), "expired");
    }
}
