//! Single-use reply blocks, sphinx-packet 0.8 version 260 (PROTOCOL.md 6.4,
//! 6.5).
//!
//! A version-260 SURB is `header(348) ‖ first hop(32) ‖ one 16-byte payload
//! key seed` — 396 bytes whatever the route's length. The seed is the route's
//! **last** hop's: whoever uses the SURB adds that one payload layer, every
//! hop (the last one included) removes one, and the payload that reaches the
//! final hop (the creator's provider) is still sealed. Only the SURB's
//! creator, holding the [`ReplyRecovery`] that [`make_surb`] returns next to
//! the SURB, can undo the hops' layers and read it
//! ([`ReplyRecovery::open`]).
//!
//! Why not 259: a 259 SURB hands its user every hop's seed, so the user
//! could compute the payload as each hop would see it and, colluding with
//! any one mix on the route, recognise the reply there — from the last mix,
//! that names the creator's provider. With 260 the user knows the payload
//! only as it enters the network; what each hop makes of it depends on
//! seeds only the creator has (`e2e::tests::a_block_user_and_a_mix_*`).
//!
//! The same goes for SURB-ACKs, and for our own loops, which are built as
//! SURBs too: at the final hop, acks, loops and replies all arrive sealed,
//! so a provider cannot tell them apart.

use sphinx_packet::SURB;
use sphinx_packet::SURBMaterial;
use sphinx_packet::SurbReplyRecovery;
use sphinx_packet::constants::{NODE_ADDRESS_LENGTH, PAYLOAD_KEY_SEED_SIZE};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::route::Node;
use sphinx_packet::version::SINGLE_SEED_SURB_VERSION;

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
    /// A sealed payload that this recovery material does not open: not
    /// the reply to our block (a forgery, or garbage a provider stored).
    #[error("sealed payload does not open: {0}")]
    Open(String),
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
            Self::Open(_) => "open",
        }
    }
}

/// Serialized length of a version-260 SURB, for any route length.
pub const SURB_LEN: usize = HEADER_SIZE + NODE_ADDRESS_LENGTH + PAYLOAD_KEY_SEED_SIZE;

/// What only a SURB's creator keeps: every hop's payload seed, to open the
/// sealed payload the SURB's use delivers. Never handed to anyone; dropped
/// (and zeroed) once it opened its reply, or when it expires.
#[derive(Clone)]
pub struct ReplyRecovery(SurbReplyRecovery);

impl std::fmt::Debug for ReplyRecovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyRecovery")
            .field("hops", &self.0.num_hops())
            .finish()
    }
}

impl ReplyRecovery {
    /// Opens `sealed`, the payload exactly as the final hop handed it on
    /// (`payload_size` bytes), and returns the plaintext the SURB's user
    /// wrote. Any other bytes are an error, never a panic: sphinx-packet's
    /// padding check fails for a payload sealed under other seeds.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SurbError> {
        let open = |e: sphinx_packet::Error| SurbError::Open(e.to_string());
        let payload = sphinx_packet::payload::Payload::from_bytes(sealed).map_err(open)?;
        self.0.recover_plaintext(payload).map_err(open)
    }

    /// Material that opens nothing, for tests of the stores that keep it.
    #[cfg(test)]
    #[allow(clippy::expect_used)]
    pub(crate) fn for_tests() -> Self {
        Self(SurbReplyRecovery::from_bytes(&[1; 32]).expect("identifier and one seed"))
    }
}

/// Makes a version-260 SURB for `route` that delivers to `destination` with
/// `identifier` (random, hence non-zero as 260 requires), one delay per hop
/// (the last one is not encoded, as for forward packets). Returns the SURB's
/// bytes, to hand out, and its [`ReplyRecovery`], to keep. The header's
/// initial secret comes from the OS RNG.
pub fn make_surb(
    route: &[&NodeEntry],
    destination: NodeId,
    identifier: [u8; IDENTIFIER_LEN],
    delays: &[Delay],
) -> Result<(Vec<u8>, ReplyRecovery), SurbError> {
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
    let (surb, recovery) = SURBMaterial::new(
        nodes,
        delays.to_vec(),
        destination_of(&destination, identifier),
        SINGLE_SEED_SURB_VERSION,
    )
    .construct_recoverable_SURB()
    .map_err(|e| SurbError::Build(e.to_string()))?;
    Ok((surb.to_bytes(), ReplyRecovery(recovery)))
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
    if surb.len() != SURB_LEN {
        return Err(SurbError::Malformed {
            len: surb.len(),
            reason: format!("not the length of a version-260 SURB ({SURB_LEN})"),
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
    fn length() {
        assert_eq!(SURB_LEN, 396);
    }
}
