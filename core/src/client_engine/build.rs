//! Building every packet the engine sends (PROTOCOL.md 6.2–6.5), with the
//! keys of one topology. Pure functions: the topology, the RNG and our own
//! names come in, wire bytes go out.
//!
//! Routes are always `first → one random mix per layer → last`; delays are
//! drawn per hop from Exp(μ) with the engine's RNG. (sphinx-packet draws the
//! header's ephemeral secret from the OS RNG itself, so packets are never
//! reproducible byte for byte; routes, delays and identifiers are.)

use std::collections::HashSet;
use std::time::Duration;

use crate::e2e::{
    ClientAddress, KIND_DATA, Payload, REPLY_KEY_LEN, ReplyBlock, ReplyRecovery, SURB_LEN,
    data_sealed_len, make_surb, payload_plaintext_len, reply_ciphertext_len, seal, seal_reply,
    use_surb,
};
use crate::keys::NodeId;
use crate::sphinx::{HEADER_SIZE, IDENTIFIER_LEN, build_packet, destination_of, sample_delays};
use crate::topology::{MAX_EXCLUDED_FRACTION, NodeEntry, Role, Topology};
use rand::RngExt;
use rand::rngs::StdRng;
use sphinx_packet::constants::NODE_ADDRESS_LENGTH;
use sphinx_packet::header::delays::Delay;

/// Why a packet could not be built. Each one is permanent for the packet's
/// message under the topology in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BuildError {
    #[error("our provider {0} is not a provider of epoch {1}")]
    OwnProvider(NodeId, u64),
    #[error("the recipient's provider {0} is not a provider of epoch {1}")]
    Provider(NodeId, u64),
    #[error("the reply block starts at {0}, not at our provider")]
    ReplyFirstHop(NodeId),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> BuildError {
    BuildError::Other(e.to_string())
}

/// Who we are: the names every route and SURB of ours needs.
#[derive(Clone, Copy)]
pub(super) struct Me {
    pub identity: NodeId,
    pub provider: NodeId,
}

/// 1/μ of the topology as a `Duration` (validated finite and ≥ 0).
pub(super) fn mean_delay(t: &Topology) -> Duration {
    Duration::try_from_secs_f64(t.params().mean_hop_delay_ms / 1000.0).unwrap_or(Duration::ZERO)
}

fn provider<'a>(t: &'a Topology, id: &NodeId) -> Option<&'a NodeEntry> {
    t.get(id).filter(|e| e.role == Role::Provider)
}

/// How the mixes of a route are chosen. `avoid` is the sender's *local*
/// liveness evidence: only retransmissions use it (a first attempt is drawn
/// from the network-wide list alone, which every client shares, so local
/// evidence cannot set one client's routes apart). The network's signed
/// down list is already applied to `Topology` itself
/// ([`Topology::with_exclusions`]).
#[derive(Clone, Copy)]
pub(super) struct RouteChoice<'a> {
    pub avoid: Option<&'a HashSet<NodeId>>,
}

impl RouteChoice<'_> {
    pub const NETWORK: RouteChoice<'static> = RouteChoice { avoid: None };
}

/// `first → L1 → … → L_layers → last`, one uniformly random routable mix
/// per layer.
fn route<'a>(
    t: &'a Topology,
    rng: &mut StdRng,
    choice: RouteChoice<'_>,
    first: Option<&'a NodeEntry>,
    last: &'a NodeEntry,
) -> Vec<&'a NodeEntry> {
    let mut r: Vec<&NodeEntry> = first.into_iter().collect();
    match choice.avoid.filter(|a| !a.is_empty()) {
        Some(avoid) => r.extend(t.random_mix_path_avoiding(rng, avoid, MAX_EXCLUDED_FRACTION)),
        None => r.extend(t.random_mix_path(rng)),
    }
    r.push(last);
    r
}

/// The ids of a route, for the liveness estimator.
pub(super) type RouteIds = Box<[NodeId]>;

fn ids(hops: &[&NodeEntry]) -> RouteIds {
    hops.iter().map(|n| n.id).collect()
}

fn delays(t: &Topology, rng: &mut StdRng, hops: usize) -> Vec<Delay> {
    sample_delays(rng, hops, mean_delay(t))
}

/// The sum of every sampled delay (PROTOCOL.md 6.4 counts all of them).
pub(super) fn delay_sum(delays: &[Delay]) -> Duration {
    delays
        .iter()
        .fold(Duration::ZERO, |acc, d| acc.saturating_add(d.to_duration()))
}

fn own_provider<'a>(t: &'a Topology, me: &Me) -> Result<&'a NodeEntry, BuildError> {
    provider(t, &me.provider).ok_or(BuildError::OwnProvider(me.provider, t.epoch()))
}

/// A forward packet from our provider through the mixes to `last`, with
/// its sampled delays and its route.
#[allow(clippy::too_many_arguments)]
fn forward(
    t: &Topology,
    rng: &mut StdRng,
    choice: RouteChoice<'_>,
    me: &Me,
    last: &NodeEntry,
    destination: NodeId,
    identifier: [u8; IDENTIFIER_LEN],
    payload: &Payload,
) -> Result<(Vec<u8>, Vec<Delay>, RouteIds), BuildError> {
    let ps = t.params().payload_size;
    let first = own_provider(t, me)?;
    let plaintext = payload.encode(payload_plaintext_len(ps)).map_err(other)?;
    let hops = route(t, rng, choice, Some(first), last);
    let d = delays(t, rng, hops.len());
    let packet = build_packet(
        &plaintext,
        &hops,
        &destination_of(&destination, identifier),
        &d,
        ps,
    )
    .map_err(other)?;
    Ok((packet, d, ids(&hops)))
}

/// A data packet as it leaves: the packet, the ack id its SURB-ACK answers
/// with, the sum of both routes' sampled delays (for the ack timeout), and
/// every node of both routes (an ack clears them all; a missing one counts
/// against them all).
pub(super) struct DataPacket {
    pub packet: Vec<u8>,
    pub ack_id: [u8; IDENTIFIER_LEN],
    /// Opens the sealed ack.
    pub ack_recovery: ReplyRecovery,
    pub delays: Duration,
    pub route: RouteIds,
}

/// One encoded fragment for `to` (PROTOCOL.md 6.3, 6.4): sealed to its
/// encryption key, next to a fresh SURB-ACK for `L1' → L2' → L3' → our
/// provider` (fresh mixes, destination us, identifier a fresh ack id).
pub(super) fn data_packet(
    t: &Topology,
    rng: &mut StdRng,
    choice: RouteChoice<'_>,
    me: &Me,
    to: &ClientAddress,
    fragment: &[u8],
) -> Result<DataPacket, BuildError> {
    let ps = t.params().payload_size;
    let last = provider(t, &to.provider).ok_or(BuildError::Provider(to.provider, t.epoch()))?;
    let ack_route = route(t, rng, choice, None, own_provider(t, me)?);
    let ack_delays = delays(t, rng, ack_route.len());
    let ack_id: [u8; IDENTIFIER_LEN] = rng.random();
    let (surb_ack, ack_recovery) =
        make_surb(&ack_route, me.identity, ack_id, &ack_delays).map_err(other)?;
    let sealed = seal(
        &to.encryption,
        KIND_DATA,
        fragment,
        data_sealed_len(ps, surb_ack.len()),
        rng,
    )
    .map_err(other)?;
    let payload = Payload::Data { surb_ack, sealed };
    let identifier: [u8; IDENTIFIER_LEN] = rng.random();
    let (packet, fwd_delays, fwd_route) =
        forward(t, rng, choice, me, last, to.identity, identifier, &payload)?;
    let mut route = fwd_route.into_vec();
    route.extend(ack_route.iter().map(|n| n.id));
    Ok(DataPacket {
        packet,
        ack_id,
        ack_recovery,
        delays: delay_sum(&fwd_delays).saturating_add(delay_sum(&ack_delays)),
        route: route.into(),
    })
}

/// A loop (6.2): our provider → mixes → our provider, destination us,
/// identifier `id`; with its recovery and its route (every loop is a
/// liveness probe). Built as a SURB we use ourselves, so that it arrives
/// sealed like the acks and replies it must look like to our provider.
pub(super) fn loop_packet(
    t: &Topology,
    rng: &mut StdRng,
    me: &Me,
    id: [u8; IDENTIFIER_LEN],
) -> Result<(Vec<u8>, ReplyRecovery, RouteIds), BuildError> {
    let ps = t.params().payload_size;
    let ours = own_provider(t, me)?;
    let hops = route(t, rng, RouteChoice::NETWORK, Some(ours), ours);
    let d = delays(t, rng, hops.len());
    let (surb, recovery) = make_surb(&hops, me.identity, id, &d).map_err(other)?;
    let plaintext = Payload::Loop
        .encode(payload_plaintext_len(ps))
        .map_err(other)?;
    let (_, packet) = use_surb(&surb, &plaintext, ps).map_err(other)?;
    Ok((packet, recovery, ids(&hops)))
}

/// A drop (6.2): to a uniformly random provider, destination that provider.
pub(super) fn drop_packet(t: &Topology, rng: &mut StdRng, me: &Me) -> Result<Vec<u8>, BuildError> {
    let providers: Vec<&NodeEntry> = t.providers().collect();
    let Some(last) = providers.get(rng.random_range(0..providers.len().max(1))) else {
        return Err(BuildError::OwnProvider(me.provider, t.epoch()));
    };
    let id: [u8; IDENTIFIER_LEN] = rng.random();
    forward(
        t,
        rng,
        RouteChoice::NETWORK,
        me,
        last,
        last.id,
        id,
        &Payload::Drop,
    )
    .map(|(p, _, _)| p)
}

/// A reply block (6.5) that a recipient at `their_provider` can answer
/// over: `their provider → mixes → our provider`, destination us.
pub(super) fn reply_block(
    t: &Topology,
    rng: &mut StdRng,
    me: &Me,
    their_provider: &NodeId,
) -> Result<NewBlock, BuildError> {
    let first =
        provider(t, their_provider).ok_or(BuildError::Provider(*their_provider, t.epoch()))?;
    let hops = route(
        t,
        rng,
        RouteChoice::NETWORK,
        Some(first),
        own_provider(t, me)?,
    );
    let d = delays(t, rng, hops.len());
    let id: [u8; IDENTIFIER_LEN] = rng.random();
    let (surb, recovery) = make_surb(&hops, me.identity, id, &d).map_err(other)?;
    let key: [u8; REPLY_KEY_LEN] = rng.random();
    // The providers at both ends cannot be avoided; only mixes matter.
    let mixes = hops
        .iter()
        .filter(|n| n.role == Role::Mix)
        .map(|n| n.id)
        .collect();
    Ok(NewBlock {
        id,
        block: ReplyBlock {
            epoch: t.epoch(),
            surb,
            key,
        },
        recovery,
        mixes,
    })
}

/// A reply block just made, and what we keep of it.
pub(super) struct NewBlock {
    /// The identifier its reply will arrive with.
    pub id: [u8; IDENTIFIER_LEN],
    /// What we hand out.
    pub block: ReplyBlock,
    /// What opens its reply; never handed out.
    pub recovery: ReplyRecovery,
    /// The mixes its route crosses (to revoke it if one is listed down).
    pub mixes: RouteIds,
}

/// The first hop written in a version-260 SURB (`header ‖ first hop ‖
/// seed`), if `surb` has a SURB's length.
pub(super) fn surb_first_hop(surb: &[u8]) -> Option<NodeId> {
    if surb.len() != SURB_LEN {
        return None;
    }
    let bytes = surb.get(HEADER_SIZE..HEADER_SIZE + NODE_ADDRESS_LENGTH)?;
    bytes.try_into().ok().map(NodeId)
}

/// One encoded fragment sent over `block` (6.5). The packet enters the
/// network at our provider, so the block must start there.
pub(super) fn reply_packet(
    t: &Topology,
    me: &Me,
    block: &ReplyBlock,
    fragment: &[u8],
) -> Result<Vec<u8>, BuildError> {
    let ps = t.params().payload_size;
    let ciphertext = seal_reply(&block.key, fragment, reply_ciphertext_len(ps)).map_err(other)?;
    let plaintext = Payload::Reply { ciphertext }
        .encode(payload_plaintext_len(ps))
        .map_err(other)?;
    let (first_hop, packet) = use_surb(&block.surb, &plaintext, ps).map_err(other)?;
    if first_hop != me.provider || provider(t, &first_hop).is_none() {
        return Err(BuildError::ReplyFirstHop(first_hop));
    }
    Ok(packet)
}
