//! Single-use reply blocks, sphinx-packet 0.8 version 259 (PROTOCOL.md 6.4,
//! 6.5).
//!
//! A version-259 SURB is `header(348) ‖ first hop(32) ‖ one 16-byte payload
//! key seed per hop`. Whoever uses it adds every hop's payload layer, so the
//! route's **final hop** (the SURB creator's provider) recovers the plaintext
//! with `payload.recover_plaintext()`, like any forward packet: SURB-ACKs
//! carry no content, and replies are encrypted end to end
//! ([`super::seal::seal_reply`]).
//!
//! The cost of 259: the SURB's user holds every hop's seed and can compute
//! the payload as each hop will see it. A user colluding with a mix on the
//! route can therefore recognise the reply there, and from the last mix
//! learn the creator's provider (THREAT_MODEL.md, "Attacks it does not
//! resist"). Version 260 (the crate default) hands out only the last hop's
//! seed; the creator keeps the rest (`SurbReplyRecovery`). Its final hop
//! cannot read the payload, so using it here means the provider stores the
//! still-sealed payload and the creating client unseals it: a change to the
//! provider's delivery rules and the client's inbox, not made yet.

use sphinx_packet::SURB;
use sphinx_packet::SURBMaterial;
use sphinx_packet::constants::{NODE_ADDRESS_LENGTH, PAYLOAD_KEY_SEED_SIZE};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::Node;
use sphinx_packet::version::PAYLOAD_KEYS_SEEDS_VERSION;

use crate::keys::NodeId;
use crate::sphinx::{
    HEADER_SIZE, IDENTIFIER_LEN, MAX_PATH_LENGTH, PAYLOAD_OVERHEAD, destination_of, node_id_of,
    sphinx_node,
};
use crate::topology::NodeEntry;

/// Why a SURB could not be made or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SurbError {
    #[error("a SURB route has 1 to {MAX_PATH_LENGTH} hops, not {0}")]
    RouteLength(usize),
    #[error("{delays} delays for a route of {hops} hops")]
    DelayCount { hops: usize, delays: usize },
    #[error("cannot build SURB: {0}")]
    Build(String),
    #[error("malformed SURB ({len} bytes): {reason}")]
    Malformed { len: usize, reason: String },
    #[error("plaintext of {len} bytes does not fit a {payload_size}-byte payload (at most {max})")]
    PlaintextTooLong {
        len: usize,
        payload_size: usize,
        max: usize,
    },
    #[error("cannot use SURB: {0}")]
    Use(String),
}

impl SurbError {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::RouteLength(_) => "route_length",
            Self::DelayCount { .. } => "delay_count",
            Self::Build(_) => "build",
            Self::Malformed { .. } => "malformed",
            Self::PlaintextTooLong { .. } => "plaintext_too_long",
            Self::Use(_) => "use",
        }
    }
}

/// Serialized length of a version-259 SURB for a route of `hops` hops:
/// `348 + 32 + 16 × hops`.
pub const fn surb_len(hops: usize) -> usize {
    HEADER_SIZE + NODE_ADDRESS_LENGTH + PAYLOAD_KEY_SEED_SIZE * hops
}

/// The number of hops of a SURB of `len` bytes, if `len` is the length of a
/// SURB for 1 to 5 hops.
pub fn surb_hops(len: usize) -> Option<usize> {
    (1..=MAX_PATH_LENGTH).find(|h| surb_len(*h) == len)
}

/// Makes a version-259 SURB for `route` that delivers to `destination` with
/// `identifier`, one delay per hop (the last one is not encoded, as for
/// forward packets). The header's initial secret comes from the OS RNG.
pub fn make_surb(
    route: &[&NodeEntry],
    destination: NodeId,
    identifier: [u8; IDENTIFIER_LEN],
    delays: &[Delay],
) -> Result<Vec<u8>, SurbError> {
    if route.is_empty() || route.len() > MAX_PATH_LENGTH {
        return Err(SurbError::RouteLength(route.len()));
    }
    if delays.len() != route.len() {
        return Err(SurbError::DelayCount {
            hops: route.len(),
            delays: delays.len(),
        });
    }
    let nodes: Vec<Node> = route.iter().map(|e| sphinx_node(e)).collect();
    let surb = SURBMaterial::new(
        nodes,
        delays.to_vec(),
        destination_of(&destination, identifier),
        PAYLOAD_KEYS_SEEDS_VERSION,
    )
    .construct_SURB()
    .map_err(|e| SurbError::Build(e.to_string()))?;
    Ok(surb.to_bytes())
}

/// Uses SURB bytes (possibly from a stranger) to send `plaintext` (at most
/// `payload_size - 17` bytes): returns the first hop to hand the packet to
/// and the packet's wire bytes (`348 + payload_size`). The caller must still
/// check that the first hop is a node of the current topology.
///
/// Malformed bytes are an error, never a panic. Bytes that parse but were not
/// made by [`make_surb`] give a packet that the first hop drops.
pub fn use_surb(
    surb: &[u8],
    plaintext: &[u8],
    payload_size: usize,
) -> Result<(NodeId, Vec<u8>), SurbError> {
    if surb_hops(surb.len()).is_none() {
        return Err(SurbError::Malformed {
            len: surb.len(),
            reason: format!("not the length of a version-259 SURB for 1 to {MAX_PATH_LENGTH} hops"),
        });
    }
    let max = payload_size.saturating_sub(PAYLOAD_OVERHEAD);
    if plaintext.len() > max {
        return Err(SurbError::PlaintextTooLong {
            len: plaintext.len(),
            payload_size,
            max,
        });
    }
    let parsed = SURB::from_bytes(surb).map_err(|e| SurbError::Malformed {
        len: surb.len(),
        reason: e.to_string(),
    })?;
    let (packet, first_hop) = parsed
        .use_surb(plaintext, payload_size)
        .map_err(|e| SurbError::Use(e.to_string()))?;
    Ok((node_id_of(&first_hop), packet.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(surb_len(1), 396);
        assert_eq!(surb_len(4), 444);
        assert_eq!(surb_len(5), 460);
        assert_eq!(surb_hops(444), Some(4));
        assert_eq!(surb_hops(445), None);
        assert_eq!(surb_hops(380), None);
        assert_eq!(surb_hops(surb_len(6)), None);
    }
}
