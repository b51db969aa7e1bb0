//! What refusing a bad packet costs, as a ratio of processing a good one.
//!
//! A mix under attack spends CPU on what it refuses: replays of packets it
//! already forwarded, and garbage (random bytes, or a packet tagged on the
//! way). The node's processor (`core::mixing::processor`) checks the header
//! MAC after one X25519 multiplication and the replay tag right after it,
//! before the payload is touched and before the second (blinding)
//! multiplication, so both should cost about half of a valid packet or
//! less. Measured here with that very processor, on one thread, in rounds
//! that interleave the three kinds (so drift on a shared machine hits them
//! alike); the median round is reported.

use std::time::{Duration, Instant};

use loopmix_core::keys::SphinxKeypair;
use loopmix_core::mixing::processor::{KeyRing, KeySlot, Rejection, SphinxProcessor};
use loopmix_core::mixing::replay::ReplayCache;
use loopmix_core::topology::Role;
use rand::RngExt;

use super::{build_many, fake_entry};

/// Microseconds per packet of each kind, medians over the rounds.
pub struct RejectionCost {
    pub valid_us: f64,
    pub replay_us: f64,
    pub garbage_us: f64,
    pub tagged_us: f64,
}

impl RejectionCost {
    pub fn replay_ratio(&self) -> f64 {
        self.replay_us / self.valid_us
    }

    pub fn garbage_ratio(&self) -> f64 {
        self.garbage_us / self.valid_us
    }

    pub fn tagged_ratio(&self) -> f64 {
        self.tagged_us / self.valid_us
    }
}

fn processor(key: &SphinxKeypair) -> anyhow::Result<SphinxProcessor> {
    let ring = KeyRing::default();
    ring.insert(KeySlot {
        epoch: 1,
        key: SphinxKeypair::from_secret(key.secret().clone()),
        replay: ReplayCache::new(1_000_000, 1e-6)?,
    });
    Ok(SphinxProcessor::new(ring, Duration::from_secs(600)))
}

/// Seconds per packet to run `packets` through `p`, checking each outcome
/// with `expect` (a wrong outcome would measure the wrong path).
fn per_packet(
    p: &SphinxProcessor,
    packets: &[Vec<u8>],
    expect: impl Fn(&Result<(), Rejection>) -> bool,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    for bytes in packets {
        let outcome = p.process(1, bytes).map(std::hint::black_box).map(|_| ());
        if !expect(&outcome) {
            anyhow::bail!("unexpected outcome {outcome:?}");
        }
    }
    Ok(start.elapsed().as_secs_f64() / packets.len().max(1) as f64)
}

/// The middle value (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `rounds` rounds of `n` packets of each kind.
pub fn measure(rounds: usize, n: usize) -> anyhow::Result<RejectionCost> {
    let key = SphinxKeypair::generate();
    let mix = fake_entry(&key, 1, Role::Mix);
    let next = fake_entry(&SphinxKeypair::generate(), 2, Role::Provider);
    let valid = build_many(n, &mix, &next, Duration::ZERO);
    let len = valid.first().map_or(0, Vec::len);
    let mut rng = rand::rng();
    let garbage: Vec<Vec<u8>> = (0..n)
        .map(|_| (0..len).map(|_| rng.random()).collect())
        .collect();
    // Tagged on the way: one header bit flipped after the group element.
    let tagged: Vec<Vec<u8>> = valid
        .iter()
        .map(|p| {
            let mut t = p.clone();
            if let Some(b) = t.get_mut(40) {
                *b ^= 1;
            }
            t
        })
        .collect();
    let (mut v, mut r, mut g, mut t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        // A fresh replay filter per round, so the valid pass is valid.
        let p = processor(&key)?;
        v.push(per_packet(&p, &valid, Result::is_ok)?);
        r.push(per_packet(&p, &valid, |o| *o == Err(Rejection::Replay))?);
        g.push(per_packet(&p, &garbage, |o| {
            *o == Err(Rejection::Malformed)
        })?);
        t.push(per_packet(&p, &tagged, |o| {
            *o == Err(Rejection::Malformed)
        })?);
    }
    let us = |x: Vec<f64>| median(x) * 1e6;
    Ok(RejectionCost {
        valid_us: us(v),
        replay_us: us(r),
        garbage_us: us(g),
        tagged_us: us(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Behaviour only (the timing is the bench's business): every kind
    /// takes its own path, and the numbers are positive.
    #[test]
    fn each_kind_takes_its_path() {
        let c = measure(1, 8).unwrap();
        for x in [c.valid_us, c.replay_us, c.garbage_us, c.tagged_us] {
            assert!(x > 0.0 && x.is_finite(), "{x}");
        }
    }
}
