//! Sphinx helpers on top of sphinx-packet 0.8: address mapping, seeded delay
//! sampling and packet construction.
//!
//! A Sphinx `NodeAddressBytes` is exactly the next hop's Ed25519 identity
//! key ([`NodeId`]): the hot path turns it into a `NodeId` with a copy and
//! looks it up in the topology's hash map. Because only identities listed in
//! the topology resolve, a packet can never be steered to an arbitrary IP.

use std::time::Duration;

use rand::Rng;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::packet::builder::SphinxPacketBuilder;
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};

use crate::keys::NodeId;
use crate::poisson::sample_exp_duration;
use crate::topology::NodeEntry;

pub use sphinx_packet::constants::MAX_PATH_LENGTH;
pub use sphinx_packet::header::HEADER_SIZE;
pub use sphinx_packet::payload::PAYLOAD_OVERHEAD_SIZE as PAYLOAD_OVERHEAD;

/// Length of the identifier a final hop receives.
pub const IDENTIFIER_LEN: usize = 16;

pub fn node_address(id: &NodeId) -> NodeAddressBytes {
    NodeAddressBytes::from_bytes(id.0)
}

pub fn node_id_of(addr: &NodeAddressBytes) -> NodeId {
    NodeId(addr.to_bytes())
}

pub fn destination_of(id: &NodeId, identifier: [u8; IDENTIFIER_LEN]) -> Destination {
    Destination::new(DestinationAddressBytes::from_bytes(id.0), identifier)
}

pub fn sphinx_node(entry: &NodeEntry) -> Node {
    Node::new(node_address(&entry.id), entry.sphinx_key.to_x25519())
}

/// Exponential per-hop delays with mean `mean`, from the caller's RNG (so
/// simulations are reproducible; sphinx-packet's own helper uses the global
/// RNG).
pub fn sample_delays<R: Rng + ?Sized>(rng: &mut R, hops: usize, mean: Duration) -> Vec<Delay> {
    (0..hops)
        .map(|_| Delay::new_from_nanos(duration_nanos(sample_exp_duration(rng, mean))))
        .collect()
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sum of the delays that are actually applied: the last hop's delay is not
/// encoded in the header, so it never delays anything.
pub fn applied_delay(delays: &[Delay]) -> Duration {
    let n = delays.len().saturating_sub(1);
    delays[..n].iter().map(|d| d.to_duration()).sum()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build Sphinx packet: {0}")]
pub struct BuildError(String);

/// Builds a forward packet along `route`, ending at `destination`, and returns
/// its wire bytes (`HEADER_SIZE + payload_size`).
pub fn build_packet(
    message: &[u8],
    route: &[&NodeEntry],
    destination: &Destination,
    delays: &[Delay],
    payload_size: usize,
) -> Result<Vec<u8>, BuildError> {
    let nodes: Vec<Node> = route.iter().map(|e| sphinx_node(e)).collect();
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(payload_size)
        .build_packet(message, &nodes, destination, delays)
        .map_err(|e| BuildError(e.to_string()))?;
    Ok(packet.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{IdentityKeypair, SphinxKeypair};
    use crate::topology::Role;
    use rand::SeedableRng;
    use sphinx_packet::{ProcessedPacketData, SphinxPacket};

    #[test]
    fn packet_through_three_hops_recovers_plaintext() {
        let keys: Vec<(IdentityKeypair, SphinxKeypair)> = (0..3)
            .map(|_| (IdentityKeypair::generate(), SphinxKeypair::generate()))
            .collect();
        let entries: Vec<NodeEntry> = keys
            .iter()
            .enumerate()
            .map(|(i, (id, sk))| NodeEntry {
                id: id.node_id(),
                sphinx_key: sk.public(),
                address: format!("127.0.0.1:{}", 2000 + i).parse().unwrap(),
                role: Role::Mix,
                layer: Some(i as u8 + 1),
            })
            .collect();
        let route: Vec<&NodeEntry> = entries.iter().collect();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let delays = sample_delays(&mut rng, 3, Duration::from_millis(10));
        let dest = destination_of(&entries[2].id, [9; 16]);
        let bytes = build_packet(b"hello", &route, &dest, &delays, 1024).unwrap();
        assert_eq!(bytes.len(), HEADER_SIZE + 1024);

        let mut packet = SphinxPacket::from_bytes(&bytes).unwrap();
        for (i, (_, sk)) in keys.iter().enumerate() {
            let processed = packet.process(sk.secret()).unwrap();
            match processed.data {
                ProcessedPacketData::ForwardHop {
                    next_hop_packet,
                    next_hop_address,
                    delay,
                } => {
                    assert_eq!(node_id_of(&next_hop_address), entries[i + 1].id);
                    assert_eq!(delay, delays[i]);
                    packet = next_hop_packet;
                }
                ProcessedPacketData::FinalHop {
                    identifier,
                    payload,
                    ..
                } => {
                    assert_eq!(i, 2);
                    assert_eq!(identifier, [9; 16]);
                    assert_eq!(payload.recover_plaintext().unwrap(), b"hello");
                    return;
                }
            }
        }
        panic!("never reached the final hop");
    }

    #[test]
    fn seeded_delays_are_reproducible() {
        let mut a = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut b = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let da = sample_delays(&mut a, 4, Duration::from_millis(50));
        let db = sample_delays(&mut b, 4, Duration::from_millis(50));
        assert_eq!(da, db);
        assert_eq!(
            applied_delay(&da),
            da[..3].iter().map(|d| d.to_duration()).sum::<Duration>()
        );
    }
}
