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
use rand_distr::{Distribution, Exp1};

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

/// [`sample_delays`] without the `Vec`: one delay per slot of `out`, in
/// nanoseconds, from the same draws in the same order (for the simulator,
/// which draws hundreds of millions).
pub fn sample_delay_nanos_into<R: Rng + ?Sized>(rng: &mut R, out: &mut [u64], mean: Duration) {
    for slot in out {
        *slot = sample_exp_nanos(rng, mean);
    }
}

/// `sample_exp_duration(rng, mean)` in nanoseconds, the same value from the
/// same draw, without going through `Duration::from_secs_f64` (a quarter
/// of the cost of a delay in the simulator's profile).
fn sample_exp_nanos<R: Rng + ?Sized>(rng: &mut R, mean: Duration) -> u64 {
    if mean.is_zero() {
        return 0;
    }
    let unit: f64 = Exp1.sample(rng);
    secs_to_nanos((unit * mean.as_secs_f64()).min(3600.0))
}

/// `Duration::from_secs_f64(secs).as_nanos()` for `0 <= secs <= 3600`:
/// `secs · 10⁹` rounded to the nearest integer, ties to even, computed
/// exactly (`secs` is `mantissa · 2^exp`, and `mantissa · 10⁹` fits a
/// `u128`). Anything else (negative, NaN, huge) takes the std path.
///
/// Most values take a float shortcut first: below 3.6·10¹² (< 2⁴²) the
/// rounded product `secs · 1e9` is within 2⁻¹² of the exact one, so
/// unless its fraction is within 2⁻¹⁰ of one half, both round to the same
/// integer. Only the rare near-ties pay for the exact `u128` path.
fn secs_to_nanos(secs: f64) -> u64 {
    if !(0.0..=3600.0).contains(&secs) {
        return duration_nanos(Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO));
    }
    let product = secs * 1e9;
    // Truncation is the floor here (the product is not negative), and
    // cheaper than `floor()` where that is a libm call.
    let whole = product as u64;
    let fraction = product - whole as f64;
    if (fraction - 0.5).abs() > 1.0 / 1024.0 {
        return whole + u64::from(fraction > 0.5);
    }
    secs_to_nanos_exact(secs)
}

/// [`secs_to_nanos`] by integer arithmetic, for `0 <= secs <= 3600`.
fn secs_to_nanos_exact(secs: f64) -> u64 {
    let bits = secs.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exp) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    let scaled = u128::from(mantissa) * 1_000_000_000;
    if exp >= 0 {
        return u64::try_from(scaled << exp).unwrap_or(u64::MAX);
    }
    let shift = exp.unsigned_abs();
    if shift >= 127 {
        // Below half a nanosecond.
        return 0;
    }
    let whole = scaled >> shift;
    let rest = scaled & ((1 << shift) - 1);
    let half = 1u128 << (shift - 1);
    let up = rest > half || (rest == half && whole & 1 == 1);
    u64::try_from(whole + u128::from(up)).unwrap_or(u64::MAX)
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
    fn nanos_are_what_from_secs_f64_gives() {
        use rand::RngExt;
        let std = |x: f64| duration_nanos(Duration::from_secs_f64(x));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut xs: Vec<f64> = vec![0.0, 3600.0, 1e-9, 0.5e-9, 1.5e-9, 2.5e-9, 0.999e-9];
        xs.push(f64::from_bits(1));
        for _ in 0..200_000 {
            // Any bit pattern in range, exponential-like values, and exact
            // binary fractions (where ties to even matter).
            let x = f64::from_bits(rng.random_range(0..=3600f64.to_bits()));
            let y = rng.random::<f64>() * 10f64.powi(rng.random_range(-12..4));
            let z = f64::from(rng.random_range(0..1u32 << 20)) / f64::from(1u32 << 21) * 1e-6;
            let w = (rng.random_range(0..7_200_000_000_000u64) as f64 + 0.5) * 1e-9 / 2.0;
            xs.extend([x, y.min(3600.0), z, w.min(3600.0)]);
            // Next to a half nanosecond, where the float shortcut must
            // hand over to the exact path.
            let half = (rng.random_range(0..3_600_000_000_000u64) as f64 + 0.5) / 1e9;
            let b = half.to_bits();
            xs.extend([b - 2, b - 1, b, b + 1, b + 2].map(|b| f64::from_bits(b).min(3600.0)));
        }
        for x in xs {
            assert_eq!(secs_to_nanos(x), std(x), "{x:e}");
            assert_eq!(secs_to_nanos_exact(x), std(x), "{x:e}");
        }
    }

    #[test]
    fn delays_into_a_slice_are_the_same_draws() {
        let mut a = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut b = a.clone();
        let means = [50_000_000, 500_000_000, 1, 0, 3_000_000_000_000].map(Duration::from_nanos);
        for i in 0..20_000 {
            let mean = means[i % means.len()];
            let want: Vec<u64> = sample_delays(&mut a, 5, mean)
                .iter()
                .map(|d| d.to_nanos())
                .collect();
            let mut got = [0u64; 5];
            sample_delay_nanos_into(&mut b, &mut got, mean);
            assert_eq!(got.as_slice(), want.as_slice());
        }
        // And the streams are left in the same place.
        assert_eq!(a.next_u64(), b.next_u64());
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
