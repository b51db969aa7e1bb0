//! Sphinx unwrapping with replay detection, per key epoch.
//!
//! The order matters for cost and for safety: the header MAC is checked
//! after one X25519 multiplication (about half of a full unwrap), so garbage
//! and replays are rejected before the payload is touched and before the
//! second (blinding) multiplication.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sphinx_packet::payload::Payload;
use sphinx_packet::{ProcessedPacketData, SphinxPacket};

use super::replay::ReplayCache;
use crate::keys::{NodeId, SphinxKeypair};
use crate::sphinx::{IDENTIFIER_LEN, node_id_of};

/// A Sphinx key and the replay cache that belongs to it.
pub struct KeySlot {
    pub epoch: u64,
    pub key: SphinxKeypair,
    pub replay: ReplayCache,
}

/// The Sphinx keys a node currently accepts, by epoch.
#[derive(Default, Clone)]
pub struct KeyRing {
    slots: Arc<RwLock<BTreeMap<u64, Arc<KeySlot>>>>,
}

impl KeyRing {
    pub fn get(&self, epoch: u64) -> Option<Arc<KeySlot>> {
        match self.slots.read() {
            Ok(s) => s.get(&epoch).cloned(),
            Err(p) => p.into_inner().get(&epoch).cloned(),
        }
    }

    pub fn insert(&self, slot: KeySlot) {
        let mut s = match self.slots.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.insert(slot.epoch, Arc::new(slot));
    }

    /// Makes an existing slot (key and replay cache) answer to another
    /// epoch too: a static key serving several topology epochs must keep one
    /// replay cache, or a packet could be replayed under the new epoch number.
    pub fn alias(&self, epoch: u64, slot: Arc<KeySlot>) {
        let mut s = match self.slots.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.insert(epoch, slot);
    }

    /// Drops every key (and with it, its replay cache) for which `keep` is false.
    pub fn retain(&self, mut keep: impl FnMut(u64) -> bool) {
        let mut s = match self.slots.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.retain(|e, _| keep(*e));
    }

    pub fn epochs(&self) -> Vec<u64> {
        match self.slots.read() {
            Ok(s) => s.keys().copied().collect(),
            Err(p) => p.into_inner().keys().copied().collect(),
        }
    }

    pub fn slots(&self) -> Vec<Arc<KeySlot>> {
        match self.slots.read() {
            Ok(s) => s.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        }
    }
}

/// Result of unwrapping one layer.
pub enum Processed {
    Forward {
        next_hop: NodeId,
        packet: Vec<u8>,
        /// The header delay, clamped to the processor's maximum.
        delay: Duration,
        clamped: bool,
    },
    Final {
        destination: NodeId,
        identifier: [u8; IDENTIFIER_LEN],
        payload: Payload,
    },
}

/// Why a packet was dropped. `label()` is the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The frame names a key epoch this node does not hold (any more).
    UnknownKey,
    /// Not a Sphinx packet, or its MAC does not verify under our key.
    Malformed,
    /// Its replay tag was seen before under the same key.
    Replay,
}

impl Rejection {
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::UnknownKey => "unknown_key",
            Rejection::Malformed => "malformed",
            Rejection::Replay => "replay",
        }
    }
}

pub struct SphinxProcessor {
    keys: KeyRing,
    max_delay: Duration,
}

impl SphinxProcessor {
    pub fn new(keys: KeyRing, max_delay: Duration) -> Self {
        Self { keys, max_delay }
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn process(&self, key_epoch: u64, bytes: &[u8]) -> Result<Processed, Rejection> {
        let slot = self.keys.get(key_epoch).ok_or(Rejection::UnknownKey)?;
        let packet = SphinxPacket::from_bytes(bytes).map_err(|_| Rejection::Malformed)?;
        let secret = packet
            .header
            .compute_expanded_shared_secret(slot.key.secret());
        packet
            .header
            .ensure_header_integrity(&secret)
            .map_err(|_| Rejection::Malformed)?;
        if slot.replay.check_and_insert(secret.replay_tag()) {
            return Err(Rejection::Replay);
        }
        let processed = packet
            .process_with_expanded_secret(&secret)
            .map_err(|_| Rejection::Malformed)?;
        Ok(match processed.data {
            ProcessedPacketData::ForwardHop {
                next_hop_packet,
                next_hop_address,
                delay,
            } => {
                let d = delay.to_duration();
                Processed::Forward {
                    next_hop: node_id_of(&next_hop_address),
                    packet: next_hop_packet.to_bytes(),
                    delay: d.min(self.max_delay),
                    clamped: d > self.max_delay,
                }
            }
            ProcessedPacketData::FinalHop {
                destination,
                identifier,
                payload,
            } => Processed::Final {
                destination: NodeId(destination.as_bytes()),
                identifier,
                payload,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKeypair;
    use crate::sphinx::{build_packet, destination_of, sample_delays};
    use crate::topology::{NodeEntry, Role};

    fn setup() -> (SphinxProcessor, Vec<NodeEntry>, Vec<u8>) {
        let ring = KeyRing::default();
        let mine = SphinxKeypair::generate();
        let my_entry = NodeEntry {
            id: IdentityKeypair::generate().node_id(),
            sphinx_key: mine.public(),
            address: "127.0.0.1:1".parse().unwrap(),
            role: Role::Mix,
            layer: Some(1),
        };
        ring.insert(KeySlot {
            epoch: 5,
            key: mine,
            replay: ReplayCache::new(1000, 1e-6).unwrap(),
        });
        let next = NodeEntry {
            id: IdentityKeypair::generate().node_id(),
            sphinx_key: SphinxKeypair::generate().public(),
            address: "127.0.0.1:2".parse().unwrap(),
            role: Role::Provider,
            layer: None,
        };
        let mut rng = rand::rng();
        let delays = sample_delays(&mut rng, 2, Duration::from_secs(100));
        let dest = destination_of(&next.id, [1; 16]);
        let bytes = build_packet(b"x", &[&my_entry, &next], &dest, &delays, 256).unwrap();
        (
            SphinxProcessor::new(ring, Duration::from_secs(10)),
            vec![my_entry, next],
            bytes,
        )
    }

    #[test]
    fn forward_then_replay_then_garbage() {
        let (p, entries, bytes) = setup();
        match p.process(5, &bytes) {
            Ok(Processed::Forward {
                next_hop,
                packet,
                delay,
                ..
            }) => {
                assert_eq!(next_hop, entries[1].id);
                assert_eq!(packet.len(), bytes.len());
                assert!(delay <= Duration::from_secs(10));
            }
            _ => panic!("expected forward"),
        }
        assert_eq!(p.process(5, &bytes).err(), Some(Rejection::Replay));
        assert_eq!(p.process(6, &bytes).err(), Some(Rejection::UnknownKey));
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert_eq!(p.process(5, &flipped).err(), Some(Rejection::Malformed));
        assert_eq!(p.process(5, &[0u8; 10]).err(), Some(Rejection::Malformed));
        assert_eq!(
            p.process(5, &vec![0u8; 604]).err(),
            Some(Rejection::Malformed)
        );
    }

    #[test]
    fn retiring_a_key_drops_it() {
        let (p, _, bytes) = setup();
        p.keys().retain(|e| e != 5);
        assert_eq!(p.process(5, &bytes).err(), Some(Rejection::UnknownKey));
        assert!(p.keys().epochs().is_empty());
    }
}
